//! examples/visible_cluster.rs against a real Elixir node: the example's visible Rust node
//! registers a counter with `global` and joins it to a `pg` group; the Elixir side calls it
//! by `{:global, :rust_counter}` and finds it in `:pg.get_members/2`, and the example's own
//! output shows it called the Elixir global server by `Dest::Global`, saw the Elixir pg
//! member, and followed a later join and leave.

mod common;

use common::{ChildGuard, ClusterOpts, beam_cluster, elixir_ok, shared_path, unique, wait_for};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// The example's binary, built once per test process with the same profile and target
/// directory as this test (`cargo test --test NAME` builds no examples itself).
fn example_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| common::build_example("visible_cluster"))
        .clone()
}

/// The running example (killed on Drop), its stdout lines collected as they come.
struct Example {
    guard: ChildGuard,
    name: String,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Example {
    fn start(alive: &str, cookie: &str, epmd_port: u16, elixir: &str) -> Example {
        let name = format!("{alive}@127.0.0.1");
        let mut child = Command::new(example_bin())
            .args([name.as_str(), cookie, elixir, &epmd_port.to_string()])
            .env_remove("ERL_EPMD_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn examples/visible_cluster");
        let stdout = child.stdout.take().expect("stdout piped");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        Example {
            guard: ChildGuard {
                child,
                what: name.clone(),
            },
            name,
            lines,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits (at most [`LONG`]) for a line equal to `want`; fails, showing every line, when
    /// the example exits first or the time passes. `meanwhile` runs at each poll (it may fail
    /// the test itself: a script that ended early).
    fn wait_line(&mut self, want: &str, mut meanwhile: impl FnMut()) {
        let deadline = Instant::now() + LONG;
        loop {
            {
                let got = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if got.iter().any(|l| l == want) {
                    return;
                }
                if let Ok(Some(status)) = self.guard.child.try_wait() {
                    panic!("the example exited ({status}) before {want:?}; it printed:\n{got:#?}");
                }
                if Instant::now() > deadline {
                    panic!(
                        "no line {want:?} from the example within {LONG:?}; it printed:\n{got:#?}"
                    );
                }
            }
            meanwhile();
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }
}

/// Boot code of the Elixir node: a GenServer registered as `{:global, :elixir_echo}`, the pg
/// scope `:demo` with one member in `:workers`; then it writes `flag`.
fn elixir_boot(flag: &str) -> String {
    format!(
        r#"
defmodule Echo do
  use GenServer
  def init(s), do: {{:ok, s}}
  def handle_call({{:echo, term}}, _from, s), do: {{:reply, {{:echoed, term, node()}}, s}}
end
{{:ok, _}} = GenServer.start(Echo, nil, name: {{:global, :elixir_echo}})
{{:ok, _}} = :pg.start(:demo)
:ok = :pg.join(:demo, :workers, spawn(fn -> Process.sleep(:infinity) end))
File.write!("{flag}", "ready")
"#
    )
}

#[test]
fn elixir_and_a_visible_rust_node_meet_by_global_name_and_pg_group() {
    let (flag, flag_inside) = shared_path("vc_app_ready");
    let boot = elixir_boot(&flag_inside);
    let opts = ClusterOpts {
        prefix: "vc",
        ..Default::default()
    };
    let cluster = beam_cluster(1, opts, |_, _| boot.clone());
    let app = cluster.beams[0].name.clone();
    wait_for("the Elixir node's Echo and pg scope", LONG, || {
        flag.exists().then_some(())
    });
    let _ = std::fs::remove_file(&flag);

    let mut example = Example::start(&unique("vc_rust"), &cluster.cookie, cluster.epmd_port, &app);
    let rust = example.name.clone();
    example.wait_line("ready", || {});

    // The example's own account: it reached the Elixir global server and saw its pg member.
    let got = example.lines();
    let pid_prefix = format!("global whereis elixir_echo -> <'{app}'.");
    let mut nodes = [app.as_str(), rust.as_str()];
    nodes.sort_unstable();
    let members = format!("pg members workers -> 2: {} x1, {} x1", nodes[0], nodes[1]);
    let want = vec![
        format!("node {rust} visible, connected to {app}"),
        "global register rust_counter -> ok".to_owned(),
        "pg join demo workers -> ok".to_owned(),
        pid_prefix.clone(),
        format!("global call elixir_echo -> {{'echoed','hello_from_rust','{app}'}}"),
        "global names -> elixir_echo rust_counter".to_owned(),
        members,
        "ready".to_owned(),
    ];
    assert_eq!(got.len(), want.len(), "the example printed:\n{got:#?}");
    for (g, w) in got.iter().zip(&want) {
        if w == &pid_prefix {
            assert!(
                g.starts_with(w),
                "{g:?} should start with {w:?}; all:\n{got:#?}"
            );
        } else {
            assert_eq!(g, w, "the example printed:\n{got:#?}");
        }
    }

    // The Elixir side: calls the Rust counter by its global name (from two nodes), finds it in
    // the pg group (on the Elixir node and in a scope of its own), then joins the group and
    // waits (for `go`) until the test saw the example report that join.
    let (go, go_inside) = shared_path("vc_go");
    let script = format!(
        r#"
rust = :"{rust}"
app = :"{app}"
true = Node.connect(app)
TestWait.until(fn -> Node.connect(rust) end, 30_000)
:ok = :global.sync()
counter = TestWait.until(fn -> (p = :global.whereis_name(:rust_counter)) != :undefined && p end, 30_000)
^rust = node(counter)
{{:ok, 1, ^rust}} = GenServer.call({{:global, :rust_counter}}, :incr)
{{:ok, 2, ^rust}} = :erpc.call(app, GenServer, :call, [{{:global, :rust_counter}}, :incr])
2 = GenServer.call({{:global, :rust_counter}}, :value)
{{:error, :unknown}} = GenServer.call({{:global, :rust_counter}}, :what)
IO.puts("global ok")
true = counter in :erpc.call(app, :pg, :get_members, [:demo, :workers])
{{:ok, _}} = :pg.start(:demo)
TestWait.until(fn -> counter in :pg.get_members(:demo, :workers) end, 30_000)
2 = length(:pg.get_members(:demo, :workers))
IO.puts("pg ok")
member = spawn(fn -> Process.sleep(:infinity) end)
:ok = :pg.join(:demo, :workers, member)
TestWait.until(fn -> File.exists?("{go_inside}") end, 60_000)
IO.puts("VISIBLE-OK")
"#
    );
    let cookie = cluster.cookie.clone();
    let epmd_port = cluster.epmd_port;
    let script_alive = unique("vc_s");
    let script_node = format!("{script_alive}@127.0.0.1");
    let rust2 = rust.clone();
    let elixir = std::thread::spawn(move || {
        elixir_ok(&rust2, epmd_port, &script_alive, &cookie, &script, LONG * 2)
    });
    // (A script that fails ends the wait at once, with its output.)
    let mut elixir = Some(elixir);
    let finished = |elixir: &mut Option<std::thread::JoinHandle<String>>| {
        if elixir.as_ref().is_some_and(|e| e.is_finished()) {
            match elixir.take().map(|e| e.join()) {
                Some(Err(panic)) => std::panic::resume_unwind(panic),
                Some(Ok(out)) => panic!("the script ended before its go flag:\n{out}"),
                None => {}
            }
        }
    };
    example.wait_line(&format!("pg join 'workers': {script_node} x1"), || {
        finished(&mut elixir)
    });
    std::fs::write(&go, "go").expect("write the go flag");
    let out = match elixir.take().map(|e| e.join()) {
        Some(Ok(out)) => out,
        Some(Err(panic)) => std::panic::resume_unwind(panic),
        None => panic!("the script's thread was joined already"),
    };
    let _ = std::fs::remove_file(&go);
    assert!(
        out.contains("global ok") && out.contains("pg ok") && out.contains("VISIBLE-OK"),
        "{out}"
    );
    // The script's node went down: its member left the group.
    example.wait_line(&format!("pg leave 'workers': {script_node} x1"), || {});
    drop(example);
    drop(cluster);
}
