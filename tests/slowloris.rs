//! Floods of half-open and byte-at-a-time (slowloris) connections, against kvnode's
//! distribution port and its embedded EPMD: while 1,000 of them are open a real Elixir node is
//! still served; the handshake (or EPMD request) timeout, a deadline for the whole exchange and
//! not per read, closes every one of them; kvnode's RSS stays bounded during and after; beyond
//! `--max-handshakes` the oldest handshaking connections are closed at once to make room for
//! new ones, a second flood does not add to the memory the first left, and a real peer
//! arriving after the flood clears is served. (tests/lockout.rs has the floods from another
//! address that the budgets of unauthenticated connections are for.)
//!
//! The RSS figures are printed (`cargo test --release --test slowloris -- --nocapture`).

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const FLOOD: usize = 1_000;
const MIB: u64 = 1024 * 1024;
/// How far above its baseline kvnode's RSS may go while flooded.
const RSS_BOUND: u64 = 64 * MIB;

/// Opens `n` non-blocking connections to `port` that send nothing (see [`slowloris`] for
/// the ones that trickle).
fn open_flood(port: u16, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let s = TcpStream::connect(("127.0.0.1", port))
                .unwrap_or_else(|e| panic!("connection {i} of the flood: {e}"));
            s.set_nonblocking(true).expect("nonblocking");
            s
        })
        .collect()
}

/// Sends `message` one byte every 200 ms on every odd connection (the even ones stay silent)
/// until `stop` is set or the connection fails: each read kvnode makes gets a byte well
/// within any per-read timeout.
fn slowloris(socks: Vec<TcpStream>, message: Vec<u8>, stop: Arc<AtomicBool>) {
    let mut at = vec![0usize; socks.len()];
    let mut alive: Vec<bool> = (0..socks.len()).map(|i| i % 2 == 1).collect();
    let mut socks = socks;
    while !stop.load(Ordering::Relaxed) && alive.iter().any(|a| *a) {
        for (i, s) in socks.iter_mut().enumerate() {
            if alive[i] {
                let byte = message[at[i] % message.len()];
                match s.write(&[byte]) {
                    Ok(1) => at[i] += 1,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => alive[i] = false,
                }
            }
        }
        // The attacker's pace, not a wait for a condition.
        std::thread::park_timeout(Duration::from_millis(200));
    }
}

/// Waits until every flood connection is closed by kvnode; returns how long that took.
fn wait_all_closed(socks: &[TcpStream], within: Duration) -> Duration {
    let started = Instant::now();
    let mut open: Vec<usize> = (0..socks.len()).collect();
    wait_for("kvnode to close every flood connection", within, || {
        open.retain(|&i| !is_closed(&socks[i]));
        open.is_empty().then_some(())
    });
    started.elapsed()
}

/// Starts an Elixir node that creates `ready` once booted, waits for `go` to exist, then
/// connects to the kvnode, calls it, and creates `done`.
fn triggered_peer(
    kv: &KvNode,
    cookie: &str,
    [ready, go, done]: [&str; 3],
) -> std::thread::JoinHandle<ScriptOutput> {
    let script = format!(
        r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
File.write!({ready:?}, "")
TestWait.until(fn -> File.exists?({go:?}) end, 120_000)
t = System.monotonic_time(:millisecond)
true = Node.connect(kv)
:ok = GenServer.call({{DistributedExample.KVStore, kv}}, {{:put, :flooded, true}})
true = GenServer.call({{DistributedExample.KVStore, kv}}, {{:get, :flooded}})
File.write!({done:?}, "")
IO.puts("SCRIPT-OK served in #{{System.monotonic_time(:millisecond) - t}} ms")
"#
    );
    let (name, port, alive, cookie) = (
        kv.name.clone(),
        kv.epmd_port,
        unique("flooded"),
        cookie.to_owned(),
    );
    std::thread::spawn(move || {
        elixir_raw(
            &name,
            port,
            &alive,
            &cookie,
            &script,
            Duration::from_secs(180),
        )
    })
}

/// The first message of a v6 handshake (`N`, flags, creation, name), which the slowloris
/// connections trickle.
fn send_name_message() -> Vec<u8> {
    let name = b"slow@127.0.0.1";
    let mut body = vec![b'N'];
    body.extend_from_slice(&0x0d_0307_0fbc_u64.to_be_bytes());
    body.extend_from_slice(&7u32.to_be_bytes());
    body.extend_from_slice(&(name.len() as u16).to_be_bytes());
    body.extend_from_slice(name);
    let mut msg = (body.len() as u16).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Floods `port` with [`FLOOD`] connections while a real Elixir node calls `kv`; checks RSS,
/// that kvnode still holds `held` of them once the node is served (the rest were evicted to
/// make room) and that `timeout` closes them all. Returns (baseline, during, after) RSS.
fn flood_while_served(
    kv: &KvNode,
    cookie: &str,
    port: u16,
    message: Vec<u8>,
    timeout: Duration,
    held: std::ops::RangeInclusive<usize>,
) -> (u64, u64, u64) {
    let pid = kv.guard.pid();
    let [(ready, ready_in), (go, go_in), (done, done_in)] =
        ["ready", "go", "done"].map(shared_path);
    let peer = triggered_peer(kv, cookie, [&ready_in, &go_in, &done_in]);
    wait_for("the Elixir node to boot", Duration::from_secs(120), || {
        ready.exists().then_some(())
    });
    let baseline = rss(pid);

    let started = Instant::now();
    let socks = open_flood(port, FLOOD);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let clones = socks
            .iter()
            .map(|s| s.try_clone().expect("clone"))
            .collect();
        let stop = stop.clone();
        std::thread::spawn(move || slowloris(clones, message, stop))
    };
    let opened_in = started.elapsed();
    // While all of them are open, the real node connects and is served.
    std::fs::write(&go, b"").expect("go");
    wait_for(
        "the Elixir node to be served",
        Duration::from_secs(120),
        || done.exists().then_some(()),
    );
    let served_after = started.elapsed();
    let still_open = socks.iter().filter(|s| !is_closed(s)).count();
    let during = rss(pid);
    let out = peer.join().expect("peer thread");
    assert!(
        out.status.success(),
        "Elixir node failed while flooded:\n{}\n{}\n--- kvnode\n{}",
        out.stdout,
        out.stderr,
        kv.logs()
    );
    assert!(
        served_after < timeout,
        "the peer was served only after {served_after:?}, when the flood had timed out"
    );
    assert!(
        held.contains(&still_open),
        "{still_open} flood connections open before the timeout, expected {held:?}"
    );

    // The timeout closes every one of them, slowloris ones included: it is a deadline for
    // the whole exchange, not per read.
    let took = wait_all_closed(&socks, timeout + Duration::from_secs(30));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    let elapsed = started.elapsed();
    assert!(
        elapsed < timeout + Duration::from_secs(10),
        "flood took {elapsed:?} to clear with a {timeout:?} timeout"
    );
    drop(socks);
    let after = rss(pid);
    println!(
        "flood of {FLOOD} on port {port} (opened in {opened_in:?}): RSS baseline {}, during {}, \
         after {}; peer served {served_after:?} into the flood ({}); all closed {took:?} later ({elapsed:?} after \
         the flood began, timeout {timeout:?})",
        mib(baseline),
        mib(during),
        mib(after),
        out.stdout.trim(),
    );
    assert!(
        during < baseline + RSS_BOUND,
        "RSS during the flood {} > {} + 64 MiB",
        mib(during),
        mib(baseline)
    );
    assert!(
        after < baseline + RSS_BOUND,
        "RSS after the flood {} > {} + 64 MiB",
        mib(after),
        mib(baseline)
    );
    for file in [ready, go, done] {
        let _ = std::fs::remove_file(file);
    }
    (baseline, during, after)
}

#[test]
fn a_thousand_half_open_and_slowloris_connections_on_the_distribution_port() {
    raise_fd_limit(4 * FLOOD as u64);
    let cookie = unique("cookie");
    let timeout = Duration::from_secs(3);
    let kv = KvNode::start_with(
        &unique("kv_slowloris"),
        &cookie,
        free_port(),
        &[
            "--handshake-timeout",
            "3",
            "--max-handshakes",
            "1100",
            "--max-handshakes-per-ip",
            "1100",
            "--bind",
            "127.0.0.1",
        ],
    );
    let port = kv.dist_port();
    // Room for the whole flood (and the real node): every flood connection is held until the
    // handshake timeout closes it.
    let (_, _, after_first) = flood_while_served(
        &kv,
        &cookie,
        port,
        send_name_message(),
        timeout,
        FLOOD..=FLOOD,
    );
    kv.wait_log("handshake timed out after 3s", Duration::from_secs(5));

    // Fill every place (--max-handshakes 1100), then more: the newcomers get in and the
    // oldest are closed at once, long before any handshake timeout.
    let full = open_flood(port, 1100);
    let evicted_at = Instant::now();
    let extra = open_flood(port, 20);
    wait_for(
        "the oldest connections to be closed for the newcomers",
        Duration::from_secs(10),
        || full[..20].iter().all(is_closed).then_some(()),
    );
    let evicted_in = evicted_at.elapsed();
    assert!(
        evicted_in < timeout,
        "eviction took {evicted_in:?}, as long as a handshake timeout"
    );
    assert!(
        !extra.iter().any(is_closed),
        "a newcomer was closed instead of the oldest"
    );
    kv.wait_log(
        "unauthenticated connections are at their limit",
        Duration::from_secs(5),
    );
    wait_all_closed(&full, timeout + Duration::from_secs(30));
    wait_all_closed(&extra, timeout + Duration::from_secs(30));
    drop((full, extra));
    // Memory a flood leaves behind is reused by the next one, not added to.
    let after_second = rss(kv.guard.pid());
    println!(
        "over --max-handshakes: the 20 oldest connections closed within {evicted_in:?} for 20 \
         newcomers; RSS after this second flood {} (after the first: {})",
        mib(after_second),
        mib(after_first)
    );
    assert!(
        after_second < after_first + 16 * MIB,
        "a second flood grew RSS from {} to {}",
        mib(after_first),
        mib(after_second)
    );
    // A real peer arriving after the flood cleared is served.
    kv.script(
        "after",
        r#"
true = GenServer.call({DistributedExample.KVStore, kv}, {:get, :flooded})
"#,
    );
}

#[test]
fn a_thousand_half_open_and_slowloris_connections_on_the_epmd_port() {
    raise_fd_limit(4 * FLOOD as u64);
    let cookie = unique("cookie");
    let epmd_port = free_port();
    let kv = KvNode::start(&unique("kv_epmdflood"), &cookie, epmd_port);
    // A PORT_PLEASE2_REQ that announces a 4094-byte name (under the server's 4096-byte cap)
    // and trickles it one byte at a time: at 5 bytes a second it would take 13 minutes.
    let request = vec![0x0f, 0xff, 122, b'k', b'v'];
    // One address holds at most its share of the request budget: each newer connection
    // closes its oldest (the real node's own EPMD queries, from the same address, too).
    flood_while_served(
        &kv,
        &cookie,
        epmd_port,
        request,
        kvnode::internals::epmd::server::REQUEST_TIMEOUT,
        0..=kvnode::internals::epmd::server::DEFAULT_MAX_REQUESTS_PER_IP,
    );
}
