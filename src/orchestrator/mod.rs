//! The orchestrator: a stateless proxy. Each client request is routed to the
//! key's pair ([`placement`]); writes go to both workers of the pair at once
//! and are acknowledged when at least one stored them; reads go to one
//! worker and fail over to its partner on error or timeout. Links to workers
//! are pooled and pipelined ([`pool`]); [`health`] probes keep each worker's
//! state current.
//!
//! Read-your-writes: when a write is acknowledged but one worker of the pair
//! did not confirm it (it failed, timed out, or was believed down), that
//! worker is marked `Behind` before the client is answered, and the write is
//! kept as a hint for it. A `Behind` worker takes writes but serves reads
//! only when its partner cannot, until it has caught up: its hints were
//! delivered, or anti-entropy with its partner ran after the miss, or it
//! restarted and refilled (see [`pool`]).

pub mod health;
pub mod metrics;
pub mod placement;
pub mod pool;

use crate::command::{Info, Keyspace};
use crate::join::join_all;
use crate::net::{self, Closed, Conn, Handler, LiveConfig, ServerConfig};
use crate::protocol::link::{Request, Response};
use crate::protocol::{ErrorCode, ErrorReply, Limits, SetWhen};
use crate::shutdown::Shutdown;
use crate::sys::{TcpListener, TcpStream};
use crate::version::Clock;
use arc_swap::ArcSwap;
use bytes::Bytes;
use pool::{Backend, Health, LinkSettings};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Times a write that lost to a newer version is stamped again before its
/// outcome is taken as it is (see [`Router::write`]).
const RESTAMPS: usize = 2;

/// Keys of one multi-key command in flight at once: bounded so one command
/// cannot fill the links' queues (each key is its own request).
const FAN_OUT: usize = 256;

/// The orchestrator's own section of the configuration.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub listen: String,
    pub metrics_listen: String,
    pub server: ServerConfig,
    pub worker_timeout: Duration,
    pub health_interval: Duration,
    /// Longest wait for a probe's answer.
    pub health_timeout: Duration,
    /// Failed probes in a row before a worker counts as down.
    pub health_failures: u32,
    /// Bytes of writes queued for one unreachable worker (hinted handoff).
    pub max_hint_bytes: usize,
    /// Partner pairs of worker addresses.
    pub pairs: Vec<[String; 2]>,
}

/// The worker pairs in force; a reload swaps in a new one.
pub struct Topology {
    pub pairs: Vec<[Arc<Backend>; 2]>,
}

impl Topology {
    /// Workers whose health is up.
    pub fn workers_up(&self) -> usize {
        self.pairs
            .iter()
            .flatten()
            .filter(|b| b.health() == Health::Up)
            .count()
    }

    /// Every worker takes reads (up, or behind with its partner to catch
    /// up from): none loading or down.
    pub fn all_serving(&self) -> bool {
        self.pairs
            .iter()
            .flatten()
            .all(|b| matches!(b.health(), Health::Up | Health::Behind))
    }
}

/// Routes commands to worker pairs.
pub struct Router {
    topology: ArcSwap<Topology>,
    clock: Clock,
    worker_timeout: Duration,
    settings: LinkSettings,
    probe: health::ProbeSettings,
    /// The shutdown the probes watch, once they run (`health::start`).
    /// Held while the pair list changes, so every worker gets exactly one
    /// probe whether a reload comes before or after the probes start.
    probing: std::sync::Mutex<Option<Shutdown>>,
    /// Client listener settings; a reload may change them.
    pub live: LiveConfig,
    pub metrics: metrics::OrchestratorMetrics,
}

/// What one worker said to a write.
enum WriteOutcome {
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
async fn ask(backend: &Backend, request: &Arc<Request>, wait: bool) -> WriteOutcome {
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
async fn tell_missed(holder: &Backend) {
    match holder.call(Arc::new(Request::Missed)).await {
        Ok(Response::Noted) => {}
        Ok(other) => {
            tracing::debug!(worker = %holder.addr, answer = ?other, "missed-write notice refused")
        }
        Err(e) => tracing::debug!(worker = %holder.addr, error = %e, "missed-write notice failed"),
    }
}

impl Router {
    pub fn new(config: &OrchestratorConfig) -> Router {
        let dial = Arc::new(ArcSwap::from_pointee(crate::client::Dial::from_server(
            &config.server,
        )));
        let settings = LinkSettings {
            limits: config.server.limits,
            dial: dial.clone(),
            connect_timeout: config.worker_timeout,
            keepalive: (config.server.idle_timeout / 2).min(pool::KEEPALIVE_MAX),
            max_hint_bytes: config.max_hint_bytes,
            response_timeout: (2 * config.worker_timeout).max(pool::MIN_RESPONSE_TIMEOUT),
            request_timeout: config.worker_timeout,
        };
        let metrics = metrics::OrchestratorMetrics::new();
        let start = |addr: &String| {
            Backend::start_measured(addr.clone(), settings.clone(), metrics.backend(addr))
        };
        let pairs = config
            .pairs
            .iter()
            .map(|[a, b]| [start(a), start(b)])
            .collect();
        Router {
            topology: ArcSwap::from_pointee(Topology { pairs }),
            clock: Clock::with_random_node(),
            worker_timeout: config.worker_timeout,
            probe: health::ProbeSettings::from_config(config, dial),
            probing: std::sync::Mutex::new(None),
            settings,
            live: LiveConfig::from_pointee(config.server.clone()),
            metrics,
        }
    }

    /// The pairs in force now.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    fn worker_timeout(&self) -> Duration {
        self.worker_timeout
    }

    fn probing(&self) -> std::sync::MutexGuard<'_, Option<Shutdown>> {
        self.probing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts probing every worker (once; see [`health::start`]).
    pub(crate) fn start_probes(&self, shutdown: Shutdown) -> Vec<tokio::task::JoinHandle<()>> {
        let mut probing = self.probing();
        if probing.is_some() {
            return Vec::new();
        }
        *probing = Some(shutdown.clone());
        self.topology()
            .pairs
            .iter()
            .flatten()
            .map(|b| health::spawn_probe(b.clone(), self.probe.clone(), shutdown.clone()))
            .collect()
    }

    /// Applies what a reload may change while serving: `idle_timeout` and
    /// the pair list. Workers that stay keep their links, health and hints;
    /// new ones are probed from now on; removed ones are let go once their
    /// last request is answered.
    pub fn reload(&self, new: &OrchestratorConfig) {
        let mut server = ServerConfig::clone(&self.live.load());
        server.idle_timeout = new.server.idle_timeout;
        // Certificates read again: new connections and links use them.
        server.tls = new.server.tls.clone();
        self.settings
            .dial
            .store(Arc::new(crate::client::Dial::from_server(&server)));
        self.live.store(Arc::new(server));
        let probing = self.probing();
        let old = self.topology();
        let current: Vec<[String; 2]> = old
            .pairs
            .iter()
            .map(|[a, b]| [a.addr.clone(), b.addr.clone()])
            .collect();
        if current == new.pairs {
            return;
        }
        let mut existing: HashMap<&str, &Arc<Backend>> = HashMap::new();
        for backend in old.pairs.iter().flatten() {
            existing.insert(&backend.addr, backend);
        }
        let mut started = 0;
        let mut get = |addr: &String| match existing.get(addr.as_str()) {
            Some(b) => Arc::clone(b),
            None => {
                started += 1;
                let b = Backend::start_measured(
                    addr.clone(),
                    self.settings.clone(),
                    self.metrics.backend(addr),
                );
                if let Some(shutdown) = probing.as_ref() {
                    health::spawn_probe(b.clone(), self.probe.clone(), shutdown.clone());
                }
                b
            }
        };
        let pairs: Vec<[Arc<Backend>; 2]> =
            new.pairs.iter().map(|[a, b]| [get(a), get(b)]).collect();
        let kept: std::collections::HashSet<String> =
            pairs.iter().flatten().map(|b| b.addr.clone()).collect();
        let (pairs_before, pairs_now) = (old.pairs.len(), pairs.len());
        self.topology.store(Arc::new(Topology { pairs }));
        let mut retired = 0;
        for backend in old.pairs.iter().flatten() {
            if !kept.contains(&backend.addr) {
                backend.retire();
                self.metrics.forget(&backend.addr);
                retired += 1;
            }
        }
        drop(probing);
        tracing::warn!(
            pairs_before,
            pairs = pairs_now,
            workers_added = started,
            workers_removed = retired,
            "pair list changed: keys that now map to another pair read as misses until written again"
        );
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let topology = self.topology();
        let workers = topology.pairs.len() * 2;
        let up = topology.workers_up();
        format!(
            "serving {} pairs, {up} of {workers} workers up, {} connections",
            topology.pairs.len(),
            self.metrics.server.connections_open.get()
        )
    }

    /// The workers as this orchestrator sees them, for `cluster`.
    pub fn describe(&self) -> String {
        let mut records = Vec::new();
        for (i, pair) in self.topology().pairs.iter().enumerate() {
            for (j, backend) in pair.iter().enumerate() {
                let v = backend.view();
                records.push(format!(
                    "pair={i} worker={} health={} entries={} hints={} synced={}",
                    v.addr,
                    Backend::standing(pair, j).name(),
                    v.entries,
                    v.hints,
                    v.synced
                ));
            }
        }
        records.join(";")
    }

    /// A key's version and remaining TTL, or `None` if it is missing.
    async fn meta(&self, key: Bytes) -> Result<Option<(u64, u64)>, ErrorReply> {
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
    async fn read_with(&self, key: Bytes, request: Request) -> Result<Response, ErrorReply> {
        // Shared by the tries: one reference count, not one per key byte
        // buffer.
        let request = Arc::new(request);
        let topology = self.topology();
        let slot = placement::locate(&key, topology.pairs.len());
        let pair = &topology.pairs[slot.pair];
        let worker_timeout = self.worker_timeout();
        let order = Backend::read_order(pair, slot.first);
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
                slot.pair,
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
    async fn write(&self, key: &[u8], request: Request) -> Result<Vec<Response>, ErrorReply> {
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

    async fn write_once(
        &self,
        key: &[u8],
        request: &Arc<Request>,
    ) -> Result<Vec<Response>, ErrorReply> {
        let topology = self.topology();
        let slot = placement::locate(key, topology.pairs.len());
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
                let up = |i: usize| Backend::can_decide(pair, i);
                let decider = if !up(slot.first) && up(1 - slot.first) {
                    1 - slot.first
                } else {
                    slot.first
                };
                if up(decider) {
                    let outcome = Request::Set {
                        version: *version,
                        ttl_ms: *ttl_ms,
                        key: key.clone(),
                        value: value.clone(),
                        when: SetWhen::Always,
                    };
                    return self.write_decided(pair, decider, request, outcome).await;
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
        // A conditional set that changed one worker and not the other (a
        // TTL ran out on one clock and not yet on the other; one worker is
        // refilling or behind) leaves the other without the acknowledged
        // value: it is treated like a worker that missed the write.
        let changed_somewhere = [&a, &b]
            .iter()
            .any(|o| matches!(o, WriteOutcome::Stored(r) if !matches!(r, Response::NotStored)));
        let unchanged = |o: &WriteOutcome| {
            changed_somewhere
                && matches!(
                    o,
                    WriteOutcome::Stored(Response::NotStored) | WriteOutcome::Refused(_)
                )
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

impl Router {
    /// A conditional set while a worker of its pair is up: decided by one
    /// worker, the one reads go to (so `NX` holds exactly when a read
    /// finds no value, whatever the partners evicted), then its outcome
    /// (`outcome`: the unconditional set it became) is written to the
    /// partner. A worker that is behind or refilling never decides: it may
    /// lack the value the condition is about.
    async fn write_decided(
        &self,
        pair: &[Arc<Backend>; 2],
        decider: usize,
        request: &Arc<Request>,
        outcome: Request,
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
                    "write outcome unknown: the worker deciding the condition did not answer in time",
                ));
            }
            // It never reached the decider: the partner decides (if it is
            // up; else nobody can).
            WriteOutcome::Failed { .. } | WriteOutcome::NotAsked => {
                if !Backend::can_decide(pair, 1 - decider) {
                    return Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        "no worker of the pair that is up could decide the condition",
                    ));
                }
                // The failed worker was marked down: the partner's
                // decision reaches it as a hint.
                return Box::pin(self.write_decided(pair, 1 - decider, request, outcome)).await;
            }
        };
        let key = match &outcome {
            Request::Set { key, .. } => key.clone(),
            _ => Bytes::new(),
        };
        let outcome = Arc::new(outcome);
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
                    let again = outcome.restamped(self.clock.next());
                    if Box::pin(self.write(&key, again.clone())).await.is_err() {
                        other.missed_write(&again);
                        tell_missed(first).await;
                    }
                }
            }
            WriteOutcome::Stored(_) => {}
            WriteOutcome::Refused(_) | WriteOutcome::Failed { .. } | WriteOutcome::NotAsked => {
                other.missed_write(&outcome);
                tell_missed(first).await;
            }
        }
        Ok(vec![decided])
    }
}

/// Whether a worker of the pair said the key was there (a delete, an
/// expire).
fn existed(responses: &[Response]) -> bool {
    responses
        .iter()
        .any(|r| matches!(r, Response::Del { existed: true }))
}

/// Clients: the command table against the cluster, each key at its pair.
impl Keyspace for Router {
    const CONCURRENT: bool = true;
    const ROLE: &'static str = "orchestrator";
    const FAN_OUT: usize = FAN_OUT;

    fn limits(&self) -> Limits {
        self.live.load().limits
    }

    async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ErrorReply> {
        match self.read_with(key.clone(), Request::Get { key }).await? {
            Response::Value { value, .. } => Ok(Some(value)),
            Response::NotFound => Ok(None),
            other => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                format!("unexpected answer {other:?}"),
            )),
        }
    }

    /// Writes `key` to its pair: `false` when the condition `when` held on
    /// neither worker.
    async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> Result<bool, ErrorReply> {
        let request = Request::Set {
            version: self.clock.next(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            key: key.clone(),
            value,
            when,
        };
        let responses = self.write(&key, request).await?;
        Ok(!responses.iter().all(|r| matches!(r, Response::NotStored)))
    }

    /// Deletes `key`: whether either worker had it.
    async fn delete(&self, key: Bytes) -> Result<bool, ErrorReply> {
        let request = Request::Del {
            version: self.clock.next(),
            key: key.clone(),
        };
        Ok(existed(&self.write(&key, request).await?))
    }

    async fn ttl(&self, key: Bytes) -> Result<Option<u64>, ErrorReply> {
        Ok(self.meta(key).await?.map(|(_, ttl_ms)| ttl_ms))
    }

    async fn expire(&self, key: Bytes, ttl: Duration) -> Result<bool, ErrorReply> {
        // The TTL goes to the value read now (see `Store::expire`): a write
        // stamped meanwhile stays newer than the change.
        let Some((version, _)) = self.meta(key.clone()).await? else {
            return Ok(false);
        };
        self.clock.observe(crate::version::after(version));
        let request = Request::Expire {
            version,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            key: key.clone(),
        };
        Ok(existed(&self.write(&key, request).await?))
    }

    /// Live entries in the cluster: one worker's count per pair (an up one
    /// when there is one), asked now.
    async fn db_size(&self) -> Result<u64, ErrorReply> {
        let topology = self.topology();
        let asks = topology
            .pairs
            .iter()
            .enumerate()
            .map(|(i, pair)| async move {
                // An up worker first, then one not known to be down.
                let rank = |b: &Arc<Backend>| match b.health() {
                    Health::Up => 0,
                    Health::Behind | Health::Loading => 1,
                    Health::Down => 2,
                };
                let mut order = [&pair[0], &pair[1]];
                if rank(order[1]) < rank(order[0]) {
                    order.swap(0, 1);
                }
                let mut last = String::new();
                for backend in order {
                    match backend.call(Arc::new(Request::Status)).await {
                        Ok(Response::Status { entries, .. }) => return Ok(entries),
                        Ok(other) => last = format!("unexpected answer {other:?}"),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("no worker of pair {i} answered ({last})"),
                ))
            });
        let counts = join_all(asks.collect()).await;
        counts.into_iter().sum()
    }

    async fn info(&self) -> Info {
        let topology = self.topology();
        let up = topology.workers_up();
        Info {
            fields: vec![
                ("rcache_pairs", topology.pairs.len().to_string()),
                ("rcache_workers_up", up.to_string()),
                (
                    "connected_clients",
                    self.metrics.server.connections_open.get().to_string(),
                ),
            ],
            keys: self.db_size().await.unwrap_or(0),
        }
    }

    async fn describe(&self) -> String {
        Router::describe(self)
    }
}

struct ClientHandler {
    router: Arc<Router>,
}

impl Handler for ClientHandler {
    async fn handle(self: Arc<Self>, stream: TcpStream, mut shutdown: Shutdown) -> Closed {
        let router = &self.router;
        let stream = match net::secure(stream, &router.live.load()).await {
            Ok(s) => s,
            Err(closed) => return closed,
        };
        let mut conn = Conn::new(stream);
        net::serve_client(
            &mut conn,
            &**router,
            &router.live,
            &router.metrics.server,
            &mut shutdown,
        )
        .await
    }
}

/// An orchestrator whose listener is bound.
pub struct Bound {
    listener: TcpListener,
    pub local_addr: SocketAddr,
    pub router: Arc<Router>,
    config: OrchestratorConfig,
    probes: Option<Vec<tokio::task::JoinHandle<()>>>,
}

/// Opens the client listener and starts the links to the workers.
pub async fn bind(config: OrchestratorConfig) -> std::io::Result<Bound> {
    let listener = net::bind(&config.listen).await?;
    let local_addr = listener.local_addr()?;
    Ok(Bound {
        listener,
        local_addr,
        router: Arc::new(Router::new(&config)),
        config,
        probes: None,
    })
}

impl Bound {
    /// Starts the health probes and waits for every worker's first answer
    /// (at most two `health_timeout`s, probes failing meanwhile are tried
    /// again each `health_interval`), so the first request already knows
    /// what each worker says of itself and of its partner: a process
    /// started after a worker came back, whose former self held the hints
    /// for it, reads nothing the worker missed. A worker that has not
    /// answered by then starts out down.
    pub async fn probe(&mut self, mut shutdown: Shutdown) {
        if self.probes.is_some() {
            return;
        }
        self.probes = Some(health::start(&self.router, shutdown.clone()));
        let bound = 2 * self.config.health_timeout;
        let backends: Vec<_> = self
            .router
            .topology()
            .pairs
            .iter()
            .flat_map(|pair| pair.iter().cloned())
            .collect();
        let all = join_all(
            backends
                .iter()
                .map(|b| async move { b.first_probe().await })
                .collect(),
        );
        let answered = tokio::select! {
            answered = tokio::time::timeout(bound, all) => answered.is_ok(),
            _ = shutdown.wait() => return,
        };
        if !answered {
            // Unanswered, a worker is taken as down: it serves reads only
            // once a probe reaches it and anti-entropy confirms it holds
            // what it may have missed (this process holds no hints for it).
            let silent: Vec<&str> = backends
                .iter()
                .filter(|b| b.down_unless_answered())
                .map(|b| b.addr.as_str())
                .collect();
            tracing::warn!(
                workers = ?silent,
                "not every worker answered its first probe within {bound:?}: down until one does; serving"
            );
        }
    }

    /// Serves clients until shutdown; probes workers meanwhile (see
    /// [`Bound::probe`], which this calls unless it was called already).
    pub async fn run(mut self, shutdown: Shutdown) {
        self.probe(shutdown.clone()).await;
        let probes = self.probes.take().unwrap_or_default();
        net::serve(
            self.listener,
            net::Loops::current(),
            Arc::new(ClientHandler {
                router: self.router.clone(),
            }),
            self.config.server.max_connections,
            self.router.metrics.server.clone(),
            shutdown,
        )
        .await;
        for probe in probes {
            probe.abort();
        }
    }
}
