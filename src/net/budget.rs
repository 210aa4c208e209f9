//! The daemon's budget for buffered request bytes (`max_request_buffers`).
//!
//! Each accepted connection may buffer [`BASE_BYTES`] of requests on its
//! own (a pipeline of ordinary requests never leaves it); a read buffer
//! that grows past that takes the growth from the one budget of the
//! daemon before it grows, and gives it back when it shrinks again (after
//! the big request is taken out of it) or the connection closes. With the
//! budget spent, reads that need more wait for another connection to give
//! some back, until the connection's own deadline: a flood of huge or
//! half-sent requests pauses reading, it cannot make the daemon run out
//! of memory.

use crate::metrics::ServerMetrics;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection's read buffer may hold without the budget.
pub const BASE_BYTES: usize = 64 * 1024;

/// A daemon's budget for read buffers beyond [`BASE_BYTES`] each.
pub struct ReadBudget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
    gauge: IntGauge,
    waits: IntCounter,
}

impl ReadBudget {
    /// A budget of `limit` bytes, reported in `metrics`.
    pub fn new(limit: usize, metrics: &ServerMetrics) -> Arc<ReadBudget> {
        metrics.request_buffers_limit.set(limit as i64);
        Arc::new(ReadBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            gauge: metrics.request_buffers.clone(),
            waits: metrics.request_buffer_waits.clone(),
        })
    }

    /// Bytes taken now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_take(&self, bytes: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&after| after <= self.limit)
            })
            .is_ok();
        if taken {
            self.report();
        }
        taken
    }

    /// Takes `bytes`, waiting for other connections to give some back
    /// until `deadline` (false: the deadline passed first).
    async fn take(&self, bytes: usize, deadline: Instant) -> bool {
        let mut counted = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check
            // and the wait is not missed.
            freed.as_mut().enable();
            if self.try_take(bytes) {
                return true;
            }
            if !counted {
                self.waits.inc();
                counted = true;
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return false;
            }
        }
    }

    /// Takes `bytes` whatever the limit (a growth larger than its
    /// estimate; never expected).
    fn force(&self, bytes: usize) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
        self.report();
    }

    fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        self.report();
        self.freed.notify_waiters();
    }

    fn report(&self) {
        self.gauge.set(self.used() as i64);
    }
}

/// What one connection's read buffer holds of the budget; given back
/// when dropped.
pub struct Charge {
    budget: Arc<ReadBudget>,
    bytes: usize,
}

impl Charge {
    pub fn new(budget: Arc<ReadBudget>) -> Charge {
        Charge { budget, bytes: 0 }
    }

    /// Makes sure a buffer of `capacity` may grow to `grown`: takes what
    /// that needs beyond [`BASE_BYTES`] and what is held, waiting until
    /// `deadline` at most (false: it passed first).
    pub async fn reserve(&mut self, grown: usize, deadline: Instant) -> bool {
        let need = grown.saturating_sub(BASE_BYTES).saturating_sub(self.bytes);
        if need == 0 {
            return true;
        }
        if !self.budget.take(need, deadline).await {
            return false;
        }
        self.bytes += need;
        true
    }

    /// Holds exactly what a buffer of `capacity` needs: gives back the rest.
    pub fn settle(&mut self, capacity: usize) {
        let should = capacity.saturating_sub(BASE_BYTES);
        if should < self.bytes {
            self.budget.give(self.bytes - should);
        } else if should > self.bytes {
            self.budget.force(should - self.bytes);
        }
        self.bytes = should;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(limit: usize) -> Arc<ReadBudget> {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Builder::new(&registry).server("worker");
        ReadBudget::new(limit, &metrics)
    }

    #[tokio::test]
    async fn growth_beyond_the_base_waits_for_room() {
        let b = budget(1 << 20);
        let soon = || Instant::now() + Duration::from_millis(50);
        let mut one = Charge::new(b.clone());
        assert!(one.reserve(BASE_BYTES, soon()).await, "the base is free");
        assert_eq!(b.used(), 0);
        assert!(one.reserve(BASE_BYTES + (1 << 20), soon()).await);
        assert_eq!(b.used(), 1 << 20);
        let mut two = Charge::new(b.clone());
        assert!(!two.reserve(BASE_BYTES + 1, soon()).await, "spent");
        // Giving back wakes a waiter.
        let waiter = tokio::spawn(async move {
            let ok = two
                .reserve(BASE_BYTES + 4096, Instant::now() + Duration::from_secs(5))
                .await;
            (ok, two)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        one.settle(BASE_BYTES);
        let (ok, two) = waiter.await.expect("waiter");
        assert!(ok);
        assert_eq!(b.used(), 4096);
        drop(two);
        drop(one);
        assert_eq!(b.used(), 0);
    }
}
