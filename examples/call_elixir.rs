//! Rust calls an Elixir GenServer by name, monitors it, sees it die and be restarted by its
//! supervisor, and calls the new one.
//!
//! Start an Elixir node with a supervised counter (the module must be registered under its
//! own name, `Counter`):
//!
//! ```text
//! elixir --name app@127.0.0.1 --cookie secret --no-halt -e '
//!   defmodule Counter do
//!     use GenServer
//!     def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
//!     def init(n), do: {:ok, n}
//!     def handle_call(:incr, _from, n), do: {:reply, n + 1, n + 1}
//!     def handle_cast(:crash, _n), do: raise "crash requested"
//!   end
//!   {:ok, sup} = Supervisor.start_link([Counter], strategy: :one_for_one)
//!   Process.unlink(sup)'
//! ```
//!
//! then run `cargo run --example call_elixir -- rust@127.0.0.1 secret app@127.0.0.1`.
//! It prints one line per step.

use kvnode::NodeBuilder;
use kvnode::term::{Atom, Term};
use kvnode::{CallError, Process, Received};
use std::time::Duration;

/// Where to connect and as whom.
pub struct Args {
    /// This node's name, `name@host`.
    pub name: String,
    /// The cluster cookie.
    pub cookie: String,
    /// The Elixir node running `Counter`.
    pub target: String,
    /// The EPMD port (4369 unless the cluster uses another).
    pub epmd_port: u16,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

/// Calls `Counter` until it answers: right after a crash the supervisor may not have
/// restarted it yet (`noproc`).
async fn incr(p: &Process, target: &str) -> Result<Term, CallError> {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match p
            .call(("Elixir.Counter", target), atom("incr"), TIMEOUT)
            .await
        {
            Err(CallError::NoProc { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

/// Runs the example, reporting each step to `out`.
pub async fn run(
    args: Args,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let node = NodeBuilder::new(args.name)
        .cookie(args.cookie)
        .epmd_port(args.epmd_port)
        .start()
        .await?;
    node.connect(&args.target).await?;
    out(format!("connected to {}", args.target));

    let me = node.process(None)?;
    let first = incr(&me, &args.target).await?;
    out(format!("incr -> {first}"));
    let second = incr(&me, &args.target).await?;
    out(format!("incr -> {second}"));

    // Monitor the counter by name, then make it crash.
    let mref = me.monitor(("Elixir.Counter", args.target.as_str()));
    me.cast(("Elixir.Counter", args.target.as_str()), atom("crash"));
    let down = me
        .recv_matching_timeout(
            |r| matches!(r, Received::Down { reference, .. } if *reference == mref),
            TIMEOUT,
        )
        .await;
    match down {
        Some(Received::Down { object, reason, .. }) => {
            let kind = match &reason {
                Term::Atom(a) => a.name.clone(),
                Term::Tuple(_) => "an exception".to_owned(),
                _ => "another reason".to_owned(),
            };
            out(format!("DOWN from {object}: {kind}"));
        }
        other => return Err(format!("no DOWN after the crash: {other:?}").into()),
    }

    // The supervisor restarted it: a fresh counter.
    let after = incr(&me, &args.target).await?;
    out(format!("after restart: incr -> {after}"));
    drop(me);
    node.stop().await;
    Ok(())
}

#[allow(dead_code)] // the tests include this file and call `run`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: call_elixir NAME COOKIE TARGET_NODE [EPMD_PORT]";
    let args = Args {
        name: argv.next().ok_or(usage)?,
        cookie: argv.next().ok_or(usage)?,
        target: argv.next().ok_or(usage)?,
        epmd_port: argv.next().map_or(Ok(4369), |p| p.parse())?,
    };
    run(args, &mut |line| println!("{line}")).await
}
