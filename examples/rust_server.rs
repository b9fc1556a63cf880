//! A Rust GenServer that Elixir calls: a stack, registered as `:stack` on a kvnode node.
//!
//! ```text
//! cargo run --example rust_server -- rust@127.0.0.1 secret      # [EPMD_PORT], default 4369
//! ```
//!
//! (or set `RUST_SERVER_NODE`, `RUST_SERVER_COOKIE`, `ERL_EPMD_PORT`). It prints one line,
//! `rust_server ready node=rust@127.0.0.1 port=PORT name=stack`, once Elixir can call it:
//!
//! ```text
//! iex --name me@127.0.0.1 --cookie secret
//! iex> GenServer.call({:stack, :"rust@127.0.0.1"}, {:push, 1})
//! :ok
//! iex> GenServer.cast({:stack, :"rust@127.0.0.1"}, {:push, 2})
//! :ok
//! iex> GenServer.call({:stack, :"rust@127.0.0.1"}, :pop)
//! {:ok, 2}
//! iex> send({:stack, :"rust@127.0.0.1"}, {:size, self()}); flush()
//! {:size, 1}
//! ```
//!
//! | request | kind | answer |
//! |---|---|---|
//! | `{:push, term}` | call | `:ok` |
//! | `{:push, term}` | cast | none |
//! | `:pop` | call | `{:ok, term}` \| `{:error, :empty}` |
//! | `:size` | call | the number of items |
//! | `{:size, pid}` | plain message | `{:size, n}` sent to `pid` |
//! | anything else | call | `{:error, {:unknown_request, request}}` |
//!
//! It runs until SIGINT/SIGTERM or a peer's `init:stop` (`:rpc.call(node, :init, :stop, [])`).

use kvnode::term::{Atom, FixInteger, List, Term, Tuple};
use kvnode::{CallResult, Caller, Ctx, GenServer, NodeBuilder, Request};

/// The server's state: the stack, top last.
#[derive(Default)]
struct Stack {
    items: Vec<Term>,
}

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn int(n: usize) -> Term {
    FixInteger::from(i32::try_from(n).unwrap_or(i32::MAX)).into()
}

/// `{tag, value}` with the given tag atom, or None.
fn tagged<'t>(term: &'t Term, tag: &str) -> Option<&'t Term> {
    match term {
        Term::Tuple(t) if t.elements.len() == 2 => match &t.elements[0] {
            Term::Atom(a) if a.name == tag => Some(&t.elements[1]),
            _ => None,
        },
        _ => None,
    }
}

impl GenServer for Stack {
    fn handle_call(&mut self, _: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
        // A request that is not a well-formed term never reaches a server; decoding the
        // bytes a peer sent can still fail on limits, and that is answered, not panicked on.
        let request = match request.decode() {
            Ok(term) => term,
            Err(_) => return CallResult::Reply(tuple(vec![atom("error"), atom("bad_request")])),
        };
        let reply = if let Some(item) = tagged(&request, "push") {
            self.items.push(item.clone());
            atom("ok")
        } else if matches!(&request, Term::Atom(a) if a.name == "pop") {
            match self.items.pop() {
                Some(top) => tuple(vec![atom("ok"), top]),
                None => tuple(vec![atom("error"), atom("empty")]),
            }
        } else if matches!(&request, Term::Atom(a) if a.name == "size") {
            int(self.items.len())
        } else {
            tuple(vec![
                atom("error"),
                tuple(vec![atom("unknown_request"), request]),
            ])
        };
        CallResult::Reply(reply)
    }

    fn handle_cast(&mut self, _: &mut Ctx, request: Request<'_>) {
        if let Ok(request) = request.decode()
            && let Some(item) = tagged(&request, "push")
        {
            self.items.push(item.clone());
        }
    }

    fn handle_info(&mut self, ctx: &mut Ctx, message: Term) {
        if let Some(Term::Pid(to)) = tagged(&message, "size") {
            ctx.send(to, tuple(vec![atom("size"), int(self.items.len())]));
        }
    }

    fn system_state(&self, _: &Ctx) -> Term {
        List::from(self.items.clone()).into()
    }
}

/// Argument `index`, else the environment variable `var`, else `default`.
fn setting(index: usize, var: &str, default: &str) -> String {
    std::env::args()
        .nth(index)
        .or_else(|| std::env::var(var).ok())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let name = setting(1, "RUST_SERVER_NODE", "rust@127.0.0.1");
    let cookie = setting(2, "RUST_SERVER_COOKIE", "secret");
    let epmd_port: u16 = setting(3, "ERL_EPMD_PORT", "4369").parse()?;

    let node = NodeBuilder::new(name)
        .cookie(cookie)
        .epmd_port(epmd_port)
        .start()
        .await?;
    node.spawn_server(Some("stack"), Stack::default())?;
    println!(
        "rust_server ready node={} port={} name=stack",
        node.name().name,
        node.port()
    );

    let status = tokio::select! {
        _ = tokio::signal::ctrl_c() => 0,
        _ = terminated() => 0,
        status = node.stop_requested() => status,
    };
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
