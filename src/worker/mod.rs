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
pub mod metrics;
pub mod refill;
pub mod store;

use crate::command::{Info, Keyspace};
use crate::metrics::Tally;
use crate::net::{self, Closed, Conn, Handler, LiveConfig, ServerConfig};
use crate::protocol::link::{
    decode_request, encode_response, max_frame_bytes, read_frame, Request, Response, WorkerState,
    HELLO, HELLO_FIRST_BYTE, REFILL_CHUNK_BYTES,
};
use crate::protocol::{ErrorCode, ErrorReply, Limits, SetWhen};
use crate::protocol::{Op, Outcome};
use crate::shutdown::Shutdown;
use crate::sys::{TcpListener, TcpStream};
use crate::version::Clock;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::{Applied, Store, StoreConfig, StoreError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

/// How often the active expiry runs, and how many slots of each shard it
/// looks at per run.
pub const EXPIRY_INTERVAL: Duration = Duration::from_millis(100);
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
    pub metrics: metrics::WorkerMetrics,
    config: WorkerConfig,
}

impl Worker {
    pub fn new(config: WorkerConfig) -> Worker {
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
            metrics: metrics::WorkerMetrics::new(),
            config,
        }
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// How this worker opens links to its partner.
    pub fn dial(&self) -> crate::client::Dial {
        crate::client::Dial::from_server(&self.live.load())
    }

    /// Applies what a reload may change while serving: `idle_timeout`
    /// (open connections included) and `max_memory` (lowering it evicts
    /// down to the new limit at once).
    pub fn reload(&self, new: &WorkerConfig) {
        let mut server = ServerConfig::clone(&self.live.load());
        server.idle_timeout = new.server.idle_timeout;
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
                    self.config.partner.as_deref().unwrap_or("-"),
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
                partner = self.config.partner.as_deref().unwrap_or("-"),
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

    /// Executes one link request (not `Refill`, which streams).
    fn execute(&self, request: Request) -> Response {
        match request {
            Request::Get { key } => {
                if self.state() != WorkerState::Ready {
                    return Response::Error(Worker::loading());
                }
                match self.store.get(&key) {
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
            Request::Ping => Response::Pong,
            // Checked by `serve_link` before anything else.
            Request::Auth { .. } => Response::Authenticated,
            Request::Status => Response::Status {
                state: self.state(),
                entries: self.store.len(),
                incarnation: self.incarnation,
                synced: self.anti_entropy.rounds(),
                complete: self.incomplete().is_none(),
                partner_behind: self.partner_behind(),
            },
            Request::Missed => {
                self.note_partner_missed();
                Response::Noted
            }
            Request::Refill | Request::Digest | Request::Sync { .. } | Request::Apply { .. } => {
                Response::Error(ErrorReply::new(
                    ErrorCode::InvalidCommand,
                    "not a single request",
                ))
            }
        }
    }
}

/// Direct clients: the command table against the store, stamped with the
/// worker's own clock. Reads (and conditional sets, which read) wait for
/// the refill: until then they answer "loading".
impl Keyspace for Worker {
    const CONCURRENT: bool = false;
    const ROLE: &'static str = "worker";
    const FAN_OUT: usize = 1;

    fn limits(&self) -> Limits {
        self.live.load().limits
    }

    async fn get(&self, key: Bytes) -> Result<Option<Bytes>, ErrorReply> {
        self.ready()?;
        Ok(self.store.get(&key).map(|found| found.value))
    }

    async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> Result<bool, ErrorReply> {
        if when != SetWhen::Always {
            self.ready()?;
        }
        match self.set_direct(&key, &value, ttl, when) {
            Ok(applied) => Ok(applied != Applied::Unmet),
            Err(e) => Err(Worker::store_error(e)),
        }
    }

    async fn delete(&self, key: Bytes) -> Result<bool, ErrorReply> {
        self.store
            .delete(&key, self.clock.next())
            .map_err(Worker::store_error)
    }

    async fn ttl(&self, key: Bytes) -> Result<Option<u64>, ErrorReply> {
        self.ready()?;
        Ok(self.store.meta(&key).map(|(_, ttl_ms)| ttl_ms))
    }

    async fn expire(&self, key: Bytes, ttl: Duration) -> Result<bool, ErrorReply> {
        self.ready()?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(self.store.expire(&key, ttl_ms, None))
    }

    async fn db_size(&self) -> Result<u64, ErrorReply> {
        Ok(self.store.len())
    }

    async fn info(&self) -> Info {
        let usage = self.store.usage();
        Info {
            fields: vec![
                ("rcache_state", self.state().name().to_string()),
                (
                    "connected_clients",
                    self.metrics.server.connections_open.get().to_string(),
                ),
                ("used_memory", usage.charged_bytes.to_string()),
                ("maxmemory", self.store.max_memory().to_string()),
                ("maxmemory_policy", "sieve".to_string()),
            ],
            keys: usage.entries,
        }
    }

    async fn describe(&self) -> String {
        let usage = self.store.usage();
        // The whole store's digest: partners holding the same versions of
        // the same keys show the same number.
        let digest = antientropy::digest(&self.store)
            .await
            .iter()
            .fold(0u64, |sum, b| sum.wrapping_add(b.hash));
        format!(
            "worker={} partner={} state={} complete={} entries={} tombstones={} \
             refilled={} synced={} repaired={} digest={digest:016x}",
            self.config.listen,
            self.config.partner.as_deref().unwrap_or("-"),
            self.state().name(),
            self.incomplete().is_none(),
            usage.entries,
            usage.tombstones,
            self.refilled.load(Ordering::Relaxed),
            self.anti_entropy.rounds(),
            self.anti_entropy.repaired(),
        )
    }
}

struct WorkerHandler {
    worker: Arc<Worker>,
}

impl Handler for WorkerHandler {
    async fn handle(self: Arc<Self>, stream: TcpStream, mut shutdown: Shutdown) -> Closed {
        let worker = &self.worker;
        let stream = match net::secure(stream, &worker.live.load()).await {
            Ok(s) => s,
            Err(closed) => return closed,
        };
        let mut conn = Conn::new(stream);
        // The first byte tells the protocol: a link hello, or a text request.
        let idle = worker.live.load().idle_timeout;
        if let Err(closed) = conn.fill(Instant::now() + idle, &mut shutdown).await {
            return closed;
        }
        let closed = if conn.rbuf.first() == Some(&HELLO_FIRST_BYTE) {
            serve_link(&mut conn, worker, &mut shutdown).await
        } else {
            net::serve_client(
                &mut conn,
                &**worker,
                &worker.live,
                &worker.metrics.server,
                &mut shutdown,
            )
            .await
        };
        if let Closed::Io(e) = &closed {
            tracing::debug!(error = %e, "connection ended");
        }
        closed
    }
}

/// Serves the link protocol: pipelined requests, answered in order, and
/// refill streams.
async fn serve_link<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    worker: &Worker,
    shutdown: &mut Shutdown,
) -> Closed {
    let mut config = worker.live.load_full();
    let mut deadline = Instant::now() + config.idle_timeout;
    while conn.rbuf.len() < HELLO.len() {
        if let Err(c) = conn.fill(deadline, shutdown).await {
            return c;
        }
    }
    if conn.rbuf[..HELLO.len()] != HELLO[..] {
        // Another protocol version or garbage: framing cannot be trusted.
        tracing::info!("closing a link with an unknown hello");
        return Closed::Eof;
    }
    let _ = conn.rbuf.split_to(HELLO.len());
    conn.wbuf.extend_from_slice(HELLO);
    let max = max_frame_bytes(&config.limits);
    let mut responder = antientropy::Responder::default();
    let mut authenticated = config.auth.is_none();
    let metrics = &worker.metrics.server;
    let mut tally = Tally::default();
    loop {
        // One clock reading per request: each ends where the next starts.
        let mut started = Instant::now();
        loop {
            let frame = match read_frame(&mut conn.rbuf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a link that sent a bad frame");
                    return Closed::Eof;
                }
            };
            let request = decode_request(frame, &config.limits);
            if !authenticated {
                // A link must present the cluster's token first; a peer
                // without it is a stranger and is hung up on.
                let ok = matches!(
                    (&request, &config.auth),
                    (Ok(Request::Auth { token }), Some(secret)) if secret.matches(token)
                );
                if !ok {
                    metrics.auth_failures.inc();
                    tally.observe(metrics, Op::Auth, Outcome::Error, started.elapsed());
                    tally.flush();
                    tracing::warn!("closing a link that did not present the cluster's token");
                    let error = ErrorReply::new(ErrorCode::Auth, "authentication required");
                    encode_response(&Response::Error(error), &mut conn.wbuf);
                    let _ = conn.flush(config.idle_timeout).await;
                    return Closed::Eof;
                }
                authenticated = true;
            }
            let (op, response) = match request {
                Ok(Request::Refill) => {
                    // The stream flushes what was answered before it.
                    tally.flush();
                    if let Err(c) = stream_refill(conn, worker, &config).await {
                        return c;
                    }
                    let ended = Instant::now();
                    tally.observe(metrics, Op::Refill, Outcome::Ok, ended - started);
                    started = ended;
                    deadline = ended + config.idle_timeout;
                    continue;
                }
                Ok(request @ (Request::Digest | Request::Sync { .. } | Request::Apply { .. })) => {
                    (Op::AntiEntropy, responder.handle(worker, request).await)
                }
                Ok(request) => (link_op(&request), worker.execute(request)),
                Err(e) => {
                    let error = ErrorReply::new(ErrorCode::Parse, e.to_string());
                    (Op::Invalid, Response::Error(error))
                }
            };
            let outcome = match &response {
                Response::NotFound => Outcome::NotFound,
                Response::Error(_) => Outcome::Error,
                _ => Outcome::Ok,
            };
            let ended = Instant::now();
            tally.observe(metrics, op, outcome, ended - started);
            started = ended;
            deadline = ended + config.idle_timeout;
            encode_response(&response, &mut conn.wbuf);
        }
        // Counted before the answers go out.
        tally.flush();
        if let Err(c) = conn.flush(config.idle_timeout).await {
            return c;
        }
        config = worker.live.load_full();
        // An initiator that goes quiet mid-round must not hold this
        // worker's round lock for a whole idle timeout.
        let wait_until = if responder.in_round() {
            deadline.min(Instant::now() + antientropy::ROUND_TIMEOUT)
        } else {
            deadline
        };
        if let Err(c) = conn.fill(wait_until, shutdown).await {
            return c;
        }
    }
}

fn link_op(request: &Request) -> Op {
    match request {
        Request::Get { .. } => Op::Get,
        Request::Set { .. } => Op::Set,
        Request::Del { .. } => Op::Del,
        Request::Meta { .. } => Op::Meta,
        Request::Expire { .. } => Op::Expire,
        Request::Ping => Op::Ping,
        Request::Auth { .. } => Op::Auth,
        Request::Status | Request::Missed => Op::Status,
        Request::Refill => Op::Refill,
        Request::Digest | Request::Sync { .. } | Request::Apply { .. } => Op::AntiEntropy,
    }
}

/// Streams every entry to a partner that is refilling, a bounded chunk at a
/// time; the socket's backpressure paces the scan, so memory stays bounded
/// on both sides and the shard locks are held only while copying a chunk.
async fn stream_refill<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    worker: &Worker,
    config: &ServerConfig,
) -> Result<(), Closed> {
    if worker.state() != WorkerState::Ready {
        encode_response(&Response::Error(Worker::loading()), &mut conn.wbuf);
        return Ok(());
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let mut chunk = Vec::new();
    for shard in 0..worker.store.shard_count() {
        let mut cursor = Some(0);
        while let Some(c) = cursor {
            chunk.clear();
            cursor = worker.store.scan(shard, c, REFILL_CHUNK_BYTES, &mut chunk);
            if chunk.is_empty() {
                continue;
            }
            sent += chunk.len() as u64;
            encode_response(&Response::Chunk(std::mem::take(&mut chunk)), &mut conn.wbuf);
            conn.flush(config.idle_timeout).await?;
        }
    }
    encode_response(&Response::End { entries: sent }, &mut conn.wbuf);
    tracing::info!(entries = sent, elapsed = ?started.elapsed(), "served a refill to the partner");
    // A new process of the partner holds all of this one now, and nothing
    // of its own: whatever this worker lacked is gone from the pair.
    worker.completed("a new process of the partner refilled from it");
    Ok(())
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
            worker.metrics.server.clone(),
            shutdown.clone(),
        ));
        let expiry = tokio::spawn(run_expiry(worker.clone(), shutdown.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn worker() -> Worker {
        let worker = Worker::new(WorkerConfig {
            listen: "127.0.0.1:0".into(),
            partner: None,
            metrics_listen: "127.0.0.1:0".into(),
            server: Default::default(),
            store: Default::default(),
            anti_entropy_interval: Duration::from_secs(2),
            refill_wait: Duration::from_secs(10),
            connection_loops: 1,
        });
        worker.set_state(WorkerState::Ready);
        worker
    }

    fn set(version: u64, value: &'static [u8]) -> Request {
        Request::Set {
            version,
            ttl_ms: 0,
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(value),
            when: SetWhen::Always,
        }
    }

    #[test]
    fn a_version_far_ahead_of_the_clock_is_refused() {
        let w = worker();
        for request in [
            set(u64::MAX, b"immortal"),
            Request::Del {
                version: u64::MAX,
                key: Bytes::from_static(b"k"),
            },
        ] {
            let answer = w.execute(request);
            assert!(
                matches!(&answer, Response::Error(e) if e.message.contains("ahead of this worker's clock")),
                "{answer:?}"
            );
        }
        // Nothing was stored, and the worker's clock did not jump: its own
        // next write is an ordinary one.
        assert!(w.store.get(b"k").is_none());
        assert!(crate::version::plausible(w.clock.next()));
    }

    #[test]
    fn a_write_that_loses_says_which_version_won() {
        let w = worker();
        let now = w.clock.next();
        assert!(matches!(
            w.execute(set(now + 1000, b"newer")),
            Response::Set { applied: true }
        ));
        assert_eq!(
            w.execute(set(now, b"older")),
            Response::Newer {
                version: now + 1000
            }
        );
        assert_eq!(
            w.execute(Request::Del {
                version: now,
                key: Bytes::from_static(b"k")
            }),
            Response::Newer {
                version: now + 1000
            }
        );
        // The same write again is not a loss.
        assert!(matches!(
            w.execute(set(now + 1000, b"newer")),
            Response::Set { applied: false }
        ));
    }

    #[tokio::test]
    async fn a_round_whose_answer_was_cut_short_does_not_count() {
        let w = worker();
        // More than a refill chunk that the initiator lacks: the SYNC
        // answer is cut, and the round repaired only part of it.
        // (Values that do not compress: the chunk counts stored bytes.)
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..300u32 {
            let value: Vec<u8> = (0..8 << 10)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let request = Request::Set {
                version: w.clock.next(),
                ttl_ms: 0,
                key: Bytes::from(format!("key-{i}")),
                value: Bytes::from(value),
                when: SetWhen::Always,
            };
            assert!(matches!(
                w.execute(request),
                Response::Set { applied: true }
            ));
        }
        w.execute(Request::Missed);
        let mut responder = antientropy::Responder::default();
        async fn round(w: &Worker, responder: &mut antientropy::Responder) -> bool {
            assert!(matches!(
                responder.handle(w, Request::Digest).await,
                Response::Digest(_)
            ));
            let buckets = (0..crate::hash::DIGEST_BUCKETS as u16).collect();
            let sync = Request::Sync {
                buckets,
                after: Bytes::new(),
                upto: Bytes::new(),
                summaries: Vec::new(),
            };
            let synced = responder.handle(w, sync).await;
            let Response::Synced { complete, .. } = synced else {
                panic!("{synced:?}");
            };
            let apply = Request::Apply {
                last: true,
                entries: Vec::new(),
                evict: Vec::new(),
            };
            responder.handle(w, apply).await;
            complete
        }
        assert!(!round(&w, &mut responder).await, "the answer is cut");
        assert!(!round(&w, &mut responder).await, "the answer is cut");
        assert_eq!(w.anti_entropy.rounds(), 0, "no cut round counts");
        assert!(
            says_partner_behind(&w),
            "the partner still lacks most of what it missed"
        );
    }

    fn says_partner_behind(w: &Worker) -> bool {
        matches!(
            w.execute(Request::Status),
            Response::Status {
                partner_behind: true,
                ..
            }
        )
    }

    #[test]
    fn a_missed_write_is_reported_until_a_round_that_began_after_it_completes() {
        let w = worker();
        assert!(!says_partner_behind(&w));
        assert_eq!(w.execute(Request::Missed), Response::Noted);
        assert!(says_partner_behind(&w));
        // The round that may have been running at the notice does not
        // count: it may have compared before the write was stored.
        w.round_completed();
        assert!(says_partner_behind(&w));
        w.round_completed();
        assert!(!says_partner_behind(&w));
        // A later notice starts over; an earlier one never shortens it.
        w.execute(Request::Missed);
        w.round_completed();
        w.execute(Request::Missed);
        w.round_completed();
        assert!(
            says_partner_behind(&w),
            "the second notice counts from its own time"
        );
        w.round_completed();
        assert!(!says_partner_behind(&w));
    }
}
