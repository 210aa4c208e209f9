//! Anti-entropy: partners compare their stores and repair the differences
//! both ways, so a worker that missed writes while it was cut off (alive,
//! but unreachable) converges without a restart, whatever happened to the
//! orchestrators' hints.
//!
//! A round, started by either partner every `anti_entropy_interval`:
//!
//! ```text
//! initiator                                    responder
//!   DIGEST ───────────────────────────────────▶ takes its round lock,
//!          ◀─────────────── bucket digests ─── sums fingerprints per bucket
//!   its own digest; the buckets that differ,
//!   in batches of ~SYNC_BATCH_ENTRIES, each cut
//!   into key windows of ≤ SYNC_WINDOW_BYTES
//!   SYNC buckets, window, summaries ──────────▶ compares with its own entries
//!          ◀──── entries newer here, keys wanted
//!   applies them; APPLY wanted entries ───────▶ applies them
//!   APPLY last ───────────────────────────────▶ counts a round, unlocks
//! ```
//!
//! A digest bucket is the top bits of the key's stable hash, and its digest
//! the wrapping sum of its entries' fingerprints (key, version, tombstone),
//! computed by a scan that yields between shards. Versions decide every
//! difference (last writer wins), so a round never puts older data over
//! newer, on either side. Expired entries are left out on both sides.
//!
//! Each worker takes part in one round at a time (the round lock), so its
//! count of completed rounds (`synced` in STATUS) orders rounds in time:
//! the orchestrator uses it to know that a round began after a write the
//! worker missed, and so the worker holds that write now.
//!
//! Under memory pressure partners evict different entries; a round then
//! does not add keys the receiving side lacks (see `Store::apply_repair`).

use super::store::{Applied, BucketSet, Store};
use super::Worker;
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::net::Shutdown;
use crate::protocol::link::{
    BucketDigest, Entry, Request, Response, Summary, WorkerState, DIGEST_BUCKETS,
    REFILL_CHUNK_BYTES,
};
use crate::protocol::{ErrorCode, ErrorReply};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// Entries (by the digests' counts) compared in one batch of buckets.
pub const SYNC_BATCH_ENTRIES: usize = 16_384;

/// Summaries sent in one SYNC request at most (a key window is cut there).
pub const SYNC_WINDOW_BYTES: usize = REFILL_CHUNK_BYTES / 2;

/// Longest wait for one answer within a round, and the longest a responder
/// holds its round lock without hearing from the initiator.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's anti-entropy state.
#[derive(Debug, Default)]
pub struct AntiEntropy {
    round: Arc<tokio::sync::Mutex<()>>,
    /// Rounds completed by this process, in either role.
    rounds: AtomicU64,
    /// Entries stored because a round brought them.
    repaired: AtomicU64,
    last_round: Mutex<Option<Instant>>,
}

impl AntiEntropy {
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Acquire)
    }

    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    pub(super) fn completed(&self) {
        self.rounds.fetch_add(1, Ordering::AcqRel);
        *self.last_round.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    fn ran_within(&self, period: Duration) -> bool {
        self.last_round
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < period)
    }

    fn try_lock(&self) -> Option<OwnedMutexGuard<()>> {
        self.round.clone().try_lock_owned().ok()
    }
}

/// The digest of a whole store.
pub async fn digest(store: &Store) -> Vec<BucketDigest> {
    let mut out = vec![BucketDigest::default(); DIGEST_BUCKETS];
    for shard in 0..store.shard_count() {
        store.digest_shard(shard, &mut out);
        tokio::task::yield_now().await;
    }
    out
}

async fn summarize(store: &Store, buckets: &BucketSet) -> Vec<Summary> {
    let mut out = Vec::new();
    for shard in 0..store.shard_count() {
        store.summarize_shard(shard, buckets, &mut out);
        tokio::task::yield_now().await;
    }
    out
}

/// `after < key <= upto`, an empty bound being open.
fn in_window(key: &[u8], after: &[u8], upto: &[u8]) -> bool {
    (after.is_empty() || key > after) && (upto.is_empty() || key <= upto)
}

fn apply_all(worker: &Worker, entries: &[Entry]) -> u32 {
    let mut applied = 0;
    for entry in entries {
        worker.clock.observe(entry.version);
        match worker.store.apply_repair(entry) {
            Ok(Applied::Yes) => applied += 1,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "repair entry dropped"),
        }
    }
    worker
        .anti_entropy
        .repaired
        .fetch_add(u64::from(applied), Ordering::Relaxed);
    applied
}

fn busy() -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::Unavailable,
        "busy: an anti-entropy round is running",
    ))
}

/// The responder's side of rounds on one link.
#[derive(Default)]
pub struct Responder {
    guard: Option<OwnedMutexGuard<()>>,
}

impl Responder {
    /// Whether a round is open on this link (the link then waits at most
    /// [`ROUND_TIMEOUT`] for the initiator's next message).
    pub fn in_round(&self) -> bool {
        self.guard.is_some()
    }

    /// Answers DIGEST, SYNC and APPLY.
    pub async fn handle(&mut self, worker: &Worker, request: Request) -> Response {
        match request {
            Request::Digest => {
                if worker.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                if self.guard.is_none() {
                    match worker.anti_entropy.try_lock() {
                        Some(guard) => self.guard = Some(guard),
                        None => return busy(),
                    }
                }
                Response::Digest(digest(&worker.store).await)
            }
            Request::Sync {
                buckets,
                after,
                upto,
                summaries,
            } => {
                if self.guard.is_none() {
                    return no_round();
                }
                sync(worker, &buckets, &after, &upto, summaries).await
            }
            Request::Apply { last, entries } => {
                if self.guard.is_none() {
                    return no_round();
                }
                let count = apply_all(worker, &entries);
                if last {
                    worker.round_completed();
                    self.guard = None;
                }
                Response::Applied { count }
            }
            _ => Response::Error(ErrorReply::new(
                ErrorCode::InvalidCommand,
                "not an anti-entropy request",
            )),
        }
    }
}

fn no_round() -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::InvalidCommand,
        "no anti-entropy round open on this link (send DIGEST first)",
    ))
}

/// Compares the initiator's summaries of a window with this store: returns
/// this side's newer entries (bounded by a refill chunk) and the keys the
/// initiator holds newer.
async fn sync(
    worker: &Worker,
    buckets: &[u16],
    after: &[u8],
    upto: &[u8],
    summaries: Vec<Summary>,
) -> Response {
    let set = BucketSet::new(buckets);
    let mut mine = summarize(&worker.store, &set).await;
    mine.retain(|s| in_window(&s.key, after, upto));
    let theirs: HashMap<&[u8], u64> = summaries.iter().map(|s| (&s.key[..], s.version)).collect();
    let my_versions: HashMap<&[u8], u64> = mine.iter().map(|s| (&s.key[..], s.version)).collect();
    let wanted: Vec<Bytes> = summaries
        .iter()
        .filter(|s| !my_versions.get(&s.key[..]).is_some_and(|&v| v >= s.version))
        .map(|s| s.key.clone())
        .collect();
    let mut budget = REFILL_CHUNK_BYTES.saturating_sub(wanted.iter().map(|k| k.len() + 2).sum());
    let mut entries = Vec::new();
    let mut complete = true;
    for s in &mine {
        if theirs.get(&s.key[..]).is_some_and(|&v| v >= s.version) {
            continue;
        }
        let Some(entry) = worker.store.entry(&s.key) else {
            continue;
        };
        let size = entry.key.len() + entry.data.len() + 32;
        if size > budget && !entries.is_empty() {
            complete = false;
            break;
        }
        budget = budget.saturating_sub(size);
        entries.push(entry);
    }
    Response::Synced {
        complete,
        entries,
        wanted,
    }
}

/// Runs rounds with the partner every `interval` until shutdown. A round
/// is skipped while this worker is not ready, while another round runs, or
/// when one completed (in either role) within the last interval.
pub async fn run(worker: Arc<Worker>, interval: Duration, mut shutdown: Shutdown) {
    let Some(partner) = worker.config.partner.clone() else {
        return;
    };
    let mut link: Option<LinkConn> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut partner_down = false;
    loop {
        tokio::select! {
        biased;
                   _ = shutdown.wait() => return,
                   _ = tick.tick() => {}
               }
        if worker.state() != WorkerState::Ready || worker.anti_entropy.ran_within(interval) {
            continue;
        }
        let Some(_guard) = worker.anti_entropy.try_lock() else {
            continue;
        };
        let started = Instant::now();
        match round(&worker, &partner, &mut link).await {
            Ok(report) => {
                if partner_down {
                    tracing::info!(%partner, "anti-entropy reaches the partner again");
                    partner_down = false;
                }
                if report.pulled + report.pushed > 0 {
                    tracing::info!(
                        %partner,
                        buckets = report.buckets,
                        pulled = report.pulled,
                        pushed = report.pushed,
                        complete = report.complete,
                        elapsed = ?started.elapsed(),
                        "anti-entropy repaired differences with the partner"
                    );
                }
                if report.complete {
                    worker.round_completed();
                }
            }
            Err(RoundError::Skipped(why)) => {
                tracing::debug!(%partner, "anti-entropy round skipped: {why}")
            }
            Err(RoundError::Failed(e)) => {
                // A broken link is not reused: the responder's lock goes with it.
                link = None;
                if !partner_down {
                    tracing::warn!(%partner, error = %e, "anti-entropy round failed");
                    partner_down = true;
                }
            }
        }
    }
}

/// What a round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    /// Buckets whose digests differed.
    pub buckets: usize,
    /// Entries this side stored from the partner.
    pub pulled: u64,
    /// Entries sent to the partner because it wanted them.
    pub pushed: u64,
    /// Every difference this side saw was repaired.
    pub complete: bool,
}

enum RoundError {
    /// The partner cannot take part now (refilling, busy).
    Skipped(String),
    Failed(ClientError),
}

impl From<ClientError> for RoundError {
    fn from(e: ClientError) -> RoundError {
        RoundError::Failed(e)
    }
}

async fn call(link: &mut LinkConn, request: &Request) -> Result<Response, RoundError> {
    match link.call(request, ROUND_TIMEOUT).await? {
        Response::Error(e) if matches!(e.code, ErrorCode::Loading | ErrorCode::Unavailable) => {
            Err(RoundError::Skipped(e.message.into_owned()))
        }
        Response::Error(e) => Err(RoundError::Failed(ClientError::Protocol(e.to_string()))),
        other => Ok(other),
    }
}

fn unexpected(what: &str, got: &Response) -> RoundError {
    RoundError::Failed(ClientError::Protocol(format!(
        "unexpected answer to {what}: {got:?}"
    )))
}

async fn round(
    worker: &Worker,
    partner: &str,
    link: &mut Option<LinkConn>,
) -> Result<RoundReport, RoundError> {
    if link.is_none() {
        *link = Some(LinkConn::connect(partner, &worker.dial(), ROUND_TIMEOUT).await?);
    }
    let Some(link) = link.as_mut() else {
        return Err(RoundError::Failed(ClientError::Closed));
    };
    let theirs = match call(link, &Request::Digest).await? {
        Response::Digest(d) => d,
        other => return Err(unexpected("DIGEST", &other)),
    };
    // Computed after the partner locked its round: everything either side
    // held before this moment is compared below.
    let mine = digest(&worker.store).await;
    let differing: Vec<usize> = (0..DIGEST_BUCKETS)
        .filter(|&i| mine[i] != theirs[i])
        .collect();
    let mut report = RoundReport {
        buckets: differing.len(),
        complete: true,
        ..RoundReport::default()
    };
    let mut batch: Vec<u16> = Vec::new();
    let mut batch_entries = 0usize;
    for (n, &b) in differing.iter().enumerate() {
        batch.push(b as u16);
        batch_entries += mine[b].entries.max(theirs[b].entries) as usize;
        let last = n + 1 == differing.len();
        if batch_entries >= SYNC_BATCH_ENTRIES || last {
            sync_batch(worker, link, &batch, &mut report).await?;
            batch.clear();
            batch_entries = 0;
        }
    }
    match call(
        link,
        &Request::Apply {
            last: true,
            entries: Vec::new(),
        },
    )
    .await?
    {
        Response::Applied { .. } => Ok(report),
        other => Err(unexpected("APPLY", &other)),
    }
}

/// Repairs one batch of buckets, a key window at a time.
async fn sync_batch(
    worker: &Worker,
    link: &mut LinkConn,
    buckets: &[u16],
    report: &mut RoundReport,
) -> Result<(), RoundError> {
    let mut summaries = summarize(&worker.store, &BucketSet::new(buckets)).await;
    summaries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    let mut after = Bytes::new();
    let mut rest = &summaries[..];
    loop {
        // Cut a window of at most SYNC_WINDOW_BYTES of summaries; the last
        // window is open above.
        let mut bytes = 0;
        let mut n = 0;
        while n < rest.len() && bytes < SYNC_WINDOW_BYTES {
            bytes += rest[n].key.len() + 11;
            n += 1;
        }
        let last = n == rest.len();
        let upto = if last {
            Bytes::new()
        } else {
            rest[n - 1].key.clone()
        };
        let request = Request::Sync {
            buckets: buckets.to_vec(),
            after: after.clone(),
            upto: upto.clone(),
            summaries: rest[..n].to_vec(),
        };
        let (complete, entries, wanted) = match call(link, &request).await? {
            Response::Synced {
                complete,
                entries,
                wanted,
            } => (complete, entries, wanted),
            other => return Err(unexpected("SYNC", &other)),
        };
        report.complete &= complete;
        report.pulled += u64::from(apply_all(worker, &entries));
        push_wanted(worker, link, wanted, report).await?;
        if last {
            return Ok(());
        }
        rest = &rest[n..];
        after = upto;
    }
}

/// Sends the partner the entries it wants, a refill chunk at a time.
async fn push_wanted(
    worker: &Worker,
    link: &mut LinkConn,
    wanted: Vec<Bytes>,
    report: &mut RoundReport,
) -> Result<(), RoundError> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let total = wanted.len();
    for (i, key) in wanted.into_iter().enumerate() {
        if let Some(entry) = worker.store.entry(&key) {
            bytes += entry.key.len() + entry.data.len() + 32;
            chunk.push(entry);
        }
        if !chunk.is_empty() && (bytes >= REFILL_CHUNK_BYTES || i + 1 == total) {
            let entries = std::mem::take(&mut chunk);
            let sent = entries.len() as u64;
            match call(
                link,
                &Request::Apply {
                    last: false,
                    entries,
                },
            )
            .await?
            {
                Response::Applied { .. } => report.pushed += sent,
                other => return Err(unexpected("APPLY", &other)),
            }
            bytes = 0;
        }
    }
    Ok(())
}
