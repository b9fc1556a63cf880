//! kvnode: a Rust program that is a real Erlang node. It speaks the Erlang distribution
//! protocol and EPMD, so unmodified Elixir and Erlang nodes connect to it and call the
//! `DistributedExample.KVStore` GenServer it hosts.
//!
//! Module map (data flows top to bottom):
//! - [`cli`]: command-line flags -> [`config`]`::Config`.
//! - [`epmd`]: EPMD client (register, keep the registration) and the embedded EPMD server.
//! - [`dist`]: the distribution protocol: handshake, framing and ticks, per-peer connections,
//!   the connection manager (peer name -> connection, dial on demand).
//! - [`node`]: the local node: pids, refs, registered names, mailboxes, monitors, routing.
//! - [`term`]: validation of untrusted external-term bytes before decoding.
//! - [`gen_server`]: the GenServer trait and its run loop (`$gen_call`, `$gen_cast`, info).
//! - [`kv`]: the `DistributedExample.KVStore` server and its wire interface.
//! - [`services`]: built-in node services (`net_kernel`, rpc via SPAWN_REQUEST).
//! - [`storage`]: the write-ahead log and snapshots behind `--data-dir`.
//!
//! Accept -> handshake (in the connection's own task, under a timeout) -> reader -> router ->
//! mailbox -> GenServer -> the peer's bounded writer queue -> socket.

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod dist;
pub mod epmd;
pub mod gen_server;
pub mod kv;
pub mod node;
pub mod services;
pub mod storage;
pub mod term;

use config::Config;
use node::Node;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Errors that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The distribution listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// EPMD registration failed (for example: the name is taken).
    #[error(transparent)]
    Epmd(#[from] epmd::EpmdError),
    /// The connection threads could not be started.
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
    /// The data directory could not be opened or recovered.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

/// The listen backlog of kvnode's sockets (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` uses 128, and a burst of connections bigger than that (a flood, or
/// many nodes starting at once) then has SYNs dropped: each dropped one costs its sender a
/// 1 s retransmission, real peers included. Measured: 1,000 connections at once took 5.1 s
/// with 128 and 0.1 s with this.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// File descriptors kvnode may need beyond one per inbound connection: the embedded EPMD's
/// connection cap ([`epmd::server::DEFAULT_MAX_CONNECTIONS`]) and some slack for listeners,
/// logs, storage files, dialed peers and TLS bridges.
const FD_OVERHEAD: u64 = epmd::server::DEFAULT_MAX_CONNECTIONS as u64 + 64;

/// Raises the soft limit on open files to the hard limit (as Go's runtime does), so
/// `--max-connections` is reached before EMFILE is: a common soft limit is 1024, the default
/// `--max-connections`. Returns the soft limit now in force.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; only the soft limit changes, within the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim = raised;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 here, but 32 bits on some targets
    Ok(lim.rlim_cur as u64)
}

/// A started node. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    /// The node.
    pub node: Node,
    /// The bound distribution port.
    pub dist_port: u16,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Running {
    /// Stops accepting, closes peer connections, unregisters from EPMD and waits (up to a few
    /// seconds) for every task to finish.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.node.manager().close_all();
        self.tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 5 s");
        }
        self.node.threads().stop();
    }
}

/// Starts a node: binds the distribution port, registers with EPMD (or serves EPMD itself),
/// starts the built-in processes and the accept loop.
pub async fn start(config: Config) -> Result<Running, Error> {
    match raise_fd_limit() {
        Ok(limit) if limit < config.max_connections as u64 + FD_OVERHEAD => tracing::warn!(
            limit,
            max_connections = config.max_connections,
            "the open-file limit (ulimit -n) is low for --max-connections: connections may fail with EMFILE before the limit"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read or raise the open-file limit"),
    }
    let addr = SocketAddr::new(config.bind, config.dist_port);
    let listener = listen(addr).map_err(|source| Error::Listen { addr, source })?;
    let dist_port = listener
        .local_addr()
        .map_err(|source| Error::Listen { addr, source })?
        .port();
    // Recover the state before anyone can find us through EPMD.
    let recovered = match config.data_dir.clone() {
        Some(dir) => Some(open_storage(dir, config.compaction_floor).await?),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let epmd = epmd::start(
        config.epmd_port,
        config.alive_name(),
        dist_port,
        true,
        shutdown.clone(),
        &tracker,
    )
    .await?;
    let threads = dist::threads::Threads::start(config.threads).map_err(Error::Threads)?;
    let node = Node::new(
        config,
        epmd.creation,
        shutdown.clone(),
        tracker.clone(),
        threads,
    );
    let process_name = node.config().process_name.clone();
    match recovered {
        Some((storage, entries)) => {
            gen_server::spawn_with(&node, Some(&process_name), move |ctx| {
                kv::server::KvServer::with_storage(
                    kv::durable::Durable::new(storage, ctx.replier()),
                    entries,
                )
            });
        }
        None => {
            gen_server::spawn(&node, Some(&process_name), kv::server::KvServer::new());
        }
    }
    gen_server::spawn(
        &node,
        Some(services::net_kernel::NAME),
        services::net_kernel::NetKernel,
    );
    tracker.spawn(accept_loop(node.clone(), listener, shutdown.clone()));
    let tls = match &node.config().tls {
        None => "off",
        Some(tls) if tls.verify_peer() => "on, verify-peer",
        Some(_) => "on",
    };
    tracing::info!(
        node = %node.name().name,
        port = dist_port,
        epmd = %epmd,
        process = %process_name,
        creation = epmd.creation,
        tls,
        "kvnode ready"
    );
    Ok(Running {
        node,
        dist_port,
        shutdown,
        tracker,
    })
}

/// Opens `--data-dir` and recovers it, merging records by the store's canonical keys
/// ([`kv::durable::key_identity`]).
async fn open_storage(
    dir: std::path::PathBuf,
    compaction_floor: u64,
) -> Result<(storage::Storage, Vec<storage::Entry>), Error> {
    let shown = dir.display().to_string();
    let options = storage::Options {
        compaction_floor,
        ..storage::Options::default()
    };
    let (storage, recovered) = tokio::task::spawn_blocking(move || {
        storage::Storage::open_with(&dir, options, &kv::durable::key_identity)
    })
    .await
    .map_err(|e| storage::StorageError::Unavailable {
        reason: format!("recovery task failed: {e}"),
    })??;
    // The storage already warned about a dropped torn tail, with file, offset and bytes.
    tracing::info!(
        dir = %shown,
        keys = recovered.entries.len(),
        snapshot_entries = recovered.snapshot_entries,
        records_replayed = recovered.records_replayed,
        ms = recovered.elapsed.as_millis() as u64,
        "recovered {} keys in {} ms",
        recovered.entries.len(),
        recovered.elapsed.as_millis()
    );
    Ok((storage, recovered.entries))
}

/// Runs a node until `shutdown` resolves, then stops it gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    let running = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

async fn accept_loop(node: Node, listener: TcpListener, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(10);
    let limit = node.config().max_connections;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::warn!(%addr, limit, "too many connections (--max-connections): closing this one");
                    drop(stream);
                    continue;
                };
                // The connection lives on one connection thread: hand the socket over as a std
                // socket and register it with that thread's runtime there.
                let stream = match stream.into_std() {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%addr, %error, "cannot hand the connection over");
                        continue;
                    }
                };
                let (runtime, placement) = node.threads().place();
                let node2 = node.clone();
                runtime.spawn(node.tracker().track_future(async move {
                    let _placement = placement;
                    match TcpStream::from_std(stream) {
                        Ok(stream) => dist::accept(node2, stream, addr).await,
                        Err(error) => {
                            tracing::warn!(%addr, %error, "cannot register the connection")
                        }
                    }
                    drop(permit);
                }));
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
