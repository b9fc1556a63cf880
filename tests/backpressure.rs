//! Backpressure: floods of casts from real Elixir nodes against kvnode's bounded KV mailbox
//! (`--max-mailbox-bytes`) and bounded storage queue (`--max-storage-queue-bytes`). kvnode's
//! memory must stay bounded, no request may be lost (every cast applied, every call
//! answered), and another connection's calls must still be answered meanwhile.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Flood client: `PROCS` processes each cast `N` puts of a `SIZE`-byte value to one key of
/// their own plus `N` small puts to distinct keys, then make one call that must see their
/// last cast. Repeated up to `ROUNDS` times, stopping early once kvnode reports that a reader
/// paused for backpressure; prints how many rounds ran.
const FLOOD: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
n = String.to_integer(System.fetch_env!("N"))
size = String.to_integer(System.fetch_env!("SIZE"))
procs = String.to_integer(System.fetch_env!("PROCS"))
rounds = String.to_integer(System.fetch_env!("ROUNDS"))
tag = System.fetch_env!("TAG")
big = :binary.copy(<<7>>, size)
for k <- String.split(System.fetch_env!("WAIT_FOR"), ",", trim: true) do
  TestWait.until(fn -> GenServer.call(store, {:get, String.to_atom(k)}) end, 60_000)
end
IO.puts("NODE #{node()}")
round = fn r ->
  1..procs
  |> Enum.map(fn p ->
    Task.async(fn ->
      for i <- 1..n do
        GenServer.cast(store, {:put, {:big, tag, p}, {i, big}})
        GenServer.cast(store, {:put, {:n, tag, p, r, i}, i})
      end
      # Requests from one process are applied in order: this call sees every cast above.
      {^n, ^big} = GenServer.call(store, {:get, {:big, tag, p}}, 300_000)
      :ok
    end)
  end)
  |> Enum.each(&Task.await(&1, :infinity))
end
{us, ran} = :timer.tc(fn ->
  Enum.reduce_while(1..rounds, 0, fn r, _ ->
    round.(r)
    if :rpc.call(kv, :kvnode, :info, []).backpressure_pauses > 0, do: {:halt, r}, else: {:cont, r}
  end)
end)
IO.puts("ROUNDS #{ran}")
IO.puts("FLOOD #{tag} #{ran} rounds of #{procs * n * 2} casts of which #{procs * n} of #{size} bytes in #{div(us, 1000)} ms")
"#;

/// Another client, on its own connection: small `get` calls until it reads `:flood_done`.
/// Prints how many it made, and the slowest.
const GETTER: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
:ok = GenServer.call(store, {:put, :getter_ready, true})
loop = fn loop, count, worst ->
  {us, done} = :timer.tc(fn -> GenServer.call(store, {:get, :flood_done}, 60_000) end)
  worst = max(worst, us)
  if done == true, do: {count + 1, worst}, else: loop.(loop, count + 1, worst)
end
{count, worst} = loop.(loop, 0, 0)
IO.puts("GETTER #{count} calls answered, slowest #{div(worst, 1000)} ms")
"#;

/// A busy client: calls that hold the KV server for a while each (a `put_new` of a list of
/// 200,000 integers is validated and decoded by the reader, then encoded for the store by the
/// server), until it reads `:flood_done`. While it holds the server, other connections'
/// messages queue in the server's mailbox.
const HEAVY: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
list = Enum.to_list(1_000..201_000)
:ok = GenServer.call(store, {:put, :heavy_ready, true})
loop = fn loop, i ->
  :ok = GenServer.call(store, {:put_new, {:heavy, i}, list}, 60_000)
  :ok = GenServer.call(store, {:delete, {:heavy, i}}, 60_000)
  if GenServer.call(store, {:get, :flood_done}, 60_000) == true, do: i, else: loop.(loop, i + 1)
end
IO.puts("HEAVY #{loop.(loop, 1)} calls of 200,000 terms")
:ok = GenServer.call(store, {:put, :heavy_node, node()})
"#;

/// The busy client's node name (it stores it under `:heavy_node` when done).
fn heavy_node(kv: &KvNode) -> String {
    let out = call(
        kv,
        &kv.cookie,
        "IO.puts(\"HEAVY_NODE #{GenServer.call(store, {:get, :heavy_node})}\")",
    );
    out.lines()
        .find_map(|l| l.strip_prefix("HEAVY_NODE "))
        .expect("heavy node name")
        .trim()
        .to_owned()
}

fn run_script(
    kv: &KvNode,
    cookie: &str,
    script: &str,
    envs: Vec<(&'static str, String)>,
) -> std::thread::JoinHandle<String> {
    let (name, epmd, cookie, script) = (
        kv.name.clone(),
        kv.epmd_port,
        cookie.to_owned(),
        script.to_owned(),
    );
    let alive = unique("client");
    std::thread::spawn(move || {
        let mut full = String::new();
        for (k, v) in &envs {
            full.push_str(&format!("System.put_env({k:?}, {v:?})\n"));
        }
        full.push_str(&script);
        full.push_str("\nIO.puts(\"SCRIPT-OK\")\n");
        let out = elixir_raw(
            &name,
            epmd,
            &alive,
            &cookie,
            &full,
            Duration::from_secs(600),
        );
        assert!(
            out.status.success() && out.stdout.contains("SCRIPT-OK"),
            "client failed ({}):\n{}\n{}",
            out.status,
            out.stdout,
            out.stderr
        );
        out.stdout
    })
}

fn call(kv: &KvNode, cookie: &str, body: &str) -> String {
    elixir(
        kv,
        &unique("ask"),
        cookie,
        &format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
true = Node.connect(kv)
{body}
IO.puts("SCRIPT-OK")
"#
        ),
    )
}

/// Runs floods from `floods` client nodes, one getter and, when `heavy`, a busy client;
/// returns (flood outputs, getter output, peak RSS MiB, RSS before MiB). The floods start
/// once the getter (and the busy client) are at work.
fn flood(
    kv: &KvNode,
    cookie: &str,
    floods: usize,
    (procs, n, size, rounds): (usize, usize, usize, usize),
    heavy: bool,
) -> (Vec<String>, String, f64, f64) {
    let before = status_mib(kv.guard.pid(), "VmRSS");
    // The busy client and the flood connect first, one after the other, so they land on
    // different connection threads (each connection goes to the least busy thread).
    let connections = || kv.logs().matches(" connected ").count();
    let wait_connection = |before: usize| {
        wait_for("a client connection", Duration::from_secs(60), || {
            (connections() > before).then_some(())
        })
    };
    let heavy = heavy.then(|| {
        let before = connections();
        let h = run_script(kv, cookie, HEAVY, vec![]);
        wait_connection(before);
        h
    });
    let wait_for = if heavy.is_some() {
        "getter_ready,heavy_ready"
    } else {
        "getter_ready"
    };
    let started = Instant::now();
    let clients: Vec<_> = (0..floods)
        .map(|i| {
            let before = connections();
            let c = run_script(
                kv,
                cookie,
                FLOOD,
                vec![
                    ("N", n.to_string()),
                    ("SIZE", size.to_string()),
                    ("PROCS", procs.to_string()),
                    ("ROUNDS", rounds.to_string()),
                    ("TAG", format!("c{i}")),
                    ("WAIT_FOR", wait_for.to_string()),
                ],
            );
            wait_connection(before);
            c
        })
        .collect();
    let getter = run_script(kv, cookie, GETTER, vec![]);
    let outs: Vec<String> = clients
        .into_iter()
        .map(|c| c.join().expect("flood client thread"))
        .collect();
    let elapsed = started.elapsed();
    let peak = status_mib(kv.guard.pid(), "VmHWM");
    call(
        kv,
        cookie,
        ":ok = GenServer.call(store, {:put, :flood_done, true})",
    );
    let getter = getter.join().expect("getter thread");
    if let Some(h) = heavy {
        let out = h.join().expect("heavy client thread");
        println!(
            "{}",
            out.lines().find(|l| l.starts_with("HEAVY")).unwrap_or(&out)
        );
    }
    println!("floods took {elapsed:?}; RSS {before:.1} MiB before, peak {peak:.1} MiB");
    (outs, getter, peak, before)
}

/// The connection thread kvnode put the connection of the node whose name starts with
/// `prefix` on.
fn thread_of(kv: &KvNode, prefix: &str) -> String {
    let logs = kv.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(&format!("peer={prefix}")) && l.contains(" connected "))
        .unwrap_or_else(|| panic!("no connection of {prefix} in\n{logs}"));
    line.split("thread=")
        .nth(1)
        .unwrap_or("?")
        .trim()
        .trim_matches('"')
        .to_owned()
}

fn info_field(kv: &KvNode, cookie: &str, field: &str) -> u64 {
    let out = call(
        kv,
        cookie,
        &format!("IO.puts(\"FIELD #{{:rpc.call(kv, :kvnode, :info, []).{field}}}\")"),
    );
    out.lines()
        .find_map(|l| l.strip_prefix("FIELD "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {out}"))
}

/// With --data-dir, casts of 1 MiB values come faster than the disk takes them: the storage
/// queue fills to its bound and the readers stop, instead of kvnode holding every value
/// until it is written.
#[test]
fn storage_queue_backpressure_bounds_memory_and_loses_nothing() {
    let cookie = unique("cookie");
    let dir = std::env::temp_dir().join(unique("kvnode_bp_data"));
    let dir_s = dir.display().to_string();
    let kv = KvNode::start_with(
        &unique("kv_bp_storage"),
        &cookie,
        free_port(),
        &["--data-dir", &dir_s, "--max-storage-queue-bytes", "1048576"],
    );
    let (procs, n, size) = (4, 100, 1 << 20);
    let (outs, getter, peak, before) = flood(&kv, &cookie, 1, (procs, n, size, 1), false);
    for o in &outs {
        println!(
            "{}",
            o.lines().find(|l| l.starts_with("FLOOD")).unwrap_or(o)
        );
    }
    println!(
        "{}",
        getter
            .lines()
            .find(|l| l.starts_with("GETTER"))
            .unwrap_or(&getter)
    );
    // Every cast applied: the small keys, the big keys, the getter's two keys.
    let out = call(
        &kv,
        &cookie,
        &format!("{} = GenServer.call(store, :size)", procs * n + procs + 2),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let pauses = info_field(&kv, &cookie, "backpressure_pauses");
    println!("backpressure pauses: {pauses}");
    assert!(pauses > 0, "the storage queue never pushed back");
    // 400 MiB went through; without backpressure kvnode held what the disk had not taken
    // yet. The bound is 1 MiB, as big as one value and one may be in every buffer on the way.
    assert!(
        peak < before + 160.0,
        "kvnode peaked at {peak:.1} MiB (from {before:.1} MiB) for a 1 MiB storage queue bound"
    );
    drop(kv);
    let _ = std::fs::remove_dir_all(dir);
}

/// A client node floods the KV server with casts while a busy client on the other
/// connection thread keeps the server occupied: the flood's messages queue in the server's
/// mailbox up to its bound, then its connection stops reading.
#[test]
fn mailbox_backpressure_bounds_memory_and_loses_nothing() {
    let kv = KvNode::fresh_with(
        "kv_bp_mailbox",
        &["--threads", "2", "--max-mailbox-bytes", "262144"],
    );
    let (procs, n, size) = (4, 1000, 64 << 10);
    let (outs, getter, peak, before) = flood(&kv, &kv.cookie, 1, (procs, n, size, 10), true);
    for o in &outs {
        println!(
            "{}",
            o.lines().find(|l| l.starts_with("FLOOD")).unwrap_or(o)
        );
    }
    println!(
        "{}",
        getter
            .lines()
            .find(|l| l.starts_with("GETTER"))
            .unwrap_or(&getter)
    );
    let rounds: usize = outs[0]
        .lines()
        .find_map(|l| l.strip_prefix("ROUNDS "))
        .and_then(|r| r.trim().parse().ok())
        .expect("rounds");
    let out = call(
        &kv,
        &kv.cookie,
        &format!(
            "{} = GenServer.call(store, :size)",
            rounds * procs * n + procs + 4
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let pauses = info_field(&kv, &kv.cookie, "backpressure_pauses");
    println!("backpressure pauses: {pauses}");
    let flood_node = outs[0]
        .lines()
        .find_map(|l| l.strip_prefix("NODE "))
        .expect("flood node name")
        .to_owned();
    let heavy_thread = thread_of(&kv, &heavy_node(&kv));
    let flood_thread = thread_of(&kv, &flood_node);
    println!("busy client on {heavy_thread}, flood on {flood_thread}");
    assert_ne!(
        heavy_thread, flood_thread,
        "the test needs them on different threads"
    );
    assert!(pauses > 0, "the mailbox never pushed back");
    assert!(
        peak < before + 160.0,
        "kvnode peaked at {peak:.1} MiB (from {before:.1} MiB) for a 256 KiB mailbox bound"
    );
}
