//! Prometheus metrics (`--metrics-addr`): the counters the serving paths bump, and the
//! scrape that turns them (and state that already exists: [`Node::info`], the connection
//! table, the storage's counters) into the Prometheus text format with `prometheus-client`.
//!
//! Hot paths only ever do a relaxed atomic add on a `static` here (no lock, no allocation,
//! no lazy initialisation check). Everything else is read at scrape time. The latency
//! histogram of KV requests reads the clock only while a metrics endpoint runs
//! ([`enabled`]), so a node without `--metrics-addr` pays one relaxed load per request.
//!
//! The counters are per process, not per node: a program running several nodes (tests, a
//! library user) sees their sum. The `kvnode` binary runs one.

pub(crate) mod http;

use crate::Node;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Whether a metrics endpoint runs: the KV latency histogram reads the clock only then.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether a metrics endpoint runs (see [`ENABLED`]).
#[inline]
pub(crate) fn enabled() -> bool {
    ENABLED.load(Relaxed)
}

/// A monotonic counter (`_total`).
pub(crate) struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds `n`.
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }
    /// Adds one.
    #[inline]
    pub(crate) fn inc(&self) {
        self.add(1);
    }
    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A gauge that goes up and down.
pub(crate) struct Gauge(AtomicI64);

impl Gauge {
    const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    /// Sets the value.
    #[inline]
    pub(crate) fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }
    fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }
    pub(crate) fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }
    /// Adds one now and takes it back when the guard drops.
    pub(crate) fn track(&'static self) -> GaugeGuard {
        self.add(1);
        GaugeGuard(self)
    }
}

/// Takes back the one [`Gauge::track`] added.
pub(crate) struct GaugeGuard(&'static Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// A fixed-bucket histogram of atomics: `observe` is three relaxed adds.
pub(crate) struct Histogram<const N: usize> {
    /// Upper bounds (inclusive), ascending, in the unit observed (µs, or a count).
    bounds: [u64; N],
    buckets: [AtomicU64; N],
    overflow: AtomicU64,
    count: AtomicU64,
    sum: AtomicU64,
    /// Divides observed values into the exported unit (1e6 for µs to seconds).
    divisor: f64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [u64; N], divisor: f64) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            divisor,
        }
    }

    /// Records one value.
    pub(crate) fn observe(&self, v: u64) {
        match self.bounds.iter().position(|&b| v <= b) {
            Some(i) => self.buckets[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.count.fetch_add(1, Relaxed);
        self.sum.fetch_add(v, Relaxed);
    }

    /// Records a duration, in microseconds.
    pub(crate) fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let mut buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .zip(&self.buckets)
            .map(|(&b, n)| (b as f64 / self.divisor, n.load(Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.overflow.load(Relaxed)));
        // The count is the buckets' total, so the two never disagree within one scrape.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum.load(Relaxed) as f64 / self.divisor;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Latency buckets in µs: 10 µs to 10 s.
const LATENCY_US: [u64; 13] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000, 1_000_000, 10_000_000,
];

// ---- connections ----------------------------------------------------------------------

/// Established connections we accepted.
pub(crate) static CONNECTIONS_IN: Gauge = Gauge::new();
/// Established connections we dialed.
pub(crate) static CONNECTIONS_OUT: Gauge = Gauge::new();
/// Inbound connections in the handshake.
pub(crate) static HANDSHAKING_IN: Gauge = Gauge::new();

/// Why a handshake failed (label `reason`).
#[derive(Clone, Copy)]
pub(crate) enum HandshakeFailure {
    /// The peer's cookie differs (its digest did not match).
    WrongCookie,
    /// Refused: missing flags, our own name, a dynamic name we cannot give.
    NotAllowed,
    /// The TLS handshake failed.
    Tls,
    /// It did not finish within --handshake-timeout.
    Timeout,
    /// The peer could not be found or reached (outbound: EPMD, resolve, connect).
    Unreachable,
    /// --max-connections was reached after the handshake.
    TooManyConnections,
    /// Closed to make room for another handshake (--max-handshakes, --max-handshakes-per-ip).
    Evicted,
    /// Anything else (the peer closed, sent garbage, ...).
    Other,
}

const HANDSHAKE_REASONS: [&str; 8] = [
    "wrong_cookie",
    "not_allowed",
    "tls",
    "timeout",
    "unreachable",
    "too_many_connections",
    "evicted",
    "other",
];

static HANDSHAKE_FAILURES: [[Counter; 8]; 2] = [const { [const { Counter::new() }; 8] }; 2];

/// Counts one failed handshake (`inbound`: a peer connecting to us).
pub(crate) fn handshake_failed(inbound: bool, reason: HandshakeFailure) {
    HANDSHAKE_FAILURES[usize::from(!inbound)][reason as usize].inc();
}

const DIRECTIONS: [&str; 2] = ["in", "out"];

/// Why an established connection ended (label `reason`).
#[derive(Clone, Copy)]
pub(crate) enum Disconnect {
    /// The peer closed it.
    Closed,
    /// Nothing arrived for net_ticktime.
    TickTimeout,
    /// A frame over --max-message-size.
    TooLarge,
    /// A malformed or hostile frame.
    BadFrame,
    /// A socket error.
    Io,
    /// The node is stopping, or the connection was closed from our side.
    Shutdown,
}

const DISCONNECT_REASONS: [&str; 6] = [
    "closed",
    "tick_timeout",
    "too_large",
    "bad_frame",
    "io_error",
    "shutdown",
];

static DISCONNECTS: [Counter; 6] = [const { Counter::new() }; 6];

/// Counts one ended connection.
pub(crate) fn disconnected(reason: Disconnect) {
    DISCONNECTS[reason as usize].inc();
}

/// Bytes read from distribution connections (ticks and handshakes excluded).
pub(crate) static BYTES_IN: Counter = Counter::new();
/// Bytes written to distribution connections.
pub(crate) static BYTES_OUT: Counter = Counter::new();
/// Frames (messages) read from distribution connections (ticks excluded).
pub(crate) static MESSAGES_IN: Counter = Counter::new();
/// Frames (messages) queued to distribution connections.
pub(crate) static MESSAGES_OUT: Counter = Counter::new();
/// ALTACT_SIG_SEND (op 37) signals received (alias and priority sends from OTP 28+).
pub(crate) static ALTACT_IN: Counter = Counter::new();
/// ALTACT_SIG_SEND (op 37) signals sent (alias sends to peers that negotiated ALTACT_SIG).
pub(crate) static ALTACT_OUT: Counter = Counter::new();

// ---- KV ---------------------------------------------------------------------------------

/// What a KV request asks (label `kind`).
#[derive(Clone, Copy)]
pub(crate) enum KvKind {
    /// `{:get, k}`, `{:get, k, default}`.
    Get,
    /// `{:put, k, v}`.
    Put,
    /// `{:put_new, k, v}`.
    PutNew,
    /// `{:delete, k}`.
    Delete,
    /// `{:cas, k, expected, new}`.
    Cas,
    /// `{:incr, k}`, `{:incr, k, n}`.
    Incr,
    /// `:keys`.
    Keys,
    /// `:size`.
    Size,
    /// `{:subscribe, _}`.
    Subscribe,
    /// `{:unsubscribe, _}`.
    Unsubscribe,
    /// `:subscribers`.
    Subscribers,
    /// Anything else (answered `{:error, {:unknown_request, _}}` or ignored).
    Unknown,
}

const KV_KINDS: [&str; 12] = [
    "get",
    "put",
    "put_new",
    "delete",
    "cas",
    "incr",
    "keys",
    "size",
    "subscribe",
    "unsubscribe",
    "subscribers",
    "unknown",
];

const KV_LANES: [&str; 2] = ["call", "cast"];

static KV_REQUESTS: [[Counter; 12]; 2] = [const { [const { Counter::new() }; 12] }; 2];

/// Counts one KV request (`call`: a `GenServer.call`, else a cast).
#[inline]
pub(crate) fn kv_request(call: bool, kind: KvKind) {
    KV_REQUESTS[usize::from(!call)][kind as usize].inc();
}

/// Time the KV server spent handling a call (decode, apply, encode the reply).
pub(crate) static KV_CALL_SECONDS: Histogram<13> = Histogram::new(LATENCY_US, 1e6);

/// Starts timing a KV call when metrics are on.
#[inline]
pub(crate) fn kv_timer() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Ends the timing [`kv_timer`] started.
#[inline]
pub(crate) fn kv_timed(start: Option<Instant>) {
    if let Some(start) = start {
        KV_CALL_SECONDS.observe_duration(start.elapsed());
    }
}

/// Time from reading a KV request's frame off the socket to writing its reply, by lane
/// (`[call, cast]`): for a call, until the write that empties the connection's outbound
/// queue holding the reply returns (replies to one batch of frames go out in one write);
/// for a cast, until it is applied to the store. Observed only while metrics are on.
pub(crate) static KV_REQUEST_SECONDS: [Histogram<13>; 2] = [
    Histogram::new(LATENCY_US, 1e6),
    Histogram::new(LATENCY_US, 1e6),
];

thread_local! {
    /// When the frame being handled on this thread was read off its socket: set by a
    /// connection reader around its batch of frames, and by a mailbox around a queued signal
    /// (with the instant it was queued with). Only ever `Some` while metrics are on.
    static RECEIVED: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A KV reply about to be queued on this thread: its request's [`RECEIVED`]. The next
    /// outbound queue push on this thread takes it ([`take_kv_reply`]).
    static KV_REPLY: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant of the frame being handled on this thread (see [`RECEIVED`]).
#[inline]
pub(crate) fn received() -> Option<Instant> {
    RECEIVED.with(Cell::get)
}

/// Sets [`RECEIVED`] for this thread; returns what it was.
#[inline]
pub(crate) fn set_received(at: Option<Instant>) -> Option<Instant> {
    RECEIVED.with(|r| r.replace(at))
}

/// The KV server is about to answer a call whose frame was read at `received`: the next
/// outbound push on this thread carries the reply (see [`take_kv_reply`]).
#[inline]
pub(crate) fn arm_kv_reply(received: Option<Instant>) {
    if received.is_some() {
        KV_REPLY.with(|r| r.set(received));
    }
}

/// Takes the armed KV reply instant, if any (an outbound queue, as it queues a frame).
#[inline]
pub(crate) fn take_kv_reply() -> Option<Instant> {
    KV_REPLY.with(Cell::take)
}

/// The reply armed by [`arm_kv_reply`] went somewhere other than a connection's outbound
/// queue (a local caller, a peer not connected yet): it counts as written now.
#[inline]
pub(crate) fn settle_kv_reply() {
    if let Some(at) = take_kv_reply() {
        KV_REQUEST_SECONDS[0].observe_duration(at.elapsed());
    }
}

/// Replies (armed KV replies an outbound queue took) are now written to the socket.
pub(crate) fn kv_replies_written(received: impl Iterator<Item = Instant>) {
    let now = Instant::now();
    for at in received {
        KV_REQUEST_SECONDS[0].observe_duration(now.saturating_duration_since(at));
    }
}

/// A KV cast whose frame was read at `received` has been applied.
#[inline]
pub(crate) fn kv_cast_applied(received: Option<Instant>) {
    if let Some(at) = received {
        KV_REQUEST_SECONDS[1].observe_duration(at.elapsed());
    }
}

/// Bytes the KV store holds (see `Store::stored_bytes`), set by the KV server after each
/// change.
pub(crate) static KV_STORED_BYTES: Gauge = Gauge::new();

/// Keys in the KV store (set by the KV server after each change).
pub(crate) static KV_KEYS: Gauge = Gauge::new();
/// Live subscriptions of the KV server.
pub(crate) static KV_SUBSCRIPTIONS: Gauge = Gauge::new();

// ---- storage ----------------------------------------------------------------------------

/// Commits whose write or fdatasync failed.
pub(crate) static STORAGE_COMMIT_FAILURES: Counter = Counter::new();
/// Compactions started (log rotated, snapshot handed to the snapshot thread).
pub(crate) static STORAGE_COMPACTIONS: Counter = Counter::new();
/// fdatasync time of a commit.
pub(crate) static STORAGE_FSYNC_SECONDS: Histogram<13> = Histogram::new(LATENCY_US, 1e6);
/// Groups (acknowledged writes) per commit.
pub(crate) static STORAGE_GROUP_SIZE: Histogram<9> =
    Histogram::new([1, 2, 4, 8, 16, 32, 64, 128, 256], 1.0);
/// Bytes of writes submitted and not yet durable.
pub(crate) static STORAGE_QUEUE_BYTES: Gauge = Gauge::new();
/// Bytes in the log since the last snapshot.
pub(crate) static STORAGE_LOG_BYTES: Gauge = Gauge::new();

// ---- EPMD -------------------------------------------------------------------------------

/// Requests the embedded EPMD served, by kind (label `request`).
pub(crate) const EPMD_REQUESTS: [&str; 5] = ["alive2", "port_please2", "names", "dump", "other"];
static EPMD_REQUEST_COUNTS: [Counter; 5] = [const { Counter::new() }; 5];
/// Nodes registered with the embedded EPMD now.
pub(crate) static EPMD_REGISTERED: Gauge = Gauge::new();

/// Counts one request the embedded EPMD served (index into [`EPMD_REQUESTS`]).
pub(crate) fn epmd_request(kind: usize) {
    if let Some(c) = EPMD_REQUEST_COUNTS.get(kind) {
        c.inc();
    }
}

// ---- scrape -----------------------------------------------------------------------------

/// What a scrape reads besides the statics: the node once it is ready.
pub(crate) struct Scrape {
    /// Set once the node is ready (registered with EPMD, storage recovered).
    pub node: std::sync::OnceLock<Node>,
    /// When the process started serving (uptime).
    pub started: Instant,
    /// Set once shutdown begins: /readyz answers 503 again, `kvnode_ready` is 0.
    pub stopping: AtomicBool,
}

impl Scrape {
    /// Whether the node is ready: registered, storage recovered, and not shutting down.
    pub(crate) fn ready(&self) -> bool {
        self.node.get().is_some() && !self.stopping.load(Relaxed)
    }
}

fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.to_vec()
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> std::fmt::Result {
    e.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}

impl Scrape {
    /// The metrics as Prometheus text (format 0.0.4).
    pub(crate) fn render(&self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Collector {
            node: self.node.get().cloned(),
            started: self.started,
            ready: self.ready(),
        }));
        let mut out = String::with_capacity(16 << 10);
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        {
            tracing::error!(%error, "cannot encode the metrics");
        }
        out
    }
}

struct Collector {
    node: Option<Node>,
    started: Instant,
    ready: bool,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        // Process.
        gauge(
            e,
            "kvnode_uptime_seconds",
            "Seconds since kvnode started",
            self.started.elapsed().as_secs_f64(),
        )?;
        let info: Vec<(&str, u64)> = self.node.as_ref().map(Node::info).unwrap_or_default();
        let get = |k: &str| info.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        let rss = get("rss_bytes")
            .or_else(crate::node::services::builtins::resident_bytes)
            .unwrap_or(0);
        let fds = get("open_fds")
            .or_else(|| crate::node::services::builtins::open_fds().map(|n| n as u64))
            .unwrap_or(0);
        gauge(e, "kvnode_resident_memory_bytes", "Resident set size", rss)?;
        gauge(e, "kvnode_open_fds", "Open file descriptors", fds)?;
        gauge(
            e,
            "kvnode_ready",
            "1 once registered with EPMD and storage recovered, 0 before and once shutdown begins",
            u64::from(self.ready),
        )?;

        // Connections.
        {
            let dialing = self
                .node
                .as_ref()
                .map_or(0, |n| n.manager().dials_in_flight());
            let mut m = e.encode_descriptor(
                "kvnode_connections",
                "Distribution connections by state and direction",
                None,
                MetricType::Gauge,
            )?;
            for (state, dir, v) in [
                ("up", "in", CONNECTIONS_IN.get()),
                ("up", "out", CONNECTIONS_OUT.get()),
                ("handshake", "in", HANDSHAKING_IN.get()),
                ("handshake", "out", dialing as i64),
            ] {
                m.encode_family(&labels(&[("state", state), ("direction", dir)]))?
                    .encode_gauge(&v)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "kvnode_handshake_failures",
                "Failed distribution handshakes by direction and reason",
                None,
                MetricType::Counter,
            )?;
            for (d, dir) in DIRECTIONS.iter().enumerate() {
                for (r, reason) in HANDSHAKE_REASONS.iter().enumerate() {
                    m.encode_family(&labels(&[("direction", dir), ("reason", reason)]))?
                        .encode_counter::<NoLabelSet, u64, u64>(
                            &HANDSHAKE_FAILURES[d][r].get(),
                            None,
                        )?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "kvnode_disconnects",
                "Established connections that ended, by reason",
                None,
                MetricType::Counter,
            )?;
            for (r, reason) in DISCONNECT_REASONS.iter().enumerate() {
                m.encode_family(&labels(&[("reason", reason)]))?
                    .encode_counter::<NoLabelSet, u64, u64>(&DISCONNECTS[r].get(), None)?;
            }
        }
        counter(
            e,
            "kvnode_dist_received_bytes",
            "Bytes read from distribution connections after the handshake",
            BYTES_IN.get(),
        )?;
        counter(
            e,
            "kvnode_dist_sent_bytes",
            "Bytes written to distribution connections after the handshake",
            BYTES_OUT.get(),
        )?;
        counter(
            e,
            "kvnode_dist_received_messages",
            "Distribution messages (frames, ticks excluded) received",
            MESSAGES_IN.get(),
        )?;
        counter(
            e,
            "kvnode_dist_sent_messages",
            "Distribution messages (frames, ticks excluded) queued to peers",
            MESSAGES_OUT.get(),
        )?;
        counter(
            e,
            "kvnode_dist_altact_received_signals",
            "ALTACT_SIG_SEND (op 37) signals received: alias and priority sends from OTP 28+",
            ALTACT_IN.get(),
        )?;
        counter(
            e,
            "kvnode_dist_altact_sent_signals",
            "ALTACT_SIG_SEND (op 37) signals sent: alias sends to peers with ALTACT_SIG",
            ALTACT_OUT.get(),
        )?;
        let info_gauge = |e: &mut DescriptorEncoder, key: &str, name: &str, help: &str| {
            gauge(e, name, help, get(key).unwrap_or(0))
        };
        info_gauge(
            e,
            "monitors",
            "kvnode_monitors",
            "Monitors this node's processes hold on remote processes",
        )?;
        info_gauge(
            e,
            "monitored_by",
            "kvnode_monitored_by",
            "Monitors remote processes hold on this node's processes",
        )?;
        info_gauge(
            e,
            "linked_by",
            "kvnode_linked_by",
            "Links remote processes hold to this node's processes",
        )?;
        info_gauge(e, "processes", "kvnode_processes", "Local processes alive")?;
        let pauses = get("backpressure_pauses").unwrap_or(0);
        counter(
            e,
            "kvnode_backpressure_pauses",
            "Times a connection stopped reading because a process it delivers to was congested",
            pauses,
        )?;

        // KV.
        {
            let mut m = e.encode_descriptor(
                "kvnode_kv_requests",
                "KV requests by lane (call or cast) and kind",
                None,
                MetricType::Counter,
            )?;
            for (l, lane) in KV_LANES.iter().enumerate() {
                for (k, kind) in KV_KINDS.iter().enumerate() {
                    m.encode_family(&labels(&[("lane", lane), ("kind", kind)]))?
                        .encode_counter::<NoLabelSet, u64, u64>(&KV_REQUESTS[l][k].get(), None)?;
                }
            }
        }
        KV_CALL_SECONDS.encode(e.encode_descriptor(
            "kvnode_kv_call_duration_seconds",
            "Time the KV server spent handling a call (durable writes: until handed to the log)",
            None,
            MetricType::Histogram,
        )?)?;
        {
            let mut m = e.encode_descriptor(
                "kvnode_kv_request_duration_seconds",
                "KV requests by lane, from reading the request frame off the socket to writing the reply (call: the write that empties the connection's queue holding it; replies to one batch of frames go out together) or to applying it (cast)",
                None,
                MetricType::Histogram,
            )?;
            for (l, lane) in KV_LANES.iter().enumerate() {
                KV_REQUEST_SECONDS[l].encode(m.encode_family(&labels(&[("lane", lane)]))?)?;
            }
        }
        gauge(e, "kvnode_kv_keys", "Keys in the KV store", KV_KEYS.get())?;
        gauge(
            e,
            "kvnode_kv_stored_bytes",
            "Bytes of the KV store's entries: canonical key, key and value in external term format, 8 bytes of lengths each (no table or allocator overhead)",
            KV_STORED_BYTES.get(),
        )?;
        gauge(
            e,
            "kvnode_kv_subscriptions",
            "Live subscriptions to KV changes",
            KV_SUBSCRIPTIONS.get(),
        )?;

        // Storage.
        counter(
            e,
            "kvnode_storage_commits",
            "Log commits made durable by a successful fdatasync",
            crate::storage::commit_syncs(),
        )?;
        counter(
            e,
            "kvnode_storage_commit_failures",
            "Log commits whose write or fdatasync failed",
            STORAGE_COMMIT_FAILURES.get(),
        )?;
        counter(
            e,
            "kvnode_storage_compactions",
            "Log compactions started",
            STORAGE_COMPACTIONS.get(),
        )?;
        STORAGE_FSYNC_SECONDS.encode(e.encode_descriptor(
            "kvnode_storage_fsync_duration_seconds",
            "fdatasync time of one log commit",
            None,
            MetricType::Histogram,
        )?)?;
        STORAGE_GROUP_SIZE.encode(e.encode_descriptor(
            "kvnode_storage_commit_groups",
            "Writes (groups) made durable by one commit",
            None,
            MetricType::Histogram,
        )?)?;
        gauge(
            e,
            "kvnode_storage_queue_bytes",
            "Bytes of KV writes submitted to the log and not yet durable",
            STORAGE_QUEUE_BYTES.get(),
        )?;
        gauge(
            e,
            "kvnode_storage_log_bytes",
            "Bytes in the log since the last snapshot",
            STORAGE_LOG_BYTES.get(),
        )?;

        // EPMD.
        {
            let mut m = e.encode_descriptor(
                "kvnode_epmd_requests",
                "Requests the embedded EPMD served, by request",
                None,
                MetricType::Counter,
            )?;
            for (i, request) in EPMD_REQUESTS.iter().enumerate() {
                m.encode_family(&labels(&[("request", request)]))?
                    .encode_counter::<NoLabelSet, u64, u64>(&EPMD_REQUEST_COUNTS[i].get(), None)?;
            }
        }
        gauge(
            e,
            "kvnode_epmd_registered_nodes",
            "Nodes registered with the embedded EPMD now",
            EPMD_REGISTERED.get(),
        )?;
        Ok(())
    }
}

/// Turns metrics on (the endpoint is starting).
pub(crate) fn enable() {
    ENABLED.store(true, Relaxed);
}
