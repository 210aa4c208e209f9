//! Health probes: every `health_interval` each worker is asked for its
//! state over a connection of its own (so a probe never queues behind
//! client traffic). A ready worker is `Up`; a starting or refilling one is
//! `Loading` (writes, no reads); [`FAILURES_TO_DOWN`] failed probes in a row
//! make it `Down`. A worker back up is used again at the next probe, within
//! one interval. Failed requests mark a worker down at once (see
//! `Backend::report_failure`); probes bring it back.

use super::pool::{Backend, Health};
use super::{OrchestratorConfig, Router};
use crate::client::link::LinkConn;
use crate::net::Shutdown;
use crate::protocol::link::{Request, Response, WorkerState};
use crate::protocol::Limits;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Failed probes in a row before a worker counts as down.
pub const FAILURES_TO_DOWN: u32 = 2;

pub fn start(
    router: &Router,
    config: &OrchestratorConfig,
    shutdown: Shutdown,
) -> Vec<JoinHandle<()>> {
    let timeout = config.worker_timeout.min(config.health_interval);
    router
        .pairs()
        .iter()
        .flatten()
        .map(|backend| {
            tokio::spawn(probe_loop(
                backend.clone(),
                config.server.limits,
                config.health_interval,
                timeout,
                shutdown.clone(),
            ))
        })
        .collect()
}

async fn probe_loop(
    backend: Arc<Backend>,
    limits: Limits,
    interval: Duration,
    timeout: Duration,
    mut shutdown: Shutdown,
) {
    let mut link: Option<LinkConn> = None;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let result = async {
            if link.is_none() {
                link = Some(LinkConn::connect(&backend.addr, limits, timeout).await?);
            }
            match link.as_mut() {
                Some(l) => l.call(&Request::Status, timeout).await,
                None => Err(crate::client::ClientError::Closed),
            }
        }
        .await;
        match result {
            Ok(Response::Status {
                state,
                entries,
                incarnation,
            }) => {
                failures = 0;
                let healthy = match state {
                    WorkerState::Ready => Health::Up,
                    WorkerState::Starting | WorkerState::Refilling => Health::Loading,
                };
                backend.probed(healthy, incarnation, entries);
            }
            other => {
                // A probe connection in an unknown state is not reused.
                link = None;
                failures += 1;
                if failures >= FAILURES_TO_DOWN {
                    if backend.health() != Health::Down {
                        tracing::debug!(worker = %backend.addr, result = ?other.err(), "probe failed");
                    }
                    backend.set_health(Health::Down);
                }
            }
        }
    }
}
