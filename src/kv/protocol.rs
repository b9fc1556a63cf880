//! The KV interface of `DistributedExample.KVStore`, once: every request shape, read from a
//! request's bytes (the byte view: `get`, `put`, `delete`, the traffic that matters, read
//! without decoding) or from its decoded term (the term view: everything), and the reply and
//! event builders, as terms and, where the byte view answers, as bytes.
//!
//! The shapes and their replies are tabulated in the [`crate::kv`] module docs (the wire
//! interface's one prose description); this module is their one implementation.
//!
//! The byte view ([`ByteRequest::parse`]) recognises only what it can read exactly; anything
//! else is left to the term view, so it never changes an answer. The property test
//! `byte_view_and_term_view_agree` checks that over a zoo of keys and values.

use super::store::Event;
use crate::Request as ServerRequest;
use crate::etf::skip::atom as atom_at;
use crate::etf::{SMALL_ATOM_UTF8_EXT as SMALL_ATOM_UTF8, SMALL_TUPLE_EXT as SMALL_TUPLE};
use eetf::{Atom, FixInteger, Term, Tuple};

/// Atom names used on the wire, one constant per protocol tag.
pub mod atoms {
    /// `:get`
    pub const GET: &str = "get";
    /// `:put`
    pub const PUT: &str = "put";
    /// `:put_new`
    pub const PUT_NEW: &str = "put_new";
    /// `:delete`
    pub const DELETE: &str = "delete";
    /// `:cas`
    pub const CAS: &str = "cas";
    /// `:incr`
    pub const INCR: &str = "incr";
    /// `:keys`
    pub const KEYS: &str = "keys";
    /// `:size`
    pub const SIZE: &str = "size";
    /// `:subscribe`
    pub const SUBSCRIBE: &str = "subscribe";
    /// `:unsubscribe`
    pub const UNSUBSCRIBE: &str = "unsubscribe";
    /// `:subscribers`
    pub const SUBSCRIBERS: &str = "subscribers";
    /// `:all` (subscription topic meaning every key)
    pub const ALL: &str = "all";
    /// `nil`
    pub const NIL: &str = "nil";
    /// `:ok`
    pub const OK: &str = "ok";
    /// `:error`
    pub const ERROR: &str = "error";
    /// `:exists`
    pub const EXISTS: &str = "exists";
    /// `:mismatch`
    pub const MISMATCH: &str = "mismatch";
    /// `:not_integer`
    pub const NOT_INTEGER: &str = "not_integer";
    /// `:unknown_request`
    pub const UNKNOWN_REQUEST: &str = "unknown_request";
    /// `:kv_event`
    pub const KV_EVENT: &str = "kv_event";
}

/// A subscription topic: one key, or every key.
///
/// `{:subscribe, :all}` always means [`Topic::All`], so the atom key `:all` cannot be
/// subscribed to individually (an `:all` subscription covers it).
#[derive(Debug, Clone, PartialEq)]
pub enum Topic {
    /// Changes to this key only.
    Key(Term),
    /// Changes to any key.
    All,
}

/// A request that reads or changes the store; see [`super::store::Store::apply`].
#[derive(Debug, Clone, PartialEq)]
pub enum DataRequest {
    /// `{:get, k}` (default `nil`) or `{:get, k, default}`.
    Get {
        /// The key.
        key: Term,
        /// Returned when the key is absent.
        default: Term,
    },
    /// `{:put, k, v}`: insert or overwrite.
    Put {
        /// The key.
        key: Term,
        /// The value.
        value: Term,
    },
    /// `{:put_new, k, v}`: insert only if absent.
    PutNew {
        /// The key.
        key: Term,
        /// The value.
        value: Term,
    },
    /// `{:delete, k}`.
    Delete {
        /// The key.
        key: Term,
    },
    /// `{:cas, k, expected, new}`: compare-and-swap.
    Cas {
        /// The key.
        key: Term,
        /// The value the key must hold (`nil` also matches an absent key).
        expected: Term,
        /// The value to store on a match.
        new: Term,
    },
    /// `{:incr, k}` (amount 1) or `{:incr, k, amount}`.
    Incr {
        /// The key.
        key: Term,
        /// The integer to add.
        amount: Term,
    },
    /// `:keys`.
    Keys,
    /// `:size`.
    Size,
}

/// A decoded KV request (the payload of a `$gen_call` or `$gen_cast`).
///
/// Data requests go to [`super::store::Store::apply`]; the subscription variants are the server's to handle.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A store operation.
    Data(DataRequest),
    /// `{:subscribe, k}` or `{:subscribe, :all}`.
    Subscribe(Topic),
    /// `{:unsubscribe, k}` or `{:unsubscribe, :all}`.
    Unsubscribe(Topic),
    /// `:subscribers`.
    Subscribers,
}

impl Request {
    /// Decodes a request, or `None` if it has no known shape (reply with
    /// [`unknown_request_reply`]). Clones the parts it keeps; prefer [`Request::from_term`]
    /// when the term is owned.
    #[cfg(test)]
    pub fn parse(term: &Term) -> Option<Request> {
        // Check the shape first so an unknown request (possibly large) is never cloned.
        if !Self::is_known_shape(term) {
            return None;
        }
        Self::from_term(term.clone()).ok()
    }

    fn is_known_shape(term: &Term) -> bool {
        match term {
            Term::Atom(a) => matches!(
                a.name.as_str(),
                atoms::KEYS | atoms::SIZE | atoms::SUBSCRIBERS
            ),
            Term::Tuple(t) => match t.elements.split_first() {
                Some((Term::Atom(tag), rest)) => matches!(
                    (tag.name.as_str(), rest.len()),
                    (atoms::GET, 1 | 2)
                        | (atoms::PUT | atoms::PUT_NEW, 2)
                        | (atoms::DELETE, 1)
                        | (atoms::CAS, 3)
                        | (atoms::INCR, 1 | 2)
                        | (atoms::SUBSCRIBE | atoms::UNSUBSCRIBE, 1)
                ),
                _ => false,
            },
            _ => false,
        }
    }

    /// Decodes an owned request term without cloning; on an unknown shape the term is handed
    /// back unchanged (for [`unknown_request_reply`]).
    pub fn from_term(term: Term) -> Result<Request, Term> {
        if !Self::is_known_shape(&term) {
            return Err(term);
        }
        let (tag, mut args) = match term {
            Term::Atom(a) => {
                return match a.name.as_str() {
                    atoms::KEYS => Ok(Request::Data(DataRequest::Keys)),
                    atoms::SIZE => Ok(Request::Data(DataRequest::Size)),
                    atoms::SUBSCRIBERS => Ok(Request::Subscribers),
                    _ => Err(Term::Atom(a)),
                };
            }
            Term::Tuple(t) => {
                let mut elements = t.elements.into_iter();
                match elements.next() {
                    Some(Term::Atom(tag)) => (tag, elements),
                    // Unreachable after `is_known_shape`; stay total rather than panic.
                    first => {
                        return Err(Term::from(Tuple::from(
                            first.into_iter().chain(elements).collect::<Vec<_>>(),
                        )));
                    }
                }
            }
            other => return Err(other),
        };
        let arity = args.len();
        // `is_known_shape` fixed the arity, so `next` never runs dry; `nil` keeps it total.
        let mut next = || args.next().unwrap_or_else(nil);
        let data = match (tag.name.as_str(), arity) {
            (atoms::GET, 1) => DataRequest::Get {
                key: next(),
                default: nil(),
            },
            (atoms::GET, _) => DataRequest::Get {
                key: next(),
                default: next(),
            },
            (atoms::PUT, _) => DataRequest::Put {
                key: next(),
                value: next(),
            },
            (atoms::PUT_NEW, _) => DataRequest::PutNew {
                key: next(),
                value: next(),
            },
            (atoms::DELETE, _) => DataRequest::Delete { key: next() },
            (atoms::CAS, _) => DataRequest::Cas {
                key: next(),
                expected: next(),
                new: next(),
            },
            (atoms::INCR, 1) => DataRequest::Incr {
                key: next(),
                amount: Term::from(FixInteger::from(1)),
            },
            (atoms::INCR, _) => DataRequest::Incr {
                key: next(),
                amount: next(),
            },
            (atoms::SUBSCRIBE, _) => return Ok(Request::Subscribe(topic_of(next()))),
            (atoms::UNSUBSCRIBE, _) => return Ok(Request::Unsubscribe(topic_of(next()))),
            _ => {
                let rest: Vec<Term> = args.collect();
                return Err(retuple(tag, rest));
            }
        };
        Ok(Request::Data(data))
    }
}

/// Rebuilds a tuple `{tag, rest...}` (for handing back an unknown request).
fn retuple(tag: Atom, rest: Vec<Term>) -> Term {
    let mut all = Vec::with_capacity(rest.len() + 1);
    all.push(Term::Atom(tag));
    all.extend(rest);
    Term::from(Tuple::from(all))
}

fn topic_of(term: Term) -> Topic {
    match term {
        Term::Atom(a) if a.name == atoms::ALL => Topic::All,
        other => Topic::Key(other),
    }
}

/// An atom.
pub fn atom(name: &str) -> Term {
    Term::from(Atom::from(name))
}

/// `nil`: the reply of a `get` on an absent key without a default.
pub fn nil() -> Term {
    atom(atoms::NIL)
}

/// Whether `term` is `nil`.
pub fn is_nil(term: &Term) -> bool {
    matches!(term, Term::Atom(a) if a.name == atoms::NIL)
}

/// A tuple.
pub fn tuple(elements: Vec<Term>) -> Term {
    Term::from(Tuple::from(elements))
}

/// `{:error, reason}`.
pub fn error(reason: Term) -> Term {
    tuple(vec![atom(atoms::ERROR), reason])
}

/// `:ok`.
pub fn ok() -> Term {
    atom(atoms::OK)
}

/// `{:error, :exists}` (a `put_new` on a present key).
pub fn exists() -> Term {
    error(atom(atoms::EXISTS))
}

/// `{:error, {:mismatch, current}}` (a `cas` that did not match).
pub fn mismatch(current: Term) -> Term {
    error(tuple(vec![atom(atoms::MISMATCH), current]))
}

/// `{:error, :not_integer}` (an `incr` of or by a non-integer).
pub fn not_integer() -> Term {
    error(atom(atoms::NOT_INTEGER))
}

/// The atom `nil` in external format (no version byte).
pub const NIL_BYTES: &[u8] = &[SMALL_ATOM_UTF8, 3, b'n', b'i', b'l'];
/// The atom `ok` in external format (no version byte).
pub const OK_BYTES: &[u8] = &[SMALL_ATOM_UTF8, 2, b'o', b'k'];

/// `{:get, k}`, as the rpc functions send it.
pub fn get(key: Term) -> Term {
    tuple(vec![atom(atoms::GET), key])
}

/// `{:get, k, default}`.
pub fn get_or(key: Term, default: Term) -> Term {
    tuple(vec![atom(atoms::GET), key, default])
}

/// `{:put, k, v}`.
pub fn put(key: Term, value: Term) -> Term {
    tuple(vec![atom(atoms::PUT), key, value])
}

/// `{:delete, k}`.
pub fn delete(key: Term) -> Term {
    tuple(vec![atom(atoms::DELETE), key])
}

/// `:keys`.
pub fn keys() -> Term {
    atom(atoms::KEYS)
}

/// `:size`.
pub fn size() -> Term {
    atom(atoms::SIZE)
}

/// A request read from its bytes (the byte view). Every slice is one term in external format,
/// no version byte.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ByteRequest<'a> {
    /// `{:get, key}` or `{:get, key, default}`.
    Get {
        /// The key.
        key: &'a [u8],
        /// The default, when given.
        default: Option<&'a [u8]>,
    },
    /// `{:put, key, value}`.
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `{:delete, key}`.
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// `{:put_new, key, value}` (only from [`ByteRequest::parse_all`]).
    PutNew {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// `{:cas, key, expected, new}` (only from [`ByteRequest::parse_all`]).
    Cas {
        /// The key.
        key: &'a [u8],
        /// The value the key must hold.
        expected: &'a [u8],
        /// The value to store on a match.
        new: &'a [u8],
    },
}

impl<'a> ByteRequest<'a> {
    /// Reads `get`, `put` or `delete` from a request that arrived as bytes. `None`: a
    /// decoded request, any other request, or an encoding this reader does not take (use
    /// the term view).
    pub fn parse(request: &ServerRequest<'a>) -> Option<Self> {
        Self::parse_all(request).filter(|r| {
            matches!(
                r,
                ByteRequest::Get { .. } | ByteRequest::Put { .. } | ByteRequest::Delete { .. }
            )
        })
    }

    /// Like [`ByteRequest::parse`], also reading `put_new` and `cas`: the byte lane for
    /// requests whose terms eetf cannot hold (native records, maps with `0.0` and `-0.0`
    /// keys), which must never be decoded into something else.
    pub fn parse_all(request: &ServerRequest<'a>) -> Option<Self> {
        let [SMALL_TUPLE, arity, ref rest @ ..] = *request.bytes()? else {
            return None;
        };
        let (name, n) = atom_at(rest)?;
        let rest = rest.get(n..)?;
        // The last element is the rest of the (validated) request, so it is not measured.
        let split = |rest: &'a [u8]| -> Option<(&'a [u8], &'a [u8])> {
            let (first, last) = rest.split_at_checked(request.term_len(rest)?)?;
            (!last.is_empty()).then_some((first, last))
        };
        let is = |tag: &str, n: u8| arity == n && name == tag.as_bytes();
        let request = if is(atoms::GET, 2) {
            ByteRequest::Get {
                key: rest,
                default: None,
            }
        } else if is(atoms::GET, 3) {
            let (key, default) = split(rest)?;
            ByteRequest::Get {
                key,
                default: Some(default),
            }
        } else if is(atoms::PUT, 3) {
            let (key, value) = split(rest)?;
            ByteRequest::Put { key, value }
        } else if is(atoms::DELETE, 2) {
            ByteRequest::Delete { key: rest }
        } else if is(atoms::PUT_NEW, 3) {
            let (key, value) = split(rest)?;
            ByteRequest::PutNew { key, value }
        } else if is(atoms::CAS, 4) {
            let (key, rest) = split(rest)?;
            let (expected, new) = split(rest)?;
            ByteRequest::Cas { key, expected, new }
        } else {
            return None;
        };
        (!request.key().is_empty()).then_some(request)
    }

    /// The request's key.
    pub fn key(&self) -> &'a [u8] {
        match *self {
            ByteRequest::Get { key, .. }
            | ByteRequest::Put { key, .. }
            | ByteRequest::Delete { key }
            | ByteRequest::PutNew { key, .. }
            | ByteRequest::Cas { key, .. } => key,
        }
    }

    /// Whether the request changes the store.
    pub fn mutates(&self) -> bool {
        !matches!(self, ByteRequest::Get { .. })
    }
}

/// The message sent to subscribers: `{:kv_event, k, {:put, v}}` or `{:kv_event, k, :delete}`.
pub fn event_message(event: &Event) -> Term {
    let (key, change) = match event {
        Event::Put { key, value } => (key, tuple(vec![atom(atoms::PUT), value.clone()])),
        Event::Delete { key } => (key, atom(atoms::DELETE)),
    };
    tuple(vec![atom(atoms::KV_EVENT), key.clone(), change])
}

/// The reply to an unrecognised request: `{:error, {:unknown_request, req}}`.
pub fn unknown_request_reply(req: &Term) -> Term {
    error(tuple(vec![atom(atoms::UNKNOWN_REQUEST), req.clone()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etf::{Limits, summary};
    use crate::kv::key::Key;
    use crate::kv::server::apply_bytes;
    use crate::kv::store::Store;
    use crate::kv::test_terms::{bin, int, zoo};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn body(t: &Term) -> Vec<u8> {
        let mut v = Vec::new();
        t.encode(&mut v).expect("encode");
        v.split_off(1)
    }

    fn view<'a>(bytes: &'a [u8], limits: &'a Limits) -> Option<ByteRequest<'a>> {
        ByteRequest::parse(&ServerRequest::from_bytes(bytes, limits))
    }

    #[test]
    fn byte_view_reads_get_put_delete() {
        let limits = Limits::default();
        let key = bin("k");
        let value = tuple(vec![atom("v"), int(7)]);
        assert_eq!(
            view(&body(&put(key.clone(), value.clone())), &limits),
            Some(ByteRequest::Put {
                key: &body(&key),
                value: &body(&value)
            })
        );
        assert_eq!(
            view(&body(&get_or(key.clone(), atom("none"))), &limits),
            Some(ByteRequest::Get {
                key: &body(&key),
                default: Some(&body(&atom("none")))
            })
        );
        assert_eq!(
            view(&body(&get(key.clone())), &limits),
            Some(ByteRequest::Get {
                key: &body(&key),
                default: None
            })
        );
        assert_eq!(
            view(&body(&delete(key.clone())), &limits),
            Some(ByteRequest::Delete { key: &body(&key) })
        );
        for request in [
            keys(),
            size(),
            tuple(vec![atom("incr"), atom("n")]),
            tuple(vec![atom("get")]),
            tuple(vec![atom("put"), atom("k")]),
            tuple(vec![atom("delete"), atom("k"), atom("x")]),
            tuple(vec![atom("subscribe"), atom("all")]),
            tuple(vec![bin("get"), atom("k")]),
        ] {
            assert_eq!(view(&body(&request), &limits), None, "{request}");
        }
        // A decoded request has no byte view.
        assert_eq!(
            ByteRequest::parse(&ServerRequest::from_term(get(key))),
            None
        );
    }

    #[test]
    fn reply_bytes_are_the_reply_terms() {
        assert_eq!(NIL_BYTES, body(&nil()));
        assert_eq!(OK_BYTES, body(&ok()));
    }

    fn same(a: &Term, b: &Term) -> bool {
        Key::from_term(a) == Key::from_term(b)
    }

    fn decode(bytes: &[u8]) -> Term {
        let mut v = vec![crate::etf::VERSION_MAGIC];
        v.extend_from_slice(bytes);
        crate::etf::decode_exact(&v, &Limits::default()).expect("decodes")
    }

    /// The term view's answer to `request` on `store`, as the server computes it for a
    /// data request (subscriptions are not store operations; they answer `:ok` here).
    fn term_view(store: &mut Store, request: Term) -> Term {
        match Request::from_term(request) {
            Ok(Request::Data(d)) => store.apply_with(d, false).0,
            Ok(_) => ok(),
            Err(request) => unknown_request_reply(&request),
        }
    }

    /// Contents compared with exact equality (`=:=`), whatever the encodings.
    fn assert_same_contents(a: &Store, b: &Store, what: &Term) {
        assert_eq!(a.len(), b.len(), "after {what}");
        for (k, v) in a.iter_encoded() {
            let key = decode(&k[1..]);
            let value = decode(&v[1..]);
            let other = b
                .get(&key)
                .unwrap_or_else(|| panic!("{key} missing after {what}"));
            assert!(
                same(&value, &other),
                "{key}: {value} vs {other} after {what}"
            );
        }
    }

    /// The byte view and the term view give the same replies and leave the same store, for
    /// every request shape over the term zoo (seeded, so a failure replays).
    #[test]
    fn byte_view_and_term_view_agree() {
        let limits = Limits::default();
        let zoo = zoo();
        let mut rng = StdRng::seed_from_u64(12);
        let (mut bytes_store, mut terms_store) = (Store::new(), Store::new());
        let mut default_reply = Vec::new();
        let mut by_bytes = 0;
        for i in 0..2000 {
            let mut pick = || zoo[rng.random_range(0..zoo.len())].clone();
            let (k, v, d) = (pick(), pick(), pick());
            let shape = rng.random_range(0..14);
            let request = match shape {
                0 | 1 => get(k),
                2 | 3 => get_or(k, d),
                4..=6 => put(k, v),
                7 => delete(k),
                8 => tuple(vec![atom(atoms::PUT_NEW), k, v]),
                9 => tuple(vec![atom(atoms::CAS), k, v, d]),
                10 => tuple(vec![atom(atoms::INCR), k, int(2)]),
                11 => [keys(), size(), atom(atoms::SUBSCRIBERS)][rng.random_range(0..3)].clone(),
                12 => tuple(vec![atom(atoms::SUBSCRIBE), k.clone()]),
                _ => [
                    tuple(vec![atom(atoms::GET)]),
                    tuple(vec![atom(atoms::PUT), k.clone()]),
                    tuple(vec![atom(atoms::DELETE), k.clone(), v]),
                    tuple(vec![k.clone(), atom(atoms::GET)]),
                    k.clone(),
                ][rng.random_range(0..5)]
                .clone(),
            };
            let encoded = body(&request);
            let server_request = ServerRequest::from_bytes(&encoded, &limits);
            let expected = term_view(&mut terms_store, request.clone());
            match ByteRequest::parse(&server_request) {
                Some(view) => {
                    by_bytes += 1;
                    let reply = apply_bytes(&mut bytes_store, &mut default_reply, view, |k| {
                        server_request.decode_part(k).ok()
                    })
                    .expect("every zoo key decodes");
                    let reply = decode(reply);
                    assert!(
                        same(&reply, &expected),
                        "{}: {} vs {}",
                        summary(&request),
                        summary(&reply),
                        summary(&expected)
                    );
                }
                None => {
                    assert!(shape >= 8, "the byte view declined {}", summary(&request));
                    term_view(&mut bytes_store, request.clone());
                }
            }
            if i % 8 == 0 {
                assert_same_contents(&bytes_store, &terms_store, &request);
            }
        }
        assert_same_contents(&bytes_store, &terms_store, &atom("end"));
        assert!(
            by_bytes > 1000,
            "only {by_bytes} requests took the byte view"
        );
        assert!(!terms_store.is_empty());
    }
}
