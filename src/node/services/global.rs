//! `global_name_server`: kvnode as a member of OTP's `global` (protocol 8, as OTP 25, 27 and 29
//! speak it), run only on a visible node (`--visible`). Without it, `:global.sync()` on a BEAM
//! node connected to a visible kvnode would block forever and `:global` registrations would
//! stall (every `global` lock and registration is taken on every known node).
//!
//! What kvnode does, as `global.erl` does it (see /work/shared/VISIBLE-NODE.md §2):
//! - **Connection handshake.** On nodeup of a visible peer not yet known, kvnode casts
//!   `{init_connect, {8, MyTag}, Me, {locker, no_longer_a_pid, #{}, MyPid}}`. Its locker is
//!   active, as OTP's (`ActiveLocker`: after 200 ms when kvnode knows no node, else OTP's
//!   longer wait, it locks both sides and sends `lock_set` itself); when the peer's locker is
//!   first, kvnode grants the peer's `set_lock`, answers its `lock_set` with its own
//!   `lock_set` and `exchange` (kvnode's names), answers the peer's `exchange` with `resolved`
//!   (name clashes resolved as `exchange_names/4` does), and once both sides' `resolved` are in,
//!   applies the name operations, tells its known nodes with `new_nodes` and adds the peer (and
//!   the nodes it knows) to its known set. A peer that already knows kvnode (it learned it from
//!   another node) gets `{in_sync, Me, true}` instead, as OTP's `sync_other/2` sends it.
//! - **Locks** (`{set_lock, {ResourceId, ReqId}}`, `{del_lock, ...}`): real mutual exclusion, a
//!   lock is held by pids of one requester id at a time; a holder that exits or whose node goes
//!   down releases it (monitors).
//! - **Names** (`{register, ...}`, `{register_ext, ...}`, `{unregister, ...}`, the ops of
//!   `resolved`/`new_nodes`): a table of every global name with its pid and resolve method (kept
//!   as the term that came, closures included, and sent back unchanged in `exchange`). A name
//!   goes when its pid exits or its node goes down (monitors).
//! - `cancel_connect` restarts the handshake; prevent_overlapping_partitions as OTP's `global`:
//!   `remove_connection` closes the link to its sender, and `lost_connection` (NodeA lost
//!   NodeB) makes kvnode ask the node now in another partition to disconnect.
//! - [`register`] (`--global-name`, `Node::global_keep_registered`): a name for a local
//!   process, registered as `global:register_name/2` does it: `set_lock {global, RegPid}` on
//!   every known node (the boss first), `register` on each, `del_lock`; retried with a random
//!   sleep when a lock is refused, and again whenever the name is free again.
//! - The Rust API (`Node::global_register`, `global_unregister`, `global_whereis`,
//!   `global_names`, `Dest::Global`): one locked attempt as above (`Trans`), retried at most
//!   [`REGISTER_ATTEMPTS`] times, with the result returned (`Taken`/`Duplicate` as `no` in
//!   Erlang); lookups read the table.
//! - Calls are answered as gen_server does: by the alias in the caller's tag (ALIAS_SEND), so
//!   a reply that comes after the caller gave up is dropped, not left in its mailbox.
//! - `register_ext` (`global:register_name_external/2,3`) names keep their registering node
//!   and are handed on in `resolved` and `new_nodes` as OTP's `global_names_ext`.
//!
//! Name clashes: where kvnode resolves (its node name is the smaller one) and the clashing name
//! is held by a kvnode process, it runs the entry's method as OTP's `resolve_it/4`: one of
//! `global`'s `random_exit_name/3` (the pid on the node with the smaller name keeps the name,
//! the other gets `exit(Pid, kill)`), `random_notify_name/3` or `notify_all_name/3`; a method
//! kvnode cannot run (a closure) counts as OTP's badrpc (the peer's entry is taken). A name
//! kvnode's process loses is dropped from the table and logged; kvnode's processes ignore the
//! kill (built-in processes trap exits), so the KV server keeps serving under its local name. Everything a peer can make kvnode hold is bounded:
//! `--max-global-names` ([`DEFAULT_MAX_GLOBAL_NAMES`]), [`MAX_GLOBAL_LOCK_HOLDERS`],
//! [`MAX_KNOWN_NODES`].

use crate::node::process::{Dest, Process, Received};
use crate::node::{Node, NodeEvent};
use erl_dist::message::Message;
use erl_dist::term::{Atom, ExternalFun, FixInteger, List, Map, Pid, Reference, Term, Tuple};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// The registered name of the `global` server on every node.
pub const NAME: &str = "global_name_server";

/// The `global` protocol version kvnode speaks (OTP 25, 27 and 29 all speak 8).
pub const PROTOCOL_VERSION: i32 = 8;

/// Default `--max-global-names`: most `global` names kvnode keeps (names registered anywhere
/// in the cluster, kvnode's included). A registration beyond it is answered (`yes`, so the
/// registering node does not stall) but not kept, with a warning: the name is then unknown to
/// kvnode only.
pub const DEFAULT_MAX_GLOBAL_NAMES: usize = 100_000;

/// Default `--max-global-name-bytes`: most bytes the names kvnode keeps may take, counted as
/// the external format of each name and its resolve method (both come from peers, a closure's
/// environment included; a BEAM registration costs ~100-300 bytes). A registration beyond it
/// is treated as one beyond `--max-global-names` (answered, not kept, a warning). Without it
/// `--max-global-names` names of up to a message's size each could take any memory.
pub const DEFAULT_MAX_GLOBAL_NAME_BYTES: usize = 64 * 1024 * 1024;

/// Most bytes the locks kvnode keeps may take (the external format of each lock's resource and
/// requester id, which peers choose). A `set_lock` of a new lock beyond it is refused
/// (`false`), as one beyond [`MAX_GLOBAL_LOCK_HOLDERS`]. OTP's own locks take a few dozen
/// bytes each, and a cluster holds few at a time.
pub const MAX_GLOBAL_LOCK_BYTES: usize = 64 * 1024 * 1024;

/// Most lock holders (a pid holding a resource; one lock may have several holders with the same
/// requester id) kvnode keeps. A `set_lock` beyond it is refused (`false`): the requester
/// retries, as it does for a lock held by another requester.
pub const MAX_GLOBAL_LOCK_HOLDERS: usize = 100_000;

/// Most nodes kvnode keeps in its known set (learned from `resolved`, `new_nodes`, `in_sync`
/// and its own handshakes). Nodes beyond it are not learned (logged).
pub const MAX_KNOWN_NODES: usize = 10_000;

/// How long one call of kvnode's registrar (`set_lock`, `register`, `del_lock` on a node) may
/// take before the attempt counts as failed and is retried. OTP waits forever; a node that
/// does not answer within this is treated as one that refused the lock.
pub const REGISTER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How often kvnode's registrar tries to register a name before it waits for the next change
/// (a node joining or leaving, a name going away); also how often `Node::global_register`
/// and `Node::global_unregister` try to take the global lock before they fail with
/// `GlobalError::Busy` (whose doc states this value).
pub const REGISTER_ATTEMPTS: u32 = 20;

/// How often the server forgets known nodes it cannot reach: a node learned from `new_nodes`
/// or `resolved` is dialed (kvnode's `in_sync` to it); when that dial fails (or `--max-dials`
/// refuses it) the node is dropped from the known set, as OTP's `sync_other/2` does
/// (`extra_nodedown`). A known node kvnode never reaches would otherwise stay for good: listed
/// to every joining node, sent `new_nodes` on every handshake, and filling [`MAX_KNOWN_NODES`].
pub const UNREACHABLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The most one retry of the registrar sleeps (a random time up to this, growing with the
/// attempts, as `global:random_sleep/1`).
pub const REGISTER_MAX_SLEEP: Duration = Duration::from_secs(4);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn list(elements: Vec<Term>) -> Term {
    List::from(elements).into()
}

fn elements(term: &Term) -> Option<&[Term]> {
    match term {
        Term::Tuple(t) => Some(t.elements.as_slice()),
        _ => None,
    }
}

fn atom_name(term: &Term) -> Option<&str> {
    match term {
        Term::Atom(a) => Some(a.name.as_str()),
        _ => None,
    }
}

fn is_atom(term: &Term, name: &str) -> bool {
    atom_name(term) == Some(name)
}

/// The elements of a proper list (`[]` included); None for anything else.
fn list_items(term: &Term) -> Option<&[Term]> {
    match term {
        Term::List(l) => Some(l.elements.as_slice()),
        _ => None,
    }
}

/// A term as a table key: its external format. Equal terms have equal keys (kvnode's encoder is
/// deterministic); a term it cannot encode has none.
fn key(term: &Term) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    crate::etf::encode::encode(term, &mut out).ok()?;
    Some(out)
}

/// How a name clash is resolved when two partitions that both hold a name meet (the
/// `Method` of Erlang's `global:register_name/3`). kvnode runs it as OTP does when its own
/// table holds the kvnode process's entry and kvnode is the node that resolves (the one with
/// the smaller node name); otherwise the other node runs it.
///
/// ```
/// use kvnode::GlobalResolve;
/// assert_eq!(GlobalResolve::default(), GlobalResolve::RandomExit);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Resolve {
    /// `global:random_exit_name/3` (Erlang's default): the pid on the node with the smaller
    /// name keeps the name, the other gets `exit(Pid, kill)` (a Rust process receives it as
    /// an exit signal).
    #[default]
    RandomExit,
    /// `global:random_notify_name/3`: the pid on the node with the smaller name keeps the
    /// name, the other is sent `{global_name_conflict, Name}`.
    RandomNotify,
    /// `global:notify_all_name/3`: the name is unregistered and both pids are sent
    /// `{global_name_conflict, Name, OtherPid}`.
    NotifyAll,
}

impl Resolve {
    fn function(self) -> &'static str {
        match self {
            Resolve::RandomExit => "random_exit_name",
            Resolve::RandomNotify => "random_notify_name",
            Resolve::NotifyAll => "notify_all_name",
        }
    }

    /// The method as `global` keeps it: `fun global:F/3`.
    fn method(self) -> Term {
        ExternalFun::from(("global", self.function(), 3)).into()
    }

    /// The method a table entry holds, when it is one of the three of `global`.
    fn of(method: &Term) -> Option<Resolve> {
        let Term::ExternalFun(f) = method else {
            return None;
        };
        if f.module.name != "global" || f.arity != 3 {
            return None;
        }
        [
            Resolve::RandomExit,
            Resolve::RandomNotify,
            Resolve::NotifyAll,
        ]
        .into_iter()
        .find(|r| r.function() == f.function.name)
    }
}

/// `fun global:random_exit_name/3`, the method of `--global-name`.
fn random_exit_name() -> Term {
    Resolve::RandomExit.method()
}

/// A pid for a log line: its node's name bounded and escaped (`crate::etf::text::name`).
fn pid_text(pid: &Pid) -> String {
    format!(
        "<{}.{}.{}>",
        crate::etf::text::name(&pid.node.name),
        pid.id,
        pid.serial
    )
}

/// A registered name.
struct NameEntry {
    name: Term,
    pid: Pid,
    method: Term,
    /// The node that registered it for a pid of another (non-BEAM) node
    /// (`global:register_name_external/3`, `{register_ext, ...}`): OTP keeps these in
    /// `global_names_ext` and hands them on in `resolved` and `new_nodes`.
    reg_node: Option<Term>,
    monitor: Option<Reference>,
    /// What it counts against `--max-global-name-bytes`.
    bytes: usize,
}

/// A lock: the requester id and its holders with their monitors.
struct Lock {
    resource: Term,
    req_id: Term,
    /// Keyed by pid: `set_lock`, `del_lock` and a DOWN are O(1) however many holders a peer
    /// piles on one lock.
    holders: HashMap<Pid, Reference>,
    /// What it counts against [`MAX_GLOBAL_LOCK_BYTES`].
    bytes: usize,
}

/// A handshake in progress with one peer.
#[derive(Default)]
struct Session {
    my_tag: i32,
    his_tag: Option<Term>,
    /// Our `lock_set` and `exchange` went (once per tag).
    exchanged: bool,
    /// Our ops from `exchange_names`, once we answered the peer's `exchange`.
    ops: Option<Vec<Term>>,
    /// The peer's `resolved`: its ops for us, the nodes it knows and its `global_names_ext`.
    his: Option<(Vec<Term>, Vec<Term>, Vec<Term>)>,
    /// The lock id the peer's locker took on us (`{global, [Lockers]}`), for `new_nodes`.
    lock_id: Option<Term>,
    /// The peer's locker (the last element of its `init_connect`), once its `init_connect` came.
    his_locker: Option<Pid>,
    /// kvnode's active locker took the lock for this session and sent its `lock_set`; the
    /// peer's `lock_set true` then only starts the exchange (no second `lock_set`).
    lock_sent: bool,
    /// Wakes this session's active locker (see [`ActiveLocker`]) on any change: the
    /// session's end (dropped), a refused `lock_set`, the peer locking first.
    locker: Option<Arc<Notify>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(n) = &self.locker {
            n.notify_one();
        }
    }
}

/// What the server and the registrar share.
#[derive(Default)]
struct State {
    known: BTreeSet<String>,
    synced: BTreeSet<String>,
    sessions: HashMap<String, Session>,
    names: HashMap<Vec<u8>, NameEntry>,
    locks: HashMap<Vec<u8>, Lock>,
    holders: usize,
    /// Bytes of `names` (their `bytes`).
    name_bytes: usize,
    /// Bytes of `locks` (their `bytes`).
    lock_bytes: usize,
    /// Our registrations: name key -> (name, pid).
    wanted: HashMap<Vec<u8>, (Term, Pid)>,
    /// What each of our monitors watches (a DOWN finds its lock or name at once).
    watched: HashMap<Reference, Watched>,
    /// A handshake just finished: the next active locker takes the lock at once (OTP's
    /// `just_synced`, "no reason to wait after success").
    just_synced: bool,
}

/// What a monitor of the server watches.
enum Watched {
    /// A holder (this pid) of the lock with this resource key.
    Lock(Vec<u8>, Pid),
    /// The owner of the name with this key.
    Name(Vec<u8>),
}

/// The running `global` server of a node (see [`start`]).
#[derive(Clone)]
pub struct Global {
    state: Arc<Mutex<State>>,
    /// Poked whenever the registrar may have work (a node synced, a name gone).
    changed: Arc<Notify>,
}

impl Global {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Starts `global_name_server` on `node` (a visible node). Returns None when the name is taken.
pub fn start(node: &Node) -> Option<Global> {
    let process = match node.process(Some(NAME)) {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(%error, "global: cannot start global_name_server");
            return None;
        }
    };
    let registrar = match node.process(None) {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(%error, "global: cannot start the registrar");
            return None;
        }
    };
    let global = Global {
        state: Arc::new(Mutex::new(State::default())),
        changed: Arc::new(Notify::new()),
    };
    node.set_global_server(global.clone());
    let events = node.monitor_nodes();
    let server = Server {
        node: node.clone(),
        me: node.name().name.clone(),
        process,
        global: global.clone(),
    };
    let shutdown = node.shutdown_token().clone();
    let tracker = node.tracker().clone();
    tracker.spawn({
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = server.run(events) => {}
            }
        }
    });
    let reg = Registrar {
        me: node.name().name.clone(),
        process: registrar,
        global: global.clone(),
    };
    tracker.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = reg.run() => {}
        }
    });
    Some(global)
}

/// Registers `pid` (a local process) under the global name `name` (an atom), now and whenever
/// the name is free again while kvnode runs (as `global:register_name/2`, over every node
/// kvnode knows).
pub fn register(global: &Global, name: &str, pid: Pid) {
    let name: Term = atom(name);
    let Some(k) = key(&name) else { return };
    global.lock().wanted.insert(k, (name, pid));
    global.changed.notify_one();
}

struct Server {
    node: Node,
    me: String,
    process: Process,
    global: Global,
}

impl Server {
    async fn run(self, mut events: crate::node::NodeEvents) {
        // Peers connected before the subscription (none on a fresh node; kept for safety).
        self.resync();
        let mut check = tokio::time::interval(UNREACHABLE_CHECK_INTERVAL);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = check.tick() => self.forget_unreachable(),
                event = events.recv() => match event {
                    Some(NodeEvent::Up(peer)) => self.node_up(&peer),
                    Some(NodeEvent::Down(peer)) => self.node_down(&peer),
                    Some(NodeEvent::Lagged(n)) => {
                        tracing::warn!(missed = n, "global: missed node events; resynchronising");
                        self.resync();
                    }
                    None => return,
                },
                item = self.process.recv() => self.handle(item),
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.global.lock()
    }

    fn me_term(&self) -> Term {
        atom(&self.me)
    }

    fn self_pid(&self) -> Term {
        self.process.pid().clone().into()
    }

    /// Whether `peer` is connected and visible (both sides PUBLISHED).
    fn visible(&self, peer: &str) -> bool {
        self.node
            .peer_flags(peer)
            .is_some_and(|f| f.bits() & crate::node::transport::handshake::FLAG_PUBLISHED != 0)
    }

    fn cast(&self, peer: &str, request: Term) {
        self.process.cast((NAME, peer), request);
    }

    /// Brings the sessions in line with the connections (after missed node events).
    fn resync(&self) {
        let connected: BTreeSet<String> = self.node.manager().connected().into_iter().collect();
        let stale: Vec<String> = {
            let st = self.lock();
            st.known
                .iter()
                .chain(st.sessions.keys())
                .filter(|n| !connected.contains(*n))
                .cloned()
                .collect()
        };
        for peer in stale {
            self.node_down(&peer);
        }
        for peer in connected {
            let tracked = {
                let st = self.lock();
                st.known.contains(&peer) || st.sessions.contains_key(&peer)
            };
            if !tracked {
                self.node_up(&peer);
            }
        }
    }

    /// Forgets the known nodes that are neither connected nor being dialed: their dial failed
    /// (see [`UNREACHABLE_CHECK_INTERVAL`]). A node that goes down after it was up is
    /// forgotten at its `Down` event.
    fn forget_unreachable(&self) {
        let manager = self.node.manager();
        let gone: Vec<String> = self
            .lock()
            .known
            .iter()
            .filter(|n| !manager.knows(n))
            .cloned()
            .collect();
        for peer in gone {
            tracing::info!(node = %crate::etf::text::name(&peer), "global: a known node cannot be reached; forgotten");
            self.node_down(&peer);
        }
    }

    fn node_up(&self, peer: &str) {
        if !self.visible(peer) {
            return;
        }
        let known = self.lock().known.contains(peer);
        if known {
            // It learned of us (or we of it) through another node: OTP's sync_other/2.
            self.cast(
                peer,
                tuple(vec![atom("in_sync"), self.me_term(), atom("true")]),
            );
            return;
        }
        if self.lock().sessions.contains_key(peer) {
            return; // its init_connect came first and started the session
        }
        self.start_session(peer);
    }

    fn start_session(&self, peer: &str) {
        let my_tag = rand::random_range(1..i32::MAX);
        let mut session = Session::default();
        session.my_tag = my_tag;
        self.lock().sessions.insert(peer.to_owned(), session);
        tracing::debug!(%peer, my_tag, "global: init_connect");
        let locker = tuple(vec![
            atom("locker"),
            atom("no_longer_a_pid"),
            Map::from(HashMap::<Term, Term>::new()).into(),
            self.self_pid(),
        ]);
        self.cast(
            peer,
            tuple(vec![
                atom("init_connect"),
                tuple(vec![
                    FixInteger::from(PROTOCOL_VERSION).into(),
                    FixInteger::from(my_tag).into(),
                ]),
                self.me_term(),
                locker,
            ]),
        );
    }

    fn node_down(&self, peer: &str) {
        let mut st = self.lock();
        st.sessions.remove(peer);
        let was_known = st.known.remove(peer);
        st.synced.remove(peer);
        drop(st);
        if was_known {
            tracing::debug!(%peer, "global: node down");
        }
        // Its names and locks go with the monitors' DOWN (noconnection).
        self.global.changed.notify_one();
    }

    fn handle(&self, item: Received) {
        match item {
            Received::Message(message) => self.message(message),
            Received::Down { reference, .. } => self.down(&reference),
            _ => {}
        }
    }

    fn message(&self, message: Term) {
        let Some(parts) = elements(&message) else {
            tracing::debug!(message = %crate::etf::summary(&message), "global: message ignored");
            return;
        };
        match parts {
            [t, request] if is_atom(t, "$gen_cast") => self.handle_cast(request),
            [t, from, request] if is_atom(t, "$gen_call") => {
                let Some([Term::Pid(pid), tag]) = elements(from) else {
                    tracing::debug!("global: call with a bad From ignored");
                    return;
                };
                if let Some(reply) = self.handle_call(pid, request) {
                    // As gen_server: by the alias in the tag when there is one (a reply
                    // that comes after the caller gave up is dropped by its runtime, not
                    // left in its mailbox), else to the pid.
                    let caller = crate::node::gen_server::Caller::new(pid.clone(), tag.clone());
                    crate::node::gen_server::Replier::new(&self.node, self.process.pid())
                        .reply(&caller, reply);
                }
            }
            [t, Term::Atom(node), tag] if is_atom(t, "cancel_connect") => {
                let restart = self
                    .lock()
                    .sessions
                    .get(&node.name)
                    .is_some_and(|s| Term::from(FixInteger::from(s.my_tag)) == *tag);
                if restart && self.node.manager().is_up(&node.name) {
                    tracing::debug!(peer = %crate::etf::text::name(&node.name), "global: cancel_connect: restarting the handshake");
                    self.start_session(&node.name);
                }
            }
            [t, Term::Atom(node_a), _xcre, _op_id, Term::Atom(node_b)]
                if is_atom(t, "lost_connection") =>
            {
                self.lost_connection(&node_a.name, &node_b.name)
            }
            [t, Term::Atom(node)] if is_atom(t, "remove_connection") => {
                // prevent_overlapping_partitions: the sender lost us from its partition and
                // wants the link gone; as OTP's global, disconnect.
                if self.node.manager().is_up(&node.name) {
                    tracing::warn!(peer = %crate::etf::text::name(&node.name), "global: disconnecting as the peer asked (remove_connection, to prevent overlapping partitions)");
                    self.node_down(&node.name);
                    self.node.manager().close_peer(&node.name);
                }
            }
            _ => {
                tracing::debug!(message = %crate::etf::summary(&message), "global: message ignored")
            }
        }
    }

    /// `{lost_connection, NodeA, _, _, NodeB}` (prevent_overlapping_partitions): NodeA lost
    /// its link to NodeB. As OTP's `global`, kvnode asks the node that is now in another
    /// partition (NodeB, or NodeA when kvnode is NodeB) to disconnect (`remove_connection`)
    /// and forgets it; the link goes when that node drops it. kvnode does not relay the
    /// message (the BEAM nodes that got it do, to each other).
    fn lost_connection(&self, node_a: &str, node_b: &str) {
        let rm = if node_b == self.me { node_a } else { node_b };
        let potentially_known = {
            let st = self.lock();
            st.known.contains(rm) || st.synced.contains(rm) || st.sessions.contains_key(rm)
        };
        if !potentially_known || !self.node.manager().is_up(rm) {
            return;
        }
        tracing::warn!(
            node = %crate::etf::text::name(rm),
            reported_by = %crate::etf::text::name(node_a),
            "global: requested disconnect from a node, to prevent overlapping partitions (lost_connection)"
        );
        self.process.send(
            (NAME, rm),
            tuple(vec![atom("remove_connection"), self.me_term()]),
        );
        self.node_down(rm);
    }

    fn handle_call(&self, from: &Pid, request: &Term) -> Option<Term> {
        if is_atom(request, "get_protocol_version") {
            return Some(FixInteger::from(PROTOCOL_VERSION).into());
        }
        if is_atom(request, "get_synced") {
            let synced = self.lock().synced.iter().map(|n| atom(n)).collect();
            return Some(list(synced));
        }
        if is_atom(request, "get_known") {
            let known = self.lock().known.iter().map(|n| atom(n)).collect();
            return Some(list(known));
        }
        let parts = elements(request)?;
        match parts {
            [t, id] if is_atom(t, "set_lock") => {
                let granted = self.set_lock(id, from);
                if let Some([resource, _]) = elements(id) {
                    tracing::debug!(resource = %crate::etf::summary(resource), from = %pid_text(from), granted, "global: set_lock");
                }
                Some(atom(granted))
            }
            [t, id] if is_atom(t, "del_lock") => {
                self.del_lock(id, from);
                Some(atom("true"))
            }
            [t, name, Term::Pid(pid), method] if is_atom(t, "register") => {
                self.register_call(name, pid, method, None, from);
                Some(atom("yes"))
            }
            [t, name, Term::Pid(pid), method, reg_node @ Term::Atom(_)]
                if is_atom(t, "register_ext") =>
            {
                // As `register`, and the name is one of `global_names_ext` (see NameEntry).
                self.register_call(name, pid, method, Some(reg_node), from);
                Some(atom("yes"))
            }
            [t, name] if is_atom(t, "unregister") => {
                self.delete_name(name);
                Some(atom("ok"))
            }
            _ => {
                // OTP's global logs and does not answer either.
                tracing::debug!(request = %crate::etf::summary(request), "global: unknown call ignored");
                None
            }
        }
    }

    /// `handle_set_lock/3`: "true" or "false".
    fn set_lock(&self, id: &Term, from: &Pid) -> &'static str {
        let Some([resource, req_id]) = elements(id) else {
            return "false";
        };
        let Some(k) = key(resource) else {
            return "false";
        };
        let mut st = self.lock();
        // The lock a peer's locker takes on us for a handshake: {global, [Lockers]} with our
        // pid among them; `new_nodes` carries it.
        if is_atom(resource, "global")
            && list_items(req_id).is_some_and(|l| l.iter().any(|p| *p == self.self_pid()))
            && let Some(s) = st.sessions.get_mut(&from.node.name)
        {
            s.lock_id = Some(id.clone());
        }
        match st.locks.get(&k) {
            Some(lock) if lock.req_id != *req_id => return "false",
            Some(lock) if lock.holders.contains_key(from) => return "true",
            _ => {}
        }
        if st.holders >= MAX_GLOBAL_LOCK_HOLDERS {
            tracing::warn!(
                limit = MAX_GLOBAL_LOCK_HOLDERS,
                "global: too many lock holders; set_lock refused"
            );
            return "false";
        }
        let lock_bytes = k.len() + key(req_id).map_or(0, |r| r.len());
        let new_lock = !st.locks.contains_key(&k);
        if new_lock && st.lock_bytes + lock_bytes > MAX_GLOBAL_LOCK_BYTES {
            tracing::warn!(
                limit = MAX_GLOBAL_LOCK_BYTES,
                bytes = lock_bytes,
                "global: locks are at their byte limit; set_lock refused"
            );
            return "false";
        }
        let mref = self.process.monitor(from.clone());
        st.holders += 1;
        st.watched
            .insert(mref.clone(), Watched::Lock(k.clone(), from.clone()));
        if new_lock {
            st.lock_bytes += lock_bytes;
        }
        st.locks
            .entry(k)
            .or_insert_with(|| Lock {
                resource: resource.clone(),
                req_id: req_id.clone(),
                holders: HashMap::new(),
                bytes: lock_bytes,
            })
            .holders
            .insert(from.clone(), mref);
        "true"
    }

    fn del_lock(&self, id: &Term, from: &Pid) {
        let Some([resource, req_id]) = elements(id) else {
            return;
        };
        let Some(k) = key(resource) else { return };
        let mut st = self.lock();
        let Some(lock) = st.locks.get_mut(&k) else {
            return;
        };
        if lock.req_id != *req_id {
            return;
        }
        let mut removed = None;
        if let Some(mref) = lock.holders.remove(from) {
            removed = Some(mref);
        }
        let empty = lock.holders.is_empty();
        if empty && let Some(lock) = st.locks.remove(&k) {
            st.lock_bytes -= lock.bytes;
        }
        if let Some(mref) = removed {
            st.holders -= 1;
            st.watched.remove(&mref);
            drop(st);
            self.process.demonitor(&mref);
        }
    }

    /// `lock_still_set/3` for a pid: a name registration is kept only when its registrar
    /// holds the global lock (or no global lock is set).
    fn lock_still_set(&self, st: &State, from: &Pid) -> bool {
        let Some(k) = key(&atom("global")) else {
            return true;
        };
        match st.locks.get(&k) {
            Some(lock) => lock.holders.contains_key(from),
            None => true,
        }
    }

    fn register_call(
        &self,
        name: &Term,
        pid: &Pid,
        method: &Term,
        reg_node: Option<&Term>,
        from: &Pid,
    ) {
        let still_set = {
            let st = self.lock();
            self.lock_still_set(&st, from)
        };
        if still_set {
            self.insert_name(name, pid, method, reg_node);
        } else {
            tracing::debug!(name = %crate::etf::summary(name), "global: register without the global lock ignored");
        }
    }

    fn insert_name(&self, name: &Term, pid: &Pid, method: &Term, reg_node: Option<&Term>) {
        let Some(k) = key(name) else { return };
        let mut st = self.lock();
        let limit = self.node.config().max_global_names;
        if !st.names.contains_key(&k) && st.names.len() >= limit {
            tracing::warn!(limit, name = %crate::etf::summary(name), "global: too many names; this one is not kept");
            return;
        }
        let bytes = k.len()
            + key(method).map_or(0, |m| m.len())
            + reg_node.and_then(key).map_or(0, |r| r.len());
        let byte_limit = self.node.config().max_global_name_bytes;
        let replaced = st.names.get(&k).map_or(0, |e| e.bytes);
        if st.name_bytes - replaced + bytes > byte_limit {
            tracing::warn!(limit = byte_limit, bytes, name = %crate::etf::summary(name), "global: names are at their byte limit (--max-global-name-bytes); this one is not kept");
            return;
        }
        let old = st.names.remove(&k);
        st.name_bytes = st.name_bytes - replaced + bytes;
        if let Some(m) = old.as_ref().and_then(|o| o.monitor.as_ref()) {
            st.watched.remove(m);
        }
        let lost = old.as_ref().and_then(|o| {
            (o.pid != *pid && st.wanted.get(&k).is_some_and(|(_, w)| *w == o.pid))
                .then(|| o.pid.clone())
        });
        st.names.insert(
            k,
            NameEntry {
                name: name.clone(),
                pid: pid.clone(),
                method: method.clone(),
                reg_node: reg_node.cloned(),
                monitor: None,
                bytes,
            },
        );
        drop(st);
        if let Some(old) = old
            && let Some(m) = &old.monitor
        {
            self.process.demonitor(m);
        }
        if let Some(lost) = lost {
            tracing::warn!(name = %crate::etf::summary(name), pid = %pid_text(&lost), winner = %pid_text(pid), "global: kvnode's process lost its global name (name clash resolved for the other pid)");
        }
        // Monitored outside the table lock; the entry may have changed meanwhile.
        let mref = self.process.monitor(pid.clone());
        let mut st = self.lock();
        let Some(k) = key(name) else { return };
        match st.names.get_mut(&k) {
            Some(e) if e.pid == *pid && e.monitor.is_none() => {
                e.monitor = Some(mref.clone());
                st.watched.insert(mref, Watched::Name(k));
            }
            _ => {
                drop(st);
                self.process.demonitor(&mref);
            }
        }
    }

    fn delete_name(&self, name: &Term) {
        let Some(k) = key(name) else { return };
        let removed = {
            let mut st = self.lock();
            let removed = st.names.remove(&k);
            st.name_bytes -= removed.as_ref().map_or(0, |e| e.bytes);
            if let Some(m) = removed.as_ref().and_then(|e| e.monitor.as_ref()) {
                st.watched.remove(m);
            }
            removed
        };
        if let Some(e) = removed {
            if let Some(m) = &e.monitor {
                self.process.demonitor(m);
            }
            self.global.changed.notify_one();
        }
    }

    /// A monitored lock holder or name owner is gone (or its node).
    fn down(&self, reference: &Reference) {
        let mut st = self.lock();
        match st.watched.remove(reference) {
            Some(Watched::Lock(k, pid)) => {
                let Some(lock) = st.locks.get_mut(&k) else {
                    return;
                };
                if lock.holders.get(&pid) != Some(reference) {
                    return;
                }
                lock.holders.remove(&pid);
                tracing::debug!(resource = %crate::etf::summary(&lock.resource), holder = %pid_text(&pid), "global: lock holder gone; released");
                if lock.holders.is_empty()
                    && let Some(lock) = st.locks.remove(&k)
                {
                    st.lock_bytes -= lock.bytes;
                }
                st.holders -= 1;
            }
            Some(Watched::Name(k))
                if st
                    .names
                    .get(&k)
                    .is_some_and(|e| e.monitor.as_ref() == Some(reference)) =>
            {
                if let Some(e) = st.names.remove(&k) {
                    st.name_bytes -= e.bytes;
                }
                drop(st);
                self.global.changed.notify_one();
            }
            Some(Watched::Name(_)) | None => {}
        }
    }

    fn session_tag_matches(&self, peer: &str, tag: &Term) -> bool {
        self.lock()
            .sessions
            .get(peer)
            .is_some_and(|s| Term::from(FixInteger::from(s.my_tag)) == *tag)
    }

    fn handle_cast(&self, request: &Term) {
        let Some(parts) = elements(request) else {
            tracing::debug!("global: cast ignored");
            return;
        };
        match parts {
            [t, vsn, Term::Atom(node), init] if is_atom(t, "init_connect") => {
                self.init_connect(&node.name, vsn, init)
            }
            [t, Term::Pid(locker), set, _his_known, tag] if is_atom(t, "lock_set") => {
                self.lock_set(&locker.node.name, set, tag)
            }
            [t, Term::Atom(node), names, _ext, tag] if is_atom(t, "exchange") => {
                self.exchange(&node.name, names, tag)
            }
            [t, Term::Atom(node), resolved, known, _unused, ext, tag] if is_atom(t, "resolved") => {
                self.resolved(&node.name, resolved, known, ext, tag)
            }
            [t, Term::Atom(node), ops, ext, nodes, _extra] if is_atom(t, "new_nodes") => {
                self.new_nodes(&node.name, ops, ext, nodes)
            }
            [t, Term::Atom(node), _is_known] if is_atom(t, "in_sync") => self.in_sync(&node.name),
            _ => tracing::debug!(request = %crate::etf::summary(request), "global: cast ignored"),
        }
    }

    fn init_connect(&self, peer: &str, vsn: &Term, init: &Term) {
        // {Vsn, Tag} (or a longer tuple from a future version).
        let Some([_his_vsn, his_tag, ..]) = elements(vsn) else {
            tracing::info!(
                peer = %crate::etf::text::name(peer),
                "global: init_connect with an illegal protocol version ignored"
            );
            return;
        };
        if self.lock().known.contains(peer) {
            // It does not know us yet, we know it: tell it we are in sync (erases its attempt).
            self.cast(
                peer,
                tuple(vec![atom("in_sync"), self.me_term(), atom("true")]),
            );
            self.lock().synced.insert(peer.to_owned());
            return;
        }
        if !self.lock().sessions.contains_key(peer) {
            if !self.visible(peer) {
                tracing::debug!(
                    peer = %crate::etf::text::name(peer),
                    "global: init_connect from a peer that is not visible ignored"
                );
                return;
            }
            // Its init_connect came before our nodeup event.
            self.start_session(peer);
        }
        // {locker, no_longer_a_pid, HisKnown, HisTheLocker}
        let his_locker = match elements(init) {
            Some([t, _, _, Term::Pid(pid)]) if is_atom(t, "locker") => Some(pid.clone()),
            _ => None,
        };
        let mut st = self.lock();
        let mut start_locker = None;
        if let Some(s) = st.sessions.get_mut(peer) {
            if s.his_tag.is_some() {
                // A new attempt from the peer: its old session is void. A `lock_set` our
                // locker sent carries its old tag (the peer drops it): release and retry.
                s.exchanged = false;
                s.ops = None;
                s.his = None;
                s.lock_sent = false;
                if let Some(w) = &s.locker {
                    w.notify_one();
                }
            }
            s.his_tag = Some(his_tag.clone());
            // OTP's `his_the_locker`: both init_connects are in; kvnode's locker may now
            // lock this pair (one active locker per session).
            if let Some(his_locker) = his_locker
                && s.locker.is_none()
                && his_locker.node.name == peer
            {
                let wake = Arc::new(Notify::new());
                s.locker = Some(wake.clone());
                s.his_locker = Some(his_locker.clone());
                start_locker = Some((s.my_tag, his_tag.clone(), his_locker, wake));
            }
        }
        drop(st);
        if let Some((my_tag, his_tag, his_locker, wake)) = start_locker {
            self.spawn_locker(peer, my_tag, his_tag, his_locker, wake);
        }
    }

    /// Starts the active locker of the session with `peer` (see [`ActiveLocker`]).
    fn spawn_locker(
        &self,
        peer: &str,
        my_tag: i32,
        his_tag: Term,
        his_locker: Pid,
        wake: Arc<Notify>,
    ) {
        let process = match self.node.process(None) {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "global: cannot start an active locker; the peer's locker will lock");
                return;
            }
        };
        let locker = ActiveLocker {
            me: self.me.clone(),
            peer: peer.to_owned(),
            my_tag,
            his_tag,
            his_locker,
            server: self.process.pid().clone(),
            process,
            global: self.global.clone(),
            wake,
        };
        let shutdown = self.node.shutdown_token().clone();
        self.node.tracker().spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = locker.run() => {}
            }
        });
    }

    fn lock_set(&self, peer: &str, set: &Term, tag: &Term) {
        if !is_atom(set, "true") {
            // The peer's locker could not lock its side for our `lock_set` (tag 0: it did not
            // know the session yet): our active locker releases and retries later.
            let zero = Term::from(FixInteger::from(0)) == *tag;
            if zero || self.session_tag_matches(peer, tag) {
                let mut st = self.lock();
                if let Some(s) = st.sessions.get_mut(peer)
                    && s.lock_sent
                    && !s.exchanged
                {
                    s.lock_sent = false;
                    if let Some(w) = &s.locker {
                        w.notify_one();
                    }
                    tracing::debug!(%peer, "global: the peer's locker refused our lock_set; retrying later");
                }
            }
            return;
        }
        if !self.session_tag_matches(peer, tag) {
            return;
        }
        let (his_tag, lock_sent) = {
            let mut st = self.lock();
            let Some(s) = st.sessions.get_mut(peer) else {
                return;
            };
            if s.exchanged {
                return;
            }
            let Some(his_tag) = s.his_tag.clone() else {
                return;
            };
            s.exchanged = true;
            if let Some(w) = &s.locker {
                w.notify_one();
            }
            (his_tag, s.lock_sent)
        };
        if lock_sent {
            // Our active locker locked first and sent its `lock_set`; this is the peer's
            // answer (OTP's `lock_is_set`): only our names go.
            tracing::info!(%peer, "global: the peer's locker answered our lock_set (both partitions locked)");
        } else {
            // We are a passive locker: our side is "locked" at once. Then our names.
            self.cast(
                peer,
                tuple(vec![
                    atom("lock_set"),
                    self.self_pid(),
                    atom("true"),
                    list(vec![]),
                    his_tag.clone(),
                ]),
            );
        }
        let names: Vec<Term> = self
            .lock()
            .names
            .values()
            .map(|e| tuple(vec![e.name.clone(), e.pid.clone().into(), e.method.clone()]))
            .collect();
        self.cast(
            peer,
            tuple(vec![
                atom("exchange"),
                self.me_term(),
                list(names),
                list(vec![]),
                his_tag,
            ]),
        );
    }

    /// `exchange_names/4`: our ops (applied once both `resolved` are in) and the ops for the
    /// peer (`Res`).
    fn exchange_names(&self, peer: &str, names: &[Term]) -> (Vec<Term>, Vec<Term>) {
        let (mut ops, mut res) = (Vec::new(), Vec::new());
        let insert = |item: &Term| tuple(vec![atom("insert"), item.clone()]);
        for item in names {
            let Some([name, Term::Pid(pid), _method]) = elements(item) else {
                continue;
            };
            let Some(k) = key(name) else { continue };
            let mine = self
                .lock()
                .names
                .get(&k)
                .map(|e| (e.pid.clone(), e.method.clone()));
            match mine {
                Some((pid2, _)) if pid2 == *pid => {}
                Some((pid2, method2)) if self.me.as_str() < peer => {
                    // A clash we resolve, on the node of our entry's pid.
                    if !self.node.is_local(&pid2) {
                        // OTP asks that node by rpc; kvnode cannot: as OTP on a badrpc,
                        // take the peer's entry.
                        tracing::info!(name = %crate::etf::summary(name), "global: name clash with a third node's pid: taking the peer's entry");
                        ops.push(insert(item));
                        continue;
                    }
                    // Our entry's method decides, as OTP's `resolve_it/4` run on our node.
                    let Some(resolve) = Resolve::of(&method2) else {
                        // A closure (or another function) kvnode cannot run: as OTP on a
                        // badrpc, take the peer's entry.
                        tracing::info!(name = %crate::etf::summary(name), method = %crate::etf::summary(&method2), "global: name clash with a resolve method kvnode cannot run: taking the peer's entry");
                        ops.push(insert(item));
                        continue;
                    };
                    // The pid on the node with the smaller name is `keep`, as OTP's
                    // `minmax(Pid, Pid2)` (Pid the peer's entry): a tie keeps ours.
                    let (keep, lose) = if pid.node.name < pid2.node.name {
                        (pid.clone(), pid2.clone())
                    } else {
                        (pid2.clone(), pid.clone())
                    };
                    match resolve {
                        Resolve::NotifyAll => {
                            // notify_all_name/3: both are told, the name goes everywhere.
                            tracing::warn!(name = %crate::etf::summary(name), "global: name clash resolved (notify_all_name): name removed, both pids notified");
                            let conflict = |other: &Pid| {
                                tuple(vec![
                                    atom("global_name_conflict"),
                                    name.clone(),
                                    other.clone().into(),
                                ])
                            };
                            self.process.send(pid.clone(), conflict(&pid2));
                            self.process.send(pid2.clone(), conflict(pid));
                            let delete = tuple(vec![atom("delete"), name.clone()]);
                            ops.push(delete.clone());
                            res.push(delete);
                            continue;
                        }
                        Resolve::RandomNotify => {
                            // random_notify_name/3: the loser is told.
                            tracing::warn!(name = %crate::etf::summary(name), kept = %pid_text(&keep), notified = %pid_text(&lose), "global: name clash resolved (random_notify_name)");
                            self.process.send(
                                lose.clone(),
                                tuple(vec![atom("global_name_conflict"), name.clone()]),
                            );
                        }
                        Resolve::RandomExit => {
                            // random_exit_name/3: the loser is killed.
                            tracing::warn!(name = %crate::etf::summary(name), kept = %pid_text(&keep), killed = %pid_text(&lose), "global: name clash resolved (random_exit_name)");
                            self.node.send_to_node(
                                &lose.node.name,
                                Message::exit2(
                                    self.process.pid().clone(),
                                    lose.clone(),
                                    atom("kill"),
                                ),
                            );
                        }
                    }
                    if keep == *pid {
                        ops.push(insert(item));
                    } else {
                        res.push(insert(&tuple(vec![
                            name.clone(),
                            pid2.clone().into(),
                            method2,
                        ])));
                    }
                }
                Some(_) => {} // the peer resolves this clash
                None => ops.push(insert(item)),
            }
        }
        (ops, res)
    }

    fn known_list(&self, except: &str) -> Term {
        let st = self.lock();
        list(
            st.known
                .iter()
                .filter(|n| n.as_str() != except)
                .map(|n| tuple(vec![atom(n), FixInteger::from(PROTOCOL_VERSION).into()]))
                .collect(),
        )
    }

    fn exchange(&self, peer: &str, names: &Term, tag: &Term) {
        if !self.session_tag_matches(peer, tag) {
            return;
        }
        let Some(items) = list_items(names) else {
            return;
        };
        let (ops, res) = self.exchange_names(peer, items);
        let Some(his_tag) = self
            .lock()
            .sessions
            .get(peer)
            .and_then(|s| s.his_tag.clone())
        else {
            return;
        };
        self.cast(
            peer,
            tuple(vec![
                atom("resolved"),
                self.me_term(),
                list(res),
                self.known_list(peer),
                atom("unused"),
                self.names_ext(),
                his_tag,
            ]),
        );
        let ready = {
            let mut st = self.lock();
            match st.sessions.get_mut(peer) {
                Some(s) => {
                    s.ops = Some(ops);
                    s.his.is_some()
                }
                None => false,
            }
        };
        if ready {
            self.finish(peer);
        }
    }

    fn resolved(&self, peer: &str, resolved: &Term, known: &Term, ext: &Term, tag: &Term) {
        if !self.session_tag_matches(peer, tag) {
            return;
        }
        let his_ops = list_items(resolved)
            .map(<[Term]>::to_vec)
            .unwrap_or_default();
        let his_known = list_items(known).map(<[Term]>::to_vec).unwrap_or_default();
        let his_ext = list_items(ext).map(<[Term]>::to_vec).unwrap_or_default();
        let ready = {
            let mut st = self.lock();
            match st.sessions.get_mut(peer) {
                Some(s) => {
                    s.his = Some((his_ops, his_known, his_ext));
                    s.ops.is_some()
                }
                None => false,
            }
        };
        if ready {
            self.finish(peer);
        }
    }

    /// `resolved/5`: both sides' ops are in; the peer is in sync.
    fn finish(&self, peer: &str) {
        let Some(session) = self.lock().sessions.remove(peer) else {
            return;
        };
        let mut session = session;
        let mut ops = session.ops.take().unwrap_or_default();
        let (his_ops, his_known, his_ext) = session.his.take().unwrap_or_default();
        ops.extend(his_ops);
        self.do_ops(&ops, &his_ext);
        let his_known_nodes: Vec<String> = his_known.iter().filter_map(node_of_vsn).collect();
        // Tell the nodes we knew before about the peer and the nodes it knows.
        let mut new_nodes = vec![tuple(vec![
            atom(peer),
            FixInteger::from(PROTOCOL_VERSION).into(),
        ])];
        new_nodes.extend(his_known.iter().cloned());
        let extra = list(vec![
            tuple(vec![atom("vsn"), FixInteger::from(PROTOCOL_VERSION).into()]),
            tuple(vec![
                atom("lock"),
                session
                    .lock_id
                    .take()
                    .unwrap_or_else(|| tuple(vec![atom("global"), list(vec![])])),
            ]),
        ]);
        let message = tuple(vec![
            atom("new_nodes"),
            self.me_term(),
            list(ops),
            list(his_ext),
            list(new_nodes),
            extra,
        ]);
        let old_known: Vec<String> = self.lock().known.iter().cloned().collect();
        for n in &old_known {
            self.cast(n, message.clone());
        }
        {
            let mut st = self.lock();
            learn(&mut st, peer);
            for n in &his_known_nodes {
                if *n != self.me {
                    learn(&mut st, n);
                }
            }
            st.synced.insert(peer.to_owned());
            st.just_synced = true;
        }
        tracing::info!(%peer, "global: in sync");
        self.sync_others(&his_known_nodes);
        self.global.changed.notify_one();
    }

    /// `sync_others/1`: `{in_sync, Me, true}` to each node (dialing it when needed).
    fn sync_others(&self, nodes: &[String]) {
        for n in nodes {
            if *n == self.me {
                continue;
            }
            self.cast(
                n,
                tuple(vec![atom("in_sync"), self.me_term(), atom("true")]),
            );
        }
    }

    /// Our `global_names_ext`: `[{Name, Pid, RegNode}]` (sent in `resolved`, as OTP).
    fn names_ext(&self) -> Term {
        let st = self.lock();
        list(
            st.names
                .values()
                .filter_map(|e| {
                    let reg_node = e.reg_node.clone()?;
                    Some(tuple(vec![e.name.clone(), e.pid.clone().into(), reg_node]))
                })
                .collect(),
        )
    }

    /// `do_ops/5`: inserts and deletes, in order. An insert whose name and pid are in `ext`
    /// (`[{Name, Pid, RegNode}]`, a peer's `global_names_ext`) is kept as an external name.
    fn do_ops(&self, ops: &[Term], ext: &[Term]) {
        // Keyed (not searched per op): a peer's lists may be long.
        let ext: HashMap<(Vec<u8>, &Pid), &Term> = ext
            .iter()
            .filter_map(|e| match elements(e) {
                Some([n, Term::Pid(p), r @ Term::Atom(_)]) => Some(((key(n)?, p), r)),
                _ => None,
            })
            .collect();
        let reg_node_of = |name: &Term, pid: &Pid| {
            let k = key(name)?;
            ext.get(&(k, pid)).copied()
        };
        for op in ops {
            match elements(op) {
                Some([t, item]) if is_atom(t, "insert") => {
                    if let Some([name, Term::Pid(pid), method]) = elements(item) {
                        self.insert_name(name, pid, method, reg_node_of(name, pid));
                    }
                }
                Some([t, name]) if is_atom(t, "delete") => self.delete_name(name),
                _ => {}
            }
        }
    }

    fn new_nodes(&self, _from: &str, ops: &Term, ext: &Term, nodes: &Term) {
        let nodes: Vec<String> = list_items(nodes)
            .unwrap_or_default()
            .iter()
            .filter_map(node_of_vsn)
            .collect();
        let added: Vec<String> = {
            let mut st = self.lock();
            nodes
                .into_iter()
                .filter(|n| *n != self.me && learn(&mut st, n))
                .collect()
        };
        // A handshake we started with them is void: they know us through the others.
        for n in &added {
            self.lock().sessions.remove(n);
        }
        self.sync_others(&added);
        if let Some(ops) = list_items(ops) {
            self.do_ops(ops, list_items(ext).unwrap_or_default());
        }
        self.global.changed.notify_one();
    }

    /// `{in_sync, Node, _}`: the peer learned of us through another node; our handshake with
    /// it is void. As OTP, the peer becomes synced but not known: it becomes known (and gets
    /// our own `in_sync`, which ends the handshake it started with us) when a `resolved` or
    /// `new_nodes` lists it.
    fn in_sync(&self, peer: &str) {
        // OTP's global gets `in_sync` from the node itself, so it is connected (or being
        // dialed, or one kvnode knows); a cast naming any other node (a peer may name any
        // atom) would grow `synced` without bound.
        let mut st = self.lock();
        let plausible = self.node.manager().knows(peer)
            || st.known.contains(peer)
            || st.sessions.contains_key(peer);
        if !plausible {
            drop(st);
            tracing::debug!(node = %crate::etf::text::name(peer), "global: in_sync for a node kvnode neither knows nor is connected to ignored");
            return;
        }
        st.sessions.remove(peer);
        if st.synced.len() >= MAX_KNOWN_NODES && !st.synced.contains(peer) {
            tracing::warn!(limit = MAX_KNOWN_NODES, node = %crate::etf::text::name(peer), "global: too many synced nodes; in_sync not recorded");
            return;
        }
        st.synced.insert(peer.to_owned());
        drop(st);
        tracing::debug!(%peer, "global: in_sync");
        self.global.changed.notify_one();
    }
}

/// Adds `node` to the known set; true when it was not known (and fits).
fn learn(st: &mut State, node: &str) -> bool {
    if st.known.contains(node) {
        return false;
    }
    if st.known.len() >= MAX_KNOWN_NODES {
        tracing::warn!(limit = MAX_KNOWN_NODES, node = %crate::etf::text::name(node), "global: too many known nodes; not learned");
        return false;
    }
    st.known.insert(node.to_owned())
}

/// A node of a known list: `{Node, Vsn}` or a bare `Node`.
fn node_of_vsn(term: &Term) -> Option<String> {
    match term {
        Term::Atom(a) => Some(a.name.clone()),
        Term::Tuple(t) => match t.elements.first() {
            Some(Term::Atom(a)) => Some(a.name.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// How long kvnode's active locker waits before locking when it knows no node (OTP's
/// `loop_the_locker/1`: "just to get started").
pub const LOCKER_NEWCOMER_WAIT: Duration = Duration::from_millis(200);

/// The active locker's wait when kvnode knows nodes: this plus [`LOCKER_WAIT_PER_KNOWN`] per
/// known node, at most [`LOCKER_MAX_WAIT`] (OTP's `min(1000 + 100 * length(Known), 3000)`).
/// The wait gives the peer's locker a chance to lock first; a refused lock waits it again.
pub const LOCKER_BASE_WAIT: Duration = Duration::from_millis(1000);

/// See [`LOCKER_BASE_WAIT`].
pub const LOCKER_WAIT_PER_KNOWN: Duration = Duration::from_millis(100);

/// See [`LOCKER_BASE_WAIT`].
pub const LOCKER_MAX_WAIT: Duration = Duration::from_millis(3000);

/// How long kvnode's locker holds the lock after its `lock_set` without the peer's answer
/// before it releases and retries (OTP waits for a `cancel` from its own server instead). A
/// peer drops a `lock_set` whose tag is no longer its session's; without this bound kvnode
/// would hold `global` on itself and the peer's nodes for good, and every `:global.sync()`
/// in the cluster would block.
pub const LOCKER_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Erlang's term order of two pids: serial, number, node name, creation.
fn pid_order(a: &Pid, b: &Pid) -> std::cmp::Ordering {
    (a.serial, a.id, a.node.name.as_str(), a.creation).cmp(&(
        b.serial,
        b.id,
        b.node.name.as_str(),
        b.creation,
    ))
}

/// Where a session stands for its active locker.
#[derive(PartialEq)]
enum Phase {
    /// Gone (finished, cancelled, the peer down) or replaced by a newer handshake.
    Gone,
    /// The lock is to be taken (nobody locked yet).
    Open,
    /// Our `lock_set` went; waiting for the peer's answer and the exchange.
    Sent,
    /// The exchange is under way (the peer's `lock_set true` came).
    Exchanging,
}

/// kvnode's locker for one handshake, as OTP's `loop_the_locker/1` and `select_node/1`: once
/// both `init_connect`s are in, it waits ([`LOCKER_NEWCOMER_WAIT`], or the known-nodes wait,
/// or nothing right after a handshake finished), then, when `global` is not locked on kvnode,
/// takes `{global, lists:sort([MyLocker, HisLocker])}` as `lock_nodes_safely/3` (the boss,
/// then kvnode and the peer, then kvnode's other known nodes) and sends `lock_set` to the
/// peer. The peer's locker locks its side and answers `lock_set true`, and the exchange runs
/// as when the peer locks first. A refused lock (here, or the peer's `lock_set false`) is
/// released and retried after the wait. Both lockers may lock at once: the lock id is the
/// same on both sides, so both succeed. kvnode's locker pid is its `global_name_server`'s (as
/// sent in `init_connect`); the locks are held by this task's process and released (the boss
/// last) when the session ends.
struct ActiveLocker {
    me: String,
    peer: String,
    my_tag: i32,
    his_tag: Term,
    his_locker: Pid,
    /// kvnode's `global_name_server`: its locker pid.
    server: Pid,
    process: Process,
    global: Global,
    wake: Arc<Notify>,
}

impl ActiveLocker {
    fn phase(&self) -> Phase {
        let st = self.global.lock();
        match st.sessions.get(&self.peer) {
            Some(s) if s.my_tag == self.my_tag => {
                if s.exchanged {
                    Phase::Exchanging
                } else if s.lock_sent {
                    Phase::Sent
                } else {
                    Phase::Open
                }
            }
            _ => Phase::Gone,
        }
    }

    fn lock_id(&self) -> Term {
        let mut lockers = [self.server.clone(), self.his_locker.clone()];
        lockers.sort_by(pid_order);
        tuple(vec![
            atom("global"),
            list(lockers.into_iter().map(Term::from).collect()),
        ])
    }

    async fn run(self) {
        let lock_id = self.lock_id();
        loop {
            let wait = {
                let mut st = self.global.lock();
                if std::mem::take(&mut st.just_synced) {
                    Duration::ZERO
                } else if st.known.is_empty() {
                    LOCKER_NEWCOMER_WAIT
                } else {
                    let n = u32::try_from(st.known.len()).unwrap_or(u32::MAX);
                    (LOCKER_BASE_WAIT + LOCKER_WAIT_PER_KNOWN.saturating_mul(n))
                        .min(LOCKER_MAX_WAIT)
                }
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if self.phase() != Phase::Open {
                    return; // gone, or the peer's locker locked first: the exchange runs
                }
                if tokio::time::timeout_at(deadline, self.wake.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            if self.phase() != Phase::Open {
                return;
            }
            let global_set =
                key(&atom("global")).is_some_and(|k| self.global.lock().locks.contains_key(&k));
            if global_set {
                continue; // someone is locking kvnode's partition: wait again
            }
            let Some(locked) = self.lock_nodes_safely(&lock_id).await else {
                tracing::debug!(peer = %self.peer, "global: locker: lock refused; retrying later");
                continue;
            };
            let sent = {
                let mut st = self.global.lock();
                let known: Vec<Term> = st.known.iter().map(|n| atom(n)).collect();
                match st.sessions.get_mut(&self.peer) {
                    Some(s) if s.my_tag == self.my_tag && !s.exchanged => {
                        // The peer's latest tag (a new init_connect of its replaces it).
                        let his_tag = s.his_tag.clone().unwrap_or_else(|| self.his_tag.clone());
                        s.lock_sent = true;
                        s.lock_id = Some(lock_id.clone());
                        // Cast while the table is held: the server's passive answer to a
                        // `lock_set` of the peer cannot slip in between.
                        self.process.cast(
                            (NAME, self.peer.as_str()),
                            tuple(vec![
                                atom("lock_set"),
                                self.server.clone().into(),
                                atom("true"),
                                list(known),
                                his_tag,
                            ]),
                        );
                        true
                    }
                    _ => false,
                }
            };
            if sent {
                tracing::info!(peer = %self.peer, "global: locker: lock set on both partitions' nodes; lock_set sent (kvnode's locker first)");
                // Hold the lock until the session ends, or the peer refuses. A peer that
                // does not answer (it dropped our `lock_set`: its session moved on) within
                // LOCKER_ANSWER_TIMEOUT counts as one that refused.
                let deadline = tokio::time::Instant::now() + LOCKER_ANSWER_TIMEOUT;
                loop {
                    match self.phase() {
                        Phase::Gone | Phase::Open => break,
                        Phase::Exchanging => self.wake.notified().await,
                        Phase::Sent => {
                            if tokio::time::timeout_at(deadline, self.wake.notified())
                                .await
                                .is_err()
                            {
                                let mut st = self.global.lock();
                                if let Some(s) = st.sessions.get_mut(&self.peer)
                                    && s.my_tag == self.my_tag
                                    && !s.exchanged
                                {
                                    s.lock_sent = false;
                                }
                                drop(st);
                                tracing::info!(peer = %self.peer, "global: locker: no answer to our lock_set; releasing and retrying");
                            }
                        }
                    }
                }
            }
            self.release(&lock_id, &locked).await;
            if self.phase() == Phase::Gone || !sent {
                return;
            }
        }
    }

    /// `lock_nodes_safely/3`: the boss first, then kvnode and the peer, then kvnode's other
    /// known nodes; all or nothing. Returns the nodes locked (the boss first).
    async fn lock_nodes_safely(&self, lock_id: &Term) -> Option<Vec<String>> {
        let (known, local_free) = {
            let st = self.global.lock();
            let manager = self.process.node().manager();
            let known: Vec<String> = st
                .known
                .iter()
                .filter(|n| **n != self.peer && **n != self.me && manager.is_up(n))
                .cloned()
                .collect();
            let req_id = elements(lock_id).and_then(|e| e.get(1));
            let local_free = key(&atom("global"))
                .and_then(|k| st.locks.get(&k))
                .is_none_or(|l| Some(&l.req_id) == req_id);
            (known, local_free)
        };
        let boss = known
            .iter()
            .chain([&self.me, &self.peer])
            .max()
            .cloned()
            .unwrap_or_else(|| self.me.clone());
        if boss != self.me && !local_free {
            return None;
        }
        let mut groups = vec![vec![boss.clone()]];
        groups.push(
            [self.me.clone(), self.peer.clone()]
                .into_iter()
                .filter(|n| *n != boss)
                .collect(),
        );
        groups.push(known.into_iter().filter(|n| *n != boss).collect());
        let mut locked: Vec<String> = Vec::new();
        for group in groups {
            let request = tuple(vec![atom("set_lock"), lock_id.clone()]);
            let replies =
                futures::future::join_all(group.iter().map(|n| self.call(n, request.clone())))
                    .await;
            let mut ok = true;
            for (n, reply) in group.iter().zip(replies) {
                if reply.as_ref().is_some_and(|r| is_atom(r, "true")) {
                    locked.push(n.clone());
                } else {
                    ok = false;
                }
            }
            if !ok {
                self.release(lock_id, &locked).await;
                return None;
            }
        }
        Some(locked)
    }

    /// `delete_global_lock/2`: the boss (the first locked) last.
    async fn release(&self, lock_id: &Term, locked: &[String]) {
        let request = tuple(vec![atom("del_lock"), lock_id.clone()]);
        // A node that went down released our lock with it; calling it would dial it again.
        let manager = self.process.node().manager();
        let locked: Vec<String> = locked
            .iter()
            .filter(|n| **n == self.me || manager.is_up(n))
            .cloned()
            .collect();
        if let Some((boss, rest)) = locked.split_first() {
            futures::future::join_all(rest.iter().map(|n| self.call(n, request.clone()))).await;
            let _ = self.call(boss, request).await;
        }
    }

    async fn call(&self, node: &str, request: Term) -> Option<Term> {
        call_server(&self.process, &self.me, node, request).await
    }
}

/// Calls `global_name_server` on `node` (this node's own when `node` is `me`) from `process`,
/// at most [`REGISTER_CALL_TIMEOUT`]; None on any failure (no answer, node down, refused).
async fn call_server(process: &Process, me: &str, node: &str, request: Term) -> Option<Term> {
    let dest: Dest = if node == me {
        Dest::Name(NAME.to_owned())
    } else {
        (NAME, node).into()
    };
    process
        .call(dest, request, REGISTER_CALL_TIMEOUT)
        .await
        .ok()
}

/// Registers kvnode's wanted names, as `global:register_name/2` and `trans_all_known/1` do.
struct Registrar {
    me: String,
    process: Process,
    global: Global,
}

impl Registrar {
    async fn run(self) {
        loop {
            let notified = self.global.changed.notified();
            self.register_wanted().await;
            notified.await;
        }
    }

    async fn register_wanted(&self) {
        let wanted: Vec<(Vec<u8>, Term, Pid)> = self
            .global
            .lock()
            .wanted
            .iter()
            .map(|(k, (n, p))| (k.clone(), n.clone(), p.clone()))
            .collect();
        for (k, name, pid) in wanted {
            if !self.process.node().is_local(&pid) || self.process.node().lookup_pid(&pid).is_none()
            {
                continue;
            }
            for attempt in 1..=REGISTER_ATTEMPTS {
                match self.global.lock().names.get(&k) {
                    Some(e) if e.pid == pid => break,
                    Some(e) => {
                        tracing::debug!(name = %crate::etf::summary(&name), holder = %pid_text(&e.pid), "global: name held by another pid; not registering");
                        break;
                    }
                    None => {}
                }
                let trans = Trans {
                    me: &self.me,
                    process: &self.process,
                    global: &self.global,
                };
                match trans.register(&name, &pid, random_exit_name(), false).await {
                    Attempt::Done => {
                        tracing::info!(name = %crate::etf::summary(&name), pid = %pid_text(&pid), "global: name registered");
                        break;
                    }
                    Attempt::Taken(_) | Attempt::Duplicate(_) => break,
                    Attempt::LockRefused => random_sleep(attempt).await,
                }
            }
        }
    }
}

/// `global:random_sleep/1`: a random time growing with the attempts, at most
/// [`REGISTER_MAX_SLEEP`].
async fn random_sleep(attempt: u32) {
    let cap = (REGISTER_MAX_SLEEP.as_millis() as u64).min(250 * u64::from(attempt));
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..=cap))).await;
}

/// What one locked attempt did.
enum Attempt {
    /// Registered (or unregistered) on every node.
    Done,
    /// The global lock was refused on some node: retry later.
    LockRefused,
    /// The name is held by this pid.
    Taken(Pid),
    /// The pid already holds this other name.
    Duplicate(Term),
}

/// `trans_all_known/1` for one process: it takes `{global, Pid}` on every known node (the
/// boss first), acts, and releases the lock. The same process is the lock requester and the
/// caller of `register` (a registration is kept only while its caller holds the lock).
struct Trans<'a> {
    me: &'a str,
    process: &'a Process,
    global: &'a Global,
}

impl Trans<'_> {
    fn lock_id(&self) -> Term {
        tuple(vec![atom("global"), self.process.pid().clone().into()])
    }

    /// Locks every known node that is up, the boss (the greatest name) first. Returns the
    /// nodes and the ones locked; all were locked when both are the same length.
    async fn lock_all(&self) -> (Vec<String>, Vec<String>) {
        let mut nodes: Vec<String> = {
            let st = self.global.lock();
            st.known
                .iter()
                .filter(|n| self.process.node().manager().is_up(n))
                .cloned()
                .collect()
        };
        nodes.push(self.me.to_owned());
        nodes.sort();
        nodes.dedup();
        nodes.reverse();
        let lock_id = self.lock_id();
        let mut locked = Vec::new();
        for n in &nodes {
            let reply = self
                .call(n, tuple(vec![atom("set_lock"), lock_id.clone()]))
                .await;
            if reply.as_ref().is_some_and(|r| is_atom(r, "true")) {
                locked.push(n.clone());
            } else {
                break;
            }
        }
        (nodes, locked)
    }

    async fn unlock(&self, locked: &[String]) {
        let request = tuple(vec![atom("del_lock"), self.lock_id()]);
        for n in locked {
            let _ = self.call(n, request.clone()).await;
        }
    }

    /// One attempt of `register_name/3`: under the lock, when the name is free (and, with
    /// `dupname`, the pid has no other name: OTP's `check_dupname/2`), `register` on every
    /// node.
    async fn register(&self, name: &Term, pid: &Pid, method: Term, dupname: bool) -> Attempt {
        let (nodes, locked) = self.lock_all().await;
        let outcome = if locked.len() < nodes.len() {
            Attempt::LockRefused
        } else {
            let (holder, other) = {
                let st = self.global.lock();
                let holder = key(name)
                    .and_then(|k| st.names.get(&k))
                    .map(|e| e.pid.clone())
                    .filter(|p| self.alive(p));
                let other = dupname
                    .then(|| {
                        st.names
                            .values()
                            .find(|e| e.pid == *pid && e.name != *name)
                            .map(|e| e.name.clone())
                    })
                    .flatten();
                (holder, other)
            };
            match (holder, other) {
                (Some(holder), _) => Attempt::Taken(holder),
                (None, Some(other)) => Attempt::Duplicate(other),
                (None, None) => {
                    let request = tuple(vec![
                        atom("register"),
                        name.clone(),
                        pid.clone().into(),
                        method,
                    ]);
                    self.multi_call(&nodes, request).await;
                    Attempt::Done
                }
            }
        };
        self.unlock(&locked).await;
        outcome
    }

    /// One attempt of `unregister_name/1`: under the lock, `unregister` on every node.
    async fn unregister(&self, name: &Term) -> Attempt {
        let (nodes, locked) = self.lock_all().await;
        let outcome = if locked.len() < nodes.len() {
            Attempt::LockRefused
        } else {
            self.multi_call(&nodes, tuple(vec![atom("unregister"), name.clone()]))
                .await;
            Attempt::Done
        };
        self.unlock(&locked).await;
        outcome
    }

    /// OTP's `where/1`: a local pid counts only while it is alive.
    fn alive(&self, pid: &Pid) -> bool {
        let node = self.process.node();
        !node.is_local(pid) || node.lookup_pid(pid).is_some()
    }

    async fn multi_call(&self, nodes: &[String], request: Term) {
        futures::future::join_all(nodes.iter().map(|n| self.call(n, request.clone()))).await;
    }

    async fn call(&self, node: &str, request: Term) -> Option<Term> {
        call_server(self.process, self.me, node, request).await
    }
}

/// Why a `global` operation of the Rust API failed ([`crate::Node::global_register`] and
/// the other `global_*` methods).
///
/// ```no_run
/// # async fn f(node: kvnode::Node, pid: kvnode::term::Pid) {
/// use kvnode::GlobalError;
/// match node.global_register("my_service", &pid).await {
///     Ok(()) => println!("registered"),
///     Err(GlobalError::Taken { pid: holder, .. }) => println!("held by {holder:?}"),
///     Err(other) => println!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GlobalError {
    /// The node is hidden (the default): `global` runs on visible nodes only
    /// ([`crate::NodeBuilder::visible`], `--visible`).
    #[error("global names need a visible node (NodeBuilder::visible(true), --visible)")]
    NotVisible,
    /// The name is not an atom (more than 255 characters).
    #[error("a global name is an atom: at most 255 characters ({chars} given)")]
    BadName {
        /// How many characters the name has.
        chars: usize,
    },
    /// The name is registered already (`no` from `:global.register_name/2`).
    #[error(
        "the global name {} is taken by {}",
        crate::etf::text::name(name),
        pid_text(pid)
    )]
    Taken {
        /// The name.
        name: String,
        /// Its holder.
        pid: Pid,
    },
    /// The pid holds another global name already (`no` from `:global.register_name/2`,
    /// OTP's `check_dupname`).
    #[error(
        "{} already holds the global name {}",
        pid_text(pid),
        crate::etf::summary(other)
    )]
    Duplicate {
        /// The pid.
        pid: Pid,
        /// The name it holds.
        other: Term,
    },
    /// The pid is not a process of this node (kvnode registers its own processes).
    #[error("{} is not a process of this node", pid_text(pid))]
    NotLocal {
        /// The pid.
        pid: Pid,
    },
    /// The pid is a process of this node that is not alive.
    #[error("{} is not alive", pid_text(pid))]
    NoProc {
        /// The pid.
        pid: Pid,
    },
    /// The cluster's global lock could not be taken in 20 attempts with random sleeps
    /// between them (other registrations hold it, or a node does not answer within 10 s).
    /// Nothing was registered; try again.
    #[error("the global lock was busy; {attempts} attempts failed")]
    Busy {
        /// The attempts made.
        attempts: u32,
    },
    /// The node is stopping (no process could be started for the operation).
    #[error("the node cannot start the registrar process: {0}")]
    Spawn(#[from] crate::node::SpawnError),
}

/// The global name as an atom, or [`GlobalError::BadName`].
fn name_term(name: &str) -> Result<Term, GlobalError> {
    let chars = name.chars().count();
    if chars > 255 {
        return Err(GlobalError::BadName { chars });
    }
    Ok(atom(name))
}

fn server(node: &Node) -> Result<&Global, GlobalError> {
    node.global_server().ok_or(GlobalError::NotVisible)
}

/// [`crate::Node::global_register_with`].
pub(crate) async fn register_name(
    node: &Node,
    name: &str,
    pid: &Pid,
    resolve: Resolve,
) -> Result<(), GlobalError> {
    let name_t = name_term(name)?;
    let global = server(node)?;
    if !node.is_local(pid) {
        return Err(GlobalError::NotLocal { pid: pid.clone() });
    }
    if node.lookup_pid(pid).is_none() {
        return Err(GlobalError::NoProc { pid: pid.clone() });
    }
    let process = node.process(None)?;
    let me = node.name().name.clone();
    let trans = Trans {
        me: &me,
        process: &process,
        global,
    };
    for attempt in 1..=REGISTER_ATTEMPTS {
        match trans.register(&name_t, pid, resolve.method(), true).await {
            Attempt::Done => {
                tracing::info!(name = %crate::etf::text::name(name), pid = %pid_text(pid), "global: name registered");
                return Ok(());
            }
            Attempt::Taken(holder) => {
                return Err(GlobalError::Taken {
                    name: name.to_owned(),
                    pid: holder,
                });
            }
            Attempt::Duplicate(other) => {
                return Err(GlobalError::Duplicate {
                    pid: pid.clone(),
                    other,
                });
            }
            Attempt::LockRefused => random_sleep(attempt).await,
        }
    }
    Err(GlobalError::Busy {
        attempts: REGISTER_ATTEMPTS,
    })
}

/// [`crate::Node::global_keep_registered`].
pub(crate) fn keep_registered(node: &Node, name: &str, pid: &Pid) -> Result<(), GlobalError> {
    name_term(name)?;
    let global = server(node)?;
    if !node.is_local(pid) {
        return Err(GlobalError::NotLocal { pid: pid.clone() });
    }
    register(global, name, pid.clone());
    Ok(())
}

/// [`crate::Node::global_unregister`].
pub(crate) async fn unregister_name(node: &Node, name: &str) -> Result<(), GlobalError> {
    let name_t = name_term(name)?;
    let global = server(node)?;
    if let Some(k) = key(&name_t) {
        global.lock().wanted.remove(&k);
    }
    if whereis_name(node, name).is_none() {
        return Ok(());
    }
    let process = node.process(None)?;
    let me = node.name().name.clone();
    let trans = Trans {
        me: &me,
        process: &process,
        global,
    };
    for attempt in 1..=REGISTER_ATTEMPTS {
        match trans.unregister(&name_t).await {
            Attempt::LockRefused => random_sleep(attempt).await,
            _ => {
                tracing::info!(name = %crate::etf::text::name(name), "global: name unregistered");
                return Ok(());
            }
        }
    }
    Err(GlobalError::Busy {
        attempts: REGISTER_ATTEMPTS,
    })
}

/// [`crate::Node::global_whereis`]: OTP's `where/1` on kvnode's table.
pub(crate) fn whereis_name(node: &Node, name: &str) -> Option<Pid> {
    let name_t = name_term(name).ok()?;
    let global = node.global_server()?;
    let k = key(&name_t)?;
    let pid = global.lock().names.get(&k)?.pid.clone();
    (!node.is_local(&pid) || node.lookup_pid(&pid).is_some()).then_some(pid)
}

/// [`crate::Node::global_names`].
pub(crate) fn registered_names(node: &Node) -> Vec<String> {
    let Some(global) = node.global_server() else {
        return Vec::new();
    };
    let mut names: Vec<String> = global
        .lock()
        .names
        .values()
        .filter_map(|e| atom_name(&e.name).map(str::to_owned))
        .collect();
    names.sort();
    names
}
