//! Outbound SPAWN_REQUEST: a [`Process`] asks a peer to spawn a process running `M:F(Args)`
//! and monitors it, as `erlang:spawn_request/5` with the `monitor` option does. This is what
//! `erpc:call/5` is made of (OTP's erpc.erl):
//!
//! ```erlang
//! ReqId = spawn_request(N, erpc, execute_call, [Ref, M, F, A], [{reply, error_only}, monitor]),
//! receive
//!     {spawn_reply, ReqId, error, Reason} -> ...;          % could not spawn
//!     {'DOWN', ReqId, process, _Pid, Reason} -> ...       % {Ref, return, V} | {Ref, throw, T}
//! end                                                     % | {Ref, exit, R} | {Ref, error, R, Stack}
//! ```
//!
//! On the wire: SPAWN_REQUEST (op 29) goes out with the request reference; the peer answers
//! SPAWN_REPLY (op 31, routed here by [`reply`]) with the new pid (flag bit 2 set: the
//! monitor is in place) or an error atom, and later MONITOR_P_EXIT whose reference is the
//! request reference (routed here by [`down`]) with the spawned process's exit reason.
//! Requests in flight are kept in one table for the whole program, keyed by the request
//! reference (unique per node: it names the node and its creation), and leave it when their
//! [`SpawnRequest`] is dropped. A request to a node that goes down ends with
//! [`SpawnEvent::NoConnection`].

use super::{NodeEvent, NodeEvents, Process};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, FixInteger, List, Mfa, Pid, PidOrAtom, Reference, Term};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use tokio::sync::mpsc;

/// Events one spawn request can get: a reply and a `DOWN`. The channel holds them all.
const EVENTS_PER_REQUEST: usize = 4;

/// What happened to a spawn request.
#[derive(Debug, Clone, PartialEq)]
pub enum SpawnEvent {
    /// The peer spawned the process (`{spawn_reply, ReqId, ok, Pid}`); `monitored` says
    /// whether it placed the monitor asked for.
    Spawned {
        /// The new process.
        pid: Pid,
        /// Whether the monitor is in place (a `DOWN` will follow).
        monitored: bool,
    },
    /// The peer could not spawn it (`{spawn_reply, ReqId, error, Reason}`: `badopt`,
    /// `notsup`, `system_limit`, ...).
    Refused(Term),
    /// The monitored process exited with this reason.
    Down(Term),
    /// The connection to the peer went down (`noconnection`).
    NoConnection,
}

/// Why a spawn request could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpawnRequestError {
    /// The peer is not connected.
    #[error("not connected to {0}")]
    NotConnected(String),
    /// The peer did not negotiate DFLAG_SPAWN (old or non-BEAM nodes): use `rex`.
    #[error("{0} does not support spawn requests")]
    NotSupported(String),
}

struct Pending {
    peer: String,
    events: mpsc::Sender<SpawnEvent>,
}

static PENDING: LazyLock<Mutex<HashMap<Reference, Pending>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn pending() -> std::sync::MutexGuard<'static, HashMap<Reference, Pending>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands `event` to the request `req_id` if `peer` is the node it went to. False when no
/// such request is in flight.
fn deliver(peer: &str, req_id: &Reference, event: impl FnOnce() -> SpawnEvent) -> bool {
    let table = pending();
    match table.get(req_id) {
        Some(p) if p.peer == peer => {
            let _ = p.events.try_send(event());
            true
        }
        _ => false,
    }
}

/// Router hook: a SPAWN_REPLY from `peer`. Dropped when it answers no request of ours.
pub(crate) fn reply(peer: &str, req_id: &Reference, flags: &FixInteger, result: &PidOrAtom) {
    let handled = deliver(peer, req_id, || match result {
        PidOrAtom::Pid(pid) => SpawnEvent::Spawned {
            pid: pid.clone(),
            monitored: flags.value & 2 != 0,
        },
        PidOrAtom::Atom(reason) => SpawnEvent::Refused(reason.clone().into()),
    });
    if !handled {
        tracing::debug!("SPAWN_REPLY for no spawn request in flight: dropped");
    }
}

/// Router hook: a MONITOR_P_EXIT from `peer`. Taken (None) when its reference is that of a
/// spawn request in flight; else the reason is handed back for the ordinary monitors.
pub(crate) fn down(peer: &str, reference: &Reference, reason: Term) -> Option<Term> {
    let table = pending();
    match table.get(reference) {
        Some(p) if p.peer == peer => {
            let _ = p.events.try_send(SpawnEvent::Down(reason));
            None
        }
        _ => Some(reason),
    }
}

/// A spawn request in flight (see [`Process::spawn_request`]); dropping it forgets the
/// request (a later reply or `DOWN` is dropped).
pub struct SpawnRequest {
    req_id: Reference,
    peer: String,
    events: mpsc::Receiver<SpawnEvent>,
    node_events: NodeEvents,
    ended: bool,
}

impl std::fmt::Debug for SpawnRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpawnRequest")
            .field("req_id", &self.req_id)
            .field("peer", &self.peer)
            .finish()
    }
}

impl SpawnRequest {
    /// The next event of the request; after [`SpawnEvent::Refused`], [`SpawnEvent::Down`]
    /// or [`SpawnEvent::NoConnection`] there is none (it waits forever: put a timeout
    /// around it).
    pub async fn next(&mut self) -> SpawnEvent {
        if self.ended {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                event = self.events.recv() => {
                    // The sender lives in the table as long as we do.
                    let Some(event) = event else { return std::future::pending().await };
                    if !matches!(event, SpawnEvent::Spawned { .. }) {
                        self.ended = true;
                    }
                    return event;
                }
                event = self.node_events.recv() => match event {
                    Some(NodeEvent::Down(node)) if node == self.peer => {
                        self.ended = true;
                        return SpawnEvent::NoConnection;
                    }
                    Some(_) => {}
                    None => return std::future::pending().await,
                },
            }
        }
    }
}

impl Drop for SpawnRequest {
    fn drop(&mut self) {
        pending().remove(&self.req_id);
    }
}

impl Process {
    /// Asks `peer` (connected, with DFLAG_SPAWN) to spawn a process running
    /// `module:function(args)` and to monitor it for this process, as
    /// `erlang:spawn_request(Peer, M, F, A, [monitor])`. This process is the new process's
    /// group leader. The events come from [`SpawnRequest::next`]: the reply, then the `DOWN`.
    pub(crate) fn spawn_request(
        &self,
        peer: &str,
        module: &str,
        function: &str,
        args: Vec<Term>,
    ) -> Result<SpawnRequest, SpawnRequestError> {
        let node = self.node();
        // Subscribed before the connection is checked: a node-down after the check is then
        // seen by `next` (subscribed after it, one between the two would be missed and the
        // request would wait out its caller's deadline).
        let node_events = node.monitor_nodes();
        let Some(flags) = node.manager().peer_flags(peer) else {
            return Err(SpawnRequestError::NotConnected(peer.to_owned()));
        };
        if !flags.contains(DistributionFlags::SPAWN) {
            return Err(SpawnRequestError::NotSupported(peer.to_owned()));
        }
        let req_id = node.new_ref();
        let (tx, events) = mpsc::channel(EVENTS_PER_REQUEST);
        pending().insert(
            req_id.clone(),
            Pending {
                peer: peer.to_owned(),
                events: tx,
            },
        );
        let arity = i32::try_from(args.len()).unwrap_or(i32::MAX);
        node.send_to_node(
            peer,
            Message::spawn_request(
                req_id.clone(),
                self.pid().clone(),
                self.pid().clone(),
                Mfa {
                    module: Atom::from(module),
                    function: Atom::from(function),
                    arity: FixInteger::from(arity),
                },
                List::from(vec![Term::from(Atom::from("monitor"))]),
                List::from(args),
            ),
        );
        Ok(SpawnRequest {
            req_id,
            peer: peer.to_owned(),
            events,
            node_events,
            ended: false,
        })
    }
}
