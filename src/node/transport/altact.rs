//! ALTACT_SIG_SEND (op 37, OTP 28+, EEP 76): `{37, Flags, SenderPid, To}` or `{37, Flags,
//! SenderPid, To, Token}`, then the message (or, with the EXIT flag, the exit reason).
//!
//! OTP sends it only to a peer that negotiated `DFLAG_ALTACT_SIG`
//! ([`super::handshake::FLAG_ALTACT_SIG`]), for every send to an alias and every priority
//! signal (erts `dist.c`: `(prio || is_external_ref(remote)) && (dflags & DFLAG_ALTACT_SIG)`);
//! OTP 30 drops ALIAS_SEND (op 33), so this is how a reply to an alias reaches a peer there.
//!
//! Receiving follows erts `erts_net_message`: the low byte of a non-negative integer `Flags`
//! (a bignum included; higher bits are for future use and ignored), a pid sender, `To` a
//! reference with ALIAS (never with NAME too), an atom with NAME, else a pid; with TOKEN the
//! control tuple has a fifth element (the seq-trace token, accepted and ignored, as kvnode
//! ignores the tokens of the `*_TT` operations); a longer tuple is accepted (OTP reserves the
//! room). Anything else is a malformed control message: the connection closes with a bounded
//! excerpt of it, as for any other malformed control message.
//!
//! A priority signal (PRIO) is delivered as an ordinary one: kvnode processes have no
//! priority queue, and a BEAM process too treats a priority message as ordinary unless it
//! enabled priority reception for that alias.

use super::connection::Error;
use crate::etf::{self, Limits};
use erl_dist::message::Message;
use erl_dist::term::{Atom, FixInteger, Pid, Reference, Term, Tuple};

/// The operation number of ALTACT_SIG_SEND.
pub const OP: u8 = 37;
/// Flags bit: a priority signal.
pub const FLAG_PRIO: u8 = 1;
/// Flags bit: the control tuple carries a seq-trace token (fifth element).
pub const FLAG_TOKEN: u8 = 2;
/// Flags bit: `To` is an alias (a reference).
pub const FLAG_ALIAS: u8 = 4;
/// Flags bit: `To` is a registered name (an atom).
pub const FLAG_NAME: u8 = 8;
/// Flags bit: an exit signal (the payload is the reason), else a message.
pub const FLAG_EXIT: u8 = 16;

/// Where an ALTACT signal goes.
#[derive(Debug, Clone, PartialEq)]
pub enum To {
    /// A process.
    Pid(Pid),
    /// The process owning an alias (dropped when the alias is not active).
    Alias(Reference),
    /// A registered name (dropped when nothing is registered).
    Name(Atom),
}

/// A decoded ALTACT_SIG_SEND.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// The low byte of the Flags element.
    pub flags: u8,
    /// The sending process.
    pub from: Pid,
    /// The target.
    pub to: To,
    /// The seq-trace token (TOKEN flag), carried over to the `*_TT` equivalents.
    pub token: Option<Term>,
    /// The message, or the exit reason (EXIT flag).
    pub payload: Term,
}

impl Signal {
    /// A priority signal (PRIO flag).
    pub fn is_priority(&self) -> bool {
        self.flags & FLAG_PRIO != 0
    }

    /// The classic control message that does the same, when there is one: a message to a
    /// pid (SEND_SENDER), an alias (ALIAS_SEND) or a name (REG_SEND), an exit signal to a pid
    /// (PAYLOAD_EXIT2), each the `*_TT` variant with a token. An exit signal to an alias or a
    /// name (a priority exit signal through a priority alias) has none: returned as is.
    pub fn into_message(self) -> Result<Message, Box<Signal>> {
        let Signal {
            flags,
            from,
            to,
            token,
            payload,
        } = self;
        let exit = flags & FLAG_EXIT != 0;
        Ok(match (exit, to, token) {
            (false, To::Pid(to), None) => Message::send_sender(from, to, payload),
            (false, To::Pid(to), Some(t)) => Message::send_sender_tt(from, to, payload, t),
            (false, To::Alias(alias), None) => Message::alias_send(from, alias, payload),
            (false, To::Alias(alias), Some(t)) => Message::alias_send_tt(from, alias, payload, t),
            (false, To::Name(name), None) => Message::reg_send(from, name, payload),
            (false, To::Name(name), Some(t)) => Message::reg_send_tt(from, name, payload, t),
            (true, To::Pid(to), None) => Message::payload_exit2(from, to, payload),
            (true, To::Pid(to), Some(t)) => Message::payload_exit2_tt(from, to, payload, t),
            (true, to, token) => {
                return Err(Box::new(Signal {
                    flags,
                    from,
                    to,
                    token,
                    payload,
                }));
            }
        })
    }
}

/// Whether a versioned control term starts as an ALTACT_SIG_SEND tuple (small or large
/// tuple, first element the small integer 37). Cheap: looks at a few bytes.
pub fn is_altact(control: &[u8]) -> bool {
    const VERSION: u8 = 131;
    const SMALL_TUPLE: u8 = 104;
    const LARGE_TUPLE: u8 = 105;
    const SMALL_INTEGER: u8 = 97;
    matches!(
        control,
        [VERSION, SMALL_TUPLE, _, SMALL_INTEGER, OP, ..]
            | [VERSION, LARGE_TUPLE, _, _, _, _, SMALL_INTEGER, OP, ..]
    )
}

/// Decodes an ALTACT_SIG_SEND from a validated frame (`rest`: the bytes after the
/// pass-through byte, the control term being its first `ctrl_len`). None when the control
/// message is another operation.
pub fn parse(rest: &[u8], ctrl_len: usize, limits: &Limits) -> Result<Option<Signal>, Error> {
    let control = &rest[..ctrl_len];
    if !is_altact(control) {
        return Ok(None);
    }
    let bad = |what: &str| {
        Error::Control(format!(
            "malformed ALTACT_SIG_SEND: {what} (control message of {})",
            etf::excerpt(control)
        ))
    };
    let Term::Tuple(Tuple { elements }) = etf::decode(control, limits)?.0 else {
        return Err(bad("not a tuple"));
    };
    if elements.len() < 4 {
        return Err(bad("fewer than 4 elements"));
    }
    let mut it = elements.into_iter().skip(1);
    let flags = match it.next() {
        Some(Term::FixInteger(FixInteger { value })) if value >= 0 => (value & 0xff) as u8,
        Some(Term::BigInteger(big)) if big.value.sign() != num_bigint::Sign::Minus => {
            big.value.to_bytes_le().1.first().copied().unwrap_or(0)
        }
        _ => return Err(bad("Flags is not a non-negative integer")),
    };
    let Some(Term::Pid(from)) = it.next() else {
        return Err(bad("the sender is not a pid"));
    };
    let to = match (it.next(), flags & (FLAG_ALIAS | FLAG_NAME)) {
        (Some(Term::Reference(r)), FLAG_ALIAS) => To::Alias(*r),
        (Some(Term::Atom(a)), FLAG_NAME) => To::Name(a),
        (Some(Term::Pid(p)), 0) => To::Pid(p),
        (_, f) if f == FLAG_ALIAS | FLAG_NAME => return Err(bad("both ALIAS and NAME set")),
        _ => return Err(bad("To does not match the flags")),
    };
    let token = if flags & FLAG_TOKEN != 0 {
        Some(it.next().ok_or_else(|| bad("TOKEN set but no token"))?)
    } else {
        None
    };
    if ctrl_len == rest.len() {
        return Err(bad("no message"));
    }
    let (payload, _) = etf::decode(&rest[ctrl_len..], limits)?;
    Ok(Some(Signal {
        flags,
        from,
        to,
        token,
        payload,
    }))
}

/// Appends an ALTACT_SIG_SEND control tuple with the ALIAS flag, `{37, 4, From, Alias}`
/// (versioned), from the external-format bytes of the sender pid and the alias.
pub fn write_alias_control(out: &mut Vec<u8>, from_pid: &[u8], alias: &[u8]) {
    const VERSION: u8 = 131;
    const SMALL_TUPLE: u8 = 104;
    const SMALL_INTEGER: u8 = 97;
    out.extend_from_slice(&[
        VERSION,
        SMALL_TUPLE,
        4,
        SMALL_INTEGER,
        OP,
        SMALL_INTEGER,
        FLAG_ALIAS,
    ]);
    out.extend_from_slice(from_pid);
    out.extend_from_slice(alias);
}

/// The control term of an alias send as ALTACT_SIG_SEND: `{37, 4, From, Alias}`.
pub fn alias_control(from_pid: Pid, alias: Reference) -> Term {
    Tuple::from(vec![
        FixInteger::from(i32::from(OP)).into(),
        FixInteger::from(i32::from(FLAG_ALIAS)).into(),
        from_pid.into(),
        alias.into(),
    ])
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::term::BigInteger;

    fn versioned(t: &Term) -> Vec<u8> {
        let mut out = Vec::new();
        crate::etf::encode::encode(t, &mut out).expect("encodes");
        out
    }

    fn pid(node: &str) -> Pid {
        Pid::new(node, 7, 0, 3)
    }

    fn reference() -> Reference {
        Reference {
            node: Atom::from("kv@h"),
            id: vec![1, 2, 3],
            creation: 3,
        }
    }

    /// `rest` of a frame: control elements, then the payload if any.
    fn frame(elements: Vec<Term>, payload: Option<Term>) -> (Vec<u8>, usize) {
        let mut rest = versioned(&Tuple::from(elements).into());
        let ctrl_len = rest.len();
        if let Some(p) = payload {
            rest.extend(versioned(&p));
        }
        (rest, ctrl_len)
    }

    fn int(v: i32) -> Term {
        FixInteger::from(v).into()
    }

    fn parse_of(elements: Vec<Term>, payload: Option<Term>) -> Result<Option<Signal>, Error> {
        let (rest, ctrl_len) = frame(elements, payload);
        parse(&rest, ctrl_len, &Limits::default())
    }

    #[test]
    fn every_target_kind_and_the_classic_equivalents() {
        let msg: Term = Atom::from("hi").into();
        let from = pid("ex@h");
        type Case = (i32, Term, Vec<Term>, fn(&Message) -> bool);
        let cases: Vec<Case> = vec![
            (0, pid("kv@h").into(), vec![], |m| {
                matches!(m, Message::SendSender(_))
            }),
            (FLAG_PRIO as i32, pid("kv@h").into(), vec![], |m| {
                matches!(m, Message::SendSender(_))
            }),
            (
                (FLAG_ALIAS | FLAG_PRIO) as i32,
                reference().into(),
                vec![],
                |m| matches!(m, Message::AliasSend(_)),
            ),
            (FLAG_NAME as i32, Atom::from("n").into(), vec![], |m| {
                matches!(m, Message::RegSend(_))
            }),
            (
                (FLAG_ALIAS | FLAG_TOKEN) as i32,
                reference().into(),
                vec![int(0)],
                |m| matches!(m, Message::AliasSendTt(_)),
            ),
            (
                (FLAG_EXIT | FLAG_PRIO) as i32,
                pid("kv@h").into(),
                vec![],
                |m| matches!(m, Message::PayloadExit2(_)),
            ),
            // Unknown higher bits are ignored; extra elements too.
            (
                0x100 | FLAG_NAME as i32,
                Atom::from("n").into(),
                vec![int(9)],
                |m| matches!(m, Message::RegSend(_)),
            ),
        ];
        for (flags, to, extra, is) in cases {
            let mut elements = vec![int(37), int(flags), from.clone().into(), to];
            elements.extend(extra);
            let signal = parse_of(elements, Some(msg.clone()))
                .expect("valid")
                .expect("op 37");
            assert_eq!(signal.payload, msg);
            let message = signal.into_message().expect("has a classic form");
            assert!(is(&message), "flags {flags}: {message:?}");
        }
        // An exit signal to an alias has no classic form.
        let signal = parse_of(
            vec![
                int(37),
                int((FLAG_EXIT | FLAG_ALIAS) as i32),
                from.clone().into(),
                reference().into(),
            ],
            Some(msg.clone()),
        )
        .expect("valid")
        .expect("op 37");
        assert!(signal.into_message().is_err());
        // A bignum Flags: its least significant byte counts.
        let big = BigInteger {
            value: num_bigint::BigInt::from(1u128 << 80 | u128::from(FLAG_NAME)),
        };
        let signal = parse_of(
            vec![int(37), big.into(), from.into(), Atom::from("n").into()],
            Some(msg),
        )
        .expect("valid")
        .expect("op 37");
        assert_eq!(signal.flags, FLAG_NAME);
        // Other operations are not this one.
        assert!(
            parse_of(
                vec![int(33), pid("a@h").into(), reference().into()],
                Some(int(1))
            )
            .expect("valid")
            .is_none()
        );
    }

    #[test]
    fn malformed_signals_are_errors_with_a_bounded_excerpt() {
        let from: Term = pid("ex@h").into();
        let msg = Some(int(1));
        let huge = Atom::from("x".repeat(200));
        let bad: Vec<(Vec<Term>, Option<Term>)> = vec![
            // Too short, negative flags, a non-integer, a non-pid sender.
            (vec![int(37), int(0), from.clone()], msg.clone()),
            (
                vec![int(37), int(-1), from.clone(), from.clone()],
                msg.clone(),
            ),
            (
                vec![int(37), Atom::from("x").into(), from.clone(), from.clone()],
                msg.clone(),
            ),
            (
                vec![int(37), int(0), Atom::from("x").into(), from.clone()],
                msg.clone(),
            ),
            // To does not match the flags; ALIAS and NAME together.
            (
                vec![int(37), int(0), from.clone(), huge.clone().into()],
                msg.clone(),
            ),
            (
                vec![int(37), int(FLAG_ALIAS as i32), from.clone(), from.clone()],
                msg.clone(),
            ),
            (
                vec![
                    int(37),
                    int(FLAG_NAME as i32),
                    from.clone(),
                    reference().into(),
                ],
                msg.clone(),
            ),
            (
                vec![
                    int(37),
                    int((FLAG_ALIAS | FLAG_NAME) as i32),
                    from.clone(),
                    reference().into(),
                ],
                msg.clone(),
            ),
            // TOKEN without a token; no message.
            (
                vec![int(37), int(FLAG_TOKEN as i32), from.clone(), from.clone()],
                msg.clone(),
            ),
            (vec![int(37), int(0), from.clone(), from.clone()], None),
        ];
        for (elements, payload) in bad {
            let e = parse_of(elements.clone(), payload).expect_err("malformed");
            let text = e.to_string();
            assert!(text.contains("ALTACT_SIG_SEND"), "{text}");
            assert!(text.len() < 400, "bounded: {} bytes", text.len());
        }
    }

    #[test]
    fn alias_control_bytes_match_the_term() {
        let from = pid("kv@h");
        let mut out = Vec::new();
        write_alias_control(
            &mut out,
            &versioned(&from.clone().into())[1..],
            &versioned(&reference().into())[1..],
        );
        assert_eq!(out, versioned(&alias_control(from, reference())));
        assert!(is_altact(&out));
    }
}
