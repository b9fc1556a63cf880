//! The resolved configuration of the generic node core: what [`crate::NodeBuilder`] and the
//! binary's CLI flags (with the environment and `~/.erlang.cookie`) boil down to. Nothing in
//! it belongs to an app: the KV store's settings are in `crate::kv::KvConfig`.

use std::net::IpAddr;
use std::time::Duration;

/// Everything the node core needs to start (see [`crate::NodeBuilder`]).
#[derive(Clone)]
pub struct Config {
    /// Full node name, `name@host`, exactly as peers will dial it.
    pub node_name: String,
    /// The shared secret of the cluster. Never logged.
    pub cookie: String,
    /// Port of the distribution listener (0 = any free port).
    pub dist_port: u16,
    /// Address the distribution listener binds to.
    pub bind: IpAddr,
    /// Port of EPMD (a system one, or the embedded one kvnode starts when none answers).
    pub epmd_port: u16,
    /// Serve EPMD on `epmd_port` when none answers there (and again whenever the
    /// registration is lost and none answers); false fails the start instead.
    pub embedded_epmd: bool,
    /// Register the node's name with EPMD (true for a server). False makes a client-only
    /// node: it dials peers but nobody finds it through EPMD, and no EPMD is served
    /// (`embedded_epmd` is then ignored); its creation is drawn at random, as OTP's.
    pub register_with_epmd: bool,
    /// Largest distribution frame accepted from a peer, in bytes.
    pub max_message_size: usize,
    /// Time a peer gets to complete the handshake.
    pub handshake_timeout: Duration,
    /// OTP's `net_ticktime`: ticks are sent every quarter of it, a silent peer is dropped after it.
    pub net_ticktime: Duration,
    /// Largest nesting depth of a term accepted from a peer (`--max-term-depth`); threads
    /// get stacks sized for it ([`crate::etf::stack_size_for_depth`]).
    pub max_term_depth: usize,
    /// Most terms in one message (control tuple and payload together) accepted from a peer.
    pub max_terms_per_message: usize,
    /// Most inbound distribution connections that have completed the handshake, at once
    /// (handshaking ones count against `max_handshakes`).
    pub max_connections: usize,
    /// TLS distribution (`inet_tls_dist`); None is plain TCP.
    pub tls: Option<crate::node::transport::tls::Tls>,
    /// Connection threads (`--threads`): each connection runs on one of them.
    pub threads: usize,
    /// How long a connection with hot traffic polls for its next bytes before sleeping
    /// (`--busy-wait-us`; zero: never).
    pub busy_wait: Duration,
    // Admission (issue 10): unauthenticated connections and dials have budgets of their own.
    /// Most inbound connections still in the handshake (`--max-handshakes`); when full, the
    /// oldest handshake of the address holding the most is closed to make room.
    pub max_handshakes: usize,
    /// Most handshaking connections from one IP address (`--max-handshakes-per-ip`); one more
    /// closes that address's oldest handshake.
    pub max_handshakes_per_ip: usize,
    /// Bytes of messages waiting for nodes being dialed, over all of them
    /// (`--max-pending-bytes`); more are dropped.
    pub max_pending_bytes: usize,
    /// Dials in flight at once (`--max-dials`); a send needing one more is dropped.
    pub max_dials: usize,
    /// Monitors one peer may hold on local processes (`--max-monitors-per-peer`); a peer
    /// placing more is disconnected.
    pub max_monitors_per_peer: usize,
    /// Backpressure bound of a process's mailbox, in wire bytes (`--max-mailbox-bytes`).
    pub max_mailbox_bytes: usize,
    /// `--ready-file`: written (atomically) once the node is ready, removed on an orderly
    /// stop; scripts and tests wait for it instead of scraping logs (see `src/ready.rs` for the format).
    pub ready_file: Option<std::path::PathBuf>,
    /// `--metrics-addr`: where the HTTP endpoint serving `/metrics` (Prometheus),
    /// `/healthz` and `/readyz` listens; None (the default) serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--visible`: advertise DFLAG_PUBLISHED (and register with EPMD as a normal node), so
    /// BEAM peers list the node in `nodes()` and run `global` and `pg` with it. The node
    /// then serves `global_name_server` (a protocol-8 `global` member). False (the default):
    /// a hidden node, as before.
    pub visible: bool,
    /// `--global-name NAME`: register the app's server (the KV store) under this `global`
    /// name (an atom) once the node is visible. Needs `visible`.
    pub global_name: Option<String>,
    /// `--pg SCOPE:GROUP` (repeatable): join the app's server to `pg` group GROUP of scope
    /// SCOPE (both atoms). Needs `visible`.
    pub pg_groups: Vec<(String, String)>,
    /// `--max-global-names`: most `global` names a visible node keeps.
    pub max_global_names: usize,
    /// `--max-global-name-bytes`: most bytes (external format of each name and its resolve
    /// method) the `global` names a visible node keeps may take.
    pub max_global_name_bytes: usize,
    /// `--pg-max-members`: most peers' memberships a `pg` scope remembers.
    pub pg_max_members: usize,
    /// `--pg-max-group-bytes`: most bytes of peers' group names a `pg` scope remembers.
    pub pg_max_group_bytes: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("node_name", &self.node_name)
            .field("cookie", &"<redacted>")
            .field("dist_port", &self.dist_port)
            .field("bind", &self.bind)
            .field("epmd_port", &self.epmd_port)
            .field("embedded_epmd", &self.embedded_epmd)
            .field("register_with_epmd", &self.register_with_epmd)
            .field("max_message_size", &self.max_message_size)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("net_ticktime", &self.net_ticktime)
            .field("max_term_depth", &self.max_term_depth)
            .field("max_terms_per_message", &self.max_terms_per_message)
            .field("max_connections", &self.max_connections)
            .field("tls", &self.tls)
            .field("threads", &self.threads)
            .field("busy_wait", &self.busy_wait)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshakes_per_ip", &self.max_handshakes_per_ip)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("max_dials", &self.max_dials)
            .field("max_monitors_per_peer", &self.max_monitors_per_peer)
            .field("max_mailbox_bytes", &self.max_mailbox_bytes)
            .field("ready_file", &self.ready_file)
            .field("metrics_addr", &self.metrics_addr)
            .field("visible", &self.visible)
            .field("global_name", &self.global_name)
            .field("pg_groups", &self.pg_groups)
            .field("max_global_names", &self.max_global_names)
            .field("max_global_name_bytes", &self.max_global_name_bytes)
            .field("pg_max_members", &self.pg_max_members)
            .field("pg_max_group_bytes", &self.pg_max_group_bytes)
            .finish()
    }
}

/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Default `--max-handshakes`: inbound connections that have not authenticated yet, on a
/// budget of their own so they never take an authenticated peer's place. A real handshake
/// takes milliseconds; when the budget is full the oldest handshake of the address holding
/// the most goes, so a flood evicts itself and a real peer from elsewhere always gets in.
pub const DEFAULT_MAX_HANDSHAKES: usize = 256;

/// Default `--max-handshakes-per-ip`: handshaking connections from one address. One more
/// closes that address's oldest handshake, so even a peer sharing the flood's address gets
/// in unless the flood opens this many connections during its few-millisecond handshake.
pub const DEFAULT_MAX_HANDSHAKES_PER_IP: usize = 64;

/// Default `--busy-wait-us`. Measured on a 2-core VM (scripts/bench, 64 callers): 82k calls/s
/// with it against 56k without, and a single caller's p50 latency 38 µs against 75 µs.
pub const DEFAULT_BUSY_WAIT_US: u64 = 50;

/// Default `--threads`: one connection thread per CPU core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// Default `--max-message-size`: 128 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 128 * 1024 * 1024;

impl Config {
    /// A configuration with the defaults for everything but the name and cookie.
    pub fn new(node_name: impl Into<String>, cookie: impl Into<String>) -> Self {
        Config {
            node_name: node_name.into(),
            cookie: cookie.into(),
            dist_port: 0,
            bind: IpAddr::from([0, 0, 0, 0]),
            epmd_port: 4369,
            embedded_epmd: true,
            register_with_epmd: true,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: Duration::from_secs(10),
            net_ticktime: Duration::from_secs(60),
            max_term_depth: crate::etf::DEFAULT_MAX_DEPTH,
            max_terms_per_message: crate::etf::DEFAULT_MAX_TERMS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            tls: None,
            threads: default_threads(),
            busy_wait: Duration::from_micros(DEFAULT_BUSY_WAIT_US),
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_ip: DEFAULT_MAX_HANDSHAKES_PER_IP,
            max_pending_bytes: crate::node::transport::manager::DEFAULT_MAX_PENDING_BYTES,
            max_dials: crate::node::transport::manager::DEFAULT_MAX_DIALS,
            max_monitors_per_peer: crate::node::monitors::DEFAULT_MAX_MONITORS_PER_PEER,
            max_mailbox_bytes: crate::node::gen_server::DEFAULT_MAX_MAILBOX_BYTES,
            ready_file: None,
            metrics_addr: None,
            visible: false,
            global_name: None,
            pg_groups: Vec::new(),
            max_global_names: crate::node::services::global::DEFAULT_MAX_GLOBAL_NAMES,
            max_global_name_bytes: crate::node::services::global::DEFAULT_MAX_GLOBAL_NAME_BYTES,
            pg_max_members: crate::node::services::pg::DEFAULT_PG_MAX_MEMBERS,
            pg_max_group_bytes: crate::node::services::pg::DEFAULT_PG_MAX_GROUP_BYTES,
        }
    }

    /// The part of the node name before `@` (what EPMD registers).
    pub fn alive_name(&self) -> &str {
        self.node_name.split('@').next().unwrap_or(&self.node_name)
    }
}

/// Checks a full node name (`name@host`) as `erl -name` would: the part before `@` non-empty
/// and made of letters, digits, `_` and `-`; a non-empty host with no other `@`; at most 255
/// bytes. The error says why, in words.
pub fn check_node_name(name: &str) -> Result<(), &'static str> {
    let Some((alive, host)) = name.split_once('@') else {
        return Err("missing '@'");
    };
    if alive.is_empty() {
        return Err("the part before '@' is empty");
    }
    if host.is_empty() || host.contains('@') {
        return Err("the host part is empty or has another '@'");
    }
    if name.len() > 255 {
        return Err("longer than 255 bytes");
    }
    if !alive
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("the part before '@' may hold only letters, digits, '_' and '-'");
    }
    Ok(())
}
