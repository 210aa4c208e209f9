//! A request's way to the workers: reads with failover, writes to both
//! workers of the pair (restamped when a newer version is held), and
//! conditional sets decided by one worker.

use super::pool::{Backend, Health};
use super::{Router, RESTAMPS};
use crate::protocol::fields::FieldUpdate;
use crate::protocol::link::{Request, Response, HASH_LINK_VERSION};
use crate::protocol::{ErrorCode, ErrorReply, SetWhen, Update};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a request for a key on its way to another pair waits for the
/// move to settle (`TRYAGAIN` from the workers) before it fails.
const MOVING_WAIT: Duration = Duration::from_secs(5);

/// Whether a worker refused because the key is leaving its pair (or has
/// left it): the request is for the key's new pair.
pub(super) fn moving(e: &ErrorReply) -> bool {
    matches!(e.code, ErrorCode::Moved | ErrorCode::TryAgain)
}

/// What one worker said to a write.
pub(super) enum WriteOutcome {
    Stored(Response),
    Refused(ErrorReply),
    /// Transport failure; `maybe_applied` unless it certainly never left.
    Failed {
        maybe_applied: bool,
    },
    NotAsked,
}

/// Sends a write to one worker of its pair (`wait`: unless it is known to
/// be down) and says what came of it.
pub(super) async fn ask(backend: &Backend, request: &Arc<Request>, wait: bool) -> WriteOutcome {
    if !wait {
        // Not even sent: the probes say when it is back, and then it gets
        // this write as a hint if it was acknowledged.
        return WriteOutcome::NotAsked;
    }
    match backend.call(request.clone()).await {
        Ok(Response::Error(e)) => WriteOutcome::Refused(e),
        Ok(response) => WriteOutcome::Stored(response),
        Err(e) => {
            backend.report_failure(&e);
            WriteOutcome::Failed {
                maybe_applied: !e.never_sent(),
            }
        }
    }
}

/// Tells the worker that stored an acknowledged write its partner missed,
/// before the client hears of it: every orchestrator's next probe of it
/// then keeps reads off the partner until anti-entropy copied the write
/// (this orchestrator's hints cover it too, but other orchestrators, and a
/// later process of this one, do not hold them). A failure leaves only
/// this orchestrator knowing; the write stands.
pub(super) async fn tell_missed(holder: &Backend) {
    match holder.call(Arc::new(Request::Missed)).await {
        Ok(Response::Noted) => {}
        Ok(other) => {
            tracing::debug!(worker = %holder.addr, answer = ?other, "missed-write notice refused")
        }
        Err(e) => tracing::debug!(worker = %holder.addr, error = %e, "missed-write notice failed"),
    }
}

impl Router {
    /// Runs `attempt` (a request at the key's pair in the layout in force)
    /// until no worker says the key is elsewhere: on `MOVED` the layout
    /// is taken from the workers, on `TRYAGAIN` (the key is sealed on its
    /// way) it waits a moment, for at most [`MOVING_WAIT`].
    pub(super) async fn rerouted<T, F, Fut>(&self, mut attempt: F) -> Result<T, ErrorReply>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ErrorReply>>,
    {
        let deadline = Instant::now() + MOVING_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            let epoch = self.probe.layouts.epoch();
            let e = match attempt().await {
                Err(e) if moving(&e) => e,
                other => return other,
            };
            if Instant::now() >= deadline {
                return Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!(
                        "the key is moving to another pair and did not settle within \
                         {MOVING_WAIT:?} ({}): try again",
                        e.message
                    ),
                ));
            }
            if e.code == ErrorCode::Moved && self.learn_layout(epoch).await {
                continue;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Hash requests go to a pair only while both its workers speak a
    /// link version that carries hashes: during a rolling upgrade a pair
    /// with a worker of the previous release takes none (nothing is
    /// written), so no hash is ever held by one worker alone.
    pub(super) fn hashes_reach(&self, key: &[u8]) -> Result<(), ErrorReply> {
        let topology = self.topology();
        let slot = topology.locate(key);
        match topology.pairs[slot.pair]
            .iter()
            .find(|b| b.link_version() < HASH_LINK_VERSION)
        {
            None => Ok(()),
            Some(old) if old.link_version() == 0 => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "hash commands wait for worker {} to answer a probe (its release is not \
                     known yet); nothing was written",
                    old.addr
                ),
            )),
            Some(old) => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "hash commands wait for the upgrade: worker {} runs the previous release \
                     (link protocol {}, hashes need {HASH_LINK_VERSION}); nothing was written",
                    old.addr,
                    old.link_version()
                ),
            )),
        }
    }

    /// A key's version and remaining TTL, or `None` if it is missing.
    pub(super) async fn meta(&self, key: Bytes) -> Result<Option<(u64, u64)>, ErrorReply> {
        match self.read_with(key.clone(), Request::Meta { key }).await? {
            Response::Meta { version, ttl_ms } => Ok(Some((version, ttl_ms))),
            Response::NotFound => Ok(None),
            other => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!("unexpected answer {other:?}"),
            )),
        }
    }

    /// Sends a read (`Get`, `Meta`) for `key` to a worker of its pair,
    /// failing over to the partner. `NotFound` is an answer, not an error.
    pub(super) async fn read_with(
        &self,
        key: Bytes,
        request: Request,
    ) -> Result<Response, ErrorReply> {
        self.rerouted(|| self.read_here(key.clone(), request.clone()))
            .await
    }

    /// [`Router::read_with`] at the pair the layout in force names.
    async fn read_here(&self, key: Bytes, request: Request) -> Result<Response, ErrorReply> {
        let topology = self.topology();
        let slot = topology.locate(&key);
        self.read_from(&topology.pairs[slot.pair], slot.pair, slot.first, request)
            .await
    }

    /// Sends a read to worker `first` of `pair` (number `index`), failing
    /// over to its partner.
    pub(super) async fn read_from(
        &self,
        pair: &[Arc<Backend>; 2],
        index: usize,
        first: usize,
        request: Request,
    ) -> Result<Response, ErrorReply> {
        // Shared by the tries: one reference count, not one per key byte
        // buffer.
        let request = Arc::new(request);
        let worker_timeout = self.worker_timeout();
        let order = Backend::read_order(pair, first);
        let mut last_error = None;
        for (tried, backend) in order.into_iter().map(|i| &pair[i]).enumerate() {
            // A worker that is not up may have missed writes: it gets its
            // hints before it serves a read, or the read could go back in
            // time (its partner is not up either, or it failed just now).
            if backend.health() != Health::Up {
                // Hints dropped for room: its reads may go back in time
                // until anti-entropy repaired it, so it serves none.
                if backend.known_stale() {
                    backend.metrics.stale_refused.inc();
                    last_error = Some(format!(
                        "{} missed writes beyond max_hint_bytes and is not repaired yet",
                        backend.addr
                    ));
                    if tried == 0 {
                        backend.metrics.failovers.inc();
                    }
                    continue;
                }
                if let Err(e) = backend.flush_hints(worker_timeout).await {
                    last_error = Some(e.to_string());
                    if tried == 0 {
                        backend.metrics.failovers.inc();
                    }
                    continue;
                }
            }
            match backend.call(request.clone()).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::Loading => {
                    backend.set_health(Health::Loading);
                    last_error = Some(e.message.into_owned());
                }
                Ok(Response::Error(e)) => return Err(e),
                Ok(response) => return Ok(response),
                Err(e) => {
                    backend.report_failure(&e);
                    last_error = Some(e.to_string());
                }
            }
            if tried == 0 {
                // On to the partner.
                backend.metrics.failovers.inc();
            }
        }
        Err(ErrorReply::new(
            ErrorCode::Unavailable,
            format!(
                "no worker of pair {} could serve the read ({})",
                index,
                last_error.unwrap_or_default()
            ),
        ))
    }

    /// Writes to the key's pair. A write that lost to a newer version on a
    /// worker (its version came from a clock behind the one that stamped
    /// what it displaces: another orchestrator's, this one's before a
    /// restart or a step back) is stamped again above that version and
    /// sent again, so a client reads its own acknowledged write through any
    /// orchestrator. It loses again only to a write stamped meanwhile, a
    /// concurrent one, which then rightly wins.
    pub(super) async fn write(
        &self,
        key: &[u8],
        request: Request,
    ) -> Result<Vec<Response>, ErrorReply> {
        self.rerouted(|| self.write_here(key, request.clone()))
            .await
    }

    /// [`Router::write`] at the pair the layout in force names.
    async fn write_here(&self, key: &[u8], request: Request) -> Result<Vec<Response>, ErrorReply> {
        let mut request = Arc::new(request);
        for _ in 0..RESTAMPS {
            let responses = self.write_once(key, &request).await?;
            let held = responses.iter().fold(None, |max: Option<u64>, r| match r {
                Response::Newer { version } => Some(max.map_or(*version, |m| m.max(*version))),
                _ => max,
            });
            let Some(held) = held else {
                return Ok(responses);
            };
            self.clock.observe(held);
            self.metrics.writes_restamped.inc();
            request = Arc::new(request.restamped(self.clock.next()));
        }
        self.write_once(key, &request).await
    }

    pub(super) async fn write_once(
        &self,
        key: &[u8],
        request: &Arc<Request>,
    ) -> Result<Vec<Response>, ErrorReply> {
        let topology = self.topology();
        let slot = topology.locate(key);
        let pair = &topology.pairs[slot.pair];
        if let Request::Set {
            version,
            ttl_ms,
            key,
            value,
            when,
        } = &**request
        {
            if *when != SetWhen::Always {
                if let Some(decider) = Backend::decider(pair, slot.first, self.probe.settle()) {
                    let outcome = Request::Set {
                        version: *version,
                        ttl_ms: *ttl_ms,
                        key: key.clone(),
                        value: value.clone(),
                        when: SetWhen::Always,
                    };
                    return self
                        .write_decided(pair, decider, request, &|_| Some(outcome.clone()))
                        .await;
                }
            }
        }
        // Wait on every worker not known to be down; if both are, wait on
        // both anyway (one may be back).
        let all_down = pair.iter().all(|b| b.health() == Health::Down);
        let wait = |b: &Arc<Backend>| all_down || b.health() != Health::Down;
        let (mut a, mut b) = tokio::join!(
            ask(&pair[0], request, wait(&pair[0])),
            ask(&pair[1], request, wait(&pair[1]))
        );
        // The worker waited on failed and its partner was believed down:
        // the partner may be back before a probe noticed (a rolling
        // restart), so it is asked after all.
        let failed = |o: &WriteOutcome| matches!(o, WriteOutcome::Failed { .. });
        if failed(&a) && matches!(b, WriteOutcome::NotAsked) {
            b = ask(&pair[1], request, true).await;
        } else if failed(&b) && matches!(a, WriteOutcome::NotAsked) {
            a = ask(&pair[0], request, true).await;
        }
        // A worker that says the key moved settles where the write goes:
        // its pair no longer owns the key, whatever its partner did (a
        // partner that took the write holds no layout yet, having just
        // restarted, and drops the key once it learns the layout). The
        // write is made again at the key's pair.
        for outcome in [&a, &b] {
            if let WriteOutcome::Refused(e) = outcome {
                if e.code == ErrorCode::Moved {
                    return Err(e.clone());
                }
            }
        }
        // A conditional set that changed one worker and not the other (a
        // TTL ran out on one clock and not yet on the other; one worker is
        // refilling or behind) leaves the other without the acknowledged
        // value: it is treated like a worker that missed the write.
        let changed_somewhere = [&a, &b]
            .iter()
            .any(|o| matches!(o, WriteOutcome::Stored(r) if !matches!(r, Response::NotStored)));
        // A worker that refused because the key is sealed on its way to
        // another pair missed nothing: its partner, which stored the write
        // before its own seal, hands it to the key's new pair before the
        // move settles.
        let unchanged = |o: &WriteOutcome| {
            changed_somewhere
                && match o {
                    WriteOutcome::Stored(Response::NotStored) => true,
                    WriteOutcome::Refused(e) => !moving(e),
                    _ => false,
                }
        };
        let a_missed =
            matches!(a, WriteOutcome::Failed { .. } | WriteOutcome::NotAsked) || unchanged(&a);
        let b_missed =
            matches!(b, WriteOutcome::Failed { .. } | WriteOutcome::NotAsked) || unchanged(&b);
        let mut stored = Vec::with_capacity(2);
        let mut refused = None;
        let mut unknown = false;
        for (outcome, backend) in [(a, &pair[0]), (b, &pair[1])] {
            match outcome {
                WriteOutcome::Stored(r) => stored.push(r),
                WriteOutcome::Refused(e) => {
                    tracing::debug!(worker = %backend.addr, error = %e, "write refused");
                    refused = Some(e);
                }
                WriteOutcome::Failed { maybe_applied } => unknown |= maybe_applied,
                WriteOutcome::NotAsked => {}
            }
        }
        if !stored.is_empty() {
            // Acknowledged: a worker that may lack it must not serve reads
            // until it has it. (A write nobody acknowledged is never
            // hinted: the client was told it failed or is unknown.) A
            // conditional set is hinted as what it did: nothing when its
            // condition held nowhere, else an unconditional set of the
            // same version.
            let changed = stored.iter().any(|r| !matches!(r, Response::NotStored));
            if changed && (a_missed || b_missed) {
                for (missed, backend) in [(a_missed, &pair[0]), (b_missed, &pair[1])] {
                    if missed {
                        backend.missed_write(request);
                    } else {
                        tell_missed(backend).await;
                    }
                }
            }
            return Ok(stored);
        }
        if let Some(e) = refused {
            return Err(e);
        }
        if unknown {
            self.metrics.writes_unknown.inc();
        }
        Err(ErrorReply::new(
            ErrorCode::Unavailable,
            if unknown {
                format!(
                    "write outcome unknown: no worker of pair {} acknowledged in time",
                    slot.pair
                )
            } else {
                format!("no worker of pair {} is reachable", slot.pair)
            },
        ))
    }
}

/// What a decided write became, for the partner: the plain write of its
/// result (`None`: nothing changed).
type Outcome<'a> = &'a (dyn Fn(&Response) -> Option<Request> + Sync);

impl Router {
    /// A read-modify-write of `key` (`INCR`, `APPEND`, `GETDEL`, ...):
    /// decided by one worker of its pair, the one reads go to, which
    /// computes and stores the result; the result (never the operation)
    /// is then written to the partner, so it applies once. Only a worker
    /// that is up and not behind decides (one that may lack acknowledged
    /// writes would compute from an old value); when none can, the update
    /// fails and nothing changed. A decider that fails once the request
    /// may have reached it leaves the outcome unknown, and the client is
    /// told so: the update is never sent twice.
    pub(super) async fn update_decided(
        &self,
        key: Bytes,
        update: Update,
    ) -> Result<Response, ErrorReply> {
        let request = Request::Update {
            version: self.clock.next(),
            key: key.clone(),
            update,
        };
        let outcome = |decided: &Response| match decided {
            Response::Updated {
                changed: true,
                version,
                base,
                ttl_ms,
                value,
                ..
            } => {
                self.clock.observe(*version);
                Some(Request::Replicate {
                    version: *version,
                    ttl_ms: *ttl_ms,
                    base: *base,
                    key: key.clone(),
                    value: value.clone(),
                })
            }
            _ => None,
        };
        self.decided(&key, request, &outcome).await
    }

    /// A read-modify-write of one field of `key`'s hash (`HINCRBY`,
    /// `HSETNX`), decided as [`Router::update_decided`] decides: the
    /// field's new value is then written to the partner at the version the
    /// decider stored it at. Answers the decider's [`Response::Updated`].
    pub(super) async fn update_field_decided(
        &self,
        key: Bytes,
        field: Bytes,
        update: FieldUpdate,
    ) -> Result<Response, ErrorReply> {
        let request = Request::HUpdate {
            version: self.clock.next(),
            key: key.clone(),
            field: field.clone(),
            update,
        };
        let outcome = |decided: &Response| match decided {
            Response::Updated {
                changed: true,
                version,
                base,
                value: Some(value),
                ..
            } => {
                self.clock.observe(*version);
                Some(Request::HSet {
                    version: *version,
                    key: key.clone(),
                    fields: vec![(field.clone(), Some(value.clone()))],
                    base: Some(*base),
                })
            }
            _ => None,
        };
        self.decided(&key, request, &outcome).await
    }

    /// Sends `request` to the worker that decides for `key`'s pair, and
    /// what `outcome` makes of its answer to the partner: the decider's
    /// answer.
    async fn decided(
        &self,
        key: &[u8],
        request: Request,
        outcome: Outcome<'_>,
    ) -> Result<Response, ErrorReply> {
        self.rerouted(|| self.decided_here(key, request.clone(), outcome))
            .await
    }

    async fn decided_here(
        &self,
        key: &[u8],
        request: Request,
        outcome: Outcome<'_>,
    ) -> Result<Response, ErrorReply> {
        let topology = self.topology();
        let slot = topology.locate(key);
        let pair = &topology.pairs[slot.pair];
        let Some(decider) = Backend::decider(pair, slot.first, self.probe.settle()) else {
            return Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!(
                    "no worker of pair {} is up with every write to decide the update",
                    slot.pair
                ),
            ));
        };
        let decided = self
            .write_decided(pair, decider, &Arc::new(request), outcome)
            .await?;
        decided.into_iter().next().ok_or_else(|| {
            ErrorReply::new(ErrorCode::Unavailable, "no answer from the deciding worker")
        })
    }

    /// A write one worker decides while it is up: a conditional set (so
    /// `NX` holds exactly when a read finds no value, whatever the
    /// partners evicted) or a read-modify-write. The worker reads go to
    /// decides; what it decided (`outcome`: the plain write it became) is
    /// then written to the partner. A worker that is behind or refilling
    /// never decides: it may lack the value the write depends on.
    pub(super) async fn write_decided(
        &self,
        pair: &[Arc<Backend>; 2],
        decider: usize,
        request: &Arc<Request>,
        outcome: Outcome<'_>,
    ) -> Result<Vec<Response>, ErrorReply> {
        let (first, other) = (&pair[decider], &pair[1 - decider]);
        let decided = match ask(first, request, true).await {
            WriteOutcome::Stored(r @ (Response::NotStored | Response::Newer { .. })) => {
                return Ok(vec![r])
            }
            WriteOutcome::Stored(r) => r,
            WriteOutcome::Refused(e) => return Err(e),
            WriteOutcome::Failed {
                maybe_applied: true,
            } => {
                self.metrics.writes_unknown.inc();
                return Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    "write outcome unknown: the worker deciding the write did not answer in time",
                ));
            }
            // It never reached the decider: the partner decides (if it is
            // up; else nobody can).
            WriteOutcome::Failed { .. } | WriteOutcome::NotAsked => {
                if !Backend::can_decide(pair, 1 - decider) {
                    return Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        "no worker of the pair that is up could decide the write",
                    ));
                }
                // The failed worker was marked down: the partner's
                // decision reaches it as a hint.
                return Box::pin(self.write_decided(pair, 1 - decider, request, outcome)).await;
            }
        };
        let Some(outcome) = outcome(&decided) else {
            return Ok(vec![decided]);
        };
        let key = match &outcome {
            Request::Set { key, .. }
            | Request::Del { key, .. }
            | Request::HSet { key, .. }
            | Request::Replicate { key, .. } => key.clone(),
            _ => Bytes::new(),
        };
        // An update's result does not go over an update the partner
        // decided from an older value (for an orchestrator that believed
        // this decider down): the pair keeps only one of the two, and this
        // one's client is told its outcome is unknown. A newer version of
        // anyone else there (a later update of this decider, a plain
        // write) descends from or rightly overwrites this one.
        let replica = matches!(
            outcome,
            Request::Replicate { .. } | Request::HSet { base: Some(_), .. }
        );
        let plain = Arc::new(outcome.plain());
        let outcome = Arc::new(outcome);
        let conflict = || {
            self.metrics.writes_unknown.inc();
            Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "write outcome unknown: the partner took another write of the key meanwhile, \
                 and the pair keeps only one of them",
            ))
        };
        match ask(other, &outcome, other.health() != Health::Down).await {
            // The partner holds a newer version, or (holding no value) it
            // evicted one that new from the key's bucket and would have
            // anti-entropy drop the decided value from both: the decided
            // value is stamped again above it and written to both, as any
            // write that lost. (A concurrent newer write may lose to it.)
            WriteOutcome::Stored(Response::Newer { version }) => {
                // Only when the partner holds no value: a newer value there
                // is a concurrent write, which rightly wins.
                let held = other
                    .call(Arc::new(Request::Meta { key: key.clone() }))
                    .await;
                if matches!(held, Ok(Response::NotFound)) {
                    self.clock.observe(version);
                    let again = plain.restamped(self.clock.next());
                    if Box::pin(self.write(&key, again.clone())).await.is_err() {
                        other.missed_write(&again);
                        tell_missed(first).await;
                    }
                }
            }
            WriteOutcome::Stored(Response::NotStored) if replica => return conflict(),
            WriteOutcome::Stored(_) => {}
            // The key is leaving the pair: the decider hands its result to
            // the new pair before the move settles.
            WriteOutcome::Refused(e) if moving(&e) => {}
            WriteOutcome::Refused(_) | WriteOutcome::Failed { .. } | WriteOutcome::NotAsked => {
                other.missed_write(&plain);
                tell_missed(first).await;
            }
        }
        Ok(vec![decided])
    }
}
