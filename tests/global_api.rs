//! The `global` Rust API ([`Node::global_register`], [`Node::global_unregister`],
//! [`Node::global_whereis`], [`Node::global_names`], [`Dest::Global`]) against real BEAM
//! nodes, and kvnode's `global_name_server` as OTP's `global.erl` behaves: replies by the
//! caller's alias, `register_ext` names handed on as `global_names_ext`, a clash resolved by
//! the entry's own method. The Rust node runs in-process (as tests/node_api.rs); peers are
//! real Elixir nodes.

mod common;

use kvnode::term::{Atom, Pid, Term, Tuple};
use kvnode::{
    CallError, CallResult, Caller, Ctx, Dest, GenServer, GlobalError, GlobalResolve, Node,
    NodeBuilder, Process, Received, Request,
};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

async fn start_node(alive: &str, cookie: &str, epmd_port: u16, visible: bool) -> Node {
    NodeBuilder::new(format!("{alive}@127.0.0.1"))
        .cookie(cookie)
        .epmd_port(epmd_port)
        .bind([127, 0, 0, 1].into())
        .threads(1)
        .visible(visible)
        .start()
        .await
        .expect("start the Rust node")
}

/// Runs an Elixir script (node `<tag>_...`) against `node` on a blocking thread; returns
/// a handle to its stdout (the test fails when the script fails).
fn spawn_script(
    node: &Node,
    epmd_port: u16,
    tag: &str,
    cookie: &'static str,
    script: String,
) -> tokio::task::JoinHandle<String> {
    let kv_name = node.name().name.clone();
    let alive = common::unique(tag);
    tokio::task::spawn_blocking(move || {
        let out = common::elixir_raw(&kv_name, epmd_port, &alive, cookie, &script, LONG * 2);
        assert!(
            out.status.success(),
            "script failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    })
}

fn line(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{label} ")))
        .unwrap_or_else(|| panic!("no {label} line in:\n{out}"))
        .to_owned()
}

/// The next message on `p` that `pick` accepts (within [`LONG`]).
async fn expect<T>(p: &Process, what: &str, mut pick: impl FnMut(&Term) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match p.recv_timeout(left).await {
            Some(Received::Message(m)) => {
                if let Some(v) = pick(&m) {
                    return v;
                }
            }
            Some(_) => {}
            None => panic!("no {what} within {LONG:?}"),
        }
    }
}

/// `{tag, pid}` from a script.
fn tagged_pid(m: &Term, tag: &str) -> Option<Pid> {
    match m {
        Term::Tuple(t) => match t.elements.as_slice() {
            [Term::Atom(a), Term::Pid(p)] if a.name == tag => Some(p.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Answers every call with `{:echo, request}`.
struct Echo;

impl GenServer for Echo {
    fn handle_call(&mut self, _: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
        let request = request.decode().unwrap_or_else(|_| atom("undecodable"));
        CallResult::Reply(Tuple::from(vec![atom("echo"), request]).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_elixir_global_names_work_both_ways_across_two_beam_nodes() {
    let epmd = common::free_port();
    let cookie = "gcookie";
    let node = start_node(&common::unique("gapi"), cookie, epmd, true).await;
    let ctl = node.process(Some("ctl")).expect("ctl");
    let echo = node.spawn_server(Some("echo"), Echo).expect("echo");
    // B: a second BEAM node that only stays up; A (the script) drives it by erpc.
    let b = common::BeamNode::start(&common::unique("gapib"), cookie, epmd, ":ok");
    let script = r##"
        kv = String.to_atom(System.fetch_env!("KV_NODE"))
        b = :"B_NODE_NAME"
        true = Node.connect(kv)
        TestWait.until(fn -> Node.connect(b) end, 30_000)
        :ok = :global.sync()
        # Every node in sync with every other one, kvnode included.
        TestWait.until(fn ->
          known = :gen_server.call({:global_name_server, kv}, :get_known)
          node() in known and b in known and kv in :erpc.call(b, Node, :list, [])
        end, 30_000)
        :ok = :erpc.call(b, :global, :sync, [])
        send({:ctl, kv}, {:ready, self()})
        echo = receive do {:registered, pid} -> pid after 60_000 -> raise "no :registered" end
        IO.puts("a_whereis #{:global.whereis_name(:rust_echo) == echo}")
        IO.puts("b_whereis #{:erpc.call(b, :global, :whereis_name, [:rust_echo]) == echo}")
        IO.puts("a_call #{inspect(GenServer.call({:global, :rust_echo}, :from_a))}")
        IO.puts("b_call #{inspect(:erpc.call(b, GenServer, :call, [{:global, :rust_echo}, :from_b]))}")
        defmodule Srv do
          use GenServer
          def init(x), do: {:ok, x}
          def handle_call(req, _from, s), do: {:reply, {:elixir_got, req}, s}
        end
        {:ok, srv} = GenServer.start(Srv, nil, name: {:global, :elixir_srv})
        send({:ctl, kv}, {:elixir_registered, srv})
        receive do :unregistered -> :ok after 60_000 -> raise "no :unregistered" end
        TestWait.until(fn -> :global.whereis_name(:rust_echo) == :undefined end)
        TestWait.until(fn -> :erpc.call(b, :global, :whereis_name, [:rust_echo]) == :undefined end)
        IO.puts("unregistered_everywhere true")
        send({:ctl, kv}, {:temp_please, self()})
        temp = receive do {:temp, pid} -> pid after 60_000 -> raise "no :temp" end
        TestWait.until(fn -> :global.whereis_name(:rust_temp) == temp end)
        TestWait.until(fn -> :erpc.call(b, :global, :whereis_name, [:rust_temp]) == temp end)
        IO.puts("temp_seen true")
        send({:ctl, kv}, {:seen_temp, self()})
        receive do :temp_gone -> :ok after 60_000 -> raise "no :temp_gone" end
        TestWait.until(fn -> :global.whereis_name(:rust_temp) == :undefined end)
        TestWait.until(fn -> :erpc.call(b, :global, :whereis_name, [:rust_temp]) == :undefined end)
        IO.puts("temp_gone_everywhere true")
    "##
    .replace("B_NODE_NAME", &b.name);
    let run = spawn_script(&node, epmd, "gapia", cookie, script);

    let script_pid = expect(&ctl, "ready", |m| tagged_pid(m, "ready")).await;
    let started = std::time::Instant::now();
    node.global_register("rust_echo", &echo)
        .await
        .expect("register rust_echo");
    // A figure for the report, not an assertion.
    eprintln!("global_register over 3 nodes took {:?}", started.elapsed());
    assert_eq!(node.global_whereis("rust_echo"), Some(echo.clone()));
    ctl.send(
        script_pid.clone(),
        Tuple::from(vec![atom("registered"), echo.clone().into()]).into(),
    );

    // An Elixir registration: found and called from Rust.
    let srv = expect(&ctl, "elixir_registered", |m| {
        tagged_pid(m, "elixir_registered")
    })
    .await;
    assert_eq!(node.global_whereis("elixir_srv"), Some(srv.clone()));
    let names = node.global_names();
    assert!(
        names.contains(&"elixir_srv".to_owned()) && names.contains(&"rust_echo".to_owned()),
        "{names:?}"
    );
    let started = std::time::Instant::now();
    let reply = ctl
        .call(Dest::Global("elixir_srv".into()), atom("from_rust"), LONG)
        .await
        .expect("call {global, elixir_srv}");
    eprintln!(
        "call to {{global, elixir_srv}} took {:?}",
        started.elapsed()
    );
    assert_eq!(
        reply,
        Tuple::from(vec![atom("elixir_got"), atom("from_rust")]).into()
    );
    // Clashes: the name is taken (by the Elixir process); the pid holds another name.
    let other = node.process(None).expect("other");
    match node.global_register("elixir_srv", other.pid()).await {
        Err(GlobalError::Taken { pid, .. }) => assert_eq!(pid, srv),
        wrong => panic!("expected Taken, got {wrong:?}"),
    }
    assert!(matches!(
        node.global_register("rust_echo_2", &echo).await,
        Err(GlobalError::Duplicate { .. })
    ));
    assert_eq!(node.global_whereis("elixir_srv"), Some(srv.clone()));
    // Unknown names: noproc at once.
    match ctl
        .call(Dest::Global("nobody_has_this".into()), atom("x"), LONG)
        .await
    {
        Err(CallError::NoProc { dest }) => assert_eq!(dest, Dest::Global("nobody_has_this".into())),
        wrong => panic!("expected NoProc, got {wrong:?}"),
    }
    let mref = ctl.monitor(Dest::Global("nobody_has_this".into()));
    let down = ctl
        .recv_matching_timeout(
            |r| matches!(r, Received::Down { reference, .. } if *reference == mref),
            LONG,
        )
        .await
        .expect("DOWN for an unknown global name");
    assert!(
        matches!(&down, Received::Down { object: Dest::Global(n), reason: Term::Atom(a), .. } if n == "nobody_has_this" && a.name == "noproc"),
        "{down:?}"
    );

    // Unregister: gone on every node.
    node.global_unregister("rust_echo")
        .await
        .expect("unregister");
    assert_eq!(node.global_whereis("rust_echo"), None);
    ctl.send(script_pid.clone(), atom("unregistered"));

    // A Rust process with a global name exits: the name goes everywhere.
    let _ = expect(&ctl, "temp_please", |m| tagged_pid(m, "temp_please")).await;
    let temp = node.process(None).expect("temp");
    node.global_register("rust_temp", temp.pid())
        .await
        .expect("register rust_temp");
    ctl.send(
        script_pid.clone(),
        Tuple::from(vec![atom("temp"), temp.pid().clone().into()]).into(),
    );
    let _ = expect(&ctl, "seen_temp", |m| tagged_pid(m, "seen_temp")).await;
    temp.exit(atom("normal"));
    common::wait_for_async("rust_temp gone on kvnode", LONG, || async {
        node.global_whereis("rust_temp").is_none().then_some(())
    })
    .await;
    ctl.send(script_pid, atom("temp_gone"));

    let out = run.await.expect("script thread");
    assert_eq!(line(&out, "a_whereis"), "true", "{out}");
    assert_eq!(line(&out, "b_whereis"), "true", "{out}");
    assert_eq!(line(&out, "a_call"), "{:echo, :from_a}", "{out}");
    assert_eq!(line(&out, "b_call"), "{:echo, :from_b}", "{out}");
    assert_eq!(line(&out, "unregistered_everywhere"), "true", "{out}");
    assert_eq!(line(&out, "temp_seen"), "true", "{out}");
    assert_eq!(line(&out, "temp_gone_everywhere"), "true", "{out}");
    drop(other);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_a_hidden_node_get_clear_errors() {
    let cookie = "gbcookie";
    // A hidden node (the default) has no `global`.
    let hidden = start_node(&common::unique("ghid"), cookie, common::free_port(), false).await;
    let p = hidden.process(None).expect("process");
    assert_eq!(
        hidden.global_register("x", p.pid()).await,
        Err(GlobalError::NotVisible)
    );
    assert_eq!(
        hidden.global_keep_registered("x", p.pid()),
        Err(GlobalError::NotVisible)
    );
    assert_eq!(
        hidden.global_unregister("x").await,
        Err(GlobalError::NotVisible)
    );
    assert_eq!(hidden.global_whereis("x"), None);
    assert!(hidden.global_names().is_empty());
    assert!(matches!(
        p.call(Dest::Global("x".into()), atom("hi"), LONG).await,
        Err(CallError::NoProc { .. })
    ));

    // A visible node alone: names are atoms, pids must be live local processes.
    let node = start_node(&common::unique("gbad"), cookie, common::free_port(), true).await;
    let q = node.process(None).expect("process");
    assert_eq!(
        node.global_register(&"x".repeat(256), q.pid()).await,
        Err(GlobalError::BadName { chars: 256 })
    );
    assert_eq!(node.global_whereis(&"x".repeat(256)), None);
    let far = Pid::new("far@127.0.0.1", 1, 0, 1);
    assert_eq!(
        node.global_register("far", &far).await,
        Err(GlobalError::NotLocal { pid: far.clone() })
    );
    let gone = node.process(None).expect("process");
    let gone_pid = gone.pid().clone();
    gone.exit(atom("normal"));
    common::wait_for_async("the exited process is gone", LONG, || {
        let node = node.clone();
        let pid = gone_pid.clone();
        async move {
            matches!(
                node.global_register("gone", &pid).await,
                Err(GlobalError::NoProc { .. })
            )
            .then_some(())
        }
    })
    .await;
    // 255 characters (not bytes) is an atom: registered, and reachable by Dest::Global.
    let long = "é".repeat(255);
    let echo = node.spawn_server(None, Echo).expect("echo");
    node.global_register(&long, &echo).await.expect("255 chars");
    assert_eq!(node.global_names(), vec![long.clone()]);
    let reply = q
        .call(Dest::Global(long.clone()), atom("hi"), LONG)
        .await
        .expect("call by global name");
    assert_eq!(reply, Tuple::from(vec![atom("echo"), atom("hi")]).into());
    hidden.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_server_replies_by_alias_and_hands_on_external_names() {
    let epmd = common::free_port();
    let cookie = "gecookie";
    let node = start_node(&common::unique("gext"), cookie, epmd, true).await;
    let ctl = node.process(Some("ctl")).expect("ctl");
    let mut events = node.monitor_nodes();
    // A: a call that times out at once (its reply comes late), then one that waits; then an
    // external name (`register_name_external`) for a kvnode pid.
    let a = spawn_script(
        &node,
        epmd,
        "gexta",
        cookie,
        r##"
        kv = String.to_atom(System.fetch_env!("KV_NODE"))
        true = Node.connect(kv)
        :ok = :global.sync()
        try do
          :gen_server.call({:global_name_server, kv}, :get_known, 0)
        catch
          :exit, {:timeout, _} -> :ok
        end
        # Its reply comes after the late one, on the same link.
        true = node() in :gen_server.call({:global_name_server, kv}, :get_known)
        IO.puts("stray #{inspect(Process.info(self(), :messages))}")
        send({:ctl, kv}, {:ready, self()})
        ctl = receive do {:ctl_pid, pid} -> pid after 60_000 -> raise "no ctl pid" end
        :yes = :global.register_name_external(:ext_name, ctl)
        IO.puts("a_ext #{inspect(:gen_server.call(:global_name_server, :get_names_ext) == [{:ext_name, ctl, node()}])}")
        "##
        .to_owned(),
    );
    let a_pid = expect(&ctl, "ready", |m| tagged_pid(m, "ready")).await;
    ctl.send(
        a_pid.clone(),
        Tuple::from(vec![atom("ctl_pid"), ctl.pid().clone().into()]).into(),
    );
    let out = a.await.expect("script A");
    assert_eq!(line(&out, "stray"), "{:messages, []}", "{out}");
    assert_eq!(line(&out, "a_ext"), "true", "{out}");
    // A is gone; the name stays (its pid is kvnode's).
    loop {
        match tokio::time::timeout(LONG, events.recv()).await {
            Ok(Some(kvnode::NodeEvent::Down(peer))) if peer == a_pid.node.name => break,
            Ok(Some(_)) => {}
            other => panic!("no nodedown for A: {other:?}"),
        }
    }
    assert_eq!(node.global_whereis("ext_name"), Some(ctl.pid().clone()));
    // C meets only kvnode: it learns the name from kvnode, as an external one of A's.
    let out = spawn_script(
        &node,
        epmd,
        "gextc",
        cookie,
        r##"
        kv = String.to_atom(System.fetch_env!("KV_NODE"))
        true = Node.connect(kv)
        :ok = :global.sync()
        IO.puts("c_where #{node(:global.whereis_name(:ext_name)) == kv}")
        ext = :gen_server.call(:global_name_server, :get_names_ext)
        IO.puts("c_ext #{inspect(for {n, p, r} <- ext, do: {n, node(p) == kv, String.starts_with?(Atom.to_string(r), "gexta")})}")
        "##
        .to_owned(),
    )
    .await
    .expect("script C");
    assert_eq!(line(&out, "c_where"), "true", "{out}");
    assert_eq!(line(&out, "c_ext"), "[{:ext_name, true, true}]", "{out}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clash_kvnode_resolves_uses_the_entrys_own_method() {
    let epmd = common::free_port();
    let cookie = "gmcookie";
    // kvnode's name sorts first ("a..." < "z..."): kvnode resolves the clash.
    let node = start_node(&common::unique("aglm"), cookie, epmd, true).await;
    let p = node.process(None).expect("process");
    node.global_register_with("clash", p.pid(), GlobalResolve::NotifyAll)
        .await
        .expect("register alone");
    let out = spawn_script(
        &node,
        epmd,
        "zglm",
        cookie,
        r##"
        kv = String.to_atom(System.fetch_env!("KV_NODE"))
        me = self()
        loop = fn loop -> receive do m -> send(me, {:holder_got, m}); loop.(loop) end end
        holder = spawn(fn -> loop.(loop) end)
        :yes = :global.register_name(:clash, holder)
        true = Node.connect(kv)
        :ok = :global.sync()
        msg = receive do {:holder_got, m} -> m after 10_000 -> :none end
        IO.puts("holder_got #{inspect(match?({:global_name_conflict, :clash, _}, msg))}")
        IO.puts("holder_alive #{Process.alive?(holder)}")
        IO.puts("whereis #{inspect(:global.whereis_name(:clash))}")
        "##
        .to_owned(),
    )
    .await
    .expect("script");
    assert_eq!(line(&out, "holder_got"), "true", "{out}");
    assert_eq!(line(&out, "holder_alive"), "true", "{out}");
    assert_eq!(line(&out, "whereis"), ":undefined", "{out}");
    // kvnode's process was told too, and the name is gone here as well.
    let (name, other) = expect(&p, "global_name_conflict", |m| match m {
        Term::Tuple(t) => match t.elements.as_slice() {
            [Term::Atom(tag), Term::Atom(name), Term::Pid(other)]
                if tag.name == "global_name_conflict" =>
            {
                Some((name.name.clone(), other.clone()))
            }
            _ => None,
        },
        _ => None,
    })
    .await;
    assert_eq!(name, "clash");
    assert!(other.node.name.starts_with("zglm"), "{other:?}");
    assert_eq!(node.global_whereis("clash"), None);
    node.stop().await;
}

/// `{in_sync, Node, true}` is what a node's own `global_name_server` casts; kvnode records
/// only nodes it is connected to: a peer casting it for any atom it likes must not grow
/// kvnode's synced set (it grew one entry per cast, without bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_sync_for_unconnected_nodes_is_not_kept() {
    let epmd = common::free_port();
    let cookie = "gscookie";
    let node = start_node(&common::unique("gsync"), cookie, epmd, true).await;
    let out = spawn_script(
        &node,
        epmd,
        "gsyncb",
        cookie,
        r##"
        kv = String.to_atom(System.fetch_env!("KV_NODE"))
        true = Node.connect(kv)
        :ok = :global.sync()
        for i <- 1..2000 do
          :gen_server.cast({:global_name_server, kv}, {:in_sync, :"ghost#{i}@nowhere", true})
        end
        # Same sender, same destination: the call is handled after the casts.
        synced = :gen_server.call({:global_name_server, kv}, :get_synced)
        ghosts = Enum.count(synced, &String.starts_with?(Atom.to_string(&1), "ghost"))
        IO.puts("ghosts #{ghosts}")
        IO.puts("me_synced #{node() in synced}")
        true = kv in Node.list()
        "##
        .to_owned(),
    )
    .await
    .expect("script");
    assert_eq!(line(&out, "ghosts"), "0", "{out}");
    assert_eq!(line(&out, "me_synced"), "true", "{out}");
    node.stop().await;
}
