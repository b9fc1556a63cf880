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

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread `handle` runs its tasks on.
    fn thread_of(handle: &Handle) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(std::thread::current().name().unwrap_or("?").to_owned());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the connection thread runs the task")
    }

    #[test]
    fn placement_spreads_connections_and_refills_the_freed_thread() {
        let threads = Threads::start(3, crate::etf::thread_stack_size()).expect("threads");
        assert_eq!(threads.len(), 3);
        let placed: Vec<_> = (0..6).map(|_| threads.place()).collect();
        let mut names: Vec<String> = placed.iter().map(|(h, _)| thread_of(h)).collect();
        // Six connections on three threads: two each.
        let mut counts = std::collections::HashMap::new();
        for n in &names {
            *counts.entry(n.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3, "{names:?}");
        assert!(counts.values().all(|&c| c == 2), "{names:?}");
        // A connection ends: the next one goes where it was, the least loaded thread.
        let freed = names.remove(4);
        let mut placed = placed;
        drop(placed.remove(4));
        let (again, _p) = threads.place();
        assert_eq!(thread_of(&again), freed);
        threads.stop();
    }

    #[test]
    fn at_least_one_thread() {
        let threads = Threads::start(0, crate::etf::thread_stack_size()).expect("threads");
        assert_eq!(threads.len(), 1);
        assert!(threads.len() > 0);
        let (h, _p) = threads.place();
        assert_eq!(thread_of(&h), "kvnode-conn-0");
        threads.stop();
    }
}
