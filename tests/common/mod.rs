//! Test support: start real kvnode binaries and real Elixir/Erlang nodes, each with its own
//! names and EPMD port, and kill exactly the processes a test started (on Drop, so also when
//! the test fails). Waiting is always polling against a deadline.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port for a listener, below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`). A port the kernel hands out for `bind(0)` comes from that
/// range, and so do the local ports of outgoing connections: tests that open a thousand
/// sockets at once (tests/lockout.rs, tests/slowloris.rs) would otherwise take a port another
/// test was just given before its kvnode could bind it. Ports are tried from a per-process
/// offset, each checked by binding it on all addresses and on loopback.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768)
        .clamp(12000, 65535);
    let base = 10000u32;
    let span = low - base;
    let start = (std::process::id() * 7919) % span;
    for _ in 0..span {
        let port = (base + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        let free = TcpListener::bind(("0.0.0.0", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port below the ephemeral range ({low})");
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A node name prefix unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// Kills the child (by its own pid) when dropped.
pub struct ChildGuard {
    pub child: Child,
    pub what: String,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running kvnode binary.
pub struct KvNode {
    pub guard: ChildGuard,
    pub name: String,
    pub cookie: String,
    pub epmd_port: u16,
    pub logs: Arc<Mutex<String>>,
    /// What the ready file said.
    pub ready: ReadyLine,
    ready_dir: PathBuf,
}

pub fn kvnode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kvnode"))
}

impl KvNode {
    /// Starts kvnode as `<alive>@127.0.0.1` with `cookie` on `epmd_port` and waits until it
    /// writes its `--ready-file` (failing at once, with the logs, if it exits first).
    pub fn start(alive: &str, cookie: &str, epmd_port: u16) -> KvNode {
        Self::start_with(alive, cookie, epmd_port, &[])
    }

    pub fn start_with(alive: &str, cookie: &str, epmd_port: u16, extra: &[&str]) -> KvNode {
        let name = format!("{alive}@127.0.0.1");
        let ready_dir = std::env::temp_dir().join(unique("kvnode_ready"));
        std::fs::create_dir_all(&ready_dir).expect("mkdir for the ready file");
        let ready_file = ready_dir.join("ready");
        let mut cmd = Command::new(kvnode_bin());
        cmd.args(["--name", &name, "--cookie", cookie])
            .args(["--epmd-port", &epmd_port.to_string()])
            .arg("--ready-file")
            .arg(&ready_file)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("KVNODE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("ERL_EPMD_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn kvnode");
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(String::new()));
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("KVNODE_TEST_ECHO").is_some() {
                    eprintln!("[kvnode] {line}");
                }
                let mut l = logs2.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut node = KvNode {
            guard: ChildGuard {
                child,
                what: name.clone(),
            },
            name,
            cookie: cookie.to_owned(),
            epmd_port,
            logs,
            ready: ReadyLine::default(),
            ready_dir,
        };
        // Ready is the file kvnode writes (atomically) once it is up; never the log text.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                node.ready = ReadyLine::parse(&text)
                    .unwrap_or_else(|| panic!("bad ready file {text:?}; logs:\n{}", node.logs()));
                break;
            }
            if let Ok(Some(status)) = node.guard.child.try_wait() {
                panic!("kvnode exited early ({status}); logs:\n{}", node.logs());
            }
            if Instant::now() > deadline {
                panic!(
                    "kvnode wrote no ready file after 20 s; logs:\n{}",
                    node.logs()
                );
            }
            std::thread::park_timeout(Duration::from_millis(20));
        }
        assert_eq!(node.ready.node, node.name, "ready file names the node");
        assert_eq!(
            node.ready.pid,
            node.guard.pid(),
            "ready file names the process"
        );
        node
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        wait_for(&format!("kvnode log line {needle:?}"), timeout, || {
            self.logs().contains(needle).then_some(())
        });
    }

    /// The distribution port, from the ready file.
    pub fn dist_port(&self) -> u16 {
        self.ready.dist_port
    }

    /// The ready file's path (it exists while kvnode runs; removed on an orderly stop).
    pub fn ready_file(&self) -> PathBuf {
        self.ready_dir.join("ready")
    }
}

impl Drop for KvNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.ready_dir);
    }
}

/// What kvnode's `--ready-file` says: one line of `key=value` pairs (see src/ready.rs).
#[derive(Debug, Default, Clone)]
pub struct ReadyLine {
    pub node: String,
    pub dist_port: u16,
    pub epmd_port: u16,
    pub pid: u32,
    pub creation: u32,
}

impl ReadyLine {
    pub fn parse(text: &str) -> Option<ReadyLine> {
        let field = |key: &str| {
            text.split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
        };
        Some(ReadyLine {
            node: field("node")?.to_owned(),
            dist_port: field("dist_port")?.parse().ok()?,
            epmd_port: field("epmd_port")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
            creation: field("creation")?.parse().ok()?,
        })
    }
}

/// Where the Erlang/Elixir executables come from. `KVNODE_OTP_ROOT` points at a chroot (the
/// interop matrix); otherwise the host's.
pub fn beam_command(program: &str) -> Command {
    match std::env::var("KVNODE_OTP_ROOT") {
        Ok(root) if !root.is_empty() => {
            let mut c = Command::new("chroot");
            c.arg(root).arg(program);
            c
        }
        _ => Command::new(program),
    }
}

/// Prepended to every test script: the one place scripts wait, by polling with a deadline.
/// `TestWait.until(fun, ms)` calls `fun` every 10 ms until it returns a truthy value (which it
/// returns) and raises when `ms` pass first. `TestCheck.run(name, fun)` runs one of several
/// independent checks of a script (a failure is printed and the script goes on), and
/// `TestCheck.finish()` raises if any failed: the Elixir side of [`Scenarios`].
const SCRIPT_HELPERS: &str = r#"
defmodule TestWait do
  def until(fun, ms \\ 10_000) do
    poll(fun, System.monotonic_time(:millisecond) + ms, ms)
  end

  defp poll(fun, deadline, ms) do
    case fun.() do
      v when v not in [nil, false] -> v
      _ ->
        if System.monotonic_time(:millisecond) > deadline, do: raise("condition not met within #{ms} ms")
        receive do after 10 -> :ok end
        poll(fun, deadline, ms)
    end
  end
end

defmodule TestCheck do
  # Independent checks in one script: each runs even when an earlier one failed (its error
  # goes to stderr), and finish/0 raises naming every failed one.
  def run(name, fun) do
    try do
      fun.()
    rescue
      e -> failed(name, Exception.format(:error, e, __STACKTRACE__))
    catch
      kind, reason -> failed(name, Exception.format(kind, reason, __STACKTRACE__))
    end
    :ok
  end

  defp failed(name, text) do
    IO.puts(:stderr, "CHECK FAILED: " <> name <> "\n" <> text)
    Process.put(:test_check_failed, [name | Process.get(:test_check_failed, [])])
  end

  def finish do
    case Process.get(:test_check_failed, []) do
      [] -> :ok
      names -> raise "checks failed: " <> Enum.join(Enum.reverse(names), ", ")
    end
  end
end
"#;

/// Output of a finished Elixir script.
pub struct ScriptOutput {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs an Elixir script on a fresh node `<alive>@127.0.0.1` (with `-start_epmd false`, so it
/// only talks to the EPMD on `epmd_port`). `KV_NODE` holds the kvnode's name. Fails the test
/// (with the script's output and kvnode's logs) when it does not exit 0 within 120 s.
pub fn elixir(kv: &KvNode, alive: &str, cookie: &str, script: &str) -> String {
    elixir_with(kv, alive, cookie, "", &[], script)
}

/// Like [`elixir`], with extra environment variables for the script.
pub fn elixir_env(
    kv: &KvNode,
    alive: &str,
    cookie: &str,
    script: &str,
    envs: &[(&str, String)],
) -> String {
    elixir_with(kv, alive, cookie, "", envs, script)
}

/// Like [`elixir`], with extra `erl` flags for the Elixir node.
pub fn elixir_raw_with_erl_args(
    kv: &KvNode,
    alive: &str,
    cookie: &str,
    erl: &str,
    script: &str,
) -> String {
    elixir_with(kv, alive, cookie, erl, &[], script)
}

fn elixir_with(
    kv: &KvNode,
    alive: &str,
    cookie: &str,
    erl: &str,
    envs: &[(&str, String)],
    script: &str,
) -> String {
    let out = elixir_inner(
        &kv.name,
        kv.epmd_port,
        alive,
        cookie,
        erl,
        envs,
        script,
        Duration::from_secs(120),
    );
    if !out.status.success() {
        panic!(
            "elixir script failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- kvnode logs\n{}",
            out.status,
            out.stdout,
            out.stderr,
            kv.logs()
        );
    }
    out.stdout
}

/// Runs a script without failing the test on a non-zero exit.
pub fn elixir_raw(
    kv_name: &str,
    epmd_port: u16,
    alive: &str,
    cookie: &str,
    script: &str,
    timeout: Duration,
) -> ScriptOutput {
    elixir_inner(kv_name, epmd_port, alive, cookie, "", &[], script, timeout)
}

#[allow(clippy::too_many_arguments)]
fn elixir_inner(
    kv_name: &str,
    epmd_port: u16,
    alive: &str,
    cookie: &str,
    erl: &str,
    envs: &[(&str, String)],
    script: &str,
    timeout: Duration,
) -> ScriptOutput {
    let dir = std::env::temp_dir().join(unique("kvnode_exs"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("t.exs");
    let script = format!("{SCRIPT_HELPERS}\n{script}");
    std::fs::write(&path, &script).expect("write script");
    // Scripts run inside a chroot must find the file there too.
    let mut inside_dir = None;
    let script_arg = match std::env::var("KVNODE_OTP_ROOT") {
        Ok(root) if !root.is_empty() => {
            let inside = PathBuf::from(&root).join("tmp").join(unique("kvnode_exs"));
            std::fs::create_dir_all(&inside).expect("mkdir in root");
            std::fs::write(inside.join("t.exs"), &script).expect("write script in root");
            let arg = PathBuf::from("/tmp")
                .join(inside.file_name().expect("name"))
                .join("t.exs");
            inside_dir = Some(inside);
            arg
        }
        _ => path.clone(),
    };
    let mut cmd = beam_command("elixir");
    cmd.args(["--name", &format!("{alive}@127.0.0.1"), "--cookie", cookie])
        .args([
            "--erl",
            &format!("-epmd_port {epmd_port} -start_epmd false {erl}"),
        ])
        .arg(&script_arg)
        .env("KV_NODE", kv_name)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = ChildGuard {
        child: cmd.spawn().expect("spawn elixir (is Elixir installed?)"),
        what: alive.to_owned(),
    };
    let mut stdout = guard.child.stdout.take().expect("stdout");
    let mut stderr = guard.child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = guard.child.kill();
            let status = guard.child.wait().expect("wait");
            let stdout = out_t.join().unwrap_or_default();
            let stderr = err_t.join().unwrap_or_default();
            panic!(
                "elixir script timed out after {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr} ({status})"
            );
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(inside) = inside_dir {
        let _ = std::fs::remove_dir_all(inside);
    }
    ScriptOutput {
        status,
        stdout,
        stderr,
    }
}

/// A long-running Elixir node (`--no-halt`), killed on Drop.
pub struct BeamNode {
    pub guard: ChildGuard,
    pub name: String,
}

impl BeamNode {
    /// Starts `elixir --name <alive>@127.0.0.1 --no-halt -e <boot>` against `epmd_port`.
    pub fn start(alive: &str, cookie: &str, epmd_port: u16, boot: &str) -> BeamNode {
        Self::start_with_erl(alive, cookie, epmd_port, "", boot)
    }

    /// Like [`BeamNode::start`], with extra `erl` flags (e.g. `-proto_dist inet_tls ...`).
    pub fn start_with_erl(
        alive: &str,
        cookie: &str,
        epmd_port: u16,
        erl: &str,
        boot: &str,
    ) -> BeamNode {
        let name = format!("{alive}@127.0.0.1");
        let mut cmd = beam_command("elixir");
        cmd.args(["--name", &name, "--cookie", cookie])
            .args([
                "--erl",
                &format!("-epmd_port {epmd_port} -start_epmd false {erl}"),
            ])
            .args(["--no-halt", "-e", boot])
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let guard = ChildGuard {
            child: cmd.spawn().expect("spawn elixir"),
            what: name.clone(),
        };
        BeamNode { guard, name }
    }
}

/// Elixir boot code for a far node: a process registered as `:relay` that forwards what it
/// receives, as `{:far_got, msg}`, to the pid last sent to it as `{:report_to, pid}`.
pub const RELAY: &str = r#"
defmodule Relay do
  def loop(to) do
    receive do
      {:report_to, pid} -> loop(pid)
      msg -> if to, do: send(to, {:far_got, msg}); loop(to)
    end
  end
end
Process.register(spawn(fn -> Relay.loop(nil) end), :relay)
"#;

/// Raises this process's soft fd limit to its hard limit (children inherit it) and checks
/// that at least `need` descriptors are allowed.
pub fn raise_fd_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to read and write.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert!(
        lim.rlim_cur >= need,
        "need at least {need} file descriptors, have {}",
        lim.rlim_cur
    );
}

/// A field of /proc/PID/status in MiB (`VmRSS`, `VmHWM`, ...).
pub fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// kvnode's resident set size in bytes, from /proc/PID/status.
pub fn rss(pid: u32) -> u64 {
    (status_mib(pid, "VmRSS") * 1024.0) as u64 * 1024
}

/// Bytes as MiB with one decimal, for messages.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// True when the peer has closed `s` (EOF or reset); false while it is open and silent
/// (`s` must be non-blocking).
pub fn is_closed(s: &std::net::TcpStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 256];
    let mut reader = s;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// A fresh file path as this test sees it and as an Elixir script sees it (under the OTP
/// root's /tmp when scripts run in a chroot, `KVNODE_OTP_ROOT`).
pub fn shared_path(what: &str) -> (PathBuf, String) {
    let name = unique(what);
    match std::env::var("KVNODE_OTP_ROOT") {
        Ok(root) if !root.is_empty() => (
            PathBuf::from(root).join("tmp").join(&name),
            format!("/tmp/{name}"),
        ),
        _ => {
            let path = std::env::temp_dir().join(&name);
            let inside = path.display().to_string();
            (path, inside)
        }
    }
}

/// The path of example `name` (`examples/NAME.rs`), built by `cargo build --examples` into the
/// same target directory as this test (scripts/interop-matrix builds them; `cargo test --test`
/// does not). Panics, saying how to build it, when it is missing.
#[allow(dead_code)]
pub fn example_bin(name: &str) -> PathBuf {
    // This test runs as <target>/<profile>/deps/<test>-<hash>; examples are in
    // <target>/<profile>/examples/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in <target>/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --examples` first (scripts/test does)",
        path.display()
    );
    path
}

// ---------------------------------------------------------------------------------------------
// The harness most tests read as: start -> script -> assert.
//
//     let kv = KvNode::fresh("kv_ops");             // own cookie, own EPMD port, ready file
//     let out = kv.script("ops", r#":ok = GenServer.call(store, {:put, :a, 1})"#);
//     assert!(out.contains("..."));                  // SCRIPT-OK is already checked
//
// Independent checks that share one expensive set-up run under `Scenarios`, so one failure
// does not hide the others.
// ---------------------------------------------------------------------------------------------

/// Prepended to [`KvNode::script`] bodies: binds `kv` (the kvnode's node name, an atom) and
/// `store` (`{DistributedExample.KVStore, kv}`), and connects to kvnode.
pub const KV_PRELUDE: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
"#;

/// `body` between [`KV_PRELUDE`] and a final `IO.puts("SCRIPT-OK")`.
pub fn kv_script(body: &str) -> String {
    format!("{KV_PRELUDE}\n{body}\nIO.puts(\"SCRIPT-OK\")\n")
}

impl KvNode {
    /// Starts kvnode as `<unique tag>@127.0.0.1` with a cookie and an EPMD port of its own.
    pub fn fresh(tag: &str) -> KvNode {
        Self::fresh_with(tag, &[])
    }

    /// [`KvNode::fresh`] with extra kvnode flags.
    pub fn fresh_with(tag: &str, extra: &[&str]) -> KvNode {
        Self::start_with(&unique(tag), &unique("cookie"), free_port(), extra)
    }

    /// Runs `body` (see [`kv_script`]) on a fresh Elixir node `<unique tag>@127.0.0.1` with
    /// this kvnode's cookie and EPMD; fails the test (with the output and kvnode's logs)
    /// unless it exits 0 and prints `SCRIPT-OK`. Returns its stdout.
    pub fn script(&self, tag: &str, body: &str) -> String {
        let out = elixir(self, &unique(tag), &self.cookie, &kv_script(body));
        assert!(out.contains("SCRIPT-OK"), "{out}");
        out
    }
}

/// Independent checks sharing one set-up: each runs to its end even when an earlier one
/// failed; [`Scenarios::finish`] then fails the test naming every failed check (each one's
/// panic message is printed as it happens, as usual).
#[must_use = "call finish() so failures fail the test"]
#[derive(Default)]
pub struct Scenarios {
    failed: Vec<String>,
    ran: usize,
}

impl Scenarios {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the check `name`, recording a panic instead of unwinding through the test.
    pub fn check(&mut self, name: &str, f: impl FnOnce()) {
        self.ran += 1;
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-text panic)");
            let why: String = why.chars().take(2000).collect();
            self.failed.push(format!("{name}: {why}"));
        }
    }

    /// Fails the test if any check failed.
    pub fn finish(self) {
        if !self.failed.is_empty() {
            panic!(
                "{} of {} checks failed:\n- {}",
                self.failed.len(),
                self.ran,
                self.failed.join("\n- ")
            );
        }
    }
}

/// Runs kvnode with `args` (and `ERL_EPMD_PORT` unset) expecting it to refuse to start: it
/// must exit non-zero within 20 s. Returns its stderr. A kvnode that starts anyway is killed
/// and fails the test (it never hangs it).
pub fn kvnode_refuses(args: &[&str]) -> String {
    let mut child = Command::new(kvnode_bin())
        .args(args)
        .env_remove("ERL_EPMD_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnode");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut guard = ChildGuard {
        child,
        what: "kvnode".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(status)) = guard.child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            drop(guard);
            let err = reader.join().unwrap_or_default();
            panic!("kvnode {args:?} was still running after 20 s; stderr:\n{err}");
        }
        std::thread::park_timeout(Duration::from_millis(20));
    };
    let err = reader.join().unwrap_or_default();
    assert!(
        !status.success(),
        "kvnode {args:?} exited 0; stderr:\n{err}"
    );
    err
}

/// Receives `n` lines from `rx` (what an example run in-process reports), failing the test
/// with what came so far when `timeout` passes first.
#[allow(dead_code)]
pub fn recv_lines(
    rx: &std::sync::mpsc::Receiver<String>,
    n: usize,
    timeout: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => got.push(line),
            Err(_) => panic!("only {} of {n} lines: {got:?}", got.len()),
        }
    }
    got
}

/// The Jinterface jar (`OtpErlang.jar`), or a panic saying how to install it.
#[allow(dead_code)]
pub fn jinterface_jar() -> PathBuf {
    let mut candidates = vec![PathBuf::from("/usr/share/java/OtpErlang.jar")];
    if let Ok(dir) = std::fs::read_dir("/usr/lib/erlang/lib") {
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().starts_with("jinterface-") {
                candidates.push(e.path().join("priv/OtpErlang.jar"));
            }
        }
    }
    candidates.into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "Jinterface is not installed (no OtpErlang.jar): apt-get install -y erlang-jinterface default-jdk-headless"
        )
    })
}

/// What a `kvnode` client command (`kvnode call ...`) did: exit status, stdout, stderr.
#[derive(Debug)]
pub struct ClientRun {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `kvnode <args>` (a client command) with `ERL_EPMD_PORT`, `ERLANG_COOKIE` and
/// `RUST_LOG` unset, and waits for it to exit; killed (failing the test) after 60 s, so a
/// hung client never hangs the test.
pub fn kvnode_client(args: &[&str]) -> ClientRun {
    let mut child = Command::new(kvnode_bin())
        .args(args)
        .env_remove("ERL_EPMD_PORT")
        .env_remove("ERLANG_COOKIE")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvnode");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut guard = ChildGuard {
        child,
        what: "kvnode client".into(),
    };
    let status = wait_for(
        &format!("kvnode {args:?} to exit"),
        Duration::from_secs(60),
        || guard.child.try_wait().ok().flatten(),
    );
    ClientRun {
        status: status.code(),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Kills (SIGKILL) the process `pid` when dropped: for processes a test started that are not
/// its children (a daemon that detached).
pub struct PidGuard(pub u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0) {
            // SAFETY: kill(2) on a pid this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Attaches `strace -f` to the running process `pid` (all its threads), tracing the system
/// calls that write, send or sync (`-xx`: every byte of their buffers in hex) into `out`.
/// Returns the guard (SIGKILL on Drop) and strace's stderr, which says `attached` once it is
/// tracing. Panics, saying how to install it, when strace is missing (scripts/test installs it).
pub fn strace_attach(pid: u32, out: &std::path::Path) -> (ChildGuard, Arc<Mutex<String>>) {
    let mut child = Command::new("strace")
        .args(["-f", "-p", &pid.to_string(), "-s", "1000000", "-xx"])
        .args([
            "-e",
            "trace=write,writev,pwrite64,pwritev,pwritev2,sendto,sendmsg,fdatasync,fsync",
        ])
        .arg("-o")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run strace ({e}): apt-get install -y strace"));
    let stderr = child.stderr.take().expect("stderr piped");
    let text = Arc::new(Mutex::new(String::new()));
    let text2 = text.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let mut t = text2.lock().unwrap_or_else(|e| e.into_inner());
            t.push_str(&line);
            t.push('\n');
        }
    });
    let guard = ChildGuard {
        child,
        what: format!("strace -p {pid}"),
    };
    (guard, text)
}

/// [`wait_for`] for async tests: awaits `f` until it yields Some, or panics with `what`
/// after `timeout`. Yields to the runtime between looks (never blocks its thread).
pub async fn wait_for_async<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory under the temp dir (for `--data-dir`), removed when the guard drops.
pub struct TempDataDir(pub std::path::PathBuf);

impl TempDataDir {
    pub fn new(tag: &str) -> TempDataDir {
        let d = std::env::temp_dir().join(unique(tag));
        let _ = std::fs::remove_dir_all(&d);
        TempDataDir(d)
    }

    pub fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempDataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Completes a real distribution handshake with the node listening on `port` as a fake node
/// (`<prefix>_N@127.0.0.1`, creation 7) and returns the raw blocking socket and the fake
/// node's name. Call it off any tokio runtime (it runs its own).
pub fn raw_handshake(port: u16, cookie: &str, prefix: &str) -> (std::net::TcpStream, String) {
    let cookie = cookie.to_owned();
    let name = format!("{}@127.0.0.1", unique(prefix));
    let me: erl_dist::node::NodeName = name.parse().expect("name");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stream = rt.block_on(async move {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (s, _) = kvnode::internals::transport::handshake::connect(
            s,
            &me,
            7,
            &cookie,
            Duration::from_secs(10),
        )
        .await
        .expect("handshake");
        s.into_std().expect("into_std")
    });
    stream.set_nonblocking(false).expect("blocking");
    (stream, name)
}

/// An EPMD daemon of our own on a free port (kvnode's embedded EPMD would die with kvnode;
/// this one outlives any node registered with it), killed on Drop. Returns once it listens.
pub fn start_epmd() -> (ChildGuard, u16) {
    let port = free_port();
    let child = beam_command("epmd")
        .args(["-port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn epmd");
    let guard = ChildGuard {
        child,
        what: "epmd".into(),
    };
    wait_for("epmd to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    (guard, port)
}

/// What [`beam_cluster`] starts besides its BEAM nodes; `ClusterOpts::default()` is a cluster
/// of BEAM nodes only, with a cookie of its own, named `cl_…`.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClusterOpts<'a> {
    /// Prefix of every alive name (default `cl`): kvnode is `<prefix>_kv_<pid>_<n>`, BEAM node
    /// `i` is `<prefix>_<letter i>_<pid>_<n>` (`a`, `b`, `c`, ...), so with up to 10 BEAM nodes
    /// kvnode's name sorts after theirs (it is `global`'s boss). Script nodes a test adds sort
    /// before kvnode too when named `<prefix>_<a..j>`.
    pub prefix: &'a str,
    /// The cookie of every node (default: a unique one).
    pub cookie: Option<&'a str>,
    /// Start a kvnode first, with `--visible` and these extra flags; `None`: no kvnode.
    pub visible_kv: Option<&'a [&'a str]>,
}

/// BEAM nodes (and optionally a visible kvnode) started by [`beam_cluster`], sharing one
/// cookie and one EPMD daemon of their own. Every process is killed by its own pid when this is
/// dropped (kvnode first, EPMD last), also when the test fails.
pub struct BeamCluster {
    /// The kvnode ([`ClusterOpts::visible_kv`]); see [`BeamCluster::kv`].
    pub kv: Option<KvNode>,
    /// The BEAM nodes, in start order (each `elixir --no-halt -e <boot>`).
    pub beams: Vec<BeamNode>,
    /// The cookie every node uses.
    pub cookie: String,
    /// The port of the cluster's EPMD.
    pub epmd_port: u16,
    prefix: String,
    kv_alive: String,
    kv_args: Vec<String>,
    // Declared last: dropped after every node registered with it.
    _epmd: ChildGuard,
}

/// Starts an EPMD of its own, then (with [`ClusterOpts::visible_kv`]) a `--visible` kvnode
/// waiting for its ready file, then `n` long-running Elixir nodes (`--no-halt`), node `i`
/// booting with `boot(i, kv)` where `kv` is kvnode's node name (`""` without kvnode). The BEAM
/// nodes are only started, not waited for: a script reaches them with
/// `TestWait.until(fn -> Node.connect(n) end, 60_000)`. Names are unique to the test
/// (see [`ClusterOpts::prefix`]).
///
/// ```ignore
/// let kv_args = ["--global-name", "kv_store"];
/// let opts = ClusterOpts { prefix: "vis", cookie: Some("vis"), visible_kv: Some(&kv_args) };
/// let cluster = beam_cluster(2, opts, |_, _| String::new());
/// let (kv, a) = (cluster.kv(), &cluster.beams[0].name);
/// elixir(kv, &unique("vis_d"), &cluster.cookie, &format!("a = :\"{a}\" ..."));
/// ```
pub fn beam_cluster(
    n: usize,
    opts: ClusterOpts<'_>,
    boot: impl Fn(usize, &str) -> String,
) -> BeamCluster {
    assert!(n <= 26, "beam_cluster names nodes a..z: {n} nodes");
    let (epmd, epmd_port) = start_epmd();
    let prefix = if opts.prefix.is_empty() {
        "cl"
    } else {
        opts.prefix
    };
    let mut cluster = BeamCluster {
        kv: None,
        beams: Vec::with_capacity(n),
        cookie: opts.cookie.map_or_else(|| unique("cookie"), str::to_owned),
        epmd_port,
        prefix: prefix.to_owned(),
        kv_alive: unique(&format!("{prefix}_kv")),
        kv_args: opts
            .visible_kv
            .unwrap_or_default()
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
        _epmd: epmd,
    };
    if opts.visible_kv.is_some() {
        cluster.start_kv();
    }
    let kv_name = cluster.kv.as_ref().map(|kv| kv.name.clone());
    for i in 0..n {
        cluster.add_beam(&boot(i, kv_name.as_deref().unwrap_or("")));
    }
    cluster
}

impl BeamCluster {
    /// The kvnode (panics when the cluster was started without one).
    pub fn kv(&self) -> &KvNode {
        self.kv.as_ref().expect("a beam_cluster with visible_kv")
    }

    /// The BEAM nodes' names, in start order.
    pub fn names(&self) -> Vec<String> {
        self.beams.iter().map(|b| b.name.clone()).collect()
    }

    /// Starts one more BEAM node (the next letter) booting with `boot`.
    pub fn add_beam(&mut self, boot: &str) -> &BeamNode {
        let i = self.beams.len();
        let letter = char::from(b'a' + u8::try_from(i).expect("few nodes"));
        let alive = unique(&format!("{}_{letter}", self.prefix));
        let node = BeamNode::start(&alive, &self.cookie, self.epmd_port, boot);
        self.beams.push(node);
        &self.beams[i]
    }

    /// SIGKILLs kvnode and waits for it to exit; `kv` keeps its name and logs.
    pub fn kill_kv(&mut self) {
        let kv = self.kv.as_mut().expect("a beam_cluster with visible_kv");
        let _ = kv.guard.child.kill();
        let _ = kv.guard.child.wait();
    }

    /// Starts kvnode (again: same name, cookie, EPMD and flags) and waits for its ready file.
    pub fn start_kv(&mut self) -> &KvNode {
        let mut args = vec!["--visible"];
        args.extend(self.kv_args.iter().map(String::as_str));
        let kv = KvNode::start_with(&self.kv_alive, &self.cookie, self.epmd_port, &args);
        self.kv.insert(kv)
    }
}

/// Reads `stream` until EOF or `within` passes (data is read and dropped: ticks and the like);
/// true if the peer closed (EOF or reset), false if it kept the connection open.
pub fn closed_by_peer(stream: &mut std::net::TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream
            .set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return true,
        }
    }
}

/// A Rust node (the library's [`kvnode::NodeBuilder`]) as `<alive>@127.0.0.1` on loopback
/// with `cookie`, registering with the EPMD on `epmd_port`, one runtime thread: add what a
/// test needs, then `.start().await`.
pub fn rust_node(alive: &str, cookie: &str, epmd_port: u16) -> kvnode::NodeBuilder {
    kvnode::NodeBuilder::new(format!("{alive}@127.0.0.1"))
        .cookie(cookie)
        .epmd_port(epmd_port)
        .bind([127, 0, 0, 1].into())
        .threads(1)
}

/// [`elixir_raw`] that fails the test (with the script's output) unless it exits 0; its
/// stdout. For nodes that are not a [`KvNode`] (Rust nodes, examples).
pub fn elixir_ok(
    node_name: &str,
    epmd_port: u16,
    alive: &str,
    cookie: &str,
    script: &str,
    timeout: Duration,
) -> String {
    let out = elixir_raw(node_name, epmd_port, alive, cookie, script, timeout);
    assert!(
        out.status.success(),
        "elixir script failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// Elixir check helpers for term tests: binds `otp` (the release, an integer; printed as
/// `OTP <n>`), `show.(term)` (`~p` as a binary) and `check.(label, got, want)` (raises, showing
/// both, unless `got === want`).
pub const TERM_CHECKS: &str = r##"
otp = :erlang.system_info(:otp_release) |> List.to_integer()
IO.puts("OTP #{otp}")
show = fn t -> :io_lib.format(~c"~p", [t]) |> IO.iodata_to_binary() end
check = fn label, got, want ->
  if got !== want, do: raise("#{label}: got #{show.(got)}, want #{show.(want)}")
end
"##;

/// Durability check: starts a kvnode (`kv_<tag>_…`) with a fresh `--data-dir`, runs `writes`
/// (a [`KvNode::script`] body), SIGKILLs kvnode, starts it again on the same directory (same
/// name, cookie and EPMD port) and runs `reads`. Returns both scripts' stdout.
pub fn kv_script_with_restart(tag: &str, writes: &str, reads: &str) -> (String, String) {
    let tmp = TempDataDir::new(&format!("kvnode_{tag}"));
    let dir = tmp.arg();
    let alive = unique(&format!("kv_{tag}"));
    let cookie = unique("cookie");
    let epmd = free_port();
    let written = {
        let mut kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir]);
        let out = kv.script(&format!("{tag}_w"), writes);
        kv.guard.child.kill().expect("SIGKILL kvnode");
        let _ = kv.guard.child.wait();
        out
    };
    let kv = KvNode::start_with(&alive, &cookie, epmd, &["--data-dir", &dir]);
    let read = kv.script(&format!("{tag}_r"), reads);
    (written, read)
}

/// Builds `examples/NAME.rs` with the profile this test runs under and returns the binary's
/// path. The nested `cargo build` drops the `CARGO_*` variables cargo set for the test (but
/// `CARGO_HOME`/`CARGO_TARGET_DIR`): ring's build script tracks some of them, so a build that
/// inherits them rebuilds ring and kvnode, and `cargo test`'s next build rebuilds them back
/// (about 35 s a run). Callers cache the path (one build per test binary).
#[allow(dead_code)]
pub fn build_example(name: &str) -> PathBuf {
    // A test runs as TARGET/PROFILE/deps/TEST-HASH.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("TARGET/PROFILE/deps");
    let target_dir = profile_dir.parent().expect("TARGET");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "--example", name, "--manifest-path"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| {
            k.starts_with("CARGO_") && !matches!(k, "CARGO_HOME" | "CARGO_TARGET_DIR")
        }) {
            cmd.env_remove(key);
        }
    }
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(status.success(), "cargo build --example {name} failed");
    profile_dir.join("examples").join(name)
}
