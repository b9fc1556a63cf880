//! One established connection: a reader (frames -> [`crate::node::router`], then one write of
//! the replies they produced) and a writer task (frames from elsewhere, the rest of writes the
//! socket could not take at once, ticks when idle), sharing the peer's bounded [`Outbox`].
//!
//! The reader drops a peer silent for `net_ticktime`; the writer writes a tick (a zero-length
//! frame) when it wrote nothing for a quarter of it. Any bad frame (oversized, undecodable,
//! unsupported) closes this connection only, with one log line saying why.

use super::PASS_THROUGH;
use super::fast::Fast;
use super::manager::ConnHandle;
use super::outbox::{self, Outbox};
use super::stream::RawStream;
use crate::etf::{self, Limits};
use crate::node::unrepresentable;
use crate::node::{Node, RawMessage, RawOwned, Signal, router};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A tick from the peer is answered with one when we have not written for this long.
const PEER_TICK_ANSWER_AFTER: Duration = Duration::from_millis(500);
/// The read buffer's normal size.
const READ_CHUNK: usize = 64 * 1024;
/// The most the read buffer grows by at once while a big frame arrives.
const GROW_CHUNK: usize = 1024 * 1024;
/// A read buffer above this is shrunk back once it is drained.
const BIG_BUFFER: usize = 4 * 1024 * 1024;

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
    Term(#[from] etf::TermError),
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
pub async fn serve<S: RawStream>(node: Node, stream: S, peer: String, flags: DistributionFlags) {
    let cancel = node.shutdown_token().child_token();
    // Room for two of the largest messages plus slack: a reply may carry a value that big.
    let max_out = node
        .config()
        .max_message_size
        .saturating_mul(2)
        .saturating_add(1 << 20);
    let (handle, replaced) = node
        .manager()
        .register(&peer, flags, max_out, cancel.clone());
    if let Some(old) = replaced {
        tracing::info!("peer reconnected: replacing its old connection");
        old.close();
        node.node_down(&peer);
    }
    // Monitors and messages that waited for this peer's flags go out now, shaped for them.
    node.node_up(&peer, flags);
    tracing::info!(
        flags = format_args!("{:#x}", flags.bits()),
        thread = std::thread::current().name().unwrap_or("?"),
        "connected"
    );
    let stream = Arc::new(stream);
    let tick = super::tick_interval(node.config().net_ticktime);
    // The reader tells the writer when the peer ticks, so a peer with a shorter net_ticktime
    // than ours still hears from us in time.
    let (ticked_tx, ticked_rx) = mpsc::channel::<()>(1);
    let writer = tokio::spawn(write_loop(
        handle.outbox.clone(),
        stream.clone(),
        ticked_rx,
        cancel.clone(),
        tick,
    ));
    let result = read_loop(&node, &stream, &handle, &peer, ticked_tx, cancel.clone()).await;
    cancel.cancel();
    let _ = writer.await;
    crate::metrics::disconnected(match &result {
        Err(Error::Closed) => crate::metrics::Disconnect::Closed,
        Err(Error::TickTimeout(_)) => crate::metrics::Disconnect::TickTimeout,
        Err(Error::TooLarge { .. }) => crate::metrics::Disconnect::TooLarge,
        Err(Error::FrameType(_) | Error::Term(_) | Error::Control(_) | Error::Trailing(_)) => {
            crate::metrics::Disconnect::BadFrame
        }
        Err(Error::Io(_)) => crate::metrics::Disconnect::Io,
        Err(Error::Shutdown) | Ok(()) => crate::metrics::Disconnect::Shutdown,
    });
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

async fn read_loop<S: RawStream>(
    node: &Node,
    stream: &S,
    conn: &ConnHandle,
    peer: &str,
    ticked: mpsc::Sender<()>,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let cfg = node.config();
    let max = cfg.max_message_size;
    let silence = cfg.net_ticktime;
    let limits = Limits {
        max_depth: cfg.max_term_depth,
        max_terms: cfg.max_terms_per_message,
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
    let busy_wait = cfg.busy_wait;
    let mut hot = false;
    // When the bytes completing the frames in `buf` were read (metrics on only): the start
    // of kvnode_kv_request_duration_seconds for the KV requests among them.
    let mut read_at = None;
    loop {
        // Handle every complete frame in the buffer; replies to this peer collect in its
        // outbox and go out in one write below.
        let need;
        // A process this peer's messages went to is congested: stop reading until it is not.
        let mut paused = None;
        {
            let _reading = outbox::reading(conn.id);
            let _received = ReceivedGuard::set(read_at);
            // Nothing from before this batch (deliveries from other tasks on this thread).
            let _ = crate::node::take_congested();
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
                handle_frame(node, peer, conn, &avail[4..4 + len], &limits)?;
                crate::metrics::MESSAGES_IN.inc();
                start += 4 + len;
                if let Some(pressure) = crate::node::take_congested() {
                    paused = Some(pressure);
                    need = 0;
                    break;
                }
            }
        }
        if conn.outbox.has_data() && !conn.outbox.flush_now(stream)? {
            conn.outbox.notify(); // the writer task finishes what the socket did not take
        }
        // Keep the unread bytes at the front; never keep a big buffer after a big message.
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        if buf.capacity() > BIG_BUFFER && buf.len() < READ_CHUNK {
            buf.shrink_to(READ_CHUNK.max(buf.len()));
        }
        if let Some(pressure) = paused {
            // Backpressure: the frames already read wait in `buf`, the rest in the socket and
            // the peer's buffers (a BEAM peer then suspends its senders). Never blocks the
            // thread: other connections on it go on.
            let since = std::time::Instant::now();
            node.note_backpressure_pause();
            tokio::select! {
                _ = &mut cancelled => return Err(Error::Shutdown),
                _ = pressure.relieved() => {}
            }
            tracing::trace!(
                waited_us = since.elapsed().as_micros() as u64,
                "resumed reading after backpressure"
            );
            // Not reading was our choice, not the peer's silence.
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + silence);
            hot = false;
            continue;
        }
        // Grow toward what the next frame needs, a chunk at a time: an announced length is not
        // trusted with memory before its bytes arrive.
        buf.reserve(need.clamp(READ_CHUNK, GROW_CHUNK));
        let waiting_since = std::time::Instant::now();
        let read = 'read: {
            // While traffic is hot, poll for the next bytes a little before sleeping: on a VM
            // going to sleep and being woken costs more than a call (`--busy-wait-us`).
            if hot {
                loop {
                    match stream.try_read_buf(&mut buf) {
                        Ok(n) => break 'read n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(Error::Io(e)),
                    }
                    if waiting_since.elapsed() >= busy_wait {
                        break;
                    }
                    // Lets the thread's other connections run meanwhile.
                    tokio::task::yield_now().await;
                }
            }
            loop {
                tokio::select! {
                    _ = &mut cancelled => return Err(Error::Shutdown),
                    _ = &mut deadline => return Err(Error::TickTimeout(silence)),
                    r = stream.readable() => r?,
                };
                match stream.try_read_buf(&mut buf) {
                    Ok(n) => break 'read n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(Error::Io(e)),
                }
            }
        };
        // Hot: the bytes came sooner than the busy-wait budget, so polling would have caught
        // them without a sleep. A connection with gaps longer than that never polls.
        hot = !busy_wait.is_zero() && waiting_since.elapsed() < busy_wait;
        if read == 0 {
            return Err(Error::Closed);
        }
        crate::metrics::BYTES_IN.add(read as u64);
        read_at = crate::metrics::enabled().then(std::time::Instant::now);
        deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + silence);
    }
}

/// Marks the frames handled on this thread as read at the given instant until it drops.
struct ReceivedGuard(Option<std::time::Instant>);

impl ReceivedGuard {
    #[inline]
    fn set(at: Option<std::time::Instant>) -> Self {
        ReceivedGuard(crate::metrics::set_received(at))
    }
}

impl Drop for ReceivedGuard {
    #[inline]
    fn drop(&mut self) {
        crate::metrics::set_received(self.0);
    }
}

/// Validates a frame body and handles it: the common `GenServer.call` messages through
/// [`super::fast`], everything else through the full decoder and the router.
fn handle_frame(
    node: &Node,
    peer: &str,
    conn: &ConnHandle,
    body: &[u8],
    limits: &Limits,
) -> Result<(), Error> {
    let (ctrl_len, rest) = validate_frame(body, limits)?;
    match super::fast::classify(rest, ctrl_len, limits) {
        Fast::Demonitor {
            reference,
            ref_node,
        } if ref_node == peer => {
            node.demonitor_incoming(peer, &reference);
            Ok(())
        }
        Fast::MonitorName {
            name,
            watcher,
            watcher_node,
            reference,
            ref_node,
        } if watcher_node == peer
            && ref_node == peer
            && conn
                .flags
                .contains(erl_dist::DistributionFlags::DIST_MONITOR)
            && node.monitor_incoming(
                peer,
                crate::node::MonitorTarget::Name(name),
                reference,
                watcher,
                None,
            ) =>
        {
            Ok(())
        }
        Fast::RegSend { name, message } => {
            let Some(target) = node.whereis_target(name) else {
                tracing::debug!(name = %etf::text::name(name), "message to an unregistered name: dropped");
                return Ok(());
            };
            let raw = RawMessage {
                peer,
                conn,
                message,
                limits,
            };
            if !target.dispatch_raw(node, &raw) {
                // The process could not take it as bytes: decode it and deliver it as a term.
                let bytes = message.len();
                let message = match etf::decode(message, limits) {
                    Ok((message, _)) => message,
                    // A valid term eetf cannot hold (an OTP 29 native record, a map with
                    // 0.0 and -0.0 keys): delivered as its bytes, never changed (a busy
                    // GenServer serves it from them when its turn comes); the peer is fine.
                    Err(error) if unrepresentable::is_unrepresentable(&error) => {
                        let raw = RawOwned::new(peer, message, limits);
                        target.dispatch_weighted(node, Signal::Raw(raw), bytes);
                        return Ok(());
                    }
                    Err(error) => return Err(error.into()),
                };
                target.dispatch_weighted(node, Signal::Message(message), bytes);
            }
            Ok(())
        }
        _ => {
            // ALTACT_SIG_SEND (op 37), which erl_dist does not know.
            let decoded = super::altact::parse(rest, ctrl_len, limits).and_then(|altact| {
                Ok(match altact {
                    Some(signal) => Err(signal),
                    None => Ok(decode_message(rest, ctrl_len, limits)?),
                })
            });
            match decoded {
                Ok(Err(signal)) => {
                    crate::metrics::ALTACT_IN.inc();
                    router::handle_altact(node, peer, signal);
                }
                Ok(Ok(message)) => router::handle(node, peer, message),
                // A valid term eetf cannot hold unchanged: the signal costs only itself.
                Err(Error::Term(error)) if unrepresentable::is_unrepresentable(&error) => {
                    unrepresentable::handle_frame(node, peer, rest, ctrl_len, limits, &error)
                }
                Err(error) => return Err(error),
            }
            Ok(())
        }
    }
}

/// A SPAWN_REQUEST's argument list of small integers arrives as a string (STRING_EXT: OTP
/// encodes `[1, 2]` so), which erl_dist's decoder refuses as "not a list", closing the
/// connection (`:erlang.spawn(kv, m, f, [1])`). Decodes such a request here, with the
/// arguments as a proper list; None when the frame is anything else.
fn spawn_request_with_string_args(
    rest: &[u8],
    ctrl_len: usize,
    limits: &Limits,
) -> Result<Option<Message>, Error> {
    use erl_dist::message::{SpawnRequest, SpawnRequestTt};
    use erl_dist::term::{FixInteger, List, Mfa, Term};
    const SMALL_TUPLE_EXT: u8 = 104;
    const SMALL_INTEGER_EXT: u8 = 97;
    const STRING_EXT: u8 = 107;
    // {29, ...} (6 elements) or {30, ...} (7, with a trace token), then a string payload.
    let spawn = matches!(
        rest.get(1..5),
        Some(
            [SMALL_TUPLE_EXT, 6, SMALL_INTEGER_EXT, 29]
                | [SMALL_TUPLE_EXT, 7, SMALL_INTEGER_EXT, 30]
        )
    );
    if !spawn || rest.get(ctrl_len + 1) != Some(&STRING_EXT) {
        return Ok(None);
    }
    let bad = |what: &str| Error::Control(format!("malformed SPAWN_REQUEST: {what}"));
    let Term::ByteList(bytes) = etf::decode(&rest[ctrl_len..], limits)?.0 else {
        return Ok(None);
    };
    let arg_list = List::from(
        bytes
            .bytes
            .iter()
            .map(|&b| FixInteger::from(i32::from(b)).into())
            .collect::<Vec<Term>>(),
    );
    let Term::Tuple(control) = etf::decode(&rest[..ctrl_len], limits)?.0 else {
        return Err(bad("control is not a tuple"));
    };
    let mut it = control.elements.into_iter().skip(1);
    let (
        Some(Term::Reference(req_id)),
        Some(Term::Pid(from_pid)),
        Some(Term::Pid(group_leader)),
        Some(Term::Tuple(mfa)),
        Some(Term::List(opt_list)),
    ) = (it.next(), it.next(), it.next(), it.next(), it.next())
    else {
        return Err(bad("unexpected element types"));
    };
    let mut mfa = mfa.elements.into_iter();
    let (Some(Term::Atom(module)), Some(Term::Atom(function)), Some(Term::FixInteger(arity))) =
        (mfa.next(), mfa.next(), mfa.next())
    else {
        return Err(bad("the MFA is not {atom, atom, arity}"));
    };
    let mfa = Mfa {
        module,
        function,
        arity,
    };
    Ok(Some(match it.next() {
        None => Message::SpawnRequest(SpawnRequest {
            req_id: *req_id,
            from_pid,
            group_leader,
            mfa,
            opt_list,
            arg_list,
        }),
        Some(trace_token) => Message::SpawnRequestTt(SpawnRequestTt {
            req_id: *req_id,
            from_pid,
            group_leader,
            mfa,
            opt_list,
            trace_token,
            arg_list,
        }),
    }))
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
    // The control tuple and the message share one term budget (--max-terms-per-message).
    let mut terms = 0;
    let ctrl_len = etf::validate_versioned_counted(rest, limits, &mut terms)?;
    let mut used = ctrl_len;
    if used < rest.len() {
        used += etf::validate_versioned_counted(&rest[used..], limits, &mut terms)?;
    }
    if used != rest.len() {
        return Err(Error::Trailing(rest.len() - used));
    }
    Ok((ctrl_len, rest))
}

/// Decodes a frame body (after the length): pass-through byte, control message, payload.
/// An ALTACT_SIG_SEND (op 37) comes as the classic message that does the same (SEND_SENDER,
/// ALIAS_SEND, REG_SEND, PAYLOAD_EXIT2, or their `*_TT` forms); an exit signal to an alias or
/// a name, which has none, is an error here (a connection delivers it all the same).
pub fn decode_frame(body: &[u8], limits: &Limits) -> Result<Message, Error> {
    let (ctrl_len, rest) = validate_frame(body, limits)?;
    if let Some(signal) = super::altact::parse(rest, ctrl_len, limits)? {
        return signal.into_message().map_err(|_| {
            Error::Control(
                "ALTACT_SIG_SEND exit signal to an alias or a name: no classic equivalent"
                    .to_owned(),
            )
        });
    }
    decode_message(rest, ctrl_len, limits)
}

/// Decodes a validated frame's control message and payload with erl_dist (`rest`: the
/// bytes after the pass-through byte).
fn decode_message(rest: &[u8], ctrl_len: usize, limits: &Limits) -> Result<Message, Error> {
    if let Some(message) = spawn_request_with_string_args(rest, ctrl_len, limits)? {
        return Ok(message);
    }
    // erl_dist decodes with eetf: Latin-1 atoms rewritten, terms it would change refused.
    let checked = etf::checked_for_eetf(rest, limits)?;
    let mut reader: &[u8] = &checked;
    // erl_dist's errors carry the offending term: describe it in bounded text (never its
    // Display, which prints a 16 MB binary whole and converts a bignum to decimal in
    // quadratic time), with an excerpt of the control message's bytes.
    let message = Message::read_from(&mut reader).map_err(|e| {
        Error::Control(format!(
            "{} (control message of {})",
            etf::text::RecvErrorText(&e),
            etf::excerpt(&rest[..ctrl_len])
        ))
    })?;
    if !reader.is_empty() {
        return Err(Error::Trailing(reader.len()));
    }
    Ok(message)
}

async fn write_loop<S: RawStream>(
    outbox: Arc<Outbox>,
    stream: Arc<S>,
    mut ticked: mpsc::Receiver<()>,
    cancel: CancellationToken,
    tick: Duration,
) {
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => {
                // Best effort: write what is queued (replies already computed) before closing.
                let _ = tokio::time::timeout(Duration::from_secs(2), outbox.flush_all(&stream)).await;
                return;
            }
            _ = outbox.woken() => outbox.flush_all(&stream).await,
            Some(()) = ticked.recv() => {
                // Answer a tick unless we wrote recently.
                if outbox.idle_for() >= PEER_TICK_ANSWER_AFTER && !outbox.has_data() {
                    write_tick(&outbox, &stream).await
                } else {
                    Ok(())
                }
            }
            _ = ticker.tick() => {
                if outbox.idle_for() >= tick && !outbox.has_data() {
                    write_tick(&outbox, &stream).await
                } else {
                    Ok(())
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "write failed");
            cancel.cancel();
            return;
        }
    }
}

async fn write_tick<S: RawStream>(outbox: &Outbox, stream: &S) -> std::io::Result<()> {
    if outbox.push(&[0, 0, 0, 0]).is_err() {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    outbox.flush_all(stream).await
}
