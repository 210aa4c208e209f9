//! Persistent, pipelined links from the orchestrator to one worker.
//!
//! A [`Backend`] owns one link: a task that connects on first use, then
//! writes every request queued to it in one batch per wake-up (one write
//! syscall for many client requests; a second link per worker would halve
//! the requests per write and double the wake-ups on both sides), while a
//! reader task answers the callers in order and times them out (one timer
//! per link, see `read_responses` in `link.rs`). A link that breaks fails its
//! in-flight requests and reconnects on the next request. An idle link sends
//! a ping now and then so the worker's idle timeout never closes it under a
//! request; if it closes it anyway, the request is retried once on a fresh
//! connection (versioned writes are idempotent, so a retry cannot apply
//! anything twice).
//!
//!
//! How a worker that missed writes catches up: `catchup.rs`; the link's
//! tasks: `link.rs`.

mod catchup;
mod link;
#[cfg(test)]
mod tests;

use crate::client::ClientError;
use crate::protocol::link::{Request, Response, LINK_VERSION};
use crate::protocol::Limits;
use catchup::{Catchup, Hint};
use link::run_link;
use prometheus::{Histogram, HistogramOpts, IntCounter};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Requests that may wait for one link before callers are refused.
pub const LINK_QUEUE_DEPTH: usize = 4096;

/// Bytes of keys and values (by [`request_bytes`]) that may wait for one
/// link before callers are refused: with 8 MiB values, a count alone would
/// let a slow worker's queue hold 32 GiB.
pub const LINK_QUEUE_BYTES: usize = 64 << 20;

/// Requests written to a link in one batch at most.
const LINK_BATCH_MAX: usize = 256;

/// Bytes of keys and values a link writes in one batch, about (a larger
/// request goes alone): a worker must take a whole batch within
/// `worker_timeout`, so a batch is kept to what any working network
/// carries in that time.
const LINK_BATCH_BYTES: usize = 1 << 20;

/// A link idle this long sends a ping to stay open.
pub const KEEPALIVE_MAX: Duration = Duration::from_secs(10);

/// The least a link waits for an answer before it counts as broken.
pub const MIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Hints sent to a returning worker in one pipelined batch.
const HINT_BATCH: usize = 256;

/// What a hint costs in memory beyond its key and value: the [`Hint`] in
/// the queue (whose capacity may be twice its length) and the allocator's
/// header and rounding of its buffer. Charged against `max_hint_bytes`, so
/// the limit holds for the process's memory, not only for a gauge
/// (`tests/hostile.rs` measures the RSS).
const HINT_OVERHEAD_BYTES: usize = 2 * std::mem::size_of::<Hint>() + 32;

/// Anti-entropy rounds a behind worker must complete after the first probe
/// that followed its miss: the first may have begun before the miss.
const CATCHUP_ROUNDS: u64 = 2;

/// Health of a worker as the orchestrator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Ready: takes reads and writes.
    Up = 0,
    /// Reachable but refilling or starting: takes writes, no reads.
    Loading = 1,
    /// Unreachable or failing: not waited on.
    Down = 2,
    /// Reachable, but it missed an acknowledged write or says it is
    /// incomplete (it started empty): takes writes, serves reads only when
    /// its partner cannot, until it caught up (see the module doc).
    Behind = 3,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Loading => "loading",
            Health::Down => "down",
            Health::Behind => "behind",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Up,
            1 => Health::Loading,
            3 => Health::Behind,
            _ => Health::Down,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub limits: Limits,
    /// Token and TLS for new links (a reload swaps in new certificates).
    pub dial: Arc<arc_swap::ArcSwap<crate::client::Dial>>,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    /// Bytes of hints kept for this worker.
    pub max_hint_bytes: usize,
    /// A link that got no answer for this long (up to twice this long)
    /// while one was awaited is closed and reconnected: a worker behind a
    /// dead network path (no FIN, no RST) must not wedge it until TCP gives
    /// up, minutes later.
    pub response_timeout: Duration,
    /// How long a request may wait for its answer (`worker_timeout`).
    pub request_timeout: Duration,
}

/// A request's keys and values plus a fixed overhead: what a link batch
/// counts towards [`LINK_BATCH_BYTES`] and a link queue towards
/// [`LINK_QUEUE_BYTES`].
fn request_bytes(request: &Request) -> usize {
    64 + match request {
        Request::Set { key, value, .. } => key.len() + value.len(),
        Request::Del { key, .. } | Request::Expire { key, .. } => key.len(),
        Request::HSet { key, fields, .. } => {
            key.len()
                + fields
                    .iter()
                    .map(|(n, v)| 9 + n.len() + v.as_ref().map_or(0, |v| v.len()))
                    .sum::<usize>()
        }
        _ => 0,
    }
}

/// A worker as `rcache cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendView {
    pub addr: String,
    pub health: Health,
    pub entries: u64,
    pub hints: usize,
    pub hint_bytes: usize,
    pub synced: u64,
}

/// Per-worker metric handles (labelled with the worker's address by the
/// orchestrator's registry; detached ones count without being exported).
#[derive(Clone)]
pub struct BackendMetrics {
    /// Time from writing a request to this worker to reading its answer.
    pub latency: Histogram,
    /// Requests that failed on this worker (transport errors, timeouts).
    pub errors: IntCounter,
    /// Reads that went on to the partner because this worker failed them.
    pub failovers: IntCounter,
    /// Hints dropped because the queue was full.
    pub hints_dropped: IntCounter,
    /// Reads not sent to this worker because it is known stale.
    pub stale_refused: IntCounter,
}

impl BackendMetrics {
    #[allow(clippy::expect_used)]
    pub fn detached() -> BackendMetrics {
        BackendMetrics {
            latency: Histogram::with_opts(HistogramOpts::new("latency", "latency"))
                .expect("valid histogram"),
            errors: IntCounter::new("errors", "errors").expect("valid counter"),
            failovers: IntCounter::new("failovers", "failovers").expect("valid counter"),
            hints_dropped: IntCounter::new("dropped", "dropped").expect("valid counter"),
            stale_refused: IntCounter::new("stale", "stale").expect("valid counter"),
        }
    }
}

struct Pending {
    request: Arc<Request>,
    reply: Option<oneshot::Sender<Result<Response, ClientError>>>,
    /// When the caller stops waiting: `request_timeout` after the call
    /// began (a retry keeps it).
    deadline: Instant,
    /// Its share of [`LINK_QUEUE_BYTES`], given back when it is written
    /// (or failed).
    _queued: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// One worker and the link to it.
pub struct Backend {
    pub addr: String,
    link: mpsc::Sender<Pending>,
    /// Bytes the link's queue may still take (see [`LINK_QUEUE_BYTES`]).
    queue_room: Arc<tokio::sync::Semaphore>,
    health: AtomicU8,
    /// Entries the worker reported in its last health probe.
    pub entries: AtomicU64,
    /// Anti-entropy rounds it reported in its last health probe.
    synced: AtomicU64,
    /// When it began serving, estimated from its last probe's answer: ms
    /// after `created`, negative for before it ([`catchup::NOT_SERVING`]:
    /// not serving, or not probed yet).
    serving_from: std::sync::atomic::AtomicI64,
    /// The link protocol version its probe agreed on (0 until a probe
    /// connected): below [`crate::protocol::link::HASH_LINK_VERSION`] it
    /// runs the previous release, or is not known yet, and takes no hash
    /// requests. Shared with the link task, which replaces a connection
    /// at an older version than this (see `link::run_connected`).
    link_version: Arc<AtomicU8>,
    created: Instant,
    catchup: Mutex<Catchup>,
    /// Held while hints are being delivered: one delivery at a time, and a
    /// read that must go to a behind worker waits for it.
    delivery: tokio::sync::Mutex<()>,
    max_hint_bytes: usize,
    request_timeout: Duration,
    pub metrics: BackendMetrics,
    /// No longer in the orchestrator's pair list (a reload removed it): its
    /// probe stops, and its links close once the last request is done.
    retired: AtomicBool,
    /// The worker's last probe said its partner missed a write stored
    /// here (an orchestrator told it so): the partner serves no reads
    /// while this worker can (see [`Backend::standing`]).
    partner_behind: AtomicBool,
    /// Set once a probe has answered (see [`Backend::first_probe`]).
    probed_once: AtomicBool,
    probe_seen: tokio::sync::Notify,
    /// The worker's part in a migration, as its last layout answer said.
    handoff: Mutex<Option<crate::protocol::link::Handoff>>,
}

impl Backend {
    /// Starts the link tasks. The worker starts out `Up`: the first failed
    /// request or probe says otherwise.
    pub fn start(addr: String, settings: LinkSettings) -> Arc<Backend> {
        Backend::start_measured(addr, settings, BackendMetrics::detached())
    }

    /// [`Backend::start`] with metric handles of the orchestrator's registry.
    pub fn start_measured(
        addr: String,
        settings: LinkSettings,
        metrics: BackendMetrics,
    ) -> Arc<Backend> {
        let (link, rx) = mpsc::channel(LINK_QUEUE_DEPTH);
        let latency = metrics.latency.clone();
        let link_version = Arc::new(AtomicU8::new(0));
        tokio::spawn(run_link(
            addr.clone(),
            settings.clone(),
            rx,
            latency,
            link_version.clone(),
        ));
        Arc::new(Backend {
            addr,
            link,
            queue_room: Arc::new(tokio::sync::Semaphore::new(LINK_QUEUE_BYTES)),
            health: AtomicU8::new(Health::Up as u8),
            entries: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            serving_from: std::sync::atomic::AtomicI64::new(catchup::NOT_SERVING),
            link_version,
            created: Instant::now(),
            catchup: Mutex::new(Catchup::default()),
            delivery: tokio::sync::Mutex::new(()),
            max_hint_bytes: settings.max_hint_bytes,
            request_timeout: settings.request_timeout,
            metrics,
            retired: AtomicBool::new(false),
            partner_behind: AtomicBool::new(false),
            probed_once: AtomicBool::new(false),
            probe_seen: tokio::sync::Notify::new(),
            handoff: Mutex::new(None),
        })
    }

    /// The worker's part in a migration, as its last layout answer said.
    pub fn handoff(&self) -> Option<crate::protocol::link::Handoff> {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_handoff(&self, handoff: Option<crate::protocol::link::Handoff>) {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = handoff;
    }

    pub fn view(&self) -> BackendView {
        let (hints, hint_bytes) = {
            let c = self.catchup();
            (c.hints.len(), c.hint_bytes)
        };
        BackendView {
            addr: self.addr.clone(),
            health: self.health(),
            entries: self.entries.load(Ordering::Relaxed),
            hints,
            hint_bytes,
            synced: self.synced.load(Ordering::Relaxed),
        }
    }

    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// The link protocol version the worker speaks, as its probe found.
    pub fn link_version(&self) -> u8 {
        self.link_version.load(Ordering::Relaxed)
    }

    /// Its probe connected and agreed on `version`.
    pub fn spoke(&self, version: u8) {
        let before = self.link_version.swap(version, Ordering::Relaxed);
        // Logged when it is not this build's, or changes: an upgrade.
        if before != version && (before != 0 || version < LINK_VERSION) {
            tracing::info!(worker = %self.addr, version, "the worker's link protocol version");
        }
    }

    /// Records a new health; returns the previous one.
    pub fn set_health(&self, health: Health) -> Health {
        let previous = Health::from_u8(self.health.swap(health as u8, Ordering::Relaxed));
        if previous != health {
            match health {
                Health::Down => tracing::warn!(worker = %self.addr, "worker is down"),
                _ => tracing::info!(worker = %self.addr, "worker is {}", health.name()),
            }
        }
        previous
    }

    /// Marks the worker down after a request failed on it.
    pub fn report_failure(&self, error: &ClientError) {
        self.metrics.errors.inc();
        // A full queue is this orchestrator's own backlog, and a request
        // an older worker cannot take is a mixed-version cluster: neither
        // is a sign that the worker is gone.
        if matches!(
            error,
            ClientError::Overloaded(_) | ClientError::Unsupported { .. }
        ) {
            return;
        }
        if self.health() != Health::Down {
            tracing::debug!(worker = %self.addr, %error, "request failed");
            self.set_health(Health::Down);
        }
    }

    fn enqueue(
        &self,
        request: Arc<Request>,
        deadline: Instant,
    ) -> Result<oneshot::Receiver<Result<Response, ClientError>>, ClientError> {
        let overloaded = || ClientError::Overloaded(self.addr.clone());
        // A request larger than the whole budget still goes alone.
        let size = request_bytes(&request).min(LINK_QUEUE_BYTES) as u32;
        let queued = self
            .queue_room
            .clone()
            .try_acquire_many_owned(size)
            .map_err(|_| overloaded())?;
        let (tx, rx) = oneshot::channel();
        self.link
            .try_send(Pending {
                request,
                reply: Some(tx),
                deadline,
                _queued: Some(queued),
            })
            .map_err(|_| overloaded())?;
        Ok(rx)
    }

    /// Sends a request and waits for its response, at most the link's
    /// `request_timeout` from now (the link keeps the time: one timer per
    /// link, not one per request). A link that turns out closed before
    /// answering is retried once, within the same time: a link found
    /// closed reconnects for its next request.
    ///
    /// A request that was written before its connection closed may have
    /// been applied: if its retry is never sent, the caller is told
    /// `Closed` (outcome unknown), not the retry's "never sent".
    pub async fn call(&self, request: Arc<Request>) -> Result<Response, ClientError> {
        let deadline = Instant::now() + self.request_timeout;
        let mut retries = 1;
        let mut written = false;
        loop {
            let rx = self.enqueue(request.clone(), deadline)?;
            // A dropped sender: the link dropped the request with its
            // connection.
            match rx.await.unwrap_or(Err(ClientError::Closed)) {
                Err(ClientError::Closed) if retries > 0 => {
                    retries -= 1;
                    written = true;
                }
                // (A full queue or a refusal keeps its own meaning.)
                Err(
                    ClientError::Unsent(_)
                    | ClientError::NotConnected(_)
                    | ClientError::Connect { .. }
                    | ClientError::ConnectTimeout { .. },
                ) if written => return Err(ClientError::Closed),
                result => return result,
            }
        }
    }
}
