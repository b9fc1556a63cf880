//! The pure key-value store behind `DistributedExample.KVStore`.
//!
//! No I/O and no async: the GenServer (in `kv::server`) reads a request with
//! [`super::protocol`], hands data requests to [`Store::apply`] (or, on the byte view, to
//! [`Store::get_encoded`] and friends), sends the reply back, and fans any [`Event`] out to
//! subscribers as [`super::protocol::event_message`]. The request shapes and replies are
//! listed in [`super::protocol`].
//!
//! Keys are compared with Erlang's exact equality (`=:=`), via [`Key`]: `1` and `1.0` are
//! different keys, `0.0` and `-0.0` are different keys (OTP 27+ semantics), a charlist is the
//! same key however it was encoded, and maps are equal regardless of entry order.
//!
//! For `cas`, an `expected` of `nil` also matches an absent key, and `current` is `nil` when the
//! key is absent. `incr` treats an absent key as `0`.

use hashbrown::HashTable;
use std::hash::BuildHasher;

use eetf::{BigInteger, FixInteger, List, Term};
use num_bigint::BigInt;
use num_traits::ToPrimitive;
use thiserror::Error;

use super::key::Key;
use super::protocol::{DataRequest, exists, is_nil, mismatch, nil, not_integer, ok};

/// Why [`Store::incr`] refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IncrError {
    /// The amount, or the value currently stored under the key, is not an integer.
    #[error("value or increment is not an integer")]
    NotInteger,
}

/// A change to the store, to be sent to subscribers via [`super::protocol::event_message`].
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `key` now maps to `value` (put, successful put_new, cas or incr).
    Put {
        /// The key as the client sent it.
        key: Term,
        /// The new value.
        value: Term,
    },
    /// `key` was removed (only emitted when it existed).
    Delete {
        /// The key as it was stored.
        key: Term,
    },
}

impl Event {
    /// The key this event is about.
    pub fn key(&self) -> &Term {
        match self {
            Event::Put { key, .. } | Event::Delete { key } => key,
        }
    }
}

/// An integer term in canonical `eetf` form: `FixInteger` when it fits `i32`, else `BigInteger`.
fn int_from_big(value: BigInt) -> Term {
    match value.to_i32() {
        Some(v) => Term::from(FixInteger::from(v)),
        None => Term::from(BigInteger { value }),
    }
}

fn int_from_i64(value: i64) -> Term {
    match i32::try_from(value) {
        Ok(v) => Term::from(FixInteger::from(v)),
        Err(_) => Term::from(BigInteger::from(value)),
    }
}

/// Adds two integer terms; `None` if either is not an integer.
fn add_integers(a: &Term, b: &Term) -> Option<Term> {
    match (a, b) {
        (Term::FixInteger(x), Term::FixInteger(y)) => {
            Some(int_from_i64(i64::from(x.value) + i64::from(y.value)))
        }
        (Term::FixInteger(x), Term::BigInteger(y)) | (Term::BigInteger(y), Term::FixInteger(x)) => {
            Some(int_from_big(&y.value + x.value))
        }
        (Term::BigInteger(x), Term::BigInteger(y)) => Some(int_from_big(&x.value + &y.value)),
        _ => None,
    }
}

fn is_integer(term: &Term) -> bool {
    matches!(term, Term::FixInteger(_) | Term::BigInteger(_))
}

/// The store: one packed allocation per entry, found by its canonical key.
///
/// An entry is `[u32 canonical length][canonical key][u32 key length][key ETF][value ETF]`:
/// the canonical [`Key`] bytes (what lookups compare), the key as first written and the value,
/// both in external term format. Keeping encoded terms in one allocation (not `eetf::Term`
/// trees, not a map of separate boxes) keeps a small entry near 80 bytes including the table.
/// The original key is kept so `:keys` and events return what clients sent.
#[derive(Clone, Default)]
pub struct Store {
    table: HashTable<Box<[u8]>>,
    hasher: foldhash::fast::RandomState,
    /// The sum of the packed entries' lengths (see [`Store::stored_bytes`]), kept by every
    /// insert, replace and removal.
    bytes: usize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("len", &self.table.len())
            .finish()
    }
}

thread_local! {
    /// Scratch space for canonical keys of lookups (no allocation per `get`).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn encode_etf(term: &Term, out: &mut Vec<u8>) {
    // Encoding into a Vec has no I/O to fail; eetf can encode every term it can decode.
    if let Err(error) = crate::etf::encode::encode(term, &mut *out) {
        tracing::error!(%error, "cannot encode a stored term");
    }
}

fn put_len(blob: &mut [u8], at: usize, len: usize) {
    blob[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
}

fn pack(canon: &[u8], key: &Term, value: &Term) -> Box<[u8]> {
    let mut blob = Vec::with_capacity(8 + canon.len() + 32);
    blob.extend_from_slice(&[0; 4]);
    blob.extend_from_slice(canon);
    put_len(&mut blob, 0, canon.len());
    let key_at = blob.len();
    blob.extend_from_slice(&[0; 4]);
    encode_etf(key, &mut blob);
    let key_len = blob.len() - key_at - 4;
    put_len(&mut blob, key_at, key_len);
    encode_etf(value, &mut blob);
    blob.into_boxed_slice()
}

/// A length-prefixed section of a packed entry starting at `at`, and where the next begins.
fn section(blob: &[u8], at: usize) -> (&[u8], usize) {
    let len = blob
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(0);
    let start = (at + 4).min(blob.len());
    let end = (start + len).min(blob.len());
    (&blob[start..end], end)
}

/// The canonical key, key ETF and value ETF bytes of a packed entry.
fn unpack(blob: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (canon, next) = section(blob, 0);
    let (key, next) = section(blob, next);
    (canon, key, &blob[next..])
}

fn canon_of(blob: &[u8]) -> &[u8] {
    section(blob, 0).0
}

fn decode_stored(bytes: &[u8]) -> Term {
    // Through the checked decoder: a stored term eetf cannot hold (a native record, a map
    // with `0.0` and `-0.0` keys) is never turned into a different term.
    crate::etf::decode_exact(bytes, &super::durable::recovery_limits()).unwrap_or_else(|error| {
        // Reached through an in-node call (rpc `get`, `:keys`): a term cannot carry it.
        tracing::warn!(%error, "a stored term has no decoded form: answered {{:error, :unrepresentable}}");
        super::protocol::error(super::protocol::atom("unrepresentable"))
    })
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, canon: &[u8]) -> u64 {
        self.hasher.hash_one(canon)
    }

    fn with_key<R>(key: &Term, f: impl FnOnce(&[u8]) -> R) -> R {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                super::key::encode_into(key, &mut buf);
                let r = f(&buf);
                if buf.capacity() > 64 * 1024 {
                    *buf = Vec::new();
                }
                r
            }
            Err(_) => f(Key::from_term(key).as_bytes()),
        })
    }

    fn find(&self, canon: &[u8]) -> Option<&[u8]> {
        self.table
            .find(self.hash(canon), |b| canon_of(b) == canon)
            .map(|b| &**b)
    }

    /// Inserts or replaces the entry whose canonical key is `canon`.
    fn upsert(&mut self, canon: &[u8], blob: Box<[u8]>) {
        let hasher = &self.hasher;
        match self.table.entry(
            hasher.hash_one(canon),
            |b| canon_of(b) == canon,
            |b| hasher.hash_one(canon_of(b)),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                self.bytes = self.bytes - e.get().len() + blob.len();
                *e.get_mut() = blob;
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                self.bytes += blob.len();
                e.insert(blob);
            }
        }
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &Term) -> Option<Term> {
        Self::with_key(key, |k| self.find(k).map(|b| decode_stored(unpack(b).2)))
    }

    /// Stores `value` under `key`, overwriting any previous value.
    pub fn put(&mut self, key: Term, value: Term) {
        let canon = Key::from_term(&key);
        let blob = pack(canon.as_bytes(), &key, &value);
        self.upsert(canon.as_bytes(), blob);
    }

    /// Stores `value` under `key` only if the key is absent; returns whether it was stored.
    pub fn put_new(&mut self, key: Term, value: Term) -> bool {
        let canon = Key::from_term(&key);
        if self.find(canon.as_bytes()).is_some() {
            return false;
        }
        let blob = pack(canon.as_bytes(), &key, &value);
        self.upsert(canon.as_bytes(), blob);
        true
    }

    /// The stored value (external format, version byte included) under the canonical key
    /// `canon` (see [`super::key`]), without decoding anything.
    pub fn get_encoded(&self, canon: &[u8]) -> Option<&[u8]> {
        self.find(canon).map(|b| unpack(b).2)
    }

    /// Stores a key and value given in external format without their version bytes (as they
    /// sit inside a message) under the canonical key `canon`, overwriting any previous value.
    /// The caller guarantees that `canon` is the canonical key of `key_etf`.
    pub fn put_encoded(&mut self, canon: &[u8], key_etf: &[u8], value_etf: &[u8]) {
        let mut blob = Vec::with_capacity(10 + canon.len() + key_etf.len() + value_etf.len());
        blob.extend_from_slice(&(canon.len() as u32).to_le_bytes());
        blob.extend_from_slice(canon);
        blob.extend_from_slice(&(key_etf.len() as u32 + 1).to_le_bytes());
        blob.push(131);
        blob.extend_from_slice(key_etf);
        blob.push(131);
        blob.extend_from_slice(value_etf);
        self.upsert(canon, blob.into_boxed_slice());
    }

    /// The stored key (external format, version byte included) under the canonical key
    /// `canon`.
    pub fn key_encoded(&self, canon: &[u8]) -> Option<&[u8]> {
        self.find(canon).map(|b| unpack(b).1)
    }

    /// Removes the entry under the canonical key `canon`; returns whether it existed.
    pub fn delete_encoded(&mut self, canon: &[u8]) -> bool {
        let hasher = &self.hasher;
        match self
            .table
            .find_entry(hasher.hash_one(canon), |b| canon_of(b) == canon)
        {
            Ok(e) => {
                self.bytes -= e.remove().0.len();
                true
            }
            Err(_) => false,
        }
    }

    /// Removes `key`; returns whether it existed.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn delete(&mut self, key: &Term) -> bool {
        self.remove(key).is_some()
    }

    /// Removes `key`, returning the stored key as first written.
    fn remove(&mut self, key: &Term) -> Option<Term> {
        let hasher = &self.hasher;
        let blob = Self::with_key(key, |k| {
            match self
                .table
                .find_entry(hasher.hash_one(k), |b| canon_of(b) == k)
            {
                Ok(e) => Some(e.remove().0),
                Err(_) => None,
            }
        })?;
        self.bytes -= blob.len();
        Some(decode_stored(unpack(&blob).1))
    }

    /// Compare-and-swap: stores `new` if the current value is exactly `expected` (`=:=`), or if
    /// the key is absent and `expected` is the atom `nil`.
    ///
    /// On a mismatch returns `Err(current)`, where `None` means the key is absent.
    pub fn cas(&mut self, key: Term, expected: &Term, new: Term) -> Result<(), Option<Term>> {
        let canon = Key::from_term(&key);
        match self.find(canon.as_bytes()) {
            None => {
                if is_nil(expected) {
                    let blob = pack(canon.as_bytes(), &key, &new);
                    self.upsert(canon.as_bytes(), blob);
                    Ok(())
                } else {
                    Err(None)
                }
            }
            Some(blob) => {
                let (_, stored_key, current) = unpack(blob);
                let mut current_canon = Vec::new();
                let comparable = super::key::canonical_from_etf(
                    current.get(1..).unwrap_or_default(),
                    &mut current_canon,
                );
                let current = decode_stored(current);
                if comparable && current_canon.as_slice() == Key::from_term(expected).as_bytes() {
                    let stored_key = decode_stored(stored_key);
                    let blob = pack(canon.as_bytes(), &stored_key, &new);
                    self.upsert(canon.as_bytes(), blob);
                    Ok(())
                } else {
                    Err(Some(current))
                }
            }
        }
    }

    /// Adds the integer `amount` to the integer under `key` (absent counts as 0) and returns
    /// the new value, as `FixInteger` when it fits `i32` and `BigInteger` otherwise.
    pub fn incr(&mut self, key: Term, amount: &Term) -> Result<Term, IncrError> {
        if !is_integer(amount) {
            return Err(IncrError::NotInteger);
        }
        let canon = Key::from_term(&key);
        let (stored_key, new) = match self.find(canon.as_bytes()) {
            None => {
                let zero = Term::from(FixInteger::from(0));
                (
                    key,
                    add_integers(&zero, amount).ok_or(IncrError::NotInteger)?,
                )
            }
            Some(blob) => {
                let (_, stored_key, current) = unpack(blob);
                let current = decode_stored(current);
                let new = add_integers(&current, amount).ok_or(IncrError::NotInteger)?;
                (decode_stored(stored_key), new)
            }
        };
        let blob = pack(canon.as_bytes(), &stored_key, &new);
        self.upsert(canon.as_bytes(), blob);
        Ok(new)
    }

    /// The keys, as originally written, in unspecified order.
    pub fn keys(&self) -> Vec<Term> {
        self.table
            .iter()
            .map(|b| decode_stored(unpack(b).1))
            .collect()
    }

    /// Every `(key, value)` pair as external term format bytes, in unspecified order (what a
    /// snapshot writes; no decoding or re-encoding).
    pub fn iter_encoded(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.table.iter().map(|b| {
            let (_, k, v) = unpack(b);
            (k, v)
        })
    }

    /// The bytes the entries hold, in O(1): for each key, its canonical form (see
    /// [`super::key`]), the key and the value in external term format (version bytes
    /// included), and 8 bytes of section lengths. The hash table's slots and the
    /// allocator's overhead are not counted.
    pub fn stored_bytes(&self) -> usize {
        self.bytes
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the store has no keys.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Applies a data request and returns the reply term plus the change event, if any.
    ///
    /// Replies are listed in the module docs. Events: put always; put_new, cas and incr only
    /// on success; delete only when the key existed; get, keys and size never.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn apply(&mut self, req: DataRequest) -> (Term, Option<Event>) {
        self.apply_with(req, true)
    }

    /// Like [`Store::apply`], but with `emit_events == false` never builds an event (saving the
    /// key/value clones when nobody is subscribed).
    pub fn apply_with(&mut self, req: DataRequest, emit_events: bool) -> (Term, Option<Event>) {
        let event = |key: &Term, value: &Term| {
            emit_events.then(|| Event::Put {
                key: key.clone(),
                value: value.clone(),
            })
        };
        match req {
            DataRequest::Get { key, default } => (self.get(&key).unwrap_or(default), None),
            DataRequest::Put { key, value } => {
                let ev = event(&key, &value);
                self.put(key, value);
                (ok(), ev)
            }
            DataRequest::PutNew { key, value } => {
                let ev = event(&key, &value);
                if self.put_new(key, value) {
                    (ok(), ev)
                } else {
                    (exists(), None)
                }
            }
            DataRequest::Delete { key } => {
                let ev = self
                    .remove(&key)
                    .filter(|_| emit_events)
                    .map(|key| Event::Delete { key });
                (ok(), ev)
            }
            DataRequest::Cas { key, expected, new } => {
                let ev = event(&key, &new);
                match self.cas(key, &expected, new) {
                    Ok(()) => (ok(), ev),
                    Err(current) => {
                        let current = current.unwrap_or_else(nil);
                        (mismatch(current), None)
                    }
                }
            }
            DataRequest::Incr { key, amount } => {
                let ev_key = emit_events.then(|| key.clone());
                match self.incr(key, &amount) {
                    Ok(new) => {
                        let ev = ev_key.map(|key| Event::Put {
                            key,
                            value: new.clone(),
                        });
                        (new, ev)
                    }
                    Err(IncrError::NotInteger) => (not_integer(), None),
                }
            }
            DataRequest::Keys => (Term::from(List::from(self.keys())), None),
            DataRequest::Size => (int_from_i64(self.len() as i64), None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::protocol::{Request, Topic, atom, event_message, tuple, unknown_request_reply};
    use crate::kv::test_terms::{big, bin, float, int, list, map};
    use eetf::{ByteList, Pid};

    fn a(name: &str) -> Term {
        atom(name)
    }
    fn t(elements: Vec<Term>) -> Term {
        tuple(elements)
    }
    fn ok() -> Term {
        a("ok")
    }
    fn parse(term: Term) -> Option<Request> {
        let by_ref = Request::parse(&term);
        let owned = Request::from_term(term.clone());
        match &owned {
            Ok(req) => assert_eq!(Some(req), by_ref.as_ref()),
            Err(back) => {
                assert_eq!(back, &term, "from_term must hand the term back unchanged");
                assert!(by_ref.is_none());
            }
        }
        by_ref
    }
    fn data(term: Term) -> DataRequest {
        match parse(term) {
            Some(Request::Data(d)) => d,
            other => panic!("expected a data request, got {other:?}"),
        }
    }

    // ---- parsing ----

    #[test]
    fn parses_every_request_shape() {
        assert_eq!(
            data(t(vec![a("get"), bin("k")])),
            DataRequest::Get {
                key: bin("k"),
                default: a("nil")
            }
        );
        assert_eq!(
            data(t(vec![a("get"), bin("k"), int(7)])),
            DataRequest::Get {
                key: bin("k"),
                default: int(7)
            }
        );
        assert_eq!(
            data(t(vec![a("put"), a("message"), bin("hello")])),
            DataRequest::Put {
                key: a("message"),
                value: bin("hello")
            }
        );
        assert_eq!(
            data(t(vec![a("put_new"), int(1), int(2)])),
            DataRequest::PutNew {
                key: int(1),
                value: int(2)
            }
        );
        assert_eq!(
            data(t(vec![a("delete"), int(1)])),
            DataRequest::Delete { key: int(1) }
        );
        assert_eq!(
            data(t(vec![a("cas"), int(1), a("nil"), int(3)])),
            DataRequest::Cas {
                key: int(1),
                expected: a("nil"),
                new: int(3)
            }
        );
        assert_eq!(
            data(t(vec![a("incr"), bin("c"), int(5)])),
            DataRequest::Incr {
                key: bin("c"),
                amount: int(5)
            }
        );
        assert_eq!(
            data(t(vec![a("incr"), bin("c")])),
            DataRequest::Incr {
                key: bin("c"),
                amount: int(1)
            }
        );
        assert_eq!(data(a("keys")), DataRequest::Keys);
        assert_eq!(data(a("size")), DataRequest::Size);
        assert_eq!(
            parse(t(vec![a("subscribe"), bin("k")])),
            Some(Request::Subscribe(Topic::Key(bin("k"))))
        );
        assert_eq!(
            parse(t(vec![a("subscribe"), a("all")])),
            Some(Request::Subscribe(Topic::All))
        );
        assert_eq!(
            parse(t(vec![a("unsubscribe"), bin("k")])),
            Some(Request::Unsubscribe(Topic::Key(bin("k"))))
        );
        assert_eq!(
            parse(t(vec![a("unsubscribe"), a("all")])),
            Some(Request::Unsubscribe(Topic::All))
        );
        assert_eq!(parse(a("subscribers")), Some(Request::Subscribers));
    }

    #[test]
    fn rejects_bad_shapes() {
        let bad = vec![
            t(vec![a("get")]),
            t(vec![a("get"), int(1), int(2), int(3)]),
            t(vec![a("put"), int(1)]),
            t(vec![a("put"), int(1), int(2), int(3)]),
            t(vec![a("put_new"), int(1)]),
            t(vec![a("delete")]),
            t(vec![a("delete"), int(1), int(2)]),
            t(vec![a("cas"), int(1), int(2)]),
            t(vec![a("cas"), int(1), int(2), int(3), int(4)]),
            t(vec![a("incr")]),
            t(vec![a("incr"), int(1), int(2), int(3)]),
            t(vec![a("subscribe")]),
            t(vec![a("subscribe"), int(1), int(2)]),
            t(vec![a("unsubscribe")]),
            t(vec![a("keys")]),
            t(vec![a("size")]),
            t(vec![a("subscribers")]),
            t(vec![a("frobnicate"), int(1)]),
            t(vec![bin("get"), int(1)]),
            t(vec![int(1), int(2)]),
            t(vec![]),
            a("get"),
            a("put"),
            a("nil"),
            a("Keys"),
            bin("keys"),
            list(vec![a("get"), int(1)]),
            Term::from(ByteList::from("keys")),
            int(1),
            map(vec![(a("get"), int(1))]),
        ];
        for term in bad {
            assert_eq!(parse(term.clone()), None, "{term} should not parse");
        }
    }

    #[test]
    fn unknown_request_reply_shape() {
        let req = t(vec![a("frobnicate"), int(1)]);
        assert_eq!(
            unknown_request_reply(&req),
            t(vec![a("error"), t(vec![a("unknown_request"), req.clone()])])
        );
    }

    // ---- store semantics ----

    #[test]
    fn put_get_overwrite_delete() {
        let mut s = Store::new();
        assert!(s.is_empty());
        assert_eq!(s.get(&a("k")).as_ref(), None);
        s.put(a("k"), int(1));
        assert_eq!(s.get(&a("k")).as_ref(), Some(&int(1)));
        s.put(a("k"), int(2));
        assert_eq!(s.get(&a("k")).as_ref(), Some(&int(2)));
        assert_eq!(s.len(), 1);
        assert!(s.delete(&a("k")));
        assert!(!s.delete(&a("k")));
        assert!(s.is_empty());
    }

    /// The byte count every write keeps equals a recount of the entries, after each kind
    /// of change; a binary key and value count exactly as documented.
    #[test]
    fn stored_bytes_follow_every_change() {
        fn recount(s: &Store) -> usize {
            s.table.iter().map(|b| b.len()).sum()
        }
        let mut s = Store::new();
        assert_eq!(s.stored_bytes(), 0);
        // "k1" => 10 bytes: 8 bytes of lengths, canonical key 3 + 2 (tag, length, bytes,
        // tail bits), key ETF 6 + 2 and value ETF 6 + 10, version bytes included.
        s.put(bin(b"k1"), bin(&[7; 10]));
        assert_eq!(s.stored_bytes(), 8 + 5 + 8 + 16);
        // Overwrite: bigger, then smaller.
        s.put(bin(b"k1"), bin(&[7; 100]));
        assert_eq!(s.stored_bytes(), 8 + 5 + 8 + 106);
        s.put(bin(b"k1"), bin(&[7; 3]));
        assert_eq!(s.stored_bytes(), 8 + 5 + 8 + 9);
        let one = s.stored_bytes();
        let check = |s: &mut Store, what: &str, f: &dyn Fn(&mut Store)| {
            f(s);
            assert_eq!(s.stored_bytes(), recount(s), "after {what}");
        };
        check(&mut s, "put_new", &|s| {
            s.put_new(a("n"), int(1));
        });
        check(&mut s, "put_new refused", &|s| {
            s.put_new(a("n"), int(2));
        });
        check(&mut s, "cas", &|s| {
            let _ = s.cas(a("n"), &int(1), bin(&[1; 50]));
        });
        check(&mut s, "cas mismatch", &|s| {
            let _ = s.cas(a("n"), &int(1), int(3));
        });
        check(&mut s, "incr", &|s| {
            let _ = s.incr(a("c"), &big(i64::MAX));
        });
        check(&mut s, "incr again", &|s| {
            let _ = s.incr(a("c"), &int(1));
        });
        check(&mut s, "put_encoded", &|s| {
            let canon = Key::from_term(&a("e"));
            s.put_encoded(canon.as_bytes(), &[119, 1, b'e'], &[97, 5]);
        });
        check(&mut s, "put_encoded overwrite", &|s| {
            let canon = Key::from_term(&a("e"));
            s.put_encoded(canon.as_bytes(), &[119, 1, b'e'], &[109, 0, 0, 0, 1, 9]);
        });
        check(&mut s, "delete_encoded", &|s| {
            assert!(s.delete_encoded(Key::from_term(&a("e")).as_bytes()));
        });
        check(&mut s, "delete_encoded of nothing", &|s| {
            assert!(!s.delete_encoded(Key::from_term(&a("e")).as_bytes()));
        });
        check(&mut s, "apply delete", &|s| {
            s.apply(DataRequest::Delete { key: a("n") });
        });
        check(&mut s, "delete", &|s| {
            assert!(s.delete(&a("c")));
            assert!(!s.delete(&a("c")));
        });
        assert_eq!(s.stored_bytes(), one);
        assert!(s.delete(&bin(b"k1")));
        assert_eq!(s.stored_bytes(), 0);
    }

    #[test]
    fn put_new_only_inserts_once() {
        let mut s = Store::new();
        assert!(s.put_new(bin("k"), int(1)));
        assert!(!s.put_new(bin("k"), int(2)));
        assert_eq!(s.get(&bin("k")).as_ref(), Some(&int(1)));
    }

    #[test]
    fn integer_and_float_keys_are_distinct() {
        let mut s = Store::new();
        s.put(int(1), a("int"));
        s.put(float(1.0), a("float"));
        s.put(big(1), a("big"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(&int(1)).as_ref(), Some(&a("big")));
        assert_eq!(s.get(&float(1.0)).as_ref(), Some(&a("float")));
        s.put(float(0.0), a("pos"));
        s.put(float(-0.0), a("neg"));
        assert_eq!(s.get(&float(0.0)).as_ref(), Some(&a("pos")));
        assert_eq!(s.get(&float(-0.0)).as_ref(), Some(&a("neg")));
    }

    #[test]
    fn bytelist_and_list_keys_are_the_same() {
        let mut s = Store::new();
        s.put(Term::from(ByteList::from("hi")), int(1));
        assert_eq!(
            s.get(&list(vec![int(104), int(105)])).as_ref(),
            Some(&int(1))
        );
        assert_eq!(s.get(&bin("hi")).as_ref(), None);
        s.put(list(vec![]), a("empty"));
        assert_eq!(
            s.get(&Term::from(ByteList::from(""))).as_ref(),
            Some(&a("empty"))
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn map_keys_ignore_insertion_order() {
        let entries: Vec<(Term, Term)> = (0..64).map(|i| (int(i), bin(&i.to_string()))).collect();
        let forward = map(entries.clone());
        let backward = map(entries.into_iter().rev().collect());
        let mut s = Store::new();
        s.put(forward, a("v1"));
        assert_eq!(s.get(&backward).as_ref(), Some(&a("v1")));
        s.put(backward, a("v2"));
        assert_eq!(s.len(), 1);
        let nested_a = map(vec![
            (a("x"), map(vec![(a("p"), int(1)), (a("q"), int(2))])),
            (a("y"), Term::from(ByteList::from("s"))),
        ]);
        let nested_b = map(vec![
            (a("y"), list(vec![int(115)])),
            (a("x"), map(vec![(a("q"), int(2)), (a("p"), big(1))])),
        ]);
        s.put(nested_a, int(9));
        assert_eq!(s.get(&nested_b).as_ref(), Some(&int(9)));
    }

    #[test]
    fn atom_keys() {
        let mut s = Store::new();
        s.put(a("message"), bin("hello"));
        assert_eq!(s.get(&a("message")).as_ref(), Some(&bin("hello")));
        assert_eq!(s.get(&bin("message")).as_ref(), None);
        s.put(a("nil"), int(0));
        assert_eq!(s.get(&a("nil")).as_ref(), Some(&int(0)));
        assert_eq!(s.get(&list(vec![])).as_ref(), None);
    }

    #[test]
    fn pid_keys() {
        let mut s = Store::new();
        let p = Term::from(Pid::new("a@h", 1, 0, 5));
        s.put(p.clone(), int(1));
        assert_eq!(s.get(&p).as_ref(), Some(&int(1)));
        assert_eq!(s.get(&Term::from(Pid::new("a@h", 1, 0, 6))), None);
    }

    #[test]
    fn keys_returns_original_terms() {
        let mut s = Store::new();
        s.put(Term::from(ByteList::from("ab")), int(1));
        s.put(a("x"), int(2));
        let mut keys = s.keys();
        keys.sort_by_key(|k| format!("{k}"));
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a("x")));
        assert!(keys.contains(&Term::from(ByteList::from("ab"))));
    }

    #[test]
    fn cas_semantics() {
        let mut s = Store::new();
        // nil matches an absent key.
        assert_eq!(s.cas(a("k"), &a("nil"), int(1)), Ok(()));
        assert_eq!(s.get(&a("k")).as_ref(), Some(&int(1)));
        // Absent key, non-nil expected: mismatch with current None.
        assert_eq!(s.cas(a("other"), &int(1), int(2)), Err(None));
        assert_eq!(s.get(&a("other")).as_ref(), None);
        // Exact match.
        assert_eq!(s.cas(a("k"), &int(1), int(2)), Ok(()));
        // 2.0 is not 2.
        assert_eq!(s.cas(a("k"), &float(2.0), int(3)), Err(Some(int(2))));
        // A BigInteger of the same value does match.
        assert_eq!(s.cas(a("k"), &big(2), int(3)), Ok(()));
        // nil does not match a present non-nil value.
        assert_eq!(s.cas(a("k"), &a("nil"), int(4)), Err(Some(int(3))));
        // A stored nil matches expected nil.
        s.put(a("n"), a("nil"));
        assert_eq!(s.cas(a("n"), &a("nil"), int(5)), Ok(()));
        assert_eq!(s.get(&a("n")).as_ref(), Some(&int(5)));
        // Signed zero: OTP 27+ semantics.
        s.put(a("z"), float(0.0));
        assert_eq!(s.cas(a("z"), &float(-0.0), int(1)), Err(Some(float(0.0))));
        // Charlist values compare canonically.
        s.put(a("s"), Term::from(ByteList::from("hi")));
        assert_eq!(
            s.cas(a("s"), &list(vec![int(104), int(105)]), int(1)),
            Ok(())
        );
    }

    #[test]
    fn incr_semantics() {
        let mut s = Store::new();
        assert_eq!(s.incr(a("c"), &int(5)), Ok(int(5)));
        assert_eq!(s.incr(a("c"), &int(-7)), Ok(int(-2)));
        assert_eq!(s.incr(a("c"), &big(2)), Ok(int(0)));
        assert_eq!(s.incr(a("c"), &float(1.0)), Err(IncrError::NotInteger));
        assert_eq!(s.incr(a("c"), &bin("1")), Err(IncrError::NotInteger));
        assert_eq!(s.get(&a("c")).as_ref(), Some(&int(0)));
        s.put(a("s"), bin("x"));
        assert_eq!(s.incr(a("s"), &int(1)), Err(IncrError::NotInteger));
        assert_eq!(s.get(&a("s")).as_ref(), Some(&bin("x")));
        s.put(a("f"), float(1.0));
        assert_eq!(s.incr(a("f"), &int(1)), Err(IncrError::NotInteger));
        // A failed incr on an absent key does not create it.
        assert_eq!(s.incr(a("none"), &a("x")), Err(IncrError::NotInteger));
        assert_eq!(s.get(&a("none")).as_ref(), None);
    }

    #[test]
    fn incr_crosses_i32_bounds_both_ways() {
        let mut s = Store::new();
        let max = i64::from(i32::MAX);
        let min = i64::from(i32::MIN);
        s.put(a("c"), int(i32::MAX));
        let up = s.incr(a("c"), &int(1));
        assert_eq!(up, Ok(big(max + 1)));
        assert!(matches!(up, Ok(Term::BigInteger(_))));
        let down = s.incr(a("c"), &int(-1));
        assert_eq!(down, Ok(int(i32::MAX)));
        assert!(matches!(down, Ok(Term::FixInteger(_))));

        s.put(a("m"), int(i32::MIN));
        assert_eq!(s.incr(a("m"), &int(-1)), Ok(big(min - 1)));
        assert_eq!(s.incr(a("m"), &int(1)), Ok(int(i32::MIN)));

        // Big + big, far beyond i64, and back down to a fix integer.
        let huge = BigInt::from(u64::MAX) * 4u32;
        s.put(a("h"), big(huge.clone()));
        assert_eq!(s.incr(a("h"), &big(huge.clone())), Ok(big(&huge * 2u32)));
        assert_eq!(s.incr(a("h"), &big(-(&huge * 2u32) + 3)), Ok(int(3)));
        // A non-normalised BigInteger amount on an absent key is normalised.
        assert_eq!(s.incr(a("n"), &big(42)), Ok(int(42)));
        assert!(matches!(s.get(&a("n")), Some(Term::FixInteger(_))));
        // Fix + fix overflowing i32 in the negative direction.
        s.put(a("neg"), int(i32::MIN));
        assert_eq!(s.incr(a("neg"), &int(i32::MIN)), Ok(big(min * 2)));
    }

    // ---- apply: replies and events ----

    #[test]
    fn apply_replies_and_events() {
        let mut s = Store::new();
        let put = |k: Term, v: Term| DataRequest::Put { key: k, value: v };

        assert_eq!(
            s.apply(DataRequest::Get {
                key: a("k"),
                default: a("nil")
            }),
            (a("nil"), None)
        );
        assert_eq!(
            s.apply(DataRequest::Get {
                key: a("k"),
                default: int(0)
            }),
            (int(0), None)
        );
        assert_eq!(
            s.apply(put(a("k"), bin("v"))),
            (
                ok(),
                Some(Event::Put {
                    key: a("k"),
                    value: bin("v")
                })
            )
        );
        assert_eq!(
            s.apply(DataRequest::Get {
                key: a("k"),
                default: int(0)
            }),
            (bin("v"), None)
        );
        assert_eq!(
            s.apply(DataRequest::PutNew {
                key: a("k"),
                value: int(1)
            }),
            (t(vec![a("error"), a("exists")]), None)
        );
        assert_eq!(
            s.apply(DataRequest::PutNew {
                key: a("k2"),
                value: int(1)
            }),
            (
                ok(),
                Some(Event::Put {
                    key: a("k2"),
                    value: int(1)
                })
            )
        );
        assert_eq!(s.apply(DataRequest::Size), (int(2), None));
        let (keys, ev) = s.apply(DataRequest::Keys);
        assert_eq!(ev, None);
        match keys {
            Term::List(l) => {
                assert_eq!(l.elements.len(), 2);
                assert!(l.elements.contains(&a("k")) && l.elements.contains(&a("k2")));
            }
            other => panic!("keys reply should be a list, got {other}"),
        }
        assert_eq!(
            s.apply(DataRequest::Delete { key: a("k2") }),
            (ok(), Some(Event::Delete { key: a("k2") }))
        );
        assert_eq!(s.apply(DataRequest::Delete { key: a("k2") }), (ok(), None));

        // cas
        assert_eq!(
            s.apply(DataRequest::Cas {
                key: a("k"),
                expected: bin("wrong"),
                new: int(1)
            }),
            (t(vec![a("error"), t(vec![a("mismatch"), bin("v")])]), None)
        );
        assert_eq!(
            s.apply(DataRequest::Cas {
                key: a("absent"),
                expected: int(1),
                new: int(1)
            }),
            (t(vec![a("error"), t(vec![a("mismatch"), a("nil")])]), None)
        );
        assert_eq!(
            s.apply(DataRequest::Cas {
                key: a("k"),
                expected: bin("v"),
                new: int(1)
            }),
            (
                ok(),
                Some(Event::Put {
                    key: a("k"),
                    value: int(1)
                })
            )
        );

        // incr
        assert_eq!(
            s.apply(DataRequest::Incr {
                key: a("k"),
                amount: int(2)
            }),
            (
                int(3),
                Some(Event::Put {
                    key: a("k"),
                    value: int(3)
                })
            )
        );
        assert_eq!(
            s.apply(DataRequest::Incr {
                key: a("k"),
                amount: bin("x")
            }),
            (t(vec![a("error"), a("not_integer")]), None)
        );
        assert_eq!(s.apply(DataRequest::Size), (int(1), None));
    }

    #[test]
    fn apply_with_events_disabled_builds_none() {
        let mut s = Store::new();
        let reqs = vec![
            DataRequest::Put {
                key: a("k"),
                value: int(1),
            },
            DataRequest::PutNew {
                key: a("j"),
                value: int(1),
            },
            DataRequest::Cas {
                key: a("k"),
                expected: int(1),
                new: int(2),
            },
            DataRequest::Incr {
                key: a("k"),
                amount: int(1),
            },
            DataRequest::Delete { key: a("k") },
        ];
        for req in reqs {
            let (reply, ev) = s.apply_with(req, false);
            assert_ne!(reply, a("error"));
            assert_eq!(ev, None);
        }
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn parse_then_apply_end_to_end() {
        let mut s = Store::new();
        let mut call = |req: Term| match Request::from_term(req) {
            Ok(Request::Data(d)) => s.apply(d).0,
            Ok(other) => panic!("not a data request: {other:?}"),
            Err(req) => unknown_request_reply(&req),
        };
        assert_eq!(call(t(vec![a("put"), a("message"), bin("hello")])), ok());
        assert_eq!(call(t(vec![a("get"), a("message")])), bin("hello"));
        assert_eq!(call(t(vec![a("incr"), a("n")])), int(1));
        assert_eq!(call(t(vec![a("incr"), a("n")])), int(2));
        assert_eq!(call(a("size")), int(2));
        let bad = t(vec![a("put"), a("x")]);
        assert_eq!(
            call(bad.clone()),
            t(vec![a("error"), t(vec![a("unknown_request"), bad])])
        );
    }

    #[test]
    fn event_messages() {
        assert_eq!(
            event_message(&Event::Put {
                key: a("k"),
                value: int(1)
            }),
            t(vec![a("kv_event"), a("k"), t(vec![a("put"), int(1)])])
        );
        assert_eq!(
            event_message(&Event::Delete { key: bin("k") }),
            t(vec![a("kv_event"), bin("k"), a("delete")])
        );
        assert_eq!(Event::Delete { key: bin("k") }.key(), &bin("k"));
    }
}
