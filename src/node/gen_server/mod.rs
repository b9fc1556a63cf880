//! The GenServer protocol on the kvnode side: a trait for servers and the loop that turns
//! mailbox signals into `handle_call` / `handle_cast` / `handle_info` / `handle_down`.
//!
//! Wire shapes and reply routing are in [`protocol`]: a call is `{:"$gen_call", {pid, tag},
//! request}`, answered with `{tag, reply}` (by ALIAS_SEND when the tag carries an alias and
//! the peer negotiated DFLAG_ALIAS); a cast is `{:"$gen_cast", request}`; anything else is an
//! info message.
//!
//! The fast path: a call or cast that arrives from a peer while the server is idle (nothing
//! queued, not suspended, no `:sys.statistics`) is handed to `handle_call` / `handle_cast`
//! as the request's bytes ([`Request::bytes`]), never decoded unless the server asks
//! ([`Request::decode`]). A reply given at once ([`CallResult::Reply`], or
//! [`CallResult::Encoded`] bytes copied as they are) is written straight into the outbox of
//! the connection the call came in on; if that outbox is over its bound, the host closes the
//! connection (a peer that does not read costs only its own connection). A call or cast
//! from a peer that cannot run at once (the server is busy in another thread, has signals
//! queued, is suspended or keeps `:sys.statistics`) waits in the mailbox as its bytes and is
//! served from them when its turn comes, exactly as the fast path serves it (so a request
//! holding a term eetf cannot hold, such as an OTP 29 native record, is served the same
//! whether the server was idle or not); an encoded reply then goes out as bytes too.
//! System and info messages are decoded and queued. So any server gets the fast path; a
//! server that reads [`Request::bytes`] also skips the decoding.
//!
//! System messages (`{:system, from, request}`, what `:sys` and `GenServer.stop` send) are
//! answered by the host for every server, as `sys.erl` answers them for a gen_server:
//! `get_state` ([`GenServer::system_state`]), `get_status` (gen_server's shape), `suspend`
//! and `resume` (while suspended, every other signal waits in the mailbox, in order),
//! `{:debug, ...}` (statistics kept; log and trace accepted, recording nothing), `{:terminate,
//! reason}` (replied `:ok`, then the process exits with `reason` and
//! [`GenServer::restart`] decides whether a fresh process takes its name), and
//! `{:error, {:unknown_system_msg, request}}` for anything else.
//!
//! Backpressure: signals that arrive while another thread is inside the handler wait in the
//! process's mailbox, bounded by `--max-mailbox-bytes` (what the messages took on the wire) and
//! [`MAX_MAILBOX_SIGNALS`]. Over either bound the process reports itself congested
//! ([`crate::node::Pressure`]) and the connection readers delivering to it stop reading their
//! peers until the mailbox has drained to half of both bounds. Nothing is dropped.

pub mod protocol;

use crate::node::{self, Dispatch, Mailbox, Node, Pressure, RawMessage, Signal};
use erl_dist::DistributionFlags;
use erl_dist::message::Message;
use erl_dist::term::{Atom, BigInteger, FixInteger, List, Pid, Reference, Term, Tuple};
pub use protocol::alias_of;
use protocol::{Incoming, classify, is_atom};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

/// Most signals a process's mailbox holds before the readers delivering to it pause (with
/// `--max-mailbox-bytes`, the mailbox bound). A flood of small messages reaches it first
/// (65,536 x [`MIN_SIGNAL_WEIGHT`] is 16 MiB of accounted bytes), which bounds what their
/// decoded terms take: a few hundred bytes each, tens of MiB in all.
pub const MAX_MAILBOX_SIGNALS: usize = 65_536;
/// Default `--max-mailbox-bytes`: 64 MiB of queued messages (as they were on the wire).
pub const DEFAULT_MAX_MAILBOX_BYTES: usize = 64 << 20;
/// What one queued signal counts for in the byte bound at least: a small message decodes to
/// several terms of 56 bytes each plus its queue slot, and in-node signals have no wire size.
pub const MIN_SIGNAL_WEIGHT: usize = 256;

/// A call's caller (its pid and tag) up to this many bytes in external format is kept
/// inline, so the fast path records who called without allocating; a bigger one (a node
/// name of 100+ bytes, an odd tag) is decoded at once.
pub const INLINE_CALLER_BYTES: usize = 192;

/// Who made a call, and the tag to echo. Cheap to clone and `'static`: keep it to answer
/// later ([`Ctx::reply`], [`Replier`]).
#[derive(Debug, Clone)]
pub struct Caller {
    who: Who,
    /// For in-node calls ([`Signal::Call`]): where the reply goes instead of a message.
    local: Option<LocalReply>,
    /// When the call's frame was read off its socket (metrics on, calls from peers only).
    received: Option<std::time::Instant>,
}

// The byte variant is inline on purpose: the fast path records a caller without allocating.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Who {
    Term {
        pid: Pid,
        tag: Term,
    },
    /// The pid's then the tag's external format (validated on arrival), decoded on first
    /// use.
    Bytes {
        bytes: [u8; INLINE_CALLER_BYTES],
        pid_len: u8,
        len: u8,
        /// The pid and tag, decoded on first use (boxed: the fast path moves a `Caller`
        /// around and seldom decodes it, so the slot is kept one word wide).
        decoded: OnceLock<Box<(Pid, Term)>>,
    },
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Term { pid, tag } => f
                .debug_struct("Term")
                .field("pid", pid)
                .field("tag", &crate::etf::summary(tag))
                .finish(),
            Who::Bytes { pid_len, len, .. } => f
                .debug_struct("Bytes")
                .field("pid_len", pid_len)
                .field("len", len)
                .finish_non_exhaustive(),
        }
    }
}

type LocalReply = std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Term>>>>;

/// Decodes one validated term (no version byte) without copying it.
fn decode_unversioned(bytes: &[u8]) -> Option<Term> {
    use std::io::Read;
    Term::decode([crate::etf::VERSION_MAGIC].as_slice().chain(bytes)).ok()
}

impl Caller {
    /// A remote (or local-process) caller: the reply is the message `{tag, reply}` to `pid`.
    pub fn new(pid: Pid, tag: Term) -> Self {
        Caller {
            who: Who::Term { pid, tag },
            local: None,
            received: crate::metrics::received(),
        }
    }

    /// The caller of a call read as bytes (validated with `limits`); None if its parts do
    /// not decode.
    #[inline]
    pub(crate) fn from_bytes(
        from: &protocol::From<'_>,
        limits: &crate::etf::Limits,
    ) -> Option<Self> {
        let len = from.pid.len() + from.tag.len();
        if len > INLINE_CALLER_BYTES {
            let decode = |b: &[u8]| {
                let mut v = Vec::with_capacity(b.len() + 1);
                v.push(crate::etf::VERSION_MAGIC);
                v.extend_from_slice(b);
                crate::etf::decode_exact(&v, limits).ok()
            };
            let Term::Pid(pid) = decode(from.pid)? else {
                return None;
            };
            return Some(Caller::new(pid, decode(from.tag)?));
        }
        let mut bytes = [0; INLINE_CALLER_BYTES];
        bytes[..from.pid.len()].copy_from_slice(from.pid);
        bytes[from.pid.len()..len].copy_from_slice(from.tag);
        Some(Caller {
            who: Who::Bytes {
                bytes,
                pid_len: from.pid.len() as u8,
                len: len as u8,
                decoded: OnceLock::new(),
            },
            local: None,
            received: crate::metrics::received(),
        })
    }

    /// When the call's frame was read off its socket (metrics on, calls from peers only).
    pub(crate) fn received(&self) -> Option<std::time::Instant> {
        self.received
    }

    /// The calling process.
    pub fn pid(&self) -> &Pid {
        match &self.who {
            Who::Term { pid, .. } => pid,
            Who::Bytes { .. } => &self.decoded().0,
        }
    }

    /// The call's tag, echoed verbatim in the reply.
    pub fn tag(&self) -> &Term {
        match &self.who {
            Who::Term { tag, .. } => tag,
            Who::Bytes { .. } => &self.decoded().1,
        }
    }

    /// A byte caller's pid and tag, decoded once. (Validated on arrival, so eetf decodes
    /// them; stay total regardless.)
    fn decoded(&self) -> &(Pid, Term) {
        static NONE: OnceLock<(Pid, Term)> = OnceLock::new();
        let Who::Bytes {
            bytes,
            pid_len,
            len,
            decoded,
        } = &self.who
        else {
            return NONE.get_or_init(|| (Pid::new("nonode@nohost", 0, 0, 0), List::nil().into()));
        };
        decoded.get_or_init(|| {
            let (pid_bytes, tag_bytes) = bytes[..usize::from(*len)].split_at(usize::from(*pid_len));
            let pid = match decode_unversioned(pid_bytes) {
                Some(Term::Pid(p)) => p,
                _ => {
                    tracing::warn!("a caller's pid does not decode");
                    Pid::new("nonode@nohost", 0, 0, 0)
                }
            };
            let tag = decode_unversioned(tag_bytes).unwrap_or_else(|| {
                tracing::warn!("a caller's tag does not decode");
                List::nil().into()
            });
            Box::new((pid, tag))
        })
    }
}

/// A request as a server receives it: the term inside a `$gen_call` or `$gen_cast`.
///
/// A request that arrived from a peer can be read as its external-format bytes
/// ([`Request::bytes`], no copy, no decoding: the fast path) or decoded on demand
/// ([`Request::decode`]). A request that was already decoded (because it waited in the mailbox,
/// or came from inside the node) has no bytes, only its term.
#[derive(Debug)]
pub struct Request<'a> {
    repr: RequestRepr<'a>,
}

#[derive(Debug)]
enum RequestRepr<'a> {
    Term(Term),
    Bytes {
        bytes: &'a [u8],
        limits: &'a crate::etf::Limits,
    },
}

/// A request's bytes could not be decoded (they were validated on arrival, so this means a
/// term the decoder does not support).
#[derive(Debug, thiserror::Error)]
#[error("cannot decode the request: {0}")]
pub struct DecodeError(String);

impl<'a> Request<'a> {
    /// A request made of a decoded term (for servers driven from inside the node, and tests).
    pub fn from_term(term: Term) -> Self {
        Request {
            repr: RequestRepr::Term(term),
        }
    }

    /// A request in external format (one term, no version byte), validated with `limits`.
    pub(crate) fn from_bytes(bytes: &'a [u8], limits: &'a crate::etf::Limits) -> Self {
        Request {
            repr: RequestRepr::Bytes { bytes, limits },
        }
    }

    /// The request's term in external format (without the version byte), when it arrived as
    /// bytes and has not been decoded.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self.repr {
            RequestRepr::Bytes { bytes, .. } => Some(bytes),
            RequestRepr::Term(_) => None,
        }
    }

    /// The request's term, when it is already decoded.
    pub fn as_term(&self) -> Option<&Term> {
        match &self.repr {
            RequestRepr::Term(t) => Some(t),
            RequestRepr::Bytes { .. } => None,
        }
    }

    /// The length of the term at the start of `part`, a slice of [`Request::bytes`] (to find
    /// the elements of a request without decoding it). None for a decoded request, or if
    /// `part` does not start with a term.
    pub fn term_len(&self, part: &[u8]) -> Option<usize> {
        let RequestRepr::Bytes { limits, .. } = &self.repr else {
            return None;
        };
        match crate::etf::skip::skip(part) {
            Some(len) => Some(len),
            None => crate::etf::validate_term(part, limits).ok(),
        }
    }

    /// Decodes one term found inside [`Request::bytes`] (a key, say), with the limits the
    /// request was validated with.
    pub fn decode_part(&self, part: &[u8]) -> Result<Term, DecodeError> {
        let default = crate::etf::Limits::default();
        let limits = match &self.repr {
            RequestRepr::Bytes { limits, .. } => limits,
            RequestRepr::Term(_) => &default,
        };
        let mut with_version = Vec::with_capacity(part.len() + 1);
        with_version.push(crate::etf::VERSION_MAGIC);
        with_version.extend_from_slice(part);
        crate::etf::decode_exact(&with_version, limits).map_err(|e| DecodeError(e.to_string()))
    }

    /// The request as a term, decoding it if it is still bytes.
    pub fn decode(self) -> Result<Term, DecodeError> {
        match self.repr {
            RequestRepr::Term(t) => Ok(t),
            RequestRepr::Bytes { bytes, limits } => {
                let mut with_version = Vec::with_capacity(bytes.len() + 1);
                with_version.push(crate::etf::VERSION_MAGIC);
                with_version.extend_from_slice(bytes);
                crate::etf::decode_exact(&with_version, limits)
                    .map_err(|e| DecodeError(e.to_string()))
            }
        }
    }
}

/// What [`GenServer::handle_call`] answers.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallResult<'a> {
    /// Reply with this term now.
    Reply(Term),
    /// Reply now with a term already in external format (one term, no version byte), for
    /// example a stored value: it is copied into the reply frame as it is, never decoded, so
    /// it must be one valid term (bytes taken from a [`Request`] or a validated store are).
    Encoded(&'a [u8]),
    /// No reply now: the server answers later with [`Ctx::reply`] or a [`Replier`].
    NoReply,
}

impl From<Term> for CallResult<'_> {
    fn from(term: Term) -> Self {
        CallResult::Reply(term)
    }
}

/// A server hosted on the node.
pub trait GenServer: Send + 'static {
    /// A `GenServer.call`: answer with [`CallResult::Reply`] (or [`CallResult::Encoded`]), or
    /// [`CallResult::NoReply`] to answer later with [`Ctx::reply`].
    fn handle_call(&mut self, ctx: &mut Ctx, from: &Caller, request: Request<'_>)
    -> CallResult<'_>;
    /// A `GenServer.cast`.
    fn handle_cast(&mut self, ctx: &mut Ctx, request: Request<'_>) {
        let _ = (ctx, request);
        tracing::debug!("cast ignored");
    }
    /// Any other message.
    fn handle_info(&mut self, ctx: &mut Ctx, message: Term) {
        let _ = ctx;
        tracing::debug!(message = %crate::etf::summary(&message), "info message ignored");
    }
    /// A monitor placed with [`Ctx::monitor`] fired.
    fn handle_down(&mut self, ctx: &mut Ctx, reference: Reference, pid: Pid, reason: Term) {
        let _ = (ctx, reference, pid, reason);
    }
    /// The term `:sys.get_state` answers (and `:sys.get_status` shows as the state).
    fn system_state(&self, ctx: &Ctx) -> Term {
        let _ = ctx;
        Atom::from("undefined").into()
    }
    /// The process is stopping with `reason` (`GenServer.stop`, `:sys.terminate`). Return
    /// the server that runs on as a fresh process (new pid, same registered name), as a
    /// supervisor restarts a permanent child; `None` ends the process for good. The default
    /// ends it.
    fn restart(&mut self, ctx: &mut Ctx, reason: &Term) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = (ctx, reason);
        None
    }
    /// Runs on the server [`GenServer::restart`] returned, in its new process, before
    /// anything is delivered to it.
    fn restarted(&mut self, ctx: &mut Ctx) {
        let _ = ctx;
    }
}

/// What a server can do while handling a message.
pub struct Ctx<'a> {
    node: &'a Node,
    pid: &'a Pid,
    pressure: &'a Arc<Pressure>,
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("pid", self.pid)
            .finish_non_exhaustive()
    }
}

/// A server's own congestion switch, from [`Ctx::congestion`]: cheap to clone and to keep
/// in threads the server hands work to.
#[derive(Clone)]
pub struct Congestion(Arc<Pressure>);

impl Congestion {
    /// Sets (`true`) or clears the server's congestion. Setting it again, or clearing it
    /// when clear, does nothing. It is one switch per server: a server with two queues of
    /// its own sets it while either is over its bound (clearing it when both are under).
    pub fn set(&self, congested: bool) {
        self.0.set(Pressure::SERVER, congested);
    }

    /// Whether the server is congested (by this switch or by its mailbox).
    pub fn is_congested(&self) -> bool {
        self.0.is_congested()
    }
}

impl std::fmt::Debug for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Congestion")
            .field("congested", &self.is_congested())
            .finish()
    }
}

impl Ctx<'_> {
    /// The node the server runs on.
    pub fn node(&self) -> &Node {
        self.node
    }

    /// The server's own pid.
    pub fn self_pid(&self) -> &Pid {
        self.pid
    }

    /// The server's own congestion switch: a server that queues work elsewhere (a disk
    /// writer, a worker pool) sets it while that queue is over its bound, and the node stops
    /// reading from the peers whose messages go to the server until it is cleared. The
    /// server's mailbox bound works the same way on its own.
    ///
    /// ```
    /// use kvnode::{CallResult, Caller, Congestion, Ctx, GenServer, Request};
    ///
    /// struct Writer {
    ///     congestion: Option<Congestion>,
    ///     queued: usize,
    /// }
    ///
    /// impl GenServer for Writer {
    ///     fn handle_call(&mut self, ctx: &mut Ctx, _: &Caller, _: Request<'_>) -> CallResult<'_> {
    ///         let congestion = self.congestion.get_or_insert_with(|| ctx.congestion());
    ///         self.queued += 1;
    ///         // Peers calling this server are not read while 1000 writes wait.
    ///         congestion.set(self.queued >= 1000);
    ///         CallResult::Reply(kvnode::term::Atom::from("ok").into())
    ///     }
    /// }
    /// ```
    pub fn congestion(&self) -> Congestion {
        Congestion(self.pressure.clone())
    }

    /// Sends `message` to `to` without waiting (a local process over its mailbox bound takes
    /// it anyway: mailboxes pause the connection readers delivering to them, never drop).
    pub fn send(&self, to: &Pid, message: Term) {
        send(self.node, to, message);
    }

    /// Answers a call made earlier (for servers that returned [`CallResult::NoReply`] from
    /// `handle_call`).
    pub fn reply(&self, to: &Caller, reply: Term) {
        self.replier().reply(to, reply);
    }

    /// A handle that can answer calls from any thread, after `handle_call` returned
    /// [`CallResult::NoReply`] (for example once a write is durable).
    pub fn replier(&self) -> Replier {
        Replier {
            node: self.node.clone(),
            server: self.pid.clone(),
            kv_timed: false,
        }
    }

    /// Monitors a pid (on this node or another); [`GenServer::handle_down`] runs when it
    /// exits (`noproc` at once when it does not exist) or its node goes down.
    pub fn monitor(&self, pid: &Pid) -> Reference {
        self.node.monitor_remote(self.pid, pid)
    }

    /// Removes a monitor.
    pub fn demonitor(&self, pid: &Pid, reference: &Reference) {
        self.node.demonitor_remote(self.pid, pid, reference);
    }
}

/// Sends `message` to `to` without waiting, from any thread (a local mailbox over its bound
/// takes it anyway; it never drops).
pub fn send(node: &Node, to: &Pid, message: Term) {
    if node.is_local(to) {
        if let Some(mb) = node.lookup_pid(to) {
            mb.deliver(node, Signal::Message(message));
        }
        return;
    }
    let peer = to.node.name.as_str();
    node.send_to_node(peer, Message::send(to.clone(), message));
}

/// Answers calls on behalf of a server; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct Replier {
    node: Node,
    server: Pid,
    /// Its replies count in kvnode_kv_request_duration_seconds (the KV server's durable
    /// replies).
    kv_timed: bool,
}

impl std::fmt::Debug for Replier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replier")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Replier {
    /// A replier for `server`, a process that reads its own `$gen_call`s (the `global`
    /// server).
    pub(crate) fn new(node: &Node, server: &Pid) -> Self {
        Replier {
            node: node.clone(),
            server: server.clone(),
            kv_timed: false,
        }
    }

    /// Sends `{tag, reply}` to the caller: by ALIAS_SEND when the tag is an alias and the peer
    /// supports it (a late reply is then dropped by the caller's runtime), else to its pid.
    pub fn reply(&self, to: &Caller, reply: Term) {
        if self.kv_timed {
            crate::metrics::arm_kv_reply(to.received());
            self.send_reply(to, reply);
            crate::metrics::settle_kv_reply();
        } else {
            self.send_reply(to, reply);
        }
    }

    /// This replier's replies count as KV replies in the metrics (from frame read to reply
    /// written).
    pub(crate) fn kv_timed(mut self) -> Self {
        self.kv_timed = true;
        self
    }

    fn send_reply(&self, to: &Caller, reply: Term) {
        if let Some(local) = &to.local {
            if let Some(tx) = local.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(reply);
            }
            return;
        }
        let (to_pid, tag) = (to.pid(), to.tag());
        let message: Term = Tuple::from(vec![tag.clone(), reply]).into();
        if !self.node.is_local(to_pid)
            && let Some(alias) = alias_of(tag)
        {
            // By ALIAS_SEND only to a peer that negotiated ALIAS; decided once its flags are
            // known (at once when it is connected).
            let (server, alias, pid) = (self.server.clone(), alias.clone(), to_pid.clone());
            // The size is only needed when the reply has to wait for the connection.
            let size = match self.node.manager().peer_flags(&to_pid.node.name) {
                Some(_) => 0,
                None => encoded_len(&message),
            };
            let weight = move || size;
            self.node
                .send_when_connected(&to_pid.node.name, weight, move |flags| {
                    Some(if flags.contains(DistributionFlags::ALIAS) {
                        Message::alias_send(server, alias, message)
                    } else {
                        Message::send(pid, message)
                    })
                });
            return;
        }
        send(&self.node, to_pid, message);
    }
}

/// The size of `term` in external format, without keeping the bytes (for bounds on messages
/// that wait for a connection).
fn encoded_len(term: &Term) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting cannot fail for I/O reasons; a term eetf cannot encode is counted as far as
    // it got (it would not be sent either).
    let _ = crate::etf::encode::encode(term, &mut count);
    count.0
}

/// Appends `term` in external format without its version byte; false (nothing appended) if
/// eetf cannot encode it.
fn encode_unversioned(term: &Term, out: &mut Vec<u8>) -> bool {
    struct SkipVersion<'a> {
        out: &'a mut Vec<u8>,
        skipped: bool,
    }
    impl std::io::Write for SkipVersion<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut rest = buf;
            if !self.skipped && !rest.is_empty() {
                rest = &rest[1..];
                self.skipped = true;
            }
            self.out.extend_from_slice(rest);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let start = out.len();
    let mut w = SkipVersion {
        out,
        skipped: false,
    };
    if crate::etf::encode::encode(term, &mut w).is_err() {
        out.truncate(start);
        return false;
    }
    true
}

/// Spawns `server` as a process, registered under `name` when given. Returns its mailbox.
pub fn spawn<S: GenServer>(node: &Node, name: Option<&str>, server: S) -> Mailbox {
    spawn_with(node, name, |_| server)
}

/// Like [`spawn`], building the server from its context (for servers that need their own
/// pid or a [`Replier`] up front).
pub fn spawn_with<S: GenServer>(
    node: &Node,
    name: Option<&str>,
    make: impl FnOnce(&Ctx) -> S,
) -> Mailbox {
    node.spawn_process(name, host_maker(node, name, make))
}

/// Like [`spawn_with`], but refuses a `name` another process holds (see
/// [`Node::try_spawn_process`]); `make` then never runs.
pub fn try_spawn_with<S: GenServer>(
    node: &Node,
    name: Option<&str>,
    make: impl FnOnce(&Ctx) -> S,
) -> Result<Mailbox, crate::node::SpawnError> {
    node.try_spawn_process(name, host_maker(node, name, make))
}

impl Node {
    /// Spawns a server built by `make`, which gets the new process's [`Ctx`] (its pid, its
    /// [`Ctx::congestion`] switch, a [`Ctx::replier`] for answers sent from other threads);
    /// registered as `name` when given. Otherwise as [`Node::spawn_server`].
    ///
    /// ```no_run
    /// # use kvnode::{CallResult, Caller, Congestion, Ctx, GenServer, Request};
    /// struct Worker { congestion: Congestion }
    /// impl GenServer for Worker {
    ///     fn handle_call(&mut self, _: &mut Ctx, _: &Caller, _: Request<'_>) -> CallResult<'_> {
    ///         CallResult::Reply(kvnode::term::Atom::from("ok").into())
    ///     }
    /// }
    /// # fn demo(node: &kvnode::Node) -> Result<(), kvnode::SpawnError> {
    /// node.spawn_server_with(Some("worker"), |ctx| Worker { congestion: ctx.congestion() })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn spawn_server_with<S: GenServer>(
        &self,
        name: Option<&str>,
        make: impl FnOnce(&Ctx) -> S,
    ) -> Result<Pid, crate::node::SpawnError> {
        try_spawn_with(self, name, make).map(|mailbox| mailbox.pid)
    }

    /// Calls the server registered as `name` on this node from outside any process (from a
    /// task, an HTTP handler, a registered function) and waits up to `timeout` for its reply.
    /// While the server is congested (a full mailbox, [`Ctx::congestion`]) the call waits
    /// before it is delivered, within the same timeout, instead of adding to the queue.
    ///
    /// Errors: [`CallError::NoProc`](crate::CallError::NoProc) when no process has that name or it ends before
    /// answering, [`CallError::Timeout`](crate::CallError::Timeout) when no reply comes in time (a later reply is
    /// dropped; a server that drops the call without answering is waited for until the
    /// timeout, as a BEAM caller would).
    ///
    /// ```no_run
    /// # async fn demo(node: kvnode::Node) -> Result<(), kvnode::CallError> {
    /// use kvnode::term::Atom;
    /// let size = node
    ///     .call_local("Elixir.DistributedExample.KVStore", Atom::from("size").into(),
    ///         std::time::Duration::from_secs(5))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call_local(
        &self,
        name: &str,
        request: Term,
        timeout: std::time::Duration,
    ) -> Result<Term, crate::node::CallError> {
        let dest = || crate::node::Dest::Name(name.to_owned());
        let Some(mailbox) = self.whereis(name) else {
            return Err(crate::node::CallError::NoProc { dest: dest() });
        };
        let deadline = crate::node::deadline_after(timeout);
        let work = async {
            if let Some(pressure) = mailbox.pressure() {
                pressure.relieved().await;
            }
            let (reply, answer) = tokio::sync::oneshot::channel();
            mailbox.deliver(self, Signal::Call { request, reply });
            answer.await
        };
        let timed_out = || crate::node::CallError::Timeout {
            dest: dest(),
            after: timeout,
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(term)) => Ok(term),
            // The server let go of the call without answering. Still there: as a BEAM
            // caller, wait out the timeout (no answer can come now). Gone: `noproc`.
            Ok(Err(_)) => match self.whereis(name) {
                Some(now) if now.pid == mailbox.pid => {
                    tokio::time::sleep_until(deadline).await;
                    Err(timed_out())
                }
                _ => Err(crate::node::CallError::NoProc { dest: dest() }),
            },
            Err(_) => Err(timed_out()),
        }
    }
}

/// What runs a fresh server process's signals, given its pid.
fn host_maker<'a, S: GenServer>(
    node: &'a Node,
    name: Option<&'a str>,
    make: impl FnOnce(&Ctx) -> S + 'a,
) -> impl FnOnce(&Pid) -> Arc<dyn Dispatch> + 'a {
    move |pid| {
        let pressure = Arc::new(Pressure::default());
        let server = make(&Ctx {
            node,
            pid,
            pressure: &pressure,
        });
        Arc::new(Host::new(node, pid, name, server, pressure)) as Arc<dyn Dispatch>
    }
}

/// A queued signal, what it counts for against the mailbox bound, and when its frame was
/// read off the socket (metrics on only; see [`crate::metrics::received`]).
type Queued = (Signal, usize, Option<std::time::Instant>);

/// Signals waiting for the server, with what they count for against the mailbox bound.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Queued>,
    bytes: usize,
    /// Whether this mailbox reported itself congested (cleared at half the bounds).
    congested: bool,
    /// `:sys.suspend`: only system messages run; others wait in `held` until `:sys.resume`.
    suspended: bool,
    /// Signals that arrived while suspended, in order. They do not count toward the
    /// backpressure bound (readers must stay free to deliver the `:sys.resume`); they have a
    /// bound of their own, the same size, past which further signals are dropped.
    held: VecDeque<Queued>,
    /// Bytes in `held`.
    held_bytes: usize,
    /// Signals dropped because `held` was full (logged once per suspension).
    held_dropped: usize,
    /// The process exited: whatever still arrives is dropped, as for a dead BEAM pid.
    dead: bool,
}

/// `:sys.statistics` counters: kept only while enabled.
#[derive(Default)]
struct Stats {
    enabled: std::sync::atomic::AtomicBool,
    messages_in: std::sync::atomic::AtomicU64,
    messages_out: std::sync::atomic::AtomicU64,
    /// When statistics were enabled, as `{{Y, M, D}, {H, Mi, S}}` local time.
    start_time: Mutex<Option<Term>>,
}

impl Stats {
    fn on(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn count_in(&self) {
        if self.on() {
            self.messages_in
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn count_out(&self) {
        if self.on() {
            self.messages_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// What the loop does after a signal.
enum Flow {
    Continue,
    /// `{:system, from, {:terminate, reason}}` was answered: the process exits.
    Stop(Term),
}

/// Hosts a server: whoever delivers a signal runs the handler in its own thread (no task hop,
/// no context switch per message). A thread that finds the server busy queues the signal and
/// returns at once; the thread inside the handler runs everything queued before it lets go.
/// So signals from one sender are handled in the order sent, the handler never runs twice at
/// once, and a handler that sends to itself does not deadlock.
struct Host<S> {
    pid: Pid,
    /// The registered name it was spawned under (for `:sys.get_status` and restarts).
    name: Option<String>,
    server: Mutex<S>,
    pending: Mutex<Pending>,
    /// `--max-mailbox-bytes`.
    max_bytes: usize,
    pressure: Arc<Pressure>,
    stats: Stats,
    /// `pid` in external format (no version byte), for replies written as bytes.
    pid_etf: Vec<u8>,
}

impl<S: GenServer> Host<S> {
    fn new(node: &Node, pid: &Pid, name: Option<&str>, server: S, pressure: Arc<Pressure>) -> Self {
        Host {
            pid: pid.clone(),
            name: name.map(str::to_owned),
            server: Mutex::new(server),
            pending: Mutex::new(Pending::default()),
            max_bytes: node.config().max_mailbox_bytes.max(1),
            pressure,
            stats: Stats::default(),
            pid_etf: {
                let mut v = Vec::new();
                // A pid always encodes; an empty `pid_etf` only turns the fast path off.
                if Term::from(pid.clone()).encode(&mut v).is_ok() && v.len() > 1 {
                    v.remove(0);
                    v
                } else {
                    Vec::new()
                }
            },
        }
    }

    fn push(&self, signal: Signal, weight: usize) {
        let mut p = lock(&self.pending);
        if p.dead {
            return;
        }
        p.queue
            .push_back((signal, weight, crate::metrics::received()));
        p.bytes += weight;
        if !p.congested && (p.bytes >= self.max_bytes || p.queue.len() >= MAX_MAILBOX_SIGNALS) {
            p.congested = true;
            self.pressure.set(Pressure::MAILBOX, true);
            tracing::debug!(
                signals = p.queue.len(),
                bytes = p.bytes,
                "mailbox over its bound: readers delivering to it pause"
            );
        }
    }

    fn pop(&self) -> Option<(Signal, Option<std::time::Instant>)> {
        let mut p = lock(&self.pending);
        let (signal, weight, received) = loop {
            let (signal, weight, received) = p.queue.pop_front()?;
            if p.suspended && !is_system(&signal) {
                p.bytes -= weight;
                if p.held_bytes + weight > self.max_bytes || p.held.len() >= MAX_MAILBOX_SIGNALS {
                    if p.held_dropped == 0 {
                        tracing::warn!(
                            held = p.held.len(),
                            held_bytes = p.held_bytes,
                            "suspended process: its held messages are at the mailbox bound; dropping further ones until :sys.resume"
                        );
                    }
                    p.held_dropped += 1;
                } else {
                    p.held_bytes += weight;
                    p.held.push_back((signal, weight, received));
                }
                self.relieve_if_below(&mut p);
                continue;
            }
            break (signal, weight, received);
        };
        p.bytes -= weight;
        self.relieve_if_below(&mut p);
        Some((signal, received))
    }

    /// Clears this mailbox's congestion once it has drained to half its bounds.
    fn relieve_if_below(&self, p: &mut Pending) {
        if p.congested && p.bytes <= self.max_bytes / 2 && p.queue.len() <= MAX_MAILBOX_SIGNALS / 2
        {
            p.congested = false;
            self.pressure.set(Pressure::MAILBOX, false);
        }
    }

    fn has_pending(&self) -> bool {
        !lock(&self.pending).queue.is_empty()
    }

    /// Tells the reader on this thread to pause if this process is congested now.
    fn report_pressure(&self) {
        if self.pressure.is_congested() {
            node::note_congested(&self.pressure);
        }
    }

    /// Runs queued signals until the queue is empty and the server free.
    fn run_pending(&self, node: &Node) {
        loop {
            let mut server = match self.server.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                // The thread inside the handler will run our signal before it lets go.
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let mut ctx = Ctx {
                node,
                pid: &self.pid,
                pressure: &self.pressure,
            };
            while let Some((signal, received)) = self.pop() {
                // The signal's frame instant, not that of whatever this thread reads now.
                let outer = crate::metrics::set_received(received);
                let flow = self.dispatch_one(&mut ctx, &mut server, signal);
                crate::metrics::set_received(outer);
                if let Flow::Stop(reason) = flow {
                    self.stop(&mut ctx, &mut server, reason);
                    return;
                }
            }
            drop(server);
            // A signal queued after our last look but before we let go would wait for the next
            // delivery: look again now that the server is free.
            if !self.has_pending() {
                return;
            }
        }
    }
}

impl<S: GenServer> Host<S> {
    fn dispatch_one(&self, ctx: &mut Ctx, server: &mut S, signal: Signal) -> Flow {
        if let Signal::Raw(raw) = signal {
            self.raw(ctx, server, &raw);
            return Flow::Continue;
        }
        if let Signal::Message(term) = signal {
            return match classify(term) {
                Incoming::System(from, request) => self.system(ctx, server, &from, request),
                Incoming::Call(caller, request) => {
                    self.stats.count_in();
                    let result = server.handle_call(ctx, &caller, Request::from_term(request));
                    if answer(ctx, &caller, result) {
                        self.stats.count_out();
                    }
                    crate::metrics::settle_kv_reply();
                    Flow::Continue
                }
                Incoming::Cast(request) => {
                    self.stats.count_in();
                    server.handle_cast(ctx, Request::from_term(request));
                    Flow::Continue
                }
                Incoming::Info(message) => {
                    self.stats.count_in();
                    server.handle_info(ctx, message);
                    Flow::Continue
                }
            };
        }
        dispatch(ctx, server, signal);
        Flow::Continue
    }

    /// A system message (`sys.erl`'s `handle_system_msg`): answered with what a BEAM
    /// gen_server answers, the reply sent before anything else happens (before the process
    /// exits for `terminate`).
    fn system(&self, ctx: &mut Ctx, server: &mut S, from: &Caller, request: Term) -> Flow {
        let ok = || -> Term { Atom::from("ok").into() };
        let mut flow = Flow::Continue;
        let reply: Term = match &request {
            Term::Atom(a) if a.name == "suspend" => {
                lock(&self.pending).suspended = true;
                ok()
            }
            Term::Atom(a) if a.name == "resume" => {
                let mut p = lock(&self.pending);
                p.suspended = false;
                if p.held_dropped > 0 {
                    tracing::warn!(
                        dropped = p.held_dropped,
                        "resumed: messages dropped while suspended"
                    );
                }
                p.held_dropped = 0;
                // Held signals go first, in the order they came, and count again.
                let mut held = std::mem::take(&mut p.held);
                held.append(&mut p.queue);
                p.queue = held;
                p.bytes += std::mem::take(&mut p.held_bytes);
                ok()
            }
            // As OTP 27+ answers (its `sys:get_state` unwraps `{:ok, state}`; OTP 25's passes
            // the reply through, so there it returns `{:ok, state}`, as from a newer node).
            Term::Atom(a) if a.name == "get_state" => {
                tuple(vec![Atom::from("ok").into(), server.system_state(ctx)])
            }
            Term::Atom(a) if a.name == "get_status" => self.status(ctx, server),
            Term::Tuple(t) if t.elements.len() == 2 && is_atom(&t.elements[0], "debug") => {
                self.debug(&t.elements[1])
            }
            Term::Tuple(t) if t.elements.len() == 2 && is_atom(&t.elements[0], "terminate") => {
                flow = Flow::Stop(t.elements[1].clone());
                ok()
            }
            _ => tuple(vec![
                Atom::from("error").into(),
                tuple(vec![
                    Atom::from("unknown_system_msg").into(),
                    request.clone(),
                ]),
            ]),
        };
        ctx.reply(from, reply);
        flow
    }

    /// `sys.erl`'s `debug_cmd`: statistics are kept; log and trace are accepted and record
    /// nothing (the log reads back empty); installing debug functions is not possible here.
    fn debug(&self, what: &Term) -> Term {
        use std::sync::atomic::Ordering::Relaxed;
        let ok = || -> Term { Atom::from("ok").into() };
        let ok_with = |t: Term| tuple(vec![Atom::from("ok").into(), t]);
        let Term::Tuple(t) = what else {
            return match what {
                Term::Atom(a) if a.name == "no_debug" => {
                    self.stats.enabled.store(false, Relaxed);
                    ok()
                }
                _ => Atom::from("unknown_debug").into(),
            };
        };
        let [Term::Atom(item), flag] = t.elements.as_slice() else {
            return Atom::from("unknown_debug").into();
        };
        let flag_is = |name: &str| is_atom(flag, name);
        match item.name.as_str() {
            "trace" if flag_is("true") || flag_is("false") => ok(),
            "log" if flag_is("true") || flag_is("false") || flag_is("print") => ok(),
            "log" if flag_is("get") => ok_with(List::nil().into()),
            "log"
                if matches!(flag, Term::Tuple(t) if t.elements.len() == 2
                && is_atom(&t.elements[0], "true")
                && matches!(&t.elements[1], Term::FixInteger(n) if n.value >= 1)) =>
            {
                ok()
            }
            "statistics" if flag_is("true") => {
                let mut start = lock(&self.stats.start_time);
                if !self.stats.on() {
                    self.stats.messages_in.store(0, Relaxed);
                    self.stats.messages_out.store(0, Relaxed);
                    *start = Some(local_time());
                    self.stats.enabled.store(true, Relaxed);
                }
                ok()
            }
            "statistics" if flag_is("false") => {
                self.stats.enabled.store(false, Relaxed);
                ok()
            }
            "statistics" if flag_is("get") => {
                let start = lock(&self.stats.start_time).clone();
                match start {
                    Some(start) if self.stats.on() => {
                        let pair = |k: &str, v: Term| tuple(vec![Atom::from(k).into(), v]);
                        let n = |v: u64| -> Term {
                            match i32::try_from(v) {
                                Ok(v) => FixInteger::from(v).into(),
                                Err(_) => BigInteger::from(v).into(),
                            }
                        };
                        let msgs_in = self.stats.messages_in.load(Relaxed);
                        ok_with(
                            List::from(vec![
                                pair("start_time", start),
                                pair("current_time", local_time()),
                                // No reductions here: messages handled stand in for them.
                                pair("reductions", n(msgs_in)),
                                pair("messages_in", n(msgs_in)),
                                pair("messages_out", n(self.stats.messages_out.load(Relaxed))),
                            ])
                            .into(),
                        )
                    }
                    _ => ok_with(Atom::from("no_statistics").into()),
                }
            }
            _ => Atom::from("unknown_debug").into(),
        }
    }

    /// `:sys.get_status`: `{:status, pid, {:module, :gen_server}, [pdict, sys_state, parent,
    /// debug, misc]}` with `misc` as `gen_server:format_status/2` makes it. The parent is
    /// the process itself, as for a GenServer started without a link.
    fn status(&self, ctx: &Ctx, server: &S) -> Term {
        let atom = |n: &str| -> Term { Atom::from(n).into() };
        let chars = |s: &str| -> Term {
            eetf::ByteList {
                bytes: s.as_bytes().to_vec(),
            }
            .into()
        };
        let name = self.name.as_deref();
        let module = name.unwrap_or("kvnode");
        let pdict = List::from(vec![
            tuple(vec![
                atom("$initial_call"),
                tuple(vec![atom(module), atom("init"), FixInteger::from(1).into()]),
            ]),
            tuple(vec![atom("$ancestors"), List::nil().into()]),
        ]);
        let sys_state = if lock(&self.pending).suspended {
            atom("suspended")
        } else {
            atom("running")
        };
        let who = match name {
            Some(n) => n.to_owned(),
            None => format!("<0.{}.{}>", ctx.self_pid().id, ctx.self_pid().serial),
        };
        let misc = List::from(vec![
            tuple(vec![
                atom("header"),
                chars(&format!("Status for generic server {who}")),
            ]),
            tuple(vec![
                atom("data"),
                List::from(vec![
                    tuple(vec![chars("Status"), sys_state.clone()]),
                    tuple(vec![chars("Parent"), ctx.self_pid().clone().into()]),
                    tuple(vec![chars("Logged events"), List::nil().into()]),
                ])
                .into(),
            ]),
            tuple(vec![
                atom("data"),
                List::from(vec![tuple(vec![chars("State"), server.system_state(ctx)])]).into(),
            ]),
        ]);
        tuple(vec![
            atom("status"),
            ctx.self_pid().clone().into(),
            tuple(vec![atom("module"), atom("gen_server")]),
            List::from(vec![
                pdict.into(),
                sys_state,
                ctx.self_pid().clone().into(),
                List::nil().into(),
                misc.into(),
            ])
            .into(),
        ])
    }

    /// The process exits with `reason` (its `terminate` reply already sent): what is still
    /// queued is dropped, monitors on it fire, and the server [`GenServer::restart`] returns
    /// (if any) runs on as a fresh process under the same name, sharing this one's
    /// congestion state (its storage queue reports there).
    fn stop(&self, ctx: &mut Ctx, server: &mut S, reason: Term) {
        {
            let mut p = lock(&self.pending);
            p.dead = true;
            p.queue.clear();
            p.held.clear();
            p.held_bytes = 0;
            p.bytes = 0;
            p.suspended = false;
            if p.congested {
                p.congested = false;
                self.pressure.set(Pressure::MAILBOX, false);
            }
        }
        let node = ctx.node;
        // The monitors this process placed end with it (a restarted server starts afresh).
        node.release_monitors_held_by(&self.pid);
        let next = server.restart(ctx, &reason);
        let pressure = self.pressure.clone();
        let name = self.name.clone();
        let make = next.map(|mut next| {
            Box::new(move |pid: &Pid| -> Arc<dyn Dispatch> {
                next.restarted(&mut Ctx {
                    node,
                    pid,
                    pressure: &pressure,
                });
                Arc::new(Host::new(node, pid, name.as_deref(), next, pressure))
            }) as node::MakeProcess<'_>
        });
        let successor = node.exit_process(&self.pid, reason, make);
        if let Some(mb) = successor {
            tracing::info!(
                name = self.name.as_deref().unwrap_or(""),
                old = self.pid.id,
                new = mb.pid.id,
                "process stopped and restarted under the same name"
            );
        }
    }
}

fn tuple(elements: Vec<Term>) -> Term {
    Tuple::from(elements).into()
}

/// The local time as `{{Y, M, D}, {H, Mi, S}}` (`erlang:localtime/0`).
fn local_time() -> Term {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // SAFETY: an all-zero tm is valid; localtime_r writes into it and reads only `now`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    unsafe { libc::localtime_r(&now, &mut tm) };
    let n = |v: i32| -> Term { FixInteger::from(v).into() };
    tuple(vec![
        tuple(vec![n(tm.tm_year + 1900), n(tm.tm_mon + 1), n(tm.tm_mday)]),
        tuple(vec![n(tm.tm_hour), n(tm.tm_min), n(tm.tm_sec)]),
    ])
}

/// Whether `signal` is a system message (`{:system, from, request}`): those run even while
/// the process is suspended.
fn is_system(signal: &Signal) -> bool {
    matches!(signal, Signal::Message(t) if protocol::is_system(t))
}

impl<S: GenServer> Dispatch for Host<S> {
    fn dispatch(&self, node: &Node, signal: Signal) {
        self.dispatch_weighted(node, signal, MIN_SIGNAL_WEIGHT);
    }

    fn pressure(&self) -> Option<Arc<Pressure>> {
        Some(self.pressure.clone())
    }

    fn dispatch_weighted(&self, node: &Node, signal: Signal, bytes: usize) {
        self.push(signal, bytes.max(MIN_SIGNAL_WEIGHT));
        self.run_pending(node);
        self.report_pressure();
    }

    /// The fast path (see the module docs): a call or cast from a peer, run as bytes when
    /// the server is idle. False leaves the message to the decoding path.
    fn dispatch_raw(&self, node: &Node, raw: &RawMessage) -> bool {
        let (from, request) = match protocol::parse(raw.message, raw.limits) {
            Some(protocol::Envelope::Call { from, request }) => (Some(from), request),
            Some(protocol::Envelope::Cast { request }) => (None, request),
            // System and info messages are decoded.
            _ => return false,
        };
        if self.pid_etf.is_empty() {
            return false;
        }
        let mut server = match self.server.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // Busy in another thread: the message waits as its bytes, and that thread
            // serves it from them before it lets go.
            Err(std::sync::TryLockError::WouldBlock) => return self.queue_raw(node, raw),
        };
        // One look at the mailbox (suspension and death change only under the server lock,
        // which we hold).
        let (dead, queued, held) = {
            let p = lock(&self.pending);
            (p.dead, !p.queue.is_empty(), p.suspended || self.stats.on())
        };
        if dead {
            // Dropped, as a message to a dead pid.
            return true;
        }
        // Signals queued earlier go first; suspended, the message waits with the others.
        // Either way it waits as its bytes ([`Signal::Raw`]) and is served from them, as
        // here, when its turn comes (statistics count it then).
        if queued || held {
            drop(server);
            return self.queue_raw(node, raw);
        }
        let mut ctx = Ctx {
            node,
            pid: &self.pid,
            pressure: &self.pressure,
        };
        let request = Request::from_bytes(request, raw.limits);
        match from {
            Some(from) => {
                // Built in place and lent, never moved: a byte caller is a few hundred bytes.
                let Some(caller) = Caller::from_bytes(&from, raw.limits) else {
                    return false;
                };
                let result = server.handle_call(&mut ctx, &caller, request);
                self.answer_on_conn(&ctx, raw, &from, &caller, result);
                crate::metrics::settle_kv_reply();
            }
            None => server.handle_cast(&mut ctx, request),
        }
        drop(server);
        // Others may have queued signals while we held the server.
        if self.has_pending() {
            self.run_pending(node);
        }
        self.report_pressure();
        true
    }
}

impl<S: GenServer> Host<S> {
    /// Queues a call or cast from a peer that cannot run now as its bytes, then runs what
    /// is pending (if the server is free) as [`Dispatch::dispatch_weighted`] does.
    fn queue_raw(&self, node: &Node, raw: &RawMessage) -> bool {
        let owned = node::RawOwned::new(raw.peer, raw.message, raw.limits);
        self.push(Signal::Raw(owned), raw.message.len().max(MIN_SIGNAL_WEIGHT));
        self.run_pending(node);
        self.report_pressure();
        true
    }

    /// A message kept as bytes ([`Signal::Raw`]: a call or cast that waited while the
    /// server was busy or suspended, or a message eetf cannot hold unchanged), now that its
    /// turn has come: a call or cast is served from its bytes, as the fast path serves it;
    /// anything else (an info or system message, which handlers take as a term, holding a
    /// term eetf cannot hold) is dropped with a `warn`.
    fn raw(&self, ctx: &mut Ctx, server: &mut S, raw: &node::RawOwned) {
        let limits = &raw.limits;
        match protocol::parse(&raw.message, limits) {
            Some(protocol::Envelope::Call { from, request }) => {
                let Some(caller) = Caller::from_bytes(&from, limits) else {
                    tracing::warn!(peer = %raw.peer, "a call kvnode cannot decode unchanged, from a caller that does not decode: dropped");
                    return;
                };
                self.stats.count_in();
                let result = server.handle_call(ctx, &caller, Request::from_bytes(request, limits));
                if self.answer_raw(ctx, raw, &from, &caller, result) {
                    self.stats.count_out();
                }
                crate::metrics::settle_kv_reply();
            }
            Some(protocol::Envelope::Cast { request }) => {
                self.stats.count_in();
                server.handle_cast(ctx, Request::from_bytes(request, limits));
            }
            _ => tracing::warn!(
                peer = %raw.peer,
                name = self.name.as_deref().unwrap_or(""),
                message = %crate::etf::excerpt(&raw.message),
                "a message kvnode cannot decode unchanged (an OTP 29 record, or 0.0 and -0.0 map keys) that is not a call or cast: dropped"
            ),
        }
    }

    /// Sends what `handle_call` answered to a call served from [`Signal::Raw`] bytes: an
    /// encoded reply (which may hold a term eetf cannot, such as a stored record) is written
    /// as bytes into a frame for the peer the call came from; anything else as [`answer`]
    /// sends it. True if a reply went out.
    fn answer_raw(
        &self,
        ctx: &Ctx,
        raw: &node::RawOwned,
        from: &protocol::From<'_>,
        caller: &Caller,
        result: CallResult<'_>,
    ) -> bool {
        let CallResult::Encoded(bytes) = result else {
            return answer(ctx, caller, result);
        };
        let flags = ctx.node.manager().peer_flags(&raw.peer);
        let (Some(flags), Some(true)) = (
            flags,
            protocol::pid_node(from.pid).map(|n| n == raw.peer.as_bytes()),
        ) else {
            return answer(ctx, caller, CallResult::Encoded(bytes));
        };
        if self.pid_etf.is_empty() {
            return answer(ctx, caller, CallResult::Encoded(bytes));
        }
        let route = protocol::Route::for_flags(from, flags, &raw.limits);
        let mut frame = Vec::with_capacity(protocol::reply_frame_len(
            &self.pid_etf,
            route,
            from.tag,
            bytes.len(),
        ));
        if !protocol::reply_frame(&mut frame, &self.pid_etf, route, from.tag, |out| {
            out.extend_from_slice(bytes);
            true
        }) {
            return false;
        }
        ctx.node.manager().send(&raw.peer, frame);
        true
    }

    /// Sends what `handle_call` answered on the fast path: written straight into the outbox
    /// of the connection the call came in on (by ALIAS_SEND when the tag is an alias and the
    /// peer negotiated ALIAS, else SEND to the caller's pid), when the caller lives on that
    /// peer; else through [`answer`]. An outbox over its bound closes the connection.
    fn answer_on_conn(
        &self,
        ctx: &Ctx,
        raw: &RawMessage,
        from: &protocol::From<'_>,
        caller: &Caller,
        result: CallResult<'_>,
    ) {
        if protocol::pid_node(from.pid) != Some(raw.peer.as_bytes()) {
            answer(ctx, caller, result);
            return;
        }
        let reply_len = match &result {
            CallResult::Reply(term) => encoded_len(term).saturating_sub(1),
            CallResult::Encoded(bytes) => bytes.len(),
            CallResult::NoReply => return,
        };
        let route = protocol::Route::for_flags(from, raw.conn.flags, raw.limits);
        let size = protocol::reply_frame_len(&self.pid_etf, route, from.tag, reply_len);
        let mut written = false;
        let pushed = raw.conn.outbox.push_with(size, |out| {
            written =
                protocol::reply_frame(out, &self.pid_etf, route, from.tag, |out| match &result {
                    CallResult::Reply(term) => encode_unversioned(term, out),
                    CallResult::Encoded(bytes) => {
                        out.extend_from_slice(bytes);
                        true
                    }
                    CallResult::NoReply => false,
                });
        });
        if pushed.is_err() {
            tracing::warn!(
                peer = raw.peer,
                "peer is not reading: its outbound buffer is full, disconnecting it"
            );
            raw.conn.close();
        } else if !written {
            tracing::warn!(
                peer = raw.peer,
                "the server's reply does not encode: no reply sent"
            );
        }
    }
}

/// Sends what `handle_call` answered, if it answered now. True if a reply went out.
fn answer(ctx: &Ctx, caller: &Caller, result: CallResult<'_>) -> bool {
    match result {
        CallResult::Reply(term) => {
            ctx.reply(caller, term);
            true
        }
        CallResult::Encoded(bytes) => {
            let mut with_version = Vec::with_capacity(bytes.len() + 1);
            with_version.push(crate::etf::VERSION_MAGIC);
            with_version.extend_from_slice(bytes);
            // Checked: bytes eetf would change (a native record, 0.0 and -0.0 map keys) are
            // refused here rather than sent changed.
            let limits = crate::etf::Limits {
                max_terms: usize::MAX,
                max_atoms: usize::MAX,
                max_depth: crate::etf::configured_depth(),
                ..crate::etf::Limits::default()
            };
            match crate::etf::decode_exact(&with_version, &limits) {
                Ok(term) => {
                    ctx.reply(caller, term);
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, "the server answered bytes that do not decode: no reply sent");
                    false
                }
            }
        }
        CallResult::NoReply => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn dispatch<S: GenServer>(ctx: &mut Ctx, server: &mut S, signal: Signal) {
    match signal {
        Signal::Message(term) => match classify(term) {
            Incoming::Call(caller, request) => {
                let result = server.handle_call(ctx, &caller, Request::from_term(request));
                answer(ctx, &caller, result);
                crate::metrics::settle_kv_reply();
            }
            Incoming::Cast(request) => server.handle_cast(ctx, Request::from_term(request)),
            Incoming::Info(message) => server.handle_info(ctx, message),
            // Messages reach here only from [`Host::dispatch_one`], which answers these.
            Incoming::System(..) => {}
        },
        Signal::Down {
            reference,
            pid,
            reason,
        } => server.handle_down(ctx, reference, pid, reason),
        // Reaches here only from [`Host::dispatch_one`], which serves it.
        Signal::Raw(_) => {}
        Signal::Call { request, reply } => {
            let caller = Caller {
                who: Who::Term {
                    pid: ctx.pid.clone(),
                    tag: List::nil().into(),
                },
                local: Some(std::sync::Arc::new(std::sync::Mutex::new(Some(reply)))),
                received: None,
            };
            let result = server.handle_call(ctx, &caller, Request::from_term(request));
            answer(ctx, &caller, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A server whose casts block until the test lets them go, and that counts them.
    struct Gate {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<mpsc::Receiver<()>>>,
        seen: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl GenServer for Gate {
        fn handle_call(&mut self, _: &mut Ctx, _: &Caller, _: Request<'_>) -> CallResult<'_> {
            CallResult::NoReply
        }
        fn handle_cast(&mut self, _: &mut Ctx, request: Request<'_>) {
            let request = request
                .as_term()
                .cloned()
                .unwrap_or_else(|| List::nil().into());
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if matches!(&request, Term::Atom(a) if a.name == "block") {
                let _ = self.entered.send(());
                let _ = lock(&self.release).recv();
            }
        }
    }

    fn cast(what: &str) -> Signal {
        Signal::Message(
            Tuple::from(vec![
                Atom::from("$gen_cast").into(),
                Atom::from(what).into(),
            ])
            .into(),
        )
    }

    /// Signals queued while another thread runs the handler congest the process once over
    /// the byte bound, a delivering thread is told to pause, and draining to half relieves
    /// it; nothing is lost.
    #[test]
    fn mailbox_over_its_bound_reports_congestion_until_drained() {
        let mut config = crate::config::Config::new("t@127.0.0.1", "c");
        config.max_mailbox_bytes = 10_000;
        let threads =
            crate::node::transport::threads::Threads::start(1, crate::etf::thread_stack_size())
                .expect("threads");
        let node = Node::new(
            config,
            1,
            tokio_util::sync::CancellationToken::new(),
            tokio_util::task::TaskTracker::new(),
            threads.clone(),
        );
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mb = spawn(
            &node,
            Some("gate"),
            Gate {
                entered: entered_tx,
                release: Arc::new(Mutex::new(release_rx)),
                seen: seen.clone(),
            },
        );
        // Another thread enters the handler and stays there.
        let (node2, mb2) = (node.clone(), mb.clone());
        let busy = std::thread::spawn(move || mb2.deliver(&node2, cast("block")));
        entered.recv().expect("handler entered");
        let target = node.whereis_target("gate").expect("registered");
        let _ = crate::node::take_congested();
        for i in 0..9 {
            target.dispatch_weighted(&node, cast("x"), 1_000);
            assert!(
                crate::node::take_congested().is_none(),
                "congested after {i} KB"
            );
        }
        target.dispatch_weighted(&node, cast("x"), 1_000);
        let pressure = crate::node::take_congested().expect("congested at 10 KB");
        assert!(pressure.is_congested());
        release.send(()).expect("release");
        busy.join().expect("busy thread");
        assert!(!pressure.is_congested(), "drained, so relieved");
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 11);
        threads.stop();
    }
}
