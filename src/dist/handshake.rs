//! The distribution handshake (v6, and v5 from old initiators), both directions, on top of
//! erl_dist's handshake state machines, with kvnode's flags, a timeout on the whole exchange,
//! OTP's name rules and simultaneous-connect decision.
//!
//! Spec: <https://www.erlang.org/doc/apps/erts/erl_dist_protocol.html#distribution-handshake>

use erl_dist::DistributionFlags;
use erl_dist::handshake::{
    ClientSideHandshake, HandshakeError, HandshakeStatus, ServerSideHandshake,
};
use erl_dist::node::{Creation, LocalNode, NodeName, PeerNode};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// The OTP 26 mandatory set plus DIST_MONITOR, DIST_MONITOR_NAME and ALIAS (`0xC_0307_0FBC`).
pub const BASE_FLAGS: u64 = 0xC_0307_0FBC;
/// `DFLAG_SPAWN`: we answer SPAWN_REQUEST (needed for `:rpc.call`/`:erpc.call` on OTP 25+).
pub const FLAG_SPAWN: u64 = 1 << 32;
/// `DFLAG_MANDATORY_25_DIGEST` as OTP defines it (erl_dist 0.8 has it at the wrong bit).
pub const FLAG_MANDATORY_25_DIGEST: u64 = 0x0400_0000;
/// The flags OTP 25 folds into [`FLAG_MANDATORY_25_DIGEST`].
pub const MANDATORY_25: u64 = 0x107_0F94;
/// What a peer must support for kvnode to talk to it (OTP's mandatory set up to OTP 25,
/// which is what we decode and encode).
pub const REQUIRED_PEER_FLAGS: u64 = 0x4 | 0x10 | 0x80 | 0x100 | 0x10000 | 0x40000;
/// Flag names for log lines.
const FLAG_NAMES: &[(u64, &str)] = &[
    (0x4, "EXTENDED_REFERENCES"),
    (0x10, "FUN_TAGS"),
    (0x80, "NEW_FUN_TAGS"),
    (0x100, "EXTENDED_PIDS_PORTS"),
    (0x10000, "UTF8_ATOMS"),
    (0x40000, "BIG_CREATION"),
];

/// The flags kvnode advertises.
pub fn local_flags() -> DistributionFlags {
    DistributionFlags::from_bits_truncate(BASE_FLAGS | FLAG_SPAWN)
}

/// Expands a peer's MANDATORY_25_DIGEST as `dist_util` does and intersects with ours.
pub fn negotiated(peer: DistributionFlags) -> DistributionFlags {
    let mut bits = peer.bits();
    if bits & FLAG_MANDATORY_25_DIGEST != 0 {
        bits |= MANDATORY_25;
    }
    DistributionFlags::from_bits_truncate(bits & local_flags().bits())
}

/// Errors of a handshake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's digest did not match: it has another cookie.
    #[error("wrong cookie (challenge digest mismatch)")]
    WrongCookie,
    /// The peer lacks flags we need.
    #[error("peer cannot handle {missing:?}")]
    MissingFlags {
        /// Names of the missing flags.
        missing: Vec<&'static str>,
    },
    /// The peer claims our own name.
    #[error("peer uses our own node name {0}")]
    OwnName(String),
    /// We lost a simultaneous connect (we answered `nok`) or the peer did.
    #[error("simultaneous connect: the other attempt wins")]
    Simultaneous,
    /// Anything else erl_dist reported (bad bytes, closed socket, ...).
    #[error("{0}")]
    Protocol(#[from] HandshakeError),
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn check_peer(peer: &PeerNode, local: &NodeName) -> Result<(), Error> {
    let mut bits = peer.flags.bits();
    if bits & FLAG_MANDATORY_25_DIGEST != 0 {
        bits |= MANDATORY_25;
    }
    let missing: Vec<&'static str> = FLAG_NAMES
        .iter()
        .filter(|(f, _)| bits & f == 0)
        .map(|(_, n)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingFlags { missing });
    }
    if peer.name == *local {
        return Err(Error::OwnName(peer.name.to_string()));
    }
    Ok(())
}

fn local_node(name: &NodeName, creation: u32) -> LocalNode {
    let mut node = LocalNode::new(name.clone(), Creation::new(creation));
    node.flags = local_flags();
    node
}

/// Accepts a handshake. `decide` gets the peer's name and says what to answer.
///
/// Generic over the stream (kvnode passes a `TcpStream`) so the fuzzer can drive it over an
/// in-memory `tokio::io::duplex`.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
    decide: impl FnOnce(&NodeName) -> HandshakeStatus,
) -> Result<(S, PeerNode), Error> {
    let work = async {
        let mut hs = ServerSideHandshake::new(stream.compat(), local_node(name, creation), cookie);
        let Some(peer_name) = hs.execute_recv_name().await? else {
            // A NAME_ME request: we do not hand out dynamic names.
            hs.execute_rest(HandshakeStatus::NotAllowed).await?;
            return Err(Error::Protocol(HandshakeError::NotAllowed));
        };
        if peer_name == *name {
            let _ = hs.execute_rest(HandshakeStatus::NotAllowed).await;
            return Err(Error::OwnName(peer_name.to_string()));
        }
        let status = decide(&peer_name);
        if status == HandshakeStatus::Nok {
            let _ = hs.execute_rest(HandshakeStatus::Nok).await;
            return Err(Error::Simultaneous);
        }
        finish(hs.execute_rest(status).await, name)
    };
    with_timeout(timeout, work).await
}

/// The end of both directions: map a wrong cookie, check the peer, unwrap the stream.
fn finish<S>(
    result: Result<(Compat<S>, PeerNode), HandshakeError>,
    name: &NodeName,
) -> Result<(S, PeerNode), Error> {
    let (conn, peer) = result.map_err(|e| match e {
        HandshakeError::CookieMismatch => Error::WrongCookie,
        e => Error::Protocol(e),
    })?;
    check_peer(&peer, name)?;
    Ok((conn.into_inner(), peer))
}

async fn with_timeout<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout(timeout))?
}

/// Dials: runs the initiator side of the handshake on a connected stream (generic for the
/// fuzzer, like [`accept`]).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
) -> Result<(S, PeerNode), Error> {
    let work = async {
        let mut hs = ClientSideHandshake::new(stream.compat(), local_node(name, creation), cookie);
        let status = hs.execute_send_name(6).await?;
        match status {
            HandshakeStatus::Ok | HandshakeStatus::OkSimultaneous => {}
            HandshakeStatus::Nok => return Err(Error::Simultaneous),
            // erl_dist 0.8 never flushes the 'strue' answer to `alive`, so we cannot go on;
            // the peer drops its stale connection and our next attempt succeeds.
            HandshakeStatus::Alive => {
                return Err(Error::Protocol(HandshakeError::AlreadyActive));
            }
            other => {
                return Err(Error::Protocol(HandshakeError::UnknownStatus {
                    status: format!("{other:?}"),
                }));
            }
        }
        finish(hs.execute_rest(true).await, name)
    };
    with_timeout(timeout, work).await
}
