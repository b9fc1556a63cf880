//! The KV server's functions, registered with [`Node::register_function`] so `:rpc.call`,
//! `:erpc.call`, `spawn` and `rex` clients reach the store as they would an Elixir module's
//! functions: `Module.get/1,2`, `put/2`, `delete/1`, `keys/0`, `size/0`, where `Module` is the
//! KV server's registered name (`--process-name`, `Elixir.DistributedExample.KVStore` by
//! default); plus `kvnode:info/0`. Built on the public API only: each function is a
//! [`Node::call_local`] to the server.

use super::protocol::{self, atoms};
use crate::term::{Atom, BigInteger, FixInteger, List, Map, Term, Tuple};
use crate::{CallError, Node, Outcome};
use std::sync::Arc;
use std::time::Duration;

/// Registers the KV API under `module`, each function a call to the process registered as
/// `server`.
pub fn register(node: &Node, module: &str, server: &str) {
    type Build = fn(&[Term]) -> Term;
    // The request shapes are the KV protocol's; the node checks the arity before `build`
    // runs, so the indexing below never goes out of bounds.
    let api: [(&str, usize, Build); 6] = [
        (atoms::GET, 1, |a| protocol::get(a[0].clone())),
        (atoms::GET, 2, |a| {
            protocol::get_or(a[0].clone(), a[1].clone())
        }),
        (atoms::PUT, 2, |a| protocol::put(a[0].clone(), a[1].clone())),
        (atoms::DELETE, 1, |a| protocol::delete(a[0].clone())),
        (atoms::KEYS, 0, |_| protocol::keys()),
        (atoms::SIZE, 0, |_| protocol::size()),
    ];
    for (name, arity, build) in api {
        let server: Arc<str> = Arc::from(server);
        node.register_function(module, name, arity, move |node: Node, args: Vec<Term>| {
            let server = server.clone();
            let request = build(&args);
            async move { call(&node, &server, request).await }
        });
    }
}

/// How long an in-node call waits for the server, as `GenServer.call`'s default timeout: the
/// function a BEAM node would run (`GenServer.call(name, request)`) gives up after it too.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(5000);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
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

/// Calls the GenServer registered as `server` from inside the node (`GenServer.call`
/// without a caller process): its reply, an exit `noproc` when it is not there, or an exit
/// `{timeout, {'Elixir.GenServer', call, [server, request, 5000]}}` after [`CALL_TIMEOUT`]
/// (a suspended or congested server), as the function a BEAM node runs would exit.
pub async fn call(node: &Node, server: &str, request: Term) -> Outcome {
    let shown = request.clone();
    match node.call_local(server, request, CALL_TIMEOUT).await {
        Ok(v) => Outcome::Return(v),
        Err(CallError::Timeout { .. }) => Outcome::Exit(tuple(vec![
            atom("timeout"),
            tuple(vec![
                atom("Elixir.GenServer"),
                atom("call"),
                List::from(vec![
                    atom(server),
                    shown,
                    FixInteger::from(CALL_TIMEOUT.as_millis() as i32).into(),
                ])
                .into(),
            ]),
        ])),
        Err(_) => Outcome::Exit(atom("noproc")),
    }
}

/// Registers `kvnode:info/0`: the node's counters ([`Node::info`]) with the KV app's added:
///
/// - `subscriptions`: the KV server's subscriptions (as `:subscribers` answers);
/// - `keys`: keys in the store;
/// - `stored_bytes`: bytes the store's entries hold (`Store::stored_bytes`; per process, as
///   the metrics are: a program hosting several KV nodes sees the last one changed);
/// - `storage_syncs`: commits the storage made durable (fsyncs), 0 without `--data-dir`.
pub fn register_info(node: &Node, server: &str) {
    let server: Arc<str> = Arc::from(server);
    node.register_function("kvnode", "info", 0, move |node: Node, _| {
        let server = server.clone();
        async move {
            let keys = match call(&node, &server, atom("size")).await {
                Outcome::Return(v) => v,
                other => return other,
            };
            let subscriptions = match call(&node, &server, atom("subscribers")).await {
                Outcome::Return(v) => v,
                other => return other,
            };
            let mut entries: Vec<(Term, Term)> = node
                .info()
                .into_iter()
                .map(|(k, v)| (atom(k), int(v)))
                .collect();
            entries.push((atom("keys"), keys));
            entries.push((
                atom("stored_bytes"),
                int(crate::metrics::KV_STORED_BYTES.get().max(0) as u64),
            ));
            entries.push((atom("subscriptions"), subscriptions));
            entries.push((atom("storage_syncs"), int(crate::storage::commit_syncs())));
            let entries: std::collections::HashMap<Term, Term> = entries.into_iter().collect();
            Outcome::Return(Map::from(entries).into())
        }
    });
}
