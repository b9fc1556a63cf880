//! The KV GenServer: the [`Store`] plus subscriptions (monitored subscriber pids).

use super::durable::{self, Durable};
use super::key::Key;
use super::store::{self, Event, Request, Store, Topic};
use crate::gen_server::{Caller, Ctx, GenServer};
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

impl KvServer {
    /// An empty, in-memory store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with the recovered `entries` (external-term-encoded key/value pairs) that
    /// persists every change through `durable`. Undecodable entries are skipped with an error
    /// log (they passed the log's checksums, so only a bug could produce them).
    pub fn with_storage(durable: Durable, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        // Recovered entries passed the log's checksums: no term-count limit, so a value
        // accepted under a larger --max-terms-per-message is never dropped after a restart.
        let limits = crate::term::Limits {
            max_terms: usize::MAX,
            ..crate::term::Limits::default()
        };
        let mut store = Store::new();
        for (k, v) in entries {
            match (
                crate::term::decode_exact(&k, &limits),
                crate::term::decode_exact(&v, &limits),
            ) {
                (Ok(k), Ok(v)) => store.put(k, v),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(%error, "skipping an undecodable recovered entry");
                }
            }
        }
        KvServer {
            store,
            durable: Some(durable),
            ..Self::default()
        }
    }

    fn subscribe(&mut self, ctx: &Ctx, pid: &Pid, topic: Topic) {
        let node_local = ctx.node().is_local(pid);
        let sub = self
            .subscribers
            .entry(pid.clone())
            .or_insert_with(|| Subscriber {
                // Local callers (in-node rpc) have no remote node to monitor.
                monitor: (!node_local).then(|| ctx.monitor(pid)),
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
    fn handle_call(&mut self, ctx: &mut Ctx, from: &Caller, request: Term) -> Option<Term> {
        let reply = match Request::from_term(request) {
            Ok(Request::Data(req)) => return self.data(ctx, req, Some(from)),
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
                tracing::debug!(%request, "unknown call");
                store::unknown_request_reply(&request)
            }
        };
        Some(reply)
    }

    fn handle_cast(&mut self, ctx: &mut Ctx, request: Term) {
        match Request::from_term(request) {
            Ok(Request::Data(req)) => {
                self.data(ctx, req, None);
            }
            Ok(_) => tracing::debug!("subscription requests need a call, not a cast: ignored"),
            Err(request) => tracing::debug!(%request, "unknown cast: ignored"),
        }
    }

    fn handle_down(&mut self, _ctx: &mut Ctx, _reference: Reference, pid: Pid, reason: Term) {
        tracing::debug!(%pid, %reason, "subscriber down");
        self.drop_subscriber(&pid);
    }
}
