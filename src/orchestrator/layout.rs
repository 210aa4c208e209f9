//! The cluster's layout: the pairs in placement order and an epoch, held
//! by every worker and gossiped by the health probes. An orchestrator
//! places keys by the layout with the highest epoch it has seen; its
//! config's `workers` are the pairs in force until it learned one, and the
//! seed it learns it from (the first probes, before it serves). A change
//! (`cluster||replace-worker`) is made by one orchestrator under the next
//! epoch and given to every worker; the others take it from their next
//! probe, within one `health_interval`, and workers take the partner it
//! names for them.

use super::pool::Health;
use super::Router;
use crate::client::link::LinkConn;
use crate::join::join_all;
use crate::protocol::link::{Layout, Request, Response, WorkerState, HASH_LINK_VERSION};
use crate::protocol::{ErrorCode, ErrorReply};
use std::sync::{Arc, Mutex};

/// The highest layout this orchestrator has seen.
#[derive(Debug, Default)]
pub struct LayoutBoard {
    held: Mutex<Option<Layout>>,
    changed: tokio::sync::Notify,
}

impl LayoutBoard {
    fn held(&self) -> std::sync::MutexGuard<'_, Option<Layout>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn current(&self) -> Option<Layout> {
        self.held().clone()
    }

    /// The epoch held (0: none).
    pub fn epoch(&self) -> u64 {
        self.held().as_ref().map_or(0, |l| l.epoch)
    }

    /// Keeps `offered` if it supersedes the one held
    /// ([`Layout::supersedes`]), and wakes whoever follows the layout; true
    /// when it did.
    pub fn offer(&self, offered: Layout) -> bool {
        let mut held = self.held();
        if held.as_ref().is_some_and(|h| !offered.supersedes(h)) {
            return false;
        }
        *held = Some(offered);
        drop(held);
        self.changed.notify_one();
        true
    }

    /// Returns once a layout was offered since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}

fn refused(message: String) -> ErrorReply {
    ErrorReply::new(ErrorCode::Parse, message)
}

impl Router {
    /// Puts the highest layout seen in force, if it is not already.
    pub fn follow_layout(&self) {
        // Read and put in force under one lock, so a reload or another
        // follower never puts an older list in force after a newer one.
        let _changing = self.changing();
        let Some(layout) = self.probe.layouts.current() else {
            return;
        };
        if let Some((pairs_before, pairs, added, removed)) = self.install_pairs(&layout.pairs) {
            tracing::warn!(
                epoch = layout.epoch,
                pairs_before,
                pairs,
                workers_added = added,
                workers_removed = removed,
                "the cluster's layout is in force"
            );
            self.warn_if_stale(&layout);
        }
    }

    /// Logs when the config's `workers` differ from the cluster's layout.
    pub(super) fn warn_if_stale(&self, layout: &Layout) {
        if *self.seed() != layout.pairs {
            tracing::warn!(
                epoch = layout.epoch,
                "the config's workers list is stale: the cluster's layout is in force \
                 (`rcache cluster` shows it); the file only seeds"
            );
        }
    }

    /// Follows layout changes the probes learn of until the router is
    /// dropped or `shutdown`.
    pub async fn follow_layouts(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.probe.layouts.changed() => self.follow_layout(),
            }
        }
    }

    /// The layout in force: the cluster's, or the config's pairs as epoch 0.
    pub fn layout(&self) -> Layout {
        self.probe.layouts.current().unwrap_or_else(|| Layout {
            epoch: 0,
            pairs: self
                .topology()
                .pairs
                .iter()
                .map(|[a, b]| [a.addr.clone(), b.addr.clone()])
                .collect(),
        })
    }

    /// `new` takes `old`'s place under the next epoch. `new` must be
    /// ready (it refilled from `old`'s partner) and `old`'s partner up, so
    /// the pair serves throughout; `old` may be dead. The layout is put in
    /// force here and given to every worker; other orchestrators take it
    /// at their next probe.
    pub async fn replace_worker(&self, old: &str, new: &str) -> Result<String, ErrorReply> {
        if let Err(e) = crate::net::check_address(new) {
            return Err(refused(format!("{new:?} is not a worker address: {e}")));
        }
        let base = self.layout();
        let Some((pair, place)) = base.find(old) else {
            return Err(refused(format!(
                "{old} is not a worker of the cluster's layout"
            )));
        };
        if base.find(new).is_some() {
            return Err(refused(format!("{new} is in the cluster's layout already")));
        }
        let survivor = base.pairs[pair][1 - place].clone();
        let topology = self.topology();
        let survivor_up = topology
            .pairs
            .iter()
            .flatten()
            .any(|b| b.addr == survivor && b.health() == Health::Up);
        if !survivor_up {
            return Err(refused(format!(
                "{old}'s partner {survivor} does not serve: the pair would have no worker to read from"
            )));
        }
        if let Some(old_release) = topology
            .pairs
            .iter()
            .flatten()
            .find(|b| b.link_version() < HASH_LINK_VERSION)
        {
            return Err(refused(format!(
                "{} does not run this release (or was not probed yet): workers of the \
                 previous release hold no layout",
                old_release.addr
            )));
        }
        let dial = self.settings.dial.load_full();
        if dial.token.is_some() && dial.tls.is_none() {
            // NEW is not in the layout yet: nothing shows it is a worker of
            // this cluster but a certificate from the cluster's CA.
            return Err(refused(format!(
                "{new} would be sent the cluster_token over a link that cannot verify it: \
                 replace-worker needs TLS links (tls.ca) when links carry a token"
            )));
        }
        self.ready_to_replace(new).await?;
        if self.layout() != base {
            return Err(refused(
                "the cluster's layout changed meanwhile: nothing was changed; look at \
                 `rcache cluster` and run the command again"
                    .to_string(),
            ));
        }
        let mut next = base.clone();
        next.epoch = base.epoch + 1;
        next.pairs[pair][place] = new.to_string();
        if !self.probe.layouts.offer(next.clone()) {
            return Err(refused(
                "another change of the layout came first: nothing was changed".to_string(),
            ));
        }
        self.follow_layout();
        let told = self.give_layout(&next).await;
        if self.probe.layouts.current().as_ref() != Some(&next) {
            return Err(refused(format!(
                "another orchestrator changed the layout at epoch {} at the same moment, and \
                 its change is the one in force: `rcache cluster` shows it",
                next.epoch
            )));
        }
        tracing::warn!(
            epoch = next.epoch,
            pair,
            %old,
            %new,
            told,
            "replaced a worker in the cluster's layout"
        );
        Ok(format!(
            "epoch={} pair={pair} old={old} new={new} told={told}/{}",
            next.epoch,
            next.pairs.len() * 2
        ))
    }

    /// Checks that `new` answers and has refilled.
    async fn ready_to_replace(&self, new: &str) -> Result<(), ErrorReply> {
        let dial = self.settings.dial.load_full();
        let timeout = self.worker_timeout().max(std::time::Duration::from_secs(1));
        let status = async {
            let mut link = LinkConn::connect(new, &dial, timeout).await?;
            link.call(&Request::Status, timeout).await
        };
        match status.await {
            Ok(Response::Status {
                state: WorkerState::Ready,
                complete: true,
                ..
            }) => Ok(()),
            Ok(Response::Status {
                state: WorkerState::Ready,
                ..
            }) => Err(refused(format!(
                "{new} is ready but may lack its partner's data (it started empty): start it \
                 with the survivor as its partner and wait until it refilled"
            ))),
            Ok(Response::Status { state, .. }) => Err(refused(format!(
                "{new} is {}: start it with the survivor as its partner and wait until it is ready",
                state.name()
            ))),
            Ok(other) => Err(refused(format!("{new} answered {other:?} to STATUS"))),
            Err(e) => Err(refused(format!("{new} does not answer: {e}"))),
        }
    }

    /// Gives `layout` to every worker in force; how many took it.
    async fn give_layout(&self, layout: &Layout) -> usize {
        let backends: Vec<_> = self.topology().pairs.iter().flatten().cloned().collect();
        let answers = join_all(
            backends
                .iter()
                .map(|b| {
                    let request = Arc::new(Request::Layout {
                        layout: Some(layout.clone()),
                        you: b.addr.clone(),
                    });
                    async move { b.call(request).await }
                })
                .collect(),
        )
        .await;
        answers
            .iter()
            .filter(|a| matches!(a, Ok(Response::Layout(Some(l))) if l == layout))
            .count()
    }
}
