//! A deterministic simulation of a whole cluster (turmoil): two worker
//! pairs and two orchestrators as hosts of one simulated network, in one
//! thread, with simulated time. Three seeded clients, each owning its keys,
//! run a mixed load (sets, some with TTLs of 1 or 2 s, deletes, reads)
//! through the first orchestrator, and through the second while the first
//! is down. The orchestrators' clocks are skewed from each other by a
//! seeded offset (up to 10 s either way). A seeded schedule, one fault at a
//! time, partitions a worker from everyone, holds the orchestrators'
//! messages to one, crashes and restarts one, or steps an orchestrator's
//! clock back (or forward) by 10 s; during a worker fault it may also crash
//! an orchestrator and restart it, which loses the hints it held. Never
//! more than one worker of a pair is faulty at a time.
//!
//! Each client checks every reply: no request fails (a client whose
//! orchestrator is down retries through the other, as a client of a
//! stateless proxy does), a read returns the last acknowledged value or one
//! whose outcome is unknown, never an older one, and a miss only after a
//! TTL ran out or a delete (or, under memory pressure, an eviction). Then
//! everything heals and the checker reads every key from both workers of
//! its pair: no acknowledged write lost, and partners identical.
//!
//! One seed in four runs the workers at a 1 MiB `max_memory` with 64 KiB
//! values, so they evict (a miss is then allowed, an older value never).
//!
//! A harder load is switched on by hand, because rcache does not hold it
//! yet (docs/fault-tolerance.md, "Limits"): `RCACHE_SIM_SPREAD=1` sends
//! each request through either orchestrator at random, so two
//! orchestrators disagree for a moment on whether a worker is up (one holds
//! hints for it while the other reads from it).
//!
//! Runs `RCACHE_SIM_SEEDS` seeds (default 200) from `RCACHE_SIM_FIRST_SEED`
//! (default 1), each in a process of its own; `RCACHE_SIM_SEED=N` replays
//! one seed exactly (`RCACHE_SIM_TRACE=1` prints its whole trace,
//! `RCACHE_SIM_LOG=debug` the daemons' logs in simulated time), and the
//! test checks that replaying a seed gives the same trace, step by step and
//! millisecond by millisecond. Build:
//! `cargo nextest run --features simulation --test simulation`.

#![cfg(feature = "simulation")]

use rcache::client::text::TextClient;
use rcache::config::{RawOrchestrator, RawWorker};
use rcache::protocol::{Command, Expiry, Reply, SetWhen};
use rcache::shutdown::shutdown_channel;
use rcache::{orchestrator, worker};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use tokio::time::Instant;

const WORKERS: [&str; 4] = ["w1", "w2", "w3", "w4"];
const ORCHESTRATORS: [&str; 2] = ["o1", "o2"];
const CLIENTS: usize = 3;
/// Keys per client.
const KEYS: u64 = 12;
/// Requests per client.
const OPS: u64 = 500;
/// How far a clock step moves an orchestrator's clock.
const STEP_MS: i64 = 10_000;
/// The value size under memory pressure: 18 keys a pair of 64 KiB each are
/// more than a 1 MiB worker holds.
const PRESSURE_VALUE: usize = 64 << 10;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from + 1))
    }
}

/// What a seed chose for the whole run.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    seed: u64,
    /// The second orchestrator's clock offset at start, in ms.
    skew_ms: i64,
    /// Clients send each request through either orchestrator at random
    /// (`RCACHE_SIM_SPREAD=1`); otherwise through the first, and through
    /// the second only while the first is down.
    spread: bool,
    /// Workers at a 1 MiB `max_memory`, values of [`PRESSURE_VALUE`] bytes,
    /// in one seed of four.
    pressure: bool,
}

impl Scenario {
    fn of(seed: u64) -> Scenario {
        let mut rng = Rng(seed ^ 0x5ce7_a110);
        let on = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
        Scenario {
            seed,
            skew_ms: [0, -STEP_MS, STEP_MS, -3_000][rng.below(4) as usize],
            spread: on("RCACHE_SIM_SPREAD"),
            pressure: seed % 4 == 0,
        }
    }
}

fn partner(w: &str) -> &'static str {
    match w {
        "w1" => "w2",
        "w2" => "w1",
        "w3" => "w4",
        _ => "w3",
    }
}

async fn run_worker(name: &'static str, scenario: Scenario) -> turmoil::Result {
    let raw = RawWorker {
        listen: "0.0.0.0:7001".into(),
        partner: Some(format!("{}:7001", partner(name))),
        anti_entropy_interval: "1s".into(),
        // A restarted worker whose partner is cut off starts empty after a
        // second of simulated retries, not ten: the faults stay one at a time.
        refill_wait: "1s".into(),
        max_memory: if scenario.pressure { "1MiB" } else { "64MiB" }.into(),
        ..RawWorker::default()
    };
    let (config, _) = raw.validate()?;
    let bound = worker::bind(config).await?;
    let (trigger, shutdown) = shutdown_channel();
    bound.run(shutdown, |_| {}).await;
    drop(trigger);
    Ok(())
}

async fn run_orchestrator(skew: Arc<AtomicI64>) -> turmoil::Result {
    let raw = RawOrchestrator {
        listen: "0.0.0.0:7000".into(),
        workers: vec![
            vec!["w1:7001".into(), "w2:7001".into()],
            vec!["w3:7001".into(), "w4:7001".into()],
        ],
        ..RawOrchestrator::default()
    };
    let (config, _) = raw.validate()?;
    assert_eq!(
        config.worker_timeout, WORKER_TIMEOUT,
        "the schedule's bound"
    );
    // The clock this host's orchestrator stamps versions with; `bind`
    // builds it without yielding to another host.
    rcache::sys::sim::skew_next_clock(skew);
    let bound = orchestrator::bind(config).await?;
    let (trigger, shutdown) = shutdown_channel();
    bound.run(shutdown).await;
    drop(trigger);
    Ok(())
}

/// Hosts the schedule asks the step loop to crash or restart (only done
/// between steps).
#[derive(Default)]
struct Requests {
    crash: Vec<&'static str>,
    restart: Vec<&'static str>,
}

/// What the schedule does.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// A worker cut from the orchestrators and its partner; it keeps running.
    Partition(&'static str),
    /// The orchestrators' messages to and from a worker are held, then
    /// released.
    Hold(&'static str),
    /// A worker crashed, later restarted (empty: it refills).
    Crash(&'static str),
    /// An orchestrator's clock steps by this many ms, and stays there.
    Step(usize, i64),
}

struct World {
    requests: RefCell<Requests>,
    trace: RefCell<Vec<String>>,
    skews: [Arc<AtomicI64>; 2],
    clients_done: Cell<usize>,
}

impl World {
    fn log(&self, line: String) {
        let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        self.trace.borrow_mut().push(format!("{at} ms: {line}"));
    }
}

impl Fault {
    fn start(self, world: &World) {
        match self {
            Fault::Partition(w) => {
                for other in ORCHESTRATORS.iter().copied().chain([partner(w)]) {
                    turmoil::partition(w, other);
                }
            }
            Fault::Hold(w) => {
                for o in ORCHESTRATORS {
                    turmoil::hold(o, w);
                }
            }
            Fault::Crash(w) => world.requests.borrow_mut().crash.push(w),
            Fault::Step(o, by) => {
                world.skews[o].fetch_add(by, Ordering::Relaxed);
            }
        }
    }

    fn heal(self, world: &World) {
        match self {
            Fault::Partition(w) => {
                for other in ORCHESTRATORS.iter().copied().chain([partner(w)]) {
                    turmoil::repair(w, other);
                }
            }
            Fault::Hold(w) => {
                for o in ORCHESTRATORS {
                    turmoil::release(o, w);
                }
            }
            Fault::Crash(w) => world.requests.borrow_mut().restart.push(w),
            Fault::Step(..) => {}
        }
    }
}

/// The faults, one at a time, until every client is done; then everything
/// heals.
async fn schedule(scenario: Scenario, world: Rc<World>) -> turmoil::Result {
    let mut rng = Rng(scenario.seed ^ 0xfa01_7500);
    settle("start").await?;
    while world.clients_done.get() < CLIENTS {
        tokio::time::sleep(rng.millis(100, 1_500)).await;
        // No fault once the clients check convergence.
        if world.clients_done.get() == CLIENTS {
            break;
        }
        let fault = match rng.below(4) {
            3 => {
                let o = rng.below(2) as usize;
                // Steps back, unless that would put the clock more than
                // 20 s behind.
                let back = world.skews[o].load(Ordering::Relaxed) > -2 * STEP_MS;
                Fault::Step(o, if back { -STEP_MS } else { STEP_MS })
            }
            kind => {
                let w = WORKERS[rng.below(4) as usize];
                [Fault::Partition, Fault::Hold, Fault::Crash][kind as usize](w)
            }
        };
        fault.start(&world);
        world.log(format!("{fault:?}"));
        if !matches!(fault, Fault::Step(..)) {
            let lasts = rng.millis(300, 3_000);
            // An orchestrator crashed while a worker is faulty loses the
            // hints it held for it; it is back before the worker is.
            if rng.below(3) == 0 {
                let o = ORCHESTRATORS[rng.below(2) as usize];
                let down = rng.millis(50, (lasts.as_millis() as u64 - 200).max(51) / 2);
                tokio::time::sleep(down).await;
                // Only hints for the faulty worker are lost: the new process
                // finds it unreachable and keeps it out of reads until
                // anti-entropy repaired it. Hints for a worker that is back
                // (a write it missed late) would be lost with nothing to
                // tell the new process it is behind: a known limit
                // (docs/fault-tolerance.md; seed 856 shows it).
                match hints_beside(o, fault).await {
                    None => {
                        world.requests.borrow_mut().crash.push(o);
                        world.log(format!("crashed {o}"));
                        tokio::time::sleep(down).await;
                        world.requests.borrow_mut().restart.push(o);
                        world.log(format!("restarted {o}"));
                    }
                    Some(why) => {
                        world.log(format!("kept {o}: {why}"));
                        tokio::time::sleep(down).await;
                    }
                }
                tokio::time::sleep(lasts.saturating_sub(2 * down)).await;
            } else {
                tokio::time::sleep(lasts).await;
            }
            fault.heal(&world);
            world.log(format!("healed {fault:?}"));
            // A request the fault lost ends (times out) up to a
            // `worker_timeout` after the heal, and only then does its
            // orchestrator see the worker down: until then the fault is
            // not over, and a next one in the same pair would be a second
            // fault at once (seed 990: a read whose first try was lost in
            // a partition and whose failover met a hold of the partner).
            tokio::time::sleep(WORKER_TIMEOUT).await;
        }
        // Two faults in one pair at once are beyond what rcache promises:
        // the last one must have healed completely (every worker up, none
        // refilling or behind) before the next one starts.
        settle("after a fault").await?;
    }
    Ok(())
}

/// Why crashing orchestrator `o` now would lose more than its hints for the
/// faulty worker: a worker other than the fault's that `o` does not see up
/// or holds hints for (`None` if there is none).
async fn hints_beside(o: &str, fault: Fault) -> Option<String> {
    let faulty = match fault {
        Fault::Partition(w) | Fault::Hold(w) | Fault::Crash(w) => w,
        Fault::Step(..) => "",
    };
    let view = match TextClient::connect(&format!("{o}:7000"), Duration::from_secs(1)).await {
        Ok(mut c) => match c.request(&Command::Cluster).await {
            Ok(Reply::Value(v)) => String::from_utf8_lossy(&v).into_owned(),
            other => return Some(format!("{other:?}")),
        },
        Err(e) => return Some(e.to_string()),
    };
    view.split(';')
        .filter(|w| !w.contains(&format!("worker={faulty}:")))
        .find(|w| !w.contains("health=up") || !w.contains("hints=0 "))
        .map(str::to_owned)
}

/// The orchestrators' `worker_timeout` (the default).
const WORKER_TIMEOUT: Duration = Duration::from_secs(1);

/// Waits (in simulated time, at most 60 s) until every worker says it is
/// ready and each orchestrator sees every worker up.
async fn settle(when: &str) -> turmoil::Result {
    let give_up = Instant::now() + Duration::from_secs(60);
    let second = Duration::from_secs(1);
    loop {
        let mut view = String::new();
        let mut ready = true;
        for o in ORCHESTRATORS {
            let state = match TextClient::connect(&format!("{o}:7000"), second).await {
                Ok(mut c) => match c.request(&Command::Cluster).await {
                    Ok(Reply::Value(v)) => String::from_utf8_lossy(&v).into_owned(),
                    other => format!("{other:?}"),
                },
                Err(e) => e.to_string(),
            };
            ready &= state.split(';').filter(|w| w.contains("health=up")).count() == 4;
            view.push_str(&format!("; {o}: {state}"));
        }
        for w in WORKERS {
            let state = match TextClient::connect(&format!("{w}:7001"), second).await {
                Ok(mut c) => format!("{:?}", c.request(&Command::Cluster).await),
                Err(e) => e.to_string(),
            };
            ready &= state.contains("state=ready");
            view.push_str(&format!("; {w}: {state}"));
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > give_up {
            return Err(format!("{when}: the cluster did not heal{view}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Value(Vec<u8>),
    /// Set with a TTL that runs out at this instant (or later: the worker's
    /// count starts when the write reaches it).
    Expiring(Vec<u8>, Instant),
    Missing,
}

impl Expect {
    fn allows(&self, seen: &Seen, now: Instant, evicting: bool) -> bool {
        match (self, seen) {
            (Expect::Missing, Seen::Missing) => true,
            (_, Seen::Missing) if evicting => true,
            (Expect::Value(v), Seen::Value(s)) | (Expect::Expiring(v, _), Seen::Value(s)) => v == s,
            // Store clocks count whole milliseconds.
            (Expect::Expiring(_, at), Seen::Missing) => now + Duration::from_millis(2) >= *at,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Value(Vec<u8>),
    Missing,
}

#[derive(Debug, Default)]
struct History {
    acked: Option<Expect>,
    /// Writes whose outcome the client does not know.
    unknown: Vec<Expect>,
}

impl History {
    fn allows(&self, seen: &Seen, now: Instant, evicting: bool) -> bool {
        self.acked
            .as_ref()
            .unwrap_or(&Expect::Missing)
            .allows(seen, now, evicting)
            || self.unknown.iter().any(|e| e.allows(seen, now, evicting))
    }

    fn acknowledge(&mut self, e: Expect) {
        self.acked = Some(e);
        self.unknown.clear();
    }
}

fn seen(reply: &Reply) -> Option<Seen> {
    match reply {
        Reply::Value(v) => Some(Seen::Value(v.to_vec())),
        Reply::Error(e) if e.code.as_u8() == 2 => Some(Seen::Missing),
        _ => None,
    }
}

fn key(client: usize, k: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!("c{client}k{k}"))
}

/// A value: its tag, padded under memory pressure with random letters,
/// which lz4 cannot shrink (the text protocol carries no line breaks).
fn value(tag: String, rng: &mut Rng, pressure: bool) -> bytes::Bytes {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut v = tag.into_bytes();
    if pressure {
        v.push(b'-');
        while v.len() < PRESSURE_VALUE {
            v.push(LETTERS[rng.below(LETTERS.len() as u64) as usize]);
        }
    }
    v.into()
}

/// A value in the trace: its tag and length.
fn tag(v: &[u8]) -> String {
    let tag: String = v
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric())
        .map(|&b| b as char)
        .collect();
    format!("{tag}({}B)", v.len())
}

fn brief_command(command: &Command) -> String {
    match command {
        Command::Set {
            key, value, ttl, ..
        } => {
            format!(
                "set {} {} ttl {ttl:?}",
                String::from_utf8_lossy(key),
                tag(value)
            )
        }
        Command::Del { key } => format!("del {}", String::from_utf8_lossy(key)),
        Command::Get { key } => format!("get {}", String::from_utf8_lossy(key)),
        other => format!("{other:?}"),
    }
}

fn brief_reply<E: std::fmt::Debug>(reply: &Result<Reply, E>) -> String {
    match reply {
        Ok(Reply::Value(v)) => format!("value {}", tag(v)),
        Ok(Reply::Error(e)) => format!("error {}: {}", e.code.as_u8(), e.message),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("failed: {e:?}"),
    }
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expect::Value(v) => write!(f, "{}", tag(v)),
            Expect::Expiring(v, at) => write!(f, "{} until {at:?}", tag(v)),
            Expect::Missing => write!(f, "missing"),
        }
    }
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.acked {
            Some(e) => write!(f, "acked {e}")?,
            None => write!(f, "never written")?,
        }
        for e in &self.unknown {
            write!(f, ", maybe {e}")?;
        }
        Ok(())
    }
}

/// What both workers of `key`'s pair hold for it (version and TTL, read
/// over the link), for the trace of a failing read.
async fn held(key: &[u8]) -> String {
    use rcache::protocol::link::Request;
    let pair = rcache::orchestrator::placement::locate(key, 2).pair;
    let mut out = Vec::new();
    for w in [WORKERS[2 * pair], WORKERS[2 * pair + 1]] {
        let timeout = Duration::from_secs(1);
        let meta = Request::Meta {
            key: bytes::Bytes::copy_from_slice(key),
        };
        let answer = match rcache::client::link::LinkConn::connect(
            &format!("{w}:7001"),
            &rcache::client::Dial::default(),
            timeout,
        )
        .await
        {
            Ok(mut link) => format!("{:?}", link.call(&meta, timeout).await),
            Err(e) => e.to_string(),
        };
        out.push(format!("{w}: {answer}"));
    }
    for o in ORCHESTRATORS {
        let view = match TextClient::connect(&format!("{o}:7000"), Duration::from_secs(1)).await {
            Ok(mut c) => format!("{:?}", c.request(&Command::Cluster).await),
            Err(e) => e.to_string(),
        };
        out.push(format!("{o}: {view}"));
    }
    out.join(", ")
}

/// One connection per orchestrator, opened when needed.
struct Conns {
    conns: [Option<TextClient>; 2],
}

impl Conns {
    async fn request(&mut self, o: usize, command: &Command) -> Result<Reply, String> {
        let timeout = Duration::from_secs(5);
        if self.conns[o].is_none() {
            let c = TextClient::connect(&format!("{}:7000", ORCHESTRATORS[o]), timeout)
                .await
                .map_err(|e| e.to_string())?;
            self.conns[o] = Some(c);
        }
        let Some(conn) = self.conns[o].as_mut() else {
            return Err("no connection".into());
        };
        let reply = conn.request(command).await.map_err(|e| e.to_string());
        if reply.is_err() {
            self.conns[o] = None;
        }
        reply
    }
}

async fn client(id: usize, scenario: Scenario, world: Rc<World>) -> turmoil::Result {
    let mut rng = Rng(scenario.seed.wrapping_mul(31).wrapping_add(id as u64));
    let mut conns = Conns {
        conns: [None, None],
    };
    let mut history: BTreeMap<u64, History> = BTreeMap::new();
    let mut failures = Vec::new();
    // The cluster starts with the simulation: wait until it is up, as an
    // operator would.
    settle("start").await?;
    for op in 0..OPS {
        let k = rng.below(KEYS);
        let roll = rng.below(20);
        let command = if roll < 10 {
            // The text protocol counts TTLs in whole seconds.
            let ttl = (roll < 2).then(|| Duration::from_secs(1 + rng.below(2)));
            Command::Set {
                key: key(id, k),
                value: value(format!("c{id}v{op}"), &mut rng, scenario.pressure),
                ttl: ttl.map(Expiry::In),
                when: SetWhen::Always,
            }
        } else if roll < 12 {
            Command::Del { key: key(id, k) }
        } else {
            Command::Get { key: key(id, k) }
        };
        let expect = match &command {
            Command::Set {
                value,
                ttl: Some(Expiry::In(ttl)),
                ..
            } => Some(Expect::Expiring(value.to_vec(), Instant::now() + *ttl)),
            Command::Set { value, .. } => Some(Expect::Value(value.to_vec())),
            Command::Del { .. } => Some(Expect::Missing),
            _ => None,
        };
        // Either orchestrator; if it is down, the other.
        let first = if scenario.spread {
            rng.below(2) as usize
        } else {
            0
        };
        let h = history.entry(k).or_default();
        let mut reply = Err(String::new());
        for o in [first, 1 - first] {
            reply = conns.request(o, &command).await;
            world.log(format!(
                "c{id} op {op} via {}: {} -> {}",
                ORCHESTRATORS[o],
                brief_command(&command),
                brief_reply(&reply)
            ));
            match &reply {
                Ok(_) => break,
                // The request may have been applied before the connection
                // broke.
                Err(_) => h.unknown.extend(expect.clone()),
            }
        }
        let now = Instant::now();
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => {
                failures.push(format!(
                    "op {op}: {} through both orchestrators: {e}",
                    brief_command(&command)
                ));
                continue;
            }
        };
        // The text protocol answers a write with `0||`, which a client reads
        // as an empty value.
        let done =
            matches!(&reply, Reply::Done) || matches!(&reply, Reply::Value(v) if v.is_empty());
        match (&command, &reply) {
            (Command::Set { .. }, _) if done => {
                h.acknowledge(expect.clone().unwrap_or(Expect::Missing))
            }
            (Command::Del { .. }, _) if done => h.acknowledge(Expect::Missing),
            (Command::Del { .. }, Reply::Error(e)) if e.code.as_u8() == 2 => {
                h.acknowledge(Expect::Missing)
            }
            (Command::Get { .. }, r)
                if seen(r).is_some_and(|s| h.allows(&s, now, scenario.pressure)) => {}
            (Command::Set { .. } | Command::Del { .. }, _) => {
                h.unknown.extend(expect.clone());
                failures.push(format!(
                    "c{id} op {op}: {} -> {}",
                    brief_command(&command),
                    brief_reply::<()>(&Ok(reply.clone()))
                ));
            }
            _ => {
                let failure = format!(
                    "c{id} op {op}: {} -> {}, history: {h}; held: {}",
                    brief_command(&command),
                    brief_reply::<()>(&Ok(reply.clone())),
                    held(&key(id, k)).await
                );
                world.log(failure.clone());
                failures.push(failure);
            }
        }
    }
    world.clients_done.set(world.clients_done.get() + 1);
    if !failures.is_empty() {
        return Err(format!("c{id}: failed requests: {failures:?}").into());
    }
    // Wait for the schedule to heal its last fault, then the partners must
    // converge and hold every acknowledged write.
    settle("end").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let timeout = Duration::from_secs(5);
    loop {
        let mut problems = Vec::new();
        for (k, h) in &history {
            let pair = rcache::orchestrator::placement::locate(&key(id, *k), 2).pair;
            let mut replies = Vec::new();
            for w in [WORKERS[2 * pair], WORKERS[2 * pair + 1]] {
                let reply = match TextClient::connect(&format!("{w}:7001"), timeout).await {
                    // Failed: the worker is still restarting; asked again.
                    Ok(mut c) => match c.request(&Command::Get { key: key(id, *k) }).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            Reply::error(rcache::protocol::ErrorCode::Unavailable, e.to_string())
                        }
                    },
                    Err(e) => Reply::error(rcache::protocol::ErrorCode::Unavailable, e.to_string()),
                };
                if !seen(&reply).is_some_and(|s| h.allows(&s, Instant::now(), scenario.pressure)) {
                    problems.push(format!(
                        "c{id}k{k} on {w}: {}, history: {h}",
                        brief_reply::<()>(&Ok(reply.clone()))
                    ));
                }
                replies.push(reply);
            }
            if replies[0] != replies[1] {
                problems.push(format!(
                    "c{id}k{k} differs: {} / {}",
                    brief_reply::<()>(&Ok(replies[0].clone())),
                    brief_reply::<()>(&Ok(replies[1].clone()))
                ));
            }
        }
        if problems.is_empty() {
            world.log(format!("c{id} converged"));
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("c{id}: no convergence: {problems:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Log lines stamped with the simulated time (`RCACHE_SIM_LOG=debug`).
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        write!(w, "{at} ms")
    }
}

/// Runs one seed; returns its trace.
fn simulate(seed: u64) -> Result<Vec<String>, String> {
    if let Some(level) = std::env::var("RCACHE_SIM_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
    {
        let _ = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_timer(SimTime)
            .with_writer(std::io::stderr)
            .try_init();
    }
    rcache::sys::sim::seed(seed);
    let scenario = Scenario::of(seed);
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_secs(900))
        .min_message_latency(Duration::from_micros(100))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(4096)
        .build();
    let world = Rc::new(World {
        requests: RefCell::default(),
        trace: RefCell::new(vec![format!("{scenario:?}")]),
        skews: [
            Arc::new(AtomicI64::new(0)),
            Arc::new(AtomicI64::new(scenario.skew_ms)),
        ],
        clients_done: Cell::new(0),
    });
    for w in WORKERS {
        sim.host(w, move || run_worker(w, scenario));
    }
    for (o, skew) in ORCHESTRATORS.into_iter().zip(world.skews.clone()) {
        sim.host(o, move || run_orchestrator(skew.clone()));
    }
    for id in 0..CLIENTS {
        sim.client(format!("c{id}"), client(id, scenario, world.clone()));
    }
    sim.client("schedule", schedule(scenario, world.clone()));
    loop {
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                let t = world.trace.borrow();
                // RCACHE_SIM_TRACE=1 prints the whole trace.
                let shown = if std::env::var_os("RCACHE_SIM_TRACE").is_some() {
                    t.len()
                } else {
                    25
                };
                let tail = &t[t.len().saturating_sub(shown)..];
                return Err(format!(
                    "seed {seed}: {e}\n{scenario:?}\nlast steps:\n{}",
                    tail.join("\n")
                ));
            }
        }
        let mut r = world.requests.borrow_mut();
        for host in std::mem::take(&mut r.crash) {
            sim.crash(host);
        }
        for host in std::mem::take(&mut r.restart) {
            sim.bounce(host);
        }
    }
    let trace = world.trace.borrow().clone();
    Ok(trace)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

const SEEDED_TEST: &str = "seeded_simulations_keep_every_acknowledged_write";

/// Runs one seed in a process of its own (this test binary, running
/// [`SEEDED_TEST`] for `RCACHE_SIM_CHILD`) and returns its trace.
///
/// A seed replays exactly only in a fresh process: tokio numbers tasks from
/// one counter per process and a runtime that shuts down (a crashed host)
/// drops its tasks in an order that follows those numbers, so a simulation
/// beside another, or after one, closes its sockets in another order.
fn simulate_in_child(seed: u64, run: &str) -> Result<Vec<String>, String> {
    let dir = std::env::temp_dir().join(format!("rcache-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let trace_file = dir.join(format!("{seed}-{run}.trace"));
    let exe = std::env::current_exe().map_err(|e| format!("this test binary: {e}"))?;
    let out = std::process::Command::new(&exe)
        .args([SEEDED_TEST, "--exact", "--nocapture", "--test-threads", "1"])
        .env("RCACHE_SIM_CHILD", seed.to_string())
        .env("RCACHE_SIM_TRACE_FILE", &trace_file)
        .output()
        .map_err(|e| format!("{}: {e}", exe.display()))?;
    let trace = std::fs::read_to_string(&trace_file);
    let _ = std::fs::remove_file(&trace_file);
    if !out.status.success() {
        return Err(format!(
            "seed {seed} ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let trace = trace.map_err(|e| format!("seed {seed}: trace {}: {e}", trace_file.display()))?;
    Ok(trace.lines().map(str::to_owned).collect())
}

#[test]
fn seeded_simulations_keep_every_acknowledged_write() {
    if let Some(seed) = env_u64("RCACHE_SIM_CHILD") {
        let trace = simulate(seed).unwrap_or_else(|e| panic!("{e}"));
        if let Some(file) = std::env::var_os("RCACHE_SIM_TRACE_FILE") {
            std::fs::write(&file, trace.join("\n"))
                .unwrap_or_else(|e| panic!("{}: {e}", std::path::Path::new(&file).display()));
        }
        return;
    }
    if let Some(seed) = env_u64("RCACHE_SIM_SEED") {
        // One seed, in this process (a fresh one): it replays exactly.
        if let Err(e) = simulate(seed) {
            panic!("{e}\nreplay: RCACHE_SIM_SEED={seed}");
        }
        return;
    }
    let first = env_u64("RCACHE_SIM_FIRST_SEED").unwrap_or(1);
    let seeds: Vec<u64> = (first..first + env_u64("RCACHE_SIM_SEEDS").unwrap_or(200)).collect();
    // Each seed runs in a process of its own, as many at once as there are
    // cores.
    let parallel = env_u64("RCACHE_SIM_THREADS")
        .map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n as usize,
        )
        .clamp(1, seeds.len().max(1));
    println!(
        "simulating seeds {first}..{} in {parallel} processes at a time",
        first + seeds.len() as u64
    );
    let mut failed: Vec<u64> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..parallel)
            .map(|t| {
                let seeds = &seeds;
                scope.spawn(move || {
                    let mut failed = Vec::new();
                    for &seed in seeds.iter().skip(t).step_by(parallel) {
                        if let Err(e) = simulate_in_child(seed, "run") {
                            eprintln!("{e}\nreplay: RCACHE_SIM_SEED={seed}");
                            failed.push(seed);
                        }
                    }
                    failed
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|run| {
                run.join()
                    .unwrap_or_else(|_| panic!("a simulation thread panicked"))
            })
            .collect()
    });
    failed.sort_unstable();
    println!("{} seeds simulated, {} failed", seeds.len(), failed.len());
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let seed = env_u64("RCACHE_SIM_SEED").unwrap_or(7);
    let first = simulate_in_child(seed, "first").unwrap_or_else(|e| panic!("{e}"));
    let second = simulate_in_child(seed, "second").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        first.len() > CLIENTS * OPS as usize,
        "trace of {} steps",
        first.len()
    );
    if let Some(i) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        panic!(
            "seed {seed} did not replay exactly: step {i} was {:?}, then {:?} (step before: {:?})",
            first.get(i),
            second.get(i),
            i.checked_sub(1).and_then(|j| first.get(j))
        );
    }
}
