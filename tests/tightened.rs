//! Tighter checks of behaviour the other suites cover with a single assertion each:
//! exactly-once replies to callers that use no alias (plain-reference tags, as erl_interface,
//! Jinterface and pre-OTP-24 `gen` make), late alias replies dropped on every request kind
//! (also from the storage thread); subscriptions of a node that is killed or disconnects go,
//! to the exact count, while the other subscribers keep getting their events; a refused
//! `put_new` leaves the original value on both lanes and across a restart; and the
//! `fdatasync` of a durable write is observed (strace) before its reply is written.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

struct DirGuard(PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_dir(tag: &str) -> (DirGuard, String) {
    let d = std::env::temp_dir().join(unique(tag));
    let _ = std::fs::remove_dir_all(&d);
    let s = d.display().to_string();
    (DirGuard(d), s)
}

/// Four worker processes at once (so durable replies leave the storage thread in groups),
/// each mixing, per round, raw `$gen_call`s with plain-reference and tuple tags (no alias:
/// every reply must reach the mailbox exactly once, with the right value) and
/// `GenServer.call`s with timeout 0 (alias tags: every late reply must be dropped). Each
/// worker then waits for every expected reply (counting each tag's arrivals), makes two
/// barrier calls, and its mailbox must be empty: no duplicate, no late alias reply.
const EXACTLY_ONCE: &str = r##"
defmodule W do
  def late(store, req) do
    try do
      GenServer.call(store, req, 0)
      raise "a call with timeout 0 returned"
    catch
      :exit, {:timeout, _} -> :ok
    end
  end

  def raw(store, req, tag) do
    send(store, {:"$gen_call", {self(), tag}, req})
    tag
  end

  def run(store, w, rounds) do
    :ok = GenServer.call(store, {:put, {w, :c}, 0})
    expected =
      Enum.flat_map(1..rounds, fn i ->
        late(store, {:incr, {w, :late_n}, 1})
        late(store, {:put_new, {w, :late_fresh, i}, i})
        late(store, {:cas, {w, :late_c}, nil, i})
        late(store, {:subscribe, {w, :late_topic, i}})
        late(store, {:unsubscribe, {w, :late_topic, i}})
        late(store, {:put, {w, :late_p, i}, i})
        late(store, {:get, {w, :late_p, i}})
        exp = [
          {raw(store, {:incr, {w, :n}, 1}, make_ref()), i},
          {raw(store, {:cas, {w, :c}, i - 1, i}, make_ref()), :ok},
          {raw(store, {:cas, {w, :c}, -1, 0}, make_ref()), {:error, {:mismatch, i}}},
          {raw(store, {:put_new, {w, :fresh, i}, i}, make_ref()), :ok},
          {raw(store, {:put_new, {w, :fresh, i}, :again}, make_ref()), {:error, :exists}},
          {raw(store, {:subscribe, {w, :topic, i}}, make_ref()), :ok},
          {raw(store, {:unsubscribe, {w, :topic, i}}, make_ref()), :ok},
          {raw(store, {:put, {w, :p, i}, i}, make_ref()), :ok},
          {raw(store, {:get, {w, :p, i}}, make_ref()), i},
          {raw(store, {:delete, {w, :p, i}}, make_ref()), :ok},
          # A Jinterface-like caller may tag with any term: it is echoed verbatim.
          {raw(store, {:get, {w, :c}}, {:jtag, w, i}), i}
        ]
        exp
      end)
    want = Map.new(expected)
    unless map_size(want) == length(expected), do: raise("duplicate tags")
    got = collect(want, %{}, System.monotonic_time(:millisecond) + 30_000)
    wrong = for {t, r} <- want, Map.get(got, t) != {1, r}, do: {t, r, Map.get(got, t)}
    if wrong != [], do: raise("worker #{w}: replies not delivered exactly once: #{inspect(Enum.take(wrong, 5))}")
    # Barriers: a write (answered from the storage thread with --data-dir) and a read.
    :ok = GenServer.call(store, {:put, {w, :done}, true})
    ^rounds = GenServer.call(store, {:get, {w, :late_n}})
    ^rounds = GenServer.call(store, {:get, {w, :late_fresh, rounds}})
    1 = GenServer.call(store, {:get, {w, :late_c}})
    {:messages, msgs} = Process.info(self(), :messages)
    if msgs != [], do: raise("worker #{w}: stray messages: #{inspect(Enum.take(msgs, 5))}")
    :ok
  end

  # Counts arrivals per expected tag until each came at least once; anything else fails.
  defp collect(want, got, deadline) do
    if Enum.all?(want, fn {t, _} -> Map.has_key?(got, t) end) do
      got
    else
      left = max(deadline - System.monotonic_time(:millisecond), 0)
      receive do
        {tag, reply} = m ->
          unless Map.has_key?(want, tag), do: raise("unexpected message #{inspect(m)}")
          collect(want, Map.update(got, tag, {1, reply}, fn {n, r} -> {n + 1, r} end), deadline)
        other -> raise "unexpected message #{inspect(other)}"
      after
        left -> raise "replies missing after 30 s: #{map_size(want) - map_size(got)} of #{map_size(want)}"
      end
    end
  end
end

parent = self()
pids = for w <- 1..4 do
  spawn(fn ->
    res = try do W.run(store, w, 25) rescue e -> Exception.message(e) end
    send(parent, {:worker, w, res})
  end)
end
for w <- 1..4 do
  receive do
    {:worker, ^w, :ok} -> :ok
    {:worker, ^w, err} -> raise err
  after 60_000 -> raise "worker #{w} did not finish"
  end
end
_ = pids
0 = GenServer.call(store, :subscribers)
"##;

#[test]
fn replies_reach_plain_tag_callers_exactly_once_and_late_alias_replies_never() {
    let kv = KvNode::fresh("kv_once");
    kv.script("once", EXACTLY_ONCE);
}

/// The same with `--data-dir`: write replies leave from the storage thread after the
/// `fdatasync` of their group, so the timeout-0 callers always see them late.
#[test]
fn durable_replies_reach_plain_tag_callers_exactly_once_and_late_alias_replies_never() {
    let (_g, dir) = data_dir("kvnode_once");
    let kv = KvNode::fresh_with("kv_once_d", &["--data-dir", &dir]);
    kv.script("once_d", EXACTLY_ONCE);
}

/// Boot code of a subscriber node: a process registered as `:sub` that subscribes on request,
/// keeps the events it gets, hands them over on request after a barrier call to the KV server
/// (the server sent every event of a change applied before that call ahead of its reply),
/// and disconnects its node from kvnode on request (`Node.disconnect/1` or
/// `:erlang.disconnect_node/1`). `KVNODE_NAME` is replaced by kvnode's node name.
const SUBSCRIBER: &str = r##"
defmodule Sub do
  def loop(store, events) do
    receive do
      {:subscribe, keys, from} ->
        for k <- keys, do: :ok = GenServer.call(store, {:subscribe, k})
        send(from, {:subscribed, node()})
        loop(store, events)
      {:kv_event, _, _} = e ->
        loop(store, [e | events])
      {:events, from} ->
        _ = GenServer.call(store, :size)
        events = drain(events)
        send(from, {:events, node(), Enum.reverse(events)})
        loop(store, [])
      {:disconnect, how, from} ->
        {_, kv} = store
        r = if how == :node, do: Node.disconnect(kv), else: :erlang.disconnect_node(kv)
        send(from, {:disconnected, node(), r})
        loop(store, events)
    end
  end

  defp drain(events) do
    receive do
      {:kv_event, _, _} = e -> drain([e | events])
    after 0 -> events
    end
  end
end
store = {DistributedExample.KVStore, :"KVNODE_NAME"}
Process.register(spawn(fn -> Sub.loop(store, []) end), :sub)
"##;

/// Driver helpers: `subs` (node => `:sub` pid, found by polling), `ask_events`, and the
/// exact-count waits on `:subscribers` and `kvnode:info`'s `monitors`.
const DRIVER: &str = r##"
nodes = System.fetch_env!("SUB_NODES") |> String.split(",") |> Enum.map(&String.to_atom/1)
sub = fn n ->
  TestWait.until(fn -> Node.connect(n) && :rpc.call(n, Process, :whereis, [:sub]) end, 60_000)
end
events = fn n ->
  send(sub.(n), {:events, self()})
  receive do {:events, ^n, evs} -> evs after 10_000 -> raise "no events answer from #{n}" end
end
counts = fn ->
  %{monitors: m, subscriptions: s} = :rpc.call(kv, :kvnode, :info, [])
  {GenServer.call(store, :subscribers), s, m}
end
# Waits until `:subscribers` (and kvnode:info's count) is exactly `subs` and the monitors
# exactly `mons`; a count that skips past them never matches and times out.
exactly = fn subs, mons ->
  try do
    TestWait.until(fn -> counts.() == {subs, subs, mons} end, 20_000)
  rescue
    _ -> raise "expected #{subs} subscriptions and #{mons} monitors, have #{inspect(counts.())}"
  end
end
[stay, doomed, leaver1, leaver2] = nodes
"##;

/// Four subscriber nodes: `stay` (`:all` and `:k`), `doomed` (`:all` and `:k`, then SIGKILLed
/// by its OS pid), `leaver1` (`:all`, then `Node.disconnect/1` from its side) and `leaver2`
/// (`:k` and `:other`, then `:erlang.disconnect_node/1` from its side). After each loss the
/// KV server's counts drop to exactly the remaining subscriptions (and one monitor per
/// remaining subscriber process), and a change of `:k` reaches each remaining subscriber
/// exactly once (one event per change even when subscribed to `:all` and `:k`) and none of
/// the gone ones (whose processes are still alive and whose nodes reconnect for the barrier).
#[test]
fn subscribers_whose_node_is_killed_or_disconnects_go_to_the_exact_count() {
    let kv = KvNode::fresh("kv_subdown");
    let boot = SUBSCRIBER.replace("KVNODE_NAME", &kv.name);
    let alives: Vec<String> = ["stay", "doomed", "leaver1", "leaver2"]
        .iter()
        .map(|a| unique(a))
        .collect();
    let mut beams: Vec<Option<BeamNode>> = alives
        .iter()
        .map(|a| Some(BeamNode::start(a, &kv.cookie, kv.epmd_port, &boot)))
        .collect();
    let names: Vec<String> = alives.iter().map(|a| format!("{a}@127.0.0.1")).collect();
    let env = [("SUB_NODES", names.join(","))];
    let run = |tag: &str, body: &str| {
        let out = elixir_env(
            &kv,
            &unique(tag),
            &kv.cookie,
            &kv_script(&format!("{DRIVER}\n{body}")),
            &env,
        );
        assert!(out.contains("SCRIPT-OK"), "{out}");
    };
    run(
        "setup",
        r##"
for {n, keys} <- [{stay, [:all, :k]}, {doomed, [:all, :k]}, {leaver1, [:all]}, {leaver2, [:k, :other]}] do
  send(sub.(n), {:subscribe, keys, self()})
  receive do {:subscribed, ^n} -> :ok after 20_000 -> raise "#{n} did not subscribe" end
end
exactly.(7, 4)
:ok = GenServer.call(store, {:put, :k, 1})
for n <- nodes do
  [{:kv_event, :k, {:put, 1}}] = events.(n)
end
"##,
    );
    drop(beams[1].take()); // SIGKILL of doomed's OS process (by its pid): no goodbye
    run(
        "killed",
        r##"
exactly.(5, 3)
:ok = GenServer.call(store, {:put, :k, 2})
for n <- [stay, leaver1, leaver2] do
  [{:kv_event, :k, {:put, 2}}] = events.(n)
end
send(sub.(leaver1), {:disconnect, :node, self()})
receive do {:disconnected, ^leaver1, true} -> :ok after 10_000 -> raise "no Node.disconnect" end
exactly.(4, 2)
send(sub.(leaver2), {:disconnect, :erlang, self()})
receive do {:disconnected, ^leaver2, true} -> :ok after 10_000 -> raise "no disconnect_node" end
exactly.(2, 1)
:ok = GenServer.call(store, {:delete, :k})
:ok = GenServer.call(store, {:put, :other, 3})
[{:kv_event, :k, :delete}, {:kv_event, :other, {:put, 3}}] = events.(stay)
[] = events.(leaver1)
[] = events.(leaver2)
# The barrier calls reconnected both leavers: still exactly the survivor's subscriptions.
{2, 2, 1} = counts.()
"##,
    );
    drop(beams);
}

/// A `put_new` that finds its key (also under another encoding of the same key) answers
/// `{:error, :exists}` and changes nothing: `GenServer.call` `get` (byte lane), the rpc
/// `KVStore.get/1` (in-node call) and a subscriber (no event) all see the original.
const PUT_NEW_REFUSED: &str = r##"
zoo = [
  {:atom_key, :orig, :atom_key},
  {%{a: 1, b: 2}, "orig map", %{b: 2, a: 1}},
  {~c"chars", :binary.copy("v", 10_000), [?c, ?h, ?a, ?r, ?s]},
  {1, {:orig, 1}, 1},
  {{:t, 1.0}, [1, 2, 3], {:t, 1.0}}
]
check = fn ->
  for {k, orig, _} <- zoo do
    ^orig = GenServer.call(store, {:get, k})
    ^orig = GenServer.call(store, {:get, k, :default})
    ^orig = :rpc.call(kv, DistributedExample.KVStore, :get, [k])
  end
  # 1.0 is another key than 1: never written.
  nil = GenServer.call(store, {:get, 1.0})
end
"##;

fn put_new_write_and_check() -> String {
    format!(
        r##"{PUT_NEW_REFUSED}
for {{k, orig, _}} <- zoo, do: :ok = GenServer.call(store, {{:put, k, orig}})
parent = self()
watcher = spawn(fn ->
  :ok = GenServer.call(store, {{:subscribe, :all}})
  send(parent, :watching)
  receive do
    :report ->
      _ = GenServer.call(store, :size)
      {{:messages, msgs}} = Process.info(self(), :messages)
      send(parent, {{:watched, msgs}})
  end
end)
receive do :watching -> :ok after 10_000 -> raise "no watcher" end
for {{_, _, k2}} <- zoo do
  {{:error, :exists}} = GenServer.call(store, {{:put_new, k2, :replaced}})
end
check.()
send(watcher, :report)
receive do
  {{:watched, []}} -> :ok
  {{:watched, evs}} -> raise "a refused put_new made events: #{{inspect(evs)}}"
after 10_000 -> raise "no watcher report"
end
# A put_new after a delete is a fresh write.
:ok = GenServer.call(store, {{:delete, :gone}})
:ok = GenServer.call(store, {{:put_new, :gone, :back}})
:back = :rpc.call(kv, DistributedExample.KVStore, :get, [:gone])
"##
    )
}

#[test]
fn a_refused_put_new_leaves_the_original_on_both_lanes() {
    let kv = KvNode::fresh("kv_putnew");
    kv.script("putnew", &put_new_write_and_check());
}

/// With `--data-dir`, and after SIGKILL and a restart: the refused `put_new`s were never
/// logged, the original values come back on both lanes.
#[test]
fn a_refused_put_new_leaves_the_original_after_a_restart() {
    let (_g, dir) = data_dir("kvnode_putnew");
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_putnew_d");
    {
        let mut kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir]);
        kv.script("putnew_d", &put_new_write_and_check());
        kv.guard.child.kill().expect("SIGKILL kvnode");
        let _ = kv.guard.child.wait();
    }
    let kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir]);
    kv.script(
        "putnew_r",
        &format!("{PUT_NEW_REFUSED}\ncheck.()\n:back = GenServer.call(store, {{:get, :gone}})\n6 = GenServer.call(store, :size)"),
    );
}

/// How many sequential durable writes the strace test makes.
const TRACED_WRITES: u32 = 40;
/// The reply of traced write `i`: `{:incr, {:traced, i}, N}` on a fresh key answers N, an
/// INTEGER_EXT (`b` and 4 big-endian bytes) unique to the write, so its log record and its
/// reply frame can each be found in the trace.
fn traced_value(i: u32) -> u32 {
    0x5A00_0000 + i
}

/// One system call seen by strace: where its entry and its return are in the trace.
#[derive(Debug)]
struct Syscall {
    name: String,
    fd: Option<u32>,
    text: String,
    entry: usize,
    exit: usize,
}

/// Parses `strace -f -o` output (lines `PID name(args) = ret`, or `PID name(args
/// <unfinished ...>` then `PID <... name resumed>...) = ret`) into calls in entry order.
fn parse_strace(trace: &str) -> Vec<Syscall> {
    let mut calls: Vec<Syscall> = Vec::new();
    let mut pending: HashMap<&str, usize> = HashMap::new();
    for (idx, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if rest.starts_with("<... ") {
            if let Some(c) = pending.remove(pid) {
                calls[c].exit = idx;
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let fd = args
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok());
        calls.push(Syscall {
            name: name.to_owned(),
            fd,
            text: rest.to_owned(),
            entry: idx,
            exit: idx,
        });
        if rest.contains("<unfinished ...>") {
            pending.insert(pid, calls.len() - 1);
        }
    }
    calls
}

/// The fd numbers of kvnode's open files under `dir` whose name ends in `.log`.
fn log_fds(pid: u32, dir: &str) -> Vec<u32> {
    let mut fds = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(e.path()) {
            let t = target.display().to_string();
            if t.starts_with(dir)
                && t.ends_with(".log")
                && let Some(fd) = e.file_name().to_str().and_then(|s| s.parse().ok())
            {
                fds.push(fd);
            }
        }
    }
    fds
}

/// fsync is observed twice for every acknowledged durable write, made one after the other:
/// under `strace -f` (attached to the running kvnode), the log write carrying write `i`'s
/// record is followed by an `fdatasync`/`fsync` of the log file that returns before the first
/// write of its reply frame to a socket starts; and `kvnode:info`'s `storage_syncs`, read
/// right after each reply, has grown by at least the number of writes acknowledged so far
/// (each sequential write is its own commit; README "Durability").
#[test]
fn each_durable_reply_is_written_after_the_fdatasync_of_its_record() {
    let (_g, dir) = data_dir("kvnode_strace");
    let kv = KvNode::fresh_with("kv_strace", &["--data-dir", &dir]);
    let (_trace_dir, trace_dir) = data_dir("kvnode_strace_out");
    std::fs::create_dir_all(&trace_dir).expect("mkdir for the trace");
    let trace_path = PathBuf::from(&trace_dir).join("trace.txt");
    let (strace, attached) = strace_attach(kv.guard.pid(), &trace_path);
    wait_for("strace to attach", Duration::from_secs(20), || {
        attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains("attached")
            .then_some(())
    });
    let fds = log_fds(kv.guard.pid(), &dir);
    assert_eq!(fds.len(), 1, "one open log segment: {fds:?}");
    let log_fd = fds[0];
    kv.script(
        "traced",
        &format!(
            r##"
%{{storage_syncs: base}} = :rpc.call(kv, :kvnode, :info, [])
for i <- 1..{TRACED_WRITES} do
  v = 0x5A000000 + i
  ^v = GenServer.call(store, {{:incr, {{:traced, i}}, v}})
  %{{storage_syncs: syncs}} = :rpc.call(kv, :kvnode, :info, [])
  if syncs - base < i, do: raise("after #{{i}} acknowledged writes only #{{syncs - base}} fdatasyncs")
end
"##
        ),
    );
    drop(strace); // SIGKILL: the trace file holds everything up to here
    let trace = std::fs::read_to_string(&trace_path).expect("read the trace");
    let calls = parse_strace(&trace);
    let writes = [
        "write", "writev", "pwrite64", "pwritev", "pwritev2", "sendto", "sendmsg",
    ];
    let syncs: Vec<&Syscall> = calls
        .iter()
        .filter(|c| (c.name == "fdatasync" || c.name == "fsync") && c.fd == Some(log_fd))
        .collect();
    let excerpt = |at: usize| -> String {
        trace
            .lines()
            .skip(at.saturating_sub(6))
            .take(12)
            .map(|l| l.chars().take(160).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    };
    for i in 1..=TRACED_WRITES {
        let pat: String = std::iter::once(b'b')
            .chain(traced_value(i).to_be_bytes())
            .map(|b| format!("\\x{b:02x}"))
            .collect();
        let find = |on_log: bool| {
            calls.iter().find(|c| {
                writes.contains(&c.name.as_str())
                    && (c.fd == Some(log_fd)) == on_log
                    && c.text.contains(&pat)
            })
        };
        let record = find(true)
            .unwrap_or_else(|| panic!("write {i}: no log write carries {pat} (log fd {log_fd})"));
        let reply = find(false)
            .unwrap_or_else(|| panic!("write {i}: no socket write carries its reply {pat}"));
        assert!(
            reply.entry > record.exit,
            "write {i}: its reply went out before its record was written:\n{}",
            excerpt(reply.entry)
        );
        assert!(
            syncs
                .iter()
                .any(|s| s.entry > record.exit && s.exit < reply.entry),
            "write {i}: no fdatasync of the log (fd {log_fd}) returned between its record's \
             write (trace line {}) and its reply (trace line {}):\n{}",
            record.exit,
            reply.entry,
            excerpt(reply.entry)
        );
    }
    eprintln!(
        "traced {TRACED_WRITES} writes: {} fdatasync/fsync calls on the log, {} trace lines",
        syncs.len(),
        trace.lines().count()
    );
}
