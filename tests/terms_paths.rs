//! Terms eetf cannot hold (OTP 29 native records; maps with both `0.0` and `-0.0` as keys,
//! two keys since OTP 27) on the paths that are not the KV server's idle fast path: rpc,
//! erpc and spawn arguments, rex calls, plain messages to kvnode processes, requests that
//! wait in a busy (suspended) KV server's mailbox, and replies to kvnode's own calls
//! (`kvnode call`). Before, each of these closed the peer's whole connection ("malformed
//! term"), losing every call in flight on it, or dropped the request so its caller timed out.
//!
//! Each script asserts that the feature exists exactly where it should (signed zeros from
//! OTP 27, records from OTP 29) and runs its checks on what exists: on the host row (OTP 25)
//! there is nothing to check but the absence. Run on the sid row (OTP 29):
//! `bash /work/notes/rowtest.sh sid terms_paths`.

mod common;

use common::*;

/// Binds `otp`, `bads` (the unrepresentable terms this OTP can make: a signed-zero map from
/// 27, a native record from 29), `alive` (asserts the connection to kvnode is up and serves)
/// and `prompt` (runs a function, fails past 4 s, prints the time).
const PRELUDE: &str = r##"
otp = :erlang.system_info(:otp_release) |> List.to_integer()
nz = :erlang.binary_to_term(<<131, 70, 128, 0, 0, 0, 0, 0, 0, 0>>)
zeros = %{0.0 => :pos, nz => :neg}
if (map_size(zeros) == 2) != (otp >= 27), do: raise("signed zeros on OTP #{otp}: #{map_size(zeros)}")
has_records = Code.ensure_loaded?(:records) and function_exported?(:records, :create, 4)
if has_records != (otp >= 29), do: raise("native records on OTP #{otp}: #{has_records}")
bads =
  (if otp >= 27, do: [zeros, [1, {zeros}]], else: []) ++
  (if has_records, do: [:records.create(:geo, :pt, [x: 1, y: 2.5], %{is_exported: true})], else: [])
IO.puts("OTP #{otp}: #{length(bads)} unrepresentable terms")
show = fn t -> :io_lib.format(~c"~p", [t]) |> IO.iodata_to_binary() end
alive = fn label ->
  unless kv in Node.list(:hidden), do: raise("#{label}: the connection to kvnode is gone")
  :ok = GenServer.call(store, {:put, :alive, label})
  ^label = GenServer.call(store, {:get, :alive})
end
prompt = fn label, f ->
  t0 = System.monotonic_time(:millisecond)
  r = f.()
  ms = System.monotonic_time(:millisecond) - t0
  IO.puts("#{label}: #{ms} ms, #{show.(r)}")
  if ms > 4000, do: raise("#{label}: took #{ms} ms")
  r
end
"##;

/// rpc/erpc/spawn arguments, rex calls and plain messages holding such a term: each gets its
/// documented answer at once, a call already in flight on the same connection is still
/// answered, the connection stays up and nothing stored changes.
const SIGNALS: &str = r##"
:ok = GenServer.call(store, {:put, :before, 1})
alive.("start")
for {bad, i} <- Enum.with_index(bads) do
  keys = GenServer.call(store, :keys) |> Enum.sort()
  # A call in flight on this connection while the bad signals arrive.
  :ok = :sys.suspend(store)
  inflight = :gen_server.send_request(store, {:put, {:inflight, i}, i})
  r = prompt.("erpc #{i}", fn ->
    try do
      :erpc.call(kv, DistributedExample.KVStore, :get, [bad], 10_000)
    catch
      kind, reason -> {kind, reason}
    end
  end)
  {:error, {:erpc, :unrepresentable}} = r
  r = prompt.("rpc #{i}", fn -> :rpc.call(kv, DistributedExample.KVStore, :put, [:x, bad], 10_000) end)
  {:badrpc, {:EXIT, :unrepresentable}} = r
  r = prompt.("spawn #{i}", fn ->
    try do
      Node.spawn(kv, DistributedExample.KVStore, :get, [bad])
    catch
      kind, reason -> {kind, reason}
    end
  end)
  {:error, :unrepresentable} = r
  r = prompt.("rex #{i}", fn ->
    :gen_server.call({:rex, kv}, {:call, :erlang, :length, [bad], Process.group_leader()}, 10_000)
  end)
  {:badrpc, {:EXIT, :unrepresentable}} = r
  # Plain messages to kvnode processes (by name, by pid): dropped.
  send({:rex, kv}, {self(), {:call, :erlang, :length, [bad], Process.group_leader()}})
  send({:net_kernel, kv}, {:whatever, bad})
  :ok = :sys.resume(store)
  {:reply, :ok} = :gen_server.receive_response(inflight, 30_000)
  alive.("after #{i}")
  ^i = GenServer.call(store, {:get, {:inflight, i}})
  :ok = GenServer.call(store, {:delete, {:inflight, i}})
  nil = GenServer.call(store, {:get, :x})
  if GenServer.call(store, :keys) |> Enum.sort() != keys, do: raise("keys changed")
end
1 = GenServer.call(store, {:get, :before})
"##;

/// Requests holding such a term that wait in the mailbox of a suspended KV server are
/// served from their bytes when it resumes, as the idle server serves them.
const QUEUED: &str = r##"
for {bad, i} <- Enum.with_index(bads) do
  :ok = GenServer.call(store, {:put, {:old, i}, :old})
  :ok = :sys.suspend(store)
  # Sent before the resume on the same connection, so they wait in the mailbox.
  puts =
    for req <- [
          {:put, {:q, i}, bad},
          {:put, bad, {:as_key, i}},
          {:put_new, {:new, i}, bad},
          {:cas, {:old, i}, :old, bad}
        ],
        do: :gen_server.send_request(store, req)
  GenServer.cast(store, {:put, {:cast, i}, bad})
  :ok = :sys.resume(store)
  for p <- puts, do: {:reply, :ok} = :gen_server.receive_response(p, 30_000)
  for k <- [{:q, i}, {:new, i}, {:old, i}, {:cast, i}] do
    got = GenServer.call(store, {:get, k})
    if got !== bad, do: raise("#{show.(k)}: got #{show.(got)}")
  end
  {:as_key, ^i} = GenServer.call(store, {:get, bad})
  # A get that waits in the mailbox is answered with the stored bytes.
  :ok = :sys.suspend(store)
  get = :gen_server.send_request(store, {:get, {:q, i}})
  :ok = :sys.resume(store)
  {:reply, got} = :gen_server.receive_response(get, 30_000)
  if got !== bad, do: raise("queued get: got #{show.(got)}")
  alive.("queued #{i}")
end
"##;

#[test]
fn unrepresentable_arguments_and_messages_cost_only_their_own_signal() {
    let kv = KvNode::fresh("kv_paths_sig");
    let out = kv.script("paths_sig", &format!("{PRELUDE}\n{SIGNALS}"));
    eprintln!("{out}");
    let logs = kv.logs();
    assert!(!logs.contains("malformed term"), "{logs}");
}

#[test]
fn unrepresentable_requests_queued_in_a_busy_kv_server_are_served() {
    let kv = KvNode::fresh("kv_paths_q");
    let out = kv.script("paths_q", &format!("{PRELUDE}\n{QUEUED}"));
    eprintln!("{out}");
    let logs = kv.logs();
    assert!(!logs.contains("cannot decode unchanged"), "{logs}");
}

/// `kvnode call` answered with such a term (a stored value read back): printed from its bytes
/// as OTP prints it, exit status 0, never `noconnection` (the connection is not closed) or a
/// panic.
#[test]
fn kvnode_call_of_an_unrepresentable_reply_says_so() {
    let kv = KvNode::fresh("kv_paths_cli");
    let out = kv.script(
        "paths_cli",
        &format!("{PRELUDE}\nfor {{bad, i}} <- Enum.with_index(bads), do: :ok = GenServer.call(store, {{:put, {{:bad, i}}, bad}})\n"),
    );
    eprintln!("{out}");
    let count: usize = out
        .lines()
        .find_map(|l| {
            l.split_once(": ")?
                .1
                .strip_suffix(" unrepresentable terms")?
                .parse()
                .ok()
        })
        .expect("count line");
    let port = kv.epmd_port.to_string();
    assert!(
        count <= SHOWN.len(),
        "{count} terms, {} expected texts",
        SHOWN.len()
    );
    for (i, shown) in SHOWN.iter().enumerate().take(count) {
        let run = kvnode_client(&[
            "call",
            &kv.name,
            "Elixir.DistributedExample.KVStore",
            &format!("{{get, {{bad, {i}}}}}"),
            "--cookie",
            &kv.cookie,
            "--epmd-port",
            &port,
        ]);
        eprintln!("kvnode call {i}: {run:?}");
        assert_eq!(run.status, Some(0), "{run:?}");
        assert_eq!(run.stdout.trim_end(), *shown, "{run:?}");
        assert!(!run.stderr.contains("noconnection"), "{run:?}");
    }
}

/// How `kvnode call` prints the PRELUDE's `bads`, in order (OTP 27+: the signed-zero map and
/// a list holding it; OTP 29+ also a native record, as OTP 29's `~p` prints it).
const SHOWN: [&str; 3] = [
    "#{-0.0 => neg,0.0 => pos}",
    "[1,{#{-0.0 => neg,0.0 => pos}}]",
    "#geo:pt{x = 1,y = 2.5}",
];

/// Boot code for a BEAM node whose `Bad.get/0` returns an unrepresentable term (a native
/// record on OTP 29+, a signed-zero map on 27 and 28, `:plain` before) and whose
/// `:bad_server` answers every call with it.
const BAD_BOOT: &str = r##"
otp = :erlang.system_info(:otp_release) |> List.to_integer()
nz = :erlang.binary_to_term(<<131, 70, 128, 0, 0, 0, 0, 0, 0, 0>>)
bad =
  cond do
    otp >= 29 -> :records.create(:geo, :pt, [x: 1, y: 2.5], %{is_exported: true})
    otp >= 27 -> %{0.0 => :pos, nz => :neg}
    true -> :plain
  end
:persistent_term.put(:bad, bad)
defmodule Bad do
  def get(), do: :persistent_term.get(:bad)
  def loop() do
    receive do
      {:"$gen_call", from, _} -> GenServer.reply(from, get())
      _ -> :ok
    end
    loop()
  end
end
Process.register(spawn(&Bad.loop/0), :bad_server)
"##;

/// Replies to kvnode's own calls holding such a term, from a real BEAM node: `kvnode call`
/// (a GenServer reply), `kvnode rpc` (erpc: the spawned process's DOWN reason) and `kvnode
/// rpc --rex` all print it from its bytes and exit 0, promptly, instead of losing the
/// connection.
#[test]
fn kvnode_call_and_rpc_of_a_beam_node_answering_such_a_term_say_so() {
    let kv = KvNode::fresh("kv_paths_epmd");
    let cookie = unique("cookie");
    let beam = BeamNode::start(&unique("bad_beam"), &cookie, kv.epmd_port, BAD_BOOT);
    let port = kv.epmd_port.to_string();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--cookie", &cookie, "--epmd-port", &port]);
        kvnode_client(&all)
    };
    wait_for(
        "bad_server registered",
        std::time::Duration::from_secs(60),
        || {
            let r = run(&["rpc", &beam.name, "erlang", "whereis", "[bad_server]"]);
            (r.status == Some(0) && r.stdout.starts_with('<')).then_some(())
        },
    );
    let r = run(&["rpc", &beam.name, "erlang", "system_info", "[otp_release]"]);
    let otp: u32 = r
        .stdout
        .trim()
        .trim_matches('"')
        .parse()
        .expect("otp release");
    let cases: [&[&str]; 3] = [
        &["call", &beam.name, "bad_server", "get"],
        &["rpc", &beam.name, "Elixir.Bad", "get", "[]"],
        &["rpc", &beam.name, "--rex", "Elixir.Bad", "get", "[]"],
    ];
    for args in cases {
        let started = std::time::Instant::now();
        let r = run(args);
        eprintln!("OTP {otp} {args:?}: {:?} in {:?}", r, started.elapsed());
        if otp >= 27 {
            let shown = if otp >= 29 { SHOWN[2] } else { SHOWN[0] };
            assert_eq!(r.status, Some(0), "{args:?}: {r:?}");
            assert_eq!(r.stdout.trim_end(), shown, "{args:?}: {r:?}");
        } else {
            assert_eq!(r.status, Some(0), "{args:?}: {r:?}");
            assert_eq!(r.stdout.trim(), "plain", "{args:?}: {r:?}");
        }
    }
}
