//! Chaos tests on real processes over loopback: workers are killed (-9),
//! frozen (SIGSTOP/SIGCONT) and restarted under a seeded mixed load. After
//! each scenario heals, the checker reads every key from both workers of
//! its pair directly: no acknowledged write lost, partners identical (by
//! key and by whole-store digest), and no failed client request while at
//! most one worker per pair was down. `RCACHE_SEED=N` replays a run's load.

mod common;

use common::chaos::{await_convergence, check, loopback, seed, worker_status, Conn, Load, Rng};
use common::{free_ports, orchestrator, secure, worker, worker_starting, Daemon};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The TTL the full-cache load gives the values it sets with one.
const SETEX_TTL: Duration = Duration::from_secs(2);

/// Two pairs on fresh ports: workers (0,1) and (2,3).
fn two_pairs(extra: &[&str]) -> (Vec<Daemon>, Vec<(u16, u16)>) {
    let ports: Vec<u16> = free_ports::<4>().to_vec();
    // Started together: each finds its partner starting (or refills from
    // it), none waits out refill_wait.
    let mut workers: Vec<Daemon> = (0..4)
        .map(|i| worker_starting(ports[i], Some(ports[i ^ 1]), extra))
        .collect();
    for w in &mut workers {
        w.wait_ready();
    }
    (workers, vec![(ports[0], ports[1]), (ports[2], ports[3])])
}

fn ports(pairs: &[(u16, u16)]) -> Vec<u16> {
    pairs.iter().flat_map(|&(a, b)| [a, b]).collect()
}

fn restart(workers: &mut [Daemon], i: usize, extra: &[&str]) {
    let port = workers[i].port;
    let partner = workers[i ^ 1].port;
    workers[i] = worker(port, Some(partner), extra);
}

fn assert_no_failures(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} client requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// Stops the load, asserts no request failed, waits until the partners'
/// digests agree, then checks every key on both workers of its pair.
fn finish_and_check(load: Load, pairs: &[(u16, u16)]) {
    let (history, failures) = load.finish();
    assert_no_failures(&failures);
    let took = await_convergence(&loopback(pairs), CONVERGE_TIMEOUT);
    println!("partners identical {took:?} after the load stopped");
    check(&history, &loopback(pairs));
}

#[test]
fn killing_one_worker_of_each_pair_under_load_loses_nothing() {
    let seed = seed("kill");
    let (mut workers, pairs) = two_pairs(&[]);
    let o = orchestrator(&ports(&pairs), &[]);
    let load = Load::start(&[o.port], 4, 300, seed);
    load.progress(1_000);
    let victims = [(seed % 2) as usize, 2 + (seed / 2 % 2) as usize];
    for &v in &victims {
        println!("kill -9 worker {}", workers[v].port);
        workers[v].kill9();
    }
    load.progress(3_000);
    for &v in &victims {
        restart(&mut workers, v, &[]);
        assert!(workers[v].log_text().contains("refilled from the partner"));
    }
    load.progress(2_000);
    finish_and_check(load, &pairs);
}

#[test]
fn a_rolling_restart_of_every_worker_loses_nothing() {
    let seed = seed("rolling");
    let (mut workers, pairs) = two_pairs(&[]);
    let o = orchestrator(&ports(&pairs), &[]);
    let load = Load::start(&[o.port], 4, 300, seed);
    load.progress(1_000);
    for i in 0..workers.len() {
        let status = workers[i].terminate().expect("running");
        assert!(status.success(), "worker {i} exited with {status}");
        load.progress(300);
        restart(&mut workers, i, &[]);
        load.progress(500);
    }
    finish_and_check(load, &pairs);
}

/// SIGSTOP for `freeze` under load, then SIGCONT: the frozen worker must
/// catch up without a restart.
fn freeze_scenario(name: &str, hinted: bool, worker_extra: &[&str], orchestrator_extra: &[&str]) {
    let seed = seed(name);
    let (workers, pairs) = two_pairs(worker_extra);
    let o = orchestrator(&ports(&pairs), orchestrator_extra);
    let load = Load::start(&[o.port], 4, 300, seed);
    load.progress(1_000);
    let victim = &workers[(seed % 4) as usize];
    println!("SIGSTOP worker {} for 10s", victim.port);
    victim.signal(libc::SIGSTOP);
    let frozen_at = Instant::now();
    let before = load.ops.load(std::sync::atomic::Ordering::Relaxed);
    while frozen_at.elapsed() < Duration::from_secs(10) {
        load.progress(100);
    }
    let during = load.ops.load(std::sync::atomic::Ordering::Relaxed) - before;
    victim.signal(libc::SIGCONT);
    println!("SIGCONT after {during} requests made during the freeze");
    assert!(
        during > 1_000,
        "the load stalled during the freeze: {during}"
    );
    load.progress(2_000);
    finish_and_check(load, &pairs);
    // It caught up without a restart: its hints delivered (when there was
    // room for them), and anti-entropy confirming it missed nothing else
    // (it was unreachable, so other orchestrators' writes may have missed
    // it too; the orchestrator learns of rounds from its probes).
    let mut lines = vec![format!(
        "worker caught up (anti-entropy with its partner) worker=127.0.0.1:{}",
        victim.port
    )];
    if hinted {
        lines.push(format!("hints delivered; reads wait for anti-entropy to confirm the worker missed nothing else worker=127.0.0.1:{}", victim.port));
    }
    for line in lines {
        assert!(
            common::eventually(CONVERGE_TIMEOUT, || o.log_text().contains(&line)),
            "no {line:?} in the orchestrator's log:\n{}",
            o.log_text()
        );
    }
}

#[test]
fn a_worker_frozen_for_10s_catches_up_by_hints() {
    freeze_scenario("freeze-hints", true, &[], &[]);
}

#[test]
fn a_worker_frozen_for_10s_catches_up_by_anti_entropy_when_hints_overflow() {
    // No room for hints: anti-entropy alone must repair what it missed.
    freeze_scenario(
        "freeze-anti-entropy",
        false,
        &["--anti-entropy-interval", "500ms"],
        &["--max-hint-bytes", "0"],
    );
}

#[test]
fn two_orchestrators_writing_the_same_keys_converge() {
    let seed = seed("two-orchestrators");
    let (_workers, pairs) = two_pairs(&[]);
    let o1 = orchestrator(&ports(&pairs), &[]);
    let o2 = orchestrator(&ports(&pairs), &[]);
    // Keys of their own, written through both orchestrators, read back.
    let load = Load::start(&[o1.port, o2.port], 4, 200, seed);
    // And shared keys that a writer on each orchestrator races on.
    const SHARED: u64 = 50;
    let racers: Vec<_> = [o1.port, o2.port]
        .into_iter()
        .enumerate()
        .map(|(w, port)| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (0xabc + w as u64));
                let mut conn = Conn::new(format!("127.0.0.1:{port}"));
                let mut last_acked: HashMap<u64, u64> = HashMap::new();
                for seq in 1..=3_000u64 {
                    let k = rng.below(SHARED);
                    let r = conn.req(&format!("set||shared:{k}||w{w}.{seq}"));
                    assert_eq!(r.as_deref(), Ok("0||"), "racer {w} set shared:{k}");
                    last_acked.insert(k, seq);
                }
                last_acked
            })
        })
        .collect();
    let acked: Vec<HashMap<u64, u64>> = racers
        .into_iter()
        .map(|r| r.join().expect("racer"))
        .collect();
    finish_and_check(load, &pairs);
    // Every shared key holds the same value on both partners, a value one
    // of the racers wrote, and never one older than that racer's last
    // acknowledged write of the key (one orchestrator's versions only grow).
    for k in 0..SHARED {
        let pair =
            rcache::orchestrator::placement::locate(format!("shared:{k}").as_bytes(), 2).pair;
        let (a, b) = pairs[pair];
        let got_a = Conn::new(format!("127.0.0.1:{a}")).req(&format!("get||shared:{k}"));
        let got_b = Conn::new(format!("127.0.0.1:{b}")).req(&format!("get||shared:{k}"));
        assert_eq!(got_a, got_b, "shared:{k} differs between partners");
        let Ok(line) = got_a else {
            panic!("shared:{k}: {got_a:?}")
        };
        if let Some(v) = line.strip_prefix("0||w") {
            let (w, seq) = v.split_once('.').expect("racer value");
            let (w, seq): (usize, u64) = (w.parse().expect("w"), seq.parse().expect("seq"));
            let last = acked[w].get(&k).copied().unwrap_or(0);
            assert!(
                seq >= last,
                "shared:{k} went back to w{w}.{seq} after w{w}.{last} was acknowledged"
            );
        } else {
            assert!(
                acked.iter().all(|a| !a.contains_key(&k)),
                "shared:{k}: {line}"
            );
        }
    }
}

/// Writes `n` entries straight to a worker, pipelined.
fn fill(port: u16, n: usize, value_bytes: usize) {
    let (io, _sock) = secure::dial(&format!("127.0.0.1:{port}")).expect("connect");
    let mut reader = BufReader::new(io);
    let value = "x".repeat(value_bytes);
    let batch = 10_000;
    for start in (0..n).step_by(batch) {
        let mut out = String::new();
        for i in start..(start + batch).min(n) {
            out.push_str(&format!("set||fill:{i:08}||{value}\n"));
        }
        let writer = reader.get_mut();
        writer
            .write_all(out.as_bytes())
            .and_then(|_| writer.flush())
            .expect("write");
        for _ in start..(start + batch).min(n) {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            assert_eq!(line, "0||\n");
        }
    }
}

#[test]
fn the_partner_dying_mid_refill_is_reported_and_refilled_back() {
    let [a_port, b_port] = free_ports();
    let mut a = worker(a_port, Some(b_port), &[]);
    let mut b = worker(b_port, Some(a_port), &[]);
    const N: usize = 400_000;
    fill(a_port, N, 100);
    b.kill9();
    drop(b);
    // B comes back and refills from A; A dies while the stream runs.
    let mut b = worker_starting(b_port, Some(a_port), &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "B never started refilling");
        if let Ok(s) = worker_status(&format!("127.0.0.1:{b_port}")) {
            let refilled: u64 = s.get("refilled").and_then(|v| v.parse().ok()).unwrap_or(0);
            if s.get("state").map(String::as_str) == Some("refilling") && refilled > 0 {
                break;
            }
            assert_ne!(
                s.get("state").map(String::as_str),
                Some("ready"),
                "the refill ended before the partner could be killed: make N larger"
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    a.kill9();
    b.wait_ready();
    let log = b.log_text();
    assert!(log.contains("REFILL INCOMPLETE"), "{log}");
    let kept: u64 = worker_status(&format!("127.0.0.1:{b_port}")).expect("status")["entries"]
        .parse()
        .expect("entries");
    println!("B kept {kept} of {N} entries when A died mid-refill");
    assert!(kept > 0 && kept < N as u64, "kept {kept}");
    // B serves what it has; A comes back empty and refills everything from B.
    drop(a);
    let a = worker(a_port, Some(b_port), &[]);
    assert!(
        a.log_text().contains(&format!(
            "refilled from the partner partner=127.0.0.1:{b_port} entries={kept} "
        )),
        "{}",
        a.log_text()
    );
    await_convergence(&loopback(&[(a_port, b_port)]), CONVERGE_TIMEOUT);
    let o = orchestrator(&[a_port, b_port], &[]);
    let mut c = Conn::new(o.addr());
    assert_eq!(c.req("set||after||1").as_deref(), Ok("0||"));
    assert_eq!(c.req("get||after").as_deref(), Ok("0||1"));
}

/// One key's record in the full-cache run: every write carries the next
/// sequence number of its key, so a value read shows how old it is.
#[derive(Debug, Default, Clone, Copy)]
struct Seqs {
    /// The last write (set or delete) acknowledged before now.
    acked: u64,
    /// The last write attempted (acknowledged or not).
    attempted: u64,
    /// What the last write was (for reports).
    last: &'static str,
}

/// What the full-cache run saw.
#[derive(Debug, Default)]
struct Seen {
    requests: u64,
    failed: Vec<String>,
    stale: Vec<String>,
    misses: u64,
    hits: u64,
}

/// A loader of the full-cache run: owns its keys (drawn Zipf), writes
/// increasing sequence numbers in 1 KB values (a fifth of them with a
/// 2 s TTL), deletes now and then, reads, and alternates the orchestrators
/// on every request (trying the other when one does not answer).
fn full_cache_loader(
    t: usize,
    orchestrators: [u16; 2],
    keys: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
) -> (HashMap<String, Seqs>, Seen) {
    let zipf = rcache::zipf::Zipf::new(keys, 0.99);
    let mut zrng = rcache::zipf::Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x51));
    let mut rng = Rng::new(seed ^ (t as u64 + 1).wrapping_mul(0x9e37));
    let mut conns = orchestrators.map(|p| Conn::new(format!("127.0.0.1:{p}")));
    let mut state: HashMap<String, Seqs> = HashMap::new();
    let mut seen = Seen::default();
    let pad: String = (0..1_000)
        .map(|_| char::from(b'a' + (rng.below(26) as u8)))
        .collect();
    let mut n = 0usize;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = format!("t{t}:k{}", zipf.sample(&mut zrng));
        let s = state.entry(key.clone()).or_default();
        let roll = rng.below(10);
        let (line, write) = if roll < 4 {
            s.attempted += 1;
            let value = format!("{}.{pad}", s.attempted);
            if rng.below(5) == 0 {
                s.last = "setex";
                (
                    format!("setex||{key}||{}||{value}", SETEX_TTL.as_secs()),
                    true,
                )
            } else {
                s.last = "set";
                (format!("set||{key}||{value}"), true)
            }
        } else if roll < 5 {
            s.attempted += 1;
            s.last = "del";
            (format!("del||{key}"), true)
        } else {
            (format!("get||{key}"), false)
        };
        // Alternate, and fail over to the other orchestrator.
        let first = n % 2;
        let mut answer = Err(String::new());
        let mut via = first;
        for i in [first, 1 - first] {
            via = i;
            answer = conns[i].req(&line);
            if answer.is_ok() {
                break;
            }
        }
        seen.requests += 1;
        ops.fetch_add(1, Ordering::Relaxed);
        match (write, answer) {
            (true, Ok(a)) if a == "0||" || a == "2||key not found" => s.acked = s.attempted,
            (false, Ok(a)) if a == "2||key not found" => seen.misses += 1,
            (false, Ok(a)) if a.starts_with("0||") => {
                seen.hits += 1;
                let seq: u64 = a[3..]
                    .split_once('.')
                    .and_then(|(n, _)| n.parse().ok())
                    .unwrap_or(0);
                if seq < s.acked || seq > s.attempted {
                    let at = started.elapsed();
                    // How both orchestrators see the workers right after,
                    // for the first few (what explains a stale read).
                    let views = if seen.stale.len() < 3 {
                        let mut view = |i: usize| conns[i].req("cluster").unwrap_or_else(|e| e);
                        format!("; views now: o0 [{}] o1 [{}]", view(0), view(1))
                    } else {
                        String::new()
                    };
                    seen.stale.push(format!(
                        "{key}: read write {seq} through orchestrator {via} after write {} ({}) was acknowledged (last attempted {}) at {at:?}{views}",
                        s.acked, s.last, s.attempted
                    ));
                }
            }
            (_, other) => seen.failed.push(format!("{line:.40}: {other:?}")),
        }
    }
    (state, seen)
}

/// The promise at scale: two pairs of workers kept full (1 MiB each,
/// evicting), a Zipf load of 1 KB values with TTLs through two
/// orchestrators, one of them with its clock 10 s behind, alternated on
/// every request. Meanwhile a worker is frozen for 3 s, an orchestrator is
/// killed (-9, its hints lost) and restarted while it is frozen, and then
/// another worker is killed and restarted. No request fails, no read
/// returns a value older than one acknowledged before it (misses are
/// allowed: a full cache evicts, TTLs expire), and afterwards partners
/// are identical and hold nothing older than the last acknowledged write.
#[test]
fn a_full_cache_with_ttls_restarts_and_a_skewed_clock_serves_nothing_stale() {
    let seed = seed("full-cache");
    let extra = ["--max-memory", "1MiB", "--anti-entropy-interval", "500ms"];
    let (mut workers, pairs) = two_pairs(&extra);
    let worker_ports = ports(&pairs);
    let o_extra = ["--worker-timeout", "300ms", "--health-interval", "100ms"];
    let mut o1 = orchestrator(&worker_ports, &o_extra);
    let behind = common::skewed_clock("-10s");
    if behind.is_none() {
        println!("NOTE: the second orchestrator runs with the true clock (no libfaketime)");
    }
    let o2 = common::orchestrator_skewed(&worker_ports, behind.as_deref().unwrap_or(&[]));
    let (stop, ops) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let t0 = Instant::now();
    let loaders: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ops) = (stop.clone(), ops.clone());
            let ports = [o1.port, o2.port];
            std::thread::spawn(move || full_cache_loader(t, ports, 5_000, seed, stop, ops))
        })
        .collect();
    let progress = |n: u64| {
        let target = ops.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while ops.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    progress(8_000);
    println!("freeze at {:?}", t0.elapsed());
    workers[1].signal(libc::SIGSTOP);
    progress(1_000);
    // The orchestrator dies with the hints it held for the frozen worker.
    let port = o1.port;
    println!("orchestrator killed at {:?}", t0.elapsed());
    o1.kill9();
    let restarted = common::orchestrator_on(port, &worker_ports, &o_extra);
    progress(1_000);
    workers[1].signal(libc::SIGCONT);
    println!("thawed at {:?}", t0.elapsed());
    progress(4_000);
    println!("worker killed at {:?}", t0.elapsed());
    workers[2].kill9();
    restart(&mut workers, 2, &extra);
    progress(4_000);
    stop.store(true, Ordering::Relaxed);
    let mut state = HashMap::new();
    let mut seen = Seen::default();
    for l in loaders {
        let (s, v) = l.join().expect("loader");
        state.extend(s);
        seen.requests += v.requests;
        seen.misses += v.misses;
        seen.hits += v.hits;
        seen.failed.extend(v.failed);
        seen.stale.extend(v.stale);
    }
    // Every request of the loaders was sent by now.
    let stopped = Instant::now();
    let evictions: f64 = workers
        .iter()
        .map(|w| common::scrape(&w.metrics_addr(), "rcache_evictions_total").unwrap_or(0.0))
        .sum();
    println!(
        "full cache: {} requests, {} reads hit, {} missed, {} evictions, {} failed, {} stale",
        seen.requests,
        seen.hits,
        seen.misses,
        evictions,
        seen.failed.len(),
        seen.stale.len()
    );
    assert!(
        seen.failed.is_empty(),
        "{} failed: {:?}",
        seen.failed.len(),
        &seen.failed[..seen.failed.len().min(10)]
    );
    assert!(
        seen.stale.is_empty(),
        "{} stale reads: {:?}",
        seen.stale.len(),
        &seen.stale[..seen.stale.len().min(10)]
    );
    assert!(
        evictions > 1_000.0,
        "the cache was not full: {evictions} evictions"
    );
    // Healed: partners identical, and nothing older than acknowledged.
    let took = await_convergence(&loopback(&pairs), CONVERGE_TIMEOUT);
    println!("partners identical {took:?} after the load stopped");
    // Values set with a TTL expire on their own, each partner at its own
    // read: the keys are compared once the last of them has expired, so an
    // expiry between the two reads is not taken for a difference.
    let all_expired = stopped + SETEX_TTL + Duration::from_millis(200);
    std::thread::sleep(all_expired.saturating_duration_since(Instant::now()));
    assert_eq!(
        Conn::new(restarted.addr()).req("ping").as_deref(),
        Ok("0||pong")
    );
    let mut conns: Vec<(Conn, Conn)> = loopback(&pairs)
        .into_iter()
        .map(|(a, b)| (Conn::new(a), Conn::new(b)))
        .collect();
    let (mut differ, mut old, mut held) = (Vec::new(), Vec::new(), 0);
    for (key, s) in &state {
        let pair = rcache::orchestrator::placement::locate(key.as_bytes(), pairs.len()).pair;
        let (a, b) = &mut conns[pair];
        let (got_a, got_b) = (a.req(&format!("get||{key}")), b.req(&format!("get||{key}")));
        if got_a != got_b {
            differ.push(format!("{key}: {got_a:?} vs {got_b:?}"));
        }
        if let Ok(v) = &got_a {
            if let Some(rest) = v.strip_prefix("0||") {
                held += 1;
                let seq: u64 = rest
                    .split_once('.')
                    .and_then(|(n, _)| n.parse().ok())
                    .unwrap_or(0);
                if seq < s.acked || seq > s.attempted {
                    old.push(format!(
                        "{key}: holds write {seq}, acknowledged {}",
                        s.acked
                    ));
                }
            }
        }
    }
    println!(
        "{} keys, {held} held on both workers of their pair",
        state.len()
    );
    assert!(
        differ.is_empty(),
        "{} keys differ: {:?}",
        differ.len(),
        &differ[..differ.len().min(10)]
    );
    assert!(
        old.is_empty(),
        "{} keys hold old writes: {:?}",
        old.len(),
        &old[..old.len().min(10)]
    );
}
