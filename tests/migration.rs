//! Growing and shrinking a live cluster (`rcache cluster add-pair`,
//! `remove-pair`): keys move to their new pair while every pair serves,
//! under a load through two orchestrators that checks every acknowledged
//! write, and the old pair gives the moved keys back. On real processes.

mod common;

use common::load::{orchestrator_from, rcache, Load};
use common::*;
use rcache::placement::Placement;
use rcache::protocol::resp::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An orchestrator config naming `pairs` (ports), never edited after.
fn config(port: u16, pairs: &[[u16; 2]]) -> PathBuf {
    let workers: Vec<String> = pairs
        .iter()
        .map(|[a, b]| format!("[\"127.0.0.1:{a}\", \"127.0.0.1:{b}\"]"))
        .collect();
    let path = log_dir().join(format!("orchestrator-{port}.toml"));
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nworker_timeout = \"300ms\"\n\
             health_interval = \"200ms\"\nworkers = [{}]\n",
            workers.join(", ")
        ),
    )
    .expect("config");
    path
}

/// Two workers started together as partners.
fn new_pair(ports: [u16; 2]) -> [Daemon; 2] {
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut a = worker_starting(ports[0], Some(ports[1]), &ae);
    let mut b = worker_starting(ports[1], Some(ports[0]), &ae);
    a.wait_ready();
    b.wait_ready();
    [a, b]
}

const VALUE: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz";

/// Sends `line(i)` for each of `keys` to `port` pipelined, 500 at a time,
/// and hands each answer to `answer`.
fn pipelined(
    port: u16,
    keys: impl Iterator<Item = usize>,
    line: impl Fn(usize) -> String,
    mut answer: impl FnMut(usize, String),
) {
    let mut c = Client::connect(port);
    for chunk in keys.collect::<Vec<_>>().chunks(500) {
        let lines: String = chunk.iter().map(|&i| line(i) + "\n").collect();
        c.send_raw(lines.as_bytes());
        for &i in chunk {
            answer(i, c.read_line());
        }
    }
}

/// Writes `n` keys `pre{i}` through the orchestrator on `port`.
fn preload(port: u16, n: usize) {
    pipelined(
        port,
        0..n,
        |i| format!("set||pre{i}||{VALUE}{i}"),
        |i, got| assert_eq!(got, "0||", "set pre{i}"),
    );
}

/// Every preloaded key reads back through the orchestrator on `port`.
fn check_preloaded(port: u16, n: usize) {
    pipelined(
        port,
        0..n,
        |i| format!("get||pre{i}"),
        |i, got| assert_eq!(got, format!("0||{VALUE}{i}"), "pre{i} via {port}"),
    );
}

/// How many of the preloaded keys `keys` picks a worker holds, asked
/// directly, and how many it was asked for.
fn held(worker: u16, n: usize, keys: impl Fn(usize) -> bool) -> (usize, usize) {
    let (mut there, mut asked) = (0, 0);
    pipelined(
        worker,
        (0..n).filter(|i| keys(*i)),
        |i| format!("get||pre{i}"),
        |_, got| {
            asked += 1;
            there += usize::from(got.starts_with("0||"));
        },
    );
    (there, asked)
}

/// Every acknowledged write of the load and every preloaded key read back
/// through each orchestrator.
fn reads_back(orchestrators: [u16; 2], lasts: &[Vec<Option<usize>>], n: usize) {
    for port in orchestrators {
        Load::check_all(port, lasts);
        check_preloaded(port, n);
    }
}

fn pair_of(i: usize, holes: &[bool]) -> usize {
    Placement::new(holes.to_vec())
        .locate(format!("pre{i}").as_bytes())
        .pair
}

/// Waits for `rcache cluster wait` to say the cluster settled.
fn settled(port: u16) -> Duration {
    let started = Instant::now();
    let (ok, said) = rcache(port, &["cluster", "wait", "--timeout", "60s"]);
    assert!(ok && said.contains("no keys moving"), "via {port}: {said}");
    started.elapsed()
}

#[test]
fn a_pair_added_to_two_takes_a_third_of_the_keys_under_load() {
    let [a1, a2, b1, b2, c1, c2, p1, p2] = free_ports();
    let a = new_pair([a1, a2]);
    let b = new_pair([b1, b2]);
    let (f1, f2) = (
        config(p1, &[[a1, a2], [b1, b2]]),
        config(p2, &[[a1, a2], [b1, b2]]),
    );
    let o1 = orchestrator_from(&f1, p1);
    let o2 = orchestrator_from(&f2, p2);
    const N: usize = 20_000;
    preload(p1, N);
    let load = Load::start([p1, p2], 4);
    load.run(2_000);

    let c = new_pair([c1, c2]);
    let (ca, cb) = (format!("127.0.0.1:{c1}"), format!("127.0.0.1:{c2}"));
    let (ok, said) = rcache(p1, &["cluster", "add-pair", &ca, &cb]);
    assert!(ok, "{said}");
    // A table: the header, then epoch 1, pair 2.
    let row: Vec<&str> = said
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["1", "2"], "{said}");
    let took = settled(p1);
    settled(p2);
    load.run(2_000);
    let (lasts, requests) = load.stop_without_failures();
    reads_back([p1, p2], &lasts, N);
    // The new pair holds the keys it took over, about a third; the old
    // pairs gave them back.
    let moved = |i: usize| pair_of(i, &[false; 3]) == 2;
    let count = (0..N).filter(|i| moved(*i)).count();
    assert!((N / 4..N * 2 / 5).contains(&count), "{count} of {N} moved");
    for w in [c1, c2] {
        assert_eq!(held(w, N, moved), (count, count), "new worker {w}");
    }
    for w in [a1, a2, b1, b2] {
        assert_eq!(
            held(w, N, moved).0,
            0,
            "old worker {w} still holds moved keys"
        );
    }
    let dropped: f64 = a
        .iter()
        .chain(&b)
        .map(|w| scrape(&w.metrics_addr(), "rcache_migration_keys_dropped_total").unwrap_or(0.0))
        .sum();
    assert!(
        dropped >= 2.0 * count as f64,
        "dropped {dropped}, moved {count}"
    );
    let (_, shown) = rcache(p2, &["cluster"]);
    assert!(shown.contains(&ca) && shown.contains("settled"), "{shown}");
    drop(c);
    println!(
        "added a pair under load: {count} of {N} keys moved in {took:?}, {requests} requests, 0 failed"
    );
    drop((o1, o2));
}

#[test]
fn one_pair_of_three_is_removed_under_load_and_its_workers_empty() {
    let [a1, a2, b1, b2, c1, c2, p1, p2] = free_ports();
    let _a = new_pair([a1, a2]);
    let mut b = new_pair([b1, b2]);
    let _c = new_pair([c1, c2]);
    let pairs = [[a1, a2], [b1, b2], [c1, c2]];
    let (f1, f2) = (config(p1, &pairs), config(p2, &pairs));
    let _o1 = orchestrator_from(&f1, p1);
    let _o2 = orchestrator_from(&f2, p2);
    const N: usize = 20_000;
    preload(p1, N);
    let load = Load::start([p1, p2], 4);
    load.run(2_000);

    let (ok, said) = rcache(p2, &["cluster", "remove-pair", &format!("127.0.0.1:{b2}")]);
    assert!(ok, "{said}");
    settled(p1);
    settled(p2);
    load.run(2_000);
    // The removed pair's workers gave every key back.
    for w in &b {
        let metrics = w.metrics_addr();
        assert!(
            eventually(Duration::from_secs(10), || scrape(
                &metrics,
                "rcache_entries"
            ) == Some(0.0)),
            "{} still holds entries",
            w.name
        );
    }
    let (_, shown) = rcache(p1, &["cluster"]);
    assert!(!shown.contains(&format!("127.0.0.1:{b1}")), "{shown}");
    // Nothing depends on them now.
    for d in &mut b {
        assert_eq!(d.terminate().and_then(|s| s.code()), Some(0));
    }
    load.run(2_000);
    let (lasts, requests) = load.stop_without_failures();
    reads_back([p1, p2], &lasts, N);
    // The keys of the other pairs stayed where they were.
    let kept = |i: usize| pair_of(i, &[false; 3]) == 0;
    let there = (0..N).filter(|i| kept(*i)).count();
    assert_eq!(held(a1, N, kept), (there, there));
    println!("removed a pair under load: {requests} requests, 0 failed");
}

#[test]
fn a_migration_goes_on_when_the_orchestrator_that_started_it_is_killed() {
    let [a1, a2, b1, b2, p1, p2] = free_ports();
    let _a = new_pair([a1, a2]);
    let pairs = [[a1, a2]];
    let (f1, f2) = (config(p1, &pairs), config(p2, &pairs));
    let mut o1 = orchestrator_from(&f1, p1);
    let o2 = orchestrator_from(&f2, p2);
    const N: usize = 50_000;
    preload(p2, N);
    let load = Load::start([p1, p2], 4);
    load.run(1_000);
    let _b = new_pair([b1, b2]);
    // Clients leave the orchestrator that makes the change, which dies
    // as soon as the change is made.
    load.drain(p1);
    let (ok, said) = rcache(
        p1,
        &[
            "cluster",
            "add-pair",
            &format!("127.0.0.1:{b1}"),
            &format!("127.0.0.1:{b2}"),
        ],
    );
    o1.kill9();
    assert!(ok, "{said}");
    // The other orchestrator moves it on: it seals and settles it.
    settled(p2);
    for step in ["step=\"sealed\"", "step=\"settled\""] {
        assert!(
            o2.log_text().contains(step),
            "{step} not made by the survivor: {}",
            o2.log_text()
        );
    }
    load.run(2_000);
    // Restarted with its original file (one pair), the orchestrator takes
    // the two-pair layout before it serves.
    let o1 = orchestrator_from(&f1, p1);
    assert!(
        o1.log_text().contains("the cluster's layout is in force"),
        "{}",
        o1.log_text()
    );
    load.undrain();
    load.run(2_000);
    let (lasts, requests) = load.stop_without_failures();
    reads_back([p1, p2], &lasts, N);
    let moved = |i: usize| pair_of(i, &[false; 2]) == 1;
    let count = (0..N).filter(|i| moved(*i)).count();
    assert_eq!(held(b1, N, moved), (count, count));
    assert_eq!(held(a1, N, moved).0, 0);
    println!("migration finished by the surviving orchestrator: {requests} requests, 0 failed");
}

#[test]
fn a_worker_killed_while_its_keys_move_comes_back_and_the_move_completes() {
    let [a1, a2, b1, b2, p1, p2] = free_ports();
    let [mut w1, _w2] = new_pair([a1, a2]);
    let pairs = [[a1, a2]];
    let (f1, f2) = (config(p1, &pairs), config(p2, &pairs));
    let _o1 = orchestrator_from(&f1, p1);
    let _o2 = orchestrator_from(&f2, p2);
    const N: usize = 50_000;
    preload(p1, N);
    let load = Load::start([p1, p2], 4);
    load.run(1_000);
    let _b = new_pair([b1, b2]);
    let (ok, said) = rcache(
        p1,
        &[
            "cluster",
            "add-pair",
            &format!("127.0.0.1:{b1}"),
            &format!("127.0.0.1:{b2}"),
        ],
    );
    assert!(ok, "{said}");
    // A worker handing keys over dies; its partner serves the pair, and
    // the move waits for it.
    w1.kill9();
    load.run(2_000);
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut back = worker_starting(a1, Some(a2), &ae);
    back.wait_ready();
    settled(p1);
    settled(p2);
    assert!(
        back.log_text().contains("handing off the keys that move"),
        "the restarted worker took no part: {}",
        back.log_text()
    );
    load.run(2_000);
    let (lasts, requests) = load.stop_without_failures();
    reads_back([p1, p2], &lasts, N);
    let moved = |i: usize| pair_of(i, &[false; 2]) == 1;
    let count = (0..N).filter(|i| moved(*i)).count();
    for w in [b1, b2] {
        assert_eq!(held(w, N, moved), (count, count), "new worker {w}");
    }
    for w in [a1, a2] {
        assert_eq!(held(w, N, moved).0, 0, "old worker {w}");
    }
    println!("a worker killed mid-move: {requests} requests, 0 failed");
}

/// Three pairs on `ports` (two workers each, then two orchestrators): the
/// first pair, and the rest, to keep running.
fn three_pairs(ports: [u16; 8]) -> ([Daemon; 2], Vec<Daemon>) {
    let [a1, a2, b1, b2, c1, c2, p1, p2] = ports;
    let a = new_pair([a1, a2]);
    let mut rest: Vec<Daemon> = new_pair([b1, b2]).into_iter().collect();
    rest.extend(new_pair([c1, c2]));
    let pairs = [[a1, a2], [b1, b2], [c1, c2]];
    for port in [p1, p2] {
        rest.push(orchestrator_from(&config(port, &pairs), port));
    }
    (a, rest)
}

/// Sets each of `keys` (the `i`th to `{VALUE}{i}`) through `port`.
fn set_keys(port: u16, keys: &[String]) {
    pipelined(
        port,
        0..keys.len(),
        |i| format!("set||{}||{VALUE}{i}", keys[i]),
        |i, got| assert_eq!(got, "0||", "set {}", keys[i]),
    );
}

/// `n` keys of the middle of three pairs that go to pair `to` once it is
/// removed.
fn leaving_the_middle_pair_for(to: usize, n: usize) -> Vec<String> {
    let before = Placement::new(vec![false; 3]);
    let after = Placement::new(vec![false, true, false]);
    (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| before.locate(k.as_bytes()).pair == 1 && after.locate(k.as_bytes()).pair == to)
        .take(n)
        .collect()
}

/// What is written while keys move reaches their new pair, also a pair
/// none of the moving keys went to when the move began. The removed pair
/// holds only keys bound for the first pair when the change starts. With
/// a worker of the first pair stopped, the move stays in its copy step
/// while keys bound for the third pair are written; once the move
/// settled, each reads back from the third pair.
#[test]
fn writes_during_a_move_reach_a_pair_that_had_no_keys_coming() {
    let ports = free_ports();
    let [_, _, b1, _, c1, c2, p1, p2] = ports;
    let (a, _rest) = three_pairs(ports);
    let to_a = leaving_the_middle_pair_for(0, 50_000);
    let to_c = leaving_the_middle_pair_for(2, 500);
    set_keys(p1, &to_a);
    let (ok, said) = rcache(p1, &["cluster", "remove-pair", &format!("127.0.0.1:{b1}")]);
    assert!(ok, "{said}");
    // The move cannot leave its copy step while a worker it hands keys to
    // is stopped.
    a[0].signal(libc::SIGSTOP);
    let (_, shown) = rcache(p1, &["cluster"]);
    assert!(
        shown.contains("copying"),
        "the move left its copy step before the worker was stopped: {shown}"
    );
    set_keys(p1, &to_c);
    a[0].signal(libc::SIGCONT);
    settled(p1);
    settled(p2);
    // Of `keys`, those `port` reads back as first written, and the others.
    let reads = |port: u16, keys: &[String]| {
        let mut found = 0;
        let mut other = Vec::new();
        pipelined(
            port,
            0..keys.len(),
            |i| format!("get||{}", keys[i]),
            |i, got| match got == format!("0||{VALUE}{i}") {
                true => found += 1,
                false => other.push(format!("{}: {got}", keys[i])),
            },
        );
        (found, other)
    };
    for port in [p1, p2] {
        for keys in [&to_a, &to_c] {
            let (found, other) = reads(port, keys);
            let e = &other[..other.len().min(3)];
            assert_eq!(found, keys.len(), "via {port}, e.g. {e:?}");
        }
    }
    // The third pair, asked directly, holds what was bound for it and
    // nothing else.
    for port in [c1, c2] {
        let (found, other) = reads(port, &to_c);
        let e = &other[..other.len().min(3)];
        assert_eq!(found, to_c.len(), "at {port}, e.g. {e:?}");
        assert_eq!(reads(port, &to_a).0, 0, "at {port}");
    }
}

/// A key copied to its new pair and then set again with a TTL that runs
/// out before the write is handed over does not come back there: the new
/// pair is handed the expired write, and its copy goes. The move is held
/// in its copy step by a stopped worker of a pair it also hands keys to.
#[test]
fn a_key_whose_ttl_ran_out_while_moving_does_not_come_back() {
    let ports = free_ports();
    let [_, _, b1, _, c1, c2, p1, p2] = ports;
    let (a, _rest) = three_pairs(ports);
    let to_a = leaving_the_middle_pair_for(0, 50_000);
    let to_c = leaving_the_middle_pair_for(2, 100);
    set_keys(p1, &to_a);
    set_keys(p1, &to_c);
    // Of `keys`, how many `port` holds.
    let held_at = |port: u16, keys: &[String]| {
        let mut there = 0;
        pipelined(
            port,
            0..keys.len(),
            |i| format!("get||{}", keys[i]),
            |_, got| there += usize::from(got.starts_with("0||")),
        );
        there
    };
    let (ok, said) = rcache(p1, &["cluster", "remove-pair", &format!("127.0.0.1:{b1}")]);
    assert!(ok, "{said}");
    a[0].signal(libc::SIGSTOP);
    // The third pair gets its keys once the stopped worker is given up on
    // for this pass; the move stays in its copy step.
    for port in [c1, c2] {
        assert!(
            eventually(Duration::from_secs(20), || held_at(port, &to_c)
                == to_c.len()),
            "the keys never reached {port}"
        );
    }
    let (_, shown) = rcache(p1, &["cluster"]);
    assert!(shown.contains("copying"), "{shown}");
    let mut resp = common::resp::Resp::connect(p1);
    for key in &to_c {
        let set = resp.call(&["SET", key, "short", "PX", "1"]);
        assert_eq!(set, Value::Status("OK".into()), "{key}");
    }
    // Handed over after the pass under way, which waits up to 5 s for the
    // stopped worker.
    for port in [c1, c2] {
        assert!(
            eventually(Duration::from_secs(20), || held_at(port, &to_c) == 0),
            "{} of {} expired keys still read back at {port}",
            held_at(port, &to_c),
            to_c.len()
        );
    }
    a[0].signal(libc::SIGCONT);
    settled(p1);
    settled(p2);
    for port in [p1, p2] {
        assert_eq!(held_at(port, &to_c), 0, "via {port}");
        assert_eq!(held_at(port, &to_a), to_a.len(), "via {port}");
    }
}
