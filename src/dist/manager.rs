//! The connection manager: peer node name -> its connection, or the frames waiting for a
//! connection that is being dialed. Decides simultaneous connects as OTP does.
//!
//! One `std::sync::Mutex` guards the table; it is held only for map operations, never across
//! an `.await` or a socket write (frames are handed to the connection's bounded writer queue
//! by appending them to its bounded [`Outbox`]).

use super::Frame;
use super::outbox::Outbox;
use erl_dist::DistributionFlags;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Frames queued for a peer that is not connected yet are capped at this many; more are dropped.
pub const MAX_PENDING_FRAMES: usize = 65_536;

/// The sending side of an established connection.
#[derive(Clone)]
pub struct ConnHandle {
    /// Unique id of this connection (a reconnect gets a new one).
    pub id: u64,
    /// Flags both sides agreed on.
    pub flags: DistributionFlags,
    /// Its outbound bytes.
    pub outbox: Arc<Outbox>,
    cancel: CancellationToken,
}

impl ConnHandle {
    /// Closes the connection.
    pub fn close(&self) {
        self.cancel.cancel();
    }
}

enum Slot {
    Up(ConnHandle),
    Pending { queue: Vec<Frame>, dialing: bool },
}

/// Returned by [`Manager::send`] when the caller must start dialing the peer.
#[derive(Debug)]
pub struct DialTicket(());

/// What to answer a peer that connects to us (`recv_status` of the handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go on (`ok`).
    Ok,
    /// We were dialing that peer too and give way (`ok_simultaneous`).
    OkSimultaneous,
    /// We were dialing that peer too and our attempt wins (`nok`).
    Nok,
}

/// peer node name -> connection state.
#[derive(Default)]
pub struct Manager {
    slots: Mutex<HashMap<String, Slot>>,
    next_id: AtomicU64,
    changed: Notify,
}

impl Manager {
    /// Queues `frame` for `peer`. Returns a ticket when nobody is dialing the peer yet: the
    /// caller must then dial it (see [`super::dial`]).
    pub fn send(&self, peer: &str, frame: Frame) -> Option<DialTicket> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(peer) {
            Some(Slot::Up(conn)) => {
                if conn.outbox.push_owned(frame).is_err() {
                    tracing::warn!(%peer, "peer is not reading: its outbound buffer is full, disconnecting it");
                    conn.cancel.cancel();
                }
                None
            }
            Some(Slot::Pending { queue, dialing }) => {
                if queue.len() < MAX_PENDING_FRAMES {
                    queue.push(frame);
                } else {
                    tracing::warn!(%peer, "too many messages waiting for a connection: dropping one");
                }
                if *dialing {
                    None
                } else {
                    *dialing = true;
                    Some(DialTicket(()))
                }
            }
            None => {
                slots.insert(
                    peer.to_owned(),
                    Slot::Pending {
                        queue: vec![frame],
                        dialing: true,
                    },
                );
                Some(DialTicket(()))
            }
        }
    }

    /// Makes sure `peer` is connected or being dialed, without queueing a frame (for messages
    /// whose shape depends on the peer's flags: they wait in the node until it connects).
    /// Returns a ticket when the caller must dial it, as [`Manager::send`] does.
    pub fn connect(&self, peer: &str) -> Option<DialTicket> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get_mut(peer) {
            Some(Slot::Up(_)) | Some(Slot::Pending { dialing: true, .. }) => None,
            Some(Slot::Pending { dialing, .. }) => {
                *dialing = true;
                Some(DialTicket(()))
            }
            None => {
                slots.insert(
                    peer.to_owned(),
                    Slot::Pending {
                        queue: Vec::new(),
                        dialing: true,
                    },
                );
                Some(DialTicket(()))
            }
        }
    }

    /// The flags agreed with a connected peer.
    pub fn peer_flags(&self, peer: &str) -> Option<DistributionFlags> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get(peer) {
            Some(Slot::Up(conn)) => Some(conn.flags),
            _ => None,
        }
    }

    /// Names of the connected peers.
    pub fn connected(&self) -> Vec<String> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Up(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Decides what to answer `peer`, which is connecting to us (`local` is our node name).
    /// An existing connection to the same peer is replaced: the peer restarted or lost it.
    pub fn admit(&self, local: &str, peer: &str) -> Admission {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        match slots.get(peer) {
            Some(Slot::Pending { dialing: true, .. }) => {
                // OTP (dist_util): the node with the greater name keeps its own attempt.
                if local > peer {
                    Admission::Nok
                } else {
                    Admission::OkSimultaneous
                }
            }
            _ => Admission::Ok,
        }
    }

    /// Registers an established connection; frames queued for the peer go to it first.
    /// Returns the connection it replaced, if any.
    pub fn register(
        &self,
        peer: &str,
        flags: DistributionFlags,
        max_outbound_bytes: usize,
        cancel: CancellationToken,
    ) -> (ConnHandle, Option<ConnHandle>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let handle = ConnHandle {
            id,
            flags,
            outbox: Arc::new(Outbox::new(id, max_outbound_bytes)),
            cancel,
        };
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let old = slots.insert(peer.to_owned(), Slot::Up(handle.clone()));
        let replaced = match old {
            Some(Slot::Pending { queue, .. }) => {
                for frame in queue {
                    if handle.outbox.push_owned(frame).is_err() {
                        tracing::warn!(%peer, "outbound buffer full while flushing queued messages");
                        break;
                    }
                }
                None
            }
            Some(Slot::Up(old)) => Some(old),
            None => None,
        };
        drop(slots);
        self.changed.notify_waiters();
        (handle, replaced)
    }

    /// Removes the connection `id` of `peer` (if it is still the registered one).
    /// Returns true if it was.
    pub fn unregister(&self, peer: &str, id: u64) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let current = matches!(slots.get(peer), Some(Slot::Up(c)) if c.id == id);
        if current {
            slots.remove(peer);
        }
        drop(slots);
        self.changed.notify_waiters();
        current
    }

    /// A dial attempt failed. Returns true if the queued frames were dropped (nobody else
    /// connected meanwhile), i.e. the peer is down from our side.
    pub fn dial_failed(&self, peer: &str) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let pending = matches!(slots.get(peer), Some(Slot::Pending { .. }));
        if pending {
            slots.remove(peer);
        }
        drop(slots);
        self.changed.notify_waiters();
        pending
    }

    /// Marks a pending peer as not being dialed (we lost a simultaneous connect and wait for the
    /// peer's own connection to arrive).
    pub fn stop_dialing(&self, peer: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Slot::Pending { dialing, .. }) = slots.get_mut(peer) {
            *dialing = false;
        }
    }

    /// Is `peer` connected?
    pub fn is_up(&self, peer: &str) -> bool {
        self.peer_flags(peer).is_some()
    }

    /// A future that resolves at the next change of the table (a connection registered or
    /// went away). Create it (and `enable` it) before checking the state to not miss a change.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.values() {
            if let Slot::Up(conn) = slot {
                conn.cancel.cancel();
            }
        }
    }
}
