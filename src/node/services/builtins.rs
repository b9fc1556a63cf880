//! The node's own functions in the [`super::functions`] table: what callers reach for first
//! on any node, answered from kvnode's own state.
//!
//! | function | answer |
//! |---|---|
//! | `erlang:node/0` | the node name |
//! | `erlang:nodes/0,1` | `[]` (kvnode is hidden: peers are `hidden`/`connected`, never `visible`) |
//! | `erlang:whereis/1` | the pid registered under the name, or `undefined` |
//! | `erlang:registered/0` | the registered names (`net_kernel`, `rex`, the apps' servers) |
//! | `erlang:system_info/1` | the keys in [`system_info`]; others raise `badarg` as on BEAM |
//! | `erlang:statistics/1` | the keys in [`statistics`]; others raise `badarg` |
//! | `erlang:memory/0,1` | resident memory under `total` and `system`, 0 for the BEAM-only keys |
//! | `erlang:apply/3` | applies a function of this table |
//! | `os:getpid/0` | the OS pid, as a charlist |
//! | `kvnode:info/0` | the node's counters (see [`node_info`]); apps may register a richer one |

use super::functions::{Functions, apply, args_vec, atom, badarg, ret, tuple};
use crate::node::Node;
use eetf::ByteList;
use erl_dist::term::{Atom, BigInteger, FixInteger, List, Map, Term};
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// An integer term (small or big).
pub fn int(n: u64) -> Term {
    match i32::try_from(n) {
        Ok(v) => FixInteger::from(v).into(),
        Err(_) => BigInteger::from(n).into(),
    }
}

fn charlist(s: &str) -> Term {
    ByteList::from(s.as_bytes().to_vec()).into()
}

/// Registers the node's own functions.
pub fn register(functions: &Functions) {
    functions.register_sync("erlang", "node", 0, |node, _| {
        ret(node.name().clone().into())
    });
    functions.register_sync("erlang", "nodes", 0, |_, _| ret(List::nil().into()));
    functions.register_sync("erlang", "nodes", 1, |node, args| {
        match nodes(node, &args[0]) {
            Some(list) => ret(list),
            None => badarg("nodes", args),
        }
    });
    functions.register_sync("os", "getpid", 0, |_, _| {
        ret(charlist(&std::process::id().to_string()))
    });
    functions.register_sync("erlang", "memory", 0, |_, _| ret(memory()));
    functions.register_sync("erlang", "memory", 1, |_, args| {
        memory_of(&args[0]).map_or_else(|| badarg("memory", args), ret)
    });
    functions.register_sync("erlang", "whereis", 1, |node, args| match &args[0] {
        Term::Atom(name) => ret(match node.whereis(&name.name) {
            Some(mb) => mb.pid.into(),
            None => atom("undefined"),
        }),
        _ => badarg("whereis", args),
    });
    functions.register_sync("erlang", "registered", 0, |node, _| {
        ret(List::from(
            node.registered_names()
                .into_iter()
                .map(|n| Atom::from(n).into())
                .collect::<Vec<Term>>(),
        )
        .into())
    });
    functions.register_sync("erlang", "system_info", 1, |node, args| {
        system_info(node, &args[0]).map_or_else(|| badarg("system_info", args), ret)
    });
    let stats = Arc::new(Statistics::new());
    functions.register_sync("erlang", "statistics", 1, move |_, args| {
        stats
            .get(&args[0])
            .map_or_else(|| badarg("statistics", args), ret)
    });
    functions.register(
        "erlang",
        "apply",
        3,
        Arc::new(|node: Node, args: Vec<Term>| {
            async move {
                let mut it = args.into_iter();
                match (it.next(), it.next(), it.next()) {
                    (Some(m), Some(f), Some(a)) => {
                        if args_vec(&a).is_none() {
                            return badarg("apply", &[m, f, a]);
                        }
                        Box::pin(apply(&node, &m, &f, a)).await
                    }
                    _ => ret(atom("undefined")), // ok: arity 3 is what the table matched
                }
            }
            .boxed()
        }),
    );
    functions.register_sync("kvnode", "info", 0, |node, _| {
        ret(Map::from(node_info(node)).into())
    });
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
    List::from(
        memory_entries()
            .into_iter()
            .map(|(k, v)| tuple(vec![atom(k), int(v)]))
            .collect::<Vec<_>>(),
    )
    .into()
}

fn memory_entries() -> Vec<(&'static str, u64)> {
    let rss = resident_bytes().unwrap_or(0);
    vec![
        ("total", rss),
        ("processes", 0),
        ("processes_used", 0),
        ("system", rss),
        ("atom", 0),
        ("atom_used", 0),
        ("binary", 0),
        ("code", 0),
        ("ets", 0),
    ]
}

fn memory_of(key: &Term) -> Option<Term> {
    let entries = memory_entries();
    let find = |k: &Term| match k {
        Term::Atom(a) => entries
            .iter()
            .find(|(name, _)| *name == a.name)
            .map(|(_, v)| *v),
        _ => None,
    };
    match key {
        Term::Atom(_) => find(key).map(int),
        // memory([Type]) answers [{Type, Size}] in the order asked.
        Term::List(l) => l
            .elements
            .iter()
            .map(|k| find(k).map(|v| tuple(vec![k.clone(), int(v)])))
            .collect::<Option<Vec<_>>>()
            .map(|v| List::from(v).into()),
        _ => None,
    }
}

/// `erlang:system_info/1`, for the keys that mean something on kvnode:
///
/// - `process_count`: kvnode's processes (as `kvnode:info/0`'s `processes`);
/// - `schedulers`, `schedulers_online`: the connection threads (`--threads`), which is
///   what runs peers' requests;
/// - `logical_processors`, `logical_processors_available`, `logical_processors_online`: the
///   CPUs this process may use;
/// - `wordsize`: 8 on 64-bit machines (pointer size in bytes);
/// - `creation`: the node's creation from EPMD (in pids and refs it mints);
/// - `machine`: `"kvnode"` (a BEAM node answers `"BEAM"`);
/// - `system_version`: one line naming kvnode and its version.
///
/// `otp_release` and `version` raise `badarg`: kvnode implements no OTP release or ERTS
/// version, and any number it gave would mislead a caller that checks for features.
pub fn system_info(node: &Node, key: &Term) -> Option<Term> {
    let Term::Atom(key) = key else {
        return None;
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    Some(match key.name.as_str() {
        "process_count" => int(node.process_counts().0 as u64),
        "schedulers" | "schedulers_online" => int(node.threads().len() as u64),
        "logical_processors" | "logical_processors_available" | "logical_processors_online" => {
            int(cpus)
        }
        "wordsize" => int(std::mem::size_of::<usize>() as u64),
        "creation" => int(u64::from(node.creation())),
        "machine" => charlist("kvnode"),
        "system_version" => charlist(&format!(
            "kvnode {} (Rust): Erlang distribution protocol, hidden node [threads:{}]\n",
            env!("CARGO_PKG_VERSION"),
            node.threads().len()
        )),
        _ => return None,
    })
}

/// `erlang:statistics/1`, for the keys that mean something on kvnode. Each answer is
/// `{Total, SinceLastCall}` as on BEAM (the "last call" is shared by all callers):
///
/// - `wall_clock`: milliseconds since kvnode started;
/// - `runtime`: CPU milliseconds kvnode used (user + system, all threads);
/// - `reductions`, `exact_reductions`: kvnode has no reductions; the nearest count of work
///   done is CPU time, so these are CPU *microseconds*;
/// - `context_switches`: `{voluntary + involuntary switches, 0}` (from `getrusage`);
/// - `io`: `{{input, Bytes}, {output, Bytes}}`: bytes kvnode read and wrote through
///   system calls (sockets and files, `/proc/self/io` `rchar`/`wchar`);
/// - `run_queue`: 0 (requests run as they arrive; nothing waits in a queue of runnables).
pub struct Statistics {
    started: Instant,
    last: Mutex<HashMap<&'static str, u64>>,
}

impl Default for Statistics {
    fn default() -> Self {
        Self::new()
    }
}

impl Statistics {
    /// Starts the clock.
    pub fn new() -> Self {
        Statistics {
            started: Instant::now(),
            last: Mutex::new(HashMap::new()),
        }
    }

    fn since_last(&self, key: &'static str, total: u64) -> Term {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let before = last.insert(key, total).unwrap_or(0);
        tuple(vec![int(total), int(total.saturating_sub(before))])
    }

    /// The answer for `key`, or None (`badarg`).
    pub fn get(&self, key: &Term) -> Option<Term> {
        let Term::Atom(key) = key else {
            return None;
        };
        Some(match key.name.as_str() {
            "wall_clock" => {
                self.since_last("wall_clock", self.started.elapsed().as_millis() as u64)
            }
            "runtime" => self.since_last("runtime", cpu_micros() / 1000),
            "reductions" => self.since_last("reductions", cpu_micros()),
            "exact_reductions" => self.since_last("exact_reductions", cpu_micros()),
            "context_switches" => tuple(vec![int(context_switches()), int(0)]),
            "io" => {
                let (read, written) = io_bytes();
                tuple(vec![
                    tuple(vec![atom("input"), int(read)]),
                    tuple(vec![atom("output"), int(written)]),
                ])
            }
            "run_queue" => int(0),
            _ => return None,
        })
    }
}

fn rusage() -> Option<libc::rusage> {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } == 0).then_some(usage)
}

fn cpu_micros() -> u64 {
    let Some(u) = rusage() else { return 0 };
    let us = |t: libc::timeval| (t.tv_sec.max(0) as u64) * 1_000_000 + t.tv_usec.max(0) as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

fn context_switches() -> u64 {
    rusage().map_or(0, |u| (u.ru_nvcsw.max(0) + u.ru_nivcsw.max(0)) as u64)
}

fn io_bytes() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/io") else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("rchar:"), field("wchar:"))
}

/// `kvnode:info/0` of the bare node: a map of the counters a soak test watches for leaks.
///
/// - `connections`: connected peers (established distribution connections);
/// - `monitors`: monitors the node's processes hold on remote pids;
/// - `rss_bytes`: resident set size; `open_fds`: entries in `/proc/self/fd`;
/// - `monitored_by`: monitors peers hold on local processes (each call holds one briefly);
/// - `linked_by`: links peers' processes hold on local processes.
/// - `processes`: local mailboxes (pids) alive; `registered`: registered names;
/// - `backpressure_pauses`: times a connection reader paused for a congested process.
///
/// An app adds its own counters by registering a `kvnode:info/0` that extends this map (the
/// KV app adds `keys`, `subscriptions` and `storage_syncs`).
pub fn node_info(node: &Node) -> HashMap<Term, Term> {
    node.info()
        .into_iter()
        .map(|(k, v)| (atom(k), int(v)))
        .collect()
}

impl Node {
    /// The node's counters, as `:kvnode.info/0` reports them (a program adds its own and
    /// serves them the same way, see [`Node::register_function`]): `connections` (peers
    /// connected now), `monitors` (monitors this node's processes hold on remote ones),
    /// `monitored_by` and `linked_by` (remote processes monitoring or linked to ours),
    /// `rss_bytes`, `open_fds`, `processes`, `registered` (names), and
    /// `backpressure_pauses` (times a connection stopped reading because a process it
    /// delivers to was congested).
    ///
    /// ```no_run
    /// # fn demo(node: &kvnode::Node) {
    /// for (name, value) in node.info() {
    ///     println!("{name} {value}");
    /// }
    /// # }
    /// ```
    pub fn info(&self) -> Vec<(&'static str, u64)> {
        let count = |n: usize| n as u64;
        let (processes, registered) = self.process_counts();
        vec![
            ("connections", count(self.manager().connected().len())),
            ("monitors", count(self.remote_monitor_count())),
            ("monitored_by", count(self.incoming_monitor_count())),
            ("linked_by", count(self.incoming_link_count())),
            ("rss_bytes", resident_bytes().unwrap_or(0)),
            ("open_fds", count(open_fds().unwrap_or(0))),
            ("processes", count(processes)),
            ("registered", count(registered)),
            ("backpressure_pauses", self.backpressure_pauses()),
        ]
    }

    /// The nodes connected now (handshake done), by full name: what `Node.list(:connected)`
    /// answers on a BEAM node. Order is unspecified.
    ///
    /// ```no_run
    /// # async fn demo(node: kvnode::Node) -> Result<(), kvnode::ConnectError> {
    /// node.connect("app@127.0.0.1").await?;
    /// assert!(node.connected_nodes().iter().any(|n| n == "app@127.0.0.1"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn connected_nodes(&self) -> Vec<String> {
        self.manager().connected()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_answer_total_and_since_last() {
        let s = Statistics::new();
        for key in ["wall_clock", "runtime", "reductions", "exact_reductions"] {
            let Some(Term::Tuple(t)) = s.get(&atom(key)) else {
                panic!("{key}: not a tuple");
            };
            assert_eq!(t.elements.len(), 2, "{key}");
        }
        assert!(s.get(&atom("io")).is_some());
        assert!(s.get(&atom("garbage_collection_nope")).is_none());
        assert!(s.get(&int(1)).is_none());
    }

    #[test]
    fn memory_keys_and_lists() {
        assert!(memory_of(&atom("total")).is_some());
        assert!(memory_of(&atom("nope")).is_none());
        let Some(Term::List(l)) = memory_of(&List::from(vec![atom("ets"), atom("total")]).into())
        else {
            panic!("list expected");
        };
        assert_eq!(l.elements.len(), 2);
        assert!(memory_of(&List::from(vec![atom("nope")]).into()).is_none());
    }
}
