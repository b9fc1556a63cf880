//! Starting and stopping a node: [`NodeBuilder`] (name, cookie, listener, EPMD, TLS,
//! limits) and the one core start path it shares with the `kvnode` binary.
//!
//! A start goes in three stages, so an app can do work between them (the KV store recovers
//! its data before the node is findable through EPMD, and spawns its server before the first
//! peer is accepted):
//! 1. [`bind`]: check the settings, bind the distribution listener;
//! 2. [`Bound::register`]: register with EPMD (or serve it), create the [`Node`], start the
//!    services every node has (`net_kernel`, `rex`, rpc and erpc, the built-in functions,
//!    `init:stop`);
//! 3. [`Registered::serve`]: start accepting peers.
//!
//! [`NodeBuilder::start`] runs the three in a row. The core starts no app.

use crate::config::Config;
use crate::node::gen_server::{self, GenServer};
use crate::node::transport::{self, admission};
use crate::node::{Node, SpawnError};
use erl_dist::term::Pid;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long [`Node::stop`] waits for the node's tasks (connections, accept loop, EPMD
/// registration) to finish before it logs a warning and goes on.
pub const STOP_TASKS_DEADLINE: Duration = Duration::from_secs(5);

/// How long [`Node::stop`] waits for the processes to let go of their state (the KV store's
/// storage commits everything queued then) before it logs a warning and goes on.
pub const STOP_PROCESSES_DEADLINE: Duration = Duration::from_secs(30);

/// File descriptors a node may need beyond one per inbound connection (established or
/// handshaking): the embedded EPMD's connection caps ([`crate::epmd::server::MAX_FDS`]) and
/// some slack for listeners, logs, storage files, dialed peers and TLS bridges.
const FD_OVERHEAD: u64 = crate::epmd::server::MAX_FDS as u64 + 64;

/// Why a node did not start. Nothing is left running when [`NodeBuilder::start`] fails.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The node name is not `name@host` as `erl -name` accepts it.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The cookie is empty.
    #[error("the cookie is empty")]
    EmptyCookie,
    /// A setting is out of its range (for example a limit of 0).
    #[error("invalid setting {setting}: {reason}")]
    InvalidSetting {
        /// The builder method that set it.
        setting: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// The TLS certificate, key or CA files could not be loaded.
    #[error(transparent)]
    Tls(Box<dyn std::error::Error + Send + Sync>),
    /// The distribution listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// EPMD registration failed: the name is taken, no EPMD answers (with the embedded EPMD
    /// off), or it timed out. The message says which.
    #[error(transparent)]
    Epmd(Box<dyn std::error::Error + Send + Sync>),
    /// The connection threads could not be started.
    #[error("cannot start the connection threads: {0}")]
    Threads(std::io::Error),
}

impl From<crate::epmd::EpmdError> for StartError {
    fn from(error: crate::epmd::EpmdError) -> Self {
        StartError::Epmd(Box::new(error))
    }
}

/// Bounds on what peers may make the node hold. Every field has the default of the `kvnode`
/// flag of the same name; change the ones you need:
///
/// ```
/// let mut limits = kvnode::Limits::default();
/// limits.max_connections = 64;
/// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").limits(limits);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Limits {
    /// Largest distribution frame accepted from a peer, in bytes (`--max-message-size`).
    pub max_message_size: usize,
    /// Deepest nesting of a term from a peer, 1 to 1,000,000 (`--max-term-depth`).
    pub max_term_depth: usize,
    /// Most terms in one message from a peer (`--max-terms-per-message`).
    pub max_terms_per_message: usize,
    /// Most authenticated inbound connections at once (`--max-connections`).
    pub max_connections: usize,
    /// Most inbound connections still in the handshake (`--max-handshakes`).
    pub max_handshakes: usize,
    /// Most handshaking connections from one IP address (`--max-handshakes-per-ip`).
    pub max_handshakes_per_ip: usize,
    /// Bytes of messages waiting for nodes being dialed (`--max-pending-bytes`).
    pub max_pending_bytes: usize,
    /// Dials in flight at once (`--max-dials`).
    pub max_dials: usize,
    /// Monitors one peer may hold on local processes (`--max-monitors-per-peer`).
    pub max_monitors_per_peer: usize,
    /// Backpressure bound of a process's mailbox, in wire bytes (`--max-mailbox-bytes`).
    pub max_mailbox_bytes: usize,
    /// Most `global` names a visible node keeps (`--max-global-names`).
    pub max_global_names: usize,
    /// Most bytes the `global` names a visible node keeps may take (`--max-global-name-bytes`).
    pub max_global_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&Config::new("", ""))
    }
}

impl Limits {
    fn from_config(c: &Config) -> Self {
        Limits {
            max_message_size: c.max_message_size,
            max_term_depth: c.max_term_depth,
            max_terms_per_message: c.max_terms_per_message,
            max_connections: c.max_connections,
            max_handshakes: c.max_handshakes,
            max_handshakes_per_ip: c.max_handshakes_per_ip,
            max_pending_bytes: c.max_pending_bytes,
            max_dials: c.max_dials,
            max_monitors_per_peer: c.max_monitors_per_peer,
            max_mailbox_bytes: c.max_mailbox_bytes,
            max_global_names: c.max_global_names,
            max_global_name_bytes: c.max_global_name_bytes,
        }
    }

    fn apply(self, c: &mut Config) {
        c.max_message_size = self.max_message_size;
        c.max_term_depth = self.max_term_depth;
        c.max_terms_per_message = self.max_terms_per_message;
        c.max_connections = self.max_connections;
        c.max_handshakes = self.max_handshakes;
        c.max_handshakes_per_ip = self.max_handshakes_per_ip;
        c.max_pending_bytes = self.max_pending_bytes;
        c.max_dials = self.max_dials;
        c.max_monitors_per_peer = self.max_monitors_per_peer;
        c.max_mailbox_bytes = self.max_mailbox_bytes;
        c.max_global_names = self.max_global_names;
        c.max_global_name_bytes = self.max_global_name_bytes;
    }
}

/// TLS files of a node, as `kvnode --tls-cert --tls-key --tls-cacert [--tls-verify-peer]`
/// (OTP's `inet_tls_dist`). Loaded when the node starts.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    cacert: PathBuf,
    verify_peer: bool,
}

/// Configures and starts a node.
///
/// Defaults are those of the `kvnode` binary: any free distribution port on 0.0.0.0, EPMD
/// on port 4369 (served by the node itself when none runs), plain TCP, the [`Limits`]
/// defaults. The settings are checked when [`NodeBuilder::start`] runs, before anything is
/// bound.
///
/// ```no_run
/// # async fn demo() -> Result<(), kvnode::StartError> {
/// let node = kvnode::NodeBuilder::new("app@127.0.0.1")
///     .cookie("secret")
///     .bind([127, 0, 0, 1].into())
///     .port(0) // any free port
///     .start()
///     .await?;
/// println!("{} listens on port {}", node.name().name, node.port());
/// node.stop().await;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a NodeBuilder does nothing until .start() is awaited"]
pub struct NodeBuilder {
    config: Config,
    tls: Option<TlsFiles>,
}

impl NodeBuilder {
    /// A builder for the node `name` (`alive@host`, as `erl -name`). The cookie defaults to
    /// empty, which [`NodeBuilder::start`] refuses: set one with [`NodeBuilder::cookie`].
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").cookie("secret");
    /// ```
    pub fn new(name: impl Into<String>) -> Self {
        NodeBuilder {
            config: Config::new(name, ""),
            tls: None,
        }
    }

    /// The cluster cookie: peers must present the same one.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").cookie("secret");
    /// ```
    pub fn cookie(mut self, cookie: impl Into<String>) -> Self {
        self.config.cookie = cookie.into();
        self
    }

    /// The address and port of the distribution listener (port 0: any free port).
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").listen(([127, 0, 0, 1], 9100).into());
    /// ```
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.bind = addr.ip();
        self.config.dist_port = addr.port();
        self
    }

    /// The address the distribution listener binds to (default 0.0.0.0).
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").bind([127, 0, 0, 1].into());
    /// ```
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.config.bind = ip;
        self
    }

    /// The distribution port (default 0: any free port; [`Node::port`] tells which).
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").port(9100);
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.config.dist_port = port;
        self
    }

    /// The EPMD port (default 4369; the `kvnode` binary reads `ERL_EPMD_PORT`, the builder
    /// does not).
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").epmd_port(4400);
    /// ```
    pub fn epmd_port(mut self, port: u16) -> Self {
        self.config.epmd_port = port;
        self
    }

    /// Whether the node serves EPMD itself when none answers on the EPMD port (default
    /// true, as the `kvnode` binary). With false, no EPMD fails the start.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").embedded_epmd(false);
    /// ```
    pub fn embedded_epmd(mut self, serve: bool) -> Self {
        self.config.embedded_epmd = serve;
        self
    }

    /// Whether the node registers its name with EPMD (default true). A node that only
    /// dials peers (a command-line client, a test driver) passes false: it is reachable
    /// over the connections it opens but nobody finds it through EPMD, and it serves no
    /// EPMD either (whatever [`NodeBuilder::embedded_epmd`] says). Its creation is drawn at
    /// random.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("client_1@127.0.0.1")
    ///     .cookie("secret")
    ///     .register_with_epmd(false);
    /// ```
    pub fn register_with_epmd(mut self, register: bool) -> Self {
        self.config.register_with_epmd = register;
        self
    }

    /// TLS distribution, as OTP's `inet_tls_dist`: this node's certificate and key, and the
    /// CA certificates peers' certificates must chain to (always checked when this node
    /// dials; for inbound peers only with `verify_peer`). PEM files, loaded at start.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1")
    ///     .tls("app.pem", "app-key.pem", "ca.pem", true);
    /// ```
    pub fn tls(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
        cacert: impl Into<PathBuf>,
        verify_peer: bool,
    ) -> Self {
        self.tls = Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
            cacert: cacert.into(),
            verify_peer,
        });
        self
    }

    /// Bounds on what peers may make the node hold (see [`Limits`]).
    ///
    /// ```
    /// let mut limits = kvnode::Limits::default();
    /// limits.max_message_size = 1 << 20;
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").limits(limits);
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        limits.apply(&mut self.config);
        self
    }

    /// OTP's `net_ticktime` (default 60 s, at least 4 s): ticks every quarter of it when
    /// idle, and a peer silent for that long is dropped. Use the cluster's value.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1")
    ///     .net_ticktime(std::time::Duration::from_secs(20));
    /// ```
    pub fn net_ticktime(mut self, ticktime: Duration) -> Self {
        self.config.net_ticktime = ticktime;
        self
    }

    /// Time a connecting peer has to finish the handshake (default 10 s).
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1")
    ///     .handshake_timeout(std::time::Duration::from_secs(5));
    /// ```
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.config.handshake_timeout = timeout;
        self
    }

    /// Connection threads (default: one per CPU core); each peer connection runs on one.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").threads(2);
    /// ```
    pub fn threads(mut self, threads: usize) -> Self {
        self.config.threads = threads;
        self
    }

    /// Runs the node as a visible node (default false: hidden). A visible node advertises
    /// DFLAG_PUBLISHED and registers with EPMD as a normal node: BEAM peers list it in
    /// `Node.list()` / `nodes()`, report it to `:net_kernel.monitor_nodes/1`, and run `:global`
    /// and `:pg` with it. The node then serves `global_name_server`, a full member of OTP's
    /// `global` (protocol 8): it answers the handshake, takes part in every global lock and
    /// registration, and keeps the cluster's name table, so `:global.sync()` returns on BEAM
    /// peers. A hidden node costs peers nothing of this.
    ///
    /// ```
    /// let builder = kvnode::NodeBuilder::new("app@127.0.0.1").visible(true);
    /// ```
    pub fn visible(mut self, visible: bool) -> Self {
        self.config.visible = visible;
        self
    }

    /// Checks the settings and loads the TLS files, without binding anything.
    fn into_config(self) -> Result<Config, StartError> {
        let mut config = self.config;
        check(&config)?;
        if let Some(t) = self.tls {
            let tls = transport::tls::Tls::load(&transport::tls::TlsOptions {
                cert: t.cert,
                key: t.key,
                cacert: t.cacert,
                verify_peer: t.verify_peer,
            })
            .map_err(|e| StartError::Tls(Box::new(e)))?;
            config.tls = Some(tls);
        }
        Ok(config)
    }

    /// Starts the node: binds the listener, registers with EPMD (or serves it), starts the
    /// services every Erlang node has (`net_kernel`, `rex`, rpc, `init:stop`) and accepts
    /// peers. The node runs on the tokio runtime this is awaited on, plus its own connection
    /// threads, until [`Node::stop`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), kvnode::StartError> {
    /// let node = kvnode::NodeBuilder::new("app@127.0.0.1").cookie("secret").start().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(self) -> Result<Node, StartError> {
        let config = self.into_config()?;
        let node = bind(config)?.register().await?.serve();
        tracing::info!(
            node = %node.name().name,
            port = node.port(),
            "node ready"
        );
        Ok(node)
    }
}

/// The settings [`NodeBuilder::start`] refuses.
fn check(c: &Config) -> Result<(), StartError> {
    crate::config::check_node_name(&c.node_name).map_err(|reason| StartError::InvalidName {
        name: c.node_name.clone(),
        reason,
    })?;
    if c.cookie.is_empty() {
        return Err(StartError::EmptyCookie);
    }
    let positive: [(&'static str, usize); 11] = [
        ("max_message_size", c.max_message_size),
        ("max_terms_per_message", c.max_terms_per_message),
        ("max_connections", c.max_connections),
        ("max_handshakes", c.max_handshakes),
        ("max_handshakes_per_ip", c.max_handshakes_per_ip),
        ("max_dials", c.max_dials),
        ("max_monitors_per_peer", c.max_monitors_per_peer),
        ("max_mailbox_bytes", c.max_mailbox_bytes),
        ("max_global_names", c.max_global_names),
        ("max_global_name_bytes", c.max_global_name_bytes),
        ("threads", c.threads),
    ];
    for (setting, value) in positive {
        if value == 0 {
            return Err(StartError::InvalidSetting {
                setting,
                reason: "must be at least 1",
            });
        }
    }
    if c.max_term_depth == 0 || c.max_term_depth > crate::etf::MAX_MAX_DEPTH {
        return Err(StartError::InvalidSetting {
            setting: "max_term_depth",
            reason: "must be 1 to 1000000",
        });
    }
    if c.net_ticktime < Duration::from_secs(4) {
        return Err(StartError::InvalidSetting {
            setting: "net_ticktime",
            reason: "must be at least 4 s",
        });
    }
    if c.handshake_timeout.is_zero() {
        return Err(StartError::InvalidSetting {
            setting: "handshake_timeout",
            reason: "must be more than 0",
        });
    }
    Ok(())
}

/// Stage 1 of a start: the settings checked, the distribution listener bound.
pub struct Bound {
    config: Config,
    listener: TcpListener,
}

/// Stage 1: sizes thread stacks for `config`'s term depth, raises the open-file limit, and
/// binds the distribution listener. Nothing is findable yet. (The settings are the caller's
/// to check: [`NodeBuilder`] does, the CLI clamps its own.)
pub fn bind(mut config: Config) -> Result<Bound, StartError> {
    // Threads started below without the configuration at hand (storage) size their stacks
    // from it, and recovery accepts terms as deep as peers may send.
    crate::etf::set_configured_depth(config.max_term_depth);
    match crate::raise_fd_limit() {
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
    let listener = crate::listen(addr).map_err(|source| StartError::Listen { addr, source })?;
    // From here on the configuration holds the port really bound ([`Node::port`]).
    config.dist_port = listener
        .local_addr()
        .map_err(|source| StartError::Listen { addr, source })?
        .port();
    Ok(Bound { config, listener })
}

impl Bound {
    /// The distribution port bound.
    pub fn port(&self) -> u16 {
        self.config.dist_port
    }

    /// Stage 2: registers with EPMD (or serves it), creates the [`Node`] and starts the
    /// services every node has. Peers can find the node now but are not accepted until
    /// [`Registered::serve`].
    pub async fn register(self) -> Result<Registered, StartError> {
        let config = self.config;
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let epmd = if config.register_with_epmd {
            crate::epmd::start_with(
                config.epmd_port,
                config.alive_name(),
                config.dist_port,
                !config.visible,
                config.embedded_epmd,
                shutdown.clone(),
                &tracker,
            )
            .await?
        } else {
            // A client-only node: nobody finds it, so any creation will do; drawn at random
            // (never 0..=3, which mean "old creation" to OTP) as OTP does for such nodes.
            let creation = rand::random::<u32>().max(4);
            crate::epmd::EpmdHandle::unregistered(creation, config.epmd_port)
        };
        let threads = match transport::threads::Threads::start(
            config.threads,
            crate::etf::stack_size_for_depth(config.max_term_depth),
        ) {
            Ok(threads) => threads,
            Err(error) => {
                // Unregister (and stop an embedded EPMD) before reporting.
                shutdown.cancel();
                tracker.close();
                let _ = tokio::time::timeout(STOP_TASKS_DEADLINE, tracker.wait()).await;
                return Err(StartError::Threads(error));
            }
        };
        let node = Node::new(
            config,
            epmd.creation,
            shutdown.clone(),
            tracker.clone(),
            threads,
        );
        crate::node::services::builtins::register(node.functions());
        crate::node::services::control::register(node.functions(), node.stop_request());
        gen_server::spawn(
            &node,
            Some(crate::node::services::net_kernel::NAME),
            crate::node::services::net_kernel::NetKernel,
        );
        gen_server::spawn(
            &node,
            Some(crate::node::services::rex::NAME),
            crate::node::services::rex::Rex,
        );
        // A visible node takes part in `global` (a hidden one never hears from it).
        let global = if node.config().visible {
            crate::node::services::global::start(&node)
        } else {
            None
        };
        Ok(Registered {
            node,
            listener: self.listener,
            epmd,
            global,
        })
    }
}

/// Stage 2 of a start: registered with EPMD, the node and its services up, peers not yet
/// accepted. Apps spawn their processes on [`Registered::node`] now.
pub struct Registered {
    node: Node,
    listener: TcpListener,
    epmd: crate::epmd::EpmdHandle,
    global: Option<crate::node::services::global::Global>,
}

impl Registered {
    /// The node (not accepting peers yet).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The EPMD registration (mode, creation).
    pub fn epmd(&self) -> &crate::epmd::EpmdHandle {
        &self.epmd
    }

    /// The node's `global` server (a visible node only).
    pub fn global(&self) -> Option<&crate::node::services::global::Global> {
        self.global.as_ref()
    }

    /// Stage 3: starts accepting peers.
    pub fn serve(self) -> Node {
        let node = self.node;
        node.tracker().spawn(accept_loop(
            node.clone(),
            self.listener,
            node.shutdown_token().clone(),
        ));
        node
    }
}

impl Node {
    /// The distribution port the node listens on.
    ///
    /// ```no_run
    /// # async fn demo(node: kvnode::Node) {
    /// println!("listening on {}", node.port());
    /// # }
    /// ```
    pub fn port(&self) -> u16 {
        self.config().dist_port
    }

    /// Spawns `server` as a process on this node, registered as `name` when given (then
    /// reachable from Elixir as `GenServer.call({name, node}, request)`). Fails if the name
    /// is taken or not a valid atom; the server is then dropped unstarted.
    ///
    /// ```no_run
    /// use kvnode::{CallResult, Caller, Ctx, GenServer, Request};
    /// use kvnode::term::{Atom, Term};
    ///
    /// struct Hello;
    /// impl GenServer for Hello {
    ///     fn handle_call(&mut self, _: &mut Ctx, _: &Caller, _: Request<'_>) -> CallResult<'_> {
    ///         CallResult::Reply(Atom::from("world").into())
    ///     }
    /// }
    ///
    /// # async fn demo(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let pid = node.spawn_server(Some("hello"), Hello)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_server<S: GenServer>(
        &self,
        name: Option<&str>,
        server: S,
    ) -> Result<Pid, SpawnError> {
        gen_server::try_spawn_with(self, name, |_| server).map(|mailbox| mailbox.pid)
    }

    /// Resolves when a peer asks the node to stop (`init:stop/0,1`, `erlang:halt/0,1`,
    /// `erl_call -q`), with the exit status asked for. The node keeps running: stopping it
    /// (and exiting) is the program's choice.
    ///
    /// ```no_run
    /// # async fn demo(node: kvnode::Node) {
    /// let status = node.stop_requested().await;
    /// node.stop().await;
    /// std::process::exit(i32::from(status));
    /// # }
    /// ```
    pub async fn stop_requested(&self) -> u8 {
        self.stop_request().requested().await
    }

    /// Stops the node: stops accepting, closes peer connections (after flushing what is
    /// queued to them), unregisters from EPMD (and stops an embedded EPMD), waits for its
    /// tasks (up to [`STOP_TASKS_DEADLINE`]), lets its processes go (up to
    /// [`STOP_PROCESSES_DEADLINE`], so servers holding storage commit it) and stops the
    /// connection threads. Calling it again does nothing more.
    ///
    /// ```no_run
    /// # async fn demo(node: kvnode::Node) {
    /// node.stop().await;
    /// # }
    /// ```
    pub async fn stop(&self) {
        self.shutdown_token().cancel();
        self.manager().close_all();
        self.tracker().close();
        if tokio::time::timeout(STOP_TASKS_DEADLINE, self.tracker().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline = ?STOP_TASKS_DEADLINE,
                "some tasks did not stop within the deadline"
            );
        }
        // Let go of the processes: a server holding storage (the KV app's) then commits
        // everything queued (casts included) and joins its threads before we return. (A
        // server's replier holds the node, so without this it would never be dropped.)
        let node = self.clone();
        let released = tokio::task::spawn_blocking(move || {
            for name in node.registered_names() {
                if let Some(mb) = node.whereis(&name) {
                    node.remove_process(&mb.pid);
                }
            }
        });
        if tokio::time::timeout(STOP_PROCESSES_DEADLINE, released)
            .await
            .is_err()
        {
            tracing::warn!(
                deadline = ?STOP_PROCESSES_DEADLINE,
                "the processes did not let go within the deadline (storage flush)"
            );
        }
        self.threads().stop();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_before_anything_is_bound() {
        let named = |name: &str| NodeBuilder::new(name).cookie("c").into_config();
        assert!(matches!(named("noat"), Err(StartError::InvalidName { .. })));
        assert!(matches!(
            named("a b@h"),
            Err(StartError::InvalidName { .. })
        ));
        assert!(named("ok@127.0.0.1").is_ok());
        assert!(matches!(
            NodeBuilder::new("a@h").into_config(),
            Err(StartError::EmptyCookie)
        ));
        let limits = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        let refused = NodeBuilder::new("a@h")
            .cookie("c")
            .limits(limits)
            .into_config();
        assert!(matches!(
            refused,
            Err(StartError::InvalidSetting {
                setting: "max_connections",
                ..
            })
        ));
        let short_tick = NodeBuilder::new("a@h")
            .cookie("c")
            .net_ticktime(Duration::from_secs(1))
            .into_config();
        assert!(matches!(
            short_tick,
            Err(StartError::InvalidSetting {
                setting: "net_ticktime",
                ..
            })
        ));
        let missing_tls = NodeBuilder::new("a@h")
            .cookie("c")
            .tls(
                "/nonexistent/c.pem",
                "/nonexistent/k.pem",
                "/nonexistent/ca.pem",
                false,
            )
            .into_config();
        assert!(matches!(missing_tls, Err(StartError::Tls(_))));
    }

    fn unused_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    struct Echo;
    impl GenServer for Echo {
        fn handle_call(
            &mut self,
            _: &mut crate::node::gen_server::Ctx,
            _: &crate::node::gen_server::Caller,
            request: crate::node::gen_server::Request<'_>,
        ) -> crate::node::gen_server::CallResult<'_> {
            let term = request
                .decode()
                .unwrap_or_else(|_| erl_dist::term::Atom::from("bad").into());
            crate::node::gen_server::CallResult::Reply(term)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn start_serve_epmd_refuse_taken_names_and_stop() {
        let epmd_port = unused_port();
        let builder = |name: &str| {
            NodeBuilder::new(name)
                .cookie("c")
                .bind([127, 0, 0, 1].into())
                .epmd_port(epmd_port)
                .threads(1)
        };
        // No EPMD there and none to be served: a clear error, nothing left bound.
        let refused = builder("builder_a@127.0.0.1")
            .embedded_epmd(false)
            .start()
            .await;
        match refused {
            Err(StartError::Epmd(e)) => {
                assert!(e.to_string().contains("no EPMD"), "{e}")
            }
            other => panic!("expected an EPMD error, got {:?}", other.map(|n| n.port())),
        }
        // With the embedded EPMD (the default) it starts, findable through that EPMD.
        let node = builder("builder_a@127.0.0.1")
            .start()
            .await
            .expect("node starts");
        assert_ne!(node.port(), 0);
        let epmd = SocketAddr::from(([127, 0, 0, 1], epmd_port));
        let found = crate::epmd::client::port_please(epmd, "builder_a")
            .await
            .expect("EPMD answers")
            .expect("registered");
        assert_eq!(found.port, node.port());
        // Names: one server per name, as erlang:register/2.
        let pid = node.spawn_server(Some("echo"), Echo).expect("spawned");
        assert_eq!(node.whereis("echo").map(|m| m.pid), Some(pid));
        assert_eq!(
            node.spawn_server(Some("echo"), Echo),
            Err(SpawnError::NameTaken("echo".into()))
        );
        assert_eq!(node.spawn_server(Some(""), Echo), Err(SpawnError::BadName));
        assert!(node.spawn_server(None, Echo).is_ok());
        // A second node under the same name is refused by EPMD.
        match builder("builder_a@127.0.0.1").start().await {
            Err(StartError::Epmd(e)) => {
                assert!(e.to_string().contains("already registered"), "{e}")
            }
            other => panic!("expected name taken, got {:?}", other.map(|n| n.port())),
        }
        // Stop: unregistered, the embedded EPMD and the listener gone.
        node.stop().await;
        assert!(
            crate::epmd::client::port_please(epmd, "builder_a")
                .await
                .is_err()
        );
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", node.port()))
                .await
                .is_err()
        );
        node.stop().await; // a second stop is harmless
    }
}
