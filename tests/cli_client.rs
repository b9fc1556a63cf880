//! `kvnode` as a command-line Erlang client (issue 13): `call`, `cast`, `send`, `rpc`,
//! `ping`, `names` and `epmd`, run as the real binary against a real kvnode and a real
//! Elixir node, with every exit status: 0 success, 1 unreachable, 2 bad term syntax,
//! 3 refused handshake (wrong cookie), 4 timeout, 5 remote error.

mod common;

use common::{BeamNode, ClientRun, KvNode, PidGuard, free_port, kvnode_client, unique, wait_for};
use std::time::Duration;

/// `kvnode <cmd> <node> <rest...> --cookie C --epmd-port P`.
fn run(cmd: &str, node: &str, rest: &[&str], cookie: &str, epmd_port: u16) -> ClientRun {
    let port = epmd_port.to_string();
    let mut args = vec![cmd, node];
    args.extend_from_slice(rest);
    args.extend_from_slice(&["--cookie", cookie, "--epmd-port", &port]);
    kvnode_client(&args)
}

fn ok(r: &ClientRun) -> &str {
    assert_eq!(r.status, Some(0), "{r:?}");
    r.stdout.trim()
}

fn status(r: &ClientRun, want: i32) {
    assert_eq!(r.status, Some(want), "{r:?}");
}

/// An Elixir node with a GenServer registered as `:echo` that answers `:pid` with its pid,
/// `:last` with the messages it got (casts and plain messages, newest first), never
/// answers `:never`, and answers anything else with `{:echo, request}`.
const ECHO: &str = r#"
defmodule Echo do
  use GenServer
  def init(got), do: {:ok, got}
  def handle_call(:pid, _from, got), do: {:reply, self(), got}
  def handle_call(:last, _from, got), do: {:reply, got, got}
  def handle_call(:never, _from, got), do: {:noreply, got}
  def handle_call(req, _from, got), do: {:reply, {:echo, req}, got}
  def handle_cast(msg, got), do: {:noreply, [{:cast, msg} | got]}
  def handle_info(msg, got), do: {:noreply, [{:info, msg} | got]}
end
{:ok, _} = GenServer.start(Echo, [], name: :echo)
"#;

/// Starts `kvnode epmd --daemon` on a free port; returns the port and a guard that kills it.
fn epmd_daemon(pid_file: Option<&std::path::Path>) -> (u16, PidGuard) {
    let port = free_port();
    let port_text = port.to_string();
    let mut args = vec!["epmd", "--daemon", "--port", &port_text];
    let pid_text;
    if let Some(f) = pid_file {
        pid_text = f.display().to_string();
        args.extend_from_slice(&["--pid-file", &pid_text]);
    }
    let r = kvnode_client(&args);
    let line = ok(&r).to_owned();
    let pid: u32 = line
        .rsplit_once("(pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"));
    assert!(line.contains(&format!("port {port}")), "{line}");
    (port, PidGuard(pid))
}

#[test]
fn every_command_against_a_kvnode() {
    let kv = KvNode::fresh("cli_kv");
    let (node, cookie, epmd) = (kv.name.as_str(), kv.cookie.as_str(), kv.epmd_port);
    let store = "Elixir.DistributedExample.KVStore";

    // call, in Erlang and Elixir syntax, and as JSON.
    assert_eq!(
        ok(&run(
            "call",
            node,
            &[store, "{put, k, <<\"v\">>}"],
            cookie,
            epmd
        )),
        "ok"
    );
    assert_eq!(
        ok(&run("call", node, &[store, "{get, k}"], cookie, epmd)),
        "<<\"v\">>"
    );
    let elixir = run(
        "call",
        node,
        &["--elixir", "DistributedExample.KVStore", "{:get, :k}"],
        cookie,
        epmd,
    );
    assert_eq!(ok(&elixir), "\"v\"");
    let json = run("call", node, &["--json", store, "{get, k}"], cookie, epmd);
    assert!(ok(&json).contains('v'), "{json:?}");

    // cast and send, then observed with a call (polled: a cast has no reply).
    ok(&run("cast", node, &[store, "{put, c, 1}"], cookie, epmd));
    ok(&run(
        "send",
        node,
        &[store, "{'$gen_cast', {put, s, 2}}"],
        cookie,
        epmd,
    ));
    for (key, want) in [("c", "1"), ("s", "2")] {
        let request = format!("{{get, {key}}}");
        wait_for(&format!("{key} stored"), Duration::from_secs(10), || {
            let r = run("call", node, &[store, &request], cookie, epmd);
            (r.status == Some(0) && r.stdout.trim() == want).then_some(())
        });
    }

    // call --repeat: every call counted, percentiles printed.
    let load = run(
        "call",
        node,
        &[store, "{get, k}", "--repeat", "200", "--concurrency", "4"],
        cookie,
        epmd,
    );
    let text = ok(&load);
    assert!(
        text.contains("ok: 200") && text.contains("failed: 0"),
        "{text}"
    );
    assert!(text.contains("calls/s") && text.contains("p99"), "{text}");

    // rpc: erpc (kvnode has spawn support) and rex.
    assert_eq!(
        ok(&run("rpc", node, &["erlang", "node", "[]"], cookie, epmd)),
        format!("'{node}'")
    );
    assert_eq!(
        ok(&run(
            "rpc",
            node,
            &["--rex", "erlang", "node", "[]"],
            cookie,
            epmd
        )),
        format!("'{node}'")
    );

    // ping and names.
    assert_eq!(ok(&run("ping", node, &[], cookie, epmd)), "pong");
    let names = kvnode_client(&["names", "--epmd-port", &epmd.to_string()]);
    let alive = node.split('@').next().unwrap_or(node);
    assert!(
        ok(&names).contains(&format!("name {alive} at port {}", kv.dist_port())),
        "{names:?}"
    );
    // The client nodes never registered.
    assert!(!names.stdout.contains("kvnode_cli"), "{names:?}");

    // Failures. 5: no such process, an undefined function (erpc and rex).
    let noproc = run("call", node, &["nobody", "x"], cookie, epmd);
    status(&noproc, 5);
    assert!(noproc.stderr.contains("noproc"), "{noproc:?}");
    let undef = run(
        "rpc",
        node,
        &["erlang", "no_such_function", "[]"],
        cookie,
        epmd,
    );
    status(&undef, 5);
    assert!(undef.stderr.contains("undef"), "{undef:?}");
    let badrpc = run(
        "rpc",
        node,
        &["--rex", "erlang", "no_such_function", "[]"],
        cookie,
        epmd,
    );
    status(&badrpc, 5);
    assert!(badrpc.stderr.contains("badrpc"), "{badrpc:?}");
    // 2: a bad term, with its column and a caret; nothing is sent.
    let bad = run("call", node, &[store, "{get, k"], cookie, epmd);
    status(&bad, 2);
    assert!(bad.stderr.contains("bad term at column 8"), "{bad:?}");
    assert!(
        bad.stderr.contains("{get, k\n") && bad.stderr.contains('^'),
        "{bad:?}"
    );
    // 3: a wrong cookie.
    let refused = run("call", node, &[store, "{get, k}"], "wrong_cookie", epmd);
    status(&refused, 3);
    assert!(refused.stderr.contains("handshake refused"), "{refused:?}");
    let pang = run("ping", node, &[], "wrong_cookie", epmd);
    status(&pang, 3);
    assert_eq!(pang.stdout.trim(), "pang");
    // 1: a name EPMD does not know; a port where no EPMD listens.
    let missing = format!("{}@127.0.0.1", unique("nobody"));
    let pang = run("ping", &missing, &[], cookie, epmd);
    status(&pang, 1);
    assert_eq!(pang.stdout.trim(), "pang");
    status(&run("call", node, &[store, "x"], cookie, free_port()), 1);
    status(
        &kvnode_client(&["names", "--epmd-port", &free_port().to_string()]),
        1,
    );
}

#[test]
fn a_node_that_never_answers_is_a_timeout() {
    // A kvnode stopped with SIGSTOP: its EPMD (a stand-alone one, still answering) gives its
    // port, the kernel accepts the connection, nobody answers the handshake.
    let (epmd, _daemon) = epmd_daemon(None);
    let kv = KvNode::start(&unique("cli_stopped"), &unique("cookie"), epmd);
    let pid = libc::pid_t::try_from(kv.guard.pid()).expect("pid");
    // SAFETY: kill(2) on the kvnode this test started (SIGKILLed by its guard on drop).
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let r = run(
        "call",
        &kv.name,
        &[
            "Elixir.DistributedExample.KVStore",
            "{get, k}",
            "--timeout",
            "500",
        ],
        &kv.cookie,
        kv.epmd_port,
    );
    let took = started.elapsed();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    status(&r, 4);
    assert!(r.stderr.contains("timeout"), "{r:?}");
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn every_command_against_an_elixir_node() {
    let (epmd, _daemon) = epmd_daemon(None);
    let cookie = unique("cookie");
    let beam = BeamNode::start(&unique("cli_beam"), &cookie, epmd, ECHO);
    let node = beam.name.as_str();
    wait_for(
        "the Elixir node answers ping",
        Duration::from_secs(60),
        || {
            let r = run("ping", node, &["--timeout", "2000"], &cookie, epmd);
            (r.status == Some(0) && r.stdout.trim() == "pong").then_some(())
        },
    );
    wait_for("echo is registered", Duration::from_secs(30), || {
        (run("call", node, &["echo", "hello"], &cookie, epmd).status == Some(0)).then_some(())
    });

    // call: terms make the round trip through the Elixir node intact.
    let term = "{hello, [1, 2.5, \"str\"], #{a => <<1,2>>}, 123456789012345678901234567890}";
    let reply = run("call", node, &["echo", term], &cookie, epmd);
    assert_eq!(
        ok(&reply),
        "{echo,{hello,[1,2.5,\"str\"],#{a => <<1,2>>},123456789012345678901234567890}}"
    );
    let elixir = run(
        "call",
        node,
        &["--elixir", ":echo", "{:hi, \"bin\"}"],
        &cookie,
        epmd,
    );
    assert_eq!(ok(&elixir), "{:echo, {:hi, \"bin\"}}");
    // A pid as the Elixir node prints it: the peer's creation is filled in.
    let pid = run("call", node, &["echo", "pid"], &cookie, epmd);
    let pid = ok(&pid).to_owned();
    assert!(pid.starts_with("<0.") && pid.ends_with('>'), "{pid}");
    assert_eq!(
        ok(&run("call", node, &[&pid, "via_pid"], &cookie, epmd)),
        "{echo,via_pid}"
    );

    // cast and send, observed in the server's state.
    ok(&run("cast", node, &["echo", "cast_1"], &cookie, epmd));
    ok(&run("send", node, &["echo", "{sent, 2}"], &cookie, epmd));
    wait_for(
        "the cast and the message arrived",
        Duration::from_secs(10),
        || {
            let r = run("call", node, &["echo", "last"], &cookie, epmd);
            let got = r.stdout;
            (got.contains("{cast,cast_1}") && got.contains("{info,{sent,2}}")).then_some(())
        },
    );

    // rpc through erpc (a spawn request), in both syntaxes, and through rex.
    assert_eq!(
        ok(&run("rpc", node, &["erlang", "node", "[]"], &cookie, epmd)),
        format!("'{node}'")
    );
    assert_eq!(
        ok(&run(
            "rpc",
            node,
            &["--elixir", "Enum", "sum", "[[1, 2, 3]]"],
            &cookie,
            epmd
        )),
        "6"
    );
    assert_eq!(
        ok(&run(
            "rpc",
            node,
            &["--rex", "lists", "reverse", "[[1, 2]]"],
            &cookie,
            epmd
        )),
        "[2,1]"
    );
    // The remote function's output (we are its group leader) does not block it.
    let printed = run(
        "rpc",
        node,
        &["io", "put_chars", "[\"hello from beam\\n\"]"],
        &cookie,
        epmd,
    );
    assert_eq!(ok(&printed), "hello from beam\nok");

    // ping and names.
    assert_eq!(ok(&run("ping", node, &[], &cookie, epmd)), "pong");
    let names = kvnode_client(&["names", "--epmd-port", &epmd.to_string()]);
    let alive = node.split('@').next().unwrap_or(node);
    assert!(
        ok(&names).contains(&format!("name {alive} at port")),
        "{names:?}"
    );

    // Failures: 5 (noproc, throw, undefined function, badrpc), 4 (no reply), 3 (cookie),
    // 2 (syntax), 1 (unknown node).
    let noproc = run("call", node, &["nobody", "x"], &cookie, epmd);
    status(&noproc, 5);
    assert!(noproc.stderr.contains("noproc"), "{noproc:?}");
    let thrown = run("rpc", node, &["erlang", "throw", "[oops]"], &cookie, epmd);
    status(&thrown, 5);
    assert!(thrown.stderr.contains("throw: oops"), "{thrown:?}");
    let undef = run("rpc", node, &["no_such_module", "f", "[]"], &cookie, epmd);
    status(&undef, 5);
    assert!(undef.stderr.contains("undef"), "{undef:?}");
    let badrpc = run(
        "rpc",
        node,
        &["--rex", "no_such_module", "f", "[]"],
        &cookie,
        epmd,
    );
    status(&badrpc, 5);
    assert!(badrpc.stderr.contains("badrpc"), "{badrpc:?}");
    let slow = run(
        "call",
        node,
        &["echo", "never", "--timeout", "500"],
        &cookie,
        epmd,
    );
    status(&slow, 4);
    let slow_rpc = run(
        "rpc",
        node,
        &["timer", "sleep", "[10000]", "--timeout", "500"],
        &cookie,
        epmd,
    );
    status(&slow_rpc, 4);
    let refused = run("call", node, &["echo", "x"], "wrong_cookie", epmd);
    status(&refused, 3);
    let bad = run("rpc", node, &["erlang", "node", "[1,,2]"], &cookie, epmd);
    status(&bad, 2);
    assert!(bad.stderr.contains("column 4"), "{bad:?}");
    let missing = format!("{}@127.0.0.1", unique("nobody"));
    let pang = run("ping", &missing, &[], &cookie, epmd);
    status(&pang, 1);
    assert_eq!(pang.stdout.trim(), "pang");
}

#[test]
fn a_stand_alone_epmd_outlives_the_nodes_registered_with_it() {
    let dir = std::env::temp_dir().join(unique("cli_epmd"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let pid_file = dir.join("epmd.pid");
    let (port, daemon) = epmd_daemon(Some(&pid_file));
    let written: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file written before --daemon returns")
        .trim()
        .parse()
        .expect("a pid");
    assert_eq!(written, daemon.0);
    // A second EPMD on the same port is refused.
    status(
        &kvnode_client(&["epmd", "--daemon", "--port", &port.to_string()]),
        1,
    );

    let names = || kvnode_client(&["names", "--epmd-port", &port.to_string()]);
    let cookie = unique("cookie");
    let first = KvNode::start(&unique("cli_first"), &cookie, port);
    let alive = first.name.split('@').next().unwrap_or("").to_owned();
    assert!(ok(&names()).contains(&format!("name {alive} at port")));
    drop(first);
    // The node is gone, the EPMD is not: it forgets the name and keeps answering.
    wait_for(
        "the stopped node's name to go",
        Duration::from_secs(10),
        || {
            let r = names();
            (r.status == Some(0) && !r.stdout.contains(&alive)).then_some(())
        },
    );
    let second = KvNode::start(&unique("cli_second"), &cookie, port);
    assert_eq!(ok(&run("ping", &second.name, &[], &cookie, port)), "pong");
    drop(second);

    // SIGTERM: an orderly stop that removes the pid file.
    let pid = libc::pid_t::try_from(daemon.0).expect("pid");
    // SAFETY: kill(2) on the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("the pid file to go", Duration::from_secs(10), || {
        (!pid_file.exists()).then_some(())
    });
    status(&names(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stores, in kvnode, terms no decoded term can hold where the BEAM has them: an OTP 29
/// native record (alone and nested) and a map with both `0.0` and `-0.0` as keys (OTP 27+
/// tells them apart). Prints `OTP n`.
const RAW_TERMS: &str = r##"
otp = :erlang.system_info(:otp_release) |> List.to_integer()
IO.puts("OTP #{otp}")
zeros = :maps.from_list([{0.0, :pos}, {-0.0, :neg}])
:ok = GenServer.call(store, {:put, :zeros, zeros})
if otp >= 27 and map_size(GenServer.call(store, {:get, :zeros})) != 2, do: raise("zeros merged")
if Code.ensure_loaded?(:records) do
  r = :records.create(:geo, :pt, [x: 1, y: 2.5], %{is_exported: true})
  :ok = GenServer.call(store, {:put, :rec, r})
  :ok = GenServer.call(store, {:put, :nested, [r, %{k: r, zeros: zeros}]})
  deep = Enum.reduce(1..50_000, :bottom, fn _, acc -> [acc] end)
  :ok = GenServer.call(store, {:put, :deep, [r, deep]})
  if GenServer.call(store, {:get, :rec}) !== r, do: raise("record changed")
end
"##;

/// `kvnode call` and `kvnode rpc` print replies that hold an OTP 29 native record or a map
/// with both `0.0` and `-0.0` as keys (exit 0), in both syntaxes and as JSON, straight from
/// the reply's bytes; before, they said they could not print them and exited 5. On OTP 25
/// (no records, one zero key) everything still answers normally. Run on the sid row (OTP 29)
/// for the records: `bash /work/notes/rowtest.sh sid cli_client`.
#[test]
fn replies_only_bytes_can_hold_are_printed() {
    let kv = KvNode::fresh("cli_raw");
    let out = kv.script("cli_raw", RAW_TERMS);
    let otp: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("OTP ")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no OTP line in {out}"));
    eprintln!("OTP {otp}");
    let (node, cookie, epmd) = (kv.name.as_str(), kv.cookie.as_str(), kv.epmd_port);
    let store = "Elixir.DistributedExample.KVStore";
    let call = |flags: &[&str], request: &str| {
        let mut rest: Vec<&str> = flags.to_vec();
        rest.extend([store, request]);
        run("call", node, &rest, cookie, epmd)
    };
    // A BEAM node to rpc: the result comes back in a DOWN reason, as bytes.
    let beam = BeamNode::start(&unique("cli_raw_beam"), cookie, epmd, "");
    wait_for(
        "the Elixir node answers ping",
        Duration::from_secs(60),
        || {
            let r = run("ping", &beam.name, &["--timeout", "2000"], cookie, epmd);
            (r.status == Some(0) && r.stdout.trim() == "pong").then_some(())
        },
    );
    let rpc = |flags: &[&str], m: &str, f: &str, args: &str| {
        let mut rest: Vec<&str> = flags.to_vec();
        rest.extend([m, f, args]);
        run("rpc", &beam.name, &rest, cookie, epmd)
    };
    let zeros_args = "[[{0.0, pos}, {-0.0, neg}]]";

    if otp >= 27 {
        let erl = "#{-0.0 => neg,0.0 => pos}";
        let ex = "%{-0.0 => :neg, 0.0 => :pos}";
        let json = r#"{"$map":[[-0.0,{"$atom":"neg"}],[0.0,{"$atom":"pos"}]]}"#;
        assert_eq!(ok(&call(&[], "{get, zeros}")), erl);
        assert_eq!(ok(&call(&["--elixir"], "{:get, :zeros}")), ex);
        assert_eq!(ok(&call(&["--json"], "{get, zeros}")), json);
        assert_eq!(ok(&rpc(&[], "maps", "from_list", zeros_args)), erl);
        assert_eq!(
            ok(&rpc(
                &["--elixir"],
                ":maps",
                "from_list",
                "[[{0.0, :pos}, {-0.0, :neg}]]"
            )),
            ex
        );
        assert_eq!(ok(&rpc(&["--json"], "maps", "from_list", zeros_args)), json);
    } else {
        // One key: the BEAM of OTP 26 and before does not tell 0.0 from -0.0.
        assert_eq!(ok(&call(&[], "{get, zeros}")).matches("=>").count(), 1);
        assert_eq!(
            ok(&rpc(&[], "maps", "from_list", zeros_args))
                .matches("=>")
                .count(),
            1
        );
    }

    let rec_args = "[geo, pt, [{x, 1}, {y, 2.5}], #{is_exported => true}]";
    if otp >= 29 {
        // As OTP 29's io_lib prints it; Elixir 1.20's inspect prints records the same way.
        let rec = "#geo:pt{x = 1,y = 2.5}";
        assert_eq!(ok(&call(&[], "{get, rec}")), rec);
        assert_eq!(ok(&call(&["--elixir"], "{:get, :rec}")), rec);
        assert_eq!(
            ok(&call(&["--json"], "{get, rec}")),
            r#"{"$record":{"module":"geo","name":"pt","exported":true,"fields":{"x":1,"y":2.5}}}"#
        );
        assert_eq!(
            ok(&call(&[], "{get, nested}")),
            format!("[{rec},#{{k => {rec},zeros => #{{-0.0 => neg,0.0 => pos}}}}]")
        );
        assert_eq!(
            ok(&call(&["--elixir"], "{:get, :nested}")),
            format!("[{rec}, %{{k: {rec}, zeros: %{{-0.0 => :neg, 0.0 => :pos}}}}]")
        );
        // Next to a record, a list 50,000 deep: decoded whole (eetf recurses), on a thread
        // with the stack such a term needs, not the client's main thread.
        let deep = call(&[], "{get, deep}");
        let text = ok(&deep);
        let want = format!("[{rec},{}bottom{}]", "[".repeat(50_000), "]".repeat(50_000));
        assert!(
            text == want,
            "{} bytes: {}",
            text.len(),
            &text[..text.len().min(200)]
        );
        assert_eq!(ok(&rpc(&[], "records", "create", rec_args)), rec);
        assert_eq!(
            ok(&rpc(
                &["--elixir"],
                ":records",
                "create",
                "[:geo, :pt, [x: 1, y: 2.5], %{is_exported: true}]"
            )),
            rec
        );
        assert_eq!(ok(&rpc(&["--rex"], "records", "create", rec_args)), rec);
        // An exception whose reason holds a record: exit 5, the record in the message.
        let thrown = rpc(
            &[],
            "Elixir.Code",
            "eval_string",
            r#"[<<"throw({:oops, :records.create(:geo, :pt, [x: 1, y: 2.5], %{is_exported: true})})">>]"#,
        );
        status(&thrown, 5);
        assert!(
            thrown
                .stderr
                .contains("throw: {oops,#geo:pt{x = 1,y = 2.5}}"),
            "{thrown:?}"
        );
    } else {
        status(&rpc(&[], "records", "create", rec_args), 5);
    }
}

/// Functions whose output (io requests to the client, their group leader) `kvnode rpc`
/// prints: in order, with output from a process the function spawned (it inherits the group
/// leader), and io requests that are not valid, sent by hand, whose replies are returned.
const IO_FUNS: &str = r#"
defmodule IoFuns do
  def order do
    IO.puts("one")
    :io.format("~p~n", [{:two, 2}])
    me = self()
    spawn(fn -> IO.puts("three"); send(me, :printed) end)
    receive do
      :printed -> :ok
    end
    :io.put_chars("four\n")
    :done
  end

  # ~ts prints the characters; ~p a binary's bytes as Latin-1, as io_lib:format does.
  def unicode, do: :io.format("~ts ~p~n", ["λ → é", "λ"])

  def raw(request) do
    ref = make_ref()
    send(Process.group_leader(), {:io_request, self(), ref, request})
    receive do
      {:io_reply, ^ref, reply} -> reply
    after
      10_000 -> :no_reply
    end
  end
end
"#;

/// `kvnode rpc` prints what the remote function prints exactly as the BEAM prints it, on
/// stdout before the result: `io:format` (formatted by the peer's `io_lib`), `IO.puts`,
/// `IO.inspect`, `io:put_chars` of binaries and Unicode, output in order; input requests
/// print their prompt and get `eof` (no hang); io requests that are not valid get an error
/// reply and a note on stderr.
#[test]
fn rpc_prints_remote_io_as_the_beam_does() {
    let (epmd, _daemon) = epmd_daemon(None);
    let cookie = unique("cookie");
    let beam = BeamNode::start(&unique("cli_io"), &cookie, epmd, IO_FUNS);
    let node = beam.name.as_str();
    wait_for(
        "IoFuns is loaded on the Elixir node",
        Duration::from_secs(60),
        || {
            let r = run(
                "rpc",
                node,
                &[
                    "--timeout",
                    "2000",
                    "code",
                    "is_loaded",
                    "['Elixir.IoFuns']",
                ],
                &cookie,
                epmd,
            );
            (r.status == Some(0) && r.stdout.contains("{file,")).then_some(())
        },
    );
    let rpc = |args: &[&str]| run("rpc", node, args, &cookie, epmd);
    // stdout of a run that must succeed.
    let printed = |args: &[&str]| {
        let r = rpc(args);
        assert_eq!(r.status, Some(0), "{args:?}: {r:?}");
        r.stdout
    };

    // io:format: the text, not the io_lib:format call; then the result.
    let format = rpc(&["io", "format", r#"["~p and ~s~n", [[1,2], "x"]]"#]);
    assert_eq!(format.stdout, "[1,2] and x\nok\n", "{format:?}");
    assert!(!format.stderr.contains("io_lib"), "{format:?}");
    // Elixir's IO.puts and IO.inspect (its map printed by Elixir, the result by kvnode).
    assert_eq!(printed(&["Elixir.IO", "puts", r#"["hi"]"#]), "hi\nok\n");
    let inspect = rpc(&["Elixir.IO", "inspect", "[#{a => 1, b => [1, 2]}]"]);
    // The map's order is the node's (OTP 26+ need not sort atom keys): as Kernel.inspect
    // makes it there.
    let shown = printed(&["--elixir", "Kernel", "inspect", "[%{a: 1, b: [1, 2]}]"]);
    let shown = shown.trim().trim_matches('"');
    assert!(
        shown.contains("a: 1") && shown.contains("b: [1, 2]"),
        "{shown}"
    );
    assert_eq!(
        inspect.stdout,
        format!("{shown}\n#{{a => 1,b => [1,2]}}\n"),
        "{inspect:?}"
    );
    // put_chars of a binary, of a UTF-8 binary, of a list of code points, of Latin-1.
    assert_eq!(
        printed(&["io", "put_chars", r#"[<<"bin\n">>]"#]),
        "bin\nok\n"
    );
    assert_eq!(
        printed(&["io", "put_chars", r#"[<<"λ é\n"/utf8>>]"#]),
        "λ é\nok\n"
    );
    assert_eq!(
        printed(&["io", "put_chars", "[[955, 32, 8594, 10]]"]),
        "λ →\nok\n"
    );
    assert_eq!(
        printed(&[
            "io",
            "request",
            r#"[standard_io, {put_chars, latin1, <<"caf", 233, "\n">>}]"#
        ]),
        "café\nok\n"
    );
    assert_eq!(
        printed(&["Elixir.IoFuns", "unicode", "[]"]),
        "λ → é <<\"Î»\">>\nok\n"
    );
    // Order: every line before the result, a spawned process's line in its place.
    let order = rpc(&["Elixir.IoFuns", "order", "[]"]);
    assert_eq!(
        order.stdout, "one\n{two,2}\nthree\nfour\ndone\n",
        "{order:?}"
    );
    // --json: stdout is the one JSON document, the output goes to stderr.
    let json = rpc(&["--json", "Elixir.IO", "puts", r#"["to stderr"]"#]);
    assert_eq!(json.stdout.trim(), r#"{"$atom":"ok"}"#, "{json:?}");
    assert!(json.stderr.contains("to stderr"), "{json:?}");

    // Input: the prompt is printed and the answer is eof, well within the timeout.
    let started = std::time::Instant::now();
    let line = rpc(&["--timeout", "20000", "io", "get_line", r#"["name? "]"#]);
    assert_eq!(line.stdout, "name? eof\n", "{line:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "{line:?}");
    assert_eq!(
        printed(&["--elixir", "IO", "gets", r#"["more? "]"#]),
        "more? :eof\n"
    );
    assert_eq!(
        printed(&["io", "getopts", "[]"]),
        "[{binary,false},{encoding,unicode}]\n"
    );
    assert_eq!(printed(&["io", "columns", "[]"]), "{error,enotsup}\n");

    // Bad requests: an error reply to the sender (never a hang), a note on stderr.
    let not_chars = rpc(&["Elixir.IoFuns", "raw", "[{put_chars, unicode, not_chars}]"]);
    assert_eq!(not_chars.stdout, "{error,put_chars}\n", "{not_chars:?}");
    assert!(
        not_chars.stderr.contains("bad io request") && not_chars.stderr.contains("not_chars"),
        "{not_chars:?}"
    );
    let unknown = rpc(&["Elixir.IoFuns", "raw", "[{frobnicate, 1}]"]);
    assert_eq!(unknown.stdout, "{error,request}\n", "{unknown:?}");
    let bad_utf8 = rpc(&["Elixir.IoFuns", "raw", "[{put_chars, unicode, <<255>>}]"]);
    assert_eq!(bad_utf8.stdout, "{error,put_chars}\n", "{bad_utf8:?}");
    // A format that does not match its arguments: io:format raises badarg, as on the BEAM.
    let badarg = rpc(&["io", "format", r#"["~p ~p~n", [1]]"#]);
    status(&badarg, 5);
    assert!(badarg.stderr.contains("badarg"), "{badarg:?}");
}
