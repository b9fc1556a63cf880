//! The connection manager: peer node name -> its connection, or the frames waiting for a
//! connection that is being dialed. Decides simultaneous connects as OTP does.
//!
//! What waits for a peer being dialed is bounded three ways ([`PendingLimits`]): bytes per
//! peer, bytes over all peers, and dials in flight. A peer that accepts TCP but never
//! answers the handshake holds its queue for a whole `--handshake-timeout`; without these
//! bounds, replies addressed to it (from callers whose `From` pid names it) grew memory
//! without limit. What does not fit is dropped, like a send to a node that is down.
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Frames queued for a peer that is not connected yet are capped at this many; more are dropped.
pub const MAX_PENDING_FRAMES: usize = 65_536;

/// Default `--max-pending-bytes`: bytes of frames waiting, over all peers being dialed. Small
/// next to the outbox of a connected peer: frames wait only while a dial is in flight (at
/// most `--handshake-timeout`), and only for peers kvnode is not connected to (replies to a
/// caller whose `From` pid sits on another node, monitors on such pids).
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// Default `--max-dials`: dials (EPMD lookup and handshake) in flight at once. A send to one
/// more unconnected node is dropped and that node counts as down (monitors on it fire
/// `noconnection`), as when its dial fails.
pub const DEFAULT_MAX_DIALS: usize = 128;

/// The bounds on frames waiting for peers being dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingLimits {
    /// Bytes queued for one peer (kvnode uses a connected peer's outbox bound: 2 ×
    /// `--max-message-size` + 1 MiB, capped by `total_bytes`).
    pub per_peer_bytes: usize,
    /// Bytes queued over all peers (`--max-pending-bytes`).
    pub total_bytes: usize,
    /// Dials in flight (`--max-dials`).
    pub max_dials: usize,
}

impl Default for PendingLimits {
    fn default() -> Self {
        PendingLimits {
            per_peer_bytes: crate::config::DEFAULT_MAX_MESSAGE_SIZE * 2 + (1 << 20),
            total_bytes: DEFAULT_MAX_PENDING_BYTES,
            max_dials: DEFAULT_MAX_DIALS,
        }
    }
}

impl PendingLimits {
    /// The limits a configuration asks for.
    pub fn from_config(config: &crate::config::Config) -> Self {
        PendingLimits {
            per_peer_bytes: config
                .max_message_size
                .saturating_mul(2)
                .saturating_add(1 << 20),
            total_bytes: config.max_pending_bytes,
            max_dials: config.max_dials,
        }
    }
}

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
    Pending {
        queue: Vec<Frame>,
        /// Bytes in `queue`.
        bytes: usize,
        dialing: bool,
        /// Frames dropped because a bound was hit (logged once per dial).
        dropped: usize,
    },
}

/// Returned by [`Manager::send`] when the caller must start dialing the peer. It counts
/// against `--max-dials` until dropped: drop it once the handshake is over.
#[derive(Debug)]
pub struct DialTicket(Arc<AtomicUsize>);

impl Drop for DialTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`Manager::send`] did with a frame.
#[derive(Debug)]
pub enum Sent {
    /// Handed to the connection, queued for a dial in flight, or dropped because a bound on
    /// the queue was hit (logged).
    Done,
    /// Queued; nobody dials the peer yet: the caller must (see [`super::dial`]).
    Dial(DialTicket),
    /// Dropped: the peer is not connected and `--max-dials` dials are in flight. The peer
    /// counts as down: the caller fires its monitors as for a failed dial.
    Refused,
}

/// What [`Manager::reserve_pending`] did.
#[derive(Debug)]
pub enum Reserve {
    /// Counted: the message may wait.
    Reserved,
    /// The peer is connected meanwhile, with these flags: send the message now.
    Up(DistributionFlags),
    /// A bound is hit (logged), or no dial is in flight for the peer: drop the message like a
    /// send to a down node.
    Full,
}

/// Counts `len` more bytes waiting for `peer` (whose slot holds `queued` frames of `bytes`)
/// when the bounds allow, and says so; otherwise logs the drop (a warning for the first of a
/// dial, debug after) and counts it in `dropped`.
fn admit_pending(
    peer: &str,
    limits: PendingLimits,
    queued: usize,
    bytes: &mut usize,
    dropped: &mut usize,
    total: &mut usize,
    len: usize,
) -> bool {
    let why = if queued >= MAX_PENDING_FRAMES {
        "too many messages are waiting for it"
    } else if *bytes + len > limits.per_peer_bytes {
        "its queue is full (bytes)"
    } else if *total + len > limits.total_bytes {
        "--max-pending-bytes are waiting for nodes being dialed"
    } else {
        *bytes += len;
        *total += len;
        return true;
    };
    if *dropped == 0 {
        tracing::warn!(
            %peer,
            bytes = len,
            queued_bytes = *bytes,
            total_pending_bytes = *total,
            "dropping a message for a node being dialed: {why} (further drops for it are logged at debug)"
        );
    } else {
        tracing::debug!(%peer, bytes = len, dropped = *dropped + 1, "dropping a message for a node being dialed: {why}");
    }
    *dropped += 1;
    false
}

/// The table and the bytes waiting in its `Pending` slots.
#[derive(Default)]
struct Table {
    slots: HashMap<String, Slot>,
    pending_bytes: usize,
}

impl Table {
    /// Removes `peer`'s slot, keeping the byte count right.
    fn remove(&mut self, peer: &str) -> Option<Slot> {
        let slot = self.slots.remove(peer);
        if let Some(Slot::Pending { bytes, .. }) = &slot {
            self.pending_bytes -= bytes;
        }
        slot
    }
}

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

/// Outcomes of outbound dials remembered (peer name -> [`DialOutcome`]), so a caller of
/// `Node::connect` can tell why a dial failed (a command-line client maps it to its exit
/// status) or learn the creation of the peer it reached. When full, the table is emptied
/// before the next outcome is stored: it is a hint, and a server dialing many peers must not
/// grow it without bound.
pub const MAX_DIAL_OUTCOMES: usize = 256;

/// Why an outbound dial failed, by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialFailure {
    /// No such node: its host does not resolve, EPMD does not answer or does not know the
    /// name, or the TCP connect was refused.
    Unreachable,
    /// The handshake failed: the peer closed it after our challenge reply (a wrong cookie),
    /// answered `not_allowed`, lacks flags, or the TLS handshake failed.
    Refused,
    /// The connect or the handshake did not finish in time.
    Timeout,
}

/// What the latest dial of a peer came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialOutcome {
    /// Connected; the peer's creation as it announced it in the handshake (None for a peer
    /// that sent none).
    Connected {
        /// The peer's creation.
        creation: Option<u32>,
    },
    /// Failed.
    Failed {
        /// The class of failure.
        class: DialFailure,
        /// The error, as logged.
        message: String,
    },
}

/// peer node name -> connection state.
#[derive(Default)]
pub struct Manager {
    outcomes: Mutex<HashMap<String, DialOutcome>>,
    table: Mutex<Table>,
    next_id: AtomicU64,
    changed: Notify,
    limits: PendingLimits,
    /// Dials in flight (live [`DialTicket`]s).
    dials: Arc<AtomicUsize>,
}

impl Manager {
    /// A manager with these bounds on what waits for peers being dialed.
    pub fn new(limits: PendingLimits) -> Self {
        Manager {
            limits: PendingLimits {
                per_peer_bytes: limits.per_peer_bytes.min(limits.total_bytes),
                ..limits
            },
            ..Manager::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of frames waiting for peers being dialed (for tests).
    #[cfg(test)]
    pub fn pending_bytes(&self) -> usize {
        self.lock().pending_bytes
    }

    /// Dials in flight (tests, and the metrics' outbound handshakes).
    pub fn dials_in_flight(&self) -> usize {
        self.dials.load(Ordering::Relaxed)
    }

    /// A ticket for one more dial, unless `--max-dials` are in flight. Call with the table
    /// locked, so two senders cannot both take the last one.
    fn dial_ticket(&self) -> Option<DialTicket> {
        if self.dials.load(Ordering::Relaxed) >= self.limits.max_dials {
            return None;
        }
        self.dials.fetch_add(1, Ordering::Relaxed);
        Some(DialTicket(self.dials.clone()))
    }

    /// Sends `frame` to `peer`: to its connection, or into the queue of a dial in flight
    /// (bounded, see [`PendingLimits`]). Says when the caller must dial, and when the frame
    /// was refused because no dial may start.
    pub fn send(&self, peer: &str, frame: Frame) -> Sent {
        let mut guard = self.lock();
        let table = &mut *guard;
        if let Some(Slot::Up(conn)) = table.slots.get(peer) {
            if conn.outbox.push_owned(frame).is_err() {
                tracing::warn!(%peer, "peer is not reading: its outbound buffer is full, disconnecting it");
                conn.cancel.cancel();
            }
            return Sent::Done;
        }
        let sent = self.start_dial(table, peer);
        if matches!(sent, Sent::Refused) {
            tracing::debug!(%peer, bytes = frame.len(), "dropping a message for an unconnected node that cannot be dialed now");
            return sent;
        }
        if let Some(Slot::Pending {
            queue,
            bytes,
            dropped,
            ..
        }) = table.slots.get_mut(peer)
        {
            let len = frame.len();
            if admit_pending(
                peer,
                self.limits,
                queue.len(),
                bytes,
                dropped,
                &mut table.pending_bytes,
                len,
            ) {
                queue.push(frame);
            }
        }
        sent
    }

    /// Records what the latest dial of `peer` came to (see [`MAX_DIAL_OUTCOMES`]).
    pub fn note_dial(&self, peer: &str, outcome: DialOutcome) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        if outcomes.len() >= MAX_DIAL_OUTCOMES && !outcomes.contains_key(peer) {
            outcomes.clear();
        }
        outcomes.insert(peer.to_owned(), outcome);
    }

    /// What the latest dial of `peer` came to, if it is remembered.
    pub fn dial_outcome(&self, peer: &str) -> Option<DialOutcome> {
        let outcomes = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        outcomes.get(peer).cloned()
    }

    /// Makes sure `peer` is connected or being dialed, without queueing a frame (for messages
    /// whose shape depends on the peer's flags: they wait in the node until it connects).
    /// Returns a ticket when the caller must dial it, as [`Manager::send`] does.
    pub fn connect(&self, peer: &str) -> Sent {
        let mut guard = self.lock();
        self.start_dial(&mut guard, peer)
    }

    /// With the table locked: nothing to do when `peer` is connected or being dialed; a dial
    /// ticket (and a pending slot) when someone must dial it; `Refused` when `--max-dials`
    /// dials are in flight and it has no slot (the node then counts as down).
    fn start_dial(&self, table: &mut Table, peer: &str) -> Sent {
        match table.slots.get_mut(peer) {
            Some(Slot::Up(_)) | Some(Slot::Pending { dialing: true, .. }) => Sent::Done,
            Some(Slot::Pending { dialing, .. }) => match self.dial_ticket() {
                Some(ticket) => {
                    *dialing = true;
                    Sent::Dial(ticket)
                }
                // Someone still waits for the peer's own connection (a lost simultaneous
                // connect) and ends this slot; what is queued stays for it.
                None => Sent::Done,
            },
            None => {
                let Some(ticket) = self.dial_ticket() else {
                    tracing::warn!(
                        %peer,
                        max_dials = self.limits.max_dials,
                        "cannot dial a node: --max-dials dials are in flight; the node counts as down"
                    );
                    return Sent::Refused;
                };
                table.slots.insert(
                    peer.to_owned(),
                    Slot::Pending {
                        queue: Vec::new(),
                        bytes: 0,
                        dialing: true,
                        dropped: 0,
                    },
                );
                Sent::Dial(ticket)
            }
        }
    }

    /// Counts `len` bytes of a message that waits outside the manager for `peer` (one whose
    /// shape depends on the flags the peer will negotiate, see
    /// [`crate::node::Node::send_when_connected`]) against the same bounds as queued frames.
    /// The bytes are released with the peer's pending slot: when it connects or its dial fails.
    pub fn reserve_pending(&self, peer: &str, len: usize) -> Reserve {
        let mut guard = self.lock();
        let table = &mut *guard;
        let limits = self.limits;
        match table.slots.get_mut(peer) {
            Some(Slot::Up(conn)) => Reserve::Up(conn.flags),
            None => Reserve::Full,
            Some(Slot::Pending {
                queue,
                bytes,
                dropped,
                ..
            }) => {
                if admit_pending(
                    peer,
                    limits,
                    queue.len(),
                    bytes,
                    dropped,
                    &mut table.pending_bytes,
                    len,
                ) {
                    Reserve::Reserved
                } else {
                    Reserve::Full
                }
            }
        }
    }

    /// Whether `peer` is connected or being dialed (has a slot).
    pub fn knows(&self, peer: &str) -> bool {
        self.lock().slots.contains_key(peer)
    }

    /// The flags agreed with a connected peer.
    pub fn peer_flags(&self, peer: &str) -> Option<DistributionFlags> {
        let table = self.lock();
        let slots = &table.slots;
        match slots.get(peer) {
            Some(Slot::Up(conn)) => Some(conn.flags),
            _ => None,
        }
    }

    /// Names of the connected peers.
    pub fn connected(&self) -> Vec<String> {
        let table = self.lock();
        let slots = &table.slots;
        slots
            .iter()
            .filter(|(_, s)| matches!(s, Slot::Up(_)))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Decides what to answer `peer`, which is connecting to us (`local` is our node name).
    /// An existing connection to the same peer is replaced: the peer restarted or lost it.
    pub fn admit(&self, local: &str, peer: &str) -> Admission {
        let table = self.lock();
        let slots = &table.slots;
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
        let mut table = self.lock();
        let old = table.remove(peer);
        table
            .slots
            .insert(peer.to_owned(), Slot::Up(handle.clone()));
        drop(table);
        // Flushed outside the lock: the outbox takes its own lock, and the frames are now
        // counted there, not in the pending bytes.
        let replaced = match old {
            Some(Slot::Pending { queue, dropped, .. }) => {
                if dropped > 0 {
                    tracing::warn!(%peer, dropped, "connected; messages dropped while it was being dialed");
                }
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
        self.changed.notify_waiters();
        (handle, replaced)
    }

    /// Removes the connection `id` of `peer` (if it is still the registered one).
    /// Returns true if it was.
    pub fn unregister(&self, peer: &str, id: u64) -> bool {
        let mut table = self.lock();
        let current = matches!(table.slots.get(peer), Some(Slot::Up(c)) if c.id == id);
        if current {
            table.remove(peer);
        }
        drop(table);
        self.changed.notify_waiters();
        current
    }

    /// A dial attempt failed. Returns true if the queued frames were dropped (nobody else
    /// connected meanwhile), i.e. the peer is down from our side.
    pub fn dial_failed(&self, peer: &str) -> bool {
        let mut table = self.lock();
        let pending = matches!(table.slots.get(peer), Some(Slot::Pending { .. }));
        if pending {
            table.remove(peer);
        }
        drop(table);
        self.changed.notify_waiters();
        pending
    }

    /// Marks a pending peer as not being dialed (we lost a simultaneous connect and wait for the
    /// peer's own connection to arrive).
    pub fn stop_dialing(&self, peer: &str) {
        let mut table = self.lock();
        if let Some(Slot::Pending { dialing, .. }) = table.slots.get_mut(peer) {
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

    /// Closes the connection to `peer`, if it is up (a peer over one of its bounds).
    pub fn close_peer(&self, peer: &str) {
        let table = self.lock();
        if let Some(Slot::Up(conn)) = table.slots.get(peer) {
            conn.cancel.cancel();
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self) {
        let table = self.lock();
        let slots = &table.slots;
        for slot in slots.values() {
            if let Slot::Up(conn) = slot {
                conn.cancel.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(per_peer_bytes: usize, total_bytes: usize, max_dials: usize) -> Manager {
        Manager::new(PendingLimits {
            per_peer_bytes,
            total_bytes,
            max_dials,
        })
    }

    #[test]
    fn pending_bytes_are_bounded_per_peer_and_in_total() {
        let m = manager(250, 400, 8);
        let Sent::Dial(_a) = m.send("a@h", vec![0; 100]) else {
            panic!("first send to a starts a dial")
        };
        assert!(matches!(m.send("a@h", vec![0; 100]), Sent::Done));
        // a holds 200: 100 more would pass its 250.
        assert!(matches!(m.send("a@h", vec![0; 100]), Sent::Done));
        assert_eq!(m.pending_bytes(), 200);
        let Sent::Dial(_b) = m.send("b@h", vec![0; 150]) else {
            panic!("first send to b starts a dial")
        };
        assert_eq!(m.pending_bytes(), 350);
        // 100 more for b would pass the total of 400: dropped.
        assert!(matches!(m.send("b@h", vec![0; 100]), Sent::Done));
        assert_eq!(m.pending_bytes(), 350);
        // A failed dial gives its bytes back.
        assert!(m.dial_failed("a@h"));
        assert_eq!(m.pending_bytes(), 150);
        assert!(matches!(m.send("b@h", vec![0; 100]), Sent::Done));
        assert_eq!(m.pending_bytes(), 250);
        // So does a connection (its queue moves to the outbox).
        let (_conn, _) = m.register("b@h", local_flags(), 1 << 20, CancellationToken::new());
        assert_eq!(m.pending_bytes(), 0);
    }

    #[test]
    fn dials_in_flight_are_bounded() {
        let m = manager(1000, 1000, 2);
        let Sent::Dial(a) = m.send("a@h", vec![1]) else {
            panic!("dial a")
        };
        let Sent::Dial(_b) = m.send("b@h", vec![1]) else {
            panic!("dial b")
        };
        assert_eq!(m.dials_in_flight(), 2);
        assert!(matches!(m.send("c@h", vec![1]), Sent::Refused));
        // No slot was made for c: a later send tries again.
        drop(a);
        assert_eq!(m.dials_in_flight(), 1);
        assert!(matches!(m.send("c@h", vec![1]), Sent::Dial(_)));
    }

    fn local_flags() -> DistributionFlags {
        crate::node::transport::handshake::local_flags()
    }

    /// The bytes an outbox holds, in order (drained through a socket pair).
    fn drain(outbox: &Outbox) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
            outbox.flush_all(&a).await.expect("flush");
            drop(a);
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.expect("read");
            got
        })
    }

    #[test]
    fn frames_queued_while_dialing_go_first_and_in_order() {
        let m = manager(1 << 20, 1 << 20, 8);
        let Sent::Dial(ticket) = m.send("a@h", vec![1; 3]) else {
            panic!("dial a")
        };
        assert!(m.knows("a@h") && !m.is_up("a@h"));
        assert!(matches!(m.send("a@h", vec![2; 70_000]), Sent::Done));
        assert!(matches!(m.send("a@h", vec![3; 5]), Sent::Done));
        let (conn, replaced) = m.register("a@h", local_flags(), 1 << 20, CancellationToken::new());
        drop(ticket);
        assert!(replaced.is_none());
        assert!(m.is_up("a@h") && m.connected() == vec!["a@h".to_owned()]);
        // Sent after the connection is up: behind the queued ones.
        assert!(matches!(m.send("a@h", vec![4; 2]), Sent::Done));
        let mut expected = vec![1; 3];
        expected.extend(vec![2; 70_000]);
        expected.extend(vec![3; 5]);
        expected.extend(vec![4; 2]);
        assert_eq!(drain(&conn.outbox), expected);
    }

    #[test]
    fn a_new_connection_replaces_the_old_and_the_old_cannot_unregister_it() {
        let m = manager(1000, 1000, 8);
        let old_cancel = CancellationToken::new();
        let (old, none) = m.register("a@h", local_flags(), 1 << 20, old_cancel.clone());
        assert!(none.is_none());
        // The peer restarted and connected again.
        let (new, replaced) = m.register("a@h", local_flags(), 1 << 20, CancellationToken::new());
        let replaced = replaced.expect("the old connection is handed back");
        assert_eq!(replaced.id, old.id);
        assert_ne!(new.id, old.id);
        // The old connection's teardown must not take the new one's slot.
        assert!(!m.unregister("a@h", old.id));
        assert!(m.is_up("a@h"));
        assert!(matches!(m.send("a@h", vec![9; 4]), Sent::Done));
        assert_eq!(drain(&new.outbox), vec![9; 4]);
        assert!(
            !old.outbox.has_data(),
            "nothing goes to the replaced connection"
        );
        // A failed dial does not drop a connected peer either.
        assert!(!m.dial_failed("a@h"));
        assert!(m.is_up("a@h"));
        assert!(m.unregister("a@h", new.id));
        assert!(!m.knows("a@h") && m.connected().is_empty());
        // Unregistering twice is harmless.
        assert!(!m.unregister("a@h", new.id));
        assert!(
            !old_cancel.is_cancelled(),
            "the manager closes nothing on its own here"
        );
    }

    #[test]
    fn simultaneous_connects_are_decided_by_name_as_otp_does() {
        let m = manager(1000, 1000, 8);
        // Nobody dials b: accept.
        assert_eq!(m.admit("m@h", "b@h"), Admission::Ok);
        let Sent::Dial(_t) = m.connect("b@h") else {
            panic!("dial b")
        };
        // We dial b while b dials us: the greater name keeps its own attempt.
        assert_eq!(m.admit("z@h", "b@h"), Admission::Nok);
        assert_eq!(m.admit("a@h", "b@h"), Admission::OkSimultaneous);
        // We gave way: no longer dialing, so b's connection is welcome, and a later send
        // queues for it without starting another dial while our ticket lives.
        m.stop_dialing("b@h");
        assert_eq!(m.admit("a@h", "b@h"), Admission::Ok);
        // An established peer reconnecting is accepted (it replaces the old connection).
        let _ = m.register("c@h", local_flags(), 1 << 20, CancellationToken::new());
        assert_eq!(m.admit("z@h", "c@h"), Admission::Ok);
    }

    #[test]
    fn an_outbox_over_its_bound_closes_that_peer_only() {
        let m = manager(1000, 1000, 8);
        let a_cancel = CancellationToken::new();
        let b_cancel = CancellationToken::new();
        let (a, _) = m.register("a@h", local_flags(), 100, a_cancel.clone());
        let _ = m.register("b@h", local_flags(), 100, b_cancel.clone());
        assert!(matches!(m.send("a@h", vec![0; 80]), Sent::Done));
        assert!(!a_cancel.is_cancelled());
        // 80 + 30 > 100: a is not reading.
        assert!(matches!(m.send("a@h", vec![0; 30]), Sent::Done));
        assert!(a_cancel.is_cancelled(), "a is disconnected");
        assert!(!b_cancel.is_cancelled(), "b is untouched");
        assert_eq!(drain(&a.outbox).len(), 80, "what was accepted stays whole");
        m.close_all();
        assert!(b_cancel.is_cancelled());
    }

    #[test]
    fn reservations_count_against_the_pending_bounds_and_see_a_connection() {
        let m = manager(100, 150, 8);
        // No slot: nothing may wait (the node is down from our side).
        assert!(matches!(m.reserve_pending("a@h", 10), Reserve::Full));
        let Sent::Dial(_t) = m.connect("a@h") else {
            panic!("dial a")
        };
        assert!(matches!(m.reserve_pending("a@h", 60), Reserve::Reserved));
        assert!(matches!(m.reserve_pending("a@h", 60), Reserve::Full));
        assert_eq!(m.pending_bytes(), 60);
        let _ = m.register("a@h", local_flags(), 1 << 20, CancellationToken::new());
        assert_eq!(m.pending_bytes(), 0);
        assert!(matches!(m.reserve_pending("a@h", 60), Reserve::Up(_)));
    }
}
