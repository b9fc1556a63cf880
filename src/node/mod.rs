//! The local node: its identity (name, creation), the pids, references and registered names it
//! hands out, the mailboxes of its processes, the monitors its processes hold on remote pids,
//! and the routing of inbound control messages ([`router`]) to them.
//!
//! kvnode's processes are GenServers whose handlers run in the thread that delivers a signal
//! ([`Mailbox`], [`Dispatch`]): no task hop per message. The built-in ones
//! (the KV server, `net_kernel`) live as long as the node, so monitors that peers place on them
//! need no bookkeeping: DEMONITOR_P is a no-op, and a lost connection already gives the peer's
//! monitors `noconnection`. Monitors that *our* processes place on remote pids are kept per peer
//! node and fire `noconnection` when that peer's connection goes down.

pub mod router;

use crate::config::Config;
use crate::dist::manager::Manager;
use crate::dist::{self, Frame};
use erl_dist::message::Message;
use erl_dist::term::{Atom, Pid, PidOrAtom, Reference, Term};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::oneshot;
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
}

/// Runs signals for one process. Implemented by [`crate::gen_server`]'s host, which runs the
/// handler in the delivering thread (no task hop) and queues signals that arrive while
/// another thread is inside the handler.
pub trait Dispatch: Send + Sync {
    /// Handles (or queues) one signal.
    fn dispatch(&self, node: &Node, signal: Signal);

    /// Handles a message still in external format, if the process can do so right now
    /// without decoding it. False: nothing happened; the caller decodes the message and uses
    /// [`Dispatch::dispatch`].
    fn dispatch_raw(&self, node: &Node, raw: &RawMessage) -> bool {
        let _ = (node, raw);
        false
    }
}

/// A message for a local process as it arrived: validated external-format bytes, and the
/// connection it came on (where a reply to its sender goes).
pub struct RawMessage<'a> {
    /// The peer node's name.
    pub peer: &'a str,
    /// The connection the message came on.
    pub conn: &'a dist::manager::ConnHandle,
    /// The message, version byte included.
    pub message: &'a [u8],
    /// The limits it was validated with.
    pub limits: &'a crate::term::Limits,
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
}

#[derive(Default)]
struct Registry {
    // Looked up on every incoming call: a fast hash (names and pids are not peer-chosen keys
    // in any number: only registered processes are stored).
    names: HashMap<String, Mailbox, foldhash::fast::RandomState>,
    pids: HashMap<u32, Mailbox, foldhash::fast::RandomState>,
}

/// A monitor held by a local process on a remote pid.
struct RemoteMonitor {
    watcher: Pid,
    target: Pid,
    reference: Reference,
}

/// The local node. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct Node(Arc<Inner>);

struct Inner {
    name: Atom,
    creation: u32,
    config: Config,
    next_pid: AtomicU32,
    next_ref: AtomicU64,
    registry: RwLock<Registry>,
    /// peer node name -> monitor ref ids -> monitor
    monitors: Mutex<HashMap<String, HashMap<Vec<u32>, RemoteMonitor>>>,
    manager: Manager,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    threads: dist::threads::Threads,
    /// What peers may run here (rpc, spawn, rex): see [`crate::services::functions`].
    functions: crate::services::functions::Functions,
}

impl Node {
    /// Creates the node state. `creation` is the value EPMD handed out; connections (accepted
    /// or dialed, also when asked from non-tokio threads) run on `threads`.
    pub fn new(
        config: Config,
        creation: u32,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        threads: dist::threads::Threads,
    ) -> Self {
        Node(Arc::new(Inner {
            name: Atom::from(config.node_name.as_str()),
            creation,
            config,
            next_pid: AtomicU32::new(1),
            next_ref: AtomicU64::new(1),
            registry: RwLock::new(Registry::default()),
            monitors: Mutex::new(HashMap::new()),
            manager: Manager::default(),
            shutdown,
            tracker,
            threads,
            functions: Default::default(),
        }))
    }

    /// The table of functions peers may run on this node (rpc, spawn, `rex`).
    pub fn functions(&self) -> &crate::services::functions::Functions {
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
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// The connection manager.
    pub fn manager(&self) -> &Manager {
        &self.0.manager
    }

    /// Cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.0.shutdown
    }

    /// The tracker every node task is spawned on (so shutdown can wait for them).
    pub fn tracker(&self) -> &TaskTracker {
        &self.0.tracker
    }

    /// The connection threads.
    pub fn threads(&self) -> &dist::threads::Threads {
        &self.0.threads
    }

    /// Mints a fresh local pid.
    pub fn new_pid(&self) -> Pid {
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
    pub fn spawn_process(
        &self,
        name: Option<&str>,
        make: impl FnOnce(&Pid) -> Arc<dyn Dispatch>,
    ) -> Mailbox {
        let pid = self.new_pid();
        let target = make(&pid);
        let mailbox = Mailbox { pid, target };
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        reg.pids
            .insert(mailbox.pid.id | (mailbox.pid.serial << 15), mailbox.clone());
        if let Some(name) = name {
            reg.names.insert(name.to_owned(), mailbox.clone());
        }
        mailbox
    }

    /// Removes a process (and its registered name) from the registry.
    pub fn remove_process(&self, pid: &Pid) {
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        reg.pids.remove(&(pid.id | (pid.serial << 15)));
        reg.names.retain(|_, m| m.pid != *pid);
    }

    /// The mailbox registered under `name`.
    pub fn whereis(&self, name: &str) -> Option<Mailbox> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.names.get(name).cloned()
    }

    /// What runs the signals of the process registered under `name` (cheaper than
    /// [`Node::whereis`]: no pid is cloned).
    pub fn whereis_target(&self, name: &str) -> Option<Arc<dyn Dispatch>> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.names.get(name).map(|m| m.target.clone())
    }

    /// Whether a process is registered under `name`.
    pub fn is_registered(&self, name: &str) -> bool {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.names.contains_key(name)
    }

    /// The mailbox of a local pid (None for other nodes, other incarnations, dead pids).
    pub fn lookup_pid(&self, pid: &Pid) -> Option<Mailbox> {
        if !self.is_local(pid) || pid.creation != self.0.creation {
            return None;
        }
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.pids.get(&(pid.id | (pid.serial << 15))).cloned()
    }

    /// The registered names, sorted.
    pub fn registered_names(&self) -> Vec<String> {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = reg.names.keys().cloned().collect();
        names.sort();
        names
    }

    /// How many local processes are alive, and how many of them have a registered name.
    pub fn process_counts(&self) -> (usize, usize) {
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        (reg.pids.len(), reg.names.len())
    }

    /// Does the process (pid or registered name) exist here?
    pub fn process_exists(&self, proc_: &PidOrAtom) -> bool {
        match proc_ {
            PidOrAtom::Pid(pid) => self.lookup_pid(pid).is_some(),
            PidOrAtom::Atom(name) => self.whereis(&name.name).is_some(),
        }
    }

    /// Sends a control message to `peer`, dialing it if we are not connected.
    pub fn send_to_node(&self, peer: &str, message: Message) {
        match dist::encode_frame(message) {
            Ok(frame) => self.send_frame(peer, frame),
            Err(error) => tracing::warn!(%peer, %error, "cannot encode an outbound message"),
        }
    }

    /// Sends an encoded frame to `peer`, dialing it if we are not connected.
    pub fn send_frame(&self, peer: &str, frame: Frame) {
        if let Some(dial) = self.0.manager.send(peer, frame) {
            let node = self.clone();
            let peer = peer.to_owned();
            // On a connection thread, like accepted connections: the dialed connection lives
            // there. Through a runtime handle, as this may run on a non-tokio thread (storage).
            let (runtime, placement) = self.0.threads.place();
            runtime.spawn(self.0.tracker.track_future(async move {
                let _placement = placement;
                dist::dial(node, peer, dial).await;
            }));
        }
    }

    /// Whether the connected peer negotiated `flag` (false when not connected).
    pub fn peer_has(&self, peer: &str, flag: erl_dist::DistributionFlags) -> bool {
        self.0
            .manager
            .peer_flags(peer)
            .is_some_and(|f| f.contains(flag))
    }

    /// Monitors a remote pid on behalf of `watcher`. The monitor fires as a
    /// [`Signal::Down`] when the peer reports the pid's exit or the connection goes down.
    pub fn monitor_remote(&self, watcher: &Pid, target: &Pid) -> Reference {
        let reference = self.new_ref();
        let peer = target.node.name.clone();
        {
            let mut mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
            mons.entry(peer.clone()).or_default().insert(
                reference.id.clone(),
                RemoteMonitor {
                    watcher: watcher.clone(),
                    target: target.clone(),
                    reference: reference.clone(),
                },
            );
        }
        self.send_to_node(
            &peer,
            Message::monitor_p(
                watcher.clone(),
                PidOrAtom::Pid(target.clone()),
                reference.clone(),
            ),
        );
        reference
    }

    /// Removes a monitor placed with [`Node::monitor_remote`] and tells the peer.
    pub fn demonitor_remote(&self, watcher: &Pid, target: &Pid, reference: &Reference) {
        let peer = target.node.name.clone();
        let removed = {
            let mut mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
            mons.get_mut(&peer)
                .and_then(|m| m.remove(&reference.id))
                .is_some()
        };
        if removed && self.0.manager.peer_flags(&peer).is_some() {
            self.send_to_node(
                &peer,
                Message::demonitor_p(
                    watcher.clone(),
                    PidOrAtom::Pid(target.clone()),
                    reference.clone(),
                ),
            );
        }
    }

    /// A peer reported that a pid we monitor exited.
    pub(crate) fn remote_monitor_fired(&self, peer: &str, reference: &Reference, reason: Term) {
        let mon = {
            let mut mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
            mons.get_mut(peer).and_then(|m| m.remove(&reference.id))
        };
        if let Some(mon) = mon
            && let Some(watcher) = self.lookup_pid(&mon.watcher)
        {
            watcher.deliver(
                self,
                Signal::Down {
                    reference: mon.reference,
                    pid: mon.target,
                    reason,
                },
            );
        }
    }

    /// The connection to `peer` went down (or could not be made): every monitor our processes
    /// hold on that node fires with `noconnection`.
    pub(crate) fn node_down(&self, peer: &str) {
        let fired: Vec<RemoteMonitor> = {
            let mut mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
            mons.remove(peer)
                .map(|m| m.into_values().collect())
                .unwrap_or_default()
        };
        if !fired.is_empty() {
            tracing::debug!(%peer, monitors = fired.len(), "node down: firing monitors");
        }
        for mon in fired {
            let Some(watcher) = self.lookup_pid(&mon.watcher) else {
                continue;
            };
            watcher.deliver(
                self,
                Signal::Down {
                    reference: mon.reference,
                    pid: mon.target,
                    reason: Atom::from("noconnection").into(),
                },
            );
        }
    }

    /// Number of monitors our processes hold on remote pids (for tests and diagnostics).
    pub fn remote_monitor_count(&self) -> usize {
        let mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
        mons.values().map(|m| m.len()).sum()
    }
}
