//! The worker's metrics: requests and connections (shared with the
//! orchestrator), and the store, refill and anti-entropy read from the
//! worker's state at scrape time.

use super::Worker;
use crate::metrics::{mirror, Builder, Exporter, ProcessMetrics, ServerMetrics};
use crate::protocol::link::WorkerState;
use prometheus::{Gauge, IntCounter, IntGauge, IntGaugeVec, Registry};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct WorkerMetrics {
    registry: Registry,
    pub server: Arc<ServerMetrics>,
    process: ProcessMetrics,
    entries: IntGauge,
    tombstones: IntGauge,
    raw_bytes: IntGauge,
    stored_bytes: IntGauge,
    memory_used: IntGauge,
    memory_max: IntGauge,
    arena: IntGauge,
    arena_free: IntGauge,
    evictions: IntCounter,
    expirations: IntCounter,
    state: IntGaugeVec,
    incomplete: IntGauge,
    refill_entries: IntGauge,
    refill_expected: IntGauge,
    refill_duration: Gauge,
    ae_rounds: IntCounter,
    ae_repairs: IntCounter,
    ae_sent: IntCounter,
    ae_sent_bytes: IntCounter,
    ae_evicted: IntCounter,
    ae_leases_expired: IntCounter,
    pub migration_keys_moved: IntCounter,
    pub migration_bytes_moved: IntCounter,
    pub migration_keys_left: IntGauge,
    pub migration_keys_dropped: IntCounter,
    pub migration_keys_taken: IntCounter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics::new()
    }
}

impl WorkerMetrics {
    pub fn new() -> WorkerMetrics {
        let registry = Registry::new();
        let b = Builder::new(&registry);
        WorkerMetrics {
            server: Arc::new(b.server("worker")),
            process: ProcessMetrics::new(&b),
            entries: b.gauge("rcache_entries", "Live entries held (tombstones excluded)"),
            tombstones: b.gauge(
                "rcache_tombstones",
                "Deletes remembered for tombstone_ttl so no refill or repair undoes them",
            ),
            raw_bytes: b.gauge(
                "rcache_value_raw_bytes",
                "Bytes of the values held, as clients sent them",
            ),
            stored_bytes: b.gauge(
                "rcache_value_stored_bytes",
                "Bytes of the values held, as stored (after lz4 where it pays)",
            ),
            memory_used: b.gauge(
                "rcache_memory_used_bytes",
                "Bytes counted against max_memory (keys, stored values, per-entry overhead)",
            ),
            memory_max: b.gauge("rcache_memory_max_bytes", "The max_memory setting in bytes"),
            arena: b.gauge(
                "rcache_memory_arena_bytes",
                "Bytes of the segments entries are packed in",
            ),
            arena_free: b.gauge(
                "rcache_memory_arena_free_bytes",
                "Bytes of those segments no entry uses yet (holes, tails), reclaimed by compaction",
            ),
            evictions: b.counter(
                "rcache_evictions_total",
                "Entries evicted to stay under max_memory",
            ),
            expirations: b.counter(
                "rcache_expirations_total",
                "Entries and tombstones removed because their time ran out",
            ),
            state: b.gauge_vec(
                "rcache_worker_state",
                "1 for the worker's current state (starting, refilling, ready), 0 for the others",
                &["state"],
            ),
            incomplete: b.gauge(
                "rcache_worker_incomplete",
                "1 while the worker may lack data its partner holds (it started empty with the \
                 partner unreachable, or its refill broke off) until anti-entropy repairs it",
            ),
            refill_entries: b.gauge(
                "rcache_refill_entries",
                "Entries received from the partner by the refill at start",
            ),
            refill_expected: b.gauge(
                "rcache_refill_expected_entries",
                "Entries the partner held when the refill began (progress: entries / expected)",
            ),
            refill_duration: b.float_gauge(
                "rcache_refill_duration_seconds",
                "How long the completed refill took (0 while none completed)",
            ),
            ae_rounds: b.counter(
                "rcache_anti_entropy_rounds_total",
                "Anti-entropy rounds with the partner completed",
            ),
            ae_repairs: b.counter(
                "rcache_anti_entropy_repairs_total",
                "Entries this worker stored because an anti-entropy round brought them",
            ),
            ae_sent: b.counter(
                "rcache_anti_entropy_sent_entries_total",
                "Entries sent to the partner by anti-entropy",
            ),
            ae_sent_bytes: b.counter(
                "rcache_anti_entropy_sent_bytes_total",
                "Bytes of entries and summaries sent to the partner by anti-entropy",
            ),
            ae_evicted: b.counter(
                "rcache_anti_entropy_evicted_total",
                "Entries evicted because the partner, near its memory limit, refused them",
            ),
            ae_leases_expired: b.counter(
                "rcache_anti_entropy_leases_expired_total",
                "Rounds of the partner cut off for holding this worker's round lock past anti_entropy_lease",
            ),
            migration_keys_moved: b.counter(
                "rcache_migration_keys_moved_total",
                "Entries of keys moving to another pair that this worker handed to it",
            ),
            migration_bytes_moved: b.counter(
                "rcache_migration_bytes_moved_total",
                "Bytes (keys and stored values) of those entries",
            ),
            migration_keys_left: b.gauge(
                "rcache_migration_keys_left",
                "Keys this worker still has to hand to their new pair (0: none, or no migration)",
            ),
            migration_keys_dropped: b.counter(
                "rcache_migration_keys_dropped_total",
                "Keys dropped once they lived on their new pair (memory given back)",
            ),
            migration_keys_taken: b.counter(
                "rcache_migration_keys_taken_total",
                "Entries of keys moving to this worker's pair that it stored (newer than what it held)",
            ),
            registry,
        }
    }
}

impl Exporter for Worker {
    fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    fn refresh(&self) {
        let m = &self.metrics;
        m.process.refresh();
        let usage = self.store.usage();
        m.entries.set(usage.entries as i64);
        m.tombstones.set(usage.tombstones as i64);
        m.raw_bytes.set(usage.raw_value_bytes as i64);
        m.stored_bytes.set(usage.stored_value_bytes as i64);
        m.memory_used.set(usage.charged_bytes as i64);
        m.memory_max.set(self.store.max_memory() as i64);
        m.arena.set(usage.arena_bytes as i64);
        m.arena_free.set(usage.arena_free_bytes as i64);
        mirror(
            &m.evictions,
            self.store.stats.evictions.load(Ordering::Relaxed),
        );
        mirror(
            &m.expirations,
            self.store.stats.expirations.load(Ordering::Relaxed),
        );
        let now = self.state();
        for state in [
            WorkerState::Starting,
            WorkerState::Refilling,
            WorkerState::Ready,
        ] {
            m.state
                .with_label_values(&[state.name()])
                .set((state == now) as i64);
        }
        m.incomplete.set(self.incomplete().is_some() as i64);
        m.refill_entries
            .set(self.refilled.load(Ordering::Relaxed) as i64);
        m.refill_expected
            .set(self.refill_expected.load(Ordering::Relaxed) as i64);
        m.refill_duration
            .set(self.refill_millis.load(Ordering::Relaxed) as f64 / 1000.0);
        mirror(&m.ae_rounds, self.anti_entropy.rounds());
        mirror(&m.ae_repairs, self.anti_entropy.repaired());
        mirror(&m.ae_sent, self.anti_entropy.sent());
        mirror(&m.ae_sent_bytes, self.anti_entropy.sent_bytes());
        mirror(&m.ae_evicted, self.anti_entropy.evicted());
        mirror(&m.ae_leases_expired, self.anti_entropy.leases_expired());
    }

    /// 503 until the worker serves reads, and while it is incomplete: a
    /// rolling restart that waits for `/health` before restarting the
    /// partner then never restarts the only worker holding the data.
    fn health(&self) -> Result<(), String> {
        match self.state() {
            WorkerState::Ready if self.incomplete().is_none() => Ok(()),
            WorkerState::Ready => Err(format!("incomplete: {}", self.status_line())),
            state => Err(format!("{}: {}", state.name(), self.status_line())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{render, Exporter};
    use crate::worker::{Worker, WorkerConfig};

    #[test]
    fn health_is_unavailable_until_the_worker_is_ready() {
        let worker = Worker::new(WorkerConfig {
            listen: "127.0.0.1:0".into(),
            partner: Some("127.0.0.1:9".into()),
            metrics_listen: "127.0.0.1:0".into(),
            server: Default::default(),
            store: Default::default(),
            anti_entropy_interval: std::time::Duration::from_secs(2),
            anti_entropy_lease: crate::defaults::ANTI_ENTROPY_LEASE,
            refill_wait: std::time::Duration::from_secs(10),
            connection_loops: 1,
        });
        let why = worker.health().unwrap_err();
        assert!(why.starts_with("starting"), "{why}");
        worker.set_state(WorkerState::Refilling);
        worker.refill_expected.store(1000, Ordering::Relaxed);
        worker.refilled.store(400, Ordering::Relaxed);
        let why = worker.health().unwrap_err();
        assert!(why.contains("refilling from 127.0.0.1:9: 40%"), "{why}");
        let text = render(&worker);
        assert!(
            text.contains("rcache_worker_state{state=\"refilling\"} 1"),
            "{text}"
        );
        assert!(text.contains("rcache_refill_entries 400"));
        worker.set_state(WorkerState::Ready);
        assert_eq!(worker.health(), Ok(()));
        worker.set_incomplete(Some("started empty: partner unreachable".into()));
        let why = worker.health().unwrap_err();
        assert!(why.starts_with("incomplete"), "{why}");
        assert!(render(&worker).contains("rcache_worker_incomplete 1"));
        worker.round_completed();
        assert_eq!(worker.health(), Ok(()));
        assert!(render(&worker).contains("rcache_worker_incomplete 0"));
    }
}
