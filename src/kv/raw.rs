//! The raw lane: the requests that make up nearly all traffic (`get`, `put`, `delete` by call
//! or cast) read straight from a message's external-format bytes, and their replies written as
//! bytes, so a call costs no `eetf` tree, no term clone and no re-encoding of stored values.
//!
//! Anything this module does not recognise exactly is left to the decoding path, which handles
//! every request; so this is purely an optimisation and never changes an answer. The message
//! has been validated by [`crate::etf`] before it gets here, so the readers below only need
//! to locate terms, not to distrust them; they still never index out of bounds.

use crate::etf::{
    self, LIST_EXT as LIST, Limits, NEW_PID_EXT as NEW_PID, NEW_REFERENCE_EXT as NEW_REFERENCE,
    NEWER_REFERENCE_EXT as NEWER_REFERENCE, PID_EXT as PID, SMALL_ATOM_UTF8_EXT as SMALL_ATOM_UTF8,
    SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE, VERSION_MAGIC as VERSION,
};

/// `ALIAS_SEND` operation code: `{33, FromPid, Alias}`.
const ALIAS_SEND: u8 = 33;

/// The atom `nil` in external format (the reply of a `get` on an absent key).
pub const NIL_ATOM: &[u8] = &[SMALL_ATOM_UTF8, 3, b'n', b'i', b'l'];
/// The atom `ok` in external format.
pub const OK: &[u8] = &[SMALL_ATOM_UTF8, 2, b'o', b'k'];

/// A request read from a message. Every slice is one term in external format, without a
/// version byte.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
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
}

impl Request<'_> {
    /// The request's key.
    pub fn key(&self) -> &[u8] {
        match self {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key } => key,
        }
    }

    /// Whether the request changes the store.
    pub fn mutates(&self) -> bool {
        !matches!(self, Request::Get { .. })
    }
}

/// Who to answer: the `{pid, tag}` of a `$gen_call`.
#[derive(Debug, PartialEq, Eq)]
pub struct From<'a> {
    /// The caller's pid (external format).
    pub pid: &'a [u8],
    /// The call's tag (external format), echoed verbatim in the reply.
    pub tag: &'a [u8],
}

/// A `$gen_call` (with its caller) or a `$gen_cast` (without).
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The caller, for a call.
    pub from: Option<From<'a>>,
    /// What is asked.
    pub request: Request<'a>,
}

use crate::etf::skip::atom;

/// Reads terms one after another from a buffer.
struct Cursor<'a, 'l> {
    buf: &'a [u8],
    pos: usize,
    limits: &'l Limits,
}

impl<'a> Cursor<'a, '_> {
    /// The next term's bytes.
    fn term(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        let len = match etf::skip::skip(rest) {
            Some(len) => len,
            None => etf::validate_term(rest, self.limits).ok()?,
        };
        self.pos += len;
        rest.get(..len)
    }

    /// The arity of the small tuple that starts here.
    fn tuple(&mut self) -> Option<u8> {
        match self.buf.get(self.pos..self.pos + 2)? {
            [SMALL_TUPLE, arity] => {
                self.pos += 2;
                Some(*arity)
            }
            _ => None,
        }
    }

    /// The name of the atom that starts here.
    fn atom(&mut self) -> Option<&'a [u8]> {
        let (name, len) = atom(self.buf.get(self.pos..)?)?;
        self.pos += len;
        Some(name)
    }

    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// Reads a `$gen_call` or `$gen_cast` of a `get`, `put` or `delete` from a version-prefixed
/// message that must be exactly one term. `None`: anything else (use the decoding path).
pub fn parse<'a>(message: &'a [u8], limits: &Limits) -> Option<Message<'a>> {
    let mut c = Cursor {
        buf: message.strip_prefix(&[VERSION])?,
        pos: 0,
        limits,
    };
    let arity = c.tuple()?;
    let from = match (arity, c.atom()?) {
        (3, b"$gen_call") => {
            if c.tuple()? != 2 {
                return None;
            }
            let pid = c.term()?;
            if !matches!(pid.first(), Some(&(PID | NEW_PID))) {
                return None;
            }
            Some(From {
                pid,
                tag: c.term()?,
            })
        }
        (2, b"$gen_cast") => None,
        _ => return None,
    };
    let arity = c.tuple()?;
    let request = match (arity, c.atom()?) {
        (2, b"get") => Request::Get {
            key: c.term()?,
            default: None,
        },
        (3, b"get") => Request::Get {
            key: c.term()?,
            default: Some(c.term()?),
        },
        (3, b"put") => Request::Put {
            key: c.term()?,
            value: c.term()?,
        },
        (2, b"delete") => Request::Delete { key: c.term()? },
        _ => return None,
    };
    c.done().then_some(Message { from, request })
}

/// The alias reference in a call tag `[:alias | ref]` (how OTP 24+ `gen:call` tags calls).
pub fn alias_of<'a>(tag: &'a [u8], limits: &Limits) -> Option<&'a [u8]> {
    let rest = match tag {
        [LIST, 0, 0, 0, 1, rest @ ..] => rest,
        _ => return None,
    };
    let (name, len) = atom(rest)?;
    if name != b"alias" {
        return None;
    }
    let reference = rest.get(len..)?;
    if !matches!(reference.first(), Some(&(NEWER_REFERENCE | NEW_REFERENCE))) {
        return None;
    }
    let len = match etf::skip::skip(reference) {
        Some(len) => len,
        None => etf::validate_term(reference, limits).ok()?,
    };
    (len == reference.len()).then_some(reference)
}

/// The node name in a pid (external format).
pub fn pid_node(pid: &[u8]) -> Option<&[u8]> {
    match pid.split_first()? {
        (&(PID | NEW_PID), rest) => atom(rest).map(|(name, _)| name),
        _ => None,
    }
}

/// Appends a complete distribution frame (length prefix included) carrying `{tag, reply...}`
/// to the process `alias` by ALIAS_SEND from `server_pid`. `reply` is the reply term's bytes,
/// possibly in several pieces that together make one term.
pub fn alias_reply_frame(
    out: &mut Vec<u8>,
    server_pid: &[u8],
    alias: &[u8],
    tag: &[u8],
    reply: &[&[u8]],
) {
    let start = out.len();
    let pieces: usize = reply.iter().map(|p| p.len()).sum();
    out.reserve(13 + server_pid.len() + alias.len() + tag.len() + pieces);
    out.extend_from_slice(&[0, 0, 0, 0, crate::node::transport::PASS_THROUGH]);
    out.extend_from_slice(&[VERSION, SMALL_TUPLE, 3, SMALL_INTEGER, ALIAS_SEND]);
    out.extend_from_slice(server_pid);
    out.extend_from_slice(alias);
    out.extend_from_slice(&[VERSION, SMALL_TUPLE, 2]);
    out.extend_from_slice(tag);
    for piece in reply {
        out.extend_from_slice(piece);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::{
        Atom, Binary, FixInteger, ImproperList, List, Pid, Reference, Term, Tuple,
    };

    fn etf(t: &Term) -> Vec<u8> {
        let mut v = Vec::new();
        t.encode(&mut v).expect("encode");
        v
    }

    fn atom_t(name: &str) -> Term {
        Atom::from(name).into()
    }

    fn tuple(v: Vec<Term>) -> Term {
        Tuple::from(v).into()
    }

    fn pid() -> Term {
        Pid::new("caller@127.0.0.1", 81, 0, 3).into()
    }

    fn reference() -> Reference {
        Reference {
            node: Atom::from("caller@127.0.0.1"),
            id: vec![1, 2, 3],
            creation: 3,
        }
    }

    fn alias_tag() -> Term {
        ImproperList::from((vec![atom_t("alias")], reference().into())).into()
    }

    fn call(request: Term) -> Vec<u8> {
        etf(&tuple(vec![
            atom_t("$gen_call"),
            tuple(vec![pid(), alias_tag()]),
            request,
        ]))
    }

    fn body(t: &Term) -> Vec<u8> {
        etf(t).split_off(1)
    }

    #[test]
    fn reads_calls_and_casts_of_get_put_delete() {
        let limits = Limits::default();
        let key: Term = Binary::from(&b"k"[..]).into();
        let value = tuple(vec![atom_t("v"), FixInteger::from(7).into()]);
        let m = call(tuple(vec![atom_t("put"), key.clone(), value.clone()]));
        let parsed = parse(&m, &limits).expect("parsed");
        assert_eq!(
            parsed.request,
            Request::Put {
                key: &body(&key),
                value: &body(&value)
            }
        );
        let from = parsed.from.expect("a call");
        assert_eq!(from.pid, body(&pid()));
        assert_eq!(from.tag, body(&alias_tag()));
        let alias = alias_of(from.tag, &limits).expect("alias");
        assert_eq!(alias, body(&reference().into()));
        assert_eq!(pid_node(from.pid), Some(&b"caller@127.0.0.1"[..]));

        let m = call(tuple(vec![atom_t("get"), key.clone(), atom_t("none")]));
        assert_eq!(
            parse(&m, &limits).expect("get/3").request,
            Request::Get {
                key: &body(&key),
                default: Some(&body(&atom_t("none")))
            }
        );
        let m = etf(&tuple(vec![
            atom_t("$gen_cast"),
            tuple(vec![atom_t("delete"), key.clone()]),
        ]));
        let parsed = parse(&m, &limits).expect("cast");
        assert!(parsed.from.is_none());
        assert_eq!(parsed.request, Request::Delete { key: &body(&key) });
    }

    #[test]
    fn leaves_everything_else_to_the_decoder() {
        let limits = Limits::default();
        for request in [
            atom_t("keys"),
            tuple(vec![atom_t("incr"), atom_t("n")]),
            tuple(vec![atom_t("get")]),
            tuple(vec![atom_t("put"), atom_t("k")]),
            tuple(vec![atom_t("subscribe"), atom_t("all")]),
        ] {
            assert_eq!(parse(&call(request.clone()), &limits), None, "{request}");
        }
        // Not a call: a plain message, a call whose `from` is not {pid, tag}.
        assert_eq!(parse(&etf(&atom_t("hello")), &limits), None);
        let odd = etf(&tuple(vec![
            atom_t("$gen_call"),
            tuple(vec![atom_t("x"), alias_tag()]),
            tuple(vec![atom_t("get"), atom_t("k")]),
        ]));
        assert_eq!(parse(&odd, &limits), None);
        // A pre-OTP-24 tag (a plain reference) has no alias.
        assert_eq!(alias_of(&body(&reference().into()), &limits), None);
        let list_tag: Term = List::from(vec![atom_t("alias")]).into();
        assert_eq!(alias_of(&body(&list_tag), &limits), None);
    }

    #[test]
    fn skip_measures_terms_as_the_validator_does() {
        let limits = Limits::default();
        let big_ref = Reference {
            node: Atom::from("n@h"),
            id: vec![1, 2, 3, 4, 5],
            creation: 0x1234_5678,
        };
        let terms = vec![
            pid(),
            Pid::new("n@h", 1 << 20, 7, 0x0102_0304).into(),
            reference().into(),
            big_ref.into(),
            alias_tag(),
            atom_t("ok"),
            FixInteger::from(3).into(),
            FixInteger::from(-70_000).into(),
            Binary::from(vec![7u8; 1000]).into(),
            List::nil().into(),
            List::from(vec![atom_t("a"), pid()]).into(),
            tuple(vec![
                pid(),
                alias_tag(),
                tuple(vec![atom_t("get"), atom_t("k")]),
            ]),
        ];
        for t in &terms {
            let b = body(t);
            let mut padded = b.clone();
            padded.extend_from_slice(&[1, 2, 3]);
            assert_eq!(etf::skip::skip(&padded), Some(b.len()), "{t}");
            assert_eq!(etf::validate_term(&padded, &limits).ok(), Some(b.len()));
            // Truncated bytes are never measured past their end.
            for cut in 0..b.len() {
                assert!(
                    etf::skip::skip(&b[..cut]).is_none_or(|n| n <= cut),
                    "{t} cut at {cut}"
                );
            }
        }
        // Kinds it does not know are left to the validator.
        assert_eq!(
            etf::skip::skip(&body(&erl_dist::term::Float { value: 1.5 }.into())),
            None
        );
    }

    #[test]
    fn reply_frames_decode_to_alias_send() {
        let limits = Limits::default();
        let server: Term = Pid::new("kv@127.0.0.1", 5, 0, 9).into();
        let reply = tuple(vec![atom_t("ok"), FixInteger::from(1).into()]);
        let mut frame = vec![9u8];
        alias_reply_frame(
            &mut frame,
            &body(&server),
            &body(&reference().into()),
            &body(&alias_tag()),
            &[&body(&reply)],
        );
        assert_eq!(frame[0], 9);
        let len = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes")) as usize;
        assert_eq!(len, frame.len() - 5);
        let message = crate::node::transport::connection::decode_frame(&frame[5..], &limits)
            .expect("a valid frame");
        match message {
            erl_dist::message::Message::AliasSend(m) => {
                assert_eq!(Term::from(m.from_pid), server);
                assert_eq!(m.alias, reference());
                assert_eq!(m.message, tuple(vec![alias_tag(), reply]));
            }
            other => panic!("{other:?}"),
        }
    }
}
