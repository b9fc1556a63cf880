//! kvnode as a visible node (`--visible`): BEAM nodes list it in `Node.list()`, `:global`
//! syncs with it (kvnode is a protocol-8 `global` member: handshake, locks, names), the KV
//! server is reachable as `{:global, name}` (`--global-name`) and is a `:pg` member
//! (`--pg SCOPE:GROUP`); all of it goes when kvnode dies. Three Elixir nodes (two long-running
//! ones and the script node), plus short-lived ones for locks and name clashes.
//!
//! kvnode's name (`vis_kv_…`) sorts after the cluster's (`vis_a_…` to `vis_f_…`, see
//! [`common::ClusterOpts::prefix`]), so it is global's boss: every global lock in the cluster is taken on kvnode first, and kvnode's
//! refusal is what keeps a lock exclusive.

mod common;

use common::*;
use std::time::Duration;

/// Boot code of a long-running cluster node: the `:kvscope` pg scope when `scope`, and a
/// registered `:d_ctl` process that, on `{:go, from}`, connects to kvnode, takes the global
/// lock `{:held_lock, _}` and tells `from` (`{:locked, pid}`), then halts the node on `:die`
/// (a node that disconnects while holding a lock).
fn boot(kv: &str, scope: bool) -> String {
    let scope = if scope {
        "{:ok, _} = :pg.start(:kvscope)"
    } else {
        ""
    };
    format!(
        r#"
{scope}
kv = :"{kv}"
Process.register(self(), :d_ctl)
receive do
  {{:go, from}} ->
    true = Node.connect(kv)
    :ok = :global.sync()
    true = :global.set_lock({{:held_lock, self()}})
    send(from, {{:locked, self()}})
    receive do
      :die -> System.halt(0)
    end
after
  600_000 -> :ok
end
"#
    )
}

/// A cluster with a `--visible` kvnode (`args` added) and `n` BEAM nodes booting with `boot`,
/// cookie `vis`, names `vis_…`.
fn visible_cluster(n: usize, args: &[&str], boot: impl Fn(usize, &str) -> String) -> BeamCluster {
    let opts = ClusterOpts {
        prefix: "vis",
        cookie: Some("vis"),
        visible_kv: Some(args),
    };
    beam_cluster(n, opts, boot)
}

/// [`visible_cluster`] of kvnode alone.
fn visible_kv(args: &[&str]) -> BeamCluster {
    visible_cluster(0, args, |_, _| String::new())
}

#[test]
fn visible_node_global_and_pg_with_three_elixir_nodes() {
    let kv_args = ["--global-name", "kv_store", "--pg", "kvscope:kvgroup"];
    // a (with the kvscope scope), b, and c: the node that takes a lock and dies.
    let mut cluster = visible_cluster(3, &kv_args, |i, kv| boot(kv, i == 0));
    let [a, b, locker] = [0, 1, 2].map(|i| cluster.beams[i].name.clone());
    let kv = cluster.kv();
    let script = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
a = :"{a}"
b = :"{b}"
d = :"{d}"
{{:ok, _}} = :pg.start(:kvscope)
TestWait.until(fn -> Node.connect(a) end, 60_000)
TestWait.until(fn -> Node.connect(b) end, 60_000)
true = Node.connect(kv)
nodes = [node(), a, b]
# a and b connect to kvnode themselves (b's scope starts after that: its discover reaches kvnode).
:erpc.call(a, Node, :connect, [kv])
:erpc.call(b, Node, :connect, [kv])
{{:ok, _}} = :erpc.call(b, :pg, :start, [:kvscope])

TestCheck.run("kvnode in Node.list() and nodeup reported", fn ->
  for n <- nodes do
    TestWait.until(fn -> kv in :erpc.call(n, Node, :list, []) end)
    false = kv in :erpc.call(n, Node, :list, [:hidden])
  end
end)

TestCheck.run("global:sync returns on every node", fn ->
  for n <- nodes do
    {{us, :ok}} = :erpc.call(n, :timer, :tc, [:global, :sync, []], 60_000)
    IO.puts("SYNC_US #{{us}}")
  end
end)

kvpid = TestWait.until(fn ->
  p = :global.whereis_name(:kv_store)
  is_pid(p) and node(p) == kv and p
end, 30_000)

TestCheck.run("--global-name: the KV server is {{:global, :kv_store}} everywhere", fn ->
  for n <- nodes do
    TestWait.until(fn -> :erpc.call(n, :global, :whereis_name, [:kv_store]) == kvpid end, 30_000)
  end
  :ok = GenServer.call({{:global, :kv_store}}, {{:put, :vis_key, 42}})
  42 = :erpc.call(a, GenServer, :call, [{{:global, :kv_store}}, {{:get, :vis_key}}])
  42 = :erpc.call(b, GenServer, :call, [{{:global, :kv_store}}, {{:get, :vis_key}}])
end)

TestCheck.run("a BEAM registration goes through kvnode (locks and register answered)", fn ->
  p = :erpc.call(a, :erlang, :spawn, [:timer, :sleep, [:infinity]])
  {{us, :yes}} = :erpc.call(a, :timer, :tc, [:global, :register_name, [:beam_name, p]], 60_000)
  IO.puts("REGISTER_US #{{us}}")
  for n <- nodes, do: TestWait.until(fn -> :erpc.call(n, :global, :whereis_name, [:beam_name]) == p end)
  # The name goes when its process does.
  true = :erpc.call(a, :erlang, :exit, [p, :kill])
  for n <- nodes, do: TestWait.until(fn -> :erpc.call(n, :global, :whereis_name, [:beam_name]) == :undefined end)
  # A transaction (set_lock on every node, kvnode first as the boss) runs and unlocks.
  :done = :global.trans({{:vis_trans, self()}}, fn -> :done end)
end)

TestCheck.run("pg: the KV server is a member of kvscope/kvgroup", fn ->
  for n <- nodes do
    TestWait.until(fn -> :erpc.call(n, :pg, :get_members, [:kvscope, :kvgroup]) == [kvpid] end, 30_000)
  end
end)

TestCheck.run("a lock held by a node that disconnects is released on kvnode", fn ->
  Process.register(self(), :ctl)
  TestWait.until(fn -> Node.connect(d) end, 60_000)
  send({{:d_ctl, d}}, {{:go, self()}})
  holder = receive do
    {{:locked, pid}} -> pid
  after
    60_000 -> raise "the locker node never took the lock"
  end
  # kvnode refuses a competing requester while the lock is held...
  false = :global.set_lock({{:held_lock, self()}}, [kv], 0)
  send(holder, :die)
  # ...and grants it once the holder's node is gone.
  TestWait.until(fn -> :global.set_lock({{:held_lock, self()}}, [kv], 0) end, 30_000)
  true = :global.del_lock({{:held_lock, self()}}, [kv])
end)

TestCheck.finish()
IO.puts("KVPID #{{inspect(kvpid)}}")
"#,
        d = locker,
    );
    let out = elixir(kv, &unique("vis_d"), "vis", &script);
    let syncs: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("SYNC_US ")?.trim().parse().ok())
        .collect();
    assert_eq!(syncs.len(), 3, "a sync time per node: {out}");
    eprintln!("global:sync() with kvnode connected, per node (µs): {syncs:?}");
    if let Some(r) = out.lines().find(|l| l.starts_with("REGISTER_US")) {
        eprintln!("global:register_name with kvnode as the boss: {r}");
    }

    // kvnode dies: its name and pg membership go, the BEAM nodes stay connected and in sync.
    let kv_name = kv.name.clone();
    cluster.kill_kv();
    let after = format!(
        r#"
kv = :"{kv}"
a = :"{a}"
b = :"{b}"
TestWait.until(fn -> Node.connect(a) end, 60_000)
TestWait.until(fn -> Node.connect(b) end, 60_000)
for n <- [a, b] do
  TestWait.until(fn -> not (kv in :erpc.call(n, Node, :list, [])) end, 30_000)
  TestWait.until(fn -> :erpc.call(n, :pg, :get_members, [:kvscope, :kvgroup]) == [] end, 30_000)
  TestWait.until(fn -> :erpc.call(n, :global, :whereis_name, [:kv_store]) == :undefined end, 30_000)
  :ok = :erpc.call(n, :global, :sync, [], 60_000)
end
true = b in :erpc.call(a, Node, :list, [])
"#,
        kv = kv_name,
    );
    elixir(cluster.kv(), &unique("vis_e"), "vis", &after);

    // Restarted, and dialed by one node only: global pulls the others in (new_nodes), and
    // the name and the pg membership come back everywhere.
    let kv = cluster.start_kv();
    let back = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
a = :"{a}"
b = :"{b}"
TestWait.until(fn -> Node.connect(a) end, 60_000)
TestWait.until(fn -> Node.connect(b) end, 60_000)
:ok = :global.sync()
true = Node.connect(kv)
:ok = :global.sync()
for n <- [a, b] do
  TestWait.until(fn -> kv in :erpc.call(n, Node, :list, []) end, 30_000)
  TestWait.until(fn ->
    p = :erpc.call(n, :global, :whereis_name, [:kv_store])
    is_pid(p) and node(p) == kv
  end, 30_000)
  TestWait.until(fn -> match?([p] when node(p) == kv, :erpc.call(n, :pg, :get_members, [:kvscope, :kvgroup])) end, 30_000)
end
"#
    );
    elixir(kv, &unique("vis_f"), "vis", &back);
}

/// A hidden kvnode (the default) stays out of `Node.list()` and gets no global traffic.
#[test]
fn hidden_by_default() {
    let kv = KvNode::fresh("vis_hidden");
    kv.script(
        "h",
        r#"
true = Node.connect(kv)
false = kv in Node.list()
true = kv in Node.list(:hidden)
:ok = :global.sync()
"#,
    );
    assert!(!kv.logs().contains("global:"), "{}", kv.logs());
}

/// A name registered on both sides of a new connection is resolved as `global`'s default
/// resolver (`random_exit_name/3`) resolves it: the pid on the node with the smaller name
/// keeps it, the other is killed. kvnode resolves when its name is the smaller one; when it
/// loses, it drops the name (its KV server ignores the kill and keeps serving) and registers
/// it again once the name is free.
#[test]
fn name_clash_resolved_as_random_exit_name() {
    let cluster = visible_kv(&["--global-name", "clash_name"]);
    let kv = cluster.kv();
    // Registers `clash_name` before connecting (its own partition), then joins kvnode's.
    let clash = |check: &str| {
        format!(
            r#"
kv = String.to_atom(System.get_env("KV_NODE"))
p = spawn(fn -> receive do _ -> :ok end end)
:yes = :global.register_name(:clash_name, p)
ref = Process.monitor(p)
true = Node.connect(kv)
:ok = :global.sync()
{check}
"#
        )
    };
    let kvnode_wins = r#"
TestWait.until(fn ->
  w = :global.whereis_name(:clash_name)
  is_pid(w) and node(w) == kv
end, 30_000)
got = receive do
  {:DOWN, ^ref, :process, _, reason} -> reason
after
  30_000 -> :no_down
end
:killed = got
"#;
    let beam_wins = r#"
TestWait.until(fn -> :global.whereis_name(:clash_name) == p end, 30_000)
# kvnode's KV server ignored the kill and serves on.
n = GenServer.call({DistributedExample.KVStore, kv}, :size)
true = is_integer(n)
true = Process.alive?(p)
"#;
    // A node whose name sorts after kvnode's: kvnode resolves, its own pid wins.
    elixir(kv, &unique("zz_clash"), "vis", &clash(kvnode_wins));
    // One whose name sorts before: it resolves and its pid wins; kvnode loses the name.
    elixir(kv, &unique("aa_clash"), "vis", &clash(beam_wins));
    kv.wait_log("lost its global name", Duration::from_secs(30));
    // That node is gone: kvnode registers the name again.
    kv.script(
        "mm_check",
        r#"
true = Node.connect(kv)
:ok = :global.sync()
TestWait.until(fn ->
  w = :global.whereis_name(:clash_name)
  is_pid(w) and node(w) == kv
end, 30_000)
"#,
    );
}

/// prevent_overlapping_partitions (§2.4 of the protocol notes): when a BEAM node loses its link
/// to kvnode only, the other nodes ask kvnode (`remove_connection`) to drop its links to them,
/// and it does, as OTP's `global` does. Otherwise they would keep kvnode in `nodes()` but out
/// of `global`'s synced set, and `:global.sync()` would block on them.
#[test]
fn remove_connection_is_honoured() {
    let (out, logs) = in_full_mesh(
        r##"
true = kv in Node.list()
# a loses kvnode (only): we are asked to drop it and ask kvnode to drop us.
true = :erpc.call(a, :erlang, :disconnect_node, [kv])
TestWait.until(fn -> not (kv in Node.list()) end, 30_000)
{us, :ok} = :timer.tc(:global, :sync, [])
IO.puts("SYNC_AFTER_US #{us}")
true = a in Node.list()
"##,
    );
    assert!(out.contains("SYNC_AFTER_US"), "{out}");
    assert!(
        logs.contains("remove_connection"),
        "kvnode logs the disconnect it was asked for:\n{logs}"
    );
}

/// prevent_overlapping_partitions, kvnode's side: when two BEAM nodes lose their link,
/// each tells kvnode (`lost_connection`) and kvnode asks the node now in the other partition
/// to disconnect from it (`remove_connection`), as a BEAM node in its place would, instead of
/// bridging both partitions.
#[test]
fn lost_connection_makes_kvnode_leave_the_other_partition() {
    let (_, logs) = in_full_mesh(
        r#"
# We lose a: kvnode hears it from both sides and leaves both partitions.
true = :erlang.disconnect_node(a)
TestWait.until(fn -> not (kv in Node.list()) end, 30_000)
:ok = :global.sync()
"#,
    );
    assert!(
        logs.contains("lost_connection"),
        "kvnode logs the disconnect it requested:\n{logs}"
    );
}

/// kvnode, one BEAM node `a` and the script node, all connected to each other and synced; then
/// `scenario` (it sees `kv` and `a`). Returns the script's stdout and kvnode's logs.
fn in_full_mesh(scenario: &str) -> (String, String) {
    let cluster = visible_cluster(1, &[], |_, _| String::new());
    let (kv, a) = (cluster.kv(), &cluster.beams[0].name);
    let script = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
a = :"{a}"
TestWait.until(fn -> Node.connect(a) end, 60_000)
true = Node.connect(kv)
true = :erpc.call(a, Node, :connect, [kv])
:ok = :global.sync()
:ok = :erpc.call(a, :global, :sync, [], 60_000)
{scenario}
"#
    );
    let out = elixir(kv, &unique("vis_c"), "vis", &script);
    (out, kv.logs())
}

/// The visible-only flags are refused without `--visible`, and malformed values with a clear
/// error.
#[test]
fn visible_flags_are_checked() {
    let err = kvnode_refuses(&["--global-name", "kv_store"]);
    assert!(err.contains("--visible"), "{err}");
    let err = kvnode_refuses(&["--pg", "kvscope:kvgroup"]);
    assert!(err.contains("--visible"), "{err}");
    let err = kvnode_refuses(&["--visible", "--pg", "no_colon"]);
    assert!(err.contains("SCOPE:GROUP"), "{err}");
    let err = kvnode_refuses(&["--visible", "--pg", ":group"]);
    assert!(err.contains("scope"), "{err}");
    let long = "a".repeat(256);
    let err = kvnode_refuses(&["--visible", "--global-name", &long]);
    assert!(err.contains("1 to 255"), "{err}");
}

/// `--max-global-names` bounds kvnode's copy of the name table: registrations beyond it are
/// still answered (the BEAM node's `register_name` returns `:yes` at once) but not kept.
#[test]
fn global_names_are_bounded() {
    let cluster = visible_kv(&["--max-global-names", "3"]);
    let kv = cluster.kv();
    register_ten(
        kv,
        "bounded",
        ":yes = :global.register_name({:bounded, i}, p)",
    );
    kv.wait_log("too many names", Duration::from_secs(30));
}

/// From a fresh Elixir node synced with kvnode: 10 global names `{:<tag>, i}`, each registered
/// by `register` (which sees `i` and a fresh process `p`), are all in `registered_names()`.
fn register_ten(kv: &KvNode, tag: &str, register: &str) {
    let script = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
true = Node.connect(kv)
:ok = :global.sync()
for i <- 1..10 do
  p = spawn(fn -> receive do _ -> :ok end end)
  {register}
end
10 = length(for {{:{tag}, _}} = n <- :global.registered_names(), do: n)
"#
    );
    elixir(kv, &unique("vis_c"), "vis", &script);
}

/// A node kvnode learns of (`new_nodes`, `resolved`) but cannot reach is forgotten, as OTP's
/// `global` forgets it (`sync_other/2` fails, `extra_nodedown`). Otherwise it stays in kvnode's
/// known set for good: kvnode lists it to every node that joins (which then tries to reach it),
/// casts `new_nodes` to it on every handshake, and a peer sending names of nodes that do not
/// exist fills the set (`MAX_KNOWN_NODES`) until real nodes are no longer learned (their
/// `:global.sync()` then blocks).
#[test]
fn unreachable_known_nodes_are_forgotten() {
    let cluster = visible_kv(&[]);
    let kv = cluster.kv();
    let ghost = format!("{}@127.0.0.1", unique("vis_ghost"));
    let script = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
ghost = :"{ghost}"
true = Node.connect(kv)
:ok = :global.sync()
# As a BEAM node's global tells the nodes it knows about a node that joined it.
GenServer.cast({{:global_name_server, kv}}, {{:new_nodes, node(), [], [], [{{ghost, 8}}], [{{:vsn, 8}}]}})
TestWait.until(fn -> not (ghost in GenServer.call({{:global_name_server, kv}}, :get_known)) end, 30_000)
true = node() in GenServer.call({{:global_name_server, kv}}, :get_known)
"#
    );
    elixir(kv, &unique("vis_c"), "vis", &script);
    kv.wait_log("cannot be reached; forgotten", Duration::from_secs(30));
}

/// `--max-global-name-bytes` bounds the bytes of kvnode's copy of the name table, not only the
/// count (`--max-global-names`): a name's resolve method comes from the peer (a closure with
/// its environment), so 100,000 names of up to a message's size each could take any memory.
/// Registrations beyond it are still answered (`:yes` at once) but not kept.
#[test]
fn global_name_bytes_are_bounded() {
    let cluster = visible_kv(&["--max-global-name-bytes", "100000"]);
    let kv = cluster.kv();
    // A resolve method carrying 64 KB: far over the budget after two names.
    let register = r#"
big = :binary.copy(<<i>>, 64_000)
method = fn name, p1, p2 -> byte_size(big) > 0 and :global.random_exit_name(name, p1, p2) end
:yes = :global.register_name({:big, i}, p, method)
"#;
    register_ten(kv, "big", register);
    kv.wait_log("names are at their byte limit", Duration::from_secs(30));
}

/// kvnode's locker is active, as OTP's: a node that knows others waits ~1.1 s before its
/// locker locks a newcomer, one that knows none ~200 ms. First, BEAM newcomers join a kvnode
/// that knows no node: both lockers lock at once with the same lock id, and the handshakes
/// still finish, round after round. Then kvnode (knowing none) joins a BEAM node that knows
/// another: kvnode's locker must take the lock (its `lock_set` first), not wait for the BEAM
/// locker's longer wait as the passive locker it was did.
#[test]
fn kvnode_locker_locks_first_when_it_knows_fewer_nodes() {
    let mut cluster = visible_kv(&[]);
    let round = r#"
kv = String.to_atom(System.get_env("KV_NODE"))
true = Node.connect(kv)
:ok = :global.sync()
true = kv in GenServer.call(:global_name_server, :get_known)
IO.puts("ROUND_OK")
"#;
    for _ in 0..3 {
        let out = elixir(cluster.kv(), &unique("vis_d"), "vis", round);
        assert!(out.contains("ROUND_OK"), "{out}");
    }
    let b = cluster.add_beam("").name.clone();
    let kv = cluster.kv();
    let c = unique("vis_c");
    let script = format!(
        r#"
kv = String.to_atom(System.get_env("KV_NODE"))
b = :"{b}"
TestWait.until(fn -> Node.connect(b) end, 60_000)
:ok = :global.sync()
true = Node.connect(kv)
:ok = :global.sync()
true = kv in GenServer.call(:global_name_server, :get_known)
IO.puts("JOINED")
"#
    );
    let before = kv.logs().len();
    let out = elixir(kv, &c, "vis", &script);
    assert!(out.contains("JOINED"), "{out}");
    let logs = kv.logs();
    let first = logs[before..]
        .lines()
        .any(|l| l.contains("lock_set sent (kvnode's locker first)") && l.contains(&c));
    assert!(
        first,
        "kvnode's locker took the lock with {c} (kvnode knew no node, {c} knew one):\n{logs}"
    );
    // The peer's locker locked its side with the same lock id (Erlang's pid order) and answered.
    let answered = logs[before..]
        .lines()
        .any(|l| l.contains("the peer's locker answered our lock_set") && l.contains(&c));
    assert!(answered, "{c}'s locker answered kvnode's lock_set:\n{logs}");
}
