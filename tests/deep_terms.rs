//! Terms nested as deep as `--max-term-depth` allows (100,000 levels by default) are served
//! like any other, on every path: the raw lane (`put`/`get` from bytes), the decoding path
//! (`put_new`, casts and calls while someone is subscribed), subscribers' events, and the
//! durable path with a restart that replays them from the log. One level more costs only the
//! sender's connection.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// The default `--max-term-depth`.
const LIMIT: usize = 100_000;

/// Elixir helpers: `deep.(n, wrap)` nests `[]` in `n` wraps; a call's request sits at depth 3
/// of its message (`{:"$gen_call", from, {:put, k, v}}`), so a value or key of `n = LIMIT - 3`
/// wraps brings the message exactly to the limit and `LIMIT - 2` one level over it.
const PRELUDE: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
n = String.to_integer(System.fetch_env!("WRAPS"))
deep = fn n, wrap -> Enum.reduce(1..n, [], fn _, acc -> wrap.(acc) end) end
shapes = [
  list: deep.(n, fn x -> [x] end),
  tuple: deep.(n, fn x -> {x} end),
  map: deep.(n, fn x -> %{a: x} end),
  improper: deep.(n, fn x -> [1 | x] end)
]
true = Node.connect(kv)
# Debug builds take seconds for some of these (see the test's printed timings).
call = fn req -> GenServer.call(store, req, 120_000) end
"#;

fn env() -> Vec<(&'static str, String)> {
    vec![("WRAPS", (LIMIT - 3).to_string())]
}

#[test]
fn values_and_keys_nested_to_the_limit_round_trip_on_every_path() {
    let kv = KvNode::fresh("kv_deep");
    let pid = kv.guard.pid();
    let before = status_mib(pid, "VmRSS");
    let script = format!(
        "{PRELUDE}{}",
        r#"
for {name, v} <- shapes do
  # The raw lane: put and get from the frame's bytes (the key is a small tuple).
  :ok = call.({:put, {name, :call}, v})
  ^v = call.({:get, {name, :call}})
  GenServer.cast(store, {:put, {name, :cast}, v})
  ^v = call.({:get, {name, :cast}})
  # The decoding path: put_new is decoded into terms, stored, returned by a raw-lane get.
  :ok = call.({:put_new, {name, :new}, v})
  ^v = call.({:get, {name, :new}})
  {:error, {:mismatch, ^v}} = call.({:cas, {name, :new}, :other, 1})
  # As a key.
  :ok = call.({:put, v, name})
  ^name = call.({:get, v})
  ^name = call.({:get, v, :default})
end
IO.puts("PLAIN-OK")
# Subscribed: every change takes the decoding path and its event carries the value.
:ok = call.({:subscribe, :all})
for {name, v} <- shapes do
  t0 = System.monotonic_time(:millisecond)
  :ok = call.({:put, {name, :sub}, v})
  IO.puts("SUB-PUT #{name} #{System.monotonic_time(:millisecond) - t0} ms")
  receive do
    {:kv_event, {^name, :sub}, {:put, ^v}} -> :ok
  after
    30_000 -> raise "no event for #{name}"
  end
  GenServer.cast(store, {:put, {name, :subcast}, v})
  receive do
    {:kv_event, {^name, :subcast}, {:put, ^v}} -> :ok
  after
    30_000 -> raise "no event for the cast of #{name}"
  end
  ^v = call.({:get, {name, :sub}})
end
:ok = call.({:unsubscribe, :all})
IO.puts("EVENTS-OK")
# One level over the limit: only this node's connection goes.
:ok = :net_kernel.monitor_nodes(true, node_type: :all)
over = [shapes[:list]]
GenServer.cast(store, {:put, :over, over})
receive do
  {:nodedown, ^kv, _} -> :ok
after
  30_000 -> raise "kvnode kept the connection"
end
nil = call.({:get, :over})

for {name, v} <- shapes, do: ^v = call.({:get, {name, :call}})
IO.puts("SCRIPT-OK")
"#
    );
    let out = elixir_env(&kv, &unique("deep"), &kv.cookie, &script, &env());
    println!("{out}");
    assert!(out.contains("SCRIPT-OK"), "{out}");
    kv.wait_log(
        "term nested deeper than 100000 levels",
        Duration::from_secs(5),
    );
    println!(
        "kvnode RSS {before:.1} MiB before, {:.1} MiB after, peak {:.1} MiB",
        status_mib(pid, "VmRSS"),
        status_mib(pid, "VmHWM")
    );
    // Another node is served on.
    kv.script(
        "after",
        r#"
:ok = GenServer.call({DistributedExample.KVStore, kv}, {:put, :alive, true})
true = GenServer.call({DistributedExample.KVStore, kv}, {:get, :alive})
"#,
    );
}

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn deep_terms_are_logged_durably_and_recovered_after_a_restart() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let dir = Dir(std::env::temp_dir().join(unique("kvnode_deep_data")));
    let alive = unique("kv_deepdur");
    let args = ["--data-dir", dir.0.to_str().expect("utf-8 path")];
    let kv = KvNode::start_with(&alive, &cookie, epmd, &args);
    let script = format!(
        "{PRELUDE}{}",
        r#"
for {name, v} <- shapes do
  t0 = System.monotonic_time(:millisecond)
  :ok = call.({:put, {name, :call}, v})
  ^v = call.({:get, {name, :call}})
  :ok = call.({:put_new, {name, :new}, v})
  GenServer.cast(store, {:put, {name, :cast}, v})
  :ok = call.({:put, v, name})
  ^name = call.({:get, v})
  IO.puts("DURABLE #{name} #{System.monotonic_time(:millisecond) - t0} ms")
end
IO.puts("SCRIPT-OK")
"#
    );
    let out = elixir_env(&kv, &unique("deepw"), &cookie, &script, &env());
    println!("{out}");
    assert!(out.contains("SCRIPT-OK"), "{out}");
    // SIGKILL: recovery replays the log.
    drop(kv);
    let kv = KvNode::start_with(&alive, &cookie, epmd, &args);
    kv.wait_log("recovered 16 keys", Duration::from_secs(5));
    let script = format!(
        "{PRELUDE}{}",
        r#"
for {name, v} <- shapes do
  for how <- [:call, :new, :cast], do: ^v = call.({:get, {name, how}})
  ^name = call.({:get, v})
end
16 = call.(:size)
IO.puts("SCRIPT-OK")
"#
    );
    let out = elixir_env(&kv, &unique("deepr"), &cookie, &script, &env());
    assert!(out.contains("SCRIPT-OK"), "{out}");
    assert!(!kv.logs().contains("undecodable"), "{}", kv.logs());
}
