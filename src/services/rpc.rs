//! `:rpc.call` / `:erpc.call` / `:erpc.cast` served through SPAWN_REQUEST.
//!
//! OTP 25+ never falls back to `rex`: with DFLAG_SPAWN, `rpc:call(N, M, F, A)` arrives as
//! `SPAWN_REQUEST {29, ReqId, From, GroupLeader, {erpc, execute_call, 4}, [monitor]}` with
//! arguments `[Ref, M, F, A]`. kvnode answers SPAWN_REPLY with a fresh pid, runs the function
//! if it is one it knows, and ends the "process" with MONITOR_P_EXIT carrying `erpc`'s result
//! shapes (`{Ref, return, Value}`, `{Ref, error, Reason, Stack}`, ...). Anything it does not know
//! fails exactly as an undefined function fails on a BEAM node (`undef`), so
//! `:rpc.call` returns `{:badrpc, {:EXIT, {:undef, [{m, f, args, []}]}}}`. No caller waits.
//!
//! Known functions: `erlang:node/0`, `erlang:nodes/0,1`, `os:getpid/0`, `erlang:memory/0,1`,
//! `kvnode:info/0` (the node's own counters, see `info` below), and on the KV module (the
//! `--process-name` atom, `Elixir.DistributedExample.KVStore` by default) `get/1`, `get/2`,
//! `put/2`, `delete/1`, `keys/0`, `size/0`.

use crate::node::{Node, Signal};
use eetf::ByteList;
use erl_dist::message::{Message, SpawnRequest};
use erl_dist::term::{Atom, BigInteger, FixInteger, List, Map, Pid, PidOrAtom, Term, Tuple};
use std::collections::HashMap;
use tokio::sync::oneshot;

fn atom(s: &str) -> Term {
    Atom::from(s).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn int(n: u64) -> Term {
    match i32::try_from(n) {
        Ok(v) => FixInteger::from(v).into(),
        Err(_) => BigInteger::from(n).into(),
    }
}

/// How a called function ended.
enum Outcome {
    Return(Term),
    Error(Term, Term),
    Exit(Term),
}

/// Handles a SPAWN_REQUEST from `peer` (answers asynchronously; never blocks the reader).
pub fn spawn_request(node: &Node, peer: &str, req: SpawnRequest) {
    let node2 = node.clone();
    let peer = peer.to_owned();
    node.tracker()
        .spawn(async move { serve(node2, peer, req).await });
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
    let reason = match mfa {
        ("erpc", "execute_call", 4) if args.len() == 4 => {
            let mut it = args.into_iter();
            let (r, m, f, a) = match (it.next(), it.next(), it.next(), it.next()) {
                (Some(r), Some(m), Some(f), Some(a)) => (r, m, f, a),
                _ => return, // ok: length checked in the match guard
            };
            match call(&node, &m, &f, a).await {
                Outcome::Return(v) => tuple(vec![r, atom("return"), v]),
                Outcome::Error(reason, stack) => tuple(vec![r, atom("error"), reason, stack]),
                Outcome::Exit(reason) => tuple(vec![r, atom("exit"), reason]),
            }
        }
        ("erpc", "execute_cast", 3) if args.len() == 3 => {
            let mut it = args.into_iter();
            if let (Some(m), Some(f), Some(a)) = (it.next(), it.next(), it.next()) {
                match call(&node, &m, &f, a).await {
                    Outcome::Return(_) => atom("normal"),
                    Outcome::Error(reason, stack) => tuple(vec![reason, stack]),
                    Outcome::Exit(reason) => reason,
                }
            } else {
                atom("normal")
            }
        }
        (m, f, _) => {
            // We cannot run arbitrary code: the new process dies as an undefined function does.
            tracing::debug!(
                module = m,
                function = f,
                "spawn of an unknown function: undef"
            );
            tuple(vec![
                atom("undef"),
                List::from(vec![tuple(vec![
                    req.mfa.module.clone().into(),
                    req.mfa.function.clone().into(),
                    List::from(args).into(),
                    List::nil().into(),
                ])])
                .into(),
            ])
        }
    };
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

fn args_vec(args: Term) -> Option<Vec<Term>> {
    match args {
        Term::List(l) => Some(l.elements),
        Term::ByteList(b) => Some(
            b.bytes
                .into_iter()
                .map(|b| FixInteger::from(b).into())
                .collect(),
        ),
        _ => None,
    }
}

fn undef(m: &Term, f: &Term, args: Term) -> Outcome {
    Outcome::Error(
        atom("undef"),
        List::from(vec![tuple(vec![
            m.clone(),
            f.clone(),
            args,
            List::nil().into(),
        ])])
        .into(),
    )
}

async fn call(node: &Node, m: &Term, f: &Term, args: Term) -> Outcome {
    let (Term::Atom(module), Term::Atom(function)) = (m, f) else {
        return Outcome::Error(
            tuple(vec![atom("erpc"), atom("badarg")]),
            List::nil().into(),
        );
    };
    let Some(argv) = args_vec(args.clone()) else {
        return Outcome::Error(
            tuple(vec![atom("erpc"), atom("badarg")]),
            List::nil().into(),
        );
    };
    let kv_module = node.config().process_name.as_str();
    let m = module.name.as_str();
    let f = function.name.as_str();
    match (m, f, argv.as_slice()) {
        ("erlang", "node", []) => Outcome::Return(node.name().clone().into()),
        ("erlang", "nodes", []) => Outcome::Return(List::nil().into()),
        ("erlang", "nodes", [which]) => nodes(node, which)
            .map(Outcome::Return)
            .unwrap_or_else(|| Outcome::Error(atom("badarg"), List::nil().into())),
        ("os", "getpid", []) => {
            Outcome::Return(ByteList::from(std::process::id().to_string().into_bytes()).into())
        }
        ("erlang", "memory", []) => Outcome::Return(memory()),
        ("erlang", "memory", [Term::Atom(key)]) => {
            let all = memory();
            let found = match &all {
                Term::List(l) => l.elements.iter().find_map(|e| match e {
                    Term::Tuple(t) if matches!(&t.elements[0], Term::Atom(a) if a == key) => {
                        t.elements.get(1).cloned()
                    }
                    _ => None,
                }),
                _ => None,
            };
            found
                .map(Outcome::Return)
                .unwrap_or_else(|| Outcome::Error(atom("badarg"), List::nil().into()))
        }
        ("kvnode", "info", []) => info(node).await,
        (m, "get", [k]) if m == kv_module => kv(node, tuple(vec![atom("get"), k.clone()])).await,
        (m, "get", [k, d]) if m == kv_module => {
            kv(node, tuple(vec![atom("get"), k.clone(), d.clone()])).await
        }
        (m, "put", [k, v]) if m == kv_module => {
            kv(node, tuple(vec![atom("put"), k.clone(), v.clone()])).await
        }
        (m, "delete", [k]) if m == kv_module => {
            kv(node, tuple(vec![atom("delete"), k.clone()])).await
        }
        (m, "keys", []) if m == kv_module => kv(node, atom("keys")).await,
        (m, "size", []) if m == kv_module => kv(node, atom("size")).await,
        _ => undef(&module.clone().into(), &function.clone().into(), args),
    }
}

fn nodes(node: &Node, which: &Term) -> Option<Term> {
    let kinds: Vec<String> = match which {
        Term::Atom(a) => vec![a.name.clone()],
        Term::List(l) => l
            .elements
            .iter()
            .map(|e| match e {
                Term::Atom(a) => Some(a.name.clone()),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let mut out: Vec<Term> = Vec::new();
    for kind in kinds {
        match kind.as_str() {
            "this" => out.push(node.name().clone().into()),
            // kvnode is hidden: every connection is a hidden one from its side.
            "hidden" | "connected" => out.extend(
                node.manager()
                    .connected()
                    .into_iter()
                    .map(|n| Atom::from(n).into()),
            ),
            "visible" | "known" => {}
            _ => return None,
        }
    }
    Some(List::from(out).into())
}

/// kvnode's own memory figures under the keys of `erlang:memory/0`: `total` and `system` are
/// the resident set size; the BEAM-specific ones are 0.
fn memory() -> Term {
    let rss = resident_bytes().unwrap_or(0);
    let entry = |k: &str, v: u64| tuple(vec![atom(k), int(v)]);
    List::from(vec![
        entry("total", rss),
        entry("processes", 0),
        entry("processes_used", 0),
        entry("system", rss),
        entry("atom", 0),
        entry("atom_used", 0),
        entry("binary", 0),
        entry("code", 0),
        entry("ets", 0),
    ])
    .into()
}

/// `kvnode:info/0`: a map of the counters a soak test watches for leaks.
///
/// - `connections`: connected peers (established distribution connections);
/// - `monitors`: monitors kvnode's processes hold on remote pids (one per subscribed pid);
/// - `subscriptions`: the KV server's subscriptions (as `:subscribers` answers);
/// - `keys`: keys in the store;
/// - `rss_bytes`: resident set size; `open_fds`: entries in `/proc/self/fd`;
/// - `processes`: local mailboxes (pids) alive; `registered`: registered names;
/// - `storage_syncs`: log commits made durable by a successful `fdatasync` (0 without
///   `--data-dir`); N sequential acknowledged writes add at least N.
async fn info(node: &Node) -> Outcome {
    let keys = match kv(node, atom("size")).await {
        Outcome::Return(v) => v,
        other => return other,
    };
    let subscriptions = match kv(node, atom("subscribers")).await {
        Outcome::Return(v) => v,
        other => return other,
    };
    let count = |n: usize| int(n as u64);
    let (processes, registered) = node.process_counts();
    let entries: HashMap<Term, Term> = [
        ("connections", count(node.manager().connected().len())),
        ("monitors", count(node.remote_monitor_count())),
        ("subscriptions", subscriptions),
        ("keys", keys),
        ("rss_bytes", int(resident_bytes().unwrap_or(0))),
        ("open_fds", count(open_fds().unwrap_or(0))),
        ("processes", count(processes)),
        ("registered", count(registered)),
        ("storage_syncs", int(crate::storage::commit_syncs())),
    ]
    .into_iter()
    .map(|(k, v)| (atom(k), v))
    .collect();
    Outcome::Return(Map::from(entries).into())
}

/// Number of open file descriptors of this process (entries of `/proc/self/fd`, minus the one
/// reading the directory holds).
pub fn open_fds() -> Option<usize> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(n.saturating_sub(1))
}

/// Resident set size of this process in bytes (from `/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

async fn kv(node: &Node, request: Term) -> Outcome {
    let Some(mb) = node.whereis(&node.config().process_name) else {
        return Outcome::Exit(atom("noproc"));
    };
    let (tx, rx) = oneshot::channel();
    mb.deliver(node, Signal::Call { request, reply: tx });
    match rx.await {
        Ok(v) => Outcome::Return(v),
        Err(_) => Outcome::Exit(atom("noproc")),
    }
}

#[allow(dead_code)]
fn _pid_type_check(_: Pid) {}
