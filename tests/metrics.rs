//! `--metrics-addr`: the real kvnode binary serves `/metrics`, `/healthz` and `/readyz`; real
//! Elixir nodes drive calls and casts, a real client fails a handshake with a wrong cookie,
//! writes go through `--data-dir`; the counters move by exactly what was driven, the output
//! passes `promtool check metrics`, and a real Prometheus server scrapes it.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One HTTP/1.0 GET over a real socket: (status, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// `name{labels}` -> value, from the Prometheus text format.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, body) = http_get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in the scrape"))
}

fn kv_requests(lane: &str, kind: &str) -> String {
    format!("kvnode_kv_requests_total{{lane=\"{lane}\",kind=\"{kind}\"}}")
}

/// A sample of `kvnode_kv_request_duration_seconds` (`part`: count or sum).
fn request_seconds(lane: &str, part: &str) -> String {
    format!("kvnode_kv_request_duration_seconds_{part}{{lane=\"{lane}\"}}")
}

/// Runs `promtool check metrics` on `text`; a missing promtool fails the test.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is required (Debian package prometheus; scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn counters_move_by_what_was_driven_and_prometheus_scrapes_them() {
    let dir = std::env::temp_dir().join(unique("kvnode_metrics_data"));
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let kv = KvNode::fresh_with(
        "metrics",
        &[
            "--metrics-addr",
            &maddr,
            "--data-dir",
            dir.to_str().expect("utf-8 temp dir"),
        ],
    );
    let mut checks = Scenarios::new();

    checks.check("healthz and readyz answer 200 once ready", || {
        assert_eq!(http_get(mport, "/healthz").expect("healthz").0, 200);
        let (status, body) = http_get(mport, "/readyz").expect("readyz");
        assert_eq!(status, 200, "{body}");
        assert_eq!(http_get(mport, "/nope").expect("404").0, 404);
    });

    let before = scrape(mport);

    // 20 gets, 10 durable puts (calls, each acknowledged after its fdatasync), 5 durable put
    // casts, then one :size call, which comes after the casts (same sender, same order).
    kv.script(
        "driver",
        r#"
for i <- 1..20, do: nil = GenServer.call(store, {:get, {:missing, i}})
for i <- 1..10, do: :ok = GenServer.call(store, {:put, {:k, i}, i})
for i <- 11..15, do: :ok = GenServer.cast(store, {:put, {:k, i}, i})
15 = GenServer.call(store, :size)
"#,
    );
    // A failed handshake: the right node, the wrong cookie.
    let pang = kvnode_client(&[
        "ping",
        &kv.name,
        "--cookie",
        "not-the-cookie",
        "--epmd-port",
        &kv.epmd_port.to_string(),
    ]);
    assert_eq!(pang.stdout.trim(), "pang", "{pang:?}");

    // The Elixir node has gone: wait until its connection is counted down.
    let up_in = "kvnode_connections{state=\"up\",direction=\"in\"}";
    wait_for(
        "the Elixir node's connection to end",
        Duration::from_secs(30),
        || (value(&scrape(mport), up_in) == 0.0).then_some(()),
    );
    // The wrong-cookie handshake is counted when it fails, after the client exits at the latest.
    let wrong_cookie = "kvnode_handshake_failures_total{direction=\"in\",reason=\"wrong_cookie\"}";
    let after = wait_for(
        "the wrong-cookie handshake to be counted",
        Duration::from_secs(30),
        || {
            let m = scrape(mport);
            (value(&m, wrong_cookie) >= 1.0).then_some(m)
        },
    );
    let delta = |key: &str| value(&after, key) - value(&before, key);

    checks.check("KV requests by lane and kind, exactly", || {
        assert_eq!(delta(&kv_requests("call", "get")), 20.0);
        assert_eq!(delta(&kv_requests("call", "put")), 10.0);
        assert_eq!(delta(&kv_requests("cast", "put")), 5.0);
        assert_eq!(delta(&kv_requests("call", "size")), 1.0);
        assert_eq!(delta(&kv_requests("call", "delete")), 0.0);
        assert_eq!(delta(&kv_requests("cast", "get")), 0.0);
        // Every call is timed once.
        assert_eq!(delta("kvnode_kv_call_duration_seconds_count"), 31.0);
        // From frame read to reply written: the durable calls' replies leave after their
        // fdatasync, from the storage thread; the casts count once applied.
        assert_eq!(delta(&request_seconds("call", "count")), 31.0);
        assert_eq!(delta(&request_seconds("cast", "count")), 5.0);
        assert!(
            delta(&request_seconds("call", "sum"))
                >= delta("kvnode_kv_call_duration_seconds_sum") - 1e-9
        );
        assert_eq!(value(&after, "kvnode_kv_keys"), 15.0);
    });

    checks.check("one wrong-cookie handshake failure, nothing else", || {
        assert_eq!(delta(wrong_cookie), 1.0);
        let other = "kvnode_handshake_failures_total{direction=\"in\",reason=\"other\"}";
        assert_eq!(delta(other), 0.0);
    });

    checks.check("durable writes: commits and fsync latency", || {
        let commits = delta("kvnode_storage_commits_total");
        // Sequential acknowledged writes cannot share a commit; the casts may share one.
        assert!((11.0..=15.0).contains(&commits), "commits {commits}");
        assert_eq!(
            delta("kvnode_storage_fsync_duration_seconds_count"),
            commits,
            "one fsync observation per commit"
        );
        assert_eq!(delta("kvnode_storage_commit_groups_count"), commits);
        assert_eq!(delta("kvnode_storage_commit_groups_sum"), 15.0);
        assert_eq!(value(&after, "kvnode_storage_queue_bytes"), 0.0);
        assert!(value(&after, "kvnode_storage_log_bytes") > 0.0);
    });

    checks.check("connections, bytes and messages", || {
        assert_eq!(
            delta("kvnode_disconnects_total{reason=\"closed\"}"),
            1.0,
            "the Elixir node closed its connection"
        );
        // 36 requests, each one message at least; each call's reply one message out.
        assert!(delta("kvnode_dist_received_messages_total") >= 36.0);
        assert!(delta("kvnode_dist_sent_messages_total") >= 31.0);
        assert!(delta("kvnode_dist_received_bytes_total") > 36.0 * 20.0);
        assert!(delta("kvnode_dist_sent_bytes_total") > 31.0 * 10.0);
    });

    checks.check("embedded EPMD: registrations and lookups", || {
        let alive2 = "kvnode_epmd_requests_total{request=\"alive2\"}";
        let port_please = "kvnode_epmd_requests_total{request=\"port_please2\"}";
        // kvnode itself registered before the first scrape; the Elixir node did after.
        assert!(value(&before, alive2) >= 1.0);
        assert!(delta(alive2) >= 1.0);
        // The Elixir node and the ping client looked kvnode up.
        assert!(delta(port_please) >= 2.0);
        assert_eq!(value(&after, "kvnode_epmd_registered_nodes"), 1.0);
    });

    checks.check("process gauges", || {
        assert!(value(&after, "kvnode_resident_memory_bytes") > 1e6);
        assert!(value(&after, "kvnode_open_fds") >= 3.0);
        assert!(value(&after, "kvnode_uptime_seconds") > 0.0);
        assert_eq!(value(&after, "kvnode_ready"), 1.0);
    });

    checks.check("promtool check metrics passes", || {
        let (_, body) = http_get(mport, "/metrics").expect("scrape");
        promtool_check(&body);
    });

    checks.check("a real Prometheus server scrapes kvnode", || {
        prometheus_scrapes(&maddr);
    });

    checks.finish();
    drop(kv);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts `prometheus` with a 1 s scrape of `target` and polls its API until `up` is 1 for
/// the kvnode job.
fn prometheus_scrapes(target: &str) {
    let dir = std::env::temp_dir().join(unique("kvnode_prometheus"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: kvnode\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let web = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is required (Debian package prometheus; scripts/test installs it)");
    let _guard = ChildGuard {
        child,
        what: "prometheus".into(),
    };
    let query = "/api/v1/query?query=up%7Bjob%3D%22kvnode%22%7D";
    wait_for(
        "Prometheus to report up == 1 for kvnode",
        Duration::from_secs(90),
        || {
            let (status, body) = http_get(web, query).ok()?;
            (status == 200 && body.contains("\"job\":\"kvnode\"") && body.contains(",\"1\"]"))
                .then_some(())
        },
    );
    drop(_guard);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readyz_is_503_until_the_node_is_registered() {
    // An "EPMD" that accepts and never answers: kvnode cannot serve the port itself, so it
    // registers as a client and waits for the reply; meanwhile it is alive but not ready.
    let epmd = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let epmd_port = epmd.local_addr().expect("addr").port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let held2 = held.clone();
    std::thread::spawn(move || {
        for conn in epmd.incoming().flatten() {
            held2.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
    });
    let mport = free_port();
    let name = format!("{}@127.0.0.1", unique("notready"));
    let child = Command::new(kvnode_bin())
        .args(["--name", &name, "--cookie", "c"])
        .args(["--epmd-port", &epmd_port.to_string()])
        .args(["--metrics-addr", &format!("127.0.0.1:{mport}")])
        .env_remove("ERL_EPMD_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kvnode");
    let _guard = ChildGuard {
        child,
        what: name.clone(),
    };
    wait_for(
        "the kvnode EPMD client to connect",
        Duration::from_secs(20),
        || (!held.lock().unwrap_or_else(|e| e.into_inner()).is_empty()).then_some(()),
    );
    let (status, _) = wait_for("/healthz", Duration::from_secs(20), || {
        http_get(mport, "/healthz").ok()
    });
    assert_eq!(status, 200, "alive while registering");
    let (status, body) = http_get(mport, "/readyz").expect("readyz");
    assert_eq!(
        status, 503,
        "not ready while the EPMD has not answered: {body}"
    );
    let metrics = scrape(mport);
    assert_eq!(value(&metrics, "kvnode_ready"), 0.0);
}

#[test]
fn top_once_prints_the_summary() {
    let kv = KvNode::fresh("top");
    let epmd = kv.epmd_port.to_string();
    for key in ["a", "b", "c"] {
        let put = kvnode_client(&[
            "call",
            &kv.name,
            "Elixir.DistributedExample.KVStore",
            &format!("{{put, {key}, 1}}"),
            "--cookie",
            &kv.cookie,
            "--epmd-port",
            &epmd,
        ]);
        assert_eq!(put.stdout.trim(), "ok", "{put:?}");
    }
    let top = kvnode_client(&[
        "top",
        &kv.name,
        "--once",
        "--cookie",
        &kv.cookie,
        "--epmd-port",
        &epmd,
    ]);
    assert_eq!(top.status, Some(0), "{top:?}");
    let line = |name: &str| {
        top.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", top.stdout))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(top.stdout.contains(&kv.name), "{}", top.stdout);
    assert_eq!(line("keys"), "3");
    // The top client itself is connected while it asks.
    assert_eq!(line("connections"), "1");
    assert_eq!(line("subscriptions"), "0");
    assert!(line("rss_bytes").ends_with("MiB"), "{}", top.stdout);
    // The store's bytes (exact in /metrics and kvnode:info/0), shown in MiB here.
    assert_eq!(line("stored_bytes"), "0.0 MiB", "{}", top.stdout);
    // No terminal control codes with --once.
    assert!(!top.stdout.contains('\x1b'), "{:?}", top.stdout);

    // A wrong cookie: the handshake is refused, exit status 3 as for the other commands.
    let refused = kvnode_client(&[
        "top",
        &kv.name,
        "--once",
        "--cookie",
        "nope",
        "--epmd-port",
        &epmd,
    ]);
    assert_eq!(refused.status, Some(3), "{refused:?}");
}

#[test]
fn a_metrics_address_in_use_stops_kvnode_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let epmd = free_port().to_string();
    let name = format!("{}@127.0.0.1", unique("busy"));
    let err = kvnode_refuses(&[
        "--name",
        &name,
        "--cookie",
        "c",
        "--epmd-port",
        &epmd,
        "--metrics-addr",
        &addr,
    ]);
    assert!(
        err.contains(&format!("cannot listen on --metrics-addr {addr}")),
        "{err}"
    );
    let err = kvnode_refuses(&["--metrics-addr", "not-an-address"]);
    assert!(err.contains("--metrics-addr"), "{err}");
}

/// kvnode_kv_request_duration_seconds (frame read to reply written) counts every call and
/// cast exactly once, on the byte fast path (get, put, delete answered as bytes), on the
/// decoded path inside the fast dispatch (cas, size) and through the mailbox (while
/// `:sys.statistics` is on, every message is queued and decoded), and each call's time
/// covers the server's handling time.
#[test]
fn request_latency_counts_every_call_and_cast_on_both_paths() {
    let mport = free_port();
    let kv = KvNode::fresh_with("reqlat", &["--metrics-addr", &format!("127.0.0.1:{mport}")]);
    let before = scrape(mport);
    kv.script(
        "driver",
        r#"
for i <- 1..20, do: :ok = GenServer.call(store, {:put, i, i})
for i <- 1..10, do: ^i = GenServer.call(store, {:get, i})
for i <- 1..5, do: :ok = GenServer.call(store, {:delete, i})
:ok = GenServer.call(store, {:cas, 6, 6, 60})
for i <- 1..4, do: :ok = GenServer.cast(store, {:put, {:c, i}, i})
:ok = :sys.statistics(store, true)
for i <- 7..13, do: ^i = GenServer.call(store, {:get, i})
for i <- 1..3, do: :ok = GenServer.cast(store, {:put, {:d, i}, i})
:ok = :sys.statistics(store, false)
22 = GenServer.call(store, :size)
"#,
    );
    // 20 + 10 + 5 + 1 + 7 + 1 calls, 4 + 3 casts. A reply is observed as its write returns,
    // which the caller may see a moment before: poll, then require the exact count.
    let (calls, casts) = (44.0, 7.0);
    let after = wait_for(
        "every request to be observed",
        Duration::from_secs(30),
        || {
            let m = scrape(mport);
            let d = |k: &str| value(&m, k) - value(&before, k);
            (d(&request_seconds("call", "count")) >= calls
                && d(&request_seconds("cast", "count")) >= casts)
                .then_some(m)
        },
    );
    let delta = |key: &str| value(&after, key) - value(&before, key);
    assert_eq!(delta(&request_seconds("call", "count")), calls);
    assert_eq!(delta(&request_seconds("cast", "count")), casts);
    assert_eq!(delta("kvnode_kv_call_duration_seconds_count"), calls);
    let handling = delta("kvnode_kv_call_duration_seconds_sum");
    let end_to_end = delta(&request_seconds("call", "sum"));
    assert!(
        end_to_end >= handling - 1e-9,
        "frame read to reply written ({end_to_end} s) covers handling ({handling} s)"
    );
    // Buckets are cumulative up to +Inf, which equals the count.
    assert_eq!(
        delta("kvnode_kv_request_duration_seconds_bucket{lane=\"call\",le=\"+Inf\"}"),
        calls
    );
}

/// kvnode_kv_stored_bytes is exact (canonical key, key and value in external term format,
/// and 8 bytes of lengths per entry) after puts, overwrites and deletes, `kvnode:info/0` says
/// the same, and a restart on the same `--data-dir` recovers the same number.
#[test]
fn stored_bytes_are_exact_and_survive_a_restart() {
    let dir = std::env::temp_dir().join(unique("kvnode_stored_bytes"));
    let data_dir = dir.to_str().expect("utf-8 temp dir").to_owned();
    let alive = unique("stored");
    let cookie = unique("cookie");
    let start = || {
        let mport = free_port();
        let maddr = format!("127.0.0.1:{mport}");
        let kv = KvNode::start_with(
            &alive,
            &cookie,
            free_port(),
            &["--metrics-addr", &maddr, "--data-dir", &data_dir],
        );
        (kv, mport)
    };
    // A binary key of k bytes and a binary value of v bytes (both under 128): 8 bytes of
    // lengths, canonical key 3 + k, key ETF 6 + k, value ETF 6 + v.
    let entry = |k: usize, v: usize| (8 + (3 + k) + (6 + k) + (6 + v)) as f64;
    let stored = |mport: u16| value(&scrape(mport), "kvnode_kv_stored_bytes");

    let (kv, mport) = start();
    assert_eq!(stored(mport), 0.0);
    let out = kv.script(
        "sizes",
        r##"
:ok = GenServer.call(store, {:put, "k1", :binary.copy("a", 10)})
:ok = GenServer.call(store, {:put, "key2", :binary.copy("b", 100)})
IO.puts("PUTS #{:rpc.call(kv, :kvnode, :info, [])[:stored_bytes]}")
"##,
    );
    let two = entry(2, 10) + entry(4, 100);
    assert_eq!(stored(mport), two);
    assert!(out.contains(&format!("PUTS {two}")), "kvnode:info/0: {out}");

    kv.script(
        "overwrite_bigger",
        r#":ok = GenServer.call(store, {:put, "k1", :binary.copy("c", 50)})"#,
    );
    assert_eq!(stored(mport), entry(2, 50) + entry(4, 100));
    kv.script(
        "overwrite_smaller",
        r#":ok = GenServer.call(store, {:put, "key2", "x"})"#,
    );
    assert_eq!(stored(mport), entry(2, 50) + entry(4, 1));
    kv.script(
        "delete",
        r#"
:ok = GenServer.call(store, {:delete, "k1"})
:ok = GenServer.call(store, {:delete, "absent"})
:ok = GenServer.call(store, {:put, "k3", :binary.copy("d", 20)})
"#,
    );
    let before_restart = entry(4, 1) + entry(2, 20);
    assert_eq!(stored(mport), before_restart);

    drop(kv);
    let (kv, mport) = start();
    assert_eq!(
        stored(mport),
        before_restart,
        "the recovered store holds the same bytes"
    );
    let out = kv.script(
        "info",
        r##"IO.puts("INFO #{:rpc.call(kv, :kvnode, :info, [])[:stored_bytes]}")"##,
    );
    assert!(
        out.contains(&format!("INFO {before_restart}")),
        "kvnode:info/0 after the restart: {out}"
    );
    drop(kv);
    let _ = std::fs::remove_dir_all(&dir);
}
