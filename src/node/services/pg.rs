//! `pg` scopes on a visible node (`--pg SCOPE:GROUP`): kvnode runs a process registered under
//! the scope's name that speaks `pg`'s overlay protocol (v0, which OTP 23–27 speak and OTP 29's
//! `pg` still answers), so `:pg.get_members(Scope, Group)` on BEAM nodes running that scope
//! lists kvnode's members (the KV server), and drops them when kvnode goes away.
//!
//! Wire shapes (pg.erl; /work/shared/VISIBLE-NODE.md §3):
//! - a peer scope finds us with `{discover, PeerScope}` (OTP 29: `{discover, PeerScope, 1}`),
//!   on its start and on each nodeup; we answer `PeerScope ! {'$gen_cast', {sync, Me,
//!   [{Group, [Pid]}]}}` and, the first time, monitor it and send `{discover, Me}` back;
//! - on each nodeup of a visible peer we send `{discover, Me}` to `{Scope, Peer}` (a scope
//!   started before kvnode's connection; dropped by the peer when it runs no such scope);
//! - when a member exits we send `{leave, Me, Pid, [Group]}` to every peer scope.
//!
//! kvnode keeps only the set of peer scope processes ([`MAX_PG_PEERS`] per scope), not the
//! peers' memberships: nothing on kvnode asks for them. Their `sync`, `join` and `leave` are
//! accepted and dropped. Only the exact shapes above are ever sent: OTP 25/27's `pg` crashes
//! (`badarg`) on a message it does not know.

use crate::node::Node;
use crate::node::process::{Process, Received};
use erl_dist::term::{Atom, List, Pid, Reference, Term, Tuple};
use std::collections::HashMap;

/// Most peer scope processes one kvnode scope keeps (one per node running the scope). A
/// `discover` beyond it is answered with our `sync` but the peer is not remembered (no
/// `leave` reaches it later; its members of ours go when the connection does).
pub const MAX_PG_PEERS: usize = 10_000;

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

/// Starts a scope process registered as `scope` on `node`, with `pid` a member of each of
/// `groups`. Logged and skipped when the name is taken.
pub fn start_scope(node: &Node, scope: &str, groups: Vec<String>, pid: Pid) {
    let process = match node.process(Some(scope)) {
        Ok(p) => p,
        Err(error) => {
            tracing::warn!(scope = %crate::etf::text::name(scope), %error, "pg: cannot start the scope process");
            return;
        }
    };
    let member_monitor = process.monitor(pid.clone());
    let scope_proc = Scope {
        node: node.clone(),
        name: scope.to_owned(),
        process,
        groups,
        member: Some(pid),
        member_monitor,
        peers: HashMap::new(),
    };
    let events = node.monitor_nodes();
    let shutdown = node.shutdown_token().clone();
    node.tracker().spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = scope_proc.run(events) => {}
        }
    });
}

struct Scope {
    node: Node,
    name: String,
    process: Process,
    groups: Vec<String>,
    /// The member (None once it exited).
    member: Option<Pid>,
    member_monitor: Reference,
    /// Peer scope processes -> our monitor on each.
    peers: HashMap<Pid, Reference>,
}

impl Scope {
    async fn run(mut self, mut events: crate::node::NodeEvents) {
        // Scopes on peers already connected (none on a fresh node).
        for peer in self.node.manager().connected() {
            self.discover_on(&peer);
        }
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(crate::node::NodeEvent::Up(peer)) => self.discover_on(&peer),
                    Some(_) => {}
                    None => return,
                },
                item = self.process.recv() => self.handle(item),
            }
        }
    }

    fn me(&self) -> Term {
        self.process.pid().clone().into()
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

    /// `[{Group, [Pid]}]`: what `sync` carries.
    fn local_groups(&self) -> Term {
        let groups = match &self.member {
            Some(pid) => self
                .groups
                .iter()
                .map(|g| tuple(vec![atom(g), List::from(vec![pid.clone().into()]).into()]))
                .collect(),
            None => Vec::new(),
        };
        List::from(groups).into()
    }

    fn handle(&mut self, item: Received) {
        match item {
            Received::Message(message) => self.message(message),
            Received::Down { reference, .. } => {
                if reference == self.member_monitor {
                    self.member_gone();
                } else {
                    self.peers.retain(|_, r| *r != reference);
                }
            }
            _ => {}
        }
    }

    fn message(&mut self, message: Term) {
        let Term::Tuple(Tuple { elements }) = &message else {
            return;
        };
        match elements.as_slice() {
            // {discover, Peer} (v0) or {discover, Peer, Vsn} (OTP 29): answered in v0.
            [Term::Atom(t), Term::Pid(peer), ..] if t.name == "discover" && elements.len() <= 3 => {
                let sync = tuple(vec![
                    atom("$gen_cast"),
                    tuple(vec![atom("sync"), self.me(), self.local_groups()]),
                ]);
                self.process.send(peer.clone(), sync);
                if !self.peers.contains_key(peer) {
                    if self.peers.len() >= MAX_PG_PEERS {
                        tracing::warn!(limit = MAX_PG_PEERS, scope = %crate::etf::text::name(&self.name), "pg: too many peer scopes; this one is not remembered");
                        return;
                    }
                    let mref = self.process.monitor(peer.clone());
                    self.peers.insert(peer.clone(), mref);
                    self.process
                        .send(peer.clone(), tuple(vec![atom("discover"), self.me()]));
                }
            }
            // Their sync, join and leave: accepted, not kept.
            _ => tracing::trace!(message = %crate::etf::summary(&message), "pg: message dropped"),
        }
    }

    fn member_gone(&mut self) {
        let Some(pid) = self.member.take() else {
            return;
        };
        let groups: Vec<Term> = self.groups.iter().map(|g| atom(g)).collect();
        let leave = tuple(vec![
            atom("leave"),
            self.me(),
            pid.into(),
            List::from(groups).into(),
        ]);
        for peer in self.peers.keys() {
            self.process.send(peer.clone(), leave.clone());
        }
    }
}
