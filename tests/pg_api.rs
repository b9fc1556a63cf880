//! The `pg` API of a visible Rust node ([`Node::pg_start_scope`], [`kvnode::PgScope`]): Rust
//! pids join groups that `:pg.get_members/2` lists on BEAM nodes, and the Rust side tracks the
//! BEAM members (joins, leaves, exits, a node going away), with bounded memory. Peers are two
//! real Elixir nodes running scope `:s`: a long-running one (A) and the script's own (B). The
//! script drives the Rust side through functions the Rust node registers (`:pgt.*`, called
//! with `:erpc`), so every check is made by the script, in order, with deadlines.

mod common;

use kvnode::term::{Atom, FixInteger, List, Pid, Term, Tuple};
use kvnode::{Node, NodeBuilder, Outcome, PgError, PgEvent, PgGroup, PgOptions, PgScope, Process};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn pids_term(pids: Vec<Pid>) -> Term {
    List::from(pids.into_iter().map(Term::from).collect::<Vec<_>>()).into()
}

/// Everything the in-process nodes log, for the checks on warnings (one subscriber for the
/// whole test binary; each test looks for its own scope's name).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logged() -> String {
    String::from_utf8_lossy(&logs().lock().unwrap_or_else(|e| e.into_inner())).into_owned()
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

/// Runs an Elixir script against `node` on a blocking thread; its stdout. Fails the test
/// (with the script's output) when the script fails.
async fn elixir(
    node: &Node,
    epmd_port: u16,
    tag: &str,
    cookie: &'static str,
    script: String,
) -> String {
    elixir_within(node, epmd_port, tag, cookie, script, LONG).await
}

/// [`elixir`] with its own time limit for the whole script.
async fn elixir_within(
    node: &Node,
    epmd_port: u16,
    tag: &str,
    cookie: &'static str,
    script: String,
    limit: Duration,
) -> String {
    let kv_name = node.name().name.clone();
    let alive = common::unique(tag);
    let out = tokio::task::spawn_blocking(move || {
        common::elixir_raw(&kv_name, epmd_port, &alive, cookie, &script, limit)
    });
    let out = out.await.expect("script thread");
    assert!(
        out.status.success(),
        "script failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

fn group_arg(args: &[Term]) -> PgGroup {
    PgGroup::from_term(args[0].clone()).expect("group term")
}

/// `:pgt.*` on the Rust node, for the script: the scope's views, and Rust processes that join
/// and leave. The processes are kept in `procs` (dropping one ends it).
fn register_pgt(node: &Node, scope: &PgScope, procs: &Arc<Mutex<Vec<Process>>>) {
    let s = scope.clone();
    node.register_function("pgt", "members", 1, move |_, args| {
        let members = s.get_members(&group_arg(&args));
        async move { Outcome::Return(pids_term(members)) }
    });
    let s = scope.clone();
    node.register_function("pgt", "local_members", 1, move |_, args| {
        let members = s.get_local_members(&group_arg(&args));
        async move { Outcome::Return(pids_term(members)) }
    });
    let s = scope.clone();
    node.register_function("pgt", "groups", 0, move |_, _| {
        let groups: Vec<Term> = s.which_groups().iter().map(|g| g.term().clone()).collect();
        async move { Outcome::Return(List::from(groups).into()) }
    });
    let (s, p) = (scope.clone(), procs.clone());
    node.register_function("pgt", "join", 2, move |node, args| {
        let group = group_arg(&args);
        let n = match &args[1] {
            Term::FixInteger(i) => i.value.max(0) as usize,
            _ => 0,
        };
        let mut pids = Vec::new();
        for _ in 0..n {
            let process = node.process(None).expect("a Rust process");
            pids.push(process.pid().clone());
            p.lock().unwrap_or_else(|e| e.into_inner()).push(process);
        }
        let joined = s.join_many(group, &pids);
        async move {
            match joined {
                Ok(()) => Outcome::Return(pids_term(pids)),
                Err(e) => Outcome::Return(atom(&format!("{e:?}"))),
            }
        }
    });
    // Joins any pid: the error for a pid of another node.
    let s = scope.clone();
    node.register_function("pgt", "join_pid", 2, move |_, args| {
        let result = match &args[1] {
            Term::Pid(pid) => match s.join(group_arg(&args), pid) {
                Ok(()) => atom("ok"),
                Err(PgError::NotLocal(_)) => atom("not_local"),
                Err(e) => atom(&format!("{e:?}")),
            },
            _ => atom("badarg"),
        };
        async move { Outcome::Return(result) }
    });
    let s = scope.clone();
    node.register_function("pgt", "leave", 2, move |_, args| {
        let result = match &args[1] {
            Term::Pid(pid) => match s.leave(&group_arg(&args), pid) {
                Ok(()) => atom("ok"),
                Err(PgError::NotJoined { .. }) => atom("not_joined"),
                Err(e) => atom(&format!("{e:?}")),
            },
            _ => atom("badarg"),
        };
        async move { Outcome::Return(result) }
    });
    let s = scope.clone();
    node.register_function("pgt", "scope", 0, move |_, _| {
        let pid = s.pid().clone();
        async move { Outcome::Return(pid.into()) }
    });
    // Ends the Rust process with this pid (it then leaves its groups).
    let p = procs.clone();
    node.register_function("pgt", "kill", 1, move |_, args| {
        let mut procs = p.lock().unwrap_or_else(|e| e.into_inner());
        let found = procs
            .iter()
            .position(|x| Term::from(x.pid().clone()) == args[0]);
        let result = match found {
            Some(at) => {
                procs.remove(at).exit(atom("shutdown"));
                atom("ok")
            }
            None => atom("no_such_process"),
        };
        async move { Outcome::Return(result) }
    });
}

/// Records the events of `scope.monitor(group)` as `{join | leave, [Pid]}` terms, for
/// `:pgt.events/0`.
fn record_events(node: &Node, scope: &PgScope, group: PgGroup) {
    let (mut events, initial) = scope.monitor(&group);
    assert!(initial.is_empty(), "no members yet: {initial:?}");
    let seen: Arc<Mutex<Vec<Term>>> = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let term = match event {
                PgEvent::Join { pids, .. } => tuple(vec![atom("join"), pids_term(pids)]),
                PgEvent::Leave { pids, .. } => tuple(vec![atom("leave"), pids_term(pids)]),
                PgEvent::Lagged(n) => {
                    tuple(vec![atom("lagged"), FixInteger::from(n as i32).into()])
                }
                _ => atom("other"),
            };
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(term);
        }
    });
    node.register_function("pgt", "events", 0, move |_, _| {
        let list = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        async move { Outcome::Return(List::from(list).into()) }
    });
}

/// Boot code of node A: scope `:s`, then waits (the script drives it with `:erpc`).
const BOOT_A: &str = r#"
{:ok, _} = :pg.start(:s)
receive do
  :never -> :ok
end
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_beam_members_are_seen_on_both_sides() {
    let epmd = common::free_port();
    let cookie = "pgcookie";
    let node = start_node(&common::unique("pgrust"), cookie, epmd, true).await;
    let scope = node.pg_start_scope("s").expect("start scope s");
    // A second scope of the same name is refused (the name is taken).
    assert!(matches!(node.pg_start_scope("s"), Err(PgError::Spawn(_))));
    let procs: Arc<Mutex<Vec<Process>>> = Arc::default();
    register_pgt(&node, &scope, &procs);
    record_events(&node, &scope, PgGroup::atom("g_beam"));
    let a_alive = common::unique("pga");
    let _a = common::BeamNode::start(&a_alive, cookie, epmd, BOOT_A);
    let script = format!(
        r##"
rust = String.to_atom(System.fetch_env!("KV_NODE"))
a = :"{a_alive}@127.0.0.1"
{{:ok, _}} = :pg.start(:s)
TestWait.until(fn -> Node.connect(rust) end, 60_000)
TestWait.until(fn -> Node.connect(a) end, 60_000)
TestWait.until(fn -> :erpc.call(a, Node, :connect, [rust]) end, 60_000)
TestWait.until(fn -> :erpc.call(a, Process, :whereis, [:s]) != nil end, 60_000)
sorted = fn l -> Enum.sort(l) end

TestCheck.run("Rust joins: :pg.get_members on both BEAM nodes lists the Rust pids", fn ->
  pids = :erpc.call(rust, :pgt, :join, [:g_rust, 2])
  2 = length(pids)
  true = Enum.all?(pids, &(node(&1) == rust))
  TestWait.until(fn -> sorted.(:pg.get_members(:s, :g_rust)) == sorted.(pids) end, 30_000)
  TestWait.until(fn -> sorted.(:erpc.call(a, :pg, :get_members, [:s, :g_rust])) == sorted.(pids) end, 30_000)
  true = sorted.(:erpc.call(rust, :pgt, :local_members, [:g_rust])) == sorted.(pids)
  Process.put(:rust_pids, pids)
end)

p1 = spawn(fn -> receive do :stop -> :ok end end)
# (A cannot run this script's closures: MFA spawns.)
p2 = Node.spawn(a, :timer, :sleep, [:infinity])
p3 = Node.spawn(a, :timer, :sleep, [:infinity])

TestCheck.run("Elixir joins on both nodes: the Rust view lists them (atom, binary and tuple groups)", fn ->
  :ok = :pg.join(:s, :g_beam, p1)
  :ok = :erpc.call(a, :pg, :join, [:s, :g_beam, p2])
  :ok = :pg.join(:s, "topic", p1)
  :ok = :erpc.call(a, :pg, :join, [:s, {{:room, 7}}, [p2, p3]])
  :ok = :erpc.call(a, :pg, :join, [:s, :g_a, p3])
  TestWait.until(fn -> sorted.(:erpc.call(rust, :pgt, :members, [:g_beam])) == sorted.([p1, p2]) end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, ["topic"]) == [p1] end, 30_000)
  TestWait.until(fn -> sorted.(:erpc.call(rust, :pgt, :members, [{{:room, 7}}])) == sorted.([p2, p3]) end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:g_a]) == [p3] end, 30_000)
  groups = sorted.(:erpc.call(rust, :pgt, :groups, []))
  true = groups == sorted.([:g_rust, :g_beam, "topic", {{:room, 7}}, :g_a]) || raise "groups #{{inspect(groups)}}"
  [] = :erpc.call(rust, :pgt, :local_members, [:g_beam])
end)

TestCheck.run("a remote pid cannot join through the Rust scope", fn ->
  :not_local = :erpc.call(rust, :pgt, :join_pid, [:g_beam, p1])
end)

TestCheck.run("Elixir leaves: the Rust view drops the member", fn ->
  :ok = :pg.leave(:s, :g_beam, p1)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:g_beam]) == [p2] end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, ["topic"]) == [p1] end, 30_000)
end)

TestCheck.run("an Elixir member exits: the Rust view drops it", fn ->
  Process.exit(p2, :kill)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:g_beam]) == [] end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [{{:room, 7}}]) == [p3] end, 30_000)
end)

TestCheck.run("monitor(:g_beam) saw the joins and leaves", fn ->
  want = Enum.sort([{{:join, [p1]}}, {{:join, [p2]}}, {{:leave, [p1]}}, {{:leave, [p2]}}])
  try do
    TestWait.until(fn -> Enum.sort(:erpc.call(rust, :pgt, :events, [])) == want end, 30_000)
  rescue
    e -> IO.inspect(:erpc.call(rust, :pgt, :events, []), label: "events"); reraise e, __STACKTRACE__
  end
end)

TestCheck.run("Rust leave: gone on both BEAM nodes; a second leave is not_joined", fn ->
  [first, second] = Process.get(:rust_pids)
  :ok = :erpc.call(rust, :pgt, :leave, [:g_rust, first])
  :not_joined = :erpc.call(rust, :pgt, :leave, [:g_rust, first])
  TestWait.until(fn -> :pg.get_members(:s, :g_rust) == [second] end, 30_000)
  TestWait.until(fn -> :erpc.call(a, :pg, :get_members, [:s, :g_rust]) == [second] end, 30_000)
end)

TestCheck.run("a Rust member exits: gone on both BEAM nodes", fn ->
  [_, second] = Process.get(:rust_pids)
  :ok = :erpc.call(rust, :pgt, :kill, [second])
  TestWait.until(fn -> :pg.get_members(:s, :g_rust) == [] end, 30_000)
  TestWait.until(fn -> :erpc.call(a, :pg, :get_members, [:s, :g_rust]) == [] end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:g_rust]) == [] end, 30_000)
end)

TestCheck.run("a BEAM node goes away: the Rust view drops all its members", fn ->
  :erpc.cast(a, :erlang, :halt, [])
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:g_a]) == [] end, 30_000)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [{{:room, 7}}]) == [] end, 30_000)
  TestWait.until(fn -> sorted.(:erpc.call(rust, :pgt, :groups, [])) == sorted.(["topic"]) end, 30_000)
  # B's own members stay.
  [^p1] = :erpc.call(rust, :pgt, :members, ["topic"])
end)

TestCheck.finish()
IO.puts("PG_API_OK")
"##
    );
    let out = elixir(&node, epmd, "pgb", cookie, script).await;
    assert!(out.contains("PG_API_OK"), "{out}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_beyond_the_limits_is_warned_and_keeps_its_connection() {
    logs();
    let epmd = common::free_port();
    let cookie = "pglimcookie";
    let node = start_node(&common::unique("pglim"), cookie, epmd, true).await;
    let scope_name = common::unique("lims");
    let mut options = PgOptions::default();
    options.max_members = 6; // B's probe member and 5 more
    options.max_group_bytes = 200;
    let scope = node
        .pg_start_scope_with(&scope_name, options)
        .expect("start the scope");
    let procs: Arc<Mutex<Vec<Process>>> = Arc::default();
    register_pgt(&node, &scope, &procs);
    let script = format!(
        r##"
rust = String.to_atom(System.fetch_env!("KV_NODE"))
s = :"{scope_name}"
{{:ok, _}} = :pg.start(s)
TestWait.until(fn -> Node.connect(rust) end, 60_000)
spawn_some = fn n -> for _ <- 1..n, do: spawn(fn -> receive do :stop -> :ok end end) end
ten = spawn_some.(10)

# The scopes have met (B's probe member is seen) before the joins below, so they reach the
# Rust side as joins, not inside B's first sync.
[probe] = spawn_some.(1)
:ok = :pg.join(s, :probe, probe)
TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:probe]) == [probe] end, 30_000)

TestCheck.run("10 joins with room for 5: 5 kept, connection kept", fn ->
  # Two joins, the higher pids first: the 5 kept are then the first join's, and a later sync
  # lists the others first (OTP 25 lists a group's pids in pid order, OTP 29 newest first).
  :ok = :pg.join(s, :big, Enum.slice(ten, 5, 5))
  :ok = :pg.join(s, :big, Enum.take(ten, 5))
  TestWait.until(fn -> length(:erpc.call(rust, :pgt, :members, [:big])) == 5 end, 30_000)
  true = rust in Node.list()
end)

TestCheck.run("full: a join to another group is dropped; after leaves there is room again", fn ->
  [x] = spawn_some.(1)
  :ok = :pg.join(s, :other, x)
  kept = :erpc.call(rust, :pgt, :members, [:big])
  # B's scope syncs again (as on a second discover; it lists its pids in another order than
  # the join did): the Rust side must keep the same 5, or the leave below frees nothing.
  send(s, {{:discover, :erpc.call(rust, :pgt, :scope, [])}})
  # Leave two of the kept ones: their room lets a later join in.
  [k1, k2 | _] = kept
  :ok = :pg.leave(s, :big, [k1, k2])
  TestWait.until(fn -> length(:erpc.call(rust, :pgt, :members, [:big])) == 3 end, 30_000)
  [] = :erpc.call(rust, :pgt, :members, [:other])
  [y] = spawn_some.(1)
  :ok = :pg.join(s, :later, y)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:later]) == [y] end, 30_000)
end)

TestCheck.run("a group name beyond the byte bound is dropped", fn ->
  [z] = spawn_some.(1)
  big = String.duplicate("x", 300)
  :ok = :pg.join(s, big, z)
  [w] = spawn_some.(1)
  :ok = :pg.join(s, :after_big, w)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:after_big]) == [w] end, 30_000)
  [] = :erpc.call(rust, :pgt, :members, [big])
  true = rust in Node.list()
end)

TestCheck.run("the Rust side still announces its own members", fn ->
  [r] = :erpc.call(rust, :pgt, :join, [:mine, 1])
  TestWait.until(fn -> :pg.get_members(s, :mine) == [r] end, 30_000)
end)

TestCheck.finish()
IO.puts("PG_LIMIT_OK")
"##
    );
    let out = elixir(&node, epmd, "pglimb", cookie, script).await;
    assert!(out.contains("PG_LIMIT_OK"), "{out}");
    let logs = logged();
    let warned = logs
        .lines()
        .filter(|l| l.contains("exceed the scope's limits") && l.contains(&scope_name))
        .count();
    assert!(warned >= 1, "no limit warning for {scope_name} in:\n{logs}");
    // Rate-limited: three over-limit events within seconds give one warning, not one each.
    assert!(warned <= 2, "{warned} warnings:\n{logs}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_node_has_no_pg() {
    let epmd = common::free_port();
    let node = start_node(&common::unique("pghid"), "pghidden", epmd, false).await;
    assert!(matches!(node.pg_start_scope("s"), Err(PgError::NotVisible)));
    node.stop().await;
}

/// A peer's big group (200 000 memberships of one pid, in one join) costs the Rust side
/// time linear in its size when the peer syncs it again and when it leaves at once (it cost
/// their square: a search per pid). The Rust scope has an event subscriber, so the events'
/// diff of a re-sync is exercised too. The deadlines are generous: a linear pass takes well
/// under a second; a quadratic one takes minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_group_resyncs_and_leaves_in_linear_time() {
    let epmd = common::free_port();
    let cookie = "pgbigcookie";
    let node = start_node(&common::unique("pgbig"), cookie, epmd, true).await;
    let scope_name = common::unique("bigs");
    let scope = node.pg_start_scope(&scope_name).expect("start the scope");
    let procs: Arc<Mutex<Vec<Process>>> = Arc::default();
    register_pgt(&node, &scope, &procs);
    let s = scope.clone();
    node.register_function("pgt", "count", 1, move |_, args| {
        let n = s.get_members(&group_arg(&args)).len();
        async move { Outcome::Return(FixInteger::from(n as i32).into()) }
    });
    let (mut events, _) = scope.monitor_scope();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let PgEvent::Join { pids, .. } | PgEvent::Leave { pids, .. } = event {
                counter.fetch_add(pids.len(), std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let script = format!(
        r##"
rust = String.to_atom(System.fetch_env!("KV_NODE"))
s = :"{scope_name}"
{{:ok, _}} = :pg.start(s)
TestWait.until(fn -> Node.connect(rust) end, 60_000)
spawn_one = fn -> spawn(fn -> receive do :stop -> :ok end end) end
probe = spawn_one.()
:ok = :pg.join(s, :probe, probe)
TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:probe]) == [probe] end, 30_000)
p = spawn_one.()
many = List.duplicate(p, 200_000)

t0 = System.monotonic_time(:millisecond)
ms = fn -> System.monotonic_time(:millisecond) - t0 end
TestCheck.run("200 000 memberships in one join reach the Rust side", fn ->
  :ok = :pg.join(s, :many, many)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :count, [:many]) == 200_000 end, 60_000)
  IO.puts("joined_ms #{{ms.()}}")
end)

TestCheck.run("a re-sync of the big group is handled at once", fn ->
  send(s, {{:discover, :erpc.call(rust, :pgt, :scope, [])}})
  # Handled in order: the next join is seen only after the sync.
  q = spawn_one.()
  :ok = :pg.join(s, :after_sync, q)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:after_sync]) == [q] end, 30_000)
  200_000 = :erpc.call(rust, :pgt, :count, [:many])
  IO.puts("resynced_ms #{{ms.()}}")
end)

TestCheck.run("a leave of all 200 000 at once is handled at once", fn ->
  :ok = :pg.leave(s, :many, many)
  r = spawn_one.()
  :ok = :pg.join(s, :after_leave, r)
  TestWait.until(fn -> :erpc.call(rust, :pgt, :members, [:after_leave]) == [r] end, 30_000)
  0 = :erpc.call(rust, :pgt, :count, [:many])
  IO.puts("left_ms #{{ms.()}}")
end)

TestCheck.finish()
IO.puts("PG_BIG_OK")
"##
    );
    // The whole test took ~70 s against OTP 29 (in its chroot), ~4 s against OTP 25: a
    // generous limit for the script. Each deadline above starts once the BEAM's own `:pg`
    // call has returned, so it waits for the Rust side only.
    let out = elixir_within(&node, epmd, "pgbigb", cookie, script, LONG * 3).await;
    assert!(out.contains("PG_BIG_OK"), "{out}");
    // Timings (from the script's start), for the record.
    eprintln!(
        "{}",
        out.lines()
            .filter(|l| l.ends_with("ms") || l.contains("_ms "))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // The join's and the leave's events (the re-sync changed nothing: no events).
    common::wait_for_async("the events of the join and the leave", LONG, || {
        let n = seen.load(std::sync::atomic::Ordering::Relaxed);
        async move { (n >= 400_000).then_some(()) }
    })
    .await;
    node.stop().await;
}

/// A group that cannot be encoded (an atom over 255 characters) is refused at `join`: kept,
/// it broke every `sync` of the scope (one message for all groups), so a peer meeting the
/// scope learned none of its members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unencodable_group_is_refused_and_the_sync_still_goes() {
    let epmd = common::free_port();
    let cookie = "pgbadcookie";
    let node = start_node(&common::unique("pgbad"), cookie, epmd, true).await;
    let scope_name = common::unique("bads");
    let scope = node.pg_start_scope(&scope_name).expect("start the scope");
    let procs: Arc<Mutex<Vec<Process>>> = Arc::default();
    register_pgt(&node, &scope, &procs);
    let member = node.process(None).expect("process");
    assert_eq!(
        scope.join(PgGroup::atom(&"x".repeat(300)), member.pid()),
        Err(PgError::BadGroup)
    );
    // Joined before the peer connects: the peer learns it from the scope's `sync`.
    scope
        .join(PgGroup::atom("good"), member.pid())
        .expect("join good");
    let script = format!(
        r##"
rust = String.to_atom(System.fetch_env!("KV_NODE"))
s = :"{scope_name}"
{{:ok, _}} = :pg.start(s)
TestWait.until(fn -> Node.connect(rust) end, 60_000)
TestCheck.run("the Rust member is learned from the sync", fn ->
  [m] = :erpc.call(rust, :pgt, :local_members, [:good])
  TestWait.until(fn -> :pg.get_members(s, :good) == [m] end, 30_000)
end)
TestCheck.finish()
IO.puts("PG_BADGROUP_OK")
"##
    );
    let out = elixir(&node, epmd, "pgbadb", cookie, script).await;
    assert!(out.contains("PG_BADGROUP_OK"), "{out}");
    drop(member);
    node.stop().await;
}
