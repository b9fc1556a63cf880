//! SPAWN_REQUEST: `:rpc.call` / `:erpc.call` / `:rpc.multicall` / `:rpc.cast` (OTP 25+ sends
//! them as spawns of `erpc:execute_call/4` and `erpc:execute_cast/3`) and plain
//! `:erlang.spawn/4`, `spawn_monitor/4`, `spawn_link/4`, `Node.spawn/4` of a function.
//!
//! kvnode answers SPAWN_REPLY with a fresh pid, runs the function from the one
//! [`super::functions`] table (the same one `rex` uses), and ends the "process" with the exit
//! reason a BEAM process would have: MONITOR_P_EXIT to a monitoring spawner, EXIT to a
//! linked one. For `erpc:execute_call/4` the reason carries `erpc`'s result
//! (`{Ref, return, Value}`, `{Ref, throw, T}`, `{Ref, exit, R}`, `{Ref, error, R, Stack}`);
//! for a plain spawn it is `normal` when the function returned, `{Reason, Stack}` after an
//! error (`{undef, [{M, F, Args, []}]}` for a function kvnode does not have),
//! `{{nocatch, T}, Stack}` after a throw, the reason after an exit. No caller waits forever.
//! A function that halts the node sends nothing: the connection closes, as a halting BEAM
//! node's does.

use super::functions::{self, Outcome, atom, tuple};
use crate::node::Node;
use erl_dist::message::{Message, SpawnRequest};
use erl_dist::term::{FixInteger, List, PidOrAtom, Term};

/// Handles a SPAWN_REQUEST from `peer` (answers asynchronously; never blocks the reader).
pub fn spawn_request(node: &Node, peer: &str, req: SpawnRequest) {
    let node2 = node.clone();
    let peer = peer.to_owned();
    // Counted on the reader's thread, so a flood of spawns pauses that reader.
    let slot = node.call_slot();
    node.tracker().spawn(async move {
        serve(node2, peer, req).await;
        drop(slot);
    });
}

/// The exit reason of a spawned process that ran a function with this outcome.
fn exit_reason(outcome: Outcome, m: &Term, f: &Term, args: &[Term]) -> Option<Term> {
    Some(match outcome {
        Outcome::Return(_) => atom("normal"),
        Outcome::Throw(t) => tuple(vec![
            tuple(vec![atom("nocatch"), t]),
            List::from(vec![tuple(vec![
                m.clone(),
                f.clone(),
                List::from(args.to_vec()).into(),
                List::nil().into(),
            ])])
            .into(),
        ]),
        Outcome::Error { reason, stack } => tuple(vec![reason, stack]),
        Outcome::Exit(reason) => reason,
        Outcome::Halt => return None,
    })
}

async fn serve(node: Node, peer: String, req: SpawnRequest) {
    let mut monitor = false;
    let mut link = false;
    for opt in &req.opt_list.elements {
        match opt {
            Term::Atom(a) if a.name == "monitor" => monitor = true,
            Term::Atom(a) if a.name == "link" => link = true,
            Term::Tuple(t) if matches!(t.elements.first(), Some(Term::Atom(a)) if a.name == "monitor") => {
                monitor = true
            }
            _ => {}
        }
    }
    let pid = node.new_pid();
    let flags = (if link { 1 } else { 0 }) | (if monitor { 2 } else { 0 });
    node.send_to_node(
        &peer,
        Message::spawn_reply(
            req.req_id.clone(),
            req.from_pid.clone(),
            FixInteger::from(flags),
            PidOrAtom::Pid(pid.clone()),
        ),
    );
    let mfa = (
        req.mfa.module.name.as_str(),
        req.mfa.function.name.as_str(),
        req.mfa.arity.value,
    );
    let args = req.arg_list.elements;
    let (reason, done) = match mfa {
        ("erpc", "execute_call", 4) if args.len() == 4 => {
            let mut it = args.into_iter();
            let (Some(r), Some(m), Some(f), Some(a)) = (it.next(), it.next(), it.next(), it.next())
            else {
                return; // ok: length checked in the match guard
            };
            let mut done = functions::apply(&node, &m, &f, a).await;
            let outcome = std::mem::replace(&mut done.outcome, Outcome::Halt);
            let reason = match outcome {
                Outcome::Return(v) => Some(tuple(vec![r, atom("return"), v])),
                Outcome::Throw(t) => Some(tuple(vec![r, atom("throw"), t])),
                Outcome::Error { reason, stack } => {
                    Some(tuple(vec![r, atom("error"), reason, stack]))
                }
                Outcome::Exit(reason) => Some(tuple(vec![r, atom("exit"), reason])),
                Outcome::Halt => None,
            };
            (reason, done)
        }
        ("erpc", "execute_cast", 3) if args.len() == 3 => {
            let mut it = args.into_iter();
            let (Some(m), Some(f), Some(a)) = (it.next(), it.next(), it.next()) else {
                return; // ok: length checked in the match guard
            };
            let mut done = functions::apply(&node, &m, &f, a).await;
            let outcome = std::mem::replace(&mut done.outcome, Outcome::Halt);
            // erpc:execute_cast/3 turns an error into error({exception, {Reason, Stack}}).
            let reason = match outcome {
                Outcome::Error { reason, stack } => Some(tuple(vec![
                    tuple(vec![atom("exception"), tuple(vec![reason, stack])]),
                    List::from(vec![tuple(vec![
                        atom("erpc"),
                        atom("execute_cast"),
                        FixInteger::from(3).into(),
                        List::nil().into(),
                    ])])
                    .into(),
                ])),
                other => exit_reason(other, &atom("erpc"), &atom("execute_cast"), &[]),
            };
            (reason, done)
        }
        _ => {
            // Any other function: the spawned process runs it (when the table has it) and
            // exits as a BEAM process would.
            let m: Term = req.mfa.module.clone().into();
            let f: Term = req.mfa.function.clone().into();
            let mut done = functions::apply(&node, &m, &f, List::from(args.clone()).into()).await;
            let outcome = std::mem::replace(&mut done.outcome, Outcome::Halt);
            (exit_reason(outcome, &m, &f, &args), done)
        }
    };
    if let Some(reason) = reason {
        if monitor {
            node.send_to_node(
                &peer,
                Message::monitor_p_exit(
                    PidOrAtom::Pid(pid.clone()),
                    req.from_pid.clone(),
                    req.req_id,
                    reason.clone(),
                ),
            );
        }
        if link {
            node.send_to_node(&peer, Message::exit(pid, req.from_pid, reason));
        }
    }
    // The answer is queued: now the function may stop the node (init:stop, halt).
    done.finish();
}
