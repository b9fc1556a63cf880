//! One established connection: a reader (frames -> [`crate::node::router`]) and a writer
//! (the peer's bounded queue -> socket, many frames per write, ticks when idle).
//!
//! The reader drops a peer silent for `net_ticktime`; the writer writes a tick (a zero-length
//! frame) when it wrote nothing for a quarter of it. Any bad frame (oversized, undecodable,
//! unsupported) closes this connection only, with one log line saying why.

use super::{Frame, PASS_THROUGH};
use crate::node::{Node, router};
use crate::term::{self, Limits};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Frames waiting for the writer; a peer that lets more pile up is disconnected.
pub const OUTBOUND_QUEUE: usize = 65_536;
/// A tick from the peer is answered with one when we have not written for this long.
const PEER_TICK_ANSWER_AFTER: Duration = Duration::from_millis(500);
/// Small frames are gathered into one write up to this size.
const BATCH_BYTES: usize = 256 * 1024;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the socket.
    #[error("peer closed the connection")]
    Closed,
    /// Nothing (not even a tick) arrived for `net_ticktime`.
    #[error("peer silent for {0:?} (tick timeout)")]
    TickTimeout(Duration),
    /// A frame announced more bytes than `--max-message-size`.
    #[error("frame of {len} bytes exceeds the maximum of {max} (--max-message-size)")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame does not start with the pass-through byte.
    #[error("unsupported frame type {0} (atom cache / fragments were not negotiated)")]
    FrameType(u8),
    /// The frame's terms are malformed or hostile.
    #[error("malformed term: {0}")]
    Term(#[from] term::TermError),
    /// erl_dist could not make a control message of it.
    #[error("bad control message: {0}")]
    Control(String),
    /// Bytes left after the control message and its payload.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
}

/// Registers the connection with the manager and serves it until it ends; then runs the
/// node-down cleanup.
pub async fn serve(node: Node, stream: TcpStream, peer: String, flags: DistributionFlags) {
    let (tx, rx) = mpsc::channel::<Frame>(OUTBOUND_QUEUE);
    let cancel = node.shutdown_token().child_token();
    let (handle, replaced) = node.manager().register(&peer, flags, tx, cancel.clone());
    if let Some(old) = replaced {
        tracing::info!("peer reconnected: replacing its old connection");
        old.close();
        node.node_down(&peer).await;
    }
    tracing::info!(flags = format_args!("{:#x}", flags.bits()), "connected");
    let (rd, wr) = stream.into_split();
    let tick = super::tick_interval(node.config().net_ticktime);
    // The reader tells the writer when the peer ticks, so a peer with a shorter net_ticktime
    // than ours still hears from us in time.
    let (ticked_tx, ticked_rx) = mpsc::channel::<()>(1);
    let writer = tokio::spawn(write_loop(wr, rx, ticked_rx, cancel.clone(), tick));
    let result = read_loop(&node, rd, &peer, ticked_tx, cancel.clone()).await;
    cancel.cancel();
    let _ = writer.await;
    match &result {
        Err(Error::Closed) | Err(Error::Shutdown) => {
            tracing::info!(reason = %result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(), "disconnected")
        }
        Err(e) => tracing::warn!(reason = %e, "disconnected"),
        Ok(()) => tracing::info!("disconnected"),
    }
    if node.manager().unregister(&peer, handle.id) {
        node.node_down(&peer).await;
    }
}

async fn read_loop(
    node: &Node,
    rd: OwnedReadHalf,
    peer: &str,
    ticked: mpsc::Sender<()>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let cfg = node.config();
    let max = cfg.max_message_size;
    let silence = cfg.net_ticktime;
    let limits = Limits {
        max_depth: cfg.max_term_depth,
        ..Limits::default()
    };
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut body: Vec<u8> = Vec::new();
    loop {
        let len = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Shutdown),
            r = tokio::time::timeout(silence, rd.read_u32()) => match r {
                Err(_) => return Err(Error::TickTimeout(silence)),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Error::Closed),
                Ok(Err(e)) => return Err(Error::Io(e)),
                Ok(Ok(len)) => len as usize,
            },
        };
        if len == 0 {
            let _ = ticked.try_send(());
            continue;
        }
        if len > max {
            return Err(Error::TooLarge { len, max });
        }
        body.clear();
        // Grow the buffer as bytes arrive rather than trusting the announced length up front.
        let mut limited = (&mut rd).take(len as u64);
        let read = tokio::select! {
            _ = cancel.cancelled() => return Err(Error::Shutdown),
            r = tokio::time::timeout(silence, limited.read_to_end(&mut body)) => match r {
                Err(_) => return Err(Error::TickTimeout(silence)),
                Ok(r) => r?,
            },
        };
        if read < len {
            return Err(Error::Closed);
        }
        let message = decode_frame(&body, &limits)?;
        router::handle(node, peer, message).await;
        if body.capacity() > 1024 * 1024 {
            body = Vec::new(); // do not keep a big buffer around after a big message
        }
    }
}

/// Decodes a frame body (after the length): pass-through byte, control message, payload.
pub fn decode_frame(body: &[u8], limits: &Limits) -> Result<Message, Error> {
    let (&kind, rest) = body.split_first().ok_or(Error::Closed)?;
    if kind != PASS_THROUGH {
        return Err(Error::FrameType(kind));
    }
    // Validate everything before eetf sees it: eetf panics or over-allocates on hostile bytes.
    let mut used = term::validate_versioned(rest, limits)?;
    if used < rest.len() {
        used += term::validate_versioned(&rest[used..], limits)?;
    }
    if used != rest.len() {
        return Err(Error::Trailing(rest.len() - used));
    }
    let mut reader = rest;
    let message = Message::read_from(&mut reader).map_err(|e| Error::Control(e.to_string()))?;
    if !reader.is_empty() {
        return Err(Error::Trailing(reader.len()));
    }
    Ok(message)
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Frame>,
    mut ticked: mpsc::Receiver<()>,
    cancel: CancellationToken,
    tick: Duration,
) {
    let mut last_write = Instant::now();
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                // Best effort: flush what is queued (replies already computed) before closing.
                rx.close();
                let drain = async {
                    while let Some(frame) = rx.recv().await {
                        wr.write_all(&frame).await?;
                    }
                    wr.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
                let _ = wr.shutdown().await;
                return;
            }
            frame = rx.recv() => {
                let Some(frame) = frame else { return };
                let result = async {
                    write_frame(&mut wr, &mut batch, frame).await?;
                    while let Ok(frame) = rx.try_recv() {
                        write_frame(&mut wr, &mut batch, frame).await?;
                    }
                    if !batch.is_empty() {
                        wr.write_all(&batch).await?;
                        batch.clear();
                    }
                    Ok::<(), std::io::Error>(())
                }.await;
                if let Err(error) = result {
                    tracing::debug!(%error, "write failed");
                    cancel.cancel();
                    return;
                }
                last_write = Instant::now();
            }
            Some(()) = ticked.recv() => {
                // Answer a tick unless we wrote recently.
                if last_write.elapsed() >= PEER_TICK_ANSWER_AFTER {
                    if wr.write_all(&[0, 0, 0, 0]).await.is_err() {
                        cancel.cancel();
                        return;
                    }
                    last_write = Instant::now();
                }
            }
            _ = ticker.tick() => {
                if last_write.elapsed() >= tick {
                    if wr.write_all(&[0, 0, 0, 0]).await.is_err() {
                        cancel.cancel();
                        return;
                    }
                    last_write = Instant::now();
                }
            }
        }
    }
}

async fn write_frame(
    wr: &mut OwnedWriteHalf,
    batch: &mut Vec<u8>,
    frame: Frame,
) -> std::io::Result<()> {
    if batch.len() + frame.len() > BATCH_BYTES {
        if !batch.is_empty() {
            wr.write_all(batch).await?;
            batch.clear();
        }
        if frame.len() > BATCH_BYTES {
            return wr.write_all(&frame).await;
        }
    }
    batch.extend_from_slice(&frame);
    Ok(())
}
