//! kvnode against real Elixir nodes: the README's iex session, the KV interface with edge
//! terms, ping, noproc, rpc, cookies, late replies, subscriptions.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn readme_iex_session() {
    let kv = KvNode::fresh("kv_readme");
    kv.script(
        "me",
        r#"
:ok = GenServer.cast(store, {:put, :message, "Hello, world!"})
"Hello, world!" = GenServer.call(store, {:get, :message})
:pong = Node.ping(kv)
true = kv in Node.list(:hidden)
false = kv in Node.list()
"#,
    );
}

#[test]
fn every_kv_operation_with_edge_terms() {
    let kv = KvNode::fresh("kv_ops");
    kv.script(
        "ops",
        r#"
c = fn req -> GenServer.call(store, req) end
nil = c.({:get, :missing})
:dflt = c.({:get, :missing, :dflt})
:ok = c.({:put, 1, :int})
:ok = c.({:put, 1.0, :float})
:int = c.({:get, 1})
:float = c.({:get, 1.0})
:ok = c.({:put, 0.0, :pos_zero})
big = 123456789012345678901234567890
:ok = c.({:put, big, -big})
^big = -c.({:get, big})
:ok = c.({:put, :"ünïcødé_атом", "значение"})
"значение" = c.({:get, :"ünïcødé_атом"})
k1 = %{a: 1, b: %{c: [1, 2, 3]}, d: {1, "x"}}
k2 = Map.new(Enum.reverse(Map.to_list(k1)))
:ok = c.({:put, k1, :map_value})
:map_value = c.({:get, k2})
:ok = c.({:put, :me, self()})
me = self()
^me = c.({:get, :me})
:ok = c.({:put, ~c"abc", :charlist})
:charlist = c.({:get, [?a, ?b, ?c]})
big_bin = :binary.copy(<<7>>, 8 * 1024 * 1024)
:ok = c.({:put, :big, big_bin})
^big_bin = c.({:get, :big})
{:error, :exists} = c.({:put_new, 1, :again})
:ok = c.({:put_new, :fresh, 1})
:ok = c.({:cas, :fresh, 1, 2})
{:error, {:mismatch, 2}} = c.({:cas, :fresh, 1, 3})
{:error, {:mismatch, nil}} = c.({:cas, :absent, 1, 3})
:ok = c.({:cas, :absent, nil, :now})
5 = c.({:incr, :counter, 5})
7 = c.({:incr, :counter, 2})
n = 2_147_483_647
m = n + 7
^m = c.({:incr, :counter, n})
{:error, :not_integer} = c.({:incr, :big, 1})
:ok = c.({:delete, :counter})
nil = c.({:get, :counter})
:ok = c.({:delete, :never_there})
keys = c.(:keys)
true = is_list(keys) and big in keys and k1 in keys
size = c.(:size)
^size = length(keys)
{:error, {:unknown_request, {:frobnicate, 1}}} = c.({:frobnicate, 1})
GenServer.cast(store, {:delete, 1})
GenServer.cast(store, {:put, :after_cast, :seen})
:seen = c.({:get, :after_cast})
nil = c.({:get, 1})
"#,
    );
}

#[test]
fn missing_name_exits_noproc_at_once_and_ping_pongs() {
    let kv = KvNode::fresh("kv_noproc");
    kv.script(
        "np",
        r#"
{t, res} = :timer.tc(fn ->
  try do
    GenServer.call({:no_such_process, kv}, :hello, 10_000)
  catch
    :exit, reason -> reason
  end
end)
{:noproc, {GenServer, :call, _}} = res
true = t < 2_000_000
:pong = Node.ping(kv)
:pong = :net_adm.ping(kv)
"#,
    );
}

#[test]
fn rpc_supported_and_unsupported_like_a_beam_node() {
    let kv = KvNode::fresh("kv_rpc");
    // A plain BEAM node answers the unsupported call, for comparison.
    let beam_alive = unique("beamref");
    let _beam = BeamNode::start(&beam_alive, &kv.cookie, kv.epmd_port, "");
    let beam = format!("{beam_alive}@127.0.0.1");
    kv.script(
        "rpc",
        &format!(
            r#"
beam = :"{beam}"
^kv = :rpc.call(kv, :erlang, :node, [])
pid = :rpc.call(kv, :os, :getpid, [])
true = is_list(pid) and List.to_integer(pid) > 0
mem = :rpc.call(kv, :erlang, :memory, [])
true = Keyword.fetch!(mem, :total) > 0
[] = :rpc.call(kv, :erlang, :nodes, [])
:ok = :rpc.call(kv, DistributedExample.KVStore, :put, [:via_rpc, 42])
42 = :rpc.call(kv, DistributedExample.KVStore, :get, [:via_rpc])
42 = GenServer.call(store, {{:get, :via_rpc}})
:ok = :rpc.call(kv, DistributedExample.KVStore, :delete, [:via_rpc])
nil = :rpc.call(kv, DistributedExample.KVStore, :get, [:via_rpc])
^kv = :erpc.call(kv, :erlang, :node, [])
# wait for the reference node
TestWait.until(fn -> Node.connect(beam) end)
theirs = :rpc.call(beam, :no_such_module, :no_such_fun, [1, "two"])
ours = :rpc.call(kv, :no_such_module, :no_such_fun, [1, "two"])
IO.inspect({{theirs, ours}})
^theirs = ours
{{:badrpc, {{:EXIT, {{:undef, _}}}}}} = ours
theirs2 = :rpc.call(beam, :erlang, :no_such_fun, [])
^theirs2 = :rpc.call(kv, :erlang, :no_such_fun, [])
"#
        ),
    );
}

#[test]
fn wrong_cookie_is_rejected_and_service_goes_on() {
    let kv = KvNode::fresh("kv_cookie");
    let out = elixir(
        &kv,
        &unique("bad"),
        "not-the-cookie",
        r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
false = Node.connect(kv)
IO.puts("SCRIPT-OK")
"#,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    kv.wait_log("different cookie", Duration::from_secs(10));
    assert!(!kv.logs().contains("not-the-cookie"));
    assert!(
        !kv.logs().contains(&kv.cookie),
        "the cookie must never be logged"
    );
    kv.script("good", ":pong = Node.ping(kv)");
}

#[test]
fn late_replies_after_timeouts_do_not_corrupt_later_calls() {
    let kv = KvNode::fresh("kv_late");
    kv.script(
        "late",
        r#"
:ok = GenServer.call(store, {:put, :k, 1})
timeouts = Enum.count(1..200, fn i ->
  try do
    GenServer.call(store, {:put, {:late, i}, :binary.copy("x", 10_000)}, 0)
    false
  catch
    :exit, {:timeout, _} -> true
  end
end)
IO.puts("timeouts: #{timeouts}")
for i <- 1..200 do
  ^i = GenServer.call(store, {:incr, :n, 1})
end
1 = GenServer.call(store, {:get, :k})
# replies that arrived after their timeout must not sit in the mailbox (ALIAS_SEND)
{:messages, msgs} = Process.info(self(), :messages)
[] = msgs
"#,
    );
}

#[test]
fn subscriptions_and_subscriber_death() {
    let kv = KvNode::fresh("kv_subs");
    kv.script(
        "subs",
        r#"
:ok = GenServer.call(store, {:subscribe, :watched})
:ok = GenServer.call(store, {:subscribe, :all})
2 = GenServer.call(store, :subscribers)
:ok = GenServer.call(store, {:put, :watched, 1})
receive do {:kv_event, :watched, {:put, 1}} -> :ok after 5_000 -> raise "no put event" end
receive do {:kv_event, :watched, _} -> raise "duplicate event" after 200 -> :ok end
:ok = GenServer.call(store, {:delete, :watched})
receive do {:kv_event, :watched, :delete} -> :ok after 5_000 -> raise "no delete event" end
:ok = GenServer.call(store, {:unsubscribe, :all})
:ok = GenServer.call(store, {:unsubscribe, :watched})
0 = GenServer.call(store, :subscribers)
# a subscriber that dies is dropped
parent = self()
pid = spawn(fn ->
  :ok = GenServer.call(store, {:subscribe, :all})
  send(parent, :subscribed)
  receive do :stop -> :ok end
end)
receive do :subscribed -> :ok after 5_000 -> raise "no subscribe" end
1 = GenServer.call(store, :subscribers)
send(pid, :stop)
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end)
"#,
    );
}

/// A subscriber whose node goes away is dropped too.
#[test]
fn a_subscriber_whose_node_goes_away_is_dropped() {
    let kv = KvNode::fresh("kv_subs_gone");
    kv.script("subs2", ":ok = GenServer.call(store, {:subscribe, :all})");
    kv.script(
        "subs3",
        r#"
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end)
"#,
    );
}

/// Calls that time out before their reply arrives (timeout 0: the reply always comes late),
/// for the requests answered through the decoding path: the late replies must be dropped by
/// the caller's runtime (they come by ALIAS_SEND to the call's alias, which the timeout
/// deactivated), never left in its mailbox. Each effect is checked, so the replies were sent.
const LATE_REPLIES: &str = r#"
late = fn req ->
  try do
    GenServer.call(store, req, 0)
    raise "a call with timeout 0 returned"
  catch
    :exit, {:timeout, _} -> :ok
  end
end
:ok = GenServer.call(store, {:put, :c, 0})
for i <- 1..50 do
  late.({:incr, :n, 1})
  late.({:cas, :c, i - 1, i})
  late.({:put_new, {:fresh, i}, i})
  late.({:subscribe, {:topic, i}})
  late.({:unsubscribe, {:topic, i}})
end
# Requests from one process are applied in order: this call's reply comes after every late one.
50 = GenServer.call(store, {:get, :n})
50 = GenServer.call(store, {:get, :c})
50 = GenServer.call(store, {:get, {:fresh, 50}})
0 = GenServer.call(store, :subscribers)
{:messages, msgs} = Process.info(self(), :messages)
if msgs != [], do: raise("late replies landed in the mailbox: #{inspect(Enum.take(msgs, 3))}")
"#;

#[test]
fn late_replies_of_decoded_requests_are_dropped_by_the_caller() {
    let kv = KvNode::fresh("kv_late2");
    kv.script("late2", LATE_REPLIES);
}

/// The same with `--data-dir`: replies to writes go out from the storage thread once the
/// write is durable, still by ALIAS_SEND.
#[test]
fn late_replies_from_the_storage_thread_are_dropped_by_the_caller() {
    let dir = std::env::temp_dir().join(unique("kvnode_late_data"));
    let dir_s = dir.display().to_string();
    let kv = KvNode::fresh_with("kv_late3", &["--data-dir", &dir_s]);
    kv.script("late3", LATE_REPLIES);
    drop(kv);
    let _ = std::fs::remove_dir_all(dir);
}

/// Baseline for the two tests below, from a node of its own: no monitors, no subscriptions.
const NO_SUBSCRIPTIONS: &str = r#"
%{monitors: 0, subscriptions: 0} = :rpc.call(kv, :kvnode, :info, [])
"#;

/// A subscriber's whole node goes away while the subscriber lives: here the node
/// disconnects itself from kvnode (`:erlang.disconnect_node`). kvnode drops its
/// subscriptions and monitors, back to exactly the baseline.
#[test]
fn subscriptions_go_when_the_subscribers_node_disconnects() {
    let kv = KvNode::fresh("kv_subs_nodedown");
    // Baseline, from a node of its own.
    kv.script("base", NO_SUBSCRIPTIONS);

    // The subscriber's node disconnects; the subscriber process stays alive.
    kv.script(
        "disc",
        r#"
parent = self()
sub = spawn(fn ->
  :ok = GenServer.call(store, {:subscribe, :all})
  :ok = GenServer.call(store, {:subscribe, :k})
  send(parent, :subscribed)
  receive do :never -> :ok end
end)
receive do :subscribed -> :ok after 10_000 -> raise "no subscription" end
%{monitors: 1, subscriptions: 2} = :rpc.call(kv, :kvnode, :info, [])
true = :erlang.disconnect_node(kv)
true = Process.alive?(sub)
# Reconnects for the look: the subscriptions went with the old connection.
TestWait.until(fn -> match?(%{monitors: 0, subscriptions: 0}, :rpc.call(kv, :kvnode, :info, [])) end)
0 = GenServer.call(store, :subscribers)
true = Process.alive?(sub)
"#,
    );
}

/// As above, but the subscriber's node is killed (SIGKILL of its OS process): the socket
/// closes without a word.
#[test]
fn subscriptions_go_when_the_subscribers_node_dies() {
    let kv = KvNode::fresh("kv_subs_nodedies");
    kv.script("base", NO_SUBSCRIPTIONS);
    let sub_alive = unique("doomed");
    let boot = format!(
        r#"
kv = :"{kv}"
true = Node.connect(kv)
store = {{DistributedExample.KVStore, kv}}
spawn(fn ->
  :ok = GenServer.call(store, {{:subscribe, :all}})
  :ok = GenServer.call(store, {{:subscribe, :k}})
  :ok = GenServer.call(store, {{:put, :doomed_subscribed, true}})
  receive do :never -> :ok end
end)
"#,
        kv = kv.name
    );
    let doomed = BeamNode::start(&sub_alive, &kv.cookie, kv.epmd_port, &boot);
    kv.script(
        "watch",
        r#"
TestWait.until(fn -> GenServer.call(store, {:get, :doomed_subscribed}) end, 60_000)
%{monitors: 1, subscriptions: 2} = :rpc.call(kv, :kvnode, :info, [])
"#,
    );
    drop(doomed); // SIGKILL: the socket closes without a word
    kv.script(
        "after",
        r#"
TestWait.until(fn -> match?(%{monitors: 0, subscriptions: 0}, :rpc.call(kv, :kvnode, :info, [])) end, 30_000)
0 = GenServer.call(store, :subscribers)
"#,
    );
}

/// Boot code for a far node: a process registered as `:far` that makes aliases on request
/// (`{:new_alias, active?}`; an inactive one is unaliased at once) and forwards what else it
/// receives, as `{:far_got, msg}`, to the pid last sent as `{:report_to, pid}`.
const FAR: &str = r#"
defmodule Far do
  def loop(to) do
    receive do
      {:report_to, pid} -> loop(pid)
      {:new_alias, active} ->
        a = :erlang.alias()
        if not active, do: :erlang.unalias(a)
        send(to, {:far_alias, a})
        loop(to)
      :stop -> :ok
      msg -> send(to, {:far_got, msg}); loop(to)
    end
  end
end
Process.register(spawn(fn -> Far.loop(nil) end), :far)
"#;

/// A call made on behalf of a process on a node kvnode is not connected to: kvnode must
/// dial it, and only then, knowing its flags, send the monitor (MONITOR_P: the node has
/// DIST_MONITOR) and the reply (ALIAS_SEND: it has ALIAS, so a reply to an alias that is no
/// longer active is dropped there, never delivered as a plain message). The monitor works:
/// the far process exiting drops its subscriptions while its node stays connected.
#[test]
fn replies_and_monitors_toward_a_node_being_dialed_take_its_flags() {
    let kv = KvNode::fresh("kv_deferred");
    let b = unique("far");
    let _b = BeamNode::start(&b, &kv.cookie, kv.epmd_port, FAR);
    kv.script("driver", &format!(
            r#"
b = :"{b}@127.0.0.1"
connected = fn -> b in :rpc.call(kv, :erlang, :nodes, [:connected]) end
TestWait.until(fn -> Node.connect(b) end)
false = connected.()
far = TestWait.until(fn -> :rpc.call(b, Process, :whereis, [:far]) end)
send(far, {{:report_to, self()}})
send(far, {{:new_alias, false}})
dead = receive do {{:far_alias, a}} -> a after 10_000 -> raise "no alias" end
send(store, {{:"$gen_call", {{far, [:alias | dead]}}, {{:subscribe, :all}}}})
TestWait.until(fn -> GenServer.call(store, :subscribers) == 1 end)
TestWait.until(connected)
send(far, {{:new_alias, true}})
live = receive do {{:far_alias, a}} -> a after 10_000 -> raise "no alias" end
send(store, {{:"$gen_call", {{far, [:alias | live]}}, {{:subscribe, :k}}}})
receive do {{:far_got, {{[:alias | ^live], :ok}}}} -> :ok after 10_000 -> raise "no reply by alias" end
# Sent before the reply above: had it been delivered, it would be here by now.
receive do
  {{:far_got, {{[:alias | ^dead], _}} = m}} -> raise "a reply to an inactive alias was delivered: #{{inspect(m)}}"
after 0 -> :ok
end
2 = GenServer.call(store, :subscribers)
%{{monitors: 1}} = :rpc.call(kv, :kvnode, :info, [])
send(far, :stop)
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end)
%{{monitors: 0}} = :rpc.call(kv, :kvnode, :info, [])
true = connected.()
"#
        ));
}
