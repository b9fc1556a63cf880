//! The local node: its identity (name, creation), the pids, references and registered names it
//! hands out, the mailboxes of its processes, the monitors its processes hold on remote pids,
//! and the routing of inbound control messages ([`router`]) to them.
//!
//! kvnode's processes are GenServers whose handlers run in the thread that delivers a signal
//! ([`Mailbox`], [`Dispatch`]): no task hop per message. A process can exit
//! ([`Node::exit_process`], from `GenServer.stop`): monitors peers placed on it
//! ([`monitors`], recorded per peer and removed by DEMONITOR_P or with the peer's connection)
//! then fire with the exit reason, and a built-in process is restarted at once under the same
//! name (a new pid), as a supervisor would. Monitors that *our* processes place on remote pids
//! are kept per peer node and fire `noconnection` when that peer's connection goes down.
//!
//! A peer may lack flags BEAM always sets (Jinterface, erl_interface and Python clients have no
//! DIST_MONITOR and no ALIAS), so nothing whose shape depends on a flag is sent before the
//! peer's flags are known: toward a connected peer the choice is made at send time; toward a
//! peer still being dialed, the message waits here ([`Node::send_when_connected`], monitors in
//! the monitor table) and is shaped once the connection is up ([`Node::node_up`]). A monitor on
//! a pid of a peer without DIST_MONITOR is kept locally only, as BEAM does: no MONITOR_P goes
//! out, and it fires `noconnection` when that node goes down.
//!
//! Backpressure: a process can report that it is congested ([`Pressure`]); a connection reader
//! that delivered a message to a congested process stops reading that peer until the process
//! reports relief ([`take_congested`]), so the peer's own TCP and distribution buffers hold the
//! excess instead of kvnode's memory.

pub mod dest;
pub mod events;
pub mod handle;
pub mod monitors;
pub mod router;
pub mod spawn;
pub mod unrepresentable;

pub use dest::Dest;
pub use events::{ConnectError, NodeEvent, NodeEvents};
pub use handle::{CallError, Process, Received};

use crate::config::Config;
use crate::node::transport::manager::Manager;
use crate::node::transport::{self, Frame};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, Pid, PidOrAtom, Reference, Term};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What a process receives.
#[derive(Debug)]
pub enum Signal {
    /// An ordinary message (from SEND, REG_SEND, ALIAS_SEND).
    Message(Term),
    /// A monitor this process holds fired (MONITOR_P_EXIT, or `noconnection`).
    Down {
        /// The monitor reference.
        reference: Reference,
        /// The monitored pid.
        pid: Pid,
        /// The exit reason.
        reason: Term,
    },
    /// An in-node synchronous call (used by the rpc service); the reply goes to `reply`.
    Call {
        /// The request, shaped as the process's GenServer expects.
        request: Term,
        /// Where the reply goes.
        reply: oneshot::Sender<Term>,
    },
    /// A message from a peer that eetf cannot hold unchanged (an OTP 29 native record, a map
    /// with both `0.0` and `-0.0` as keys), kept in external format: a GenServer serves a
    /// call or cast of it as bytes ([`crate::Request::bytes`]), a [`Process`] gets a call
    /// reply of it as [`CallError::Unrepresentable`]; anything else is dropped with a `warn`.
    Raw(Box<RawOwned>),
}

/// A message kept as the bytes it arrived as ([`Signal::Raw`]).
#[derive(Debug)]
pub struct RawOwned {
    /// The peer node it came from.
    pub peer: String,
    /// The message, version byte included (validated with `limits`).
    pub message: Vec<u8>,
    /// The limits it was validated with.
    pub limits: crate::etf::Limits,
}

impl RawOwned {
    /// Keeps a validated message that arrived from `peer`.
    pub fn new(peer: &str, message: &[u8], limits: &crate::etf::Limits) -> Box<Self> {
        Box::new(RawOwned {
            peer: peer.to_owned(),
            message: message.to_vec(),
            limits: *limits,
        })
    }
}

/// Runs signals for one process. Implemented by [`crate::node::gen_server`]'s host, which runs the
/// handler in the delivering thread (no task hop) and queues signals that arrive while
/// another thread is inside the handler.
pub trait Dispatch: Send + Sync {
    /// Handles (or queues) one signal.
    fn dispatch(&self, node: &Node, signal: Signal);

    /// Like [`Dispatch::dispatch`] for a message that arrived as `bytes` bytes on the wire
    /// (what a queued copy is accounted as, for the process's mailbox bound).
    fn dispatch_weighted(&self, node: &Node, signal: Signal, bytes: usize) {
        let _ = bytes;
        self.dispatch(node, signal);
    }

    /// Handles a message still in external format, if the process can do so right now
    /// without decoding it. False: nothing happened; the caller decodes the message and uses
    /// [`Dispatch::dispatch`].
    fn dispatch_raw(&self, node: &Node, raw: &RawMessage) -> bool {
        let _ = (node, raw);
        false
    }

    /// The process's congestion state, for senders inside the node that are not connection
    /// readers (rpc and rex tasks): they wait for its relief before delivering.
    fn pressure(&self) -> Option<Arc<Pressure>> {
        None
    }

    /// An exit signal reached the process: a linked process exited (EXIT, or `noconnection`
    /// when its node went down) or `exit/2` was called on it. The default ignores it, as the
    /// built-in processes trap exits; a [`Process`] receives it as [`Received::Exit`].
    fn exit_signal(&self, node: &Node, from: Pid, reason: Term) {
        let _ = (node, from, reason);
    }
}

/// A message for a local process as it arrived: validated external-format bytes, and the
/// connection it came on (where a reply to its sender goes).
pub struct RawMessage<'a> {
    /// The peer node's name.
    pub peer: &'a str,
    /// The connection the message came on.
    pub conn: &'a transport::manager::ConnHandle,
    /// The message, version byte included.
    pub message: &'a [u8],
    /// The limits it was validated with.
    pub limits: &'a crate::etf::Limits,
}

/// A process's address: its pid and what runs its signals.
#[derive(Clone)]
pub struct Mailbox {
    /// The process's pid.
    pub pid: Pid,
    target: Arc<dyn Dispatch>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox").field("pid", &self.pid).finish()
    }
}

impl Mailbox {
    /// Delivers a signal. Never blocks on other processes: if the process is busy in another
    /// thread, the signal is queued and that thread runs it before letting go.
    pub fn deliver(&self, node: &Node, signal: Signal) {
        self.target.dispatch(node, signal);
    }

    /// The process's congestion state, if it has one (see [`Dispatch::pressure`]).
    pub fn pressure(&self) -> Option<Arc<Pressure>> {
        self.target.pressure()
    }
}

#[derive(Default)]
struct Registry {
    // Looked up on every incoming call: a fast hash (names and pids are not peer-chosen keys
    // in any number: only registered processes are stored).
    names: HashMap<String, Mailbox, foldhash::fast::RandomState>,
    pids: HashMap<u32, Mailbox, foldhash::fast::RandomState>,
}

/// What the peer knows of a monitor held by a local process on one of its pids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MonitorState {
    /// MONITOR_P was sent: the peer reports the pid's exit (MONITOR_P_EXIT).
    Sent,
    /// The peer lacks DIST_MONITOR: nothing was sent, the monitor fires only at node-down
    /// (as BEAM keeps monitors toward such nodes).
    LocalOnly,
    /// The peer is being dialed: decided when it connects ([`Node::node_up`]).
    Unsent,
}

/// A monitor held by a local process on a remote pid (or a registered name on a remote node).
struct RemoteMonitor {
    watcher: Pid,
    target: PidOrAtom,
    reference: Reference,
    state: MonitorState,
}

/// A message for a peer that is still being dialed, shaped once its flags are known (None:
/// nothing to send to such a peer).
type Deferred = Box<dyn FnOnce(DistributionFlags) -> Option<Message> + Send>;

/// What a message waiting for a peer's flags costs beyond its encoded size (the boxed
/// closure, the pids and references it holds), counted against `--max-pending-bytes`.
pub const DEFERRED_OVERHEAD: usize = 512;

/// Messages waiting for a peer's flags are capped at this many per peer (as frames waiting
/// for a connection are, [`crate::node::transport::manager::MAX_PENDING_FRAMES`]); more are dropped.
pub const MAX_DEFERRED_PER_PEER: usize = crate::node::transport::manager::MAX_PENDING_FRAMES;

/// Per-peer state guarded by one lock: our monitors on the peer's pids, and messages waiting
/// for the peer's flags. One lock, so a connection coming up ([`Node::node_up`]) sees every
/// monitor and message made before its flags were known, and none is made after it looked.
#[derive(Default)]
struct Peers {
    /// peer node name -> monitor ref ids -> monitor
    monitors: HashMap<String, HashMap<Vec<u32>, RemoteMonitor>>,
    /// peer node name -> messages waiting for its flags, in order
    deferred: HashMap<String, Vec<Deferred>>,
}

/// `timeout` from now, saturated: a timeout too long for the clock (`Duration::MAX`) means
/// about a century, i.e. never, instead of an overflow panic.
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// How often a reader waiting for a congested process looks again even without a wake-up
/// (a safety net: relief is always notified).
const PRESSURE_RECHECK: Duration = Duration::from_millis(250);

/// A process's congestion, shared with the readers that deliver to it. Each source of
/// congestion (the mailbox, the storage queue, ...) is one bit, set and cleared by its owner
/// under the owner's own lock; a reader that delivered to a congested process waits for
/// [`Pressure::relieved`] before it reads more from its peer.
#[derive(Default)]
pub struct Pressure {
    sources: AtomicU32,
    relief: Notify,
}

impl Pressure {
    /// The process's queue of undelivered signals is over its bound.
    pub const MAILBOX: u32 = 1;
    /// Set by the server itself through [`crate::Congestion`] (the KV server: its storage
    /// queue is over its bound).
    pub const SERVER: u32 = 2;
    /// Too many function calls (rpc, erpc, spawn, rex) run at once ([`MAX_CALLS_IN_FLIGHT`]).
    pub const CALLS: u32 = 4;

    /// Sets or clears one source of congestion; clearing the last one wakes waiting readers.
    pub fn set(&self, source: u32, congested: bool) {
        if congested {
            self.sources.fetch_or(source, Ordering::AcqRel);
        } else {
            let before = self.sources.fetch_and(!source, Ordering::AcqRel);
            if before & source != 0 && before & !source == 0 {
                self.relief.notify_waiters();
            }
        }
    }

    /// Whether any source is congested.
    pub fn is_congested(&self) -> bool {
        self.sources.load(Ordering::Acquire) != 0
    }

    /// Resolves once no source is congested.
    pub async fn relieved(&self) {
        loop {
            let notified = self.relief.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            let _ = tokio::time::timeout(PRESSURE_RECHECK, notified).await;
        }
    }
}

thread_local! {
    /// The congested process the current thread last delivered to (see [`take_congested`]).
    static CONGESTED: RefCell<Option<Arc<Pressure>>> = const { RefCell::new(None) };
}

/// Called by a process that found itself congested after taking a signal: the reader on this
/// thread pauses before it reads more.
pub fn note_congested(pressure: &Arc<Pressure>) {
    CONGESTED.with(|c| {
        if let Ok(mut c) = c.try_borrow_mut() {
            *c = Some(pressure.clone());
        }
    });
}

/// The congested process (if any) this thread delivered to since the last call. A connection
/// reader calls it after each frame: deliveries run synchronously on its thread.
pub fn take_congested() -> Option<Arc<Pressure>> {
    CONGESTED.with(|c| c.try_borrow_mut().ok().and_then(|mut c| c.take()))
}

/// Function calls (`:rpc`, `:erpc`, spawns, `rex`) that may run at once before the
/// connections that start more stop reading their peers (until half have finished). Each runs
/// as a task that may wait on the KV server: without a bound, a peer casting
/// `:erpc.cast(kv, KVStore, :put, ...)` in a loop would pile up tasks and storage writes
/// faster than the disk takes them.
pub const MAX_CALLS_IN_FLIGHT: usize = 1024;

/// One function call in flight (see [`Node::call_slot`]); dropping it ends the call.
pub struct CallSlot(Node);

impl Drop for CallSlot {
    fn drop(&mut self) {
        let inner = &self.0.0;
        let before = inner.calls.fetch_sub(1, Ordering::AcqRel);
        if before <= MAX_CALLS_IN_FLIGHT / 2 + 1 {
            inner.calls_pressure.set(Pressure::CALLS, false);
        }
    }
}

/// Makes what runs a fresh process's signals, given its pid (see [`Node::exit_process`]).
pub type MakeProcess<'a> = Box<dyn FnOnce(&Pid) -> Arc<dyn Dispatch> + 'a>;

/// The registry key of a local pid.
fn pid_key(pid: &Pid) -> u32 {
    pid.id | (pid.serial << 15)
}

/// Whether a peer with `flags` takes a MONITOR_P on `target`: DIST_MONITOR for a pid, and
/// DIST_MONITOR_NAME as well for a registered name (else the monitor stays local-only and
/// fires at node-down, as BEAM does toward such a peer).
fn may_monitor(flags: DistributionFlags, target: &PidOrAtom) -> bool {
    flags.contains(DistributionFlags::DIST_MONITOR)
        && (matches!(target, PidOrAtom::Pid(_))
            || flags.contains(DistributionFlags::DIST_MONITOR_NAME))
}

/// Why a process could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// Another process holds the name.
    #[error("the name {0:?} is already registered")]
    NameTaken(String),
    /// The name is empty or longer than an atom may be (255 characters).
    #[error("a registered name must be 1 to 255 characters")]
    BadName,
}

/// What a peer's MONITOR_P names.
#[derive(Debug, Clone, Copy)]
pub enum MonitorTarget<'a> {
    /// A registered name.
    Name(&'a str),
    /// A pid.
    Pid(&'a Pid),
}

/// The local node. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Node(Arc<Inner>);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.0.name.name)
            .field("creation", &self.0.creation)
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: Atom,
    creation: u32,
    config: Config,
    next_pid: AtomicU32,
    next_ref: AtomicU64,
    registry: RwLock<Registry>,
    /// Monitors peers hold on local processes. Lock order: this, then `registry`.
    incoming: Mutex<monitors::Table>,
    peers: Mutex<Peers>,
    /// Times a connection reader paused for a congested process.
    pauses: AtomicU64,
    /// Function calls (rpc, erpc, spawn, rex) running, and their congestion.
    calls: AtomicUsize,
    calls_pressure: Arc<Pressure>,
    manager: Manager,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    threads: transport::threads::Threads,
    /// What peers may run here (rpc, spawn, rex): see [`crate::node::services::functions`].
    functions: crate::node::services::functions::Functions,
    /// A peer's `init:stop`/`erlang:halt` (see [`crate::node::services::control`]).
    stop_request: crate::node::services::control::StopRequest,
    /// Active aliases (ALIAS_SEND targets) of local processes: alias -> the process's pid.
    aliases: Mutex<HashMap<monitors::RefKey, Pid, foldhash::fast::RandomState>>,
    /// Node up/down events for [`Node::monitor_nodes`].
    events: events::Hub,
    /// The `global` server of a visible node, once started.
    global: std::sync::OnceLock<crate::node::services::global::Global>,
}

impl Node {
    /// Creates the node state. `creation` is the value EPMD handed out; connections (accepted
    /// or dialed, also when asked from non-tokio threads) run on `threads`.
    pub(crate) fn new(
        config: Config,
        creation: u32,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        threads: transport::threads::Threads,
    ) -> Self {
        let pending_limits = transport::manager::PendingLimits::from_config(&config);
        Node(Arc::new(Inner {
            name: Atom::from(config.node_name.as_str()),
            creation,
            config,
            next_pid: AtomicU32::new(1),
            next_ref: AtomicU64::new(1),
            registry: RwLock::new(Registry::default()),
            incoming: Mutex::new(monitors::Table::default()),
            peers: Mutex::new(Peers::default()),
            pauses: AtomicU64::new(0),
            calls: AtomicUsize::new(0),
            calls_pressure: Arc::new(Pressure::default()),
            manager: Manager::new(pending_limits),
            shutdown,
            tracker,
            threads,
            functions: Default::default(),
            stop_request: Default::default(),
            aliases: Mutex::new(HashMap::default()),
            events: events::Hub::default(),
            global: std::sync::OnceLock::new(),
        }))
    }

    /// The node's `global` server (a visible node once started; None on a hidden node).
    pub(crate) fn global_server(&self) -> Option<&crate::node::services::global::Global> {
        self.0.global.get()
    }

    /// Records the node's `global` server (once).
    pub(crate) fn set_global_server(&self, global: crate::node::services::global::Global) {
        let _ = self.0.global.set(global);
    }

    /// Where a peer's `init:stop`/`erlang:halt` lands (see [`Node::stop_requested`]).
    pub(crate) fn stop_request(&self) -> &crate::node::services::control::StopRequest {
        &self.0.stop_request
    }

    /// The table of functions peers may run on this node (rpc, spawn, `rex`).
    pub(crate) fn functions(&self) -> &crate::node::services::functions::Functions {
        &self.0.functions
    }

    /// The full node name as an atom.
    pub fn name(&self) -> &Atom {
        &self.0.name
    }

    /// The node's creation (incarnation) number.
    pub fn creation(&self) -> u32 {
        self.0.creation
    }

    /// The configuration the node runs with.
    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }

    /// The connection manager.
    pub(crate) fn manager(&self) -> &Manager {
        &self.0.manager
    }

    /// The distribution flags `peer` negotiated, while it is connected.
    #[doc(hidden)] // introspection for tests, not API
    pub fn peer_flags(&self, peer: &str) -> Option<DistributionFlags> {
        self.0.manager.peer_flags(peer)
    }

    /// Cancelled when the node shuts down.
    pub(crate) fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// The tracker every node task is spawned on (so shutdown can wait for them).
    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// The connection threads.
    pub(crate) fn threads(&self) -> &transport::threads::Threads {
        &self.0.threads
    }

    /// Mints a fresh local pid.
    pub(crate) fn new_pid(&self) -> Pid {
        let n = self.0.next_pid.fetch_add(1, Ordering::Relaxed);
        Pid::new(
            self.0.name.name.as_str(),
            n & 0x7fff,
            (n >> 15) & 0x1fff,
            self.0.creation,
        )
    }

    /// Mints a fresh reference.
    pub fn new_ref(&self) -> Reference {
        let n = self.0.next_ref.fetch_add(1, Ordering::Relaxed);
        Reference {
            node: self.0.name.clone(),
            id: vec![
                (n & 0x3ffff) as u32,
                ((n >> 18) & 0xffff_ffff) as u32,
                (n >> 50) as u32,
            ],
            creation: self.0.creation,
        }
    }

    /// Is this pid one of ours (this node, this incarnation)?
    pub fn is_local(&self, pid: &Pid) -> bool {
        pid.node == self.0.name
    }

    /// Registers a process: `make` gets its fresh pid and returns what runs its signals.
    /// Registered under `name` when given.
    pub(crate) fn spawn_process(
        &self,
        name: Option<&str>,
        make: impl FnOnce(&Pid) -> Arc<dyn Dispatch>,
    ) -> Mailbox {
        let pid = self.new_pid();
        let target = make(&pid);
        let mailbox = Mailbox { pid, target };
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        reg.pids.insert(pid_key(&mailbox.pid), mailbox.clone());
        if let Some(name) = name {
            reg.names.insert(name.to_owned(), mailbox.clone());
        }
        mailbox
    }

    /// Like [`Node::spawn_process`], but refuses a `name` another process holds (as
    /// `erlang:register/2` does), without creating the process.
    pub(crate) fn try_spawn_process(
        &self,
        name: Option<&str>,
        make: impl FnOnce(&Pid) -> Arc<dyn Dispatch>,
    ) -> Result<Mailbox, SpawnError> {
        if let Some(name) = name
            && (name.is_empty() || name.chars().count() > 255)
        {
            return Err(SpawnError::BadName);
        }
        let pid = self.new_pid();
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = name
            && reg.names.contains_key(name)
        {
            return Err(SpawnError::NameTaken(name.to_owned()));
        }
        // `make` runs under the registry lock: it must not look names up (it builds the
        // process's state only).
        let target = make(&pid);
        let mailbox = Mailbox { pid, target };
        reg.pids.insert(pid_key(&mailbox.pid), mailbox.clone());
        if let Some(name) = name {
            reg.names.insert(name.to_owned(), mailbox.clone());
        }
        Ok(mailbox)
    }

    /// Removes a process (and its registered name) from the registry.
    pub(crate) fn remove_process(&self, pid: &Pid) {
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        reg.pids.remove(&pid_key(pid));
        reg.names.retain(|_, m| m.pid != *pid);
    }

    /// The local process `pid` exits with `reason`: it leaves the registry, and every monitor
    /// peers hold on it fires (MONITOR_P_EXIT with `reason`; by name when it was placed by
    /// name). With `restart`, a fresh process (new pid, made by `restart`) takes its
    /// registered names in the same registry update, as a supervisor's restart would, so a
    /// caller finds either the old process (and its monitor fires) or the new one, never no
    /// process. Returns the new process's mailbox.
    pub(crate) fn exit_process(
        &self,
        pid: &Pid,
        reason: Term,
        restart: Option<MakeProcess<'_>>,
    ) -> Option<Mailbox> {
        let successor = restart.map(|make| {
            let new_pid = self.new_pid();
            let target = make(&new_pid);
            Mailbox {
                pid: new_pid,
                target,
            }
        });
        let key = pid_key(pid);
        let names: Vec<String> = {
            let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
            reg.pids.remove(&key);
            let names: Vec<String> = reg
                .names
                .iter()
                .filter(|(_, m)| m.pid == *pid)
                .map(|(n, _)| n.clone())
                .collect();
            for name in &names {
                match &successor {
                    Some(mb) => {
                        reg.names.insert(name.clone(), mb.clone());
                    }
                    None => {
                        reg.names.remove(name);
                    }
                }
            }
            if let Some(mb) = &successor {
                reg.pids.insert(pid_key(&mb.pid), mb.clone());
            }
            names
        };
        // After the registry update: a monitor placed meanwhile either saw the old process
        // (and is in the table before we look, as placing holds this lock) or the new one.
        let (fired, links) = {
            let mut table = self.lock_incoming();
            (table.take_target(key), table.take_links(key))
        };
        // Linked processes get the exit signal (a trapping one sees `{:EXIT, pid, reason}`).
        // Only over a live connection: a link or monitor from a connection that is gone is
        // void (its side already saw `noconnection`), and dialing back would be wrong (a
        // NAME_ME peer cannot even be dialed).
        for (peer, remote) in links {
            if peer == self.0.name.name {
                // A local link: the other side gets the signal, and its half of the link goes.
                let _ = self.lock_incoming().unlink(&peer, pid_key(&remote), pid);
                if let Some(mb) = self.lookup_pid(&remote) {
                    mb.target.exit_signal(self, pid.clone(), reason.clone());
                }
                continue;
            }
            if self.0.manager.is_up(&peer) {
                self.send_to_node(&peer, Message::exit(pid.clone(), remote, reason.clone()));
            }
        }
        tracing::debug!(
            id = pid.id,
            monitors = fired.len(),
            restarted = successor.is_some(),
            reason = %crate::etf::summary(&reason),
            "process exited"
        );
        for (peer, ref_key, m) in fired {
            let (watcher, reference) = match m.foreign {
                Some(f) => (f.watcher, f.reference),
                None => (m.watcher.to_pid(&peer), ref_key.to_reference(&peer)),
            };
            let from = match names.first() {
                Some(name) if m.by_name => PidOrAtom::Atom(Atom::from(name.as_str())),
                _ => PidOrAtom::Pid(pid.clone()),
            };
            if peer == self.0.name.name {
                // A monitor a local process holds (see [`handle::Process::monitor`]).
                if let Some(mb) = self.lookup_pid(&watcher) {
                    mb.deliver(
                        self,
                        Signal::Down {
                            reference,
                            pid: pid.clone(),
                            reason: reason.clone(),
                        },
                    );
                }
                continue;
            }
            // Only peers with DIST_MONITOR place monitors; sent on their connection after
            // anything the process sent them before (its last replies included).
            if !self.0.manager.is_up(&peer) {
                continue;
            }
            self.send_to_node(
                &peer,
                Message::monitor_p_exit(from, watcher, reference, reason.clone()),
            );
        }
        successor
    }

    fn lock_incoming(&self) -> std::sync::MutexGuard<'_, monitors::Table> {
        self.0.incoming.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a monitor `peer` places on a local process (by registered name or pid). False
    /// when there is no such process: the caller answers `noproc`. A peer over
    /// `--max-monitors-per-peer` is disconnected instead.
    pub(crate) fn monitor_incoming(
        &self,
        peer: &str,
        target: MonitorTarget<'_>,
        key: monitors::RefKey,
        watcher: monitors::PeerPid,
        foreign: Option<Box<monitors::Foreign>>,
    ) -> bool {
        let mut table = self.lock_incoming();
        let (target, by_name) = {
            let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
            match target {
                MonitorTarget::Name(name) => match reg.names.get(name) {
                    Some(mb) => (pid_key(&mb.pid), true),
                    None => return false,
                },
                MonitorTarget::Pid(pid) => {
                    let k = pid_key(pid);
                    if !self.is_local(pid)
                        || pid.creation != self.0.creation
                        || !reg.pids.contains_key(&k)
                    {
                        return false;
                    }
                    (k, false)
                }
            }
        };
        let recorded = table.insert(
            peer,
            key,
            monitors::Incoming {
                target,
                by_name,
                watcher,
                foreign,
            },
            self.0.config.max_monitors_per_peer,
        );
        drop(table);
        if !recorded {
            tracing::warn!(
                %peer,
                max = self.0.config.max_monitors_per_peer,
                "peer holds more monitors than --max-monitors-per-peer: disconnecting it"
            );
            self.0.manager.close_peer(peer);
        }
        // Over the bound the monitor is not recorded and the peer is being disconnected
        // (which fires its monitors there): nothing to answer.
        true
    }

    /// Records a link from `remote` (on `peer`) to the local process `target`. False when
    /// there is no such process: the caller answers with an exit `noproc`. A peer over
    /// `--max-monitors-per-peer` links is disconnected instead.
    pub(crate) fn link_incoming(&self, peer: &str, target: &Pid, remote: &Pid) -> bool {
        let mut table = self.lock_incoming();
        let key = pid_key(target);
        let alive = self.lookup_pid(target).is_some();
        if !alive {
            return false;
        }
        let max = self.0.config.max_monitors_per_peer;
        if !table.link(peer, key, remote, max) {
            drop(table);
            tracing::warn!(%peer, max, "peer holds more links than --max-monitors-per-peer: disconnecting it");
            self.0.manager.close_peer(peer);
        }
        true
    }

    /// Removes a link `remote` (on `peer`) had to the local process `target`. True if the
    /// link existed.
    pub(crate) fn unlink_incoming(&self, peer: &str, target: &Pid, remote: &Pid) -> bool {
        self.lookup_pid(target).is_some()
            && self.lock_incoming().unlink(peer, pid_key(target), remote)
    }

    /// Removes a monitor `peer` held (DEMONITOR_P); unknown ones are ignored, as BEAM does.
    pub(crate) fn demonitor_incoming(&self, peer: &str, key: &monitors::RefKey) {
        self.lock_incoming().remove(peer, key);
    }

    /// Number of monitors peers hold on local processes.
    #[doc(hidden)] // introspection for tests, not API
    pub fn incoming_monitor_count(&self) -> usize {
        self.lock_incoming().len()
    }

    /// Number of links peers' processes hold on local processes.
    pub(crate) fn incoming_link_count(&self) -> usize {
        self.lock_incoming().link_count()
    }

    /// The mailbox registered under `name`.
    pub(crate) fn whereis(&self, name: &str) -> Option<Mailbox> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.names.get(name).cloned()
    }

    /// What runs the signals of the process registered under `name` (cheaper than
    /// [`Node::whereis`]: no pid is cloned).
    pub(crate) fn whereis_target(&self, name: &str) -> Option<Arc<dyn Dispatch>> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.names.get(name).map(|m| m.target.clone())
    }

    /// The mailbox of a local pid (None for other nodes, other incarnations, dead pids).
    pub(crate) fn lookup_pid(&self, pid: &Pid) -> Option<Mailbox> {
        if !self.is_local(pid) || pid.creation != self.0.creation {
            return None;
        }
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.pids.get(&pid_key(pid)).cloned()
    }

    /// The registered names, sorted.
    pub(crate) fn registered_names(&self) -> Vec<String> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = reg.names.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many local processes are alive, and how many of them have a registered name.
    pub(crate) fn process_counts(&self) -> (usize, usize) {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        (reg.pids.len(), reg.names.len())
    }

    /// Sends a control message to `peer`, dialing it if we are not connected.
    pub(crate) fn send_to_node(&self, peer: &str, message: Message) {
        let encoded = match &message {
            // Its shape depends on the peer's flags: op 37 to a peer with ALTACT_SIG (OTP 28+),
            // op 33 to others. Alias sends are made once the peer's flags are known.
            Message::AliasSend(_) => match self.0.manager.peer_flags(peer) {
                Some(flags) => transport::encode_frame_for(message, flags),
                None => transport::encode_frame(message),
            },
            _ => transport::encode_frame(message),
        };
        match encoded {
            Ok(frame) => self.send_frame(peer, frame),
            Err(error) => tracing::warn!(%peer, %error, "cannot encode an outbound message"),
        }
    }

    /// Sends an encoded frame to `peer`, dialing it if we are not connected.
    pub(crate) fn send_frame(&self, peer: &str, frame: Frame) {
        match self.0.manager.send(peer, frame) {
            transport::manager::Sent::Done => {}
            transport::manager::Sent::Dial(dial) => self.spawn_dial(peer, dial),
            transport::manager::Sent::Refused => self.spawn_node_down(peer),
        }
    }

    /// Whether the connected peer negotiated `flag` (false when not connected).
    pub(crate) fn peer_has(&self, peer: &str, flag: DistributionFlags) -> bool {
        self.0
            .manager
            .peer_flags(peer)
            .is_some_and(|f| f.contains(flag))
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.0.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a function call (rpc, erpc, spawn, rex) that is starting, on the thread of the
    /// reader that received it: over `MAX_CALLS_IN_FLIGHT` that reader pauses until half
    /// of them have finished. Hold the slot until the call has finished.
    pub(crate) fn call_slot(&self) -> CallSlot {
        let now = self.0.calls.fetch_add(1, Ordering::AcqRel) + 1;
        if now >= MAX_CALLS_IN_FLIGHT {
            self.0.calls_pressure.set(Pressure::CALLS, true);
            note_congested(&self.0.calls_pressure);
        }
        CallSlot(self.clone())
    }

    /// Starts dialing `peer` unless it is connected or being dialed. False when no dial may
    /// start (`--max-dials`): the node then counts as down (its monitors fire at once).
    fn ensure_dialing(&self, peer: &str) -> bool {
        match self.0.manager.connect(peer) {
            transport::manager::Sent::Done => true,
            transport::manager::Sent::Dial(dial) => {
                self.spawn_dial(peer, dial);
                true
            }
            transport::manager::Sent::Refused => {
                self.spawn_node_down(peer);
                false
            }
        }
    }

    /// Runs the node-down of `peer` on a task (not inline: the caller may be inside a handler
    /// that holds a monitor table or a server).
    fn spawn_node_down(&self, peer: &str) {
        let node = self.clone();
        let peer = peer.to_owned();
        let (runtime, placement) = self.0.threads.place();
        runtime.spawn(self.0.tracker.track_future(async move {
            let _placement = placement;
            // The peer may have connected (or a dial started) meanwhile: then it is not down,
            // and its monitors and waiting messages are that connection's or dial's business.
            if !node.0.manager.knows(&peer) {
                node.node_down(&peer);
            }
        }));
    }

    fn spawn_dial(&self, peer: &str, dial: transport::manager::DialTicket) {
        let node = self.clone();
        let peer = peer.to_owned();
        // On a connection thread, like accepted connections: the dialed connection lives
        // there. Through a runtime handle, as this may run on a non-tokio thread (storage).
        let (runtime, placement) = self.0.threads.place();
        runtime.spawn(self.0.tracker.track_future(async move {
            let _placement = placement;
            transport::dial(node, peer, dial).await;
        }));
    }

    /// Sends to `peer` a message whose shape depends on the flags it negotiated: `decide`
    /// makes it from them (None: the peer cannot take such a message; nothing is sent). For a
    /// connected peer it runs now; otherwise the peer is dialed and it runs once the
    /// connection is up (dropped if the dial fails). Never sends a peer what it did not
    /// negotiate.
    ///
    /// `weight` gives the message's size in bytes; it is asked only when the message has to
    /// wait, and counts against the same bounds as frames queued for a node being dialed
    /// (`--max-pending-bytes`): a message that does not fit is dropped like a send to a down
    /// node.
    pub(crate) fn send_when_connected(
        &self,
        peer: &str,
        weight: impl FnOnce() -> usize,
        decide: impl FnOnce(DistributionFlags) -> Option<Message> + Send + 'static,
    ) {
        // Fast path without the peers lock: a connected peer's flags are final.
        if let Some(flags) = self.0.manager.peer_flags(peer) {
            if let Some(message) = decide(flags) {
                self.send_to_node(peer, message);
            }
            return;
        }
        {
            let mut peers = self.lock_peers();
            // Looked at again under the lock: `node_up` flushes under it after the
            // connection is registered, so a message is either sent now or flushed there.
            match self.0.manager.peer_flags(peer) {
                Some(flags) => {
                    drop(peers);
                    if let Some(message) = decide(flags) {
                        self.send_to_node(peer, message);
                    }
                }
                None => {
                    // The pending slot (made by the dial) carries the byte count.
                    if !self.ensure_dialing(peer) {
                        return;
                    }
                    if peers.deferred.get(peer).map_or(0, Vec::len) >= MAX_DEFERRED_PER_PEER {
                        tracing::warn!(%peer, "too many messages waiting for a connection: dropping one");
                        return;
                    }
                    let bytes = weight().saturating_add(DEFERRED_OVERHEAD);
                    match self.0.manager.reserve_pending(peer, bytes) {
                        transport::manager::Reserve::Reserved => {}
                        transport::manager::Reserve::Full => return,
                        transport::manager::Reserve::Up(flags) => {
                            drop(peers);
                            if let Some(message) = decide(flags) {
                                self.send_to_node(peer, message);
                            }
                            return;
                        }
                    }
                    peers
                        .deferred
                        .entry(peer.to_owned())
                        .or_default()
                        .push(Box::new(decide));
                }
            }
        }
    }

    /// Monitors a pid on behalf of `watcher` (a local pid too: then no connection is
    /// involved, it fires when the process exits). The monitor fires as a
    /// `Signal::Down` when the peer reports the pid's exit or the connection goes down.
    /// Toward a peer without DIST_MONITOR no MONITOR_P is sent (BEAM's local-only monitor):
    /// it fires only when that node goes down.
    pub(crate) fn monitor_remote(&self, watcher: &Pid, target: &Pid) -> Reference {
        self.monitor_remote_target(
            watcher,
            &target.node.name,
            PidOrAtom::Pid(target.clone()),
            self.new_ref(),
        )
    }

    /// Like [`Node::monitor_remote`] for a pid or a registered name on node `peer`, with the
    /// monitor reference chosen by the caller. A monitor by name fires [`Signal::Down`] with
    /// a placeholder pid (id 0 on `peer`): the watcher knows what it monitored.
    pub(crate) fn monitor_remote_target(
        &self,
        watcher: &Pid,
        peer: &str,
        target: PidOrAtom,
        reference: Reference,
    ) -> Reference {
        if peer == self.0.name.name {
            self.monitor_local(watcher, &target, &reference);
            return reference;
        }
        let peer = peer.to_owned();
        let state = {
            let mut peers = self.lock_peers();
            let state = match self.0.manager.peer_flags(&peer) {
                Some(f) if may_monitor(f, &target) => MonitorState::Sent,
                Some(_) => MonitorState::LocalOnly,
                None => MonitorState::Unsent,
            };
            peers.monitors.entry(peer.clone()).or_default().insert(
                reference.id.clone(),
                RemoteMonitor {
                    watcher: watcher.clone(),
                    target: target.clone(),
                    reference: reference.clone(),
                    state,
                },
            );
            if state == MonitorState::Sent {
                // Under the lock, so a DEMONITOR_P for it cannot overtake it.
                self.send_to_node(
                    &peer,
                    Message::monitor_p(watcher.clone(), target, reference.clone()),
                );
            }
            state
        };
        match state {
            MonitorState::Sent => {}
            MonitorState::LocalOnly => {
                tracing::debug!(%peer, "peer lacks DIST_MONITOR: monitor kept locally until node-down")
            }
            MonitorState::Unsent => {
                self.ensure_dialing(&peer);
            }
        }
        reference
    }

    /// A monitor a local process places on a local process: recorded in the table of
    /// incoming monitors under this node's own name (fired by [`Node::exit_process`]). A
    /// missing target fires `noproc` at once, as BEAM does.
    fn monitor_local(&self, watcher: &Pid, target: &PidOrAtom, reference: &Reference) {
        let key = monitors::RefKey::of(reference);
        let placed = key.is_some_and(|key| {
            let target = match target {
                PidOrAtom::Pid(pid) => MonitorTarget::Pid(pid),
                PidOrAtom::Atom(name) => MonitorTarget::Name(&name.name),
            };
            let watcher = monitors::PeerPid {
                id: watcher.id,
                serial: watcher.serial,
                creation: watcher.creation,
            };
            self.monitor_incoming(&self.0.name.name, target, key, watcher, None)
        });
        if !placed && let Some(mb) = self.lookup_pid(watcher) {
            mb.deliver(
                self,
                Signal::Down {
                    reference: reference.clone(),
                    pid: target_pid(&self.0.name.name, target.clone()),
                    reason: Atom::from("noproc").into(),
                },
            );
        }
    }

    /// Removes a monitor placed with [`Node::monitor_remote`] and tells the peer (if it was
    /// told of the monitor).
    pub(crate) fn demonitor_remote(&self, watcher: &Pid, target: &Pid, reference: &Reference) {
        self.demonitor_remote_on(watcher, &target.node.name, reference);
    }

    /// Removes a monitor placed with [`Node::monitor_remote_target`] on node `peer`.
    pub(crate) fn demonitor_remote_on(&self, watcher: &Pid, peer: &str, reference: &Reference) {
        if peer == self.0.name.name {
            if let Some(key) = monitors::RefKey::of(reference) {
                self.demonitor_incoming(peer, &key);
            }
            return;
        }
        let peer = peer.to_owned();
        let mut peers = self.lock_peers();
        let removed = peers
            .monitors
            .get_mut(&peer)
            .and_then(|m| m.remove(&reference.id));
        if let Some(mons) = peers.monitors.get(&peer)
            && mons.is_empty()
        {
            peers.monitors.remove(&peer);
        }
        if let Some(m) = removed
            && m.state == MonitorState::Sent
            && self.0.manager.is_up(&peer)
        {
            self.send_to_node(
                &peer,
                Message::demonitor_p(watcher.clone(), m.target, reference.clone()),
            );
        }
    }

    /// Removes the monitors `pid` holds on other nodes' processes (telling each peer with
    /// DEMONITOR_P, as a BEAM node does for a process that dies), so a server that ends
    /// leaves none behind to fire into its dead pid. Scans every remote monitor: for the
    /// rare end of a server, not for each short-lived process (a [`crate::Process`] drops
    /// its own).
    pub(crate) fn release_monitors_held_by(&self, pid: &Pid) {
        let held: Vec<(String, Reference)> = {
            let peers = self.lock_peers();
            peers
                .monitors
                .iter()
                .flat_map(|(peer, monitors)| {
                    monitors
                        .values()
                        .filter(|m| m.watcher == *pid)
                        .map(move |m| (peer.clone(), m.reference.clone()))
                })
                .collect()
        };
        for (peer, reference) in held {
            self.demonitor_remote_on(pid, &peer, &reference);
        }
    }

    /// A peer reported that a pid we monitor exited.
    pub(crate) fn remote_monitor_fired(&self, peer: &str, reference: &Reference, reason: Term) {
        let mon = {
            let mut peers = self.lock_peers();
            peers
                .monitors
                .get_mut(peer)
                .and_then(|m| m.remove(&reference.id))
        };
        if let Some(mon) = mon
            && let Some(watcher) = self.lookup_pid(&mon.watcher)
        {
            watcher.deliver(
                self,
                Signal::Down {
                    reference: mon.reference,
                    pid: target_pid(peer, mon.target),
                    reason,
                },
            );
        }
    }

    /// The connection to `peer` is up with `flags` (called after it is registered): monitors
    /// and messages that waited for its flags are sent, in the shape it negotiated.
    pub(crate) fn node_up(&self, peer: &str, flags: DistributionFlags) {
        let mut peers = self.lock_peers();
        if let Some(mons) = peers.monitors.get_mut(peer) {
            for mon in mons.values_mut() {
                if mon.state != MonitorState::Unsent {
                    continue;
                }
                if may_monitor(flags, &mon.target) {
                    mon.state = MonitorState::Sent;
                    self.send_to_node(
                        peer,
                        Message::monitor_p(
                            mon.watcher.clone(),
                            mon.target.clone(),
                            mon.reference.clone(),
                        ),
                    );
                } else {
                    mon.state = MonitorState::LocalOnly;
                }
            }
        }
        // Sent under the lock: a message made meanwhile goes after these, in order.
        for decide in peers.deferred.remove(peer).unwrap_or_default() {
            if let Some(message) = decide(flags) {
                self.send_to_node(peer, message);
            }
        }
        drop(peers);
        self.0.events.up(peer);
    }

    /// The connection to `peer` went down (or could not be made): every monitor our processes
    /// hold on that node fires with `noconnection`, and messages waiting for it are dropped.
    pub(crate) fn node_down(&self, peer: &str) {
        // The peer's monitors on our processes went with it (its side fired them); links
        // with its processes break with `noconnection` (BEAM's exit signal on node-down).
        let links = {
            let mut table = self.lock_incoming();
            let links = table.links.remove(peer).unwrap_or_default();
            table.remove_peer(peer);
            links
        };
        for (key, remote) in links {
            if let Some(mb) = self.lookup_key(key) {
                mb.target
                    .exit_signal(self, remote, Atom::from("noconnection").into());
            }
        }
        self.0.events.down(peer);
        let (fired, dropped): (Vec<RemoteMonitor>, usize) = {
            let mut peers = self.lock_peers();
            let fired = peers
                .monitors
                .remove(peer)
                .map(|m| m.into_values().collect())
                .unwrap_or_default();
            let dropped = peers.deferred.remove(peer).map_or(0, |d| d.len());
            (fired, dropped)
        };
        if !fired.is_empty() || dropped > 0 {
            tracing::debug!(%peer, monitors = fired.len(), dropped, "node down: firing monitors");
        }
        for mon in fired {
            let Some(watcher) = self.lookup_pid(&mon.watcher) else {
                continue;
            };
            watcher.deliver(
                self,
                Signal::Down {
                    reference: mon.reference,
                    pid: target_pid(peer, mon.target),
                    reason: Atom::from("noconnection").into(),
                },
            );
        }
    }

    /// Counts a connection reader pausing for a congested process.
    pub(crate) fn note_backpressure_pause(&self) {
        self.0.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// Times connection readers paused for congested processes (`:kvnode.info`).
    #[doc(hidden)] // introspection for tests, not API
    pub fn backpressure_pauses(&self) -> u64 {
        self.0.pauses.load(Ordering::Relaxed)
    }

    /// The mailbox of the local process with registry key `key`.
    fn lookup_key(&self, key: u32) -> Option<Mailbox> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.pids.get(&key).cloned()
    }

    /// Delivers an exit signal from `from` to the local process `to` (see
    /// [`Dispatch::exit_signal`]); nothing when there is no such process.
    pub(crate) fn deliver_exit(&self, to: &Pid, from: Pid, reason: Term) {
        if let Some(mb) = self.lookup_pid(to) {
            mb.target.exit_signal(self, from, reason);
        }
    }

    /// Makes `alias` (a reference of this node) an alias of the local process `pid`:
    /// ALIAS_SEND to it reaches that process until [`Node::deactivate_alias`].
    pub(crate) fn activate_alias(&self, alias: &Reference, pid: &Pid) {
        if let Some(key) = monitors::RefKey::of(alias) {
            self.lock_aliases().insert(key, pid.clone());
        }
    }

    /// Ends an alias: messages sent to it from now on are dropped, as BEAM drops them.
    pub(crate) fn deactivate_alias(&self, alias: &Reference) {
        if let Some(key) = monitors::RefKey::of(alias) {
            self.lock_aliases().remove(&key);
        }
    }

    /// The process an active alias of this node belongs to.
    pub(crate) fn alias_target(&self, alias: &Reference) -> Option<Mailbox> {
        if alias.node != self.0.name || alias.creation != self.0.creation {
            return None;
        }
        let key = monitors::RefKey::of(alias)?;
        let pid = self.lock_aliases().get(&key).cloned()?;
        self.lookup_pid(&pid)
    }

    fn lock_aliases(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<monitors::RefKey, Pid, foldhash::fast::RandomState>>
    {
        self.0.aliases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of monitors our processes hold on remote pids (for tests and diagnostics).
    #[doc(hidden)] // introspection for tests, not API
    pub fn remote_monitor_count(&self) -> usize {
        let peers = self.lock_peers();
        peers.monitors.values().map(|m| m.len()).sum()
    }
}

/// The pid a [`Signal::Down`] names for a remote monitor: the monitored pid, or for a
/// monitor by name a placeholder on that node (id 0; the watcher knows the name).
fn target_pid(peer: &str, target: PidOrAtom) -> Pid {
    match target {
        PidOrAtom::Pid(pid) => pid,
        PidOrAtom::Atom(_) => Pid::new(peer, 0, 0, 0),
    }
}
