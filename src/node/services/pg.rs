//! `pg` process groups on a visible node: [`PgScope`] (from [`Node::pg_start_scope`]) is a
//! member of a `pg` scope as Erlang's `pg` is. Local pids join and leave groups; the members
//! every peer running the scope announces are tracked, so `get_members` lists the whole
//! cluster's, as `:pg.get_members/2` does on a BEAM node. `--pg SCOPE:GROUP` is built on it.
//!
//! Wire shapes (OTP 25's pg.erl, OTP 29's pg.erl + data_publisher.erl;
//! /work/shared/VISIBLE-NODE.md §3). kvnode speaks protocol v0 only, which OTP 23-27 speak and
//! OTP 29 (v1) still speaks to a peer that announced itself as v0:
//! - a peer scope finds us with `{discover, PeerScope}` (OTP 29: `{discover, PeerScope, 1}`),
//!   on its start and on each nodeup; we answer `PeerScope ! {'$gen_cast', {sync, Me,
//!   [{Group, [Pid]}]}}` and, the first time, monitor it and send `{discover, Me}` back (a v0
//!   discover: OTP 29 then casts its own `sync` in v0 form and sends `join`/`leave` in v0);
//! - on each nodeup of a visible peer we send `{discover, Me}` to `{Scope, Peer}`;
//! - the peer's `{'$gen_cast', {sync, Peer, Groups}}` replaces all we know of its members;
//!   `{join, Peer, Group, PidOrPids}` and `{leave, Peer, PidOrPids, [Group]}` change them
//!   (accepted only from a peer scope we know, as pg does); its `DOWN` (which a lost
//!   connection gives, as `noconnection`) drops them all;
//! - our own joins and leaves go to every known peer as `join`/`leave`.
//!
//! v1 shapes are also understood, should an OTP 29 peer ever use them towards us:
//! `{'$gen_cast', {local_data, Peer, 1, #{Group => [Pid]}}}` (as `sync`) and
//! `{update, Peer, [{Group, Add, Remove}]}` (as `join` + `leave`).
//!
//! Only the exact v0 shapes above are ever sent, and a `leave` names only a group the pid was
//! announced in: OTP 25/27's `pg` crashes (`badarg`, `badkey`) otherwise.
//!
//! Bounds: [`MAX_PG_PEERS`] peer scopes, and per scope [`DEFAULT_PG_MAX_MEMBERS`] remote
//! memberships and [`DEFAULT_PG_MAX_GROUP_BYTES`] bytes of remote group names (tunable with
//! [`PgOptions`], `--pg-max-members`, `--pg-max-group-bytes`). A peer's join beyond them is
//! dropped with a (rate-limited) warning; the connection stays.

use crate::node::Node;
use crate::node::process::{Process, Received, SpawnError};
use erl_dist::term::{Atom, Binary, List, Map, Pid, Reference, Term, Tuple};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Most peer scope processes one kvnode scope keeps (one per node running the scope). A
/// `discover` beyond it is answered with our `sync` but the peer is not remembered (no
/// `join`/`leave` reaches it later, and its members are not tracked).
pub const MAX_PG_PEERS: usize = 10_000;

/// Default most memberships of peers' pids (a pid in a group, counted once per join) one
/// scope remembers, over all peers (`--pg-max-members`). A join beyond it is dropped with a
/// warning: that member is then missing from [`PgScope::get_members`] on kvnode only. About
/// 100 bytes each, so the default bounds a scope's view to ~100 MB.
pub const DEFAULT_PG_MAX_MEMBERS: usize = 1_000_000;

/// Default most bytes the peers' group names one scope remembers may take, counted as each
/// group's external format once per peer announcing it (`--pg-max-group-bytes`). Groups are
/// any term a peer chooses; a join to a new group beyond it is dropped with a warning.
pub const DEFAULT_PG_MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// Events a [`PgEvents`] subscriber may fall behind by before it loses some (it then gets
/// [`PgEvent::Lagged`]).
pub const PG_EVENTS_CAPACITY: usize = 4096;

/// Least time between two "limit reached" warnings of one scope (the drops in between are
/// counted in the next one).
const WARN_EVERY: Duration = Duration::from_secs(10);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn pid_list(pids: &[Pid]) -> Term {
    List::from(pids.iter().cloned().map(Term::from).collect::<Vec<_>>()).into()
}

/// A `pg` group: any Erlang term (Elixir code mostly uses atoms, binaries and tuples of
/// them). Two groups are the same when their terms are exactly equal (`=:=`), as in `pg`.
///
/// ```
/// use kvnode::PgGroup;
/// use kvnode::term::{Atom, Term, Tuple};
/// let chat = PgGroup::atom("chat");                   // :chat
/// let topic = PgGroup::binary("rooms:lobby");        // "rooms:lobby" in Elixir
/// let room = PgGroup::from_term(Tuple::from(vec![Atom::from("room").into(), Atom::from("a").into()]).into())
///     .expect("encodable");                          // {:room, :a}
/// assert_eq!(chat, PgGroup::atom("chat"));
/// assert_ne!(topic, PgGroup::atom("rooms:lobby"));
/// assert_eq!(chat.to_string(), "'chat'");
/// # let _ = room;
/// ```
#[derive(Clone)]
pub struct PgGroup {
    term: Term,
    /// The term's external format: the identity (terms are not `Eq`/`Hash`, floats).
    key: Arc<[u8]>,
    /// False for a term that cannot be encoded (an over-long atom from [`PgGroup::atom`]):
    /// such a group cannot be joined (no peer could be told of it).
    encodable: bool,
}

impl PgGroup {
    /// An atom group (`:name` in Elixir, `name` in Erlang). A name over 255 characters is
    /// not an atom: [`PgScope::join`] then fails with [`PgError::BadGroup`].
    pub fn atom(name: &str) -> PgGroup {
        Self::make(atom(name))
    }

    /// A binary group (an Elixir string).
    pub fn binary(bytes: impl AsRef<[u8]>) -> PgGroup {
        Self::make(Binary::from(bytes.as_ref()).into())
    }

    /// A group that is any term. Fails only on a term that cannot be encoded or that no
    /// BEAM node can decode (an atom over 255 characters: a peer's runtime would drop the
    /// connection on it).
    pub fn from_term(term: Term) -> Result<PgGroup, PgError> {
        if !atoms_fit(&term) {
            return Err(PgError::BadGroup);
        }
        let mut key = Vec::new();
        crate::etf::encode::encode(&term, &mut key).map_err(|_| PgError::BadGroup)?;
        Ok(PgGroup {
            term,
            key: key.into(),
            encodable: true,
        })
    }

    fn make(term: Term) -> PgGroup {
        Self::from_term(term.clone()).unwrap_or_else(|_| PgGroup {
            // Unencodable (an over-long atom): a group no peer can name, kept local.
            key: format!("{term}").into_bytes().into(),
            term,
            encodable: false,
        })
    }

    /// The group's term.
    pub fn term(&self) -> &Term {
        &self.term
    }

    /// The group's size in external format (what [`DEFAULT_PG_MAX_GROUP_BYTES`] counts).
    fn bytes(&self) -> usize {
        self.key.len()
    }
}

impl PartialEq for PgGroup {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for PgGroup {}

impl std::hash::Hash for PgGroup {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

/// Whether every atom in `term` is one a BEAM node can decode (at most 255 characters;
/// eetf writes longer ones, which a peer's runtime refuses by closing the connection).
/// Walks the term without recursion.
fn atoms_fit(term: &Term) -> bool {
    let fits = |a: &Atom| a.name.len() <= 255 || a.name.chars().count() <= 255;
    let mut stack = vec![term];
    while let Some(t) = stack.pop() {
        let ok = match t {
            Term::Atom(a) => fits(a),
            Term::Pid(p) => fits(&p.node),
            Term::Port(p) => fits(&p.node),
            Term::Reference(r) => fits(&r.node),
            Term::ExternalFun(f) => fits(&f.module) && fits(&f.function),
            Term::InternalFun(f) => {
                let (eetf::InternalFun::Old {
                    module,
                    pid,
                    free_vars,
                    ..
                }
                | eetf::InternalFun::New {
                    module,
                    pid,
                    free_vars,
                    ..
                }) = f.as_ref();
                stack.extend(free_vars.iter());
                fits(module) && fits(&pid.node)
            }
            Term::List(l) => {
                stack.extend(l.elements.iter());
                true
            }
            Term::ImproperList(l) => {
                stack.extend(l.elements.iter());
                stack.push(&l.last);
                true
            }
            Term::Tuple(x) => {
                stack.extend(x.elements.iter());
                true
            }
            Term::Map(m) => {
                for (k, v) in &m.map {
                    stack.push(k);
                    stack.push(v);
                }
                true
            }
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Groups up to this size (external format) are displayed whole, bigger ones as a bounded
/// summary (groups come from peers and end up in log lines).
const DISPLAY_WHOLE_BYTES: usize = 64;

impl std::fmt::Display for PgGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.len() <= DISPLAY_WHOLE_BYTES {
            write!(f, "{}", self.term)
        } else {
            write!(f, "{}", crate::etf::summary(&self.term))
        }
    }
}

impl std::fmt::Debug for PgGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgGroup({self})")
    }
}

/// Why a `pg` operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    /// The node is hidden: BEAM nodes do not tell their `pg` scopes about hidden nodes, so a
    /// scope would never meet its peers. Start the node with `NodeBuilder::visible(true)`.
    #[error("pg needs a visible node (NodeBuilder::visible / --visible)")]
    NotVisible,
    /// The scope's name could not be registered (taken, or not a valid atom).
    #[error("cannot start the pg scope: {0}")]
    Spawn(#[from] SpawnError),
    /// Only pids of this node may join or leave (as in `pg`, `{nolocal, Pid}`).
    #[error("{0} is not a pid of this node")]
    NotLocal(Pid),
    /// The pid is not a member of the group (`not_joined` in `pg`).
    #[error("{pid} is not a member of {group}")]
    NotJoined {
        /// The group.
        group: PgGroup,
        /// The pid.
        pid: Pid,
    },
    /// The group term cannot be encoded.
    #[error("the group term cannot be encoded")]
    BadGroup,
}

/// Settings of a scope ([`Node::pg_start_scope_with`]); the default is the node's
/// (`--pg-max-members`, `--pg-max-group-bytes`, else [`DEFAULT_PG_MAX_MEMBERS`] and
/// [`DEFAULT_PG_MAX_GROUP_BYTES`]).
///
/// ```
/// let mut options = kvnode::PgOptions::default();
/// options.max_members = 10_000;
/// # let _ = options;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PgOptions {
    /// Most peers' memberships remembered (see [`DEFAULT_PG_MAX_MEMBERS`]).
    pub max_members: usize,
    /// Most bytes of peers' group names remembered (see [`DEFAULT_PG_MAX_GROUP_BYTES`]).
    pub max_group_bytes: usize,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_members: DEFAULT_PG_MAX_MEMBERS,
            max_group_bytes: DEFAULT_PG_MAX_GROUP_BYTES,
        }
    }
}

/// A change of a group's members, as `pg:monitor/2` reports it (`{Ref, join | leave, Group,
/// Pids}`), from [`PgScope::monitor_scope`] or [`PgScope::monitor`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PgEvent {
    /// `pids` joined `group` (on this node or a peer).
    Join {
        /// The group.
        group: PgGroup,
        /// Who joined.
        pids: Vec<Pid>,
    },
    /// `pids` left `group` (left, exited, or their node went away).
    Leave {
        /// The group.
        group: PgGroup,
        /// Who left.
        pids: Vec<Pid>,
    },
    /// The subscriber fell behind by this many events, which are lost to it (re-read the
    /// members with [`PgScope::get_members`]).
    Lagged(u64),
}

/// Membership changes of a scope (or of one group), from [`PgScope::monitor_scope`] or
/// [`PgScope::monitor`].
pub struct PgEvents {
    rx: broadcast::Receiver<PgEvent>,
    group: Option<PgGroup>,
}

impl std::fmt::Debug for PgEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgEvents")
            .field("group", &self.group)
            .finish()
    }
}

impl PgEvents {
    /// The next event; `None` once the scope stopped (the node stopped).
    pub async fn recv(&mut self) -> Option<PgEvent> {
        loop {
            match self.rx.recv().await {
                Ok(event) => {
                    let keep = match (&self.group, &event) {
                        (None, _) | (_, PgEvent::Lagged(_)) => true,
                        (Some(g), PgEvent::Join { group, .. } | PgEvent::Leave { group, .. }) => {
                            g == group
                        }
                    };
                    if keep {
                        return Some(event);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(PgEvent::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// A `pg` scope this node is a member of, from [`Node::pg_start_scope`]: as Erlang's `pg`
/// scope process (registered under the scope's name), it announces its local members to the
/// scope on every visible peer and tracks theirs. Cheap to clone; the scope runs until the
/// node stops.
///
/// ```no_run
/// # async fn f(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
/// use kvnode::PgGroup;
/// let scope = node.pg_start_scope("my_scope")?; // :pg.start(:my_scope)
/// let worker = node.process(None)?;
/// scope.join(PgGroup::atom("workers"), worker.pid())?;
/// // Every member, on every node running :my_scope (as :pg.get_members(:my_scope, :workers)).
/// for pid in scope.get_members(&PgGroup::atom("workers")) {
///     worker.send(pid, kvnode::term::Atom::from("hello").into());
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgScope(Arc<Inner>);

impl std::fmt::Debug for PgScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgScope")
            .field("name", &self.0.name)
            .field("pid", self.0.process.pid())
            .finish()
    }
}

struct Inner {
    node: Node,
    name: String,
    process: Process,
    options: PgOptions,
    state: Mutex<State>,
    events: broadcast::Sender<PgEvent>,
}

#[derive(Default)]
struct State {
    /// Local pids -> (our monitor, the groups they joined, once per join).
    local: HashMap<Pid, (Reference, Vec<PgGroup>)>,
    /// Local members per group, newest first (what `sync` announces).
    local_groups: HashMap<PgGroup, Vec<Pid>>,
    /// Peer scope processes -> our monitor on each and their members.
    peers: HashMap<Pid, Peer>,
    /// Remote memberships held, over all peers.
    members: usize,
    /// Bytes of remote group names held, over all peers.
    group_bytes: usize,
    /// Joins dropped at a limit since the last warning, and when that was.
    dropped: u64,
    warned: Option<Instant>,
}

struct Peer {
    monitor: Reference,
    groups: HashMap<PgGroup, Vec<Pid>>,
}

impl Node {
    pub(crate) fn pg_start(&self, scope: &str, options: PgOptions) -> Result<PgScope, PgError> {
        if !self.config().visible {
            return Err(PgError::NotVisible);
        }
        let process = self.process(Some(scope))?;
        let (events, _) = broadcast::channel(PG_EVENTS_CAPACITY);
        let inner = Arc::new(Inner {
            node: self.clone(),
            name: scope.to_owned(),
            process,
            options,
            state: Mutex::new(State::default()),
            events,
        });
        let node_events = self.monitor_nodes();
        let shutdown = self.shutdown_token().clone();
        let task = inner.clone();
        self.tracker().spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = task.run(node_events) => {}
            }
        });
        Ok(PgScope(inner))
    }
}

impl PgScope {
    /// The scope's name (its registered name, an atom).
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The scope process's pid.
    pub fn pid(&self) -> &Pid {
        self.0.process.pid()
    }

    /// `pid` (a process of this node) joins `group` (`pg:join/3`). A pid may join a group
    /// more than once, and is then listed once per join. It is monitored: when it exits it
    /// leaves all its groups.
    pub fn join(&self, group: PgGroup, pid: &Pid) -> Result<(), PgError> {
        self.join_many(group, std::slice::from_ref(pid))
    }

    /// Several local pids join `group` at once (`pg:join/3` with a list): one message to
    /// each peer. [`PgError::BadGroup`] for a group that cannot be encoded (an atom over 255
    /// characters): no peer could be told of it.
    pub fn join_many(&self, group: PgGroup, pids: &[Pid]) -> Result<(), PgError> {
        let inner = &self.0;
        if !group.encodable {
            // Kept, it would also break every `sync` of this scope (one message for all
            // groups): no peer would learn any member.
            return Err(PgError::BadGroup);
        }
        if let Some(bad) = pids.iter().find(|p| !inner.node.is_local(p)) {
            return Err(PgError::NotLocal(bad.clone()));
        }
        if pids.is_empty() {
            return Ok(());
        }
        let mut st = inner.lock();
        for pid in pids {
            match st.local.get_mut(pid) {
                Some((_, groups)) => groups.push(group.clone()),
                None => {
                    let mref = inner.process.monitor(pid.clone());
                    st.local.insert(pid.clone(), (mref, vec![group.clone()]));
                }
            }
        }
        let members = st.local_groups.entry(group.clone()).or_default();
        for pid in pids {
            members.insert(0, pid.clone());
        }
        let what = if pids.len() == 1 {
            Term::from(pids[0].clone())
        } else {
            pid_list(pids)
        };
        let join = tuple(vec![atom("join"), inner.me(), group.term.clone(), what]);
        for peer in st.peers.keys() {
            inner.process.send(peer.clone(), join.clone());
        }
        inner.notify(PgEvent::Join {
            group,
            pids: pids.to_vec(),
        });
        Ok(())
    }

    /// `pid` leaves `group` once (`pg:leave/3`); [`PgError::NotJoined`] when it is not a
    /// member.
    pub fn leave(&self, group: &PgGroup, pid: &Pid) -> Result<(), PgError> {
        let inner = &self.0;
        if !inner.node.is_local(pid) {
            return Err(PgError::NotLocal(pid.clone()));
        }
        let mut st = inner.lock();
        let st = &mut *st;
        let not_joined = || PgError::NotJoined {
            group: group.clone(),
            pid: pid.clone(),
        };
        let Some((mref, groups)) = st.local.get_mut(pid) else {
            return Err(not_joined());
        };
        let Some(at) = groups.iter().position(|g| g == group) else {
            return Err(not_joined());
        };
        groups.remove(at);
        if groups.is_empty() {
            inner.process.demonitor(mref);
            st.local.remove(pid);
        }
        remove_once(&mut st.local_groups, group, pid);
        let leave = tuple(vec![
            atom("leave"),
            inner.me(),
            pid.clone().into(),
            List::from(vec![group.term.clone()]).into(),
        ]);
        for peer in st.peers.keys() {
            inner.process.send(peer.clone(), leave.clone());
        }
        inner.notify(PgEvent::Leave {
            group: group.clone(),
            pids: vec![pid.clone()],
        });
        Ok(())
    }

    /// Every member of `group`, on this node and on every peer running the scope
    /// (`pg:get_members/2`): local ones first, newest first, a pid once per join.
    pub fn get_members(&self, group: &PgGroup) -> Vec<Pid> {
        let st = self.0.lock();
        let mut all: Vec<Pid> = st.local_groups.get(group).cloned().unwrap_or_default();
        for peer in st.peers.values() {
            if let Some(pids) = peer.groups.get(group) {
                all.extend(pids.iter().cloned());
            }
        }
        all
    }

    /// The members of `group` on this node (`pg:get_local_members/2`).
    pub fn get_local_members(&self, group: &PgGroup) -> Vec<Pid> {
        self.0
            .lock()
            .local_groups
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    /// Every group with a member anywhere (`pg:which_groups/1`), in no particular order.
    pub fn which_groups(&self) -> Vec<PgGroup> {
        let st = self.0.lock();
        let mut seen: std::collections::HashSet<&PgGroup> = st.local_groups.keys().collect();
        for peer in st.peers.values() {
            seen.extend(peer.groups.keys());
        }
        seen.into_iter().cloned().collect()
    }

    /// The groups with a member on this node (`pg:which_local_groups/1`).
    pub fn which_local_groups(&self) -> Vec<PgGroup> {
        self.0.lock().local_groups.keys().cloned().collect()
    }

    /// Subscribes to every membership change of the scope (`pg:monitor_scope/1`): the
    /// events, and the groups with their members at the moment of subscribing (no change is
    /// lost or counted twice between the two).
    pub fn monitor_scope(&self) -> (PgEvents, HashMap<PgGroup, Vec<Pid>>) {
        let st = self.0.lock();
        let rx = self.0.events.subscribe();
        let mut all: HashMap<PgGroup, Vec<Pid>> = st.local_groups.clone();
        for peer in st.peers.values() {
            for (g, pids) in &peer.groups {
                all.entry(g.clone())
                    .or_default()
                    .extend(pids.iter().cloned());
            }
        }
        (PgEvents { rx, group: None }, all)
    }

    /// Subscribes to the membership changes of `group` (`pg:monitor/2`): the events, and its
    /// members at the moment of subscribing.
    pub fn monitor(&self, group: &PgGroup) -> (PgEvents, Vec<Pid>) {
        let st = self.0.lock();
        let rx = self.0.events.subscribe();
        let mut all: Vec<Pid> = st.local_groups.get(group).cloned().unwrap_or_default();
        for peer in st.peers.values() {
            if let Some(pids) = peer.groups.get(group) {
                all.extend(pids.iter().cloned());
            }
        }
        let events = PgEvents {
            rx,
            group: Some(group.clone()),
        };
        (events, all)
    }
}

/// Removes one occurrence of `pid` from `map[group]`, dropping the group when empty. True
/// when there was one.
fn remove_once(map: &mut HashMap<PgGroup, Vec<Pid>>, group: &PgGroup, pid: &Pid) -> bool {
    let Some(pids) = map.get_mut(group) else {
        return false;
    };
    let Some(at) = pids.iter().position(|p| p == pid) else {
        return false;
    };
    pids.remove(at);
    if pids.is_empty() {
        map.remove(group);
    }
    true
}

/// The pids in a peer's `PidOrPids` (a pid or a list of pids); `None` on anything else.
fn pids_of(term: &Term) -> Option<Vec<Pid>> {
    match term {
        Term::Pid(p) => Some(vec![p.clone()]),
        Term::List(l) => l
            .elements
            .iter()
            .map(|t| match t {
                Term::Pid(p) => Some(p.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A peer's group term as a [`PgGroup`] (any decoded term encodes).
fn group_of(term: &Term) -> Option<PgGroup> {
    PgGroup::from_term(term.clone()).ok()
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough data (each step is whole).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn me(&self) -> Term {
        self.process.pid().clone().into()
    }

    fn notify(&self, event: PgEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    async fn run(self: Arc<Self>, mut events: crate::node::NodeEvents) {
        // Scopes on peers already connected.
        for peer in self.node.manager().connected() {
            self.discover_on(&peer);
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(crate::node::NodeEvent::Up(peer)) => self.discover_on(&peer),
                    // A peer's members go with our monitor on its scope (DOWN noconnection).
                    Some(_) => {}
                    None => return,
                },
                item = self.process.recv() => self.handle(item),
            }
        }
    }

    fn discover_on(&self, peer: &str) {
        let visible = self
            .node
            .peer_flags(peer)
            .is_some_and(|f| f.bits() & crate::node::transport::handshake::FLAG_PUBLISHED != 0);
        if visible {
            self.process.send(
                (self.name.as_str(), peer),
                tuple(vec![atom("discover"), self.me()]),
            );
        }
    }

    fn handle(&self, item: Received) {
        match item {
            Received::Message(message) => self.message(message),
            Received::Down {
                reference,
                object: crate::node::Dest::Pid(pid),
                ..
            } => self.down(&reference, &pid),
            _ => {}
        }
    }

    fn down(&self, reference: &Reference, pid: &Pid) {
        let mut st = self.lock();
        let st = &mut *st;
        if st.local.get(pid).is_some_and(|(r, _)| r == reference) {
            let Some((_, groups)) = st.local.remove(pid) else {
                return;
            };
            for g in &groups {
                remove_once(&mut st.local_groups, g, pid);
            }
            let leave = tuple(vec![
                atom("leave"),
                self.me(),
                pid.clone().into(),
                List::from(groups.iter().map(|g| g.term.clone()).collect::<Vec<_>>()).into(),
            ]);
            for peer in st.peers.keys() {
                self.process.send(peer.clone(), leave.clone());
            }
            let mut seen: Vec<&PgGroup> = Vec::new();
            for g in &groups {
                if !seen.contains(&g) {
                    seen.push(g);
                    self.notify(PgEvent::Leave {
                        group: g.clone(),
                        pids: vec![pid.clone()],
                    });
                }
            }
        } else if st.peers.get(pid).is_some_and(|p| p.monitor == *reference)
            && let Some(peer) = st.peers.remove(pid)
        {
            self.forget(st, peer.groups);
        }
    }

    /// Drops a peer's members (all of `groups`) from the counts, with leave events.
    fn forget(&self, st: &mut State, groups: HashMap<PgGroup, Vec<Pid>>) {
        for (g, pids) in groups {
            st.members -= pids.len();
            st.group_bytes -= g.bytes();
            self.notify(PgEvent::Leave { group: g, pids });
        }
    }

    fn message(&self, message: Term) {
        let Term::Tuple(Tuple { elements }) = &message else {
            return self.unknown(&message);
        };
        match elements.as_slice() {
            // {discover, Peer} (v0) or {discover, Peer, Vsn} (OTP 29): answered in v0.
            [Term::Atom(t), Term::Pid(peer)] | [Term::Atom(t), Term::Pid(peer), _]
                if t.name == "discover" =>
            {
                self.discover(peer)
            }
            [Term::Atom(t), Term::Pid(peer), group, who] if t.name == "join" => {
                match (group_of(group), pids_of(who)) {
                    (Some(g), Some(pids)) => self.update(peer, vec![(g, pids, Vec::new())]),
                    _ => self.unknown(&message),
                }
            }
            [Term::Atom(t), Term::Pid(peer), who, Term::List(groups)] if t.name == "leave" => {
                match (pids_of(who), groups.elements.iter().map(group_of).collect()) {
                    (Some(pids), Some(groups)) => {
                        let groups: Vec<PgGroup> = groups;
                        let update = groups
                            .into_iter()
                            .map(|g| (g, Vec::new(), pids.clone()))
                            .collect();
                        self.update(peer, update)
                    }
                    _ => self.unknown(&message),
                }
            }
            // v1: {update, Peer, [{Group, Add, Remove}]}.
            [Term::Atom(t), Term::Pid(peer), Term::List(ops)] if t.name == "update" => {
                let update: Option<Vec<_>> = ops
                    .elements
                    .iter()
                    .map(|op| match op {
                        Term::Tuple(Tuple { elements }) if elements.len() == 3 => Some((
                            group_of(&elements[0])?,
                            pids_of(&elements[1])?,
                            pids_of(&elements[2])?,
                        )),
                        _ => None,
                    })
                    .collect();
                match update {
                    Some(update) => self.update(peer, update),
                    None => self.unknown(&message),
                }
            }
            [Term::Atom(t), Term::Tuple(Tuple { elements: cast })] if t.name == "$gen_cast" => {
                match cast.as_slice() {
                    [Term::Atom(s), Term::Pid(peer), Term::List(groups)] if s.name == "sync" => {
                        let parsed: Option<Vec<(PgGroup, Vec<Pid>)>> = groups
                            .elements
                            .iter()
                            .map(|e| match e {
                                Term::Tuple(Tuple { elements }) if elements.len() == 2 => {
                                    Some((group_of(&elements[0])?, pids_of(&elements[1])?))
                                }
                                _ => None,
                            })
                            .collect();
                        match parsed {
                            Some(groups) => self.sync(peer, groups),
                            None => self.unknown(&message),
                        }
                    }
                    // v1: {local_data, Peer, Vsn, #{Group => [Pid]}}.
                    [Term::Atom(s), Term::Pid(peer), _, Term::Map(Map { map })]
                        if s.name == "local_data" =>
                    {
                        let parsed: Option<Vec<(PgGroup, Vec<Pid>)>> = map
                            .iter()
                            .map(|(k, v)| Some((group_of(k)?, pids_of(v)?)))
                            .collect();
                        match parsed {
                            Some(groups) => self.sync(peer, groups),
                            None => self.unknown(&message),
                        }
                    }
                    _ => self.unknown(&message),
                }
            }
            _ => self.unknown(&message),
        }
    }

    fn unknown(&self, message: &Term) {
        tracing::debug!(scope = %crate::etf::text::name(&self.name), message = %crate::etf::summary(message), "pg: unexpected message dropped");
    }

    /// `[{Group, [Pid]}]`: what `sync` carries.
    fn local_sync(&self, st: &State) -> Term {
        let groups: Vec<Term> = st
            .local_groups
            .iter()
            .map(|(g, pids)| tuple(vec![g.term.clone(), pid_list(pids)]))
            .collect();
        List::from(groups).into()
    }

    /// Remembers a new peer scope (monitored); false at [`MAX_PG_PEERS`].
    fn add_peer(&self, st: &mut State, peer: &Pid) -> bool {
        if st.peers.contains_key(peer) {
            return true;
        }
        if st.peers.len() >= MAX_PG_PEERS {
            tracing::warn!(limit = MAX_PG_PEERS, scope = %crate::etf::text::name(&self.name), peer = %crate::etf::text::name(&peer.node.name), "pg: too many peer scopes; this one is not remembered");
            return false;
        }
        let monitor = self.process.monitor(peer.clone());
        st.peers.insert(
            peer.clone(),
            Peer {
                monitor,
                groups: HashMap::new(),
            },
        );
        true
    }

    fn discover(&self, peer: &Pid) {
        if self.node.is_local(peer) {
            return;
        }
        let mut st = self.lock();
        let sync = tuple(vec![
            atom("$gen_cast"),
            tuple(vec![atom("sync"), self.me(), self.local_sync(&st)]),
        ]);
        self.process.send(peer.clone(), sync);
        if !st.peers.contains_key(peer) && self.add_peer(&mut st, peer) {
            self.process
                .send(peer.clone(), tuple(vec![atom("discover"), self.me()]));
        }
    }

    /// A peer's whole membership (`sync`, v1 `local_data`): replaces what we knew of it.
    fn sync(&self, peer: &Pid, groups: Vec<(PgGroup, Vec<Pid>)>) {
        if self.node.is_local(peer) {
            return;
        }
        let mut st = self.lock();
        let st = &mut *st;
        if !self.add_peer(st, peer) {
            return;
        }
        let old = match st.peers.get_mut(peer) {
            Some(p) => std::mem::take(&mut p.groups),
            None => return,
        };
        for (g, pids) in &old {
            st.members -= pids.len();
            st.group_bytes -= g.bytes();
        }
        // Two passes: the members we already held first, then the new ones. At a limit the
        // kept set then stays the same across repeated syncs (each side sends `discover` on
        // nodeup and again on first contact, so a peer's sync often comes twice), and a
        // member's later `leave` frees the room it took.
        // Counted, not searched per pid: a peer's group may hold a million pids, and a
        // search per pid would make one sync cost their square.
        let mut carried: HashMap<&PgGroup, HashMap<&Pid, usize>> =
            old.iter().map(|(g, pids)| (g, counts(pids))).collect();
        let mut fresh_pids: Vec<(PgGroup, Vec<Pid>)> = Vec::new();
        let mut new: HashMap<PgGroup, Vec<Pid>> = HashMap::new();
        for (g, pids) in groups {
            let (mut prior, mut rest) = (Vec::new(), Vec::new());
            let mut held = carried.get_mut(&g);
            for pid in pids {
                match held.as_mut().and_then(|h| h.get_mut(&pid)) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        prior.push(pid);
                    }
                    _ => rest.push(pid),
                }
            }
            let fresh = !new.contains_key(&g);
            let kept = self.admit(st, &g, fresh, prior.len(), &peer.node.name);
            prior.truncate(kept);
            if !prior.is_empty() {
                new.entry(g.clone()).or_default().extend(prior);
            }
            if !rest.is_empty() {
                fresh_pids.push((g, rest));
            }
        }
        for (g, mut pids) in fresh_pids {
            let fresh = !new.contains_key(&g);
            let kept = self.admit(st, &g, fresh, pids.len(), &peer.node.name);
            pids.truncate(kept);
            if !pids.is_empty() {
                new.entry(g).or_default().extend(pids);
            }
        }
        // Events: what changed against the old view.
        if self.events.receiver_count() > 0 {
            for (g, pids) in &new {
                let before = old.get(g).map(Vec::as_slice).unwrap_or(&[]);
                let added: Vec<Pid> = minus(pids, before);
                let gone: Vec<Pid> = minus(before, pids);
                if !gone.is_empty() {
                    self.notify(PgEvent::Leave {
                        group: g.clone(),
                        pids: gone,
                    });
                }
                if !added.is_empty() {
                    self.notify(PgEvent::Join {
                        group: g.clone(),
                        pids: added,
                    });
                }
            }
            for (g, pids) in &old {
                if !new.contains_key(g) {
                    self.notify(PgEvent::Leave {
                        group: g.clone(),
                        pids: pids.clone(),
                    });
                }
            }
        }
        if let Some(p) = st.peers.get_mut(peer) {
            p.groups = new;
        }
    }

    /// How many of `n` new memberships of a peer in `group` fit the limits (counting them
    /// and the group's bytes when `fresh`, a group new to this peer); warns about the rest.
    fn admit(&self, st: &mut State, group: &PgGroup, fresh: bool, n: usize, node: &str) -> usize {
        let room = self.options.max_members.saturating_sub(st.members);
        let bytes_ok = !fresh || st.group_bytes + group.bytes() <= self.options.max_group_bytes;
        let kept = if bytes_ok { n.min(room) } else { 0 };
        if kept > 0 {
            st.members += kept;
            if fresh {
                st.group_bytes += group.bytes();
            }
        }
        if kept < n {
            st.dropped += (n - kept) as u64;
            let due = st.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY);
            if due {
                tracing::warn!(
                    scope = %crate::etf::text::name(&self.name),
                    peer = %crate::etf::text::name(node),
                    group = %group,
                    dropped = st.dropped,
                    max_members = self.options.max_members,
                    max_group_bytes = self.options.max_group_bytes,
                    "pg: a peer's members exceed the scope's limits; the extra joins are dropped"
                );
                st.dropped = 0;
                st.warned = Some(Instant::now());
            }
        }
        kept
    }

    /// A peer's `join`/`leave` (v0) or `update` (v1): `(group, add, remove)` each. Ignored
    /// from a peer scope we do not know (as pg: a race with its DOWN, or a stranger).
    fn update(&self, peer: &Pid, ops: Vec<(PgGroup, Vec<Pid>, Vec<Pid>)>) {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(mut groups) = st
            .peers
            .get_mut(peer)
            .map(|p| std::mem::take(&mut p.groups))
        else {
            return;
        };
        for (g, add, remove) in ops {
            if !add.is_empty() {
                let fresh = !groups.contains_key(&g);
                let kept = self.admit(st, &g, fresh, add.len(), &peer.node.name);
                if kept > 0 {
                    let members = groups.entry(g.clone()).or_default();
                    // Newest first, as pg.
                    let mut joined: Vec<Pid> = add.iter().take(kept).cloned().collect();
                    joined.append(members);
                    *members = joined;
                    self.notify(PgEvent::Join {
                        group: g.clone(),
                        pids: add.into_iter().take(kept).collect(),
                    });
                }
            }
            if !remove.is_empty()
                && let Some(members) = groups.get_mut(&g)
            {
                // One pass over the group (a leave may list many pids of a big group).
                let gone = remove_each(members, &remove);
                st.members -= gone.len();
                if members.is_empty() {
                    groups.remove(&g);
                    st.group_bytes -= g.bytes();
                }
                if !gone.is_empty() {
                    self.notify(PgEvent::Leave {
                        group: g,
                        pids: gone,
                    });
                }
            }
        }
        if let Some(p) = st.peers.get_mut(peer) {
            p.groups = groups;
        }
    }
}

/// How often each pid occurs in `pids`.
fn counts(pids: &[Pid]) -> HashMap<&Pid, usize> {
    let mut counts: HashMap<&Pid, usize> = HashMap::with_capacity(pids.len());
    for p in pids {
        *counts.entry(p).or_default() += 1;
    }
    counts
}

/// `a -- b` (each element of `b` removes one occurrence from `a`, the first), in time
/// linear in both (`a` and `b` come from peers and may be long).
fn minus(a: &[Pid], b: &[Pid]) -> Vec<Pid> {
    let mut out = a.to_vec();
    remove_each(&mut out, b);
    out
}

/// Removes from `members` one occurrence (the first) of each element of `remove`, in one
/// pass; the pids removed, in `members`' order.
fn remove_each(members: &mut Vec<Pid>, remove: &[Pid]) -> Vec<Pid> {
    let mut left = counts(remove);
    let mut gone = Vec::new();
    members.retain(|p| match left.get_mut(p) {
        Some(n) if *n > 0 => {
            *n -= 1;
            gone.push(p.clone());
            false
        }
        _ => true,
    });
    gone
}

/// `--pg SCOPE:GROUP`: starts `scope` on `node` with `pid` a member of each of `groups`
/// (atoms). Logged and skipped when the scope cannot start.
pub fn start_scope(node: &Node, scope: &str, groups: Vec<String>, pid: Pid) {
    let scope_handle = match node.pg_start_scope(scope) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(scope = %crate::etf::text::name(scope), %error, "pg: cannot start the scope process");
            return;
        }
    };
    for group in groups {
        if let Err(error) = scope_handle.join(PgGroup::atom(&group), &pid) {
            tracing::warn!(scope = %crate::etf::text::name(scope), group = %crate::etf::text::name(&group), %error, "pg: cannot join");
        }
    }
}
