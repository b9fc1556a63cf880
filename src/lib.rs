//! kvnode: a Rust program that is a real Erlang node. It speaks the Erlang distribution
//! protocol and EPMD, so unmodified Elixir and Erlang nodes connect to it and call the
//! `DistributedExample.KVStore` GenServer it hosts.
//!
//! Module map (data flows top to bottom, and back up for replies):
//! - [`cli`]: command-line flags -> [`config`]`::Config`.
//! - [`epmd`]: EPMD client (register, keep the registration) and the embedded EPMD server.
//! - [`etf`]: validation of untrusted external-term bytes before decoding, bounded text.
//! - [`node`]: the generic Erlang node, in layers: `transport` (admission, handshake, TLS,
//!   connections, the peer table), `process` (pids, refs, names, mailboxes, monitors, links,
//!   routing), `gen_server` (the GenServer protocol and host), `services` (`net_kernel`,
//!   `rex`, rpc via SPAWN_REQUEST over one table of functions apps extend).
//! - [`kv`]: the `DistributedExample.KVStore` app: its wire interface, store, server,
//!   durability and rpc functions.
//! - [`storage`]: the write-ahead log and snapshots behind `--data-dir`.
//!
//! Accept -> handshake (in the connection's own task, under a timeout) -> reader -> router ->
//! mailbox -> GenServer -> the peer's bounded writer queue -> socket.

#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod epmd;
pub mod etf;
pub mod kv;
pub mod node;
pub mod storage;

pub use node::{
    CallError, ConnectError, Dest, NodeEvent, NodeEvents, Process, Received, SpawnError,
};

use config::Config;
use node::{Node, gen_server, transport, transport::admission};
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

/// File descriptors kvnode may need beyond one per inbound connection (established or
/// handshaking): the embedded EPMD's connection caps ([`epmd::server::MAX_FDS`]) and some
/// slack for listeners, logs, storage files, dialed peers and TLS bridges.
const FD_OVERHEAD: u64 = epmd::server::MAX_FDS as u64 + 64;

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
    stop_request: node::services::control::StopRequest,
}

impl Running {
    /// Resolves when a peer asks the node to stop (`init:stop`, `erlang:halt`, `erl_call
    /// -q`), with the exit status asked for.
    pub async fn stop_requested(&self) -> u8 {
        self.stop_request.requested().await
    }

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
        // Let go of the processes: the KV server's storage then commits everything queued
        // (casts included) and joins its threads before we return. (The server's replier
        // holds the node, so without this the store would never be dropped.)
        let node = self.node.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            for name in node.registered_names() {
                if let Some(mb) = node.whereis(&name) {
                    node.remove_process(&mb.pid);
                }
            }
        });
        if tokio::time::timeout(Duration::from_secs(30), flushed)
            .await
            .is_err()
        {
            tracing::warn!("the processes did not let go within 30 s (storage flush)");
        }
        self.node.threads().stop();
    }
}

/// Starts a node: binds the distribution port, registers with EPMD (or serves EPMD itself),
/// starts the built-in processes and the accept loop.
pub async fn start(config: Config) -> Result<Running, Error> {
    // Threads started below without the configuration at hand (storage) size their stacks
    // from it, and recovery accepts terms as deep as peers may send.
    etf::set_configured_depth(config.max_term_depth);
    match raise_fd_limit() {
        Ok(limit)
            if limit
                < (config.max_connections + config.max_handshakes + config.max_dials) as u64
                    + FD_OVERHEAD =>
        {
            tracing::warn!(
                limit,
                max_connections = config.max_connections,
                max_handshakes = config.max_handshakes,
                max_dials = config.max_dials,
                "the open-file limit (ulimit -n) is low for --max-connections + --max-handshakes + --max-dials: connections may fail with EMFILE before the limits"
            )
        }
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
    let threads = transport::threads::Threads::start(
        config.threads,
        etf::stack_size_for_depth(config.max_term_depth),
    )
    .map_err(Error::Threads)?;
    let node = Node::new(
        config,
        epmd.creation,
        shutdown.clone(),
        tracker.clone(),
        threads,
    );
    let stop_request = node::services::control::StopRequest::default();
    node::services::builtins::register(node.functions());
    node::services::control::register(node.functions(), &stop_request);
    let process_name = node.config().process_name.clone();
    match recovered {
        Some((storage, entries)) => {
            gen_server::spawn_with(&node, Some(&process_name), move |ctx| {
                kv::server::KvServer::with_storage(kv::durable::Durable::new(storage, ctx), entries)
            });
        }
        None => {
            gen_server::spawn(&node, Some(&process_name), kv::server::KvServer::new());
        }
    }
    // The KV server's API, callable through rpc, spawn and rex under its module name.
    kv::rpc::register(node.functions(), &process_name, &process_name);
    gen_server::spawn(
        &node,
        Some(node::services::net_kernel::NAME),
        node::services::net_kernel::NetKernel,
    );
    gen_server::spawn(
        &node,
        Some(node::services::rex::NAME),
        node::services::rex::Rex,
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
        stop_request,
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

/// Runs a node until `shutdown` resolves or a peer asks it to stop (`init:stop`,
/// `erlang:halt`), then stops it gracefully. Returns the exit status: 0, or what
/// `erlang:halt/1` / `init:stop/1` asked for.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<u8, Error> {
    let running = start(config).await?;
    let status = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            0
        }
        status = running.stop_requested() => {
            tracing::info!(status, "shutting down: a peer asked the node to stop");
            status
        }
    };
    running.stop().await;
    tracing::info!(status, "stopped");
    Ok(status)
}

async fn accept_loop(node: Node, listener: TcpListener, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(10);
    let cfg = node.config();
    // Unauthenticated connections never take an authenticated peer's place: they have a
    // budget of their own, with oldest-first eviction (see `admission`), and move to
    // --max-connections once the handshake succeeds (`transport::accept`).
    let admission = transport::InboundBudgets {
        handshakes: admission::Budget::new(
            "handshake",
            cfg.max_handshakes,
            cfg.max_handshakes_per_ip,
        ),
        established: std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.max_connections)),
    };
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, addr)) => {
                backoff = Duration::from_millis(10);
                // Always admitted: a full budget closes the oldest handshake of the address
                // holding the most instead.
                let slot = admission.handshakes.admit(addr.ip());
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
                let established = admission.established.clone();
                runtime.spawn(node.tracker().track_future(async move {
                    let _placement = placement;
                    match TcpStream::from_std(stream) {
                        Ok(stream) => {
                            transport::accept(node2, stream, addr, slot, established).await
                        }
                        Err(error) => {
                            tracing::warn!(%addr, %error, "cannot register the connection")
                        }
                    }
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
