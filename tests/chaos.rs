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
use std::time::{Duration, Instant};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

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
fn freeze_scenario(name: &str, how: &str, worker_extra: &[&str], orchestrator_extra: &[&str]) {
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
    // It caught up without a restart, by the expected mechanism (the
    // orchestrator learns of anti-entropy rounds from its probes).
    let line = format!("worker caught up ({how}) worker=127.0.0.1:{}", victim.port);
    assert!(
        common::eventually(CONVERGE_TIMEOUT, || o.log_text().contains(&line)),
        "no {line:?} in the orchestrator's log:\n{}",
        o.log_text()
    );
}

#[test]
fn a_worker_frozen_for_10s_catches_up_by_hints() {
    freeze_scenario("freeze-hints", "hints delivered", &[], &[]);
}

#[test]
fn a_worker_frozen_for_10s_catches_up_by_anti_entropy_when_hints_overflow() {
    // No room for hints: anti-entropy alone must repair what it missed.
    freeze_scenario(
        "freeze-anti-entropy",
        "anti-entropy with its partner",
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
