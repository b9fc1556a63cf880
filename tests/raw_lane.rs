//! The KV raw lane (terms eetf cannot hold, an OTP 29 native record here) against a raw peer.
//!
//! Terms stored through the raw lane must come back as the bytes they came as after
//! `GenServer.stop` too: the fresh KV process takes over
//! the store, and with it the knowledge that it may hold such terms (`has_raw`). Without it,
//! with `--data-dir` a `get` of a record value answered `{:error, :unrepresentable}` as if
//! that were the value, and `:keys` listed that term in place of a record key.
//!
//! The peer is a raw distribution connection (a real handshake with kvnode over TCP) so the
//! test runs on every OTP row, OTP 25 included, which cannot build native records itself;
//! the bytes it sends are what OTP 29's `term_to_binary` writes for `#geo:pt{x = 1}`.

mod common;

use common::*;
use erl_dist::term::{Atom, FixInteger, Pid, Reference, Term, Tuple};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// `#geo:pt{x = 1}`, exported, as OTP 29 writes it (no version byte).
const RECORD: &[u8] = &[
    67, 0, 0, 0, 1, 1, 119, 3, b'g', b'e', b'o', 119, 2, b'p', b't', 119, 1, b'x', 97, 1,
];

/// Completes a real handshake with kvnode as a fake node and returns the socket and the
/// fake node's name.
fn handshaken(port: u16, cookie: &str) -> (TcpStream, String) {
    raw_handshake(port, cookie, "rawpeer")
}

fn encoded(t: &Term) -> Vec<u8> {
    let mut v = Vec::new();
    kvnode::etf::encode::encode(t, &mut v).expect("encode");
    v
}

fn atom_bytes(name: &str) -> Vec<u8> {
    encoded(&Atom::from(name).into())[1..].to_vec()
}

/// A raw peer calling the KV server with requests written as bytes.
struct Peer {
    s: TcpStream,
    from: Pid,
    next: u32,
}

impl Peer {
    /// `GenServer.call(KVStore, request)` with `request` given as external-format bytes (no
    /// version byte); returns the reply frame's body.
    fn call(&mut self, request: &[u8]) -> Vec<u8> {
        let mut replies = self.pipelined(&[request]);
        replies.remove(0).1
    }

    /// Sends every request before reading any reply; returns the replies in the order they
    /// came, each with the index of its request.
    fn pipelined(&mut self, requests: &[&[u8]]) -> Vec<(usize, Vec<u8>)> {
        let mut tags = Vec::new();
        let mut frames = Vec::new();
        for request in requests {
            let (tag, frame) = self.call_frame(request);
            tags.push(tag);
            frames.extend(frame);
        }
        self.s.write_all(&frames).expect("write");
        // The replies are the frames carrying our tags (ticks and anything else skipped).
        self.s.set_read_timeout(Some(LONG)).expect("timeout");
        let mut replies = Vec::new();
        while replies.len() < requests.len() {
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len).expect("a frame length");
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            self.s.read_exact(&mut body).expect("a frame body");
            if let Some(i) = tags.iter().position(|t| contains(&body, t)) {
                replies.push((i, body));
            }
        }
        replies
    }

    /// A `$gen_call` frame for `request` and its tag's bytes.
    fn call_frame(&mut self, request: &[u8]) -> (Vec<u8>, Vec<u8>) {
        self.next += 1;
        let tag: Term = Reference {
            node: Atom::from(self.from.node.name.as_str()),
            id: vec![self.next, 77, 99],
            creation: 7,
        }
        .into();
        let control = Tuple::from(vec![
            FixInteger::from(6).into(),
            self.from.clone().into(),
            Atom::from("").into(),
            Atom::from("Elixir.DistributedExample.KVStore").into(),
        ]);
        let mut body = vec![112];
        body.extend(encoded(&control.into()));
        body.extend_from_slice(&[131, 104, 3]);
        body.extend(atom_bytes("$gen_call"));
        let from_tag = Tuple::from(vec![self.from.clone().into(), tag.clone()]);
        body.extend_from_slice(&encoded(&from_tag.into())[1..]);
        body.extend_from_slice(request);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend(body);
        (encoded(&tag)[1..].to_vec(), frame)
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `{op, args...}` as bytes.
fn request(op: &str, args: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![104, 1 + args.len() as u8];
    v.extend(atom_bytes(op));
    for a in args {
        v.extend_from_slice(a);
    }
    v
}

#[test]
fn raw_values_and_keys_survive_genserver_stop() {
    let dir = std::env::temp_dir().join(unique("kvnode_rawstop"));
    let _ = std::fs::remove_dir_all(&dir);
    struct DirGuard(std::path::PathBuf);
    impl Drop for DirGuard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = DirGuard(dir.clone());
    let dir_arg = dir.to_str().expect("utf-8 path").to_owned();
    let kv = KvNode::fresh_with("kv_rawstop", &["--data-dir", &dir_arg]);
    let (s, name) = handshaken(kv.dist_port(), &kv.cookie);
    let mut peer = Peer {
        s,
        from: Pid::new(name.as_str(), 1, 0, 7),
        next: 0,
    };
    let ok = atom_bytes("ok");
    let unrepresentable = atom_bytes("unrepresentable");
    let value_key = atom_bytes("rec_value");
    let one = [97u8, 1];

    // A record as a value and as a key, through the raw lane.
    let reply = peer.call(&request("put", &[&value_key, RECORD]));
    assert!(contains(&reply, &ok), "put of a record value: {reply:?}");
    let reply = peer.call(&request("put", &[RECORD, &one]));
    assert!(contains(&reply, &ok), "put of a record key: {reply:?}");
    let reply = peer.call(&request("get", &[&value_key]));
    assert!(contains(&reply, RECORD), "get before the stop: {reply:?}");

    // A fresh process takes the name and the store.
    kv.script(
        "rawstop",
        r#"
old = :rpc.call(kv, :erlang, :whereis, [DistributedExample.KVStore])
:ok = GenServer.stop(store, :normal)
new = :rpc.call(kv, :erlang, :whereis, [DistributedExample.KVStore])
true = is_pid(new) and new != old
"#,
    );

    let mut checks = Scenarios::new();
    checks.check("get of a record value after the stop", || {
        let reply = peer.call(&request("get", &[&value_key]));
        assert!(
            contains(&reply, RECORD) && !contains(&reply, &unrepresentable),
            "the record's bytes, not another term: {reply:?}"
        );
    });
    checks.check("get by a record key after the stop", || {
        let reply = peer.call(&request("get", &[RECORD]));
        assert!(contains(&reply, &one), "{reply:?}");
    });
    checks.check(":keys after the stop", || {
        let reply = peer.call(&atom_bytes("keys"));
        assert!(
            contains(&reply, RECORD) && contains(&reply, &value_key),
            "both keys as stored: {reply:?}"
        );
        assert!(!contains(&reply, &unrepresentable), "{reply:?}");
    });
    checks.check("cas mismatch after the stop shows the record", || {
        let reply = peer.call(&request("cas", &[&value_key, &ok, &one]));
        assert!(contains(&reply, RECORD), "{reply:?}");
        assert!(!contains(&reply, &unrepresentable), "{reply:?}");
    });
    checks.finish();
}

/// A `get` that reaches a busy KV server (the queued path: the server's lock was taken,
/// signals were queued before it, it is suspended, or `:sys.statistics` is on) arrives
/// decoded, takes the decoding lane, and a stored native record comes back as
/// `{:error, :unrepresentable}`, as if that were the value; a `:keys` there is answered as
/// bytes that the queued path decodes with plain eetf, so it is not answered at all.
/// `:sys.statistics` forces that path deterministically.
///
/// The queued path keeps a call's bytes and writes an encoded reply as bytes.
#[test]
fn raw_values_on_the_queued_path() {
    let kv = KvNode::fresh("kv_rawq");
    let (s, name) = handshaken(kv.dist_port(), &kv.cookie);
    let mut peer = Peer {
        s,
        from: Pid::new(name.as_str(), 1, 0, 7),
        next: 0,
    };
    let value_key = atom_bytes("rec_value");
    let reply = peer.call(&request("put", &[&value_key, RECORD]));
    assert!(contains(&reply, &atom_bytes("ok")), "{reply:?}");
    kv.script("rawq", ":ok = :sys.statistics(store, true)");
    let reply = peer.call(&request("get", &[&value_key]));
    assert!(
        contains(&reply, RECORD) && !contains(&reply, &atom_bytes("unrepresentable")),
        "the record's bytes on the queued path too: {reply:?}"
    );
}

/// `[[[ ... [n small integers, record] ... ]]]`, `depth` lists deep (no version byte).
fn nested_lists(depth: usize, n: usize) -> Vec<u8> {
    let mut t = vec![108];
    t.extend_from_slice(&((n + 1) as u32).to_be_bytes());
    for _ in 0..n {
        t.extend_from_slice(&[97, 1]);
    }
    t.extend_from_slice(RECORD);
    t.push(106);
    for _ in 0..depth {
        let mut o = vec![108, 0, 0, 0, 1];
        o.extend_from_slice(&t);
        o.push(106);
        t = o;
    }
    t
}

/// A key holding a native record, nested 1,990 lists deep around a 200,000-element list
/// (400 KB): reading its canonical form from the bytes cost depth times size (each level
/// validated its whole subtree again; about a minute of KV server time in a debug build,
/// every other client waiting). Now refused at once, and the node serves on. A key nested
/// deeper than `MAX_FULL_DEPTH` around a record is refused with a reply too.
#[test]
fn a_deep_key_around_a_big_list_is_refused_quickly() {
    let kv = KvNode::fresh("kv_rawcost");
    let (s, name) = handshaken(kv.dist_port(), &kv.cookie);
    let mut peer = Peer {
        s,
        from: Pid::new(name.as_str(), 1, 0, 7),
        next: 0,
    };
    // Deeper than MAX_FULL_DEPTH around a record: refused with a reply (in memory, the
    // byte lane left such a call unanswered).
    let reply = peer.call(&request("put", &[&nested_lists(2_010, 1), &[97, 1]]));
    assert!(
        contains(&reply, &atom_bytes("unrepresentable")),
        "refused: {:?}",
        &reply[reply.len().saturating_sub(40)..]
    );
    let key = nested_lists(1_990, 200_000);
    let started = std::time::Instant::now();
    // The peer's read times out after LONG (30 s): the old walk took longer.
    let reply = peer.call(&request("put", &[&key, &[97, 1]]));
    eprintln!("answered in {:?}", started.elapsed());
    assert!(
        contains(&reply, &atom_bytes("unrepresentable")),
        "refused: {:?}",
        &reply[reply.len().saturating_sub(40)..]
    );
    kv.script(
        "rawcost",
        r#"
:ok = GenServer.call(store, {:put, :alive, true})
true = GenServer.call(store, {:get, :alive})
"#,
    );
}

/// With subscribers, a request that changes nothing is answered as without them: a `cas`
/// mismatch against a stored native record shows the record (it showed
/// `{:error, :unrepresentable}` as the current value), a `put_new` of one on a present key
/// is `{:error, :exists}` (it was refused as a change). A real change is still refused.
#[test]
fn requests_that_change_nothing_are_answered_with_subscribers() {
    let kv = KvNode::fresh("kv_rawsub");
    let (s, name) = handshaken(kv.dist_port(), &kv.cookie);
    let mut peer = Peer {
        s,
        from: Pid::new(name.as_str(), 1, 0, 7),
        next: 0,
    };
    let (ok, unrepresentable) = (atom_bytes("ok"), atom_bytes("unrepresentable"));
    let value_key = atom_bytes("rec_value");
    let reply = peer.call(&request("put", &[&value_key, RECORD]));
    assert!(contains(&reply, &ok), "{reply:?}");
    let reply = peer.call(&request("subscribe", &[&atom_bytes("all")]));
    assert!(contains(&reply, &ok), "subscribed: {reply:?}");
    let mut checks = Scenarios::new();
    checks.check("cas mismatch shows the record", || {
        let reply = peer.call(&request(
            "cas",
            &[&value_key, &atom_bytes("nope"), &[97, 1]],
        ));
        assert!(contains(&reply, &atom_bytes("mismatch")), "{reply:?}");
        assert!(contains(&reply, RECORD), "{reply:?}");
        assert!(!contains(&reply, &unrepresentable), "{reply:?}");
    });
    checks.check("put_new on a present key", || {
        let reply = peer.call(&request("put_new", &[&value_key, RECORD]));
        assert!(contains(&reply, &atom_bytes("exists")), "{reply:?}");
    });
    checks.check("a change is still refused", || {
        let reply = peer.call(&request("put", &[&atom_bytes("other"), RECORD]));
        assert!(contains(&reply, &unrepresentable), "{reply:?}");
        let reply = peer.call(&request("cas", &[&value_key, RECORD, &[97, 1]]));
        assert!(contains(&reply, &unrepresentable), "{reply:?}");
    });
    checks.finish();
}

/// With `--data-dir`, a reply eetf cannot hold (a stored record, sent as its bytes) goes out
/// only once the writes before it are durable, as every other reply: a `put` of a record
/// and a `get` of it sent back to back are answered put first (the `get` reply once showed
/// the record before the `put` was on disk, the `put` still unacknowledged).
#[test]
fn raw_replies_wait_for_earlier_writes_to_be_durable() {
    let dir = TempDataDir::new("kvnode_rawdur");
    let kv = KvNode::fresh_with("kv_rawdur", &["--data-dir", &dir.arg()]);
    let (s, name) = handshaken(kv.dist_port(), &kv.cookie);
    let mut peer = Peer {
        s,
        from: Pid::new(name.as_str(), 1, 0, 7),
        next: 0,
    };
    for round in 0..20 {
        let key = atom_bytes(&format!("rec_{round}"));
        let put = request("put", &[&key, RECORD]);
        let get = request("get", &[&key]);
        let replies = peer.pipelined(&[&put, &get]);
        let order: Vec<usize> = replies.iter().map(|(i, _)| *i).collect();
        assert_eq!(
            order,
            [0, 1],
            "round {round}: the get's reply came before the put was acknowledged"
        );
        assert!(contains(&replies[0].1, &atom_bytes("ok")), "{replies:?}");
        assert!(contains(&replies[1].1, RECORD), "{replies:?}");
    }
}
