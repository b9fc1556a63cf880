//! Both sides of the distribution handshake, fed arbitrary peer bytes over an in-memory stream.
//!
//! Input: one mode byte, then the peer's bytes. Mode bit 0 picks the side: 0 runs
//! `transport::handshake::accept` (the peer is an initiator: send_name, challenge_reply), 1 runs
//! `transport::handshake::connect` (the peer is an acceptor: status, challenge, challenge_ack).
//! Bits 1-2 pick what the acceptor's `decide` answers (ok, ok_simultaneous, nok, alive).
//!
//! The peer's bytes are written up front and the peer's write side is then closed, so the
//! handshake sees them in order and then EOF. The runtime's clock is paused: a handshake
//! that waits for anything else times out at once instead of stalling the fuzzer.
//!
//! Limit: the challenges are random (erl_dist draws them), so no input can produce a valid
//! digest; the code after a successful digest check is not reachable from here.
#![no_main]

use std::time::Duration;

use erl_dist::handshake::HandshakeStatus;
use erl_dist::node::NodeName;
use kvnode::internals::transport::handshake::{accept, connect};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio::runtime::{Builder, Runtime};

thread_local! {
    static RUNTIME: Runtime = Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
}

const TIMEOUT: Duration = Duration::from_secs(5);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, peer_bytes)) = data.split_first() else {
        return;
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            // Room for everything either side writes, so no write ever waits for a reader.
            let (ours, mut theirs) = tokio::io::duplex(peer_bytes.len() + 64 * 1024);
            theirs.write_all(peer_bytes).await.expect("fits the buffer");
            theirs.shutdown().await.expect("in-memory shutdown");
            let name: NodeName = "kv@127.0.0.1".parse().expect("a valid node name");
            if mode & 1 == 0 {
                let status = match (mode >> 1) & 3 {
                    0 => HandshakeStatus::Ok,
                    1 => HandshakeStatus::OkSimultaneous,
                    2 => HandshakeStatus::Nok,
                    _ => HandshakeStatus::Alive,
                };
                let _ = accept(ours, &name, 7, "secret", TIMEOUT, |_| status).await;
            } else {
                let _ = connect(ours, &name, 7, "secret", TIMEOUT).await;
            }
            drop(theirs);
        })
    });
});
