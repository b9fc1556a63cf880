//! A Rust process subscribes to a kvnode's KV events (`{:subscribe, :all}`) and prints each
//! one: `{:kv_event, key, {:put, value}}` or `{:kv_event, key, :delete}`.
//!
//! Start kvnode (`kvnode --name kv@127.0.0.1 --cookie secret`), then
//! `cargo run --example kv_watch -- watch@127.0.0.1 secret kv@127.0.0.1`, and change keys
//! from iex:
//!
//! ```text
//! iex --name me@127.0.0.1 --cookie secret
//! GenServer.call({DistributedExample.KVStore, :"kv@127.0.0.1"}, {:put, :a, 1})
//! ```

use kvnode::NodeBuilder;
use kvnode::Received;
use kvnode::term::{Atom, Term, Tuple};
use std::time::Duration;

/// Where to connect and as whom.
pub struct Args {
    /// This node's name, `name@host`.
    pub name: String,
    /// The cluster cookie.
    pub cookie: String,
    /// The kvnode to watch.
    pub kvnode: String,
    /// The EPMD port (4369 unless the cluster uses another).
    pub epmd_port: u16,
    /// Stop after this many events (None: watch until the kvnode goes away).
    pub events: Option<usize>,
}

/// The KV server's registered name on a kvnode.
const KV_SERVER: &str = "Elixir.DistributedExample.KVStore";

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

/// One event as a line: `put key=value` or `delete key`.
fn describe(event: &Term) -> Option<String> {
    let Term::Tuple(t) = event else { return None };
    match t.elements.as_slice() {
        [Term::Atom(tag), key, change] if tag.name == "kv_event" => match change {
            Term::Atom(a) if a.name == "delete" => Some(format!("delete {key}")),
            Term::Tuple(c) => match c.elements.as_slice() {
                [Term::Atom(p), value] if p.name == "put" => Some(format!("put {key}={value}")),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Runs the watcher, reporting `subscribed` and then each event to `out`.
pub async fn run(
    args: Args,
    out: &mut (dyn FnMut(String) + Send),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let node = NodeBuilder::new(args.name)
        .cookie(args.cookie)
        .epmd_port(args.epmd_port)
        .start()
        .await?;
    node.connect(&args.kvnode).await?;
    let me = node.process(None)?;
    let server = (KV_SERVER, args.kvnode.as_str());
    // Watch the server too: if it goes away, so do our subscriptions.
    let mref = me.monitor(server);
    let subscribe: Term = Tuple::from(vec![atom("subscribe"), atom("all")]).into();
    let ok = me.call(server, subscribe, Duration::from_secs(10)).await?;
    out(format!("subscribed: {ok}"));
    let mut seen = 0;
    while args.events.is_none_or(|n| seen < n) {
        match me.recv().await {
            Received::Message(event) => match describe(&event) {
                Some(line) => {
                    out(line);
                    seen += 1;
                }
                None => out(format!("other message: {event}")),
            },
            Received::Down { reference, .. } if reference == mref => {
                out("the KV server went away".to_owned());
                break;
            }
            other => out(format!("{other:?}")),
        }
    }
    drop(me);
    node.stop().await;
    Ok(())
}

#[allow(dead_code)] // the tests include this file and call `run`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut argv = std::env::args().skip(1);
    let usage = "usage: kv_watch NAME COOKIE KVNODE [EPMD_PORT]";
    let args = Args {
        name: argv.next().ok_or(usage)?,
        cookie: argv.next().ok_or(usage)?,
        kvnode: argv.next().ok_or(usage)?,
        epmd_port: argv.next().map_or(Ok(4369), |p| p.parse())?,
        events: None,
    };
    run(args, &mut |line| println!("{line}")).await
}
