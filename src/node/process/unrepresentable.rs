//! Frames holding a valid term that eetf cannot hold unchanged: an OTP 29 native record
//! ([`etf::TermError::NativeRecord`]) or a map with both `0.0` and `-0.0` as keys
//! ([`etf::TermError::MapKeysMerged`]). The peer is legitimate (OTP 29 sends these), so such
//! a signal costs only itself, never the connection (and with it every call in flight on
//! it):
//!
//! | signal | what happens |
//! |---|---|
//! | SPAWN_REQUEST (`:erpc.call`, `:rpc.call`, `Node.spawn`) with such an argument | SPAWN_REPLY error `unrepresentable`: `:erpc.call` raises `{:erpc, :unrepresentable}`, `:rpc.call` returns `{:badrpc, {:EXIT, :unrepresentable}}` |
//! | a message (SEND, REG_SEND, ALIAS_SEND and their `_TT` forms) to a kvnode process | delivered as bytes ([`Signal::Raw`]): a GenServer serves a call or cast of it from the bytes (the KV server's raw lane, `rex` answers `{:badrpc, {:EXIT, :unrepresentable}}`), a [`crate::Process`] gets a reply to its call as [`crate::CallError::Unrepresentable`]; anything else is dropped with a `warn` |
//! | an exit signal or a DOWN (EXIT, EXIT2, MONITOR_P_EXIT, their PAYLOAD_ and `_TT` forms) whose reason is one | delivered (the link or monitor fires) with the reason kept as its bytes: `{unrepresentable, Bytes}`, `erlang:binary_to_term(Bytes)` being the reason |
//! | any other control message holding one | dropped with a `warn` |
//!
//! The control message is decoded alone; when it holds the term itself (an exit reason
//! without DFLAG_EXIT_PAYLOAD) its other elements are, and the reason is kept as bytes. A
//! frame that fits none of these is dropped with a `warn`. Malformed terms (the
//! validator fails) still close the connection, as before.

use super::{Node, RawOwned, Signal};
use crate::etf::{self, Limits, TermError};
use crate::node::transport::altact;
use erl_dist::message::Message;
use erl_dist::term::{Atom, Binary, FixInteger, PidOrAtom, Term, Tuple};

/// The reason a SPAWN_REQUEST whose arguments kvnode cannot hold unchanged is refused with
/// (`{:erpc, :unrepresentable}` for `:erpc.call`), and what `rex` answers inside
/// `{:badrpc, {:EXIT, ...}}`: the same word the KV server uses (`{:error, :unrepresentable}`).
pub const REASON: &str = "unrepresentable";

/// Whether `error` is a valid term eetf cannot hold unchanged (not a malformed one).
pub fn is_unrepresentable(error: &TermError) -> bool {
    matches!(
        error,
        TermError::NativeRecord { .. } | TermError::MapKeysMerged
    )
}

/// Distribution operations (erl_dist_protocol): the ones handled here.
mod op {
    pub const SEND: i32 = 2;
    pub const EXIT: i32 = 3;
    pub const EXIT2: i32 = 8;
    pub const EXIT_TT: i32 = 13;
    pub const EXIT2_TT: i32 = 18;
    pub const MONITOR_P_EXIT: i32 = 21;
    pub const REG_SEND: i32 = 6;
    pub const SEND_TT: i32 = 12;
    pub const REG_SEND_TT: i32 = 16;
    pub const SEND_SENDER: i32 = 22;
    pub const SEND_SENDER_TT: i32 = 23;
    pub const SPAWN_REQUEST: i32 = 29;
    pub const SPAWN_REQUEST_TT: i32 = 30;
    pub const PAYLOAD_EXIT: i32 = 24;
    pub const PAYLOAD_EXIT_TT: i32 = 25;
    pub const PAYLOAD_EXIT2: i32 = 26;
    pub const PAYLOAD_EXIT2_TT: i32 = 27;
    pub const PAYLOAD_MONITOR_P_EXIT: i32 = 28;
    pub const ALIAS_SEND: i32 = 33;
    pub const ALIAS_SEND_TT: i32 = 34;
    pub const ALTACT_SIG_SEND: i32 = super::altact::OP as i32;
}

/// Handles a validated frame from `peer` whose control message or payload eetf cannot hold
/// unchanged (`error` says why). `rest`: the frame after the pass-through byte; the control
/// message is its first `ctrl_len` bytes, the payload (if any) the rest.
pub fn handle_frame(
    node: &Node,
    peer: &str,
    rest: &[u8],
    ctrl_len: usize,
    limits: &Limits,
    error: &TermError,
) {
    let (control, payload) = rest.split_at(ctrl_len.min(rest.len()));
    let elements = match etf::decode(control, limits) {
        Ok((Term::Tuple(t), _)) => t.elements,
        Ok(_) | Err(_) => {
            // An exit signal or DOWN without a payload carries its reason in the control
            // message (a peer without DFLAG_EXIT_PAYLOAD gets those): still delivered.
            if !exit_in_control(node, peer, control, limits, error) {
                tracing::warn!(%peer, %error, control = %etf::excerpt(control), "a control message kvnode cannot decode unchanged: dropped");
            }
            return;
        }
    };
    let Some(Term::FixInteger(FixInteger { value: operation })) = elements.first() else {
        tracing::warn!(%peer, %error, control = %etf::excerpt(control), "a control message kvnode cannot decode unchanged: dropped");
        return;
    };
    let operation = *operation;
    let target = match (operation, elements.as_slice()) {
        (
            op::SPAWN_REQUEST | op::SPAWN_REQUEST_TT,
            [_, Term::Reference(req_id), Term::Pid(from), _, mfa, ..],
        ) => {
            tracing::warn!(%peer, %error, mfa = %etf::summary(mfa), "a spawn request whose arguments kvnode cannot decode unchanged: refused with SPAWN_REPLY error unrepresentable");
            node.send_to_node(
                peer,
                Message::spawn_reply(
                    (**req_id).clone(),
                    from.clone(),
                    FixInteger::from(0),
                    PidOrAtom::Atom(Atom::from(REASON)),
                ),
            );
            return;
        }
        (op::REG_SEND | op::REG_SEND_TT, [_, _, _, Term::Atom(name), ..]) => {
            node.whereis(&name.name)
        }
        (
            op::SEND | op::SEND_TT | op::SEND_SENDER | op::SEND_SENDER_TT,
            [_, _, Term::Pid(to), ..],
        ) => node.lookup_pid(to),
        (op::ALIAS_SEND | op::ALIAS_SEND_TT, [_, _, Term::Reference(alias), ..]) => {
            node.alias_target(alias)
        }
        // Exit signals and DOWNs whose reason is such a term still take effect (a link or
        // monitor that never fired would leave its watcher waiting), with the reason kept
        // whole as its bytes: `{unrepresentable, <<Reason in external format>>}`.
        (
            op::PAYLOAD_EXIT | op::PAYLOAD_EXIT_TT | op::PAYLOAD_EXIT2 | op::PAYLOAD_EXIT2_TT,
            [_, Term::Pid(from), Term::Pid(to), ..],
        ) if !payload.is_empty() => {
            let reason = wrapped_reason(payload);
            tracing::warn!(%peer, %error, operation, "an exit signal whose reason kvnode cannot decode unchanged: delivered with the reason as {{unrepresentable, Bytes}}");
            let message = if matches!(operation, op::PAYLOAD_EXIT | op::PAYLOAD_EXIT_TT) {
                Message::payload_exit(from.clone(), to.clone(), reason)
            } else {
                Message::payload_exit2(from.clone(), to.clone(), reason)
            };
            super::router::handle(node, peer, message);
            return;
        }
        (op::PAYLOAD_MONITOR_P_EXIT, [_, from, Term::Pid(to), Term::Reference(reference), ..])
            if !payload.is_empty() =>
        {
            let from = match from {
                Term::Pid(p) => PidOrAtom::Pid(p.clone()),
                Term::Atom(a) => PidOrAtom::Atom(a.clone()),
                _ => {
                    tracing::warn!(%peer, %error, "a malformed MONITOR_P_EXIT holding a term kvnode cannot decode unchanged: dropped");
                    return;
                }
            };
            tracing::warn!(%peer, %error, "a DOWN whose reason kvnode cannot decode unchanged: delivered with the reason as {{unrepresentable, Bytes}}");
            let message = Message::payload_monitor_p_exit(
                from,
                to.clone(),
                (**reference).clone(),
                wrapped_reason(payload),
            );
            super::router::handle(node, peer, message);
            return;
        }
        // ALTACT_SIG_SEND (OTP 28+) of a message, not of an exit signal.
        (op::ALTACT_SIG_SEND, [_, Term::FixInteger(FixInteger { value: flags }), _, to, ..])
            if flags & i32::from(altact::FLAG_EXIT) == 0 =>
        {
            match to {
                Term::Reference(alias) => node.alias_target(alias),
                Term::Atom(name) => node.whereis(&name.name),
                Term::Pid(pid) => node.lookup_pid(pid),
                _ => None,
            }
        }
        _ => {
            tracing::warn!(%peer, %error, operation, "a control message holding a term kvnode cannot decode unchanged: dropped");
            return;
        }
    };
    if payload.is_empty() {
        // The control message itself holds the term (no send does): nothing to deliver.
        tracing::warn!(%peer, %error, operation, "a message kvnode cannot decode unchanged: dropped");
        return;
    }
    match target {
        Some(mb) => mb.target.dispatch_weighted(
            node,
            Signal::Raw(RawOwned::new(peer, payload, limits)),
            payload.len(),
        ),
        None => tracing::debug!(
            operation,
            "message to a process that does not exist here: dropped"
        ),
    }
}

/// EXIT, EXIT2, their `_TT` forms and MONITOR_P_EXIT, whose reason (the control tuple's
/// last element) kvnode cannot decode unchanged: routed with the reason kept as its bytes
/// ([`wrapped_reason`]). False for any other control message.
fn exit_in_control(
    node: &Node,
    peer: &str,
    control: &[u8],
    limits: &Limits,
    error: &TermError,
) -> bool {
    let Some(body) = control.strip_prefix(&[etf::VERSION_MAGIC]) else {
        return false;
    };
    let [etf::SMALL_TUPLE_EXT, arity, ref rest @ ..] = *body else {
        return false;
    };
    // Each element's bytes (validated with the frame).
    let mut parts = Vec::with_capacity(usize::from(arity));
    let mut at = 0;
    for _ in 0..arity {
        let Some(len) = rest
            .get(at..)
            .and_then(|r| etf::validate_term(r, limits).ok())
        else {
            return false;
        };
        parts.push(&rest[at..at + len]);
        at += len;
    }
    let Some((reason, head)) = parts.split_last() else {
        return false;
    };
    let mut decoded = Vec::with_capacity(head.len());
    for part in head {
        let mut v = Vec::with_capacity(part.len() + 1);
        v.push(etf::VERSION_MAGIC);
        v.extend_from_slice(part);
        match etf::decode_exact(&v, limits) {
            Ok(term) => decoded.push(term),
            Err(_) => return false,
        }
    }
    let mut reason_bytes = Vec::with_capacity(reason.len() + 1);
    reason_bytes.push(etf::VERSION_MAGIC);
    reason_bytes.extend_from_slice(reason);
    let reason = wrapped_reason(&reason_bytes);
    let message = match decoded.as_slice() {
        [
            Term::FixInteger(FixInteger { value: op::EXIT }),
            Term::Pid(from),
            Term::Pid(to),
        ]
        | [
            Term::FixInteger(FixInteger { value: op::EXIT_TT }),
            Term::Pid(from),
            Term::Pid(to),
            _,
        ] => Message::exit(from.clone(), to.clone(), reason),
        [
            Term::FixInteger(FixInteger { value: op::EXIT2 }),
            Term::Pid(from),
            Term::Pid(to),
        ]
        | [
            Term::FixInteger(FixInteger {
                value: op::EXIT2_TT,
            }),
            Term::Pid(from),
            Term::Pid(to),
            _,
        ] => Message::exit2(from.clone(), to.clone(), reason),
        [
            Term::FixInteger(FixInteger {
                value: op::MONITOR_P_EXIT,
            }),
            from,
            Term::Pid(to),
            Term::Reference(reference),
        ] => {
            let from = match from {
                Term::Pid(p) => PidOrAtom::Pid(p.clone()),
                Term::Atom(a) => PidOrAtom::Atom(a.clone()),
                _ => return false,
            };
            Message::monitor_p_exit(from, to.clone(), (**reference).clone(), reason)
        }
        _ => return false,
    };
    tracing::warn!(%peer, %error, "an exit signal or DOWN whose reason kvnode cannot decode unchanged: delivered with the reason as {{unrepresentable, Bytes}}");
    super::router::handle(node, peer, message);
    true
}

/// An exit reason kvnode cannot decode unchanged (`payload`: the reason in external format,
/// version byte included), kept whole: `{unrepresentable, Bytes}`, where
/// `erlang:binary_to_term(Bytes)` is the reason.
pub fn wrapped_reason(payload: &[u8]) -> Term {
    Tuple::from(vec![
        Atom::from(REASON).into(),
        Binary::from(payload.to_vec()).into(),
    ])
    .into()
}

/// Whether `reason` is a reason [`wrapped_reason`] made; its bytes if so.
pub fn unwrapped_reason(reason: &Term) -> Option<&[u8]> {
    match reason {
        Term::Tuple(t) => match t.elements.as_slice() {
            [Term::Atom(a), Term::Binary(b)] if a.name == REASON => Some(&b.bytes),
            _ => None,
        },
        _ => None,
    }
}

/// The parts of a validated call reply `{Tag, Reply}` (version byte included): the tag,
/// decoded, and the reply, still in external format (version byte included). None for any
/// other shape, or a tag that does not decode.
pub fn reply_parts(message: &[u8], limits: &Limits) -> Option<(Term, Vec<u8>)> {
    let body = message.strip_prefix(&[etf::VERSION_MAGIC])?;
    let [etf::SMALL_TUPLE_EXT, 2, ref rest @ ..] = *body else {
        return None;
    };
    let tag_len = match etf::skip::skip(rest) {
        Some(len) => len,
        None => etf::validate_term(rest, limits).ok()?,
    };
    let mut tag = Vec::with_capacity(tag_len + 1);
    tag.push(etf::VERSION_MAGIC);
    tag.extend_from_slice(rest.get(..tag_len)?);
    let tag = etf::decode_exact(&tag, limits).ok()?;
    let reply_bytes = rest.get(tag_len..)?;
    if reply_bytes.is_empty() {
        return None;
    }
    let mut reply = Vec::with_capacity(reply_bytes.len() + 1);
    reply.push(etf::VERSION_MAGIC);
    reply.extend_from_slice(reply_bytes);
    Some((tag, reply))
}
