//! Command-line flags (clap derive) and their resolution into the node's [`Config`] and the
//! KV app's [`KvConfig`]: node name (`--name`/`--sname`), cookie (`--cookie`,
//! `ERLANG_COOKIE`, `~/.erlang.cookie`), ports, limits, the KV store's settings.

use crate::config::{
    Config, DEFAULT_BUSY_WAIT_US, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_MESSAGE_SIZE,
};
use crate::kv::{DEFAULT_PROCESS_NAME, KvConfig};
use clap::Parser;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// kvnode: a Rust Erlang node serving `DistributedExample.KVStore` to Elixir and Erlang nodes.
#[derive(Debug, Parser)]
#[command(
    name = "kvnode",
    version,
    after_help = "Examples:\n  \
      kvnode --name kv@127.0.0.1 --cookie secret\n  \
      kvnode --sname kv --cookie secret --port 9100\n  \
      ERL_EPMD_PORT=4400 kvnode --name kv@127.0.0.1\n  \
      kvnode --name kv@127.0.0.1 --tls-cert kv.pem --tls-key kv-key.pem --tls-cacert ca.pem --tls-verify-peer\n\n\
    Then, from Elixir:\n  \
      iex --name me@127.0.0.1 --cookie secret\n  \
      iex> GenServer.call({DistributedExample.KVStore, :\"kv@127.0.0.1\"}, {:get, :message})\n\n\
    Logs go to stderr; RUST_LOG controls them (default: info), e.g. RUST_LOG=kvnode=debug.\n\n\
    Client commands (kvnode help COMMAND for each): call, cast, send, rpc, ping, names, epmd.\n\
    Exit statuses of client commands:\n  \
      0  success (ping: pong)\n  \
      1  peer unreachable (ping: pang; no such name in EPMD; connection refused; node down)\n  \
      2  usage error or bad term syntax (the column is shown)\n  \
      3  handshake refused (wrong cookie, not allowed, TLS)\n  \
      4  timeout (--timeout, default 5000 ms)\n  \
      5  remote error (noproc, badrpc, an exception or exit reason; printed on stderr)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A client command; without one, kvnode runs the server.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Long node name `name@host`, as `erl -name` (e.g. `--name kv@127.0.0.1`).
    /// Default when neither --name nor --sname is given: kv@127.0.0.1.
    #[arg(long, value_name = "NAME@HOST", conflicts_with = "sname")]
    pub name: Option<String>,

    /// Short node name, as `erl -sname`: the host is this machine's short hostname
    /// (e.g. `--sname kv` becomes kv@myhost).
    #[arg(long, value_name = "NAME")]
    pub sname: Option<String>,

    /// The cluster cookie (e.g. `--cookie secret`). Without it: the ERLANG_COOKIE environment
    /// variable, else ~/.erlang.cookie (created with a random cookie and mode 0400 when missing,
    /// as erl does).
    #[arg(long, value_name = "COOKIE")]
    pub cookie: Option<String>,

    /// Port of the distribution listener; 0 picks any free port (e.g. `--port 9100`).
    #[arg(long, default_value_t = 0, value_name = "PORT")]
    pub port: u16,

    /// Address the distribution listener binds to (e.g. `--bind 127.0.0.1`).
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub bind: IpAddr,

    /// EPMD port (e.g. `--epmd-port 4400`). Default: ERL_EPMD_PORT, else 4369. When no EPMD
    /// answers there, kvnode serves EPMD itself on that port.
    #[arg(
        long,
        env = "ERL_EPMD_PORT",
        default_value_t = 4369,
        value_name = "PORT"
    )]
    pub epmd_port: u16,

    /// Connection threads (e.g. `--threads 4`). Each peer connection runs on one of them, the
    /// least busy when it connects, so one client node costs no cross-thread wake-ups and
    /// several client nodes use several cores. Default: one per CPU core.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Microseconds a connection whose traffic is hot (its last bytes came sooner than this)
    /// polls for its next bytes before its thread sleeps, as BEAM schedulers busy-wait
    /// (`+sbwt`). On a VM, sleeping and being woken costs more than a call: polling lowers
    /// latency and raises throughput, at the price of CPU time spent polling while traffic
    /// is hot; 0 never polls (e.g. `--busy-wait-us 0`).
    #[arg(long, default_value_t = DEFAULT_BUSY_WAIT_US, value_name = "MICROSECONDS")]
    pub busy_wait_us: u64,

    /// Registered name of the key-value GenServer, as an atom
    /// (e.g. `--process-name Elixir.MyApp.Cache`).
    #[arg(long, default_value = DEFAULT_PROCESS_NAME, value_name = "ATOM")]
    pub process_name: String,

    /// Largest distribution message accepted from a peer, in bytes; a bigger one closes only
    /// that peer's connection (e.g. `--max-message-size 268435456`).
    #[arg(long, default_value_t = DEFAULT_MAX_MESSAGE_SIZE, value_name = "BYTES")]
    pub max_message_size: usize,

    /// Seconds a connecting peer has to finish the handshake (e.g. `--handshake-timeout 5`).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub handshake_timeout: u64,

    /// OTP's net_ticktime in seconds: kvnode ticks every quarter of it when idle and drops a
    /// peer silent for that long (e.g. `--net-ticktime 60`).
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub net_ticktime: u64,

    /// Persist the KV state in DIR: every acknowledged write is fsync'd before its reply, and
    /// the state is recovered at start (e.g. `--data-dir /var/lib/kvnode`). Without it the
    /// store lives in memory only.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// With --data-dir: the log is compacted (a snapshot of the live data is written and the
    /// log before it dropped) once it is larger than this many bytes and than twice the last
    /// snapshot. Smaller compacts more often; tests use a few KiB to exercise snapshots
    /// (e.g. `--compaction-floor 1048576`).
    #[arg(long, default_value_t = crate::storage::DEFAULT_COMPACTION_FLOOR, value_name = "BYTES")]
    pub compaction_floor: u64,

    /// When the node is ready (listening, registered with EPMD, storage recovered, processes
    /// started), write PATH atomically with one line `node=NAME dist_port=N epmd_port=N pid=N
    /// creation=N`; it is removed on an orderly stop. Scripts and tests wait for this file
    /// instead of scraping logs (e.g. `--ready-file /run/kvnode.ready`).
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Serve HTTP on ADDR:PORT: `/metrics` (Prometheus text format), `/healthz` (200 while
    /// the process runs) and `/readyz` (200 once the node is ready, as --ready-file; 503
    /// before). Off by default. Bind it to a private address: it has no authentication
    /// (e.g. `--metrics-addr 127.0.0.1:9464`). Also read from KVNODE_METRICS_ADDR.
    #[arg(long, env = "KVNODE_METRICS_ADDR", value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Run as a visible node: advertise DFLAG_PUBLISHED so BEAM peers list kvnode in
    /// `Node.list()`, report it to `:net_kernel.monitor_nodes/1` and run `:global` (kvnode
    /// serves `global_name_server`, a full protocol-8 member: locks, names, sync) and `:pg`
    /// with it. Hidden (the default) costs peers nothing; visible adds a few messages per
    /// connection and makes kvnode take part in every global lock and registration.
    #[arg(long)]
    pub visible: bool,

    /// Register the KV server under this `:global` name (an atom), so
    /// `GenServer.call({:global, NAME}, req)` reaches it from any node of the cluster
    /// (e.g. `--global-name kv_store`). Needs --visible.
    #[arg(long, value_name = "ATOM", requires = "visible", value_parser = parse_atom)]
    pub global_name: Option<String>,

    /// Most `:global` names a visible kvnode keeps in its copy of the cluster's name table
    /// (each costs about 200 bytes plus the name, pid and resolve method); a registration
    /// beyond it is answered but not kept, with a warning (e.g. `--max-global-names 1000000`).
    #[arg(long, default_value_t = crate::node::services::global::DEFAULT_MAX_GLOBAL_NAMES, value_name = "N")]
    pub max_global_names: usize,

    /// Most bytes the `:global` names a visible kvnode keeps may take (each name and its
    /// resolve method, in external format: a peer sends them, a closure's environment
    /// included); a registration beyond it is answered but not kept, with a warning
    /// (e.g. `--max-global-name-bytes 268435456`).
    #[arg(long, default_value_t = crate::node::services::global::DEFAULT_MAX_GLOBAL_NAME_BYTES, value_name = "BYTES")]
    pub max_global_name_bytes: usize,

    /// Join the KV server to `:pg` group GROUP of scope SCOPE (atoms); repeatable. kvnode
    /// serves the scope under its name, so `:pg.get_members(SCOPE, GROUP)` on nodes running
    /// that scope lists the KV server (e.g. `--pg kvscope:kvgroup`). Needs --visible.
    #[arg(long = "pg", value_name = "SCOPE:GROUP", requires = "visible", value_parser = parse_pg_group)]
    pub pg: Vec<(String, String)>,

    /// Most memberships of peers' pids a `:pg` scope on a visible kvnode remembers (a pid in
    /// a group, once per join, over all peers; about 100 bytes each); a peer's join beyond it
    /// is dropped with a warning, the connection stays (e.g. `--pg-max-members 5000000`).
    #[arg(long, default_value_t = crate::node::services::pg::DEFAULT_PG_MAX_MEMBERS, value_name = "N")]
    pub pg_max_members: usize,

    /// Most bytes the peers' `:pg` group names a scope remembers may take (each group's
    /// external format, once per peer announcing it: groups are any term a peer chooses); a
    /// join to a new group beyond it is dropped with a warning (e.g. `--pg-max-group-bytes
    /// 268435456`).
    #[arg(long, default_value_t = crate::node::services::pg::DEFAULT_PG_MAX_GROUP_BYTES, value_name = "BYTES")]
    pub pg_max_group_bytes: usize,

    /// Most terms (list elements, tuple elements, map keys and values, atoms, ...) in one
    /// message from a peer; more closes only that peer's connection. Bounds the memory one
    /// decoded message takes: each term costs ~56 bytes once decoded, so a 128 MiB message
    /// of `[]`s would otherwise take 7.5 GB (e.g. `--max-terms-per-message 1000000`).
    #[arg(long, default_value_t = crate::etf::DEFAULT_MAX_TERMS, value_name = "N")]
    pub max_terms_per_message: usize,

    /// Backpressure: bytes of messages (as they came on the wire) that may wait for the KV
    /// server while another connection thread runs it. Above it, connections delivering to it
    /// stop reading their peers until half has drained; nothing is dropped (e.g.
    /// `--max-mailbox-bytes 16777216`).
    #[arg(long, default_value_t = crate::node::gen_server::DEFAULT_MAX_MAILBOX_BYTES, value_name = "BYTES")]
    pub max_mailbox_bytes: usize,

    /// Backpressure with --data-dir: bytes of writes submitted to the log and not yet durable.
    /// Above it, connections delivering to the KV server stop reading their peers until half
    /// is on disk; nothing is dropped (e.g. `--max-storage-queue-bytes 16777216`).
    #[arg(long, default_value_t = crate::kv::durable::DEFAULT_MAX_STORAGE_QUEUE_BYTES, value_name = "BYTES")]
    pub max_storage_queue_bytes: usize,

    /// Deepest nesting of a term from a peer (lists, tuples, maps, funs; 1 to 1000000); a
    /// deeper one closes only that peer's connection. Every kvnode thread reserves stack for
    /// it (about 2 KiB of address space per level, touched only as deep as terms really go),
    /// so a larger value costs address space, not memory (e.g. `--max-term-depth 10000`).
    #[arg(
        long,
        default_value_t = crate::etf::DEFAULT_MAX_DEPTH as u64,
        value_parser = clap::value_parser!(u64).range(1..=crate::etf::MAX_MAX_DEPTH as u64),
        value_name = "LEVELS"
    )]
    pub max_term_depth: u64,

    /// Most inbound distribution connections at once that have completed the handshake
    /// (authenticated); one more is closed right after its handshake, with a log line.
    /// Connections still in the handshake count against --max-handshakes instead, so they
    /// never take these places (e.g. `--max-connections 256`).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    // Admission (issue 10): budgets for unauthenticated connections and for dials.
    /// Most inbound connections still in the handshake (not authenticated yet), counted apart
    /// from --max-connections. When full, the oldest handshake of the address holding the most
    /// is closed to make room, so a flood evicts itself and a real peer always gets in
    /// (e.g. `--max-handshakes 512`).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_HANDSHAKES, value_name = "N")]
    pub max_handshakes: usize,

    /// Most handshaking connections from one IP address; one more closes that address's oldest
    /// handshake (e.g. `--max-handshakes-per-ip 16`).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_HANDSHAKES_PER_IP, value_name = "N")]
    pub max_handshakes_per_ip: usize,

    /// Bytes of messages waiting for nodes kvnode is dialing, over all of them; a message that
    /// does not fit is dropped, as a send to a node that is down. Each node's queue is also
    /// bounded by its outbound buffer (2 × --max-message-size + 1 MiB)
    /// (e.g. `--max-pending-bytes 268435456`).
    #[arg(long, default_value_t = crate::node::transport::manager::DEFAULT_MAX_PENDING_BYTES, value_name = "BYTES")]
    pub max_pending_bytes: usize,

    /// Dials (EPMD lookup and handshake with a node kvnode sends to but is not connected to)
    /// in flight at once; a send needing one more is dropped and that node counts as down
    /// (e.g. `--max-dials 32`).
    #[arg(long, default_value_t = crate::node::transport::manager::DEFAULT_MAX_DIALS, value_name = "N")]
    pub max_dials: usize,

    /// Monitors one peer node may hold on kvnode's processes at once (each `GenServer.call`
    /// holds one while it waits); a peer placing more is disconnected, as a broken peer
    /// (e.g. `--max-monitors-per-peer 1000000`).
    #[arg(long, default_value_t = crate::node::monitors::DEFAULT_MAX_MONITORS_PER_PEER, value_name = "N")]
    pub max_monitors_per_peer: usize,

    /// --tls-cert, --tls-key, --tls-cacert.
    #[command(flatten)]
    pub tls: TlsFiles,

    /// Require every inbound peer to present a certificate signed by --tls-cacert, as OTP's
    /// `{verify, verify_peer}, {fail_if_no_peer_cert, true}`; others are refused.
    #[arg(long, requires = "tls_cacert")]
    pub tls_verify_peer: bool,
}

/// The client commands: kvnode as a short-lived Erlang node for scripts (see
/// `crate::client`).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// GenServer.call NAME on NODE with TERM and print the reply.
    #[command(after_help = "Examples:\n  \
      kvnode call kv@127.0.0.1 Elixir.DistributedExample.KVStore '{get, message}' --cookie secret\n  \
      kvnode call --elixir kv@127.0.0.1 DistributedExample.KVStore '{:put, :k, \"v\"}'\n  \
      kvnode call kv@127.0.0.1 '<0.95.0>' ping\n  \
      kvnode call kv@127.0.0.1 Elixir.DistributedExample.KVStore '{get, k}' --repeat 10000 --concurrency 16")]
    Call {
        /// The node, `name@host` (e.g. `kv@127.0.0.1`).
        node: String,
        /// A registered name (e.g. `Elixir.DistributedExample.KVStore`; with --elixir also
        /// `DistributedExample.KVStore`), or a pid on NODE written `<0.B.C>`.
        #[arg(value_name = "NAME")]
        process: String,
        /// The request, in Erlang term syntax (Elixir with --elixir).
        term: String,
        /// Make N calls instead of one and print throughput and latency percentiles.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        repeat: Option<u64>,
        /// With --repeat: calls in flight at once, each from its own process.
        #[arg(long, default_value_t = 1, value_name = "C", value_parser = clap::value_parser!(u64).range(1..=crate::client::MAX_CONCURRENCY))]
        concurrency: u64,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// GenServer.cast TERM to NAME on NODE (no reply; returns once it is sent).
    Cast {
        /// The node, `name@host`.
        node: String,
        /// A registered name, or a pid on NODE written `<0.B.C>`.
        #[arg(value_name = "NAME")]
        process: String,
        /// The request.
        term: String,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Send TERM as a plain message to NAME on NODE (`send/2`).
    Send {
        /// The node, `name@host`.
        node: String,
        /// A registered name, or a pid on NODE written `<0.B.C>`.
        #[arg(value_name = "NAME")]
        process: String,
        /// The message.
        term: String,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Call MOD:FUN(ARGS...) on NODE and print the result (erpc through a spawn request;
    /// `rex`, as rpc:call, for nodes without spawn support).
    #[command(after_help = "Examples:\n  \
      kvnode rpc app@127.0.0.1 erlang node '[]'\n  \
      kvnode rpc --elixir app@127.0.0.1 Enum sum '[[1, 2, 3]]'")]
    Rpc {
        /// The node, `name@host`.
        node: String,
        /// The module (an atom; with --elixir, `Enum` means `Elixir.Enum`).
        module: String,
        /// The function (an atom).
        function: String,
        /// The arguments, a list term (e.g. `[1, two]`).
        args: String,
        /// Use rpc:call's older way (a call to the node's `rex`) even when the node supports
        /// spawn requests (erpc).
        #[arg(long)]
        rex: bool,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Ping NODE as net_adm:ping does: print pong (exit 0) or pang (exit 1, or 3 when the
    /// handshake was refused, 4 on timeout).
    Ping {
        /// The node, `name@host`.
        node: String,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a one-screen summary of NODE (`kvnode:info/0` by rpc: connections, keys,
    /// subscriptions, storage syncs, monitors, memory, ...), redrawn every second; q or
    /// Ctrl-C quits.
    #[command(after_help = "Examples:\n  \
      kvnode top kv@127.0.0.1 --cookie secret\n  \
      kvnode top kv@127.0.0.1 --once")]
    Top {
        /// The node, `name@host`.
        node: String,
        /// Print one summary and exit.
        #[arg(long)]
        once: bool,
        /// The connection flags.
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List the names registered with the EPMD on HOST (default 127.0.0.1), as `epmd -names`.
    Names {
        /// The host whose EPMD to ask.
        host: Option<String>,
        /// EPMD port. Default: ERL_EPMD_PORT, else 4369.
        #[arg(
            long,
            env = "ERL_EPMD_PORT",
            default_value_t = 4369,
            value_name = "PORT"
        )]
        epmd_port: u16,
        /// Milliseconds to wait for the EPMD.
        #[arg(long, default_value_t = crate::client::DEFAULT_TIMEOUT_MS, value_name = "MS")]
        timeout: u64,
        /// Print one JSON document (`[{"name": ..., "port": ...}]`).
        #[arg(long)]
        json: bool,
    },
    /// Run an EPMD server on its own (on all addresses), until SIGINT/SIGTERM.
    Epmd {
        /// The port. Default: ERL_EPMD_PORT, else 4369.
        #[arg(
            long,
            env = "ERL_EPMD_PORT",
            default_value_t = 4369,
            value_name = "PORT"
        )]
        port: u16,
        /// Detach: start the EPMD in the background (its own session, no terminal), print its
        /// pid and exit 0 once it listens.
        #[arg(long)]
        daemon: bool,
        /// Write the EPMD's pid to FILE once it listens (removed when it stops).
        #[arg(long, value_name = "FILE")]
        pid_file: Option<PathBuf>,
    },
}

/// Flags every client command that talks to a node has.
#[derive(Debug, Clone, clap::Args)]
#[command(
    mut_arg("tls_cert", |a| a.help(
        "TLS distribution: this client's certificate, PEM. Needs --tls-key and --tls-cacert"
    )),
    mut_arg("tls_key", |a| a.help("The private key of --tls-cert, PEM")),
    mut_arg("tls_cacert", |a| a.help("CA certificate(s), PEM, NODE's certificate must chain to"))
)]
pub struct ClientOpts {
    /// This client's own node name, `name@host`. Default: a unique hidden name
    /// `kvnode_cli_<pid>_<n>@<host of NODE>`. The client never registers with EPMD.
    #[arg(long, value_name = "NAME@HOST", conflicts_with = "sname")]
    pub name: Option<String>,
    /// This client's own short node name (the host is this machine's short hostname).
    #[arg(long, value_name = "NAME")]
    pub sname: Option<String>,
    /// The cookie; read as the server reads it: --cookie, else ERLANG_COOKIE, else
    /// ~/.erlang.cookie.
    #[arg(long, value_name = "COOKIE")]
    pub cookie: Option<String>,
    /// EPMD port used to find NODE. Default: ERL_EPMD_PORT, else 4369.
    #[arg(
        long,
        env = "ERL_EPMD_PORT",
        default_value_t = 4369,
        value_name = "PORT"
    )]
    pub epmd_port: u16,
    /// Milliseconds the whole command may take (connect, handshake, reply); past it the
    /// command fails with exit status 4.
    #[arg(long, default_value_t = crate::client::DEFAULT_TIMEOUT_MS, value_name = "MS")]
    pub timeout: u64,
    /// Read and print terms in Elixir syntax (`:atom`, `%{}`, `"binary"`).
    #[arg(long)]
    pub elixir: bool,
    /// Print the result as one JSON document (see the README for the mapping).
    #[arg(long)]
    pub json: bool,
    /// --tls-cert, --tls-key, --tls-cacert (with the client's help texts, see above).
    #[command(flatten)]
    pub tls: TlsFiles,
}

/// The TLS distribution files (`-proto_dist inet_tls`), declared once for the server (in
/// [`Cli`]) and the client commands (in [`ClientOpts`]): all three or none. The help texts
/// here are the server's; [`ClientOpts`] replaces them with its own (`mut_arg`).
#[derive(Debug, Clone, clap::Args)]
pub struct TlsFiles {
    /// TLS distribution, as OTP's `-proto_dist inet_tls`: this node's certificate, PEM
    /// (e.g. `--tls-cert kv.pem`). Needs --tls-key and --tls-cacert; every peer must then use
    /// TLS too.
    #[arg(long, value_name = "FILE", requires_all = ["tls_key", "tls_cacert"])]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM (e.g. `--tls-key kv-key.pem`).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_cacert"])]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s), PEM, that peers' certificates must chain to: always checked when
    /// kvnode dials a peer (with the host of its node name), and for inbound peers with
    /// --tls-verify-peer (e.g. `--tls-cacert ca.pem`).
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_cacert: Option<PathBuf>,
}

impl TlsFiles {
    /// The certificate, key and CA files when all three are given (clap refuses only some).
    pub fn all(&self) -> Option<(&PathBuf, &PathBuf, &PathBuf)> {
        match (&self.tls_cert, &self.tls_key, &self.tls_cacert) {
            (Some(cert), Some(key), Some(cacert)) => Some((cert, key, cacert)),
            _ => None,
        }
    }
}

/// Resolves the cookie exactly as the server does: `flag`, else `ERLANG_COOKIE`, else
/// `~/.erlang.cookie` (created as erl does when missing). Never empty.
pub fn resolve_cookie(flag: Option<String>) -> Result<String, CliError> {
    let cookie = match flag {
        Some(c) => c,
        None => match std::env::var("ERLANG_COOKIE") {
            Ok(c) if !c.is_empty() => c,
            _ => {
                let home = std::env::var_os("HOME").ok_or(CliError::NoHome)?;
                read_or_create_cookie(&Path::new(&home).join(".erlang.cookie"))?
            }
        },
    };
    if cookie.is_empty() {
        return Err(CliError::EmptyCookie);
    }
    Ok(cookie)
}

/// Resolves `--name`/`--sname` as the server does (checked as `erl -name` would); None when
/// neither is given.
pub fn resolve_node_name(
    name: Option<&str>,
    sname: Option<&str>,
) -> Result<Option<String>, CliError> {
    let node_name = match (name, sname) {
        (Some(name), _) => {
            if !name.contains('@') {
                return Err(CliError::NameWithoutHost {
                    name: name.to_owned(),
                });
            }
            name.to_owned()
        }
        (None, Some(sname)) if sname.contains('@') => sname.to_owned(),
        (None, Some(sname)) => format!("{sname}@{}", short_hostname()?),
        (None, None) => return Ok(None),
    };
    validate_node_name(&node_name)?;
    Ok(Some(node_name))
}

/// What the flags resolve to: the node core's configuration and the KV app's.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The node core (name, cookie, ports, TLS, limits).
    pub node: Config,
    /// The KV app (registered name, data directory, storage bounds).
    pub kv: KvConfig,
}

/// Errors turning flags into [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// `--name` without a host part.
    #[error("--name needs the form name@host (for example --name kv@127.0.0.1), got {name:?}")]
    NameWithoutHost {
        /// What was given.
        name: String,
    },
    /// A node name erl would refuse.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName {
        /// What was given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The hostname for `--sname` could not be read.
    #[error("cannot read this machine's hostname for --sname: {0}")]
    Hostname(std::io::Error),
    /// The cookie file could not be read or created.
    #[error("cookie file {path}: {source}")]
    CookieFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The cookie file is readable by others.
    #[error(
        "cookie file {path} must be accessible by owner only (it has mode {mode:o}); run: chmod 400 {path}"
    )]
    CookieFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// No home directory to look for `.erlang.cookie` in.
    #[error("no --cookie, no ERLANG_COOKIE and no HOME to find ~/.erlang.cookie in")]
    NoHome,
    /// An empty cookie.
    #[error("the cookie is empty")]
    EmptyCookie,
    /// The TLS certificates or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] crate::node::transport::tls::TlsError),
}

/// Parses an atom flag: 1 to 255 characters.
fn parse_atom(value: &str) -> Result<String, String> {
    if value.is_empty() || value.chars().count() > 255 {
        return Err("must be an atom of 1 to 255 characters".into());
    }
    Ok(value.to_owned())
}

/// Parses `--pg SCOPE:GROUP`: two non-empty atoms of at most 255 characters.
fn parse_pg_group(value: &str) -> Result<(String, String), String> {
    let (scope, group) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not SCOPE:GROUP"))?;
    for (what, atom) in [("scope", scope), ("group", group)] {
        if atom.is_empty() || atom.chars().count() > 255 {
            return Err(format!("the {what} must be an atom of 1 to 255 characters"));
        }
    }
    Ok((scope.to_owned(), group.to_owned()))
}

impl Cli {
    /// Resolves the flags (and the environment) into the node's and the KV app's settings.
    pub fn into_settings(self) -> Result<Settings, CliError> {
        let node_name = resolve_node_name(self.name.as_deref(), self.sname.as_deref())?
            .unwrap_or_else(|| "kv@127.0.0.1".to_owned());
        let cookie = resolve_cookie(self.cookie)?;
        let mut config = Config::new(node_name, cookie);
        config.dist_port = self.port;
        config.bind = self.bind;
        config.epmd_port = self.epmd_port;
        config.max_message_size = self.max_message_size;
        config.handshake_timeout = Duration::from_secs(self.handshake_timeout.max(1));
        config.net_ticktime = Duration::from_secs(self.net_ticktime.max(4));
        config.ready_file = self.ready_file;
        config.metrics_addr = self.metrics_addr;
        config.visible = self.visible;
        config.global_name = self.global_name;
        config.pg_groups = self.pg;
        config.pg_max_members = self.pg_max_members.max(1);
        config.pg_max_group_bytes = self.pg_max_group_bytes.max(1);
        config.max_global_names = self.max_global_names.max(1);
        config.max_global_name_bytes = self.max_global_name_bytes.max(1);
        config.max_connections = self.max_connections.max(1);
        config.max_terms_per_message = self.max_terms_per_message.max(1);
        // Admission (issue 10).
        config.max_handshakes = self.max_handshakes.max(1);
        config.max_handshakes_per_ip = self.max_handshakes_per_ip.max(1);
        config.max_pending_bytes = self.max_pending_bytes;
        config.max_dials = self.max_dials.max(1);
        config.max_monitors_per_peer = self.max_monitors_per_peer.max(1);
        config.max_mailbox_bytes = self.max_mailbox_bytes.max(1);
        config.max_term_depth = self.max_term_depth as usize;
        if let Some((cert, key, cacert)) = self.tls.all() {
            config.tls = Some(crate::node::transport::tls::Tls::load(
                &crate::node::transport::tls::TlsOptions {
                    cert: cert.clone(),
                    key: key.clone(),
                    cacert: cacert.clone(),
                    verify_peer: self.tls_verify_peer,
                },
            )?);
        }
        config.busy_wait = Duration::from_micros(self.busy_wait_us.min(10_000));
        if let Some(n) = self.threads {
            config.threads = usize::from(n);
        }
        let kv = KvConfig {
            process_name: self.process_name,
            data_dir: self.data_dir,
            compaction_floor: self.compaction_floor,
            max_storage_queue_bytes: self.max_storage_queue_bytes.max(1),
        };
        Ok(Settings { node: config, kv })
    }
}

fn validate_node_name(name: &str) -> Result<(), CliError> {
    crate::config::check_node_name(name).map_err(|reason| CliError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn short_hostname() -> Result<String, CliError> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates within that length
    // on success (or truncates, which we handle by searching for NUL with a fallback).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(CliError::Hostname(std::io::Error::last_os_error()));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let host = String::from_utf8_lossy(&buf[..end]).into_owned();
    Ok(host.split('.').next().unwrap_or(&host).to_owned())
}

/// Reads `~/.erlang.cookie`, or creates it as erl does (20 random uppercase letters, mode 0400).
pub fn read_or_create_cookie(path: &Path) -> Result<String, CliError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| CliError::CookieFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(CliError::CookieFileMode {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = std::fs::read_to_string(path).map_err(err)?;
            Ok(text.trim().to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use rand::Rng;
            let mut rng = rand::rng();
            let cookie: String = (0..20)
                .map(|_| char::from(b'A' + rng.random_range(0..26u8)))
                .collect();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(path)
                .map_err(err)?;
            file.write_all(cookie.as_bytes()).map_err(err)?;
            Ok(cookie)
        }
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, CliError> {
        parse_all(args).map(|s| s.node)
    }

    fn parse_all(args: &[&str]) -> Result<Settings, CliError> {
        let mut all = vec!["kvnode"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .expect("flags parse")
            .into_settings()
    }

    #[test]
    fn the_command_line_is_consistent_and_bare_flags_still_start_the_server() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let bare =
            Cli::try_parse_from(["kvnode", "--cookie", "c", "--port", "9100"]).expect("bare flags");
        assert!(bare.command.is_none());
        let call = Cli::try_parse_from([
            "kvnode", "call", "kv@h", "Elixir.X", "{get, k}", "--cookie", "c", "--name", "me@h",
        ])
        .expect("call");
        assert!(
            matches!(call.command, Some(Command::Call { ref process, .. }) if process == "Elixir.X")
        );
        // Server flags do not mix with a client command.
        assert!(Cli::try_parse_from(["kvnode", "--port", "1", "ping", "kv@h"]).is_err());
    }

    #[test]
    fn max_term_depth_flag() {
        let base = ["kvnode", "--cookie", "c"];
        let with =
            |v: &str| Cli::try_parse_from(base.iter().copied().chain(["--max-term-depth", v]));
        assert_eq!(
            Cli::try_parse_from(base).unwrap().max_term_depth,
            crate::etf::DEFAULT_MAX_DEPTH as u64
        );
        assert_eq!(
            with("5000")
                .unwrap()
                .into_settings()
                .unwrap()
                .node
                .max_term_depth,
            5000
        );
        assert!(with("0").is_err());
        assert!(with("1000001").is_err());
    }

    #[test]
    fn name_and_cookie() {
        let c = parse(&["--name", "kv@127.0.0.1", "--cookie", "s"]).expect("config");
        assert_eq!(c.node_name, "kv@127.0.0.1");
        assert_eq!(c.cookie, "s");
        assert_eq!(c.alive_name(), "kv");
        let kv = parse_all(&["--name", "kv@127.0.0.1", "--cookie", "s"])
            .expect("config")
            .kv;
        assert_eq!(kv.process_name, "Elixir.DistributedExample.KVStore");
    }

    #[test]
    fn name_without_host_is_refused() {
        assert!(matches!(
            parse(&["--name", "kv", "--cookie", "s"]),
            Err(CliError::NameWithoutHost { .. })
        ));
        assert!(matches!(
            parse(&["--name", "k v@h", "--cookie", "s"]),
            Err(CliError::InvalidName { .. })
        ));
    }

    #[test]
    fn sname_uses_short_hostname() {
        let c = parse(&["--sname", "kv", "--cookie", "s"]).expect("config");
        let host = short_hostname().expect("hostname");
        assert_eq!(c.node_name, format!("kv@{host}"));
        assert!(!c.node_name.split('@').nth(1).unwrap_or("").contains('.'));
    }

    #[test]
    fn cookie_file_created_then_read_and_mode_checked() {
        let dir = std::env::temp_dir().join(format!("kvnode-cookie-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join(".erlang.cookie");
        let made = read_or_create_cookie(&path).expect("create");
        assert_eq!(made.len(), 20);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        assert_eq!(read_or_create_cookie(&path).expect("read"), made);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            read_or_create_cookie(&path),
            Err(CliError::CookieFileMode { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
