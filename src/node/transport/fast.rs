//! The hot path of a `GenServer.call`: every call brings MONITOR_P (by name), REG_SEND and
//! DEMONITOR_P. Decoding their control tuples into `eetf` trees (pids, refs, atoms: a dozen
//! allocations) costs more than the KV work itself. This module reads just enough of an
//! already *validated* frame to handle those cases (the monitor's pid and reference as
//! numbers, see [`crate::node::monitors`]); everything else goes through the full decoder.

use crate::etf::{
    self, Limits, SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE,
    VERSION_MAGIC as VERSION,
};
use crate::node::monitors::{MAX_REF_WORDS, PeerPid, RefKey};

/// Distribution operation codes (the first element of a control tuple), for the code that
/// reads or writes frames as bytes. erl_dist has them only as private constants (its
/// `DistributionMessage::OP`), so they are named here, once; the test
/// `op_codes_match_erl_dist` checks each against what erl_dist encodes.
pub(crate) mod op {
    /// `{2, Unused, ToPid}` + message.
    pub const SEND: u8 = 2;
    /// `{6, FromPid, Unused, ToName}` + message.
    pub const REG_SEND: u8 = 6;
    /// `{19, FromPid, ToProc, Ref}`.
    pub const MONITOR_P: u8 = 19;
    /// `{20, FromPid, ToProc, Ref}`.
    pub const DEMONITOR_P: u8 = 20;
    /// `{33, FromPid, Alias}` + message.
    pub const ALIAS_SEND: u8 = 33;
}
use op::{DEMONITOR_P, MONITOR_P, REG_SEND};

/// What the fast path made of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Fast<'a> {
    /// DEMONITOR_P: remove the monitor `reference` (made on `ref_node`).
    Demonitor {
        /// The monitor reference.
        reference: RefKey,
        /// The reference's node.
        ref_node: &'a str,
    },
    /// MONITOR_P on a registered name: record it (answer `noproc` if the name does not
    /// exist).
    MonitorName {
        /// The monitored name.
        name: &'a str,
        /// The watcher pid's numbers.
        watcher: PeerPid,
        /// The watcher pid's node.
        watcher_node: &'a str,
        /// The monitor reference.
        reference: RefKey,
        /// The reference's node.
        ref_node: &'a str,
    },
    /// REG_SEND: deliver `message` (a version-prefixed, validated term) to `name`.
    RegSend {
        /// The registered name.
        name: &'a str,
        /// The message bytes, version byte included.
        message: &'a [u8],
    },
    /// Anything else: use the full decoder.
    Slow,
}

/// An atom at the start of `buf` (validated bytes): its name and encoded length.
fn atom(buf: &[u8]) -> Option<(&str, usize)> {
    let (name, len) = etf::skip::atom(buf)?;
    // A Latin-1 atom with bytes >= 128 is not its bytes read as UTF-8: the full decoder
    // (which converts it) takes those.
    let latin1 = matches!(buf.first(), Some(&(etf::ATOM_EXT | etf::SMALL_ATOM_EXT)));
    if latin1 && !name.is_ascii() {
        return None;
    }
    Some((std::str::from_utf8(name).ok()?, len))
}

/// A 32-bit big-endian word at `at`.
fn word(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// A pid (NEW_PID_EXT or PID_EXT) at the start of `buf`: its node, numbers and length.
fn pid(buf: &[u8]) -> Option<(&str, PeerPid, usize)> {
    let tag = *buf.first()?;
    if tag != etf::NEW_PID_EXT && tag != etf::PID_EXT {
        return None;
    }
    let (node, n) = atom(buf.get(1..)?)?;
    let at = 1 + n;
    let creation = if tag == etf::NEW_PID_EXT {
        word(buf, at + 8)?
    } else {
        u32::from(*buf.get(at + 8)?)
    };
    let len = at + if tag == etf::NEW_PID_EXT { 12 } else { 9 };
    let p = PeerPid {
        id: word(buf, at)?,
        serial: word(buf, at + 4)?,
        creation,
    };
    Some((node, p, len))
}

/// A reference (NEWER_REFERENCE_EXT or NEW_REFERENCE_EXT) at the start of `buf`: its node
/// and key.
fn reference(buf: &[u8]) -> Option<(&str, RefKey)> {
    let tag = *buf.first()?;
    if tag != etf::NEWER_REFERENCE_EXT && tag != etf::NEW_REFERENCE_EXT {
        return None;
    }
    let words = usize::from(u16::from_be_bytes([*buf.get(1)?, *buf.get(2)?]));
    if words > MAX_REF_WORDS {
        return None;
    }
    let (node, n) = atom(buf.get(3..)?)?;
    let mut at = 3 + n;
    let creation = if tag == etf::NEWER_REFERENCE_EXT {
        at += 4;
        word(buf, at - 4)?
    } else {
        at += 1;
        u32::from(*buf.get(at - 1)?)
    };
    let mut ids = [0; MAX_REF_WORDS];
    for (i, id) in ids.iter_mut().take(words).enumerate() {
        *id = word(buf, at + 4 * i)?;
    }
    Some((
        node,
        RefKey {
            creation,
            len: words as u8,
            ids,
        },
    ))
}

/// Classifies a frame body after the pass-through byte. `ctrl_len` is the validated length of
/// the control term (version byte included); the rest is the payload.
pub fn classify<'a>(rest: &'a [u8], ctrl_len: usize, limits: &Limits) -> Fast<'a> {
    let Some(ctrl) = rest.get(..ctrl_len) else {
        return Fast::Slow;
    };
    let [VERSION, SMALL_TUPLE, arity, SMALL_INTEGER, op, ..] = *ctrl else {
        return Fast::Slow;
    };
    let mut pos = 5;
    let skip = |pos: &mut usize| -> Option<()> {
        let rest = ctrl.get(*pos..)?;
        *pos += match etf::skip::skip(rest) {
            Some(len) => len,
            None => etf::validate_term(rest, limits).ok()?,
        };
        Some(())
    };
    match (op, arity) {
        (DEMONITOR_P, 4) => {
            // {20, FromPid, ToProc, Ref}
            if skip(&mut pos).is_none() || skip(&mut pos).is_none() {
                return Fast::Slow;
            }
            match ctrl.get(pos..).and_then(reference) {
                Some((ref_node, reference)) => Fast::Demonitor {
                    reference,
                    ref_node,
                },
                None => Fast::Slow,
            }
        }
        (MONITOR_P, 4) => {
            // {19, FromPid, ToProc, Ref}
            let Some((watcher_node, watcher, n)) = ctrl.get(pos..).and_then(pid) else {
                return Fast::Slow;
            };
            pos += n;
            let Some((name, n)) = ctrl.get(pos..).and_then(atom) else {
                return Fast::Slow;
            };
            pos += n;
            match ctrl.get(pos..).and_then(reference) {
                Some((ref_node, reference)) => Fast::MonitorName {
                    name,
                    watcher,
                    watcher_node,
                    reference,
                    ref_node,
                },
                None => Fast::Slow,
            }
        }
        (REG_SEND, 4) => {
            // {6, FromPid, Unused, ToName}
            if skip(&mut pos).is_none() || skip(&mut pos).is_none() {
                return Fast::Slow;
            }
            match ctrl.get(pos..).and_then(atom) {
                Some((name, _)) if rest.len() > ctrl_len => Fast::RegSend {
                    name,
                    message: &rest[ctrl_len..],
                },
                _ => Fast::Slow,
            }
        }
        _ => Fast::Slow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use erl_dist::message::Message;
    use erl_dist::term::{Atom, Pid, PidOrAtom, Reference, Term};

    fn body(m: Message) -> Vec<u8> {
        let f = crate::node::transport::encode_frame(m).expect("encode");
        f[5..].to_vec()
    }

    fn classify_all(b: &[u8]) -> Fast<'_> {
        let limits = Limits::default();
        let n = etf::validate_versioned(b, &limits).expect("valid");
        classify(b, n, &limits)
    }

    fn pid() -> Pid {
        Pid::new("a@h", 1, 2, 3)
    }

    fn reference() -> Reference {
        Reference {
            node: Atom::from("a@h"),
            id: vec![1, 2, 3],
            creation: 3,
        }
    }

    #[test]
    fn the_three_messages_of_a_call() {
        let name = Atom::from("Elixir.DistributedExample.KVStore");
        let b = body(Message::monitor_p(
            pid(),
            PidOrAtom::Atom(name.clone()),
            reference(),
        ));
        let key = RefKey::of(&reference()).expect("key");
        assert_eq!(
            classify_all(&b),
            Fast::MonitorName {
                name: "Elixir.DistributedExample.KVStore",
                watcher: PeerPid {
                    id: 1,
                    serial: 2,
                    creation: 3
                },
                watcher_node: "a@h",
                reference: key,
                ref_node: "a@h",
            }
        );
        assert_eq!(key.to_reference("a@h"), reference());
        let b = body(Message::demonitor_p(
            pid(),
            PidOrAtom::Atom(name.clone()),
            reference(),
        ));
        assert_eq!(
            classify_all(&b),
            Fast::Demonitor {
                reference: key,
                ref_node: "a@h"
            }
        );
        let msg: Term = Atom::from("hello").into();
        let b = body(Message::reg_send(pid(), name, msg.clone()));
        match classify_all(&b) {
            Fast::RegSend { name, message } => {
                assert_eq!(name, "Elixir.DistributedExample.KVStore");
                let (t, n) = etf::decode(message, &Limits::default()).expect("decode");
                assert_eq!(t, msg);
                assert_eq!(n, message.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn op_codes_match_erl_dist() {
        let op_of = |m: Message| {
            let b = body(m);
            // VERSION, SMALL_TUPLE, arity, SMALL_INTEGER, op
            assert_eq!(b[0..2], [VERSION, SMALL_TUPLE]);
            assert_eq!(b[3], SMALL_INTEGER);
            b[4]
        };
        let name = Atom::from("n");
        let msg: Term = Atom::from("m").into();
        assert_eq!(op_of(Message::send(pid(), msg.clone())), op::SEND);
        assert_eq!(
            op_of(Message::reg_send(pid(), name.clone(), msg.clone())),
            op::REG_SEND
        );
        assert_eq!(
            op_of(Message::monitor_p(
                pid(),
                PidOrAtom::Atom(name.clone()),
                reference()
            )),
            op::MONITOR_P
        );
        assert_eq!(
            op_of(Message::demonitor_p(
                pid(),
                PidOrAtom::Atom(name),
                reference()
            )),
            op::DEMONITOR_P
        );
        assert_eq!(
            op_of(Message::alias_send(pid(), reference(), msg)),
            op::ALIAS_SEND
        );
    }

    #[test]
    fn others_go_the_slow_way() {
        let b = body(Message::monitor_p(
            pid(),
            PidOrAtom::Pid(pid()),
            reference(),
        ));
        assert_eq!(classify_all(&b), Fast::Slow);
        let b = body(Message::send(pid(), Atom::from("x").into()));
        assert_eq!(classify_all(&b), Fast::Slow);
    }
}
