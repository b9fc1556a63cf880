//! A connection's outbound bytes: a queue of buffers (small frames share one, big frames get
//! their own), bounded in bytes, written with non-blocking vectored writes by whichever side
//! has them ready.
//!
//! The connection's reader flushes the replies it produced itself at the end of each batch of
//! frames, without waking anyone (no task hop, no context switch per call). Frames from other
//! threads (other connections' readers, the storage thread, rpc tasks) wake the connection's
//! writer task instead, which also finishes any write the socket could not take at once. A
//! peer that stops reading fills the buffer up to its bound and is disconnected rather than
//! growing memory.

use super::stream::RawStream;
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::IoSlice;
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

/// A frame at least this big goes into a buffer of its own (moved in, or written in place),
/// instead of being appended to the small frames' buffer: appending meant a copy and, as the
/// buffer grew by doubling, copies of everything queued before it.
const BIG_FRAME: usize = 64 * 1024;
/// The small frames' buffer is kept (cleared) after a flush up to this capacity.
const KEEP_CAPACITY: usize = 1024 * 1024;
/// The reply instants' vector is kept (cleared) after a flush up to this capacity.
const KEEP_TIMED: usize = 4096;
/// At most this many buffers go into one vectored write.
const MAX_SLICES: usize = 64;

struct State {
    /// Unwritten buffers in order; small frames are appended to the last one while it is a
    /// small-frames buffer.
    bufs: VecDeque<Vec<u8>>,
    /// Bytes of `bufs[0]` already written.
    sent: usize,
    /// Unwritten bytes over all buffers.
    queued: usize,
    /// Whether the last buffer holds one big frame (then small frames start a new one).
    last_is_big: bool,
    /// A cleared small-frames buffer kept for reuse.
    spare: Vec<u8>,
    last_write: Instant,
    /// When the requests of the KV replies queued here were read (metrics on only):
    /// observed once a flush has written everything queued. One entry (16 bytes) per queued
    /// reply frame (40 bytes and more), so bounded by the outbox's own bound.
    timed: Vec<Instant>,
}

impl State {
    /// Takes the KV reply this thread armed, if any, for the frame just queued.
    #[inline]
    fn take_timed(&mut self) {
        if crate::metrics::enabled()
            && let Some(at) = crate::metrics::take_kv_reply()
        {
            self.timed.push(at);
        }
    }

    /// The buffer small frames are appended to.
    fn small_buf(&mut self) -> &mut Vec<u8> {
        if self.bufs.is_empty() || self.last_is_big {
            let buf = std::mem::take(&mut self.spare);
            self.bufs.push_back(buf);
            self.last_is_big = false;
        }
        // Just made sure there is one.
        self.bufs.back_mut().expect("a buffer") // ok: pushed above when missing
    }
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

impl Outbox {
    /// An empty outbox for connection `id`, holding at most `max_bytes` unwritten bytes.
    pub fn new(id: u64, max_bytes: usize) -> Self {
        Outbox {
            id,
            state: Mutex::new(State {
                bufs: VecDeque::new(),
                sent: 0,
                queued: 0,
                last_is_big: false,
                spare: Vec::with_capacity(BIG_FRAME),
                last_write: Instant::now(),
                timed: Vec::new(),
            }),
            wake: Notify::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queued_by_other_thread(&self) {
        if READER.with(|r| r.get()) != self.id {
            self.wake.notify_one();
        }
    }

    /// Queues a frame (copied). The connection's own reader flushes it at the end of its
    /// batch; from anywhere else the writer task is woken.
    pub fn push(&self, frame: &[u8]) -> Result<(), Full> {
        self.push_with(frame.len(), |out| out.extend_from_slice(frame))
    }

    /// Queues a frame, moving it in when it is big.
    pub fn push_owned(&self, frame: Vec<u8>) -> Result<(), Full> {
        if frame.len() < BIG_FRAME {
            return self.push(&frame);
        }
        {
            let mut st = self.lock();
            if st.queued + frame.len() > self.max_bytes {
                return Err(Full);
            }
            st.queued += frame.len();
            st.bufs.push_back(frame);
            st.last_is_big = true;
            st.take_timed();
        }
        crate::metrics::MESSAGES_OUT.inc();
        self.queued_by_other_thread();
        Ok(())
    }

    /// Queues what `write` appends to the buffer it is given (encoding in place, no copy).
    /// `size` is about how many bytes it will write: big frames get a buffer of their own.
    /// Over the bound, what `write` appended is taken back.
    pub fn push_with(&self, size: usize, write: impl FnOnce(&mut Vec<u8>)) -> Result<(), Full> {
        {
            let mut st = self.lock();
            if st.queued + size > self.max_bytes {
                return Err(Full);
            }
            let written = if size >= BIG_FRAME {
                let mut own = Vec::with_capacity(size);
                write(&mut own);
                let n = own.len();
                st.bufs.push_back(own);
                st.last_is_big = true;
                n
            } else {
                let buf = st.small_buf();
                let before = buf.len();
                write(buf);
                buf.len() - before
            };
            st.queued += written;
            if st.queued > self.max_bytes {
                // `size` was an underestimate; take it back (it is the last thing queued).
                st.queued -= written;
                if let Some(last) = st.bufs.back_mut() {
                    let keep = last.len() - written;
                    last.truncate(keep);
                }
                return Err(Full);
            }
            st.take_timed();
        }
        crate::metrics::MESSAGES_OUT.inc();
        self.queued_by_other_thread();
        Ok(())
    }

    /// Whether bytes are waiting.
    pub fn has_data(&self) -> bool {
        self.lock().queued > 0
    }

    /// Time since the last successful write.
    pub fn idle_for(&self) -> std::time::Duration {
        self.lock().last_write.elapsed()
    }

    /// Writes what the socket takes now, many buffers per system call. Ok(true): everything
    /// is written.
    pub fn flush_now<S: RawStream>(&self, stream: &S) -> std::io::Result<bool> {
        let mut st = self.lock();
        while st.queued > 0 {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for (i, b) in st.bufs.iter().take(MAX_SLICES).enumerate() {
                    let from = if i == 0 { st.sent.min(b.len()) } else { 0 };
                    slices[n] = IoSlice::new(&b[from..]);
                    n += 1;
                }
                if n == 1 {
                    stream.try_write(&slices[0])
                } else {
                    stream.try_write_vectored(&slices[..n])
                }
            };
            match result {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    crate::metrics::BYTES_OUT.add(n as u64);
                    st.last_write = Instant::now();
                    st.queued -= n;
                    // Drop (or keep for reuse) the buffers written completely.
                    while n > 0 {
                        let Some(front) = st.bufs.front() else { break };
                        let left = front.len() - st.sent;
                        if n < left {
                            st.sent += n;
                            break;
                        }
                        n -= left;
                        st.sent = 0;
                        if let Some(mut done) = st.bufs.pop_front()
                            && done.capacity() <= KEEP_CAPACITY
                            && done.capacity() > st.spare.capacity()
                        {
                            done.clear();
                            st.spare = done;
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Empty buffers (a small-frames buffer left with nothing new) go too.
        st.bufs.clear();
        st.sent = 0;
        st.last_is_big = false;
        if !st.timed.is_empty() {
            crate::metrics::kv_replies_written(st.timed.drain(..));
            if st.timed.capacity() > KEEP_TIMED {
                st.timed = Vec::new();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn frames_arrive_in_order_and_the_bound_holds() {
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let outbox = Outbox::new(1, 4 << 20);
        let mut expected = Vec::new();
        for i in 0..200u32 {
            // Small, big (moved), big (written in place), interleaved.
            let frame: Vec<u8> = match i % 3 {
                0 => vec![i as u8; 10 + i as usize],
                1 => vec![i as u8; BIG_FRAME + i as usize],
                _ => vec![i as u8; 3],
            };
            expected.extend_from_slice(&frame);
            match i % 4 {
                0 => outbox.push(&frame).expect("room"),
                1 => outbox.push_owned(frame).expect("room"),
                _ => outbox
                    .push_with(frame.len(), |out| out.extend_from_slice(&frame))
                    .expect("room"),
            }
            if i % 50 == 49 {
                let reader = async {
                    let mut got = vec![0u8; expected.len()];
                    b.read_exact(&mut got).await.map(|_| got)
                };
                let (flushed, got) = tokio::join!(outbox.flush_all(&a), reader);
                flushed.expect("flush");
                assert_eq!(got.expect("read"), expected);
                expected.clear();
                assert!(!outbox.has_data());
            }
        }
        // Nobody reads: the bound refuses more, and takes nothing back that was accepted.
        let small = Outbox::new(2, 100_000);
        small.push(&[1; 60_000]).expect("room");
        assert!(small.push_owned(vec![2; 70_000]).is_err());
        assert!(
            small
                .push_with(50_000, |o| o.extend_from_slice(&[3; 50_000]))
                .is_err()
        );
        // An underestimated size is caught after writing, and taken back.
        assert!(
            small
                .push_with(10, |o| o.extend_from_slice(&[4; 50_000]))
                .is_err()
        );
        small.push(&[5; 30_000]).expect("room");
        let reader = async {
            let mut got = vec![0u8; 90_000];
            b.read_exact(&mut got).await.map(|_| got)
        };
        let (flushed, got) = tokio::join!(small.flush_all(&a), reader);
        flushed.expect("flush");
        let got = got.expect("read");
        assert!(got[..60_000].iter().all(|&x| x == 1));
        assert!(got[60_000..].iter().all(|&x| x == 5));
    }

    /// A peer that reads slowly: the socket takes part of a buffer, frames queued meanwhile
    /// (from another thread, as replies from the storage thread are) still leave after the
    /// unwritten rest, byte for byte in the order queued.
    #[tokio::test]
    async fn partial_writes_keep_the_order_of_frames_queued_meanwhile() {
        let (a, mut b) = tokio::net::UnixStream::pair().expect("pair");
        let outbox = std::sync::Arc::new(Outbox::new(3, 64 << 20));
        let mut expected = Vec::new();
        // More than a socket buffer holds, so the first flush stops part way.
        for i in 0..40u32 {
            let frame = vec![i as u8; if i % 2 == 0 { 100_000 } else { 7 }];
            expected.extend_from_slice(&frame);
            outbox.push_owned(frame).expect("room");
        }
        let done = outbox.flush_now(&a).expect("flush");
        assert!(!done, "the socket should not take 2 MB at once");
        let ob = outbox.clone();
        let extra = std::thread::spawn(move || {
            let mut queued = Vec::new();
            for i in 40..80u32 {
                let frame = vec![i as u8; 1 + (i as usize % 3) * 50_000];
                queued.extend_from_slice(&frame);
                ob.push(&frame).expect("room");
            }
            queued
        })
        .join()
        .expect("pusher");
        expected.extend_from_slice(&extra);
        let reader = async {
            let mut got = vec![0u8; expected.len()];
            b.read_exact(&mut got).await.map(|_| got)
        };
        let (flushed, got) = tokio::join!(outbox.flush_all(&a), reader);
        flushed.expect("flush");
        assert!(got.expect("read") == expected, "bytes out of order");
        assert!(!outbox.has_data());
    }
}
