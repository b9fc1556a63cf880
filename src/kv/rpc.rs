//! The KV server's functions in the [`crate::node::services::functions`] table, so `:rpc.call`, `spawn` and
//! `rex` clients reach the store as they would an Elixir module's functions:
//! `Module.get/1,2`, `put/2`, `delete/1`, `keys/0`, `size/0`, where `Module` is the KV server's
//! registered name (`--process-name`, `Elixir.DistributedExample.KVStore` by default). The
//! application registers them when it starts ([`register`]); the table names no module itself.

use super::protocol::{self, atoms};
use crate::node::services::functions::{Finished, Functions, Outcome, atom, tuple};
use crate::node::{Node, Signal};
use erl_dist::term::Term;
use futures::FutureExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// Registers the KV API under `module`, each function a call to the process registered as
/// `server`.
pub fn register(functions: &Functions, module: &str, server: &str) {
    type Build = fn(&[Term]) -> Term;
    // The request shapes are the KV protocol's; `register` checks the arity before `build`
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
        functions.register(
            module,
            name,
            arity,
            Arc::new(move |node: Node, args: Vec<Term>| {
                let server = server.clone();
                let request = build(&args);
                async move { Finished::from(call(&node, &server, request).await) }.boxed()
            }),
        );
    }
}

/// How long an in-node call waits for the server, as `GenServer.call`'s default timeout: the
/// function a BEAM node would run (`GenServer.call(name, request)`) gives up after it too.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(5000);

/// Calls the GenServer registered as `server` from inside the node (`GenServer.call`
/// without a caller process): its reply, an exit `noproc` when it is not there, or an exit
/// `{timeout, {'Elixir.GenServer', call, [server, request, 5000]}}` after [`CALL_TIMEOUT`]
/// (a suspended or congested server), so no rpc task waits forever.
pub async fn call(node: &Node, server: &str, request: Term) -> Outcome {
    let Some(mb) = node.whereis(server) else {
        return Outcome::Exit(atom("noproc"));
    };
    let shown = request.clone();
    let work = async {
        // Not a connection reader: wait out the server's congestion (a full mailbox or
        // storage queue) here instead of adding to it.
        if let Some(pressure) = mb.pressure() {
            pressure.relieved().await;
        }
        let (tx, rx) = oneshot::channel();
        mb.deliver(node, Signal::Call { request, reply: tx });
        rx.await
    };
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(Ok(v)) => Outcome::Return(v),
        Ok(Err(_)) => Outcome::Exit(atom("noproc")),
        Err(_) => Outcome::Exit(tuple(vec![
            atom("timeout"),
            tuple(vec![
                atom("Elixir.GenServer"),
                atom("call"),
                erl_dist::term::List::from(vec![
                    atom(server),
                    shown,
                    erl_dist::term::FixInteger::from(CALL_TIMEOUT.as_millis() as i32).into(),
                ])
                .into(),
            ]),
        ])),
    }
}

/// Registers `kvnode:info/0` with the KV app's counters added to the node's
/// ([`crate::node::services::builtins::node_info`]):
///
/// - `subscriptions`: the KV server's subscriptions (as `:subscribers` answers);
/// - `keys`: keys in the store;
/// - `storage_syncs`: commits the storage made durable (fsyncs), 0 without `--data-dir`.
pub fn register_info(functions: &Functions, server: &str) {
    let server: Arc<str> = Arc::from(server);
    functions.register(
        "kvnode",
        "info",
        0,
        Arc::new(move |node: Node, _| {
            let server = server.clone();
            async move {
                let keys = match call(&node, &server, atom("size")).await {
                    Outcome::Return(v) => v,
                    other => return Finished::from(other),
                };
                let subscriptions = match call(&node, &server, atom("subscribers")).await {
                    Outcome::Return(v) => v,
                    other => return Finished::from(other),
                };
                let mut entries = crate::node::services::builtins::node_info(&node);
                entries.insert(atom("keys"), keys);
                entries.insert(atom("subscriptions"), subscriptions);
                entries.insert(
                    atom("storage_syncs"),
                    crate::node::services::builtins::int(crate::storage::commit_syncs()),
                );
                Finished::from(Outcome::Return(erl_dist::term::Map::from(entries).into()))
            }
            .boxed()
        }),
    );
}
