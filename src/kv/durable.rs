//! The KV server's durability: every state change goes to [`Storage`] as one record group,
//! and a call's reply is sent only once the log holds everything that reply may depend on.
//!
//! - A call that changed state is answered from the storage thread after its group is
//!   durable (`{:error, :storage_unavailable}` when the commit failed: never an
//!   acknowledgement of a write that is not on disk).
//! - A call that changed nothing (a read, a `put_new` that found the key, a `cas` mismatch)
//!   is answered at once when everything submitted before it is durable, else together with
//!   the commit it waits for. So no reply ever shows a value that a crash could take back,
//!   as Redis does with `appendfsync always`.
//! - Casts are submitted the same way with no one to answer: a cast is lost only if kvnode
//!   dies within one commit (about one fsync) after accepting it.
//! - Events to subscribers are sent when the change is applied, before it is durable.
//! - A write answered `{:error, :storage_unavailable}` may still be visible to later reads
//!   until a restart, like a write whose call timed out: its outcome is unknown.
//! - Backpressure: the bytes submitted and not yet durable are bounded by
//!   `--max-storage-queue-bytes`. Over it, the KV server reports itself congested
//!   ([`Pressure::SERVER`]) and the connections delivering to it stop reading their peers
//!   until half of it is on disk. Nothing is refused or dropped: a slow disk slows the
//!   writers down instead of filling memory.
//!
//! Log records hold keys as external term format, whose bytes are not unique for a key (a
//! map's entries come out in hash order, a charlist may be a string or a list, ...). Recovery
//! identifies them by [`key_identity`]: the canonical [`Key`](super::key::Key) the store
//! itself uses.

use crate::storage::{Op, Storage};
use crate::{Caller, Congestion, Ctx, Replier};
use erl_dist::term::{Atom, Term, Tuple};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// `{:error, :storage_unavailable}`.
pub fn storage_unavailable() -> Term {
    Tuple::from(vec![
        Atom::from("error").into(),
        Atom::from("storage_unavailable").into(),
    ])
    .into()
}

/// Encodes a term as external term format (with the version byte).
pub fn encode(term: &Term) -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    // Encoding into a Vec cannot fail for I/O reasons; a term eetf cannot encode (none of the
    // ones the validator lets in) would leave an empty record, which recovery rejects loudly.
    if let Err(error) = crate::etf::encode::encode(term, &mut buf) {
        tracing::error!(%error, "cannot encode a term for the log");
        buf.clear();
    }
    buf
}

/// Default `--max-storage-queue-bytes`: 64 MiB of writes waiting for the disk. A few group
/// commits' worth at the speeds measured (see `storage`): enough to keep the disk busy, small
/// against the memory a 128 MiB maximal message already takes.
pub const DEFAULT_MAX_STORAGE_QUEUE_BYTES: usize = 64 << 20;

/// What a group of ops weighs in the storage queue: its key and value bytes plus a record's
/// overhead.
fn weight(ops: &[Op]) -> usize {
    ops.iter()
        .map(|op| match op {
            Op::Put { key, value } => key.len() + value.len() + 32,
            Op::Delete { key } => key.len() + 32,
        })
        .sum()
}

/// The storage's [`KeyIdentity`](crate::storage::KeyIdentity) for KV keys: the canonical
/// key bytes ([`super::key`]) of a key in external term format (version byte included), so
/// recovery merges log records and snapshot entries exactly as the store compares keys.
/// Common keys (atoms, binaries, small integers, small tuples of those) are read straight
/// from their bytes; others are validated and decoded first (no term-count limit: the
/// bytes passed the log's checksums and may predate a lower `--max-terms-per-message`).
pub fn key_identity(etf: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let Some((&version, term)) = etf.split_first() else {
        return Err("empty key".into());
    };
    if version != crate::etf::VERSION_MAGIC {
        return Err(format!("bad version byte {version}"));
    }
    if super::key::canonical_from_etf(term, out) {
        return Ok(());
    }
    // Say why: the validator's error, else the nesting bound of terms eetf cannot hold.
    match crate::etf::validate_versioned(etf, &recovery_limits()) {
        Err(e) => Err(e.to_string()),
        Ok(len) if len != etf.len() => Err(format!("{} trailing bytes", etf.len() - len)),
        Ok(_) => Err("a key eetf cannot hold, nested too deep for its canonical form".into()),
    }
}

/// Limits for terms read back from the log: the configured depth and default atom bounds, no term-count
/// bound (a value accepted under a larger `--max-terms-per-message` is never refused later).
pub fn recovery_limits() -> crate::etf::Limits {
    crate::etf::Limits {
        max_terms: usize::MAX,
        // As deep as peers may send (--max-term-depth), so no stored value is lost.
        max_depth: crate::etf::configured_depth(),
        ..crate::etf::Limits::default()
    }
}

#[derive(Default)]
struct Progress {
    submitted: u64,
    durable: u64,
    /// Bytes submitted and not yet durable (or failed).
    queued_bytes: usize,
    /// Whether the server's [`Congestion`] is set (cleared at half).
    congested: bool,
    /// Replies waiting for `durable >= seq`, in seq order.
    waiting: VecDeque<(u64, Caller, Term)>,
}

/// The storage plus the bookkeeping that orders replies after durability.
pub struct Durable {
    storage: Arc<Storage>,
    progress: Arc<Mutex<Progress>>,
    /// Notified whenever `durable` moves (for [`Durable::wait_pending`]).
    moved: Arc<Condvar>,
    replier: Replier,
    congestion: Congestion,
    max_queued: usize,
}

impl Durable {
    /// Wraps an opened storage for the server of `ctx`: replies go out through its replier,
    /// and a storage queue over `max_queued` bytes (`--max-storage-queue-bytes`) congests it.
    pub fn new(storage: Storage, ctx: &Ctx, max_queued: usize) -> Self {
        Durable {
            storage: Arc::new(storage),
            progress: Arc::new(Mutex::new(Progress::default())),
            moved: Arc::new(Condvar::new()),
            replier: ctx.replier().kv_timed(),
            congestion: ctx.congestion(),
            max_queued: max_queued.max(1),
        }
    }

    /// The storage (for compaction).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Submits `ops`; when durable, answers `caller` (if any) with `reply`, or with
    /// `{:error, :storage_unavailable}` when the commit failed.
    pub fn write(&self, ops: Vec<Op>, answer: Option<(Caller, Term)>) {
        let bytes = weight(&ops);
        let seq = {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.submitted += 1;
            p.queued_bytes += bytes;
            crate::metrics::STORAGE_QUEUE_BYTES.set(p.queued_bytes as i64);
            // Set and cleared under this lock, so the flag always matches the count.
            if !p.congested && p.queued_bytes >= self.max_queued {
                p.congested = true;
                self.congestion.set(true);
                tracing::debug!(
                    queued_bytes = p.queued_bytes,
                    "storage queue over its bound: readers delivering to the KV server pause"
                );
            }
            p.submitted
        };
        let progress = self.progress.clone();
        let moved = self.moved.clone();
        let replier = self.replier.clone();
        let congestion = self.congestion.clone();
        let low = self.max_queued / 2;
        self.storage.submit(
            ops,
            Box::new(move |result| {
                let released: Vec<(Caller, Term)> = {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.queued_bytes = p.queued_bytes.saturating_sub(bytes);
                    crate::metrics::STORAGE_QUEUE_BYTES.set(p.queued_bytes as i64);
                    if p.congested && p.queued_bytes <= low {
                        p.congested = false;
                        congestion.set(false);
                    }
                    p.durable = p.durable.max(seq);
                    let mut out = Vec::new();
                    while p.waiting.front().is_some_and(|(s, _, _)| *s <= p.durable) {
                        if let Some((_, c, r)) = p.waiting.pop_front() {
                            out.push((c, r));
                        }
                    }
                    out
                };
                if let Some((caller, reply)) = answer {
                    match result {
                        Ok(()) => replier.reply(&caller, reply),
                        Err(error) => {
                            tracing::warn!(%error, "write not acknowledged");
                            replier.reply(&caller, storage_unavailable());
                        }
                    }
                }
                for (caller, reply) in released {
                    replier.reply(&caller, reply);
                }
                // After the replies: a raw reply waiting in `wait_pending` goes out behind them.
                moved.notify_all();
            }),
        );
    }

    /// Answers a call that changed nothing: now if everything before it is durable, else
    /// once it is.
    pub fn reply_after_pending(&self, caller: &Caller, reply: Term) {
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.durable < p.submitted {
                let seq = p.submitted;
                p.waiting.push_back((seq, caller.clone(), reply));
                return;
            }
        }
        self.replier.reply(caller, reply);
    }

    /// Blocks until every write submitted so far is durable (or failed), for a reply that
    /// cannot wait in the queue as a term (one eetf cannot hold, sent as its bytes by the
    /// caller): no reply shows a value a crash could take back. False when `timeout` passed
    /// first (the storage thread is stuck): the caller answers `storage_unavailable`.
    pub fn wait_pending(&self, timeout: std::time::Duration) -> bool {
        let start = std::time::Instant::now();
        let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let seq = p.submitted;
        while p.durable < seq {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return false;
            }
            p = match self.moved.wait_timeout(p, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::key_identity;

    fn id(etf: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        key_identity(etf, &mut out).map(|()| out)
    }

    /// `#{a => 1, b => 2}` with its entries in either order, as eetf may write it.
    #[test]
    fn map_keys_in_any_entry_order_have_one_identity() {
        let ab = [
            131, 116, 0, 0, 0, 2, 119, 1, b'a', 97, 1, 119, 1, b'b', 97, 2,
        ];
        let ba = [
            131, 116, 0, 0, 0, 2, 119, 1, b'b', 97, 2, 119, 1, b'a', 97, 1,
        ];
        assert_eq!(id(&ab), id(&ba));
        assert!(id(&ab).is_ok());
        // The fast path (an atom) and the decoding path agree with the store's Key.
        let atom = [131, 119, 1, b'a'];
        let latin1 = [131, 100, 0, 1, b'a'];
        assert_eq!(id(&atom), id(&latin1));
        let term = crate::etf::decode_exact(&ab, &super::recovery_limits()).expect("decode");
        assert_eq!(
            id(&ab).ok().as_deref(),
            Some(crate::kv::key::Key::from_term(&term).as_bytes())
        );
    }

    #[test]
    fn bytes_that_are_not_one_term_have_no_identity() {
        assert!(id(&[]).is_err());
        assert!(id(&[131]).is_err());
        assert!(id(&[130, 97, 1]).is_err());
        assert!(id(&[131, 97, 1, 0]).is_err(), "trailing byte");
        assert!(id(&[131, 116, 0, 0, 0, 2, 119]).is_err(), "truncated map");
    }
}
