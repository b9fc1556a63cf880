//! The KV server's functions in the [`super::functions`] table, so `:rpc.call`, `spawn` and
//! `rex` clients reach the store as they would an Elixir module's functions:
//! `Module.get/1,2`, `put/2`, `delete/1`, `keys/0`, `size/0`, where `Module` is the KV server's
//! registered name (`--process-name`, `Elixir.DistributedExample.KVStore` by default). The
//! application registers them when it starts ([`register`]); the table names no module itself.

use super::functions::{Finished, Functions, Outcome, atom, tuple};
use crate::node::{Node, Signal};
use erl_dist::term::Term;
use futures::FutureExt;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Registers the KV API under `module`, each function a call to the process registered as
/// `server`.
pub fn register(functions: &Functions, module: &str, server: &str) {
    type Build = fn(&[Term]) -> Term;
    let api: [(&str, usize, Build); 6] = [
        ("get", 1, |a| tuple(vec![atom("get"), a[0].clone()])),
        ("get", 2, |a| {
            tuple(vec![atom("get"), a[0].clone(), a[1].clone()])
        }),
        ("put", 2, |a| {
            tuple(vec![atom("put"), a[0].clone(), a[1].clone()])
        }),
        ("delete", 1, |a| tuple(vec![atom("delete"), a[0].clone()])),
        ("keys", 0, |_| atom("keys")),
        ("size", 0, |_| atom("size")),
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

/// Calls the GenServer registered as `server` from inside the node (`GenServer.call`
/// without a caller process): its reply, or an exit `noproc` when it is not there.
pub async fn call(node: &Node, server: &str, request: Term) -> Outcome {
    let Some(mb) = node.whereis(server) else {
        return Outcome::Exit(atom("noproc"));
    };
    // Not a connection reader: wait out the server's congestion (a full mailbox or storage
    // queue) here instead of adding to it.
    if let Some(pressure) = mb.pressure() {
        pressure.relieved().await;
    }
    let (tx, rx) = oneshot::channel();
    mb.deliver(node, Signal::Call { request, reply: tx });
    match rx.await {
        Ok(v) => Outcome::Return(v),
        Err(_) => Outcome::Exit(atom("noproc")),
    }
}
