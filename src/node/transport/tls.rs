//! TLS distribution, compatible with OTP's `inet_tls_dist` (`erl -proto_dist inet_tls`).
//!
//! What differs from plain TCP distribution (OTP `inet_tls_dist.erl`, "Using TLS for Erlang
//! Distribution" in the ssl guide):
//! - TLS is set up first, right after TCP connect/accept; everything else runs inside it.
//! - The distribution handshake messages carry **4-byte** length prefixes (`{packet, 4}`)
//!   instead of TCP's 2-byte ones. [`Packet4`] adapts erl_dist's 2-byte handshake to that, so
//!   [`super::handshake`] is reused unchanged.
//! - After the handshake, frames are the usual `u32` length + body.
//!
//! Certificates come from PEM files ([`TlsOptions`]). kvnode as a server presents its
//! certificate and, with `verify_peer`, requires a client certificate signed by the CA. As a
//! client (dialing a peer) it verifies the peer's certificate against the CA and the host of
//! the peer's node name, and presents its own certificate (OTP servers with `verify_peer`
//! require one).
//!
//! The established connection code ([`super::connection`]) works on readiness-based
//! non-blocking sockets ([`super::stream::RawStream`]). A TLS connection is bridged to it
//! through a `UnixStream` pair: a pump copies between the TLS stream and one end, the
//! connection runs on the other. Either side ending ends the other.

use super::connection;
use crate::node::Node;
use erl_dist::DistributionFlags;
use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Buffer size of each direction of the pump.
const PUMP_BUF: usize = 64 * 1024;
/// How long the pump may go on writing what the connection left once the connection ended.
const PUMP_GRACE: Duration = Duration::from_secs(2);
/// Largest handshake message: they go to erl_dist, which frames them with 2-byte lengths.
const MAX_HANDSHAKE_MESSAGE: u32 = u16::MAX as u32;

/// Bytes of an inbound connection looked at before the TLS handshake (a TLS record header is
/// 5 bytes; a plain distribution `send_name` shows itself in 3: 2-byte length, `N` or `n`).
const PEEK_HEAD: usize = 16;

/// The first byte of every TLS connection a client opens: a record of content type
/// `handshake` (22) carrying its ClientHello.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why an inbound TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The peer's first bytes are not a TLS record. `plain_distribution`: they are the start
    /// of a plain-TCP distribution handshake (a node without `-proto_dist inet_tls`).
    #[error("peer is not using TLS{} (first bytes: {head})", if *plain_distribution { ": it sent a plain-TCP distribution handshake" } else { "" })]
    NotTls {
        /// The first bytes, escaped ([`super::handshake::excerpt`]).
        head: String,
        /// They look like a distribution `send_name`.
        plain_distribution: bool,
    },
    /// The peer closed the connection without sending anything.
    #[error("peer closed the connection before the TLS handshake")]
    Closed,
    /// The TLS handshake itself failed (rustls' reason: an unknown issuer, no client
    /// certificate, ...) or the socket did.
    #[error("{0}")]
    Tls(io::Error),
}

impl AcceptError {
    /// A refusal of the peer's credentials or protocol (logged as a wrong cookie is), as
    /// opposed to a connection that merely went away.
    pub fn is_refusal(&self) -> bool {
        match self {
            AcceptError::NotTls { .. } => true,
            AcceptError::Closed => false,
            AcceptError::Tls(e) => e.kind() == io::ErrorKind::InvalidData,
        }
    }
}

/// `None` when `head` (the first bytes a peer sent) may be a TLS ClientHello.
fn classify_first_bytes(head: &[u8]) -> Option<AcceptError> {
    match head.first() {
        None => Some(AcceptError::Closed),
        Some(&TLS_HANDSHAKE_RECORD) => None,
        Some(_) => Some(AcceptError::NotTls {
            head: super::handshake::excerpt(head),
            plain_distribution: matches!(head.get(2), Some(b'N' | b'n')),
        }),
    }
}

/// Where the certificates are and whether clients must present one (the `--tls-*` flags).
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Our certificate (chain), PEM.
    pub cert: PathBuf,
    /// Our private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificate(s) peers' certificates must chain to, PEM.
    pub cacert: PathBuf,
    /// Require and verify a client certificate from inbound peers.
    pub verify_peer: bool,
}

/// Errors loading the TLS settings (startup errors; they name the file).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} {path}: {source}")]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{flag} {path}: {what}")]
    Pem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the certificates or key (for example: the key does not match).
    #[error("{what}: {source}")]
    Rustls {
        /// What was being set up.
        what: &'static str,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The key is not the one of the certificate.
    #[error("--tls-key {key} is not the private key of --tls-cert {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The client-certificate verifier could not be built from the CA.
    #[error("--tls-cacert: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Loaded TLS settings: an acceptor for inbound and a connector for outbound connections.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    verify_peer: bool,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Tls")
            .field("verify_peer", &self.verify_peer)
            .finish_non_exhaustive()
    }
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(flag: &'static str, path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::Pem {
        flag,
        path: path.to_owned(),
        what: what.into(),
    }
}

fn load_certs(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(flag, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(flag, path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(
            flag,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn load_key(flag: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(flag, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_error(
            flag,
            path,
            "holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ),
        e => pem_error(flag, path, format!("not valid PEM: {e}")),
    })
}

impl Tls {
    /// Reads the PEM files and builds the server and client settings.
    pub fn load(opts: &TlsOptions) -> Result<Tls, TlsError> {
        let certs = load_certs("--tls-cert", &opts.cert)?;
        let key = load_key("--tls-key", &opts.key)?;
        let mut roots = RootCertStore::empty();
        for ca in load_certs("--tls-cacert", &opts.cacert)? {
            roots.add(ca).map_err(|source| TlsError::Rustls {
                what: "--tls-cacert",
                source,
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let rustls_err = |what| {
            move |source| match source {
                rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                    cert: opts.cert.clone(),
                    key: opts.key.clone(),
                },
                source => TlsError::Rustls { what, source },
            }
        };

        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_err("TLS versions"))?;
        let server = if opts.verify_peer {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                    .build()?;
            server.with_client_cert_verifier(verifier)
        } else {
            server.with_no_client_auth()
        };
        let server = server
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(rustls_err("--tls-cert/--tls-key"))?;

        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_err("TLS versions"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(rustls_err("--tls-cert/--tls-key"))?;

        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            verify_peer: opts.verify_peer,
        })
    }

    /// Whether inbound peers must present a certificate from the CA.
    pub fn verify_peer(&self) -> bool {
        self.verify_peer
    }

    /// The server side of the TLS handshake on an accepted connection. The peer's first
    /// bytes are looked at (not consumed) first, so a peer that does not speak TLS at all (a
    /// plain-TCP distribution node, most often) is told apart from a failed TLS handshake.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::server::TlsStream<TcpStream>, AcceptError> {
        let mut head = [0u8; PEEK_HEAD];
        let n = tcp.peek(&mut head).await.map_err(AcceptError::Tls)?;
        if let Some(error) = classify_first_bytes(&head[..n]) {
            return Err(error);
        }
        self.acceptor.accept(tcp).await.map_err(AcceptError::Tls)
    }

    /// The client side of the TLS handshake toward `host` (the host part of the peer's node
    /// name, which its certificate must name).
    pub async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{host:?} is not a valid TLS server name: {e}"),
            )
        })?;
        self.connector.connect(name, tcp).await
    }
}

/// Serves an established TLS connection: a pump copies between `tls` and `remote`, and
/// [`connection::serve`] runs on `local`, the other end of the same `UnixStream` pair (made
/// before the handshake, so running out of descriptors fails there). Returns when both ended.
pub async fn serve<T>(
    node: Node,
    tls: T,
    (local, remote): (UnixStream, UnixStream),
    peer: String,
    flags: DistributionFlags,
) where
    T: AsyncRead + AsyncWrite + Send + Unpin,
{
    let pump = pump(tls, remote);
    let conn = connection::serve(node, local, peer, flags);
    tokio::pin!(pump, conn);
    tokio::select! {
        // The TLS side ended: the connection reads EOF and ends too.
        () = &mut pump => conn.await,
        // The connection ended: let the pump write what is left, then drop the TLS stream.
        () = &mut conn => {
            let _ = tokio::time::timeout(PUMP_GRACE, pump).await;
        }
    }
}

/// Copies both ways between the TLS stream and the local end of the pair until either
/// direction ends; the other side is shut down (a TLS close_notify toward the peer).
async fn pump<T>(tls: T, unix: UnixStream)
where
    T: AsyncRead + AsyncWrite + Send + Unpin,
{
    let (tls_r, mut tls_w) = tokio::io::split(tls);
    let (unix_r, mut unix_w) = unix.into_split();
    let mut tls_r = BufReader::with_capacity(PUMP_BUF, tls_r);
    let mut unix_r = BufReader::with_capacity(PUMP_BUF, unix_r);
    let inbound = async {
        let r = tokio::io::copy_buf(&mut tls_r, &mut unix_w).await;
        let _ = unix_w.shutdown().await;
        r
    };
    let outbound = async {
        let r = tokio::io::copy_buf(&mut unix_r, &mut tls_w).await;
        let _ = tokio::time::timeout(PUMP_GRACE, tls_w.shutdown()).await;
        r
    };
    tokio::select! {
        r = inbound => {
            if let Err(error) = r {
                tracing::debug!(%error, "TLS read failed");
            }
        }
        r = outbound => {
            if let Err(error) = r {
                tracing::debug!(%error, "TLS write failed");
            }
        }
    }
}

/// Adapts a stream with 4-byte-length handshake messages (TLS distribution) to erl_dist's
/// handshake, which reads and writes 2-byte lengths: outgoing 2-byte headers become 4-byte
/// ones, incoming 4-byte headers become 2-byte ones (a length over 65535 is an error). Bodies
/// pass through. It never reads past the last message it was asked for, so after the
/// handshake [`Packet4::into_inner`] gives back the stream exactly where distribution frames
/// start.
pub struct Packet4<S> {
    inner: S,
    /// Outgoing: bytes of the 2-byte header seen so far.
    out_hdr: [u8; 2],
    out_hdr_len: usize,
    /// Outgoing: body bytes of the current message still to pass through.
    out_body_left: usize,
    /// Outgoing: converted bytes not yet written to `inner`.
    wbuf: Vec<u8>,
    /// Incoming: bytes of the 4-byte header read so far.
    in_hdr: [u8; 4],
    in_hdr_len: usize,
    /// Incoming: body bytes of the current message still to pass through.
    in_body_left: usize,
    /// Incoming: the converted 2-byte header and how much of it was handed out.
    in_short: [u8; 2],
    in_short_pos: usize,
}

impl<S> Packet4<S> {
    /// Wraps a stream at the start of a handshake.
    pub fn new(inner: S) -> Self {
        Packet4 {
            inner,
            out_hdr: [0; 2],
            out_hdr_len: 0,
            out_body_left: 0,
            wbuf: Vec::new(),
            in_hdr: [0; 4],
            in_hdr_len: 0,
            in_body_left: 0,
            in_short: [0; 2],
            in_short_pos: 2,
        }
    }

    /// The stream, after the handshake (erl_dist flushes every message it writes).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncWrite + Unpin> Packet4<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wbuf.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Packet4<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.in_short_pos < 2 {
                let n = (2 - this.in_short_pos).min(buf.remaining());
                buf.put_slice(&this.in_short[this.in_short_pos..this.in_short_pos + n]);
                this.in_short_pos += n;
                return Poll::Ready(Ok(()));
            }
            if this.in_body_left > 0 {
                let limit = this.in_body_left.min(buf.remaining());
                let mut sub = ReadBuf::new(buf.initialize_unfilled_to(limit));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
                let n = sub.filled().len();
                buf.advance(n);
                this.in_body_left -= n;
                return Poll::Ready(Ok(()));
            }
            let mut hdr = ReadBuf::new(&mut this.in_hdr[this.in_hdr_len..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut hdr))?;
            let n = hdr.filled().len();
            if n == 0 {
                return Poll::Ready(Ok(())); // EOF
            }
            this.in_hdr_len += n;
            if this.in_hdr_len == 4 {
                this.in_hdr_len = 0;
                let len = u32::from_be_bytes(this.in_hdr);
                if len > MAX_HANDSHAKE_MESSAGE {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("handshake message of {len} bytes (more than 65535)"),
                    )));
                }
                // Proven to fit by the check above.
                this.in_short = (len as u16).to_be_bytes();
                this.in_short_pos = 0;
                this.in_body_left = len as usize;
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Packet4<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        let mut i = 0;
        while i < buf.len() {
            if this.out_body_left > 0 {
                let n = this.out_body_left.min(buf.len() - i);
                this.wbuf.extend_from_slice(&buf[i..i + n]);
                this.out_body_left -= n;
                i += n;
            } else {
                this.out_hdr[this.out_hdr_len] = buf[i];
                this.out_hdr_len += 1;
                i += 1;
                if this.out_hdr_len == 2 {
                    this.out_hdr_len = 0;
                    let len = u16::from_be_bytes(this.out_hdr);
                    this.wbuf.extend_from_slice(&u32::from(len).to_be_bytes());
                    this.out_body_left = usize::from(len);
                }
            }
        }
        // Start writing now; what the stream does not take goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn first_bytes_tell_a_plain_peer_from_a_tls_one() {
        assert!(matches!(
            classify_first_bytes(&[]),
            Some(AcceptError::Closed)
        ));
        // A TLS 1.2/1.3 ClientHello record header.
        assert!(classify_first_bytes(&[0x16, 3, 1, 0, 200]).is_none());
        // A v6 send_name, as OTP sends it on plain TCP.
        let e = classify_first_bytes(&[0, 38, b'N', 0, 0, 0, 13]).expect("not TLS");
        assert!(matches!(
            e,
            AcceptError::NotTls {
                plain_distribution: true,
                ..
            }
        ));
        assert!(e.is_refusal());
        let text = e.to_string();
        assert!(text.starts_with("peer is not using TLS"), "{text}");
        assert!(text.contains("\\x00&N"), "{text}");
        // Something else altogether.
        let e = classify_first_bytes(b"GET / HTTP/1.1").expect("not TLS");
        assert!(matches!(
            e,
            AcceptError::NotTls {
                plain_distribution: false,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn rewrites_outgoing_2_byte_headers_to_4_byte_ones() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut p = Packet4::new(a);
        // A header split across writes, then two messages in one write.
        p.write_all(&[0]).await.expect("write");
        p.write_all(&[3, b'a', b'b']).await.expect("write");
        p.write_all(&[b'c', 0, 0, 0, 1, b'z']).await.expect("write");
        p.flush().await.expect("flush");
        drop(p);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(
            got,
            [0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0, 0, 0, 1, b'z']
        );
    }

    #[tokio::test]
    async fn rewrites_incoming_4_byte_headers_and_stops_at_message_ends() {
        let (a, mut b) = tokio::io::duplex(1024);
        b.write_all(&[0, 0, 0, 2, b'h', b'i', 0, 0, 0, 1, b'!', 9, 9])
            .await
            .expect("write");
        let mut p = Packet4::new(a);
        let mut first = [0u8; 4];
        p.read_exact(&mut first).await.expect("read");
        assert_eq!(first, [0, 2, b'h', b'i']);
        let mut second = [0u8; 3];
        p.read_exact(&mut second).await.expect("read");
        assert_eq!(second, [0, 1, b'!']);
        // What follows the last message is left in the stream.
        let mut inner = p.into_inner();
        let mut rest = [0u8; 2];
        inner.read_exact(&mut rest).await.expect("read");
        assert_eq!(rest, [9, 9]);
    }

    #[tokio::test]
    async fn refuses_an_incoming_message_over_65535_bytes() {
        let (a, mut b) = tokio::io::duplex(1024);
        b.write_all(&[0, 1, 0, 0]).await.expect("write");
        let mut p = Packet4::new(a);
        let mut buf = [0u8; 2];
        let err = p.read_exact(&mut buf).await.expect_err("too large");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn missing_key_file_is_a_clear_error() {
        let opts = TlsOptions {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            cacert: "/nonexistent/ca.pem".into(),
            verify_peer: false,
        };
        let err = Tls::load(&opts).expect_err("missing files");
        assert!(
            err.to_string().contains("--tls-cert /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
