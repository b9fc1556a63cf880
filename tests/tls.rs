//! TLS distribution against real Elixir nodes on `-proto_dist inet_tls`: Elixir calling
//! kvnode, kvnode dialing Elixir, peers refused with `--tls-verify-peer` (a certificate from
//! another CA, no certificate, plain TCP), no client verification without it, startup errors.
//!
//! Every test makes its own CA and certificates with rcgen. With `KVNODE_OTP_ROOT` (the
//! interop matrix) the files live under the root's /tmp, so the chrooted nodes read them at
//! /tmp/... while kvnode reads them through the root's path.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// A CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    /// A leaf for a node on 127.0.0.1: OTP's hostname check wants `DNS:127.0.0.1`, rustls
    /// the IP entry.
    fn leaf(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![
            SanType::DnsName("127.0.0.1".try_into().expect("ia5")),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into().expect("ia5")),
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }
}

/// The test's certificates and `ssl_dist_optfile`s on disk (removed on Drop).
struct Pki {
    /// Where the files are for kvnode (and this process).
    host_dir: PathBuf,
    /// Where the same files are for the Elixir nodes (differs inside a chroot).
    beam_dir: PathBuf,
}

/// Optfiles written by [`Pki::new`].
const GOOD: &str = "good.conf";
const ROGUE: &str = "rogue.conf";
const NO_CLIENT_CERT: &str = "no-client-cert.conf";
const ROGUE_TRUSTING_BOTH: &str = "rogue-both.conf";

impl Pki {
    fn new() -> Pki {
        let name = unique("kvnode_tls");
        let (host_dir, beam_dir) = match std::env::var("KVNODE_OTP_ROOT") {
            Ok(root) if !root.is_empty() => (
                PathBuf::from(root).join("tmp").join(&name),
                PathBuf::from("/tmp").join(&name),
            ),
            _ => {
                let d = std::env::temp_dir().join(&name);
                (d.clone(), d)
            }
        };
        std::fs::create_dir_all(&host_dir).expect("mkdir pki");
        let pki = Pki { host_dir, beam_dir };
        let ca = Ca::new("kvnode test CA");
        let rogue_ca = Ca::new("rogue CA");
        pki.write("ca.pem", &ca.cert.pem());
        pki.write("rogue-ca.pem", &rogue_ca.cert.pem());
        for (who, signer) in [("kv", &ca), ("node", &ca), ("rogue", &rogue_ca)] {
            let (cert, key) = signer.leaf(who);
            pki.write(&format!("{who}.pem"), &cert);
            pki.write(&format!("{who}-key.pem"), &key);
        }
        pki.write(GOOD, &pki.optfile("node", "ca.pem", true));
        pki.write(ROGUE, &pki.optfile("rogue", "rogue-ca.pem", true));
        pki.write(NO_CLIENT_CERT, &pki.optfile("node", "ca.pem", false));
        pki.write("both-ca.pem", &(ca.cert.pem() + &rogue_ca.cert.pem()));
        pki.write(
            ROGUE_TRUSTING_BOTH,
            &pki.optfile("rogue", "both-ca.pem", true),
        );
        pki
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.host_dir.join(file), text).expect("write pki file");
    }

    fn host(&self, file: &str) -> String {
        self.host_dir.join(file).display().to_string()
    }

    fn beam(&self, file: &str) -> String {
        self.beam_dir.join(file).display().to_string()
    }

    /// An `ssl_dist_optfile` for a node holding `<who>.pem`, trusting `ca`; with
    /// `client_cert` false its client side presents no certificate.
    fn optfile(&self, who: &str, ca: &str, client_cert: bool) -> String {
        let (cert, key, ca) = (
            self.beam(&format!("{who}.pem")),
            self.beam(&format!("{who}-key.pem")),
            self.beam(ca),
        );
        let client_own = if client_cert {
            format!("{{certfile, \"{cert}\"}}, {{keyfile, \"{key}\"}}, ")
        } else {
            String::new()
        };
        format!(
            "[{{server, [{{certfile, \"{cert}\"}}, {{keyfile, \"{key}\"}}, \
             {{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}, \
             {{fail_if_no_peer_cert, true}}, {{secure_renegotiate, true}}]}},\n \
             {{client, [{client_own}{{cacertfile, \"{ca}\"}}, {{verify, verify_peer}}, \
             {{secure_renegotiate, true}}]}}].\n"
        )
    }

    /// `erl` flags that put an Elixir node on TLS distribution with `optfile`.
    fn erl(&self, optfile: &str) -> String {
        format!(
            "-proto_dist inet_tls -ssl_dist_optfile {}",
            self.beam(optfile)
        )
    }

    /// kvnode's TLS flags.
    fn kv_flags(&self, verify_peer: bool) -> Vec<String> {
        let mut f = vec![
            "--tls-cert".into(),
            self.host("kv.pem"),
            "--tls-key".into(),
            self.host("kv-key.pem"),
            "--tls-cacert".into(),
            self.host("ca.pem"),
        ];
        if verify_peer {
            f.push("--tls-verify-peer".into());
        }
        f
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host_dir);
    }
}

/// A kvnode on TLS (see [`KvNode::fresh`]), asking peers for certificates with `verify_peer`.
fn start_tls_kvnode(pki: &Pki, tag: &str, verify_peer: bool) -> KvNode {
    let flags = pki.kv_flags(verify_peer);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    KvNode::fresh_with(tag, &flags)
}

/// Put, get and ping from an Elixir node on TLS; prints SCRIPT-OK.
const CALL_SCRIPT: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {DistributedExample.KVStore, kv}
true = Node.connect(kv)
:ok = GenServer.call(store, {:put, :tls_key, "over tls"})
"over tls" = GenServer.call(store, {:get, :tls_key})
:pong = Node.ping(kv)
true = kv in Node.list(:hidden)
IO.puts("SCRIPT-OK")
"#;

/// Connect and ping must both fail; prints REFUSED-OK.
const REFUSED_SCRIPT: &str = r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
false = Node.connect(kv)
:pang = Node.ping(kv)
IO.puts("REFUSED-OK")
"#;

#[test]
fn elixir_calls_kvnode_over_tls_with_verify_peer() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls", true);
    assert!(kv.logs().contains("verify-peer"), "{}", kv.logs());
    // Besides the basics: an 8 MiB value both ways and many concurrent calls, through the
    // TLS pump with back-pressure.
    let script = format!(
        r#"{CALL_SCRIPT}
big = :binary.copy("0123456789abcdef", 512 * 1024)
:ok = GenServer.call(store, {{:put, :big, big}}, 30_000)
^big = GenServer.call(store, {{:get, :big}}, 30_000)
1..200
|> Enum.map(fn i -> Task.async(fn -> :ok = GenServer.call(store, {{:put, i, i}}) end) end)
|> Enum.each(&Task.await(&1, 30_000))
202 = GenServer.call(store, :size)
IO.puts("BIG-OK")
"#
    );
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("tls_caller"),
        &kv.cookie,
        &pki.erl(GOOD),
        &script,
    );
    assert!(out.contains("BIG-OK"), "{out}");
    assert!(out.contains("SCRIPT-OK"), "{out}");
    kv.wait_log("connected", Duration::from_secs(10));
}

#[test]
fn verify_peer_refuses_foreign_ca_missing_certificate_and_plain_tcp_and_keeps_serving() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls_refuse", true);
    let refusals = |kv: &KvNode| {
        kv.logs()
            .lines()
            .filter(|l| l.contains("TLS handshake failed"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    // Each refused node must cost one log line with the reason.
    let refused = |optfile: Option<&str>, prefix: &str| -> String {
        let before = refusals(&kv).len();
        let erl = optfile.map(|f| pki.erl(f)).unwrap_or_default();
        let out = elixir_raw_with_erl_args(&kv, &unique(prefix), &kv.cookie, &erl, REFUSED_SCRIPT);
        assert!(out.contains("REFUSED-OK"), "{out}");
        wait_for("a refusal log line", Duration::from_secs(10), || {
            refusals(&kv).get(before).cloned()
        })
    };
    // A certificate from another CA (the rogue node trusts kvnode's CA, so the refusal is
    // kvnode's doing). OTP 25 presents it anyway (UnknownIssuer); OTP 29 sees that it does
    // not match the CA names kvnode asks for and presents none.
    let line = refused(Some(ROGUE_TRUSTING_BOTH), "rogue");
    assert!(
        line.contains("UnknownIssuer") || line.contains("peer sent no certificates"),
        "{line}"
    );
    // TLS without a client certificate.
    let line = refused(Some(NO_CLIENT_CERT), "nocert");
    assert!(line.contains("peer sent no certificates"), "{line}");
    // Plain TCP distribution: said in so many words, not as a TLS parse error.
    let line = refused(None, "plain");
    assert!(line.contains("peer is not using TLS"), "{line}");
    assert!(!line.contains("corrupt message"), "{line}");
    assert!(
        !kv.logs().contains("connected flags"),
        "a refused peer got connected:\n{}",
        kv.logs()
    );
    // Still serving a good node.
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("good_after"),
        &kv.cookie,
        &pki.erl(GOOD),
        CALL_SCRIPT,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    // Node.connect and Node.ping each dial: two lines per refused node.
    assert_eq!(refusals(&kv).len(), 6, "{}", kv.logs());
    assert!(!kv.logs().contains("PRIVATE KEY"), "{}", kv.logs());
}

/// The level of a log line (`... WARN target: ...`).
fn level(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("")
}

#[test]
fn a_plain_tcp_peer_is_logged_as_not_using_tls_like_a_wrong_cookie() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls_plain", false);
    let find = |needle: &str| {
        wait_for(needle, Duration::from_secs(10), || {
            kv.logs()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        })
    };
    // A node on plain TCP distribution with the right cookie.
    let plain = unique("plain");
    let out = elixir_raw_with_erl_args(&kv, &plain, &kv.cookie, "", REFUSED_SCRIPT);
    assert!(out.contains("REFUSED-OK"), "{out}");
    let not_tls = find("peer is not using TLS");
    assert!(
        not_tls.contains("plain-TCP distribution handshake"),
        "{not_tls}"
    );
    // A node on TLS with the wrong cookie: the line names it.
    let wrong = unique("wrong_cookie");
    let out = elixir_raw_with_erl_args(
        &kv,
        &wrong,
        "not-the-cookie",
        &pki.erl(NO_CLIENT_CERT),
        REFUSED_SCRIPT,
    );
    assert!(out.contains("REFUSED-OK"), "{out}");
    let bad_cookie = find("different cookie");
    assert!(
        bad_cookie.contains(&format!("node={wrong}@127.0.0.1")),
        "{bad_cookie}"
    );
    assert_eq!(level(&not_tls), "WARN", "{not_tls}");
    assert_eq!(
        level(&not_tls),
        level(&bad_cookie),
        "{not_tls}\n{bad_cookie}"
    );
    // Still serving.
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("after_plain"),
        &kv.cookie,
        &pki.erl(NO_CLIENT_CERT),
        CALL_SCRIPT,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

#[test]
fn without_verify_peer_a_client_without_certificate_is_served() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls_noverify", false);
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("nocert_ok"),
        &kv.cookie,
        &pki.erl(NO_CLIENT_CERT),
        CALL_SCRIPT,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

/// Makes kvnode send a reply and an event to the relay on `b`, a node kvnode is not connected
/// to, so kvnode must dial it. `expect_delivery` false: the dial must fail instead.
fn dial_script(b: &str, expect_delivery: bool) -> String {
    let tail = if expect_delivery {
        r#"
receive do {:far_got, {^tag, :ok}} -> :ok after 10_000 -> raise "no reply at the far node" end
true = b in :rpc.call(kv, :erlang, :nodes, [:connected])
:ok = GenServer.call(store, {:put, :far_key, 42})
receive do {:far_got, {:kv_event, :far_key, {:put, 42}}} -> :ok after 10_000 -> raise "no event" end
"#
    } else {
        r#"
# kvnode's dial fails: the subscription's monitor fires noconnection and it is dropped.
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end)
false = b in :rpc.call(kv, :erlang, :nodes, [:connected])
receive do {:far_got, m} -> raise "delivered over a refused dial: #{inspect(m)}" after 200 -> :ok end
"#
    };
    format!(
        r#"
kv = String.to_atom(System.fetch_env!("KV_NODE"))
store = {{DistributedExample.KVStore, kv}}
b = :"{b}@127.0.0.1"
TestWait.until(fn -> Node.connect(b) end, 30_000)
true = Node.connect(kv)
false = b in :rpc.call(kv, :erlang, :nodes, [:connected])
far = TestWait.until(fn -> :rpc.call(b, Process, :whereis, [:relay]) end)
true = is_pid(far)
send(far, {{:report_to, self()}})
tag = make_ref()
send(store, {{:"$gen_call", {{far, tag}}, {{:subscribe, :all}}}})
{tail}
IO.puts("SCRIPT-OK")
"#
    )
}

#[test]
fn kvnode_dials_a_tls_elixir_node_with_verify_peer() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls_out", true);
    let b = unique("tls_far");
    // b's server side requires a client certificate from the CA (fail_if_no_peer_cert).
    let _b = BeamNode::start_with_erl(&b, &kv.cookie, kv.epmd_port, &pki.erl(GOOD), RELAY);
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("tls_driver"),
        &kv.cookie,
        &pki.erl(GOOD),
        &dial_script(&b, true),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    assert!(
        kv.logs()
            .lines()
            .any(|l| l.contains("dir=\"out\"") && l.contains("connected flags")),
        "{}",
        kv.logs()
    );
}

#[test]
fn kvnode_refuses_to_dial_a_node_whose_certificate_is_from_another_ca() {
    let pki = Pki::new();
    let kv = start_tls_kvnode(&pki, "kv_tls_out_rogue", false);
    let b = unique("rogue_far");
    let _b = BeamNode::start_with_erl(&b, &kv.cookie, kv.epmd_port, &pki.erl(ROGUE), RELAY);
    // The driver reaches both: it trusts both CAs and holds a rogue certificate, which the
    // rogue node requires and kvnode (without --tls-verify-peer) does not ask for.
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("rogue_driver"),
        &kv.cookie,
        &pki.erl(ROGUE_TRUSTING_BOTH),
        &dial_script(&b, false),
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    kv.wait_log("UnknownIssuer", Duration::from_secs(10));
}

#[test]
fn tls_startup_errors_are_clear() {
    let pki = Pki::new();
    let run = |args: &[&str]| {
        let name = format!("{}@127.0.0.1", unique("kv_bad"));
        let epmd = free_port().to_string();
        let mut all = vec!["--name", &name, "--cookie", "c", "--epmd-port", &epmd];
        all.extend_from_slice(args);
        kvnode_refuses(&all)
    };
    let (cert, key, ca) = (
        pki.host("kv.pem"),
        pki.host("kv-key.pem"),
        pki.host("ca.pem"),
    );
    let mut checks = Scenarios::new();
    checks.check("a missing key file", || {
        let missing = pki.host("missing-key.pem");
        let err = run(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &missing,
            "--tls-cacert",
            &ca,
        ]);
        assert!(
            err.contains("--tls-key") && err.contains(&missing) && err.contains("No such file"),
            "{err}"
        );
    });
    checks.check("a certificate where the key should be", || {
        let err = run(&["--tls-cert", &cert, "--tls-key", &cert, "--tls-cacert", &ca]);
        assert!(
            err.contains("--tls-key") && err.contains("no PEM private key"),
            "{err}"
        );
    });
    checks.check("a key where the CA should be", || {
        let err = run(&["--tls-cert", &cert, "--tls-key", &key, "--tls-cacert", &key]);
        assert!(
            err.contains("--tls-cacert") && err.contains("no PEM certificate"),
            "{err}"
        );
    });
    checks.check("a key that does not belong to the certificate", || {
        let other = pki.host("node-key.pem");
        let err = run(&[
            "--tls-cert",
            &cert,
            "--tls-key",
            &other,
            "--tls-cacert",
            &ca,
        ]);
        assert!(
            err.contains(&format!(
                "--tls-key {other} is not the private key of --tls-cert {cert}"
            )),
            "{err}"
        );
    });
    checks.check("the three go together", || {
        let err = run(&["--tls-cert", &cert]);
        assert!(err.contains("--tls-key"), "{err}");
        let err = run(&["--tls-verify-peer"]);
        assert!(err.contains("--tls-cacert"), "{err}");
    });
    checks.finish();
}

#[test]
fn a_peer_that_never_starts_tls_is_dropped_after_the_handshake_timeout() {
    let pki = Pki::new();
    let mut flags = pki.kv_flags(true);
    // Short enough to see the silent peer go; long enough for the real TLS node's own
    // handshake on a loaded 2-core machine with a debug build (1 s was not: it was timed out).
    flags.extend(["--handshake-timeout".into(), "4".into()]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let kv = KvNode::fresh_with("kv_tls_silent", &flags);
    let silent =
        std::net::TcpStream::connect(("127.0.0.1", kv.dist_port())).expect("connect to kvnode");
    kv.wait_log("TLS handshake timed out", Duration::from_secs(10));
    drop(silent);
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("after_silent"),
        &kv.cookie,
        &pki.erl(GOOD),
        CALL_SCRIPT,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
}

#[test]
fn a_thousand_half_open_tls_connections_cost_one_fd_each_and_time_out() {
    let pki = Pki::new();
    let mut flags = pki.kv_flags(true);
    // Room for the whole flood among the handshaking connections (tests/lockout.rs covers
    // eviction).
    flags.extend([
        "--max-handshakes".into(),
        "1100".into(),
        "--max-handshakes-per-ip".into(),
        "1100".into(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let kv = KvNode::fresh_with("kv_tls_flood", &flags);
    let pid = kv.guard.pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let rss = || {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
            / 1024
    };
    let (fds_before, rss_before) = (fds(), rss());
    let started = std::time::Instant::now();
    let flood: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", kv.dist_port())).expect("connect"))
        .collect();
    // Every one accepted, each holding one descriptor (the TLS bridge comes only once TLS is
    // up), not three.
    let fds_during = wait_for(
        "kvnode to accept the flood",
        Duration::from_secs(10),
        || {
            let n = fds();
            (n >= fds_before + 1000).then_some(n)
        },
    );
    assert!(
        fds_during < fds_before + 1000 + 50,
        "{fds_during} fds for 1,000 half-open connections (from {fds_before})"
    );
    let rss_during = rss();
    // A real TLS node is served meanwhile, well within the default 10 s handshake timeout.
    let out = elixir_raw_with_erl_args(
        &kv,
        &unique("tls_flooded"),
        &kv.cookie,
        &pki.erl(GOOD),
        CALL_SCRIPT,
    );
    assert!(out.contains("SCRIPT-OK"), "{out}");
    let served = started.elapsed();
    assert!(served < Duration::from_secs(10), "served after {served:?}");
    wait_for(
        "the handshake timeout to close the flood",
        Duration::from_secs(40),
        || (fds() <= fds_before + 5).then_some(()),
    );
    println!(
        "1,000 half-open TLS connections: kvnode fds {fds_before} -> {fds_during}, RSS \
         {rss_before} -> {rss_during} MiB (-> {} MiB after); a TLS peer served {served:?} into \
         the flood; all closed {:?} after it began",
        rss(),
        started.elapsed()
    );
    drop(flood);
}
