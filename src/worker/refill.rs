//! Refill: a starting worker copies everything from its partner.
//!
//! What the partner answers decides:
//! - ready: its entries are streamed here. While the stream runs, live
//!   writes reach this worker too; each entry and each write carries its
//!   version and the store keeps the newer, so the order they meet in does
//!   not matter. The stream scans the partner's slots in order, so an entry
//!   written there into a slot behind the scan (one no orchestrator sent
//!   here too: another orchestrator's, a hint lost with an orchestrator's
//!   restart) is not in it: the refill closes with an anti-entropy round,
//!   before the worker serves, which brings those. If the partner dies
//!   mid-stream, the worker says so loudly and serves what it has.
//! - starting or refilling: the partner is a new process too (two partners
//!   starting together), so there is nothing to copy: both start empty and
//!   nobody waits on anybody.
//! - nothing (connection refused, timed out): the partner is
//!   *unreachable*, which a network blip or a restart in progress can cause
//!   as well as a dead host. The worker keeps trying, with backoff, for
//!   `refill_wait`, then starts empty.
//! - a refusal of the link (wrong token, a certificate it does not trust):
//!   trying again cannot help, so the worker starts empty at once.
//!
//! A worker that may lack data its partner holds (it started empty because
//! the partner was unreachable, or its refill broke off) is *incomplete*:
//! it says so in its log, `/health` (503), `cluster`, the
//! `rcache_worker_incomplete` gauge and STATUS, and the orchestrator keeps
//! it `behind` (no reads while its partner can serve). It is complete again
//! once an anti-entropy round with the partner has copied what the partner
//! held, or once it streamed a whole refill to a new process of the
//! partner: the partner's old data is gone then, and both hold all the pair
//! has.

use super::antientropy::RoundReport;
use super::Worker;
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::protocol::link::{Request, RequestKind, Response, WorkerState};
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// How long one attempt to reach the partner may take.
pub const REFILL_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The first pause between attempts to reach an unreachable partner; each
/// next pause doubles, up to [`REFILL_RETRY_MAX`].
pub const REFILL_RETRY_FIRST: Duration = Duration::from_millis(50);
pub const REFILL_RETRY_MAX: Duration = Duration::from_secs(1);

/// Longest silence in a refill stream before the partner counts as gone.
pub const REFILL_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What a refill did.
#[derive(Debug, PartialEq, Eq)]
pub enum RefillOutcome {
    /// No partner configured.
    NoPartner,
    /// The partner is starting or refilling itself: a new process with
    /// nothing to copy. Started empty, complete.
    PartnerStarting(String),
    /// The partner could not be reached within `refill_wait`, or refused
    /// the link: started empty, incomplete.
    Unreachable(String),
    /// Every entry of the partner arrived, taking `elapsed` (the closing
    /// anti-entropy round included, which did `closing`).
    Done {
        entries: u64,
        elapsed: Duration,
        closing: RoundReport,
    },
    /// The stream broke off; serving what arrived, incomplete.
    Failed { entries: u64, error: String },
}

impl RefillOutcome {
    /// Why the worker may lack data its partner holds, if it may.
    pub fn incomplete(&self) -> Option<String> {
        match self {
            RefillOutcome::NoPartner
            | RefillOutcome::PartnerStarting(_)
            | RefillOutcome::Done { .. } => None,
            RefillOutcome::Unreachable(why) => Some(format!("started empty: {why}")),
            RefillOutcome::Failed { entries, error } => {
                Some(format!("refill broke off after {entries} entries: {error}"))
            }
        }
    }
}

pub async fn refill_from_partner(worker: &Worker) -> RefillOutcome {
    let Some(partner) = worker.partner().map(|p| String::clone(&p)) else {
        tracing::info!("no partner configured; starting empty");
        return RefillOutcome::NoPartner;
    };
    let outcome = refill_retrying(worker, &partner).await;
    if let RefillOutcome::Done { elapsed, .. } = &outcome {
        worker
            .refill_millis
            .store(elapsed.as_millis() as u64, Ordering::Relaxed);
    }
    match &outcome {
        RefillOutcome::NoPartner => {}
        RefillOutcome::PartnerStarting(why) => {
            tracing::info!(%partner, "not refilling: {why}; starting empty")
        }
        RefillOutcome::Unreachable(why) => tracing::error!(
            %partner,
            refill_wait = ?worker.config.refill_wait,
            "STARTED EMPTY: not refilling ({why}); serving, but incomplete until \
             anti-entropy with the partner repairs it (do not restart the partner before)"
        ),
        RefillOutcome::Done {
            entries,
            elapsed,
            closing,
        } => {
            let rate = *entries as f64 / elapsed.as_secs_f64().max(1e-6);
            tracing::info!(
                %partner,
                entries,
                ?elapsed,
                entries_per_second = rate as u64,
                closing_round_pulled = closing.pulled,
                closing_round_pushed = closing.pushed,
                "refilled from the partner"
            )
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

/// Refills, trying an unreachable partner again with backoff until
/// `refill_wait` has passed.
async fn refill_retrying(worker: &Worker, partner: &str) -> RefillOutcome {
    let give_up = Instant::now() + worker.config.refill_wait;
    let mut pause = REFILL_RETRY_FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let why = match refill(worker, partner).await {
            Err(Unreached::Unreachable(why)) => why,
            Err(Unreached::Refused(why)) => return RefillOutcome::Unreachable(why),
            Ok(outcome) => return outcome,
        };
        if Instant::now() + pause > give_up {
            return RefillOutcome::Unreachable(format!("{why} ({attempts} attempts)"));
        }
        if attempts == 1 {
            tracing::warn!(%partner, refill_wait = ?worker.config.refill_wait, "{why}; trying again");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REFILL_RETRY_MAX);
    }
}

/// Why an attempt did not get to ask the partner.
enum Unreached {
    /// Worth trying again.
    Unreachable(String),
    /// The partner refused the link: trying again cannot help.
    Refused(String),
}

/// One attempt.
async fn refill(worker: &Worker, partner: &str) -> Result<RefillOutcome, Unreached> {
    let mut link = LinkConn::connect(partner, &worker.dial(), REFILL_CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            ClientError::Refused { .. } => Unreached::Refused(e.to_string()),
            e => Unreached::Unreachable(format!("partner unreachable: {e}")),
        })?;
    match link.call(&Request::Status, REFILL_CONNECT_TIMEOUT).await {
        Ok(Response::Status {
            state: WorkerState::Ready,
            entries,
            ..
        }) => worker.refill_expected.store(entries, Ordering::Relaxed),
        Ok(Response::Status { state, .. }) => {
            return Ok(RefillOutcome::PartnerStarting(format!(
                "partner is {}",
                state.name()
            )))
        }
        Ok(other) => return Err(Unreached::Refused(format!("unexpected answer {other:?}"))),
        Err(e) => {
            return Err(Unreached::Unreachable(format!(
                "partner unreachable: no answer: {e}"
            )))
        }
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
                        if !worker.owns(&entry.key) {
                            continue;
                        }
                        if let Err(e) = worker.store.apply(entry) {
                            tracing::warn!(error = %e, "refill entry dropped");
                        }
                    }
                    entries += chunk.len() as u64;
                    worker.refilled.store(entries, Ordering::Relaxed);
                    // The stream is always ready while it runs: give the
                    // runtime's other tasks (accepting connections, and
                    // serving them with `threads = 1`) a turn per chunk.
                    tokio::task::yield_now().await;
                }
                Response::End { floor, .. } => {
                    worker.adopt_floor(floor);
                    return Ok(());
                }
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
    drop(link);
    Ok(match result {
        Ok(()) => match super::antientropy::closing_round(worker, partner).await {
            Ok(closing) => RefillOutcome::Done {
                entries,
                elapsed: started.elapsed(),
                closing,
            },
            Err(e) => RefillOutcome::Failed {
                entries,
                error: format!("the closing anti-entropy round failed: {e}"),
            },
        },
        // The partner stopped being ready before streaming: not a failure.
        Err(ClientError::Protocol(e)) if entries == 0 && e.contains("loading") => {
            RefillOutcome::PartnerStarting(format!("partner is not ready: {e}"))
        }
        Err(e) => RefillOutcome::Failed {
            entries,
            error: e.to_string(),
        },
    })
}
