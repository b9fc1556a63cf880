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
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

/// The OTP 26 mandatory set plus DIST_MONITOR, DIST_MONITOR_NAME and ALIAS (`0xC_0307_0FBC`).
pub const BASE_FLAGS: u64 = 0xC_0307_0FBC;
/// `DFLAG_SPAWN`: we answer SPAWN_REQUEST (needed for `:rpc.call`/`:erpc.call` on OTP 25+).
pub const FLAG_SPAWN: u64 = 1 << 32;
/// `DFLAG_ALTACT_SIG` (OTP 28+): we decode and send ALTACT_SIG_SEND (op 37, see
/// [`super::altact`]), so OTP 28+ sends alias messages, priority messages and priority exit
/// signals to us as op 37, and we send alias messages to such a peer as op 37 (OTP 30 drops
/// ALIAS_SEND, op 33).
pub const FLAG_ALTACT_SIG: u64 = 1 << 37;
/// `DFLAG_MANDATORY_25_DIGEST` as OTP defines it (erl_dist 0.8 has it at the wrong bit).
pub const FLAG_MANDATORY_25_DIGEST: u64 = 0x0400_0000;
/// The flags OTP 25 folds into [`FLAG_MANDATORY_25_DIGEST`].
pub const MANDATORY_25: u64 = 0x107_0F94;
/// Flag names for log lines.
const FLAG_NAMES: &[(u64, &str)] = &[
    (0x4, "EXTENDED_REFERENCES"),
    (0x10, "FUN_TAGS"),
    (0x80, "NEW_FUN_TAGS"),
    (0x100, "EXTENDED_PIDS_PORTS"),
    (0x10000, "UTF8_ATOMS"),
    (0x40000, "BIG_CREATION"),
];

/// `DFLAG_PUBLISHED`: advertised only by a visible node (`--visible`); a connection is
/// visible when both sides set it (BEAM nodes then list the peer in `nodes()` and run
/// `global`/`pg` with it).
pub const FLAG_PUBLISHED: u64 = 0x1;

/// The flags kvnode advertises as a hidden node (the default); a visible node adds
/// `FLAG_PUBLISHED` (`DFLAG_PUBLISHED`, 0x1).
pub fn local_flags() -> DistributionFlags {
    DistributionFlags::from_bits_truncate(BASE_FLAGS | FLAG_SPAWN | FLAG_ALTACT_SIG)
}

/// Expands a peer's MANDATORY_25_DIGEST as `dist_util` does and intersects with ours. The
/// peer's [`FLAG_PUBLISHED`] is kept as it sent it (it says whether the peer is visible, not
/// something both sides must support).
pub fn negotiated(peer: DistributionFlags) -> DistributionFlags {
    let mut bits = peer.bits();
    if bits & FLAG_MANDATORY_25_DIGEST != 0 {
        bits |= MANDATORY_25;
    }
    DistributionFlags::from_bits_truncate(bits & (local_flags().bits() | FLAG_PUBLISHED))
}

/// The most characters of a name claimed by a peer that has not authenticated that go into
/// a log line (escaped): as long as the longest node name OTP accepts.
pub const MAX_LOGGED_NAME: usize = 255;

/// Errors of a handshake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The handshake did not finish in time.
    #[error("handshake timed out after {0:?}")]
    Timeout(Duration),
    /// The peer's digest did not match: it has another cookie. `node` is the name the peer
    /// claimed (acceptor side: from its `send_name`, or the name given to a NAME_ME peer);
    /// `None` when we dialed (the dialed name is in the log span). At most
    /// `MAX_LOGGED_NAME` characters, escaped: it comes from a peer that has not authenticated.
    #[error("wrong cookie (challenge digest mismatch){}", node.as_deref().map(|n| format!(" from node {n}")).unwrap_or_default())]
    WrongCookie {
        /// The node that claimed to connect.
        node: Option<String>,
    },
    /// The peer asked for a dynamic name (NAME_ME) with a host part we cannot build a node
    /// name from (empty, or too long with the generated name).
    #[error("cannot name a NAME_ME peer on host {host:?}: {reason}")]
    BadDynamicHost {
        /// The host the peer sent (escaped, at most `LOG_EXCERPT` bytes).
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No free dynamic name after `DYNAMIC_NAME_ATTEMPTS` random draws (practically
    /// impossible: 64 random bits each).
    #[error("no free dynamic node name after {DYNAMIC_NAME_ATTEMPTS} attempts")]
    NoDynamicName,
    /// The peer we dialed answered `not_allowed`: it refuses us. OTP logs its reason on its
    /// own side (a name it does not accept, flags we lack, `net_kernel:allow/1`, ...).
    #[error("the peer refused the connection (status not_allowed; its own log says why)")]
    RefusedByPeer,
    /// The peer we dialed answered with a status that makes no sense for us (e.g. `named:`
    /// when we did not ask for a name).
    #[error("unexpected handshake status {0}")]
    UnexpectedStatus(String),
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

/// The mandatory flags `bits` (a peer's advertised flags) lacks, by name; empty when none.
fn missing_flags(bits: u64) -> Vec<&'static str> {
    let mut bits = bits;
    if bits & FLAG_MANDATORY_25_DIGEST != 0 {
        bits |= MANDATORY_25;
    }
    FLAG_NAMES
        .iter()
        .filter(|(f, _)| bits & f == 0)
        .map(|(_, n)| *n)
        .collect()
}

fn check_peer(peer: &PeerNode, local: &NodeName) -> Result<(), Error> {
    let missing = missing_flags(peer.flags.bits());
    if !missing.is_empty() {
        return Err(Error::MissingFlags { missing });
    }
    if peer.name == *local {
        return Err(Error::OwnName(peer.name.to_string()));
    }
    Ok(())
}

/// Reads the flags out of the first bytes of a `send_name` or challenge message body:
/// `'N'` + 64-bit flags (v6), or `'n'` + 16-bit version + 32-bit flags (v5). Both messages
/// start this way. `None` for another tag (erl_dist reports that one itself).
fn flags_of(head: &[u8]) -> Option<u64> {
    match head {
        [b'N', f @ ..] if f.len() >= 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&f[..8]);
            Some(u64::from_be_bytes(b))
        }
        [b'n', _, _, f @ ..] if f.len() >= 4 => {
            Some(u64::from(u32::from_be_bytes([f[0], f[1], f[2], f[3]])))
        }
        _ => None,
    }
}

/// Bytes of the target message kept: a v6 `send_name` ('N', flags, creation, name length)
/// and the longest host a node name can have, so a NAME_ME peer's host is known.
const NAME_HEAD: usize = 15 + 255;

/// Most bytes of peer data (a host, a name) quoted in an error or log line, escaped.
pub const LOG_EXCERPT: usize = 48;

/// How many random names are drawn for a NAME_ME peer before giving up because each is in
/// use (OTP draws until one is free; with 64 random bits a second draw is already rare).
pub const DYNAMIC_NAME_ATTEMPTS: usize = 8;

/// `DFLAG_NAME_ME` (OTP 23+): the initiator has no name and asks the acceptor for one.
pub const FLAG_NAME_ME: u64 = 1 << 33;

/// At most [`LOG_EXCERPT`] bytes of `bytes`, escaped (`\xNN` for non-printables), with `...`
/// when cut.
pub fn excerpt(bytes: &[u8]) -> String {
    let cut = bytes.len() > LOG_EXCERPT;
    let mut out = bytes[..bytes.len().min(LOG_EXCERPT)]
        .escape_ascii()
        .to_string();
    if cut {
        out.push_str("...");
    }
    out
}

/// The host a v6 NAME_ME `send_name` body carries ('N', flags, creation, host length, host),
/// `None` for any other message.
fn name_me_host(head: &[u8]) -> Option<&[u8]> {
    let flags = flags_of(head)?;
    if head.first() != Some(&b'N') || flags & FLAG_NAME_ME == 0 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*head.get(13)?, *head.get(14)?]));
    let rest = head.get(15..)?;
    Some(&rest[..len.min(rest.len())])
}

/// A dynamic node name as OTP's `net_kernel` makes one: a random integer in 1..=2^64 in base
/// 36 (upper case), e.g. `3KX8V1Q0ZC1YD`.
fn random_dynamic_name() -> String {
    // rand:uniform(1 bsl 64): 1..=2^64, which needs 65 bits.
    let mut n = u128::from(rand::random::<u64>()) + 1;
    let mut digits = Vec::with_capacity(13);
    while n > 0 {
        digits.push(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    String::from_utf8_lossy(&digits).into_owned()
}

/// A creation for a named peer, as OTP's `net_kernel:create_creation/0`: random 32 bits,
/// never 0..=3 (those mean "old creation" to OTP).
fn random_creation() -> u32 {
    let c: u32 = rand::random();
    if c < 4 { c + 4 } else { c }
}

/// Watches the handshake messages a peer sends (2-byte length framing, which is what erl_dist
/// reads; TLS's 4-byte framing is converted below it) and keeps the head of message number
/// `target`, so the peer's flags are known the moment that message has arrived: the
/// `send_name` (acceptor, message 0) or the challenge (initiator, message 1, after the status).
///
/// On the initiator side it also refuses to write anything once that challenge has arrived
/// from a peer lacking mandatory flags: erl_dist answers the challenge in the same call that
/// reads it, and OTP's `dist_util` closes the connection before the challenge reply in that
/// case. The refusal surfaces as an I/O error; [`Seen::missing`] says why.
struct FlagGate<S> {
    inner: S,
    /// Which inbound message carries the flags.
    target: usize,
    /// Refuse writes once the target message lacks mandatory flags (initiator side).
    gate_writes: bool,
    /// Index of the inbound message being read.
    msg: usize,
    hdr: [u8; 2],
    hdr_len: usize,
    /// Body bytes of the current message still to come.
    body_left: usize,
    /// The first [`NAME_HEAD`] bytes of the target message's body.
    head: Vec<u8>,
    /// The target message has been read whole.
    target_done: bool,
    /// What the target message said, shared with the code driving the handshake (erl_dist
    /// owns the stream until the handshake ends).
    seen: Arc<Seen>,
}

/// The head of a peer's flag-carrying handshake message (at most [`NAME_HEAD`] bytes), once
/// it has arrived whole.
#[derive(Default)]
struct Seen(Mutex<Option<Vec<u8>>>);

impl Seen {
    fn set(&self, head: Vec<u8>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(head);
    }

    fn with<T>(&self, f: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let head = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(head.as_deref()?)
    }

    /// The mandatory flags the peer lacks, when its flags are known and some are missing.
    fn missing(&self) -> Option<Vec<&'static str>> {
        let flags = self.with(flags_of)?;
        let missing = missing_flags(flags);
        (!missing.is_empty()).then_some(missing)
    }

    /// The host a NAME_ME peer sent in its `send_name`.
    fn name_me_host(&self) -> Option<Vec<u8>> {
        self.with(|head| name_me_host(head).map(<[u8]>::to_vec))
    }
}

impl<S> FlagGate<S> {
    fn new(inner: S, target: usize, gate_writes: bool) -> Self {
        FlagGate {
            inner,
            target,
            gate_writes,
            msg: 0,
            hdr: [0; 2],
            hdr_len: 0,
            body_left: 0,
            head: Vec::new(),
            target_done: false,
            seen: Arc::new(Seen::default()),
        }
    }

    /// Follows the framing of bytes the peer sent.
    fn scan(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.target_done {
            if self.hdr_len < 2 {
                self.hdr[self.hdr_len] = bytes[0];
                self.hdr_len += 1;
                bytes = &bytes[1..];
                if self.hdr_len == 2 {
                    self.body_left = usize::from(u16::from_be_bytes(self.hdr));
                    self.end_of_message_if_empty();
                }
                continue;
            }
            let n = self.body_left.min(bytes.len());
            if self.msg == self.target {
                let want = NAME_HEAD.saturating_sub(self.head.len()).min(n);
                self.head.extend_from_slice(&bytes[..want]);
            }
            self.body_left -= n;
            bytes = &bytes[n..];
            self.end_of_message_if_empty();
        }
    }

    fn end_of_message_if_empty(&mut self) {
        if self.body_left > 0 {
            return;
        }
        if self.msg == self.target {
            self.target_done = true;
            self.seen.set(std::mem::take(&mut self.head));
        }
        self.msg += 1;
        self.hdr_len = 0;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FlagGate<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result
            && !this.target_done
        {
            this.scan(&buf.filled()[before..]);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlagGate<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.gate_writes && this.target_done && this.seen.missing().is_some() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the peer lacks mandatory distribution flags",
            )));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn local_node(name: &NodeName, creation: u32, published: bool) -> LocalNode {
    let mut node = LocalNode::new(name.clone(), Creation::new(creation));
    node.flags = local_flags();
    if published {
        node.flags |= DistributionFlags::from_bits_truncate(FLAG_PUBLISHED);
    }
    node
}

/// Accepts a handshake (`accept_with` for a node where no name is ever taken: the fuzzers
/// and unit tests).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
    decide: impl FnOnce(&NodeName) -> HandshakeStatus,
) -> Result<(S, PeerNode), Error> {
    accept_with(
        stream,
        name,
        creation,
        cookie,
        timeout,
        decide,
        |_| false,
        false,
    )
    .await
}

/// Accepts a handshake. `decide` gets the peer's name and says what to answer; `in_use`
/// says whether a node name is taken (connected or being dialed), so that a peer asking for
/// a dynamic name (NAME_ME, OTP 23+: `erl_rpc`, `erl -name undefined@host`) gets a free one.
///
/// Every refusal says why in its error: a peer lacking mandatory flags is refused as OTP's
/// `dist_util` refuses it (status `not_allowed` right after its `send_name`, before any
/// challenge), as is one claiming our own name or asking for a name on a host no node name
/// can have.
///
/// A NAME_ME peer is named as OTP's `net_kernel` names one: a random base-36 name on the
/// host it sent, a random creation, status `named:` (see [`random_dynamic_name`]).
///
/// Generic over the stream (kvnode passes a `TcpStream`) so the fuzzer can drive it over an
/// in-memory `tokio::io::duplex`. `published`: advertise [`FLAG_PUBLISHED`] (a visible node).
#[allow(clippy::too_many_arguments)]
pub async fn accept_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
    decide: impl FnOnce(&NodeName) -> HandshakeStatus,
    in_use: impl Fn(&str) -> bool,
    published: bool,
) -> Result<(S, PeerNode), Error> {
    let work = async {
        // The send_name is the peer's first message.
        let gate = FlagGate::new(stream, 0, false);
        let seen = gate.seen.clone();
        let mut hs =
            ServerSideHandshake::new(gate.compat(), local_node(name, creation, published), cookie);
        let peer_name = hs.execute_recv_name().await?;
        // erl_dist has read the send_name whole: its flags are known.
        if let Some(missing) = seen.missing() {
            let _ = hs.execute_rest(HandshakeStatus::NotAllowed).await;
            return Err(Error::MissingFlags { missing });
        }
        let Some(peer_name) = peer_name else {
            // A NAME_ME request: give the peer a free name on its host.
            let host = seen.name_me_host().unwrap_or_default();
            let named = match dynamic_name(&host, name, &in_use) {
                Ok(named) => named,
                Err(error) => {
                    let _ = hs.execute_rest(HandshakeStatus::NotAllowed).await;
                    return Err(error);
                }
            };
            let claimed = named.to_string();
            let status = HandshakeStatus::Named {
                name: named.name().to_owned(),
                creation: Creation::new(random_creation()),
            };
            let result = hs.execute_rest(status).await;
            return finish(result, name, Some(claimed));
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
        let result = hs.execute_rest(status).await;
        // Not authenticated yet: what goes into the wrong-cookie log line is bounded and escaped.
        let claimed: String = peer_name
            .to_string()
            .chars()
            .take(MAX_LOGGED_NAME)
            .collect();
        let claimed = claimed.escape_default().to_string();
        finish(result, name, Some(claimed))
    };
    with_timeout(timeout, work).await
}

/// A free node name on `host` for a NAME_ME peer: not ours, not `in_use`.
fn dynamic_name(
    host: &[u8],
    local: &NodeName,
    in_use: &impl Fn(&str) -> bool,
) -> Result<NodeName, Error> {
    let bad = |reason: String| Error::BadDynamicHost {
        host: excerpt(host),
        reason,
    };
    let host_str = std::str::from_utf8(host).map_err(|_| bad("not UTF-8".into()))?;
    // A host name or an address (IPv6 in brackets): nothing that could corrupt a log line
    // or a span field once it is part of the peer's node name.
    let host_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']');
    if !host_str.chars().all(host_char) {
        return Err(bad(
            "not a host name (letters, digits, '.', '-', '_' or an address)".into(),
        ));
    }
    for _ in 0..DYNAMIC_NAME_ATTEMPTS {
        let candidate =
            NodeName::new(&random_dynamic_name(), host_str).map_err(|e| bad(e.to_string()))?;
        if candidate != *local && !in_use(&candidate.to_string()) {
            return Ok(candidate);
        }
    }
    Err(Error::NoDynamicName)
}

/// The end of both directions: map a wrong cookie (naming the node that claimed to connect,
/// when known), check the peer, unwrap the stream.
fn finish<S>(
    result: Result<(Compat<FlagGate<S>>, PeerNode), HandshakeError>,
    name: &NodeName,
    claimed: Option<String>,
) -> Result<(S, PeerNode), Error> {
    let (conn, peer) = result.map_err(|e| match e {
        HandshakeError::CookieMismatch => Error::WrongCookie { node: claimed },
        e => Error::Protocol(e),
    })?;
    check_peer(&peer, name)?;
    Ok((conn.into_inner().inner, peer))
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
/// fuzzer, like [`accept`]). A peer whose challenge lacks mandatory flags is left without a
/// challenge reply, as OTP's `dist_util` does: the connection is closed.
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
) -> Result<(S, PeerNode), Error> {
    connect_with(stream, name, creation, cookie, timeout, false).await
}

/// [`connect`], advertising [`FLAG_PUBLISHED`] when `published` (a visible node).
pub async fn connect_with<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    name: &NodeName,
    creation: u32,
    cookie: &str,
    timeout: Duration,
    published: bool,
) -> Result<(S, PeerNode), Error> {
    let work = async {
        // The challenge is the peer's second message, after the status.
        let gate = FlagGate::new(stream, 1, true);
        let seen = gate.seen.clone();
        let mut hs =
            ClientSideHandshake::new(gate.compat(), local_node(name, creation, published), cookie);
        let status = hs.execute_send_name(6).await?;
        match status {
            HandshakeStatus::Ok | HandshakeStatus::OkSimultaneous => {}
            HandshakeStatus::Nok => return Err(Error::Simultaneous),
            // erl_dist 0.8 never flushes the 'strue' answer to `alive`, so we cannot go on;
            // the peer drops its stale connection and our next attempt succeeds.
            HandshakeStatus::Alive => {
                return Err(Error::Protocol(HandshakeError::AlreadyActive));
            }
            HandshakeStatus::NotAllowed => return Err(Error::RefusedByPeer),
            HandshakeStatus::Named { name, .. } => {
                return Err(Error::UnexpectedStatus(format!(
                    "named:{} (we did not ask for a name)",
                    excerpt(name.as_bytes())
                )));
            }
        }
        let result = hs.execute_rest(true).await;
        if let Some(missing) = seen.missing() {
            return Err(Error::MissingFlags { missing });
        }
        finish(result, name, None)
    };
    with_timeout(timeout, work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_finds_the_flags_however_the_bytes_are_split() {
        // A status message, then a v6 challenge lacking UTF8_ATOMS.
        let mut bytes = vec![0, 3, b's', b'o', b'k'];
        let flags = (BASE_FLAGS | FLAG_SPAWN) & !0x10000;
        let mut challenge = vec![b'N'];
        challenge.extend_from_slice(&flags.to_be_bytes());
        challenge.extend_from_slice(&[0; 8]);
        challenge.extend_from_slice(b"\0\x03a@b");
        bytes.extend_from_slice(&(challenge.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&challenge);
        for piece in [1, 2, 7, bytes.len()] {
            let mut gate = FlagGate::new((), 1, true);
            for chunk in bytes.chunks(piece) {
                gate.scan(chunk);
            }
            assert!(gate.target_done, "split in {piece}");
            assert_eq!(gate.seen.missing(), Some(vec!["UTF8_ATOMS"]));
        }
        // The v5 layout ('n', version, 32-bit flags) of a complete peer.
        let mut gate = FlagGate::new((), 0, false);
        let mut name = vec![b'n', 0, 5];
        name.extend_from_slice(&(BASE_FLAGS as u32).to_be_bytes());
        name.extend_from_slice(b"a@b");
        gate.scan(&(name.len() as u16).to_be_bytes());
        gate.scan(&name);
        assert!(gate.target_done);
        assert_eq!(gate.seen.missing(), None);
    }

    #[test]
    fn dynamic_names_and_creations_look_like_otps() {
        for _ in 0..1000 {
            let n = random_dynamic_name();
            assert!((1..=13).contains(&n.len()), "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
                "{n}"
            );
            assert!(!n.starts_with('0'), "{n}");
            assert!(random_creation() >= 4);
        }
    }

    /// A NAME_ME initiator (as erl_rpc is one) on host `localhost` against [`accept_with`]
    /// with `in_use`: the status it got, and what the acceptor made of it.
    async fn name_me(
        in_use: impl Fn(&str) -> bool,
    ) -> (HandshakeStatus, Result<PeerNode, Error>, Option<PeerNode>) {
        let (ours, theirs) = tokio::io::duplex(4096);
        let name: NodeName = "kv@127.0.0.1".parse().expect("name");
        let server = async {
            accept_with(
                ours,
                &name,
                1,
                "c",
                Duration::from_secs(5),
                |_| HandshakeStatus::Ok,
                in_use,
                false,
            )
            .await
            .map(|(_, peer)| peer)
        };
        let client = async {
            let mut local = local_node(&"nonode@localhost".parse().expect("name"), 0, false);
            local.flags |= DistributionFlags::NAME_ME;
            let mut hs = ClientSideHandshake::new(theirs.compat(), local, "c");
            let status = hs.execute_send_name(6).await.expect("a status");
            let peer = match status {
                HandshakeStatus::Named { .. } => {
                    Some(hs.execute_rest(true).await.expect("handshake").1)
                }
                _ => None,
            };
            (status, peer)
        };
        let (server, (status, peer)) = tokio::join!(server, client);
        (status, server, peer)
    }

    #[tokio::test]
    async fn a_name_me_peer_gets_a_free_name_on_its_host() {
        // The first two names drawn are taken.
        let drawn = Mutex::new(Vec::new());
        let (status, server, peer) = name_me(|n| {
            let mut d = drawn.lock().expect("lock");
            d.push(n.to_owned());
            d.len() <= 2
        })
        .await;
        let HandshakeStatus::Named { name, creation } = status else {
            panic!("{status:?}");
        };
        assert!(creation.get() >= 4);
        let given = format!("{name}@localhost");
        let drawn = drawn.into_inner().expect("lock");
        assert_eq!(drawn.len(), 3, "{drawn:?}");
        assert_eq!(drawn[2], given);
        let server = server.expect("accepted");
        assert_eq!(server.name.to_string(), given);
        assert_eq!(server.creation, Some(creation));
        assert_eq!(peer.expect("connected").name.to_string(), "kv@127.0.0.1");
    }

    #[tokio::test]
    async fn a_name_me_peer_is_refused_when_no_name_is_free() {
        let (status, server, peer) = name_me(|_| true).await;
        assert_eq!(status, HandshakeStatus::NotAllowed);
        assert!(peer.is_none());
        assert!(matches!(server, Err(Error::NoDynamicName)), "{server:?}");
    }

    #[test]
    fn the_host_of_a_name_me_send_name_is_found_and_quoted_bounded() {
        let mut body = vec![b'N'];
        body.extend_from_slice(&(BASE_FLAGS | FLAG_NAME_ME).to_be_bytes());
        body.extend_from_slice(&[0, 0, 0, 0, 0, 9]);
        body.extend_from_slice(b"localhost");
        assert_eq!(name_me_host(&body), Some(&b"localhost"[..]));
        // Without NAME_ME the same bytes are a name, not a host.
        body[1..9].copy_from_slice(&BASE_FLAGS.to_be_bytes());
        assert_eq!(name_me_host(&body), None);
        let long = excerpt(&[0xff; 200]);
        assert!(long.ends_with("..."));
        assert_eq!(long.len(), LOG_EXCERPT * 4 + 3);
    }

    #[tokio::test]
    async fn an_initiator_lacking_flags_gets_not_allowed_before_any_challenge() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let name: NodeName = "kv@127.0.0.1".parse().expect("name");
        let server = tokio::spawn(async move {
            accept(ours, &name, 1, "c", Duration::from_secs(5), |_| {
                HandshakeStatus::Ok
            })
            .await
            .map(|_| ())
        });
        let mut peer = local_node(&"old@127.0.0.1".parse().expect("name"), 2, false);
        peer.flags = DistributionFlags::from_bits_truncate((BASE_FLAGS | FLAG_SPAWN) & !0x40000);
        let mut hs = ClientSideHandshake::new(theirs.compat(), peer, "c");
        let status = hs.execute_send_name(6).await.expect("a status");
        assert_eq!(status, HandshakeStatus::NotAllowed);
        let result = server.await.expect("server task");
        assert!(
            matches!(&result, Err(Error::MissingFlags { missing }) if missing == &["BIG_CREATION"]),
            "{result:?}"
        );
    }
}
