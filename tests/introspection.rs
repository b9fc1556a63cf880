//! `:rpc.call(kv, :kvnode, :info, [])`: kvnode's own counters, as a real Elixir node sees
//! them while it connects, subscribes and lets its subscriber die.

mod common;

use common::*;

#[test]
fn kvnode_info_over_rpc_follows_connections_subscriptions_and_monitors() {
    let kv = KvNode::fresh("kv_info");
    let out = kv.script(
        "info",
        r#"
info = fn -> :rpc.call(kv, :kvnode, :info, []) end
:ok = GenServer.call(store, {:put, :a, 1})
:ok = GenServer.call(store, {:put, :b, 2})
i = info.()
%{connections: 1, monitors: 0, subscriptions: 0, keys: 2, processes: p, registered: r} = i
true = p >= 2 and r >= 2
true = i.rss_bytes > 1_000_000 and i.open_fds > 3
{os_pid, _} = Integer.parse(to_string(:rpc.call(kv, :os, :getpid, [])))
true = i.open_fds <= length(File.ls!("/proc/#{os_pid}/fd"))

parent = self()
sub = spawn(fn ->
  :ok = GenServer.call(store, {:subscribe, :all})
  :ok = GenServer.call(store, {:subscribe, :a})
  send(parent, :subscribed)
  receive do :stop -> :ok end
end)
receive do :subscribed -> :ok after 10_000 -> raise "no subscription" end
%{monitors: 1, subscriptions: 2} = info.()
# The subscriber dies: kvnode's monitor fires and both subscriptions go.
send(sub, :stop)
TestWait.until(fn -> match?(%{monitors: 0, subscriptions: 0}, info.()) end)
IO.inspect(info.(), label: "kvnode info")
"#,
    );
    println!("{out}");
}
