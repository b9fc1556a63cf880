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
    /// Whether the store may hold a term eetf cannot hold (stored through the raw lane, or
    /// recovered): then `get` and `cas` requests that arrive as bytes take the raw lane, so
    /// such a value is answered as its bytes, never decoded into something else.
    has_raw: bool,
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
        // A key eetf cannot hold (a native record, a map with `0.0` and `-0.0` keys): read
        // from its bytes.
        None => super::key::canonical_from_etf(key, out),
    }
}

/// Builds `{:error, {:mismatch, current}}` around `current` (external format, no version byte).
fn mismatch_bytes(current: &[u8], out: &mut Vec<u8>) {
    use crate::etf::SMALL_TUPLE_EXT as T;
    out.clear();
    out.extend_from_slice(&[T, 2]);
    out.extend_from_slice(&[crate::etf::SMALL_ATOM_UTF8_EXT, 5]);
    out.extend_from_slice(b"error");
    out.extend_from_slice(&[T, 2]);
    out.extend_from_slice(&[crate::etf::SMALL_ATOM_UTF8_EXT, 8]);
    out.extend_from_slice(b"mismatch");
    out.extend_from_slice(current);
}

/// `{:error, :unrepresentable}`: a request holding a term eetf cannot hold (a native record,
/// a map with `0.0` and `-0.0` keys) that would need one (an event for a subscriber), or
/// whose key is nested too deep to read from its bytes. Nothing was changed.
fn unrepresentable() -> Term {
    protocol::error(protocol::atom("unrepresentable"))
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
                // Only the raw lane ([`KvServer::raw_lane`]) reads these.
                ByteRequest::PutNew { .. } | ByteRequest::Cas { .. } => return None,
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
        let mut has_raw = false;
        for e in entries {
            let value_ok = match crate::etf::validate_versioned(&e.value, &limits) {
                Ok(len) if len == e.value.len() => Ok(()),
                Ok(len) => Err(format!("{} trailing bytes", e.value.len() - len)),
                Err(error) => Err(error.to_string()),
            };
            match (e.key.get(1..), e.value.get(1..), value_ok) {
                (Some(key), Some(value), Ok(())) => {
                    has_raw = has_raw || may_be_raw(&e.key) || may_be_raw(&e.value);
                    store.put_encoded(&e.id, key, value)
                }
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
            has_raw,
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
                compact_if_wanted(durable, &self.store);
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

/// How long a reply eetf cannot hold (sent as bytes, so it cannot wait in the durability
/// queue) waits for the writes submitted before it to become durable, the KV server
/// blocked, before it is refused with `{:error, :storage_unavailable}` (the storage thread
/// is stuck; an `fdatasync` takes milliseconds).
const RAW_REPLY_DURABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether an external term (with or without its version byte) is one eetf cannot hold: it holds a native
/// record or a map whose keys eetf would merge ([`crate::etf::needs_bytes`]: exact, the
/// validator's walk, which measures a binary without reading it). A term the walk refuses
/// (it passed the node's own limits, which may exceed the recovery limits) counts as raw:
/// a false positive only costs the raw lane for `get` and `cas`.
fn may_be_raw(etf: &[u8]) -> bool {
    let limits = durable::recovery_limits();
    match etf.first() {
        Some(&crate::etf::VERSION_MAGIC) => crate::etf::needs_bytes(etf, &limits),
        _ => crate::etf::term_needs_bytes(etf, &limits),
    }
    .unwrap_or(true)
}

/// Compacts the log from the store's live entries when the storage asks for it.
fn compact_if_wanted(durable: &durable::Durable, store: &Store) {
    if durable.storage().wants_compaction() {
        let live = store
            .iter_encoded()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        durable.storage().compact(live);
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
        ByteRequest::PutNew { .. } => KvKind::PutNew,
        ByteRequest::Cas { .. } => KvKind::Cas,
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

/// What the raw lane answers.
enum RawReply {
    /// A term, now.
    Term(Term),
    /// The bytes in `KvServer::default_reply`, now.
    Bytes,
    /// Nothing now: the durability layer answers.
    Later,
}

impl KvServer {
    /// Notes that a byte-view `put` may store a term eetf cannot hold (see `has_raw`): a
    /// scan for the tags that can make one, until the first is seen.
    fn note_raw(&mut self, view: &ByteRequest<'_>) {
        if let ByteRequest::Put { key, value } = view
            && !self.has_raw
        {
            self.has_raw = may_be_raw(key) || may_be_raw(value);
        }
    }

    /// Whether the value under the canonical key `canon` is one eetf cannot hold.
    fn current_undecodable(&self, canon: &[u8]) -> bool {
        self.store.get_encoded(canon).is_some_and(|v| {
            may_be_raw(v) && crate::etf::decode_exact(v, &durable::recovery_limits()).is_err()
        })
    }

    /// Whether a change of the key whose canonical bytes are `canon` has subscribers.
    fn notifies(&self, canon: &[u8]) -> bool {
        self.subscriptions > 0 && (!self.all.is_empty() || self.by_key.contains_key(canon))
    }

    /// The raw lane: `get`, `put`, `put_new`, `delete` and `cas` read, stored, compared and
    /// answered as bytes, for requests holding terms eetf cannot hold (native records, maps
    /// with both `0.0` and `-0.0` keys) and, once the store may hold such terms, for `get`
    /// and `cas`. Keys and values are compared by their canonical bytes (`=:=`). A change
    /// that subscribers would need an event term for is refused (`{:error,
    /// :unrepresentable}`), as is a key nested too deep to read; nothing is stored changed.
    fn raw_lane(&mut self, caller: Option<&Caller>, view: ByteRequest<'_>) -> RawReply {
        let mut canon = Vec::new();
        if !super::key::canonical_from_etf(view.key(), &mut canon) {
            tracing::warn!(
                key = %crate::etf::excerpt(view.key()),
                "a key eetf cannot hold is nested too deep to read: refused"
            );
            return RawReply::Term(unrepresentable());
        }
        // A change subscribers would need an event term for is refused; a request that
        // changes nothing (a `put_new` that finds the key, a `cas` mismatch) is answered.
        let watched = view.mutates() && self.notifies(&canon);
        let refused = |key: &[u8]| {
            tracing::warn!(
                key = %crate::etf::excerpt(key),
                "a change holding a term eetf cannot hold has subscribers, who could not be told: refused"
            );
            RawReply::Term(unrepresentable())
        };
        let versioned = |b: &[u8]| {
            let mut v = Vec::with_capacity(b.len() + 1);
            v.push(crate::etf::VERSION_MAGIC);
            v.extend_from_slice(b);
            v
        };
        let (key, value) = match view {
            ByteRequest::Get { default, .. } => {
                let value = self.store.get_encoded(&canon).and_then(|v| v.get(1..));
                let answer = value.or(default).unwrap_or(protocol::NIL_BYTES);
                return self.answer_bytes(caller, answer.to_vec());
            }
            ByteRequest::Delete { key } => {
                if watched && self.store.get_encoded(&canon).is_some() {
                    return refused(key);
                }
                if self.store.delete_encoded(&canon) {
                    store_gauges(&self.store);
                    self.has_raw = true;
                    return self.commit(
                        caller,
                        Op::Delete {
                            key: versioned(key),
                        },
                    );
                }
                return self.answer_term(caller, protocol::ok());
            }
            ByteRequest::Put { key, .. } if watched => return refused(key),
            ByteRequest::Put { key, value } => (key, value),
            ByteRequest::PutNew { key, value } => {
                if self.store.get_encoded(&canon).is_some() {
                    return self.answer_term(caller, protocol::exists());
                }
                if watched {
                    return refused(key);
                }
                (key, value)
            }
            ByteRequest::Cas { key, expected, new } => {
                let mut want = Vec::new();
                if !super::key::canonical_from_etf(expected, &mut want) {
                    return RawReply::Term(unrepresentable());
                }
                let current = self.store.get_encoded(&canon).and_then(|v| v.get(1..));
                let matches = match current {
                    None => want == super::key::Key::from_term(&protocol::nil()).as_bytes(),
                    Some(current) => {
                        let mut have = Vec::new();
                        super::key::canonical_from_etf(current, &mut have) && have == want
                    }
                };
                if !matches {
                    let mut reply = Vec::new();
                    mismatch_bytes(current.unwrap_or(protocol::NIL_BYTES), &mut reply);
                    return self.answer_bytes(caller, reply);
                }
                if watched {
                    return refused(key);
                }
                (key, new)
            }
        };
        // A `cas` or `put_new` keeps the key as first written when it was present.
        let stored_key = self
            .store
            .key_encoded(&canon)
            .and_then(|k| k.get(1..))
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| key.to_vec());
        self.store.put_encoded(&canon, &stored_key, value);
        store_gauges(&self.store);
        self.has_raw = true;
        self.commit(
            caller,
            Op::Put {
                key: versioned(&stored_key),
                value: versioned(value),
            },
        )
    }

    /// `:ok` for a change: now in memory, once durable with `--data-dir`.
    fn commit(&mut self, caller: Option<&Caller>, op: Op) -> RawReply {
        let Some(durable) = &self.durable else {
            return RawReply::Term(protocol::ok());
        };
        durable.write(vec![op], caller.map(|c| (c.clone(), protocol::ok())));
        compact_if_wanted(durable, &self.store);
        RawReply::Later
    }

    /// A reply term that changed nothing (after pending writes with `--data-dir`).
    fn answer_term(&mut self, caller: Option<&Caller>, reply: Term) -> RawReply {
        match (&self.durable, caller) {
            (Some(durable), Some(caller)) => {
                durable.reply_after_pending(caller, reply);
                RawReply::Later
            }
            _ => RawReply::Term(reply),
        }
    }

    /// A reply given as bytes. With `--data-dir` it waits for pending writes as a term when
    /// it decodes to itself; one eetf cannot hold is answered as its bytes once every write
    /// submitted before it is durable (the server waits: such replies are rare), so no reply
    /// shows a value a crash could take back.
    fn answer_bytes(&mut self, caller: Option<&Caller>, reply: Vec<u8>) -> RawReply {
        if let Some(durable) = &self.durable {
            let mut versioned = vec![crate::etf::VERSION_MAGIC];
            versioned.extend_from_slice(&reply);
            if let Ok(term) = crate::etf::decode_exact(&versioned, &durable::recovery_limits()) {
                return self.answer_term(caller, term);
            }
            if !durable.wait_pending(RAW_REPLY_DURABLE_WAIT) {
                tracing::warn!("earlier writes not durable in time: a raw reply refused");
                return RawReply::Term(durable::storage_unavailable());
            }
        }
        self.default_reply = reply;
        RawReply::Bytes
    }

    /// The raw-lane view of a request that must take it (see [`KvServer::raw_lane`]) when
    /// it did not decode, or when the store may hold raw terms and it is a `get` or `cas`.
    fn raw_view<'r>(&self, request: &crate::Request<'r>) -> Option<ByteRequest<'r>> {
        if !self.has_raw {
            return None;
        }
        let view = ByteRequest::parse_all(request)?;
        let canon_ok = |k: &[u8]| {
            let mut c = Vec::new();
            super::key::canonical_from_etf(k, &mut c).then_some(c)
        };
        match view {
            ByteRequest::Get { .. } => Some(view),
            // With subscribers on the key, the decoding lane answers (and tells them of a
            // change), unless the current value has no decoded form: then only the raw lane
            // can show it in a mismatch (a match would need an event for it: refused).
            ByteRequest::Cas { key, .. } => match canon_ok(key) {
                Some(c) if !self.notifies(&c) || self.current_undecodable(&c) => Some(view),
                _ => None,
            },
            _ => None,
        }
    }

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
            self.note_raw(&view);
            let view_key = view.key();
            let decode = |k: &[u8]| request.decode_part(k).ok();
            return match apply_bytes(&mut self.store, &mut self.default_reply, view, decode) {
                Some(reply) => CallResult::Encoded(reply),
                // The key was validated on arrival: it has no canonical form only when it
                // holds a term eetf cannot hold nested too deep, or too costly, to read (see
                // `key::canonical_from_etf`). Refused with a reply, as the raw lane does.
                None => {
                    tracing::warn!(
                        key = %crate::etf::excerpt(view_key),
                        "a key with no canonical form (a term eetf cannot hold, nested too deep or too costly to read): refused"
                    );
                    CallResult::Reply(unrepresentable())
                }
            };
        }
        let raw = ByteRequest::parse_all(&request);
        if let Some(view) = self.raw_view(&request) {
            metrics::kv_request(true, byte_kind(&view));
            return self.raw_result(Some(from), view);
        }
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                if let Some(view) = raw {
                    // A term eetf cannot hold: the raw lane keeps it as it came.
                    metrics::kv_request(true, byte_kind(&view));
                    return self.raw_result(Some(from), view);
                }
                metrics::kv_request(true, KvKind::Unknown);
                // Validated on arrival, so only a term eetf cannot hold gets here (a native
                // record or a map with 0.0 and -0.0 keys in `incr`, `subscribe`, ...): say so.
                tracing::info!(%error, "a call holding a term eetf cannot hold: refused");
                return CallResult::Reply(unrepresentable());
            }
        };
        let parsed = Request::from_term(request);
        metrics::kv_request(true, parsed.as_ref().map_or(KvKind::Unknown, request_kind));
        let reply = match parsed {
            Ok(Request::Data(protocol::DataRequest::Keys)) if self.has_raw => {
                // The keys as stored (some may be terms eetf cannot hold), as bytes.
                let mut list = Vec::new();
                if self.store.is_empty() {
                    list.push(crate::etf::NIL_EXT);
                } else {
                    list.push(crate::etf::LIST_EXT);
                    list.extend_from_slice(&(self.store.len() as u32).to_be_bytes());
                    for (key, _) in self.store.iter_encoded() {
                        list.extend_from_slice(key.get(1..).unwrap_or_default());
                    }
                    list.push(crate::etf::NIL_EXT);
                }
                return match self.answer_bytes(Some(from), list) {
                    RawReply::Term(t) => CallResult::Reply(t),
                    RawReply::Bytes => CallResult::Encoded(&self.default_reply),
                    RawReply::Later => CallResult::NoReply,
                };
            }
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
    fn raw_result(&mut self, caller: Option<&Caller>, view: ByteRequest<'_>) -> CallResult<'_> {
        match self.raw_lane(caller, view) {
            RawReply::Term(t) => CallResult::Reply(t),
            RawReply::Bytes => CallResult::Encoded(&self.default_reply),
            RawReply::Later => CallResult::NoReply,
        }
    }

    fn cast(&mut self, ctx: &mut Ctx, request: crate::Request<'_>) {
        if let Some(view) = self.byte_view(&request) {
            metrics::kv_request(false, byte_kind(&view));
            self.note_raw(&view);
            let decode = |k: &[u8]| request.decode_part(k).ok();
            if apply_bytes(&mut self.store, &mut self.default_reply, view, decode).is_none() {
                tracing::debug!("undecodable key in a cast: ignored");
            }
            return;
        }
        let raw = ByteRequest::parse_all(&request);
        if let Some(view) = self.raw_view(&request) {
            metrics::kv_request(false, byte_kind(&view));
            self.raw_lane(None, view);
            return;
        }
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                if let Some(view) = raw {
                    metrics::kv_request(false, byte_kind(&view));
                    if let RawReply::Term(reply) = self.raw_lane(None, view)
                        && reply != protocol::ok()
                    {
                        tracing::debug!(reply = %crate::etf::summary(&reply), "raw-lane cast refused");
                    }
                    return;
                }
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
            // The store may still hold terms eetf cannot hold: without this, `get`, `cas`
            // and `:keys` would decode them into `{:error, :unrepresentable}`.
            has_raw: self.has_raw,
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
