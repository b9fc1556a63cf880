//! Model-based crash test of `--data-dir`: random put/delete/cas/incr/put_new/get sequences,
//! as calls and casts, over a zoo of keys (small and >32-key maps, nested maps, maps as map
//! keys, 0.0/-0.0, 1/1.0, bignums, bitstrings, pids, refs, funs, charlists vs lists, atoms
//! of every length), from several Elixir client nodes, with kvnode killed by SIGKILL at a
//! random moment of every round and restarted; compaction runs all the time
//! (`--compaction-floor 4096`).
//!
//! The model: every worker process owns its keys, so a key's history is one worker's
//! sequence, and every worker's requests travel in order on its node's connection. After a
//! restart, the state of a worker's keys must be exactly the state after some prefix `P` of
//! its sequence (one `P` for all its keys: the log is written in submission order) with
//! `lo <= P <= hi`: `lo` covers every acknowledged call and so every cast before it (a
//! call's reply waits until everything submitted before it is durable), `hi` is the call
//! that was in flight when kvnode died (or the whole sequence). Every reply is also checked
//! exactly against the model while the load runs, and `:size` against the model's count.
//!
//! Each worker keeps its model in Elixir (start state, the changes each op made, `lo`,
//! `hi`) and prints it at the end of a round; the test hands it to the next round, whose
//! first step is the verification. The seed is printed; `KVNODE_CRASH_SEED` replays the
//! op sequences and kill delays (thread timing aside). `KVNODE_CRASH_ROUNDS` (default 8)
//! and `KVNODE_CRASH_SECONDS` (default 70: no new round starts after that) bound the cost.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Client nodes, and worker processes on each.
const CLIENTS: usize = 3;
const WORKERS_PER_CLIENT: usize = 2;
/// Ops each worker has ready per round (the kill usually comes first).
const OPS_PER_ROUND: usize = 700;

struct DirGuard(PathBuf);
impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// splitmix64: the test's own deterministic generator (seeded, printed, replayable).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// The key zoo, the value zoo, the model and a worker. Shared by every client node.
const MODEL: &str = r##"
defmodule Zoo do
  # Terms that every node builds identically, however it is run (pids, refs and funs are
  # made from their external format, so a verifier in a later round names the same keys).
  def pid(w), do: :erlang.binary_to_term(<<131, 88, 100, 0, 15, "crash@127.0.0.1", w::32, 0::32, 7::32>>)
  def ref(w), do: :erlang.binary_to_term(<<131, 90, 0, 3, 100, 0, 15, "crash@127.0.0.1", 7::32, w::32, 1::32, 2::32>>)
  def fun(w), do: :erlang.make_fun(:crash_model, String.to_atom("f#{w}"), 1)

  def neg_zero do
    <<z::float>> = <<128, 0, 0, 0, 0, 0, 0, 0>>
    z
  end

  def keys(w) do
    [
      %{w: w, a: 1, b: "two", c: [3]},
      Map.put(Map.new(1..40, &{&1, &1 * 3}), :w, w),
      {:nest, %{w: w, inner: %{x: 1, y: [%{z: 2, q: 3}]}}},
      %{%{w: w, k: 1} => %{v: 1, u: 2}, :o => w},
      [%{w: w}, %{a: 1, b: 2}],
      w * 1.0,
      if(w == 0, do: neg_zero(), else: -(w * 1.0)),
      w,
      2 ** 70 + w,
      -(2 ** 80) - w,
      <<w::5>>,
      "b#{w}",
      pid(w),
      ref(w),
      fun(w),
      String.to_charlist("cl#{w}"),
      [300 + w, 301],
      String.to_atom("a#{w}"),
      String.to_atom("ü#{w}"),
      String.to_atom(String.duplicate("ü", 200) <> "#{w}"),
      {:counter, w},
      [w | :tail]
    ]
  end

  @vals [1, 1.0, 2 ** 70, "bin", ~c"cl", [300, 301], %{a: 1, b: 2}, {:t, %{n: %{m: 1}}},
         <<3::3>>, :atom, :"ü", [1 | 2], <<>>, [], nil]
  def val(s) do
    big = if rem(s, 7) == 0, do: Map.new(1..35, &{&1, s}), else: nil
    {:v, s, Enum.at(@vals, rem(s, length(@vals))), big}
  end
end

defmodule Model do
  # A key's state: :absent | {:t, s} (the value Zoo.val(s)) | {:i, n} (the integer n).
  def real(:absent), do: :"$absent"
  def real({:t, s}), do: Zoo.val(s)
  def real({:i, n}), do: n

  def or_nil(:absent), do: nil
  def or_nil(m), do: real(m)

  # The state after the first p ops: start with every change of an op before p applied.
  def at(start, changes, p) do
    Enum.reduce(changes, start, fn {i, k, m}, st -> if i < p, do: Map.put(st, k, m), else: st end)
  end

  # {request, expected reply, new state of the key or :same}.
  def step(op, k, cur, s, r) do
    key_term = k
    case op do
      :get ->
        if r < 0.5, do: {{:get, key_term}, or_nil(cur), :same},
                    else: {{:get, key_term, :dflt}, (if cur == :absent, do: :dflt, else: real(cur)), :same}
      :put -> {{:put, key_term, Zoo.val(s)}, :ok, {:t, s}}
      :delete -> {{:delete, key_term}, :ok, :absent}
      :put_new ->
        if cur == :absent, do: {{:put_new, key_term, Zoo.val(s)}, :ok, {:t, s}},
                           else: {{:put_new, key_term, Zoo.val(s)}, {:error, :exists}, :same}
      :cas ->
        if r < 0.6 do
          {{:cas, key_term, or_nil(cur), Zoo.val(s)}, :ok, {:t, s}}
        else
          {{:cas, key_term, {:v, -1, nil, nil}, Zoo.val(s)}, {:error, {:mismatch, or_nil(cur)}}, :same}
        end
      :incr ->
        amount = Enum.at([1, 2, -3, 2 ** 64 + 7, -(2 ** 70)], trunc(r * 5))
        req = if amount == 1 and r < 0.1, do: {:incr, key_term}, else: {:incr, key_term, amount}
        case cur do
          :absent -> {req, amount, {:i, amount}}
          {:i, n} -> {req, n + amount, {:i, n + amount}}
          {:t, _} -> {req, {:error, :not_integer}, :same}
        end
    end
  end
end

defmodule Worker do
  @kinds [:put, :put, :put, :delete, :delete, :put_new, :cas, :cas, :incr, :incr, :get]

  # Checks the recovered state of worker w against its record from the last round; returns
  # the state it found (as model states) or raises with the difference.
  def verify(store, w, keys, nil) do
    start = Map.new(0..(length(keys) - 1), &{&1, :absent})
    verify(store, w, keys, {start, [], 0, 0, nil})
  end

  def verify(store, w, keys, {start, changes, lo, hi, bad}) do
    if bad, do: raise("worker #{w} saw a wrong reply last round: #{bad}")
    actual = for {k, i} <- Enum.with_index(keys), into: %{}, do: {i, GenServer.call(store, {:get, k, :"$absent"}, 60_000)}
    found =
      Enum.find(lo..hi, fn p ->
        st = Model.at(start, changes, p)
        Enum.all?(st, fn {i, m} -> Model.real(m) === actual[i] end)
      end)
    if found == nil do
      lo_st = Model.at(start, changes, lo)
      diffs = for {i, m} <- lo_st, Model.real(m) !== actual[i], do: {i, Enum.at(keys, i), m, actual[i]}
      raise "worker #{w}: recovered state matches no prefix in #{lo}..#{hi}; against prefix #{lo} (key index, key, model, recovered): #{inspect(diffs, limit: 20, printable_limit: 200)}"
    end
    IO.puts("MATCH #{w} prefix #{found} in #{lo}..#{hi}")
    Model.at(start, changes, found)
  end

  # Runs up to n random ops; returns the record {start, changes, lo, hi, bad}.
  def run(store, w, keys, start, n, base) do
    nkeys = length(keys)
    loop = fn loop, i, st, changes, lo ->
      if i == n do
        # One more call makes the trailing casts acknowledged (or not, if kvnode died).
        try do
          _ = GenServer.call(store, :size, 60_000)
          {start, Enum.reverse(changes), n, n, nil}
        catch
          :exit, _ -> {start, Enum.reverse(changes), lo, n, nil}
        end
      else
        ki = :rand.uniform(nkeys) - 1
        kind = Enum.at(@kinds, :rand.uniform(length(@kinds)) - 1)
        cast? = kind != :get and :rand.uniform() < 0.4
        {req, want, new} = Model.step(kind, Enum.at(keys, ki), st[ki], base + i, :rand.uniform())
        changes = if new == :same, do: changes, else: [{i, ki, new} | changes]
        st = if new == :same, do: st, else: Map.put(st, ki, new)
        if cast? do
          GenServer.cast(store, req)
          loop.(loop, i + 1, st, changes, lo)
        else
          try do
            GenServer.call(store, req, 60_000)
          catch
            :exit, _ -> {:died, i}
          else
            got when got === want -> loop.(loop, i + 1, st, changes, i + 1)
            got -> {:bad, i, req, want, got, changes, lo}
          end
          |> case do
            {:died, i} -> {start, Enum.reverse(changes), lo, i + 1, nil}
            {:bad, i, req, want, got, changes, lo} ->
              msg = "op #{i} #{inspect(req, limit: 8)}: expected #{inspect(want, limit: 8)}, got #{inspect(got, limit: 8)}"
              {start, Enum.reverse(changes), lo, i + 1, msg}
            record -> record
          end
        end
      end
    end
    loop.(loop, 0, start, [], 0)
  end
end
"##;

/// One client node's script: verify its workers, pass the barrier, run the load (client 0
/// also checks `:size` and kills kvnode), print every worker's record.
const CLIENT: &str = r##"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
client = String.to_integer(System.fetch_env!("CLIENT"))
clients = String.to_integer(System.fetch_env!("CLIENTS"))
round = String.to_integer(System.fetch_env!("ROUND"))
seed = String.to_integer(System.fetch_env!("SEED"))
workers = System.fetch_env!("WORKERS") |> String.split(",") |> Enum.map(&String.to_integer/1)
final? = System.fetch_env!("FINAL") == "1"
prev =
  case System.get_env("PREV", "") do
    "" -> %{}
    b64 -> b64 |> Base.decode64!() |> :erlang.binary_to_term()
  end

starts = Map.new(workers, fn w -> {w, Worker.verify(store, w, Zoo.keys(w), prev[w])} end)
present = starts |> Map.values() |> Enum.map(fn st -> Enum.count(st, fn {_, m} -> m != :absent end) end) |> Enum.sum()
IO.puts("PRESENT #{present}")

barrier = {:"$barrier", round}
_ = GenServer.call(store, {:incr, barrier, 1}, 60_000)
TestWait.until(fn -> GenServer.call(store, {:get, barrier}, 60_000) == clients end, 60_000)
if client == 0 do
  # Nobody writes between the barrier and :go: the size is the verified state's.
  keys = GenServer.call(store, :keys, 60_000)
  size = GenServer.call(store, :size, 60_000)
  ^size = length(keys)
  model_keys = Enum.count(keys, fn k -> not match?({:"$barrier", _}, k) and not match?({:"$go", _}, k) end)
  IO.puts("KVSIZE #{model_keys}")
  :ok = GenServer.call(store, {:put, {:"$go", round}, true}, 60_000)
end
TestWait.until(fn -> GenServer.call(store, {:get, {:"$go", round}}, 60_000) end, 60_000)

if final? do
  IO.puts("SCRIPT-OK")
else
  parent = self()
  ops = String.to_integer(System.fetch_env!("OPS"))
  for w <- workers do
    spawn(fn ->
      :rand.seed(:exsss, {seed, round, w})
      base = round * 1_000_000 + w * 10_000_000_000
      record = Worker.run(store, w, Zoo.keys(w), starts[w], ops, base)
      send(parent, {:record, w, record})
    end)
  end
  if client == 0 do
    receive do after String.to_integer(System.fetch_env!("KILL_MS")) -> :ok end
    {_, 0} = System.cmd("kill", ["-9", System.fetch_env!("KV_OS_PID")])
    IO.puts("KILLED")
  end
  records =
    for _ <- workers, into: %{} do
      receive do
        {:record, w, r} -> {w, r}
      after 120_000 -> raise "a worker never finished"
      end
    end
  for {w, {_, changes, lo, hi, bad}} <- records do
    IO.puts("RAN #{w} lo #{lo} hi #{hi} changes #{length(changes)}#{if bad, do: " BAD " <> bad, else: ""}")
  end
  IO.puts("REC " <> Base.encode64(:erlang.term_to_binary(records, [:compressed])))
  IO.puts("SCRIPT-OK")
end
"##;

/// The value after `prefix` on a line of `out`.
fn line_value<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::trim)
}

#[test]
fn recovered_state_is_an_acknowledged_prefix_of_every_clients_history() {
    let seed = env_u64("KVNODE_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let rounds = env_u64("KVNODE_CRASH_ROUNDS").unwrap_or(8).max(1);
    let budget = Duration::from_secs(env_u64("KVNODE_CRASH_SECONDS").unwrap_or(70));
    eprintln!("crash_model: KVNODE_CRASH_SEED={seed} (rounds {rounds}, budget {budget:?})");
    let mut rng = Rng(seed);
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_model");
    let dir = std::env::temp_dir().join(unique("kvnode_model"));
    let _cleanup = DirGuard(dir.clone());
    let started = Instant::now();
    // Per client: the base64 records of its workers from the last round.
    let mut prev: Vec<String> = vec![String::new(); CLIENTS];
    let mut round = 0u64;
    let mut kills = 0;
    let mut checked_prefixes = 0;
    loop {
        let last = round >= rounds || started.elapsed() > budget;
        let kv = KvNode::start_with(
            &alive,
            &cookie,
            epmd,
            &[
                "--data-dir",
                dir.to_str().expect("utf-8 path"),
                "--compaction-floor",
                "4096",
            ],
        );
        let kill_ms = 50 + rng.below(1200);
        let outs: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..CLIENTS)
                .map(|c| {
                    let workers: Vec<String> = (0..WORKERS_PER_CLIENT)
                        .map(|j| (c * WORKERS_PER_CLIENT + j).to_string())
                        .collect();
                    let envs = vec![
                        ("CLIENT", c.to_string()),
                        ("CLIENTS", CLIENTS.to_string()),
                        ("ROUND", round.to_string()),
                        ("SEED", seed.to_string()),
                        ("WORKERS", workers.join(",")),
                        ("FINAL", if last { "1" } else { "0" }.to_string()),
                        ("PREV", prev[c].clone()),
                        ("OPS", OPS_PER_ROUND.to_string()),
                        ("KILL_MS", kill_ms.to_string()),
                        ("KV_OS_PID", kv.guard.pid().to_string()),
                    ];
                    let kv = &kv;
                    let cookie = &cookie;
                    s.spawn(move || {
                        let envs: Vec<(&str, String)> = envs;
                        elixir_env(
                            kv,
                            &unique(&format!("client{c}")),
                            cookie,
                            &format!("{MODEL}\n{CLIENT}"),
                            &envs,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        let mut present = 0;
        for (c, out) in outs.iter().enumerate() {
            assert!(
                out.contains("SCRIPT-OK"),
                "seed {seed} round {round} client {c}:\n{out}"
            );
            assert!(
                !out.contains(" BAD "),
                "seed {seed} round {round}: wrong reply\n{out}"
            );
            present += line_value(out, "PRESENT ")
                .and_then(|n| n.parse::<u64>().ok())
                .expect("PRESENT line");
            checked_prefixes += out.lines().filter(|l| l.starts_with("MATCH ")).count();
            if !last {
                prev[c] = line_value(out, "REC ").expect("REC line").to_string();
            }
        }
        let size: u64 = line_value(&outs[0], "KVSIZE ")
            .and_then(|n| n.parse().ok())
            .expect("KVSIZE line");
        assert_eq!(
            size, present,
            "seed {seed} round {round}: :size (without the barrier keys) is not the model's count"
        );
        if last {
            break;
        }
        assert!(outs[0].contains("KILLED"), "{}", outs[0]);
        kills += 1;
        let mut kv = kv;
        let _ = wait_for("killed kvnode to exit", Duration::from_secs(10), || {
            kv.guard.child.try_wait().ok().flatten()
        });
        let logs = kv.logs();
        let summary: HashMap<&str, usize> = ["snapshot written", "recovered"]
            .into_iter()
            .map(|k| (k, logs.matches(k).count()))
            .collect();
        eprintln!(
            "crash_model: round {round}: killed after {kill_ms} ms; {} snapshots; {}",
            summary["snapshot written"],
            outs.iter()
                .flat_map(|o| o.lines().filter(|l| l.starts_with("RAN ")))
                .collect::<Vec<_>>()
                .join("; ")
        );
        round += 1;
    }
    assert!(kills >= 1, "no crash was tested");
    assert_eq!(
        checked_prefixes,
        (kills + 1) * CLIENTS * WORKERS_PER_CLIENT,
        "every worker verified after every restart"
    );
    eprintln!(
        "crash_model: seed {seed}: {kills} kills, {checked_prefixes} worker states verified in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
