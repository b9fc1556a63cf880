//! Routes one inbound control message: messages to mailboxes (by pid or registered name),
//! monitors (recorded per peer, see [`super::monitors`]; MONITOR_P on a missing process
//! answers `noproc` at once), links (recorded the same way), exit
//! signals, and SPAWN_REQUEST to the rpc service.
//!
//! Answers go only in shapes the peer negotiated: a peer without DIST_MONITOR gets no
//! MONITOR_P_EXIT, one without UNLINK_ID no UNLINK_ID_ACK, one without SPAWN no SPAWN_REPLY
//! (such a peer sending those requests anyway is broken; its request is dropped with a log).

use super::monitors::{Foreign, PeerPid, RefKey};
use super::{MonitorTarget, Node, Signal};
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
        Message::MonitorPExit(m) => node.remote_monitor_fired(peer, &m.reference, m.reason),
        Message::PayloadMonitorPExit(m) => node.remote_monitor_fired(peer, &m.reference, m.reason),
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
        | Message::SpawnReply(_)
        | Message::SpawnReplyTt(_)
        | Message::Tick => {}
    }
}
