//! The Rust process API (`kvnode::Process`) against real Elixir nodes and against servers on
//! its own node: calls done the OTP way (reply, timeout with the late reply dropped, `noproc`,
//! exit, node down mid-call), monitors, links both ways, selective receive, connect and node
//! events.

mod common;

use common::BeamNode;
use erl_dist::term::{Atom, FixInteger, Pid, Term, Tuple};
use kvnode::{
    CallError, CallResult, Caller, ConnectError, Ctx, Dest, GenServer, Limits, Node, NodeBuilder,
    NodeEvent, Process, Received, Request,
};
use std::time::Duration;
use tokio::time::Instant;

/// Generous bound for anything that needs a few network round trips on a busy 2-core machine.
const LONG: Duration = Duration::from_secs(30);

fn atom(name: &str) -> Term {
    Atom::from(name).into()
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

fn is_atom(t: &Term, name: &str) -> bool {
    matches!(t, Term::Atom(a) if a.name == name)
}

/// A started in-process node.
struct Running {
    node: Node,
}

impl Running {
    async fn stop(&self) {
        self.node.stop().await;
    }
}

/// An in-process node `<alive>@127.0.0.1` (serving EPMD on `epmd_port` if none is there).
async fn start_node(alive: &str, cookie: &str, epmd_port: u16) -> Running {
    start_node_with(alive, cookie, epmd_port, |_| {}).await
}

async fn start_node_with(
    alive: &str,
    cookie: &str,
    epmd_port: u16,
    tune: impl FnOnce(&mut Limits),
) -> Running {
    let mut limits = Limits::default();
    tune(&mut limits);
    let node = NodeBuilder::new(format!("{alive}@127.0.0.1"))
        .cookie(cookie)
        .epmd_port(epmd_port)
        .bind([127, 0, 0, 1].into())
        .threads(1)
        .handshake_timeout(Duration::from_secs(5))
        .limits(limits)
        .start()
        .await
        .expect("start the Rust node");
    Running { node }
}

/// Connects to `peer`, retrying until it is up (it may still be booting) or `LONG` passes.
async fn connect(node: &Node, peer: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        match node.connect(peer).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {peer}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The Elixir side: `:srv`, a GenServer with the replies the tests need.
const SERVER: &str = r#"
defmodule Srv do
  use GenServer
  def init(s), do: {:ok, s}
  def handle_call(:ping, _from, s), do: {:reply, :pong, s}
  def handle_call(:self, _from, s), do: {:reply, self(), s}
  def handle_call({:echo, x}, _from, s), do: {:reply, x, s}
  # Answered only when :release is cast; then the caller hears :late_sent (same sender, so
  # after the reply).
  def handle_call(:late, from, _s), do: {:noreply, from}
  def handle_call(:hang, {pid, _}, s), do: (send(pid, :hanging); {:noreply, s})
  def handle_call({:stop, reason}, _from, s), do: {:stop, reason, s}
  def handle_call(:worker, _from, s) do
    {:reply, spawn(fn -> receive do {:die, r} -> exit(r) end end), s}
  end
  # A process that links to `p`, traps exits, and reports to the caller.
  def handle_call({:link_watch, p}, {caller, _}, s) do
    spawn(fn ->
      Process.flag(:trap_exit, true)
      Process.link(p)
      send(caller, :linked)
      receive do
        {:EXIT, ^p, r} -> send(caller, {:saw_exit, r})
      end
    end)
    {:reply, :ok, s}
  end
  # Monitors `p` and reports its DOWN to the caller.
  def handle_call({:monitor_watch, p}, {caller, _}, s) do
    spawn(fn ->
      ref = Process.monitor(p)
      send(caller, :monitoring)
      receive do
        {:DOWN, ^ref, :process, ^p, r} -> send(caller, {:saw_down, r})
      end
    end)
    {:reply, :ok, s}
  end
  # Floods `{:sink, node}` with n messages of 1 KB, then :flood_done.
  def handle_call({:flood, node, n}, _from, s) do
    spawn(fn ->
      for i <- 1..n, do: send({:sink, node}, {:f, i, :binary.copy("x", 1000)})
      send({:sink, node}, :flood_done)
    end)
    {:reply, :ok, s}
  end
  def handle_cast(:release, {pid, _} = from) do
    GenServer.reply(from, :late)
    send(pid, :late_sent)
    {:noreply, nil}
  end
end
{:ok, _} = GenServer.start(Srv, nil, name: :srv)
{:ok, _} = GenServer.start(Srv, nil, name: :srv2)
"#;

struct Pair {
    rust: Running,
    elixir: BeamNode,
}

async fn pair(test: &str) -> Pair {
    pair_with(test, |_| {}).await
}

async fn pair_with(test: &str, tune: impl FnOnce(&mut Limits)) -> Pair {
    let cookie = common::unique("cookie");
    let epmd = common::free_port();
    let rust = start_node_with(&common::unique(&format!("rs_{test}")), &cookie, epmd, tune).await;
    let elixir = BeamNode::start(
        &common::unique(&format!("ex_{test}")),
        &cookie,
        epmd,
        SERVER,
    );
    connect(&rust.node, &elixir.name).await;
    Pair { rust, elixir }
}

/// Calls `:srv` until it answers (the Elixir node may be connected before its boot code ran).
async fn until_ready(p: &Process, node: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        match p.call(("srv", node), atom("ping"), LONG).await {
            Ok(t) if is_atom(&t, "pong") => return,
            r if Instant::now() > deadline => panic!("srv never answered: {r:?}"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_an_elixir_genserver_by_name_and_by_pid_and_a_missing_name() {
    let pair = pair("call").await;
    let ex = pair.elixir.name.as_str();
    let p = pair.rust.node.process(None).expect("process");
    until_ready(&p, ex).await;
    let big: Term = tuple(vec![atom("echo"), FixInteger::from(42).into()]);
    let reply = p.call(("srv", ex), big, LONG).await.expect("echo");
    assert_eq!(reply, FixInteger::from(42).into());
    // By pid.
    let srv = match p.call(("srv", ex), atom("self"), LONG).await {
        Ok(Term::Pid(pid)) => pid,
        other => panic!("self: {other:?}"),
    };
    let reply = p.call(srv, atom("ping"), LONG).await.expect("call by pid");
    assert!(is_atom(&reply, "pong"));
    // A pid that is no GenServer: it answers nothing, and its exit ends the call.
    let worker = match p.call(("srv", ex), atom("worker"), LONG).await {
        Ok(Term::Pid(pid)) => pid,
        other => panic!("worker: {other:?}"),
    };
    let call = p.call(worker.clone(), atom("anything"), Duration::from_secs(60));
    let kill = async {
        p.send(worker.clone(), tuple(vec![atom("die"), atom("boom")]));
    };
    let (result, ()) = tokio::join!(call, kill);
    match result {
        Err(CallError::Exit { dest, reason }) => {
            assert_eq!(dest, Dest::Pid(worker.clone()));
            assert!(is_atom(&reason, "boom"), "{reason:?}");
        }
        other => panic!("call to a worker that exits: {other:?}"),
    }
    // A pid that is gone: noproc at once.
    match p.call(worker.clone(), atom("x"), LONG).await {
        Err(CallError::NoProc { .. }) => {}
        other => panic!("call to a dead pid: {other:?}"),
    }
    // A name nobody holds: noproc.
    match p.call(("nobody_here", ex), atom("x"), LONG).await {
        Err(CallError::NoProc { dest }) => assert_eq!(dest, Dest::from(("nobody_here", ex))),
        other => panic!("call to a missing name: {other:?}"),
    }
    // A server that stops without replying: the call ends with its exit reason.
    match p
        .call(("srv2", ex), tuple(vec![atom("stop"), atom("bye")]), LONG)
        .await
    {
        Err(CallError::Exit { reason, .. }) => assert!(is_atom(&reason, "bye"), "{reason:?}"),
        other => panic!("call to a stopping server: {other:?}"),
    }
    assert_eq!(p.queued(), 0, "nothing left in the mailbox");
    assert_eq!(
        pair.rust.node.remote_monitor_count(),
        0,
        "every call's monitor removed"
    );
    pair.rust.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_timeout_then_the_late_reply_is_dropped() {
    let pair = pair("late").await;
    let ex = pair.elixir.name.as_str();
    let p = pair.rust.node.process(None).expect("process");
    until_ready(&p, ex).await;
    match p
        .call(("srv", ex), atom("late"), Duration::from_millis(300))
        .await
    {
        Err(CallError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected a timeout: {other:?}"),
    }
    // The server replies now (by ALIAS_SEND: OTP peers have ALIAS), then says so.
    p.cast(("srv", ex), atom("release"));
    let next = p.recv_timeout(LONG).await.expect("a message");
    assert_eq!(
        next,
        Received::Message(atom("late_sent")),
        "the late reply must not reach the mailbox"
    );
    assert_eq!(p.queued(), 0);
    // A later call gets its own reply.
    let reply = p.call(("srv", ex), atom("ping"), LONG).await.expect("ping");
    assert!(is_atom(&reply, "pong"));
    pair.rust.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_down_mid_call_fires_noconnection_everywhere() {
    let mut pair = pair("down").await;
    let ex = pair.elixir.name.clone();
    let node = pair.rust.node.clone();
    let mut events = node.monitor_nodes();
    let p = node.process(None).expect("process");
    until_ready(&p, &ex).await;
    let worker = match p.call(("srv", ex.as_str()), atom("worker"), LONG).await {
        Ok(Term::Pid(pid)) => pid,
        other => panic!("worker: {other:?}"),
    };
    let by_name = p.monitor(("srv", ex.as_str()));
    let by_pid = p.monitor(worker.clone());
    p.link(&worker);
    let elixir_pid = pair.elixir.guard.pid();
    let call = p.call(("srv", ex.as_str()), atom("hang"), Duration::from_secs(120));
    let kill = async {
        let hanging = p
            .recv_matching_timeout(|r| *r == Received::Message(atom("hanging")), LONG)
            .await;
        assert!(hanging.is_some(), "the server got the call");
        // Kill exactly the Elixir node this test started.
        let _ = pair.elixir.guard.child.kill();
        elixir_pid
    };
    let (result, _) = tokio::join!(call, kill);
    let _ = pair.elixir.guard.child.wait();
    match result {
        Err(CallError::NoConnection { node }) => assert_eq!(node, ex),
        other => panic!("call while the node dies: {other:?}"),
    }
    let mut downs = Vec::new();
    let mut exits = Vec::new();
    while downs.len() < 2 || exits.is_empty() {
        match p.recv_timeout(LONG).await {
            Some(Received::Down {
                reference,
                object,
                reason,
            }) => {
                assert!(is_atom(&reason, "noconnection"), "{reason:?}");
                downs.push((reference, object));
            }
            Some(Received::Exit { from, reason }) => {
                assert!(is_atom(&reason, "noconnection"), "{reason:?}");
                exits.push(from);
            }
            other => panic!("expected DOWNs and an exit, got {other:?}"),
        }
    }
    assert!(downs.contains(&(by_name, Dest::from(("srv", ex.as_str())))));
    assert!(downs.contains(&(by_pid, Dest::Pid(worker.clone()))));
    assert_eq!(exits, vec![worker]);
    let deadline = Instant::now() + LONG;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(NodeEvent::Down(n))) if n == ex => break,
            Ok(Some(_)) => continue,
            other => panic!("no Down event for {ex}: {other:?}"),
        }
    }
    assert_eq!(node.remote_monitor_count(), 0);
    pair.rust.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_and_links_with_elixir_processes() {
    let pair = pair("links").await;
    let ex = pair.elixir.name.as_str();
    let node = pair.rust.node.clone();
    let p = node.process(None).expect("process");
    until_ready(&p, ex).await;
    // Monitor a pid; it exits with a reason.
    let w1 = new_worker(&p, ex).await;
    let m1 = p.monitor(w1.clone());
    p.send(w1.clone(), tuple(vec![atom("die"), atom("bye")]));
    let down = p.recv_timeout(LONG).await;
    assert_eq!(
        down,
        Some(Received::Down {
            reference: m1,
            object: Dest::Pid(w1.clone()),
            reason: atom("bye")
        })
    );
    // Demonitor: nothing arrives for it.
    let w2 = new_worker(&p, ex).await;
    let m2 = p.monitor(w2.clone());
    assert!(p.demonitor(&m2));
    // Link: the linked worker's exit arrives as an exit signal.
    p.link(&w2);
    p.send(w2.clone(), tuple(vec![atom("die"), atom("boom")]));
    let exit = p.recv_timeout(LONG).await;
    assert_eq!(
        exit,
        Some(Received::Exit {
            from: w2.clone(),
            reason: atom("boom")
        })
    );
    // Unlink: the next worker's exit does not arrive (a monitor shows it happened).
    let w3 = new_worker(&p, ex).await;
    p.link(&w3);
    p.unlink(&w3);
    let m3 = p.monitor(w3.clone());
    p.send(w3.clone(), tuple(vec![atom("die"), atom("quiet")]));
    let after = p.recv_timeout(LONG).await;
    assert!(
        matches!(&after, Some(Received::Down { reference, .. }) if *reference == m3),
        "only the DOWN, no exit signal: {after:?}"
    );
    // The other way round: an Elixir process links to a Rust process, which then exits.
    let linked = node.process(None).expect("linked process");
    let linked_pid = linked.pid().clone();
    let ok = p
        .call(
            ("srv", ex),
            tuple(vec![atom("link_watch"), linked_pid.clone().into()]),
            LONG,
        )
        .await
        .expect("link_watch");
    assert!(is_atom(&ok, "ok"));
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(atom("linked")))
    );
    linked.exit(atom("shutdown"));
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(tuple(vec![
            atom("saw_exit"),
            atom("shutdown")
        ])))
    );
    // An Elixir process monitors a Rust process, which is dropped: DOWN with `normal`.
    let watched = node.process(None).expect("watched process");
    let ok = p
        .call(
            ("srv", ex),
            tuple(vec![atom("monitor_watch"), watched.pid().clone().into()]),
            LONG,
        )
        .await
        .expect("monitor_watch");
    assert!(is_atom(&ok, "ok"));
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(atom("monitoring")))
    );
    drop(watched);
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(tuple(vec![
            atom("saw_down"),
            atom("normal")
        ])))
    );
    assert_eq!(p.queued(), 0);
    pair.rust.stop().await;
}

/// A fresh Elixir process that exits with `r` when sent `{:die, r}`.
async fn new_worker(p: &Process, ex: &str) -> Pid {
    match p.call(("srv", ex), atom("worker"), LONG).await {
        Ok(Term::Pid(pid)) => pid,
        other => panic!("worker: {other:?}"),
    }
}

/// A server on the Rust node that answers `:hold` only when cast `:release`.
struct Holder(Option<Caller>);

impl GenServer for Holder {
    fn handle_call(&mut self, _: &mut Ctx, from: &Caller, request: Request<'_>) -> CallResult<'_> {
        match request.decode() {
            Ok(t) if is_atom(&t, "hold") => {
                self.0 = Some(from.clone());
                CallResult::NoReply
            }
            Ok(t) => CallResult::Reply(t),
            Err(_) => CallResult::Reply(atom("error")),
        }
    }
    fn handle_cast(&mut self, ctx: &mut Ctx, _: Request<'_>) {
        if let Some(from) = self.0.take() {
            ctx.reply(&from, atom("late"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_calls_selective_receive_monitors_and_links() {
    let running = start_node(&common::unique("rs_local"), "c", common::free_port()).await;
    let node = running.node.clone();
    node.spawn_server(Some("holder"), Holder(None))
        .expect("holder spawns");
    let p = node.process(Some("me")).expect("process");
    assert!(matches!(
        node.process(Some("me")),
        Err(kvnode::SpawnError::NameTaken(_))
    ));
    // Local call and echo.
    let r = p
        .call("holder", atom("hi"), LONG)
        .await
        .expect("local call");
    assert!(is_atom(&r, "hi"));
    // Timeout, then the late reply (sent to our pid by a server on this node) is dropped.
    match p
        .call("holder", atom("hold"), Duration::from_millis(100))
        .await
    {
        Err(CallError::Timeout { .. }) => {}
        other => panic!("expected a timeout: {other:?}"),
    }
    p.cast("holder", atom("release"));
    p.send("me", atom("marker"));
    assert_eq!(p.recv().await, Received::Message(atom("marker")));
    assert_eq!(p.queued(), 0, "the late reply was dropped");
    assert_eq!(
        p.call("me", atom("x"), LONG).await,
        Err(CallError::CallingSelf)
    );
    // A call future dropped mid-wait ends the call the same way.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        p.call("holder", atom("hold"), LONG),
    )
    .await;
    assert!(abandoned.is_err(), "{abandoned:?}");
    p.cast("holder", atom("release"));
    p.send("me", atom("marker"));
    assert_eq!(p.recv().await, Received::Message(atom("marker")));
    assert_eq!(p.queued(), 0, "the reply to the dropped call was dropped");
    // noproc for a missing local name.
    match p.call("nobody", atom("x"), LONG).await {
        Err(CallError::NoProc { dest }) => assert_eq!(dest, Dest::from("nobody")),
        other => panic!("{other:?}"),
    }
    // Selective receive keeps the others in order.
    for i in 1..=3 {
        p.send(p.pid().clone(), FixInteger::from(i).into());
    }
    let two = p
        .recv_matching(|r| *r == Received::Message(FixInteger::from(2).into()))
        .await;
    assert_eq!(two, Received::Message(FixInteger::from(2).into()));
    assert_eq!(
        p.recv().await,
        Received::Message(FixInteger::from(1).into())
    );
    assert_eq!(
        p.recv().await,
        Received::Message(FixInteger::from(3).into())
    );
    // Monitor and link a local Rust process; its exit reaches both.
    let other = node.process(Some("other")).expect("other");
    let other_pid: Pid = other.pid().clone();
    let by_name = p.monitor("other");
    let by_pid = p.monitor(other_pid.clone());
    p.link(&other_pid);
    other.exit(atom("done"));
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(p.recv_timeout(LONG).await.expect("signal"));
    }
    assert!(got.contains(&Received::Down {
        reference: by_name,
        object: Dest::from("other"),
        reason: atom("done")
    }));
    assert!(got.contains(&Received::Down {
        reference: by_pid,
        object: Dest::Pid(other_pid.clone()),
        reason: atom("done")
    }));
    assert!(got.contains(&Received::Exit {
        from: other_pid.clone(),
        reason: atom("done")
    }));
    // The name is free again; monitoring a gone pid is `noproc` at once.
    let again = node.process(Some("other")).expect("name free after exit");
    drop(again);
    let m = p.monitor(other_pid.clone());
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Down {
            reference: m,
            object: Dest::Pid(other_pid),
            reason: atom("noproc")
        })
    );
    assert_eq!(
        node.incoming_monitor_count(),
        0,
        "local monitors all removed"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_node_that_is_not_there_fails_within_the_deadline() {
    let running = start_node(&common::unique("rs_conn"), "c", common::free_port()).await;
    let started = Instant::now();
    match running.node.connect("nobody_there@127.0.0.1").await {
        Err(ConnectError::Failed { node }) => assert_eq!(node, "nobody_there@127.0.0.1"),
        other => panic!("{other:?}"),
    }
    eprintln!(
        "connect to a missing node failed after {:?}",
        started.elapsed()
    );
    assert!(matches!(
        running.node.connect("no_at_sign").await,
        Err(ConnectError::BadName { .. })
    ));
    // A call to a name on a node that is not there ends with noconnection.
    let p = running.node.process(None).expect("process");
    match p
        .call(("srv", "nobody_there@127.0.0.1"), atom("x"), LONG)
        .await
    {
        Err(CallError::NoConnection { node }) => assert_eq!(node, "nobody_there@127.0.0.1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(running.node.remote_monitor_count(), 0);
    running.stop().await;
}

/// Max mailbox bytes for the flood test: 64 KiB, about 64 of its 1 KB messages.
const SMALL_MAILBOX: usize = 64 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_process_mailbox_stays_bounded_and_loses_nothing() {
    let pair = pair_with("flood", |c| c.max_mailbox_bytes = SMALL_MAILBOX).await;
    let ex = pair.elixir.name.as_str();
    let node = pair.rust.node.clone();
    let p = node.process(None).expect("process");
    until_ready(&p, ex).await;
    let sink = node.process(Some("sink")).expect("sink");
    const N: i32 = 2000;
    let ok = p
        .call(
            ("srv", ex),
            tuple(vec![
                atom("flood"),
                atom(&node.name().name),
                FixInteger::from(N).into(),
            ]),
            LONG,
        )
        .await
        .expect("flood");
    assert!(is_atom(&ok, "ok"));
    // The reader pauses once the mailbox is over its bound; the mailbox stays near it.
    let mut peak = 0;
    common::wait_for_async("the reader never paused", LONG, || {
        peak = peak.max(sink.queued());
        std::future::ready((node.backpressure_pauses() != 0).then_some(()))
    })
    .await;
    // Paused until we receive: the mailbox holds what it had.
    peak = peak.max(sink.queued());
    eprintln!(
        "flood: peak mailbox {peak} messages, {} reader pauses",
        node.backpressure_pauses()
    );
    // 64 KiB of 1 KB messages is about 64; the margin covers one frame batch in flight.
    assert!(
        peak <= 400,
        "mailbox grew to {peak} messages past its bound"
    );
    // Everything arrives, in order.
    for i in 1..=N {
        match sink.recv_timeout(LONG).await {
            Some(Received::Message(Term::Tuple(t)))
                if t.elements.first().is_some_and(|f| is_atom(f, "f"))
                    && t.elements.get(1) == Some(&FixInteger::from(i).into()) => {}
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert_eq!(
        sink.recv_timeout(LONG).await,
        Some(Received::Message(atom("flood_done")))
    );
    pair.rust.stop().await;
}

/// A Jinterface node (no DIST_MONITOR, no ALIAS) with an mbox registered as `jsrv` that
/// answers `$gen_call`s as a GenServer would: echoes the request, holds `:hold` until any
/// cast (then replies `:late` and sends `:late_sent`), and answers `:hang` never (it sends
/// the caller `:hanging`).
const JAVA_SERVER: &str = r#"
import com.ericsson.otp.erlang.*;

public class JSrv {
    public static void main(String[] args) throws Exception {
        OtpEpmd.useEpmdPort(Integer.parseInt(args[2]));
        OtpNode node = new OtpNode(args[0], args[1]);
        OtpMbox mbox = node.createMbox("jsrv");
        System.out.println("READY");
        System.out.flush();
        OtpErlangPid heldPid = null;
        OtpErlangObject heldTag = null;
        while (true) {
            OtpErlangObject m = mbox.receive();
            if (!(m instanceof OtpErlangTuple)) continue;
            OtpErlangTuple t = (OtpErlangTuple) m;
            if (t.arity() == 3 && t.elementAt(0).equals(new OtpErlangAtom("$gen_call"))) {
                OtpErlangTuple from = (OtpErlangTuple) t.elementAt(1);
                OtpErlangPid pid = (OtpErlangPid) from.elementAt(0);
                OtpErlangObject tag = from.elementAt(1);
                OtpErlangObject req = t.elementAt(2);
                if (req.equals(new OtpErlangAtom("hold"))) {
                    heldPid = pid;
                    heldTag = tag;
                } else if (req.equals(new OtpErlangAtom("hang"))) {
                    mbox.send(pid, new OtpErlangAtom("hanging"));
                } else {
                    mbox.send(pid, new OtpErlangTuple(new OtpErlangObject[] { tag, req }));
                }
            } else if (t.arity() == 2 && t.elementAt(0).equals(new OtpErlangAtom("$gen_cast"))
                    && heldPid != null) {
                mbox.send(heldPid, new OtpErlangTuple(new OtpErlangObject[] { heldTag, new OtpErlangAtom("late") }));
                mbox.send(heldPid, new OtpErlangAtom("late_sent"));
                heldPid = null;
            }
        }
    }
}
"#;

/// Compiles and starts the Java server as `<alive>@127.0.0.1`; returns once it is ready.
fn start_java_server(alive: &str, cookie: &str, epmd_port: u16) -> common::ChildGuard {
    use std::io::BufRead;
    let jar = common::jinterface_jar();
    let dir = std::env::temp_dir().join(common::unique("kvnode_jsrv"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("JSrv.java"), JAVA_SERVER).expect("write JSrv.java");
    let out = std::process::Command::new("javac")
        .arg("-cp")
        .arg(&jar)
        .arg("-d")
        .arg(&dir)
        .arg(dir.join("JSrv.java"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run javac ({e}): apt-get install -y default-jdk-headless")
        });
    assert!(
        out.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = std::process::Command::new("java")
        .arg("-cp")
        .arg(format!("{}:{}", dir.display(), jar.display()))
        .arg("JSrv")
        .arg(format!("{alive}@127.0.0.1"))
        .arg(cookie)
        .arg(epmd_port.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("run java");
    let stdout = child.stdout.take().expect("stdout piped");
    let guard = common::ChildGuard {
        child,
        what: alive.to_owned(),
    };
    // Blocks until READY or EOF; the guard kills the JVM if the test fails.
    let ready = std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "READY");
    assert!(ready, "the Java server exited before it was ready");
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_a_peer_without_alias_or_dist_monitor() {
    let cookie = common::unique("cookie");
    let epmd = common::free_port();
    let running = start_node(&common::unique("rs_java"), &cookie, epmd).await;
    let node = running.node.clone();
    let alive = common::unique("jsrv");
    let java_name = format!("{alive}@127.0.0.1");
    let mut java = tokio::task::spawn_blocking({
        let cookie = cookie.clone();
        move || start_java_server(&alive, &cookie, epmd)
    })
    .await
    .expect("java start");
    let mut events = node.monitor_nodes();
    let p = node.process(None).expect("process");
    let jsrv = ("jsrv", java_name.as_str());
    let r = p.call(jsrv, atom("ping"), LONG).await.expect("echo");
    assert!(is_atom(&r, "ping"));
    assert_eq!(events.recv().await, Some(NodeEvent::Up(java_name.clone())));
    assert!(
        !node
            .peer_flags(&java_name)
            .is_some_and(|f| f.contains(erl_dist::DistributionFlags::ALIAS)),
        "Jinterface negotiates no ALIAS"
    );
    // Timeout; the late reply then comes to the pid (no ALIAS) and is dropped.
    match p.call(jsrv, atom("hold"), Duration::from_millis(300)).await {
        Err(CallError::Timeout { .. }) => {}
        other => panic!("expected a timeout: {other:?}"),
    }
    p.cast(jsrv, atom("release"));
    assert_eq!(
        p.recv_timeout(LONG).await,
        Some(Received::Message(atom("late_sent")))
    );
    assert_eq!(p.queued(), 0, "the late reply was dropped");
    let r = p.call(jsrv, atom("again"), LONG).await.expect("echo");
    assert!(is_atom(&r, "again"));
    // The call's monitor is local-only: the node going down ends a call in progress.
    let call = p.call(jsrv, atom("hang"), Duration::from_secs(120));
    let kill = async {
        let hanging = p
            .recv_matching_timeout(|r| *r == Received::Message(atom("hanging")), LONG)
            .await;
        assert!(hanging.is_some(), "the Java server got the call");
        let _ = java.child.kill();
    };
    let (result, ()) = tokio::join!(call, kill);
    let _ = java.child.wait();
    match result {
        Err(CallError::NoConnection { node }) => assert_eq!(node, java_name),
        other => panic!("call while the Java node dies: {other:?}"),
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_subscribes_to_the_kv_server_on_its_own_node() {
    let running = start_node(&common::unique("rs_kvlocal"), "c", common::free_port()).await;
    let node = running.node.clone();
    let config = kvnode::kv::KvConfig::default();
    kvnode::kv::start(&node, &config)
        .await
        .expect("the KV app starts");
    let kv = config.process_name.clone();
    let watcher = node.process(None).expect("watcher");
    let writer = node.process(None).expect("writer");
    let ok = watcher
        .call(
            kv.as_str(),
            tuple(vec![atom("subscribe"), atom("all")]),
            LONG,
        )
        .await
        .expect("subscribe");
    assert!(is_atom(&ok, "ok"));
    let ok = writer
        .call(
            kv.as_str(),
            tuple(vec![atom("put"), atom("k"), FixInteger::from(1).into()]),
            LONG,
        )
        .await
        .expect("put");
    assert!(is_atom(&ok, "ok"));
    let event = watcher.recv_timeout(LONG).await;
    assert_eq!(
        event,
        Some(Received::Message(tuple(vec![
            atom("kv_event"),
            atom("k"),
            tuple(vec![atom("put"), FixInteger::from(1).into()])
        ])))
    );
    let subscribers = || async {
        writer
            .call(kv.as_str(), atom("subscribers"), LONG)
            .await
            .expect("subscribers")
    };
    assert_eq!(subscribers().await, FixInteger::from(1).into());
    // The server monitors its subscriber (a local pid): its exit ends the subscription.
    drop(watcher);
    common::wait_for_async("the subscription outlived its process", LONG, || async {
        (subscribers().await == FixInteger::from(0).into()).then_some(())
    })
    .await;
    running.stop().await;
}
