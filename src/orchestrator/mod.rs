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
mod keyspace;
pub mod layout;
pub mod metrics;
pub use crate::placement;
pub mod pool;
mod route;

use crate::join::join_all;
use crate::net::{self, Closed, Conn, Handler, LiveConfig, ServerConfig};
use crate::protocol::link::{is_hole, placement_of};
use crate::shutdown::Shutdown;
use crate::sys::{TcpListener, TcpStream};
use crate::version::Clock;
use arc_swap::ArcSwap;
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

/// The worker pairs in force; a reload or a new layout swaps in another.
pub struct Topology {
    /// The pairs requests go to (the layout's source while keys move),
    /// holes left out.
    pub pairs: Vec<[Arc<Backend>; 2]>,
    /// Where keys go: over the layout's buckets, holes included.
    placement: placement::Placement,
    /// Each bucket's index in `pairs` (a hole's is never used).
    buckets: Vec<usize>,
    /// Workers of pairs keys are moving to: probed and given the layout,
    /// sent no requests until the move settled.
    pub joining: Vec<Arc<Backend>>,
    /// What was put in force: the pairs with their holes, and the joining
    /// workers' addresses.
    spec: (Vec<[String; 2]>, Vec<String>),
}

impl Topology {
    /// The key's pair (an index in `pairs`) and which worker reads first.
    pub fn locate(&self, key: &[u8]) -> placement::Slot {
        let slot = self.placement.locate(key);
        placement::Slot {
            pair: self.buckets.get(slot.pair).copied().unwrap_or(0),
            first: slot.first,
        }
    }

    /// Every worker: the pairs' and the joining ones.
    pub fn workers(&self) -> impl Iterator<Item = &Arc<Backend>> {
        self.pairs.iter().flatten().chain(self.joining.iter())
    }

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
    /// The config's `workers`: the pairs in force until the cluster's
    /// layout is learned, and the seed it is learned from.
    seed: std::sync::Mutex<Vec<[String; 2]>>,
    changing: std::sync::Mutex<()>,
    /// Held while the layout is fetched after a `MOVED`.
    learning: tokio::sync::Mutex<()>,
    /// Client listener settings; a reload may change them.
    pub live: LiveConfig,
    pub metrics: metrics::OrchestratorMetrics,
    /// What client connections' read buffers may hold together.
    pub budget: Arc<net::ReadBudget>,
    /// The client connections open now (`CLIENT LIST`).
    pub clients: Arc<crate::clients::Registry>,
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
        let pairs: Vec<_> = config
            .pairs
            .iter()
            .map(|[a, b]| [start(a), start(b)])
            .collect();
        Router {
            topology: ArcSwap::from_pointee(Topology {
                placement: placement::Placement::new(vec![false; pairs.len()]),
                buckets: (0..pairs.len()).collect(),
                pairs,
                joining: Vec::new(),
                spec: (config.pairs.clone(), Vec::new()),
            }),
            clock: Clock::with_random_node(),
            worker_timeout: config.worker_timeout,
            probe: health::ProbeSettings::from_config(config, dial),
            probing: std::sync::Mutex::new(None),
            seed: std::sync::Mutex::new(config.pairs.clone()),
            changing: std::sync::Mutex::new(()),
            learning: tokio::sync::Mutex::new(()),
            settings,
            live: LiveConfig::from_pointee(config.server.clone()),
            budget: net::ReadBudget::new(&config.server, &metrics.server),
            clients: Arc::default(),
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
            .workers()
            .map(|b| health::spawn_probe(b.clone(), self.probe.clone(), shutdown.clone()))
            .collect()
    }

    /// Applies what a reload may change while serving: `idle_timeout` and
    /// the pair list ([`Router::install_pairs`]), unless the cluster holds
    /// a layout: then the file's `workers` only seed, and a list that
    /// differs is logged as stale ([`layout`]).
    pub fn reload(&self, new: &OrchestratorConfig) {
        let mut server = ServerConfig::clone(&self.live.load());
        server.idle_timeout = new.server.idle_timeout;
        server.request_timeout = new.server.request_timeout;
        // Certificates read again: new connections and links use them.
        server.tls = new.server.tls.clone();
        self.settings
            .dial
            .store(Arc::new(crate::client::Dial::from_server(&server)));
        self.live.store(Arc::new(server));
        *self.seed() = new.pairs.clone();
        let _changing = self.changing();
        if let Some(layout) = self.probe.layouts.current() {
            // The cluster's layout is in force: the file only seeds.
            self.warn_if_stale(&layout);
            return;
        }
        if let Some((pairs_before, pairs_now, added, removed)) =
            self.install_pairs(&new.pairs, &[], None)
        {
            tracing::warn!(
                pairs_before,
                pairs = pairs_now,
                workers_added = added,
                workers_removed = removed,
                "pair list changed: keys that now map to another pair read as misses until written again"
            );
        }
    }

    /// Held while the pairs in force are chosen and put in force (a
    /// reload's, a layout's).
    fn changing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The config's `workers` as last read.
    fn seed(&self) -> std::sync::MutexGuard<'_, Vec<[String; 2]>> {
        self.seed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `pairs` (holes among them) in force, and probes `joining`:
    /// workers that stay keep their links, health and hints; new ones are
    /// probed from now on; removed ones are let go once their last request
    /// is answered. `None` when they already are; else the pairs before
    /// and after, and the workers added and removed.
    ///
    /// A worker let go is given `farewell` first (the layout that leaves
    /// it out: a removed pair's workers then drop what they hold).
    fn install_pairs(
        &self,
        pairs: &[[String; 2]],
        joining: &[String],
        farewell: Option<&crate::protocol::link::Layout>,
    ) -> Option<(usize, usize, usize, usize)> {
        let probing = self.probing();
        let old = self.topology();
        let spec = (pairs.to_vec(), joining.to_vec());
        if old.spec == spec {
            return None;
        }
        let mut existing: HashMap<&str, &Arc<Backend>> = HashMap::new();
        for backend in old.workers() {
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
        let mut serving = Vec::new();
        let mut buckets = Vec::with_capacity(pairs.len());
        for pair in pairs {
            buckets.push(if is_hole(pair) { 0 } else { serving.len() });
            if !is_hole(pair) {
                serving.push([get(&pair[0]), get(&pair[1])]);
            }
        }
        let joining: Vec<Arc<Backend>> = joining.iter().map(&mut get).collect();
        let topology = Topology {
            placement: placement_of(pairs),
            buckets,
            pairs: serving,
            joining,
            spec,
        };
        let kept: std::collections::HashSet<String> =
            topology.workers().map(|b| b.addr.clone()).collect();
        let (pairs_before, pairs_now) = (old.pairs.len(), topology.pairs.len());
        self.topology.store(Arc::new(topology));
        let mut retired = 0;
        for backend in old.workers() {
            if !kept.contains(&backend.addr) {
                if let Some(layout) = farewell {
                    let request = Arc::new(crate::protocol::link::Request::Layout {
                        layout: Some(layout.clone()),
                        you: backend.addr.clone(),
                    });
                    let backend = backend.clone();
                    tokio::spawn(async move {
                        let _ = backend.call(request).await;
                        backend.retire();
                    });
                } else {
                    backend.retire();
                }
                self.metrics.forget(&backend.addr);
                retired += 1;
            }
        }
        drop(probing);
        Some((pairs_before, pairs_now, started, retired))
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

    /// The workers as this orchestrator sees them, for `cluster`: each
    /// one's pair (its place in the layout), health, entries, hints,
    /// anti-entropy rounds, and the migration's step with the keys the
    /// worker handed over and has left to hand over.
    ///
    /// The layout and each worker's part in a migration are asked of the
    /// workers now, so what it shows is not a probe interval old.
    pub async fn describe(&self) -> String {
        self.learn_layout(self.probe.layouts.epoch()).await;
        let layout = self.probe.layouts.current();
        let epoch = layout.as_ref().map_or(0, |l| l.epoch);
        let step = match layout.as_ref().and_then(|l| l.source.as_ref()) {
            None => "settled",
            Some(s) if s.sealed => "sealed",
            Some(_) => "copying",
        };
        let topology = self.topology();
        let places: Vec<usize> = topology
            .spec
            .0
            .iter()
            .enumerate()
            .filter(|(_, p)| !is_hole(p))
            .map(|(i, _)| i)
            .collect();
        let mut records = Vec::new();
        let mut record = |place: usize, backend: &Backend, standing: Health| {
            let v = backend.view();
            let (moved, left) = match backend.handoff() {
                Some(h) if h.epoch == epoch => (h.keys_moved, h.keys_left),
                _ => (0, 0),
            };
            records.push(format!(
                "epoch={epoch} pair={place} worker={} health={} entries={} hints={} synced={} \
                 step={step} moved={moved} left={left}",
                v.addr,
                standing.name(),
                v.entries,
                v.hints,
                v.synced
            ));
        };
        for (i, pair) in topology.pairs.iter().enumerate() {
            for (j, backend) in pair.iter().enumerate() {
                let place = places.get(i).copied().unwrap_or(i);
                record(place, backend, Backend::standing(pair, j));
            }
        }
        for backend in &topology.joining {
            let place = layout
                .as_ref()
                .and_then(|l| l.find(&backend.addr))
                .map_or(0, |(i, _)| i);
            record(place, backend, backend.health());
        }
        records.join(";")
    }
}

struct ClientHandler {
    router: Arc<Router>,
}

impl Handler for ClientHandler {
    async fn handle(self: Arc<Self>, stream: TcpStream, mut shutdown: Shutdown) -> Closed {
        let router = &self.router;
        let addrs = (stream.peer_addr().ok(), stream.local_addr().ok());
        let stream = match net::secure(stream, &router.live.load()).await {
            Ok(s) => s,
            Err(closed) => return closed,
        };
        let mut conn = Conn::accepted(stream, &router.budget);
        net::serve_client(
            &mut conn,
            &**router,
            (&router.clients, addrs),
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
        tokio::spawn(self.router.clone().follow_layouts(shutdown.clone()));
        let bound = 2 * self.config.health_timeout;
        let backends: Vec<_> = self.router.topology().workers().cloned().collect();
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
        // The first probes gave the cluster's layout, if it has one: it is
        // in force before the first request.
        self.router.follow_layout();
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
            self.config.server.max_connections_per_source,
            self.router.metrics.server.clone(),
            shutdown,
        )
        .await;
        for probe in probes {
            probe.abort();
        }
    }
}
