//! The GenServer protocol (`gen.erl`, `gen_server.erl`, `sys.erl`), in one place: the
//! envelopes a server receives, read from external-format bytes (zero-copy) or from decoded
//! terms, call tags and their aliases, and the reply frames.
//!
//! Envelopes:
//! - a call is `{:"$gen_call", {pid, tag}, request}`, answered with `{tag, reply}`, the tag
//!   echoed verbatim (since OTP 24 usually the improper list `[:alias | ref]`, never to be
//!   decoded as a plain reference);
//! - a cast is `{:"$gen_cast", request}`;
//! - a system message is `{:system, {pid, tag}, request}` (what `:sys` and `GenServer.stop`
//!   send), answered like a call;
//! - anything else is an info message.
//!
//! A reply goes by ALIAS_SEND (`{33, FromPid, Alias}`) when the tag carries an alias and the
//! peer negotiated DFLAG_ALIAS, so a reply arriving after the caller's timeout is dropped by
//! the caller's runtime instead of left in its mailbox; else by SEND (`{2, '', ToPid}`) to the
//! caller's pid.
//!
//! The byte readers work on terms that were validated on arrival (see [`crate::etf`]), so
//! they only locate terms, never distrust them; they still never index out of bounds.

use super::Caller;
use crate::etf::skip::atom;
use crate::etf::{
    self, LIST_EXT as LIST, Limits, NEW_PID_EXT as NEW_PID, NEW_REFERENCE_EXT as NEW_REFERENCE,
    NEWER_REFERENCE_EXT as NEWER_REFERENCE, PID_EXT as PID, SMALL_ATOM_UTF8_EXT as SMALL_ATOM_UTF8,
    SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE, VERSION_MAGIC as VERSION,
};
use crate::node::transport::fast::op;
use erl_dist::term::{Atom, List, Reference, Term, Tuple};

/// The tag atom of a call.
pub const GEN_CALL: &str = "$gen_call";
/// The tag atom of a cast.
pub const GEN_CAST: &str = "$gen_cast";
/// The tag atom of a system message.
pub const SYSTEM: &str = "system";
/// The atom that heads an alias call tag, `[:alias | ref]`.
pub const ALIAS: &str = "alias";

/// Who made a call, as bytes: the `{pid, tag}` of a `$gen_call` or `system` message.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct From<'a> {
    /// The caller's pid (external format, no version byte).
    pub pid: &'a [u8],
    /// The call's tag (external format, no version byte), echoed verbatim in the reply.
    pub tag: &'a [u8],
}

/// A message read as bytes. Every slice is one term in external format, no version byte.
#[derive(Debug, PartialEq, Eq)]
pub enum Envelope<'a> {
    /// `{:"$gen_call", {pid, tag}, request}`.
    Call {
        /// The caller.
        from: From<'a>,
        /// The request.
        request: &'a [u8],
    },
    /// `{:"$gen_cast", request}`.
    Cast {
        /// The request.
        request: &'a [u8],
    },
    /// `{:system, {pid, tag}, request}`.
    System {
        /// The caller.
        from: From<'a>,
        /// The system request.
        request: &'a [u8],
    },
}

/// The length of the validated term at the start of `buf`.
fn measure(buf: &[u8], limits: &Limits) -> Option<usize> {
    match etf::skip::skip(buf) {
        Some(len) => Some(len),
        None => etf::validate_term(buf, limits).ok(),
    }
}

/// Reads the envelope of `message`: one validated term, version byte included (as
/// [`crate::node::RawMessage`] carries it). `None` for an info message. The request is the
/// rest of the message after the envelope's other parts, so it is not measured again.
pub fn parse<'a>(message: &'a [u8], limits: &Limits) -> Option<Envelope<'a>> {
    let body = message.strip_prefix(&[VERSION])?;
    let [SMALL_TUPLE, arity, ref rest @ ..] = *body else {
        return None;
    };
    let (name, n) = atom(rest)?;
    let rest = rest.get(n..)?;
    if arity == 2 && name == GEN_CAST.as_bytes() {
        return (!rest.is_empty()).then_some(Envelope::Cast { request: rest });
    }
    let system = name == SYSTEM.as_bytes();
    if arity != 3 || !(system || name == GEN_CALL.as_bytes()) {
        return None;
    }
    let [SMALL_TUPLE, 2, ref rest @ ..] = *rest else {
        return None;
    };
    if !matches!(rest.first(), Some(&(PID | NEW_PID))) {
        return None;
    }
    let (pid, rest) = rest.split_at_checked(measure(rest, limits)?)?;
    let (tag, request) = rest.split_at_checked(measure(rest, limits)?)?;
    if request.is_empty() {
        return None;
    }
    let from = From { pid, tag };
    Some(if system {
        Envelope::System { from, request }
    } else {
        Envelope::Call { from, request }
    })
}

/// The alias reference in a call tag, as bytes: `[:alias | ref]` (how OTP 24+ `gen:call`
/// tags calls) or `[[:alias | ref] | _]`, the two shapes `gen:reply/2` answers by alias
/// (and [`alias_of`] reads from a term).
pub fn alias_of_bytes<'a>(tag: &'a [u8], limits: &Limits) -> Option<&'a [u8]> {
    if let Some((alias, rest)) = direct_alias(tag, limits) {
        return rest.is_empty().then_some(alias);
    }
    // `[[:alias | ref] | _]`: the alias of the list's first element.
    let [LIST, _, _, _, _, ref first @ ..] = *tag else {
        return None;
    };
    direct_alias(first, limits).map(|(alias, _)| alias)
}

/// The reference of an `[:alias | ref]` at the start of `bytes`, and what follows it.
fn direct_alias<'a>(bytes: &'a [u8], limits: &Limits) -> Option<(&'a [u8], &'a [u8])> {
    let rest = match bytes {
        [LIST, 0, 0, 0, 1, rest @ ..] => rest,
        _ => return None,
    };
    let (name, len) = atom(rest)?;
    if name != ALIAS.as_bytes() {
        return None;
    }
    let reference = rest.get(len..)?;
    if !matches!(reference.first(), Some(&(NEWER_REFERENCE | NEW_REFERENCE))) {
        return None;
    }
    reference.split_at_checked(measure(reference, limits)?)
}

/// The alias reference in a call tag: `[:alias | ref]` or `[[:alias | ref] | _]`, the two
/// shapes `gen:reply/2` answers by alias (what [`alias_of_bytes`] reads from bytes).
pub fn alias_of(tag: &Term) -> Option<&Reference> {
    fn direct(tag: &Term) -> Option<&Reference> {
        let Term::ImproperList(l) = tag else {
            return None;
        };
        match (l.elements.as_slice(), l.last.as_ref()) {
            ([Term::Atom(a)], Term::Reference(r)) if a.name == ALIAS => Some(&**r),
            _ => None,
        }
    }
    direct(tag).or_else(|| match tag {
        Term::ImproperList(l) => l.elements.first().and_then(direct),
        Term::List(List { elements }) => elements.first().and_then(direct),
        _ => None,
    })
}

/// The node name in a pid (external format).
pub fn pid_node(pid: &[u8]) -> Option<&[u8]> {
    match pid.split_first()? {
        (&(PID | NEW_PID), rest) => atom(rest).map(|(name, _)| name),
        _ => None,
    }
}

/// Where a reply frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// ALIAS_SEND to this alias reference (external format).
    Alias(&'a [u8]),
    /// ALTACT_SIG_SEND (op 37) with the ALIAS flag to this alias reference (external
    /// format), for a peer that negotiated DFLAG_ALTACT_SIG (OTP 28+).
    AltactAlias(&'a [u8]),
    /// SEND to this pid (external format).
    Pid(&'a [u8]),
}

impl<'a> Route<'a> {
    /// How to answer `from` on a connection whose peer did (`alias_ok`) or did not negotiate
    /// DFLAG_ALIAS.
    pub fn of(from: &From<'a>, alias_ok: bool, limits: &Limits) -> Self {
        match alias_of_bytes(from.tag, limits) {
            Some(alias) if alias_ok => Route::Alias(alias),
            _ => Route::Pid(from.pid),
        }
    }

    /// How to answer `from` on a connection whose peer negotiated `flags`: an alias by op 37
    /// when the peer has ALTACT_SIG, by op 33 when it has ALIAS only, else the pid.
    pub fn for_flags(from: &From<'a>, flags: erl_dist::DistributionFlags, limits: &Limits) -> Self {
        let alias_ok = flags.contains(erl_dist::DistributionFlags::ALIAS);
        match Self::of(from, alias_ok, limits) {
            Route::Alias(alias)
                if flags.bits() & crate::node::transport::handshake::FLAG_ALTACT_SIG != 0 =>
            {
                Route::AltactAlias(alias)
            }
            route => route,
        }
    }
}

/// Appends a complete distribution frame (length prefix included) carrying `{tag, reply}` by
/// `route`, from `server_pid` (external format). `write_reply` appends the reply term's bytes
/// (no version byte); when it returns false, nothing is left appended and this returns false.
pub fn reply_frame(
    out: &mut Vec<u8>,
    server_pid: &[u8],
    route: Route<'_>,
    tag: &[u8],
    write_reply: impl FnOnce(&mut Vec<u8>) -> bool,
) -> bool {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, crate::node::transport::PASS_THROUGH]);
    match route {
        Route::Alias(alias) => {
            out.extend_from_slice(&[VERSION, SMALL_TUPLE, 3, SMALL_INTEGER, op::ALIAS_SEND]);
            out.extend_from_slice(server_pid);
            out.extend_from_slice(alias);
        }
        Route::AltactAlias(alias) => {
            crate::node::transport::altact::write_alias_control(out, server_pid, alias);
            crate::metrics::ALTACT_OUT.inc();
        }
        Route::Pid(pid) => {
            // Unused: the empty atom, as OTP writes it.
            out.extend_from_slice(&[VERSION, SMALL_TUPLE, 3, SMALL_INTEGER, op::SEND]);
            out.extend_from_slice(&[SMALL_ATOM_UTF8, 0]);
            out.extend_from_slice(pid);
        }
    }
    out.extend_from_slice(&[VERSION, SMALL_TUPLE, 2]);
    out.extend_from_slice(tag);
    if !write_reply(out) {
        out.truncate(start);
        return false;
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    true
}

/// About how many bytes [`reply_frame`] appends for a reply of `reply_len` bytes.
pub fn reply_frame_len(server_pid: &[u8], route: Route<'_>, tag: &[u8], reply_len: usize) -> usize {
    let ctrl = match route {
        Route::Alias(alias) => server_pid.len() + alias.len(),
        Route::AltactAlias(alias) => 2 + server_pid.len() + alias.len(),
        Route::Pid(pid) => 2 + pid.len(),
    };
    13 + ctrl + tag.len() + reply_len
}

/// A message as a server's loop sees it.
pub enum Incoming {
    /// `{:system, from, request}`.
    System(Caller, Term),
    /// `{:"$gen_call", from, request}`.
    Call(Caller, Term),
    /// `{:"$gen_cast", request}`.
    Cast(Term),
    /// Anything else.
    Info(Term),
}

/// Whether `t` is the atom `name`.
pub(crate) fn is_atom(t: &Term, name: &str) -> bool {
    matches!(t, Term::Atom(Atom { name: n }) if n == name)
}

/// Whether `term` is a system message (`{:system, {pid, tag}, request}`).
pub fn is_system(term: &Term) -> bool {
    matches!(term, Term::Tuple(t) if t.elements.len() == 3 && is_atom(&t.elements[0], SYSTEM)
        && matches!(&t.elements[1], Term::Tuple(f) if f.elements.len() == 2 && matches!(f.elements[0], Term::Pid(_))))
}

/// Reads the envelope of a decoded message (the same shapes as [`parse`]).
pub fn classify(term: Term) -> Incoming {
    let Term::Tuple(Tuple { elements }) = term else {
        return Incoming::Info(term);
    };
    match elements.len() {
        3 if (is_atom(&elements[0], GEN_CALL) || is_atom(&elements[0], SYSTEM))
            && matches!(&elements[1], Term::Tuple(t) if t.elements.len() == 2 && matches!(t.elements[0], Term::Pid(_))) =>
        {
            let system = is_atom(&elements[0], SYSTEM);
            let mut it = elements.into_iter();
            let (_, from, request) = match (it.next(), it.next(), it.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => unreachable!("length checked above"), // ok: len == 3 checked
            };
            let Term::Tuple(Tuple { elements: from }) = from else {
                unreachable!("shape checked above") // ok: matched as a 2-tuple above
            };
            let mut from = from.into_iter();
            match (from.next(), from.next()) {
                (Some(Term::Pid(pid)), Some(tag)) if system => {
                    Incoming::System(Caller::new(pid, tag), request)
                }
                (Some(Term::Pid(pid)), Some(tag)) => Incoming::Call(Caller::new(pid, tag), request),
                _ => unreachable!("shape checked above"), // ok: matched above
            }
        }
        2 if is_atom(&elements[0], GEN_CAST) => {
            let request = elements
                .into_iter()
                .nth(1)
                .unwrap_or_else(|| List::nil().into());
            Incoming::Cast(request)
        }
        _ => Incoming::Info(Tuple { elements }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::{Binary, FixInteger, ImproperList, Map, Pid};

    fn etf(t: &Term) -> Vec<u8> {
        let mut v = Vec::new();
        t.encode(&mut v).expect("encode");
        v
    }

    fn body(t: &Term) -> Vec<u8> {
        etf(t).split_off(1)
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

    fn envelope(kind: &str, from: Term, request: Term) -> Term {
        tuple(vec![atom_t(kind), from, request])
    }

    fn requests() -> Vec<Term> {
        vec![
            atom_t("keys"),
            tuple(vec![atom_t("get"), Binary::from(&b"k"[..]).into()]),
            tuple(vec![
                atom_t("put"),
                erl_dist::term::Float { value: -0.0 }.into(),
                Map::from([(atom_t("a"), FixInteger::from(1).into())]).into(),
            ]),
            List::nil().into(),
        ]
    }

    /// The byte reader and the term reader agree on every envelope, and the byte reader's
    /// slices are exactly the parts' encodings.
    #[test]
    fn bytes_and_terms_read_the_same_envelopes() {
        let limits = Limits::default();
        let tags = [alias_tag(), reference().into(), atom_t("t")];
        for request in requests() {
            for tag in &tags {
                for kind in [GEN_CALL, SYSTEM] {
                    let from = tuple(vec![pid(), tag.clone()]);
                    let m = envelope(kind, from, request.clone());
                    let bytes = etf(&m);
                    let (f, r) = match parse(&bytes, &limits) {
                        Some(Envelope::Call { from, request }) if kind == GEN_CALL => {
                            (from, request)
                        }
                        Some(Envelope::System { from, request }) if kind == SYSTEM => {
                            (from, request)
                        }
                        other => panic!("{m}: {other:?}"),
                    };
                    assert_eq!(f.pid, body(&pid()));
                    assert_eq!(f.tag, body(tag));
                    assert_eq!(r, body(&request));
                    match classify(m) {
                        Incoming::Call(c, t) if kind == GEN_CALL => {
                            assert_eq!((c.pid(), c.tag(), &t), (&pid_of(), tag, &request));
                        }
                        Incoming::System(c, t) if kind == SYSTEM => {
                            assert_eq!((c.pid(), c.tag(), &t), (&pid_of(), tag, &request));
                        }
                        _ => panic!("classify disagrees"),
                    }
                }
            }
            let m = tuple(vec![atom_t(GEN_CAST), request.clone()]);
            assert_eq!(
                parse(&etf(&m), &limits),
                Some(Envelope::Cast {
                    request: &body(&request)
                })
            );
            assert!(matches!(classify(m), Incoming::Cast(t) if t == request));
        }
    }

    fn pid_of() -> Pid {
        match pid() {
            Term::Pid(p) => p,
            _ => unreachable!(),
        }
    }

    /// A caller read from bytes (inline, or decoded at once when too big to keep inline)
    /// gives back the pid and tag the term reader gives.
    #[test]
    fn callers_from_bytes_decode_to_the_same_pid_and_tag() {
        let limits = Limits::default();
        let long_tag = tuple(vec![alias_tag(), Binary::from(vec![7u8; 300]).into()]);
        for tag in [alias_tag(), reference().into(), long_tag] {
            let (pid_bytes, tag_bytes) = (body(&pid()), body(&tag));
            let from = From {
                pid: &pid_bytes,
                tag: &tag_bytes,
            };
            let caller = Caller::from_bytes(&from, &limits).expect("a caller");
            assert_eq!(caller.pid(), &pid_of());
            assert_eq!(caller.tag(), &tag);
            let copy = caller.clone();
            assert_eq!((copy.pid(), copy.tag()), (&pid_of(), &tag));
        }
        // Not a pid: no caller.
        let not_pid = body(&Binary::from(vec![1u8; 300]).into());
        let tag = body(&alias_tag());
        let from = From {
            pid: &not_pid,
            tag: &tag,
        };
        assert!(Caller::from_bytes(&from, &limits).is_none());
    }

    #[test]
    fn info_messages_are_neither() {
        let limits = Limits::default();
        for m in [
            atom_t("hello"),
            tuple(vec![atom_t(GEN_CALL), atom_t("x"), atom_t("r")]),
            tuple(vec![
                atom_t(GEN_CALL),
                tuple(vec![atom_t("x"), alias_tag()]),
                atom_t("r"),
            ]),
            tuple(vec![
                atom_t(GEN_CALL),
                tuple(vec![pid(), alias_tag(), atom_t("extra")]),
                atom_t("r"),
            ]),
            tuple(vec![atom_t(GEN_CAST)]),
            tuple(vec![atom_t(GEN_CAST), atom_t("a"), atom_t("b")]),
            tuple(vec![
                atom_t("other"),
                tuple(vec![pid(), alias_tag()]),
                atom_t("r"),
            ]),
        ] {
            assert_eq!(parse(&etf(&m), &limits), None, "{m}");
            assert!(!is_system(&m));
            assert!(
                matches!(classify(m.clone()), Incoming::Info(t) if t == m),
                "{m}"
            );
        }
    }

    #[test]
    fn alias_tags() {
        let limits = Limits::default();
        let r = reference();
        let tag = alias_tag();
        assert_eq!(alias_of(&tag), Some(&r));
        assert_eq!(
            alias_of_bytes(&body(&tag), &limits),
            Some(&body(&r.clone().into())[..])
        );
        // `[[:alias | ref] | _]` (gen:reply's second alias shape): the byte view and the term
        // view agree, so the fast path answers it by ALIAS_SEND as the decoding path does.
        let nested: Term = ImproperList::from((vec![tag.clone()], atom_t("x"))).into();
        let nested_proper: Term = List::from(vec![tag.clone(), atom_t("x")]).into();
        for t in [&tag, &nested, &nested_proper] {
            assert_eq!(alias_of(t), Some(&r), "{t}");
            assert_eq!(
                alias_of_bytes(&body(t), &limits),
                Some(&body(&r.clone().into())[..]),
                "{t}"
            );
        }
        // Neither view looks deeper than OTP does, nor past an `[:alias | ref]` that is not
        // the whole tag or its first element.
        let deeper: Term = List::from(vec![nested.clone()]).into();
        let longer: Term =
            ImproperList::from((vec![atom_t("alias"), atom_t("x")], r.clone().into())).into();
        for t in [&deeper, &longer] {
            assert_eq!(alias_of(t), None, "{t}");
            assert_eq!(alias_of_bytes(&body(t), &limits), None, "{t}");
        }
        let plain: Term = r.clone().into();
        assert_eq!(alias_of(&plain), None);
        // A pre-OTP-24 tag (a plain reference) has no alias.
        assert_eq!(alias_of_bytes(&body(&plain), &limits), None);
        let list_tag: Term = List::from(vec![atom_t("alias")]).into();
        assert_eq!(alias_of_bytes(&body(&list_tag), &limits), None);
        assert_eq!(pid_node(&body(&pid())), Some(&b"caller@127.0.0.1"[..]));
    }

    /// What [`reply_frame`] writes decodes (with the connection's decoder) to the ALIAS_SEND
    /// or SEND erl_dist would have built.
    #[test]
    fn reply_frames_decode_to_alias_send_and_send() {
        let limits = Limits::default();
        let server: Term = Pid::new("kv@127.0.0.1", 5, 0, 9).into();
        let reply = tuple(vec![atom_t("ok"), FixInteger::from(1).into()]);
        let tag = body(&alias_tag());
        let from = From {
            pid: &body(&pid()),
            tag: &tag,
        };
        let altact = erl_dist::DistributionFlags::from_bits_truncate(
            crate::node::transport::handshake::local_flags().bits(),
        );
        let alias_only = erl_dist::DistributionFlags::from_bits_truncate(
            altact.bits() & !crate::node::transport::handshake::FLAG_ALTACT_SIG,
        );
        assert!(matches!(
            Route::for_flags(&from, altact, &limits),
            Route::AltactAlias(_)
        ));
        assert!(matches!(
            Route::for_flags(&from, alias_only, &limits),
            Route::Alias(_)
        ));
        for (alias_ok, route) in [
            (true, Route::for_flags(&from, altact, &limits)),
            (true, Route::of(&from, true, &limits)),
            (false, Route::of(&from, false, &limits)),
        ] {
            let op = if matches!(route, Route::AltactAlias(_)) {
                crate::node::transport::altact::OP
            } else if alias_ok {
                op::ALIAS_SEND
            } else {
                op::SEND
            };
            let mut frame = vec![9u8];
            let reply_bytes = body(&reply);
            assert!(reply_frame(
                &mut frame,
                &body(&server),
                route,
                &tag,
                |out| {
                    out.extend_from_slice(&reply_bytes);
                    true
                }
            ));
            assert_eq!(frame[0], 9);
            assert_eq!(
                frame.len() - 1,
                reply_frame_len(&body(&server), route, &tag, reply_bytes.len())
            );
            let len = u32::from_be_bytes(frame[1..5].try_into().expect("4 bytes")) as usize;
            assert_eq!(len, frame.len() - 5);
            // pass-through, VERSION, SMALL_TUPLE, arity, SMALL_INTEGER, op
            assert_eq!(frame[10], op, "{route:?}");
            let message = crate::node::transport::connection::decode_frame(&frame[5..], &limits)
                .expect("a valid frame");
            let expected = tuple(vec![alias_tag(), reply.clone()]);
            match message {
                erl_dist::message::Message::AliasSend(m) if alias_ok => {
                    assert_eq!(Term::from(m.from_pid), server);
                    assert_eq!(m.alias, reference());
                    assert_eq!(m.message, expected);
                }
                erl_dist::message::Message::Send(m) if !alias_ok => {
                    assert_eq!(Term::from(m.to_pid), pid());
                    assert_eq!(m.message, expected);
                }
                other => panic!("{other:?}"),
            }
        }
        // A reply that cannot be written leaves nothing behind.
        let mut frame = vec![9u8];
        assert!(!reply_frame(
            &mut frame,
            &body(&server),
            Route::Pid(from.pid),
            &tag,
            |out| {
                out.push(1);
                false
            }
        ));
        assert_eq!(frame, [9]);
    }

    /// The byte reader measures a call's parts with `skip`, which must agree with the
    /// validator on every kind it takes.
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
            assert_eq!(crate::etf::skip::skip(&padded), Some(b.len()), "{t}");
            assert_eq!(
                crate::etf::validate_term(&padded, &limits).ok(),
                Some(b.len())
            );
            // Truncated bytes are never measured past their end.
            for cut in 0..b.len() {
                assert!(
                    crate::etf::skip::skip(&b[..cut]).is_none_or(|n| n <= cut),
                    "{t} cut at {cut}"
                );
            }
        }
        // Kinds it does not know are left to the validator.
        assert_eq!(
            crate::etf::skip::skip(&body(&erl_dist::term::Float { value: 1.5 }.into())),
            None
        );
    }
}
