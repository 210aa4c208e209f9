//! The Redis commands applications send, over RESP against real daemons:
//! each table of commands and Redis's replies runs through an orchestrator
//! in front of two pairs and against a worker directly. Counters keep
//! every increment while a worker of the pair dies and comes back.

mod common;

use common::resp::*;
use common::*;
use rcache::protocol::resp::Value;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn int(n: i64) -> Value {
    Value::Integer(n)
}

fn nil() -> Value {
    Value::Bulk(None)
}

fn status(s: &'static str) -> Value {
    Value::Status(s.into())
}

/// Runs each command and compares its reply, naming the first that differs.
fn check(r: &mut Resp, target: &str, cases: &[(&[&str], Value)]) {
    for (args, want) in cases {
        let got = r.call(args);
        assert_eq!(&got, want, "{target}: {args:?}");
    }
}

/// An orchestrator in front of two pairs, and a worker alone: every table
/// runs against both.
struct Targets {
    _workers: Vec<Daemon>,
    orchestrator: Daemon,
    solo: Daemon,
}

fn targets() -> Targets {
    let (a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let orchestrator = orchestrator(&[a.port, b.port, c.port, d.port], &[]);
    Targets {
        _workers: vec![a, b, c, d],
        orchestrator,
        solo: solo(&[]),
    }
}

impl Targets {
    fn each(&self, f: impl Fn(&mut Resp, &str)) {
        f(&mut Resp::connect(self.orchestrator.port), "orchestrator");
        f(&mut Resp::connect(self.solo.port), "worker");
    }
}

const NOT_INTEGER: &str = "ERR value is not an integer or out of range";

#[test]
fn counters_answer_as_redis_does() {
    targets().each(|r, target| {
        check(
            r,
            target,
            &[
                (&["INCR", "n"], int(1)),
                (&["INCRBY", "n", "41"], int(42)),
                (&["DECR", "n"], int(41)),
                (&["DECRBY", "n", "50"], int(-9)),
                (&["GET", "n"], bulk("-9")),
                (&["SET", "n", "9223372036854775806"], ok()),
                (&["INCR", "n"], int(i64::MAX)),
                (
                    &["INCR", "n"],
                    err("ERR increment or decrement would overflow"),
                ),
                (&["GET", "n"], bulk("9223372036854775807")),
                (
                    &["DECRBY", "n", "-9223372036854775808"],
                    err("ERR decrement would overflow"),
                ),
                (&["SET", "s", "abc"], ok()),
                (&["INCR", "s"], err(NOT_INTEGER)),
                (&["INCRBY", "s", "x"], err(NOT_INTEGER)),
                (&["INCRBY", "n2", "05"], err(NOT_INTEGER)),
                (&["SET", "s", " 1"], ok()),
                (&["INCR", "s"], err(NOT_INTEGER)),
                (
                    &["INCR"],
                    err("ERR wrong number of arguments for 'incr' command"),
                ),
                (&["INCRBYFLOAT", "f", "10.5"], bulk("10.5")),
                (&["INCRBYFLOAT", "f", "0.1"], bulk("10.6")),
                (&["INCRBYFLOAT", "f", "-5.6"], bulk("5")),
                (&["INCRBYFLOAT", "f", "5.0e3"], bulk("5005")),
                (
                    &["INCRBYFLOAT", "f", "x"],
                    err("ERR value is not a valid float"),
                ),
                (
                    &["INCRBYFLOAT", "f", "inf"],
                    err("ERR value is not a valid float"),
                ),
                (
                    &["INCRBYFLOAT", "s", "1"],
                    err("ERR value is not a valid float"),
                ),
                (&["INCR", "f"], int(5006)),
            ],
        );
        // A counter keeps its TTL, as in Redis.
        check(
            r,
            target,
            &[
                (&["SET", "t", "1", "EX", "100"], ok()),
                (&["INCR", "t"], int(2)),
                (&["TTL", "t"], int(100)),
            ],
        );
    });
}

#[test]
fn string_commands_answer_as_redis_does() {
    targets().each(|r, target| {
        check(
            r,
            target,
            &[
                (&["APPEND", "a", "Hello"], int(5)),
                (&["APPEND", "a", " World"], int(11)),
                (&["STRLEN", "a"], int(11)),
                (&["STRLEN", "missing"], int(0)),
                (&["GETRANGE", "a", "0", "4"], bulk("Hello")),
                (&["GETRANGE", "a", "-5", "-1"], bulk("World")),
                (&["GETRANGE", "a", "5", "2"], bulk("")),
                (&["GETRANGE", "a", "0", "1000"], bulk("Hello World")),
                (&["GETRANGE", "a", "-1000", "1"], bulk("He")),
                (&["SUBSTR", "a", "6", "-1"], bulk("World")),
                (&["GETRANGE", "missing", "0", "-1"], bulk("")),
                (&["SETRANGE", "a", "6", "Redis"], int(11)),
                (&["GET", "a"], bulk("Hello Redis")),
                (&["SETRANGE", "r", "3", "x"], int(4)),
                (&["GET", "r"], Value::Bulk(Some(b"\0\0\0x".to_vec().into()))),
                (&["SETRANGE", "none", "5", ""], int(0)),
                (&["EXISTS", "none"], int(0)),
                (
                    &["SETRANGE", "a", "-1", "x"],
                    err("ERR offset is out of range"),
                ),
                (&["GETSET", "g", "1"], nil()),
                (&["GETSET", "g", "2"], bulk("1")),
                (&["GETDEL", "g"], bulk("2")),
                (&["GETDEL", "g"], nil()),
                (&["EXISTS", "g"], int(0)),
                (&["SET", "k", "v1", "GET"], nil()),
                (&["SET", "k", "v2", "GET"], bulk("v1")),
                (&["SET", "k", "v3", "NX", "GET"], bulk("v2")),
                (&["GET", "k"], bulk("v2")),
                (&["SET", "k", "v4", "XX", "GET", "EX", "100"], bulk("v2")),
                (&["TTL", "k"], int(100)),
                (&["SET", "k", "v5", "KEEPTTL"], ok()),
                (&["TTL", "k"], int(100)),
                (&["GET", "k"], bulk("v5")),
                (&["SET", "k", "v6"], ok()),
                (&["TTL", "k"], int(-1)),
                (
                    &["SET", "k", "v", "KEEPTTL", "EX", "1"],
                    err("ERR syntax error"),
                ),
                (
                    &["SET", "k", "v", "EX", "0"],
                    err("ERR invalid expire time in 'set' command"),
                ),
                (&["SET", "nx", "v", "NX", "KEEPTTL"], ok()),
                (&["SET", "nx", "w", "NX", "KEEPTTL"], nil()),
                (&["GETEX", "k"], bulk("v6")),
                (&["GETEX", "k", "EX", "200"], bulk("v6")),
                (&["TTL", "k"], int(200)),
                (&["GETEX", "k", "PERSIST"], bulk("v6")),
                (&["TTL", "k"], int(-1)),
                (&["GETEX", "missing", "EX", "10"], nil()),
                (
                    &["GETEX", "k", "EX", "0"],
                    err("ERR invalid expire time in 'getex' command"),
                ),
                (&["GETEX", "k", "FOO", "1"], err("ERR syntax error")),
                (&["SETNX", "sn", "1"], int(1)),
                (&["SETNX", "sn", "2"], int(0)),
                (&["SETEX", "se", "100", "v"], ok()),
                (&["TTL", "se"], int(100)),
                (&["PSETEX", "pse", "100000", "v"], ok()),
                (&["TTL", "pse"], int(100)),
                (&["MSETNX", "m1", "a", "m2", "b"], int(1)),
                (&["MSETNX", "m2", "c", "m3", "d"], int(0)),
                (
                    &["MGET", "m1", "m2", "m3"],
                    Value::Array(Some(vec![bulk("a"), bulk("b"), nil()])),
                ),
                (
                    &["MSETNX", "m3"],
                    err("ERR wrong number of arguments for 'msetnx' command"),
                ),
            ],
        );
        // Absolute expiries: a moment 100 s ahead.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let at = (now + 100).to_string();
        let pxat = ((now + 100) * 1000).to_string();
        check(
            r,
            target,
            &[
                (&["SET", "x", "v", "EXAT", &at], ok()),
                (&["EXPIRETIME", "x"], int((now + 100) as i64)),
                (&["SET", "x", "v", "PXAT", &pxat, "GET"], bulk("v")),
                (&["EXPIRETIME", "x"], int((now + 100) as i64)),
            ],
        );
    });
}

#[test]
fn key_and_ttl_commands_answer_as_redis_does() {
    targets().each(|r, target| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let at = (now + 100).to_string();
        let past = (now - 10).to_string();
        check(
            r,
            target,
            &[
                (&["SET", "k", "v"], ok()),
                (&["TYPE", "k"], status("string")),
                (&["TYPE", "missing"], status("none")),
                (&["TOUCH", "k", "missing", "k"], int(2)),
                (&["PERSIST", "k"], int(0)),
                (&["EXPIRETIME", "k"], int(-1)),
                (&["EXPIRETIME", "missing"], int(-2)),
                (&["EXPIRE", "k", "100", "XX"], int(0)),
                (&["EXPIRE", "k", "100", "GT"], int(0)),
                (&["EXPIRE", "k", "100", "NX"], int(1)),
                (&["EXPIRE", "k", "200", "NX"], int(0)),
                (&["EXPIRE", "k", "50", "GT"], int(0)),
                (&["EXPIRE", "k", "200", "GT"], int(1)),
                (&["TTL", "k"], int(200)),
                (&["EXPIRE", "k", "300", "LT"], int(0)),
                (&["EXPIRE", "k", "150", "LT"], int(1)),
                (&["EXPIRE", "k", "120", "XX"], int(1)),
                (&["TTL", "k"], int(120)),
                (
                    &["EXPIRE", "k", "1", "NX", "XX"],
                    err("ERR NX and XX, GT or LT options at the same time are not compatible"),
                ),
                (
                    &["EXPIRE", "k", "1", "GT", "LT"],
                    err("ERR GT and LT options at the same time are not compatible"),
                ),
                (
                    &["EXPIRE", "k", "1", "YY"],
                    err("ERR Unsupported option YY"),
                ),
                (&["PERSIST", "k"], int(1)),
                (&["TTL", "k"], int(-1)),
                (&["EXPIREAT", "k", &at], int(1)),
                (&["EXPIRETIME", "k"], int((now + 100) as i64)),
                (
                    &["PEXPIREAT", "k", &((now + 50) * 1000).to_string()],
                    int(1),
                ),
            ],
        );
        // Kept as a TTL: the moment comes back exact to a few milliseconds.
        let Value::Integer(pxat) = r.call(&["PEXPIRETIME", "k"]) else {
            panic!("{target}: PEXPIRETIME is not an integer");
        };
        let want = ((now + 50) * 1000) as i64;
        assert!(
            (want - 5..=want + 5).contains(&pxat),
            "{target}: PEXPIRETIME {pxat}, not {want}"
        );
        check(
            r,
            target,
            &[
                (&["EXPIREAT", "missing", &at], int(0)),
                (&["EXPIREAT", "k", &past], int(1)),
                (&["EXISTS", "k"], int(0)),
                (&["SET", "k", "v"], ok()),
                (&["EXPIRE", "k", "-1"], int(1)),
                (&["EXISTS", "k"], int(0)),
                // Rename and copy carry the value and its TTL.
                (&["SET", "src", "v", "EX", "100"], ok()),
                (&["RENAME", "src", "dst"], ok()),
                (&["EXISTS", "src"], int(0)),
                (&["GET", "dst"], bulk("v")),
                (&["TTL", "dst"], int(100)),
                (&["RENAME", "src", "dst"], err("ERR no such key")),
                (&["SET", "src", "w"], ok()),
                (&["RENAMENX", "src", "dst"], int(0)),
                (&["RENAMENX", "src", "dst2"], int(1)),
                (&["GET", "dst2"], bulk("w")),
                (&["RENAME", "dst2", "dst2"], ok()),
                (&["COPY", "dst", "cp"], int(1)),
                (&["TTL", "cp"], int(100)),
                (&["COPY", "dst2", "cp"], int(0)),
                (&["COPY", "dst2", "cp", "REPLACE"], int(1)),
                (&["GET", "cp"], bulk("w")),
                (&["COPY", "missing", "cp"], int(0)),
                (
                    &["COPY", "cp", "cp"],
                    err("ERR source and destination objects are the same"),
                ),
                (
                    &["COPY", "cp", "x", "DB", "1"],
                    err("ERR DB index is out of range"),
                ),
            ],
        );
    });
}

/// Clients incrementing shared counters through two orchestrators while
/// a worker of the pair is killed and restarted: every acknowledged
/// increment returned a value no other did (none computed from a stale
/// count, none applied twice), and the final count lies between the
/// acknowledged increments and those plus the ones whose outcome the
/// client was told is unknown (a few, when the kill cuts requests off),
/// none once the worker is back. Both workers end with the same count.
#[test]
fn increments_survive_a_worker_restart_without_loss_or_double_counting() {
    let seed = chaos::seed("increments_survive_a_worker_restart");
    let [pa, pb] = free_ports();
    let mut a = worker_starting(pa, Some(pb), &["--anti-entropy-interval", "500ms"]);
    let mut b = worker_starting(pb, Some(pa), &["--anti-entropy-interval", "500ms"]);
    a.wait_ready();
    b.wait_ready();
    let timeouts = ["--worker-timeout", "300ms"];
    let o1 = orchestrator(&[pa, pb], &timeouts);
    let o2 = orchestrator(&[pa, pb], &timeouts);
    const COUNTERS: usize = 3;
    let stop = Arc::new(AtomicBool::new(false));
    // Per counter: every value an INCR answered, and the unknown outcomes.
    let seen: Arc<Vec<Mutex<Vec<i64>>>> =
        Arc::new((0..COUNTERS).map(|_| Mutex::new(Vec::new())).collect());
    let unknown: Arc<Vec<Mutex<u64>>> = Arc::new((0..COUNTERS).map(|_| Mutex::new(0)).collect());
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    // Unknown outcomes once the killed worker is back and ready.
    let back = Arc::new(AtomicBool::new(false));
    let unknown_after_return = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let port = if i % 2 == 0 { o1.port } else { o2.port };
            let (stop, seen, unknown, failed) =
                (stop.clone(), seen.clone(), unknown.clone(), failed.clone());
            let (back, unknown_after_return) = (back.clone(), unknown_after_return.clone());
            std::thread::spawn(move || {
                let mut r = Resp::connect(port);
                let mut n = seed.wrapping_add(i);
                while !stop.load(Ordering::Relaxed) {
                    n = n
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let c = (n >> 33) as usize % COUNTERS;
                    match r.call(&["INCR", &format!("counter-{c}")]) {
                        Value::Integer(v) => seen[c].lock().expect("lock").push(v),
                        Value::Error(e) if e.starts_with(b"ERR write outcome unknown") => {
                            *unknown[c].lock().expect("lock") += 1;
                            if back.load(Ordering::SeqCst) {
                                unknown_after_return.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        other => failed.lock().expect("lock").push(format!("{other:?}")),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Kill one worker, let the other serve alone, bring it back.
    let victim = if seed % 2 == 0 { &mut a } else { &mut b };
    let port = victim.port;
    let partner = if port == pa { pb } else { pa };
    victim.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    *victim = worker(port, Some(partner), &["--anti-entropy-interval", "500ms"]);
    back.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let failed = failed.lock().expect("lock");
    assert!(
        failed.len() <= 20,
        "seed {seed}: {} increments failed outright (a worker was up throughout): {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    let mut r = Resp::connect(o1.port);
    for c in 0..COUNTERS {
        let values = seen[c].lock().expect("lock");
        let unknown = *unknown[c].lock().expect("lock") as i64;
        let distinct: HashSet<i64> = values.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            values.len(),
            "seed {seed}: counter-{c}: two increments answered the same value (one was lost)"
        );
        let acked = values.len() as i64;
        assert!(
            acked > 50,
            "seed {seed}: counter-{c}: only {acked} increments"
        );
        let key = format!("counter-{c}");
        let Value::Bulk(Some(v)) = r.call(&["GET", &key]) else {
            panic!("seed {seed}: counter-{c} is gone");
        };
        let total: i64 = String::from_utf8_lossy(&v).parse().expect("a count");
        assert!(
            (acked..=acked + unknown).contains(&total),
            "seed {seed}: counter-{c} is {total} after {acked} acknowledged and {unknown} unknown increments"
        );
        // Both workers converge on it.
        let on = |port: u16| Resp::connect(port).call(&["GET", &key]);
        assert!(
            eventually(Duration::from_secs(15), || on(pa) == on(pb)),
            "seed {seed}: the workers disagree on {key}: {:?} vs {:?}",
            on(pa),
            on(pb)
        );
        eprintln!("counter-{c}: {total} ({acked} acknowledged, {unknown} unknown)");
    }
    // The worker that came back decides nothing while its partner, which
    // served throughout, can: whichever orchestrator sees it back first,
    // both keep the same decider, and no update's outcome is unknown.
    assert_eq!(
        unknown_after_return.load(Ordering::Relaxed),
        0,
        "seed {seed}: unknown outcomes after the worker came back"
    );
}

/// Walks a whole SCAN from cursor 0; the keys it returned.
fn scan_all(r: &mut Resp, extra: &[&str], mut between: impl FnMut(usize)) -> Vec<String> {
    let (mut cursor, mut keys, mut steps) = ("0".to_string(), Vec::new(), 0);
    loop {
        let mut args = vec!["SCAN", cursor.as_str()];
        args.extend_from_slice(extra);
        let Value::Array(Some(reply)) = r.call(&args) else {
            panic!("SCAN did not answer an array");
        };
        let [Value::Bulk(Some(next)), Value::Array(Some(batch))] = &reply[..] else {
            panic!("SCAN answered {reply:?}");
        };
        for key in batch {
            let Value::Bulk(Some(key)) = key else {
                panic!("a key that is not a string: {key:?}");
            };
            keys.push(String::from_utf8_lossy(key).into_owned());
        }
        cursor = String::from_utf8_lossy(next).into_owned();
        steps += 1;
        assert!(steps < 100_000, "SCAN never ended");
        if cursor == "0" {
            return keys;
        }
        between(steps);
    }
}

#[test]
fn scan_keys_randomkey_and_flushdb_cover_the_whole_cluster() {
    targets().each(|r, target| {
        assert_eq!(r.call(&["RANDOMKEY"]), nil(), "{target}");
        let mut wire = bytes::BytesMut::new();
        for i in 0..600 {
            let key = format!("{}:{i}", if i % 3 == 0 { "user" } else { "page" });
            rcache::protocol::resp::encode_request(&[b"SET", key.as_bytes(), b"v"], &mut wire);
        }
        r.send_raw(&wire);
        for _ in 0..600 {
            assert_eq!(r.read(), ok());
        }
        let keys = scan_all(r, &["COUNT", "50"], |_| {});
        let distinct: HashSet<&String> = keys.iter().collect();
        assert_eq!(
            distinct.len(),
            600,
            "{target}: SCAN saw {} distinct keys",
            distinct.len()
        );
        assert!(
            keys.len() <= 600 + 10,
            "{target}: {} keys, many twice",
            keys.len()
        );
        let users = scan_all(r, &["MATCH", "user:*", "COUNT", "1000"], |_| {});
        assert_eq!(users.len(), 200, "{target}");
        assert!(users.iter().all(|k| k.starts_with("user:")));
        assert!(
            scan_all(r, &["TYPE", "hash"], |_| {}).is_empty(),
            "{target}"
        );
        assert_eq!(
            scan_all(r, &["TYPE", "string", "COUNT", "1000"], |_| {}).len(),
            600
        );
        let Value::Array(Some(matched)) = r.call(&["KEYS", "user:1*"]) else {
            panic!("{target}: KEYS did not answer an array");
        };
        // user:1*: the multiples of 3 that start with 1 below 600.
        let want = (0..600)
            .filter(|i| i % 3 == 0 && i.to_string().starts_with('1'))
            .count();
        assert_eq!(matched.len(), want, "{target}");
        let Value::Bulk(Some(random)) = r.call(&["RANDOMKEY"]) else {
            panic!("{target}: RANDOMKEY found nothing");
        };
        assert!(distinct.contains(&String::from_utf8_lossy(&random).into_owned()));
        check(
            r,
            target,
            &[
                (&["DBSIZE"], int(600)),
                (&["SCAN", "x"], err("ERR invalid cursor")),
                (&["SCAN", "0", "COUNT", "0"], err("ERR syntax error")),
                (&["SCAN", "0", "MATCH"], err("ERR syntax error")),
                (&["FLUSHDB", "LATER"], err("ERR syntax error")),
                (&["FLUSHALL", "ASYNC"], ok()),
                (&["DBSIZE"], int(0)),
                (&["GET", "user:0"], nil()),
                (&["RANDOMKEY"], nil()),
                (&["KEYS", "*"], Value::Array(Some(Vec::new()))),
                (&["SET", "after", "v"], ok()),
                (&["FLUSHDB", "SYNC"], ok()),
                (&["EXISTS", "after"], int(0)),
                (&["SET", "after", "w"], ok()),
                (&["GET", "after"], bulk("w")),
            ],
        );
    });
}

/// A SCAN goes on at the partner when the worker serving it dies: the
/// cursor names buckets, the same on both workers of a pair.
#[test]
fn a_scan_cursor_survives_a_failover() {
    let (a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let mut workers = [a, b, c, d];
    let ports: Vec<u16> = workers.iter().map(|w| w.port).collect();
    let o = orchestrator(&ports, &["--worker-timeout", "300ms"]);
    let mut r = Resp::connect(o.port);
    for i in 0..2000 {
        assert_eq!(r.call(&["SET", &format!("k{i}"), "v"]), ok());
    }
    let mut killed = false;
    let keys = scan_all(&mut r, &["COUNT", "20"], |step| {
        if step == 5 && !killed {
            // Pair 0 is being walked: one of its workers goes.
            workers[0].kill9();
            killed = true;
        }
    });
    assert!(killed, "the walk ended before the kill");
    let distinct: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), 2000, "the walk lost keys at the failover");
}

/// A flush one worker misses (frozen, with hints for it queued and
/// anti-entropy running) is not undone: reads never see a flushed key, the
/// frozen worker drops its keys once anti-entropy brings it the flush,
/// and a refill after a restart brings nothing back.
#[test]
fn a_flush_is_not_undone_by_hints_anti_entropy_or_refill() {
    let [pa, pb] = free_ports();
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut a = worker_starting(pa, Some(pb), &ae);
    let mut b = worker_starting(pb, Some(pa), &ae);
    a.wait_ready();
    b.wait_ready();
    let o = orchestrator(&[pa, pb], &["--worker-timeout", "200ms"]);
    let mut r = Resp::connect(o.port);
    for i in 0..200 {
        assert_eq!(r.call(&["SET", &format!("old{i}"), "v"]), ok());
    }
    b.signal(libc::SIGSTOP);
    // Hinted for b, then flushed while b sleeps.
    for i in 0..50 {
        assert_eq!(r.call(&["SET", &format!("hinted{i}"), "v"]), ok());
    }
    assert_eq!(r.call(&["FLUSHDB"]), ok());
    b.signal(libc::SIGCONT);
    let on = |port: u16, args: &[&str]| Resp::connect(port).call(args);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        for i in (0..200).step_by(7) {
            assert_eq!(
                r.call(&["GET", &format!("old{i}")]),
                nil(),
                "a flushed key came back"
            );
        }
        for i in (0..50).step_by(7) {
            assert_eq!(
                r.call(&["GET", &format!("hinted{i}")]),
                nil(),
                "a flushed key came back"
            );
        }
        if on(pb, &["DBSIZE"]) == int(0) && on(pa, &["DBSIZE"]) == int(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the frozen worker kept {:?} keys",
            on(pb, &["DBSIZE"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // b restarts and refills from a: nothing comes back, new writes stay.
    assert_eq!(r.call(&["SET", "new", "v"]), ok());
    b.kill9();
    b = worker(pb, Some(pa), &ae);
    assert_eq!(on(pb, &["DBSIZE"]), int(1));
    assert_eq!(on(pb, &["GET", "new"]), bulk("v"));
    // And a, restarted in turn, refills from b.
    a.kill9();
    a = worker(pa, Some(pb), &ae);
    assert_eq!(on(pa, &["DBSIZE"]), int(1));
    for i in (0..200).step_by(7) {
        assert_eq!(r.call(&["GET", &format!("old{i}")]), nil());
    }
    drop((a, b));
}

fn text(v: Value) -> String {
    match v {
        Value::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

fn integer(v: Value) -> i64 {
    match v {
        Value::Integer(n) => n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(Some(items)) => items,
        other => panic!("expected an array, got {other:?}"),
    }
}

/// One `name=value` field of a `CLIENT LIST` line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

/// One `name:value` line of an `INFO` answer.
fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::to_string)
}

#[test]
fn client_commands_see_and_close_real_connections() {
    targets().each(|a, target| {
        let port = a.sock.peer_addr().expect("peer").port();
        let mut b = Resp::connect(port);
        let id_a = integer(a.call(&["CLIENT", "ID"]));
        let id_b = integer(b.call(&["CLIENT", "ID"]));
        assert_ne!(id_a, id_b, "{target}");
        assert_eq!(b.call(&["CLIENT", "SETNAME", "billing"]), ok(), "{target}");
        assert_eq!(b.call(&["CLIENT", "GETNAME"]), bulk("billing"), "{target}");
        assert_eq!(
            b.call(&["CLIENT", "SETINFO", "LIB-NAME", "tests"]),
            ok(),
            "{target}"
        );
        assert_eq!(
            b.call(&["CLIENT", "SETNAME", "two words"]),
            err("ERR Client names cannot contain spaces, newlines or special characters."),
            "{target}"
        );
        b.call(&["GET", "x"]);
        let list = text(a.call(&["CLIENT", "LIST"]));
        let line_b = list
            .lines()
            .find(|l| field(l, "id") == id_b.to_string())
            .unwrap_or_else(|| panic!("{target}: no line for {id_b} in {list}"));
        assert_eq!(field(line_b, "name"), "billing", "{target}");
        assert_eq!(field(line_b, "lib-name"), "tests", "{target}");
        assert_eq!(field(line_b, "cmd"), "get", "{target}");
        assert_eq!(
            field(line_b, "addr"),
            b.sock.local_addr().expect("addr").to_string(),
            "{target}"
        );
        let mine = text(a.call(&["CLIENT", "INFO"]));
        assert_eq!(field(&mine, "id"), id_a.to_string(), "{target}");
        let only_b = text(a.call(&["CLIENT", "LIST", "ID", &id_b.to_string()]));
        assert_eq!(only_b.lines().count(), 1, "{target}: {only_b}");
        // SKIPME yes (the default) spares the asker; an unknown address
        // is an error in the old form.
        let addr_a = a.sock.local_addr().expect("addr").to_string();
        assert_eq!(
            a.call(&["CLIENT", "KILL", "ADDR", &addr_a]),
            int(0),
            "{target}"
        );
        assert_eq!(
            a.call(&["CLIENT", "KILL", "192.0.2.1:1"]),
            err("ERR No such client"),
            "{target}"
        );
        assert_eq!(
            a.call(&["CLIENT", "KILL", "ID", &id_b.to_string()]),
            int(1),
            "{target}"
        );
        assert!(
            b.closed_within(Duration::from_secs(5)),
            "{target}: killed, still open"
        );
        // The connection leaves the table as its task ends, just after
        // the socket closes.
        let listed = |a: &mut Resp| {
            text(a.call(&["CLIENT", "LIST"]))
                .lines()
                .any(|l| field(l, "id") == id_b.to_string())
        };
        assert!(
            eventually(Duration::from_secs(5), || !listed(a)),
            "{target}: a closed connection is still listed"
        );
        assert_eq!(a.call(&["CLIENT", "NO-EVICT", "ON"]), ok(), "{target}");
        assert!(
            matches!(a.call(&["CLIENT", "REPLY", "OFF"]), Value::Error(_)),
            "{target}"
        );
    });
}

#[test]
fn info_command_time_memory_and_object_report_real_figures() {
    targets().each(|r, target| {
        for i in 0..20 {
            assert_eq!(r.call(&["SET", &format!("info:{i}"), "12345"]), ok());
        }
        assert_eq!(r.call(&["SET", "info:long", &"x".repeat(100)]), ok());
        let info = text(r.call(&["INFO", "keyspace"]));
        assert_eq!(
            info_field(&info, "db0").as_deref(),
            Some("keys=21"),
            "{target}: {info}"
        );
        assert!(
            !info.contains("# Server"),
            "{target}: only the section asked for"
        );
        let hits = |r: &mut Resp| -> u64 {
            let stats = text(r.call(&["INFO", "stats"]));
            info_field(&stats, "keyspace_hits")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{target}: no keyspace_hits in {stats}"))
        };
        let before = hits(r);
        r.call(&["GET", "info:1"]);
        r.call(&["GET", "info:2"]);
        assert!(hits(r) >= before + 2, "{target}: GETs are counted as hits");
        let all = text(r.call(&["INFO"]));
        for section in ["# Server", "# Clients", "# Memory", "# Stats", "# Keyspace"] {
            assert!(all.contains(section), "{target}: no {section} in {all}");
        }
        let used: u64 = info_field(&all, "used_memory")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(used > 0, "{target}: used_memory");
        let connected: u64 = info_field(&all, "connected_clients")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(connected >= 1, "{target}: connected_clients");

        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let time = items(r.call(&["TIME"]));
        let secs: i64 = text(time[0].clone()).parse().expect("seconds");
        let micros: i64 = text(time[1].clone()).parse().expect("microseconds");
        assert!(
            (secs - now).abs() <= 5 && (0..1_000_000).contains(&micros),
            "{target}"
        );

        let usage = integer(r.call(&["MEMORY", "USAGE", "info:long"]));
        assert!(usage >= 109, "{target}: MEMORY USAGE {usage} < key + value");
        assert_eq!(r.call(&["MEMORY", "USAGE", "missing"]), nil(), "{target}");
        check(
            r,
            target,
            &[
                (&["OBJECT", "ENCODING", "info:1"], bulk("int")),
                (&["OBJECT", "ENCODING", "info:long"], bulk("raw")),
                (&["OBJECT", "ENCODING", "missing"], nil()),
                (&["OBJECT", "REFCOUNT", "info:1"], int(1)),
            ],
        );
        assert!(
            matches!(r.call(&["OBJECT", "FREQ", "info:1"]), Value::Error(_)),
            "{target}"
        );

        let count = integer(r.call(&["COMMAND", "COUNT"]));
        assert_eq!(
            items(r.call(&["COMMAND", "LIST"])).len() as i64,
            count,
            "{target}"
        );
        assert_eq!(items(r.call(&["COMMAND"])).len() as i64, count, "{target}");
        let get = items(r.call(&["COMMAND", "INFO", "get", "nosuch"]));
        assert_eq!(get[1], nil(), "{target}: an unknown command is nil");
        let get = items(get[0].clone());
        assert_eq!(
            (get[0].clone(), get[1].clone()),
            (bulk("get"), int(2)),
            "{target}"
        );
        let docs = items(r.call(&["COMMAND", "DOCS", "incr"]));
        assert_eq!(docs[0], bulk("incr"), "{target}");
        assert!(format!("{:?}", docs[1]).contains("Increments"), "{target}");
    });
}

/// `INFO persistence` says `loading:1` while a worker does not serve
/// reads yet (here: waiting for an unreachable partner), so clients' ready
/// checks wait; `loading:0` once it serves.
#[test]
fn info_says_loading_until_a_worker_serves() {
    let [port, absent] = free_ports();
    let _waiting = worker_starting(port, Some(absent), &["--refill-wait", "60s"]);
    assert!(
        eventually(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "the worker listens while it waits"
    );
    let mut r = Resp::connect(port);
    let info = text(r.call(&["INFO", "persistence"]));
    assert_eq!(info_field(&info, "loading").as_deref(), Some("1"), "{info}");
    let ready = solo(&[]);
    let info = text(Resp::connect(ready.port).call(&["INFO", "persistence"]));
    assert_eq!(info_field(&info, "loading").as_deref(), Some("0"), "{info}");
}

/// A redis-server on a free port, for answers to compare with; `None`
/// outside CI when it is not installed (in CI its absence fails).
fn redis_server() -> Option<(std::process::Child, u16)> {
    let port = free_port();
    match std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
    {
        Ok(child) => {
            let up = eventually(Duration::from_secs(10), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(up, "redis-server did not listen on {port}");
            Some((child, port))
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs redis-server (apt install redis-server): {e}"
            );
            eprintln!("SKIPPED: no redis-server ({e})");
            None
        }
    }
}

#[test]
fn lcs_answers_as_redis_server_does() {
    // Values whose subsequences tie in several ways, so the walk back
    // through the table has to choose as Redis's does.
    let values = [
        ("lcs:a", "ohmytext"),
        ("lcs:b", "mynewtext"),
        ("lcs:c", "abcabcbbxxabcdeaab"),
        ("lcs:d", "bbaxcabcxadebca"),
        ("lcs:e", ""),
    ];
    let pairs = [
        ("lcs:a", "lcs:b"),
        ("lcs:c", "lcs:d"),
        ("lcs:d", "lcs:c"),
        ("lcs:a", "lcs:e"),
        ("lcs:a", "lcs:missing"),
    ];
    let options: [&[&str]; 6] = [
        &[],
        &["LEN"],
        &["IDX"],
        &["IDX", "WITHMATCHLEN"],
        &["IDX", "MINMATCHLEN", "3", "WITHMATCHLEN"],
        &["LEN", "IDX"],
    ];
    let Some((mut redis, redis_port)) = redis_server() else {
        return;
    };
    let mut want = Vec::new();
    let mut r = Resp::connect_plain(redis_port);
    for (k, v) in values {
        assert_eq!(r.call(&["SET", k, v]), ok());
    }
    for (a, b) in pairs {
        for opts in options {
            let mut args = vec!["LCS", a, b];
            args.extend_from_slice(opts);
            want.push((args.clone(), r.call(&args)));
        }
    }
    let _ = redis.kill();
    let _ = redis.wait();
    targets().each(|r, target| {
        for (k, v) in values {
            assert_eq!(r.call(&["SET", k, v]), ok());
        }
        for (args, answer) in &want {
            assert_eq!(&r.call(args), answer, "{target}: {args:?}");
        }
    });
}

#[test]
fn lcs_of_values_too_large_for_its_table_is_refused() {
    targets().each(|r, target| {
        let big = "ab".repeat(2048);
        assert_eq!(r.call(&["SET", "lcs:big1", &big]), ok());
        assert_eq!(r.call(&["SET", "lcs:big2", &big]), ok());
        assert!(
            matches!(r.call(&["LCS", "lcs:big1", "lcs:big2", "LEN"]), Value::Error(e) if e.starts_with(b"ERR Insufficient memory")),
            "{target}"
        );
        assert_eq!(r.call(&["SET", "lcs:small", "abab"]), ok());
        assert_eq!(r.call(&["LCS", "lcs:big1", "lcs:small", "LEN"]), int(4), "{target}");
    });
}

/// The same answer with the order of an array's items (or of its
/// field-value pairs) left out: Redis keeps a small hash's fields in
/// insertion order, rcache in byte order, and neither order is promised.
fn unordered(v: Value, pairs: bool) -> Value {
    match v {
        Value::Array(Some(items)) if pairs => {
            let mut chunks: Vec<Vec<Value>> = items.chunks(2).map(|c| c.to_vec()).collect();
            chunks.sort_by_key(|c| format!("{c:?}"));
            Value::Array(Some(chunks.into_iter().flatten().collect()))
        }
        Value::Array(Some(mut items)) => {
            items.sort_by_key(|i| format!("{i:?}"));
            Value::Array(Some(items))
        }
        other => other,
    }
}

#[test]
fn hash_commands_answer_as_redis_server_does() {
    #[rustfmt::skip]
    let script: &[&[&str]] = &[
        &["HSET", "h", "a", "1", "b", "2", "c", "3"],
        &["HSET", "h", "a", "10", "d", "4"],
        &["HGET", "h", "a"], &["HGET", "h", "zz"], &["HGET", "nohash", "a"],
        &["HMGET", "h", "a", "zz", "b"], &["HMGET", "nohash", "a"],
        &["HLEN", "h"], &["HEXISTS", "h", "b"], &["HEXISTS", "h", "zz"],
        &["HSTRLEN", "h", "a"], &["HSTRLEN", "h", "zz"],
        &["HDEL", "h", "b", "zz", "b"], &["HDEL", "h", "zz"], &["HDEL", "nohash", "a"],
        &["HLEN", "h"],
        &["HSETNX", "h", "a", "x"], &["HSETNX", "h", "e", "5"], &["HGET", "h", "e"],
        &["HINCRBY", "h", "n", "5"], &["HINCRBY", "h", "n", "-7"], &["HINCRBY", "h", "a", "1"],
        &["HINCRBY", "h", "e", "x"],
        &["HSET", "h", "s", "abc"], &["HINCRBY", "h", "s", "1"],
        &["HINCRBYFLOAT", "h", "f", "1.5"], &["HINCRBYFLOAT", "h", "f", "2.25"],
        &["HINCRBYFLOAT", "h", "f", "-3.75"], &["HINCRBYFLOAT", "h", "s", "1"],
        &["HINCRBYFLOAT", "h", "f", "abc"],
        &["HSET", "h", "big", "9223372036854775807"], &["HINCRBY", "h", "big", "1"],
        &["HMSET", "h", "m", "1", "n2", "2"],
        &["TYPE", "h"], &["EXISTS", "h"],
        &["SET", "str", "v"], &["HSET", "str", "a", "1"], &["HGET", "str", "a"],
        &["HGETALL", "str"], &["HINCRBY", "str", "a", "1"], &["HSETNX", "str", "a", "1"],
        &["HDEL", "str", "a"],
        &["GET", "h"], &["INCR", "h"], &["APPEND", "h", "x"], &["STRLEN", "h"],
        &["TYPE", "str"], &["MGET", "str", "h", "nohash"],
        &["HGETALL", "h"], &["HKEYS", "h"], &["HVALS", "h"],
        &["HGETALL", "nohash"], &["HKEYS", "nohash"], &["HLEN", "nohash"],
        &["HSCAN", "h", "0", "MATCH", "n*"], &["HSCAN", "nohash", "0"],
        &["HRANDFIELD", "nohash"], &["HRANDFIELD", "nohash", "3"],
        &["HRANDFIELD", "h", "100"], &["HRANDFIELD", "h", "0"],
        &["HSET", "h"], &["HSET", "h", "a"], &["HGET", "h"], &["HMSET", "h", "a"],
        &["HINCRBY", "h", "a"], &["HRANDFIELD", "h", "1", "WITHVALUE"],
        &["EXPIRE", "h", "100"], &["TTL", "h"],
        &["HSET", "h2", "x", "1"], &["DEL", "h2"], &["HGET", "h2", "x"], &["TYPE", "h2"],
        &["HSET", "h3", "x", "1"], &["HDEL", "h3", "x"], &["EXISTS", "h3"], &["TYPE", "h3"],
        &["HLEN", "h3"], &["HSET", "h3", "y", "2"], &["HGETALL", "h3"],
    ];
    let end: &[&[&str]] = &[
        &["SET", "h3", "now a string"],
        &["TYPE", "h3"],
        &["GET", "h3"],
    ];
    let normal = |args: &[&str], v: Value| match args[0] {
        "HGETALL" => unordered(v, true),
        "HKEYS" | "HVALS" | "HRANDFIELD" => unordered(v, false),
        "HSCAN" | "SCAN" => match v {
            Value::Array(Some(mut parts)) if parts.len() == 2 => {
                let items = parts.pop().expect("two parts");
                let cursor = parts.pop().expect("two parts");
                Value::Array(Some(vec![cursor, unordered(items, args[0] == "HSCAN")]))
            }
            other => other,
        },
        _ => v,
    };
    let Some((mut redis, redis_port)) = redis_server() else {
        return;
    };
    // Every key of a type, by a whole SCAN walk.
    let walk = |r: &mut Resp, kind: &str| {
        let mut keys = scan_all(r, &["TYPE", kind, "COUNT", "100"], |_| {});
        keys.sort();
        keys
    };
    let run = |r: &mut Resp| {
        let mut answers: Vec<Value> = script
            .iter()
            .map(|args| normal(args, r.call(args)))
            .collect();
        let walks = (walk(r, "hash"), walk(r, "string"), walk(r, "list"));
        answers.extend(end.iter().map(|args| r.call(args)));
        (answers, walks)
    };
    let (want, want_walks) = run(&mut Resp::connect_plain(redis_port));
    let _ = redis.kill();
    let _ = redis.wait();
    assert_eq!(want_walks.0.len(), 2, "{want_walks:?}");
    targets().each(|r, target| {
        let (got, walks) = run(r);
        let all = script.iter().chain(end);
        for ((args, answer), got) in all.zip(&want).zip(&got) {
            assert_eq!(got, answer, "{target}: {args:?}");
        }
        assert_eq!(walks, want_walks, "{target}: SCAN … TYPE");
    });
}

/// Clients writing different fields of the same hashes through two
/// orchestrators (one with its clock 10 s behind) while a worker of the
/// pair is killed and comes back empty: every acknowledged field write
/// survives on both workers, each a different order of the writes, and
/// every acknowledged field deletion stays deleted. With one value per key
/// (last writer wins) the concurrent writes of other fields would be lost.
/// The same clients count in one field with HINCRBY: every acknowledged
/// increment answered a value no other did, and the count ends between
/// the acknowledged increments and those plus the unknown outcomes.
#[test]
fn concurrent_field_writes_through_two_orchestrators_all_survive_a_kill_and_refill() {
    let seed = chaos::seed("concurrent_field_writes");
    let Some(behind) = skewed_clock("-10s") else {
        return;
    };
    let [pa, pb] = free_ports();
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut a = worker_starting(pa, Some(pb), &ae);
    let mut b = worker_starting(pb, Some(pa), &ae);
    a.wait_ready();
    b.wait_ready();
    let o1 = orchestrator(&[pa, pb], &["--worker-timeout", "300ms"]);
    let o2 = orchestrator_skewed(&[pa, pb], &behind);
    const HASHES: usize = 2;
    let stop = Arc::new(AtomicBool::new(false));
    // Per client: (hash, field, Some(value) | None for deleted) acknowledged.
    // `None` for a deletion; `Err` for a write whose outcome the client
    // was not told (it may or may not have applied).
    type Acked = Vec<(usize, String, Result<Option<String>, String>)>;
    // Values HINCRBY answered, and its unknown outcomes.
    let hits = Arc::new(Mutex::new((Vec::<i64>::new(), 0i64)));
    let clients: Vec<std::thread::JoinHandle<(Acked, usize, usize)>> = (0..4u64)
        .map(|i| {
            let port = if i % 2 == 0 { o1.port } else { o2.port };
            let (stop, hits) = (stop.clone(), hits.clone());
            std::thread::spawn(move || {
                let mut r = Resp::connect(port);
                let (mut acked, mut failed, mut wrong) = (Vec::new(), 0, 0);
                let mut n = 0u64;
                let mut rng = seed.wrapping_add(i);
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let h = (rng >> 33) as usize % HASHES;
                    let field = format!("c{i}-{n}");
                    let value = format!("{i}:{n}");
                    match r.call(&["HSET", &format!("hash-{h}"), &field, &value]) {
                        Value::Integer(1) => acked.push((h, field.clone(), Ok(Some(value)))),
                        // A new field counted as there before: a wrong answer.
                        Value::Integer(n) => {
                            wrong += 1;
                            eprintln!("HSET of the new field {field} answered {n}");
                            acked.push((h, field.clone(), Ok(Some(value))));
                        }
                        other => {
                            failed += 1;
                            acked.push((h, field.clone(), Err(format!("HSET: {other:?}"))));
                        }
                    }
                    match r.call(&["HINCRBY", "hash-0", "hits", "1"]) {
                        Value::Integer(v) => hits.lock().expect("lock").0.push(v),
                        Value::Error(e) if e.starts_with(b"ERR write outcome unknown") => {
                            hits.lock().expect("lock").1 += 1
                        }
                        other => {
                            failed += 1;
                            eprintln!("HINCRBY: {other:?}");
                        }
                    }
                    // Every fifth field is deleted again.
                    if n % 5 == 0 {
                        match r.call(&["HDEL", &format!("hash-{h}"), &field]) {
                            Value::Integer(_) => acked.push((h, field, Ok(None))),
                            other => {
                                failed += 1;
                                acked.push((h, field, Err(format!("HDEL: {other:?}"))));
                            }
                        }
                    }
                }
                (acked, failed, wrong)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let victim = if seed % 2 == 0 { &mut a } else { &mut b };
    let port = victim.port;
    let partner = if port == pa { pb } else { pa };
    victim.kill9();
    std::thread::sleep(Duration::from_millis(1200));
    *victim = worker(port, Some(partner), &ae);
    std::thread::sleep(Duration::from_millis(1200));
    stop.store(true, Ordering::Relaxed);
    let mut want: Vec<std::collections::BTreeMap<String, String>> =
        vec![Default::default(); HASHES];
    // Fields whose last write's outcome is unknown: there or not.
    let mut uncertain: Vec<HashSet<String>> = vec![HashSet::new(); HASHES];
    let (mut writes, mut failures, mut wrong) = (0, 0, 0);
    for c in clients {
        let (acked, failed, wrong_answers) = c.join().expect("client thread");
        failures += failed;
        wrong += wrong_answers;
        for (h, field, value) in acked {
            match value {
                Ok(Some(v)) => {
                    writes += 1;
                    uncertain[h].remove(&field);
                    want[h].insert(field, v);
                }
                Ok(None) => {
                    writes += 1;
                    uncertain[h].remove(&field);
                    want[h].remove(&field);
                }
                Err(e) => {
                    eprintln!("seed {seed}: {field}: {e}");
                    want[h].remove(&field);
                    uncertain[h].insert(field);
                }
            }
        }
    }
    let (values, unknown) = hits.lock().expect("lock").clone();
    let distinct: HashSet<i64> = values.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        values.len(),
        "seed {seed}: two HINCRBYs answered the same count (one was lost)"
    );
    let acked = values.len() as i64;
    // The count is read where every acknowledged write is, below.
    // The count ends at least at the highest value an HINCRBY answered
    // and at the acknowledged ones, at most those plus the unknown ones.
    let fewest = values.iter().copied().max().unwrap_or(0).max(acked);
    eprintln!("seed {seed}: {acked} HINCRBYs acknowledged, {unknown} unknown");
    // `hits` compares as "" once its count is in range (below).
    want[0].insert("hits".into(), String::new());
    eprintln!("seed {seed}: {writes} acknowledged field writes, {failures} failed");
    assert!(
        writes > 200,
        "seed {seed}: only {writes} acknowledged writes"
    );
    assert_eq!(
        wrong, 0,
        "seed {seed}: HSETs of new fields answered 0 added"
    );
    assert!(
        failures <= 40,
        "seed {seed}: {failures} writes failed with a worker up throughout"
    );
    let all = |port: u16, h: usize| {
        let reply = Resp::connect(port).call(&["HGETALL", &format!("hash-{h}")]);
        let Value::Array(Some(items)) = reply else {
            panic!("seed {seed}: HGETALL answered {reply:?}");
        };
        let text = |v: &Value| match v {
            Value::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("seed {seed}: {other:?} in HGETALL"),
        };
        items
            .chunks(2)
            .map(|c| (text(&c[0]), text(&c[1])))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let counted = |got: &mut std::collections::BTreeMap<String, String>| {
        let n: i64 = got.get("hits").and_then(|v| v.parse().ok()).unwrap_or(-1);
        if (fewest..=acked + unknown).contains(&n) {
            got.insert("hits".into(), String::new());
        }
    };
    for (h, want) in want.iter().enumerate() {
        for port in [o1.port, o2.port, pa, pb] {
            let converged = eventually(Duration::from_secs(15), || {
                let mut got = all(port, h);
                counted(&mut got);
                got.retain(|f, _| !uncertain[h].contains(f));
                got == *want
            });
            if !converged {
                let got = all(port, h);
                if h == 0 {
                    eprintln!(
                        "seed {seed}: hits = {:?} after {acked} acknowledged, {unknown} unknown",
                        got.get("hits")
                    );
                }
                let missing: Vec<_> = want
                    .keys()
                    .filter(|k| !got.contains_key(*k))
                    .take(5)
                    .collect();
                let extra: Vec<_> = got
                    .keys()
                    .filter(|k| !want.contains_key(*k))
                    .take(5)
                    .collect();
                panic!(
                    "seed {seed}: hash-{h} on port {port}: {} fields, want {}; missing {missing:?}, not wanted {extra:?}",
                    got.len(),
                    want.len()
                );
            }
        }
    }
}
