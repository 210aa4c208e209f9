//! Chaos-test support: a seeded mixed load through orchestrators that
//! records every acknowledged write, and a checker that, once the cluster
//! has healed, reads every key from both workers of its pair directly.
//!
//! Each key is written by one loader thread only, so its expected state is
//! exact: the last acknowledged write, or one of the writes after it whose
//! outcome was unknown. A read through the orchestrator must return that
//! state too (read-your-writes).

use rcache::orchestrator::placement;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The run's seed: `RCACHE_SEED` or drawn from the clock; printed either way.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RCACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (replay with RCACHE_SEED={seed})");
    seed
}

/// A text-protocol connection that reports I/O errors instead of panicking.
pub struct Conn {
    addr: String,
    io: Option<BufReader<Box<dyn super::secure::ReadWrite>>>,
}

impl Conn {
    pub fn new(addr: String) -> Conn {
        Conn { addr, io: None }
    }

    /// One request, one response line (without its newline).
    pub fn req(&mut self, line: &str) -> Result<String, String> {
        if self.io.is_none() {
            let (io, _sock) = super::secure::dial(&self.addr)?;
            self.io = Some(BufReader::new(io));
        }
        let result = match self.io.as_mut() {
            Some(r) => {
                let mut out = String::new();
                let w = r.get_mut();
                w.write_all(format!("{line}\n").as_bytes())
                    .and_then(|_| w.flush())
                    .and_then(|_| r.read_line(&mut out))
                    .map_err(|e| e.to_string())
                    .and_then(|n| {
                        if n == 0 || !out.ends_with('\n') {
                            Err("connection closed".to_string())
                        } else {
                            out.pop();
                            Ok(out)
                        }
                    })
            }
            None => Err("not connected".into()),
        };
        if result.is_err() {
            self.io = None;
        }
        result
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set(String),
    Del,
}

/// What a key may hold: its last acknowledged write, or a later write whose
/// outcome is unknown (never acknowledged, never refused).
#[derive(Debug, Default, Clone)]
pub struct History {
    pub acked: Option<Op>,
    pub unknown: Vec<Op>,
}

impl History {
    /// The response lines a read of this key may get.
    pub fn allowed(&self) -> Vec<String> {
        let render = |op: &Op| match op {
            Op::Set(v) => format!("0||{v}"),
            Op::Del => "2||key not found".to_string(),
        };
        let mut out = vec![self
            .acked
            .as_ref()
            .map_or("2||key not found".into(), render)];
        out.extend(self.unknown.iter().map(render));
        out
    }
}

/// Splits-mix: a small, seedable generator.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// Loader threads: each owns `keys` keys and sets (50%), deletes (10%) and
/// reads (40%) them through one of the orchestrators, checking every read.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ops: Arc<AtomicU64>,
    pub failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<HashMap<String, History>>>,
}

impl Load {
    pub fn start(orchestrators: &[u16], threads: usize, keys: usize, seed: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..threads)
            .map(|t| {
                let port = orchestrators[t % orchestrators.len()];
                let (stop, ops, failures) = (stop.clone(), ops.clone(), failures.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng::new(seed ^ (t as u64).wrapping_mul(0x1000_0001));
                    let mut conn = Conn::new(format!("127.0.0.1:{port}"));
                    let mut history: HashMap<String, History> = HashMap::new();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let key = format!("t{t}:k{}", rng.below(keys as u64));
                        let roll = rng.below(10);
                        let h = history.entry(key.clone()).or_default();
                        let fail = |what: String| {
                            failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(what)
                        };
                        if roll < 5 {
                            let v = format!("v{t}.{n}.{}", rng.next_u64() % 1000);
                            match conn.req(&format!("set||{key}||{v}")).as_deref() {
                                Ok("0||") => {
                                    h.acked = Some(Op::Set(v));
                                    h.unknown.clear();
                                }
                                other => {
                                    h.unknown.push(Op::Set(v));
                                    fail(format!("set {key}: {other:?}"));
                                }
                            }
                        } else if roll < 6 {
                            match conn.req(&format!("del||{key}")).as_deref() {
                                Ok("0||") | Ok("2||key not found") => {
                                    h.acked = Some(Op::Del);
                                    h.unknown.clear();
                                }
                                other => {
                                    h.unknown.push(Op::Del);
                                    fail(format!("del {key}: {other:?}"));
                                }
                            }
                        } else {
                            match conn.req(&format!("get||{key}")) {
                                Ok(line) if h.allowed().contains(&line) => {}
                                other => fail(format!(
                                    "get {key}: {other:?}, expected one of {:?}",
                                    h.allowed()
                                )),
                            }
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                    history
                })
            })
            .collect();
        Load {
            stop,
            ops,
            failures,
            threads,
        }
    }

    /// Waits until `n` more requests were made (bounded: 60s).
    pub fn progress(&self, n: u64) {
        let target = self.ops.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ops.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the load made no progress: {} requests",
                self.ops.load(Ordering::Relaxed)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn failure_count(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Stops the loaders; returns every key's history and the failures.
    pub fn finish(self) -> (HashMap<String, History>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = HashMap::new();
        for t in self.threads {
            all.extend(t.join().expect("loader thread"));
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|p| p.into_inner()));
        println!(
            "load: {} requests, {} keys, {} failed",
            self.ops.load(Ordering::Relaxed),
            all.len(),
            failures.len()
        );
        (all, failures)
    }
}

/// Pairs of worker addresses on loopback.
pub fn loopback(pairs: &[(u16, u16)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(a, b)| (format!("127.0.0.1:{a}"), format!("127.0.0.1:{b}")))
        .collect()
}

/// A worker's `cluster` line as name -> value.
pub fn worker_status(addr: &str) -> Result<HashMap<String, String>, String> {
    let line = Conn::new(addr.to_string()).req("cluster")?;
    let body = line
        .strip_prefix("0||")
        .ok_or_else(|| format!("cluster: {line}"))?;
    Ok(body
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}

/// Waits until both workers of every pair are ready with equal digests
/// (bounded by `timeout`); returns how long that took.
pub fn await_convergence(pairs: &[(String, String)], timeout: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < timeout {
        let converged = pairs
            .iter()
            .all(|(a, b)| match (worker_status(a), worker_status(b)) {
                (Ok(a), Ok(b)) => {
                    let same = a.get("state").map(String::as_str) == Some("ready")
                        && b.get("state").map(String::as_str) == Some("ready")
                        && a.get("digest") == b.get("digest");
                    if !same {
                        last = format!("{a:?} vs {b:?}");
                    }
                    same
                }
                other => {
                    last = format!("{other:?}");
                    false
                }
            });
        if converged {
            return started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("partners did not converge within {timeout:?}; last seen: {last}");
}

/// Reads every key from both workers of its pair directly: both must hold
/// the same, and it must be what the key's history allows.
pub fn check(history: &HashMap<String, History>, pairs: &[(String, String)]) {
    let mut conns: Vec<(Conn, Conn)> = pairs
        .iter()
        .map(|(a, b)| (Conn::new(a.clone()), Conn::new(b.clone())))
        .collect();
    let mut lost = Vec::new();
    let mut diverged = Vec::new();
    for (key, h) in history {
        let pair = placement::locate(key.as_bytes(), pairs.len()).pair;
        let (a, b) = &mut conns[pair];
        let got_a = a.req(&format!("get||{key}")).unwrap_or_else(|e| e);
        let got_b = b.req(&format!("get||{key}")).unwrap_or_else(|e| e);
        if got_a != got_b {
            diverged.push(format!("{key}: {got_a:?} vs {got_b:?}"));
        }
        if !h.allowed().contains(&got_a) {
            lost.push(format!(
                "{key}: {got_a:?}, expected one of {:?}",
                h.allowed()
            ));
        }
    }
    println!(
        "checked {} keys on both workers: {} lost or stale, {} diverged",
        history.len(),
        lost.len(),
        diverged.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged writes lost: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert!(
        diverged.is_empty(),
        "partners differ: {:?}",
        &diverged[..diverged.len().min(10)]
    );
}
