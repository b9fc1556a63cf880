//! The KV GenServer: the [`Store`] plus subscriptions (monitored subscriber pids).
//!
//! `GenServer.stop` ends the process (monitors on it fire with the reason) and a fresh one
//! (new pid) takes the registered name with the same data; subscriptions do not survive it
//! (see [`KvServer::restart`](GenServer::restart)).

use super::durable::{self, Durable};
use super::key::Key;
use super::raw;
use super::store::{self, Event, Request, Store, Topic};
use crate::node::RawMessage;
use crate::node::gen_server::{self, CallResult, Caller, Ctx, GenServer};
use crate::storage::Op;
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
    /// The server's own pid in external format (for raw replies), made on first use.
    self_etf: Vec<u8>,
}

fn ok() -> Term {
    Atom::from("ok").into()
}

fn count(n: usize) -> Term {
    match i32::try_from(n) {
        Ok(v) => FixInteger::from(v).into(),
        Err(_) => BigInteger::from(n as u64).into(),
    }
}

thread_local! {
    /// Scratch space for the canonical key of a raw request.
    static RAW_KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The canonical key of a key in external format: read directly for the usual kinds of key,
/// else decoded first.
fn raw_canonical_key(key: &[u8], limits: &crate::etf::Limits, out: &mut Vec<u8>) -> bool {
    if super::key::encode_etf_into(key, out) {
        return true;
    }
    let mut versioned = Vec::with_capacity(key.len() + 1);
    versioned.push(131);
    versioned.extend_from_slice(key);
    match crate::etf::decode_exact(&versioned, limits) {
        Ok(term) => {
            super::key::encode_into(&term, out);
            true
        }
        Err(_) => false,
    }
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
    }

    fn publish(&self, ctx: &Ctx, event: &Event) {
        let key = Key::from_term(event.key());
        let by_key = self.by_key.get(&key);
        let message = store::event_message(event);
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
        req: store::DataRequest,
        caller: Option<&Caller>,
    ) -> Option<Term> {
        let Some(durable) = &self.durable else {
            let emit = self.subscriptions > 0;
            let (reply, event) = self.store.apply_with(req, emit);
            if let Some(event) = event {
                self.publish(ctx, &event);
            }
            return Some(reply);
        };
        let (reply, event) = self.store.apply_with(req, true);
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

    /// Number of keys (for tests and logs).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

impl GenServer for KvServer {
    fn handle_call(
        &mut self,
        ctx: &mut Ctx,
        from: &Caller,
        request: gen_server::Request<'_>,
    ) -> CallResult<'_> {
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "undecodable call");
                return CallResult::NoReply;
            }
        };
        let reply = match Request::from_term(request) {
            Ok(Request::Data(req)) => {
                return match self.data(ctx, req, Some(from)) {
                    Some(reply) => CallResult::Reply(reply),
                    None => CallResult::NoReply,
                };
            }
            Ok(Request::Subscribe(topic)) => {
                self.subscribe(ctx, &from.pid, topic);
                ok()
            }
            Ok(Request::Unsubscribe(topic)) => {
                self.unsubscribe(ctx, &from.pid, topic);
                ok()
            }
            Ok(Request::Subscribers) => count(self.subscriptions),
            Err(request) => {
                tracing::debug!(request = %crate::etf::summary(&request), "unknown call");
                store::unknown_request_reply(&request)
            }
        };
        CallResult::Reply(reply)
    }

    fn handle_cast(&mut self, ctx: &mut Ctx, request: gen_server::Request<'_>) {
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "undecodable cast: ignored");
                return;
            }
        };
        match Request::from_term(request) {
            Ok(Request::Data(req)) => {
                self.data(ctx, req, None);
            }
            Ok(_) => tracing::debug!("subscription requests need a call, not a cast: ignored"),
            Err(request) => {
                tracing::debug!(request = %crate::etf::summary(&request), "unknown cast: ignored")
            }
        }
    }

    /// `get`, `put` and `delete` from their bytes (see [`raw`]) when nothing else needs the
    /// terms: no durability (replies wait for the log) and, for changes, no subscribers
    /// (events carry the terms). The reply goes by ALIAS_SEND on the connection the call came
    /// on, exactly as [`crate::node::gen_server::Replier`] would send it.
    fn handle_raw(&mut self, ctx: &mut Ctx, raw: &RawMessage) -> bool {
        if self.durable.is_some() {
            return false;
        }
        let Some(message) = raw::parse(raw.message, raw.limits) else {
            return false;
        };
        if message.request.mutates() && self.subscriptions > 0 {
            return false;
        }
        let reply_to = match &message.from {
            None => None,
            Some(from) => {
                let Some(alias) = raw::alias_of(from.tag, raw.limits) else {
                    return false;
                };
                if !raw.conn.flags.contains(erl_dist::DistributionFlags::ALIAS)
                    || raw::pid_node(from.pid) != Some(raw.peer.as_bytes())
                {
                    return false;
                }
                Some((from.tag, alias))
            }
        };
        if self.self_etf.is_empty() {
            let mut pid = Vec::new();
            if Term::from(ctx.self_pid().clone()).encode(&mut pid).is_err() || pid.len() < 2 {
                return false;
            }
            pid.remove(0);
            self.self_etf = pid;
        }
        RAW_KEY.with(|cell| {
            let Ok(mut canon) = cell.try_borrow_mut() else {
                return false;
            };
            canon.clear();
            if !raw_canonical_key(message.request.key(), raw.limits, &mut canon) {
                return false;
            }
            let reply: &[u8] = match message.request {
                raw::Request::Get { default, .. } => match self.store.get_encoded(&canon) {
                    Some(value) => value.get(1..).unwrap_or(raw::NIL_ATOM),
                    None => default.unwrap_or(raw::NIL_ATOM),
                },
                raw::Request::Put { key, value } => {
                    self.store.put_encoded(&canon, key, value);
                    raw::OK
                }
                raw::Request::Delete { .. } => {
                    self.store.delete_encoded(&canon);
                    raw::OK
                }
            };
            if let Some((tag, alias)) = reply_to {
                let size = 32 + self.self_etf.len() + alias.len() + tag.len() + reply.len();
                let pushed = raw.conn.outbox.push_with(size, |out| {
                    raw::alias_reply_frame(out, &self.self_etf, alias, tag, &[reply]);
                });
                if pushed.is_err() {
                    tracing::warn!(
                        peer = raw.peer,
                        "peer is not reading: its outbound buffer is full, disconnecting it"
                    );
                    raw.conn.close();
                }
            }
            if canon.capacity() > 64 * 1024 {
                *canon = Vec::new();
            }
            true
        })
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
