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
//! Each worker takes part in one round at a time (the round lock: a
//! responder holds it for a round at most `anti_entropy_lease` from its
//! DIGEST, however often the initiator sends, and at most
//! [`ROUND_TIMEOUT`] without hearing from it), so its
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

mod responder;
mod round;

pub use responder::Responder;
pub use round::RoundReport;
use round::{round, RoundError};

use super::store::{Applied, BucketSet, Store};
use super::Worker;
use crate::client::link::LinkConn;
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::link::{BucketDigest, Entry, Summary, WorkerState, REFILL_CHUNK_BYTES};
use crate::shutdown::Shutdown;
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
/// holds its round lock without hearing from the initiator (however often
/// it hears, a round holds it at most `anti_entropy_lease`).
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
    /// Responder rounds cut off at their lease.
    leases_expired: AtomicU64,
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

    pub fn leases_expired(&self) -> u64 {
        self.leases_expired.load(Ordering::Relaxed)
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

    pub(super) fn lease_expired(&self) {
        self.leases_expired.fetch_add(1, Ordering::Relaxed);
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
        // A key that moved to another pair stays there.
        if !worker.owns(&entry.key) {
            continue;
        }
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
                content: 0,
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

/// Runs rounds with the partner about every `interval` (jittered by a
/// quarter either way) until shutdown. A round is skipped while this
/// worker is not ready or has no partner, while another round runs, or
/// when one completed (in either role) within the last half interval.
/// Each round goes to the partner named now: a reload may name another.
pub async fn run(worker: Arc<Worker>, interval: Duration, mut shutdown: Shutdown) {
    let mut partner = worker.partner();
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
        let now = worker.partner();
        if now != partner {
            // A link to the old partner is not reused; the first round
            // that reaches the new one says so.
            link = None;
            partner_down = true;
            partner = now;
        }
        let Some(partner) = partner.as_deref() else {
            continue;
        };
        if worker.state() != WorkerState::Ready || worker.anti_entropy.ran_within(interval / 2) {
            continue;
        }
        let Some(_guard) = worker.anti_entropy.try_lock() else {
            continue;
        };
        let started = Instant::now();
        match round(&worker, partner, &mut link, false).await {
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

#[cfg(test)]
mod tests {
    use super::responder::window;
    use super::round::batches;
    use super::*;
    use crate::worker::store::BUCKETS_PER_SHARD;
    use bytes::Bytes;

    fn summary(key: &str) -> Summary {
        Summary {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version: 1,
            tombstone: false,
            content: 0,
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
