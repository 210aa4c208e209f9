//! Refill: a starting worker copies everything from its partner.
//!
//! It refills only from a partner that reports itself ready: a partner that
//! is down, starting or refilling itself means both start empty and nobody
//! waits on anybody (two partners starting together). While the stream runs,
//! live writes reach this worker too; each entry and each write carries its
//! version and the store keeps the newer, so the order they meet in does not
//! matter. If the partner dies mid-stream, the worker says so loudly and
//! serves what it has.

use super::Worker;
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::protocol::link::{Request, RequestKind, Response, WorkerState};
use std::time::Duration;
use tokio::time::Instant;

/// How long to try reaching the partner at start before starting empty.
pub const REFILL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest silence in a refill stream before the partner counts as gone.
pub const REFILL_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a refill did.
#[derive(Debug, PartialEq, Eq)]
pub enum RefillOutcome {
    /// No partner configured.
    NoPartner,
    /// The partner could not serve a refill; started empty.
    Skipped(String),
    /// Every entry of the partner arrived, taking `elapsed`.
    Done { entries: u64, elapsed: Duration },
    /// The stream broke off; serving what arrived.
    Failed { entries: u64, error: String },
}

pub async fn refill_from_partner(worker: &Worker) -> RefillOutcome {
    let Some(partner) = worker.config.partner.clone() else {
        tracing::info!("no partner configured; starting empty");
        return RefillOutcome::NoPartner;
    };
    let outcome = refill(worker, &partner).await;
    if let RefillOutcome::Done { elapsed, .. } = &outcome {
        worker.refill_millis.store(
            elapsed.as_millis() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    match &outcome {
        RefillOutcome::NoPartner => {}
        RefillOutcome::Skipped(why) => {
            tracing::info!(%partner, "not refilling: {why}; starting empty")
        }
        RefillOutcome::Done { entries, elapsed } => {
            let rate = *entries as f64 / elapsed.as_secs_f64().max(1e-6);
            tracing::info!(%partner, entries, ?elapsed, entries_per_second = rate as u64, "refilled from the partner")
        }
        RefillOutcome::Failed { entries, error } => tracing::error!(
            %partner,
            entries,
            "REFILL INCOMPLETE: the partner went away mid-refill ({error}); \
             serving the {entries} entries that arrived"
        ),
    }
    outcome
}

async fn refill(worker: &Worker, partner: &str) -> RefillOutcome {
    let mut link = match LinkConn::connect(partner, &worker.dial(), REFILL_CONNECT_TIMEOUT).await {
        Ok(link) => link,
        Err(e) => return RefillOutcome::Skipped(format!("partner unreachable: {e}")),
    };
    match link.call(&Request::Status, REFILL_CONNECT_TIMEOUT).await {
        Ok(Response::Status {
            state: WorkerState::Ready,
            entries,
            ..
        }) => worker
            .refill_expected
            .store(entries, std::sync::atomic::Ordering::Relaxed),
        Ok(Response::Status { state, .. }) => {
            return RefillOutcome::Skipped(format!("partner is {}", state.name()))
        }
        Ok(other) => return RefillOutcome::Skipped(format!("unexpected answer {other:?}")),
        Err(e) => return RefillOutcome::Skipped(format!("partner did not answer: {e}")),
    }
    worker.set_state(WorkerState::Refilling);
    tracing::info!(%partner, "refilling from the partner");
    let started = Instant::now();
    let mut entries = 0u64;
    let result: Result<(), ClientError> = async {
        link.send(&Request::Refill, REFILL_STALL_TIMEOUT).await?;
        loop {
            match link.recv(RequestKind::Refill, REFILL_STALL_TIMEOUT).await? {
                Response::Chunk(chunk) => {
                    for entry in &chunk {
                        worker.clock.observe(entry.version);
                        if let Err(e) = worker.store.apply(entry) {
                            tracing::warn!(error = %e, "refill entry dropped");
                        }
                    }
                    entries += chunk.len() as u64;
                    worker
                        .refilled
                        .store(entries, std::sync::atomic::Ordering::Relaxed);
                    // The stream is always ready while it runs: give the
                    // runtime's other tasks (accepting connections, and
                    // serving them with `threads = 1`) a turn per chunk.
                    tokio::task::yield_now().await;
                }
                Response::End { .. } => return Ok(()),
                Response::Error(e) => return Err(ClientError::Protocol(e.to_string())),
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected {other:?} in a refill stream"
                    )))
                }
            }
        }
    }
    .await;
    match result {
        Ok(()) => RefillOutcome::Done {
            entries,
            elapsed: started.elapsed(),
        },
        // The partner stopped being ready before streaming: not a failure.
        Err(ClientError::Protocol(e)) if entries == 0 && e.contains("loading") => {
            RefillOutcome::Skipped(format!("partner is not ready: {e}"))
        }
        Err(e) => RefillOutcome::Failed {
            entries,
            error: e.to_string(),
        },
    }
}
