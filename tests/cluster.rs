//! kvnode in a cluster: serving EPMD to Elixir nodes, registering with a system `epmd`,
//! dialing out, graceful shutdown, refusing a taken name, and a Rust test driving an Elixir
//! node with erl_rpc.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn embedded_epmd_serves_elixir_nodes_that_then_find_each_other() {
    let kv = KvNode::fresh("kv_epmd");
    assert!(kv.logs().contains("embedded EPMD"), "{}", kv.logs());
    let a = unique("node_a");
    let _a = BeamNode::start(&a, &kv.cookie, kv.epmd_port, "");
    let out = elixir(
        &kv,
        &unique("node_b"),
        &kv.cookie,
        &format!(
            r#"
a = :"{a}@127.0.0.1"
TestWait.until(fn -> Node.connect(a) end)
:pong = Node.ping(a)
{{:ok, names}} = :net_adm.names(~c"127.0.0.1")
true = Enum.any?(names, fn {{n, _}} -> List.to_string(n) == "{a}" end)
IO.puts("SCRIPT-OK")
"#
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    // `epmd -names` works against the embedded server.
    let names = Command::new("epmd")
        .args(["-port", &kv.epmd_port.to_string(), "-names"])
        .output()
        .expect("run epmd -names");
    let text = String::from_utf8_lossy(&names.stdout);
    assert!(text.contains(&kv.name.replace("@127.0.0.1", "")), "{text}");
}

#[test]
fn registers_with_a_running_system_epmd_and_unregisters_on_sigterm() {
    let epmd_port = free_port();
    let epmd = ChildGuard {
        child: Command::new("epmd")
            .args(["-port", &epmd_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn epmd"),
        what: "epmd".into(),
    };
    let names = || {
        let out = Command::new("epmd")
            .args(["-port", &epmd_port.to_string(), "-names"])
            .output()
            .expect("epmd -names");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("system epmd up", Duration::from_secs(10), || {
        names().contains("up and running").then_some(())
    });
    let cookie = unique("cookie");
    let alive = unique("kv_sys");
    let mut kv = KvNode::start(&alive, &cookie, epmd_port);
    assert!(kv.logs().contains("client of the EPMD"), "{}", kv.logs());
    assert!(names().contains(&alive));
    kv.script(
        "sys",
        r#"
:pong = Node.ping(kv)
"#,
    );
    // SIGTERM: exit 0 and the name is gone from EPMD.
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe { libc::kill(kv.guard.pid() as i32, libc::SIGTERM) };
    let status = wait_for("kvnode exit after SIGTERM", Duration::from_secs(10), || {
        kv.guard.child.try_wait().ok().flatten()
    });
    assert!(
        status.success(),
        "exit status {status}; logs:\n{}",
        kv.logs()
    );
    assert!(!names().contains(&alive), "{}", names());
    drop(epmd);
}

#[test]
fn a_taken_name_is_a_clear_error() {
    let cookie = unique("cookie");
    let alive = unique("kv_taken");
    let kv = KvNode::start(&alive, &cookie, free_port());
    let out = Command::new(kvnode_bin())
        .args(["--name", &kv.name, "--cookie", &cookie])
        .args(["--epmd-port", &kv.epmd_port.to_string()])
        .env_remove("ERL_EPMD_PORT")
        .output()
        .expect("run second kvnode");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already") && err.contains(&alive), "{err}");
}

#[test]
fn replies_and_events_dial_out_to_nodes_kvnode_is_not_connected_to() {
    let kv = KvNode::fresh("kv_out");
    let b = unique("node_far");
    let _b = BeamNode::start(&b, &kv.cookie, kv.epmd_port, RELAY);
    let out = elixir(
        &kv,
        &unique("driver"),
        &kv.cookie,
        &format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
b = :"{b}@127.0.0.1"
TestWait.until(fn -> Node.connect(b) end)
true = Node.connect(kv)
false = b in :rpc.call(kv, :erlang, :nodes, [:connected])
parent = self()
# The relay process on b (registered by its boot code) reports what it receives.
far = TestWait.until(fn -> :rpc.call(b, Process, :whereis, [:relay]) end)
true = is_pid(far)
send(far, {{:report_to, parent}})
# A call whose reply must go to `far`: kvnode has to dial b.
tag = make_ref()
send(store, {{:"$gen_call", {{far, tag}}, {{:subscribe, :all}}}})
receive do {{:far_got, {{^tag, :ok}}}} -> :ok after 10_000 -> raise "no reply at the far node" end
true = b in :rpc.call(kv, :erlang, :nodes, [:connected])
1 = GenServer.call(store, :subscribers)
:ok = GenServer.call(store, {{:put, :far_key, 42}})
receive do {{:far_got, {{:kv_event, :far_key, {{:put, 42}}}}}} -> :ok after 10_000 -> raise "no event" end
# The far node goes down: its subscription is dropped.
:rpc.call(b, :erlang, :halt, [])
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end)
IO.puts("SCRIPT-OK")
"#
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

#[test]
fn rust_drives_an_elixir_node_with_erl_rpc() {
    use erl_dist::term::{Atom, List, Term, Tuple};
    let kv = KvNode::fresh("kv_erlrpc");
    let alive = unique("elixir_peer");
    let _peer = BeamNode::start(&alive, &kv.cookie, kv.epmd_port, "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let epmd = std::net::SocketAddr::from(([127, 0, 0, 1], kv.epmd_port));
    let peer_port = wait_for("elixir peer registered", Duration::from_secs(20), || {
        rt.block_on(kvnode::internals::epmd::client::port_please(epmd, &alive))
            .ok()
            .flatten()
            .map(|i| i.port)
    });
    let peer_name = format!("{alive}@127.0.0.1");
    let kv_name = kv.name.clone();
    smol::block_on(async move {
        let client = erl_rpc::RpcClient::connect_with_port(&peer_name, peer_port, &kv.cookie)
            .await
            .expect("erl_rpc connect");
        let mut handle = client.handle();
        smol::spawn(async move {
            let _ = client.run().await;
        })
        .detach();
        let store: Term = Tuple::from(vec![
            Atom::from("Elixir.DistributedExample.KVStore").into(),
            Atom::from(kv_name.as_str()).into(),
        ])
        .into();
        let call = |req: Term| List::from(vec![store.clone(), req]);
        let put = Tuple::from(vec![
            Atom::from("put").into(),
            Atom::from("from_rust").into(),
            Atom::from("via_elixir").into(),
        ]);
        let r = handle
            .call(
                Atom::from("Elixir.GenServer"),
                Atom::from("call"),
                call(put.into()),
            )
            .await
            .expect("GenServer.call put");
        assert_eq!(r, Term::from(Atom::from("ok")));
        let get = Tuple::from(vec![
            Atom::from("get").into(),
            Atom::from("from_rust").into(),
        ]);
        let r = handle
            .call(
                Atom::from("Elixir.GenServer"),
                Atom::from("call"),
                call(get.into()),
            )
            .await
            .expect("GenServer.call get");
        assert_eq!(r, Term::from(Atom::from("via_elixir")));
        handle.terminate();
    });
}

#[test]
fn client_nodes_spread_over_connection_threads() {
    // With busy-waiting off (it is on by default), so that path serves real traffic too.
    let kv = KvNode::fresh_with("kv_threads", &["--threads", "2", "--busy-wait-us", "0"]);
    // One node stays connected (its connection takes one thread); a second one then lands on
    // the other, and both are served.
    let a = unique("node_a");
    let _a = BeamNode::start(&a, &kv.cookie, kv.epmd_port, "");
    let out = elixir(
        &kv,
        &unique("node_b"),
        &kv.cookie,
        &format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
a = :"{a}@127.0.0.1"
TestWait.until(fn -> Node.connect(a) end)
:ok = :erpc.call(a, GenServer, :call, [{{DistributedExample.KVStore, kv}}, {{:put, :from_a, 1}}])
true = Node.connect(kv)
1 = GenServer.call({{DistributedExample.KVStore, kv}}, {{:get, :from_a}})
IO.puts("SCRIPT-OK")
"#
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let logs = kv.logs();
    for thread in ["kvnode-conn-0", "kvnode-conn-1"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("connected") && l.contains(thread)),
            "no connection on {thread}:\n{logs}"
        );
    }
    // Zero threads is refused with a clear message.
    let out = Command::new(kvnode_bin())
        .args(["--threads", "0", "--cookie", &kv.cookie])
        .output()
        .expect("run kvnode");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--threads"), "{err}");
}
