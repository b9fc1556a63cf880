//! The client node: a short-lived hidden node that does not register with EPMD, connected to
//! the one node a command talks to. Why a connection failed decides the exit status.

use super::{Failure, Status};
use crate::cli::{ClientOpts, resolve_cookie, resolve_node_name};
use crate::node::transport::manager::{DialFailure, DialOutcome};
use crate::{ConnectError, Node, NodeBuilder};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// A client node connected to its peer.
pub struct Client {
    /// The client node.
    pub node: Node,
    /// The peer's node name.
    pub peer: String,
    /// The peer's creation, as it announced it in the handshake (0 if it sent none): what
    /// pids typed as `<0.B.C>` get.
    pub creation: u32,
    /// When the command's `--timeout` is up.
    pub deadline: Instant,
    /// The `--timeout`.
    pub timeout: Duration,
}

impl Client {
    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Stops the client node (queued messages are flushed to the peer first).
    pub async fn stop(self) {
        self.node.stop().await;
    }

    /// The failure for running out of time while `doing`.
    pub fn timed_out(&self, doing: &str) -> Failure {
        Failure::new(
            Status::Timeout,
            format!(
                "timeout: {doing} took longer than {} ms",
                self.timeout.as_millis()
            ),
        )
    }
}

/// The default name of a client node: `kvnode_cli_<pid>_<n>@<host of peer>`, unique on the
/// machine, with the host part of the peer's so both use long or both short names.
pub fn default_name(peer: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let host = peer.split_once('@').map_or("127.0.0.1", |(_, h)| h);
    format!(
        "kvnode_cli_{}_{}@{host}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts the client node and connects it to `peer`, all within `--timeout`.
pub async fn connect(opts: &ClientOpts, peer: &str) -> Result<Client, Failure> {
    let timeout = Duration::from_millis(opts.timeout.max(1));
    let deadline = Instant::now() + timeout;
    if let Err(reason) = crate::config::check_node_name(peer) {
        return Err(Failure::new(
            Status::Usage,
            format!("bad node name {peer:?}: {reason}"),
        ));
    }
    let usage = |e: crate::cli::CliError| Failure::new(Status::Usage, e.to_string());
    let cookie = resolve_cookie(opts.cookie.clone()).map_err(usage)?;
    let name = resolve_node_name(opts.name.as_deref(), opts.sname.as_deref())
        .map_err(usage)?
        .unwrap_or_else(|| default_name(peer));
    if name == peer {
        return Err(Failure::new(
            Status::Usage,
            format!("the client's own name {name} is the node's: pick another --name"),
        ));
    }
    let mut builder = NodeBuilder::new(name)
        .cookie(cookie)
        .bind([127, 0, 0, 1].into())
        .port(0)
        .epmd_port(opts.epmd_port)
        .register_with_epmd(false)
        .threads(1)
        .handshake_timeout(timeout);
    if let Some((cert, key, cacert)) = opts.tls.all() {
        builder = builder.tls(cert, key, cacert, false);
    }
    let node = builder
        .start()
        .await
        .map_err(|e| Failure::new(Status::Usage, format!("cannot start the client node: {e}")))?;
    let connected = tokio::time::timeout_at(deadline, node.connect(peer)).await;
    let failure = match connected {
        Ok(Ok(())) => None,
        Ok(Err(ConnectError::Failed { .. })) => Some(dial_failure(&node, peer)),
        Ok(Err(ConnectError::BadName { .. })) => Some(Failure::new(
            Status::Usage,
            format!("bad node name {peer:?}"),
        )),
        Ok(Err(_)) | Err(_) => Some(Failure::new(
            Status::Timeout,
            format!(
                "timeout: no connection to {peer} within {} ms",
                timeout.as_millis()
            ),
        )),
    };
    if let Some(failure) = failure {
        node.stop().await;
        return Err(failure);
    }
    let creation = match node.manager().dial_outcome(peer) {
        Some(DialOutcome::Connected { creation }) => creation.unwrap_or(0),
        _ => 0,
    };
    Ok(Client {
        node,
        peer: peer.to_owned(),
        creation,
        deadline,
        timeout,
    })
}

/// Why the dial of `peer` failed, as a [`Failure`].
fn dial_failure(node: &Node, peer: &str) -> Failure {
    match node.manager().dial_outcome(peer) {
        Some(DialOutcome::Failed { class, message }) => {
            let (status, what) = match class {
                DialFailure::Unreachable => (Status::Unreachable, "unreachable"),
                DialFailure::Refused => (
                    Status::Refused,
                    "handshake refused (wrong cookie, or the node does not allow us)",
                ),
                DialFailure::Timeout => (Status::Timeout, "timeout"),
            };
            Failure::new(status, format!("{peer}: {what}: {message}"))
        }
        _ => Failure::new(
            Status::Unreachable,
            format!("{peer}: unreachable (too many dials in flight)"),
        ),
    }
}
