//! The GenServer protocol on the kvnode side: a trait for servers and the loop that turns
//! mailbox signals into `handle_call` / `handle_cast` / `handle_info` / `handle_down`.
//!
//! Wire shapes (`gen.erl`): a call is `{:"$gen_call", {pid, tag}, request}` and is answered
//! with `{tag, reply}`, the tag echoed verbatim (since OTP 24 usually the improper list
//! `[:alias | ref]`, never to be decoded as a plain reference). When the tag carries an alias
//! and the peer negotiated DFLAG_ALIAS, the reply goes by ALIAS_SEND, so a reply arriving after
//! the caller's timeout is dropped by the caller's runtime instead of left in its mailbox.
//! A cast is `{:"$gen_cast", request}`; anything else is an info message.

use crate::node::{Dispatch, Mailbox, Node, RawMessage, Signal};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, List, Pid, Reference, Term, Tuple};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Who made a call, and the tag to echo.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The calling process.
    pub pid: Pid,
    /// The call's tag, echoed verbatim in the reply.
    pub tag: Term,
    /// For in-node calls ([`Signal::Call`]): where the reply goes instead of a message.
    local: Option<LocalReply>,
}

type LocalReply = std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Term>>>>;

impl Caller {
    /// A remote (or local-process) caller: the reply is the message `{tag, reply}` to `pid`.
    pub fn new(pid: Pid, tag: Term) -> Self {
        Caller {
            pid,
            tag,
            local: None,
        }
    }
}

/// A server hosted on the node.
pub trait GenServer: Send + 'static {
    /// A `GenServer.call`. Return `Some(reply)` to answer now, `None` to answer later with
    /// [`Ctx::reply`].
    fn handle_call(&mut self, ctx: &mut Ctx, from: &Caller, request: Term) -> Option<Term>;
    /// A `GenServer.cast`.
    fn handle_cast(&mut self, ctx: &mut Ctx, request: Term) {
        let _ = ctx;
        tracing::debug!(request = %crate::term::summary(&request), "cast ignored");
    }
    /// Any other message.
    fn handle_info(&mut self, ctx: &mut Ctx, message: Term) {
        let _ = ctx;
        tracing::debug!(message = %crate::term::summary(&message), "info message ignored");
    }
    /// A message still in external format (see [`crate::node::RawMessage`]), offered before
    /// it is decoded, when the server is idle. Return true if it was handled completely
    /// (replies included); false leaves the message untouched for the decoding path
    /// (`handle_call` and friends). The default handles nothing.
    fn handle_raw(&mut self, ctx: &mut Ctx, raw: &RawMessage) -> bool {
        let _ = (ctx, raw);
        false
    }
    /// A monitor placed with [`Ctx::monitor`] fired.
    fn handle_down(&mut self, ctx: &mut Ctx, reference: Reference, pid: Pid, reason: Term) {
        let _ = (ctx, reference, pid, reason);
    }
}

/// What a server can do while handling a message.
pub struct Ctx<'a> {
    node: &'a Node,
    pid: &'a Pid,
}

impl Ctx<'_> {
    /// The node the server runs on.
    pub fn node(&self) -> &Node {
        self.node
    }

    /// The server's own pid.
    pub fn self_pid(&self) -> &Pid {
        self.pid
    }

    /// Sends `message` to `to` without waiting (a full local mailbox drops it, with a log).
    pub fn send(&self, to: &Pid, message: Term) {
        send(self.node, to, message);
    }

    /// Answers a call made earlier (for servers that returned `None` from `handle_call`).
    pub fn reply(&self, to: &Caller, reply: Term) {
        self.replier().reply(to, reply);
    }

    /// A handle that can answer calls from any thread, after `handle_call` returned `None`
    /// (for example once a write is durable).
    pub fn replier(&self) -> Replier {
        Replier {
            node: self.node.clone(),
            server: self.pid.clone(),
        }
    }

    /// Monitors a remote pid; [`GenServer::handle_down`] runs when it exits or its node goes
    /// down.
    pub fn monitor(&self, pid: &Pid) -> Reference {
        self.node.monitor_remote(self.pid, pid)
    }

    /// Removes a monitor.
    pub fn demonitor(&self, pid: &Pid, reference: &Reference) {
        self.node.demonitor_remote(self.pid, pid, reference);
    }
}

/// Sends `message` to `to` without waiting, from any thread (a full local mailbox drops it,
/// with a log).
pub fn send(node: &Node, to: &Pid, message: Term) {
    if node.is_local(to) {
        if let Some(mb) = node.lookup_pid(to) {
            mb.deliver(node, Signal::Message(message));
        }
        return;
    }
    let peer = to.node.name.as_str();
    node.send_to_node(peer, Message::send(to.clone(), message));
}

/// Answers calls on behalf of a server; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Replier {
    node: Node,
    server: Pid,
}

impl Replier {
    /// Sends `{tag, reply}` to the caller: by ALIAS_SEND when the tag is an alias and the peer
    /// supports it (a late reply is then dropped by the caller's runtime), else to its pid.
    pub fn reply(&self, to: &Caller, reply: Term) {
        if let Some(local) = &to.local {
            if let Some(tx) = local.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(reply);
            }
            return;
        }
        let message: Term = Tuple::from(vec![to.tag.clone(), reply]).into();
        if !self.node.is_local(&to.pid) {
            let peer = to.pid.node.name.as_str();
            if let Some(alias) = alias_of(&to.tag)
                && self.node.peer_has(peer, DistributionFlags::ALIAS)
            {
                let msg = Message::alias_send(self.server.clone(), alias.clone(), message);
                self.node.send_to_node(peer, msg);
                return;
            }
        }
        send(&self.node, &to.pid, message);
    }
}

/// The alias reference in a `[:alias | ref]` (or `[[:alias | ref] | _]`) call tag.
pub fn alias_of(tag: &Term) -> Option<&Reference> {
    let Term::ImproperList(l) = tag else {
        if let Term::List(List { elements }) = tag {
            return elements.first().and_then(alias_of);
        }
        return None;
    };
    match (l.elements.as_slice(), l.last.as_ref()) {
        ([Term::Atom(a)], Term::Reference(r)) if a.name == "alias" => Some(&**r),
        ([first, ..], _) => alias_of(first),
        _ => None,
    }
}

/// Spawns `server` as a process, registered under `name` when given. Returns its mailbox.
pub fn spawn<S: GenServer>(node: &Node, name: Option<&str>, server: S) -> Mailbox {
    spawn_with(node, name, |_| server)
}

/// Like [`spawn`], building the server from its context (for servers that need their own
/// pid or a [`Replier`] up front).
pub fn spawn_with<S: GenServer>(
    node: &Node,
    name: Option<&str>,
    make: impl FnOnce(&Ctx) -> S,
) -> Mailbox {
    node.spawn_process(name, |pid| {
        let server = make(&Ctx { node, pid });
        Arc::new(Host {
            pid: pid.clone(),
            server: Mutex::new(server),
            pending: Mutex::new(VecDeque::new()),
        }) as Arc<dyn Dispatch>
    })
}

/// Hosts a server: whoever delivers a signal runs the handler in its own thread (no task hop,
/// no context switch per message). A thread that finds the server busy queues the signal and
/// returns at once; the thread inside the handler runs everything queued before it lets go.
/// So signals from one sender are handled in the order sent, the handler never runs twice at
/// once, and a handler that sends to itself does not deadlock.
struct Host<S> {
    pid: Pid,
    server: Mutex<S>,
    pending: Mutex<VecDeque<Signal>>,
}

impl<S: GenServer> Host<S> {
    /// Runs queued signals until the queue is empty and the server free.
    fn run_pending(&self, node: &Node) {
        loop {
            let mut server = match self.server.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                // The thread inside the handler will run our signal before it lets go.
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let mut ctx = Ctx {
                node,
                pid: &self.pid,
            };
            loop {
                let next = lock(&self.pending).pop_front();
                let Some(signal) = next else { break };
                dispatch(&mut ctx, &mut *server, signal);
            }
            drop(server);
            // A signal queued after our last look but before we let go would wait for the next
            // delivery: look again now that the server is free.
            if lock(&self.pending).is_empty() {
                return;
            }
        }
    }
}

impl<S: GenServer> Dispatch for Host<S> {
    fn dispatch(&self, node: &Node, signal: Signal) {
        lock(&self.pending).push_back(signal);
        self.run_pending(node);
    }

    fn dispatch_raw(&self, node: &Node, raw: &RawMessage) -> bool {
        let mut server = match self.server.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        // Signals queued earlier go first: run them, and leave this one to the decoding path.
        if !lock(&self.pending).is_empty() {
            drop(server);
            self.run_pending(node);
            return false;
        }
        let handled = server.handle_raw(
            &mut Ctx {
                node,
                pid: &self.pid,
            },
            raw,
        );
        drop(server);
        // Others may have queued signals while we held the server.
        if !lock(&self.pending).is_empty() {
            self.run_pending(node);
        }
        handled
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dispatch<S: GenServer>(ctx: &mut Ctx, server: &mut S, signal: Signal) {
    match signal {
        Signal::Message(term) => match classify(term) {
            Incoming::Call(caller, request) => {
                if let Some(reply) = server.handle_call(ctx, &caller, request) {
                    ctx.reply(&caller, reply);
                }
            }
            Incoming::Cast(request) => server.handle_cast(ctx, request),
            Incoming::Info(message) => server.handle_info(ctx, message),
        },
        Signal::Down {
            reference,
            pid,
            reason,
        } => server.handle_down(ctx, reference, pid, reason),
        Signal::Call { request, reply } => {
            let caller = Caller {
                pid: ctx.pid.clone(),
                tag: List::nil().into(),
                local: Some(std::sync::Arc::new(std::sync::Mutex::new(Some(reply)))),
            };
            if let Some(answer) = server.handle_call(ctx, &caller, request) {
                ctx.reply(&caller, answer);
            }
        }
    }
}

enum Incoming {
    Call(Caller, Term),
    Cast(Term),
    Info(Term),
}

fn is_atom(t: &Term, name: &str) -> bool {
    matches!(t, Term::Atom(Atom { name: n }) if n == name)
}

fn classify(term: Term) -> Incoming {
    let Term::Tuple(Tuple { elements }) = term else {
        return Incoming::Info(term);
    };
    match elements.len() {
        3 if is_atom(&elements[0], "$gen_call")
            && matches!(&elements[1], Term::Tuple(t) if t.elements.len() == 2 && matches!(t.elements[0], Term::Pid(_))) =>
        {
            let mut it = elements.into_iter();
            let (_, from, request) = match (it.next(), it.next(), it.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => unreachable!("length checked above"), // ok: len == 3 checked
            };
            let Term::Tuple(Tuple { elements: from }) = from else {
                unreachable!("shape checked above") // ok: matched as a 2-tuple above
            };
            let mut from = from.into_iter();
            match (from.next(), from.next()) {
                (Some(Term::Pid(pid)), Some(tag)) => Incoming::Call(Caller::new(pid, tag), request),
                _ => unreachable!("shape checked above"), // ok: matched above
            }
        }
        2 if is_atom(&elements[0], "$gen_cast") => {
            let request = elements
                .into_iter()
                .nth(1)
                .unwrap_or_else(|| List::nil().into());
            Incoming::Cast(request)
        }
        _ => Incoming::Info(Tuple { elements }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::ImproperList;

    #[test]
    fn alias_tags() {
        let r = Reference {
            node: Atom::from("a@h"),
            id: vec![1, 2, 3],
            creation: 7,
        };
        let tag: Term =
            ImproperList::from((vec![Atom::from("alias").into()], r.clone().into())).into();
        assert_eq!(alias_of(&tag), Some(&r));
        let nested: Term = ImproperList::from((vec![tag.clone()], Atom::from("x").into())).into();
        assert_eq!(alias_of(&nested), Some(&r));
        let plain: Term = r.clone().into();
        assert_eq!(alias_of(&plain), None);
    }
}
