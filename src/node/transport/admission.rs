//! Budgets for connections that have not authenticated (or not said what they want) yet: the
//! distribution handshake and EPMD requests.
//!
//! Anyone who reaches a port can open connections and stay silent. If those shared one budget
//! with the connections that matter, a few hundred idle sockets would lock real peers out
//! for as long as they were held. So such connections get a [`Budget`] of their own, bounded
//! in total and per source address, and a newcomer is never refused: when the budget is
//! full, the oldest connection of the address holding the most is closed to make room (when
//! the newcomer's own address is at its cap, that address's oldest). A flood therefore evicts
//! itself, a real peer from another address always gets in, and even one sharing the flood's
//! address survives unless the flood opens the per-address cap's worth of connections during
//! its few-millisecond handshake. A connection leaves the budget when it authenticates (or
//! registers, on EPMD), for a budget of its own that these never touch.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Evictions are logged at most this often (with a count), so a flood costs a log line a
/// second, not one per connection.
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Connections in a budget, by source address, oldest first.
#[derive(Default)]
struct Inner {
    next_id: u64,
    by_ip: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    total: usize,
    evicted_unlogged: u64,
    last_log: Option<Instant>,
}

/// A bounded set of unauthenticated connections with oldest-first eviction (see the module
/// documentation).
pub struct Budget {
    what: &'static str,
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<Inner>,
}

impl Budget {
    /// A budget of `max_total` connections, at most `max_per_ip` from one address (both at
    /// least 1). `what` names it in log lines ("handshake", "EPMD request").
    pub fn new(what: &'static str, max_total: usize, max_per_ip: usize) -> Arc<Budget> {
        Arc::new(Budget {
            what,
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update keeps the maps consistent; a panicking holder leaves them usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip`, evicting another when a bound is reached. The returned
    /// [`Slot`] is the connection's place; [`Slot::evicted`] resolves when it is evicted.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Slot {
        let ip = ip.to_canonical();
        let mut inner = self.lock();
        let own = inner.by_ip.get(&ip).map_or(0, VecDeque::len);
        let victim_ip = if own >= self.max_per_ip {
            Some(ip)
        } else if inner.total >= self.max_total {
            inner
                .by_ip
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(ip, _)| *ip)
        } else {
            None
        };
        if let Some(victim_ip) = victim_ip {
            self.evict_oldest(&mut inner, victim_ip);
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let cancel = CancellationToken::new();
        inner
            .by_ip
            .entry(ip)
            .or_default()
            .push_back((id, cancel.clone()));
        inner.total += 1;
        Slot {
            budget: self.clone(),
            ip,
            id,
            cancel,
        }
    }

    fn evict_oldest(&self, inner: &mut Inner, ip: IpAddr) {
        let Some(queue) = inner.by_ip.get_mut(&ip) else {
            return;
        };
        let Some((_, cancel)) = queue.pop_front() else {
            return;
        };
        if queue.is_empty() {
            inner.by_ip.remove(&ip);
        }
        inner.total -= 1;
        cancel.cancel();
        inner.evicted_unlogged += 1;
        let now = Instant::now();
        if inner
            .last_log
            .is_none_or(|t| now.duration_since(t) >= EVICTION_LOG_INTERVAL)
        {
            tracing::warn!(
                budget = self.what,
                evicted = inner.evicted_unlogged,
                source = %ip,
                max_total = self.max_total,
                max_per_ip = self.max_per_ip,
                "unauthenticated connections are at their limit: closing the oldest of the address holding the most"
            );
            inner.evicted_unlogged = 0;
            inner.last_log = Some(now);
        }
    }

    /// Connections in the budget now.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn len(&self) -> usize {
        self.lock().total
    }

    /// Whether the budget holds no connection.
    #[cfg_attr(not(test), allow(dead_code))] // used by tests
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn release(&self, ip: IpAddr, id: u64) {
        let mut inner = self.lock();
        let Some(queue) = inner.by_ip.get_mut(&ip) else {
            return; // evicted
        };
        let Some(at) = queue.iter().position(|(i, _)| *i == id) else {
            return; // evicted
        };
        queue.remove(at);
        if queue.is_empty() {
            inner.by_ip.remove(&ip);
        }
        inner.total -= 1;
    }
}

/// A connection's place in a [`Budget`]; dropping it gives the place back.
pub struct Slot {
    budget: Arc<Budget>,
    ip: IpAddr,
    id: u64,
    cancel: CancellationToken,
}

impl Slot {
    /// Resolves when the connection is evicted to make room for a newer one.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.release(self.ip, self.id);
    }
}

/// A plain bound in total and per source address, without eviction: for connections that
/// have authenticated (EPMD registrations), which must not be closed to make room.
pub struct Quota {
    max_total: usize,
    max_per_ip: usize,
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
    last_log: Mutex<Option<Instant>>,
}

/// Why [`Quota::take`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaFull {
    /// The total is reached.
    Total,
    /// The source address holds its share.
    PerIp,
}

impl Quota {
    /// At most `max_total`, and `max_per_ip` per address (both at least 1).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Quota> {
        Arc::new(Quota {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            inner: Mutex::new((0, HashMap::new())),
            last_log: Mutex::new(None),
        })
    }

    /// True at most once per [`EVICTION_LOG_INTERVAL`]: refusals are logged at that pace.
    pub fn should_log(&self) -> bool {
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= EVICTION_LOG_INTERVAL) {
            *last = Some(now);
            true
        } else {
            false
        }
    }

    /// Takes a place for `ip`, if there is one.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<QuotaPlace, QuotaFull> {
        let ip = ip.to_canonical();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *inner;
        if *total >= self.max_total {
            return Err(QuotaFull::Total);
        }
        let held = by_ip.entry(ip).or_insert(0);
        if *held >= self.max_per_ip {
            return Err(QuotaFull::PerIp);
        }
        *held += 1;
        *total += 1;
        Ok(QuotaPlace {
            quota: self.clone(),
            ip,
        })
    }
}

/// A place taken from a [`Quota`]; dropping it gives it back.
pub struct QuotaPlace {
    quota: Arc<Quota>,
    ip: IpAddr,
}

impl Drop for QuotaPlace {
    fn drop(&mut self) {
        let mut inner = self.quota.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_ip) = &mut *inner;
        *total -= 1;
        if let Some(held) = by_ip.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn per_ip_cap_evicts_that_address_oldest() {
        let b = Budget::new("test", 10, 2);
        let a1 = b.admit(ip(2));
        let a2 = b.admit(ip(2));
        let a3 = b.admit(ip(2));
        assert!(a1.cancel.is_cancelled());
        assert!(!a2.cancel.is_cancelled() && !a3.cancel.is_cancelled());
        assert_eq!(b.len(), 2);
        drop(a1); // already gone: no double release
        assert_eq!(b.len(), 2);
        drop((a2, a3));
        assert!(b.is_empty());
    }

    #[test]
    fn full_budget_evicts_from_the_address_holding_the_most() {
        let b = Budget::new("test", 4, 4);
        let flood: Vec<Slot> = (0..3).map(|_| b.admit(ip(2))).collect();
        let other = b.admit(ip(3));
        let real = b.admit(ip(1));
        assert!(flood[0].cancel.is_cancelled());
        assert!(!flood[1].cancel.is_cancelled());
        assert!(!other.cancel.is_cancelled() && !real.cancel.is_cancelled());
        assert_eq!(b.len(), 4);
        // The flood keeps evicting itself, never the others.
        let more: Vec<Slot> = (0..10).map(|_| b.admit(ip(2))).collect();
        assert!(!other.cancel.is_cancelled() && !real.cancel.is_cancelled());
        assert_eq!(more.iter().filter(|s| !s.cancel.is_cancelled()).count(), 2);
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn quota_bounds_total_and_per_ip() {
        let q = Quota::new(3, 2);
        let a = q.take(ip(2)).expect("first");
        let _b = q.take(ip(2)).expect("second");
        assert_eq!(q.take(ip(2)).err(), Some(QuotaFull::PerIp));
        let _c = q.take(ip(1)).expect("other address");
        assert_eq!(q.take(ip(3)).err(), Some(QuotaFull::Total));
        drop(a);
        assert!(q.take(ip(2)).is_ok());
    }
}
