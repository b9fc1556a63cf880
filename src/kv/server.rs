//! The KV GenServer: the [`Store`] plus subscriptions (monitored subscriber pids).
//!
//! `GenServer.stop` ends the process (monitors on it fire with the reason) and a fresh one
//! (new pid) takes the registered name with the same data; subscriptions do not survive it
//! (see [`KvServer::restart`](GenServer::restart)).

use super::durable::{self, Durable};
use super::key::Key;
use super::protocol::{self, ByteRequest, Request, Topic};
use super::store::{Event, Store};
use crate::metrics::{self, KvKind};
use crate::storage::Op;
use crate::{CallResult, Caller, Ctx, GenServer};
use erl_dist::term::{Atom, BigInteger, FixInteger, Pid, Reference, Term};
use std::collections::{HashMap, HashSet};

struct Subscriber {
    monitor: Option<Reference>,
    all: bool,
    keys: HashSet<Key>,
}

/// The `DistributedExample.KVStore` server.
#[derive(Default)]
pub struct KvServer {
    store: Store,
    durable: Option<Durable>,
    subscribers: HashMap<Pid, Subscriber>,
    by_key: HashMap<Key, HashSet<Pid>>,
    all: HashSet<Pid>,
    subscriptions: usize,
    /// Where a byte-view `get` that misses copies its default, so the reply can borrow it.
    default_reply: Vec<u8>,
}

fn count(n: usize) -> Term {
    match i32::try_from(n) {
        Ok(v) => FixInteger::from(v).into(),
        Err(_) => BigInteger::from(n as u64).into(),
    }
}

thread_local! {
    /// Scratch space for the canonical key of a byte-view request.
    static RAW_KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The canonical key of a key in external format: read directly for the usual kinds of key,
/// else decoded first (with `decode`).
fn raw_canonical_key(
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Option<Term>,
    out: &mut Vec<u8>,
) -> bool {
    if super::key::encode_etf_into(key, out) {
        return true;
    }
    match decode(key) {
        Some(term) => {
            super::key::encode_into(&term, out);
            true
        }
        None => false,
    }
}

/// Applies a byte-view request to `store`: no term is built, values are stored and answered
/// as the bytes they came as. Returns the reply's bytes (one term, no version byte), or None
/// when the key does not decode (then the whole request would not either). `decode` decodes
/// a key of a kind the canonical-key reader does not take.
pub(crate) fn apply_bytes<'s>(
    store: &'s mut Store,
    default_reply: &'s mut Vec<u8>,
    request: ByteRequest<'_>,
    decode: impl FnOnce(&[u8]) -> Option<Term>,
) -> Option<&'s [u8]> {
    RAW_KEY.with(|cell| {
        // Busy only if this thread re-entered a byte-view handler; then a buffer of its own.
        let mut own = Vec::new();
        let mut shared = cell.try_borrow_mut().ok();
        let canon = shared.as_deref_mut().unwrap_or(&mut own);
        canon.clear();
        let reply = if raw_canonical_key(request.key(), decode, canon) {
            Some(match request {
                ByteRequest::Get { default, .. } => match store.get_encoded(canon) {
                    Some(value) => value.get(1..).unwrap_or(protocol::NIL_BYTES),
                    None => match default {
                        Some(default) => {
                            default_reply.clear();
                            default_reply.extend_from_slice(default);
                            default_reply.as_slice()
                        }
                        None => protocol::NIL_BYTES,
                    },
                },
                ByteRequest::Put { key, value } => {
                    store.put_encoded(canon, key, value);
                    store_gauges(store);
                    protocol::OK_BYTES
                }
                ByteRequest::Delete { .. } => {
                    store.delete_encoded(canon);
                    store_gauges(store);
                    protocol::OK_BYTES
                }
            })
        } else {
            None
        };
        if canon.capacity() > 64 * 1024 {
            *canon = Vec::new();
        }
        reply
    })
}

impl KvServer {
    /// An empty, in-memory store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with the recovered `entries` that persists every change through `durable`.
    ///
    /// Each entry's `id` is the canonical key [`durable::key_identity`] computed during
    /// recovery, and its key and value are external term format as logged: they are stored
    /// as they are (the value checked first), nothing is decoded or re-encoded. An entry
    /// whose value is not one valid term is skipped with an error log (it passed the log's
    /// checksums, so only a bug could produce it).
    pub fn with_storage(durable: Durable, entries: Vec<crate::storage::Entry>) -> Self {
        let limits = durable::recovery_limits();
        let mut store = Store::new();
        for e in entries {
            let value_ok = match crate::etf::validate_versioned(&e.value, &limits) {
                Ok(len) if len == e.value.len() => Ok(()),
                Ok(len) => Err(format!("{} trailing bytes", e.value.len() - len)),
                Err(error) => Err(error.to_string()),
            };
            match (e.key.get(1..), e.value.get(1..), value_ok) {
                (Some(key), Some(value), Ok(())) => store.put_encoded(&e.id, key, value),
                (_, _, Err(error)) => {
                    tracing::error!(%error, key_len = e.key.len(), "skipping a recovered entry whose value is not a valid term");
                }
                _ => tracing::error!("skipping a recovered entry with an empty key"),
            }
        }
        store_gauges(&store);
        KvServer {
            store,
            durable: Some(durable),
            ..Self::default()
        }
    }

    fn subscribe(&mut self, ctx: &Ctx, pid: &Pid, topic: Topic) {
        let sub = self
            .subscribers
            .entry(pid.clone())
            .or_insert_with(|| Subscriber {
                // Local subscribers (Rust processes on this node) are monitored too.
                monitor: Some(ctx.monitor(pid)),
                all: false,
                keys: HashSet::new(),
            });
        match topic {
            Topic::All => {
                if !sub.all {
                    sub.all = true;
                    self.all.insert(pid.clone());
                    self.subscriptions += 1;
                }
            }
            Topic::Key(k) => {
                let key = Key::from_term(&k);
                if sub.keys.insert(key.clone()) {
                    self.by_key.entry(key).or_default().insert(pid.clone());
                    self.subscriptions += 1;
                }
            }
        }
        self.publish_gauges();
    }

    fn unsubscribe(&mut self, ctx: &Ctx, pid: &Pid, topic: Topic) {
        let Some(sub) = self.subscribers.get_mut(pid) else {
            return;
        };
        match topic {
            Topic::All => {
                if sub.all {
                    sub.all = false;
                    self.all.remove(pid);
                    self.subscriptions -= 1;
                }
            }
            Topic::Key(k) => {
                let key = Key::from_term(&k);
                if sub.keys.remove(&key) {
                    self.subscriptions -= 1;
                    if let Some(set) = self.by_key.get_mut(&key) {
                        set.remove(pid);
                        if set.is_empty() {
                            self.by_key.remove(&key);
                        }
                    }
                }
            }
        }
        if !sub.all
            && sub.keys.is_empty()
            && let Some(sub) = self.subscribers.remove(pid)
            && let Some(r) = sub.monitor
        {
            ctx.demonitor(pid, &r);
        }
        self.publish_gauges();
    }

    fn drop_subscriber(&mut self, pid: &Pid) {
        if let Some(sub) = self.subscribers.remove(pid) {
            if sub.all {
                self.all.remove(pid);
                self.subscriptions -= 1;
            }
            for key in sub.keys {
                self.subscriptions -= 1;
                if let Some(set) = self.by_key.get_mut(&key) {
                    set.remove(pid);
                    if set.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
        self.publish_gauges();
    }

    fn publish(&self, ctx: &Ctx, event: &Event) {
        let key = Key::from_term(event.key());
        let by_key = self.by_key.get(&key);
        let message = protocol::event_message(event);
        for pid in &self.all {
            ctx.send(pid, message.clone());
        }
        if let Some(set) = by_key {
            for pid in set.iter().filter(|p| !self.all.contains(*p)) {
                ctx.send(pid, message.clone());
            }
        }
    }

    /// Applies a data request. Returns the reply to send now, or None when the reply was
    /// handed to the durability layer (it goes out once the log holds what it depends on).
    fn data(
        &mut self,
        ctx: &Ctx,
        req: protocol::DataRequest,
        caller: Option<&Caller>,
    ) -> Option<Term> {
        let Some(durable) = &self.durable else {
            let emit = self.subscriptions > 0;
            let (reply, event) = self.store.apply_with(req, emit);
            store_gauges(&self.store);
            if let Some(event) = event {
                self.publish(ctx, &event);
            }
            return Some(reply);
        };
        let (reply, event) = self.store.apply_with(req, true);
        store_gauges(&self.store);
        match event {
            Some(event) => {
                if self.subscriptions > 0 {
                    self.publish(ctx, &event);
                }
                let op = match &event {
                    Event::Put { key, value } => Op::Put {
                        key: durable::encode(key),
                        value: durable::encode(value),
                    },
                    Event::Delete { key } => Op::Delete {
                        key: durable::encode(key),
                    },
                };
                durable.write(vec![op], caller.map(|c| (c.clone(), reply)));
                if durable.storage().wants_compaction() {
                    let live = self
                        .store
                        .iter_encoded()
                        .map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .collect();
                    durable.storage().compact(live);
                }
            }
            None => {
                if let Some(caller) = caller {
                    durable.reply_after_pending(caller, reply);
                }
            }
        }
        None
    }
}

impl KvServer {
    /// The byte view of `request`, when it may be used: the request arrived as bytes, is a
    /// `get`, `put` or `delete`, and nothing else needs its terms (no durability: replies
    /// wait for the log; for changes, no subscribers: events carry the terms).
    fn byte_view<'r>(&self, request: &crate::Request<'r>) -> Option<ByteRequest<'r>> {
        if self.durable.is_some() {
            return None;
        }
        let view = ByteRequest::parse(request)?;
        (!view.mutates() || self.subscriptions == 0).then_some(view)
    }
}

/// Publishes the store's size gauges (a relaxed store each; read at scrape time).
#[inline]
fn store_gauges(store: &Store) {
    metrics::KV_KEYS.set(store.len() as i64);
    metrics::KV_STORED_BYTES.set(store.stored_bytes() as i64);
}

/// The metrics kind of a byte-view request.
fn byte_kind(view: &ByteRequest<'_>) -> KvKind {
    match view {
        ByteRequest::Get { .. } => KvKind::Get,
        ByteRequest::Put { .. } => KvKind::Put,
        ByteRequest::Delete { .. } => KvKind::Delete,
    }
}

/// The metrics kind of a decoded request.
fn request_kind(request: &Request) -> KvKind {
    use protocol::DataRequest as D;
    match request {
        Request::Data(D::Get { .. }) => KvKind::Get,
        Request::Data(D::Put { .. }) => KvKind::Put,
        Request::Data(D::PutNew { .. }) => KvKind::PutNew,
        Request::Data(D::Delete { .. }) => KvKind::Delete,
        Request::Data(D::Cas { .. }) => KvKind::Cas,
        Request::Data(D::Incr { .. }) => KvKind::Incr,
        Request::Data(D::Keys) => KvKind::Keys,
        Request::Data(D::Size) => KvKind::Size,
        Request::Subscribe(_) => KvKind::Subscribe,
        Request::Unsubscribe(_) => KvKind::Unsubscribe,
        Request::Subscribers => KvKind::Subscribers,
    }
}

impl KvServer {
    /// Publishes the store's gauges (a relaxed store each; read at scrape time).
    fn publish_gauges(&self) {
        store_gauges(&self.store);
        metrics::KV_SUBSCRIPTIONS.set(self.subscriptions as i64);
    }

    fn call(
        &mut self,
        ctx: &mut Ctx,
        from: &Caller,
        request: crate::Request<'_>,
    ) -> CallResult<'_> {
        if let Some(view) = self.byte_view(&request) {
            metrics::kv_request(true, byte_kind(&view));
            let decode = |k: &[u8]| request.decode_part(k).ok();
            return match apply_bytes(&mut self.store, &mut self.default_reply, view, decode) {
                Some(reply) => CallResult::Encoded(reply),
                None => {
                    tracing::debug!("undecodable key in a call");
                    CallResult::NoReply
                }
            };
        }
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                metrics::kv_request(true, KvKind::Unknown);
                tracing::debug!(%error, "undecodable call");
                return CallResult::NoReply;
            }
        };
        let parsed = Request::from_term(request);
        metrics::kv_request(true, parsed.as_ref().map_or(KvKind::Unknown, request_kind));
        let reply = match parsed {
            Ok(Request::Data(req)) => {
                return match self.data(ctx, req, Some(from)) {
                    Some(reply) => CallResult::Reply(reply),
                    None => CallResult::NoReply,
                };
            }
            Ok(Request::Subscribe(topic)) => {
                self.subscribe(ctx, from.pid(), topic);
                protocol::ok()
            }
            Ok(Request::Unsubscribe(topic)) => {
                self.unsubscribe(ctx, from.pid(), topic);
                protocol::ok()
            }
            Ok(Request::Subscribers) => count(self.subscriptions),
            Err(request) => {
                tracing::debug!(request = %crate::etf::summary(&request), "unknown call");
                protocol::unknown_request_reply(&request)
            }
        };
        CallResult::Reply(reply)
    }
}

impl KvServer {
    fn cast(&mut self, ctx: &mut Ctx, request: crate::Request<'_>) {
        if let Some(view) = self.byte_view(&request) {
            metrics::kv_request(false, byte_kind(&view));
            let decode = |k: &[u8]| request.decode_part(k).ok();
            if apply_bytes(&mut self.store, &mut self.default_reply, view, decode).is_none() {
                tracing::debug!("undecodable key in a cast: ignored");
            }
            return;
        }
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                metrics::kv_request(false, KvKind::Unknown);
                tracing::debug!(%error, "undecodable cast: ignored");
                return;
            }
        };
        let parsed = Request::from_term(request);
        metrics::kv_request(false, parsed.as_ref().map_or(KvKind::Unknown, request_kind));
        match parsed {
            Ok(Request::Data(req)) => {
                self.data(ctx, req, None);
            }
            Ok(_) => tracing::debug!("subscription requests need a call, not a cast: ignored"),
            Err(request) => {
                tracing::debug!(request = %crate::etf::summary(&request), "unknown cast: ignored")
            }
        }
    }
}

impl GenServer for KvServer {
    fn handle_call(
        &mut self,
        ctx: &mut Ctx,
        from: &Caller,
        request: crate::Request<'_>,
    ) -> CallResult<'_> {
        let timer = metrics::kv_timer();
        let result = self.call(ctx, from, request);
        metrics::kv_timed(timer);
        if !matches!(result, CallResult::NoReply) {
            // Timed until the host writes the reply (a durable reply: once the log has it).
            metrics::arm_kv_reply(from.received());
        }
        result
    }

    fn handle_cast(&mut self, ctx: &mut Ctx, request: crate::Request<'_>) {
        self.cast(ctx, request);
        metrics::kv_cast_applied(metrics::received());
    }

    /// `:sys.get_state`: `%{keys: n, subscribers: n, subscriptions: n, storage: :memory |
    /// :disk}` (a summary: the data itself can be far bigger than a message may be).
    fn system_state(&self, _ctx: &Ctx) -> Term {
        let pair = |k: &str, v: Term| (Term::from(Atom::from(k)), v);
        let storage = if self.durable.is_some() {
            "disk"
        } else {
            "memory"
        };
        eetf::Map::from([
            pair("keys", count(self.store.len())),
            pair("subscribers", count(self.subscribers.len())),
            pair("subscriptions", count(self.subscriptions)),
            pair("storage", Atom::from(storage).into()),
        ])
        .into()
    }

    /// `GenServer.stop`: the data belongs to the node (as an ETS table owned by a supervisor
    /// would), so the store and its storage move on to the fresh process. Subscriptions are
    /// process state and end with the process, as a restarted BEAM GenServer's would: their
    /// monitors are removed, and subscribers (who can see the exit by monitoring the
    /// server) subscribe again.
    fn restart(&mut self, ctx: &mut Ctx, _reason: &Term) -> Option<Self> {
        for (pid, sub) in self.subscribers.drain() {
            if let Some(r) = sub.monitor {
                ctx.demonitor(&pid, &r);
            }
        }
        metrics::KV_SUBSCRIPTIONS.set(0);
        Some(KvServer {
            store: std::mem::take(&mut self.store),
            durable: self.durable.take(),
            ..Self::default()
        })
    }

    fn handle_down(&mut self, _ctx: &mut Ctx, _reference: Reference, pid: Pid, reason: Term) {
        tracing::debug!(
            node = %crate::etf::text::name(&pid.node.name),
            id = pid.id,
            reason = %crate::etf::summary(&reason),
            "subscriber down"
        );
        self.drop_subscriber(&pid);
    }
}
