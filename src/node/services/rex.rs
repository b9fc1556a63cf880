//! `rex`: the classic rpc server every Erlang node has, for the clients that still speak its
//! protocol: `erl_call`, C nodes using `ei_rpc`, Jinterface `OtpConnection.sendRPC`,
//! `:rpc.block_call`, `:rpc.sbcast`, `:rpc.server_call`, `gen_server:cast({rex, N}, {cast, ...})`
//! and pre-OTP-23 nodes. Requests and replies are those of OTP's `rpc.erl`:
//!
//! | request | reply |
//! |---|---|
//! | `gen_server:call` `{call, M, F, A, GL}`, `{block_call, M, F, A, GL}` | the result (below) |
//! | `gen_server:call` `stop` | `stopped` (kvnode's rex keeps serving) |
//! | any other `gen_server:call` | none (OTP ignores it too) |
//! | `gen_server:cast` `{cast, M, F, A, GL}` | none; the function runs |
//! | `{From, {call, M, F, A, GL}}` (C nodes, Jinterface) | `From ! {rex, Result}` |
//! | `{From, {sbcast, Name, Msg}}` | `Name ! Msg`, then `From ! {rex, node(), node()}`, or `{rex, node(), {nonexisting_name, Name}}` when nothing is registered as `Name` |
//! | `{From, {send, Name, Msg}}` | `Name ! {From, Msg}`, or `From ! {rex, node(), {nonexisting_name, Name}}` |
//! | `{From, features_request}` | `From ! {features_reply, node(), [erpc]}` |
//!
//! The result is `rpc:execute_call/3`'s: the value returned, the value thrown,
//! `{badrpc, {'EXIT', Reason}}` after an exit, `{badrpc, {'EXIT', {Reason, Stack}}}` after an
//! error (`{badrpc, {'EXIT', {undef, [{M, F, A, []}]}}}` for a function kvnode does not have).
//! Functions come from the one [`super::functions`] table SPAWN_REQUEST uses. The group
//! leader is ignored: kvnode's functions do no I/O. A call whose arguments kvnode cannot decode
//! unchanged (an OTP 29 native record, a map with both `0.0` and `-0.0` as keys) is answered
//! `{badrpc, {'EXIT', unrepresentable}}` at once. `erlang:halt` gets no reply (the node is
//! gone, as on BEAM: `erl_call -q` then exits 0).

use super::functions::{self, Finished, Outcome, atom, tuple};
use crate::node::gen_server::{self, CallResult, Caller, Ctx, GenServer, Replier, Request};
use crate::node::{Node, Signal};
use erl_dist::message::Message;
use erl_dist::term::{List, Pid, Term, Tuple};
use std::future::Future;

/// The registered name.
pub const NAME: &str = "rex";

/// The `rex` server.
pub struct Rex;

/// `rpc:execute_call/3`'s answer for an outcome (None: the node halts, nothing is sent).
pub fn rpc_result(outcome: Outcome) -> Option<Term> {
    let badrpc_exit = |reason: Term| tuple(vec![atom("badrpc"), tuple(vec![atom("EXIT"), reason])]);
    Some(match outcome {
        Outcome::Return(v) | Outcome::Throw(v) => v,
        Outcome::Exit(reason) => badrpc_exit(reason),
        Outcome::Error { reason, stack } => badrpc_exit(tuple(vec![reason, stack])),
        Outcome::Halt => return None,
    })
}

/// Runs `fut` on the current runtime, tracked so shutdown waits for it.
fn run(node: &Node, fut: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(node.tracker().track_future(fut));
        }
        Err(_) => tracing::warn!("rex: no runtime to run a request on: dropped"),
    }
}

/// Applies `m:f(a)` and hands the answer to `answer` (not called when the node halts), then
/// runs what the function does after answering.
fn apply_then(node: &Node, m: Term, f: Term, a: Term, answer: impl FnOnce(Term) + Send + 'static) {
    let node2 = node.clone();
    // Counted on the delivering thread (a connection reader), so a flood of rex requests
    // pauses that reader.
    let slot = node.call_slot();
    run(node, async move {
        let _slot = slot;
        let mut done: Finished = functions::apply(&node2, &m, &f, a).await;
        let outcome = std::mem::replace(&mut done.outcome, Outcome::Halt);
        if let Some(reply) = rpc_result(outcome) {
            answer(reply);
        }
        done.finish();
    });
}

/// `{Tag, M, F, A, GL}` with `Tag` the atom `tag`: `(M, F, A)`.
fn mfa_request(request: &Term, tag: &str) -> Option<(Term, Term, Term)> {
    let Term::Tuple(Tuple { elements }) = request else {
        return None;
    };
    match elements.as_slice() {
        [Term::Atom(t), m, f, a, _gl] if t.name == tag => Some((m.clone(), f.clone(), a.clone())),
        _ => None,
    }
}

/// Whether `bytes` (one term, no version byte) is a 5-tuple starting with the atom `call` or
/// `block_call`.
fn is_mfa_call(bytes: &[u8]) -> bool {
    const SMALL_TUPLE_EXT: u8 = 104;
    match bytes {
        [SMALL_TUPLE_EXT, 5, rest @ ..] => matches!(
            crate::etf::skip::atom(rest),
            Some((b"call" | b"block_call", _))
        ),
        _ => false,
    }
}

fn send(node: &Node, to: &Pid, message: Term) {
    gen_server::send(node, to, message);
}

impl GenServer for Rex {
    /// Stopped (`GenServer.stop`): restarted at once under the same name, as its supervisor
    /// would (it holds no state).
    fn restart(&mut self, _ctx: &mut Ctx, _reason: &Term) -> Option<Self> {
        Some(Rex)
    }

    fn handle_call(
        &mut self,
        ctx: &mut Ctx,
        from: &Caller,
        request: Request<'_>,
    ) -> CallResult<'_> {
        let bytes = request.bytes();
        let request = match request.decode() {
            Ok(request) => request,
            Err(error) => {
                // A call whose arguments kvnode cannot decode unchanged (an OTP 29 record, a
                // map with 0.0 and -0.0 keys) is answered at once, not left to time out.
                if bytes.is_some_and(is_mfa_call) {
                    tracing::warn!(from = %crate::etf::text::name(&from.pid().node.name), %error, "rex: a call kvnode cannot decode unchanged: answered badrpc unrepresentable");
                    return CallResult::Reply(tuple(vec![
                        atom("badrpc"),
                        tuple(vec![
                            atom("EXIT"),
                            atom(crate::node::unrepresentable::REASON),
                        ]),
                    ]));
                }
                return CallResult::NoReply;
            }
        };
        if let Some((m, f, a)) =
            mfa_request(&request, "call").or_else(|| mfa_request(&request, "block_call"))
        {
            let replier: Replier = ctx.replier();
            let from = from.clone();
            apply_then(ctx.node(), m, f, a, move |reply| {
                replier.reply(&from, reply)
            });
            return CallResult::NoReply;
        }
        if matches!(&request, Term::Atom(a) if a.name == "stop") {
            tracing::debug!(from = %crate::etf::text::name(&from.pid().node.name), "rex: stop requested; answering stopped and serving on");
            return CallResult::Reply(atom("stopped"));
        }
        tracing::debug!(from = %crate::etf::text::name(&from.pid().node.name), "rex: unknown call ignored (as OTP's rex does)");
        CallResult::NoReply
    }

    fn handle_cast(&mut self, ctx: &mut Ctx, request: Request<'_>) {
        let Ok(request) = request.decode() else {
            return;
        };
        match mfa_request(&request, "cast") {
            Some((m, f, a)) => apply_then(ctx.node(), m, f, a, |_| {}),
            None => tracing::debug!("rex: unknown cast ignored"),
        }
    }

    fn handle_info(&mut self, ctx: &mut Ctx, message: Term) {
        let Term::Tuple(Tuple { elements }) = message else {
            tracing::debug!("rex: message ignored");
            return;
        };
        let [Term::Pid(from), Term::Tuple(Tuple { elements: req })] = elements.as_slice() else {
            if let [Term::Pid(from), Term::Atom(a)] = elements.as_slice()
                && a.name == "features_request"
            {
                let me: Term = ctx.node().name().clone().into();
                let reply = tuple(vec![
                    atom("features_reply"),
                    me,
                    List::from(vec![atom("erpc")]).into(),
                ]);
                send(ctx.node(), from, reply);
                return;
            }
            tracing::debug!("rex: message ignored");
            return;
        };
        let node = ctx.node();
        let me: Term = node.name().clone().into();
        match req.as_slice() {
            [Term::Atom(t), m, f, a, _gl] if t.name == "call" => {
                // "Special for hidden C nodes": the answer is {rex, Result} to From.
                let from = from.clone();
                let node2 = node.clone();
                apply_then(node, m.clone(), f.clone(), a.clone(), move |reply| {
                    send(&node2, &from, tuple(vec![atom("rex"), reply]))
                });
            }
            [Term::Atom(t), name, msg] if t.name == "sbcast" => {
                let reply = if send_to_name(ctx, name, msg.clone()) {
                    me.clone()
                } else {
                    tuple(vec![atom("nonexisting_name"), name.clone()])
                };
                send(node, from, tuple(vec![atom("rex"), me, reply]));
            }
            [Term::Atom(t), name, msg] if t.name == "send" => {
                let wrapped = tuple(vec![from.clone().into(), msg.clone()]);
                if !send_to_name(ctx, name, wrapped) {
                    let reply = tuple(vec![atom("nonexisting_name"), name.clone()]);
                    send(node, from, tuple(vec![atom("rex"), me, reply]));
                }
            }
            _ => tracing::debug!("rex: message ignored"),
        }
    }
}

/// `Name ! Msg` as Erlang does it: false where Erlang raises `badarg` (an atom registered
/// to nothing here, or something that is not a destination).
fn send_to_name(ctx: &Ctx, name: &Term, message: Term) -> bool {
    let node = ctx.node();
    match name {
        Term::Atom(a) => match node.whereis(&a.name) {
            Some(mb) => {
                mb.deliver(node, Signal::Message(message));
                true
            }
            None => false,
        },
        Term::Pid(pid) => {
            send(node, pid, message);
            true
        }
        Term::Tuple(Tuple { elements }) => match elements.as_slice() {
            [Term::Atom(reg), Term::Atom(at)] if at == node.name() => {
                send_to_name(ctx, &Term::Atom(reg.clone()), message)
            }
            [Term::Atom(reg), Term::Atom(at)] => {
                node.send_to_node(
                    &at.name,
                    Message::reg_send(ctx.self_pid().clone(), reg.clone(), message),
                );
                true
            }
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_as_rpc_execute_call() {
        assert_eq!(rpc_result(Outcome::Return(atom("x"))), Some(atom("x")));
        assert_eq!(rpc_result(Outcome::Throw(atom("t"))), Some(atom("t")));
        assert_eq!(
            rpc_result(Outcome::Exit(atom("bye"))),
            Some(tuple(vec![
                atom("badrpc"),
                tuple(vec![atom("EXIT"), atom("bye")])
            ]))
        );
        assert!(rpc_result(Outcome::Halt).is_none());
    }
}
