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
        Message::AliasSend(_) | Message::AliasSendTt(_) => {
            tracing::debug!("alias send to an alias this node never created: dropped");
        }
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
        Message::Unlink(m) => node.unlink_incoming(peer, &m.to_pid, &m.from_pid),
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
        // A linked remote process exited: the link is gone (the built-in processes trap
        // exits, so nothing else happens).
        Message::Exit(m) => node.unlink_incoming(peer, &m.to_pid, &m.from_pid),
        Message::ExitTt(m) => node.unlink_incoming(peer, &m.to_pid, &m.from_pid),
        Message::PayloadExit(m) => node.unlink_incoming(peer, &m.to_pid, &m.from_pid),
        Message::PayloadExitTt(m) => node.unlink_incoming(peer, &m.to_pid, &m.from_pid),
        Message::Exit2(_)
        | Message::Exit2Tt(_)
        | Message::PayloadExit2(_)
        | Message::PayloadExit2Tt(_) => {
            tracing::debug!("exit signal to a built-in process: ignored (they trap exits)");
        }
        Message::UnlinkIdAck(_)
        | Message::NodeLink(_)
        | Message::GroupLeader(_)
        | Message::SpawnReply(_)
        | Message::SpawnReplyTt(_)
        | Message::Tick => {}
    }
}
