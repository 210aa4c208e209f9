//! Prometheus metrics and the HTTP endpoint that serves them.
//!
//! Every daemon has a registry of its own (so `rcache local` can run five in
//! one process), shared counters for requests and connections
//! ([`ServerMetrics`]), and gauges read from the daemon's state when a
//! scrape arrives ([`Exporter::refresh`]). Names follow Prometheus
//! conventions: the `rcache_` prefix, base units, `_total` counters,
//! `_seconds` histograms. No label ever holds a key.
//!
//! [`serve_http`] answers `GET /metrics` (text format 0.0.4) and
//! `GET /health` (200 when ready, 503 with the reason otherwise).

pub mod http;

pub use http::serve_http;

use crate::protocol::{Op, Outcome};
use prometheus::local::{LocalHistogram, LocalIntCounter};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};
use std::time::Duration;

/// Latency buckets in seconds: 25µs to 2.5s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5,
];

/// What a daemon serves on its metrics port.
pub trait Exporter: Send + Sync + 'static {
    fn registry(&self) -> &Registry;
    /// Brings gauges read from the daemon's state up to date.
    fn refresh(&self);
    /// `Ok` when ready to serve clients, or why not.
    fn health(&self) -> Result<(), String>;
}

/// Request and connection metrics both daemons keep.
pub struct ServerMetrics {
    requests: Vec<[IntCounter; 3]>,
    durations: Vec<Histogram>,
    pub connections_open: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_rejected: IntCounter,
    pub connections_reaped: IntCounter,
    pub auth_failures: IntCounter,
    pub link_client_tokens: IntCounter,
    pub request_buffers: IntGauge,
    pub request_buffers_limit: IntGauge,
    pub request_buffer_waits: IntCounter,
    /// When the daemon started (`INFO`'s uptime).
    pub started: std::time::Instant,
}

impl ServerMetrics {
    pub fn observe(&self, op: Op, outcome: Outcome, elapsed: Duration) {
        self.requests[op as usize][outcome as usize].inc();
        self.durations[op as usize].observe(elapsed.as_secs_f64());
    }

    /// Requests of `op` that ended in `outcome` so far.
    pub fn requests(&self, op: Op, outcome: Outcome) -> u64 {
        self.requests[op as usize][outcome as usize].get()
    }
}

/// The request metrics of one connection, counted locally and added to the
/// shared ones by [`Tally::flush`], once per batch of pipelined requests:
/// a batch costs one update of each metric it touched instead of one per
/// request (the shared ones are atomics every connection writes to).
/// A connection flushes before it writes the batch's replies, so a client
/// that got its reply sees the request counted; dropping flushes too.
#[derive(Default)]
pub struct Tally {
    ops: Vec<Option<OpTally>>,
    /// Indices of `ops` observed since the last flush.
    touched: Vec<usize>,
}

struct OpTally {
    requests: [LocalIntCounter; 3],
    duration: LocalHistogram,
}

impl Tally {
    pub fn observe(
        &mut self,
        metrics: &ServerMetrics,
        op: Op,
        outcome: Outcome,
        elapsed: Duration,
    ) {
        let i = op as usize;
        if self.ops.len() <= i {
            self.ops.resize_with(i + 1, || None);
        }
        let tally = self.ops[i].get_or_insert_with(|| OpTally {
            requests: [0, 1, 2].map(|o| metrics.requests[i][o].local()),
            duration: metrics.durations[i].local(),
        });
        tally.requests[outcome as usize].inc();
        tally.duration.observe(elapsed.as_secs_f64());
        if !self.touched.contains(&i) {
            self.touched.push(i);
        }
    }

    /// Adds what was counted since the last flush to the shared metrics.
    pub fn flush(&mut self) {
        for i in self.touched.drain(..) {
            if let Some(Some(tally)) = self.ops.get_mut(i) {
                for counter in &mut tally.requests {
                    counter.flush();
                }
                tally.duration.flush();
            }
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Registers metrics on one registry, turning a registration error (a
/// duplicate name: a bug) into a panic at start-up, never on input.
pub struct Builder<'a> {
    registry: &'a Registry,
}

impl<'a> Builder<'a> {
    pub fn new(registry: &'a Registry) -> Builder<'a> {
        Builder { registry }
    }

    fn register<C: prometheus::core::Collector + Clone + 'static>(&self, c: C) -> C {
        // Names are fixed in this module; a clash is a programming error
        // found by the first test that starts a daemon.
        #[allow(clippy::expect_used)]
        self.registry
            .register(Box::new(c.clone()))
            .expect("metric names are unique");
        c
    }

    #[allow(clippy::expect_used)]
    pub fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.register(IntCounter::new(name, help).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.register(IntGauge::new(name, help).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn float_gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(Gauge::new(name, help).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(Histogram::with_opts(opts).expect("valid metric"))
    }

    #[allow(clippy::expect_used)]
    pub fn histogram_vec(&self, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
        self.register(HistogramVec::new(opts, labels).expect("valid metric"))
    }

    /// The metrics every daemon has, `role` being `worker` or
    /// `orchestrator` (in `rcache_build_info`).
    pub fn server(&self, role: &str) -> ServerMetrics {
        let info = self.gauge_vec(
            "rcache_build_info",
            "Always 1; the labels say which build and role this is",
            &["version", "role"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), role])
            .set(1);
        let start = self.float_gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
        );
        start.set(crate::sys::wall_ms() as f64 / 1000.0);
        let requests = self.counter_vec(
            "rcache_requests_total",
            "Requests served, by command and result",
            &["command", "result"],
        );
        let durations = self.histogram_vec(
            "rcache_request_duration_seconds",
            "Time from a request's arrival (parsed) to its reply, by command",
            &["command"],
        );
        ServerMetrics {
            started: std::time::Instant::now(),
            requests: Op::ALL
                .iter()
                .map(|op| Outcome::ALL.map(|o| requests.with_label_values(&[op.name(), o.name()])))
                .collect(),
            durations: Op::ALL
                .iter()
                .map(|op| durations.with_label_values(&[op.name()]))
                .collect(),
            connections_open: self.gauge("rcache_connections_open", "Connections open now"),
            connections_accepted: self.counter(
                "rcache_connections_accepted_total",
                "Connections accepted (including those then refused for the limit)",
            ),
            connections_rejected: self.counter(
                "rcache_connections_rejected_total",
                "Connections refused because max_connections, or max_connections_per_source from their address, were open",
            ),
            connections_reaped: self.counter(
                "rcache_connections_reaped_total",
                "Connections closed for staying idle past idle_timeout, or for not completing a request within request_timeout",
            ),
            auth_failures: self.counter(
                "rcache_auth_failures_total",
                "Wrong tokens presented (clients with auth||, daemons on links)",
            ),
            link_client_tokens: self.counter(
                "rcache_link_client_tokens_total",
                "Links refused because they presented the clients' auth_token where the cluster_token is required",
            ),
            request_buffers: self.gauge(
                "rcache_request_buffer_bytes",
                "Bytes of max_request_buffers claimed by connections buffering a request over 64 KiB",
            ),
            request_buffers_limit: self.gauge(
                "rcache_request_buffer_limit_bytes",
                "max_request_buffers: the most connections' read buffers may hold beyond 64 KiB each",
            ),
            request_buffer_waits: self.counter(
                "rcache_request_buffer_waits_total",
                "Reads that waited because max_request_buffers was spent",
            ),
        }
    }
}

/// Process gauges read from /proc at scrape time.
pub struct ProcessMetrics {
    resident: IntGauge,
    open_fds: IntGauge,
}

impl ProcessMetrics {
    pub fn new(b: &Builder<'_>) -> ProcessMetrics {
        ProcessMetrics {
            resident: b.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            open_fds: b.gauge("process_open_fds", "Open file descriptors"),
        }
    }

    pub fn refresh(&self) {
        if let Some(bytes) = resident_bytes() {
            self.resident.set(bytes as i64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(dir.count() as i64);
        }
    }
}

/// The process's resident memory in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    // statm: size resident shared ... in pages.
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    // Every Linux platform rcache is packaged for uses 4 KiB pages.
    4096
}

/// Sets a counter mirrored from a monotonic source to `value`.
pub fn mirror(counter: &IntCounter, value: u64) {
    let seen = counter.get();
    if value > seen {
        counter.inc_by(value - seen);
    }
}

/// Binds `address` and serves `/metrics` and `/health` there until
/// shutdown; returns the bound address (port 0 picks a free one).
pub async fn spawn(
    address: &str,
    exporter: std::sync::Arc<dyn Exporter>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| crate::sys::bind_error(&format!("{address} (metrics_listen)"), e))?;
    let local = listener.local_addr()?;
    tokio::spawn(serve_http(listener, exporter, shutdown));
    Ok(local)
}

/// The registry's content in the text exposition format.
pub fn render(exporter: &dyn Exporter) -> String {
    // One scrape at a time: `refresh` reads and then adds to counters
    // mirrored from the daemon's state, which two at once would overcount.
    static RENDERING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = RENDERING.lock().unwrap_or_else(|p| p.into_inner());
    exporter.refresh();
    let mut out = String::new();
    if let Err(e) =
        prometheus::TextEncoder::new().encode_utf8(&exporter.registry().gather(), &mut out)
    {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_up_when_flushed_and_when_dropped() {
        let registry = Registry::new();
        let m = Builder::new(&registry).server("worker");
        let mut tally = Tally::default();
        tally.observe(&m, Op::Get, Outcome::Ok, Duration::from_micros(30));
        tally.observe(&m, Op::Get, Outcome::NotFound, Duration::from_micros(30));
        tally.observe(&m, Op::Set, Outcome::Ok, Duration::from_millis(2));
        assert_eq!(
            m.requests(Op::Get, Outcome::Ok),
            0,
            "counted before the flush"
        );
        tally.flush();
        assert_eq!(m.requests(Op::Get, Outcome::Ok), 1);
        assert_eq!(m.requests(Op::Get, Outcome::NotFound), 1);
        assert_eq!(m.requests(Op::Set, Outcome::Ok), 1);
        assert_eq!(m.durations[Op::Get as usize].get_sample_count(), 2);
        assert_eq!(m.durations[Op::Set as usize].get_sample_count(), 1);
        tally.flush();
        assert_eq!(
            m.requests(Op::Get, Outcome::Ok),
            1,
            "a second flush adds nothing"
        );
        tally.observe(&m, Op::Set, Outcome::Error, Duration::ZERO);
        drop(tally);
        assert_eq!(m.requests(Op::Set, Outcome::Error), 1, "dropping flushes");
        assert_eq!(m.durations[Op::Set as usize].get_sample_count(), 2);
    }

    #[test]
    fn server_metrics_count_by_command_and_result() {
        let registry = Registry::new();
        let b = Builder::new(&registry);
        let m = b.server("worker");
        m.observe(Op::Get, Outcome::NotFound, Duration::from_micros(30));
        m.observe(Op::Get, Outcome::NotFound, Duration::from_micros(30));
        m.observe(Op::Set, Outcome::Ok, Duration::from_millis(2));
        assert_eq!(m.requests(Op::Get, Outcome::NotFound), 2);
        assert_eq!(m.requests(Op::Set, Outcome::Ok), 1);
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut out)
            .unwrap();
        assert!(out.contains(r#"rcache_requests_total{command="get",result="not_found"} 2"#));
        assert!(out.contains(r#"rcache_request_duration_seconds_count{command="set"} 1"#));
        assert!(out.contains(r#"rcache_build_info{role="worker",version=""#));
    }

    #[test]
    fn mirrored_counters_follow_their_source() {
        let registry = Registry::new();
        let c = Builder::new(&registry).counter("rcache_x_total", "x");
        mirror(&c, 5);
        mirror(&c, 3);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
