//! OTP 28+ alternate-action signals (ALTACT_SIG_SEND, op 37, `DFLAG_ALTACT_SIG`), against
//! real Elixir nodes. kvnode advertises the flag; a BEAM that negotiated it (OTP 28+) sends
//! every alias message, priority message and priority exit signal to kvnode as op 37, and
//! kvnode sends its alias replies to it as op 37. On OTP 25/27 the flag is not negotiated
//! and the same tests pass over the classic operations (op 2, 6, 22, 26, 33).
//!
//! Which op went each way is observed, not assumed: the negotiated flags in kvnode's
//! `connected` log line and the counters `kvnode_dist_altact_{received,sent}_signals`.
//! Elsewhere the check is behavioural: without op 37 decoding, a BEAM 28+ peer's op 37
//! closes the connection, so the reply, message or exit signal never arrives.

mod common;

use common::{BeamNode, KvNode, PidGuard, closed_by_peer, free_port, rust_node, unique, wait_for};
use erl_dist::term::{Atom, Term, Tuple};
use kvnode::{Limits, Node, Received};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tokio::time::Instant;

/// Generous bound for anything needing a few round trips on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(30);
/// `DFLAG_ALTACT_SIG`.
const ALTACT_SIG: u64 = 1 << 37;

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(LONG))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    Ok(raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned())
}

/// Prometheus samples: `name{labels}` -> value.
fn scrape(port: u16) -> HashMap<String, f64> {
    let body = http_get(port, "/metrics").expect("scrape /metrics");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn counter(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(&format!("{name}_total"))
        .unwrap_or_else(|| panic!("no {name}_total in the scrape"))
}

/// The flags kvnode logged for its connection to `peer` (the `connected` line).
fn negotiated_flags(kv: &KvNode, peer: &str) -> u64 {
    let logs = kv.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("connected") && l.contains(peer) && l.contains("flags=0x"))
        .unwrap_or_else(|| panic!("no connected line for {peer}:\n{logs}"));
    let hex = line
        .split("flags=0x")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_hexdigit()).next())
        .unwrap_or_else(|| panic!("no flags in {line}"));
    u64::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad flags in {line}"))
}

/// `OTP=<release>` printed by a script.
fn otp_of(out: &str) -> u32 {
    out.lines()
        .find_map(|l| l.strip_prefix("OTP=")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no OTP= line in {out}"))
}

/// (a) `GenServer.call` to the KV server from an Elixir node: the replies go as op 37 exactly
/// when the peer negotiated ALTACT_SIG (OTP 28+), as op 33 otherwise. Priority sends to the
/// server by name (op 37 NAME|PRIO) are served, and a reply to a priority alias arrives.
#[test]
fn kv_calls_reply_by_op_37_exactly_when_altact_is_negotiated() {
    let mport = free_port();
    let addr = format!("127.0.0.1:{mport}");
    let kv = KvNode::fresh_with("altact_kv", &["--metrics-addr", &addr]);
    let out = kv.script(
        "altact_ex",
        r#"
otp = String.to_integer(to_string(:erlang.system_info(:otp_release)))
IO.puts("OTP=#{otp}")
:ok = GenServer.call(store, {:put, :k, "v"})
"v" = GenServer.call(store, {:get, :k})
IO.puts("CALLS-OK")
if otp >= 28 do
  # A priority call by hand: REG_SEND becomes op 37 (NAME|PRIO); the plain-ref tag makes
  # the reply a SEND to our pid.
  tag = make_ref()
  :erlang.send(store, {:"$gen_call", {self(), tag}, {:get, :k}}, [:priority])
  "v" = receive do {^tag, r} -> r after 20_000 -> raise "no reply to the priority call" end
  # A priority alias as the caller's tag: kvnode replies to it by op 37 (ALIAS).
  a = :erlang.alias([:priority])
  :erlang.send(store, {:"$gen_call", {self(), [:alias | a]}, {:get, :k}}, [:priority])
  "v" = receive do {[:alias | ^a], r} -> r after 20_000 -> raise "no reply to the priority alias" end
  IO.puts("PRIORITY-OK")
end
"#,
    );
    let otp = otp_of(&out);
    assert!(out.contains("CALLS-OK"), "{out}");
    let flags = wait_for("the connected line", LONG, || {
        kv.logs()
            .contains("flags=0x")
            .then(|| negotiated_flags(&kv, "altact_ex"))
    });
    let samples = scrape(mport);
    let sent = counter(&samples, "kvnode_dist_altact_sent_signals");
    let received = counter(&samples, "kvnode_dist_altact_received_signals");
    eprintln!("OTP {otp}: flags {flags:#x}, op 37 sent {sent}, received {received}");
    if otp >= 28 {
        assert!(out.contains("PRIORITY-OK"), "{out}");
        assert_ne!(
            flags & ALTACT_SIG,
            0,
            "OTP {otp} negotiates ALTACT_SIG: {flags:#x}"
        );
        // Two plain calls and the priority-alias call answered by op 37; the priority
        // REG_SEND-by-name was answered to a pid (SEND_SENDER).
        assert!(sent >= 3.0, "op 37 replies on OTP {otp}: {sent}");
        assert!(
            received >= 2.0,
            "the two priority sends arrived as op 37: {received}"
        );
    } else {
        assert_eq!(
            flags & ALTACT_SIG,
            0,
            "OTP {otp} has no ALTACT_SIG: {flags:#x}"
        );
        assert_eq!(sent, 0.0, "never op 37 to OTP {otp}");
        assert_eq!(received, 0.0);
    }
}

/// An Elixir node with a GenServer `:echo` (answers `{:echo, req}`; `:otp` with the OTP
/// release).
const ECHO: &str = r#"
defmodule Echo do
  use GenServer
  def init(s), do: {:ok, s}
  def handle_call(:otp, _from, s), do: {:reply, :erlang.system_info(:otp_release), s}
  def handle_call(req, _from, s), do: {:reply, {:echo, req}, s}
end
{:ok, _} = GenServer.start(Echo, nil, name: :echo)
"#;

/// A stand-alone EPMD (`kvnode epmd --daemon`) on a free port, stopped on drop.
fn epmd_daemon() -> (u16, PidGuard) {
    let port = free_port();
    let r = common::kvnode_client(&["epmd", "--daemon", "--port", &port.to_string()]);
    assert_eq!(r.status, Some(0), "{r:?}");
    let pid: u32 = r
        .stdout
        .trim()
        .rsplit_once("(pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {r:?}"));
    (port, PidGuard(pid))
}

/// (b) `kvnode call` and `kvnode rpc` against an Elixir node: on OTP 28+ the call's reply
/// (to the client's alias) comes back as op 37, and so may erpc's.
#[test]
fn cli_call_and_rpc_against_an_elixir_node() {
    let cookie = unique("cookie");
    let (epmd, _daemon) = epmd_daemon();
    let port = epmd.to_string();
    let beam = BeamNode::start(&unique("altact_cli"), &cookie, epmd, ECHO);
    let node = beam.name.as_str();
    let run = |cmd: &str, rest: &[&str]| {
        let mut args = vec![cmd, node];
        args.extend_from_slice(rest);
        args.extend_from_slice(&["--cookie", &cookie, "--epmd-port", &port]);
        common::kvnode_client(&args)
    };
    wait_for("echo answers", Duration::from_secs(60), || {
        (run("call", &["echo", "hello", "--timeout", "5000"]).status == Some(0)).then_some(())
    });
    let otp = run("call", &["echo", "otp"]);
    assert_eq!(otp.status, Some(0), "{otp:?}");
    eprintln!("Elixir node runs OTP {}", otp.stdout.trim());
    let reply = run("call", &["echo", "{hi, [1, 2], <<\"bin\">>}"]);
    assert_eq!(reply.status, Some(0), "{reply:?}");
    assert_eq!(reply.stdout.trim(), "{echo,{hi,[1,2],<<\"bin\">>}}");
    let rpc = run("rpc", &["lists", "reverse", "[[1, 2, 3]]"]);
    assert_eq!(rpc.status, Some(0), "{rpc:?}");
    assert_eq!(rpc.stdout.trim(), "[3,2,1]");
}

/// The Elixir side of the Rust-process tests.
const PRIO_SERVER: &str = r#"
defmodule PrioSrv do
  use GenServer
  def init(s), do: {:ok, s}
  def prio?, do: String.to_integer(to_string(:erlang.system_info(:otp_release))) >= 28
  def handle_call(:otp, _from, s), do: {:reply, :erlang.system_info(:otp_release), s}
  # Replies to the caller's alias with a priority send (op 37 ALIAS|PRIO on OTP 28+).
  def handle_call(:prio_reply, {_pid, [:alias | a] = tag}, s) do
    if prio?(), do: :erlang.send(a, {tag, :prio_pong}, [:priority]), else: send(a, {tag, :prio_pong})
    {:noreply, s}
  end
  # Priority message to a pid and to a registered name, then a priority exit signal to the
  # pid (op 37 PRIO, NAME|PRIO, EXIT|PRIO on OTP 28+; SEND, REG_SEND, EXIT2 before).
  def handle_call({:prio_signals, pid, name}, _from, s) do
    if prio?() do
      :erlang.send(pid, :prio_to_pid, [:priority])
      :erlang.send({name, node(pid)}, :prio_to_name, [:priority])
      :erlang.exit(pid, :prio_exit, [:priority])
    else
      send(pid, :prio_to_pid)
      send({name, node(pid)}, :prio_to_name)
      Process.exit(pid, :prio_exit)
    end
    {:reply, :sent, s}
  end
end
{:ok, _} = GenServer.start(PrioSrv, nil, name: :prio)
"#;

async fn start_node(alive: &str, cookie: &str, epmd_port: u16) -> Node {
    rust_node(alive, cookie, epmd_port)
        .handshake_timeout(Duration::from_secs(5))
        .limits(Limits::default())
        .start()
        .await
        .expect("start the Rust node")
}

/// (c), (d): a Rust process's call answered by a priority send to its alias; priority
/// messages to its pid and its registered name; a priority exit signal to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_messages_and_exit_signals_reach_rust_processes() {
    let cookie = unique("cookie");
    let epmd = free_port();
    let node = start_node(&unique("rs_altact"), &cookie, epmd).await;
    let beam = BeamNode::start(&unique("ex_altact"), &cookie, epmd, PRIO_SERVER);
    let ex = beam.name.clone();
    let name = unique("rsname");
    let p = node.process(Some(&name)).expect("process");
    // Until the Elixir node is up and :prio registered.
    let deadline = Instant::now() + Duration::from_secs(60);
    let otp = loop {
        match p.call(("prio", ex.as_str()), atom("otp"), LONG).await {
            Ok(otp) => break otp,
            Err(e) if Instant::now() > deadline => panic!("prio never answered: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    eprintln!("Elixir node runs OTP {otp:?}");
    // (c) The reply to our alias, sent with priority.
    for _ in 0..3 {
        let reply = p
            .call(("prio", ex.as_str()), atom("prio_reply"), LONG)
            .await
            .expect("the priority reply arrives");
        assert_eq!(reply, atom("prio_pong"));
    }
    // (d) Priority message to the pid and to the name, then a priority exit signal.
    let me: Term = p.pid().clone().into();
    let sent = p
        .call(
            ("prio", ex.as_str()),
            tuple(vec![atom("prio_signals"), me, atom(&name)]),
            LONG,
        )
        .await
        .expect("prio_signals");
    assert_eq!(sent, atom("sent"));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(p.recv_timeout(LONG).await.expect("a signal"));
    }
    assert!(
        got.contains(&Received::Message(atom("prio_to_pid"))),
        "{got:?}"
    );
    assert!(
        got.contains(&Received::Message(atom("prio_to_name"))),
        "{got:?}"
    );
    assert!(
        got.iter().any(|r| matches!(r,
            Received::Exit { reason, .. } if *reason == atom("prio_exit"))),
        "{got:?}"
    );
    // The connection survived all of it.
    let again = p
        .call(("prio", ex.as_str()), atom("prio_reply"), LONG)
        .await
        .expect("still connected");
    assert_eq!(again, atom("prio_pong"));
    assert_eq!(p.queued(), 0);
    drop(p);
    node.stop().await;
}

/// Completes a real handshake with kvnode as a fake node (kvnode's own flags, so ALTACT_SIG
/// is negotiated) and returns the raw socket and the fake node's name.
fn handshaken(kv: &KvNode) -> (TcpStream, String) {
    handshaken_to(kv.dist_port(), &kv.cookie)
}

/// [`handshaken`] to the node listening on `port` (call it off any tokio runtime).
fn handshaken_to(port: u16, cookie: &str) -> (TcpStream, String) {
    common::raw_handshake(port, cookie, "fake")
}

/// A frame: length, pass-through, the control tuple and the payload, if any.
fn op37_frame(control: Vec<Term>, payload: Option<Term>) -> Vec<u8> {
    let mut body = vec![112];
    kvnode::etf::encode::encode(&tuple(control), &mut body).expect("encode");
    if let Some(p) = payload {
        kvnode::etf::encode::encode(&p, &mut body).expect("encode");
    }
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// A peer's op 37 to a name (with and without a seq-trace token) is delivered; malformed
/// ones (flags that do not match To, negative flags, TOKEN without a token, no message,
/// too few elements) close only that peer's connection with a clear log line.
#[test]
fn op_37_from_a_raw_peer_is_served_and_malformed_ones_cost_only_its_connection() {
    let kv = KvNode::fresh("altact_raw");
    let store = atom("Elixir.DistributedExample.KVStore");
    let int = |v: i32| -> Term { erl_dist::term::FixInteger::from(v).into() };
    let cast = |key: &str, v: Term| {
        tuple(vec![
            atom("$gen_cast"),
            tuple(vec![atom("put"), atom(key), v]),
        ])
    };
    let (mut s, fake) = handshaken(&kv);
    let from: Term = erl_dist::term::Pid::new(fake.as_str(), 1, 0, 7).into();
    // NAME|PRIO, then NAME|TOKEN with a token as fifth element.
    s.write_all(&op37_frame(
        vec![int(37), int(8 | 1), from.clone(), store.clone()],
        Some(cast("altact_prio", atom("via_op_37"))),
    ))
    .expect("write");
    s.write_all(&op37_frame(
        vec![int(37), int(8 | 2), from.clone(), store.clone(), int(0)],
        Some(cast("altact_token", int(37))),
    ))
    .expect("write");
    kv.script(
        "altact_raw",
        r#"
TestWait.until(fn -> GenServer.call(store, {:get, :altact_prio}) == :via_op_37 end)
37 = GenServer.call(store, {:get, :altact_token})
"#,
    );
    assert!(
        !closed_by_peer(&mut s, Duration::from_millis(300)),
        "valid op 37 keeps the connection"
    );
    let mut checks = common::Scenarios::new();
    let bad: Vec<(&str, Vec<Term>, Option<Term>)> = vec![
        (
            "ALIAS with a pid as To",
            vec![int(37), int(4), from.clone(), from.clone()],
            Some(int(1)),
        ),
        (
            "negative flags",
            vec![int(37), int(-8), from.clone(), store.clone()],
            Some(int(1)),
        ),
        (
            "TOKEN without a token",
            vec![int(37), int(8 | 2), from.clone(), store.clone()],
            Some(int(1)),
        ),
        (
            "no message",
            vec![int(37), int(8), from.clone(), store.clone()],
            None,
        ),
        (
            "three elements",
            vec![int(37), int(8), from.clone()],
            Some(int(1)),
        ),
    ];
    for (what, control, payload) in bad {
        checks.check(what, || {
            let before = kv.logs().matches("malformed ALTACT_SIG_SEND").count();
            let (mut s, _) = handshaken(&kv);
            s.write_all(&op37_frame(control, payload)).expect("write");
            assert!(closed_by_peer(&mut s, LONG), "closed");
            wait_for("the log line", LONG, || {
                (kv.logs().matches("malformed ALTACT_SIG_SEND").count() > before).then_some(())
            });
        });
    }
    checks.check("a real node is still served", || {
        kv.script(
            "altact_after",
            r#"
:ok = GenServer.call(store, {:put, :alive, true})
true = GenServer.call(store, {:get, :alive})
"#,
        );
    });
    checks.finish();
}

/// The next frame kvnode wrote to a raw peer, decoded (ticks skipped).
fn read_message(s: &mut TcpStream) -> erl_dist::message::Message {
    s.set_read_timeout(Some(LONG)).expect("timeout");
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("a frame length");
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue;
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("a frame body");
        return kvnode::internals::transport::connection::decode_frame(
            &body,
            &kvnode::internals::etf::Limits::default(),
        )
        .expect("kvnode writes valid frames");
    }
}

/// Exit signals through op 37 to an alias (EXIT|ALIAS|PRIO) and to a name (EXIT|NAME), and
/// an alias reply (ALIAS|PRIO), from a raw peer a Rust process calls: while the call's alias
/// is active both reach the process; after the call they are dropped, as erts drops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_signals_by_op_37_to_an_alias_and_a_name_reach_rust_processes() {
    use erl_dist::message::Message;
    use erl_dist::term::{FixInteger, ImproperList};
    let cookie = unique("cookie");
    let epmd = free_port();
    let node = start_node(&unique("rs_altexit"), &cookie, epmd).await;
    let name = unique("rsnamed");
    let p = node.process(None).expect("process");
    let named = node.process(Some(&name)).expect("named process");
    let me: Term = p.pid().clone().into();
    let (port, c) = (node.port(), cookie.clone());
    let (mut s, fake) = tokio::task::spawn_blocking(move || handshaken_to(port, &c))
        .await
        .expect("handshake thread");
    let from: Term = erl_dist::term::Pid::new(fake.as_str(), 1, 0, 7).into();
    let int = |v: i32| -> Term { FixInteger::from(v).into() };
    // The raw peer: answer the call's REG_SEND by op 37, exit signal first.
    let (f, n) = (from.clone(), name.clone());
    let peer = tokio::task::spawn_blocking(move || {
        let (tag, alias) = loop {
            if let Message::RegSend(m) = read_message(&mut s) {
                let Term::Tuple(call) = m.message else {
                    panic!("not a call")
                };
                let Term::Tuple(from_tag) = &call.elements[1] else {
                    panic!("no {{from, tag}}")
                };
                let tag = from_tag.elements[1].clone();
                let Term::ImproperList(ImproperList { last, .. }) = &tag else {
                    panic!("not an alias tag: {tag:?}")
                };
                break (tag.clone(), (**last).clone());
            }
        };
        let send = |s: &mut TcpStream, flags: i32, to: Term, payload: Term| {
            s.write_all(&op37_frame(
                vec![int(37), int(flags), f.clone(), to],
                Some(payload),
            ))
            .expect("write");
        };
        send(&mut s, 16 | 4 | 1, alias.clone(), atom("exit_via_alias"));
        send(&mut s, 16 | 8, atom(&n), atom("exit_via_name"));
        send(
            &mut s,
            4 | 1,
            alias.clone(),
            tuple(vec![tag.clone(), atom("reply_via_op_37")]),
        );
        (s, tag, alias)
    });
    let reply = p
        .call(("srv", fake.as_str()), atom("req"), LONG)
        .await
        .expect("the op 37 reply");
    assert_eq!(reply, atom("reply_via_op_37"));
    let (mut s, tag, alias) = peer.await.expect("peer thread");
    assert!(
        matches!(p.recv_timeout(LONG).await,
            Some(Received::Exit { reason, .. }) if reason == atom("exit_via_alias")),
        "the exit signal through the active alias"
    );
    assert!(
        matches!(named.recv_timeout(LONG).await,
            Some(Received::Exit { reason, .. }) if reason == atom("exit_via_name")),
        "the exit signal to the name"
    );
    // The call is over: its alias is inactive, so a late reply and an exit signal through it
    // are dropped; a message to the pid (flags 0) after them arrives alone.
    for (flags, payload) in [
        (4, tuple(vec![tag, atom("late")])),
        (16 | 4, atom("late_exit")),
    ] {
        s.write_all(&op37_frame(
            vec![int(37), int(flags), from.clone(), alias.clone()],
            Some(payload),
        ))
        .expect("write");
    }
    s.write_all(&op37_frame(
        vec![int(37), int(0), from.clone(), me],
        Some(atom("after")),
    ))
    .expect("write");
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(atom("after")))
    );
    assert_eq!(p.queued(), 0);
    drop(s);
    node.stop().await;
}
