//! Tests for the EPMD client, the embedded server and [`super::start`]: in-process on port 0,
//! then against real OTP (`epmd`, `erl`) processes behind kill-on-drop guards.
//!
//! Test-only code: the parent declares this module under `#[cfg(test)]`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::client::{self, NodeInfo};
use super::proto::*;
use super::server::{ConnectionError, EpmdLimits, EpmdServer, REQUEST_TIMEOUT, parse_request};
use super::{EpmdError, EpmdMode, start};

const WAIT: Duration = Duration::from_secs(10);

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A unique name per test run.
fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), rand::random::<u32>())
}

/// An embedded server on 127.0.0.1:0; stopped on drop.
struct TestServer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::from(EpmdServer::bind(loopback(0)).await.unwrap())
    }

    fn from(server: EpmdServer) -> Self {
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = Some(tokio::spawn(server.run(shutdown.clone())));
        TestServer {
            addr,
            shutdown,
            task,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An OS process killed (by pid) and reaped when dropped, even when the test panics.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_guarded(cmd: &mut Command) -> ChildGuard {
    ChildGuard(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Polls `probe` until it yields `Some`, failing loudly after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn names_of(epmd: SocketAddr) -> Vec<(String, u16)> {
    client::names(epmd).await.unwrap()
}

fn alive2_body(name: &str, port: u16, highest: u16) -> Vec<u8> {
    let mut body = vec![ALIVE2_REQ];
    body.extend_from_slice(&port.to_be_bytes());
    body.extend_from_slice(&[NODE_TYPE_NORMAL, PROTOCOL_TCP_IPV4]);
    body.extend_from_slice(&highest.to_be_bytes());
    body.extend_from_slice(&5u16.to_be_bytes());
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

/// Sends raw bytes, then reads until the server closes (bounded by [`WAIT`]). A reset (the
/// server closed with our bytes unread) counts as a close.
async fn raw_exchange(epmd: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(epmd).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut reply))
        .await
        .expect("server did not close the connection");
    if let Err(error) = read {
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
    }
    reply
}

#[tokio::test]
async fn register_lookup_list_and_free() {
    let server = TestServer::start().await;
    let name = unique("alpha");
    let registration = client::register(server.addr, &name, 5555, true)
        .await
        .unwrap();
    assert_ne!(registration.creation, 0);

    let info = client::port_please(server.addr, &name).await.unwrap();
    assert_eq!(
        info,
        Some(NodeInfo {
            port: 5555,
            node_type: NODE_TYPE_HIDDEN,
            protocol: PROTOCOL_TCP_IPV4,
            highest_version: 6,
            lowest_version: 5,
            name: name.clone(),
            extra: vec![],
        })
    );
    assert_eq!(names_of(server.addr).await, vec![(name.clone(), 5555)]);
    assert_eq!(
        client::port_please(server.addr, "nobody").await.unwrap(),
        None
    );

    registration.close().await;
    eventually("explicit close to free the name", || async {
        client::port_please(server.addr, &name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    let again = client::register(server.addr, &name, 5556, false)
        .await
        .unwrap();
    drop(again);
    eventually("drop to free the name", || async {
        names_of(server.addr).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn duplicate_name_refused_and_creation_advances() {
    let server = TestServer::start().await;
    let first = client::register(server.addr, "dup", 4000, true)
        .await
        .unwrap();
    let err = client::register(server.addr, "dup", 4001, true)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EpmdError::NameTaken { name } if name == "dup"),
        "{err:?}"
    );
    assert!(err.to_string().contains("already registered"));
    // The refusal did not disturb the holder.
    assert_eq!(names_of(server.addr).await, vec![("dup".to_owned(), 4000)]);

    let other = client::register(server.addr, "other", 4002, true)
        .await
        .unwrap();
    let expected = first.creation.wrapping_add(1).max(1);
    assert_eq!(other.creation, expected);
}

#[tokio::test]
async fn request_split_into_single_bytes() {
    let server = TestServer::start().await;
    let bytes = frame(&alive2_body("slow", 4321, 6));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in &bytes {
        stream.write_all(&[*byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut reply = [0u8; 6];
    tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..2], &[ALIVE2_X_RESP, RESULT_OK]);
    assert_ne!(
        u32::from_be_bytes([reply[2], reply[3], reply[4], reply[5]]),
        0
    );
    assert_eq!(names_of(server.addr).await, vec![("slow".to_owned(), 4321)]);

    // A split PORT_PLEASE2_REQ, too.
    let mut query = TcpStream::connect(server.addr).await.unwrap();
    query.set_nodelay(true).unwrap();
    for byte in frame(b"zslow") {
        query.write_all(&[byte]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, query.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&answer[..4], &[PORT2_RESP, RESULT_OK, 0x10, 0xE1]);
    drop(stream);
}

#[tokio::test]
async fn garbage_closes_only_that_connection() {
    let server = TestServer::start().await;
    let holder = client::register(server.addr, "holder", 7000, true)
        .await
        .unwrap();

    for garbage in [
        &[0u8, 3, 200, 1, 2][..],        // unknown tag
        &[0, 0][..],                     // empty request
        &[0xff, 0xff, 1, 2, 3][..],      // absurd length
        &frame(&[ALIVE2_REQ, 0, 1])[..], // truncated ALIVE2
        &frame(&[ALIVE2_REQ, 0, 1, 77, 0, 0, 6, 0, 5, 0xff, 0xff, b'a', 0, 0])[..], // bad name length
        &frame(b"z")[..],          // PORT_PLEASE2 without a name
        b"GET / HTTP/1.1\r\n\r\n", // a stray HTTP client
    ] {
        let reply = raw_exchange(server.addr, garbage).await;
        assert!(reply.is_empty(), "{garbage:?} got {reply:?}");
    }
    // Everyone else is still served.
    assert_eq!(
        names_of(server.addr).await,
        vec![("holder".to_owned(), 7000)]
    );
    let info = client::port_please(server.addr, "holder").await.unwrap();
    assert_eq!(info.map(|i| i.port), Some(7000));
    drop(holder);
}

/// The pure parser the fuzzer drives (`fuzz/fuzz_targets/epmd_request.rs`): "need more" for
/// every prefix of a request, the body once complete, and the connection's refusals.
#[test]
fn parse_request_buffers_then_validates() {
    let alive = frame(&alive2_body("kv", 4321, 6));
    for cut in 0..alive.len() {
        assert!(
            matches!(parse_request(&alive[..cut]), Ok(None)),
            "cut {cut}"
        );
    }
    let mut two = alive.clone();
    two.extend_from_slice(&frame(&[NAMES_REQ]));
    assert_eq!(parse_request(&two).unwrap(), Some(&alive[2..]));
    assert_eq!(
        parse_request(&frame(b"zkv\0")).unwrap(),
        Some(&b"zkv\0"[..])
    );
    // An invalid name is answered by a refused registration, not a parse error.
    assert!(
        parse_request(&frame(&alive2_body("a\0b", 1, 6)))
            .unwrap()
            .is_some()
    );

    let err = |bytes: &[u8]| parse_request(bytes).unwrap_err();
    assert!(matches!(err(&[0, 0]), ConnectionError::EmptyRequest));
    assert!(matches!(
        err(&[0xff, 0xff]),
        ConnectionError::RequestTooLong { len: 65535, .. }
    ));
    assert!(matches!(
        err(&[0, 3, 200, 1, 2]),
        ConnectionError::UnknownRequest { tag: 200 }
    ));
    assert!(matches!(
        err(&frame(&[STOP_REQ])),
        ConnectionError::Refused { .. }
    ));
    assert!(matches!(
        err(&frame(b"z")),
        ConnectionError::Malformed { .. }
    ));
    assert!(matches!(
        err(&frame(&[
            ALIVE2_REQ, 0, 1, 77, 0, 0, 6, 0, 5, 0xff, 0xff, b'a', 0, 0
        ])),
        ConnectionError::Malformed { .. }
    ));
}

#[tokio::test]
async fn names_with_zero_nodes() {
    let server = TestServer::start().await;
    assert_eq!(names_of(server.addr).await, vec![]);
    let reply = raw_exchange(server.addr, &frame(&[NAMES_REQ])).await;
    assert_eq!(reply, u32::from(server.addr.port()).to_be_bytes());
}

#[tokio::test]
async fn old_client_gets_16_bit_creation() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&frame(&alive2_body("old", 1234, 5)))
        .await
        .unwrap();
    let mut reply = [0u8; 4];
    tokio::time::timeout(WAIT, stream.read_exact(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..2], &[ALIVE2_RESP, RESULT_OK]);
    let creation = u16::from_be_bytes([reply[2], reply[3]]);
    assert!((1..=3).contains(&creation), "{creation}");
    // And the refusal shape for a taken name: result 1, then close.
    let refusal = raw_exchange(server.addr, &frame(&alive2_body("old", 1, 5))).await;
    assert_eq!(refusal, [ALIVE2_RESP, RESULT_ERROR, 0, 99]);
}

#[tokio::test]
async fn dump_kill_and_stop_like_epmd() {
    let server = TestServer::start().await;
    let _reg = client::register(server.addr, "dumped", 4444, true)
        .await
        .unwrap();

    let dump = raw_exchange(server.addr, &frame(&[DUMP_REQ])).await;
    assert_eq!(&dump[..4], &u32::from(server.addr.port()).to_be_bytes());
    let text = String::from_utf8(dump[4..].to_vec()).unwrap();
    assert!(
        text.starts_with("active name     <dumped> at port 4444, fd = ") && text.ends_with("\n\0"),
        "{text:?}"
    );

    assert_eq!(raw_exchange(server.addr, &frame(&[KILL_REQ])).await, b"NO");
    assert!(
        raw_exchange(server.addr, &frame(b"sdumped"))
            .await
            .is_empty()
    );
    // Neither request had any effect.
    assert_eq!(
        names_of(server.addr).await,
        vec![("dumped".to_owned(), 4444)]
    );
}

#[tokio::test]
async fn incomplete_request_times_out() {
    let server = TestServer::start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&[0, 10, NAMES_REQ]).await.unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT + WAIT, stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a stalled request was never closed");
    assert!(buf.is_empty());
    assert!(started.elapsed() >= REQUEST_TIMEOUT - Duration::from_secs(1));
}

/// A TCP connection to `epmd` from `source` (another 127/8 address), sending nothing.
async fn idle_from(source: [u8; 4], epmd: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::from(source), 0)))
        .unwrap();
    socket.connect(epmd).await.unwrap()
}

/// True once the server has closed `s` (EOF or reset), polled until [`WAIT`].
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn held_registrations_never_starve_queries() {
    let limits = EpmdLimits {
        requests: 2,
        requests_per_ip: 2,
        registrations: 3,
        registrations_per_ip: 2,
    };
    let server = TestServer::from(
        EpmdServer::bind_with_limits(loopback(0), limits)
            .await
            .unwrap(),
    );
    let a = client::register(server.addr, "a", 1, true).await.unwrap();
    let b = client::register(server.addr, "b", 2, true).await.unwrap();
    // More registrations than request places are held, and queries still get answers.
    assert_eq!(names_of(server.addr).await.len(), 2);
    // The per-address share (2 from 127.0.0.1) is taken: refused, not queued or held.
    let refused = client::register(server.addr, "c", 3, true).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        client::port_please(server.addr, "c")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        client::port_please(server.addr, "a")
            .await
            .unwrap()
            .map(|n| n.port),
        Some(1)
    );
    drop(a);
    let names = eventually("a's place to free up", || async {
        let names = client::names(server.addr).await.ok()?;
        (names.len() == 1).then_some(names)
    })
    .await;
    assert_eq!(names, vec![("b".to_owned(), 2)]);
    let c = client::register(server.addr, "c", 3, true).await.unwrap();
    drop((b, c));
}

#[tokio::test]
async fn idle_connections_are_evicted_oldest_first_and_queries_get_in() {
    let limits = EpmdLimits {
        requests: 4,
        requests_per_ip: 3,
        ..EpmdLimits::default()
    };
    let server = TestServer::from(
        EpmdServer::bind_with_limits(loopback(0), limits)
            .await
            .unwrap(),
    );
    let _kv = client::register(server.addr, "kv", 4000, true)
        .await
        .unwrap();
    // A flood from 127.0.0.2: only its 3 newest stay; each newcomer closes its oldest.
    let mut flood = Vec::new();
    for _ in 0..10 {
        flood.push(idle_from([127, 0, 0, 2], server.addr).await);
    }
    for s in flood.iter_mut().take(7) {
        assert!(
            closed_by_server(s).await,
            "an old idle connection stayed open"
        );
    }
    // A query from 127.0.0.1 is answered at once, and it evicted none of its own address.
    assert_eq!(
        client::port_please(server.addr, "kv")
            .await
            .unwrap()
            .map(|n| n.port),
        Some(4000)
    );
    // Another flood address fills the total; still every query gets in.
    let mut other = Vec::new();
    for _ in 0..10 {
        other.push(idle_from([127, 0, 0, 3], server.addr).await);
    }
    for _ in 0..20 {
        assert_eq!(names_of(server.addr).await.len(), 1);
    }
}

#[tokio::test]
async fn server_shutdown_drops_registrations() {
    let mut server = TestServer::start().await;
    let mut reg = client::register(server.addr, "bye", 1, true).await.unwrap();
    server.shutdown.cancel();
    tokio::time::timeout(WAIT, reg.closed())
        .await
        .expect("registration not closed by server shutdown");
    let task = server.task.take().unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    let err = client::names(server.addr).await.unwrap_err();
    assert!(matches!(err, EpmdError::Unreachable { .. }), "{err:?}");
}

// ---- start(): client and embedded modes ------------------------------------------------------

/// A real `epmd -port P` in the foreground, killed on drop.
async fn real_epmd(port: u16) -> ChildGuard {
    let guard = spawn_guarded(Command::new("epmd").args(["-port", &port.to_string()]));
    eventually("the real epmd to listen", || async {
        client::names(loopback(port)).await.ok().map(|_| ())
    })
    .await;
    guard
}

async fn drain(shutdown: CancellationToken, tracker: TaskTracker) {
    shutdown.cancel();
    tracker.close();
    tokio::time::timeout(WAIT, tracker.wait())
        .await
        .expect("EPMD tasks did not stop");
}

#[tokio::test]
async fn start_embedded_on_free_port_and_unregister_on_shutdown() {
    let port = free_port();
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let name = unique("emb");
    let handle = start(
        port,
        &format!("{name}@127.0.0.1"),
        6001,
        true,
        shutdown.clone(),
        &tracker,
    )
    .await
    .unwrap();
    assert_eq!(handle.mode, EpmdMode::Embedded);
    assert_eq!(handle.to_string(), format!("embedded EPMD on port {port}"));
    assert_ne!(handle.creation, 0);
    assert_eq!(names_of(loopback(port)).await, vec![(name.clone(), 6001)]);

    // A second node with the same name is refused; another name joins as a client.
    let err = start(port, &name, 6002, true, shutdown.clone(), &tracker)
        .await
        .unwrap_err();
    assert!(matches!(err, EpmdError::NameTaken { .. }), "{err:?}");
    let other = start(port, "other", 6003, false, shutdown.clone(), &tracker)
        .await
        .unwrap();
    assert_eq!(other.mode, EpmdMode::Client);

    drain(shutdown, tracker).await;
    assert!(!handle.status().registered);
    let err = client::names(loopback(port)).await.unwrap_err();
    assert!(matches!(err, EpmdError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn start_uses_real_epmd_then_takes_over_when_it_dies() {
    let port = free_port();
    let epmd = real_epmd(port).await;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let name = unique("cli");
    let handle = start(port, &name, 6101, true, shutdown.clone(), &tracker)
        .await
        .unwrap();
    assert_eq!(handle.mode, EpmdMode::Client);
    assert_eq!(
        handle.to_string(),
        format!("client of the EPMD on port {port}")
    );
    let info = client::port_please(loopback(port), &name).await.unwrap();
    assert_eq!(
        info.map(|i| (i.port, i.node_type)),
        Some((6101, NODE_TYPE_HIDDEN))
    );

    // The system epmd dies: the node re-registers with an embedded EPMD of its own.
    drop(epmd);
    let mut watch = handle.watch();
    let status = tokio::time::timeout(
        WAIT,
        watch.wait_for(|s| s.registered && s.mode == EpmdMode::Embedded),
    )
    .await
    .expect("no re-registration")
    .unwrap()
    .to_owned();
    assert_ne!(status.creation, 0);
    assert_eq!(names_of(loopback(port)).await, vec![(name.clone(), 6101)]);

    drain(shutdown, tracker).await;
}

#[tokio::test]
async fn start_unregisters_from_real_epmd_on_shutdown() {
    let port = free_port();
    let _epmd = real_epmd(port).await;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let name = unique("bye");
    let handle = start(port, &name, 6201, false, shutdown.clone(), &tracker)
        .await
        .unwrap();
    assert_eq!(handle.mode, EpmdMode::Client);
    let err = start(port, &name, 6202, false, shutdown.clone(), &tracker)
        .await
        .unwrap_err();
    assert!(matches!(err, EpmdError::NameTaken { .. }), "{err:?}");
    drain(shutdown, tracker).await;
    eventually("the real epmd to forget the name", || async {
        client::port_please(loopback(port), &name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

// ---- interop with real OTP tools ----------------------------------------------------------

#[tokio::test]
async fn interop_epmd_names_and_erl() {
    let server = TestServer::from(EpmdServer::bind(loopback(free_port())).await.unwrap());
    let port = server.addr.port();
    let ours = unique("rustnode");
    let _reg = client::register(server.addr, &ours, 4711, true)
        .await
        .unwrap();

    // `epmd -names` lists what we hold.
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("epmd")
            .args(["-port", &port.to_string(), "-names"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("up and running on port {port}"))
            && stdout.contains(&format!("name {ours} at port 4711")),
        "{stdout}"
    );

    // So does `epmd -dump`, in epmd's own format.
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("epmd")
            .args(["-port", &port.to_string(), "-dump"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("active name     <{ours}> at port 4711")),
        "{stdout}"
    );

    // A real node registers with our server.
    let erl_name = unique("epmdtest");
    let _erl = spawn_guarded(Command::new("erl").args([
        "-noshell",
        "-start_epmd",
        "false",
        "-epmd_port",
        &port.to_string(),
        "-name",
        &format!("{erl_name}@127.0.0.1"),
        "-setcookie",
        "x",
        "-eval",
        "receive after infinity -> ok end",
    ]));
    let erl_port = eventually("erl to register", || async {
        names_of(server.addr)
            .await
            .into_iter()
            .find(|(name, _)| *name == erl_name)
            .map(|(_, port)| port)
    })
    .await;
    let info = client::port_please(server.addr, &erl_name)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info.port, erl_port);
    assert_eq!(info.node_type, NODE_TYPE_NORMAL);
    assert_eq!(info.highest_version, 6);

    // erl resolves a name we registered, and `net_adm:names/1` lists it.
    let script = format!(
        "io:format(\"~p~n~p~n\", [erl_epmd:port_please(\"{ours}\", \"127.0.0.1\"), \
         net_adm:names(\"127.0.0.1\")]), halt()."
    );
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("erl")
            .args([
                "-noshell",
                "-start_epmd",
                "false",
                "-epmd_port",
                &port.to_string(),
            ])
            .args(["-eval", &script])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("{port,4711,6}"),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names_line = lines.next().unwrap_or_default();
    assert!(
        names_line.starts_with("{ok,[") && names_line.contains(&format!("{{\"{ours}\",4711}}")),
        "{stdout}"
    );
}
