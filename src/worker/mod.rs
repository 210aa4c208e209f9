//! The worker daemon: serves its [`store::Store`] over the text protocol
//! (direct use) and the link protocol (the orchestrator, its partner), and
//! refills itself from its partner when it starts.
//!
//! Start-up: [`bind`] opens the listener; [`Bound::run`] serves at once
//! (`ping` works while refilling), refills from the partner if the partner is
//! ready, then reports ready. Reads are refused with error 7 (loading) until
//! then; writes are applied all along, and versions settle which of a live
//! write and a refilled entry wins.

pub mod antientropy;
mod arena;
mod hashes;
mod keyspace;
mod link;
pub mod metrics;
mod migrate;
pub mod refill;
pub mod store;
#[cfg(test)]
mod tests;
mod update;

use crate::net::{self, LiveConfig, ServerConfig};
use crate::protocol::link::{Handoff, Layout, Request, Response, WorkerState};
use crate::protocol::{ErrorCode, ErrorReply, SetWhen};
use crate::shutdown::Shutdown;
use crate::sys::TcpListener;
use crate::version::Clock;
use link::WorkerHandler;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{Applied, Store, StoreConfig, StoreError};

/// How often the active expiry runs, and how many slots of each shard it
/// looks at per run.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);
/// No `STATUS` for this long (orchestrators probe every half second by
/// default) means nobody could see the worker: how long it has served
/// starts over ([`Worker::serving_ms`]).
pub const STATUS_GAP: Duration = Duration::from_secs(5);
pub const EXPIRY_SLOTS_PER_SHARD: usize = 256;

/// A worker's own section of the configuration.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub listen: String,
    pub partner: Option<String>,
    pub metrics_listen: String,
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// How often partners compare their stores (anti-entropy).
    pub anti_entropy_interval: Duration,
    /// The longest one round of the partner holds this worker's round
    /// lock, however often it sends (see [`antientropy::Responder`]).
    pub anti_entropy_lease: Duration,
    /// How long a starting worker retries a partner it cannot reach before
    /// it starts empty (see [`refill`]).
    pub refill_wait: Duration,
    /// How many connection loops serve clients and links (`threads`, with 0
    /// resolved to one per CPU core).
    pub connection_loops: usize,
}

/// The state shared by every connection of a worker.
pub struct Worker {
    pub store: Store,
    state: AtomicU8,
    clock: Clock,
    /// Drawn at start; tells the orchestrator this process is a new one.
    incarnation: u64,
    pub anti_entropy: antientropy::AntiEntropy,
    /// Entries received from the partner by the refill so far.
    pub refilled: AtomicU64,
    /// Entries the partner held when the refill began.
    pub refill_expected: AtomicU64,
    /// How long the completed refill took (0: none).
    pub refill_millis: AtomicU64,
    /// Why this worker may lack data its partner holds, while it may (see
    /// [`refill`]); `None` once it is complete.
    incomplete: std::sync::Mutex<Option<String>>,
    /// The partner missed a write stored here (an orchestrator said so)
    /// until this many anti-entropy rounds have completed; see
    /// [`Worker::note_partner_missed`].
    partner_missed_until: AtomicU64,
    /// Listener settings; a reload may change them.
    pub live: LiveConfig,
    /// The partner now: `config.partner` until a reload names another
    /// (a replacement host), which anti-entropy rounds go to from then on.
    partner: arc_swap::ArcSwapOption<String>,
    /// The cluster's layout, as the orchestrators gave it, and the address
    /// they know this worker by: its partner there is its partner.
    layout: std::sync::Mutex<Option<(Layout, String)>>,
    /// What that layout makes of each key ([`migrate::Ownership`]).
    ownership: arc_swap::ArcSwapOption<migrate::Ownership>,
    /// Held (shared) by a request from its ownership check to its end
    /// while keys move, and (alone) by a change of the layout then: once
    /// a seal is in force, no request is still storing a key it sealed.
    gate: std::sync::RwLock<()>,
    /// Layouts adopted so far: what a handoff was said of.
    layout_generation: AtomicU64,
    /// This worker's part in the migration its layout makes, and the
    /// layout (by generation) it was said of: what was said of a layout
    /// before is never said of the one held, even at the same epoch.
    handoff: std::sync::Mutex<(u64, Option<Handoff>)>,
    /// Woken when the layout held changes ([`migrate::run`]).
    layout_changed: tokio::sync::Notify,
    pub metrics: metrics::WorkerMetrics,
    /// What connections' read buffers may hold together.
    pub budget: Arc<crate::net::ReadBudget>,
    /// The client connections open now (`CLIENT LIST`).
    pub clients: Arc<crate::clients::Registry>,
    /// When it began serving, in ms after `epoch`, plus one (0: not
    /// serving); see [`Worker::serving_ms`].
    serving_from: AtomicU64,
    /// When the last `STATUS` came, in ms after `epoch`, plus one.
    last_status: AtomicU64,
    epoch: tokio::time::Instant,
    config: WorkerConfig,
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Worker {
        let metrics = metrics::WorkerMetrics::new();
        let budget = crate::net::ReadBudget::new(&config.server, &metrics.server);
        Worker {
            store: Store::new(config.store.clone()),
            state: AtomicU8::new(WorkerState::Starting as u8),
            clock: Clock::with_random_node(),
            incarnation: crate::sys::random_u64() | 1,
            anti_entropy: antientropy::AntiEntropy::default(),
            refilled: AtomicU64::new(0),
            refill_expected: AtomicU64::new(0),
            refill_millis: AtomicU64::new(0),
            incomplete: std::sync::Mutex::new(None),
            partner_missed_until: AtomicU64::new(0),
            live: LiveConfig::from_pointee(config.server.clone()),
            partner: arc_swap::ArcSwapOption::from(config.partner.clone().map(Arc::new)),
            layout: std::sync::Mutex::new(None),
            ownership: arc_swap::ArcSwapOption::empty(),
            gate: std::sync::RwLock::new(()),
            layout_generation: AtomicU64::new(0),
            handoff: std::sync::Mutex::new((0, None)),
            layout_changed: tokio::sync::Notify::new(),
            metrics,
            budget,
            clients: Arc::default(),
            serving_from: AtomicU64::new(0),
            last_status: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            config,
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// The partner's address now (a reload may change it).
    pub fn partner(&self) -> Option<Arc<String>> {
        self.partner.load_full()
    }

    /// The partner's address for logs and status lines (`-`: none).
    fn partner_name(&self) -> String {
        self.partner()
            .map_or_else(|| "-".to_string(), |p| String::clone(&p))
    }

    /// The layout's epoch and the partner it names for this worker, when
    /// it holds a layout that has this worker and this worker has a
    /// partner at all.
    fn layout_partner(&self) -> Option<(u64, String)> {
        self.partner()?;
        let held = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        let (layout, me) = held.as_ref()?;
        Some((layout.epoch, layout.partner_of(me)?.to_string()))
    }

    /// Takes `offered` if it supersedes the layout held (`you`:
    /// the address its sender knows this worker by), and the partner it
    /// names: anti-entropy rounds go there from the next one (a replaced
    /// partner). Returns the layout held after.
    pub fn adopt_layout(&self, offered: Option<Layout>, you: String) -> Option<Layout> {
        // The partner is chosen and stored under the lock, so concurrent
        // offers cannot leave an older layout's partner in place.
        let mut held = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(offered) = offered {
            if held.as_ref().map_or(true, |(h, _)| offered.supersedes(h)) {
                tracing::info!(
                    epoch = offered.epoch,
                    pairs = offered.live_pairs(),
                    moving = offered.source.is_some(),
                    sealed = offered.source.as_ref().is_some_and(|s| s.sealed),
                    "the cluster's layout"
                );
                let ownership = Arc::new(migrate::Ownership::of(&offered, &you));
                {
                    // No request checked against the old ownership is
                    // still running once this returns.
                    let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
                    self.ownership.store(Some(ownership));
                }
                *held = Some((offered, you));
                self.layout_generation.fetch_add(1, Ordering::SeqCst);
                self.layout_changed.notify_one();
            }
        }
        let named = match (&*held, self.partner()) {
            (Some((layout, me)), Some(_)) => {
                layout.partner_of(me).map(|p| (layout.epoch, p.to_string()))
            }
            _ => None,
        };
        if let Some((epoch, named)) = named {
            if self.partner().as_deref() != Some(&named) {
                tracing::info!(
                    from = %self.partner_name(),
                    to = %named,
                    epoch,
                    "partner changed by the cluster's layout: anti-entropy rounds go to the new partner"
                );
                self.partner.store(Some(Arc::new(named)));
            }
        }
        held.as_ref().map(|(layout, _)| layout.clone())
    }

    /// The layout held, the address it knows this worker by, and the
    /// layout's generation (see [`Worker::set_handoff`]).
    fn held_layout(&self) -> Option<(Layout, String, u64)> {
        let held = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.layout_generation.load(Ordering::SeqCst);
        held.as_ref()
            .map(|(layout, me)| (layout.clone(), me.clone(), generation))
    }

    /// Whether the layout held is `epoch`'s, sealed.
    fn held_sealed(&self, epoch: u64) -> bool {
        self.ownership
            .load()
            .as_ref()
            .is_some_and(|o| o.epoch() == epoch && o.sealed())
    }

    /// This worker's part in the migration of the layout it holds.
    pub fn handoff(&self) -> Option<Handoff> {
        let (said_of, handoff) = *self.handoff.lock().unwrap_or_else(|p| p.into_inner());
        handoff.filter(|_| said_of == self.layout_generation.load(Ordering::SeqCst))
    }

    /// Says `handoff` of the layout of `generation` (from
    /// [`Worker::held_layout`]): nothing, once another layout is held.
    fn set_handoff(&self, generation: u64, handoff: Option<Handoff>) {
        *self.handoff.lock().unwrap_or_else(|p| p.into_inner()) = (generation, handoff);
    }

    /// Whether this worker keeps `key` (takes it from its partner): not
    /// when its layout gives the key to another pair for good.
    fn owns(&self, key: &[u8]) -> bool {
        self.ownership.load().as_ref().map_or(true, |o| {
            o.check(key)
                .map_or_else(|e| e.code != ErrorCode::Moved, |()| true)
        })
    }

    /// Checks that this worker serves `key` now, and while keys move holds
    /// the gate until the guard is dropped (the request's end).
    fn serves(&self, key: &[u8]) -> Result<Option<std::sync::RwLockReadGuard<'_, ()>>, Response> {
        let ownership = self.ownership.load();
        let Some(o) = ownership.as_ref() else {
            return Ok(None);
        };
        if !o.moving() {
            return o.check(key).map(|()| None).map_err(Response::Error);
        }
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        // Read again under the gate: a change may have come meanwhile.
        let ownership = self.ownership.load();
        match ownership.as_ref().map(|o| o.check(key)) {
            Some(Err(e)) => Err(Response::Error(e)),
            _ => Ok(Some(gate)),
        }
    }

    /// How this worker opens links to its partner.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial::from_server(&self.live.load())
    }

    /// Applies what a reload may change while serving: `idle_timeout`
    /// (open connections included), `max_memory` (lowering it evicts
    /// down to the new limit at once) and `partner` (the next anti-entropy
    /// round goes to the new one: a replacement of a dead partner, which
    /// refilled from this worker).
    pub fn reload(&self, new: &WorkerConfig) {
        // Once the cluster's layout names the partner, the file's (an
        // old one, or none) does not change it.
        if let Some((epoch, named)) = self.layout_partner() {
            if new.partner.as_ref() != Some(&named) {
                tracing::warn!(
                    config = new.partner.as_deref().unwrap_or("-"),
                    layout = %named,
                    epoch,
                    "the config's partner is stale: the cluster's layout names another, which stays"
                );
            }
        } else if self.partner().as_deref() != new.partner.as_ref() {
            tracing::info!(
                from = %self.partner_name(),
                to = new.partner.as_deref().unwrap_or("-"),
                "partner changed: anti-entropy rounds go to the new partner"
            );
            self.partner.store(new.partner.clone().map(Arc::new));
        }
        let mut server = ServerConfig::clone(&self.live.load());
        server.idle_timeout = new.server.idle_timeout;
        server.request_timeout = new.server.request_timeout;
        // Certificates read again: new connections use them.
        server.tls = new.server.tls.clone();
        self.live.store(Arc::new(server));
        self.store.set_max_memory(new.store.max_memory_bytes);
    }

    /// One line for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        match self.state() {
            WorkerState::Ready => format!(
                "serving {} entries, {} connections{}",
                self.store.len(),
                self.metrics.server.connections_open.get(),
                self.incomplete()
                    .map(|why| format!("; INCOMPLETE until anti-entropy repairs it: {why}"))
                    .unwrap_or_default()
            ),
            WorkerState::Refilling => {
                let done = self.refilled.load(Ordering::Relaxed);
                let expected = self.refill_expected.load(Ordering::Relaxed).max(1);
                format!(
                    "refilling from {}: {}% ({done} of about {expected} entries)",
                    self.partner_name(),
                    (done * 100 / expected).min(100),
                )
            }
            WorkerState::Starting => "starting: asking the partner for its state".into(),
        }
    }

    /// Why this worker may lack data its partner holds, if it may.
    pub fn incomplete(&self) -> Option<String> {
        self.incomplete
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records an orchestrator's notice that the partner missed a write
    /// this worker stored. One round lock orders rounds in time, so the
    /// round after the one that may be running when the notice arrives
    /// began after it and copies that write: until it completes
    /// (`rounds + 2`), STATUS says `partner_behind`.
    pub fn note_partner_missed(&self) {
        let until = self.anti_entropy.rounds() + 2;
        let before = self.partner_missed_until.fetch_max(until, Ordering::AcqRel);
        if before <= self.anti_entropy.rounds() {
            tracing::info!(
                partner = %self.partner_name(),
                "the partner missed a write stored here: orchestrators read here until anti-entropy repairs it"
            );
        }
    }

    /// Whether the partner may lack a write stored here (see
    /// [`Worker::note_partner_missed`]).
    pub fn partner_behind(&self) -> bool {
        self.anti_entropy.rounds() < self.partner_missed_until.load(Ordering::Acquire)
    }

    pub(crate) fn set_incomplete(&self, why: Option<String>) {
        *self.incomplete.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Counts a completed anti-entropy round (in either role): it copied
    /// whatever the partner held that this worker lacked, so a worker that
    /// was incomplete is complete now.
    pub(crate) fn round_completed(&self) {
        self.anti_entropy.completed();
        self.completed("anti-entropy with the partner repaired what it lacked");
    }

    /// Ends being incomplete (see [`refill`]).
    fn completed(&self, how: &str) {
        let was = self
            .incomplete
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(why) = was {
            tracing::info!("complete again: {how} (was: {why})");
        }
    }

    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Acquire)).unwrap_or(WorkerState::Starting)
    }

    /// How long this worker has served (ready and complete) without a
    /// break, as `STATUS` reports it: counted from the first `STATUS` that
    /// found it serving; one that finds it not starts the count over.
    ///
    /// A gap of [`STATUS_GAP`] between two `STATUS` requests starts it over
    /// too: nobody could see this worker then (it was stopped, or cut off
    /// from every orchestrator), and orchestrators notice its return at
    /// different moments.
    fn serving_ms(&self, serving: bool) -> u64 {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_status.swap(now, Ordering::Relaxed);
        if !serving || now.saturating_sub(last) > STATUS_GAP.as_millis() as u64 {
            self.serving_from.store(0, Ordering::Relaxed);
        }
        if !serving {
            return 0;
        }
        let from =
            match self
                .serving_from
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => now,
                Err(from) => from,
            };
        // At least 1: serving.
        now.saturating_sub(from).max(1)
    }

    pub(crate) fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Release);
    }

    fn loading() -> ErrorReply {
        ErrorReply::new(ErrorCode::Loading, "loading: refilling from the partner")
    }

    /// Refuses reads until the refill is done.
    fn ready(&self) -> Result<(), ErrorReply> {
        if self.state() == WorkerState::Ready {
            Ok(())
        } else {
            Err(Worker::loading())
        }
    }

    fn store_error(e: StoreError) -> ErrorReply {
        ErrorReply::new(ErrorCode::OutOfMemory, e.to_string())
    }

    /// A client's set sent to this worker directly, stamped by its clock;
    /// stamped again above what the store evicted from the key's bucket if
    /// it came out no newer (`Applied::Evicted`).
    fn set_direct(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> Result<Applied, StoreError> {
        let result = self
            .store
            .set_when(key, value, ttl, self.clock.next(), when);
        if let Ok(Applied::Evicted(evicted)) = result {
            self.clock.observe(evicted);
            return self
                .store
                .set_when(key, value, ttl, self.clock.next(), when);
        }
        result
    }

    /// Flushes the store at a floor past every version this worker stored
    /// (its clock has observed them all): returns the floor and the entries
    /// removed.
    pub(crate) fn flush(&self) -> (u64, u64) {
        let floor = self.clock.next();
        let removed = self.store.flush(floor);
        tracing::info!(removed, floor, "flushed");
        (floor, removed)
    }

    /// Live keys matching `pattern` (empty: all) from bucket `from` on, a
    /// walk of about `count` keys ([`Store::keys_from`]): the next bucket
    /// and the keys.
    pub(crate) fn scan_keys(
        &self,
        from: usize,
        count: usize,
        pattern: &[u8],
    ) -> (usize, Vec<bytes::Bytes>) {
        let mut keys = Vec::new();
        let next = self.store.keys_from(
            from,
            count.max(1),
            |key| pattern.is_empty() || crate::protocol::glob::matches(pattern, key),
            &mut keys,
        );
        (next, keys)
    }

    /// Takes on a partner's flush floor if it is past this worker's own:
    /// the flush this worker missed happens here too.
    pub(crate) fn adopt_floor(&self, floor: u64) {
        if floor > self.store.floor() && crate::version::plausible(floor) {
            self.clock.observe(floor);
            let removed = self.store.flush(floor);
            tracing::info!(removed, floor, "flushed as the partner was");
        }
    }

    /// A write's version too far ahead of this worker's clock: refused, so
    /// no peer can make a key immortal (see [`crate::version::plausible`]).
    fn implausible(version: u64) -> Option<Response> {
        (!crate::version::plausible(version)).then(|| {
            Response::Error(ErrorReply::new(
                ErrorCode::Parse,
                format!(
                    "version {version:#x} is more than {:?} ahead of this worker's clock",
                    crate::version::MAX_AHEAD
                ),
            ))
        })
    }

    /// Executes one link request (not `Refill`, which streams): one for a
    /// key only if this worker serves the key now ([`Worker::serves`]).
    fn execute(&self, request: Request) -> Response {
        let _gate = match request.key().map(|key| self.serves(key)) {
            Some(Err(refused)) => return refused,
            Some(Ok(gate)) => gate,
            None => None,
        };
        self.execute_served(request)
    }

    fn execute_served(&self, request: Request) -> Response {
        match request {
            Request::Layout { layout, you } => Response::Layout {
                layout: self.adopt_layout(layout, you),
                handoff: self.handoff(),
            },
            Request::Take { entries } => {
                let mut applied = 0;
                for entry in &entries {
                    self.clock.observe(entry.version);
                    match self.store.apply(entry) {
                        Ok(Applied::Yes) => applied += 1,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(key = ?String::from_utf8_lossy(&entry.key), error = %e, "a moving key's entry was not stored")
                        }
                    }
                }
                self.metrics.migration_keys_taken.inc_by(u64::from(applied));
                Response::Taken { applied }
            }
            Request::Get { key } => {
                if self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                match self.store.get(&key) {
                    Some(found) if found.hash => Response::Error(ErrorReply::wrong_type()),
                    Some(found) => Response::Value {
                        version: found.version,
                        ttl_ms: found.ttl_ms,
                        value: found.value,
                    },
                    None => Response::NotFound,
                }
            }
            Request::Set {
                version,
                ttl_ms,
                key,
                value,
                when,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                // A condition on presence needs the whole store: not while
                // refilling (the orchestrator then hints the outcome).
                if when != SetWhen::Always && self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
                match self.store.set_when(&key, &value, ttl, version, when) {
                    Ok(Applied::Unmet) => Response::NotStored,
                    Ok(Applied::Newer(version) | Applied::Evicted(version)) => {
                        Response::Newer { version }
                    }
                    Ok(applied) => Response::Set {
                        applied: applied == Applied::Yes,
                    },
                    Err(e) => Response::Error(Worker::store_error(e)),
                }
            }
            Request::Meta { key } => {
                if self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                match self.store.meta(&key) {
                    Some((version, ttl_ms)) => Response::Meta { version, ttl_ms },
                    None => Response::NotFound,
                }
            }
            Request::Expire {
                version,
                ttl_ms,
                key,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                // Whether the key is there needs the whole store.
                if self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                Response::Del {
                    existed: self.store.expire(&key, ttl_ms, Some(version)),
                }
            }
            Request::Del { version, key } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                match self.store.delete_at(&key, version) {
                    Ok((Applied::Newer(version), _)) => Response::Newer { version },
                    Ok((applied, was_live)) => Response::Del {
                        existed: applied == Applied::Yes && was_live,
                    },
                    Err(e) => Response::Error(Worker::store_error(e)),
                }
            }
            Request::Update {
                version,
                key,
                update,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.decide_update(&key, version, &update)
            }
            Request::Replicate {
                version,
                ttl_ms,
                base,
                key,
                value,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                self.replicate(&key, version, ttl_ms, base, value.as_deref())
            }
            Request::HSet {
                version,
                key,
                fields,
                base,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                self.write_fields(&key, version, fields, base)
            }
            Request::HGet { key } => match self.read_hash(&key) {
                Ok(Some(found)) => Response::Value {
                    version: found.version,
                    ttl_ms: found.ttl_ms,
                    value: found.value,
                },
                Ok(None) => Response::NotFound,
                Err(e) => Response::Error(e),
            },
            Request::HUpdate {
                version,
                key,
                field,
                update,
            } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.decide_field(&key, version, field, &update)
            }
            Request::Ping => Response::Pong,
            // Checked by the session loop (`net::serve_session`), never executed.
            Request::Auth { .. } => Response::Authenticated,
            Request::Status => {
                let state = self.state();
                let complete = self.incomplete().is_none();
                Response::Status {
                    state,
                    entries: self.store.len(),
                    incarnation: self.incarnation,
                    synced: self.anti_entropy.rounds(),
                    complete,
                    partner_behind: self.partner_behind(),
                    serving_ms: self.serving_ms(state == WorkerState::Ready && complete),
                }
            }
            Request::Missed => {
                self.note_partner_missed();
                Response::Noted
            }
            Request::Scan {
                from,
                count,
                pattern,
            } => {
                if self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                let (next, mut keys) = self.scan_keys(usize::from(from), count as usize, &pattern);
                // Keys that moved away are listed by their new pair.
                keys.retain(|k| self.owns(k));
                Response::Keys {
                    next: next as u32,
                    keys,
                }
            }
            Request::Flush { version } => {
                if let Some(refused) = Worker::implausible(version) {
                    return refused;
                }
                self.clock.observe(version);
                let (floor, removed) = self.flush();
                Response::Flushed { floor, removed }
            }
            Request::Refill
            | Request::Digest { .. }
            | Request::Sync { .. }
            | Request::Apply { .. } => Response::Error(ErrorReply::new(
                ErrorCode::InvalidCommand,
                "not a single request",
            )),
        }
    }
}

/// A worker whose listener is bound.
pub struct Bound {
    listener: TcpListener,
    pub local_addr: SocketAddr,
    pub worker: Arc<Worker>,
}

/// Opens the worker's listener (port 0 picks a free port: see `local_addr`).
pub async fn bind(config: WorkerConfig) -> std::io::Result<Bound> {
    let listener = net::bind(&config.listen).await?;
    let local_addr = listener.local_addr()?;
    Ok(Bound {
        listener,
        local_addr,
        worker: Arc::new(Worker::new(config)),
    })
}

impl Bound {
    /// Serves until shutdown. `on_ready` runs once the refill is over and
    /// reads are served.
    pub async fn run(self, shutdown: Shutdown, on_ready: impl FnOnce(&Worker)) {
        let worker = self.worker;
        let loops = match net::Loops::start(worker.config.connection_loops) {
            Ok(loops) => loops,
            Err(e) => {
                tracing::warn!(error = %e, "serving every connection from one thread");
                net::Loops::current()
            }
        };
        let server = tokio::spawn(net::serve(
            self.listener,
            loops,
            Arc::new(WorkerHandler {
                worker: worker.clone(),
            }),
            worker.config.server.max_connections,
            worker.config.server.max_connections_per_source,
            worker.metrics.server.clone(),
            shutdown.clone(),
        ));
        let expiry = tokio::spawn(run_expiry(worker.clone(), shutdown.clone()));
        let migration = tokio::spawn(migrate::run(worker.clone(), shutdown.clone()));
        let anti_entropy = tokio::spawn(antientropy::run(
            worker.clone(),
            worker.config.anti_entropy_interval,
            shutdown.clone(),
        ));
        let mut stop = shutdown.clone();
        let refilled = tokio::select! {
            biased;
            _ = stop.wait() => None,
            outcome = refill::refill_from_partner(&worker) => Some(outcome),
        };
        if let Some(outcome) = &refilled {
            worker.set_incomplete(outcome.incomplete());
        }
        let refilled = refilled.is_some();
        worker.set_state(WorkerState::Ready);
        if refilled {
            on_ready(&worker);
        }
        let _ = server.await;
        expiry.abort();
        anti_entropy.abort();
        migration.abort();
    }
}

async fn run_expiry(worker: Arc<Worker>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
        biased;
                   _ = shutdown.wait() => return,
                   _ = tick.tick() => {}
               }
        worker.store.expire_step(EXPIRY_SLOTS_PER_SHARD);
    }
}
