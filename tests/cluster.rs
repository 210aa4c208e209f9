//! The whole path through real processes: client -> orchestrator -> pair.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn every_protocol_case_through_the_orchestrator() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("ping"), "0||pong");
    assert_eq!(c.req("set||greeting||hello"), "0||");
    assert_eq!(c.req("get||greeting"), "0||hello");
    assert_eq!(c.req("set||pipes||a||b||c"), "0||");
    assert_eq!(c.req("get||pipes"), "0||a||b||c");
    assert_eq!(c.req("set||empty||"), "0||");
    assert_eq!(c.req("get||empty"), "0||");
    assert_eq!(c.req("get||missing"), "2||key not found");
    assert_eq!(c.req("del||greeting"), "0||");
    assert_eq!(c.req("del||greeting"), "2||key not found");
    assert_eq!(c.req("get||greeting"), "2||key not found");
    assert_eq!(c.req("set||crlf||v\r"), "0||");
    assert_eq!(c.req("get||crlf"), "0||v");
    // Errors: the connection stays usable after each.
    assert!(c.req("").starts_with("1||"));
    assert!(c.req("get").starts_with("1||"));
    assert!(c.req("get||").starts_with("1||"));
    assert!(c.req("set||k").starts_with("1||"));
    assert!(c.req("setex||k||zero||v").starts_with("1||"));
    assert!(c.req("setex||k||0||v").starts_with("1||"));
    assert_eq!(c.req("frobnicate||k"), "3||invalid command type");
    assert!(c
        .req(&format!("get||{}", "k".repeat(1025)))
        .starts_with("1||"));
    assert_eq!(c.req("get||pipes"), "0||a||b||c");
    // setex expires.
    assert_eq!(c.req("setex||short||1||v"), "0||");
    assert_eq!(c.req("get||short"), "0||v");
    assert!(eventually(Duration::from_secs(5), || c.req("get||short")
        == "2||key not found"));
    // exit closes without a reply.
    c.send_raw(b"exit\n");
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn an_over_long_line_is_refused_without_buffering_it() {
    let (a, b) = pair(&["--max-value-bytes", "1KiB"]);
    let o = orchestrator(&[a.port, b.port], &["--max-value-bytes", "1KiB"]);
    let mut c = Client::connect(o.port);
    // 4 MiB without a newline: answered with error 1 before it ends.
    let chunk = vec![b'x'; 64 * 1024];
    c.send_raw(b"set||big||");
    for _ in 0..64 {
        c.send_raw(&chunk);
    }
    assert!(c.read_line().starts_with("1||"));
    c.send_raw(b"\n");
    assert_eq!(c.req("ping"), "0||pong");
    // A value at the limit is fine.
    let value = "v".repeat(1024);
    assert_eq!(c.req(&format!("set||k||{value}")), "0||");
    assert_eq!(c.req("get||k"), format!("0||{value}"));
}

#[test]
fn garbage_bytes_get_errors_and_hurt_nothing() {
    if secure::skip(
        "sends plaintext garbage and a fake link hello (tests/hostile.rs, tests/tls.rs)",
    ) {
        return;
    }
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("set||keep||safe"), "0||");
    let mut g = Client::connect(o.port);
    g.send_raw(b"\x00\xff\xfe||\x01garbage\n\x80\x81\x82\n");
    assert_eq!(g.read_line(), "3||invalid command type");
    assert_eq!(g.read_line(), "3||invalid command type");
    assert_eq!(g.req("ping"), "0||pong");
    // Garbage straight to a worker, including a fake link hello.
    let mut w = Client::connect(a.port);
    w.send_raw(b"\xf0garbage that is not a link\n");
    assert!(w.closed_within(Duration::from_secs(5)));
    assert_eq!(c.req("get||keep"), "0||safe");
}

/// Every key is on both workers of exactly one pair, and keys spread.
#[test]
fn each_key_lives_on_both_workers_of_one_pair() {
    let (a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let o = orchestrator(&[a.port, b.port, c.port, d.port], &[]);
    let mut client = Client::connect(o.port);
    let mut workers: Vec<Client> = [&a, &b, &c, &d]
        .iter()
        .map(|w| Client::connect(w.port))
        .collect();
    let mut per_pair = [0u32; 2];
    for i in 0..400 {
        assert_eq!(client.req(&format!("set||key{i}||value{i}")), "0||");
        let found: Vec<bool> = workers
            .iter_mut()
            .map(|w| {
                let r = w.req(&format!("get||key{i}"));
                assert!(
                    r == format!("0||value{i}") || r == "2||key not found",
                    "{r}"
                );
                r.starts_with("0||")
            })
            .collect();
        match found.as_slice() {
            [true, true, false, false] => per_pair[0] += 1,
            [false, false, true, true] => per_pair[1] += 1,
            other => panic!("key{i} is on workers {other:?}"),
        }
    }
    assert!(
        per_pair.iter().all(|&n| n > 150),
        "uneven spread {per_pair:?}"
    );
}

/// kill -9 one worker under load: no client request fails. Restart it: it
/// refills from its partner; then the partner dies and everything written
/// (before, during and after the outage) is still served.
#[test]
fn a_dead_worker_costs_no_request_and_refills_on_return() {
    let (mut a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let o = orchestrator(
        &[a.port, b.port, c.port, d.port],
        &["--worker-timeout", "1s"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let written = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let ops = Arc::new(AtomicU64::new(0));
    let seed = std::env::var("RCACHE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    println!("load seed {seed}");
    let loaders: Vec<_> = (0..4u64)
        .map(|t| {
            let (stop, failures, written, ops) =
                (stop.clone(), failures.clone(), written.clone(), ops.clone());
            let port = o.port;
            std::thread::spawn(move || {
                let mut rng = rcache::zipf::Rng::new(seed + t);
                let mut client = Client::connect(port);
                let mut mine: Vec<(String, String)> = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if n % 2 == 0 || mine.is_empty() {
                        let (k, v) = (format!("t{t}-k{n}"), format!("v{}", rng.next_u64()));
                        let r = client.req(&format!("set||{k}||{v}"));
                        if r == "0||" {
                            mine.push((k, v));
                        } else {
                            failures.lock().unwrap().push(format!("set {k}: {r}"));
                        }
                    } else {
                        let (k, v) = &mine[rng.below(mine.len() as u64) as usize];
                        let r = client.req(&format!("get||{k}"));
                        if r != format!("0||{v}") {
                            failures.lock().unwrap().push(format!("get {k}: {r}"));
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                written.lock().unwrap().extend(mine);
            })
        })
        .collect();
    let wait_ops = |n: u64| {
        let target = ops.load(Ordering::Relaxed) + n;
        assert!(eventually(Duration::from_secs(30), || ops
            .load(Ordering::Relaxed)
            >= target));
    };
    wait_ops(500);
    a.kill9();
    wait_ops(2_000);
    // Restart on the same port: it refills from its partner while load goes on.
    let port = a.port;
    drop(a);
    let a = worker(port, Some(b.port), &[]);
    assert!(
        a.log_text().contains("refilled from the partner"),
        "{}",
        a.log_text()
    );
    wait_ops(2_000);
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().expect("loader");
    }
    let failures = failures.lock().unwrap();
    println!(
        "{} requests, {} failed",
        ops.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {:?}",
        &failures[..failures.len().min(10)]
    );

    // The partner dies: the refilled worker alone must hold everything.
    let mut b = b;
    b.kill9();
    let written = written.lock().unwrap();
    let mut client = Client::connect(o.port);
    let mut direct = Client::connect(a.port);
    let mut missing = 0;
    for (k, v) in written.iter() {
        assert_eq!(
            client.req(&format!("get||{k}")),
            format!("0||{v}"),
            "through the orchestrator"
        );
        // Keys of the first pair must be on the restarted worker itself.
        let r = direct.req(&format!("get||{k}"));
        if r != format!("0||{v}") && r != "2||key not found" {
            panic!("{k}: {r}");
        }
        if r == "2||key not found" {
            missing += 1;
        }
    }
    let on_a = written.len() - missing;
    println!(
        "{} acknowledged writes, {on_a} on the restarted worker",
        written.len()
    );
    assert!(
        on_a > written.len() / 4,
        "the restarted worker holds too few keys: {on_a}"
    );
    drop((c, d));
}

#[test]
fn idle_connections_are_closed_and_busy_ones_kept() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &["--idle-timeout", "500ms"]);
    let mut idle = Client::connect(o.port);
    let mut busy = Client::connect(o.port);
    let mut half = Client::connect(o.port);
    assert_eq!(idle.req("ping"), "0||pong");
    half.send_raw(b"set||slow||lor"); // never finished
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(busy.req("ping"), "0||pong");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        idle.closed_within(Duration::from_secs(2)),
        "idle connection still open"
    );
    assert!(
        half.closed_within(Duration::from_secs(2)),
        "half-sent line kept the connection"
    );
    assert_eq!(busy.req("get||slow"), "2||key not found");
    // The orchestrator's own links to the workers were idle-closed by the
    // workers (same timeout) and came back without costing a request.
    let (w1, w2) = pair(&["--idle-timeout", "300ms"]);
    let o2 = orchestrator(&[w1.port, w2.port], &["--idle-timeout", "10s"]);
    let mut c = Client::connect(o2.port);
    for i in 0..5 {
        assert_eq!(c.req(&format!("set||k{i}||v")), "0||");
        std::thread::sleep(Duration::from_millis(450));
        assert_eq!(c.req(&format!("get||k{i}")), "0||v");
    }
}

#[test]
fn connections_beyond_the_limit_get_an_error() {
    let w = solo(&["--max-connections", "2"]);
    let mut c1 = Client::connect(w.port);
    let mut c2 = Client::connect(w.port);
    assert_eq!(c1.req("ping"), "0||pong");
    assert_eq!(c2.req("ping"), "0||pong");
    if secure::on() {
        // Refused before the TLS handshake (no CPU spent on it): the client
        // sees the plaintext refusal as a failed handshake.
        let refused = secure::dial(&w.addr()).err().unwrap_or_default();
        assert!(refused.contains("TLS to"), "{refused}");
    } else {
        let mut c3 = Client::connect(w.port);
        assert_eq!(c3.read_line(), "8||too many connections");
        assert!(c3.closed_within(Duration::from_secs(5)));
    }
    assert_eq!(c1.req("set||k||v"), "0||");
    drop(c2);
    // The freed slot takes a new connection (until the server has seen the
    // close, an attempt is refused: over TLS that is a failed handshake).
    assert!(eventually(Duration::from_secs(5), || {
        use std::io::{BufRead, Write};
        let Ok((io, _sock)) = secure::dial(&w.addr()) else {
            return false;
        };
        let mut io = std::io::BufReader::new(io);
        let mut line = String::new();
        io.get_mut().write_all(b"ping\n").is_ok()
            && io.get_mut().flush().is_ok()
            && io.read_line(&mut line).is_ok()
            && line == "0||pong\n"
    }));
}

#[test]
fn partners_starting_together_start_empty_and_a_later_one_refills() {
    let [p1, p2] = free_ports();
    // Two partners starting together: the second finds the first starting.
    let mut a = worker_starting(p1, Some(p2), &[]);
    let mut b = worker_starting(p2, Some(p1), &[]);
    a.wait_ready();
    b.wait_ready();
    let logs = format!("{}{}", a.log_text(), b.log_text());
    assert!(
        logs.contains("not refilling: partner is starting"),
        "{logs}"
    );
    assert!(!logs.contains("STARTED EMPTY"), "{logs}");
    drop(b);
    // Alone, the worker starts empty once its partner stayed unreachable
    // for refill_wait, and says it is incomplete.
    drop(a);
    let a = worker(p1, Some(p2), &["--refill-wait", "300ms"]);
    assert!(a.log_text().contains("STARTED EMPTY"), "{}", a.log_text());
    let (status, body) = http_get(&a.metrics_addr(), "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("incomplete"), "{body}");
    let mut c = Client::connect(a.port);
    for i in 0..1000 {
        assert_eq!(c.req(&format!("set||k{i}||{}", "x".repeat(200))), "0||");
    }
    assert_eq!(c.req("del||k7"), "0||");
    // A new process of its partner refills all of it: both hold all the
    // pair has, and both are complete.
    let b = worker(p2, Some(p1), &[]);
    assert!(b.log_text().contains("entries=1000"), "{}", b.log_text());
    assert_eq!(http_get(&b.metrics_addr(), "/health").0, 200);
    assert_eq!(http_get(&a.metrics_addr(), "/health").0, 200);
    let mut c = Client::connect(b.port);
    assert_eq!(c.req("get||k999"), format!("0||{}", "x".repeat(200)));
    assert_eq!(
        c.req("get||k7"),
        "2||key not found",
        "the tombstone came along"
    );
}

/// Asserts that the worker on `port` holds `k{i}` = `v{i}` for every
/// `i < n`, read from it directly.
fn holds_all(port: u16, n: usize) {
    let mut direct = Client::connect(port);
    for i in 0..n {
        assert_eq!(
            direct.req(&format!("get||k{i}")),
            format!("0||v{i}"),
            "k{i} on {port}"
        );
    }
}

/// Polls until `log` holds `what`.
fn log_shows(daemon: &Daemon, what: &str) -> bool {
    eventually(Duration::from_secs(10), || daemon.log_text().contains(what))
}

/// A partner unreachable for a moment (frozen: the connection opens, the
/// hello is never answered) does not make a restarting worker start empty:
/// it tries again until the partner answers, then refills everything.
#[test]
fn a_restarting_worker_waits_for_a_partner_briefly_unreachable() {
    let (a, b) = pair(&[]);
    let mut direct = Client::connect(a.port);
    for i in 0..200 {
        assert_eq!(direct.req(&format!("set||k{i}||v{i}")), "0||");
    }
    let port = b.port;
    drop(b);
    a.signal(libc::SIGSTOP);
    let mut b = worker_starting(port, Some(a.port), &["--refill-wait", "30s"]);
    assert!(
        log_shows(&b, "partner unreachable"),
        "the first attempt did not fail: {}",
        b.log_text()
    );
    a.signal(libc::SIGCONT);
    b.wait_ready();
    assert!(b.log_text().contains("entries=200"), "{}", b.log_text());
    assert_eq!(http_get(&b.metrics_addr(), "/health").0, 200);
    holds_all(b.port, 200);
}

/// The health the orchestrator gives `worker` in `cluster`.
fn health_in_cluster(orchestrator: u16, worker: u16) -> String {
    let reply = Client::connect(orchestrator).req("cluster");
    reply
        .split(';')
        .find(|r| r.contains(&format!("worker=127.0.0.1:{worker} ")))
        .and_then(|r| r.split_whitespace().find_map(|f| f.strip_prefix("health=")))
        .unwrap_or("?")
        .to_string()
}

/// A worker's anti-entropy counters: (rounds completed, entries sent).
fn ae_counters(worker: &Daemon) -> (f64, f64) {
    let (_, body) = http_get(&worker.metrics_addr(), "/metrics");
    let get = |series| metric(&body, series).unwrap_or(-1.0);
    (
        get("rcache_anti_entropy_rounds_total"),
        get("rcache_anti_entropy_sent_entries_total"),
    )
}

/// Partners of a full cache hold different keys (each evicted its own
/// oldest). Anti-entropy makes them hold the same ones and then goes
/// quiet: rounds keep completing and send nothing.
#[test]
fn partners_of_a_full_cache_converge_and_go_quiet() {
    const KEYS: usize = 6_000;
    let (a, b) = pair(&["--max-memory", "1MiB", "--anti-entropy-interval", "200ms"]);
    // Incompressible values, so the memory limit is reached.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let value: String = (0..400)
        .map(|_| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(b'a' + (seed >> 59) as u8 % 26)
        })
        .collect();
    // A sees the keys in one order, B in the other: each keeps the last
    // ~2,000 it saw, so they overlap little.
    let (mut ca, mut cb) = (Client::connect(a.port), Client::connect(b.port));
    for i in 0..KEYS {
        assert_eq!(ca.req(&format!("set||k{i}||{value}")), "0||");
        assert_eq!(cb.req(&format!("set||k{}||{value}", KEYS - 1 - i)), "0||");
    }
    // Quiet: both sides complete three more rounds without sending an entry.
    let quiet = eventually(Duration::from_secs(30), || {
        let before = (ae_counters(&a), ae_counters(&b));
        let waited = eventually(Duration::from_secs(5), || {
            ae_counters(&a).0 >= before.0 .0 + 3.0 && ae_counters(&b).0 >= before.1 .0 + 3.0
        });
        waited && ae_counters(&a).1 == before.0 .1 && ae_counters(&b).1 == before.1 .1
    });
    assert!(
        quiet,
        "anti-entropy never went quiet: a {:?}, b {:?}",
        ae_counters(&a),
        ae_counters(&b)
    );
    // And they hold the same keys.
    let (mut held, mut differ) = (0, Vec::new());
    for i in 0..KEYS {
        let (ra, rb) = (ca.req(&format!("get||k{i}")), cb.req(&format!("get||k{i}")));
        if ra != rb {
            differ.push(format!("k{i}"));
        } else if ra.starts_with("0||") {
            held += 1;
        }
    }
    assert!(
        differ.is_empty(),
        "{} keys differ: {:?}",
        differ.len(),
        &differ[..differ.len().min(10)]
    );
    assert!(held > 500, "the pair kept only {held} keys");
    assert!(
        ae_counters(&a).1 + ae_counters(&b).1 > 0.0,
        "no entry was ever sent: {:?} {:?}",
        ae_counters(&a),
        ae_counters(&b)
    );
    println!("the pair holds {held} of {KEYS} keys on both workers");
}

/// A worker that started empty because its partner stayed unreachable
/// says so and serves no reads while its partner can; anti-entropy repairs
/// it in full, and then it is up and complete.
#[test]
fn a_worker_that_started_empty_serves_no_reads_until_repaired() {
    let ae = ["--anti-entropy-interval", "300ms"];
    let (a, b) = pair(&ae);
    let o = orchestrator(
        &[a.port, b.port],
        &["--health-interval", "100ms", "--worker-timeout", "300ms"],
    );
    let mut c = Client::connect(o.port);
    for i in 0..200 {
        assert_eq!(c.req(&format!("set||k{i}||v{i}")), "0||");
    }
    let port = b.port;
    drop(b);
    a.signal(libc::SIGSTOP);
    let b = worker(
        port,
        Some(a.port),
        &["--refill-wait", "1s", "--anti-entropy-interval", "300ms"],
    );
    assert!(b.log_text().contains("STARTED EMPTY"), "{}", b.log_text());
    let (status, body) = http_get(&b.metrics_addr(), "/health");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("INCOMPLETE"), "{body}");
    let exposition = http_get(&b.metrics_addr(), "/metrics").1;
    assert_eq!(metric(&exposition, "rcache_worker_incomplete"), Some(1.0));
    let direct = Client::connect(b.port).req("cluster");
    assert!(direct.contains("complete=false"), "{direct}");
    a.signal(libc::SIGCONT);
    // Reads go to the worker that holds the data, however the keys are
    // placed, as soon as the orchestrator sees both.
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(o.port, a.port)
            == "up"
            && health_in_cluster(o.port, b.port) != "down"),
        "{}",
        Client::connect(o.port).req("cluster")
    );
    for i in 0..200 {
        assert_eq!(c.req(&format!("get||k{i}")), format!("0||v{i}"), "k{i}");
    }
    // Anti-entropy repairs it; then it is complete and up.
    assert!(
        eventually(Duration::from_secs(10), || http_get(
            &b.metrics_addr(),
            "/health"
        )
        .0 == 200),
        "{}",
        b.log_text()
    );
    assert!(b.log_text().contains("complete again"), "{}", b.log_text());
    holds_all(b.port, 200);
    assert!(eventually(Duration::from_secs(5), || health_in_cluster(
        o.port, b.port
    ) == "up"));
}

/// A worker frozen (SIGSTOP) during writes: every write still succeeds
/// within the worker timeout, and once it answers again, reads see every
/// acknowledged write. (Whether a thawed worker is stale depends on what its
/// socket buffers held; `Backend`'s unit tests pin the `Behind` rule.)
#[test]
fn a_frozen_worker_never_serves_reads_it_missed() {
    let (a, b) = pair(&[]);
    let o = orchestrator(
        &[a.port, b.port],
        &["--worker-timeout", "300ms", "--health-interval", "100ms"],
    );
    let mut c = Client::connect(o.port);
    for i in 0..50 {
        assert_eq!(c.req(&format!("set||k{i}||old")), "0||");
    }
    a.signal(libc::SIGSTOP);
    for i in 0..50 {
        assert_eq!(
            c.req(&format!("set||k{i}||new")),
            "0||",
            "write {i} while a worker is frozen"
        );
    }
    a.signal(libc::SIGCONT);
    // The probes see the worker alive again; reads stay correct meanwhile.
    let mut direct = Client::connect(a.port);
    assert_eq!(direct.req("ping"), "0||pong");
    for round in 0..3 {
        for i in 0..50 {
            assert_eq!(
                c.req(&format!("get||k{i}")),
                "0||new",
                "round {round}, key k{i}"
            );
        }
    }
}

/// An orchestrator that keeps no hints and notices a frozen worker fast:
/// a write a worker misses is then repaired by anti-entropy alone.
fn orchestrator_without_hints(workers: &[u16]) -> Daemon {
    orchestrator(
        workers,
        &[
            "--worker-timeout",
            "300ms",
            "--health-interval",
            "100ms",
            "--max-hint-bytes",
            "0",
        ],
    )
}

/// A value overwritten with a TTL while one worker was frozen (no hints,
/// so only anti-entropy can tell it), then expired: the old value the
/// frozen worker kept never comes back, on either worker. The expiry is as
/// final as a delete.
#[test]
fn an_expired_overwrite_is_as_final_as_a_delete() {
    let (a, b) = pair(&["--anti-entropy-interval", "200ms"]);
    let o = orchestrator_without_hints(&[a.port, b.port]);
    let mut c = Client::connect(o.port);
    for i in 0..20 {
        assert_eq!(c.req(&format!("set||k{i}||old")), "0||");
    }
    b.signal(libc::SIGSTOP);
    // Once the orchestrator sees B down, B gets none of the overwrites.
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(o.port, b.port)
            == "down"),
        "B never seen down"
    );
    for i in 0..20 {
        assert_eq!(c.req(&format!("setex||k{i}||1||new")), "0||", "k{i}");
    }
    // Expired on A, and B (which kept "old") thawed.
    let mut direct_a = Client::connect(a.port);
    assert!(
        eventually(Duration::from_secs(5), || direct_a.req("get||k19")
            == "2||key not found"),
        "the TTL of 1 s never ran out on A"
    );
    b.signal(libc::SIGCONT);
    // Three rounds after the thaw, neither worker holds "old".
    let rounds = |w: &Daemon| {
        let (_, body) = http_get(&w.metrics_addr(), "/metrics");
        metric(&body, "rcache_anti_entropy_rounds_total").unwrap_or(0.0)
    };
    let start = rounds(&b);
    assert!(
        eventually(Duration::from_secs(10), || rounds(&b) >= start + 3.0),
        "no anti-entropy round after the thaw"
    );
    let mut direct_b = Client::connect(b.port);
    for i in 0..20 {
        assert_eq!(
            direct_a.req(&format!("get||k{i}")),
            "2||key not found",
            "k{i} on A"
        );
        assert_eq!(
            direct_b.req(&format!("get||k{i}")),
            "2||key not found",
            "k{i} on B"
        );
        assert_eq!(
            c.req(&format!("get||k{i}")),
            "2||key not found",
            "k{i} through the orchestrator"
        );
    }
}

/// A worker that missed writes beyond its hint queue (so the orchestrator
/// knows it may hold older values, not which) serves no reads, even when
/// its partner fails: the read gets an error, never a value older than an
/// acknowledged overwrite.
#[test]
fn a_worker_whose_hints_overflowed_serves_no_stale_reads_when_its_partner_fails() {
    // No anti-entropy during the test (the first round runs at start).
    let (mut a, b) = pair(&["--anti-entropy-interval", "1h"]);
    let o = orchestrator_without_hints(&[a.port, b.port]);
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("set||k||old"), "0||");
    b.signal(libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(o.port, b.port)
            == "down"),
        "B never seen down"
    );
    assert_eq!(c.req("set||k||new"), "0||");
    b.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(o.port, b.port)
            == "behind"),
        "B never seen behind: {}",
        health_in_cluster(o.port, b.port)
    );
    a.kill9();
    let reply = c.req("get||k");
    assert_ne!(reply, "0||old", "a stale read");
    assert!(
        reply.starts_with("6||"),
        "not an unavailable error: {reply}"
    );
    assert!(reply.contains("max_hint_bytes"), "{reply}");
    let (_, body) = http_get(&o.metrics_addr(), "/metrics");
    let refused = metric(
        &body,
        &format!(
            "rcache_reads_refused_stale_total{{worker=\"127.0.0.1:{}\"}}",
            b.port
        ),
    );
    assert_eq!(refused, Some(1.0), "{body}");
}

/// Sends `lines` pipelined, 5,000 at a time, and checks every answer.
fn pipelined(c: &mut Client, lines: impl Iterator<Item = String>, answer: &str) {
    let lines: Vec<String> = lines.collect();
    for chunk in lines.chunks(5_000) {
        c.send_raw(chunk.concat().as_bytes());
        for line in chunk {
            assert_eq!(c.read_line(), answer, "{line}");
        }
    }
}

/// Entries written on the partner while it streams a refill, into slots
/// its scan has passed, are not in the stream; the refill's closing
/// anti-entropy round brings them before the worker serves. (The test
/// writes to the partner directly, as a write the refilling worker never
/// got would arrive: another orchestrator's, or a hint lost with an
/// orchestrator's restart.)
#[test]
fn a_refill_brings_what_was_written_behind_its_scan() {
    // Free 100,000 slots spread over every shard first: deleted, and
    // their tombstones gone after 1 s.
    refill_behind_the_scan(&["--tombstone-ttl", "1s"], 100_000, 200_000.0);
}

/// The same on a full cache: slots behind the scan are freed by evictions,
/// and the refilled worker is full when its closing round runs. It takes
/// what it lacks all the same (it evicted none of it: it just started),
/// rather than refusing it for room and making the partner evict it.
#[test]
fn a_refill_of_a_full_cache_brings_what_was_written_behind_its_scan() {
    refill_behind_the_scan(&["--max-memory", "32MiB"], 0, -1.0);
}

fn refill_behind_the_scan(extra: &[&str], deletes: usize, expect_entries: f64) {
    let mut extra = extra.to_vec();
    extra.extend(["--anti-entropy-interval", "1h"]);
    let (a, b) = pair(&extra);
    let mut direct = Client::connect(a.port);
    let value = "v".repeat(100);
    pipelined(
        &mut direct,
        (0..300_000).map(|i| format!("set||k{i}||{value}\n")),
        "0||",
    );
    pipelined(
        &mut direct,
        (0..deletes).map(|i| format!("del||k{i}\n")),
        "0||",
    );
    // -1 until the daemon answers.
    let gauge = |addr: &str, series: &str| scrape(addr, series).unwrap_or(-1.0);
    assert!(
        eventually(Duration::from_secs(20), || gauge(
            &a.metrics_addr(),
            "rcache_tombstones"
        ) == 0.0),
        "the tombstones never went"
    );
    let held = gauge(&a.metrics_addr(), "rcache_entries");
    if expect_entries >= 0.0 {
        assert_eq!(held, expect_entries);
    }
    let port = b.port;
    drop(b);
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = extra.to_vec();
    args.extend(["--metrics-listen", &metrics]);
    let mut b = worker_starting(port, Some(a.port), &args);
    // Frozen mid-stream: the partner's scan waits on the full socket.
    assert!(
        eventually(Duration::from_secs(20), || gauge(
            &metrics,
            "rcache_refill_entries"
        ) >= 20_000.0),
        "the refill never got going"
    );
    b.signal(libc::SIGSTOP);
    pipelined(
        &mut direct,
        (0..5_000).map(|j| format!("set||new{j}||{value}\n")),
        "0||",
    );
    b.signal(libc::SIGCONT);
    b.wait_ready();
    assert!(
        !b.log_text().contains("REFILL INCOMPLETE"),
        "{}",
        b.log_text()
    );
    let mut on_b = Client::connect(port);
    for (name, c) in [
        ("the refilled worker", &mut on_b),
        ("its partner", &mut direct),
    ] {
        let missing: Vec<usize> = (0..5_000)
            .filter(|j| c.req(&format!("get||new{j}")) != format!("0||{value}"))
            .collect();
        assert!(
            missing.is_empty(),
            "{} of 5,000 entries written during the refill missing on {name}, e.g. new{:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    if expect_entries >= 0.0 {
        assert_eq!(gauge(&metrics, "rcache_entries"), expect_entries + 5_000.0);
    }
}

/// The `rcache` command against a cluster, as a newcomer uses it.
fn secure_cli() -> Vec<String> {
    if secure::on() {
        secure::cli_args()
    } else {
        Vec::new()
    }
}

fn secure_env() -> Vec<(&'static str, &'static str)> {
    if secure::on() {
        vec![("RCACHE_AUTH_TOKEN", secure::TOKEN)]
    } else {
        Vec::new()
    }
}

#[test]
fn the_rcache_command_sets_gets_and_deletes() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let rcache = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rcache"))
            .arg("--addr")
            .arg(o.addr())
            .args(secure_cli())
            .envs(secure_env())
            .args(args)
            .output()
            .expect("rcache runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(rcache(&["ping"]).1, "pong\n");
    assert_eq!(rcache(&["set", "greeting", "hello"]).1, "OK\n");
    assert_eq!(rcache(&["get", "greeting"]).1, "hello\n");
    assert_eq!(rcache(&["set", "t", "v", "--ttl", "60"]).1, "OK\n");
    assert_eq!(rcache(&["del", "greeting"]).1, "OK\n");
    let (code, _, stderr) = rcache(&["get", "greeting"]);
    assert_eq!((code, stderr.as_str()), (Some(1), "(2) key not found\n"));
    // The shell reads commands from stdin.
    let mut shell = std::process::Command::new(env!("CARGO_BIN_EXE_rcache"))
        .arg("--addr")
        .arg(o.addr())
        .args(secure_cli())
        .envs(secure_env())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("shell starts");
    use std::io::Write;
    shell
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"set k hello world\nget k\nget t\nquit\n")
        .expect("write");
    let out = shell.wait_with_output().expect("shell ends");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\nhello world\nv\n");
}

/// Two orchestrators, one with its wall clock 10 s behind: a client that
/// writes through one and then the other reads its last write through
/// either (the lagging orchestrator's write is stamped again above the
/// version it displaces). And writes through one orchestrator stay ordered
/// across its restart with its clock stepped back 10 s.
#[test]
fn a_client_reads_its_own_writes_through_orchestrators_with_skewed_clocks() {
    let Some(behind) = skewed_clock("-10s") else {
        return;
    };
    let (a, b) = pair(&[]);
    let o1 = orchestrator(&[a.port, b.port], &[]);
    let o2 = orchestrator_skewed(&[a.port, b.port], &behind);
    let (mut c1, mut c2) = (Client::connect(o1.port), Client::connect(o2.port));
    for i in 0..100 {
        let key = format!("k{i}");
        // A restamp moves the lagging clock up to the version it lost to;
        // a write of the punctual one in that same millisecond could tie
        // with it on the counter instead of being newer. Each round starts
        // in a later millisecond, so every lagging write is older.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c1.req(&format!("set||{key}||first{i}")), "0||");
        assert_eq!(c2.req(&format!("set||{key}||second{i}")), "0||");
        for c in [&mut c1, &mut c2] {
            assert_eq!(
                c.req(&format!("get||{key}")),
                format!("0||second{i}"),
                "{key}"
            );
        }
        assert_eq!(c2.req(&format!("del||{key}")), "0||");
        assert_eq!(c1.req(&format!("get||{key}")), "2||key not found", "{key}");
    }
    let restamped = metric(
        &http_get(&o2.metrics_addr(), "/metrics").1,
        "rcache_writes_restamped_total",
    );
    assert!(
        restamped.is_some_and(|n| n >= 100.0),
        "the lagging orchestrator's writes did not lose first: {restamped:?}"
    );
    // One orchestrator, restarted with its clock 10 s behind.
    drop((c1, c2, o2));
    assert_eq!(Client::connect(o1.port).req("set||ordered||before"), "0||");
    drop(o1);
    let o = orchestrator_skewed(&[a.port, b.port], &behind);
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("set||ordered||after"), "0||");
    assert_eq!(c.req("get||ordered"), "0||after");
    for w in [a.port, b.port] {
        assert_eq!(Client::connect(w).req("get||ordered"), "0||after");
    }
}

/// `SET NX` through an orchestrator whose clock runs 10 s behind, while
/// the partner of the deciding worker is full and evicting (its eviction
/// marks are ~10 s ahead of the orchestrator's versions). The partner
/// refuses the decided value as possibly older than what it evicted; the
/// orchestrator stamps it again and writes it to both, so anti-entropy
/// does not drop it from both: every acknowledged `SET NX` stays readable
/// on both workers.
#[test]
fn a_conditional_set_survives_a_partner_that_evicted_newer_versions() {
    let Some(env) = skewed_clock("-10s") else {
        return;
    };
    let [pa, pb] = free_ports();
    let a = worker(pa, Some(pb), &["--anti-entropy-interval", "200ms"]);
    let b = worker(
        pb,
        Some(pa),
        &["--max-memory", "1MiB", "--anti-entropy-interval", "200ms"],
    );
    // B evicts all over: 20,000 incompressible 1 KiB values written to it
    // directly (stamped by its own clock, 10 s ahead of the orchestrator's).
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let value: String = (0..1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            char::from(b'a' + (seed % 26) as u8)
        })
        .collect();
    let mut direct = Client::connect(b.port);
    pipelined(
        &mut direct,
        (0..20_000).map(|i| format!("set||fill{i}||{value}\n")),
        "0||",
    );
    let orch = orchestrator_skewed(&[pa, pb], &env);
    let mut c = Client::connect_resp(orch.port);
    // Keys A decides (the worker reads go to first).
    let keys: Vec<String> = (0..)
        .map(|i| format!("nx{i}"))
        .filter(|k| rcache::orchestrator::placement::locate(k.as_bytes(), 1).first == 0)
        .take(20)
        .collect();
    for k in &keys {
        let set = format!(
            "*4\r\n$3\r\nSET\r\n${}\r\n{k}\r\n$3\r\nyes\r\n$2\r\nNX\r\n",
            k.len()
        );
        c.send_raw(set.as_bytes());
        assert_eq!(c.read_line().trim_end(), "+OK", "SET {k} NX");
    }
    // A few anti-entropy rounds later, both workers still hold every one.
    let (mut ca, mut cb) = (Client::connect(a.port), Client::connect(b.port));
    let held = |c: &mut Client| {
        keys.iter()
            .filter(|k| c.req(&format!("get||{k}")) == "0||yes")
            .count()
    };
    let rounds =
        |d: &Daemon| scrape(&d.metrics_addr(), "rcache_anti_entropy_rounds_total").unwrap_or(0.0);
    let (ra, rb) = (rounds(&a), rounds(&b));
    assert!(
        eventually(Duration::from_secs(20), || rounds(&a) >= ra + 3.0
            && rounds(&b) >= rb + 3.0),
        "anti-entropy did not run"
    );
    assert_eq!(held(&mut ca), keys.len(), "on the deciding worker");
    assert_eq!(held(&mut cb), keys.len(), "on its full partner");
}

/// A key of a one-pair cluster that the orchestrator reads from the pair's
/// first worker while both are up.
fn key_read_first_from_worker_0() -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| rcache::orchestrator::placement::locate(k.as_bytes(), 1).first == 0)
        .unwrap_or_default()
}

/// Freezes `a` until `o` sees it down, overwrites `key` through `o`, ends
/// `o` with `end_o` (its hints must not reach `a`), and thaws `a`: `a`
/// keeps `old`, `b` holds `new`, and anti-entropy (1 h) does not run.
fn a_misses_an_overwrite(
    a: &Daemon,
    b: &Daemon,
    o: &mut Daemon,
    key: &str,
    end_o: fn(&mut Daemon),
) {
    let mut c = Client::connect(o.port);
    assert_eq!(c.req(&format!("set||{key}||old")), "0||");
    a.signal(libc::SIGSTOP);
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(o.port, a.port)
            == "down"),
        "A never seen down"
    );
    assert_eq!(c.req(&format!("set||{key}||new")), "0||");
    end_o(o);
    a.signal(libc::SIGCONT);
    // The scenario holds: A answers again and still holds the old value.
    let mut direct = Client::connect(a.port);
    assert_eq!(direct.req(&format!("get||{key}")), "0||old");
    assert_eq!(
        Client::connect(b.port).req(&format!("get||{key}")),
        "0||new"
    );
}

const FAST_PROBES: [&str; 4] = ["--worker-timeout", "300ms", "--health-interval", "100ms"];

/// The orchestrator that saw a worker miss a write dies with the hint; the
/// one started in its place reads from that worker first once it is back,
/// yet never gets the old value: the partner that stored the write says
/// so in its first probe, which the new process waits for before serving.
#[test]
fn an_orchestrator_started_after_a_worker_missed_a_write_reads_nothing_stale() {
    let (a, b) = pair(&["--anti-entropy-interval", "1h"]);
    let key = key_read_first_from_worker_0();
    let mut o = orchestrator(&[a.port, b.port], &FAST_PROBES);
    // The orchestrator dies with the hint for A.
    a_misses_an_overwrite(&a, &b, &mut o, &key, Daemon::kill9);
    let o2 = orchestrator(&[a.port, b.port], &FAST_PROBES);
    assert_eq!(
        Client::connect(o2.port).req(&format!("get||{key}")),
        "0||new",
        "a stale read through the new orchestrator"
    );
    assert_eq!(health_in_cluster(o2.port, a.port), "behind");
    assert_eq!(health_in_cluster(o2.port, b.port), "up");
}

/// An orchestrator that never saw a worker down (its probes are patient,
/// and it sent nothing meanwhile) learns from the partner's probe that the
/// worker missed a write another orchestrator acknowledged, and reads from
/// the partner from then on.
#[test]
fn an_orchestrator_that_never_saw_a_worker_down_learns_it_missed_a_write() {
    let (a, b) = pair(&["--anti-entropy-interval", "1h"]);
    let key = key_read_first_from_worker_0();
    // It keeps no hints, so A gets the write from nobody.
    let mut o = orchestrator_without_hints(&[a.port, b.port]);
    let patient = orchestrator(
        &[a.port, b.port],
        &["--health-interval", "100ms", "--health-failures", "1000000"],
    );
    a_misses_an_overwrite(&a, &b, &mut o, &key, |_| {});
    assert_eq!(health_in_cluster(patient.port, b.port), "up");
    assert!(
        eventually(Duration::from_secs(5), || health_in_cluster(
            patient.port,
            a.port
        ) == "behind"),
        "the patient orchestrator never saw A behind: {}",
        health_in_cluster(patient.port, a.port)
    );
    assert_eq!(
        Client::connect(patient.port).req(&format!("get||{key}")),
        "0||new",
        "a stale read through the orchestrator that never saw A down"
    );
}
