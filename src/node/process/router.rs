//! Routes one inbound control message: messages to mailboxes (by pid or registered name),
//! monitors (recorded per peer, see [`super::monitors`]; MONITOR_P on a missing process
//! answers `noproc` at once), links (recorded the same way), exit
//! signals, SPAWN_REQUEST to the rpc service, and SPAWN_REPLY (with the spawned process's
//! `DOWN`) to the spawn request of ours it answers ([`super::spawn`]).
//!
//! Answers go only in shapes the peer negotiated: a peer without DIST_MONITOR gets no
//! MONITOR_P_EXIT, one without UNLINK_ID no UNLINK_ID_ACK, one without SPAWN no SPAWN_REPLY
//! (such a peer sending those requests anyway is broken; its request is dropped with a log).

use super::monitors::{Foreign, PeerPid, RefKey};
use super::{MonitorTarget, Node, Signal};
use crate::node::transport::altact;
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, Pid, PidOrAtom, Reference, Term};

fn noproc() -> Term {
    Atom::from("noproc").into()
}

fn deliver_to_pid(node: &Node, to: &Pid, message: Term) {
    match node.lookup_pid(to) {
        Some(mb) => {
            mb.deliver(node, Signal::Message(message));
        }
        None => tracing::debug!(
            node = %crate::etf::text::name(&to.node.name),
            id = to.id,
            "message to a pid that does not exist here: dropped"
        ),
    }
}

/// Delivers `message` to the process registered as `name` (dropped when there is none).
fn deliver_to_name(node: &Node, name: &str, message: Term) {
    match node.whereis(name) {
        Some(mb) => {
            mb.deliver(node, Signal::Message(message));
        }
        None => tracing::debug!(
            name = %crate::etf::text::name(name),
            "message to an unregistered name: dropped"
        ),
    }
}

/// Delivers an ALIAS_SEND to the process whose active alias it names; dropped when the alias
/// is not (or no longer) active, as BEAM drops a reply that arrives after its call ended.
fn deliver_to_alias(node: &Node, alias: &Reference, message: Term) {
    match node.alias_target(alias) {
        Some(mb) => mb.deliver(node, Signal::Message(message)),
        None => tracing::debug!("alias send to an inactive alias: dropped"),
    }
}

/// A linked process on `peer` exited: the link is gone and `to` gets the exit signal.
fn linked_exit(node: &Node, peer: &str, from: Pid, to: &Pid, reason: Term) {
    // No link (never made, or unlinked meanwhile): the signal has no effect, as in BEAM.
    if node.unlink_incoming(peer, to, &from) {
        node.deliver_exit(to, from, reason);
    }
}

/// Records a monitor from `peer`; false when the target does not exist (or the reference
/// cannot be one: more id words than any node makes).
fn monitor(node: &Node, peer: &str, from: &Pid, to: &PidOrAtom, reference: &Reference) -> bool {
    let Some(key) = RefKey::of(reference) else {
        tracing::debug!(
            words = reference.id.len(),
            "MONITOR_P with an oversized reference"
        );
        return false;
    };
    let foreign = (from.node.name != peer || reference.node.name != peer).then(|| {
        Box::new(Foreign {
            watcher: from.clone(),
            reference: reference.clone(),
        })
    });
    let watcher = PeerPid {
        id: from.id,
        serial: from.serial,
        creation: from.creation,
    };
    let target = match to {
        PidOrAtom::Pid(pid) => MonitorTarget::Pid(pid),
        PidOrAtom::Atom(name) => MonitorTarget::Name(&name.name),
    };
    node.monitor_incoming(peer, target, key, watcher, foreign)
}

/// Handles an ALTACT_SIG_SEND (op 37, OTP 28+) from `peer`: as the classic operation that
/// does the same (SEND_SENDER, ALIAS_SEND, REG_SEND, PAYLOAD_EXIT2, see
/// [`altact::Signal::into_message`]), so a priority signal is delivered as an ordinary one
/// (kvnode processes have no priority queue). An exit signal to an alias goes to the process
/// owning the alias while it is active, one to a name to the process registered under it;
/// dropped otherwise, as erts drops them.
pub fn handle_altact(node: &Node, peer: &str, signal: altact::Signal) {
    tracing::trace!(
        flags = signal.flags,
        priority = signal.is_priority(),
        "ALTACT_SIG_SEND"
    );
    let signal = match signal.into_message() {
        Ok(message) => return handle(node, peer, message),
        Err(signal) => *signal,
    };
    let target = match &signal.to {
        altact::To::Alias(alias) => node.alias_target(alias),
        altact::To::Name(name) => node.whereis(&name.name),
        altact::To::Pid(pid) => node.lookup_pid(pid),
    };
    match target {
        Some(mb) => mb.target.exit_signal(node, signal.from, signal.payload),
        None => {
            tracing::debug!("exit signal to an inactive alias or an unregistered name: dropped")
        }
    }
}

/// Handles one control message from `peer`.
pub fn handle(node: &Node, peer: &str, message: Message) {
    match message {
        Message::Send(m) => deliver_to_pid(node, &m.to_pid, m.message),
        Message::SendTt(m) => deliver_to_pid(node, &m.to_pid, m.message),
        Message::SendSender(m) => deliver_to_pid(node, &m.to_pid, m.message),
        Message::SendSenderTt(m) => deliver_to_pid(node, &m.to_pid, m.message),
        Message::RegSend(m) => deliver_to_name(node, &m.to_name.name, m.message),
        Message::RegSendTt(m) => deliver_to_name(node, &m.to_name.name, m.message),
        Message::AliasSend(m) => deliver_to_alias(node, &m.alias, m.message),
        Message::AliasSendTt(m) => deliver_to_alias(node, &m.alias, m.message),
        Message::MonitorP(m) => {
            if !node.peer_has(peer, DistributionFlags::DIST_MONITOR) {
                tracing::debug!("MONITOR_P from a peer without DIST_MONITOR: not answered");
            } else if !monitor(node, peer, &m.from_pid, &m.to_proc, &m.reference) {
                // A missing process answers at once, so `GenServer.call` exits `:noproc`.
                node.send_to_node(
                    peer,
                    Message::monitor_p_exit(m.to_proc, m.from_pid, m.reference, noproc()),
                );
            }
        }
        Message::DemonitorP(m) => {
            if let Some(key) = RefKey::of(&m.reference) {
                node.demonitor_incoming(peer, &key);
            }
        }
        // The DOWN of a process we had the peer spawn (a spawn request's monitor) goes to
        // that request; others to the monitors our processes placed.
        Message::MonitorPExit(m) => {
            if let Some(reason) = super::spawn::down(peer, &m.reference, m.reason) {
                node.remote_monitor_fired(peer, &m.reference, reason)
            }
        }
        Message::PayloadMonitorPExit(m) => {
            if let Some(reason) = super::spawn::down(peer, &m.reference, m.reason) {
                node.remote_monitor_fired(peer, &m.reference, reason)
            }
        }
        Message::SpawnReply(m) => super::spawn::reply(peer, &m.req_id, &m.flags, &m.result),
        Message::SpawnReplyTt(m) => super::spawn::reply(peer, &m.req_id, &m.flags, &m.result),
        Message::Link(m) => {
            if !node.link_incoming(peer, &m.to_pid, &m.from_pid) {
                node.send_to_node(peer, Message::exit(m.to_pid, m.from_pid, noproc()));
            }
        }
        Message::Unlink(m) => {
            node.unlink_incoming(peer, &m.to_pid, &m.from_pid);
        }
        Message::UnlinkId(m) => {
            node.unlink_incoming(peer, &m.to_pid, &m.from_pid);
            if node.peer_has(peer, DistributionFlags::UNLINK_ID) {
                node.send_to_node(peer, Message::unlink_id_ack(m.id, m.to_pid, m.from_pid));
            } else {
                tracing::debug!("UNLINK_ID from a peer without UNLINK_ID: not acknowledged");
            }
        }
        Message::SpawnRequest(_) | Message::SpawnRequestTt(_)
            if !node.peer_has(peer, DistributionFlags::SPAWN) =>
        {
            tracing::debug!("SPAWN_REQUEST from a peer without SPAWN: dropped");
        }
        Message::SpawnRequest(m) => crate::node::services::rpc::spawn_request(node, peer, m),
        Message::SpawnRequestTt(m) => crate::node::services::rpc::spawn_request(
            node,
            peer,
            erl_dist::message::SpawnRequest {
                req_id: m.req_id,
                from_pid: m.from_pid,
                group_leader: m.group_leader,
                mfa: m.mfa,
                opt_list: m.opt_list,
                arg_list: m.arg_list,
            },
        ),
        // A linked remote process exited: the link is gone, and the local process gets the
        // exit signal (the built-in processes trap exits and ignore it; a Rust `Process`
        // receives it).
        Message::Exit(m) => linked_exit(node, peer, m.from_pid, &m.to_pid, m.reason),
        Message::ExitTt(m) => linked_exit(node, peer, m.from_pid, &m.to_pid, m.reason),
        Message::PayloadExit(m) => linked_exit(node, peer, m.from_pid, &m.to_pid, m.reason),
        Message::PayloadExitTt(m) => linked_exit(node, peer, m.from_pid, &m.to_pid, m.reason),
        // `exit/2` on a local process.
        Message::Exit2(m) => node.deliver_exit(&m.to_pid, m.from_pid, m.reason),
        Message::Exit2Tt(m) => node.deliver_exit(&m.to_pid, m.from_pid, m.reason),
        Message::PayloadExit2(m) => node.deliver_exit(&m.to_pid, m.from_pid, m.reason),
        Message::PayloadExit2Tt(m) => node.deliver_exit(&m.to_pid, m.from_pid, m.reason),
        Message::UnlinkIdAck(_)
        | Message::NodeLink(_)
        | Message::GroupLeader(_)
        | Message::Tick => {}
    }
}

#[cfg(test)]
mod tests {
    //! The router against a node whose peer is registered in the connection table with a
    //! real outbox (no socket): what it delivers locally, and what it answers the peer, by
    //! decoding the frames that peer would receive.
    use super::*;
    use crate::node::Dispatch;
    use crate::node::transport::manager::ConnHandle;
    use std::sync::{Arc, Mutex};
    use tokio::io::AsyncReadExt;

    const PEER: &str = "peer@127.0.0.1";

    /// A process that records the messages it gets.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Term>>);

    impl Dispatch for Recorder {
        fn dispatch(&self, _: &Node, signal: Signal) {
            if let Signal::Message(term) = signal {
                self.0.lock().unwrap_or_else(|e| e.into_inner()).push(term);
            }
        }
    }

    impl Recorder {
        fn got(&self) -> Vec<Term> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    struct World {
        node: Node,
        conn: ConnHandle,
        threads: crate::node::transport::threads::Threads,
    }

    impl World {
        /// The router handles `message` as if it came from `PEER`.
        fn peer_sends(&self, message: Message) {
            handle(&self.node, PEER, message);
        }
    }

    impl Drop for World {
        fn drop(&mut self) {
            self.threads.stop();
        }
    }

    /// A node with `PEER` connected under `flags`.
    fn world(flags: DistributionFlags) -> World {
        let threads =
            crate::node::transport::threads::Threads::start(1, crate::etf::thread_stack_size())
                .expect("threads");
        let node = Node::new(
            crate::config::Config::new("t@127.0.0.1", "c"),
            1,
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
            threads.clone(),
        );
        let (conn, _) = node.manager().register(
            PEER,
            flags,
            1 << 20,
            tokio_util::sync::CancellationToken::new(),
        );
        World {
            node,
            conn,
            threads,
        }
    }

    fn full() -> DistributionFlags {
        crate::node::transport::handshake::local_flags()
    }

    /// What kvnode negotiates, less `flag`.
    fn without(flag: DistributionFlags) -> DistributionFlags {
        DistributionFlags::from_bits_truncate(full().bits() & !flag.bits())
    }

    /// A process on the peer.
    fn remote(id: u32) -> Pid {
        Pid::new(PEER, id, 0, 1)
    }

    fn remote_ref(n: u32) -> Reference {
        Reference {
            node: Atom::from(PEER),
            id: vec![n, 2, 3],
            creation: 1,
        }
    }

    fn spawn_recorder(node: &Node, name: Option<&str>) -> (crate::node::Mailbox, Arc<Recorder>) {
        let rec = Arc::new(Recorder::default());
        let rec2 = rec.clone();
        let mb = node.spawn_process(name, move |_| rec2);
        (mb, rec)
    }

    /// The control messages queued for the peer, in order (the outbox is drained).
    fn sent(conn: &ConnHandle) -> Vec<Message> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let bytes = rt.block_on(async {
            let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
            conn.outbox.flush_all(&a).await.expect("flush");
            drop(a);
            let mut bytes = Vec::new();
            b.read_to_end(&mut bytes).await.expect("read");
            bytes
        });
        let mut out = Vec::new();
        let mut rest = &bytes[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let body = &rest[4..4 + len];
            out.push(
                crate::node::transport::connection::decode_frame(
                    body,
                    &crate::etf::Limits::default(),
                )
                .expect("a frame kvnode wrote decodes"),
            );
            rest = &rest[4 + len..];
        }
        assert!(rest.is_empty(), "a partial frame in the outbox");
        out
    }

    fn reason_is(term: &Term, atom: &str) -> bool {
        matches!(term, Term::Atom(a) if a.name == atom)
    }

    #[test]
    fn sends_go_to_the_pid_or_the_registered_name() {
        let w = world(full());
        let (named, named_rec) = spawn_recorder(&w.node, Some("named"));
        let (_other, other_rec) = spawn_recorder(&w.node, None);
        w.peer_sends(Message::reg_send(
            remote(1),
            Atom::from("named"),
            Atom::from("by_name").into(),
        ));
        w.peer_sends(Message::send(
            named.pid.clone(),
            Atom::from("by_pid").into(),
        ));
        // Unknown name and unknown pid: dropped, nobody else gets them, nothing goes back.
        w.peer_sends(Message::reg_send(
            remote(1),
            Atom::from("nobody"),
            Atom::from("x").into(),
        ));
        w.peer_sends(Message::send(w.node.new_pid(), Atom::from("y").into()));
        let got = named_rec.got();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(reason_is(&got[0], "by_name") && reason_is(&got[1], "by_pid"));
        assert!(other_rec.got().is_empty());
        assert!(sent(&w.conn).is_empty());
    }

    #[test]
    fn monitor_on_a_missing_process_answers_noproc_at_once() {
        let w = world(full());
        w.peer_sends(Message::monitor_p(
            remote(7),
            PidOrAtom::Atom(Atom::from("missing")),
            remote_ref(1),
        ));
        let out = sent(&w.conn);
        assert_eq!(out.len(), 1, "{out:?}");
        let Message::MonitorPExit(m) = &out[0] else {
            panic!("expected MONITOR_P_EXIT, got {:?}", out[0])
        };
        assert!(reason_is(&m.reason, "noproc"));
        assert_eq!(m.to_pid, remote(7));
        assert_eq!(m.reference, remote_ref(1));
        assert_eq!(m.from_proc, PidOrAtom::Atom(Atom::from("missing")));
    }

    #[test]
    fn monitor_from_a_peer_without_dist_monitor_is_not_answered() {
        let w = world(without(DistributionFlags::DIST_MONITOR));
        w.peer_sends(Message::monitor_p(
            remote(7),
            PidOrAtom::Atom(Atom::from("missing")),
            remote_ref(1),
        ));
        assert!(sent(&w.conn).is_empty());
    }

    #[test]
    fn a_recorded_monitor_fires_on_exit_and_a_demonitor_removes_it() {
        let w = world(full());
        let (a, _) = spawn_recorder(&w.node, Some("a"));
        let (b, _) = spawn_recorder(&w.node, Some("b"));
        // By name on `a`, by pid on `b`; the second monitor on `b` is taken back.
        w.peer_sends(Message::monitor_p(
            remote(7),
            PidOrAtom::Atom(Atom::from("a")),
            remote_ref(1),
        ));
        w.peer_sends(Message::monitor_p(
            remote(8),
            PidOrAtom::Pid(b.pid.clone()),
            remote_ref(2),
        ));
        w.peer_sends(Message::monitor_p(
            remote(9),
            PidOrAtom::Pid(b.pid.clone()),
            remote_ref(3),
        ));
        w.peer_sends(Message::demonitor_p(
            remote(9),
            PidOrAtom::Pid(b.pid.clone()),
            remote_ref(3),
        ));
        assert!(sent(&w.conn).is_empty(), "live targets: no answer yet");
        w.node
            .exit_process(&a.pid, Atom::from("shutdown").into(), None);
        w.node.exit_process(&b.pid, Atom::from("boom").into(), None);
        let out = sent(&w.conn);
        assert_eq!(out.len(), 2, "{out:?}");
        let fired: Vec<_> = out
            .iter()
            .map(|m| match m {
                Message::MonitorPExit(m) => {
                    (m.from_proc.clone(), m.to_pid.clone(), m.reference.clone())
                }
                other => panic!("expected MONITOR_P_EXIT, got {other:?}"),
            })
            .collect();
        assert_eq!(
            fired[0],
            (PidOrAtom::Atom(Atom::from("a")), remote(7), remote_ref(1)),
            "a monitor by name names the process in its DOWN"
        );
        assert_eq!(
            fired[1],
            (PidOrAtom::Pid(b.pid.clone()), remote(8), remote_ref(2))
        );
    }

    #[test]
    fn link_to_a_missing_pid_answers_exit_noproc() {
        let w = world(full());
        let (live, _) = spawn_recorder(&w.node, None);
        w.peer_sends(Message::link(remote(5), live.pid.clone()));
        assert!(sent(&w.conn).is_empty(), "a live process takes the link");
        let gone = w.node.new_pid();
        w.peer_sends(Message::link(remote(5), gone.clone()));
        let out = sent(&w.conn);
        assert_eq!(out.len(), 1, "{out:?}");
        let Message::Exit(m) = &out[0] else {
            panic!("expected EXIT, got {:?}", out[0])
        };
        assert_eq!((&m.from_pid, &m.to_pid), (&gone, &remote(5)));
        assert!(reason_is(&m.reason, "noproc"));
        // The live link holds: its exit signals the linked remote process.
        w.node
            .exit_process(&live.pid, Atom::from("bye").into(), None);
        let out = sent(&w.conn);
        assert!(
            matches!(&out[..], [Message::Exit(m)] if m.to_pid == remote(5) && reason_is(&m.reason, "bye")),
            "{out:?}"
        );
    }

    #[test]
    fn unlink_id_is_acknowledged_only_to_peers_that_negotiated_it() {
        for (flags, acked) in [
            (full(), true),
            (without(DistributionFlags::UNLINK_ID), false),
        ] {
            let w = world(flags);
            let (p, _) = spawn_recorder(&w.node, None);
            w.peer_sends(Message::link(remote(5), p.pid.clone()));
            let id: Term = erl_dist::term::FixInteger::from(42).into();
            w.peer_sends(Message::unlink_id(id.clone(), remote(5), p.pid.clone()));
            let out = sent(&w.conn);
            if acked {
                assert!(
                    matches!(&out[..], [Message::UnlinkIdAck(m)] if m.id == id && m.to_pid == remote(5)),
                    "{out:?}"
                );
            } else {
                assert!(out.is_empty(), "{out:?}");
            }
            // The link is gone either way: the exit signals nobody.
            w.node.exit_process(&p.pid, Atom::from("bye").into(), None);
            assert!(sent(&w.conn).is_empty());
        }
    }

    #[test]
    fn exit_signals_to_built_in_processes_are_ignored() {
        let w = world(full());
        let (p, rec) = spawn_recorder(&w.node, Some("svc"));
        w.peer_sends(Message::exit2(
            remote(1),
            p.pid.clone(),
            Atom::from("kill").into(),
        ));
        assert!(w.node.whereis("svc").is_some(), "still registered");
        assert!(rec.got().is_empty());
        assert!(sent(&w.conn).is_empty());
    }
}
