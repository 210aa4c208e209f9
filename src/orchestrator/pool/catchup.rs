//! Catch-up: a write the worker did not confirm (it was down, failed or
//! timed out) while its partner stored it is a *miss*. The worker is then
//! `Behind` (no reads from it while its partner can serve) and the write is
//! queued as a *hint*, up to `max_hint_bytes`. When a probe finds the worker
//! reachable, the hints are delivered (versions make replay idempotent and
//! order-free: an `expire` applies only to the version it was read at). `Behind` ends when
//! - every hint was delivered and none was dropped for lack of room, or
//! - the worker completed two anti-entropy rounds after the first probe
//!   that followed the miss (a round then began after the miss, and it
//!   copies whatever the partner held: anti-entropy is the safety net when
//!   hints overflowed or another orchestrator's writes were missed), or
//! - a new process of it appeared after that probe (it refilled from its
//!   partner).

use super::{Backend, Health, CATCHUP_ROUNDS, HINT_BATCH, HINT_OVERHEAD_BYTES};
use crate::client::ClientError;
use crate::protocol::fields::Fields;
use crate::protocol::link::Request;
use crate::protocol::SetWhen;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Workers of a pair whose serving began within this of each other (they
/// started together) are not told apart by [`Backend::decider`]: the
/// orchestrators' estimates of how long each has served differ by the
/// time their probes took.
pub const SERVING_TIE: Duration = Duration::from_secs(1);

/// [`Backend`]'s `serving_from` of a worker not serving (or not probed).
pub(super) const NOT_SERVING: i64 = i64::MIN;

/// How a worker catches up on writes it missed (see the module doc).
#[derive(Debug, Default)]
pub(super) struct Catchup {
    /// The worker may lack an acknowledged write.
    pub(super) behind: bool,
    pub(super) hints: VecDeque<Hint>,
    pub(super) hint_bytes: usize,
    /// A hint was dropped for lack of room since the worker fell behind.
    pub(super) overflowed: bool,
    /// A probe after the last miss has not answered yet.
    pub(super) awaiting_probe: bool,
    /// (incarnation, rounds to reach) from the first probe after the miss.
    pub(super) target: Option<(u64, u64)>,
    /// The state the last probe reported (`Up` or `Loading`).
    pub(super) probed: Option<Health>,
    /// It was unreachable from here since it was last caught up: only
    /// anti-entropy (or a restart) can catch it up, not hints.
    pub(super) unreached: bool,
}

impl Catchup {
    pub(super) fn caught_up(&mut self) {
        self.behind = false;
        self.overflowed = false;
        self.unreached = false;
        self.awaiting_probe = false;
        self.target = None;
    }
}

/// A write kept for a worker that missed it. Its key and value are copied
/// into one buffer of its own: a request's bytes are slices of the client's
/// read buffer, and a kept slice would keep that whole buffer (16 KiB or
/// more per small write) for as long as the hint waits. Its TTL is kept as
/// a deadline on this process's monotonic clock, so a hint delivered after
/// a long outage does not live longer than the write it stands for, and
/// one whose deadline passed is delivered as a delete of its version
/// (an expiry is as final as a delete).
#[derive(Debug)]
pub(super) struct Hint {
    pub(super) version: u64,
    pub(super) kind: HintKind,
    pub(super) key_len: u32,
    /// The key, then the value (a set's).
    pub(super) data: Box<[u8]>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum HintKind {
    Set {
        expires_at: Option<Instant>,
    },
    Del,
    /// The TTL an `expire` gave the entry at `version`.
    Expire {
        expires_at: Instant,
    },
    /// Field writes of a hash at `version` (`HSET`, `HDEL`), the value
    /// their encoding ([`Fields`]).
    Fields,
}

impl Hint {
    /// The hint for a missed write (`None` for requests that write
    /// nothing). A conditional set is hinted as the unconditional set it
    /// became where it applied.
    pub(super) fn new(request: &Request, now: Instant) -> Option<Hint> {
        let deadline = |ttl_ms: u64| now + Duration::from_millis(ttl_ms);
        let (version, kind, key, value): (u64, HintKind, &[u8], &[u8]) = match request {
            Request::Set {
                version,
                ttl_ms,
                key,
                value,
                ..
            } => (
                *version,
                HintKind::Set {
                    expires_at: (*ttl_ms > 0).then(|| deadline(*ttl_ms)),
                },
                key,
                value,
            ),
            Request::Del { version, key } => (*version, HintKind::Del, key, &[]),
            Request::Expire {
                version,
                ttl_ms,
                key,
            } => (
                *version,
                HintKind::Expire {
                    expires_at: deadline(*ttl_ms),
                },
                key,
                &[],
            ),
            // A decided field's condition only guards its first delivery.
            Request::HSet {
                version,
                key,
                fields,
                ..
            } => {
                let encoded = Fields::writes(*version, fields.iter().cloned()).to_bytes();
                return Some(Hint::packed(*version, HintKind::Fields, key, &encoded));
            }
            _ => return None,
        };
        Some(Hint::packed(version, kind, key, value))
    }

    /// A hint of `kind` holding `key` and `value` in one allocation.
    fn packed(version: u64, kind: HintKind, key: &[u8], value: &[u8]) -> Hint {
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        Hint {
            version,
            kind,
            key_len: key.len() as u32,
            data: data.into_boxed_slice(),
        }
    }

    /// What this hint costs against `max_hint_bytes`.
    pub(super) fn charge(&self) -> usize {
        HINT_OVERHEAD_BYTES + self.data.len()
    }

    /// The request that delivers this hint at `now`.
    pub(super) fn request(&self, now: Instant) -> Request {
        let data = Bytes::copy_from_slice(&self.data);
        let key = data.slice(..self.key_len as usize);
        let remaining_ms = |at: Instant| {
            let left = at.saturating_duration_since(now);
            (!left.is_zero()).then(|| (left.as_millis() as u64).max(1))
        };
        match self.kind {
            HintKind::Set { expires_at } => match expires_at.map(remaining_ms) {
                Some(None) => Request::Del {
                    version: self.version,
                    key,
                },
                ttl => Request::Set {
                    version: self.version,
                    ttl_ms: ttl.flatten().unwrap_or(0),
                    value: data.slice(self.key_len as usize..),
                    key,
                    when: SetWhen::Always,
                },
            },
            HintKind::Del => Request::Del {
                version: self.version,
                key,
            },
            HintKind::Fields => Request::HSet {
                version: self.version,
                key,
                // Encoded from a request when the hint was taken.
                fields: Fields::decode(&data.slice(self.key_len as usize..))
                    .map(|f| f.all().map(|(n, f)| (n.clone(), f.value.clone())).collect())
                    .unwrap_or_default(),
                base: None,
            },
            HintKind::Expire { expires_at } => match remaining_ms(expires_at) {
                Some(ttl_ms) => Request::Expire {
                    version: self.version,
                    ttl_ms,
                    key,
                },
                // The entry the expire was for is gone by now: so is it
                // here (the expire's version is the one after it).
                None => Request::Del {
                    version: crate::version::after(self.version),
                    key,
                },
            },
        }
    }
}

impl Backend {
    /// Records that a probe answered or failed, and what the worker said
    /// of its partner (`None`: no answer).
    pub fn probe_done(&self, partner_behind: Option<bool>) {
        if let Some(behind) = partner_behind {
            let was = self.partner_behind.swap(behind, Ordering::Relaxed);
            if was != behind {
                tracing::info!(
                    worker = %self.addr,
                    "the worker says its partner {}",
                    if behind { "missed writes stored here: reads come here" } else { "has every write stored here" }
                );
            }
        }
        if partner_behind.is_some() && !self.probed_once.swap(true, Ordering::Release) {
            self.probe_seen.notify_waiters();
        }
    }

    /// Marks the worker down unless a probe has answered (checked under the
    /// catch-up lock, which [`Backend::probed`] holds while it records an
    /// answer, so an answer arriving now is not overwritten). Returns
    /// whether it was marked down.
    pub fn down_unless_answered(&self) -> bool {
        let c = self.catchup();
        if c.probed.is_some() {
            return false;
        }
        self.set_health(Health::Down);
        true
    }

    /// Whether a probe has answered yet.
    pub fn answered(&self) -> bool {
        self.probed_once.load(Ordering::Acquire)
    }

    /// Returns once a probe has answered.
    pub async fn first_probe(&self) {
        let seen = self.probe_seen.notified();
        if self.probed_once.load(Ordering::Acquire) {
            return;
        }
        seen.await;
    }

    /// Whether the worker said (in its last probe) that its partner missed
    /// a write stored on it.
    pub fn says_partner_behind(&self) -> bool {
        self.partner_behind.load(Ordering::Relaxed)
    }

    /// Whether worker `i`'s partner, reachable and serving reads (up, or
    /// behind on writes of its own), says `i` missed a write stored there
    /// (told by any orchestrator, so this one learns of writes it did not
    /// see fail).
    pub(super) fn claimed_behind(pair: &[Arc<Backend>; 2], i: usize) -> bool {
        let partner = &pair[1 - i];
        matches!(partner.health(), Health::Up | Health::Behind) && partner.says_partner_behind()
    }

    /// Worker `i`'s health as reads and conditional writes see it: one
    /// that is up is `Behind` while its partner claims it missed a write
    /// (see [`Backend::claimed_behind`]).
    pub fn standing(pair: &[Arc<Backend>; 2], i: usize) -> Health {
        let health = pair[i].health();
        if health == Health::Up && Backend::claimed_behind(pair, i) {
            Health::Behind
        } else {
            health
        }
    }

    /// The order in which a read of a key whose first choice is `first`
    /// tries the pair: a worker that is up goes first, then one that is
    /// behind (it may lack a few writes, and gets its hints first; or its
    /// partner says it missed one), then one loading; one believed down is
    /// still tried last, in case it is back before the probe noticed (it
    /// may have missed any number of writes). Between two of the same
    /// standing, one that its partner says missed a write goes second.
    pub fn read_order(pair: &[Arc<Backend>; 2], first: usize) -> [usize; 2] {
        let rank = |i: usize| {
            let standing = match Backend::standing(pair, i) {
                Health::Up => 0,
                Health::Behind => 1,
                Health::Loading => 2,
                Health::Down => 3,
            };
            (standing, Backend::claimed_behind(pair, i))
        };
        let (a, b) = (first, 1 - first);
        if rank(b) < rank(a) {
            [b, a]
        } else {
            [a, b]
        }
    }

    /// Whether worker `i` may decide a conditional write for the pair: it
    /// is up, and its partner does not say it missed a write.
    pub fn can_decide(pair: &[Arc<Backend>; 2], i: usize) -> bool {
        Backend::standing(pair, i) == Health::Up
    }

    /// The worker of `pair` that decides a conditional write or a
    /// read-modify-write of a key whose first choice is `first` (the
    /// worker reads go to), if any can: `first` if it can, unless it has
    /// served for less than `settle` since it came back and its partner,
    /// which can too, has served longer (by [`SERVING_TIE`] at least: two
    /// workers started together both decide their own keys from the
    /// start). How long a worker has served is
    /// counted from a moment the worker itself reports, the same for every
    /// orchestrator, so all of them hand a returning worker its keys back
    /// at once, `settle` after it came back: by then every orchestrator has
    /// seen it up. (Two orchestrators picking different deciders for one
    /// key make its updates' outcomes unknown.)
    pub fn decider(pair: &[Arc<Backend>; 2], first: usize, settle: Duration) -> Option<usize> {
        let other = 1 - first;
        match (
            Backend::can_decide(pair, first),
            Backend::can_decide(pair, other),
        ) {
            (true, true) => {
                let (mine, theirs) = (pair[first].serving_for(), pair[other].serving_for());
                let came_back = mine < settle && theirs >= mine + SERVING_TIE;
                Some(if came_back { other } else { first })
            }
            (true, false) => Some(first),
            (false, true) => Some(other),
            (false, false) => None,
        }
    }

    /// Records how long the worker has served, from a probe's answer.
    pub fn serving(&self, serving_ms: u64) {
        let now = self.created.elapsed().as_millis() as i64;
        let from = match serving_ms {
            0 => NOT_SERVING,
            // Before this orchestrator started, maybe: negative.
            ms => now.saturating_sub(i64::try_from(ms).unwrap_or(i64::MAX)),
        };
        self.serving_from.store(from, Ordering::Relaxed);
    }

    /// How long the worker has served without a break, as its probes tell
    /// (zero when not serving or not probed yet).
    pub fn serving_for(&self) -> Duration {
        match self.serving_from.load(Ordering::Relaxed) {
            NOT_SERVING => Duration::ZERO,
            from => {
                let now = self.created.elapsed().as_millis() as i64;
                Duration::from_millis(now.saturating_sub(from).max(0) as u64)
            }
        }
    }

    pub(super) fn catchup(&self) -> std::sync::MutexGuard<'_, Catchup> {
        // Every update of `Catchup` completes before it could panic.
        self.catchup.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that this worker may lack an acknowledged write `request`:
    /// it serves no reads while its partner can, and the write is kept as
    /// a hint for when it is reachable again (see the module doc).
    pub fn missed_write(&self, request: &Request) {
        let hint = Hint::new(request, Instant::now());
        let mut c = self.catchup();
        if !c.behind {
            tracing::warn!(worker = %self.addr, "worker missed an acknowledged write; no reads from it until it catches up");
        }
        c.behind = true;
        c.awaiting_probe = true;
        c.target = None;
        let size = hint.as_ref().map_or(0, Hint::charge);
        if c.hint_bytes + size <= self.max_hint_bytes {
            if let Some(hint) = hint {
                c.hint_bytes += size;
                c.hints.push_back(hint);
            }
        } else {
            self.metrics.hints_dropped.inc();
            if !c.overflowed {
                c.overflowed = true;
                tracing::warn!(worker = %self.addr, max_hint_bytes = self.max_hint_bytes, "hint queue full; anti-entropy will repair the rest");
            }
        }
        // Under the catch-up lock, like every change between behind and
        // up, so a concurrent probe cannot write `Up` over it.
        if self.health() != Health::Down {
            self.set_health(Health::Behind);
        }
    }

    /// Whether this worker is known to lack acknowledged writes that no
    /// hint holds (its hint queue overflowed) and has not caught up since:
    /// a read it served could return a value older than one acknowledged.
    pub fn known_stale(&self) -> bool {
        let c = self.catchup();
        c.behind && c.overflowed
    }

    /// Applies a probe's answer: the worker is reachable in `healthy`
    /// state (`Up`, `Loading`, or `Behind` for a worker that says it is
    /// incomplete) as process `incarnation`, having completed
    /// `synced` anti-entropy rounds. Returns whether hints wait to be
    /// delivered (the caller spawns [`Backend::deliver_hints`]).
    pub fn probed(&self, healthy: Health, incarnation: u64, entries: u64, synced: u64) -> bool {
        self.entries.store(entries, Ordering::Relaxed);
        self.synced.store(synced, Ordering::Relaxed);
        let mut c = self.catchup();
        c.probed = Some(healthy);
        if self.health() == Health::Down {
            // Unreachable from here, so maybe from other orchestrators
            // too: it may lack writes they (or this orchestrator's former
            // process, whose hints died with it) acknowledged, which no
            // hint here covers. Only anti-entropy after now proves it
            // holds them.
            if !c.behind {
                tracing::info!(worker = %self.addr, "worker reachable again; no reads from it until anti-entropy with its partner confirms it missed nothing");
            }
            c.behind = true;
            c.unreached = true;
            c.awaiting_probe = false;
            c.target = Some((incarnation, synced.saturating_add(CATCHUP_ROUNDS)));
        } else if c.behind {
            if c.awaiting_probe {
                c.awaiting_probe = false;
                c.target = Some((incarnation, synced.saturating_add(CATCHUP_ROUNDS)));
            } else if let Some((then, rounds)) = c.target {
                if incarnation != then || synced >= rounds {
                    let how = if incarnation != then {
                        "it restarted and refilled"
                    } else {
                        "anti-entropy with its partner"
                    };
                    tracing::info!(worker = %self.addr, "worker caught up ({how})");
                    c.caught_up();
                }
            }
        }
        let deliver = !c.hints.is_empty();
        let health = if c.behind && healthy == Health::Up {
            Health::Behind
        } else {
            healthy
        };
        self.set_health(health);
        deliver
    }

    /// Delivers the hints in the background unless a delivery runs already
    /// (a probe found the worker reachable).
    pub async fn deliver_hints(self: Arc<Self>, timeout: Duration) {
        if let Ok(_delivery) = self.delivery.try_lock() {
            let _ = self.send_hints(timeout).await;
        }
    }

    /// Delivers every hint before returning (or fails): a read that must
    /// go to this worker because its partner cannot serve calls this first,
    /// so it sees every write acknowledged while this worker was away.
    ///
    /// A delivery under way (a probe's) holds hints it took off the queue
    /// until the worker answers them, so an empty queue alone does not mean
    /// they arrived: the read waits for that delivery first.
    pub async fn flush_hints(&self, timeout: Duration) -> Result<(), ClientError> {
        // A long delivery (many hints to a slow worker) is not waited on
        // past `timeout`: the read fails over instead.
        let Ok(_delivery) = tokio::time::timeout(timeout, self.delivery.lock()).await else {
            return Err(ClientError::Timeout(timeout));
        };
        if self.catchup().hints.is_empty() {
            return Ok(());
        }
        self.send_hints(timeout).await
    }

    /// Sends the queued hints, a pipelined batch at a time, until none is
    /// left or the worker fails again (what was not delivered stays queued).
    pub(super) async fn send_hints(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut delivered = 0usize;
        loop {
            let batch: Vec<Hint> = {
                let mut c = self.catchup();
                if c.hints.is_empty() {
                    if c.behind && c.unreached && delivered > 0 {
                        tracing::info!(worker = %self.addr, delivered, "hints delivered; reads wait for anti-entropy to confirm the worker missed nothing else");
                    }
                    if c.behind && !c.overflowed && !c.unreached {
                        c.caught_up();
                        tracing::info!(worker = %self.addr, delivered, "worker caught up (hints delivered)");
                        if let Some(health) = c.probed {
                            if self.health() == Health::Behind {
                                self.set_health(health);
                            }
                        }
                    }
                    return Ok(());
                }
                let n = c.hints.len().min(HINT_BATCH);
                let batch: Vec<Hint> = c.hints.drain(..n).collect();
                c.hint_bytes -= batch.iter().map(Hint::charge).sum::<usize>();
                batch
            };
            let mut receivers = Vec::with_capacity(batch.len());
            let now = Instant::now();
            for hint in &batch {
                receivers.push(self.enqueue(Arc::new(hint.request(now)), now + timeout));
            }
            let mut failed = None;
            for (i, rx) in receivers.into_iter().enumerate() {
                let result = match rx {
                    Err(e) => Err(e),
                    Ok(rx) => match tokio::time::timeout(timeout, rx).await {
                        Err(_) => Err(ClientError::Timeout(timeout)),
                        Ok(Err(_)) => Err(ClientError::Closed),
                        Ok(Ok(r)) => r,
                    },
                };
                match result {
                    // A refusal (an entry that can never fit) is final.
                    Ok(_) => delivered += 1,
                    // So is a hint a worker of the previous release
                    // cannot take (a hash to a worker that went back to
                    // it): it could never hold it. A link that spoke the
                    // older version to a worker its probe finds at this
                    // one keeps the hint for the next delivery.
                    Err(error @ ClientError::Unsupported { .. })
                        if self.link_version() != 0
                            && self.link_version() < crate::protocol::link::HASH_LINK_VERSION =>
                    {
                        tracing::warn!(worker = %self.addr, %error, "hint dropped");
                        self.metrics.hints_dropped.inc();
                    }
                    Err(e) => {
                        failed = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, error)) = failed {
                let mut c = self.catchup();
                for hint in batch.into_iter().skip(i).rev() {
                    c.hint_bytes += hint.charge();
                    c.hints.push_front(hint);
                }
                drop(c);
                tracing::debug!(worker = %self.addr, %error, delivered, "hint delivery interrupted");
                self.report_failure(&error);
                return Err(error);
            }
        }
    }
}
