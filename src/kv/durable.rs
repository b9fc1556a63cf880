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

use crate::gen_server::{Caller, Replier};
use crate::storage::{Op, Storage};
use erl_dist::term::{Atom, Term, Tuple};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

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
    if let Err(error) = term.encode(&mut buf) {
        tracing::error!(%error, "cannot encode a term for the log");
        buf.clear();
    }
    buf
}

#[derive(Default)]
struct Progress {
    submitted: u64,
    durable: u64,
    /// Replies waiting for `durable >= seq`, in seq order.
    waiting: VecDeque<(u64, Caller, Term)>,
}

/// The storage plus the bookkeeping that orders replies after durability.
pub struct Durable {
    storage: Arc<Storage>,
    progress: Arc<Mutex<Progress>>,
    replier: Replier,
}

impl Durable {
    /// Wraps an opened storage; replies go out through `replier`.
    pub fn new(storage: Storage, replier: Replier) -> Self {
        Durable {
            storage: Arc::new(storage),
            progress: Arc::new(Mutex::new(Progress::default())),
            replier,
        }
    }

    /// The storage (for compaction).
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Submits `ops`; when durable, answers `caller` (if any) with `reply`, or with
    /// `{:error, :storage_unavailable}` when the commit failed.
    pub fn write(&self, ops: Vec<Op>, answer: Option<(Caller, Term)>) {
        let seq = {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            p.submitted += 1;
            p.submitted
        };
        let progress = self.progress.clone();
        let replier = self.replier.clone();
        self.storage.submit(
            ops,
            Box::new(move |result| {
                let released: Vec<(Caller, Term)> = {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
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
}
