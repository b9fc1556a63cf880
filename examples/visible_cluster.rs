//! A visible Rust node in an Elixir cluster: `global` names and `pg` groups from Rust.
//!
//! The Rust node (started with `NodeBuilder::visible(true)`, so BEAM peers run `global` and
//! `pg` with it)
//! - hosts a counter GenServer, registered cluster-wide as `{:global, :rust_counter}`
//!   (`:incr` -> `{:ok, n, node}`, `:value` -> `n`, anything else -> `{:error, :unknown}`);
//! - joins it to the group `:workers` of the `pg` scope `:demo` (as `:pg.join(:demo,
//!   :workers, pid)`);
//! - calls the Elixir GenServer registered as `{:global, :elixir_echo}` by
//!   `Dest::Global`, without knowing its node;
//! - lists the members of `:workers` on every node (`:pg.get_members(:demo, :workers)`),
//!   then prints each join and leave of the group until it stops.
//!
//! Start the Elixir node, then this (one machine, EPMD on 4369):
//!
//! ```text
//! elixir --name app@127.0.0.1 --cookie secret --no-halt -e '
//!   defmodule Echo do
//!     use GenServer
//!     def init(s), do: {:ok, s}
//!     def handle_call({:echo, term}, _from, s), do: {:reply, {:echoed, term, node()}, s}
//!   end
//!   {:ok, _} = GenServer.start(Echo, nil, name: {:global, :elixir_echo})
//!   {:ok, _} = :pg.start(:demo)
//!   :ok = :pg.join(:demo, :workers, spawn(fn -> Process.sleep(:infinity) end))'
//! cargo run --example visible_cluster -- rust@127.0.0.1 secret app@127.0.0.1   # [EPMD_PORT]
//! ```
//!
//! It prints one line per step, then `ready`, and serves until SIGINT/SIGTERM or a peer's
//! `init:stop`:
//!
//! ```text
//! node rust@127.0.0.1 visible, connected to app@127.0.0.1
//! global register rust_counter -> ok
//! pg join demo workers -> ok
//! global whereis elixir_echo -> <'app@127.0.0.1'.112.0>
//! global call elixir_echo -> {'echoed','hello_from_rust','app@127.0.0.1'}
//! global names -> elixir_echo rust_counter
//! pg members workers -> 2: app@127.0.0.1 x1, rust@127.0.0.1 x1
//! ready
//! ```
//!
//! and, from any node of the cluster:
//!
//! ```text
//! iex --name me@127.0.0.1 --cookie secret
//! iex> Node.connect(:"app@127.0.0.1")
//! iex> GenServer.call({:global, :rust_counter}, :incr)
//! {:ok, 1, :"rust@127.0.0.1"}
//! iex> :pg.start(:demo); :pg.get_members(:demo, :workers)   # both nodes' members
//! ```

use kvnode::term::{Atom, FixInteger, Pid, Term, Tuple};
use kvnode::{
    CallResult, Caller, Ctx, Dest, GenServer, GlobalError, Node, NodeBuilder, PgEvent, PgGroup,
    PgScope, Request,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// The counter's global name (`{:global, :rust_counter}` in Elixir).
const RUST_NAME: &str = "rust_counter";
/// The Elixir GenServer's global name.
const ELIXIR_NAME: &str = "elixir_echo";
/// The `pg` scope and group the counter joins.
const SCOPE: &str = "demo";
const GROUP: &str = "workers";
/// How long to wait for the Elixir side to appear (global sync, pg discovery) and for a call.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look for the Elixir global name while waiting for it.
const POLL: Duration = Duration::from_millis(50);

type Error = Box<dyn std::error::Error + Send + Sync>;

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

/// The counter: answers `:incr` with `{:ok, n, node}` and `:value` with `n`.
#[derive(Default)]
struct Counter {
    n: i32,
}

impl GenServer for Counter {
    fn handle_call(&mut self, ctx: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
        // A request this server cannot decode (over a limit) is answered, never panicked on.
        let Ok(request) = request.decode() else {
            return CallResult::Reply(tuple(vec![atom("error"), atom("undecodable")]));
        };
        let reply = match &request {
            Term::Atom(a) if a.name == "incr" => {
                self.n = self.n.saturating_add(1);
                let node = ctx.node().name().name.clone();
                tuple(vec![
                    atom("ok"),
                    FixInteger::from(self.n).into(),
                    atom(&node),
                ])
            }
            Term::Atom(a) if a.name == "value" => FixInteger::from(self.n).into(),
            _ => tuple(vec![atom("error"), atom("unknown")]),
        };
        CallResult::Reply(reply)
    }
}

/// `pids`, counted per node: `app@h x1, rust@h x2`.
fn by_node(pids: &[Pid]) -> String {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for pid in pids {
        *count.entry(pid.node.name.as_str()).or_default() += 1;
    }
    let parts: Vec<String> = count.iter().map(|(n, c)| format!("{n} x{c}")).collect();
    parts.join(", ")
}

/// Waits until `name` is registered with `global` (the name tables sync in the background
/// after a connect), at most [`TIMEOUT`].
async fn whereis_global(node: &Node, name: &str) -> Result<Pid, Error> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(pid) = node.global_whereis(name) {
            return Ok(pid);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("no global name {name} within {TIMEOUT:?}").into());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The group's members once some are on a node other than `me` (the peers' scopes announce
/// theirs after they discover ours), at most [`TIMEOUT`]; the rest of the group's events come
/// on the returned subscription.
async fn members_with_peers(
    scope: &PgScope,
    group: &PgGroup,
    me: &str,
) -> Result<(Vec<Pid>, kvnode::PgEvents), Error> {
    let (mut events, mut members) = scope.monitor(group);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !members.iter().any(|p| p.node.name != me) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(PgEvent::Join { pids, .. })) => members.extend(pids),
            Ok(Some(PgEvent::Leave { pids, .. })) => {
                for pid in pids {
                    if let Some(at) = members.iter().position(|p| *p == pid) {
                        members.remove(at);
                    }
                }
            }
            // Fell behind: read the members again.
            Ok(Some(_)) => members = scope.get_members(group),
            Ok(None) => return Err("the pg scope stopped".into()),
            Err(_) => {
                return Err(format!("no member of {group} on a peer within {TIMEOUT:?}").into());
            }
        }
    }
    Ok((members, events))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut argv = std::env::args().skip(1);
    let usage = "usage: visible_cluster NAME COOKIE ELIXIR_NODE [EPMD_PORT]";
    let name = argv.next().ok_or(usage)?;
    let cookie = argv.next().ok_or(usage)?;
    let elixir = argv.next().ok_or(usage)?;
    let epmd_port: u16 = argv.next().map_or(Ok(4369), |p| p.parse())?;

    // A visible node: BEAM peers run `global` and `pg` with it (a hidden node gets
    // GlobalError::NotVisible / PgError::NotVisible).
    let node = NodeBuilder::new(name)
        .cookie(cookie)
        .epmd_port(epmd_port)
        .visible(true)
        .start()
        .await?;
    let me = node.name().name.clone();
    node.connect(&elixir).await?;
    println!("node {me} visible, connected to {elixir}");

    // The counter, known cluster-wide by its global name only (no local name needed).
    // `global_register` returns once every node has the name, or says why not;
    // `node.global_keep_registered(RUST_NAME, &counter)` would instead keep it registered in
    // the background, taking it again whenever it is free (what `--global-name` does).
    let counter = node.spawn_server(None, Counter::default())?;
    match node.global_register(RUST_NAME, &counter).await {
        Ok(()) => println!("global register {RUST_NAME} -> ok"),
        Err(GlobalError::Taken { pid, .. }) => {
            return Err(format!("{RUST_NAME} is taken by {pid}: is another copy running?").into());
        }
        Err(e) => return Err(e.into()),
    }

    // The pg scope `:demo` on this node, and the counter in its group `:workers`.
    let scope = node.pg_start_scope(SCOPE)?;
    let group = PgGroup::atom(GROUP);
    scope.join(group.clone(), &counter)?;
    println!("pg join {SCOPE} {GROUP} -> ok");

    // The Elixir server by its global name: looked up at each send, wherever it runs.
    let elixir_pid = whereis_global(&node, ELIXIR_NAME).await?;
    println!("global whereis {ELIXIR_NAME} -> {elixir_pid}");
    let caller = node.process(None)?;
    let request = tuple(vec![atom("echo"), atom("hello_from_rust")]);
    let reply = caller
        .call(Dest::Global(ELIXIR_NAME.into()), request, TIMEOUT)
        .await?;
    println!("global call {ELIXIR_NAME} -> {reply}");
    println!("global names -> {}", node.global_names().join(" "));

    // Every member of `:workers`, ours and the peers'.
    let (members, mut events) = members_with_peers(&scope, &group, &me).await?;
    println!(
        "pg members {GROUP} -> {}: {}",
        members.len(),
        by_node(&members)
    );
    println!("ready");

    let watch = async {
        while let Some(event) = events.recv().await {
            match event {
                PgEvent::Join { group, pids } => println!("pg join {group}: {}", by_node(&pids)),
                PgEvent::Leave { group, pids } => println!("pg leave {group}: {}", by_node(&pids)),
                PgEvent::Lagged(n) => println!("pg lagged {n} events"),
                _ => {}
            }
        }
        std::future::pending::<()>().await
    };
    let status = tokio::select! {
        _ = tokio::signal::ctrl_c() => 0,
        _ = terminated() => 0,
        status = node.stop_requested() => status,
        () = watch => 0,
    };
    drop(caller);
    node.stop().await;
    std::process::exit(i32::from(status));
}

/// Resolves on SIGTERM.
async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
