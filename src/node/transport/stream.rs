//! [`RawStream`]: the non-blocking socket operations the connection layer
//! ([`super::connection`], [`super::outbox`]) uses, so one established connection can run on a
//! plain `TcpStream` or on the local end of a `UnixStream` pair bridged to a TLS stream
//! ([`super::tls`]).

use std::future::Future;
use std::io;
use tokio::net::{TcpStream, UnixStream};

/// A stream with readiness-based, non-blocking reads and writes (what tokio's `TcpStream`
/// and `UnixStream` offer as inherent methods).
pub trait RawStream: Send + Sync + 'static {
    /// Waits until the stream may be readable.
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Waits until the stream may be writable.
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Reads what is there into the spare capacity of `buf` (`WouldBlock` when nothing is).
    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize>;
    /// Writes what the socket takes now (`WouldBlock` when it takes nothing).
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    /// Vectored [`RawStream::try_write`].
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
}

macro_rules! raw_stream {
    ($ty:ty) => {
        impl RawStream for $ty {
            fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$ty>::readable(self)
            }
            fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
                <$ty>::writable(self)
            }
            fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
                <$ty>::try_read_buf(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$ty>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                <$ty>::try_write_vectored(self, bufs)
            }
        }
    };
}

raw_stream!(TcpStream);
raw_stream!(UnixStream);

/// The writer task holds the stream in an `Arc`.
impl<T: RawStream> RawStream for std::sync::Arc<T> {
    fn readable(&self) -> impl Future<Output = io::Result<()>> + Send {
        T::readable(self)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        T::writable(self)
    }
    fn try_read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        T::try_read_buf(self, buf)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        T::try_write(self, buf)
    }
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        T::try_write_vectored(self, bufs)
    }
}
