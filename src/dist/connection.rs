//! One established connection: a reader (frames -> [`crate::node::router`]) and a writer
//! (the peer's bounded queue -> socket, many frames per write, ticks when idle).
//!
//! The reader drops a peer silent for `net_ticktime`; the writer writes a tick (a zero-length
//! frame) when it wrote nothing for a quarter of it. Any bad frame (oversized, undecodable,
//! unsupported) closes this connection only, with one log line saying why.

use super::fast::Fast;
use super::{Frame, PASS_THROUGH};
use crate::node::{Node, router};
use crate::term::{self, Limits};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Frames waiting for the writer; a peer that lets more pile up is disconnected.
pub const OUTBOUND_QUEUE: usize = 65_536;
/// A tick from the peer is answered with one when we have not written for this long.
const PEER_TICK_ANSWER_AFTER: Duration = Duration::from_millis(500);
/// The read buffer's normal size.
const READ_CHUNK: usize = 64 * 1024;
/// The most the read buffer grows by at once while a big frame arrives.
const GROW_CHUNK: usize = 1024 * 1024;
/// A read buffer above this is shrunk back once it is drained.
const BIG_BUFFER: usize = 4 * 1024 * 1024;
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
        node.node_down(&peer);
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
        node.node_down(&peer);
    }
}

async fn read_loop(
    node: &Node,
    mut rd: OwnedReadHalf,
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
    // One buffer; every read takes whatever the socket has (often many frames), and every
    // complete frame in it is handled before the next read. The tick deadline and the
    // cancellation future live across iterations, so a frame costs no timer or waker setup.
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut start = 0usize;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let deadline = tokio::time::sleep(silence);
    tokio::pin!(deadline);
    loop {
        // Handle every complete frame in the buffer.
        let need;
        loop {
            let avail = &buf[start..];
            if avail.len() < 4 {
                need = 4 - avail.len();
                break;
            }
            let len = u32::from_be_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
            if len == 0 {
                start += 4;
                let _ = ticked.try_send(());
                continue;
            }
            if len > max {
                return Err(Error::TooLarge { len, max });
            }
            if avail.len() < 4 + len {
                need = 4 + len - avail.len();
                break;
            }
            handle_frame(node, peer, &avail[4..4 + len], &limits)?;
            start += 4 + len;
        }
        // Keep the unread bytes at the front; never keep a big buffer after a big message.
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        if buf.capacity() > BIG_BUFFER && buf.len() < READ_CHUNK {
            buf.shrink_to(READ_CHUNK.max(buf.len()));
        }
        // Grow toward what the next frame needs, a chunk at a time: an announced length is not
        // trusted with memory before its bytes arrive.
        buf.reserve(need.clamp(READ_CHUNK, GROW_CHUNK));
        let read = tokio::select! {
            _ = &mut cancelled => return Err(Error::Shutdown),
            _ = &mut deadline => return Err(Error::TickTimeout(silence)),
            r = rd.read_buf(&mut buf) => r?,
        };
        if read == 0 {
            return Err(Error::Closed);
        }
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + silence);
    }
}

/// Validates a frame body and handles it: the common `GenServer.call` messages through
/// [`super::fast`], everything else through the full decoder and the router.
fn handle_frame(node: &Node, peer: &str, body: &[u8], limits: &Limits) -> Result<(), Error> {
    let (ctrl_len, rest) = validate_frame(body, limits)?;
    match super::fast::classify(rest, ctrl_len, limits) {
        Fast::Demonitor => Ok(()),
        Fast::MonitorName(name) if node.whereis(name).is_some() => Ok(()),
        Fast::RegSend { name, message } => {
            let (message, _) = term::decode(message, limits)?;
            router::deliver_to_name(node, name, message);
            Ok(())
        }
        _ => {
            router::handle(node, peer, decode_frame(body, limits)?);
            Ok(())
        }
    }
}

/// Checks a frame body: the pass-through byte, then a valid control term and at most one
/// valid payload term, nothing after. Returns the control term's length and the bytes after
/// the pass-through byte.
fn validate_frame<'a>(body: &'a [u8], limits: &Limits) -> Result<(usize, &'a [u8]), Error> {
    let (&kind, rest) = body.split_first().ok_or(Error::Closed)?;
    if kind != PASS_THROUGH {
        return Err(Error::FrameType(kind));
    }
    // Validate everything before eetf sees it: eetf panics or over-allocates on hostile bytes.
    let ctrl_len = term::validate_versioned(rest, limits)?;
    let mut used = ctrl_len;
    if used < rest.len() {
        used += term::validate_versioned(&rest[used..], limits)?;
    }
    if used != rest.len() {
        return Err(Error::Trailing(rest.len() - used));
    }
    Ok((ctrl_len, rest))
}

/// Decodes a frame body (after the length): pass-through byte, control message, payload.
pub fn decode_frame(body: &[u8], limits: &Limits) -> Result<Message, Error> {
    let (_, rest) = validate_frame(body, limits)?;
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
