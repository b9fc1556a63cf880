//! The hot path of a `GenServer.call`: every call brings MONITOR_P (by name), REG_SEND and
//! DEMONITOR_P. Decoding their control tuples into `eetf` trees (pids, refs, atoms: a dozen
//! allocations) costs more than the KV work itself, and for two of the three nothing in them
//! is needed. This module reads just enough of an already *validated* frame to handle those
//! cases; everything else goes through the full decoder.

use crate::term::{
    self, Limits, SMALL_INTEGER_EXT as SMALL_INTEGER, SMALL_TUPLE_EXT as SMALL_TUPLE,
    VERSION_MAGIC as VERSION,
};

/// Operation codes handled here.
const REG_SEND: u8 = 6;
const MONITOR_P: u8 = 19;
const DEMONITOR_P: u8 = 20;

/// What the fast path made of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Fast<'a> {
    /// DEMONITOR_P: nothing to do (see `node`: built-in processes keep no monitor records).
    Demonitor,
    /// MONITOR_P on a registered name: answer only if the name does not exist.
    MonitorName(&'a str),
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
    let (name, len) = term::skip::atom(buf)?;
    // Latin-1 atoms with bytes >= 128 are rejected by the validator, so UTF-8 covers all.
    Some((std::str::from_utf8(name).ok()?, len))
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
        *pos += match term::skip::skip(rest) {
            Some(len) => len,
            None => term::validate_term(rest, limits).ok()?,
        };
        Some(())
    };
    match (op, arity) {
        (DEMONITOR_P, 4) => Fast::Demonitor,
        (MONITOR_P, 4) => {
            // {19, FromPid, ToProc, Ref}
            if skip(&mut pos).is_none() {
                return Fast::Slow;
            }
            match ctrl.get(pos..).and_then(atom) {
                Some((name, _)) => Fast::MonitorName(name),
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
        let f = crate::dist::encode_frame(m).expect("encode");
        f[5..].to_vec()
    }

    fn classify_all(b: &[u8]) -> Fast<'_> {
        let limits = Limits::default();
        let n = term::validate_versioned(b, &limits).expect("valid");
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
        assert_eq!(
            classify_all(&b),
            Fast::MonitorName("Elixir.DistributedExample.KVStore")
        );
        let b = body(Message::demonitor_p(
            pid(),
            PidOrAtom::Atom(name.clone()),
            reference(),
        ));
        assert_eq!(classify_all(&b), Fast::Demonitor);
        let msg: Term = Atom::from("hello").into();
        let b = body(Message::reg_send(pid(), name, msg.clone()));
        match classify_all(&b) {
            Fast::RegSend { name, message } => {
                assert_eq!(name, "Elixir.DistributedExample.KVStore");
                let (t, n) = term::decode(message, &Limits::default()).expect("decode");
                assert_eq!(t, msg);
                assert_eq!(n, message.len());
            }
            other => panic!("{other:?}"),
        }
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
