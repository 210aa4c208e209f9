//! The cluster's layout: the pairs in placement order and an epoch, held
//! by every worker and gossiped by the health probes. An orchestrator
//! places keys by the layout with the highest epoch it has seen; its
//! config's `workers` are the pairs in force until it learned one, and the
//! seed it learns it from (the first probes, before it serves). A change
//! (`cluster||replace-worker`) is made by one orchestrator under the next
//! epoch and given to every worker; the others take it from their next
//! probe, within one `health_interval`, and workers take the partner it
//! names for them.
//!
//! `cluster||add-pair` and `cluster||remove-pair` move keys: the next
//! epoch names the pairs after the change and, as its source, the pairs
//! before; requests go by the source while the workers losing keys hand
//! them over ([`crate::worker`]'s `migrate`). Every orchestrator moves the
//! change on ([`Router::advance_migration`]): once every worker of the
//! source says its part is done, the next epoch seals the move; once
//! they say the seal's part is done, the next settles it (no source).
//! Each step is the same whoever makes it, so orchestrators that make it
//! at once agree, and one killed mid-way leaves the others to go on.

use super::pool::{Backend, Health};
use super::Router;
use crate::client::link::LinkConn;
use crate::join::join_all;
use crate::protocol::link::{
    hole, is_hole, Layout, Request, Response, Source, WorkerState, HASH_LINK_VERSION,
    MAX_LAYOUT_PAIRS,
};
use crate::protocol::{ErrorCode, ErrorReply};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often an orchestrator asks the workers how a migration goes.
pub const MIGRATION_TICK: Duration = Duration::from_millis(50);

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

fn migrating(layout: &Layout) -> ErrorReply {
    refused(format!(
        "keys are moving between pairs (epoch {}): wait for it (`rcache cluster wait`), then \
         run the command again",
        layout.epoch
    ))
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
        let serving = layout.serving();
        let joining: Vec<String> = layout
            .workers()
            .into_iter()
            .filter(|a| layout.find_serving(a).is_none())
            .map(str::to_string)
            .collect();
        if let Some((pairs_before, pairs, added, removed)) =
            self.install_pairs(serving, &joining, Some(&layout))
        {
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

    /// Follows layout changes the probes learn of, and moves migrations
    /// on, until the router is dropped or `shutdown`.
    pub async fn follow_layouts(self: Arc<Self>, mut shutdown: crate::shutdown::Shutdown) {
        loop {
            let moving = self
                .probe
                .layouts
                .current()
                .is_some_and(|l| l.source.is_some());
            let tick = async {
                if moving {
                    tokio::time::sleep(MIGRATION_TICK).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = self.probe.layouts.changed() => self.follow_layout(),
                _ = tick => {
                    self.advance_migration().await;
                }
            }
        }
    }

    /// Gives `layout` to `backends` (the layout held, for a newer one of
    /// theirs), records each one's part in the migration (none for one
    /// that did not answer) and offers what they hold; how many hold
    /// exactly `layout` after.
    pub(super) async fn exchange(
        &self,
        backends: &[Arc<Backend>],
        layout: Option<&Layout>,
    ) -> usize {
        let answers = join_all(
            backends
                .iter()
                .map(|b| {
                    let request = Arc::new(Request::Layout {
                        layout: layout.cloned(),
                        you: b.addr.clone(),
                    });
                    async move { b.call(request).await }
                })
                .collect(),
        )
        .await;
        let mut holding = 0;
        for (backend, answer) in backends.iter().zip(answers) {
            match answer {
                Ok(Response::Layout {
                    layout: held,
                    handoff,
                }) => {
                    backend.set_handoff(handoff);
                    if let Some(held) = held {
                        holding += usize::from(Some(&held) == layout);
                        self.probe.layouts.offer(held);
                    }
                }
                _ => backend.set_handoff(None),
            }
        }
        holding
    }

    /// Takes the layout (and each one's part in a migration) from every
    /// worker: after one answered `MOVED`, and for `cluster`. Only when
    /// the layout held is still `seen`'s: one fetch serves every request
    /// that was told so at once. Whether the layout changed.
    pub(super) async fn learn_layout(&self, seen: u64) -> bool {
        let _one = self.learning.lock().await;
        if self.probe.layouts.epoch() == seen {
            let backends: Vec<_> = self.topology().workers().cloned().collect();
            let held = self.probe.layouts.current();
            self.exchange(&backends, held.as_ref()).await;
        }
        self.follow_layout();
        self.probe.layouts.epoch() != seen
    }

    /// Moves a migration on when every worker of its source has done its
    /// part: copied, to sealed; sealed, to settled. Any orchestrator may:
    /// the next layout is the same whoever makes it. Each worker must have
    /// said so just now: a worker that is down may hold writes its partner
    /// missed, which it hands over once it is back.
    pub async fn advance_migration(&self) {
        let Some(layout) = self.probe.layouts.current() else {
            return;
        };
        let Some(source) = &layout.source else {
            return;
        };
        let topology = self.topology();
        let backends: Vec<_> = topology.workers().cloned().collect();
        self.exchange(&backends, Some(&layout)).await;
        if self.probe.layouts.current().as_ref() != Some(&layout) {
            self.follow_layout();
            return;
        }
        let done = topology.pairs.iter().flatten().all(|b| {
            b.handoff()
                .is_some_and(|h| h.epoch == layout.epoch && h.done)
        });
        if !done {
            return;
        }
        let next = if source.sealed {
            Layout::settled(layout.epoch + 1, layout.pairs.clone())
        } else {
            Layout {
                epoch: layout.epoch + 1,
                pairs: layout.pairs.clone(),
                source: Some(Source {
                    pairs: source.pairs.clone(),
                    sealed: true,
                }),
            }
        };
        if !self.probe.layouts.offer(next.clone()) {
            return;
        }
        // Every worker of the move hears of the next step before this
        // orchestrator routes by it (a settled layout retires the workers
        // of a removed pair).
        let told = self.exchange(&backends, Some(&next)).await;
        self.follow_layout();
        tracing::warn!(
            epoch = next.epoch,
            told,
            workers = backends.len(),
            step = if source.sealed { "settled" } else { "sealed" },
            "migration moved on"
        );
    }

    /// The layout in force after asking every worker for the one it
    /// holds: a change is made on the newest layout any worker knows, not
    /// on what this orchestrator last heard, so two changes made through
    /// two orchestrators a moment apart build on each other.
    async fn fresh_layout(&self) -> Layout {
        self.learn_layout(self.probe.layouts.epoch()).await;
        self.layout()
    }

    /// The layout in force: the cluster's, or the config's pairs as epoch 0.
    pub fn layout(&self) -> Layout {
        self.probe.layouts.current().unwrap_or_else(|| {
            Layout::settled(
                0,
                self.topology()
                    .pairs
                    .iter()
                    .map(|[a, b]| [a.addr.clone(), b.addr.clone()])
                    .collect(),
            )
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
        let base = self.fresh_layout().await;
        if base.source.is_some() {
            return Err(migrating(&base));
        }
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
        self.changeable(&[new], Some(old))?;
        self.ready_to_replace(new).await?;
        let mut next = base.clone();
        next.epoch = base.epoch + 1;
        next.pairs[pair][place] = new.to_string();
        let told = self.commit(&base, &next).await?;
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
            next.workers().len()
        ))
    }

    /// What every change of the layout needs: every worker of this
    /// release (but `leaving`, a dead worker being replaced, which this
    /// orchestrator may never have reached), and a way to hand
    /// `newcomers` the token safely.
    fn changeable(&self, newcomers: &[&str], leaving: Option<&str>) -> Result<(), ErrorReply> {
        let topology = self.topology();
        if let Some(old_release) = topology
            .workers()
            .filter(|b| Some(b.addr.as_str()) != leaving)
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
            // A newcomer is not in the layout yet: nothing shows it is a
            // worker of this cluster but a certificate from the cluster's CA.
            return Err(refused(format!(
                "{} would be sent the cluster_token over a link that cannot verify it: \
                 changing the layout needs TLS links (tls.ca) when links carry a token",
                newcomers.join(" and ")
            )));
        }
        Ok(())
    }

    /// Puts `next` (made from `base`) in force and gives it to every
    /// worker; how many took it.
    async fn commit(&self, base: &Layout, next: &Layout) -> Result<usize, ErrorReply> {
        if self.layout() != *base {
            return Err(refused(
                "the cluster's layout changed meanwhile: nothing was changed; look at \
                 `rcache cluster` and run the command again"
                    .to_string(),
            ));
        }
        if !self.probe.layouts.offer(next.clone()) {
            return Err(refused(
                "another change of the layout came first: nothing was changed".to_string(),
            ));
        }
        self.follow_layout();
        let told = self.give_layout(next).await;
        if self.probe.layouts.current().as_ref() != Some(next) {
            return Err(refused(format!(
                "another orchestrator changed the layout at epoch {} at the same moment, and \
                 its change is the one in force: `rcache cluster` shows it",
                next.epoch
            )));
        }
        Ok(told)
    }

    /// Every worker of the layout is up (a move needs both workers of
    /// each pair to hand keys over and take them).
    fn all_up(&self) -> Result<(), ErrorReply> {
        match self.topology().workers().find(|b| b.health() != Health::Up) {
            Some(b) => Err(refused(format!(
                "{} is {}: keys move only while every worker is up",
                b.addr,
                b.health().name()
            ))),
            None => Ok(()),
        }
    }

    /// Adds the pair `a`, `b` (two new, empty workers, partners of each
    /// other): the keys it takes over move to it while every pair serves.
    pub async fn add_pair(&self, a: &str, b: &str) -> Result<String, ErrorReply> {
        for addr in [a, b] {
            if let Err(e) = crate::net::check_address(addr) {
                return Err(refused(format!("{addr:?} is not a worker address: {e}")));
            }
        }
        if a == b {
            return Err(refused(format!("{a} twice: a pair is two workers")));
        }
        let base = self.fresh_layout().await;
        if base.source.is_some() {
            return Err(migrating(&base));
        }
        if let Some(known) = [a, b].into_iter().find(|w| base.find(w).is_some()) {
            return Err(refused(format!(
                "{known} is in the cluster's layout already"
            )));
        }
        self.changeable(&[a, b], None)?;
        self.all_up()?;
        for addr in [a, b] {
            self.ready_to_join(addr).await?;
        }
        let mut pairs = base.pairs.clone();
        let place = match pairs.iter().position(is_hole) {
            Some(i) => {
                pairs[i] = [a.to_string(), b.to_string()];
                i
            }
            None if pairs.len() >= MAX_LAYOUT_PAIRS => {
                return Err(refused(format!(
                    "the layout holds {MAX_LAYOUT_PAIRS} pairs at most"
                )))
            }
            None => {
                pairs.push([a.to_string(), b.to_string()]);
                pairs.len() - 1
            }
        };
        let next = base.moving_to(pairs);
        let told = self.commit(&base, &next).await?;
        tracing::warn!(epoch = next.epoch, pair = place, %a, %b, told, "adding a pair: keys move to it");
        Ok(format!(
            "epoch={} pair={place} added={a},{b} told={told}/{}",
            next.epoch,
            next.workers().len()
        ))
    }

    /// Removes the pair of `addr`: its keys move to the other pairs, then
    /// its workers drop them and leave the layout (a hole keeps the other
    /// pairs' places).
    pub async fn remove_pair(&self, addr: &str) -> Result<String, ErrorReply> {
        let base = self.fresh_layout().await;
        if base.source.is_some() {
            return Err(migrating(&base));
        }
        let Some((place, _)) = base.find(addr) else {
            return Err(refused(format!(
                "{addr} is not a worker of the cluster's layout"
            )));
        };
        if base.live_pairs() < 2 {
            return Err(refused(
                "the cluster's only pair cannot be removed: its keys would have nowhere to go"
                    .to_string(),
            ));
        }
        self.changeable(&[], None)?;
        self.all_up()?;
        let mut pairs = base.pairs.clone();
        let [x, y] = std::mem::replace(&mut pairs[place], hole());
        let next = base.moving_to(pairs);
        let told = self.commit(&base, &next).await?;
        tracing::warn!(epoch = next.epoch, pair = place, %x, %y, told, "removing a pair: its keys move to the others");
        Ok(format!(
            "epoch={} pair={place} removed={x},{y} told={told}/{}",
            next.epoch,
            next.workers().len()
        ))
    }

    /// Checks that a worker of a new pair answers, is ready and holds
    /// nothing (what it held could come back over the keys moved to it).
    async fn ready_to_join(&self, addr: &str) -> Result<(), ErrorReply> {
        match self.status_of(addr).await? {
            Response::Status {
                state: WorkerState::Ready,
                entries: 0,
                ..
            } => Ok(()),
            Response::Status {
                state: WorkerState::Ready,
                entries,
                ..
            } => Err(refused(format!(
                "{addr} holds {entries} entries: a new pair starts empty (restart it without data)"
            ))),
            Response::Status { state, .. } => Err(refused(format!(
                "{addr} is {}: wait until it is ready",
                state.name()
            ))),
            other => Err(refused(format!("{addr} answered {other:?} to STATUS"))),
        }
    }

    /// STATUS of a worker outside the layout, over a link of its own; a
    /// worker of the previous release (which holds no layout) is refused.
    async fn status_of(&self, addr: &str) -> Result<Response, ErrorReply> {
        let dial = self.settings.dial.load_full();
        let timeout = self.worker_timeout().max(std::time::Duration::from_secs(1));
        let status = async {
            let mut link = LinkConn::connect(addr, &dial, timeout).await?;
            let version = link.version();
            link.call(&Request::Status, timeout)
                .await
                .map(|status| (version, status))
        };
        match status.await {
            Ok((version, _)) if version < HASH_LINK_VERSION => Err(refused(format!(
                "{addr} runs the previous release (link protocol {version}), which holds no \
                 layout: upgrade it first"
            ))),
            Ok((_, status)) => Ok(status),
            Err(e) => Err(refused(format!("{addr} does not answer: {e}"))),
        }
    }

    /// Checks that `new` answers and has refilled.
    async fn ready_to_replace(&self, new: &str) -> Result<(), ErrorReply> {
        let status = self.status_of(new).await;
        match status {
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
            Err(e) => Err(e),
        }
    }

    /// Gives `layout` to every worker in force; how many took it.
    async fn give_layout(&self, layout: &Layout) -> usize {
        let backends: Vec<_> = self.topology().workers().cloned().collect();
        self.exchange(&backends, Some(layout)).await
    }
}
