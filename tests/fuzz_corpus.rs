//! Replays the committed fuzz inputs through the parsers the fuzz targets drive, as a normal
//! test (no sanitizer, no libFuzzer): the real-traffic seeds under `fuzz/corpus/<target>/`
//! must keep parsing (they are valid traffic) and nothing under `fuzz/corpus/` or
//! `fuzz/regressions/<target>/` (inputs that once crashed a target) may panic. See
//! `fuzz/README.md`.

use std::path::Path;
use std::time::Duration;

use erl_dist::handshake::HandshakeStatus;
use erl_dist::node::NodeName;
use kvnode::internals::epmd::server::parse_request;
use kvnode::internals::etf::{self, Limits};
use kvnode::internals::transport::connection::decode_frame;
use kvnode::internals::transport::handshake;
use tokio::io::AsyncWriteExt;

/// Every file of `fuzz/<dir>/<target>/` (none if the directory does not exist).
fn inputs(dir: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(dir)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&path) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn epmd_request_seeds_parse_and_regressions_do_not_panic() {
    let seeds = inputs("corpus", "epmd_request");
    assert!(!seeds.is_empty(), "the seed corpus is missing");
    for (name, bytes) in &seeds {
        let body = parse_request(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(body.map(|b| b.len() + 2), Some(bytes.len()), "{name}");
    }
    for (_, bytes) in inputs("regressions", "epmd_request") {
        let _ = parse_request(&bytes);
    }
}

#[test]
fn frame_seeds_decode_and_regressions_do_not_panic() {
    let seeds = inputs("corpus", "frame");
    assert!(!seeds.is_empty(), "the seed corpus is missing");
    for (name, bytes) in &seeds {
        decode_frame(bytes, &Limits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (_, bytes) in inputs("regressions", "frame") {
        let _ = decode_frame(&bytes, &Limits::default());
        let _ = etf::decode(&bytes, &Limits::default());
        let _ = etf::decode(bytes.get(1..).unwrap_or_default(), &Limits::default());
    }
}

/// As the `handshake` target: mode byte (bit 0: accept or connect; bits 1-2: the acceptor's
/// answer), then the peer's bytes, then EOF.
async fn run_handshake(input: &[u8]) {
    let Some((&mode, peer_bytes)) = input.split_first() else {
        return;
    };
    let (ours, mut theirs) = tokio::io::duplex(peer_bytes.len() + 64 * 1024);
    theirs.write_all(peer_bytes).await.unwrap();
    theirs.shutdown().await.unwrap();
    let name: NodeName = "kv@127.0.0.1".parse().unwrap();
    let timeout = Duration::from_secs(5);
    let result = if mode & 1 == 0 {
        let status = match (mode >> 1) & 3 {
            0 => HandshakeStatus::Ok,
            1 => HandshakeStatus::OkSimultaneous,
            2 => HandshakeStatus::Nok,
            _ => HandshakeStatus::Alive,
        };
        handshake::accept(ours, &name, 7, "secret", timeout, |_| status)
            .await
            .map(drop)
    } else {
        handshake::connect(ours, &name, 7, "secret", timeout)
            .await
            .map(drop)
    };
    // Recorded handshakes answer another run's random challenge: they must fail cleanly
    // (digest mismatch or EOF), never hang until the timeout.
    assert!(
        !matches!(result, Err(handshake::Error::Timeout(_)) | Ok(())),
        "{result:?}"
    );
}

#[tokio::test]
async fn handshake_seeds_and_regressions_fail_cleanly() {
    let seeds = inputs("corpus", "handshake");
    assert!(!seeds.is_empty(), "the seed corpus is missing");
    for (_, bytes) in seeds.iter().chain(&inputs("regressions", "handshake")) {
        run_handshake(bytes).await;
    }
}
