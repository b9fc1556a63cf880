//! Embedded EPMD server with real epmd semantics, for hosts where no EPMD runs.
//!
//! Implements the requests of `erts/epmd/src/epmd_srv.c` (OTP 23+) without
//! `-relaxed_command_check`:
//! - `ALIVE2_REQ` (local peers only): register; the name lives exactly as long as the connection.
//!   Answered with `ALIVE2_X_RESP` (32-bit creation) when the node's highest version is 6+, else
//!   `ALIVE2_RESP` (creation 1..=3, as epmd does for old nodes). A taken or invalid name gets
//!   result 1 and the connection is closed.
//! - `PORT_PLEASE2_REQ`: `PORT2_RESP` with the node's data, or result 1; then close.
//! - `NAMES_REQ`: the EPMD port as `u32`, then `name <name> at port <port>\n` lines; then close.
//! - `DUMP_REQ` (local peers only): like `NAMES_REQ` with epmd's
//!   `active name     <NAME> at port P, fd = F\n\0` lines.
//! - `KILL_REQ` (local peers only): refused with `NO` (an embedded EPMD lives as long as its
//!   node). `STOP_REQ`: refused by closing, as epmd does without `-relaxed_command_check`.
//!
//! Anything else closes that connection only. One task per connection; requests are buffered until
//! complete (they may arrive split into any number of segments) under [`REQUEST_TIMEOUT`].
//!
//! Held registrations never starve queries ([`EpmdLimits`]): a connection that has not sent
//! its request yet (or is being answered) counts against a request budget with oldest-first
//! eviction per source address ([`crate::node::transport::admission::Budget`]); a registration moves it to a
//! registration quota (loopback peers only, bounded in total and per address), which is
//! refused (result 1) when full instead of taking query places.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::proto::{
    ALIVE2_REQ, ALIVE2_RESP, ALIVE2_X_RESP, DUMP_REQ, FAILED_CREATION, KILL_REFUSED, KILL_REQ,
    MAX_EXTRA_BYTES, NAMES_REQ, PORT_PLEASE2_REQ, PORT2_RESP, RESULT_ERROR, RESULT_OK, STOP_REQ,
    X_RESP_MIN_VERSION, check_name,
};

/// Default bound on connections that have not completed their request (or are being answered),
/// over all peers. When full, the oldest such connection of the address holding the most is
/// closed to make room: a query always gets in.
pub const DEFAULT_MAX_REQUESTS: usize = 256;
/// Default bound on those connections from one address (one more closes that address's oldest).
pub const DEFAULT_MAX_REQUESTS_PER_IP: usize = 64;
/// Default bound on registrations (nodes registered at once).
pub const DEFAULT_MAX_REGISTRATIONS: usize = 1024;
/// Default bound on registrations from one (local) address: a local process registering names
/// from one loopback address cannot take every place (real nodes register from 127.0.0.1).
pub const DEFAULT_MAX_REGISTRATIONS_PER_IP: usize = 512;
/// Most sockets the embedded EPMD holds at once with the default limits.
pub const MAX_FDS: usize = DEFAULT_MAX_REQUESTS + DEFAULT_MAX_REGISTRATIONS;

/// The embedded EPMD's connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpmdLimits {
    /// Connections not yet past their request, in total (oldest-first eviction).
    pub requests: usize,
    /// Those from one address.
    pub requests_per_ip: usize,
    /// Registrations at once.
    pub registrations: usize,
    /// Registrations from one address.
    pub registrations_per_ip: usize,
}

impl Default for EpmdLimits {
    fn default() -> Self {
        EpmdLimits {
            requests: DEFAULT_MAX_REQUESTS,
            requests_per_ip: DEFAULT_MAX_REQUESTS_PER_IP,
            registrations: DEFAULT_MAX_REGISTRATIONS,
            registrations_per_ip: DEFAULT_MAX_REGISTRATIONS_PER_IP,
        }
    }
}
/// A connection must deliver one complete request within this time of being accepted.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for writing a reply to a peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. EMFILE) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How long `run` waits for connection tasks after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body accepted (epmd's input buffer is 3 * MAXSYMLEN = 3060 bytes).
const MAX_REQUEST_LEN: usize = 4096;
/// Fixed part of an `ALIVE2_REQ` body: tag, port, type, protocol, high, low, name length.
const ALIVE2_FIXED_LEN: usize = 11;

/// Why a connection was closed without (or after) an answer; logged at debug level.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Reading or writing the socket failed.
    #[error("I/O error")]
    Io {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The peer did not complete a request in time.
    #[error("no complete request within {after:?}")]
    RequestTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// The peer did not take our reply in time.
    #[error("reply not written within {after:?}")]
    WriteTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// A zero-length request.
    #[error("empty request")]
    EmptyRequest,
    /// The length prefix exceeds what any request needs.
    #[error("request length {len} exceeds {max}")]
    RequestTooLong {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An unknown request tag.
    #[error("unknown request tag {tag}")]
    UnknownRequest {
        /// The tag byte.
        tag: u8,
    },
    /// A request whose fields do not add up.
    #[error("malformed {request}: {reason}")]
    Malformed {
        /// Which request.
        request: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Evicted to make room for a newer connection (request budget full).
    #[error("closed to make room for a newer connection")]
    Evicted,
    /// A request only local peers may make.
    #[error("{request} from non-local address")]
    NotLocal {
        /// Which request.
        request: &'static str,
    },
    /// A request refused as epmd refuses it without `-relaxed_command_check`.
    #[error("{request} refused (no relaxed command check)")]
    Refused {
        /// Which request.
        request: &'static str,
    },
}

impl From<io::Error> for ConnectionError {
    fn from(source: io::Error) -> Self {
        ConnectionError::Io { source }
    }
}

/// An embedded EPMD bound to a socket; [`EpmdServer::run`] serves it.
#[derive(Debug)]
pub struct EpmdServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    limits: EpmdLimits,
    registry: Arc<Registry>,
}

impl EpmdServer {
    /// Binds the EPMD port with the default [`EpmdLimits`].
    pub async fn bind(addr: SocketAddr) -> io::Result<EpmdServer> {
        Self::bind_with_limits(addr, EpmdLimits::default()).await
    }

    /// Binds the EPMD port with these connection bounds.
    pub async fn bind_with_limits(addr: SocketAddr, limits: EpmdLimits) -> io::Result<EpmdServer> {
        let listener = crate::listen(addr)?;
        let local_addr = listener.local_addr()?;
        Ok(EpmdServer {
            listener,
            local_addr,
            limits,
            registry: Arc::new(Registry::new(rand::random())),
        })
    }

    /// The bound address (useful after binding port 0).
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts and serves connections until `shutdown` is cancelled, then closes every
    /// connection (which drops every registration) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let EpmdServer {
            listener,
            local_addr,
            limits,
            registry,
        } = self;
        info!(addr = %local_addr, "embedded EPMD listening");
        let requests = crate::node::transport::admission::Budget::new(
            "EPMD request",
            limits.requests,
            limits.requests_per_ip,
        );
        let registrations = crate::node::transport::admission::Quota::new(
            limits.registrations,
            limits.registrations_per_ip,
        );
        let tasks = TaskTracker::new();
        let next_conn_id = AtomicU64::new(1);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "EPMD accept failed; backing off");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            };
            // Always admitted: a full budget closes an older connection instead.
            let slot = requests.admit(peer.ip());
            let conn = Connection {
                id: next_conn_id.fetch_add(1, Ordering::Relaxed),
                peer,
                epmd_port: local_addr.port(),
                registry: registry.clone(),
                registrations: registrations.clone(),
            };
            let shutdown = shutdown.clone();
            let span = info_span!("epmd_conn", %peer, conn = conn.id);
            tasks.spawn(conn.run(stream, shutdown, slot).instrument(span));
        }
        drop(listener);
        tasks.close();
        if timeout(DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
            warn!(
                remaining = tasks.len(),
                "EPMD connections did not close in time"
            );
        }
        info!(addr = %local_addr, "embedded EPMD stopped");
    }
}

/// A registered node.
#[derive(Debug, Clone)]
struct Node {
    conn_id: u64,
    fd: i64,
    port: u16,
    node_type: u8,
    protocol: u8,
    highest_version: u16,
    lowest_version: u16,
    extra: Vec<u8>,
}

/// Registered nodes by name. A `std::sync::Mutex` suffices: it is held only for map operations,
/// never across an `.await`.
#[derive(Debug)]
struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug)]
struct RegistryInner {
    nodes: HashMap<Vec<u8>, Node>,
    /// Last creation handed out; bumped per registration, never 0 (like epmd's `cr_counter`).
    creation: u32,
}

impl Registry {
    fn new(initial_creation: u32) -> Self {
        Registry {
            inner: Mutex::new(RegistryInner {
                nodes: HashMap::new(),
                creation: initial_creation,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        // The map stays consistent even if a holder panicked: every update is one insert/remove.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `name`; `None` when it is taken. Returns the 32-bit creation counter.
    fn register(&self, name: &[u8], node: Node) -> Option<u32> {
        let mut inner = self.lock();
        if inner.nodes.contains_key(name) {
            return None;
        }
        inner.creation = inner.creation.wrapping_add(1).max(1);
        inner.nodes.insert(name.to_vec(), node);
        crate::metrics::EPMD_REGISTERED.set(inner.nodes.len() as i64);
        Some(inner.creation)
    }

    /// Removes `name` if it is still owned by connection `conn_id`.
    fn unregister(&self, name: &[u8], conn_id: u64) {
        let mut inner = self.lock();
        if inner
            .nodes
            .get(name)
            .is_some_and(|node| node.conn_id == conn_id)
        {
            inner.nodes.remove(name);
            crate::metrics::EPMD_REGISTERED.set(inner.nodes.len() as i64);
        }
    }

    fn lookup(&self, name: &[u8]) -> Option<Node> {
        self.lock().nodes.get(name).cloned()
    }

    /// All nodes, sorted by name.
    fn snapshot(&self) -> Vec<(Vec<u8>, Node)> {
        let mut nodes: Vec<_> = self
            .lock()
            .nodes
            .iter()
            .map(|(name, node)| (name.clone(), node.clone()))
            .collect();
        nodes.sort_by(|a, b| a.0.cmp(&b.0));
        nodes
    }
}

/// Removes a registration when its connection task ends, however it ends.
struct RegistrationGuard {
    registry: Arc<Registry>,
    name: Vec<u8>,
    conn_id: u64,
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        self.registry.unregister(&self.name, self.conn_id);
        debug!(name = %String::from_utf8_lossy(&self.name), "node unregistered");
    }
}

/// A parsed `ALIVE2_REQ`.
struct Alive2<'a> {
    port: u16,
    node_type: u8,
    protocol: u8,
    highest_version: u16,
    lowest_version: u16,
    name: &'a [u8],
    extra: &'a [u8],
}

impl<'a> Alive2<'a> {
    fn parse(body: &'a [u8]) -> Result<Self, ConnectionError> {
        let malformed = |reason| ConnectionError::Malformed {
            request: "ALIVE2_REQ",
            reason,
        };
        // epmd: `bsize <= 13` is too small (at least one name character).
        if body.len() <= ALIVE2_FIXED_LEN + 2 {
            return Err(malformed("too short"));
        }
        let u16_at = |i: usize| u16::from_be_bytes([body[i], body[i + 1]]);
        // ok (indexing below): body.len() > 13 was checked above.
        let name_len = usize::from(u16_at(9));
        let name_end = ALIVE2_FIXED_LEN + name_len;
        if name_end + 2 > body.len() {
            return Err(malformed("node name length exceeds the request"));
        }
        let extra_len = usize::from(u16_at(name_end));
        let extra_start = name_end + 2;
        if extra_start + extra_len > body.len() {
            return Err(malformed("extra length exceeds the request"));
        }
        Ok(Alive2 {
            port: u16_at(1),
            node_type: body[3],
            protocol: body[4],
            highest_version: u16_at(5),
            lowest_version: u16_at(7),
            name: &body[ALIVE2_FIXED_LEN..name_end],
            extra: &body[extra_start..extra_start + extra_len],
        })
    }
}

/// One accepted connection.
struct Connection {
    id: u64,
    peer: SocketAddr,
    epmd_port: u16,
    registry: Arc<Registry>,
    registrations: Arc<crate::node::transport::admission::Quota>,
}

/// A registration being held: the name and its place in the registration quota, given back
/// when the connection ends.
struct Held {
    _guard: RegistrationGuard,
    _place: crate::node::transport::admission::QuotaPlace,
}

impl Connection {
    async fn run(
        self,
        mut stream: TcpStream,
        shutdown: CancellationToken,
        slot: crate::node::transport::admission::Slot,
    ) {
        let result = tokio::select! {
            _ = shutdown.cancelled() => Ok(None),
            _ = slot.evicted() => Err(ConnectionError::Evicted),
            result = self.serve(&mut stream) => result,
        };
        // Answered (or registered): out of the request budget.
        drop(slot);
        let result = match result {
            Ok(Some(held)) => {
                let result = tokio::select! {
                    _ = shutdown.cancelled() => Ok(()),
                    result = hold(&mut stream) => result,
                };
                drop(held);
                result
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            debug!(%error, "closing EPMD connection");
        }
    }

    /// Reads and answers one request. A registration is returned to be held.
    async fn serve(&self, stream: &mut TcpStream) -> Result<Option<Held>, ConnectionError> {
        let request = match timeout(REQUEST_TIMEOUT, read_request(stream)).await {
            Err(_) => {
                return Err(ConnectionError::RequestTimeout {
                    after: REQUEST_TIMEOUT,
                });
            }
            Ok(Ok(None)) => return Ok(None), // closed before sending anything: a probe
            Ok(Ok(Some(request))) => request,
            Ok(Err(error)) => return Err(error),
        };
        let local = is_local_peer(self.peer.ip(), stream.local_addr()?.ip());
        let Some(&tag) = request.first() else {
            return Err(ConnectionError::EmptyRequest);
        };
        crate::metrics::epmd_request(match tag {
            ALIVE2_REQ => 0,
            PORT_PLEASE2_REQ => 1,
            NAMES_REQ => 2,
            DUMP_REQ => 3,
            _ => 4,
        });
        let answered = match tag {
            ALIVE2_REQ if !local => Err(ConnectionError::NotLocal {
                request: "ALIVE2_REQ",
            }),
            ALIVE2_REQ => return self.alive2(stream, &request).await,
            PORT_PLEASE2_REQ => self.port_please(stream, &request).await,
            NAMES_REQ => {
                let reply = self.listing(|name, node| {
                    let mut line = b"name ".to_vec();
                    line.extend_from_slice(name);
                    line.extend_from_slice(format!(" at port {}\n", node.port).as_bytes());
                    line
                });
                write_reply(stream, &reply).await
            }
            DUMP_REQ if !local => Err(ConnectionError::NotLocal {
                request: "DUMP_REQ",
            }),
            DUMP_REQ => {
                let reply = self.listing(|name, node| {
                    let mut line = b"active name     <".to_vec();
                    line.extend_from_slice(name);
                    // epmd includes the C string terminator in each dump line.
                    line.extend_from_slice(
                        format!("> at port {}, fd = {}\n\0", node.port, node.fd).as_bytes(),
                    );
                    line
                });
                write_reply(stream, &reply).await
            }
            KILL_REQ if !local => Err(ConnectionError::NotLocal {
                request: "KILL_REQ",
            }),
            KILL_REQ => {
                debug!("refusing KILL_REQ: the embedded EPMD lives as long as its node");
                write_reply(stream, KILL_REFUSED).await
            }
            STOP_REQ => Err(ConnectionError::Refused {
                request: "STOP_REQ",
            }),
            tag => Err(ConnectionError::UnknownRequest { tag }),
        };
        answered.map(|()| None)
    }

    async fn alive2(
        &self,
        stream: &mut TcpStream,
        body: &[u8],
    ) -> Result<Option<Held>, ConnectionError> {
        let req = Alive2::parse(body)?;
        let display_name = String::from_utf8_lossy(req.name).into_owned();
        let mut place = None;
        let registered = match (check_name(req.name), req.extra.len() <= MAX_EXTRA_BYTES) {
            (Err(reason), _) => {
                debug!(name = %display_name, reason, "refusing ALIVE2_REQ: invalid name");
                None
            }
            (Ok(_), false) => {
                debug!(name = %display_name, "refusing ALIVE2_REQ: extra data too long");
                None
            }
            (Ok(_), true) => match self.registrations.take(self.peer.ip()) {
                Err(full) => {
                    if self.registrations.should_log() {
                        warn!(
                            name = %display_name,
                            peer = %self.peer,
                            limit = ?full,
                            "refusing ALIVE2_REQ: too many registrations (in total, or from this address); further refusals within a second are logged at debug"
                        );
                    } else {
                        debug!(name = %display_name, limit = ?full, "refusing ALIVE2_REQ: too many registrations");
                    }
                    None
                }
                Ok(taken) => {
                    place = Some(taken);
                    let node = Node {
                        conn_id: self.id,
                        fd: raw_fd(stream),
                        port: req.port,
                        node_type: req.node_type,
                        protocol: req.protocol,
                        highest_version: req.highest_version,
                        lowest_version: req.lowest_version,
                        extra: req.extra.to_vec(),
                    };
                    let creation = self.registry.register(req.name, node);
                    if creation.is_none() {
                        debug!(name = %display_name, "refusing ALIVE2_REQ: name already registered");
                    }
                    creation
                }
            },
        };
        // Unregisters however this function ends, including a failed reply write.
        let guard = registered.map(|_| RegistrationGuard {
            registry: self.registry.clone(),
            name: req.name.to_vec(),
            conn_id: self.id,
        });
        let (result, creation) = match registered {
            Some(creation) => (RESULT_OK, creation),
            None => (RESULT_ERROR, FAILED_CREATION),
        };
        let mut reply = Vec::with_capacity(6);
        let creation = if req.highest_version >= X_RESP_MIN_VERSION {
            reply.extend_from_slice(&[ALIVE2_X_RESP, result]);
            reply.extend_from_slice(&creation.to_be_bytes());
            creation
        } else {
            // epmd hands old nodes the 2-bit creations 1..=3.
            let creation = if registered.is_some() {
                creation % 3 + 1
            } else {
                creation
            };
            reply.extend_from_slice(&[ALIVE2_RESP, result]);
            // ok: creation is 1..=3 or 99 here.
            reply.extend_from_slice(&(creation as u16).to_be_bytes());
            creation
        };
        write_reply(stream, &reply).await?;
        let (Some(guard), Some(place)) = (guard, place) else {
            return Ok(None);
        };
        info!(name = %display_name, port = req.port, creation, "node registered");
        Ok(Some(Held {
            _guard: guard,
            _place: place,
        }))
    }

    async fn port_please(
        &self,
        stream: &mut TcpStream,
        body: &[u8],
    ) -> Result<(), ConnectionError> {
        let name = port_please_name(body)?;
        let reply = match self.registry.lookup(name) {
            None => vec![PORT2_RESP, RESULT_ERROR],
            Some(node) => {
                let mut reply = Vec::with_capacity(14 + name.len() + node.extra.len());
                reply.extend_from_slice(&[PORT2_RESP, RESULT_OK]);
                reply.extend_from_slice(&node.port.to_be_bytes());
                reply.extend_from_slice(&[node.node_type, node.protocol]);
                reply.extend_from_slice(&node.highest_version.to_be_bytes());
                reply.extend_from_slice(&node.lowest_version.to_be_bytes());
                // ok (both casts): names are <= 1020 bytes, extra <= MAX_EXTRA_BYTES.
                reply.extend_from_slice(&(name.len() as u16).to_be_bytes());
                reply.extend_from_slice(name);
                reply.extend_from_slice(&(node.extra.len() as u16).to_be_bytes());
                reply.extend_from_slice(&node.extra);
                reply
            }
        };
        write_reply(stream, &reply).await
    }

    /// The `NAMES_REQ`/`DUMP_REQ` answer: the EPMD port as `u32`, then one line per node.
    fn listing(&self, line: impl Fn(&[u8], &Node) -> Vec<u8>) -> Vec<u8> {
        let mut reply = u32::from(self.epmd_port).to_be_bytes().to_vec();
        for (name, node) in self.registry.snapshot() {
            reply.extend_from_slice(&line(&name, &node));
        }
        reply
    }
}

/// Holds a registration until the node closes the connection. Bytes it sends meanwhile are
/// ignored (bounded buffer, no accumulation).
async fn hold(stream: &mut TcpStream) -> Result<(), ConnectionError> {
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(()),
            Ok(n) => debug!(bytes = n, "ignoring bytes on a registration connection"),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Reads one `u16`-length-prefixed request, however it is segmented. `None` on a clean close
/// before the first byte.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Vec<u8>>, ConnectionError> {
    let mut len = [0u8; 2];
    let first = stream.read(&mut len[..1]).await?;
    if first == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut len[1..]).await?;
    let len = check_request_len(u16::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Checks a request's `u16` length prefix: not empty, at most [`MAX_REQUEST_LEN`].
fn check_request_len(len: u16) -> Result<usize, ConnectionError> {
    let len = usize::from(len);
    if len == 0 {
        return Err(ConnectionError::EmptyRequest);
    }
    if len > MAX_REQUEST_LEN {
        return Err(ConnectionError::RequestTooLong {
            len,
            max: MAX_REQUEST_LEN,
        });
    }
    Ok(len)
}

/// The node name of a `PORT_PLEASE2_REQ` body (tag included), checked with [`check_name`].
fn port_please_name(body: &[u8]) -> Result<&[u8], ConnectionError> {
    // epmd tolerates a trailing NUL terminator.
    let name = match body {
        [_, name @ .., 0] => name,
        [_, name @ ..] => name,
        [] => &[][..],
    };
    check_name(name).map_err(|reason| ConnectionError::Malformed {
        request: "PORT_PLEASE2_REQ",
        reason,
    })?;
    Ok(name)
}

/// Parses the first request in `buf` (the bytes a connection has buffered so far) without a
/// socket or a registry: the `u16` length prefix and the body's fields, with the same checks
/// (and the same functions) a connection applies before acting on a request.
///
/// Returns `Ok(None)` while the request is incomplete ("need more bytes" is not an error),
/// else the request body (its first byte is the tag); the request occupied `2 + body.len()`
/// bytes of `buf`. An invalid name in an `ALIVE2_REQ` is not an error here: the server answers
/// it with a refused registration. The refusals that depend on the peer's address (local-only
/// requests) are not applied. Used by the fuzzer (`fuzz/fuzz_targets/epmd_request.rs`).
pub fn parse_request(buf: &[u8]) -> Result<Option<&[u8]>, ConnectionError> {
    let [hi, lo, rest @ ..] = buf else {
        return Ok(None);
    };
    let len = check_request_len(u16::from_be_bytes([*hi, *lo]))?;
    let Some(body) = rest.get(..len) else {
        return Ok(None);
    };
    // ok (index 0): check_request_len refuses an empty body.
    match body[0] {
        ALIVE2_REQ => {
            Alive2::parse(body)?;
        }
        PORT_PLEASE2_REQ => {
            port_please_name(body)?;
        }
        NAMES_REQ | DUMP_REQ | KILL_REQ => {}
        STOP_REQ => {
            return Err(ConnectionError::Refused {
                request: "STOP_REQ",
            });
        }
        tag => return Err(ConnectionError::UnknownRequest { tag }),
    }
    Ok(Some(body))
}

/// Writes a whole reply under [`WRITE_TIMEOUT`]; the caller then drops (closes) the stream.
async fn write_reply(stream: &mut TcpStream, reply: &[u8]) -> Result<(), ConnectionError> {
    timeout(WRITE_TIMEOUT, stream.write_all(reply))
        .await
        .map_err(|_| ConnectionError::WriteTimeout {
            after: WRITE_TIMEOUT,
        })??;
    Ok(())
}

/// epmd's `conn_local_peer_check`: loopback, or the peer is this host's own address.
fn is_local_peer(peer: IpAddr, local: IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == local.to_canonical()
}

#[cfg(unix)]
fn raw_fd(stream: &TcpStream) -> i64 {
    use std::os::fd::AsRawFd;
    i64::from(stream.as_raw_fd())
}

#[cfg(not(unix))]
fn raw_fd(_stream: &TcpStream) -> i64 {
    -1
}
