//! The node-level public API a Rust program uses beside processes: functions peers call by
//! rpc/erpc/rex ([`Node::register_function`], every [`Outcome`]), in-node calls to a server
//! ([`Node::call_local`]), servers built with their context ([`Node::spawn_server_with`]) and
//! a server's own congestion switch ([`kvnode::Congestion`]), and the node's counters
//! ([`Node::info`]). Peers are real Elixir nodes.

mod common;

use kvnode::term::{Atom, FixInteger, List, Term};
use kvnode::{CallError, CallResult, Caller, Congestion, Ctx, GenServer, Node, Outcome, Request};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

async fn start_node(alive: &str, cookie: &str, epmd_port: u16) -> Node {
    common::rust_node(alive, cookie, epmd_port)
        .start()
        .await
        .expect("start the Rust node")
}

/// Runs an Elixir script against `node` on a blocking thread; its stdout.
async fn elixir(node: &Node, epmd_port: u16, tag: &str, cookie: &str, script: &str) -> String {
    let kv_name = node.name().name.clone();
    let alive = common::unique(tag);
    let (cookie, script) = (cookie.to_owned(), script.to_owned());
    tokio::task::spawn_blocking(move || {
        common::elixir_ok(&kv_name, epmd_port, &alive, &cookie, &script, LONG)
    })
    .await
    .expect("script thread")
}

fn register_calc(node: &Node) {
    node.register_function("calc", "add", 2, |_node, args| async move {
        match (&args[0], &args[1]) {
            (Term::FixInteger(a), Term::FixInteger(b)) => match a.value.checked_add(b.value) {
                Some(sum) => Outcome::Return(FixInteger::from(sum).into()),
                None => Outcome::Exit(atom("overflow")),
            },
            _ => Outcome::Error {
                reason: atom("badarg"),
                stack: List::nil().into(),
            },
        }
    });
    node.register_function("calc", "toss", 0, |_, _| async {
        Outcome::Throw(atom("tossed"))
    });
    node.register_function("calc", "bye", 0, |_, _| async {
        Outcome::Exit(atom("gone"))
    });
    // Only the node's own erlang:halt may end without an answer: from an app it is an exit.
    node.register_function("calc", "halt", 0, |_, _| async { Outcome::Halt });
    // The calling node is passed in: a function can use the whole API.
    node.register_function("calc", "whoami", 0, |node, _| async move {
        Outcome::Return(atom(&node.name().name))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_functions_answer_erpc_rpc_and_rex_with_every_outcome() {
    let epmd = common::free_port();
    let node = start_node(&common::unique("fnode"), "fcookie", epmd).await;
    register_calc(&node);
    let out = elixir(
        &node,
        epmd,
        "fcall",
        "fcookie",
        r##"
        n = String.to_atom(System.fetch_env!("KV_NODE"))
        show = fn label, f ->
          r = try do {:ok, f.()} catch kind, reason -> {kind, reason} end
          IO.puts("#{label} #{inspect(r)}")
        end
        show.("erpc_add", fn -> :erpc.call(n, :calc, :add, [40, 2]) end)
        show.("erpc_badarg", fn -> :erpc.call(n, :calc, :add, [:x, 2]) end)
        show.("erpc_toss", fn -> :erpc.call(n, :calc, :toss, []) end)
        show.("erpc_bye", fn -> :erpc.call(n, :calc, :bye, []) end)
        show.("erpc_undef", fn -> :erpc.call(n, :calc, :add, [1]) end)
        show.("erpc_who", fn -> :erpc.call(n, :calc, :whoami, []) end)
        show.("erpc_halt", fn -> :erpc.call(n, :calc, :halt, [], 10_000) end)
        show.("rpc_add", fn -> :rpc.call(n, :calc, :add, [1, 2]) end)
        show.("rpc_bye", fn -> :rpc.call(n, :calc, :bye, []) end)
        show.("rpc_toss", fn -> :rpc.call(n, :calc, :toss, []) end)
        show.("rex_add", fn -> :rpc.block_call(n, :calc, :add, [5, 5]) end)
        show.("rex_badarg", fn -> :rpc.block_call(n, :calc, :add, [:x, 2]) end)
        "##,
    )
    .await;
    let line = |label: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} line in:\n{out}"))
            .to_owned()
    };
    assert_eq!(line("erpc_add"), "{:ok, 42}");
    assert_eq!(line("erpc_badarg"), "{:error, {:exception, :badarg, []}}");
    assert_eq!(line("erpc_toss"), "{:throw, :tossed}");
    assert_eq!(line("erpc_bye"), "{:exit, {:exception, :gone}}");
    assert!(
        line("erpc_undef").starts_with("{:error, {:exception, :undef, "),
        "{out}"
    );
    assert_eq!(
        line("erpc_who"),
        format!("{{:ok, :\"{}\"}}", node.name().name)
    );
    assert_eq!(line("erpc_halt"), "{:exit, {:exception, :halt}}");
    assert_eq!(line("rpc_add"), "{:ok, 3}");
    assert_eq!(line("rpc_bye"), "{:ok, {:badrpc, {:EXIT, :gone}}}");
    assert_eq!(line("rpc_toss"), "{:ok, :tossed}");
    assert_eq!(line("rex_add"), "{:ok, 10}");
    assert_eq!(
        line("rex_badarg"),
        "{:ok, {:badrpc, {:EXIT, {:badarg, []}}}}"
    );
    node.stop().await;
}

/// Answers `ping` with `pong`, never answers `hold`, counts casts; congested on request.
struct Gate {
    casts: Arc<Mutex<u64>>,
}

impl GenServer for Gate {
    fn handle_call(&mut self, _: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
        match request.decode() {
            Ok(Term::Atom(a)) if a.name == "ping" => CallResult::Reply(atom("pong")),
            Ok(Term::Atom(a)) if a.name == "casts" => {
                let n = *self.casts.lock().unwrap_or_else(|e| e.into_inner());
                CallResult::Reply(FixInteger::from(n as i32).into())
            }
            _ => CallResult::NoReply,
        }
    }

    fn handle_cast(&mut self, _: &mut Ctx, _: Request<'_>) {
        *self.casts.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_local_answers_and_reports_noproc_and_timeout() {
    let epmd = common::free_port();
    let node = start_node(&common::unique("lnode"), "lcookie", epmd).await;
    let casts = Arc::new(Mutex::new(0));
    let pid = node
        .spawn_server_with(Some("gate"), |ctx| {
            assert_eq!(ctx.self_pid().node.name, ctx.node().name().name);
            Gate {
                casts: casts.clone(),
            }
        })
        .expect("spawn");
    assert_eq!(pid.node.name, node.name().name);
    let reply = node
        .call_local("gate", atom("ping"), LONG)
        .await
        .expect("ping");
    assert_eq!(reply, atom("pong"));
    match node.call_local("nobody", atom("ping"), LONG).await {
        Err(CallError::NoProc { .. }) => {}
        other => panic!("expected NoProc, got {other:?}"),
    }
    match node
        .call_local("gate", atom("hold"), Duration::from_millis(200))
        .await
    {
        Err(CallError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // A timeout too long for the clock is "never", not an overflow.
    assert_eq!(
        node.call_local("gate", atom("ping"), Duration::MAX)
            .await
            .expect("ping"),
        atom("pong")
    );
    // The server still answers after a call it left unanswered.
    assert_eq!(
        node.call_local("gate", atom("ping"), LONG)
            .await
            .expect("ping"),
        atom("pong")
    );
    let info: std::collections::HashMap<_, _> = node.info().into_iter().collect();
    assert!(info["registered"] >= 1, "{info:?}");
    assert!(info["rss_bytes"] > 0, "{info:?}");
    assert_eq!(info["connections"], 0, "{info:?}");
    assert!(node.connected_nodes().is_empty());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_congested_server_stops_its_peers_until_it_clears() {
    let epmd = common::free_port();
    let node = start_node(&common::unique("cnode"), "ccookie", epmd).await;
    let casts = Arc::new(Mutex::new(0u64));
    let switch: Arc<Mutex<Option<Congestion>>> = Arc::new(Mutex::new(None));
    node.spawn_server_with(Some("gate"), |ctx| {
        *switch.lock().unwrap_or_else(|e| e.into_inner()) = Some(ctx.congestion());
        Gate {
            casts: casts.clone(),
        }
    })
    .expect("spawn");
    let congestion = switch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .expect("the server's switch");
    congestion.set(true);
    assert!(congestion.is_congested());
    let pauses_before = pauses(&node);
    // The peer casts 3 times, then calls: its connection is read up to the first cast
    // delivered to the congested server, then paused.
    let script = tokio::spawn({
        let node = node.clone();
        async move {
            elixir(
                &node,
                epmd,
                "ccall",
                "ccookie",
                r##"
                n = String.to_atom(System.fetch_env!("KV_NODE"))
                true = Node.connect(n)
                for _ <- 1..3, do: GenServer.cast({:gate, n}, :tick)
                IO.puts("casts #{GenServer.call({:gate, n}, :casts, 60_000)}")
                "##,
            )
            .await
        }
    });
    // The peer is connected before its first cast can be delivered.
    common::wait_for_async("the reader never paused", LONG, || {
        std::future::ready((pauses(&node) != pauses_before).then_some(()))
    })
    .await;
    assert_eq!(
        node.connected_nodes().len(),
        1,
        "{:?}",
        node.connected_nodes()
    );
    // Paused after the first cast: the others and the call wait in the socket.
    assert_eq!(*casts.lock().unwrap_or_else(|e| e.into_inner()), 1);
    assert!(!script.is_finished());
    congestion.set(false);
    let out = script.await.expect("script task");
    assert!(out.contains("casts 3"), "{out}");
    node.stop().await;
}

fn pauses(node: &Node) -> u64 {
    node.info()
        .into_iter()
        .find(|(k, _)| *k == "backpressure_pauses")
        .map(|(_, v)| v)
        .unwrap_or(0)
}

/// Monitors the pid it is called with (`{:watch, pid}`), answers `:ok`.
struct Watcher;

impl GenServer for Watcher {
    fn handle_call(&mut self, ctx: &mut Ctx, _: &Caller, request: Request<'_>) -> CallResult<'_> {
        match request.decode() {
            Ok(Term::Tuple(t)) if t.elements.len() == 2 => {
                if let Term::Pid(pid) = &t.elements[1] {
                    ctx.monitor(pid);
                }
                CallResult::Reply(atom("ok"))
            }
            _ => CallResult::Reply(atom("badarg")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_releases_the_monitors_it_placed() {
    let epmd = common::free_port();
    let node = start_node(&common::unique("mnode"), "mcookie", epmd).await;
    node.spawn_server(Some("watcher"), Watcher).expect("spawn");
    let out = elixir(
        &node,
        epmd,
        "mcall",
        "mcookie",
        r##"
        n = String.to_atom(System.fetch_env!("KV_NODE"))
        target = spawn(fn -> receive do :never -> :ok end end)
        :ok = GenServer.call({:watcher, n}, {:watch, target})
        {:monitored_by, [_]} = Process.info(target, :monitored_by)
        :ok = GenServer.stop({:watcher, n}, :normal, 10_000)
        # The DEMONITOR from the server's end reaches the target's node.
        wait = fn wait, tries ->
          case Process.info(target, :monitored_by) do
            {:monitored_by, []} -> :released
            other when tries == 0 -> other
            _ -> Process.sleep(20); wait.(wait, tries - 1)
          end
        end
        IO.puts("target #{inspect(wait.(wait, 1500))}")
        "##,
    )
    .await;
    assert!(out.contains("target :released"), "{out}");
    assert_eq!(
        node.info()
            .into_iter()
            .find(|(k, _)| *k == "monitors")
            .map(|(_, v)| v),
        Some(0)
    );
    node.stop().await;
}
