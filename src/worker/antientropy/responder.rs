//! The partner's side of a round: answering DIGEST, SYNC and APPLY under
//! the round lock.

use super::{apply_all, digest, evict_refused, summarize};
use crate::protocol::link::{Request, Response, Summary, WorkerState, REFILL_CHUNK_BYTES};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::worker::store::BucketSet;
use crate::worker::Worker;
use bytes::Bytes;
use std::collections::HashMap;
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

pub(super) fn busy() -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::Unavailable,
        "busy: an anti-entropy round is running",
    ))
}

/// The responder's side of rounds on one link.
#[derive(Default)]
pub struct Responder {
    /// The round lock while a round is open on this link, and when its
    /// lease ends.
    guard: Option<(OwnedMutexGuard<()>, Instant)>,
    /// The current batch's buckets and this side's summaries of them,
    /// sorted by key (one scan serves all the batch's windows).
    batch: Option<(Vec<u16>, Vec<Summary>)>,
    /// One of this round's SYNC answers was cut at a refill chunk: the
    /// initiator did not get every newer entry, so the round does not
    /// count as completed (nor clears what waits on one).
    cut: bool,
}

impl Responder {
    /// When the open round's lease ends, while a round is open on this
    /// link (the link then waits at most [`ROUND_TIMEOUT`] for the
    /// initiator's next message, and not past the lease).
    pub fn lease_ends(&self) -> Option<Instant> {
        self.guard.as_ref().map(|(_, ends)| *ends)
    }

    /// A round is open and its lease has ended.
    fn past_lease(&self) -> bool {
        self.lease_ends().is_some_and(|ends| Instant::now() >= ends)
    }

    /// Counts the open round as cut off if the link closes past its
    /// lease (the link waits for the initiator's next message only until
    /// the lease ends).
    pub fn close(&mut self, worker: &Worker) {
        if self.past_lease() {
            cut_off(worker);
        }
        self.guard = None;
    }

    /// Ends the open round if it outlived its lease, counting it; the
    /// initiator is told so.
    fn expired(&mut self, worker: &Worker) -> Option<Response> {
        if !self.past_lease() {
            return None;
        }
        self.guard = None;
        self.batch = None;
        let lease = cut_off(worker);
        Some(Response::Error(ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "anti-entropy round cut off: it held the round lock past anti_entropy_lease ({lease:?}); send DIGEST to start another"
            ),
        )))
    }

    /// Answers DIGEST, SYNC and APPLY.
    pub async fn handle(&mut self, worker: &Worker, request: Request) -> Response {
        if let Some(cut_off) = self.expired(worker) {
            return cut_off;
        }
        match request {
            Request::Digest { floor } => {
                if worker.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                if self.guard.is_none() {
                    match worker.anti_entropy.try_lock() {
                        Some(guard) => {
                            let ends = Instant::now() + worker.config().anti_entropy_lease;
                            self.guard = Some((guard, ends));
                        }
                        None => return busy(),
                    }
                }
                self.batch = None;
                self.cut = false;
                worker.adopt_floor(floor);
                Response::Digest {
                    buckets: digest(&worker.store).await,
                    floor: worker.store.floor(),
                }
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

/// Counts and logs a round cut off at its lease; returns the lease.
fn cut_off(worker: &Worker) -> std::time::Duration {
    worker.anti_entropy.lease_expired();
    let lease = worker.config().anti_entropy_lease;
    tracing::warn!(
        ?lease,
        "cut off an anti-entropy round of the partner that held the round lock past anti_entropy_lease"
    );
    lease
}

pub(super) fn no_round() -> Response {
    Response::Error(ErrorReply::new(
        ErrorCode::InvalidCommand,
        "no anti-entropy round open on this link (send DIGEST first)",
    ))
}

/// The summaries (sorted by key) in the window `after < key <= upto`.
pub(super) fn window<'s>(sorted: &'s [Summary], after: &[u8], upto: &[u8]) -> &'s [Summary] {
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
pub(super) fn sync(worker: &Worker, mine: &[Summary], summaries: Vec<Summary>) -> Response {
    // Of one version, hashes holding different fields are each sent to
    // the other side, which merges them (`Summary::covers`).
    let theirs: HashMap<&[u8], &Summary> = summaries.iter().map(|s| (&s.key[..], s)).collect();
    let my_versions: HashMap<&[u8], &Summary> = mine.iter().map(|s| (&s.key[..], s)).collect();
    let wanted: Vec<Bytes> = summaries
        .iter()
        .filter(|s| !my_versions.get(&s.key[..]).is_some_and(|m| m.covers(s)))
        .map(|s| s.key.clone())
        .collect();
    let mut budget = REFILL_CHUNK_BYTES.saturating_sub(wanted.iter().map(|k| k.len() + 2).sum());
    let mut entries = Vec::new();
    let mut complete = true;
    for s in mine {
        if theirs.get(&s.key[..]).is_some_and(|t| t.covers(s)) {
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
