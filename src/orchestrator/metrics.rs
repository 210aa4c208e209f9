//! The orchestrator's metrics: requests and connections (shared with the
//! worker), and its view of each worker, labelled by the worker's address
//! (a handful of series per worker; never a key).

use super::pool::{BackendMetrics, Health};
use super::Router;
use crate::metrics::{Builder, Exporter, ProcessMetrics, ServerMetrics};
use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use std::sync::Arc;

const HEALTHS: [Health; 4] = [Health::Up, Health::Loading, Health::Behind, Health::Down];

pub struct OrchestratorMetrics {
    registry: Registry,
    pub server: Arc<ServerMetrics>,
    process: ProcessMetrics,
    pairs: IntGauge,
    worker_up: IntGaugeVec,
    worker_state: IntGaugeVec,
    worker_entries: IntGaugeVec,
    hints: IntGaugeVec,
    hint_bytes: IntGaugeVec,
    latency: HistogramVec,
    errors: IntCounterVec,
    failovers: IntCounterVec,
    hints_dropped: IntCounterVec,
    stale_refused: IntCounterVec,
    /// Writes no worker acknowledged in time but one may have applied.
    pub writes_unknown: IntCounter,
    /// Writes stamped again because a worker held a newer version.
    pub writes_restamped: IntCounter,
}

impl Default for OrchestratorMetrics {
    fn default() -> Self {
        OrchestratorMetrics::new()
    }
}

impl OrchestratorMetrics {
    pub fn new() -> OrchestratorMetrics {
        let registry = Registry::new();
        let b = Builder::new(&registry);
        OrchestratorMetrics {
            server: Arc::new(b.server("orchestrator")),
            process: ProcessMetrics::new(&b),
            pairs: b.gauge("rcache_pairs", "Worker pairs in the orchestrator's config"),
            worker_up: b.gauge_vec(
                "rcache_worker_up",
                "1 when the worker serves reads (up), 0 when loading, behind or down",
                &["worker", "pair"],
            ),
            worker_state: b.gauge_vec(
                "rcache_worker_health",
                "1 for the worker's health as this orchestrator sees it (up, loading, behind, down)",
                &["worker", "state"],
            ),
            worker_entries: b.gauge_vec(
                "rcache_worker_entries",
                "Entries the worker reported in its last health probe",
                &["worker"],
            ),
            hints: b.gauge_vec(
                "rcache_hints_queued",
                "Writes queued for a worker that missed them (hinted handoff)",
                &["worker"],
            ),
            hint_bytes: b.gauge_vec(
                "rcache_hints_queued_bytes",
                "Bytes of the hints queued for a worker (limit: max_hint_bytes)",
                &["worker"],
            ),
            latency: b.histogram_vec(
                "rcache_worker_request_duration_seconds",
                "Time from writing a request to a worker to reading its answer",
                &["worker"],
            ),
            errors: b.counter_vec(
                "rcache_worker_errors_total",
                "Requests that failed on a worker (connection errors, timeouts)",
                &["worker"],
            ),
            failovers: b.counter_vec(
                "rcache_failovers_total",
                "Reads that went on to the partner because this worker failed them",
                &["worker"],
            ),
            hints_dropped: b.counter_vec(
                "rcache_hints_dropped_total",
                "Hints dropped because the worker's queue was full (anti-entropy repairs those)",
                &["worker"],
            ),
            stale_refused: b.counter_vec(
                "rcache_reads_refused_stale_total",
                "Reads this worker was not asked because it missed writes beyond max_hint_bytes and is not repaired yet (its partner could not serve them either)",
                &["worker"],
            ),
            writes_unknown: b.counter(
                "rcache_writes_unknown_total",
                "Writes answered 'outcome unknown': no worker acknowledged in time",
            ),
            writes_restamped: b.counter(
                "rcache_writes_restamped_total",
                "Writes stamped again above the newer version a worker held (clock skew between orchestrators, a restart, a clock step back)",
            ),
            registry,
        }
    }

    /// Handles for one worker's series.
    pub fn backend(&self, addr: &str) -> BackendMetrics {
        BackendMetrics {
            latency: self.latency.with_label_values(&[addr]),
            errors: self.errors.with_label_values(&[addr]),
            failovers: self.failovers.with_label_values(&[addr]),
            hints_dropped: self.hints_dropped.with_label_values(&[addr]),
            stale_refused: self.stale_refused.with_label_values(&[addr]),
        }
    }

    /// Drops a removed worker's counters and histogram (its gauges are
    /// rebuilt from the pairs in force at every scrape).
    pub fn forget(&self, addr: &str) {
        for vec in [
            &self.errors,
            &self.failovers,
            &self.hints_dropped,
            &self.stale_refused,
        ] {
            let _ = vec.remove_label_values(&[addr]);
        }
        let _ = self.latency.remove_label_values(&[addr]);
    }
}

impl Exporter for Router {
    fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    fn refresh(&self) {
        let m = &self.metrics;
        m.process.refresh();
        let topology = self.topology();
        m.pairs.set(topology.pairs.len() as i64);
        // Rebuilt from the pairs in force, so a worker a reload removed or
        // moved to another pair leaves no stale series behind.
        for vec in [
            &m.worker_up,
            &m.worker_state,
            &m.worker_entries,
            &m.hints,
            &m.hint_bytes,
        ] {
            vec.reset();
        }
        for (i, pair) in topology.pairs.iter().enumerate() {
            let pair_label = i.to_string();
            for backend in pair {
                let v = backend.view();
                let addr = v.addr.as_str();
                m.worker_up
                    .with_label_values(&[addr, &pair_label])
                    .set((v.health == Health::Up) as i64);
                for h in HEALTHS {
                    m.worker_state
                        .with_label_values(&[addr, h.name()])
                        .set((v.health == h) as i64);
                }
                m.worker_entries
                    .with_label_values(&[addr])
                    .set(v.entries as i64);
                m.hints.with_label_values(&[addr]).set(v.hints as i64);
                m.hint_bytes
                    .with_label_values(&[addr])
                    .set(v.hint_bytes as i64);
            }
        }
    }

    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}
