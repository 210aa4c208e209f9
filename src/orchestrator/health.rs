//! Health probes: every `health_interval` each worker is asked for its
//! state over a connection of its own (so a probe never queues behind
//! client traffic), waiting at most `health_timeout`. A ready worker is
//! `Up`; a starting or refilling one is `Loading` (writes, no reads);
//! `health_failures` failed probes in a row make it `Down`. A worker back
//! up is used again at the next probe, within one interval, and its hints
//! are delivered then. Failed requests mark a worker down at once (see
//! `Backend::report_failure`); probes bring it back. Reconnecting to a
//! down worker is paced by the probes: its links stay unused (writes
//! become hints) until a probe reaches it.

use super::layout::LayoutBoard;
use super::pool::{Backend, Health};
use super::{OrchestratorConfig, Router};
use crate::client::link::LinkConn;
use crate::protocol::link::{Request, Response, WorkerState, HASH_LINK_VERSION, LINK_VERSION};
use crate::shutdown::Shutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Starts a probe per worker (once per router; workers a reload adds get
/// theirs from [`Router::reload`]).
pub fn start(router: &Router, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
    router.start_probes(shutdown)
}

/// Probes one worker until shutdown or until a reload retires it.
pub fn spawn_probe(
    backend: Arc<Backend>,
    settings: ProbeSettings,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(probe_loop(backend, settings, shutdown))
}

#[derive(Debug, Clone)]
pub struct ProbeSettings {
    dial: Arc<arc_swap::ArcSwap<crate::client::Dial>>,
    interval: Duration,
    timeout: Duration,
    failures_to_down: u32,
    hint_timeout: Duration,
    /// The highest layout seen, which each probe gives the worker and
    /// takes from it ([`super::layout`]).
    pub layouts: Arc<LayoutBoard>,
}

impl ProbeSettings {
    /// How long a worker that came back serves before it decides updates
    /// again while its partner can ([`super::pool::Backend::decider`]):
    /// time for every orchestrator's probes to have seen it up (a
    /// restarted worker is up at the first probe after its refill).
    pub fn settle(&self) -> Duration {
        (self.interval * 10).max(Duration::from_secs(5))
    }

    pub fn from_config(
        config: &OrchestratorConfig,
        dial: Arc<arc_swap::ArcSwap<crate::client::Dial>>,
    ) -> ProbeSettings {
        ProbeSettings {
            dial,
            interval: config.health_interval,
            timeout: config.health_timeout,
            failures_to_down: config.health_failures,
            hint_timeout: config.worker_timeout,
            layouts: Arc::default(),
        }
    }
}

async fn probe_loop(backend: Arc<Backend>, settings: ProbeSettings, mut shutdown: Shutdown) {
    let ProbeSettings {
        dial,
        interval,
        timeout,
        ..
    } = settings;
    let mut link: Option<LinkConn> = None;
    let mut failures = 0u32;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
        biased;
                   _ = shutdown.wait() => return,
                   _ = tick.tick() => {}
               }
        if backend.is_retired() {
            return;
        }
        let result = async {
            if link.is_none() {
                let connected = LinkConn::connect(&backend.addr, &dial.load(), timeout).await?;
                backend.spoke(connected.version());
                link = Some(connected);
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
                synced,
                complete,
                partner_behind,
                serving_ms,
            }) => {
                failures = 0;
                backend.serving(serving_ms);
                let healthy = match state {
                    // A worker that may lack its partner's data is behind
                    // until anti-entropy repaired it (see worker::refill).
                    WorkerState::Ready if !complete => Health::Behind,
                    WorkerState::Ready => Health::Up,
                    WorkerState::Starting | WorkerState::Refilling => Health::Loading,
                };
                if backend.probed(healthy, incarnation, entries, synced) {
                    tokio::spawn(backend.clone().deliver_hints(settings.hint_timeout));
                }
                if let Some(l) = link.as_mut() {
                    // A link at an older version is opened afresh at the
                    // next probe: a worker upgraded since (or one that
                    // closed the first hello for another reason) is found
                    // at this build's version within one interval.
                    let older = l.version() < LINK_VERSION;
                    if !gossip(l, &backend, &settings.layouts, timeout).await || older {
                        link = None;
                    }
                }
                backend.probe_done(Some(partner_behind));
            }
            other => {
                // A probe connection in an unknown state is not reused.
                link = None;
                failures += 1;
                if failures >= settings.failures_to_down {
                    if backend.health() != Health::Down {
                        tracing::debug!(worker = %backend.addr, result = ?other.err(), "probe failed");
                    }
                    backend.set_health(Health::Down);
                }
                backend.probe_done(None);
            }
        }
    }
}

/// Gives the worker the highest layout seen and takes its own if higher
/// (workers of the previous release hold none); false when the link
/// failed.
async fn gossip(
    link: &mut LinkConn,
    backend: &Backend,
    layouts: &LayoutBoard,
    timeout: Duration,
) -> bool {
    if link.version() < HASH_LINK_VERSION {
        return true;
    }
    let request = Request::Layout {
        layout: layouts.current(),
        you: backend.addr.clone(),
    };
    match link.call(&request, timeout).await {
        Ok(Response::Layout { layout, handoff }) => {
            backend.set_handoff(handoff);
            if let Some(layout) = layout {
                if layouts.offer(layout) {
                    tracing::info!(worker = %backend.addr, epoch = layouts.epoch(), "learned the cluster's layout from a worker");
                }
            }
            true
        }
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(worker = %backend.addr, error = %e, "layout exchange failed");
            false
        }
    }
}
