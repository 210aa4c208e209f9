//! Persistent, pipelined links from the orchestrator to one worker.
//!
//! A [`Backend`] owns one link: a task that connects on first use, then
//! writes every request queued to it in one batch per wake-up (one write
//! syscall for many client requests; a second link per worker would halve
//! the requests per write and double the wake-ups on both sides), while a
//! reader task answers the callers in order and times them out (one timer
//! per link, see [`read_responses`]). A link that breaks fails its
//! in-flight requests and reconnects on the next request. An idle link sends
//! a ping now and then so the worker's idle timeout never closes it under a
//! request; if it closes it anyway, the request is retried once on a fresh
//! connection (versioned writes are idempotent, so a retry cannot apply
//! anything twice).
//!
//! Catch-up: a write the worker did not confirm (it was down, failed or
//! timed out) while its partner stored it is a *miss*. The worker is then
//! `Behind` (no reads from it while its partner can serve) and the write is
//! queued as a *hint*, up to `max_hint_bytes`. When a probe finds the worker
//! reachable, the hints are delivered (versions make replay idempotent and
//! order-free: an `expire` applies only to the version it was read at). `Behind` ends when
//! - every hint was delivered and none was dropped for lack of room, or
//! - the worker completed two anti-entropy rounds after the first probe
//!   that followed the miss (a round then began after the miss, and it
//!   copies whatever the partner held: anti-entropy is the safety net when
//!   hints overflowed or another orchestrator's writes were missed), or
//! - a new process of it appeared after that probe (it refilled from its
//!   partner).

use crate::client::link::{LinkConn, LinkReader};
use crate::client::ClientError;
use crate::protocol::link::{Request, RequestKind, Response};
use crate::protocol::{Limits, SetWhen};
use bytes::Bytes;
use prometheus::{Histogram, HistogramOpts, IntCounter};
use std::collections::VecDeque;
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

/// How a worker catches up on writes it missed (see the module doc).
#[derive(Debug, Default)]
struct Catchup {
    /// The worker may lack an acknowledged write.
    behind: bool,
    hints: VecDeque<Hint>,
    hint_bytes: usize,
    /// A hint was dropped for lack of room since the worker fell behind.
    overflowed: bool,
    /// A probe after the last miss has not answered yet.
    awaiting_probe: bool,
    /// (incarnation, rounds to reach) from the first probe after the miss.
    target: Option<(u64, u64)>,
    /// The state the last probe reported (`Up` or `Loading`).
    probed: Option<Health>,
    /// It was unreachable from here since it was last caught up: only
    /// anti-entropy (or a restart) can catch it up, not hints.
    unreached: bool,
}

impl Catchup {
    fn caught_up(&mut self) {
        self.behind = false;
        self.overflowed = false;
        self.unreached = false;
        self.awaiting_probe = false;
        self.target = None;
    }
}

/// A request's keys and values plus a fixed overhead: what a link batch
/// counts towards [`LINK_BATCH_BYTES`] and a link queue towards
/// [`LINK_QUEUE_BYTES`].
fn request_bytes(request: &Request) -> usize {
    64 + match request {
        Request::Set { key, value, .. } => key.len() + value.len(),
        Request::Del { key, .. } | Request::Expire { key, .. } => key.len(),
        _ => 0,
    }
}

/// A write kept for a worker that missed it. Its key and value are copied
/// into one buffer of its own: a request's bytes are slices of the client's
/// read buffer, and a kept slice would keep that whole buffer (16 KiB or
/// more per small write) for as long as the hint waits. Its TTL is kept as
/// a deadline on this process's monotonic clock, so a hint delivered after
/// a long outage does not live longer than the write it stands for, and
/// one whose deadline passed is delivered as a delete of its version
/// (an expiry is as final as a delete).
#[derive(Debug)]
struct Hint {
    version: u64,
    kind: HintKind,
    key_len: u32,
    /// The key, then the value (a set's).
    data: Box<[u8]>,
}

#[derive(Debug, Clone, Copy)]
enum HintKind {
    Set {
        expires_at: Option<Instant>,
    },
    Del,
    /// The TTL an `expire` gave the entry at `version`.
    Expire {
        expires_at: Instant,
    },
}

impl Hint {
    /// The hint for a missed write (`None` for requests that write
    /// nothing). A conditional set is hinted as the unconditional set it
    /// became where it applied.
    fn new(request: &Request, now: Instant) -> Option<Hint> {
        let deadline = |ttl_ms: u64| now + Duration::from_millis(ttl_ms);
        let (version, kind, key, value): (u64, HintKind, &[u8], &[u8]) = match request {
            Request::Set {
                version,
                ttl_ms,
                key,
                value,
                ..
            } => (
                *version,
                HintKind::Set {
                    expires_at: (*ttl_ms > 0).then(|| deadline(*ttl_ms)),
                },
                key,
                value,
            ),
            Request::Del { version, key } => (*version, HintKind::Del, key, &[]),
            Request::Expire {
                version,
                ttl_ms,
                key,
            } => (
                *version,
                HintKind::Expire {
                    expires_at: deadline(*ttl_ms),
                },
                key,
                &[],
            ),
            _ => return None,
        };
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Some(Hint {
            version,
            kind,
            key_len: key.len() as u32,
            data: data.into_boxed_slice(),
        })
    }

    /// What this hint costs against `max_hint_bytes`.
    fn charge(&self) -> usize {
        HINT_OVERHEAD_BYTES + self.data.len()
    }

    /// The request that delivers this hint at `now`.
    fn request(&self, now: Instant) -> Request {
        let data = Bytes::copy_from_slice(&self.data);
        let key = data.slice(..self.key_len as usize);
        let remaining_ms = |at: Instant| {
            let left = at.saturating_duration_since(now);
            (!left.is_zero()).then(|| (left.as_millis() as u64).max(1))
        };
        match self.kind {
            HintKind::Set { expires_at } => match expires_at.map(remaining_ms) {
                Some(None) => Request::Del {
                    version: self.version,
                    key,
                },
                ttl => Request::Set {
                    version: self.version,
                    ttl_ms: ttl.flatten().unwrap_or(0),
                    value: data.slice(self.key_len as usize..),
                    key,
                    when: SetWhen::Always,
                },
            },
            HintKind::Del => Request::Del {
                version: self.version,
                key,
            },
            HintKind::Expire { expires_at } => match remaining_ms(expires_at) {
                Some(ttl_ms) => Request::Expire {
                    version: self.version,
                    ttl_ms,
                    key,
                },
                // The entry the expire was for is gone by now: so is it
                // here (the expire's version is the one after it).
                None => Request::Del {
                    version: crate::version::after(self.version),
                    key,
                },
            },
        }
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
        tokio::spawn(run_link(addr.clone(), settings.clone(), rx, latency));
        Arc::new(Backend {
            addr,
            link,
            queue_room: Arc::new(tokio::sync::Semaphore::new(LINK_QUEUE_BYTES)),
            health: AtomicU8::new(Health::Up as u8),
            entries: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            catchup: Mutex::new(Catchup::default()),
            delivery: tokio::sync::Mutex::new(()),
            max_hint_bytes: settings.max_hint_bytes,
            request_timeout: settings.request_timeout,
            metrics,
            retired: AtomicBool::new(false),
            partner_behind: AtomicBool::new(false),
            probed_once: AtomicBool::new(false),
            probe_seen: tokio::sync::Notify::new(),
        })
    }

    /// Records that a probe answered or failed, and what the worker said
    /// of its partner (`None`: no answer).
    pub fn probe_done(&self, partner_behind: Option<bool>) {
        if let Some(behind) = partner_behind {
            let was = self.partner_behind.swap(behind, Ordering::Relaxed);
            if was != behind {
                tracing::info!(
                    worker = %self.addr,
                    "the worker says its partner {}",
                    if behind { "missed writes stored here: reads come here" } else { "has every write stored here" }
                );
            }
        }
        if partner_behind.is_some() && !self.probed_once.swap(true, Ordering::Release) {
            self.probe_seen.notify_waiters();
        }
    }

    /// Marks the worker down unless a probe has answered (checked under the
    /// catch-up lock, which [`Backend::probed`] holds while it records an
    /// answer, so an answer arriving now is not overwritten). Returns
    /// whether it was marked down.
    pub fn down_unless_answered(&self) -> bool {
        let c = self.catchup();
        if c.probed.is_some() {
            return false;
        }
        self.set_health(Health::Down);
        true
    }

    /// Whether a probe has answered yet.
    pub fn answered(&self) -> bool {
        self.probed_once.load(Ordering::Acquire)
    }

    /// Returns once a probe has answered.
    pub async fn first_probe(&self) {
        let seen = self.probe_seen.notified();
        if self.probed_once.load(Ordering::Acquire) {
            return;
        }
        seen.await;
    }

    /// Whether the worker said (in its last probe) that its partner missed
    /// a write stored on it.
    pub fn says_partner_behind(&self) -> bool {
        self.partner_behind.load(Ordering::Relaxed)
    }

    /// Whether worker `i`'s partner, reachable and serving reads (up, or
    /// behind on writes of its own), says `i` missed a write stored there
    /// (told by any orchestrator, so this one learns of writes it did not
    /// see fail).
    fn claimed_behind(pair: &[Arc<Backend>; 2], i: usize) -> bool {
        let partner = &pair[1 - i];
        matches!(partner.health(), Health::Up | Health::Behind) && partner.says_partner_behind()
    }

    /// Worker `i`'s health as reads and conditional writes see it: one
    /// that is up is `Behind` while its partner claims it missed a write
    /// (see [`Backend::claimed_behind`]).
    pub fn standing(pair: &[Arc<Backend>; 2], i: usize) -> Health {
        let health = pair[i].health();
        if health == Health::Up && Backend::claimed_behind(pair, i) {
            Health::Behind
        } else {
            health
        }
    }

    /// The order in which a read of a key whose first choice is `first`
    /// tries the pair: a worker that is up goes first, then one that is
    /// behind (it may lack a few writes, and gets its hints first; or its
    /// partner says it missed one), then one loading; one believed down is
    /// still tried last, in case it is back before the probe noticed (it
    /// may have missed any number of writes). Between two of the same
    /// standing, one that its partner says missed a write goes second.
    pub fn read_order(pair: &[Arc<Backend>; 2], first: usize) -> [usize; 2] {
        let rank = |i: usize| {
            let standing = match Backend::standing(pair, i) {
                Health::Up => 0,
                Health::Behind => 1,
                Health::Loading => 2,
                Health::Down => 3,
            };
            (standing, Backend::claimed_behind(pair, i))
        };
        let (a, b) = (first, 1 - first);
        if rank(b) < rank(a) {
            [b, a]
        } else {
            [a, b]
        }
    }

    /// Whether worker `i` may decide a conditional write for the pair: it
    /// is up, and its partner does not say it missed a write.
    pub fn can_decide(pair: &[Arc<Backend>; 2], i: usize) -> bool {
        Backend::standing(pair, i) == Health::Up
    }

    fn catchup(&self) -> std::sync::MutexGuard<'_, Catchup> {
        // Every update of `Catchup` completes before it could panic.
        self.catchup.lock().unwrap_or_else(|p| p.into_inner())
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
        // A full queue is this orchestrator's own backlog, not a sign that
        // the worker is gone.
        if matches!(error, ClientError::Overloaded(_)) {
            return;
        }
        if self.health() != Health::Down {
            tracing::debug!(worker = %self.addr, %error, "request failed");
            self.set_health(Health::Down);
        }
    }

    /// Records that this worker may lack an acknowledged write `request`:
    /// it serves no reads while its partner can, and the write is kept as
    /// a hint for when it is reachable again (see the module doc).
    pub fn missed_write(&self, request: &Request) {
        let hint = Hint::new(request, Instant::now());
        let mut c = self.catchup();
        if !c.behind {
            tracing::warn!(worker = %self.addr, "worker missed an acknowledged write; no reads from it until it catches up");
        }
        c.behind = true;
        c.awaiting_probe = true;
        c.target = None;
        let size = hint.as_ref().map_or(0, Hint::charge);
        if c.hint_bytes + size <= self.max_hint_bytes {
            if let Some(hint) = hint {
                c.hint_bytes += size;
                c.hints.push_back(hint);
            }
        } else {
            self.metrics.hints_dropped.inc();
            if !c.overflowed {
                c.overflowed = true;
                tracing::warn!(worker = %self.addr, max_hint_bytes = self.max_hint_bytes, "hint queue full; anti-entropy will repair the rest");
            }
        }
        // Under the catch-up lock, like every change between behind and
        // up, so a concurrent probe cannot write `Up` over it.
        if self.health() != Health::Down {
            self.set_health(Health::Behind);
        }
    }

    /// Whether this worker is known to lack acknowledged writes that no
    /// hint holds (its hint queue overflowed) and has not caught up since:
    /// a read it served could return a value older than one acknowledged.
    pub fn known_stale(&self) -> bool {
        let c = self.catchup();
        c.behind && c.overflowed
    }

    /// Applies a probe's answer: the worker is reachable in `healthy`
    /// state (`Up`, `Loading`, or `Behind` for a worker that says it is
    /// incomplete) as process `incarnation`, having completed
    /// `synced` anti-entropy rounds. Returns whether hints wait to be
    /// delivered (the caller spawns [`Backend::deliver_hints`]).
    pub fn probed(&self, healthy: Health, incarnation: u64, entries: u64, synced: u64) -> bool {
        self.entries.store(entries, Ordering::Relaxed);
        self.synced.store(synced, Ordering::Relaxed);
        let mut c = self.catchup();
        c.probed = Some(healthy);
        if self.health() == Health::Down {
            // Unreachable from here, so maybe from other orchestrators
            // too: it may lack writes they (or this orchestrator's former
            // process, whose hints died with it) acknowledged, which no
            // hint here covers. Only anti-entropy after now proves it
            // holds them.
            if !c.behind {
                tracing::info!(worker = %self.addr, "worker reachable again; no reads from it until anti-entropy with its partner confirms it missed nothing");
            }
            c.behind = true;
            c.unreached = true;
            c.awaiting_probe = false;
            c.target = Some((incarnation, synced.saturating_add(CATCHUP_ROUNDS)));
        } else if c.behind {
            if c.awaiting_probe {
                c.awaiting_probe = false;
                c.target = Some((incarnation, synced.saturating_add(CATCHUP_ROUNDS)));
            } else if let Some((then, rounds)) = c.target {
                if incarnation != then || synced >= rounds {
                    let how = if incarnation != then {
                        "it restarted and refilled"
                    } else {
                        "anti-entropy with its partner"
                    };
                    tracing::info!(worker = %self.addr, "worker caught up ({how})");
                    c.caught_up();
                }
            }
        }
        let deliver = !c.hints.is_empty();
        let health = if c.behind && healthy == Health::Up {
            Health::Behind
        } else {
            healthy
        };
        self.set_health(health);
        deliver
    }

    /// Delivers the hints in the background unless a delivery runs already
    /// (a probe found the worker reachable).
    pub async fn deliver_hints(self: Arc<Self>, timeout: Duration) {
        if let Ok(_delivery) = self.delivery.try_lock() {
            let _ = self.send_hints(timeout).await;
        }
    }

    /// Delivers every hint before returning (or fails): a read that must
    /// go to this worker because its partner cannot serve calls this first,
    /// so it sees every write acknowledged while this worker was away.
    ///
    /// A delivery under way (a probe's) holds hints it took off the queue
    /// until the worker answers them, so an empty queue alone does not mean
    /// they arrived: the read waits for that delivery first.
    pub async fn flush_hints(&self, timeout: Duration) -> Result<(), ClientError> {
        // A long delivery (many hints to a slow worker) is not waited on
        // past `timeout`: the read fails over instead.
        let Ok(_delivery) = tokio::time::timeout(timeout, self.delivery.lock()).await else {
            return Err(ClientError::Timeout(timeout));
        };
        if self.catchup().hints.is_empty() {
            return Ok(());
        }
        self.send_hints(timeout).await
    }

    /// Sends the queued hints, a pipelined batch at a time, until none is
    /// left or the worker fails again (what was not delivered stays queued).
    async fn send_hints(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut delivered = 0usize;
        loop {
            let batch: Vec<Hint> = {
                let mut c = self.catchup();
                if c.hints.is_empty() {
                    if c.behind && c.unreached && delivered > 0 {
                        tracing::info!(worker = %self.addr, delivered, "hints delivered; reads wait for anti-entropy to confirm the worker missed nothing else");
                    }
                    if c.behind && !c.overflowed && !c.unreached {
                        c.caught_up();
                        tracing::info!(worker = %self.addr, delivered, "worker caught up (hints delivered)");
                        if let Some(health) = c.probed {
                            if self.health() == Health::Behind {
                                self.set_health(health);
                            }
                        }
                    }
                    return Ok(());
                }
                let n = c.hints.len().min(HINT_BATCH);
                let batch: Vec<Hint> = c.hints.drain(..n).collect();
                c.hint_bytes -= batch.iter().map(Hint::charge).sum::<usize>();
                batch
            };
            let mut receivers = Vec::with_capacity(batch.len());
            let now = Instant::now();
            for hint in &batch {
                receivers.push(self.enqueue(Arc::new(hint.request(now)), now + timeout));
            }
            let mut failed = None;
            for (i, rx) in receivers.into_iter().enumerate() {
                let result = match rx {
                    Err(e) => Err(e),
                    Ok(rx) => match tokio::time::timeout(timeout, rx).await {
                        Err(_) => Err(ClientError::Timeout(timeout)),
                        Ok(Err(_)) => Err(ClientError::Closed),
                        Ok(Ok(r)) => r,
                    },
                };
                match result {
                    // A refusal (an entry that can never fit) is final.
                    Ok(_) => delivered += 1,
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, error)) = failed {
                let mut c = self.catchup();
                for hint in batch.into_iter().skip(i).rev() {
                    c.hint_bytes += hint.charge();
                    c.hints.push_front(hint);
                }
                drop(c);
                tracing::debug!(worker = %self.addr, %error, delivered, "hint delivery interrupted");
                self.report_failure(&error);
                return Err(error);
            }
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

async fn run_link(
    addr: String,
    settings: LinkSettings,
    mut rx: mpsc::Receiver<Pending>,
    latency: Histogram,
) {
    // Requests taken off the queue but not written: a connection that
    // turned out closed before they were written hands them to the next.
    let mut carried: Vec<Pending> = Vec::new();
    loop {
        if carried.is_empty() {
            let Some(first) = rx.recv().await else {
                return;
            };
            carried.push(first);
        }
        // Connect on demand, with no backoff: requests to a worker believed
        // down are not waited on, and a write that finds the worker back
        // must reach it (a refilling worker needs every live write).
        let dial = settings.dial.load_full();
        match LinkConn::connect(&addr, &dial, settings.connect_timeout).await {
            Ok(link) => {
                carried = run_connected(
                    link,
                    std::mem::take(&mut carried),
                    &mut rx,
                    &settings,
                    &latency,
                )
                .await;
            }
            Err(e) => {
                tracing::debug!(worker = %addr, error = %e, "cannot connect");
                let mut error = Some(e);
                for p in carried.drain(..) {
                    let e = error
                        .take()
                        .unwrap_or_else(|| ClientError::NotConnected(addr.clone()));
                    fail(p, e);
                }
                // Requests that queued during this attempt fail with it.
                while let Ok(p) = rx.try_recv() {
                    fail(p, ClientError::NotConnected(addr.clone()));
                }
            }
        }
    }
}

fn fail(pending: Pending, error: ClientError) {
    if let Some(reply) = pending.reply {
        let _ = reply.send(Err(error));
    }
}

/// A request written to a link and not answered yet.
struct InFlight {
    kind: RequestKind,
    /// `None` once answered with a timeout (its response is still read,
    /// and dropped), or for a keepalive ping.
    reply: Option<oneshot::Sender<Result<Response, ClientError>>>,
    /// When its batch was written.
    sent_at: Instant,
    deadline: Instant,
}

/// Runs one connection until it breaks or the backend is dropped, writing
/// `first` before anything queued. Returns the requests taken off the
/// queue that this connection never wrote (its reader had found it
/// closed): the next connection writes them.
async fn run_connected(
    link: LinkConn,
    first: Vec<Pending>,
    rx: &mut mpsc::Receiver<Pending>,
    settings: &LinkSettings,
    latency: &Histogram,
) -> Vec<Pending> {
    let (reader, mut writer) = link.split();
    // Unbounded: what is in flight was written to the worker, so it is
    // bounded by what the socket buffers hold, and a link whose answers
    // stop coming is closed after `response_timeout`.
    let (inflight_tx, inflight_rx) = mpsc::unbounded_channel::<InFlight>();
    let mut reader_task = tokio::spawn(read_responses(
        reader,
        inflight_rx,
        settings.response_timeout,
        settings.request_timeout,
        latency.clone(),
    ));
    let mut next = first;
    // One timer for the keepalive, moved only when it fires: re-arming it
    // for every batch would cost a timer update per batch.
    let mut last_write = Instant::now();
    let keepalive = tokio::time::sleep(settings.keepalive);
    tokio::pin!(keepalive);
    loop {
        let mut batch = std::mem::take(&mut next);
        if batch.is_empty() {
            let pending = loop {
                tokio::select! {
                    biased;
                    // A connection the worker closed (its idle timeout) is
                    // noticed by the reader, which watches an idle link
                    // too, before a request is taken for it.
                    _ = &mut reader_task => return Vec::new(),
                    p = rx.recv() => match p {
                        Some(p) => break p,
                        None => {
                            reader_task.abort();
                            return Vec::new();
                        }
                    },
                    _ = &mut keepalive => {
                        let due = last_write + settings.keepalive;
                        if Instant::now() >= due {
                            keepalive.as_mut().reset(Instant::now() + settings.keepalive);
                            break Pending {
                                request: Arc::new(Request::Ping),
                                reply: None,
                                deadline: Instant::now() + settings.request_timeout,
                                _queued: None,
                            };
                        }
                        keepalive.as_mut().reset(due);
                    }
                }
            };
            batch.push(pending);
        }
        // Take everything queued so far into one batch, one write.
        let mut bytes: usize = batch.iter().map(|p| request_bytes(&p.request)).sum();
        while batch.len() < LINK_BATCH_MAX && bytes < LINK_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += request_bytes(&p.request);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if reader_task.is_finished() {
            // Closed under us (the worker's idle timeout): nothing of the
            // batch was written, the next connection writes it.
            return batch;
        }
        // One clock reading per batch: its requests' latencies count from
        // here.
        let sent_at = Instant::now();
        let mut batch = batch.into_iter();
        while let Some(p) = batch.next() {
            if p.deadline <= sent_at {
                // Its caller stopped waiting while the link was busy
                // writing or connecting: it is not sent now.
                fail(p, ClientError::Unsent(settings.request_timeout));
                continue;
            }
            writer.queue(&p.request);
            // The reader must learn of a request before its answer can arrive.
            let sent = InFlight {
                kind: p.request.kind(),
                reply: p.reply,
                sent_at,
                deadline: p.deadline,
            };
            if let Err(unsent) = inflight_tx.send(sent) {
                // The reader ended: nothing of this batch gets written.
                let mut carried = vec![Pending {
                    request: p.request,
                    reply: unsent.0.reply,
                    deadline: p.deadline,
                    _queued: p._queued,
                }];
                carried.extend(batch);
                return carried;
            }
        }
        // A worker that does not take a batch within the time a request
        // may wait is treated as gone.
        if let Err(e) = writer.flush(settings.request_timeout).await {
            tracing::debug!(error = %e, "link write failed");
            break;
        }
        last_write = sent_at;
    }
    reader_task.abort();
    Vec::new()
}

/// Matches responses to requests in order; answers a request whose caller's
/// deadline passed with a timeout (its response, if it ever comes, is read
/// and dropped); on a broken connection fails everything still in flight.
/// While nothing is in flight it watches the connection, so one the worker
/// closed is replaced before the next request is written to it.
async fn read_responses(
    mut reader: LinkReader,
    mut inflight: mpsc::UnboundedReceiver<InFlight>,
    response_timeout: Duration,
    request_timeout: Duration,
    latency: Histogram,
) {
    // Requests written and not answered, in the order they were written.
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
    // Never later than the earliest deadline of a waiting request: moved
    // earlier when one with an earlier deadline arrives (a rare retry), and
    // otherwise only when it fires, never per request.
    let expiry = tokio::time::sleep(request_timeout);
    tokio::pin!(expiry);
    // The link is broken when answers stop coming while one is awaited:
    // no answer between two firings of one timer (so after one to two
    // `response_timeout`s). The timer is moved only when it fires, and
    // answers are counted, not timed.
    let mut answered: u64 = 0;
    let mut answered_at_arming: u64 = 0;
    let stall = tokio::time::sleep(response_timeout);
    tokio::pin!(stall);
    // Latencies are added to the shared histogram a few at a time (each
    // update of it is several atomic operations).
    let latency = latency.local();
    loop {
        while let Ok(next) = inflight.try_recv() {
            learn(next, &mut waiting, &mut expiry);
        }
        let Some(front) = waiting.front() else {
            if reader.buffered() > 0 {
                // Bytes nobody asked for: the framing cannot be trusted.
                tracing::debug!("link sent data while no answer was awaited");
                return;
            }
            // Whatever is still counted locally (the last answers may have
            // been followed by timeouts) is published while idle.
            latency.flush();
            let next = tokio::select! {
                biased;
                next = inflight.recv() => next,
                // Nothing is awaited: the end of the connection is noticed
                // now. (An answer read here belongs to a request whose
                // entry is on its way: it stays buffered for it.)
                ended = reader.closed() => if ended { None } else { continue },
            };
            let Some(next) = next else {
                return;
            };
            learn(next, &mut waiting, &mut expiry);
            // Busy again after being idle: the wait starts now.
            stall.as_mut().reset(Instant::now() + response_timeout);
            answered_at_arming = answered;
            continue;
        };
        let kind = front.kind;
        let response = loop {
            tokio::select! {
                biased;
                response = reader.recv(kind) => break response,
                _ = &mut expiry => {
                    while let Ok(next) = inflight.try_recv() {
                        learn(next, &mut waiting, &mut expiry);
                    }
                    let now = Instant::now();
                    // Answers come in order: the oldest request unanswered
                    // past its deadline means nothing came back for a whole
                    // `request_timeout`. Its caller marks the worker down;
                    // the connection goes too, so the worker is reached on
                    // a fresh one when a probe finds it back (one whose
                    // bytes were lost, as across a partition or a peer that
                    // restarted behind it, would never answer again).
                    if waiting.front().is_some_and(|w| w.deadline <= now) {
                        break Err(ClientError::Timeout(request_timeout));
                    }
                    let mut next_deadline = now + request_timeout;
                    for w in waiting.iter_mut() {
                        if w.deadline > now {
                            next_deadline = next_deadline.min(w.deadline);
                        } else if let Some(reply) = w.reply.take() {
                            let _ = reply.send(Err(ClientError::Timeout(request_timeout)));
                        }
                    }
                    expiry.as_mut().reset(next_deadline);
                }
                _ = &mut stall => {
                    if answered == answered_at_arming {
                        break Err(ClientError::Timeout(response_timeout));
                    }
                    answered_at_arming = answered;
                    stall.as_mut().reset(Instant::now() + response_timeout);
                }
            }
        };
        answered += 1;
        let Some(InFlight { reply, sent_at, .. }) = waiting.pop_front() else {
            return;
        };
        match response {
            Ok(response) => {
                if let Some(reply) = reply {
                    // The time the answer was read, without a clock
                    // reading per answer.
                    let took = reader.read_at().saturating_duration_since(sent_at);
                    latency.observe(took.as_secs_f64());
                    // Counted before the caller has its answer when nothing
                    // else is in flight.
                    if waiting.is_empty() || answered % 64 == 0 {
                        latency.flush();
                    }
                    let _ = reply.send(Ok(response));
                }
            }
            Err(e) => {
                let error = match e {
                    ClientError::Closed | ClientError::Io(_) => ClientError::Closed,
                    other => other,
                };
                tracing::debug!(error = %error, "link read failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
                inflight.close();
                while let Ok(next) = inflight.try_recv() {
                    waiting.push_back(next);
                }
                for w in waiting {
                    if let Some(reply) = w.reply {
                        let _ = reply.send(Err(ClientError::Closed));
                    }
                }
                return;
            }
        }
    }
}

/// Adds a written request to the reader's queue, moving the expiry timer
/// earlier if its deadline is the earliest.
fn learn(
    next: InFlight,
    waiting: &mut VecDeque<InFlight>,
    expiry: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) {
    if next.deadline < expiry.deadline() {
        expiry.as_mut().reset(next.deadline);
    }
    waiting.push_back(next);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<Backend> {
        backend_with_room(1 << 20)
    }

    fn backend_with_room(max_hint_bytes: usize) -> Arc<Backend> {
        let settings = LinkSettings {
            limits: Limits::default(),
            dial: Default::default(),
            connect_timeout: Duration::from_millis(100),
            keepalive: Duration::from_secs(10),
            max_hint_bytes,
            response_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(1),
        };
        Backend::start("127.0.0.1:9".into(), settings)
    }

    fn set(key: &str) -> Request {
        Request::Set {
            version: 1,
            ttl_ms: 0,
            key: bytes::Bytes::copy_from_slice(key.as_bytes()),
            value: bytes::Bytes::from_static(b"value"),
            when: crate::protocol::SetWhen::Always,
        }
    }

    /// Links with these timeouts that never ping, keep no hints, and are
    /// not closed for want of answers during a test.
    fn settings(request_timeout: Duration, connect_timeout: Duration) -> LinkSettings {
        LinkSettings {
            limits: Limits::default(),
            dial: Default::default(),
            connect_timeout,
            keepalive: Duration::from_secs(60),
            max_hint_bytes: 0,
            response_timeout: Duration::from_secs(60),
            request_timeout,
        }
    }

    /// A worker that answers the hello, then answers requests only when
    /// told: each `()` sent on the returned channel answers the oldest
    /// request with a pong.
    async fn worker_answering_on_demand() -> (String, mpsc::UnboundedSender<()>) {
        use crate::protocol::link::{decode_request, encode_response, read_frame, HELLO};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (go_tx, mut go_rx) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut hello = [0u8; 5];
            socket.read_exact(&mut hello).await.expect("hello");
            socket.write_all(HELLO).await.expect("hello");
            let mut buf = bytes::BytesMut::new();
            let mut requests = 0usize;
            loop {
                tokio::select! {
                    read = socket.read_buf(&mut buf) => {
                        if read.unwrap_or(0) == 0 {
                            return;
                        }
                        while let Ok(Some(frame)) = read_frame(&mut buf, 1 << 20) {
                            decode_request(frame, &Limits::default()).expect("request");
                            requests += 1;
                        }
                    }
                    Some(()) = go_rx.recv(), if requests > 0 => {
                        requests -= 1;
                        let mut out = bytes::BytesMut::new();
                        encode_response(&Response::Pong, &mut out);
                        socket.write_all(&out).await.expect("answer");
                    }
                }
            }
        });
        (addr, go_tx)
    }

    #[tokio::test]
    async fn a_request_times_out_on_its_own_deadline_and_its_connection_is_dropped() {
        let (addr, answer) = worker_answering_on_demand().await;
        let timeout = Duration::from_millis(300);
        let b = Backend::start(addr, settings(timeout, Duration::from_secs(5)));
        let started = std::time::Instant::now();
        let first = tokio::spawn({
            let b = b.clone();
            async move { (b.call(Arc::new(Request::Ping)).await, started.elapsed()) }
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        let second = tokio::spawn({
            let b = b.clone();
            async move { (b.call(Arc::new(Request::Ping)).await, started.elapsed()) }
        });
        let (result, took) = first.await.expect("task");
        assert!(
            matches!(result, Err(ClientError::Timeout(t)) if t == timeout),
            "{result:?}"
        );
        assert!(
            took >= timeout && took < Duration::from_secs(5),
            "first took {took:?}"
        );
        // Nothing came back for a whole request timeout: the connection is
        // dropped, not waited on for `response_timeout` (5 s here). The
        // second request, written to it, is retried once on a new
        // connection, which this worker never answers. It was written, so
        // it may have been applied: the caller is not told "never sent".
        let (result, took) = second.await.expect("task");
        assert!(matches!(&result, Err(e) if !e.never_sent()), "{result:?}");
        assert!(
            took < timeout + Duration::from_millis(150) + Duration::from_secs(1),
            "the second request waited for the stalled connection: {took:?}"
        );
        // Answers now come on the dropped connection: nobody takes them.
        let _ = answer.send(());
        let _ = answer.send(());
        assert_eq!(
            b.metrics.latency.get_sample_count(),
            0,
            "no answer came in time"
        );
    }

    #[tokio::test]
    async fn a_connection_that_stops_answering_is_replaced_after_one_request_timeout() {
        use crate::protocol::link::HELLO;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A worker that says hello on each connection and never answers
        // (a connection whose bytes were lost, as across a partition).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (accepted_tx, mut accepted) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut hello = [0u8; 5];
                if socket.read_exact(&mut hello).await.is_ok() {
                    let _ = socket.write_all(HELLO).await;
                }
                let _ = accepted_tx.send(());
                held.push(socket);
            }
        });
        let timeout = Duration::from_millis(300);
        // `response_timeout` is 10 s here: a link that waited that long of
        // silence would not reconnect within the 3 s the test waits.
        let b = Backend::start(addr, settings(timeout, Duration::from_secs(10)));
        let result = b.call(Arc::new(Request::Ping)).await;
        assert!(matches!(result, Err(ClientError::Timeout(_))), "{result:?}");
        accepted.recv().await.expect("first connection");
        let next = tokio::spawn({
            let b = b.clone();
            async move { b.call(Arc::new(Request::Ping)).await }
        });
        let second = tokio::time::timeout(Duration::from_secs(3), accepted.recv()).await;
        assert!(
            matches!(second, Ok(Some(()))),
            "the next request waited on the silent connection"
        );
        next.abort();
    }

    #[tokio::test]
    async fn a_request_whose_caller_gave_up_is_not_sent() {
        let (addr, answer) = worker_answering_on_demand().await;
        let b = Backend::start(
            addr,
            settings(Duration::from_secs(5), Duration::from_secs(5)),
        );
        // Its deadline passed while it waited for the link (here: before
        // it was even queued).
        let past = Instant::now() - Duration::from_millis(1);
        let gave_up = b.enqueue(Arc::new(Request::Ping), past).expect("queued");
        let live = tokio::spawn({
            let b = b.clone();
            async move { b.call(Arc::new(Request::Ping)).await }
        });
        let result = gave_up.await.expect("answered");
        assert!(matches!(result, Err(ClientError::Unsent(_))), "{result:?}");
        assert!(result.is_err_and(|e| e.never_sent()));
        // One answer from the worker: it is the live request's, so the
        // other was never written.
        answer.send(()).expect("worker");
        let result = live.await.expect("task");
        assert!(matches!(result, Ok(Response::Pong)), "{result:?}");
    }

    #[tokio::test]
    async fn callers_of_a_worker_that_stops_reading_are_answered_in_time() {
        use crate::protocol::link::HELLO;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Answers the hello, then never reads again: once the socket
        // buffers are full, the link's writes block.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut hello = [0u8; 5];
                if socket.read_exact(&mut hello).await.is_ok() {
                    let _ = socket.write_all(HELLO).await;
                }
                held.push(socket);
            }
        });
        let timeout = Duration::from_millis(300);
        let b = Backend::start(addr, settings(timeout, timeout));
        let big = Arc::new(Request::Set {
            version: 1,
            ttl_ms: 0,
            key: bytes::Bytes::from_static(b"k"),
            value: bytes::Bytes::from(vec![b'x'; 4 << 20]),
            when: crate::protocol::SetWhen::Always,
        });
        let mut calls = Vec::new();
        for i in 0..12 {
            let b = b.clone();
            let request = if i % 3 == 2 {
                Arc::new(Request::Ping)
            } else {
                big.clone()
            };
            calls.push(tokio::spawn(async move {
                let started = std::time::Instant::now();
                (b.call(request).await, started.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for call in calls {
            let (result, took) = call.await.expect("task");
            assert!(
                matches!(
                    result,
                    Err(ClientError::Timeout(_) | ClientError::Unsent(_) | ClientError::Closed)
                ),
                "{result:?}"
            );
            // Written or not, each caller hears within its own timeout
            // (plus the link's reconnect when it gave up on a blocked write).
            assert!(took < 5 * timeout, "a caller waited {took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_waits_for_a_delivery_under_way() {
        let b = backend();
        // A probe's delivery is under way: it took the hints off the queue
        // and waits for the worker's answers, holding the delivery lock.
        let delivery = b.delivery.lock().await;
        let flush = tokio::spawn({
            let b = b.clone();
            async move { b.flush_hints(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !flush.is_finished(),
            "a read went ahead while hints were still in flight"
        );
        drop(delivery);
        let flushed = flush.await.expect("task");
        assert!(flushed.is_ok(), "nothing left to send: {flushed:?}");
        // A delivery that outlasts the read's timeout fails the read (it
        // goes to the partner) instead of holding it.
        let delivery = b.delivery.lock().await;
        let flushed = b.flush_hints(Duration::from_secs(1)).await;
        assert!(
            matches!(flushed, Err(ClientError::Timeout(_))),
            "{flushed:?}"
        );
        drop(delivery);
    }

    #[tokio::test]
    async fn a_worker_whose_partner_says_it_missed_a_write_stands_behind() {
        let pair = [backend(), backend()];
        let standing = |i| Backend::standing(&pair, i);
        assert_eq!((standing(0), standing(1)), (Health::Up, Health::Up));
        pair[1].probe_done(Some(true));
        assert_eq!((standing(0), standing(1)), (Health::Behind, Health::Up));
        // Nor does it decide a conditional write (its own health is up).
        assert!(!Backend::can_decide(&pair, 0));
        assert!(Backend::can_decide(&pair, 1));
        // Only while the partner that says so can serve reads: with it down
        // or loading the worker's own health stands. A claimer that is
        // behind itself still holds the write the worker lacks, and is read
        // first when both are behind.
        pair[1].set_health(Health::Down);
        assert_eq!(standing(0), Health::Up);
        pair[1].set_health(Health::Loading);
        assert_eq!(standing(0), Health::Up);
        pair[1].set_health(Health::Behind);
        assert_eq!(standing(0), Health::Behind);
        pair[0].set_health(Health::Behind);
        assert_eq!(Backend::read_order(&pair, 0), [1, 0], "the claimer first");
        assert_eq!(Backend::read_order(&pair, 1), [1, 0]);
        pair[0].set_health(Health::Up);
        pair[1].set_health(Health::Up);
        assert_eq!(Backend::read_order(&pair, 0), [1, 0]);
        // A failed probe keeps what it said last; a later answer clears it.
        pair[1].probe_done(None);
        assert_eq!(standing(0), Health::Behind);
        pair[1].probe_done(Some(false));
        assert_eq!(standing(0), Health::Up);
        // Its own health comes first.
        pair[1].probe_done(Some(true));
        pair[0].set_health(Health::Loading);
        assert_eq!(standing(0), Health::Loading);
    }

    #[tokio::test]
    async fn the_first_probe_is_awaited_once() {
        let b = backend();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.first_probe().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // A failed probe says nothing of the worker: still waiting.
        b.probe_done(None);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a failed probe is no answer");
        assert!(!b.answered());
        b.probe_done(Some(false));
        assert!(b.answered());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the first probe")
            .expect("task");
        // Later waits return at once.
        tokio::time::timeout(Duration::from_secs(5), b.first_probe())
            .await
            .expect("already probed");
    }

    #[tokio::test]
    async fn only_a_worker_that_never_answered_starts_out_down() {
        let silent = backend();
        assert!(silent.down_unless_answered());
        assert_eq!(silent.health(), Health::Down);
        // An answer recorded before the check stands (even before its
        // `probe_done`, which the probe calls after `probed`).
        let answered = backend();
        answered.probed(Health::Up, 1, 0, 0);
        assert!(!answered.down_unless_answered());
        assert_eq!(answered.health(), Health::Up);
    }

    #[tokio::test]
    async fn a_restart_after_the_miss_ends_behind() {
        let b = backend();
        b.probed(Health::Up, 5, 0, 0);
        assert_eq!(b.health(), Health::Up);
        b.missed_write(&set("k"));
        assert_eq!(b.health(), Health::Behind);
        assert!(b.probed(Health::Up, 5, 0, 0), "hints to deliver");
        assert_eq!(b.health(), Health::Behind, "same process: still behind");
        b.probed(Health::Loading, 6, 0, 0);
        assert_eq!(b.health(), Health::Loading, "a new process refills");
        b.probed(Health::Up, 6, 0, 0);
        assert_eq!(b.health(), Health::Up);
    }

    #[tokio::test]
    async fn anti_entropy_rounds_after_the_miss_end_behind() {
        // No room for hints: only anti-entropy can bring the worker back.
        let b = backend_with_room(0);
        b.report_failure(&ClientError::Closed);
        b.missed_write(&set("k"));
        assert_eq!(b.health(), Health::Down);
        assert!(!b.probed(Health::Up, 42, 0, 7), "no hints kept");
        assert_eq!(
            b.health(),
            Health::Behind,
            "a miss before any probe is not forgotten"
        );
        b.probed(Health::Up, 42, 0, 8);
        assert_eq!(
            b.health(),
            Health::Behind,
            "round 8 may have begun before the miss"
        );
        b.missed_write(&set("k2"));
        b.probed(Health::Up, 42, 0, 9);
        assert_eq!(b.health(), Health::Behind, "a new miss restarts the count");
        b.probed(Health::Up, 42, 0, 10);
        assert_eq!(b.health(), Health::Behind);
        b.probed(Health::Up, 42, 0, 11);
        assert_eq!(
            b.health(),
            Health::Up,
            "two rounds after the probe that followed the miss"
        );
    }

    #[tokio::test]
    async fn hints_are_bounded_and_an_overflow_is_remembered() {
        let charge = Hint::new(&set("k0"), Instant::now())
            .expect("a hint")
            .charge();
        let b = backend_with_room(3 * charge);
        for i in 0..5 {
            b.missed_write(&set(&format!("k{i}")));
        }
        let c = b.catchup();
        assert_eq!(c.hints.len(), 3);
        assert!(c.overflowed);
        assert_eq!(c.hint_bytes, 3 * charge);
    }

    #[test]
    fn a_hint_owns_its_bytes() {
        let buffer = Bytes::from(vec![b'x'; 64 * 1024]);
        let request = Request::Set {
            version: 7,
            ttl_ms: 0,
            key: buffer.slice(0..3),
            value: buffer.slice(3..13),
            when: SetWhen::Absent,
        };
        let hint = Hint::new(&request, Instant::now()).expect("a hint");
        assert_eq!(hint.data.len(), 13, "only the key and value are kept");
        assert!(hint.charge() < 256);
        drop(request);
        // The client's buffer is not kept alive by the hint.
        assert!(buffer.is_unique());
        match hint.request(Instant::now()) {
            Request::Set {
                version: 7,
                ttl_ms: 0,
                key,
                value,
                when: SetWhen::Always,
            } => assert_eq!((&key[..], &value[..]), (&b"xxx"[..], &[b'x'; 10][..])),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hint_keeps_its_deadline_and_an_expired_one_deletes() {
        let now = Instant::now();
        let set = Request::Set {
            version: 9,
            ttl_ms: 2_000,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            when: SetWhen::Always,
        };
        let expire = Request::Expire {
            version: 9,
            ttl_ms: 2_000,
            key: Bytes::from_static(b"k"),
        };
        let (set, expire) = (
            Hint::new(&set, now).expect("hint"),
            Hint::new(&expire, now).expect("hint"),
        );
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let later = Instant::now();
        assert!(
            matches!(set.request(later), Request::Set { ttl_ms: 500, .. }),
            "the TTL counts from the write, not from the delivery"
        );
        assert!(matches!(
            expire.request(later),
            Request::Expire { ttl_ms: 500, .. }
        ));
        tokio::time::advance(Duration::from_millis(600)).await;
        let late = Instant::now();
        assert!(
            matches!(set.request(late), Request::Del { version: 9, .. }),
            "an expired write is delivered as the delete it became"
        );
        let after = crate::version::after(9);
        assert!(matches!(
            expire.request(late),
            Request::Del { version, .. } if version == after
        ));
    }

    #[tokio::test]
    async fn a_link_queue_is_bounded_by_bytes() {
        // A worker that never answers: requests stay queued or in flight.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let b = Backend::start(
            addr,
            settings(Duration::from_secs(30), Duration::from_secs(30)),
        );
        let big = Arc::new(Request::Set {
            version: 1,
            ttl_ms: 0,
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![b'x'; 8 << 20]),
            when: SetWhen::Always,
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut queued = Vec::new();
        let refused = loop {
            match b.enqueue(big.clone(), deadline) {
                Ok(rx) => queued.push(rx),
                Err(e) => break e,
            }
            assert!(
                queued.len() <= LINK_QUEUE_BYTES / (8 << 20),
                "no byte bound"
            );
        };
        assert!(matches!(refused, ClientError::Overloaded(_)), "{refused:?}");
        assert_eq!(queued.len(), LINK_QUEUE_BYTES / (8 << 20) - 1);
        drop(listener);
    }
}
