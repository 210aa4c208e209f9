//! The initiator's side of a round: compare digests, sync the differing
//! buckets in batches, push what the partner lacks.

use super::{
    apply_all, digest, evict_refused, summarize, summary_bytes, ROUND_TIMEOUT, SYNC_BATCH_ENTRIES,
    SYNC_BATCH_MAX_ENTRIES, SYNC_WINDOW_BYTES,
};
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::link::{Entry, Request, Response, Summary, REFILL_CHUNK_BYTES};
use crate::protocol::ErrorCode;
use crate::worker::store::{BucketSet, BUCKETS_PER_SHARD};
use crate::worker::Worker;
use bytes::Bytes;

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

pub(super) enum RoundError {
    /// The partner cannot take part now (refilling, busy).
    Skipped(String),
    Failed(ClientError),
}

impl From<ClientError> for RoundError {
    fn from(e: ClientError) -> RoundError {
        RoundError::Failed(e)
    }
}

pub(super) async fn call(link: &mut LinkConn, request: &Request) -> Result<Response, RoundError> {
    match link.call(request, ROUND_TIMEOUT).await? {
        Response::Error(e) if matches!(e.code, ErrorCode::Loading | ErrorCode::Unavailable) => {
            Err(RoundError::Skipped(e.message.into_owned()))
        }
        Response::Error(e) => Err(RoundError::Failed(ClientError::Protocol(e.to_string()))),
        other => Ok(other),
    }
}

pub(super) fn unexpected(what: &str, got: &Response) -> RoundError {
    RoundError::Failed(ClientError::Protocol(format!(
        "unexpected answer to {what}: {got:?}"
    )))
}

/// One round as the initiator; `admit` as in [`apply_all`].
pub(super) async fn round(
    worker: &Worker,
    partner: &str,
    link: &mut Option<LinkConn>,
    admit: bool,
) -> Result<RoundReport, RoundError> {
    // A link at an older version is opened afresh each round: a partner
    // upgraded since is then reached at this build's version (hashes).
    if link
        .as_ref()
        .is_some_and(|l| l.version() < crate::protocol::link::LINK_VERSION)
    {
        *link = None;
    }
    if link.is_none() {
        *link = Some(LinkConn::connect(partner, &worker.dial(), ROUND_TIMEOUT).await?);
    }
    let Some(link) = link.as_mut() else {
        return Err(RoundError::Failed(ClientError::Closed));
    };
    let floor = worker.store.floor();
    let theirs = match call(link, &Request::Digest { floor }).await? {
        Response::Digest { buckets, floor } => {
            // A flush this worker missed: applied before the comparison,
            // so the round does not bring back what it removed.
            worker.adopt_floor(floor);
            buckets
        }
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
pub(super) fn batches(differing: &[usize], sizes: &[usize]) -> Vec<Vec<u16>> {
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
pub(super) async fn sync_batch(
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
pub(super) async fn push_wanted(
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
pub(super) async fn apply(
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
