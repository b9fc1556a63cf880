//! A connection's outbound bytes: one buffer, bounded in bytes, written with non-blocking
//! `try_write`s by whichever side has them ready.
//!
//! The connection's reader flushes the replies it produced itself at the end of each batch of
//! frames, without waking anyone (no task hop, no context switch per call). Frames from other
//! threads (other connections' readers, the storage thread, rpc tasks) wake the connection's
//! writer task instead, which also finishes any write the socket could not take at once. A
//! peer that stops reading fills the buffer up to its bound and is disconnected rather than
//! growing memory.

use super::stream::RawStream;
use std::cell::Cell;
use std::sync::Mutex;
use std::time::Instant;
use tokio::sync::Notify;

thread_local! {
    /// The id of the connection whose reader runs on this thread right now (0: none).
    static READER: Cell<u64> = const { Cell::new(0) };
}

/// Marks this thread as running the reader of connection `id` until the guard drops.
pub fn reading(id: u64) -> ReaderGuard {
    READER.with(|r| r.set(id));
    ReaderGuard
}

/// See [`reading`].
pub struct ReaderGuard;

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        READER.with(|r| r.set(0));
    }
}

struct State {
    buf: Vec<u8>,
    sent: usize,
    last_write: Instant,
}

/// The outbound side of one connection.
pub struct Outbox {
    id: u64,
    state: Mutex<State>,
    wake: Notify,
    max_bytes: usize,
}

/// The buffer is over its bound: the peer is not reading.
#[derive(Debug)]
pub struct Full;

/// A buffer above this size is released once written.
const KEEP_CAPACITY: usize = 1024 * 1024;

impl Outbox {
    /// An empty outbox for connection `id`, holding at most `max_bytes` unwritten bytes.
    pub fn new(id: u64, max_bytes: usize) -> Self {
        Outbox {
            id,
            state: Mutex::new(State {
                buf: Vec::with_capacity(64 * 1024),
                sent: 0,
                last_write: Instant::now(),
            }),
            wake: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame. The connection's own reader flushes it at the end of its batch;
    /// from anywhere else the writer task is woken.
    pub fn push(&self, frame: &[u8]) -> Result<(), Full> {
        {
            let mut st = self.lock();
            if st.buf.len() - st.sent + frame.len() > self.max_bytes {
                return Err(Full);
            }
            st.buf.extend_from_slice(frame);
        }
        if READER.with(|r| r.get()) != self.id {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Queues the frames that `write` appends to the buffer (encoding in place, no copy).
    /// Over the bound, what `write` appended is taken back.
    pub fn push_with(&self, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Full> {
        {
            let mut st = self.lock();
            let before = st.buf.len();
            write(&mut st.buf);
            if st.buf.len() - st.sent > self.max_bytes {
                st.buf.truncate(before);
                return Err(Full);
            }
        }
        if READER.with(|r| r.get()) != self.id {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether bytes are waiting.
    pub fn has_data(&self) -> bool {
        let st = self.lock();
        st.buf.len() > st.sent
    }

    /// Time since the last successful write.
    pub fn idle_for(&self) -> std::time::Duration {
        self.lock().last_write.elapsed()
    }

    /// Writes what the socket takes now. Ok(true): everything is written.
    pub fn flush_now<S: RawStream>(&self, stream: &S) -> std::io::Result<bool> {
        let mut st = self.lock();
        while st.sent < st.buf.len() {
            let from = st.sent;
            match stream.try_write(&st.buf[from..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    st.sent += n;
                    st.last_write = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        st.buf.clear();
        st.sent = 0;
        if st.buf.capacity() > KEEP_CAPACITY {
            st.buf = Vec::with_capacity(64 * 1024);
        }
        Ok(true)
    }

    /// Writes everything, waiting for the socket as needed.
    pub async fn flush_all<S: RawStream>(&self, stream: &S) -> std::io::Result<()> {
        while !self.flush_now(stream)? {
            stream.writable().await?;
        }
        Ok(())
    }

    /// Wakes the writer task (used when the reader could not write everything).
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// Resolves when someone asked the writer task to write.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}
