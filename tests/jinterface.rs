//! kvnode against a real Jinterface node (OTP's Java client library), which does not set
//! DFLAG_DIST_MONITOR nor DFLAG_ALIAS: subscribing must not make kvnode send it MONITOR_P
//! (Jinterface drops the connection: "Remote is sending garbage"); the subscription lives
//! until the Java node goes down, as BEAM keeps a local-only monitor for such peers.
//!
//! Needs a JDK (`javac`, `java`) and Jinterface (Debian `erlang-jinterface`, its jar in
//! `/usr/share/java/OtpErlang.jar` or under `$(erl)/lib/jinterface-*/priv`); `scripts/test`
//! installs them. When they are missing the test fails, saying what to install.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A Jinterface client: `java JClient NAME COOKIE KVNODE EPMD_PORT`. Reads commands on stdin,
/// one per line, and prints one result line per command:
/// - `call subscribe KEY` / `call subscribers`: a `GenServer.call` to the KV server made by
///   hand (`{'$gen_call', {Pid, Ref}, Request}`, the reply `{Ref, Reply}`), prints
///   `REPLY <reply>`;
/// - `recv MS`: prints `GOT <message>` for the next message, or `NONE` after MS ms;
/// - `conns`: prints `CONNS <n>`, the number of connections this node holds (Jinterface
///   drops a connection that sends it what it cannot parse).
const JAVA_CLIENT: &str = r#"
import com.ericsson.otp.erlang.*;
import java.io.*;

public class JClient {
    public static void main(String[] args) throws Exception {
        OtpEpmd.useEpmdPort(Integer.parseInt(args[3]));
        OtpNode node = new OtpNode(args[0], args[1]);
        final String kv = args[2];
        final StringBuilder errors = new StringBuilder();
        node.registerStatusHandler(new OtpNodeStatus() {
            public void remoteStatus(String n, boolean up, Object info) {
                System.out.println("STATUS " + n + " " + (up ? "up" : "down") + " " + info);
                System.out.flush();
            }
            public void connAttempt(String n, boolean incoming, Object info) {
                System.out.println("ATTEMPT " + n + " " + info);
                System.out.flush();
            }
        });
        OtpMbox mbox = node.createMbox();
        System.out.println("READY " + mbox.self());
        System.out.flush();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        String line;
        while ((line = in.readLine()) != null) {
            String[] cmd = line.trim().split(" ");
            try {
                if (cmd[0].equals("call")) {
                    OtpErlangObject req;
                    if (cmd[1].equals("subscribe")) {
                        req = new OtpErlangTuple(new OtpErlangObject[] {
                            new OtpErlangAtom("subscribe"), new OtpErlangAtom(cmd[2]) });
                    } else {
                        req = new OtpErlangAtom(cmd[1]);
                    }
                    OtpErlangRef ref = node.createRef();
                    OtpErlangTuple from = new OtpErlangTuple(new OtpErlangObject[] { mbox.self(), ref });
                    mbox.send("Elixir.DistributedExample.KVStore", kv, new OtpErlangTuple(
                        new OtpErlangObject[] { new OtpErlangAtom("$gen_call"), from, req }));
                    OtpErlangObject reply = null;
                    long deadline = System.currentTimeMillis() + 10000;
                    while (reply == null && System.currentTimeMillis() < deadline) {
                        OtpErlangObject m = mbox.receive(deadline - System.currentTimeMillis());
                        if (m instanceof OtpErlangTuple && ((OtpErlangTuple) m).arity() == 2
                                && ((OtpErlangTuple) m).elementAt(0).equals(ref)) {
                            reply = ((OtpErlangTuple) m).elementAt(1);
                        } else if (m != null) {
                            System.out.println("STRAY " + m);
                        }
                    }
                    System.out.println(reply == null ? "TIMEOUT" : "REPLY " + reply);
                } else if (cmd[0].equals("recv")) {
                    OtpErlangObject m = mbox.receive(Long.parseLong(cmd[1]));
                    System.out.println(m == null ? "NONE" : "GOT " + m);
                } else if (cmd[0].equals("conns")) {
                    System.out.println("CONNS " + node.getNames().length + " " + node.ping(kv, 2000));
                }
            } catch (Exception e) {
                System.out.println("ERROR " + e);
            }
            System.out.flush();
        }
    }
}
"#;

/// Compiles the client into a fresh directory; returns it.
fn compile_client(jar: &Path) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("kvnode_jclient"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("JClient.java"), JAVA_CLIENT).expect("write JClient.java");
    let out = Command::new("javac")
        .arg("-cp")
        .arg(jar)
        .arg("-d")
        .arg(&dir)
        .arg(dir.join("JClient.java"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run javac ({e}): apt-get install -y default-jdk-headless erlang-jinterface"
            )
        });
    assert!(
        out.status.success(),
        "javac failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A running Java node fed commands on stdin; its output lines collect in `lines`.
struct JavaNode {
    _guard: ChildGuard,
    stdin: std::process::ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    seen: usize,
}

impl JavaNode {
    fn start(classes: &Path, jar: &Path, alive: &str, kv: &KvNode) -> JavaNode {
        let cp = format!("{}:{}", classes.display(), jar.display());
        let mut child = Command::new("java")
            .args(["-cp", &cp, "JClient"])
            .arg(format!("{alive}@127.0.0.1"))
            .arg(&kv.cookie)
            .arg(&kv.name)
            .arg(kv.epmd_port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run java ({e}): apt-get install -y default-jdk-headless")
            });
        let stdout = child.stdout.take().expect("stdout piped");
        let stdin = child.stdin.take().expect("stdin piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l2.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let mut node = JavaNode {
            _guard: ChildGuard {
                child,
                what: alive.to_owned(),
            },
            stdin,
            lines,
            seen: 0,
        };
        node.expect("READY", Duration::from_secs(60));
        node
    }

    /// Waits for the next output line that starts with one of `prefixes`; returns it.
    fn expect_any(&mut self, prefixes: &[&str], timeout: Duration) -> String {
        let lines = self.lines.clone();
        let mut seen = self.seen;
        let found = wait_for(&format!("java client line {prefixes:?}"), timeout, || {
            let l = lines.lock().unwrap_or_else(|e| e.into_inner());
            while seen < l.len() {
                let line = &l[seen];
                seen += 1;
                if prefixes.iter().any(|p| line.starts_with(p)) {
                    return Some(line.clone());
                }
            }
            None
        });
        self.seen = seen;
        found
    }

    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        self.expect_any(&[prefix], timeout)
    }

    /// Sends a command; returns its result line.
    fn command(&mut self, cmd: &str) -> String {
        use std::io::Write;
        writeln!(self.stdin, "{cmd}").expect("write to java client");
        self.stdin.flush().expect("flush");
        self.expect_any(
            &["REPLY", "TIMEOUT", "GOT", "NONE", "CONNS", "ERROR"],
            Duration::from_secs(30),
        )
    }

    fn output(&self) -> String {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }
}

#[test]
fn jinterface_subscriber_without_dist_monitor_keeps_its_connection() {
    let jar = common::jinterface_jar();
    let classes = compile_client(&jar);
    let kv = KvNode::fresh("kv_jinterface");
    let java_alive = unique("java");
    let mut java = JavaNode::start(&classes, &jar, &java_alive, &kv);

    // Subscribing (kvnode monitors the subscriber) must leave the connection up.
    let r = java.command("call subscribe watched");
    assert_eq!(
        r,
        "REPLY ok",
        "subscribe failed; java output:\n{}\nkvnode logs:\n{}",
        java.output(),
        kv.logs()
    );
    let r = java.command("call subscribers");
    assert_eq!(
        r,
        "REPLY 1",
        "java output:\n{}\nkvnode logs:\n{}",
        java.output(),
        kv.logs()
    );

    // Another (Elixir) client changes the key: the Java subscriber gets the event.
    kv.script(
        "putter",
        r#"
:ok = GenServer.call({DistributedExample.KVStore, kv}, {:put, :watched, 42})
"#,
    );
    let got = java.command("recv 10000");
    assert_eq!(
        got,
        "GOT {kv_event,watched,{put,42}}",
        "java output:\n{}\nkvnode logs:\n{}",
        java.output(),
        kv.logs()
    );
    // Still connected, and the connection was never dropped.
    let r = java.command("call subscribers");
    assert_eq!(
        r,
        "REPLY 1",
        "java output:\n{}\nkvnode logs:\n{}",
        java.output(),
        kv.logs()
    );
    let output = java.output();
    assert!(
        !output.contains(" down "),
        "the Java node lost its connection to kvnode:\n{output}\nkvnode logs:\n{}",
        kv.logs()
    );
    let logs = kv.logs();
    let java_node = format!("{java_alive}@127.0.0.1");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains(&java_node) && l.contains("disconnected")),
        "kvnode saw the Java node disconnect:\n{logs}"
    );

    // The Java node goes away: its subscription goes with it (the local-only monitor fires
    // at node-down), and kvnode holds no monitor for it any more.
    drop(java);
    kv.script(
        "after",
        r#"
TestWait.until(fn -> GenServer.call(store, :subscribers) == 0 end, 30_000)
TestWait.until(fn -> match?(%{monitors: 0, subscriptions: 0}, :rpc.call(kv, :kvnode, :info, [])) end, 30_000)
"#,
    );
    let _ = std::fs::remove_dir_all(classes);
}
