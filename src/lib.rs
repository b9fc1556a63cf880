//! kvnode: put Rust code into an Erlang cluster. A kvnode [`Node`] is a real Erlang node: it
//! speaks the Erlang distribution protocol (plain TCP or TLS) and EPMD, so unmodified Elixir
//! and Erlang nodes connect to it, find its registered processes and call them with
//! `GenServer.call`, `:rpc.call` or plain `send`, exactly as they would a BEAM node's.
//!
//! The crate is a library plus the `kvnode` binary. The binary is the first app built on
//! the library: it hosts the `DistributedExample.KVStore` GenServer (a durable key-value
//! store); see the README for its flags and wire interface.
//!
//! # Quick start: a Rust GenServer called from iex
//!
//! ```no_run
//! use kvnode::term::{Atom, FixInteger, Term};
//! use kvnode::{CallResult, Caller, Ctx, GenServer, NodeBuilder, Request};
//!
//! /// Counts; `:get` answers the count, `:bump` (a call or a cast) adds one.
//! struct Counter(i32);
//!
//! impl GenServer for Counter {
//!     fn handle_call(&mut self, _: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
//!         match request.decode() {
//!             Ok(Term::Atom(a)) if a.name == "get" => {
//!                 CallResult::Reply(FixInteger::from(self.0).into())
//!             }
//!             Ok(Term::Atom(a)) if a.name == "bump" => {
//!                 self.0 += 1;
//!                 CallResult::Reply(Atom::from("ok").into())
//!             }
//!             _ => CallResult::Reply(Atom::from("unknown_request").into()),
//!         }
//!     }
//!
//!     fn handle_cast(&mut self, _: &mut Ctx, request: Request<'_>) {
//!         if matches!(request.decode(), Ok(Term::Atom(a)) if a.name == "bump") {
//!             self.0 += 1;
//!         }
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let node = NodeBuilder::new("rust@127.0.0.1").cookie("secret").start().await?;
//!     node.spawn_server(Some("counter"), Counter(0))?;
//!     // Runs until a peer calls init:stop.
//!     node.stop_requested().await;
//!     node.stop().await;
//!     Ok(())
//! }
//! ```
//!
//! Then, from Elixir (`iex --name me@127.0.0.1 --cookie secret`):
//!
//! ```text
//! iex> GenServer.call({:counter, :"rust@127.0.0.1"}, :bump)
//! :ok
//! iex> GenServer.call({:counter, :"rust@127.0.0.1"}, :get)
//! 1
//! ```
//!
//! The node registers with the EPMD on port 4369, and serves EPMD itself when none runs
//! there ([`NodeBuilder::embedded_epmd`]). Peers see it as a hidden node unless
//! [`NodeBuilder::visible`] makes it a visible one (then it takes part in `:global` and `:pg`).
//!
//! # What is here
//! - [`NodeBuilder`] starts a [`Node`] (name, cookie, listener, EPMD, TLS, [`Limits`]);
//!   [`Node::stop`] stops it.
//! - [`GenServer`], with [`Request`] (the request as bytes or a term, decoded on demand),
//!   [`CallResult`], [`Ctx`] and [`Caller`]: a server process that Elixir calls and casts to,
//!   spawned with [`Node::spawn_server`].
//! - [`Process`] (from [`Node::process`]): a Rust-side process with a pid and an async
//!   mailbox that calls ([`Process::call`], done as `gen:call` does: monitor, alias tag, late
//!   replies dropped), casts, sends, monitors and links to any [`Dest`] (a pid, a local name,
//!   or a name on a node); [`Received`] is what its mailbox yields.
//! - [`Node::connect`] and [`Node::monitor_nodes`] ([`NodeEvent`]).
//! - [`term`]: the Erlang term types (`Term`, `Atom`, `Pid`, ...), from `erl_dist`/`eetf`.
//! - [`kv`]: the KV store app, to host `DistributedExample.KVStore` on your own node.
//!
//! # Calling Elixir
//!
//! ```no_run
//! # async fn demo(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
//! use kvnode::term::Atom;
//! use std::time::Duration;
//! node.connect("app@127.0.0.1").await?;
//! let me = node.process(None)?;
//! // GenServer.call({MyApp.Counter, :"app@127.0.0.1"}, :incr)
//! let count = me
//!     .call(("Elixir.MyApp.Counter", "app@127.0.0.1"), Atom::from("incr").into(), Duration::from_secs(5))
//!     .await?;
//! println!("{count}");
//! # Ok(()) }
//! ```
//!
//! # Examples
//! Each is run by the tests against real nodes (`tests/example_*.rs`):
//! - `examples/rust_server.rs`: the quick start above as a program (a stack with calls,
//!   casts, info messages and `:sys`); `cargo run --example rust_server -- rust@127.0.0.1
//!   secret`.
//! - `examples/call_elixir.rs`: Rust calls a supervised Elixir GenServer, monitors it, sees
//!   it crash and calls the restarted one.
//! - `examples/kv_watch.rs`: a Rust process subscribed to a kvnode's KV events.
//! - `examples/mixed_cluster.rs`: an Elixir node, a kvnode and a Rust node talking to both.
//!
//! # Layout
//! Data flows top to bottom, and back up for replies:
//! - `epmd`: EPMD client (register, keep the registration) and the embedded EPMD server;
//! - `etf`: validation of untrusted external-term bytes before decoding, bounded text;
//! - `node`: the generic Erlang node, in layers: `transport` (admission, handshake, TLS,
//!   connections, the peer table), `process` (pids, refs, names, mailboxes, monitors,
//!   links, routing), `gen_server` (the GenServer protocol and host), `services`
//!   (`net_kernel`, `rex`, rpc via SPAWN_REQUEST over one table of functions apps extend),
//!   `builder` (start and stop). Nothing in it knows the KV store;
//! - `kv`: the `DistributedExample.KVStore` app: its wire interface, store, server,
//!   durability and rpc functions;
//! - `storage`: the write-ahead log and snapshots behind `--data-dir`;
//! - `cli` and `config`: the binary's flags and the settings they resolve to;
//! - `client`: the binary's client commands (`kvnode call`, `rpc`, `ping`, `names`, `epmd`).
//!
//! Accept -> handshake (in the connection's own task, under a timeout) -> reader -> router ->
//! mailbox -> GenServer -> the peer's bounded writer queue -> socket.

#![warn(missing_docs)]

pub(crate) mod cli;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod epmd;
pub mod etf;
pub mod kv;
pub(crate) mod metrics;
pub(crate) mod node;
pub(crate) mod ready;
pub(crate) mod storage;
pub(crate) mod syntax;

pub use node::builder::{
    Limits, NodeBuilder, STOP_PROCESSES_DEADLINE, STOP_TASKS_DEADLINE, StartError,
};
pub use node::gen_server::{
    CallResult, Caller, Congestion, Ctx, DecodeError, GenServer, Replier, Request,
};
pub use node::services::functions::Outcome;
pub use node::services::global::{GlobalError, Resolve as GlobalResolve};
pub use node::services::pg::{
    DEFAULT_PG_MAX_GROUP_BYTES, DEFAULT_PG_MAX_MEMBERS, MAX_PG_PEERS, PG_EVENTS_CAPACITY, PgError,
    PgEvent, PgEvents, PgGroup, PgOptions, PgScope,
};
pub use node::{
    CallError, ConnectError, Dest, Node, NodeEvent, NodeEvents, Process, Received, SpawnError,
};

/// The Erlang term types, as `erl_dist` (and `eetf`) define them: [`Term`](term::Term) and
/// its variants ([`Atom`](term::Atom), [`Pid`](term::Pid), [`Reference`](term::Reference),
/// [`Tuple`](term::Tuple), [`List`](term::List), [`Map`](term::Map), ...).
///
/// ```
/// use kvnode::term::{Atom, FixInteger, Term, Tuple};
/// let reply: Term = Tuple::from(vec![Atom::from("ok").into(), FixInteger::from(1).into()]).into();
/// assert_eq!(reply.to_string(), "{'ok',1}");
/// ```
pub mod term {
    pub use erl_dist::term::*;
}

/// Not part of the API, no semver promise: what the `kvnode` binary, the integration tests
/// and the fuzz targets reach inside the crate for. May change in any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::cli::{Cli, CliError, ClientOpts, Command, Settings};
    /// The command-line client (`kvnode call`, `rpc`, `ping`, `names`, `epmd`, ...).
    pub mod client {
        pub use crate::client::{DEFAULT_TIMEOUT_MS, Failure, Status, main};
    }
    pub use crate::config::{Config, DEFAULT_MAX_HANDSHAKES_PER_IP};
    pub use crate::storage::StorageError;
    /// Erlang/Elixir term syntax and JSON (the command-line client's).
    pub mod syntax {
        pub use crate::syntax::{
            MAX_ATOM_CHARS, MAX_DEPTH, MAX_JSON_DEPTH, MAX_JSON_SAFE_INTEGER, MAX_MAP_KEY_NESTING,
            MAX_SEGMENT_BITS, Syntax, SyntaxError, compare, exact_eq, from_json, json_bytes, parse,
            parse_pid, print, print_bytes, to_json,
        };
    }

    /// EPMD pieces the tests and fuzz targets drive directly.
    pub mod epmd {
        /// The EPMD client.
        pub mod client {
            pub use crate::epmd::client::port_please;
        }
        /// The EPMD wire format.
        pub mod proto {
            pub use crate::epmd::proto::check_name;
        }
        /// The embedded EPMD server.
        pub mod server {
            pub use crate::epmd::server::{
                DEFAULT_MAX_REGISTRATIONS_PER_IP, DEFAULT_MAX_REQUESTS_PER_IP, REQUEST_TIMEOUT,
                parse_request,
            };
        }
    }

    /// Term validation and decoding.
    pub mod etf {
        pub use crate::etf::{
            DEFAULT_MAX_DEPTH, DEFAULT_MAX_TERMS, Limits, TermError, decode, stack_size_for_depth,
        };
    }

    /// Distribution transport pieces.
    pub mod transport {
        /// Frame decoding.
        pub mod connection {
            pub use crate::node::transport::connection::decode_frame;
        }
        /// The handshake.
        pub mod handshake {
            pub use crate::node::transport::handshake::{Error, accept, connect, local_flags};
        }
    }
}

use config::Config;
use kv::KvConfig;
use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// Errors that stop the `kvnode` binary from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The node did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The data directory could not be opened or recovered.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The `--ready-file` could not be written.
    #[error("cannot write the ready file {}: {source}", path.display())]
    ReadyFile {
        /// The path given.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The KV server could not be spawned (its name is taken or invalid).
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The `--metrics-addr` could not be bound.
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Metrics {
        /// The address given.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<kv::KvError> for Error {
    fn from(error: kv::KvError) -> Self {
        match error {
            kv::KvError::Storage(e) => Error::Storage(e),
            kv::KvError::Spawn(e) => Error::Spawn(e),
        }
    }
}

/// The listen backlog of kvnode's sockets (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` uses 128, and a burst of connections bigger than that (a flood, or
/// many nodes starting at once) then has SYNs dropped: each dropped one costs its sender a
/// 1 s retransmission, real peers included. Measured: 1,000 connections at once took 5.1 s
/// with 128 and 0.1 s with this.
pub(crate) const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` sets it).
pub(crate) fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does), so
/// `--max-connections` is reached before EMFILE is: a common soft limit is 1024, the default
/// `--max-connections`. Returns the soft limit now in force.
pub(crate) fn raise_fd_limit() -> std::io::Result<u64> {
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

/// The `kvnode` binary: runs a node with the KV app until `shutdown` resolves or a peer asks
/// it to stop (`init:stop`, `erlang:halt`), then stops it gracefully. Returns the exit
/// status: 0, or what `erlang:halt/1` / `init:stop/1` asked for. Hidden from the documented
/// API: its settings come from the command line (`internals::Cli`); a program builds its
/// node with [`NodeBuilder`] and [`kv::start`].
///
/// The start order matters: the KV state is recovered before the node registers with EPMD
/// (no peer finds a node whose data is not back yet), and the KV server is up before the
/// first peer is accepted.
#[doc(hidden)]
pub async fn run(
    config: Config,
    kv_config: KvConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<u8, Error> {
    let ready_path = config.ready_file.clone();
    // The metrics endpoint comes first: /healthz answers and /readyz says 503 during
    // recovery. Stopped when this function returns (the guard).
    let (scrape, _metrics_stop) = match config.metrics_addr {
        Some(addr) => {
            let listener = listen(addr).map_err(|source| Error::Metrics { addr, source })?;
            let scrape = std::sync::Arc::new(metrics::Scrape {
                node: std::sync::OnceLock::new(),
                started: std::time::Instant::now(),
                stopping: std::sync::atomic::AtomicBool::new(false),
            });
            let stop = tokio_util::sync::CancellationToken::new();
            metrics::enable();
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics endpoint listening (/metrics, /healthz, /readyz)");
            tokio::spawn(metrics::http::serve(listener, scrape.clone(), stop.clone()));
            (Some(scrape), Some(stop.drop_guard()))
        }
        None => (None, None),
    };
    let bound = node::builder::bind(config)?;
    let dist_port = bound.port();
    // Recover the state before anyone can find us through EPMD.
    let recovered = kv::recover(&kv_config).await?;
    let registered = bound.register().await?;
    let epmd = registered.epmd().clone();
    if let Err(error) = kv::start_recovered(registered.node(), &kv_config, recovered) {
        registered.serve().stop().await;
        return Err(error.into());
    }
    // A visible node: the KV server's global name and pg groups (--global-name, --pg).
    if let Some(kv_pid) = registered
        .node()
        .whereis(&kv_config.process_name)
        .map(|mb| mb.pid)
    {
        let cfg = registered.node().config().clone();
        if let (Some(global), Some(name)) = (registered.global(), &cfg.global_name) {
            node::services::global::register(global, name, kv_pid.clone());
        }
        let mut scopes: Vec<(String, Vec<String>)> = Vec::new();
        for (scope, group) in &cfg.pg_groups {
            match scopes.iter_mut().find(|(s, _)| s == scope) {
                Some((_, groups)) if !groups.contains(group) => groups.push(group.clone()),
                Some(_) => {}
                None => scopes.push((scope.clone(), vec![group.clone()])),
            }
        }
        if cfg.visible {
            for (scope, groups) in scopes {
                node::services::pg::start_scope(registered.node(), &scope, groups, kv_pid.clone());
            }
        }
    }
    let node = registered.serve();
    let tls = match &node.config().tls {
        None => "off",
        Some(tls) if tls.verify_peer() => "on, verify-peer",
        Some(_) => "on",
    };
    tracing::info!(
        node = %node.name().name,
        port = dist_port,
        epmd = %epmd,
        process = %kv_config.process_name,
        creation = epmd.creation,
        tls,
        "kvnode ready"
    );
    // Written now the node is ready; removed (dropped) after the orderly stop below.
    let _ready = match ready::publish(ready_path, &node) {
        Ok(file) => file,
        Err(error) => {
            node.stop().await;
            return Err(error);
        }
    };
    // Ready: /readyz answers 200 from now on (the same moment as the ready file).
    if let Some(scrape) = &scrape {
        let _ = scrape.node.set(node.clone());
    }
    let status = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            0
        }
        status = node.stop_requested() => {
            tracing::info!(status, "shutting down: a peer asked the node to stop");
            status
        }
    };
    // Not ready any more: load balancers and orchestrators stop sending work while the node
    // drains (/healthz stays 200 until the process exits).
    if let Some(scrape) = &scrape {
        scrape
            .stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    node.stop().await;
    tracing::info!(status, "stopped");
    Ok(status)
}
