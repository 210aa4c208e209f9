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
//! which the store keeps up to date as entries change: partners that agree
//! compare 4,096 numbers and are done. A store's shard is a fixed range of
//! 64 buckets, so batches follow shard boundaries and each side scans each
//! shard about once a round for its summaries; the responder keeps a
//! batch's summaries for all of its windows. A round costs one scan of the
//! differing shards on each side, linear in the entries. Versions decide
//! every difference (last writer wins), so a round never puts older data
//! over newer, on either side. Expired entries are left out of summaries.
//!
//! Each worker takes part in one round at a time (the round lock), so its
//! count of completed rounds (`synced` in STATUS) orders rounds in time:
//! the orchestrator uses it to know that a round began after a write the
//! worker missed, and so the worker holds that write now. A round counts
//! only if it repaired everything it saw: one whose SYNC answer was cut at
//! a refill chunk does not, on either side (the next round goes on).
//!
//! Under memory pressure partners evict different entries. A side near its
//! memory limit does not add a key it lacks (see `Store::apply_repair`): it
//! names the entry back and the other side evicts it, so a full pair
//! converges on the same keys and the next round finds nothing to repair.
//! (A key only one partner holds cannot be told from one the other evicted;
//! near the limit the pair drops it, as a cache may.)

use super::store::{Applied, BucketSet, Store, BUCKETS_PER_SHARD};
use super::Worker;
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::link::{
    BucketDigest, Entry, Request, Response, Summary, WorkerState, REFILL_CHUNK_BYTES,
};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

/// Entries (by the digests' counts) in one batch of buckets: a batch is
/// cut at the first shard boundary past this many.
pub const SYNC_BATCH_ENTRIES: usize = 65_536;

/// A batch is cut inside a shard past this many entries (a huge shard is
/// then scanned once per batch), which bounds the summaries held at once.
pub const SYNC_BATCH_MAX_ENTRIES: usize = 4 * SYNC_BATCH_ENTRIES;

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
    /// Entries sent to the partner, and their bytes with the summaries'.
    sent: AtomicU64,
    sent_bytes: AtomicU64,
    /// Entries evicted because the partner refused them for room.
    evicted: AtomicU64,
    last_round: Mutex<Option<Instant>>,
}

impl AntiEntropy {
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Acquire)
    }

    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn count_sent(&self, entries: &[Entry], summaries: usize) {
        let bytes: usize = entries
            .iter()
            .map(|e| e.key.len() + e.data.len() + 27)
            .sum();
        self.sent.fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.sent_bytes
            .fetch_add((bytes + summaries) as u64, Ordering::Relaxed);
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

/// Summaries of the entries in `buckets`, sorted by key; only the shards
/// holding those buckets are scanned.
async fn summarize(store: &Store, buckets: &BucketSet) -> Vec<Summary> {
    let mut out = Vec::new();
    for shard in buckets.shards() {
        store.summarize_shard(shard, buckets, &mut out);
        tokio::task::yield_now().await;
    }
    out.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The encoded size of summaries (for the bytes-sent count).
fn summary_bytes(summaries: &[Summary]) -> usize {
    summaries.iter().map(|s| s.key.len() + 11).sum()
}

/// Applies repairs; returns how many applied and the entries refused for
/// room (to be evicted by the side that sent them). With `admit` (a
/// refill's closing round: this worker evicted nothing of what it lacks,
/// it just started) every entry is taken, evicting as a write would.
fn apply_all(worker: &Worker, entries: &[Entry], admit: bool) -> (u32, Vec<Summary>) {
    let mut applied = 0;
    let mut refused = Vec::new();
    for entry in entries {
        worker.clock.observe(entry.version);
        let applied_here = if admit {
            worker.store.apply(entry)
        } else {
            worker.store.apply_repair(entry)
        };
        match applied_here {
            Ok(Applied::Yes) => applied += 1,
            // Refused for room, or possibly an older copy of a key evicted
            // here: the sender evicts it too.
            Ok(Applied::NoRoom | Applied::Evicted(_)) => refused.push(Summary {
                key: entry.key.clone(),
                version: entry.version,
                tombstone: entry.tombstone,
            }),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "repair entry dropped"),
        }
    }
    worker
        .anti_entropy
        .repaired
        .fetch_add(u64::from(applied), Ordering::Relaxed);
    (applied, refused)
}

/// Evicts the entries the partner refused for room.
fn evict_refused(worker: &Worker, refused: &[Summary]) -> u64 {
    let evicted = refused
        .iter()
        .filter(|s| worker.store.evict_at(&s.key, s.version))
        .count() as u64;
    worker
        .anti_entropy
        .evicted
        .fetch_add(evicted, Ordering::Relaxed);
    evicted
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
    /// The current batch's buckets and this side's summaries of them,
    /// sorted by key (one scan serves all the batch's windows).
    batch: Option<(Vec<u16>, Vec<Summary>)>,
    /// One of this round's SYNC answers was cut at a refill chunk: the
    /// initiator did not get every newer entry, so the round does not
    /// count as completed (nor clears what waits on one).
    cut: bool,
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
                self.batch = None;
                self.cut = false;
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
                if !self.batch.as_ref().is_some_and(|(b, _)| *b == buckets) {
                    let mine = summarize(&worker.store, &BucketSet::new(&buckets)).await;
                    self.batch = Some((buckets, mine));
                }
                let mine = self.batch.as_ref().map_or(&[][..], |(_, m)| &m[..]);
                let answer = sync(worker, window(mine, &after, &upto), summaries);
                if let Response::Synced {
                    complete: false, ..
                } = answer
                {
                    self.cut = true;
                }
                answer
            }
            Request::Apply {
                last,
                entries,
                evict,
            } => {
                if self.guard.is_none() {
                    return no_round();
                }
                evict_refused(worker, &evict);
                let (count, refused) = apply_all(worker, &entries, false);
                if last {
                    if !self.cut {
                        worker.round_completed();
                    }
                    self.guard = None;
                    self.batch = None;
                }
                Response::Applied { count, refused }
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

/// The summaries (sorted by key) in the window `after < key <= upto`.
fn window<'s>(sorted: &'s [Summary], after: &[u8], upto: &[u8]) -> &'s [Summary] {
    let lo = if after.is_empty() {
        0
    } else {
        sorted.partition_point(|s| &s.key[..] <= after)
    };
    let hi = if upto.is_empty() {
        sorted.len()
    } else {
        sorted.partition_point(|s| &s.key[..] <= upto)
    };
    sorted.get(lo..hi.max(lo)).unwrap_or(&[])
}

/// Compares the initiator's summaries of a window with this store's
/// (`mine`): returns this side's newer entries (bounded by a refill chunk)
/// and the keys the initiator holds newer.
fn sync(worker: &Worker, mine: &[Summary], summaries: Vec<Summary>) -> Response {
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
    for s in mine {
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
    worker
        .anti_entropy
        .count_sent(&entries, wanted.iter().map(|k| k.len() + 2).sum());
    Response::Synced {
        complete,
        entries,
        wanted,
    }
}

/// Runs rounds with the partner about every `interval` (jittered by a
/// quarter either way) until shutdown. A round is skipped while this
/// worker is not ready, while another round runs, or when one completed
/// (in either role) within the last half interval.
pub async fn run(worker: Arc<Worker>, interval: Duration, mut shutdown: Shutdown) {
    let Some(partner) = worker.config.partner.clone() else {
        return;
    };
    let mut link: Option<LinkConn> = None;
    let mut partner_down = false;
    let mut first = true;
    loop {
        // Each wait is drawn between 3/4 and 5/4 of the interval: partners
        // that both start rounds at the same moments would find each other
        // busy every time (each holds its own round lock), for ever.
        let wait = if std::mem::take(&mut first) {
            Duration::ZERO
        } else {
            interval.mul_f64(0.75 + (crate::sys::random_u64() % 1_000) as f64 / 2_000.0)
        };
        tokio::select! {
            biased;
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if worker.state() != WorkerState::Ready || worker.anti_entropy.ran_within(interval / 2) {
            continue;
        }
        let Some(_guard) = worker.anti_entropy.try_lock() else {
            continue;
        };
        let started = Instant::now();
        match round(&worker, &partner, &mut link, false).await {
            Ok(report) => {
                if partner_down {
                    tracing::info!(%partner, "anti-entropy reaches the partner again");
                    partner_down = false;
                }
                if report.pulled + report.pushed + report.evicted > 0 {
                    tracing::info!(
                        %partner,
                        buckets = report.buckets,
                        pulled = report.pulled,
                        pushed = report.pushed,
                        evicted = report.evicted,
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

/// Rounds with `partner` now, as the initiator, whatever this worker's
/// state, until one repaired every difference it saw: a refill closes
/// with them, which brings what the refill's scan missed (entries written
/// on the partner into slots behind its cursor). This worker takes every
/// entry (it just started: what it lacks, it did not evict). A busy
/// partner is asked again; all of it within [`ROUND_TIMEOUT`].
pub async fn closing_round(worker: &Worker, partner: &str) -> Result<RoundReport, String> {
    let _guard = worker.anti_entropy.round.clone().lock_owned().await;
    let give_up = Instant::now() + ROUND_TIMEOUT;
    let mut pause = Duration::from_millis(20);
    let mut link = None;
    let mut total = RoundReport::default();
    loop {
        match round(worker, partner, &mut link, true).await {
            Ok(report) => {
                total.buckets += report.buckets;
                total.pulled += report.pulled;
                total.pushed += report.pushed;
                total.evicted += report.evicted;
                if report.complete {
                    total.complete = true;
                    worker.round_completed();
                    return Ok(total);
                }
                if Instant::now() > give_up {
                    return Err(format!(
                        "rounds still cut short after {ROUND_TIMEOUT:?} ({} entries pulled)",
                        total.pulled
                    ));
                }
            }
            Err(RoundError::Failed(e)) => return Err(e.to_string()),
            Err(RoundError::Skipped(why)) if Instant::now() + pause > give_up => return Err(why),
            Err(RoundError::Skipped(_)) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
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
    /// Entries this side evicted because the partner refused them for room.
    pub evicted: u64,
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

/// One round as the initiator; `admit` as in [`apply_all`].
async fn round(
    worker: &Worker,
    partner: &str,
    link: &mut Option<LinkConn>,
    admit: bool,
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
    let sizes: Vec<usize> = differing
        .iter()
        .map(|&b| mine[b].entries.max(theirs[b].entries) as usize)
        .collect();
    for batch in batches(&differing, &sizes) {
        sync_batch(worker, link, &batch, admit, &mut report).await?;
    }
    match call(
        link,
        &Request::Apply {
            last: true,
            entries: Vec::new(),
            evict: Vec::new(),
        },
    )
    .await?
    {
        Response::Applied { refused, .. } => {
            report.evicted += evict_refused(worker, &refused);
            Ok(report)
        }
        other => Err(unexpected("APPLY", &other)),
    }
}

/// Cuts the differing buckets (ascending, with their entry counts) into
/// batches: at the first shard boundary past [`SYNC_BATCH_ENTRIES`], or
/// anywhere past [`SYNC_BATCH_MAX_ENTRIES`].
fn batches(differing: &[usize], sizes: &[usize]) -> Vec<Vec<u16>> {
    let mut out = Vec::new();
    let mut batch: Vec<u16> = Vec::new();
    let mut entries = 0usize;
    for (n, (&b, &size)) in differing.iter().zip(sizes).enumerate() {
        batch.push(b as u16);
        entries += size;
        let next_shard = differing
            .get(n + 1)
            .map(|&next| next / BUCKETS_PER_SHARD != b / BUCKETS_PER_SHARD);
        let cut = match next_shard {
            None => true,
            Some(boundary) => {
                (boundary && entries >= SYNC_BATCH_ENTRIES) || entries >= SYNC_BATCH_MAX_ENTRIES
            }
        };
        if cut {
            out.push(std::mem::take(&mut batch));
            entries = 0;
        }
    }
    out
}

/// Repairs one batch of buckets, a key window at a time.
async fn sync_batch(
    worker: &Worker,
    link: &mut LinkConn,
    buckets: &[u16],
    admit: bool,
    report: &mut RoundReport,
) -> Result<(), RoundError> {
    let summaries = summarize(&worker.store, &BucketSet::new(buckets)).await;
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
        worker
            .anti_entropy
            .count_sent(&[], summary_bytes(&rest[..n]) + 2 * buckets.len());
        let (complete, entries, wanted) = match call(link, &request).await? {
            Response::Synced {
                complete,
                entries,
                wanted,
            } => (complete, entries, wanted),
            other => return Err(unexpected("SYNC", &other)),
        };
        report.complete &= complete;
        let (pulled, refused) = apply_all(worker, &entries, admit);
        report.pulled += u64::from(pulled);
        push_wanted(worker, link, wanted, refused, report).await?;
        if last {
            return Ok(());
        }
        rest = &rest[n..];
        after = upto;
    }
}

/// Sends the partner the entries it wants, a refill chunk at a time, after
/// the entries it sent that this side refused for room (`evict`, in an
/// APPLY of their own, which stays within a frame: they were at most a
/// chunk of entries); evicts those the partner refuses in turn.
async fn push_wanted(
    worker: &Worker,
    link: &mut LinkConn,
    wanted: Vec<Bytes>,
    evict: Vec<Summary>,
    report: &mut RoundReport,
) -> Result<(), RoundError> {
    if !evict.is_empty() {
        apply(worker, link, Vec::new(), evict, report).await?;
    }
    let mut chunk = Vec::new();
    let mut bytes = 0;
    let total = wanted.len();
    for (i, key) in wanted.into_iter().enumerate() {
        if let Some(entry) = worker.store.entry(&key) {
            bytes += entry.key.len() + entry.data.len() + 32;
            chunk.push(entry);
        }
        if !chunk.is_empty() && (bytes >= REFILL_CHUNK_BYTES || i + 1 == total) {
            apply(worker, link, std::mem::take(&mut chunk), Vec::new(), report).await?;
            bytes = 0;
        }
    }
    Ok(())
}

/// One APPLY (not the last) of `entries` and `evict`.
async fn apply(
    worker: &Worker,
    link: &mut LinkConn,
    entries: Vec<Entry>,
    evict: Vec<Summary>,
    report: &mut RoundReport,
) -> Result<(), RoundError> {
    worker
        .anti_entropy
        .count_sent(&entries, summary_bytes(&evict));
    let sent = entries.len() as u64;
    let request = Request::Apply {
        last: false,
        entries,
        evict,
    };
    match call(link, &request).await? {
        Response::Applied { refused, .. } => {
            report.pushed += sent;
            report.evicted += evict_refused(worker, &refused);
            Ok(())
        }
        other => Err(unexpected("APPLY", &other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(key: &str) -> Summary {
        Summary {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version: 1,
            tombstone: false,
        }
    }

    #[test]
    fn windows_cut_sorted_summaries_by_their_bounds() {
        let sorted: Vec<Summary> = ["a", "b", "c", "d"].into_iter().map(summary).collect();
        let keys = |w: &[Summary]| w.iter().map(|s| s.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(window(&sorted, b"", b"")).len(), 4);
        assert_eq!(keys(window(&sorted, b"a", b"c")), vec!["b", "c"]);
        assert_eq!(keys(window(&sorted, b"c", b"")), vec!["d"]);
        assert_eq!(keys(window(&sorted, b"", b"a")), vec!["a"]);
        assert!(window(&sorted, b"d", b"").is_empty());
        assert!(window(&sorted, b"c", b"b").is_empty(), "an empty window");
    }

    #[test]
    fn batches_end_at_shard_boundaries_unless_a_shard_is_huge() {
        let s = BUCKETS_PER_SHARD;
        // Two buckets in shard 0 and one in shard 1, each big enough to
        // end a batch: the batch ends only where the shard does.
        let big = SYNC_BATCH_ENTRIES;
        assert_eq!(
            batches(&[0, 1, s], &[big, big, 1]),
            vec![vec![0, 1], vec![s as u16]]
        );
        // Small ones share a batch across shards.
        assert_eq!(
            batches(&[0, s, 2 * s], &[10, 10, 10]),
            vec![vec![0, s as u16, 2 * s as u16]]
        );
        // A shard past the hard bound is cut inside.
        let huge = SYNC_BATCH_MAX_ENTRIES;
        assert_eq!(
            batches(&[0, 1, 2], &[huge, 1, 1]),
            vec![vec![0], vec![1, 2]]
        );
        assert!(batches(&[], &[]).is_empty());
    }
}
