//! EPMD: registering this node's name and distribution port, and keeping that registration.
//!
//! [`start`] registers with the EPMD on `127.0.0.1:<epmd_port>` when one answers (client mode),
//! or binds an embedded [`server::EpmdServer`] on `0.0.0.0:<epmd_port>` and registers with it
//! over TCP like any other node (embedded mode). A background task then keeps the registration:
//! when the EPMD connection drops it registers again (becoming the embedded EPMD if none answers)
//! with backoff, and on shutdown it unregisters.
//!
//! - [`proto`]: wire constants and name rules.
//! - [`client`]: `ALIVE2_REQ` / `PORT_PLEASE2_REQ` / `NAMES_REQ` as a client.
//! - [`server`]: the embedded EPMD.
//!
//! Spec: OTP ERTS User's Guide, "Distribution Protocol", section "EPMD Protocol"
//! (<https://www.erlang.org/doc/apps/erts/erl_dist_protocol.html#epmd-protocol>).

pub mod client;
pub mod proto;
pub mod server;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use client::Registration;
use server::EpmdServer;

/// First pause before retrying a lost registration; doubles up to [`MAX_RETRY_BACKOFF`].
const INITIAL_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between re-registration attempts.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);
/// How many times one registration attempt alternates between client and embedded server when
/// the port flips between refused and in-use (another EPMD starting concurrently).
const MODE_RACE_ATTEMPTS: usize = 5;
/// Pause between those alternations.
const MODE_RACE_PAUSE: Duration = Duration::from_millis(50);

/// Everything that can go wrong talking to or becoming an EPMD.
#[derive(Debug, thiserror::Error)]
pub enum EpmdError {
    /// Nothing listens at `addr` (connection refused).
    #[error("no EPMD is listening on {addr}")]
    Unreachable {
        /// The EPMD address tried.
        addr: SocketAddr,
        /// The refusal.
        #[source]
        source: io::Error,
    },
    /// The EPMD refused the registration: another node holds the name.
    #[error(
        "the node name {name:?} is already registered with the EPMD (is another node with this name running?)"
    )]
    NameTaken {
        /// The refused name.
        name: String,
    },
    /// A name epmd would reject (empty, NUL byte, more than 255 characters).
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The EPMD did not complete `op` in time.
    #[error("EPMD at {addr} did not complete {op} within {after:?}")]
    Timeout {
        /// The EPMD address.
        addr: SocketAddr,
        /// The request.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// The EPMD closed the connection before answering `op` completely.
    #[error("EPMD at {addr} closed the connection during {op}")]
    Closed {
        /// The EPMD address.
        addr: SocketAddr,
        /// The request.
        op: &'static str,
    },
    /// The EPMD answered `op` with an unknown reply tag.
    #[error("EPMD at {addr} answered {op} with unexpected tag {tag}")]
    UnexpectedTag {
        /// The EPMD address.
        addr: SocketAddr,
        /// The request.
        op: &'static str,
        /// The tag received.
        tag: u8,
    },
    /// The EPMD's answer to `op` does not parse.
    #[error("EPMD at {addr} sent a malformed answer to {op}: {reason}")]
    Malformed {
        /// The EPMD address.
        addr: SocketAddr,
        /// The request.
        op: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Another I/O failure while talking to the EPMD.
    #[error("I/O error talking to the EPMD at {addr} during {op}")]
    Io {
        /// The EPMD address.
        addr: SocketAddr,
        /// The request.
        op: &'static str,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// The embedded EPMD could not bind its port (for a reason other than "in use").
    #[error("cannot start the embedded EPMD on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        #[source]
        source: io::Error,
    },
    /// Shutdown was requested before a registration succeeded.
    #[error("shut down before the EPMD registration completed")]
    Cancelled,
}

/// How this node reaches its EPMD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpmdMode {
    /// Registered with an EPMD some other process runs.
    Client,
    /// Runs the EPMD itself (and is registered with it).
    Embedded,
    /// Not registered with any EPMD: a client-only node (`NodeBuilder::register_with_epmd`).
    Unregistered,
}

impl fmt::Display for EpmdMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EpmdMode::Client => "client of the EPMD",
            EpmdMode::Embedded => "embedded EPMD",
            EpmdMode::Unregistered => "not registered with the EPMD",
        })
    }
}

/// The current state of the registration, as kept by the background task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpmdStatus {
    /// Whether the name is registered right now.
    pub registered: bool,
    /// Creation of the latest registration.
    pub creation: u32,
    /// Mode of the latest registration.
    pub mode: EpmdMode,
}

/// The result of [`start`]: the first registration, and a view of later ones.
#[derive(Debug, Clone)]
pub struct EpmdHandle {
    /// Creation handed out by the first registration; use it for this node's pids and refs.
    pub creation: u32,
    /// Mode of the first registration.
    pub mode: EpmdMode,
    /// The EPMD port.
    pub epmd_port: u16,
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    status: watch::Receiver<EpmdStatus>,
}

impl EpmdHandle {
    /// The registration as it is now (re-registrations may change mode and creation).
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn status(&self) -> EpmdStatus {
        *self.status.borrow()
    }

    /// A receiver notified on every registration change.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn watch(&self) -> watch::Receiver<EpmdStatus> {
        self.status.clone()
    }
}

impl EpmdHandle {
    /// The handle of a node that does not register with EPMD, with the creation it drew.
    pub fn unregistered(creation: u32, epmd_port: u16) -> EpmdHandle {
        let (_tx, status) = watch::channel(EpmdStatus {
            registered: false,
            creation,
            mode: EpmdMode::Unregistered,
        });
        EpmdHandle {
            creation,
            mode: EpmdMode::Unregistered,
            epmd_port,
            status,
        }
    }
}

/// "client of the EPMD on port N" / "embedded EPMD on port N".
impl fmt::Display for EpmdHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on port {}", self.mode, self.epmd_port)
    }
}

/// What to register, and where.
#[derive(Debug, Clone)]
struct Target {
    epmd_port: u16,
    name: String,
    dist_port: u16,
    hidden: bool,
    /// Serve EPMD when none answers (else fail, and keep retrying as a client).
    embedded: bool,
}

/// Registers `name` (the part before `@`; anything from `@` on is ignored) with `dist_port`.
///
/// If an EPMD answers on `127.0.0.1:epmd_port`, registers with it (client mode). If none answers
/// (connection refused), binds an embedded [`EpmdServer`] on `0.0.0.0:epmd_port`, spawns it on
/// `tracker` with `shutdown`, and registers with it over TCP (embedded mode). If that bind fails
/// with `AddrInUse` (another EPMD started meanwhile), retries as a client.
///
/// A taken name yields [`EpmdError::NameTaken`]. After success a task on `tracker` keeps the
/// registration: when the EPMD connection drops it registers again the same way, with backoff,
/// until `shutdown` is cancelled; then it closes the registration (unregisters).
#[cfg_attr(not(test), allow(dead_code))] // used by tests
pub async fn start(
    epmd_port: u16,
    name: &str,
    dist_port: u16,
    hidden: bool,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<EpmdHandle, EpmdError> {
    start_with(epmd_port, name, dist_port, hidden, true, shutdown, tracker).await
}

/// [`start`], choosing whether to serve EPMD when none answers: with `embedded` false, no
/// EPMD on `epmd_port` fails the registration with [`EpmdError::Unreachable`] (and a lost
/// registration is retried as a client only).
pub async fn start_with(
    epmd_port: u16,
    name: &str,
    dist_port: u16,
    hidden: bool,
    embedded: bool,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<EpmdHandle, EpmdError> {
    let short = name.split('@').next().unwrap_or(name); // ok: split yields at least one item
    let target = Target {
        epmd_port,
        name: short.to_owned(),
        dist_port,
        hidden,
        embedded,
    };
    let (registration, mode) = tokio::select! {
        _ = shutdown.cancelled() => return Err(EpmdError::Cancelled),
        result = register_anywhere(&target, &shutdown, tracker) => result?,
    };
    let creation = registration.creation;
    info!(name = %target.name, dist_port, epmd_port, %mode, creation, "registered with EPMD");
    let (status_tx, status_rx) = watch::channel(EpmdStatus {
        registered: true,
        creation,
        mode,
    });
    tracker.spawn(keep_registration(
        registration,
        target,
        shutdown,
        tracker.clone(),
        status_tx,
    ));
    Ok(EpmdHandle {
        creation,
        mode,
        epmd_port,
        status: status_rx,
    })
}

/// One registration attempt: as a client, else as the embedded EPMD.
async fn register_anywhere(
    target: &Target,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<(Registration, EpmdMode), EpmdError> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, target.epmd_port));
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, target.epmd_port));
    let mut attempt = 0;
    loop {
        attempt += 1;
        let refused =
            match client::register(loopback, &target.name, target.dist_port, target.hidden).await {
                Ok(registration) => return Ok((registration, EpmdMode::Client)),
                Err(refused @ EpmdError::Unreachable { .. }) => refused,
                Err(other) => return Err(other),
            };
        if !target.embedded {
            return Err(refused);
        }
        match EpmdServer::bind(any).await {
            Ok(server) => {
                tracker.spawn(server.run(shutdown.clone()));
                let registration =
                    client::register(loopback, &target.name, target.dist_port, target.hidden)
                        .await?;
                return Ok((registration, EpmdMode::Embedded));
            }
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                if attempt >= MODE_RACE_ATTEMPTS {
                    return Err(refused);
                }
                info!(
                    epmd_port = target.epmd_port,
                    "another EPMD took the port; retrying as a client"
                );
                tokio::time::sleep(MODE_RACE_PAUSE).await;
            }
            Err(source) => return Err(EpmdError::Bind { addr: any, source }),
        }
    }
}

/// Holds the registration; re-registers when the EPMD connection drops; unregisters on shutdown.
async fn keep_registration(
    mut registration: Registration,
    target: Target,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    status: watch::Sender<EpmdStatus>,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                registration.close().await;
                status.send_modify(|s| s.registered = false);
                info!(name = %target.name, "unregistered from EPMD");
                return;
            }
            _ = registration.closed() => {}
        }
        status.send_modify(|s| s.registered = false);
        warn!(name = %target.name, epmd_port = target.epmd_port, "EPMD connection lost; re-registering");
        let mut backoff = INITIAL_RETRY_BACKOFF;
        registration = loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempt = register_anywhere(&target, &shutdown, &tracker) => attempt,
            };
            match attempt {
                Ok((registration, mode)) => {
                    let creation = registration.creation;
                    warn!(name = %target.name, epmd_port = target.epmd_port, %mode, creation, "re-registered with EPMD");
                    status.send_replace(EpmdStatus {
                        registered: true,
                        creation,
                        mode,
                    });
                    break registration;
                }
                Err(error) => {
                    warn!(name = %target.name, %error, retry_in = ?backoff, "EPMD re-registration failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
                }
            }
        };
    }
}

#[cfg(test)]
mod tests;
