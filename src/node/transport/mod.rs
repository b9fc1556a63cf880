//! The distribution protocol: [`handshake`], framing and ticks ([`connection`]), and the
//! [`manager`] that maps peer node names to connections and dials on demand.
//!
//! Frames after the handshake are `u32` length + body; a zero length is a tick. Without
//! DIST_HDR_ATOM_CACHE (which kvnode does not advertise) every body is `112` (pass-through),
//! then the control tuple and, for message-carrying operations, the message, each a
//! version-prefixed external term. Spec:
//! <https://www.erlang.org/doc/apps/erts/erl_dist_protocol.html#protocol-between-connected-nodes>

pub mod admission;
pub mod altact;
pub mod connection;
pub mod fast;
pub mod handshake;
pub mod manager;
pub mod outbox;
pub mod stream;
pub mod threads;
pub mod tls;

use crate::node::Node;
use erl_dist::message::Message;
use erl_dist::node::NodeName;
use erl_dist::term::{Atom, FixInteger, Term, Tuple};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tracing::Instrument;

/// An encoded frame, its 4-byte length prefix included, ready for the socket.
pub type Frame = Vec<u8>;

/// The pass-through type byte that starts every frame body without a distribution header.
pub const PASS_THROUGH: u8 = 112;

/// Appends a control tuple and its message, each as a versioned external term.
fn write_terms(
    frame: &mut Vec<u8>,
    control: Term,
    message: &Term,
) -> Result<(), erl_dist::message::SendError> {
    crate::etf::encode::encode(&control, &mut *frame)
        .map_err(erl_dist::message::SendError::Encode)?;
    crate::etf::encode::encode(message, &mut *frame).map_err(erl_dist::message::SendError::Encode)
}

/// Encodes a control message (and its payload) as a complete frame for a peer that
/// negotiated `flags`: an ALIAS_SEND goes as ALTACT_SIG_SEND (op 37, ALIAS flag) to a peer
/// with `DFLAG_ALTACT_SIG` (OTP 28+; OTP 30 no longer takes op 33), as op 33 to others.
pub fn encode_frame_for(
    message: Message,
    flags: erl_dist::DistributionFlags,
) -> Result<Frame, erl_dist::message::SendError> {
    let altact = flags.bits() & handshake::FLAG_ALTACT_SIG != 0;
    match message {
        Message::AliasSend(mut m) if altact => {
            crate::etf::encode::fix(&mut m.message);
            let mut frame = Vec::with_capacity(64);
            frame.extend_from_slice(&[0, 0, 0, 0, PASS_THROUGH]);
            write_terms(
                &mut frame,
                altact::alias_control(m.from_pid, m.alias),
                &m.message,
            )?;
            crate::metrics::ALTACT_OUT.inc();
            finish_frame(frame)
        }
        other => encode_frame(other),
    }
}

/// Writes the length prefix of a frame built after a 4-byte placeholder.
fn finish_frame(mut frame: Frame) -> Result<Frame, erl_dist::message::SendError> {
    let len = u32::try_from(frame.len() - 4).map_err(|_| {
        erl_dist::message::SendError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "message larger than 4 GiB",
        ))
    })?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Encodes a control message (and its payload) as a complete frame (an ALIAS_SEND as op 33:
/// use [`encode_frame_for`] when the peer's flags are known).
pub fn encode_frame(mut message: Message) -> Result<Frame, erl_dist::message::SendError> {
    // eetf writes some lists wrong ([`crate::etf::encode`]): correct the terms a peer's data
    // can reach before erl_dist writes them (SEND, REG_SEND and SPAWN_REQUEST are written
    // below, through the corrected encoder).
    match &mut message {
        Message::AliasSend(m) => crate::etf::encode::fix(&mut m.message),
        Message::Exit(m) => crate::etf::encode::fix(&mut m.reason),
        Message::Exit2(m) => crate::etf::encode::fix(&mut m.reason),
        Message::MonitorPExit(m) => crate::etf::encode::fix(&mut m.reason),
        _ => {}
    }
    let mut frame = Vec::with_capacity(64);
    frame.extend_from_slice(&[0, 0, 0, 0, PASS_THROUGH]);
    // SEND and REG_SEND carry an unused slot that OTP fills with the atom '' (erts `dsig_send`).
    // erl_dist writes `{}` there: BEAM ignores it, but erl_interface (`ei_receive`, so
    // `erl_call` and C nodes) and Jinterface decode it as an atom and drop the connection.
    match message {
        Message::Send(m) => {
            let control = Tuple::from(vec![
                FixInteger::from(2).into(),
                Atom::from("").into(),
                m.to_pid.into(),
            ]);
            write_terms(&mut frame, control.into(), &m.message)?;
        }
        Message::RegSend(m) => {
            let control = Tuple::from(vec![
                FixInteger::from(6).into(),
                m.from_pid.into(),
                Atom::from("").into(),
                m.to_name.into(),
            ]);
            write_terms(&mut frame, control.into(), &m.message)?;
        }
        // Written here so its argument list (a list eetf may write wrong, in a field that
        // cannot hold the corrected form) goes through the corrected encoder.
        Message::SpawnRequest(m) => {
            let control = Tuple::from(vec![
                FixInteger::from(29).into(),
                m.req_id.into(),
                m.from_pid.into(),
                m.group_leader.into(),
                m.mfa.into(),
                m.opt_list.into(),
            ]);
            write_terms(&mut frame, control.into(), &m.arg_list.into())?;
        }
        other => other.write_into(&mut frame)?,
    }
    finish_frame(frame)
}

/// Errors dialing a peer.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The node name is not `name@host`.
    #[error("not a node name: {0}")]
    BadName(String),
    /// The host did not resolve.
    #[error("cannot resolve host {host}: {source}")]
    Resolve {
        /// The host part of the name.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// EPMD on the peer's host does not know the name.
    #[error("{name} is not registered with the EPMD at {epmd}")]
    NotRegistered {
        /// The alive name.
        name: String,
        /// The EPMD asked.
        epmd: SocketAddr,
    },
    /// EPMD could not be asked.
    #[error("EPMD lookup failed: {0}")]
    Epmd(#[from] crate::epmd::EpmdError),
    /// TCP connect failed or timed out.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address dialed.
        addr: SocketAddr,
        /// The socket error (`TimedOut` when the connect timed out).
        source: std::io::Error,
    },
    /// The TLS handshake failed or timed out (TLS distribution).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The address dialed.
        addr: SocketAddr,
        /// Why (rustls' reason, e.g. an unknown issuer).
        source: std::io::Error,
    },
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] handshake::Error),
    /// The peer answered with another name than the one we dialed.
    #[error("dialed {dialed} but the peer calls itself {answered}")]
    NameMismatch {
        /// What we dialed.
        dialed: String,
        /// What it said.
        answered: String,
    },
}

/// A connection after the distribution handshake, on plain TCP or inside TLS.
enum Established {
    Plain(TcpStream),
    Tls(
        Box<tokio_rustls::TlsStream<TcpStream>>,
        (tokio::net::UnixStream, tokio::net::UnixStream),
    ),
}

impl Established {
    /// Serves the connection until it ends (see [`connection::serve`]).
    async fn serve(self, node: Node, peer: String, flags: erl_dist::DistributionFlags) {
        match self {
            Established::Plain(stream) => connection::serve(node, stream, peer, flags).await,
            Established::Tls(stream, pair) => tls::serve(node, stream, pair, peer, flags).await,
        }
    }
}

async fn try_dial(
    node: &Node,
    peer: &str,
) -> Result<(Established, erl_dist::node::PeerNode), DialError> {
    let cfg = node.config();
    let peer_name: NodeName = peer
        .parse()
        .map_err(|_| DialError::BadName(peer.to_owned()))?;
    let host = peer_name.host().to_owned();
    let epmd = tokio::net::lookup_host((host.as_str(), cfg.epmd_port))
        .await
        .map_err(|source| DialError::Resolve {
            host: host.clone(),
            source,
        })?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| DialError::Resolve {
            host: host.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 address"),
        })?;
    let info = crate::epmd::client::port_please(epmd, peer_name.name())
        .await?
        .ok_or_else(|| DialError::NotRegistered {
            name: peer_name.name().to_owned(),
            epmd,
        })?;
    let addr = SocketAddr::new(epmd.ip(), info.port);
    let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
    let stream = tokio::time::timeout(cfg.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Connect {
            addr,
            source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        })?
        .map_err(|source| DialError::Connect { addr, source })?;
    let _ = stream.set_nodelay(true);
    let local: NodeName = cfg
        .node_name
        .parse()
        .map_err(|_| DialError::BadName(cfg.node_name.clone()))?;
    let (stream, peer_node) = match &cfg.tls {
        None => {
            let (stream, peer_node) = handshake::connect_with(
                stream,
                &local,
                node.creation(),
                &cfg.cookie,
                cfg.handshake_timeout,
                cfg.visible,
            )
            .await?;
            (Established::Plain(stream), peer_node)
        }
        Some(tls) => {
            let tls_err = |source| DialError::Tls { addr, source };
            let pair = tokio::net::UnixStream::pair().map_err(tls_err)?;
            let stream = tokio::time::timeout_at(deadline, tls.connect(&host, stream))
                .await
                .map_err(|_| {
                    tls_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                })?
                .map_err(tls_err)?;
            let (stream, peer_node) = handshake::connect_with(
                tls::Packet4::new(stream),
                &local,
                node.creation(),
                &cfg.cookie,
                remaining(deadline),
                cfg.visible,
            )
            .await?;
            (
                Established::Tls(Box::new(stream.into_inner().into()), pair),
                peer_node,
            )
        }
    };
    if peer_node.name.to_string() != peer {
        return Err(DialError::NameMismatch {
            dialed: peer.to_owned(),
            answered: peer_node.name.to_string(),
        });
    }
    Ok((stream, peer_node))
}

/// What a dial came to, for [`manager::Manager::note_dial`].
fn outcome_of<T>(
    dialed: &Result<(T, erl_dist::node::PeerNode), DialError>,
) -> manager::DialOutcome {
    use manager::{DialFailure, DialOutcome};
    let error = match dialed {
        Ok((_, peer)) => {
            return DialOutcome::Connected {
                creation: peer.creation.map(|c| c.get()),
            };
        }
        Err(error) => error,
    };
    let timed_out = |e: &std::io::Error| e.kind() == std::io::ErrorKind::TimedOut;
    let class = match error {
        DialError::BadName(_) | DialError::Resolve { .. } | DialError::NotRegistered { .. } => {
            DialFailure::Unreachable
        }
        DialError::Epmd(crate::epmd::EpmdError::Timeout { .. }) => DialFailure::Timeout,
        DialError::Epmd(_) => DialFailure::Unreachable,
        DialError::Connect { source, .. } if timed_out(source) => DialFailure::Timeout,
        DialError::Connect { .. } => DialFailure::Unreachable,
        DialError::Tls { source, .. } if timed_out(source) => DialFailure::Timeout,
        DialError::Handshake(handshake::Error::Timeout(_)) => DialFailure::Timeout,
        DialError::Tls { .. } | DialError::Handshake(_) | DialError::NameMismatch { .. } => {
            DialFailure::Refused
        }
    };
    DialOutcome::Failed {
        class,
        message: error.to_string(),
    }
}

/// The metrics reason of a failed dial (None: a lost simultaneous connect, no failure).
fn dial_failure_reason(error: &DialError) -> Option<crate::metrics::HandshakeFailure> {
    use crate::metrics::HandshakeFailure as F;
    Some(match error {
        DialError::Handshake(handshake::Error::Simultaneous) => return None,
        DialError::Handshake(handshake::Error::WrongCookie { .. }) => F::WrongCookie,
        DialError::Handshake(handshake::Error::Timeout(_)) => F::Timeout,
        DialError::Handshake(
            handshake::Error::MissingFlags { .. }
            | handshake::Error::OwnName(_)
            | handshake::Error::BadDynamicHost { .. }
            | handshake::Error::NoDynamicName,
        ) => F::NotAllowed,
        DialError::Handshake(_) | DialError::NameMismatch { .. } => F::Other,
        DialError::Tls { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
            F::Timeout
        }
        DialError::Tls { .. } => F::Tls,
        DialError::Connect { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
            F::Timeout
        }
        DialError::Epmd(crate::epmd::EpmdError::Timeout { .. }) => F::Timeout,
        DialError::BadName(_)
        | DialError::Resolve { .. }
        | DialError::NotRegistered { .. }
        | DialError::Epmd(_)
        | DialError::Connect { .. } => F::Unreachable,
    })
}

/// Dials `peer` (the caller holds the [`manager::DialTicket`]) and serves the connection.
/// Frames queued meanwhile are sent first. On failure they are dropped and monitors on that
/// node fire `noconnection`. The ticket counts against `--max-dials` until the handshake is
/// over (or, after a lost simultaneous connect, until the peer's own connection came).
pub async fn dial(node: Node, peer: String, ticket: manager::DialTicket) {
    let span = tracing::info_span!("conn", peer = %peer, dir = "out");
    async move {
        let dialed = try_dial(&node, &peer).await;
        let ticket = match dialed {
            Err(DialError::Handshake(handshake::Error::Simultaneous)) => Some(ticket),
            _ => {
                drop(ticket);
                None
            }
        };
        // A lost simultaneous connect is no failure: the peer's own connection comes.
        if !matches!(
            dialed,
            Err(DialError::Handshake(handshake::Error::Simultaneous))
        ) {
            node.manager().note_dial(&peer, outcome_of(&dialed));
        }
        if let Err(error) = &dialed
            && let Some(reason) = dial_failure_reason(error)
        {
            crate::metrics::handshake_failed(false, reason);
        }
        match dialed {
            Ok((stream, peer_node)) => {
                let flags = handshake::negotiated(peer_node.flags);
                let _up = crate::metrics::CONNECTIONS_OUT.track();
                stream.serve(node, peer, flags).await;
            }
            Err(DialError::Handshake(handshake::Error::Simultaneous)) => {
                // The peer is dialing us and wins: wait for its connection to arrive.
                node.manager().stop_dialing(&peer);
                let deadline = tokio::time::Instant::now() + node.config().handshake_timeout;
                loop {
                    let changed = node.manager().changed();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if node.manager().is_up(&peer) {
                        return;
                    }
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        break;
                    }
                }
                if node.manager().dial_failed(&peer) {
                    tracing::warn!("simultaneous connect: the peer's connection never came");
                    node.node_down(&peer);
                }
                drop(ticket);
            }
            Err(error) => {
                tracing::warn!(%error, "cannot connect");
                if node.manager().dial_failed(&peer) {
                    node.node_down(&peer);
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// The budgets an inbound connection is admitted under (built by the accept loop).
pub struct InboundBudgets {
    /// Connections still in the handshake (`--max-handshakes`, `--max-handshakes-per-ip`).
    pub handshakes: std::sync::Arc<crate::node::transport::admission::Budget>,
    /// Authenticated connections (`--max-connections`).
    pub established: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Runs the acceptor side for one inbound TCP connection: handshake under a timeout (and
/// while `slot`, its place among the handshaking connections, is not evicted), then serve
/// under one of the `established` permits. Spawned per connection, so a slow peer never
/// holds up the accept loop.
pub async fn accept(
    node: Node,
    stream: TcpStream,
    addr: SocketAddr,
    slot: crate::node::transport::admission::Slot,
    established: std::sync::Arc<tokio::sync::Semaphore>,
) {
    let span = tracing::info_span!("conn", %addr, peer = tracing::field::Empty, dir = "in");
    async move {
        let handshaking = crate::metrics::HANDSHAKING_IN.track();
        let handshake = handshake_in(&node, stream, addr);
        let result = tokio::select! {
            result = handshake => result,
            _ = slot.evicted() => {
                crate::metrics::handshake_failed(true, crate::metrics::HandshakeFailure::Evicted);
                tracing::debug!(%addr, "handshake closed to make room for a newer connection (--max-handshakes, --max-handshakes-per-ip)");
                return;
            }
        };
        // Authenticated (or failed): out of the handshake budget either way.
        drop(slot);
        drop(handshaking);
        use crate::metrics::{HandshakeFailure as F, handshake_failed};
        let Some(result) = result else { return };
        match result {
            Ok((stream, peer_node)) => {
                let peer = peer_node.name.to_string();
                tracing::Span::current().record("peer", tracing::field::display(&peer));
                if peer_node.flags.contains(erl_dist::DistributionFlags::NAME_ME) {
                    tracing::info!(%addr, %peer, "named a peer that asked for a dynamic name (NAME_ME)");
                }
                let Ok(permit) = established.try_acquire_owned() else {
                    tracing::warn!(
                        %addr,
                        %peer,
                        limit = node.config().max_connections,
                        "too many connections (--max-connections): closing this one after its handshake"
                    );
                    handshake_failed(true, F::TooManyConnections);
                    return;
                };
                let flags = handshake::negotiated(peer_node.flags);
                let up = crate::metrics::CONNECTIONS_IN.track();
                stream.serve(node, peer, flags).await;
                drop(up);
                drop(permit);
            }
            Err(handshake::Error::WrongCookie { node }) => {
                handshake_failed(true, F::WrongCookie);
                let node = node.as_deref().unwrap_or("?");
                tracing::warn!(%addr, %node, "handshake rejected: the peer has a different cookie");
            }
            Err(handshake::Error::Simultaneous) => {
                tracing::debug!("simultaneous connect: keeping our own attempt");
            }
            Err(
                error @ (handshake::Error::MissingFlags { .. }
                | handshake::Error::OwnName(_)
                | handshake::Error::BadDynamicHost { .. }
                | handshake::Error::NoDynamicName),
            ) => {
                handshake_failed(true, F::NotAllowed);
                tracing::warn!(%addr, %error, "handshake refused (not_allowed)");
            }
            Err(error) => {
                let timed_out = matches!(error, handshake::Error::Timeout(_));
                handshake_failed(true, if timed_out { F::Timeout } else { F::Other });
                tracing::info!(%addr, %error, "handshake failed");
            }
        }
    }
    .instrument(span)
    .await
}

/// The acceptor's handshake, TLS included. `None` when it failed in a way already logged.
async fn handshake_in(
    node: &Node,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<Result<(Established, erl_dist::node::PeerNode), handshake::Error>> {
    let _ = stream.set_nodelay(true);
    let cfg = node.config();
    let local: NodeName = cfg.node_name.parse().ok()?;
    let local_str = cfg.node_name.clone();
    let manager = node.manager();
    let decide = |peer: &NodeName| match manager.admit(&local_str, &peer.to_string()) {
        manager::Admission::Ok => erl_dist::handshake::HandshakeStatus::Ok,
        manager::Admission::OkSimultaneous => erl_dist::handshake::HandshakeStatus::OkSimultaneous,
        manager::Admission::Nok => erl_dist::handshake::HandshakeStatus::Nok,
    };
    // A name given to a NAME_ME peer must not be one a connection (or a dial) already has:
    // registering it would replace that connection.
    let in_use = |candidate: &str| {
        manager.is_up(candidate) || manager.admit(&local_str, candidate) != manager::Admission::Ok
    };
    let (creation, cookie) = (node.creation(), cfg.cookie.as_str());
    let result = match &cfg.tls {
        None => handshake::accept_with(
            stream,
            &local,
            creation,
            cookie,
            cfg.handshake_timeout,
            decide,
            in_use,
            cfg.visible,
        )
        .await
        .map(|(stream, peer_node)| (Established::Plain(stream), peer_node)),
        Some(tls) => {
            let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
            let stream = match tokio::time::timeout_at(deadline, tls.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) if error.is_refusal() => {
                    // A plain-TCP peer, an unknown CA, no client certificate, ...: refused
                    // credentials, logged as a wrong cookie is.
                    crate::metrics::handshake_failed(true, crate::metrics::HandshakeFailure::Tls);
                    tracing::warn!(%addr, %error, "TLS handshake failed");
                    return None;
                }
                Ok(Err(error)) => {
                    // The peer went away (closed, reset) before TLS was up.
                    crate::metrics::handshake_failed(true, crate::metrics::HandshakeFailure::Tls);
                    tracing::info!(%addr, %error, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    crate::metrics::handshake_failed(
                        true,
                        crate::metrics::HandshakeFailure::Timeout,
                    );
                    tracing::info!(%addr, "TLS handshake timed out");
                    return None;
                }
            };
            // Only once TLS is up: a peer that never finishes it costs one fd, not three.
            let pair = match tokio::net::UnixStream::pair() {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%addr, %error, "cannot bridge a TLS connection");
                    return None;
                }
            };
            handshake::accept_with(
                tls::Packet4::new(stream),
                &local,
                creation,
                cookie,
                remaining(deadline),
                decide,
                in_use,
                cfg.visible,
            )
            .await
            .map(|(stream, peer_node)| {
                (
                    Established::Tls(Box::new(stream.into_inner().into()), pair),
                    peer_node,
                )
            })
        }
    };
    Some(result)
}

/// Time left until `deadline` (at least 1 ms, so an expired deadline still times out cleanly).
fn remaining(deadline: tokio::time::Instant) -> Duration {
    deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(1))
}

/// Default tick interval for a `net_ticktime`: a quarter of it.
pub fn tick_interval(net_ticktime: Duration) -> Duration {
    net_ticktime / 4
}
