//! Keys moving between pairs (`rcache cluster add-pair`, `remove-pair`),
//! as a worker takes part: driven by the workers, so the orchestrator that
//! started a change may die at any moment.
//!
//! A change goes through three layouts, each given by the orchestrators'
//! probes (any orchestrator moves it on, [`crate::orchestrator::layout`]):
//!
//! 1. *Copy* (`source` set): requests still go by the source. Each worker
//!    losing keys watches the keys written from now on ([`Watch`]), then
//!    sends every entry of a moving key to both workers of its new pair
//!    (`TAKE`, kept where newer: the order entries meet in does not
//!    matter), then sends again each key written since, over and over. It
//!    says `done` once every worker of every new pair had the whole pass.
//! 2. *Sealed*: the workers losing keys answer `TRYAGAIN` for them, under
//!    a gate no request holds across the change, so every write they took
//!    is in the watch; they send what the watch holds and say `done`.
//! 3. *Settled* (no source): requests go to the new pairs. A worker
//!    answers `MOVED` for a key it does not own, and drops those it holds
//!    (memory back); anti-entropy and refills bring it none.
//!
//! A worker restarted mid-way refills from its partner and gets the layout
//! back from the next probe: its pass starts over (sending again is
//! harmless), and the watch, set before the pass, catches what its refill
//! brings behind the pass.

use super::store::{Moving, Watch};
use super::Worker;
use crate::client::link::LinkConn;
use crate::client::ClientError;
use crate::hash::key_hash;
use crate::placement::Placement;
use crate::protocol::link::{
    placement_of, Entry, Handoff, Layout, Request, Response, REFILL_CHUNK_BYTES,
};
use crate::protocol::{ErrorCode, ErrorReply};
use crate::shutdown::Shutdown;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How long one `TAKE` may take.
const TAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a worker of a new pair could not be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often a handoff with nothing to send looks at its watch again.
const DRAIN_PAUSE: Duration = Duration::from_millis(20);

/// What the layout held makes of each key at this worker.
pub(super) struct Ownership {
    epoch: u64,
    target: Placement,
    /// This worker's pair in the layout's pairs.
    mine: Option<usize>,
    /// While keys move: the source's placement, this worker's pair there,
    /// and whether the move is sealed.
    source: Option<(Placement, Option<usize>, bool)>,
}

impl Ownership {
    pub(super) fn of(layout: &Layout, me: &str) -> Ownership {
        Ownership {
            epoch: layout.epoch,
            target: layout.placement(),
            mine: layout.find(me).map(|(i, _)| i),
            source: layout.source.as_ref().map(|s| {
                let mine = s.pairs.iter().position(|p| p.iter().any(|a| a == me));
                (placement_of(&s.pairs), mine, s.sealed)
            }),
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(super) fn sealed(&self) -> bool {
        self.source.as_ref().is_some_and(|s| s.2)
    }

    /// Whether keys are moving (requests then pass the gate).
    pub(super) fn moving(&self) -> bool {
        self.source.is_some()
    }

    /// Whether this worker serves `key` now: `MOVED` when another pair
    /// owns it, `TRYAGAIN` while it is sealed on its way out.
    pub(super) fn check(&self, key: &[u8]) -> Result<(), ErrorReply> {
        let h = key_hash(key);
        if self.mine == Some(self.target.locate_hash(h).pair) {
            return Ok(());
        }
        if let Some((source, Some(mine), sealed)) = &self.source {
            if source.locate_hash(h).pair == *mine {
                return if *sealed {
                    Err(ErrorReply::new(
                        ErrorCode::TryAgain,
                        format!(
                            "the key is moving to its new pair (layout epoch {}): try again",
                            self.epoch
                        ),
                    ))
                } else {
                    Ok(())
                };
            }
        }
        Err(ErrorReply::new(
            ErrorCode::Moved,
            format!(
                "the key belongs to another pair in the cluster's layout (epoch {})",
                self.epoch
            ),
        ))
    }
}

/// One migration as this worker sends its part: the pairs before and
/// after, and which keys leave it.
struct Plan {
    epoch: u64,
    sealed: bool,
    /// Where a moving key goes: its pair in the layout's pairs.
    target: Placement,
    pairs: Vec<[String; 2]>,
    /// This worker's pair in the source.
    here: [String; 2],
    moving: Moving,
}

impl Plan {
    fn of(layout: &Layout, me: &str) -> Option<Plan> {
        let source = layout.source.as_ref()?;
        let mine = source
            .pairs
            .iter()
            .position(|p| p.iter().any(|a| a == me))?;
        let from = placement_of(&source.pairs);
        let target = layout.placement();
        let pairs = layout.pairs.clone();
        let here = source.pairs[mine].clone();
        let (t, ps, h) = (target.clone(), pairs.clone(), here.clone());
        let moving: Moving = Arc::new(move |key: &[u8]| {
            let hash = key_hash(key);
            from.locate_hash(hash).pair == mine && ps[t.locate_hash(hash).pair] != h
        });
        Some(Plan {
            epoch: layout.epoch,
            sealed: source.sealed,
            target,
            pairs,
            here,
            moving,
        })
    }

    /// The same migration (a sealed layout follows its copy): the same
    /// keys move to the same workers.
    fn same_move(&self, other: &Plan) -> bool {
        self.pairs == other.pairs && self.target == other.target
    }

    fn destination(&self, key: &[u8]) -> &[String; 2] {
        &self.pairs[self.target.locate(key).pair]
    }
}

/// Runs this worker's part in every migration its layout makes, and drops
/// the keys it no longer owns once one settled, until `shutdown`.
pub(super) async fn run(worker: Arc<Worker>, mut shutdown: Shutdown) {
    let mut swept = 0;
    // The watch and the progress outlive a copy layout into its sealed
    // one: the seal sends only what was written since.
    let mut current: Option<(Plan, Arc<Watch>, Progress)> = None;
    let mut links: HashMap<String, LinkConn> = HashMap::new();
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let held = worker.held_layout();
        match held {
            Some((layout, me, generation)) if layout.source.is_some() => {
                if let Some(plan) = Plan::of(&layout, &me) {
                    let (watch, mut progress) = match current.take() {
                        Some((before, watch, progress)) if before.same_move(&plan) => {
                            (watch, progress)
                        }
                        _ => {
                            let watch = Watch::new(plan.moving.clone());
                            worker.store.watch(Some(watch.clone()));
                            (watch, Progress::of(&worker, &plan))
                        }
                    };
                    // Returns when the layout changes.
                    hand_off(
                        &worker,
                        &plan,
                        generation,
                        &watch,
                        &mut progress,
                        &mut links,
                        &mut shutdown,
                    )
                    .await;
                    current = Some((plan, watch, progress));
                    continue;
                }
                // Nothing of this worker moves.
                worker.set_handoff(
                    generation,
                    Some(Handoff {
                        epoch: layout.epoch,
                        done: true,
                        ..Handoff::default()
                    }),
                );
            }
            Some((layout, me, generation)) => {
                current = None;
                links.clear();
                worker.store.watch(None);
                worker.set_handoff(generation, None);
                worker.metrics.migration_keys_left.set(0);
                if layout.epoch != swept {
                    swept = layout.epoch;
                    sweep(&worker, &layout, &me).await;
                }
            }
            None => {}
        }
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = worker.layout_changed.notified() => {}
        }
    }
}

/// What one pass or drain sent.
#[derive(Default)]
struct Sent {
    keys: u64,
    bytes: u64,
}

/// How far one move got at this worker.
struct Progress {
    /// The workers of the new pairs this worker's keys go to.
    dests: Vec<String>,
    /// Those that had a whole pass since they last failed.
    complete: HashSet<String>,
    /// Keys that moved when the watch began.
    to_move: u64,
    moved: Sent,
}

impl Progress {
    /// Counts the keys that move, for the progress. Every worker of every
    /// other pair must have a pass: a pair none of the keys held now go to
    /// may be sent what is written while they move (a pass with nothing
    /// for it is complete at once).
    fn of(worker: &Worker, plan: &Plan) -> Progress {
        let store = &worker.store;
        let to_move: u64 = (0..store.shard_count())
            .map(|shard| store.count_where(shard, &*plan.moving))
            .sum();
        let dests = plan
            .pairs
            .iter()
            .filter(|p| **p != plan.here)
            .flatten()
            .filter(|a| !a.is_empty())
            .cloned()
            .collect();
        Progress {
            dests,
            complete: HashSet::new(),
            to_move,
            moved: Sent::default(),
        }
    }
}

/// Sends this worker's moving keys until the layout changes (or
/// `shutdown`): a whole pass to every worker of a new pair that did not
/// have one yet, then the keys written since, reporting progress.
async fn hand_off(
    worker: &Worker,
    plan: &Plan,
    generation: u64,
    watch: &Watch,
    progress: &mut Progress,
    links: &mut HashMap<String, LinkConn>,
    shutdown: &mut Shutdown,
) {
    let store = &worker.store;
    tracing::info!(
        epoch = plan.epoch,
        sealed = plan.sealed,
        keys = progress.to_move,
        workers = progress.dests.len(),
        "handing off the keys that move to other pairs"
    );
    loop {
        if worker.layout_generation.load(Ordering::SeqCst) != generation || shutdown.is_triggered()
        {
            return;
        }
        let need: Vec<String> = progress
            .dests
            .iter()
            .filter(|d| !progress.complete.contains(*d))
            .cloned()
            .collect();
        let mut failed = false;
        if !need.is_empty() {
            let (sent, ok) = pass(worker, plan, &need, links, progress.to_move).await;
            progress.moved.keys += sent.keys;
            progress.moved.bytes += sent.bytes;
            failed = ok.len() < need.len();
            progress.complete.extend(ok);
        }
        // A drain that began once the seal is in force sends every write
        // taken before it.
        let sealed_now = worker.held_sealed(plan.epoch);
        let keys = watch.take();
        if !keys.is_empty() {
            let entries: Vec<Entry> = keys.iter().filter_map(|k| store.handoff_entry(k)).collect();
            let (sent, clean) =
                send_entries(worker, plan, entries, &mut progress.complete, links).await;
            failed |= !clean;
            progress.moved.keys += sent.keys;
            progress.moved.bytes += sent.bytes;
        }
        let all = progress.dests.iter().all(|d| progress.complete.contains(d));
        let done = all && !failed && (!plan.sealed || sealed_now);
        let left = if all {
            watch.len() as u64
        } else {
            progress.to_move
        };
        worker.metrics.migration_keys_left.set(left as i64);
        worker.set_handoff(
            generation,
            Some(Handoff {
                epoch: plan.epoch,
                done,
                keys_moved: progress.moved.keys,
                bytes_moved: progress.moved.bytes,
                keys_left: left,
            }),
        );
        let pause = if failed { RETRY_PAUSE } else { DRAIN_PAUSE };
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = worker.layout_changed.notified() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One pass over the store: every entry of a moving key, to the workers
/// of `need` of its new pair. Returns what it sent and the workers that
/// had all of it.
async fn pass(
    worker: &Worker,
    plan: &Plan,
    need: &[String],
    links: &mut HashMap<String, LinkConn>,
    to_move: u64,
) -> (Sent, Vec<String>) {
    let store = &worker.store;
    let mut ok: HashSet<String> = need.iter().cloned().collect();
    let mut sent = Sent::default();
    for shard in 0..store.shard_count() {
        let mut cursor = Some(0);
        while let Some(at) = cursor {
            let mut chunk = Vec::new();
            cursor = store.scan(shard, at, REFILL_CHUNK_BYTES, &mut chunk);
            chunk.retain(|e| (plan.moving)(&e.key));
            if chunk.is_empty() {
                continue;
            }
            let (s, _) = send_entries(worker, plan, chunk, &mut ok, links).await;
            sent.keys += s.keys;
            sent.bytes += s.bytes;
            if ok.is_empty() {
                return (sent, Vec::new());
            }
            worker
                .metrics
                .migration_keys_left
                .set(to_move.saturating_sub(sent.keys) as i64);
        }
    }
    (sent, ok.into_iter().collect())
}

/// Sends `entries` to the workers in `to` of each one's new pair; a worker
/// that fails leaves `to`. Returns what reached at least one worker of its
/// pair, and whether nobody failed.
async fn send_entries(
    worker: &Worker,
    plan: &Plan,
    entries: Vec<Entry>,
    to: &mut HashSet<String>,
    links: &mut HashMap<String, LinkConn>,
) -> (Sent, bool) {
    let mut by_pair: HashMap<&[String; 2], Vec<Entry>> = HashMap::new();
    for entry in entries {
        by_pair
            .entry(plan.destination(&entry.key))
            .or_default()
            .push(entry);
    }
    let mut sent = Sent::default();
    let mut clean = true;
    for (pair, entries) in by_pair {
        let bytes: u64 = entries
            .iter()
            .map(|e| (e.key.len() + e.data.len()) as u64)
            .sum();
        let count = entries.len() as u64;
        let request = Request::Take { entries };
        let mut reached = false;
        let addrs: Vec<&String> = pair.iter().filter(|a| to.contains(*a)).collect();
        for addr in addrs {
            match take(worker, addr, &request, links).await {
                Ok(()) => reached = true,
                Err(e) => {
                    tracing::warn!(worker = %addr, error = %e, "could not hand keys to their new pair; will send them again");
                    links.remove(addr);
                    to.remove(addr);
                    clean = false;
                }
            }
        }
        if reached {
            sent.keys += count;
            sent.bytes += bytes;
            worker.metrics.migration_keys_moved.inc_by(count);
            worker.metrics.migration_bytes_moved.inc_by(bytes);
        }
    }
    (sent, clean)
}

async fn take(
    worker: &Worker,
    addr: &str,
    request: &Request,
    links: &mut HashMap<String, LinkConn>,
) -> Result<(), ClientError> {
    if !links.contains_key(addr) {
        let link = LinkConn::connect(addr, &worker.dial(), TAKE_TIMEOUT).await?;
        links.insert(addr.to_string(), link);
    }
    let Some(link) = links.get_mut(addr) else {
        return Err(ClientError::Closed);
    };
    match link.call(request, TAKE_TIMEOUT).await? {
        Response::Taken { .. } => Ok(()),
        Response::Error(e) => Err(ClientError::Refused {
            addr: addr.to_string(),
            reason: e.to_string(),
        }),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer to take: {other:?}"
        ))),
    }
}

/// Drops every key this worker does not own in `layout` (a settled one):
/// they live on their new pairs now.
async fn sweep(worker: &Worker, layout: &Layout, me: &str) {
    let target = layout.placement();
    let mine = layout.find(me).map(|(i, _)| i);
    let store = &worker.store;
    let mut dropped = 0u64;
    for shard in 0..store.shard_count() {
        let keys: Vec<Bytes> =
            store.keys_where(shard, &|key| mine != Some(target.locate(key).pair));
        for key in keys {
            // Owned again by now (a newer layout): kept.
            if worker.owns(&key) {
                continue;
            }
            dropped += u64::from(store.forget(&key));
        }
        tokio::task::yield_now().await;
    }
    if dropped > 0 {
        worker.metrics.migration_keys_dropped.inc_by(dropped);
        tracing::info!(
            epoch = layout.epoch,
            keys = dropped,
            in_layout = mine.is_some(),
            "dropped the keys that moved to other pairs"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::link::Source;

    fn pairs(names: &[&str]) -> Vec<[String; 2]> {
        names
            .iter()
            .map(|n| [format!("{n}:1"), format!("{n}:2")])
            .collect()
    }

    /// Adding pair `c` to `a`, `b`: each step as `a:1` and `c:1` see it.
    #[test]
    fn a_key_is_served_by_its_old_pair_until_the_move_settles() {
        let before = pairs(&["a", "b"]);
        let after = pairs(&["a", "b", "c"]);
        let step = |epoch, sealed: Option<bool>| Layout {
            epoch,
            pairs: after.clone(),
            source: sealed.map(|sealed| Source {
                pairs: before.clone(),
                sealed,
            }),
        };
        let target = placement_of(&after);
        let from = placement_of(&before);
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| target.locate(k.as_bytes()).pair == 2 && from.locate(k.as_bytes()).pair == 0)
            .unwrap_or_default();
        let key = key.as_bytes();
        let code = |o: &Ownership| o.check(key).err().map(|e| e.code);
        let (copy, sealed, settled) = (step(1, Some(false)), step(2, Some(true)), step(3, None));
        // The losing worker: serves it, then asks to try again, then says moved.
        assert_eq!(code(&Ownership::of(&copy, "a:1")), None);
        assert_eq!(
            code(&Ownership::of(&sealed, "a:1")),
            Some(ErrorCode::TryAgain)
        );
        assert_eq!(
            code(&Ownership::of(&settled, "a:1")),
            Some(ErrorCode::Moved)
        );
        // The new owner serves it at every step; a pair it never was on
        // says moved.
        for l in [&copy, &sealed, &settled] {
            assert_eq!(code(&Ownership::of(l, "c:1")), None);
            assert_eq!(code(&Ownership::of(l, "b:1")), Some(ErrorCode::Moved));
        }
        // Only the losing worker moves it, and only there.
        let plan = Plan::of(&copy, "a:2").expect("a loses keys");
        assert!((plan.moving)(key));
        assert_eq!(plan.destination(key), &after[2]);
        let stays = Plan::of(&copy, "b:1").expect("b is in the source");
        assert!(!(stays.moving)(key));
        assert!(Plan::of(&copy, "c:1").is_none(), "c loses nothing");
        assert!(Plan::of(&settled, "a:1").is_none());
    }

    /// Removing the middle pair: a worker of it serves nothing once settled.
    #[test]
    fn a_removed_pair_serves_nothing_once_settled() {
        let before = pairs(&["a", "b", "c"]);
        let mut after = before.clone();
        after[1] = crate::protocol::link::hole();
        let settled = Layout::settled(5, after.clone());
        let gone = Ownership::of(&settled, "b:1");
        let kept = Ownership::of(&settled, "a:1");
        for i in 0..200 {
            let key = format!("k{i}");
            assert_eq!(
                gone.check(key.as_bytes()).err().map(|e| e.code),
                Some(ErrorCode::Moved)
            );
            let owner = placement_of(&after).locate(key.as_bytes()).pair;
            assert_ne!(owner, 1, "{key} placed in the hole");
            assert_eq!(kept.check(key.as_bytes()).is_ok(), owner == 0, "{key}");
        }
    }
}
