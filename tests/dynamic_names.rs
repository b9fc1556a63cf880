//! Peers without a name of their own (DFLAG_NAME_ME, OTP 23+) get one from kvnode as they
//! get one from a BEAM node, and handshake refusals say what really happened.
//!
//! - The `erl_rpc` crate's `RpcClient` (it always asks for a dynamic name) connects and runs
//!   `erlang:node/0`, `erlang:nodes/1` and the KV module's `put`/`get` on kvnode and on a BEAM
//!   node hosting the same module; the answers agree.
//! - Raw erl_dist NAME_ME handshakes: two peers asking at once get two different names of
//!   OTP's shape (base 36 on the host they sent) and creations; one subscribes to the KV
//!   server, the other puts a key, and the event reaches the first one, called back under
//!   the name it was given. The same runs against a BEAM node with the reference KV server.
//! - A BEAM node started as `undefined@127.0.0.1` (OTP's own dynamic node name) connects,
//!   calls, subscribes and gets its event, from kvnode as from a BEAM node.
//! - A NAME_ME peer on a host too long for any name gets `not_allowed`, logged with why.
//! - A wrong cookie: the log line names the node that claimed to connect (a named node, and
//!   a NAME_ME peer under the name it was given).

mod common;

use common::*;
use erl_dist::DistributionFlags;
use erl_dist::handshake::{ClientSideHandshake, HandshakeError, HandshakeStatus};
use erl_dist::message::{self, Message};
use erl_dist::node::{Creation, LocalNode, NodeName, PeerNode};
use erl_dist::term::{Atom, FixInteger, List, Pid, Reference, Term, Tuple};
use std::time::{Duration, Instant};

const KV: &str = "Elixir.DistributedExample.KVStore";

fn atom(s: &str) -> Term {
    Atom::from(s).into()
}

fn tuple(v: Vec<Term>) -> Term {
    Tuple::from(v).into()
}

/// The distribution port `alive` registered with the EPMD at `epmd_port`.
fn dist_port_of(epmd_port: u16, alive: &str) -> u16 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let epmd = std::net::SocketAddr::from(([127, 0, 0, 1], epmd_port));
    wait_for(
        &format!("{alive} registered with EPMD"),
        Duration::from_secs(30),
        || {
            rt.block_on(kvnode::internals::epmd::client::port_please(epmd, alive))
                .ok()
                .flatten()
                .map(|i| i.port)
        },
    )
}

/// A BEAM node hosting the reference KV server (bench/kv_store.exs) with the module functions
/// `get/1` and `put/2` kvnode answers through rpc. Returns the node and its port once the
/// server is registered.
fn start_reference_beam(cookie: &str, epmd_port: u16) -> (BeamNode, String, u16) {
    let script = include_str!("../bench/kv_store.exs");
    let with_api = script.replacen(
        "  use GenServer\n",
        "  use GenServer\n  def get(k), do: GenServer.call(__MODULE__, {:get, k})\n  \
         def put(k, v), do: GenServer.call(__MODULE__, {:put, k, v})\n",
        1,
    );
    assert_ne!(
        with_api, script,
        "bench/kv_store.exs has no `use GenServer` line"
    );
    let alive = unique("beamref");
    let beam = BeamNode::start(&alive, cookie, epmd_port, &with_api);
    let port = dist_port_of(epmd_port, &alive);
    let name = format!("{alive}@127.0.0.1");
    // The node registers before its boot script runs: wait until `whereis` finds the server.
    wait_for("the reference KV server", Duration::from_secs(30), || {
        let mut rpc = Rpc::connect(&name, port, cookie).ok()?;
        let pid = rpc.call("erlang", "whereis", vec![atom(KV)]);
        matches!(pid, Term::Pid(_)).then_some(())
    });
    (beam, name, port)
}

/// An `erl_rpc` client running on smol's executor.
struct Rpc {
    handle: erl_rpc::RpcClientHandle,
    name: String,
    creation: u32,
}

impl Rpc {
    fn connect(node: &str, port: u16, cookie: &str) -> Result<Rpc, erl_rpc::ConnectError> {
        smol::block_on(async {
            let client = erl_rpc::RpcClient::connect_with_port(node, port, cookie).await?;
            let name = client.local_node().name.to_string();
            let creation = client.local_node().creation.get();
            let handle = client.handle();
            smol::spawn(async move {
                let _ = client.run().await;
            })
            .detach();
            Ok(Rpc {
                handle,
                name,
                creation,
            })
        })
    }

    fn call(&mut self, m: &str, f: &str, args: Vec<Term>) -> Term {
        let call = self
            .handle
            .call(Atom::from(m), Atom::from(f), List::from(args));
        let deadline = Duration::from_secs(20);
        smol::block_on(async {
            futures_lite_timeout(deadline, call)
                .await
                .unwrap_or_else(|| panic!("rpc {m}:{f} timed out"))
                .unwrap_or_else(|e| panic!("rpc {m}:{f}: {e}"))
        })
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        self.handle.terminate();
    }
}

/// `fut`, or `None` after `limit`.
async fn futures_lite_timeout<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    use smol::future::FutureExt;
    async { Some(fut.await) }
        .or(async {
            smol::Timer::after(limit).await;
            None
        })
        .await
}

/// A dynamic name as OTP's net_kernel makes them: base-36 digits (upper case), `@host`.
fn is_dynamic_name(name: &str, host: &str) -> bool {
    let Some((alive, h)) = name.split_once('@') else {
        return false;
    };
    h == host
        && (1..=13).contains(&alive.len())
        && alive
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// What an `erl_rpc` client sees of a node hosting the KV module: the node's own name, whether
/// the client is among its hidden nodes, and the answers of `put` and `get`.
fn rpc_session(node: &str, port: u16, cookie: &str) -> (Rpc, Term, bool, Term, Term) {
    let mut rpc = Rpc::connect(node, port, cookie)
        .unwrap_or_else(|e| panic!("erl_rpc connect to {node}: {e}"));
    let own = rpc.call("erlang", "node", vec![]);
    let hidden = rpc.call("erlang", "nodes", vec![atom("hidden")]);
    let listed = matches!(&hidden, Term::List(l) if l.elements.contains(&atom(&rpc.name)));
    let key = tuple(vec![atom("from_erl_rpc"), FixInteger::from(1).into()]);
    let put = rpc.call(KV, "put", vec![key.clone(), atom("dynamic")]);
    let get = rpc.call(KV, "get", vec![key]);
    (rpc, own, listed, put, get)
}

#[test]
fn erl_rpc_connects_with_a_dynamic_name_and_calls_as_on_a_beam_node() {
    let kv = KvNode::fresh("kv_erlrpc");
    let (_beam, beam_name, beam_port) = start_reference_beam(&kv.cookie, kv.epmd_port);

    let (beam_rpc, own, listed, put, get) = rpc_session(&beam_name, beam_port, &kv.cookie);
    assert_eq!(own, atom(&beam_name));
    assert!(listed, "BEAM does not list {} as hidden", beam_rpc.name);
    assert_eq!((&put, &get), (&atom("ok"), &atom("dynamic")));
    assert!(
        is_dynamic_name(&beam_rpc.name, "localhost"),
        "{}",
        beam_rpc.name
    );

    let (kv_rpc, own, listed, put2, get2) = rpc_session(&kv.name, kv.dist_port(), &kv.cookie);
    assert_eq!(own, atom(&kv.name));
    assert!(listed, "kvnode does not list {} as hidden", kv_rpc.name);
    assert_eq!(
        (put2, get2),
        (put, get),
        "kvnode and BEAM answer differently"
    );
    assert!(
        is_dynamic_name(&kv_rpc.name, "localhost"),
        "{}",
        kv_rpc.name
    );
    assert!(kv_rpc.creation >= 4, "creation {}", kv_rpc.creation);
    // kvnode's log shows the connection under the name it gave.
    kv.wait_log(&kv_rpc.name, Duration::from_secs(10));
}

/// A raw NAME_ME handshake from host `host`: the status, and the connection when named.
async fn name_me(
    port: u16,
    cookie: &str,
    host: &str,
) -> Result<(HandshakeStatus, Option<Named>), HandshakeError> {
    let stream = smol::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name: NodeName = format!("nonode@{host}").parse()?;
    let mut local = LocalNode::new(name, Creation::new(0));
    local.flags |= DistributionFlags::NAME_ME
        | DistributionFlags::DIST_MONITOR
        | DistributionFlags::DIST_MONITOR_NAME;
    let mut hs = ClientSideHandshake::new(stream, local.clone(), cookie);
    let status = hs.execute_send_name(6).await?;
    let HandshakeStatus::Named { name, creation } = status.clone() else {
        return Ok((status, None));
    };
    local.name = NodeName::new(&name, host)?;
    local.creation = creation;
    let (stream, peer) = hs.execute_rest(true).await?;
    let (tx, rx) = message::channel(stream, local.flags & peer.flags);
    Ok((
        status,
        Some(Named {
            local,
            _peer: peer,
            tx,
            rx,
        }),
    ))
}

/// A peer named by the node it connected to.
struct Named {
    local: LocalNode,
    _peer: PeerNode,
    tx: message::Sender<smol::net::TcpStream>,
    rx: message::Receiver<smol::net::TcpStream>,
}

impl Named {
    fn pid(&self) -> Pid {
        Pid::new(
            Atom::from(self.local.name.to_string()),
            1,
            0,
            self.local.creation.get(),
        )
    }

    /// Waits for a message to our pid that `want` accepts (ticks, monitors and the like are
    /// skipped).
    async fn recv_matching(&mut self, what: &str, want: impl Fn(&Term) -> bool) -> Term {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = futures_lite_timeout(left, self.rx.recv())
                .await
                .unwrap_or_else(|| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|e| panic!("connection failed waiting for {what}: {e}"));
            if let Message::Send(m) = msg
                && m.to_pid == self.pid()
                && want(&m.message)
            {
                return m.message;
            }
        }
    }
}

/// Two NAME_ME peers at once; one subscribes to everything, the other puts a key; returns
/// the two names and the event the subscriber got.
fn two_named_peers_and_an_event(port: u16, cookie: &str) -> (String, String, Term) {
    let ask = || {
        let cookie = cookie.to_owned();
        std::thread::spawn(move || smol::block_on(name_me(port, &cookie, "localhost")))
    };
    let (a, b) = (ask(), ask());
    type Asked = std::thread::JoinHandle<Result<(HandshakeStatus, Option<Named>), HandshakeError>>;
    let named = |r: Asked| -> Named {
        let (status, named) = r.join().expect("handshake thread").expect("handshake");
        assert!(
            matches!(&status, HandshakeStatus::Named { creation, .. } if creation.get() >= 4),
            "{status:?}"
        );
        named.expect("a named connection")
    };
    let (mut a, mut b) = (named(a), named(b));
    let (name_a, name_b) = (a.local.name.to_string(), b.local.name.to_string());
    smol::block_on(async {
        let tag = Reference {
            node: Atom::from(name_a.as_str()),
            id: vec![7, 8, 9],
            creation: a.local.creation.get(),
        };
        let from = tuple(vec![a.pid().into(), tag.clone().into()]);
        let call = tuple(vec![
            atom("$gen_call"),
            from,
            tuple(vec![atom("subscribe"), atom("all")]),
        ]);
        a.tx.send(Message::reg_send(a.pid(), Atom::from(KV), call))
            .await
            .expect("send subscribe");
        let tag: Term = tag.into();
        let reply = a
            .recv_matching(
                "the subscribe reply",
                |m| matches!(m, Term::Tuple(t) if t.elements.first() == Some(&tag)),
            )
            .await;
        assert_eq!(reply, tuple(vec![tag, atom("ok")]));
        let put = tuple(vec![
            atom("$gen_cast"),
            tuple(vec![atom("put"), atom("named_key"), atom(&name_b)]),
        ]);
        b.tx.send(Message::reg_send(b.pid(), Atom::from(KV), put))
            .await
            .expect("send put");
        let event = a
            .recv_matching(
                "the kv_event",
                |m| matches!(m, Term::Tuple(t) if t.elements.first() == Some(&atom("kv_event"))),
            )
            .await;
        (name_a, name_b, event)
    })
}

#[test]
fn name_me_peers_get_distinct_names_and_are_called_back_as_on_a_beam_node() {
    let kv = KvNode::fresh("kv_nameme");
    let (_beam, _beam_name, beam_port) = start_reference_beam(&kv.cookie, kv.epmd_port);
    for (who, port) in [("BEAM", beam_port), ("kvnode", kv.dist_port())] {
        let (name_a, name_b, event) = two_named_peers_and_an_event(port, &kv.cookie);
        assert_ne!(name_a, name_b, "{who} gave both peers one name");
        for n in [&name_a, &name_b] {
            assert!(is_dynamic_name(n, "localhost"), "{who}: {n}");
        }
        assert_eq!(
            event,
            tuple(vec![
                atom("kv_event"),
                atom("named_key"),
                tuple(vec![atom("put"), atom(&name_b)]),
            ]),
            "{who}"
        );
    }
}

#[test]
fn name_me_on_a_host_too_long_for_a_name_is_refused_with_the_reason() {
    let kv = KvNode::fresh("kv_nameme_bad");
    // `nonode@` + 248 bytes fit the 255 bytes of a node name; a 12- or 13-digit dynamic
    // name (all but about 1 in 150 draws) does not: `not_allowed`, and the log says why.
    let host = "h".repeat(248);
    let r = smol::block_on(name_me(kv.dist_port(), &kv.cookie, &host));
    let status = r.map(|(status, named)| (status, named.is_some()));
    assert!(
        matches!(status, Ok((HandshakeStatus::NotAllowed, false))),
        "{status:?}"
    );
    kv.wait_log("cannot name a NAME_ME peer", Duration::from_secs(10));
    assert!(!kv.logs().contains("unspecified"), "{}", kv.logs());
}

#[test]
fn a_wrong_cookie_log_line_names_the_node_that_claimed_to_connect() {
    let kv = KvNode::fresh("kv_cookie_name");
    let bad = unique("wrong_cookie");
    let out = elixir(
        &kv,
        &bad,
        "not-the-cookie",
        r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
false = Node.connect(kv)
IO.puts("SCRIPT-OK")
"#,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let line_for = |needle: &str| {
        wait_for("a wrong-cookie line", Duration::from_secs(10), || {
            kv.logs()
                .lines()
                .find(|l| l.contains("different cookie") && l.contains(needle))
                .map(str::to_owned)
        })
    };
    let line = line_for(&format!("{bad}@127.0.0.1"));
    assert!(line.contains("WARN"), "{line}");
    // A NAME_ME peer with a wrong cookie: named under the name kvnode gave it.
    let r = smol::block_on(name_me(kv.dist_port(), "not-the-cookie", "localhost"));
    assert!(
        matches!(
            r,
            Err(HandshakeError::Io(_)) | Err(HandshakeError::CookieMismatch)
        ),
        "{:?}",
        r.map(|(s, _)| s)
    );
    let line = line_for("@localhost");
    assert!(line.contains("WARN"), "{line}");
    assert!(!kv.logs().contains("not-the-cookie"), "{}", kv.logs());
}

/// Run by a BEAM node started as `undefined@127.0.0.1` (OTP's dynamic node name: it has no
/// name until the first node it connects to gives it one) against the node in `TARGET`.
const DYNAMIC_BEAM_SCRIPT: &str = r#"
target = String.to_atom(System.fetch_env!("TARGET"))
store = {DistributedExample.KVStore, target}
%{name_type: :dynamic} = :net_kernel.get_state()
true = Node.connect(target)
me = node()
:ok = GenServer.call(store, {:put, :by_dynamic, me})
^me = GenServer.call(store, {:get, :by_dynamic})
:ok = GenServer.call(store, {:subscribe, :dyn_key})
GenServer.cast(store, {:put, :dyn_key, 1})
receive do {:kv_event, :dyn_key, {:put, 1}} -> :ok after 10_000 -> raise "no event" end
IO.puts("NAMED=#{me}")
IO.puts("SCRIPT-OK")
"#;

#[test]
fn a_beam_node_without_a_name_is_named_by_kvnode_as_by_a_beam_node() {
    let kv = KvNode::fresh("kv_dynbeam");
    let (_beam, beam_name, _) = start_reference_beam(&kv.cookie, kv.epmd_port);
    for target in [&beam_name, &kv.name] {
        let out = elixir_env(
            &kv,
            "undefined",
            &kv.cookie,
            DYNAMIC_BEAM_SCRIPT,
            &[("TARGET", target.clone())],
        );
        assert!(out.contains("SCRIPT-OK"), "{target}: {out}");
        let named = out
            .lines()
            .find_map(|l| l.strip_prefix("NAMED="))
            .unwrap_or_else(|| panic!("{target}: {out}"));
        assert!(is_dynamic_name(named, "127.0.0.1"), "{target}: {named}");
    }
    kv.wait_log("asked for a dynamic name", Duration::from_secs(10));
}
