//! The local node: its identity (name, creation), the pids, references and registered names it
//! hands out, the mailboxes of its processes, the monitors its processes hold on remote pids,
//! and the routing of inbound control messages ([`router`]) to them.
//!
//! kvnode's processes are tokio tasks with a bounded mailbox ([`Mailbox`]). The built-in ones
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
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Capacity of a process mailbox. A full mailbox makes the sending connection's reader wait,
/// which pushes back on that peer only.
pub const MAILBOX_CAPACITY: usize = 4096;

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

/// A process's address: its pid and the sending side of its mailbox.
#[derive(Debug, Clone)]
pub struct Mailbox {
    /// The process's pid.
    pub pid: Pid,
    tx: mpsc::Sender<Signal>,
}

impl Mailbox {
    /// Delivers a signal, waiting while the mailbox is full. Returns false if the process is gone.
    pub async fn deliver(&self, signal: Signal) -> bool {
        self.tx.send(signal).await.is_ok()
    }

    /// Delivers a signal if there is room now; false if the mailbox is full or gone.
    pub fn try_deliver(&self, signal: Signal) -> bool {
        self.tx.try_send(signal).is_ok()
    }
}

#[derive(Default)]
struct Registry {
    names: HashMap<String, Mailbox>,
    pids: HashMap<u32, Mailbox>,
}

/// A monitor held by a local process on a remote pid.
struct RemoteMonitor {
    watcher: Mailbox,
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
    runtime: tokio::runtime::Handle,
}

impl Node {
    /// Creates the node state. `creation` is the value EPMD handed out. Must be called inside
    /// a tokio runtime: the node spawns its tasks there, also when asked from other threads.
    pub fn new(
        config: Config,
        creation: u32,
        shutdown: CancellationToken,
        tracker: TaskTracker,
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
            runtime: tokio::runtime::Handle::current(),
        }))
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

    /// Creates a process: a fresh pid and a mailbox, optionally registered under `name`.
    /// Returns the mailbox (to address it) and the receiving end (for the process's loop).
    pub fn spawn_process(&self, name: Option<&str>) -> (Mailbox, mpsc::Receiver<Signal>) {
        let (tx, rx) = mpsc::channel(MAILBOX_CAPACITY);
        let mailbox = Mailbox {
            pid: self.new_pid(),
            tx,
        };
        let mut reg = self.0.registry.write().unwrap_or_else(|e| e.into_inner());
        reg.pids
            .insert(mailbox.pid.id | (mailbox.pid.serial << 15), mailbox.clone());
        if let Some(name) = name {
            reg.names.insert(name.to_owned(), mailbox.clone());
        }
        (mailbox, rx)
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

    /// The mailbox of a local pid (None for other nodes, other incarnations, dead pids).
    pub fn lookup_pid(&self, pid: &Pid) -> Option<Mailbox> {
        if !self.is_local(pid) || pid.creation != self.0.creation {
            return None;
        }
        let reg = self.0.registry.read().unwrap_or_else(|e| e.into_inner());
        reg.pids.get(&(pid.id | (pid.serial << 15))).cloned()
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
            // Through the runtime handle: this may run on a non-tokio thread (storage commits).
            self.0
                .runtime
                .spawn(self.0.tracker.track_future(dist::dial(node, peer, dial)));
        }
    }

    /// Sends `message` to `to`: delivered locally or sent to the pid's node.
    pub async fn send(&self, from: &Pid, to: &Pid, message: Term) {
        if self.is_local(to) {
            if let Some(mb) = self.lookup_pid(to) {
                mb.deliver(Signal::Message(message)).await;
            }
            return;
        }
        let peer = to.node.name.clone();
        let msg = if self.peer_has(&peer, erl_dist::DistributionFlags::SEND_SENDER) {
            Message::send_sender(from.clone(), to.clone(), message)
        } else {
            Message::send(to.clone(), message)
        };
        self.send_to_node(&peer, msg);
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
    pub fn monitor_remote(&self, watcher: &Mailbox, target: &Pid) -> Reference {
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
                watcher.pid.clone(),
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
    pub(crate) async fn remote_monitor_fired(
        &self,
        peer: &str,
        reference: &Reference,
        reason: Term,
    ) {
        let mon = {
            let mut mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
            mons.get_mut(peer).and_then(|m| m.remove(&reference.id))
        };
        if let Some(mon) = mon {
            mon.watcher
                .deliver(Signal::Down {
                    reference: mon.reference,
                    pid: mon.target,
                    reason,
                })
                .await;
        }
    }

    /// The connection to `peer` went down (or could not be made): every monitor our processes
    /// hold on that node fires with `noconnection`.
    pub(crate) async fn node_down(&self, peer: &str) {
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
            mon.watcher
                .deliver(Signal::Down {
                    reference: mon.reference,
                    pid: mon.target,
                    reason: Atom::from("noconnection").into(),
                })
                .await;
        }
    }

    /// Number of monitors our processes hold on remote pids (for tests and diagnostics).
    pub fn remote_monitor_count(&self) -> usize {
        let mons = self.0.monitors.lock().unwrap_or_else(|e| e.into_inner());
        mons.values().map(|m| m.len()).sum()
    }
}
