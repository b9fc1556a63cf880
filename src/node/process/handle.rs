//! [`Process`]: a process on the node driven by Rust code, with a pid, an optional registered
//! name and an async mailbox. It sends, casts and calls the OTP way, monitors and links, and
//! receives messages, `DOWN`s and exit signals as [`Received`] items.
//!
//! A call is done as `gen.erl`'s `do_call` does it: monitor the target (MONITOR_P by pid or
//! by name; kept locally toward a peer without DIST_MONITOR), make the monitor reference an
//! alias of the process, send `{:"$gen_call", {pid, [:alias | ref]}, request}`, and wait for
//! `{[:alias | ref], reply}` or the `DOWN`. When the call ends (reply, `DOWN` or timeout) the
//! alias is deactivated and the monitor removed, so a reply that arrives later (by ALIAS_SEND,
//! or to the pid from a peer without ALIAS) is dropped, as BEAM drops it, and never confuses a
//! later call.
//!
//! The mailbox is bounded as a GenServer's is (`--max-mailbox-bytes` and
//! [`MAX_MAILBOX_SIGNALS`]): over the bound the connection readers delivering to the process
//! pause until Rust code has received enough to bring it under half the bound. Nothing is
//! dropped.
//!
//! Dropping a [`Process`] ends it with reason `normal` ([`Process::exit`] picks the reason):
//! monitors others hold on it fire, linked processes get the exit signal, monitors it held
//! are removed and its name is free again.

use super::monitors::{PeerPid, RefKey};
use super::{Dest, Dispatch, MonitorTarget, Node, Pressure, Signal, SpawnError};
use crate::node::gen_server::{MAX_MAILBOX_SIGNALS, MIN_SIGNAL_WEIGHT};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, FixInteger, ImproperList, Pid, PidOrAtom, Reference, Term, Tuple};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Something a [`Process`] received.
///
/// ```no_run
/// # async fn f(p: kvnode::Process) {
/// use kvnode::Received;
/// match p.recv().await {
///     Received::Message(term) => println!("message {term}"),
///     Received::Down { object, reason, .. } => println!("{object} is down: {reason}"),
///     Received::Exit { from, reason } => println!("linked {from} exited: {reason}"),
///     _ => {}
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// An ordinary message.
    Message(Term),
    /// A monitor placed with [`Process::monitor`] fired (`{:DOWN, reference, :process,
    /// object, reason}` in Erlang).
    Down {
        /// The monitor reference [`Process::monitor`] returned.
        reference: Reference,
        /// What was monitored, as given to [`Process::monitor`] (a pid or a name).
        object: Dest,
        /// The exit reason: `noproc` when there was no such process, `noconnection` when its
        /// node went down or could not be reached.
        reason: Term,
    },
    /// An exit signal: a linked process exited (reason `noconnection` when its node went
    /// down), or someone called `exit(pid, reason)` on this process. A Rust process traps
    /// exits: it is never killed by them, it receives them (`{:EXIT, from, reason}`).
    Exit {
        /// The process the signal comes from.
        from: Pid,
        /// The exit reason.
        reason: Term,
    },
}

/// Why [`Process::call`] failed.
///
/// ```no_run
/// # async fn f(p: kvnode::Process) {
/// use kvnode::term::Atom;
/// use kvnode::CallError;
/// use std::time::Duration;
/// match p.call(("worker", "app@127.0.0.1"), Atom::from("job").into(), Duration::from_secs(5)).await {
///     Ok(reply) => println!("{reply}"),
///     Err(CallError::NoProc { .. }) => println!("no worker registered"),
///     Err(CallError::NoConnection { node }) => println!("{node} is down"),
///     Err(CallError::Timeout { .. }) => println!("too slow"),
///     Err(other) => println!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply within the timeout (the call is abandoned: a later reply is dropped).
    #[error("call to {dest} timed out after {after:?}")]
    Timeout {
        /// Whom the call went to.
        dest: Dest,
        /// The timeout.
        after: Duration,
    },
    /// There is no such process (`noproc`).
    #[error("no process {dest}")]
    NoProc {
        /// Whom the call went to.
        dest: Dest,
    },
    /// The target's node could not be reached or went down during the call (`{:nodedown,
    /// node}` in Erlang).
    #[error("node {node} is down or unreachable")]
    NoConnection {
        /// The node.
        node: String,
    },
    /// The process called itself (it could never answer; OTP exits with `calling_self`).
    #[error("a process cannot call itself")]
    CallingSelf,
    /// The target exited during the call.
    #[error("{dest} exited during the call: {}", crate::etf::summary(reason))]
    Exit {
        /// Whom the call went to.
        dest: Dest,
        /// The exit reason.
        reason: Term,
    },
    /// The reply holds a term kvnode cannot decode unchanged (an OTP 29 native record, or a
    /// map with both `0.0` and `-0.0` as keys, which eetf would merge): `reply` is the
    /// reply in external format, version byte included, exactly as the peer sent it (print
    /// it with `erlang:binary_to_term/1` on a BEAM node, or keep it as bytes). The connection
    /// stays up.
    #[error(
        "the reply from {dest} holds a term kvnode cannot decode unchanged (an OTP 29 record, or 0.0 and -0.0 map keys; {} bytes)",
        reply.len()
    )]
    Unrepresentable {
        /// Whom the call went to.
        dest: Dest,
        /// The reply, in external format (version byte included).
        reply: Vec<u8>,
    },
}

/// A monitor this process holds.
struct Held {
    /// What it monitors, as the caller named it.
    object: Dest,
    /// The node it was placed on: `None` for a local target (recorded in the node's table
    /// of monitors under this node's own name).
    peer: Option<String>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Received, usize)>,
    bytes: usize,
    congested: bool,
    closed: bool,
    /// Calls in progress, by their monitor reference (which is also their alias): their
    /// replies and `DOWN`s are for the call, not for [`Process::recv`].
    calls: HashMap<RefKey, Term, foldhash::fast::RandomState>,
    /// Replies to calls in progress that eetf cannot hold unchanged, in external format
    /// (version byte included), by call: their queued message is a placeholder `{tag,
    /// undefined}` that [`Process::call`] turns into [`CallError::Unrepresentable`].
    unrepresentable: HashMap<RefKey, Vec<u8>, foldhash::fast::RandomState>,
    monitors: HashMap<RefKey, Held, foldhash::fast::RandomState>,
}

/// The mailbox: what the node delivers into, and what [`Process`] receives from.
struct Shared {
    node_name: String,
    state: Mutex<State>,
    arrived: Notify,
    pressure: Arc<Pressure>,
    max_bytes: usize,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, item: Received, weight: usize) {
        self.push_with(weight, |_| Some(item));
    }

    /// Queues what `make` returns (None: nothing), deciding under the same lock that queues
    /// it. A reply or `DOWN` checked against the calls and monitors in progress must be, or
    /// a call ending between the check and the push (its [`CallEnd`] flushing the mailbox
    /// first) would leave its late reply or `DOWN` where [`Process::recv`] sees it.
    fn push_with(&self, weight: usize, make: impl FnOnce(&mut State) -> Option<Received>) {
        let weight = weight.max(MIN_SIGNAL_WEIGHT);
        {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let Some(item) = make(&mut st) else {
                return;
            };
            st.queue.push_back((item, weight));
            st.bytes += weight;
            if !st.congested
                && (st.bytes >= self.max_bytes || st.queue.len() >= MAX_MAILBOX_SIGNALS)
            {
                st.congested = true;
                self.pressure.set(Pressure::MAILBOX, true);
                tracing::debug!(
                    signals = st.queue.len(),
                    bytes = st.bytes,
                    "process mailbox over its bound: readers delivering to it pause"
                );
            }
        }
        if self.pressure.is_congested() {
            super::note_congested(&self.pressure);
        }
        self.arrived.notify_waiters();
    }

    /// Takes the first queued item `pick` accepts.
    fn take(&self, pick: &mut dyn FnMut(&Received, &State) -> bool) -> Option<Received> {
        let mut st = self.lock();
        let index = {
            let st = &*st;
            st.queue.iter().position(|(r, _)| pick(r, st))
        }?;
        let (item, weight) = st.queue.remove(index)?;
        st.bytes -= weight;
        self.relieve_if_below(&mut st);
        Some(item)
    }

    fn relieve_if_below(&self, st: &mut State) {
        if st.congested
            && st.bytes <= self.max_bytes / 2
            && st.queue.len() <= MAX_MAILBOX_SIGNALS / 2
        {
            st.congested = false;
            self.pressure.set(Pressure::MAILBOX, false);
        }
    }

    /// Waits for an item `pick` accepts, until `deadline` (None: forever).
    async fn wait_for(
        &self,
        mut pick: impl FnMut(&Received, &State) -> bool,
        deadline: Option<Instant>,
    ) -> Option<Received> {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if let Some(item) = self.take(&mut pick) {
                return Some(item);
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                        // One last look: an item may have come with the deadline.
                        return self.take(&mut pick);
                    }
                }
                None => arrived.await,
            }
        }
    }

    /// The alias reference of a call reply `{[:alias | ref], reply}` made by this node.
    fn reply_alias<'a>(&self, term: &'a Term) -> Option<&'a Reference> {
        let Term::Tuple(t) = term else { return None };
        let [tag, _] = t.elements.as_slice() else {
            return None;
        };
        let alias = crate::node::gen_server::alias_of(tag)?;
        (alias.node.name == self.node_name).then_some(alias)
    }
}

impl Shared {
    /// How many queued items [`Process::recv`] can take (those of calls in progress are not).
    fn receivable(&self) -> usize {
        let st = self.lock();
        if st.calls.is_empty() {
            return st.queue.len();
        }
        st.queue
            .iter()
            .filter(|(r, _)| !for_a_call(self, r, &st))
            .count()
    }
}

/// Whether `item` belongs to a call in progress (its reply or its `DOWN`).
fn for_a_call(shared: &Shared, item: &Received, st: &State) -> bool {
    let key = match item {
        Received::Message(term) => shared.reply_alias(term).and_then(RefKey::of),
        Received::Down { reference, .. } => RefKey::of(reference),
        Received::Exit { .. } => None,
    };
    key.is_some_and(|k| st.calls.contains_key(&k))
}

impl Dispatch for Shared {
    fn dispatch(&self, node: &Node, signal: Signal) {
        self.dispatch_weighted(node, signal, MIN_SIGNAL_WEIGHT);
    }

    fn dispatch_weighted(&self, _node: &Node, signal: Signal, bytes: usize) {
        match signal {
            Signal::Message(term) => {
                // A reply to a call of ours that has ended (alias deactivated): dropped, as
                // BEAM drops a message to an inactive alias. Covers replies sent to the pid
                // by peers without ALIAS and by servers on this node.
                let key = self.reply_alias(&term).and_then(RefKey::of);
                self.push_with(bytes, |st| match key {
                    Some(key) if !st.calls.contains_key(&key) => {
                        tracing::debug!("reply to a call that has ended: dropped");
                        None
                    }
                    _ => Some(Received::Message(term)),
                });
            }
            Signal::Down {
                reference,
                pid,
                reason,
            } => {
                let Some(key) = RefKey::of(&reference) else {
                    return;
                };
                self.push_with(bytes, |st| {
                    // Unknown: demonitored meanwhile; the DOWN is void.
                    let held = st.monitors.remove(&key)?;
                    let object = match held.object {
                        Dest::Pid(_) => Dest::Pid(pid),
                        named => named,
                    };
                    Some(Received::Down {
                        reference,
                        object,
                        reason,
                    })
                });
            }
            Signal::Raw(raw) => {
                // A message eetf cannot hold unchanged: a reply to a call of ours fails that
                // call with the reply's bytes; anything else is dropped.
                let parts = super::unrepresentable::reply_parts(&raw.message, &raw.limits);
                let key = parts.as_ref().and_then(|(tag, _)| {
                    let alias = crate::node::gen_server::alias_of(tag)?;
                    (alias.node.name == self.node_name)
                        .then(|| RefKey::of(alias))
                        .flatten()
                });
                let (Some((tag, reply)), Some(key)) = (parts, key) else {
                    tracing::warn!(
                        peer = %raw.peer,
                        message = %crate::etf::excerpt(&raw.message),
                        "a message kvnode cannot decode unchanged (an OTP 29 record, or 0.0 and -0.0 map keys): dropped"
                    );
                    return;
                };
                self.push_with(bytes, |st| {
                    if !st.calls.contains_key(&key) {
                        tracing::debug!("reply to a call that has ended: dropped");
                        return None;
                    }
                    st.unrepresentable.insert(key, reply);
                    Some(Received::Message(
                        Tuple::from(vec![tag, atom("undefined")]).into(),
                    ))
                });
            }
            Signal::Call { .. } => {
                // An in-node call made for a GenServer (rpc): a Rust process answers none;
                // dropping the reply sender fails that call at once.
                tracing::debug!("in-node call to a Rust process: refused");
            }
        }
    }

    fn pressure(&self) -> Option<Arc<Pressure>> {
        Some(self.pressure.clone())
    }

    fn exit_signal(&self, _node: &Node, from: Pid, reason: Term) {
        self.push(Received::Exit { from, reason }, MIN_SIGNAL_WEIGHT);
    }
}

/// A process driven by Rust code: a pid on the node (and optionally a registered name) with
/// an async mailbox. Made by [`Node::process`].
///
/// ```no_run
/// # async fn f(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
/// use kvnode::term::{Atom, Term};
/// use std::time::Duration;
/// let me = node.process(None)?;
/// let reply = me
///     .call(("Elixir.MyApp.Counter", "app@127.0.0.1"), Atom::from("get").into(), Duration::from_secs(5))
///     .await?;
/// println!("{reply:?}");
/// # Ok(()) }
/// ```
pub struct Process {
    node: Node,
    pid: Pid,
    shared: Arc<Shared>,
    next_unlink_id: AtomicI32,
    ended: bool,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pid).finish()
    }
}

impl Node {
    /// Starts a [`Process`] on this node, registered under `name` when given (refused when
    /// another process holds the name).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let worker = node.process(Some("worker"))?;
    /// println!("{:?}", worker.pid());
    /// # Ok(()) }
    /// ```
    pub fn process(&self, name: Option<&str>) -> Result<Process, SpawnError> {
        let shared = Arc::new(Shared {
            node_name: self.name().name.clone(),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            pressure: Arc::new(Pressure::default()),
            max_bytes: self.config().max_mailbox_bytes.max(1),
        });
        let target = shared.clone();
        let mailbox = self.try_spawn_process(name, move |_| target as Arc<dyn Dispatch>)?;
        Ok(Process {
            node: self.clone(),
            pid: mailbox.pid,
            shared,
            next_unlink_id: AtomicI32::new(1),
            ended: false,
        })
    }
}

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

/// The end of a call, on every path out of [`Process::call`] (a reply, a `DOWN`, the
/// timeout, or the future dropped): the alias is deactivated, so later replies are dropped;
/// the monitor is removed; a reply or `DOWN` that came meanwhile is flushed.
struct CallEnd<'a> {
    process: &'a Process,
    reference: &'a Reference,
    key: RefKey,
    tag: &'a Term,
}

impl Drop for CallEnd<'_> {
    fn drop(&mut self) {
        let p = self.process;
        p.node.deactivate_alias(self.reference);
        {
            let mut st = p.shared.lock();
            st.calls.remove(&self.key);
            st.unrepresentable.remove(&self.key);
        }
        p.demonitor(self.reference);
        let tag = self.tag;
        while p
            .shared
            .take(&mut |item, _| {
                matches!(item, Received::Message(Term::Tuple(t))
                    if t.elements.len() == 2 && t.elements[0] == *tag)
            })
            .is_some()
        {}
    }
}

/// Where a destination is, from this node.
enum Place<'a> {
    LocalPid(&'a Pid),
    LocalName(&'a str),
    RemotePid(&'a Pid),
    RemoteName {
        name: &'a str,
        node: &'a str,
    },
    /// A global name nobody holds.
    Nowhere,
}

impl Process {
    /// The process's pid.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// assert_eq!(p.pid().node.name, node.name().name);
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> &Pid {
        &self.pid
    }

    /// The node the process runs on.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// println!("{}", p.node().name().name);
    /// # Ok(()) }
    /// ```
    pub fn node(&self) -> &Node {
        &self.node
    }

    fn place<'a>(&self, dest: &'a Dest) -> Place<'a> {
        let own = self.node.name().name.as_str();
        match dest {
            Dest::Pid(pid) if self.node.is_local(pid) => Place::LocalPid(pid),
            Dest::Pid(pid) => Place::RemotePid(pid),
            Dest::Name(name) => Place::LocalName(name),
            Dest::Remote { name, node } if node == own => Place::LocalName(name),
            Dest::Remote { name, node } => Place::RemoteName { name, node },
            // Resolved by `resolve` first; one still here is held by nobody.
            Dest::Global(_) => Place::Nowhere,
        }
    }

    /// A [`Dest::Global`] as the pid that holds the name now (as `:global.send/2` looks it
    /// up); anything else (and a global name nobody holds) as it is.
    fn resolve<'a>(&self, dest: &'a Dest) -> std::borrow::Cow<'a, Dest> {
        match dest {
            Dest::Global(name) => match self.node.global_whereis(name) {
                Some(pid) => std::borrow::Cow::Owned(Dest::Pid(pid)),
                None => std::borrow::Cow::Borrowed(dest),
            },
            _ => std::borrow::Cow::Borrowed(dest),
        }
    }

    /// Sends `message` to `dest` (Erlang's `send/2`). Never waits: to a process that does
    /// not exist it is dropped, to a node not connected it waits while the node is dialed
    /// (bounded by `--max-pending-bytes`).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::term::Atom;
    /// let p = node.process(None)?;
    /// p.send(("logger_proxy", "app@127.0.0.1"), Atom::from("hello").into());
    /// # Ok(()) }
    /// ```
    pub fn send(&self, dest: impl Into<Dest>, message: Term) {
        let dest = dest.into();
        let target = self.resolve(&dest);
        let node = &self.node;
        match self.place(&target) {
            Place::LocalPid(pid) => match node.lookup_pid(pid) {
                Some(mb) => mb.deliver(node, Signal::Message(message)),
                None => tracing::debug!(id = pid.id, "send to a local pid that is gone: dropped"),
            },
            Place::LocalName(name) => match node.whereis(name) {
                Some(mb) => mb.deliver(node, Signal::Message(message)),
                None => tracing::debug!(
                    name = %crate::etf::text::name(name),
                    "send to an unregistered name: dropped"
                ),
            },
            Place::RemotePid(pid) => {
                node.send_to_node(&pid.node.name, Message::send(pid.clone(), message))
            }
            Place::RemoteName { name, node: peer } => node.send_to_node(
                peer,
                Message::reg_send(self.pid.clone(), Atom::from(name), message),
            ),
            Place::Nowhere => tracing::debug!(
                dest = %dest,
                "send to a global name nobody holds: dropped"
            ),
        }
        // A local receiver that got congested matters to connection readers, not to us.
        let _ = super::take_congested();
    }

    /// Casts `request` to the GenServer `dest` (`GenServer.cast/2`: sends
    /// `{:"$gen_cast", request}`).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::term::{Atom, Term, Tuple};
    /// let p = node.process(None)?;
    /// let put: Term = Tuple::from(vec![Atom::from("put").into(), Atom::from("k").into(), Atom::from("v").into()]).into();
    /// p.cast(("Elixir.DistributedExample.KVStore", "kv@127.0.0.1"), put);
    /// # Ok(()) }
    /// ```
    pub fn cast(&self, dest: impl Into<Dest>, request: Term) {
        self.send(dest, Tuple::from(vec![atom("$gen_cast"), request]).into());
    }

    /// Calls the GenServer `dest` (`GenServer.call/3`) and waits for its reply, at most
    /// `timeout`. Done as OTP does it: the target is monitored and the monitor reference is
    /// an alias of this process for the duration of the call, so an exit of the target ends
    /// the call at once ([`CallError::Exit`], [`CallError::NoProc`],
    /// [`CallError::NoConnection`]) and a reply arriving after the timeout is dropped.
    ///
    /// While a call waits, [`Process::recv`] (from another task) does not see its reply or
    /// `DOWN`.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), Box<dyn std::error::Error>> {
    /// use kvnode::term::{Atom, Term, Tuple};
    /// use std::time::Duration;
    /// let p = node.process(None)?;
    /// let get: Term = Tuple::from(vec![Atom::from("get").into(), Atom::from("k").into()]).into();
    /// let value = p
    ///     .call(("Elixir.DistributedExample.KVStore", "kv@127.0.0.1"), get, Duration::from_secs(5))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn call(
        &self,
        dest: impl Into<Dest>,
        request: Term,
        timeout: Duration,
    ) -> Result<Term, CallError> {
        let dest = dest.into();
        let target = self.resolve(&dest).into_owned();
        let calling_self = match self.place(&target) {
            Place::LocalPid(pid) => *pid == self.pid,
            Place::LocalName(name) => self.node.whereis(name).is_some_and(|m| m.pid == self.pid),
            Place::RemotePid(_) | Place::RemoteName { .. } => false,
            // A global name nobody holds: `noproc` at once (`:global.send/2` exits).
            Place::Nowhere => return Err(CallError::NoProc { dest }),
        };
        if calling_self {
            return Err(CallError::CallingSelf);
        }
        let deadline = crate::node::deadline_after(timeout);
        // The monitor reference is the alias, as `monitor(process, dest, [{alias,
        // demonitor}])` makes it in gen.erl.
        let reference = self.node.new_ref();
        let Some(key) = RefKey::of(&reference) else {
            // References this node makes have 3 words.
            unreachable!("a local reference has at most MAX_REF_WORDS words") // ok: new_ref makes 3
        };
        let tag: Term =
            ImproperList::from((vec![atom("alias")], Term::from(reference.clone()))).into();
        self.shared.lock().calls.insert(key, tag.clone());
        self.node.activate_alias(&reference, &self.pid);
        self.place_monitor(&dest, &target, reference.clone());
        // Ends the call however this future ends (also when it is dropped mid-wait).
        let _ending = CallEnd {
            process: self,
            reference: &reference,
            key,
            tag: &tag,
        };
        self.send(
            target.clone(),
            Tuple::from(vec![
                atom("$gen_call"),
                Tuple::from(vec![self.pid.clone().into(), tag.clone()]).into(),
                request,
            ])
            .into(),
        );
        let shared = &self.shared;
        let got = shared
            .wait_for(
                |item, _| match item {
                    Received::Message(Term::Tuple(t)) => {
                        t.elements.len() == 2 && t.elements[0] == tag
                    }
                    Received::Down { reference: r, .. } => *r == reference,
                    _ => false,
                },
                Some(deadline),
            )
            .await;
        match got {
            Some(Received::Message(Term::Tuple(t))) => {
                if let Some(reply) = self.shared.lock().unrepresentable.remove(&key) {
                    return Err(CallError::Unrepresentable { dest, reply });
                }
                let mut elements = t.elements.into_iter();
                Ok(elements.nth(1).unwrap_or_else(|| atom("undefined")))
            }
            Some(Received::Down { reason, .. }) => Err(match &reason {
                Term::Atom(a) if a.name == "noproc" => CallError::NoProc { dest },
                Term::Atom(a) if a.name == "noconnection" => CallError::NoConnection {
                    node: target.node_of(&self.node.name().name).to_owned(),
                },
                _ => CallError::Exit { dest, reason },
            }),
            _ => Err(CallError::Timeout {
                dest,
                after: timeout,
            }),
        }
    }

    /// Places a monitor with `reference` on `target` (recorded before it can fire), reported
    /// as a monitor of `dest` (the global name `target` was resolved from, or `target`).
    fn place_monitor(&self, dest: &Dest, target: &Dest, reference: Reference) {
        let Some(key) = RefKey::of(&reference) else {
            return;
        };
        let own = self.node.name().name.clone();
        let peer = match self.place(target) {
            Place::LocalPid(_) | Place::LocalName(_) | Place::Nowhere => None,
            Place::RemotePid(pid) => Some(pid.node.name.clone()),
            Place::RemoteName { node, .. } => Some(node.to_owned()),
        };
        self.shared.lock().monitors.insert(
            key,
            Held {
                object: dest.clone(),
                peer: peer.clone(),
            },
        );
        let watcher = PeerPid {
            id: self.pid.id,
            serial: self.pid.serial,
            creation: self.pid.creation,
        };
        let placed = match self.place(target) {
            Place::LocalPid(pid) => {
                self.node
                    .monitor_incoming(&own, MonitorTarget::Pid(pid), key, watcher, None)
            }
            Place::LocalName(name) => {
                self.node
                    .monitor_incoming(&own, MonitorTarget::Name(name), key, watcher, None)
            }
            Place::RemotePid(pid) => {
                self.node.monitor_remote_target(
                    &self.pid,
                    &pid.node.name,
                    PidOrAtom::Pid(pid.clone()),
                    reference.clone(),
                );
                true
            }
            Place::RemoteName { name, node } => {
                self.node.monitor_remote_target(
                    &self.pid,
                    node,
                    PidOrAtom::Atom(Atom::from(name)),
                    reference.clone(),
                );
                true
            }
            Place::Nowhere => false,
        };
        if !placed {
            // No such local process: DOWN with `noproc` at once, as BEAM does.
            self.shared.lock().monitors.remove(&key);
            self.shared.push(
                Received::Down {
                    reference,
                    object: dest.clone(),
                    reason: atom("noproc"),
                },
                MIN_SIGNAL_WEIGHT,
            );
        }
    }

    /// Monitors `dest` (`Process.monitor/1`): when it exits (or does not exist, or its node
    /// goes down) this process receives [`Received::Down`] with the returned reference.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::Received;
    /// let p = node.process(None)?;
    /// let mref = p.monitor(("Elixir.MyApp.Worker", "app@127.0.0.1"));
    /// let down = p
    ///     .recv_matching(|r| matches!(r, Received::Down { reference, .. } if *reference == mref))
    ///     .await;
    /// # Ok(()) }
    /// ```
    pub fn monitor(&self, dest: impl Into<Dest>) -> Reference {
        let reference = self.node.new_ref();
        let dest = dest.into();
        let target = self.resolve(&dest).into_owned();
        self.place_monitor(&dest, &target, reference.clone());
        reference
    }

    /// Removes a monitor (`Process.demonitor(ref, [:flush])`): no [`Received::Down`] for it
    /// is received after this returns, even one already queued. False when the monitor had
    /// already fired or was removed.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// let mref = p.monitor("some_server");
    /// p.demonitor(&mref);
    /// # Ok(()) }
    /// ```
    pub fn demonitor(&self, reference: &Reference) -> bool {
        let Some(key) = RefKey::of(reference) else {
            return false;
        };
        let held = self.shared.lock().monitors.remove(&key);
        if let Some(held) = &held {
            match &held.peer {
                Some(peer) => self.node.demonitor_remote_on(&self.pid, peer, reference),
                None => self.node.demonitor_incoming(&self.node.name().name, &key),
            }
        }
        let flushed = self
            .shared
            .take(&mut |item, _| matches!(item, Received::Down { reference: r, .. } if r == reference))
            .is_some();
        held.is_some() && !flushed
    }

    /// Links this process to `pid` (`Process.link/1`): when either exits, the other gets
    /// the exit signal; this process receives it as [`Received::Exit`] (`noproc` at once
    /// when `pid` does not exist, `noconnection` when its node goes down).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node, worker: kvnode::term::Pid) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// p.link(&worker);
    /// # Ok(()) }
    /// ```
    pub fn link(&self, pid: &Pid) {
        if *pid == self.pid {
            return;
        }
        let own = self.node.name().name.clone();
        if self.node.is_local(pid) {
            // Both halves, so either side's exit reaches the other.
            if self.node.link_incoming(&own, pid, &self.pid) {
                self.node.link_incoming(&own, &self.pid, pid);
            } else {
                self.shared.push(
                    Received::Exit {
                        from: pid.clone(),
                        reason: atom("noproc"),
                    },
                    MIN_SIGNAL_WEIGHT,
                );
            }
            return;
        }
        let peer = pid.node.name.as_str();
        // Recorded as the peer's link to us: its EXIT, our exit and its node-down all find it.
        self.node.link_incoming(peer, &self.pid, pid);
        self.node
            .send_to_node(peer, Message::link(self.pid.clone(), pid.clone()));
    }

    /// Removes a link made by either side (`Process.unlink/1`); no exit signal from it
    /// arrives after this returns (one already queued stays).
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node, worker: kvnode::term::Pid) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// p.link(&worker);
    /// p.unlink(&worker);
    /// # Ok(()) }
    /// ```
    pub fn unlink(&self, pid: &Pid) {
        let own = self.node.name().name.clone();
        if self.node.is_local(pid) {
            self.node.unlink_incoming(&own, &self.pid, pid);
            self.node.unlink_incoming(&own, pid, &self.pid);
            return;
        }
        let peer = pid.node.name.clone();
        if !self.node.unlink_incoming(&peer, &self.pid, pid) {
            return;
        }
        let id = self.next_unlink_id.fetch_add(1, Ordering::Relaxed);
        let (from, to) = (self.pid.clone(), pid.clone());
        // UNLINK_ID where the peer negotiated it (OTP 23+), else the old UNLINK.
        self.node.send_when_connected(
            &peer,
            || 64,
            move |flags| {
                Some(if flags.contains(DistributionFlags::UNLINK_ID) {
                    Message::unlink_id(FixInteger::from(id).into(), from, to)
                } else {
                    Message::unlink(from, to)
                })
            },
        );
    }

    /// The next item in the mailbox, waiting for one.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::Received;
    /// let p = node.process(Some("inbox"))?;
    /// match p.recv().await {
    ///     Received::Message(term) => println!("got {term:?}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&self) -> Received {
        self.recv_matching(|_| true).await
    }

    /// The next item, or `None` after `timeout` without one.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use std::time::Duration;
    /// let p = node.process(None)?;
    /// if p.recv_timeout(Duration::from_millis(100)).await.is_none() {
    ///     println!("nothing yet");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv_timeout(&self, timeout: Duration) -> Option<Received> {
        self.recv_matching_timeout(|_| true, timeout).await
    }

    /// Selective receive: the first item `pred` accepts, waiting for one. Items it skips
    /// stay in the mailbox, in order.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::Received;
    /// let p = node.process(None)?;
    /// let exit = p.recv_matching(|r| matches!(r, Received::Exit { .. })).await;
    /// # Ok(()) }
    /// ```
    pub async fn recv_matching(&self, mut pred: impl FnMut(&Received) -> bool) -> Received {
        let shared = &self.shared;
        loop {
            if let Some(item) = shared
                .wait_for(|r, st| !for_a_call(shared, r, st) && pred(r), None)
                .await
            {
                return item;
            }
        }
    }

    /// [`Process::recv_matching`] with a timeout: `None` when no accepted item arrived in time.
    ///
    /// ```no_run
    /// # async fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::Received;
    /// use std::time::Duration;
    /// let p = node.process(None)?;
    /// let msg = p
    ///     .recv_matching_timeout(|r| matches!(r, Received::Message(_)), Duration::from_secs(1))
    ///     .await;
    /// # Ok(()) }
    /// ```
    pub async fn recv_matching_timeout(
        &self,
        mut pred: impl FnMut(&Received) -> bool,
        timeout: Duration,
    ) -> Option<Received> {
        let shared = &self.shared;
        shared
            .wait_for(
                |r, st| !for_a_call(shared, r, st) && pred(r),
                Some(Instant::now() + timeout),
            )
            .await
    }

    /// How many items wait in the mailbox for [`Process::recv`]. A reply or `DOWN` of a call in
    /// progress (from another task) belongs to that call and is not counted.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// let p = node.process(None)?;
    /// assert_eq!(p.queued(), 0);
    /// # Ok(()) }
    /// ```
    pub fn queued(&self) -> usize {
        self.shared.receivable()
    }

    /// Ends the process with `reason` (what dropping it does with `normal`): monitors on it
    /// fire with `reason`, linked processes get the exit signal, its name is free again.
    ///
    /// ```no_run
    /// # fn f(node: kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// use kvnode::term::Atom;
    /// let p = node.process(Some("job"))?;
    /// p.exit(Atom::from("shutdown").into());
    /// # Ok(()) }
    /// ```
    pub fn exit(mut self, reason: Term) {
        self.end(reason);
    }

    fn end(&mut self, reason: Term) {
        if self.ended {
            return;
        }
        self.ended = true;
        let held: Vec<(RefKey, Held)> = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.queue.clear();
            st.bytes = 0;
            if st.congested {
                st.congested = false;
                self.shared.pressure.set(Pressure::MAILBOX, false);
            }
            st.monitors.drain().collect()
        };
        for (key, held) in held {
            match held.peer {
                Some(peer) => self.node.demonitor_remote_on(
                    &self.pid,
                    &peer,
                    &key.to_reference(&self.node.name().name),
                ),
                None => self.node.demonitor_incoming(&self.node.name().name, &key),
            }
        }
        self.node.exit_process(&self.pid, reason, None);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.end(atom("normal"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            node_name: "me@h".to_owned(),
            state: Mutex::new(State::default()),
            arrived: Notify::new(),
            pressure: Arc::new(Pressure::default()),
            max_bytes: 1 << 20,
        }
    }

    fn reference(id: u32) -> Reference {
        Reference {
            node: Atom::from("me@h"),
            id: vec![id, 0, 0],
            creation: 1,
        }
    }

    /// `{[alias | Ref], Reply}`: a reply to the call whose alias is `r`.
    fn reply_to(r: &Reference) -> Term {
        let tag =
            ImproperList::from((vec![Term::from(Atom::from("alias"))], Term::from(r.clone())));
        Tuple::from(vec![tag.into(), atom("ok")]).into()
    }

    #[test]
    fn queued_leaves_out_what_belongs_to_a_call_in_progress() {
        let s = shared();
        let call = reference(7);
        let key = RefKey::of(&call).expect("a 3-word reference");
        s.lock().calls.insert(key, atom("target"));
        s.push(Received::Message(atom("hello")), 1);
        s.push(Received::Message(reply_to(&call)), 1);
        s.push(
            Received::Down {
                reference: call.clone(),
                object: Dest::Name("target".into()),
                reason: atom("normal"),
            },
            1,
        );
        // Another call's (ended) reply shape, and a DOWN of an ordinary monitor: for recv.
        s.push(Received::Message(reply_to(&reference(8))), 1);
        assert_eq!(s.lock().queue.len(), 4);
        assert_eq!(
            s.receivable(),
            2,
            "the call's reply and DOWN are the call's"
        );
        s.lock().calls.clear();
        assert_eq!(s.receivable(), 4, "no call in progress: every item counts");
    }
}
