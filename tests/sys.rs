//! System messages (`:sys`) and `GenServer.stop` on the KV process, each script run against
//! kvnode and against a BEAM node hosting a supervised `DistributedExample.KVStore` (its data
//! in an ETS table that outlives the GenServer), so kvnode must answer as BEAM does.

mod common;

use common::*;

/// Boot code for the reference node: `DistributedExample.KVStore` under a supervisor, keeping
/// its data in an ETS table owned by a process that lives as long as the node.
const BEAM_KV: &str = r#"
defmodule DistributedExample.KVStore do
  use GenServer
  def init(_), do: {:ok, %{}}
  def handle_call({:get, k}, _from, s) do
    v = case :ets.lookup(:kv_data, k) do
      [{^k, v}] -> v
      [] -> nil
    end
    {:reply, v, s}
  end
  def handle_call({:put, k, v}, _from, s) do
    :ets.insert(:kv_data, {k, v})
    {:reply, :ok, s}
  end
end
spawn(fn ->
  :ets.new(:kv_data, [:named_table, :public])
  {:ok, _} = Supervisor.start_link(
    [%{id: :kv, start: {GenServer, :start_link, [DistributedExample.KVStore, nil, [name: DistributedExample.KVStore]]}}],
    strategy: :one_for_one, max_restarts: 100)
  Process.sleep(:infinity)
end)
"#;

/// Prepended to each script: `target`, `store`, `is_kv`, and a wait for the target's KV
/// process.
const PRELUDE: &str = r#"
target = String.to_atom(System.fetch_env!("TARGET"))
is_kv = System.fetch_env!("TARGET_KIND") == "kvnode"
store = {DistributedExample.KVStore, target}
whereis = fn -> :rpc.call(target, :erlang, :whereis, [DistributedExample.KVStore]) end
TestWait.until(fn -> Node.connect(target) == true and is_pid(whereis.()) end, 60_000)
_ = is_kv
"#;

/// Runs `script` against kvnode (started with `kv_args`) and against a BEAM node hosting the
/// same GenServer; both runs must print SCRIPT-OK. Returns both outputs.
fn against_both(prefix: &str, kv_args: &[&str], script: &str) -> (String, String) {
    let cookie = unique("cookie");
    let kv = KvNode::start_with(&unique(prefix), &cookie, free_port(), kv_args);
    let beam_alive = unique("beamkv");
    let _beam = BeamNode::start(&beam_alive, &cookie, kv.epmd_port, BEAM_KV);
    let beam = format!("{beam_alive}@127.0.0.1");
    let full = format!("{PRELUDE}\n{script}\nIO.puts(\"SCRIPT-OK\")\n");
    let mut outs = Vec::new();
    for (kind, name) in [("beam", beam.clone()), ("kvnode", kv.name.clone())] {
        let out = elixir_env(
            &kv,
            &unique("sys"),
            &cookie,
            &full,
            &[("TARGET", name), ("TARGET_KIND", kind.to_owned())],
        );
        assert!(out.contains("SCRIPT-OK"), "{kind}: {out}");
        println!("--- {kind}\n{out}");
        outs.push(out);
    }
    let kv_out = outs.pop().unwrap_or_default();
    let beam_out = outs.pop().unwrap_or_default();
    (beam_out, kv_out)
}

/// `:sys.get_state`, `:sys.get_status` (a gen_server's shape), `:sys.statistics`,
/// `:sys.log`, `:sys.trace` and an unknown system message.
#[test]
fn system_messages_answer_as_a_gen_server() {
    let (beam, kv) = against_both(
        "kv_sys",
        &[],
        r#":ok = GenServer.call(store, {:put, :a, 1})
TestCheck.run("get_state and get_status", fn ->
# OTP 27+ servers answer get_state with {:ok, state} (and their sys:get_state unwraps it);
# OTP 25's answer the bare state and pass the reply through. kvnode answers as OTP 27+.
{:ok, raw} = :gen.call(store, :system, :get_state, 10_000)
state = case raw do
  {:ok, s} -> s
  s -> s
end
if is_kv, do: {:ok, ^state} = raw
true = :sys.get_state(store, 10_000) in [state, raw]
if is_kv do
  %{keys: 1, subscribers: 0, subscriptions: 0, storage: :memory} = state
else
  %{} = state
end
pid = whereis.()
{:status, ^pid, {:module, :gen_server}, [pdict, :running, parent, [], misc]} =
  :sys.get_status(store, 10_000)
true = is_list(pdict) and is_pid(parent)
{_, {_mod, :init, 1}} = List.keyfind(pdict, :"$initial_call", 0)
[{:header, header}, {:data, data}, {:data, [{'State', ^state}]}] = misc
'Status for generic server Elixir.DistributedExample.KVStore' = header
[{'Status', :running}, {'Parent', ^parent}, {'Logged events', []}] = data
IO.puts("STATUS-SHAPE-OK")
end)

TestCheck.run("statistics", fn ->
:ok = :sys.statistics(store, true, 10_000)
:ok = GenServer.call(store, {:put, :b, 2})
2 = GenServer.call(store, {:get, :b})
{:ok, stats} = :sys.statistics(store, :get, 10_000)
[:start_time, :current_time, :reductions, :messages_in, :messages_out] = Keyword.keys(stats)
{{y, _, _}, {_, _, _}} = stats[:start_time]
true = y >= 2024
true = stats[:messages_in] >= 2 and stats[:messages_out] >= 2
:ok = :sys.statistics(store, false, 10_000)
{:ok, :no_statistics} = :sys.statistics(store, :get, 10_000)
IO.puts("STATISTICS-OK")
end)

TestCheck.run("log and trace", fn ->
:ok = :sys.log(store, true, 10_000)
{:ok, _events} = :sys.log(store, :get, 10_000)
:ok = :sys.log(store, false, 10_000)
:ok = :sys.trace(store, true, 10_000)
:ok = :sys.trace(store, false, 10_000)
:ok = :sys.no_debug(store, 10_000)
IO.puts("LOG-TRACE-OK")
end)

TestCheck.run("unknown system messages", fn ->
unknown = :gen.call(store, :system, {:no_such_request, 1}, 10_000)
IO.inspect(unknown, label: "UNKNOWN")
{:ok, {:error, {:unknown_system_msg, {:no_such_request, 1}}}} = unknown
{:ok, :unknown_debug} = :gen.call(store, :system, {:debug, :nonsense}, 10_000)
end)
# Still serving.
1 = GenServer.call(store, {:get, :a})
TestCheck.finish()
"#,
    );
    for out in [&beam, &kv] {
        for mark in ["STATUS-SHAPE-OK", "STATISTICS-OK", "LOG-TRACE-OK"] {
            assert!(out.contains(mark), "{out}");
        }
    }
    let unknown = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("UNKNOWN"))
            .map(str::to_owned)
    };
    assert_eq!(unknown(&beam), unknown(&kv));
}

/// `:sys.suspend` holds calls (system messages still answer) until `:sys.resume`.
#[test]
fn suspend_holds_calls_until_resume() {
    against_both(
        "kv_susp",
        &[],
        r#"
:ok = GenServer.call(store, {:put, :s, :before})
:ok = :sys.suspend(store, 10_000)
parent = self()
caller = spawn(fn ->
  send(parent, :calling)
  send(parent, {:answer, GenServer.call(store, {:get, :s}, 30_000)})
end)
receive do :calling -> :ok end
# A system message sent after the call (same connection, so it arrives after it) is
# answered while the call waits.
{:status, _, _, [_, :suspended, _, _, _]} = :sys.get_status(store, 10_000)
_ = :sys.get_state(store, 10_000)
receive do
  {:answer, a} -> raise "answered while suspended: #{inspect(a)}"
after 0 -> :ok
end
true = Process.alive?(caller)
:ok = :sys.resume(store, 10_000)
receive do
  {:answer, :before} -> :ok
after 10_000 -> raise "no answer after resume"
end
{:status, _, _, [_, :running, _, _, _]} = :sys.get_status(store, 10_000)
:ok = GenServer.call(store, {:put, :s, :after})
:after = GenServer.call(store, {:get, :s})
"#,
    );
}

/// The `GenServer.stop` script: returns `:ok`, a monitor fires with the reason, a call in
/// flight exits with it, a new pid takes the name and the data is still there.
const STOP: &str = r#"
# (A module function: OTP 25's compiler crashes on receives of monitor refs in a script.)
defmodule Down do
  def wait(ref) do
    receive do
      {:DOWN, ^ref, :process, object, reason} -> {object, reason}
    after 10_000 -> raise "no DOWN"
    end
  end
end
:ok = GenServer.call(store, {:put, :k, "kept"})
old = whereis.()
ref = Process.monitor(store)
# A call in flight: held by a suspended server, so the stop overtakes it.
parent = self()
# A process linked to the server (trapping exits) gets its exit signal.
spawn(fn ->
  Process.flag(:trap_exit, true)
  Process.link(old)
  send(parent, :linked)
  receive do
    {:EXIT, ^old, r} -> send(parent, {:linked_exit, r})
  after 30_000 -> :ok
  end
end)
receive do :linked -> :ok end
:ok = :sys.suspend(store, 10_000)
spawn(fn ->
  send(parent, :calling)
  r = try do
    GenServer.call(store, {:get, :k}, 30_000)
  catch
    :exit, reason -> {:exited, reason}
  end
  send(parent, {:in_flight, r})
end)
receive do :calling -> :ok end
_ = :sys.get_state(store, 10_000)
:ok = GenServer.stop(store, :normal, 10_000)
{{DistributedExample.KVStore, ^target}, :normal} = Down.wait(ref)
receive do
  {:in_flight, {:exited, {:normal, {GenServer, :call, _}}}} -> :ok
  {:in_flight, other} -> raise "in-flight call: #{inspect(other)}"
after 10_000 -> raise "in-flight call never ended"
end
receive do
  {:linked_exit, :normal} -> :ok
after 10_000 -> raise "no exit signal to the linked process"
end
new = TestWait.until(fn -> p = whereis.(); is_pid(p) and p != old and p end)
true = node(new) == target
"kept" = GenServer.call(store, {:get, :k})
IO.puts("FIRST-STOP-OK")

# Another reason, stopped while running; the new process answers and can be stopped too.
ref2 = Process.monitor(store)
:ok = GenServer.stop(store, {:shutdown, :test}, 10_000)
{_, {:shutdown, :test}} = Down.wait(ref2)
third = TestWait.until(fn -> p = whereis.(); is_pid(p) and p != new and p end)
"kept" = GenServer.call(store, {:get, :k})
:ok = GenServer.call(store, {:put, :k2, 2})
2 = GenServer.call(store, {:get, :k2})
# A pid monitor on the new process fires too.
ref3 = Process.monitor(third)
:ok = GenServer.stop(store, :normal, 10_000)
{^third, :normal} = Down.wait(ref3)
TestWait.until(fn -> p = whereis.(); is_pid(p) and p != third end)
2 = GenServer.call(store, {:get, :k2})
"#;

#[test]
fn genserver_stop_restarts_with_the_data() {
    let (beam, kv) = against_both("kv_stop", &[], STOP);
    assert!(beam.contains("FIRST-STOP-OK") && kv.contains("FIRST-STOP-OK"));
}

#[test]
fn genserver_stop_restarts_with_the_data_on_disk() {
    let dir = std::env::temp_dir().join(unique("kv_stop_data"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dir_s = dir.display().to_string();
    let (_, kv) = against_both("kv_stopd", &["--data-dir", &dir_s], STOP);
    assert!(kv.contains("FIRST-STOP-OK"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Monitors peers place on the KV process are recorded only while held: a run of calls
/// leaves none behind, a held monitor is counted, and it goes with the peer's connection.
#[test]
fn monitor_records_follow_calls_demonitors_and_disconnects() {
    let kv = KvNode::fresh("kv_mons");
    kv.script(
        "mons",
        r#"
monitored = fn -> Map.fetch!(:rpc.call(kv, :kvnode, :info, []), :monitored_by) end
:ok = GenServer.call(store, {:put, :m, 1})
1..4
|> Enum.map(fn _ -> Task.async(fn -> for _ <- 1..500, do: 1 = GenServer.call(store, {:get, :m}) end) end)
|> Enum.each(&Task.await(&1, 60_000))
TestWait.until(fn -> monitored.() == 0 end)
ref = Process.monitor(store)
1 = monitored.()
true = Process.demonitor(ref)
TestWait.until(fn -> monitored.() == 0 end)
_ = Process.monitor(store)
_ = Process.monitor(store)
2 = monitored.()
"#,
    );
    // That node is gone: its monitors went with its connection.
    kv.script(
        "mons2",
        r#"
TestWait.until(fn -> Map.fetch!(:rpc.call(kv, :kvnode, :info, []), :monitored_by) == 0 end, 30_000)
"#,
    );
}

/// A link from a peer's process goes when that process exits (its EXIT signal), when it
/// unlinks, and when its node disconnects: short-lived linked processes leave nothing behind.
#[test]
fn links_go_when_the_linked_process_exits_unlinks_or_disconnects() {
    let kv = KvNode::fresh("kv_links");
    kv.script(
        "links",
        r#"
linked = fn -> Map.fetch!(:rpc.call(kv, :kvnode, :info, []), :linked_by) end
:ok = GenServer.call(store, {:put, :l, 1})
server = :rpc.call(kv, :erlang, :whereis, [DistributedExample.KVStore])
true = is_pid(server)
# 50 short-lived processes link to the server and exit normally (each waits for :go, so
# the link is in place before it exits).
for _ <- 1..50 do
  pid = spawn(fn -> Process.link(server); receive do :go -> :ok end end)
  TestWait.until(fn -> linked.() == 1 end)
  send(pid, :go)
  TestWait.until(fn -> linked.() == 0 end)
end
# An unlink removes it too.
Process.link(server)
TestWait.until(fn -> linked.() == 1 end)
Process.unlink(server)
TestWait.until(fn -> linked.() == 0 end)
# One held link, left for the disconnect below.
Process.link(server)
TestWait.until(fn -> linked.() == 1 end)
"#,
    );
    kv.script(
        "links2",
        r#"
TestWait.until(fn -> Map.fetch!(:rpc.call(kv, :kvnode, :info, []), :linked_by) == 0 end, 30_000)
"#,
    );
}

/// A peer holding more monitors than `--max-monitors-per-peer` is disconnected (its monitors
/// fire `noconnection` on its side); it can connect again and call.
#[test]
fn a_peer_over_the_monitor_bound_is_disconnected() {
    let kv = KvNode::fresh_with("kv_monmax", &["--max-monitors-per-peer", "10"]);
    kv.script(
        "monmax",
        r#"
:ok = GenServer.call(store, {:put, :x, 1})
true = Node.monitor(kv, true)
refs = for _ <- 1..9, do: Process.monitor(store)
# The call's own monitor is the 10th: still within the bound.
1 = GenServer.call(store, {:get, :x})
_ = Process.monitor(store)
_ = Process.monitor(store)
receive do
  {:nodedown, ^kv} -> :ok
after 10_000 -> raise "not disconnected"
end
{:DOWN, _, :process, _, :noconnection} = receive do m -> m after 10_000 -> :none end
_ = refs
TestWait.until(fn -> Node.connect(kv) == true end)
1 = GenServer.call(store, {:get, :x})
"#,
    );
    assert!(
        kv.logs().contains("--max-monitors-per-peer"),
        "{}",
        kv.logs()
    );
}
