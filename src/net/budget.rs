//! The daemon's budget for buffered request bytes (`max_request_buffers`).
//!
//! Each accepted connection may buffer [`BASE_BYTES`] of requests on its
//! own (a pipeline of ordinary requests never leaves it). A read buffer
//! about to grow past that first claims room for the largest request the
//! limits allow (as its buffer grows by doubling) from the one budget of
//! the daemon, and gives the claim back when the buffer is back to the
//! base (the big request taken out of it) or the connection closes. A
//! claim is whole or nothing, so connections never hold part of what they
//! need while waiting for the rest: whoever holds a claim can finish its
//! request, and no set of waiting connections can deadlock. With the
//! budget spent, reads that need a claim wait for one until the
//! connection's own deadline (a slow holder is closed at
//! `request_timeout`): a flood of huge or half-sent requests pauses
//! reading, it cannot make the daemon run out of memory.

use crate::metrics::ServerMetrics;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a connection's read buffer may hold without the budget.
pub const BASE_BYTES: usize = 64 * 1024;

/// `max_request_buffers = "auto"`: an eighth of the machine's memory (1 GiB
/// where it cannot be read), and never less than
/// one [`claim`].
pub fn auto_limit(limits: &crate::protocol::Limits) -> usize {
    let memory = crate::sys::physical_memory().unwrap_or(8 << 30);
    usize::try_from(memory / 8)
        .unwrap_or(usize::MAX)
        .max(claim(limits))
}

/// What a connection claims of `max_request_buffers` to buffer more than
/// 64 KiB: room for the largest request (a RESP request at its limit, or
/// a link frame) and a read past it, as its buffer grows by doubling.
pub fn claim(limits: &crate::protocol::Limits) -> usize {
    let largest = crate::protocol::resp::max_request_bytes(limits)
        .max(crate::protocol::link::max_frame_bytes(limits));
    largest.saturating_add(64 << 10).saturating_mul(2)
}

/// A daemon's budget for read buffers beyond [`BASE_BYTES`] each.
pub struct ReadBudget {
    limit: usize,
    /// What one connection claims to grow past the base.
    claim: usize,
    used: AtomicUsize,
    freed: Notify,
    gauge: IntGauge,
    waits: IntCounter,
}

impl ReadBudget {
    /// The budget of a daemon with these listener settings, reported in
    /// `metrics`.
    pub fn new(server: &super::ServerConfig, metrics: &ServerMetrics) -> Arc<ReadBudget> {
        ReadBudget::sized(server.max_request_buffers, claim(&server.limits), metrics)
    }

    /// A budget of `limit` bytes in claims of `claim` bytes.
    fn sized(limit: usize, claim: usize, metrics: &ServerMetrics) -> Arc<ReadBudget> {
        metrics.request_buffers_limit.set(limit as i64);
        Arc::new(ReadBudget {
            limit,
            claim,
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

/// What one connection's read buffer holds of the budget: nothing, or a
/// claim (more, should the buffer outgrow it); given back when dropped.
pub struct Charge {
    budget: Arc<ReadBudget>,
    bytes: usize,
}

impl Charge {
    pub fn new(budget: Arc<ReadBudget>) -> Charge {
        Charge { budget, bytes: 0 }
    }

    /// Makes sure a buffer may grow to `grown` bytes: past
    /// [`BASE_BYTES`], with a claim, waiting for one until `deadline` at
    /// most (false: it passed first).
    pub async fn reserve(&mut self, grown: usize, deadline: Instant) -> bool {
        if grown <= BASE_BYTES || self.bytes > 0 {
            return true;
        }
        let claim = self.budget.claim;
        if !self.budget.take(claim, deadline).await {
            return false;
        }
        self.bytes = claim;
        true
    }

    /// Follows a buffer of `capacity`: the claim is given back once it is
    /// within the base again, and grows (past the limit if it must: never
    /// expected) should the buffer outgrow it.
    pub fn settle(&mut self, capacity: usize) {
        if capacity <= BASE_BYTES {
            self.budget.give(std::mem::take(&mut self.bytes));
        } else if capacity > self.bytes {
            self.budget.force(capacity - self.bytes);
            self.bytes = capacity;
        }
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

    const CLAIM: usize = 1 << 20;

    fn budget(limit: usize) -> Arc<ReadBudget> {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Builder::new(&registry).server("worker");
        ReadBudget::sized(limit, CLAIM, &metrics)
    }

    #[tokio::test]
    async fn growth_past_the_base_waits_for_a_whole_claim() {
        let b = budget(2 * CLAIM);
        let soon = || Instant::now() + Duration::from_millis(50);
        let mut one = Charge::new(b.clone());
        assert!(one.reserve(BASE_BYTES, soon()).await, "the base is free");
        assert_eq!(b.used(), 0);
        assert!(one.reserve(BASE_BYTES + 1, soon()).await);
        assert_eq!(b.used(), CLAIM);
        assert!(
            one.reserve(4 * BASE_BYTES, soon()).await,
            "within its claim"
        );
        assert_eq!(b.used(), CLAIM);
        let mut two = Charge::new(b.clone());
        assert!(two.reserve(2 * BASE_BYTES, soon()).await);
        let mut three = Charge::new(b.clone());
        assert!(!three.reserve(2 * BASE_BYTES, soon()).await, "spent");
        assert_eq!(b.used(), 2 * CLAIM, "a waiter holds nothing");
        // Giving a claim back wakes a waiter.
        let waiter = tokio::spawn(async move {
            let ok = three
                .reserve(2 * BASE_BYTES, Instant::now() + Duration::from_secs(5))
                .await;
            (ok, three)
        });
        // Once the waiter waits (its wait is counted), the claim goes back.
        while b.waits.get() < 2 {
            tokio::task::yield_now().await;
        }
        one.settle(BASE_BYTES);
        let (ok, three) = waiter.await.expect("waiter");
        assert!(ok);
        assert_eq!(b.used(), 2 * CLAIM);
        drop(two);
        drop(three);
        drop(one);
        assert_eq!(b.used(), 0);
    }
}
