//! `--data-dir`: acknowledged writes survive SIGKILL, torn tails are cut with a log line,
//! a second kvnode on the same directory is refused, storage errors become
//! `{:error, :storage_unavailable}` and reads go on.

mod common;

use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn start(alive: &str, cookie: &str, epmd: u16, dir: &Path) -> KvNode {
    KvNode::start_with(
        alive,
        cookie,
        epmd,
        &["--data-dir", dir.to_str().expect("utf-8 path")],
    )
}

/// Runs kvnode on `dir` expecting it to refuse to start; returns its stderr.
fn refused_start(alive: &str, cookie: &str, epmd: u16, dir: &Path) -> String {
    kvnode_refuses(&[
        "--name",
        &format!("{alive}@127.0.0.1"),
        "--cookie",
        cookie,
        "--epmd-port",
        &epmd.to_string(),
        "--data-dir",
        dir.to_str().expect("utf-8 path"),
    ])
}

/// Starts kvnode on `dir`, writes keys `1..=n` (each value from `value`, an Elixir expression
/// of `i`) with acknowledged calls, and stops it.
fn fill(alive: &str, cookie: &str, epmd: u16, dir: &Path, n: u32, value: &str) {
    let kv = start(alive, cookie, epmd, dir);
    elixir(
        &kv,
        &unique("w"),
        cookie,
        &format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
for i <- 1..{n}, do: :ok = GenServer.call({{DistributedExample.KVStore, kv}}, {{:put, i, {value}}})
"#
        ),
    );
}

/// Parses lines `ACK <i> <last_put_seq> <incrs>` printed by a load round.
fn parse_acks(out: &str) -> HashMap<u32, (i64, u64)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("ACK "))
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|x| x.parse::<i64>());
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(i)), Some(Ok(p)), Some(Ok(n))) => Some((i as u32, (p, n as u64))),
                _ => None,
            }
        })
        .collect()
}

#[test]
fn acknowledged_writes_survive_sigkill_at_different_moments() {
    const CALLERS: u32 = 64;
    const ROUNDS: u32 = 5;
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_crash");
    let tmp = TempDataDir::new("kvnode_crash");
    let dir = tmp.0.clone();
    // Per round and caller: the last acknowledged put's sequence number.
    let mut puts: Vec<HashMap<u32, i64>> = Vec::new();
    // Per caller: acknowledged incrs over all rounds.
    let mut incrs: HashMap<u32, u64> = HashMap::new();
    for round in 0..=ROUNDS {
        let kv = start(&alive, &cookie, epmd, &dir);
        if round > 0 {
            kv.wait_log("recovered", Duration::from_secs(5));
        }
        // Verify everything acknowledged so far.
        let mut checks = String::new();
        let mut every = String::new();
        for (r, acked) in puts.iter().enumerate() {
            for (i, last) in acked {
                if *last >= 0 {
                    checks.push_str(&format!("{{{r}, {i}, {last}}},"));
                }
                every.push_str(&format!("{{{r}, {i}, {last}}},"));
            }
        }
        let mut counters = String::new();
        for i in 0..CALLERS {
            counters.push_str(&format!(
                "{{{i}, {}}},",
                incrs.get(&i).copied().unwrap_or(0)
            ));
        }
        let kill_after_ms = 150 + 250 * round;
        let script = format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
true = Node.connect(kv)
for {{r, i, last}} <- [{checks}] do
  for s <- 0..last do
    case GenServer.call(store, {{:get, {{:p, r, i, s}}}}) do
      ^s -> :ok
      other -> raise "lost acknowledged put #{{inspect({{r, i, s}})}}: #{{inspect(other)}}"
    end
  end
end
# Exact bounds on everything else: caller i of round r had its puts 0..last acknowledged
# (checked above) and at most one more in flight when kvnode died (seq last + 1: it may or
# may not have reached the log, the only key whose presence the test cannot know); it never
# sent seq last + 2. So the store holds exactly the acknowledged puts, the in-flight ones
# found present, and the counters: `:size` must be that count (no lost, invented or
# resurrected key), as must the recovery's own count in its log line.
in_flight = Enum.count([{every}], fn {{r, i, last}} ->
  nil = GenServer.call(store, {{:get, {{:p, r, i, last + 2}}}})
  GenServer.call(store, {{:get, {{:p, r, i, last + 1}}}}) != nil
end)
acked_puts = Enum.sum(for {{_, _, last}} <- [{every}], do: last + 1)
counters_present = Enum.count(0..({callers} - 1), fn i -> GenServer.call(store, {{:get, {{:c, i}}}}) != nil end)
size = GenServer.call(store, :size)
if size != acked_puts + in_flight + counters_present do
  raise "size #{{size}}: #{{acked_puts}} acknowledged puts + #{{in_flight}} in flight + #{{counters_present}} counters"
end
IO.puts("SIZE #{{size}}")
for {{i, acked}} <- [{counters}] do
  n = GenServer.call(store, {{:get, {{:c, i}}, 0}})
  # The incr in flight at the crash (at most one per caller: each waits for its reply) may
  # or may not have been applied: acked or acked + 1, nothing else.
  if n < acked or n > acked + 1 do
    raise "counter #{{i}} is #{{n}}, acknowledged #{{acked}}: the only allowed extra is the call in flight at the crash"
  end
  # Start this round from the recovered value, so bounds stay exact.
  :ok = GenServer.call(store, {{:put, {{:c, i}}, acked}})
end
IO.puts("VERIFIED")
if {last_round} do
  IO.puts("SCRIPT-OK")
else
  parent = self()
  for i <- 0..({callers} - 1) do
    spawn(fn ->
      loop = fn loop, seq, last_put, n ->
        res =
          try do
            :ok = GenServer.call(store, {{:put, {{:p, {round}, i, seq}}, seq}})
            try do
              GenServer.call(store, {{:incr, {{:c, i}}, 1}})
              {{:cont, seq, n + 1}}
            catch
              :exit, _ -> {{:stop, seq, n}}
            end
          catch
            :exit, _ -> {{:stop, last_put, n}}
          end
        case res do
          {{:cont, s, n2}} -> loop.(loop, seq + 1, s, n2)
          {{:stop, s, n2}} -> send(parent, {{:done, i, s, n2}})
        end
      end
      loop.(loop, 0, -1, 0)
    end)
  end
  # Choose the moment of the crash: this round kills after {kill_after_ms} ms of load.
  receive do after {kill_after_ms} -> :ok end
  {{_, 0}} = System.cmd("kill", ["-9", System.fetch_env!("KV_OS_PID")])
  for _ <- 1..{callers} do
    receive do
      {{:done, i, s, n}} -> IO.puts("ACK #{{i}} #{{s}} #{{n}}")
    after 30_000 -> raise "a caller never stopped"
    end
  end
  IO.puts("SCRIPT-OK")
end
"#,
            callers = CALLERS,
            last_round = round == ROUNDS,
        );
        let out = elixir_env(
            &kv,
            &unique("load"),
            &cookie,
            &script,
            &[("KV_OS_PID", kv.guard.pid().to_string())],
        );
        assert!(out.contains("VERIFIED"), "{out}");
        if round > 0 {
            // The recovery's own count is the same exact number.
            let size = out
                .lines()
                .find_map(|l| l.strip_prefix("SIZE "))
                .expect("SIZE line");
            assert!(
                kv.logs().contains(&format!("recovered {size} keys")),
                "round {round}: :size {size} after recovery; logs:\n{}",
                kv.logs()
            );
        }
        assert!(out.contains("SCRIPT-OK"), "{out}");
        if round == ROUNDS {
            break;
        }
        let acks = parse_acks(&out);
        assert_eq!(acks.len(), CALLERS as usize, "{out}");
        let total: i64 = acks.values().map(|(p, _)| p + 1).sum();
        assert!(
            total > 0,
            "no acknowledged writes before the kill in round {round}"
        );
        for (i, (_, n)) in &acks {
            *incrs.entry(*i).or_default() += n;
        }
        puts.push(acks.into_iter().map(|(i, (p, _))| (i, p)).collect());
        let mut kv = kv;
        let _ = wait_for("killed kvnode to exit", Duration::from_secs(10), || {
            kv.guard.child.try_wait().ok().flatten()
        });
    }
}

/// Newest `wal-*.log` in `dir`.
fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read data dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wal-") && n.ends_with(".log"))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a wal segment")
}

#[test]
fn a_torn_tail_is_cut_and_everything_before_it_kept() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_torn");
    let tmp = TempDataDir::new("kvnode_torn");
    let dir = tmp.0.clone();
    fill(
        &alive,
        &cookie,
        epmd,
        &dir,
        200,
        r#":binary.copy("v", 100)"#,
    );
    let seg = newest_segment(&dir);
    let full = std::fs::metadata(&seg).expect("segment").len();
    // Every put was its own acknowledged call, so its own frame, and keys 1..=200 and the
    // values are the same size: the segment is its 24-byte header and 200 equal frames.
    assert_eq!((full - 24) % 200, 0, "segment of {full} bytes");
    let frame = (full - 24) / 200;
    // Cut at several places inside the last records: each time the node starts, reports what it
    // dropped, and keeps exactly the writes whose frames are whole (1..n with no gaps).
    let mut len = full;
    for cut in [1u64, 7, 60, 150, 400] {
        len -= cut;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open segment");
        f.set_len(len).expect("truncate");
        drop(f);
        let whole = (len - 24) / frame;
        let kv = start(&alive, &cookie, epmd, &dir);
        kv.wait_log("recovered", Duration::from_secs(5));
        assert!(
            kv.logs().contains(&format!("recovered {whole} keys")),
            "cut to {len}: {}",
            kv.logs()
        );
        let out = elixir(
            &kv,
            &unique("r"),
            &cookie,
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
present = Enum.filter(1..200, fn i -> GenServer.call(store, {:get, i}) != nil end)
n = length(present)
^present = Enum.to_list(1..n) |> Enum.take(n)
^n = GenServer.call(store, :size)
IO.puts("PRESENT #{n}")
"#,
        );
        let n: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("PRESENT "))
            .and_then(|n| n.trim().parse().ok())
            .expect("count");
        assert_eq!(n, whole, "cut to {len} bytes (frames of {frame})");
        assert!(kv.logs().contains("dropped"), "{}", kv.logs());
        // Recovery cut the torn frame off: the file now ends after the last whole one.
        len = std::fs::metadata(&seg).expect("segment").len();
        assert_eq!(len, 24 + whole * frame);
    }
}

#[test]
fn corruption_in_the_middle_is_a_startup_error() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_corrupt");
    let tmp = TempDataDir::new("kvnode_corrupt");
    let dir = tmp.0.clone();
    fill(&alive, &cookie, epmd, &dir, 100, "i");
    let seg = newest_segment(&dir);
    let mut bytes = std::fs::read(&seg).expect("read");
    let at = 24 + 40; // inside the first record's payload
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).expect("write");
    let err = refused_start(&alive, &cookie, epmd, &dir);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn a_second_kvnode_on_the_same_directory_is_refused() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let tmp = TempDataDir::new("kvnode_lock");
    let dir = tmp.0.clone();
    let _kv = start(&unique("kv_lock1"), &cookie, epmd, &dir);
    let err = refused_start(&unique("kv_lock2"), &cookie, epmd, &dir);
    assert!(err.contains("lock") || err.contains("in use"), "{err}");
}

/// A tmpfs mounted by the test, unmounted on Drop.
struct Mount(PathBuf);
impl Mount {
    fn tmpfs(tag: &str, size: &str) -> Mount {
        let dir = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&dir).expect("mkdir mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs needs root; this test cannot run without it"
        );
        Mount(dir)
    }
    fn remount(&self, opts: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(st.success(), "remount {opts}");
    }
}
impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn a_full_disk_refuses_writes_and_keeps_serving_reads() {
    let mount = Mount::tmpfs("kvnode_tmpfs", "4m");
    let dir = mount.0.join("data");
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_full");
    let check = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
:ok = GenServer.call(store, {:put, :small, 1})
big = :binary.copy("x", 1_000_000)
results = for i <- 1..8, do: {i, GenServer.call(store, {:put, {:big, i}, big})}
IO.inspect(results, label: "results")
true = Enum.any?(results, fn {_, r} -> r == {:error, :storage_unavailable} end)
true = Enum.all?(results, fn {_, r} -> r in [:ok, {:error, :storage_unavailable}] end)
acked = for {i, :ok} <- results, do: i
IO.puts("ACKED #{Enum.join(acked, ",")}")
# reads go on
1 = GenServer.call(store, {:get, :small})
true = is_integer(GenServer.call(store, :size))
IO.puts("SCRIPT-OK")
"#;
    let acked: Vec<String> = {
        let kv = start(&alive, &cookie, epmd, &dir);
        let out = elixir(&kv, &unique("full"), &cookie, check);
        assert!(out.contains("SCRIPT-OK"), "{out}");
        out.lines()
            .find_map(|l| l.strip_prefix("ACKED "))
            .map(|l| {
                l.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    // Every acknowledged write is there after a restart.
    {
        let kv = start(&alive, &cookie, epmd, &dir);
        let out = elixir(
            &kv,
            &unique("after"),
            &cookie,
            &format!(
                r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
1 = GenServer.call(store, {{:get, :small}})
for i <- [{}] do
  1_000_000 = byte_size(GenServer.call(store, {{:get, {{:big, i}}}}))
end
# free space, then writes work again
for i <- 1..8, do: :ok = GenServer.call(store, {{:delete, {{:big, i}}}})
IO.puts("SCRIPT-OK")
"#,
                acked.join(",")
            ),
        );
        assert!(out.contains("SCRIPT-OK"), "{out}");
        drop(kv);
    }
}

/// A read-only data directory (one kvnode wrote before) is a clear startup error.
#[test]
fn a_read_only_data_dir_is_a_clear_startup_error() {
    let mount = Mount::tmpfs("kvnode_tmpfs_ro", "4m");
    let dir = mount.0.join("data");
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_ro");
    drop(start(&alive, &cookie, epmd, &dir));
    mount.remount("ro");
    let err = refused_start(&alive, &cookie, epmd, &dir);
    mount.remount("rw");
    assert!(
        err.contains("not writable") || err.contains("read-only"),
        "{err}"
    );
}

/// The 27 keys of the map-key resurrection report: 20 small maps, one 40-key map, maps
/// nested in a tuple and in a list, a map with a map key, and three plain keys. Elixir.
const MAP_ZOO: &str = r#"
small = for i <- 1..20, do: %{id: i, name: "n#{i}", tags: [i, i + 1], t: {i}}
keys =
  small ++
    [
      Map.new(1..40, &{&1, "v#{&1}"}),
      {:nested, %{a: 1, b: 2, c: 3}},
      [%{x: 1, y: 2}, %{z: 3, w: 4}],
      %{%{k1: 1, k2: 2} => :v, :other => 1},
      :plain_atom,
      "plain_binary",
      12_345
    ]
27 = length(keys)
indexed = Enum.with_index(keys)
"#;

/// Map keys come back from the dead after a restart: every key put twice, half deleted, all
/// acknowledged, SIGKILL, restart: each key and `:size` must be exact. The log holds keys as
/// eetf re-encodes them (maps in hash order); recovery used to merge records by those bytes.
#[test]
fn map_keys_overwritten_and_deleted_stay_so_after_sigkill() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_mapzoo");
    let tmp = TempDataDir::new("kvnode_mapzoo");
    let dir = tmp.0.clone();
    {
        let mut kv = start(&alive, &cookie, epmd, &dir);
        let out = elixir(
            &kv,
            &unique("w"),
            &cookie,
            &format!(
                r#"{MAP_ZOO}
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
for {{k, i}} <- indexed, do: :ok = GenServer.call(store, {{:put, k, {{:v1, i}}}})
for {{k, i}} <- indexed, do: :ok = GenServer.call(store, {{:put, k, {{:v2, i}}}})
for {{k, i}} <- indexed, rem(i, 2) == 0, do: :ok = GenServer.call(store, {{:delete, k}})
13 = GenServer.call(store, :size)
IO.puts("SCRIPT-OK")
"#
            ),
        );
        assert!(out.contains("SCRIPT-OK"), "{out}");
        kv.guard.child.kill().expect("SIGKILL kvnode");
        let _ = kv.guard.child.wait();
    }
    let kv = start(&alive, &cookie, epmd, &dir);
    kv.wait_log("recovered", Duration::from_secs(10));
    assert!(kv.logs().contains("recovered 13 keys"), "{}", kv.logs());
    let out = elixir(
        &kv,
        &unique("r"),
        &cookie,
        &format!(
            r#"{MAP_ZOO}
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
wrong =
  for {{k, i}} <- indexed,
      want = (if rem(i, 2) == 0, do: :absent, else: {{:v2, i}}),
      got = GenServer.call(store, {{:get, k, :absent}}),
      got != want,
      do: {{i, want, got}}
IO.inspect(wrong, label: "wrong", limit: :infinity)
[] = wrong
13 = GenServer.call(store, :size)
IO.puts("SCRIPT-OK")
"#
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

/// fsync itself is observed: `:kvnode.info`'s `storage_syncs` (successful commit
/// `fdatasync`s) grows by at least one per sequential acknowledged write, and stays 0
/// without `--data-dir`. Refused writes (`put_new` on a present key, a `cas` mismatch) stay
/// refused after SIGKILL and a restart.
#[test]
fn fsyncs_are_observed_and_refused_writes_stay_refused_after_sigkill() {
    const WRITES: u32 = 40;
    let cookie = unique("cookie");
    let epmd = free_port();
    let alive = unique("kv_syncs");
    let tmp = TempDataDir::new("kvnode_syncs");
    let dir = tmp.0.clone();
    {
        let mem = KvNode::start(&unique("kv_mem"), &cookie, epmd);
        let out = elixir(
            &mem,
            &unique("m"),
            &cookie,
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
for i <- 1..20, do: :ok = GenServer.call({DistributedExample.KVStore, kv}, {:put, i, i})
%{storage_syncs: 0} = :rpc.call(kv, :kvnode, :info, [])
IO.puts("SCRIPT-OK")
"#,
        );
        assert!(out.contains("SCRIPT-OK"), "{out}");
    }
    {
        let mut kv = start(&alive, &cookie, epmd, &dir);
        let out = elixir(
            &kv,
            &unique("w"),
            &cookie,
            &format!(
                r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
%{{storage_syncs: before}} = :rpc.call(kv, :kvnode, :info, [])
for i <- 1..{WRITES}, do: :ok = GenServer.call(store, {{:put, {{:w, i}}, i}})
%{{storage_syncs: after_puts}} = :rpc.call(kv, :kvnode, :info, [])
IO.puts("SYNCS #{{before}} #{{after_puts}}")
:ok = GenServer.call(store, {{:put, %{{a: 1, b: 2}}, :first}})
{{:error, :exists}} = GenServer.call(store, {{:put_new, %{{b: 2, a: 1}}, :second}})
:ok = GenServer.call(store, {{:put, :c, 1}})
{{:error, {{:mismatch, 1}}}} = GenServer.call(store, {{:cas, :c, 2, 3}})
:ok = GenServer.call(store, {{:put_new, :fresh, :new}})
IO.puts("SCRIPT-OK")
"#
            ),
        );
        assert!(out.contains("SCRIPT-OK"), "{out}");
        let (before, after): (u64, u64) = out
            .lines()
            .find_map(|l| l.strip_prefix("SYNCS "))
            .and_then(|l| {
                let mut it = l.split_whitespace().map(|n| n.parse().ok());
                Some((it.next()??, it.next()??))
            })
            .expect("SYNCS line");
        assert!(
            after >= before + u64::from(WRITES),
            "{WRITES} sequential acknowledged writes, but fdatasync completed {} times",
            after - before
        );
        eprintln!("storage_syncs: {before} -> {after} over {WRITES} acknowledged puts");
        kv.guard.child.kill().expect("SIGKILL kvnode");
        let _ = kv.guard.child.wait();
    }
    let kv = start(&alive, &cookie, epmd, &dir);
    kv.wait_log("recovered", Duration::from_secs(10));
    let out = elixir(
        &kv,
        &unique("r"),
        &cookie,
        &format!(
            r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
for i <- 1..{WRITES}, do: ^i = GenServer.call(store, {{:get, {{:w, i}}}})
:first = GenServer.call(store, {{:get, %{{a: 1, b: 2}}}})
1 = GenServer.call(store, {{:get, :c}})
:new = GenServer.call(store, {{:get, :fresh}})
{n} = GenServer.call(store, :size)
IO.puts("SCRIPT-OK")
"#,
            n = WRITES + 3
        ),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

/// Copies every file of `from` into the fresh directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create data dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("fixture entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy fixture file");
    }
}

/// A data directory written by the release before recovery merged by canonical key
/// (c65c28f; `tests/fixtures/datadir-c65c28f/make.sh` made it with real Elixir nodes): a
/// compaction snapshot and the log after it, with map keys (small, >32 keys, nested, as map
/// keys) and the rest of the key zoo put, overwritten, deleted, cas'd and incremented on both
/// sides of the snapshot. It recovers to exactly what that kvnode acknowledged.
#[test]
fn a_data_dir_written_by_the_previous_release_recovers_exactly() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-c65c28f");
    let expected = std::fs::read(fixture.join("expected.etf")).expect("expected.etf");
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    let cookie = unique("cookie");
    let epmd = free_port();
    let tmp = TempDataDir::new("kvnode_oldformat");
    let dir = tmp.0.clone();
    copy_dir(&fixture.join("data"), &dir);
    let kv = start(&unique("kv_old"), &cookie, epmd, &dir);
    kv.wait_log("recovered", Duration::from_secs(10));
    let script = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
expected = System.fetch_env!("EXPECTED") |> Base.decode16!(case: :lower) |> :erlang.binary_to_term()
absent = :"$absent"
wrong =
  for {k, want} <- expected,
      got = GenServer.call(store, {:get, k, absent}),
      got !== want,
      do: {k, want, got}
IO.inspect(wrong, label: "wrong", limit: :infinity)
[] = wrong
present = Enum.count(expected, fn {_, v} -> v !== absent end)
^present = GenServer.call(store, :size)
IO.puts("CHECKED #{length(expected)} PRESENT #{present}")
"#;
    let out = elixir_env(&kv, &unique("r"), &cookie, script, &[("EXPECTED", hex)]);
    assert!(out.contains("CHECKED 36 PRESENT 23"), "{out}");
    assert!(kv.logs().contains("recovered 23 keys"), "{}", kv.logs());
}
