//! A small mixed cluster: an Elixir node, a kvnode, and this Rust node talking to both.
//!
//! The Rust node
//! - hosts a GenServer registered as `:greeter` that Elixir calls
//!   (`{:greet, name}` -> `"Hello, <name>, from Rust"`, anything else -> `{:error, :unknown}`);
//! - writes to the kvnode's store (`{:put, "written_by", "rust"}`), and reads back what the
//!   Elixir side wrote there (`"greeting"`), so both see one store;
//! - calls a GenServer on the Elixir node (`Echo`, which answers `{:echo, term}` with `term`).
//!
//! Start the other two, then this (all on one machine, EPMD on 4369):
//!
//! ```text
//! cargo run --release -- --name kv@127.0.0.1 --cookie secret
//! elixir --name app@127.0.0.1 --cookie secret --no-halt -e '
//!   defmodule Echo do
//!     use GenServer
//!     def init(s), do: {:ok, s}
//!     def handle_call({:echo, term}, _from, s), do: {:reply, term, s}
//!   end
//!   {:ok, _} = GenServer.start(Echo, nil, name: Echo)
//!   true = Node.connect(:"kv@127.0.0.1")
//!   :ok = GenServer.call({DistributedExample.KVStore, :"kv@127.0.0.1"}, {:put, "greeting", "hello from Elixir"})'
//! cargo run --example mixed_cluster -- rust@127.0.0.1 secret kv@127.0.0.1 app@127.0.0.1
//! ```
//!
//! It prints one line per step, then `ready` and serves `:greeter` until SIGINT/SIGTERM:
//!
//! ```text
//! iex --name me@127.0.0.1 --cookie secret
//! iex> GenServer.call({:greeter, :"rust@127.0.0.1"}, {:greet, "iex"})
//! "Hello, iex, from Rust"
//! iex> GenServer.call({DistributedExample.KVStore, :"kv@127.0.0.1"}, {:get, "written_by"})
//! "rust"
//! ```

use kvnode::term::{Atom, Binary, Term, Tuple};
use kvnode::{CallResult, Caller, Ctx, GenServer, NodeBuilder, Request};
use std::future::Future;
use std::time::Duration;

/// Who this node is and whom it talks to.
pub struct Args {
    /// This node's name, `name@host`.
    pub name: String,
    /// The cluster cookie.
    pub cookie: String,
    /// The kvnode's node name.
    pub kvnode: String,
    /// The Elixir node running `Echo`.
    pub elixir: String,
    /// The EPMD port (4369 unless the cluster uses another).
    pub epmd_port: u16,
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// The KV server's registered name (`DistributedExample.KVStore` in Elixir).
const KV_SERVER: &str = "Elixir.DistributedExample.KVStore";

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn binary(text: &str) -> Term {
    Binary::from(text.as_bytes()).into()
}

/// A binary's text, for printing.
fn text(term: &Term) -> String {
    match term {
        Term::Binary(b) => String::from_utf8_lossy(&b.bytes).into_owned(),
        other => other.to_string(),
    }
}

/// The `:greeter` server.
struct Greeter;

impl GenServer for Greeter {
    fn handle_call(&mut self, _ctx: &mut Ctx, _from: &Caller, request: Request) -> CallResult<'_> {
        let Ok(request) = request.decode() else {
            return CallResult::Reply(tuple(vec![atom("error"), atom("undecodable")]));
        };
        match &request {
            Term::Tuple(t) if t.elements.len() == 2 && t.elements[0] == atom("greet") => {
                CallResult::Reply(binary(&format!(
                    "Hello, {}, from Rust",
                    text(&t.elements[1])
                )))
            }
            _ => CallResult::Reply(tuple(vec![atom("error"), atom("unknown")])),
        }
    }
}

/// Runs the Rust node: talks to both peers, reporting each step to `out`, then serves
/// `:greeter` until `until` resolves.
pub async fn run(
    args: Args,
    out: &mut (dyn FnMut(String) + Send),
    until: impl Future<Output = ()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let node = NodeBuilder::new(args.name)
        .cookie(args.cookie)
        .epmd_port(args.epmd_port)
        .start()
        .await?;
    node.spawn_server(Some("greeter"), Greeter)?;
    let me = node.process(None)?;

    // The kvnode: write, and read what the Elixir side wrote.
    let kv = (KV_SERVER, args.kvnode.as_str());
    let put = tuple(vec![atom("put"), binary("written_by"), binary("rust")]);
    let ok = me.call(kv, put, TIMEOUT).await?;
    out(format!("kv put written_by -> {ok}"));
    let get = tuple(vec![atom("get"), binary("greeting")]);
    let greeting = me.call(kv, get, TIMEOUT).await?;
    out(format!("kv get greeting -> {}", text(&greeting)));

    // The Elixir node: a call to its `Echo` GenServer.
    let echo = ("Elixir.Echo", args.elixir.as_str());
    let sent = tuple(vec![atom("from"), binary("rust")]);
    let back = me
        .call(echo, tuple(vec![atom("echo"), sent.clone()]), TIMEOUT)
        .await?;
    out(format!("elixir echo -> {back}"));
    if back != sent {
        return Err(format!("Echo answered {back}, not {sent}").into());
    }

    out("ready".to_owned());
    until.await;
    drop(me);
    node.stop().await;
    Ok(())
}

#[allow(dead_code)] // the tests include this file and call `run`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: mixed_cluster NAME COOKIE KVNODE ELIXIR_NODE [EPMD_PORT]";
    let args = Args {
        name: argv.next().ok_or(usage)?,
        cookie: argv.next().ok_or(usage)?,
        kvnode: argv.next().ok_or(usage)?,
        elixir: argv.next().ok_or(usage)?,
        epmd_port: argv.next().map_or(Ok(4369), |p| p.parse())?,
    };
    let stop = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    run(args, &mut |line| println!("{line}"), stop).await
}
