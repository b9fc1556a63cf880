//! examples/rust_server.rs against real Elixir nodes: a Rust GenServer, registered as `:stack`
//! on a node started with `NodeBuilder`, called, cast to and sent to from Elixir.

mod common;

use common::{ChildGuard, elixir_ok, free_port, unique, wait_for};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The example's binary, built once per test process with the same profile and target
/// directory as this test (`cargo test --test NAME` builds no examples itself).
fn example_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| common::build_example("rust_server"))
        .clone()
}

/// The running example, killed on Drop; its stdout lines collected.
struct RustServer {
    _guard: ChildGuard,
    name: String,
    epmd_port: u16,
    cookie: String,
}

impl RustServer {
    fn start(alive: &str, cookie: &str, epmd_port: u16) -> RustServer {
        let name = format!("{alive}@127.0.0.1");
        let mut child = Command::new(example_bin())
            .args([name.as_str(), cookie, &epmd_port.to_string()])
            .env_remove("ERL_EPMD_PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn examples/rust_server");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut guard = ChildGuard {
            child,
            what: name.clone(),
        };
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let lines2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let ready = wait_for("rust_server ready line", Duration::from_secs(30), || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                panic!("rust_server exited early ({status})");
            }
            let lines = lines.lock().unwrap_or_else(|e| e.into_inner());
            lines
                .iter()
                .find(|l| l.starts_with("rust_server ready"))
                .cloned()
        });
        assert!(
            ready.contains(&format!("node={name} ")) && ready.contains("name=stack"),
            "ready line: {ready}"
        );
        RustServer {
            _guard: guard,
            name,
            epmd_port,
            cookie: cookie.to_owned(),
        }
    }

    /// Runs `script` on a fresh Elixir node; `stack` in the script is `{:stack, node}`.
    fn elixir(&self, script: &str) -> String {
        let script = format!("stack = {{:stack, :\"{}\"}}\n{script}", self.name);
        elixir_ok(
            &self.name,
            self.epmd_port,
            &unique("ex_client"),
            &self.cookie,
            &script,
            Duration::from_secs(120),
        )
    }
}

#[test]
fn elixir_calls_casts_and_sends_to_a_rust_gen_server() {
    let epmd_port = free_port();
    let server = RustServer::start(&unique("rust_srv"), "example_cookie", epmd_port);
    let out = server.elixir(
        r#"
:ok = GenServer.call(stack, {:push, 1})
:ok = GenServer.call(stack, {:push, %{"nested" => [1.5, :atom, {:t}]}})
:ok = GenServer.cast(stack, {:push, "cast"})
# A cast then a call from the same process arrive in order.
{:ok, "cast"} = GenServer.call(stack, :pop)
{:ok, %{"nested" => [1.5, :atom, {:t}]}} = GenServer.call(stack, :pop)
send(stack, {:size, self()})
receive do
  {:size, 1} -> :ok
after 10_000 -> raise "no {:size, 1} reply to a plain message"
end
{:ok, 1} = GenServer.call(stack, :pop)
{:error, :empty} = GenServer.call(stack, :pop)
# An unknown request is answered, and the server stays up.
{:error, {:unknown_request, {:what, 42}}} = GenServer.call(stack, {:what, 42})
0 = GenServer.call(stack, :size)
# :sys works on it as on an Elixir GenServer (OTP 25's sys:get_state passes on the
# {:ok, state} newer servers answer; OTP 27+ unwraps it).
:ok = GenServer.call(stack, {:push, :x})
true = :sys.get_state(stack) in [[:x], {:ok, [:x]}]
IO.puts("calls ok")
"#,
    );
    assert!(out.contains("calls ok"), "{out}");
}

#[test]
fn a_restarted_elixir_client_calls_the_same_server_again() {
    let epmd_port = free_port();
    let server = RustServer::start(&unique("rust_srv"), "example_cookie", epmd_port);
    // First client pushes and dies abruptly (halt, no clean disconnect) mid-session.
    let out = server.elixir(
        r#"
:ok = GenServer.call(stack, {:push, :from_first})
GenServer.cast(stack, {:push, :cast_before_halt})
2 = GenServer.call(stack, :size)
IO.puts("first done")
:erlang.halt(0)
"#,
    );
    assert!(out.contains("first done"), "{out}");
    // A new client (the Elixir side restarted) finds the server with its state.
    let out = server.elixir(
        r#"
{:ok, :cast_before_halt} = GenServer.call(stack, :pop)
{:ok, :from_first} = GenServer.call(stack, :pop)
{:error, :empty} = GenServer.call(stack, :pop)
IO.puts("second done")
"#,
    );
    assert!(out.contains("second done"), "{out}");
}
