//! Clients nobody on this project wrote, each side by side with a BEAM node hosting the same
//! GenServer: `erl_call` (erl_interface's `ei_rpc`, as C nodes use it) against `rex`,
//! `:rpc.block_call`, `:rpc.sbcast`, `:rpc.cast`, `:rpc.multicall`, spawns of plain functions,
//! and the functions callers reach for first (`whereis`, `registered`, `system_info`,
//! `statistics`); `erl_call -q`, `init:stop` and `halt` stop kvnode in order.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Boot code of the reference BEAM node: a GenServer registered as
/// `DistributedExample.KVStore`, with `get/1` and `put/2` functions like kvnode's rpc API.
const REFERENCE_KV: &str = r#"
defmodule DistributedExample.KVStore do
  use GenServer
  def start_link(_), do: GenServer.start_link(__MODULE__, %{}, name: __MODULE__)
  def get(k), do: GenServer.call(__MODULE__, {:get, k})
  def put(k, v), do: GenServer.call(__MODULE__, {:put, k, v})
  @impl true
  def init(s), do: {:ok, s}
  @impl true
  def handle_call({:get, k}, _from, s), do: {:reply, Map.get(s, k), s}
  def handle_call({:put, k, v}, _from, s), do: {:reply, :ok, Map.put(s, k, v)}
  @impl true
  def handle_info(_msg, s), do: {:noreply, s}
end
{:ok, _} = DistributedExample.KVStore.start_link([])
"#;

/// A reference BEAM node hosting [`REFERENCE_KV`], as `<alive>@127.0.0.1`.
fn reference_node(cookie: &str, epmd_port: u16) -> BeamNode {
    BeamNode::start(&unique("beamref"), cookie, epmd_port, REFERENCE_KV)
}

/// What a client run printed, and how it ended (None: killed at the deadline).
struct ErlCall {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

/// Runs OTP's own `erl_call` (erl_interface's `ei_rpc`) against `node` with `args`, killing it
/// after `timeout`.
///
/// Always this machine's `erl_call`, also when `KVNODE_OTP_ROOT` puts the BEAM nodes in an
/// OTP 27/29 root: inside a debootstrap root `erl_call` cannot resolve its own host name (no
/// `/etc/hosts`) and crashes, and what it sends (`{Pid, {call, M, F, A, user}}` to `rex`,
/// answered `{rex, Reply}`) has not changed across OTP releases, so the host's OTP 25
/// erl_interface exercises the same protocol. The reference BEAM nodes still run the row's OTP.
fn erl_call(epmd_port: u16, node: &str, cookie: &str, args: &[&str], timeout: Duration) -> ErlCall {
    let program = if std::path::Path::new("/usr/lib/erlang/bin/erl_call").exists() {
        "/usr/lib/erlang/bin/erl_call"
    } else {
        "erl_call"
    };
    let mut cmd = std::process::Command::new(program);
    cmd.args(["-n", node, "-c", cookie])
        .args(args)
        .env("ERL_EPMD_PORT", epmd_port.to_string());
    run_bounded(cmd, "erl_call", timeout)
}

/// Runs `cmd`, killing it after `timeout` (clients of a node without `rex` wait forever).
fn run_bounded(mut cmd: std::process::Command, what: &str, timeout: Duration) -> ErlCall {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard {
        child: cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}")),
        what: what.into(),
    };
    let mut stdout = guard.child.stdout.take().expect("stdout piped");
    let mut stderr = guard.child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = guard.child.kill();
            let _ = guard.child.wait();
            break None;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    ErlCall {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// `erl_call <args>` against `node`: its output (trimmed), failing the test when it does not
/// exit 0 within 30 s.
fn erl_call_ok(epmd_port: u16, node: &str, cookie: &str, args: &[&str]) -> String {
    let r = erl_call(epmd_port, node, cookie, args, Duration::from_secs(30));
    assert!(
        r.status.is_some_and(|s| s.success()),
        "erl_call -n {node} {args:?} did not succeed ({:?}; hangs forever without rex)\nstdout: {}\nstderr: {}",
        r.status,
        r.stdout,
        r.stderr
    );
    r.stdout.trim().to_owned()
}

/// `erl_call -a <apply>`: its output, failing the test when it does not exit 0 in time.
fn erl_call_apply(epmd_port: u16, node: &str, cookie: &str, apply: &str) -> String {
    erl_call_ok(epmd_port, node, cookie, &["-a", apply])
}

#[test]
fn erl_call_apply_answers_as_a_beam_node_does() {
    let kv = KvNode::fresh("kv_erlcall");
    let beam = reference_node(&kv.cookie, kv.epmd_port);
    // The reference node is up once erl_call reaches it.
    let beam_node = wait_for("the reference node", Duration::from_secs(60), || {
        let r = erl_call(
            kv.epmd_port,
            &beam.name,
            &kv.cookie,
            &["-a", "erlang node"],
            Duration::from_secs(20),
        );
        r.status
            .is_some_and(|s| s.success())
            .then(|| r.stdout.trim().to_owned())
    });
    assert_eq!(beam_node, format!("'{}'", beam.name));

    let ours = erl_call_apply(kv.epmd_port, &kv.name, &kv.cookie, "erlang node");
    assert_eq!(ours, format!("'{}'", kv.name));
    // Errors print exactly as the BEAM node's do.
    for apply in [
        "no_such_module no_such_fun [1,two]",
        "erlang no_such_fun",
        "erlang system_info [no_such_key]",
        "erlang whereis [\"not an atom\"]",
        "erlang whereis [no_such_name]",
    ] {
        let theirs = erl_call_apply(kv.epmd_port, &beam.name, &kv.cookie, apply);
        let ours = erl_call_apply(kv.epmd_port, &kv.name, &kv.cookie, apply);
        assert_eq!(ours, theirs, "erl_call -a '{apply}'");
    }
    // A registered process is a pid on both.
    for node in [&kv.name, &beam.name] {
        let pid = erl_call_apply(kv.epmd_port, node, &kv.cookie, "erlang whereis [rex]");
        assert!(pid.starts_with('<') && pid.ends_with('>'), "{node}: {pid}");
    }
    let ours = erl_call_apply(kv.epmd_port, &kv.name, &kv.cookie, "erlang registered");
    for name in ["rex", "net_kernel", "Elixir.DistributedExample.KVStore"] {
        assert!(ours.contains(name), "registered/0 on kvnode: {ours}");
    }
    let got = erl_call_apply(
        kv.epmd_port,
        &kv.name,
        &kv.cookie,
        "erlang statistics [wall_clock]",
    );
    assert!(got.starts_with('{') && got.ends_with('}'), "{got}");
}

/// The names `epmd -names` lists on `port`.
fn epmd_names(port: u16) -> String {
    let out = beam_command("epmd")
        .args(["-port", &port.to_string(), "-names"])
        .output()
        .expect("epmd -names");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_exit(kv: &mut KvNode, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = kv.guard.child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            panic!(
                "kvnode did not exit within {timeout:?}; logs:\n{}",
                kv.logs()
            );
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

#[test]
fn erl_call_q_stops_kvnode_in_order_and_keeps_the_data() {
    let cookie = unique("cookie");
    let (_epmd, epmd_port) = start_epmd();
    let dir = TempDataDir::new("kvnode_halt");
    let alive = unique("kv_halt");
    let data_dir = ["--data-dir", &dir.arg()];
    let mut kv = KvNode::start_with(&alive, &cookie, epmd_port, &data_dir);
    assert!(epmd_names(epmd_port).contains(&format!("name {alive} at")));
    // Acknowledged writes, and casts that are applied but need not be durable yet: the
    // orderly stop commits them.
    kv.script(
        "w",
        r#"
for i <- 1..50, do: :ok = GenServer.call(store, {:put, {:call, i}, i})
for i <- 1..500, do: GenServer.cast(store, {:put, {:cast, i}, i})
500 = GenServer.call(store, {:get, {:cast, 500}})
"#,
    );

    erl_call_ok(epmd_port, &kv.name, &cookie, &["-q"]);
    let status = wait_exit(&mut kv, Duration::from_secs(30));
    assert!(status.success(), "kvnode exit status {status}");
    let logs = kv.logs();
    assert!(logs.contains("unregistered from EPMD"), "{logs}");
    assert!(!epmd_names(epmd_port).contains(&format!("name {alive} at")));

    let kv = KvNode::start_with(&alive, &cookie, epmd_port, &data_dir);
    kv.script(
        "r",
        r#"
550 = GenServer.call(store, :size)
for i <- 1..50, do: ^i = GenServer.call(store, {:get, {:call, i}})
for i <- 1..500, do: ^i = GenServer.call(store, {:get, {:cast, i}})
"#,
    );

    // The same command halts a BEAM node (and exits 0) the same way.
    let beam = BeamNode::start(&unique("beamhalt"), &cookie, epmd_port, "");
    let mut beam = beam;
    wait_for("the BEAM node in EPMD", Duration::from_secs(60), || {
        epmd_names(epmd_port)
            .contains(&format!(
                "name {} at",
                beam.name.split('@').next().unwrap_or("")
            ))
            .then_some(())
    });
    erl_call_ok(epmd_port, &beam.name, &cookie, &["-q"]);
    wait_for("the BEAM node to halt", Duration::from_secs(30), || {
        beam.guard.child.try_wait().ok().flatten().map(|_| ())
    });
}

#[test]
fn init_stop_answers_ok_then_stops_and_halt_exits_with_its_status() {
    let cookie = unique("cookie");
    let (_epmd, epmd_port) = start_epmd();
    let mut kv = KvNode::start(&unique("kv_stop"), &cookie, epmd_port);
    kv.script(
        "stop",
        r#"
:ok = :rpc.call(kv, :init, :stop, [])
"#,
    );
    let status = wait_exit(&mut kv, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", kv.logs());

    let mut kv = KvNode::start(&unique("kv_halt3"), &cookie, epmd_port);
    kv.script(
        "halt",
        r#"
# As with a BEAM node, the caller gets no answer: the node is gone.
{:badrpc, :nodedown} = :rpc.call(kv, :erlang, :halt, [3])
"#,
    );
    let status = wait_exit(&mut kv, Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{}", kv.logs());
}

#[test]
fn classic_rpc_and_spawns_behave_as_on_a_beam_node() {
    let kv = KvNode::fresh("kv_classic");
    let beam = reference_node(&kv.cookie, kv.epmd_port);
    let out = elixir_env(
        &kv,
        &unique("classic"),
        &kv.cookie,
        r##"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
beam = String.to_atom(System.fetch_env!("BEAM_NODE"))
true = Node.connect(kv)
TestWait.until(fn -> Node.connect(beam) end, 60_000)
TestWait.until(fn -> is_pid(:rpc.call(beam, :erlang, :whereis, [DistributedExample.KVStore])) end, 60_000)
m = DistributedExample.KVStore
get = fn n, k -> :rpc.call(n, m, :get, [k]) end
# {node of the spawned pid, its DOWN reason}
down = fn n, mod, fun, args ->
  {pid, ref} = :erlang.spawn_monitor(n, mod, fun, args)
  at = node(pid)
  reason = receive do {:DOWN, ^ref, :process, _, r} -> r after 10_000 -> :no_down end
  {at, reason}
end

for n <- [kv, beam] do
TestCheck.run("rex, rpc, spawns and lookups on #{n}", fn ->
  # rex: gen_server calls and casts
  ^n = :rpc.block_call(n, :erlang, :node, [])
  ^n = :rpc.block_call(n, :erlang, :node, [], 10_000)
  :ok = :rpc.block_call(n, m, :put, [:block, n])
  ^n = get.(n, :block)
  :ok = GenServer.cast({:rex, n}, {:cast, m, :put, [:rex_cast, n], Process.group_leader()})
  TestWait.until(fn -> get.(n, :rex_cast) == n end)
  # rex: sbcast to an existing and a missing name
  {[^n], []} = :rpc.sbcast([n], m, :hello)
  {[], [^n]} = :rpc.sbcast([n], :no_such_name, :hello)
  # erpc path: cast, multicall
  true = :rpc.cast(n, m, :put, [:cast, n])
  TestWait.until(fn -> get.(n, :cast) == n end)
  {[^n], []} = :rpc.multicall([n], :erlang, :node, [])
  # spawns of plain functions
  {^n, :normal} = down.(n, :erlang, :node, [])
  pid = Node.spawn(n, m, :put, [:spawned, n])
  ^n = node(pid)
  TestWait.until(fn -> get.(n, :spawned) == n end)
  # what callers reach for first
  pid = :rpc.call(n, :erlang, :whereis, [m])
  true = is_pid(pid) and node(pid) == n
  :ok = GenServer.call(pid, {:put, :by_pid, 1})
  1 = get.(n, :by_pid)
  :undefined = :rpc.call(n, :erlang, :whereis, [:no_such_name])
  regs = :rpc.call(n, :erlang, :registered, [])
  true = m in regs and :rex in regs and :net_kernel in regs
  true = :rpc.call(n, :erlang, :system_info, [:process_count]) > 0
  true = :rpc.call(n, :erlang, :system_info, [:schedulers]) > 0
  true = :rpc.call(n, :erlang, :system_info, [:logical_processors_available]) > 0
  8 = :rpc.call(n, :erlang, :system_info, [:wordsize])
  for key <- [:wall_clock, :runtime, :reductions] do
    {total, since} = :rpc.call(n, :erlang, :statistics, [key])
    true = is_integer(total) and is_integer(since) and total >= since and since >= 0
  end
  ^n = :rpc.call(n, :erlang, :apply, [:erlang, :node, []])
end)
end

# Errors are the same terms on both.
same = fn label, f ->
  TestCheck.run(label, fn ->
    theirs = f.(beam)
    ours = f.(kv)
    if ours != theirs, do: raise("#{label}: kvnode #{inspect(ours)} != BEAM #{inspect(theirs)}")
    IO.inspect(ours, label: label)
  end)
end
same.("block_call undef", &:rpc.block_call(&1, :no_such_module, :f, [1, "two"]))
same.("block_call badarg", &:rpc.block_call(&1, :erlang, :whereis, ["x"]))
same.("call badarg", &:rpc.call(&1, :erlang, :whereis, ["x"]))
same.("system_info unknown", &:rpc.call(&1, :erlang, :system_info, [:no_such_key]))
same.("statistics unknown", &:rpc.call(&1, :erlang, :statistics, [:no_such_key]))
same.("spawn undef", &(down.(&1, :no_such_module, :f, [1]) |> elem(1)))
same.("spawn badarg", &(down.(&1, :erlang, :whereis, ["x"]) |> elem(1) |> elem(0)))
# rex ignores calls it does not know (the caller times out) and answers stop with stopped.
same.("rex unknown call", fn n ->
  try do GenServer.call({:rex, n}, :what, 300) catch :exit, r -> elem(r, 0) end
end)
TestCheck.finish()
IO.puts("SCRIPT-OK")
"##,
        &[("BEAM_NODE", beam.name.clone())],
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    println!("{out}");
}

/// Jinterface's jar: Debian's erlang-jinterface package.
fn jinterface_jar() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/share/java/OtpErlang.jar");
    if debian.exists() {
        return Some(debian);
    }
    let lib = std::fs::read_dir("/usr/lib/erlang/lib").ok()?;
    lib.filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("jinterface-"))
        .map(|e| e.path().join("priv/OtpErlang.jar"))
        .find(|p| p.exists())
}

/// A Java client using Jinterface's `OtpConnection.sendRPC` / `receiveRPC` (the rex
/// protocol, as every Jinterface program calls a node).
const JAVA_RPC: &str = r#"
import com.ericsson.otp.erlang.*;

public class Rpc {
    static OtpErlangObject rpc(OtpConnection c, String m, String f, OtpErlangObject... args) throws Exception {
        c.sendRPC(m, f, args);
        return c.receiveRPC();
    }

    public static void main(String[] a) throws Exception {
        OtpSelf self = new OtpSelf(a[2] + "@127.0.0.1", a[0]);
        OtpConnection c = self.connect(new OtpPeer(a[1]));
        String kv = "Elixir.DistributedExample.KVStore";
        System.out.println("node " + rpc(c, "erlang", "node"));
        System.out.println("whereis " + (rpc(c, "erlang", "whereis", new OtpErlangAtom("rex")) instanceof OtpErlangPid));
        System.out.println("undef " + rpc(c, "no_such_module", "f", new OtpErlangLong(1)));
        System.out.println("badarg " + rpc(c, "erlang", "whereis", new OtpErlangLong(1)));
        System.out.println("put " + rpc(c, kv, "put", new OtpErlangAtom("j"), new OtpErlangLong(5)));
        System.out.println("get " + rpc(c, kv, "get", new OtpErlangAtom("j")));
        c.close();
    }
}
"#;

/// Runs [`JAVA_RPC`] against `node`; its output.
fn java_rpc(
    jar: &std::path::Path,
    dir: &std::path::Path,
    epmd_port: u16,
    node: &str,
    cookie: &str,
) -> String {
    let mut cmd = std::process::Command::new("java");
    cmd.arg("-cp")
        .arg(jar)
        .arg(dir.join("Rpc.java"))
        .args([cookie, node, &unique("jclient")])
        .env("ERL_EPMD_PORT", epmd_port.to_string());
    let out = run_bounded(cmd, "java", Duration::from_secs(60));
    assert!(
        out.status.is_some_and(|s| s.success()),
        "Jinterface client against {node} failed ({:?}; receiveRPC waits forever without rex): {}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn jinterface_send_rpc_answers_as_a_beam_node_does() {
    // Jinterface needs a JDK and erlang-jinterface; scripts/test installs both. Their absence
    // is a failure, never a skip.
    let java = std::process::Command::new("java")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        java,
        "cannot run java: apt-get install -y default-jdk-headless"
    );
    let jar = jinterface_jar().unwrap_or_else(|| {
        panic!(
            "Jinterface is not installed (no OtpErlang.jar): apt-get install -y erlang-jinterface"
        )
    });
    let kv = KvNode::fresh("kv_jinterface");
    let beam = reference_node(&kv.cookie, kv.epmd_port);
    let tmp = TempDataDir::new("kvnode_java");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("Rpc.java"), JAVA_RPC).expect("write Rpc.java");
    // The reference node is up once its KV server is registered.
    let probe = format!(
        r#"
beam = :"{}"
TestWait.until(fn -> Node.connect(beam) end, 60_000)
TestWait.until(fn -> is_pid(:rpc.call(beam, :erlang, :whereis, [DistributedExample.KVStore])) end, 60_000)
IO.puts("SCRIPT-OK")
"#,
        beam.name
    );
    let out = elixir(&kv, &unique("probe"), &kv.cookie, &probe);
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let theirs = java_rpc(&jar, &dir, kv.epmd_port, &beam.name, &kv.cookie);
    let ours = java_rpc(&jar, &dir, kv.epmd_port, &kv.name, &kv.cookie);
    println!("BEAM:\n{theirs}kvnode:\n{ours}");
    assert_eq!(
        ours.lines().next(),
        Some(format!("node '{}'", kv.name).as_str()),
        "{ours}"
    );
    let rest = |s: &str| s.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(rest(&ours), rest(&theirs));
}
