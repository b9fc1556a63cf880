//! Runs examples/mixed_cluster.rs in a real mixed cluster: a kvnode binary, an Elixir node
//! hosting `Echo` (which first writes a greeting into the kvnode's store), the example's Rust
//! node, and an Elixir client that calls the Rust `:greeter` and reads what Rust wrote to the
//! kvnode.

mod common;

#[path = "../examples/mixed_cluster.rs"]
mod mixed_cluster;

use common::{BeamNode, KvNode, unique, wait_for};
use std::sync::mpsc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Collects what the example reports, until `n` lines came or `LONG` passed.
fn lines(rx: &mpsc::Receiver<String>, n: usize) -> Vec<String> {
    common::recv_lines(rx, n, LONG)
}

#[test]
fn a_rust_node_talks_to_an_elixir_node_and_a_kvnode() {
    let kv = KvNode::fresh("kv_mixed");
    // The Elixir node: writes the greeting, then hosts Echo and says so in a file.
    // (The Elixir node may run in an OTP root's chroot: the flag's path as each side sees it.)
    let (flag, flag_inside) = common::shared_path("mixed_app_ready");
    let boot = format!(
        r#"
defmodule Echo do
  use GenServer
  def init(s), do: {{:ok, s}}
  def handle_call({{:echo, term}}, _from, s), do: {{:reply, term, s}}
end
kv = :"{kv}"
true = Node.connect(kv)
:ok = GenServer.call({{DistributedExample.KVStore, kv}}, {{:put, "greeting", "hello from Elixir"}})
{{:ok, _}} = GenServer.start(Echo, nil, name: Echo)
File.write!("{flag}", "ready")
"#,
        kv = kv.name,
        flag = flag_inside
    );
    let app = BeamNode::start(&unique("mixed_app"), &kv.cookie, kv.epmd_port, &boot);
    wait_for("the Elixir node's Echo", LONG, || {
        flag.exists().then_some(())
    });
    let _ = std::fs::remove_file(&flag);

    let (tx, rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let rust_name = format!("{}@127.0.0.1", unique("rs_mixed"));
    let args = mixed_cluster::Args {
        name: rust_name.clone(),
        cookie: kv.cookie.clone(),
        kvnode: kv.name.clone(),
        elixir: app.name.clone(),
        epmd_port: kv.epmd_port,
    };
    let rust = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(mixed_cluster::run(
                args,
                &mut |line| {
                    let _ = tx.send(line);
                },
                async {
                    let _ = stop_rx.await;
                },
            ))
            .map_err(|e| e.to_string())
    });
    let got = lines(&rx, 4);
    assert_eq!(
        got,
        vec![
            "kv put written_by -> 'ok'".to_owned(),
            "kv get greeting -> hello from Elixir".to_owned(),
            "elixir echo -> {'from',<<114,117,115,116>>}".to_owned(),
            "ready".to_owned(),
        ]
    );

    // An Elixir client sees the Rust server and what Rust wrote to the kvnode.
    let out = kv.script(
        "mixed_client",
        &format!(
            r#"
rust = :"{rust_name}"
"Hello, iex, from Rust" = GenServer.call({{:greeter, rust}}, {{:greet, "iex"}})
{{:error, :unknown}} = GenServer.call({{:greeter, rust}}, :what)
"rust" = GenServer.call(store, {{:get, "written_by"}})
IO.puts("MIXED-OK")
"#
        ),
    );
    assert!(out.contains("MIXED-OK"), "{out}");
    let _ = stop_tx.send(());
    let ended = rust.join().expect("the Rust node's thread");
    assert_eq!(ended, Ok(()));
    drop(app);
}
