//! EPMD client: register a node (`ALIVE2_REQ`, keeping the connection open for as long as the
//! registration should live), look a node up (`PORT_PLEASE2_REQ`) and list nodes (`NAMES_REQ`).
//!
//! Tokio-native; every request/response exchange runs under [`NETWORK_TIMEOUT`]. Wire shapes are
//! in [`super::proto`] (OTP ERTS User's Guide, "Distribution Protocol", "EPMD Protocol").

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::debug;

use super::EpmdError;
use super::proto::{
    ALIVE2_REQ, ALIVE2_RESP, ALIVE2_X_RESP, DIST_VERSION_HIGHEST, DIST_VERSION_LOWEST, NAMES_REQ,
    NODE_TYPE_HIDDEN, NODE_TYPE_NORMAL, PORT_PLEASE2_REQ, PORT2_RESP, PROTOCOL_TCP_IPV4, RESULT_OK,
    check_name,
};

/// Deadline for connecting to the EPMD and for each complete request/response exchange.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bound on a `NAMES_REQ` answer we are willing to buffer.
#[cfg_attr(not(test), allow(dead_code))] // used by tests
const MAX_NAMES_RESPONSE: usize = 1 << 20;

/// What the EPMD knows about a registered node (`PORT2_RESP`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's distribution listen port.
    pub port: u16,
    /// Node type: 77 (`'M'`) normal, 72 (`'H'`) hidden.
    pub node_type: u8,
    /// Transport protocol; 0 is TCP/IPv4.
    pub protocol: u8,
    /// Highest distribution version the node supports.
    pub highest_version: u16,
    /// Lowest distribution version the node supports.
    pub lowest_version: u16,
    /// The node name (the part before `@`).
    pub name: String,
    /// The opaque `extra` field of the registration.
    pub extra: Vec<u8>,
}

/// A live registration with an EPMD. The registration lasts exactly as long as this value's TCP
/// connection: dropping it (or calling [`Registration::close`]) unregisters the name.
#[derive(Debug)]
pub struct Registration {
    /// The creation the EPMD handed out (32-bit, or a widened 16-bit value from old EPMDs).
    pub creation: u32,
    epmd: SocketAddr,
    stream: TcpStream,
    closed: bool,
}

impl Registration {
    /// Resolves when the EPMD side closes the connection (the EPMD died or dropped us), so the
    /// caller can register again. Cancel-safe; returns immediately once the connection is gone.
    pub async fn closed(&mut self) {
        let mut buf = [0u8; 64];
        while !self.closed {
            // No timeout on purpose: a registration is held open indefinitely; this only watches
            // for the EPMD going away (loopback connections get a FIN or RST when it dies).
            match self.stream.read(&mut buf).await {
                Ok(0) => self.closed = true,
                Err(error) => {
                    debug!(epmd = %self.epmd, %error, "EPMD registration connection failed");
                    self.closed = true;
                }
                Ok(n) => {
                    debug!(epmd = %self.epmd, bytes = n, "ignoring unexpected bytes from EPMD")
                }
            }
        }
    }

    /// Unregisters by closing the connection (a FIN first, under [`NETWORK_TIMEOUT`]).
    pub async fn close(mut self) {
        if !self.closed {
            let _ = timeout(NETWORK_TIMEOUT, self.stream.shutdown()).await;
        }
    }
}

/// Registers `name` (the part before `@`) with distribution port `dist_port` at the EPMD on
/// `epmd`, as a hidden (72) or normal (77) node, protocol 0, versions 5..=6, no extra data.
///
/// Errors: [`EpmdError::Unreachable`] when nothing listens on `epmd`, [`EpmdError::NameTaken`]
/// when the EPMD refuses the name, [`EpmdError::InvalidName`] for names epmd would reject.
pub async fn register(
    epmd: SocketAddr,
    name: &str,
    dist_port: u16,
    hidden: bool,
) -> Result<Registration, EpmdError> {
    const OP: &str = "ALIVE2_REQ";
    check_name(name.as_bytes()).map_err(|reason| EpmdError::InvalidName {
        name: name.to_owned(),
        reason,
    })?;
    let node_type = if hidden {
        NODE_TYPE_HIDDEN
    } else {
        NODE_TYPE_NORMAL
    };
    let mut body = Vec::with_capacity(13 + name.len());
    body.push(ALIVE2_REQ);
    body.extend_from_slice(&dist_port.to_be_bytes());
    body.push(node_type);
    body.push(PROTOCOL_TCP_IPV4);
    body.extend_from_slice(&DIST_VERSION_HIGHEST.to_be_bytes());
    body.extend_from_slice(&DIST_VERSION_LOWEST.to_be_bytes());
    push_u16_prefixed(&mut body, name.as_bytes());
    push_u16_prefixed(&mut body, &[]);

    let mut stream = connect(epmd, OP).await?;
    let (result, creation) = deadline(epmd, OP, async {
        send_request(&mut stream, &body)
            .await
            .map_err(io_error(epmd, OP))?;
        let tag = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        let result = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        if result != RESULT_OK {
            // Do not insist on the creation bytes of a refusal.
            return Ok((result, 0));
        }
        let creation = match tag {
            ALIVE2_X_RESP => stream.read_u32().await.map_err(io_error(epmd, OP))?,
            ALIVE2_RESP => u32::from(stream.read_u16().await.map_err(io_error(epmd, OP))?),
            tag => {
                return Err(EpmdError::UnexpectedTag {
                    addr: epmd,
                    op: OP,
                    tag,
                });
            }
        };
        Ok((result, creation))
    })
    .await?;
    if result != RESULT_OK {
        return Err(EpmdError::NameTaken {
            name: name.to_owned(),
        });
    }
    Ok(Registration {
        creation,
        epmd,
        stream,
        closed: false,
    })
}

/// Asks the EPMD on `epmd` for the node `name` (the part before `@`). `Ok(None)` when the EPMD
/// does not know it.
pub async fn port_please(epmd: SocketAddr, name: &str) -> Result<Option<NodeInfo>, EpmdError> {
    const OP: &str = "PORT_PLEASE2_REQ";
    check_name(name.as_bytes()).map_err(|reason| EpmdError::InvalidName {
        name: name.to_owned(),
        reason,
    })?;
    let mut body = Vec::with_capacity(1 + name.len());
    body.push(PORT_PLEASE2_REQ);
    body.extend_from_slice(name.as_bytes());

    let mut stream = connect(epmd, OP).await?;
    deadline(epmd, OP, async {
        send_request(&mut stream, &body)
            .await
            .map_err(io_error(epmd, OP))?;
        let tag = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        if tag != PORT2_RESP {
            return Err(EpmdError::UnexpectedTag {
                addr: epmd,
                op: OP,
                tag,
            });
        }
        let result = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        if result != RESULT_OK {
            return Ok(None);
        }
        let port = stream.read_u16().await.map_err(io_error(epmd, OP))?;
        let node_type = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        let protocol = stream.read_u8().await.map_err(io_error(epmd, OP))?;
        let highest_version = stream.read_u16().await.map_err(io_error(epmd, OP))?;
        let lowest_version = stream.read_u16().await.map_err(io_error(epmd, OP))?;
        let name = read_u16_prefixed(&mut stream)
            .await
            .map_err(io_error(epmd, OP))?;
        let extra = read_u16_prefixed(&mut stream)
            .await
            .map_err(io_error(epmd, OP))?;
        let name = String::from_utf8(name).map_err(|_| EpmdError::Malformed {
            addr: epmd,
            op: OP,
            reason: "node name is not valid UTF-8",
        })?;
        Ok(Some(NodeInfo {
            port,
            node_type,
            protocol,
            highest_version,
            lowest_version,
            name,
            extra,
        }))
    })
    .await
}

/// Lists the nodes registered with the EPMD on `epmd` as `(name, port)` pairs, in the EPMD's
/// order.
#[cfg_attr(not(test), allow(dead_code))] // used by tests
pub async fn names(epmd: SocketAddr) -> Result<Vec<(String, u16)>, EpmdError> {
    const OP: &str = "NAMES_REQ";
    let mut stream = connect(epmd, OP).await?;
    let text = deadline(epmd, OP, async {
        send_request(&mut stream, &[NAMES_REQ])
            .await
            .map_err(io_error(epmd, OP))?;
        let _epmd_port = stream.read_u32().await.map_err(io_error(epmd, OP))?;
        let mut text = Vec::new();
        (&mut stream)
            .take(MAX_NAMES_RESPONSE as u64 + 1)
            .read_to_end(&mut text)
            .await
            .map_err(io_error(epmd, OP))?;
        if text.len() > MAX_NAMES_RESPONSE {
            return Err(EpmdError::Malformed {
                addr: epmd,
                op: OP,
                reason: "NAMES answer longer than 1 MiB",
            });
        }
        Ok(text)
    })
    .await?;
    parse_names(&text).ok_or(EpmdError::Malformed {
        addr: epmd,
        op: OP,
        reason: "a line is not `name <name> at port <port>`",
    })
}

/// Parses the lines of a `NAMES_REQ` answer (`name <name> at port <port>\n`).
#[cfg_attr(not(test), allow(dead_code))] // used by tests
fn parse_names(text: &[u8]) -> Option<Vec<(String, u16)>> {
    let text = String::from_utf8_lossy(text);
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let rest = line.strip_prefix("name ")?;
            let (name, port) = rest.rsplit_once(" at port ")?;
            Some((name.to_owned(), port.trim().parse().ok()?))
        })
        .collect()
}

fn push_u16_prefixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    // ok: callers pass names checked to <= 255 chars (<= 1020 bytes) or empty extra data.
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&bytes[..usize::from(len)]);
}

async fn read_u16_prefixed(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut bytes = vec![0; usize::from(len)];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

/// Writes one length-prefixed request in a single write.
async fn send_request(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let len = u16::try_from(body.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "EPMD request too long"))?;
    let mut frame = Vec::with_capacity(2 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn connect(epmd: SocketAddr, op: &'static str) -> Result<TcpStream, EpmdError> {
    let stream = deadline(epmd, op, async {
        TcpStream::connect(epmd).await.map_err(io_error(epmd, op))
    })
    .await?;
    // Requests are written in one piece; Nagle only delays them.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs `fut` under [`NETWORK_TIMEOUT`].
async fn deadline<T>(
    epmd: SocketAddr,
    op: &'static str,
    fut: impl Future<Output = Result<T, EpmdError>>,
) -> Result<T, EpmdError> {
    timeout(NETWORK_TIMEOUT, fut)
        .await
        .map_err(|_| EpmdError::Timeout {
            addr: epmd,
            op,
            after: NETWORK_TIMEOUT,
        })?
}

/// Classifies an I/O error: refused → unreachable, EOF → closed, the rest → I/O.
fn io_error(epmd: SocketAddr, op: &'static str) -> impl FnOnce(io::Error) -> EpmdError {
    move |source| match source.kind() {
        io::ErrorKind::ConnectionRefused => EpmdError::Unreachable { addr: epmd, source },
        io::ErrorKind::UnexpectedEof => EpmdError::Closed { addr: epmd, op },
        _ => EpmdError::Io {
            addr: epmd,
            op,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_lines() {
        let text = b"name foo at port 4000\nname with space at port 17\n";
        assert_eq!(
            parse_names(text),
            Some(vec![("foo".into(), 4000), ("with space".into(), 17)])
        );
        assert_eq!(parse_names(b""), Some(vec![]));
        assert_eq!(parse_names(b"bogus\n"), None);
    }

    #[tokio::test]
    async fn refused_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = names(addr).await.unwrap_err();
        assert!(matches!(err, EpmdError::Unreachable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn silent_epmd_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(NETWORK_TIMEOUT * 3).await;
            drop(stream);
        });
        let err = port_please(addr, "x").await.unwrap_err();
        assert!(matches!(err, EpmdError::Timeout { .. }), "{err:?}");
        hold.abort();
    }
}
