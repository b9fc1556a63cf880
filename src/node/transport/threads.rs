//! Connection threads: each runs its own single-threaded tokio runtime, and each connection
//! lives on one of them from its handshake to its end (reader, writer task, ticks).
//!
//! Why not one multi-threaded runtime: a `GenServer.call` is a few microseconds of work, and
//! on a work-stealing runtime the wake-ups between threads (a socket readiness event noticed by
//! one worker, the task run by another, the parked worker woken through a futex) cost more
//! than the call. Measured with 64 callers on one client node: 2.9 µs of kvnode CPU per call
//! on one thread against 9–10 µs on the multi-threaded runtime. Pinning each connection to a
//! thread keeps that, and several client nodes still spread over several cores.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Thread {
    handle: Handle,
    /// Connections placed on this thread and still running.
    load: AtomicUsize,
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

/// The connection threads. Cheap to clone.
#[derive(Clone)]
pub struct Threads(Arc<Vec<Thread>>);

/// Counts a connection against its thread until dropped.
pub struct Placement {
    threads: Threads,
    index: usize,
}

impl Drop for Placement {
    fn drop(&mut self) {
        self.threads.0[self.index]
            .load
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Threads {
    /// Starts `n` (at least one) connection threads, each with `stack_size` bytes of stack
    /// (see [`crate::etf::stack_size_for_depth`]: decoding, handling, encoding and dropping a
    /// peer's terms all happen on these threads, and eetf recurses once per level).
    pub fn start(n: usize, stack_size: usize) -> std::io::Result<Threads> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("kvnode-conn-{i}"))
                .stack_size(stack_size)
                .spawn(move || {
                    // Runs spawned connection tasks until the node stops (or the sender is
                    // dropped); dropping the runtime then cancels what is left.
                    let _ = runtime.block_on(stopped);
                })?;
            threads.push(Thread {
                handle,
                load: AtomicUsize::new(0),
                stop: std::sync::Mutex::new(Some(stop)),
            });
        }
        Ok(Threads(Arc::new(threads)))
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: there is at least one thread.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The least loaded thread's runtime, and the placement that counts the connection there.
    pub fn place(&self) -> (Handle, Placement) {
        let index = self
            .0
            .iter()
            .enumerate()
            .min_by_key(|(_, t)| t.load.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .unwrap_or(0);
        let thread = &self.0[index];
        thread.load.fetch_add(1, Ordering::Relaxed);
        (
            thread.handle.clone(),
            Placement {
                threads: self.clone(),
                index,
            },
        )
    }

    /// Stops every thread (their remaining tasks are dropped).
    pub fn stop(&self) {
        for t in self.0.iter() {
            if let Some(stop) = t.stop.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = stop.send(());
            }
        }
    }
}
