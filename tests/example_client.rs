//! Runs the examples in examples/ against real nodes and checks what they print:
//! `call_elixir` against an Elixir node with a supervised GenServer, `kv_watch` against a
//! kvnode binary changed by an Elixir script.

mod common;

#[path = "../examples/call_elixir.rs"]
mod call_elixir;
#[path = "../examples/kv_watch.rs"]
mod kv_watch;

use common::{BeamNode, KvNode, unique, wait_for};
use std::sync::mpsc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The Elixir side of `call_elixir`, as its doc comment shows it.
const COUNTER: &str = r#"
defmodule Counter do
  use GenServer
  def start_link(_), do: GenServer.start_link(__MODULE__, 0, name: __MODULE__)
  def init(n), do: {:ok, n}
  def handle_call(:incr, _from, n), do: {:reply, n + 1, n + 1}
  def handle_cast(:crash, _n), do: raise "crash requested"
end
Logger.configure(level: :none)
# Unlinked: the supervisor must outlive the `-e` code that starts it.
{:ok, sup} = Supervisor.start_link([Counter], strategy: :one_for_one)
Process.unlink(sup)
"#;

fn epmd_names(port: u16) -> String {
    let out = common::beam_command("epmd")
        .args(["-port", &port.to_string(), "-names"])
        .output()
        .expect("epmd -names");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Collects what an example reports, until `n` lines came or `LONG` passed.
fn lines(rx: &mpsc::Receiver<String>, n: usize) -> Vec<String> {
    common::recv_lines(rx, n, LONG)
}

#[test]
fn call_elixir_sees_the_down_and_calls_the_restarted_server() {
    let cookie = unique("cookie");
    // The kvnode binary serves EPMD on a port of this test's own.
    let epmd = KvNode::start(&unique("epmdhost"), &cookie, common::free_port());
    let app = BeamNode::start(&unique("app"), &cookie, epmd.epmd_port, COUNTER);
    let alive = app.name.split('@').next().unwrap_or_default().to_owned();
    wait_for("the Elixir node in EPMD", LONG, || {
        epmd_names(epmd.epmd_port)
            .contains(&format!("name {alive} at"))
            .then_some(())
    });
    let (tx, rx) = mpsc::channel();
    let args = call_elixir::Args {
        name: format!("{}@127.0.0.1", unique("rs_caller")),
        cookie: cookie.clone(),
        target: app.name.clone(),
        epmd_port: epmd.epmd_port,
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let result = runtime.block_on(call_elixir::run(args, &mut |line| {
        let _ = tx.send(line);
    }));
    if let Err(e) = &result {
        panic!("call_elixir failed: {e}");
    }
    let got = lines(&rx, 5);
    assert_eq!(
        got,
        vec![
            format!("connected to {}", app.name),
            "incr -> 1".to_owned(),
            "incr -> 2".to_owned(),
            format!(
                "DOWN from {{'Elixir.Counter', '{}'}}: an exception",
                app.name
            ),
            "after restart: incr -> 1".to_owned(),
        ]
    );
}

#[test]
fn kv_watch_prints_each_event() {
    let cookie = unique("cookie");
    let kv = KvNode::start(&unique("kv"), &cookie, common::free_port());
    let (tx, rx) = mpsc::channel();
    let args = kv_watch::Args {
        name: format!("{}@127.0.0.1", unique("rs_watch")),
        cookie: cookie.clone(),
        kvnode: kv.name.clone(),
        epmd_port: kv.epmd_port,
        events: Some(3),
    };
    let watcher = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(kv_watch::run(args, &mut |line| {
                let _ = tx.send(line);
            }))
            .map_err(|e| e.to_string())
    });
    assert_eq!(lines(&rx, 1), vec!["subscribed: 'ok'".to_owned()]);
    common::elixir(
        &kv,
        &unique("changer"),
        &cookie,
        r#"
kv = {DistributedExample.KVStore, String.to_atom(System.fetch_env!("KV_NODE"))}
:ok = GenServer.call(kv, {:put, :a, 1})
:ok = GenServer.call(kv, {:put, :b, 2})
:ok = GenServer.call(kv, {:delete, :a})
"#,
    );
    let got = lines(&rx, 3);
    assert_eq!(got, vec!["put 'a'=1", "put 'b'=2", "delete 'a'"]);
    let ended = watcher.join().expect("watcher thread");
    assert_eq!(ended, Ok(()));
}
