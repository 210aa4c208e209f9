//! RESP2/RESP3 over raw sockets against real daemons: the worker answers
//! it directly, the orchestrator routes it; pipelines keep their order;
//! AUTH and HELLO; framing errors close only the offending connection;
//! oversized and slow requests are bounded.

mod common;

use bytes::BytesMut;
use common::resp::*;
use common::*;
use rcache::protocol::resp::{encode_request, Value};
use std::time::{Duration, Instant};

#[test]
fn a_worker_answers_resp_directly() {
    let w = solo(&[]);
    let mut r = Resp::connect(w.port);
    assert_eq!(r.call(&["PING"]), Value::Status("PONG".into()));
    assert_eq!(r.call(&["SET", "k", "v\r\n\0"]), ok());
    assert_eq!(r.call(&["GET", "k"]), bulk("v\r\n\0"));
    assert_eq!(r.call(&["SET", "k", "w", "NX"]), Value::Bulk(None));
    assert_eq!(r.call(&["SETNX", "k2", "w"]), Value::Integer(1));
    assert_eq!(r.call(&["EXPIRE", "k", "100"]), Value::Integer(1));
    assert_eq!(r.call(&["TTL", "k"]), Value::Integer(100));
    assert_eq!(r.call(&["DBSIZE"]), Value::Integer(2));
    assert_eq!(
        r.call(&["MGET", "k", "nope", "k2"]),
        Value::Array(Some(vec![bulk("v\r\n\0"), Value::Bulk(None), bulk("w")]))
    );
    assert_eq!(r.call(&["DEL", "k", "k2", "nope"]), Value::Integer(2));
    // An absolute expiry counts from the worker's wall clock.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let at = (now_ms + 100_000).to_string();
    assert_eq!(r.call(&["SET", "at", "v", "PXAT", &at]), ok());
    match r.call(&["PTTL", "at"]) {
        Value::Integer(ms) => assert!((90_000..=100_000).contains(&ms), "PTTL {ms}"),
        other => panic!("PTTL answered {other:?}"),
    }
    let at = (now_ms / 1000 + 100).to_string();
    assert_eq!(r.call(&["SET", "at", "v", "EXAT", &at]), ok());
    match r.call(&["TTL", "at"]) {
        Value::Integer(s) => assert!((90..=100).contains(&s), "TTL {s}"),
        other => panic!("TTL answered {other:?}"),
    }
    // A moment already past leaves the shortest TTL: a millisecond.
    assert_eq!(r.call(&["SET", "at", "v", "PXAT", "1"]), ok());
    match r.call(&["PTTL", "at"]) {
        Value::Integer(ms) => assert!(ms == -2 || (0..=1).contains(&ms), "PTTL {ms}"),
        other => panic!("PTTL answered {other:?}"),
    }
    // The text protocol still works on the same port.
    let mut t = Client::connect(w.port);
    if secure::on() {
        assert_eq!(t.req(&format!("auth||{}", secure::TOKEN)), "0||");
    }
    assert_eq!(t.req("ping"), "0||pong");
}

#[test]
fn hello_3_switches_to_resp3_replies() {
    let w = solo(&[]);
    let mut r = Resp::connect(w.port);
    r.send(&["HELLO", "3"]);
    match r.read() {
        Value::Array(Some(items)) => {
            assert_eq!(items.len(), 14, "a map of 7 entries");
            assert_eq!(items[4], bulk("proto"));
            assert_eq!(items[5], Value::Integer(3));
        }
        other => panic!("HELLO 3 answered {other:?}"),
    }
    // Nil is `_` now: read the raw bytes.
    r.send(&["GET", "missing"]);
    let mut raw = [0u8; 3];
    r.io.read_exact(&mut raw).expect("read");
    assert_eq!(&raw, b"_\r\n");
    // Nested maps are maps too: LCS … IDX, COMMAND DOCS.
    assert_eq!(r.call(&["SET", "a", "ohmytext"]), ok());
    assert_eq!(r.call(&["SET", "b", "mynewtext"]), ok());
    for (args, head) in [
        (
            &["LCS", "a", "b", "IDX", "MINMATCHLEN", "4"][..],
            &b"%2\r\n$7\r\nmatches\r\n"[..],
        ),
        (
            &["COMMAND", "DOCS", "get"][..],
            &b"%1\r\n$3\r\nget\r\n%3\r\n"[..],
        ),
    ] {
        r.send(args);
        let mut raw = vec![0u8; head.len()];
        r.io.read_exact(&mut raw).expect("read");
        assert_eq!(
            String::from_utf8_lossy(&raw),
            String::from_utf8_lossy(head),
            "{args:?}"
        );
        // The whole reply reads back (the client's decoder reads a map as
        // a flat array), leaving nothing behind for the next one.
        r.buf.extend_from_slice(&raw);
        assert!(matches!(r.read(), Value::Array(Some(_))), "{args:?}");
    }
    assert_eq!(
        r.call(&["HELLO", "4"]),
        err("NOPROTO unsupported protocol version")
    );
}

#[test]
fn pipelines_through_the_orchestrator_keep_their_order() {
    let (a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let o = orchestrator(&[a.port, b.port, c.port, d.port], &[]);
    let mut r = Resp::connect(o.port);
    // 1,000 commands in one write: sets and reads of 10 keys interleaved.
    let mut wire = BytesMut::new();
    for i in 0..500 {
        let key = format!("order:{}", i % 10);
        let value = i.to_string();
        encode_request(&[b"SET", key.as_bytes(), value.as_bytes()], &mut wire);
        encode_request(&[b"GET", key.as_bytes()], &mut wire);
    }
    r.send_raw(&wire);
    for i in 0..500 {
        assert_eq!(r.read(), ok(), "reply to SET {i}");
        assert_eq!(r.read(), bulk(&i.to_string()), "GET after SET {i}");
    }
    // Multi-key commands across both pairs, in order.
    let keys: Vec<String> = (0..50).map(|i| format!("spread:{i}")).collect();
    let mut mset = vec!["MSET"];
    let values: Vec<String> = (0..50).map(|i| format!("v{i}")).collect();
    for (k, v) in keys.iter().zip(&values) {
        mset.push(k);
        mset.push(v);
    }
    assert_eq!(r.call(&mset), ok());
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    assert_eq!(
        r.call(&mget),
        Value::Array(Some(values.iter().map(|v| bulk(v)).collect()))
    );
    for w in [&a, &c] {
        let mut direct = Resp::connect(w.port);
        match direct.call(&["DBSIZE"]) {
            Value::Integer(n) => assert!(n > 5, "worker {} holds {n}", w.port),
            other => panic!("{other:?}"),
        }
    }
    let mut exists = vec!["EXISTS"];
    exists.extend(keys.iter().map(String::as_str));
    assert_eq!(r.call(&exists), Value::Integer(50));

    // DBSIZE in a pipeline counts the writes before it.
    let before = match r.call(&["DBSIZE"]) {
        Value::Integer(n) => n,
        other => panic!("{other:?}"),
    };
    let mut wire = BytesMut::new();
    for k in ["fresh:1", "fresh:2", "fresh:3"] {
        encode_request(&[b"SET", k.as_bytes(), b"v"], &mut wire);
    }
    encode_request(&[b"DBSIZE"], &mut wire);
    r.send_raw(&wire);
    for _ in 0..3 {
        assert_eq!(r.read(), ok());
    }
    assert_eq!(r.read(), Value::Integer(before + 3));

    // Multi-key commands of the largest size, far more keys than one
    // worker link queues: split, bounded, answered whole.
    let many: Vec<String> = (0..10_000).map(|i| format!("many:{i}")).collect();
    let mut mset = vec!["MSET"];
    for k in &many {
        mset.push(k);
        mset.push("x");
    }
    assert_eq!(r.call(&mset), ok());
    let mut mget = vec!["MGET"];
    mget.extend(many.iter().map(String::as_str));
    match r.call(&mget) {
        Value::Array(Some(values)) => {
            assert_eq!(values.len(), 10_000);
            assert!(values.iter().all(|v| *v == bulk("x")));
        }
        other => panic!("{other:?}"),
    }
    let mut del = vec!["DEL"];
    del.extend(many.iter().map(String::as_str));
    assert_eq!(r.call(&del), Value::Integer(10_000));
    del.push("one-too-many");
    assert_eq!(
        r.call(&del),
        err("ERR too many keys: at most 10000 per command")
    );
    // Both workers of every pair are still up: nothing was marked down.
    let cluster = Client::connect(o.port).req("cluster");
    assert_eq!(cluster.matches("health=up").count(), 4, "{cluster}");
}

/// The remaining TTL a worker reports directly, in seconds.
fn ttl_on(port: u16, key: &str) -> Value {
    Resp::connect(port).call(&["TTL", key])
}

/// A pair whose partners compare stores every `anti_entropy`, behind an
/// orchestrator that keeps no hints and gives up on a worker after 200ms:
/// a worker that misses a write catches up only by anti-entropy.
fn pair_without_hints(anti_entropy: &str) -> (Daemon, Daemon, Daemon) {
    let (a, b) = pair(&["--anti-entropy-interval", anti_entropy]);
    let o = orchestrator(
        &[a.port, b.port],
        &["--max-hint-bytes", "0", "--worker-timeout", "200ms"],
    );
    (a, b, o)
}

#[test]
fn an_expire_reaches_both_workers_and_one_that_missed_it() {
    // Anti-entropy often: a worker that misses an EXPIRE gets it from its
    // partner with the entry.
    let (a, b, o) = pair_without_hints("200ms");
    let mut r = Resp::connect(o.port);
    assert_eq!(r.call(&["SET", "both", "v"]), ok());
    assert_eq!(r.call(&["SET", "missed", "v"]), ok());
    assert_eq!(r.call(&["EXPIRE", "both", "100"]), Value::Integer(1));
    for w in [&a, &b] {
        assert_eq!(
            ttl_on(w.port, "both"),
            Value::Integer(100),
            "worker {}",
            w.port
        );
    }
    b.signal(libc::SIGSTOP);
    assert_eq!(r.call(&["EXPIRE", "missed", "100"]), Value::Integer(1));
    b.signal(libc::SIGCONT);
    assert!(
        eventually(Duration::from_secs(10), || {
            matches!(ttl_on(b.port, "missed"), Value::Integer(t) if (95..=100).contains(&t))
        }),
        "the worker that missed the EXPIRE never got the TTL: {:?}",
        ttl_on(b.port, "missed")
    );
    // A SET after the EXPIRE clears the TTL on both, as in Redis (b may
    // still be behind from the freeze: anti-entropy brings it the SET).
    assert_eq!(r.call(&["SET", "both", "w"]), ok());
    assert_eq!(ttl_on(a.port, "both"), Value::Integer(-1));
    assert!(
        eventually(Duration::from_secs(10), || ttl_on(b.port, "both")
            == Value::Integer(-1)),
        "the later SET did not clear the TTL on b: {:?}",
        ttl_on(b.port, "both")
    );
}

#[test]
fn a_worker_behind_does_not_decide_a_conditional_set() {
    // Anti-entropy slow: a worker that missed a write stays behind for the
    // whole test.
    let (_a, b, o) = pair_without_hints("60s");
    let mut r = Resp::connect(o.port);
    // b misses the first holder's lock: frozen while it is taken.
    b.signal(libc::SIGSTOP);
    assert_eq!(r.call(&["SET", "lock", "first", "NX"]), ok());
    b.signal(libc::SIGCONT);
    // b is reachable again but lacks the lock: only a may decide.
    for _ in 0..20 {
        assert_eq!(
            r.call(&["SET", "lock", "second", "NX"]),
            Value::Bulk(None),
            "a second holder got the lock"
        );
    }
    assert_eq!(r.call(&["GET", "lock"]), bulk("first"));
}

/// Partners that hold different keys (as after different evictions; here
/// keys written to one worker directly, and no anti-entropy to even them
/// out): `SET NX` is decided by the worker reads go to, so it succeeds
/// exactly when a read finds no value, and its outcome reaches both.
#[test]
fn a_conditional_set_agrees_with_reads_when_partners_differ() {
    let (a, b) = pair(&["--anti-entropy-interval", "1h"]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let mut direct = Resp::connect(a.port);
    for i in 0..40 {
        assert_eq!(direct.call(&["SET", &format!("cond{i}"), "old"]), ok());
    }
    // Versions are hybrid logical clocks in milliseconds: the worker's own
    // writes and the orchestrator's are causally unrelated, so only a later
    // millisecond (same host, same clock) makes the orchestrator's newer.
    std::thread::sleep(Duration::from_millis(5));
    let mut r = Resp::connect(o.port);
    let (mut taken, mut refused) = (0, 0);
    for i in 0..40 {
        let key = format!("cond{i}");
        let before = r.call(&["GET", &key]);
        let nx = r.call(&["SET", &key, "new", "NX"]);
        if before == Value::Bulk(None) {
            assert_eq!(nx, ok(), "{key}: a read found nothing, NX did not hold");
            assert_eq!(r.call(&["GET", &key]), bulk("new"));
            taken += 1;
            // Both workers hold the outcome: the partner got it as the
            // unconditional set it became.
            for w in [a.port, b.port] {
                assert_eq!(
                    Resp::connect(w).call(&["GET", &key]),
                    bulk("new"),
                    "{key} on {w}"
                );
            }
        } else {
            assert_eq!(before, bulk("old"));
            assert_eq!(
                nx,
                Value::Bulk(None),
                "{key}: NX held on a key a read found"
            );
            assert_eq!(r.call(&["GET", &key]), bulk("old"));
            refused += 1;
        }
    }
    println!("{taken} keys taken where reads found none, {refused} refused where they found one");
    assert!(taken > 0 && refused > 0, "keys placed on one side only");
}

#[test]
fn auth_over_resp() {
    if secure::skip("this test sets its own token") {
        return;
    }
    let w = solo(&["--auth-token", "sesame"]);
    let mut r = Resp::connect(w.port);
    assert_eq!(
        r.call(&["GET", "k"]),
        err("NOAUTH Authentication required.")
    );
    assert_eq!(
        r.call(&["AUTH", "wrong"]),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(
        r.call(&["SET", "k", "v"]),
        err("NOAUTH Authentication required.")
    );
    assert_eq!(r.call(&["AUTH", "default", "sesame"]), ok());
    assert_eq!(r.call(&["SET", "k", "v"]), ok());
    assert_eq!(r.call(&["GET", "k"]), bulk("v"));
    // As in Redis, a failed AUTH leaves the earlier login in force.
    assert_eq!(
        r.call(&["AUTH", "wrong"]),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
    assert_eq!(r.call(&["GET", "k"]), bulk("v"));
    // HELLO with AUTH opens a new connection in one step.
    let mut h = Resp::connect(w.port);
    match h.call(&["HELLO", "2", "AUTH", "default", "sesame"]) {
        Value::Array(Some(items)) => assert_eq!(items.len(), 14),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.call(&["GET", "k"]), bulk("v"));
}

#[test]
fn framing_errors_close_only_the_offender() {
    let w = solo(&["--idle-timeout", "2s"]);
    let mut good = Resp::connect(w.port);
    assert_eq!(good.call(&["SET", "kept", "yes"]), ok());
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n+PING\r\n",
            "ERR Protocol error: expected '$', got '+'",
        ),
        (
            b"*1\r\n$99999999999\r\n",
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$1\r\nkXX",
            "ERR Protocol error: bulk string not followed by CRLF",
        ),
        (b"*abc\r\n", "ERR Protocol error: invalid multibulk length"),
    ];
    for (wire, line) in cases {
        let mut bad = Resp::connect(w.port);
        bad.send_raw(wire);
        assert_eq!(bad.read(), err(line), "{wire:?}");
        // Well before the 2 s idle timeout could close it.
        assert!(
            bad.closed_within(Duration::from_millis(1500)),
            "still open after {wire:?}"
        );
    }
    // A value one byte over max_value_bytes (8 MiB by default) is refused
    // as soon as its header arrives: the bytes are never buffered.
    let mut big = Resp::connect(w.port);
    big.send_raw(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", (8 << 20) + 1).as_bytes());
    assert_eq!(big.read(), err("ERR Protocol error: invalid bulk length"));
    // A request that announces a large value and stalls is reaped by the
    // idle timeout.
    let mut slow = Resp::connect(w.port);
    slow.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\nonly a few bytes");
    let started = Instant::now();
    assert!(
        slow.closed_within(Duration::from_secs(10)),
        "a stalled request was kept open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    // The earlier client idled past the timeout meanwhile: a new one.
    let mut after = Resp::connect(w.port);
    assert_eq!(after.call(&["GET", "kept"]), bulk("yes"));
    assert_eq!(
        after.call(&["GET", "k"]),
        Value::Bulk(None),
        "nothing half-written"
    );
}

/// `MULTI`/`EXEC` queue commands and run them in order, as redis-py's
/// and Django's pipelines send them; errors while queuing discard it.
#[test]
fn multi_exec_queues_and_runs_in_order() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    for port in [o.port, a.port] {
        let mut r = Resp::connect(port);
        r.call(&["DEL", "tx:a", "tx:n"]);
        assert_eq!(r.call(&["MULTI"]), ok());
        assert_eq!(
            r.call(&["SET", "tx:a", "1"]),
            Value::Status("QUEUED".into())
        );
        assert_eq!(r.call(&["INCR", "tx:n"]), Value::Status("QUEUED".into()));
        assert_eq!(r.call(&["GET", "tx:a"]), Value::Status("QUEUED".into()));
        assert_eq!(r.call(&["PING"]), Value::Status("QUEUED".into()));
        assert_eq!(r.call(&["MULTI"]), err("ERR MULTI calls can not be nested"));
        // Nothing ran yet.
        let mut other = Resp::connect(port);
        assert_eq!(other.call(&["GET", "tx:a"]), Value::Bulk(None));
        assert_eq!(
            r.call(&["EXEC"]),
            Value::Array(Some(vec![
                ok(),
                Value::Integer(1),
                bulk("1"),
                Value::Status("PONG".into()),
            ]))
        );
        assert_eq!(other.call(&["GET", "tx:a"]), bulk("1"));
        // An error while queuing discards the transaction.
        assert_eq!(r.call(&["MULTI"]), ok());
        assert_eq!(r.call(&["INCR", "tx:n"]), Value::Status("QUEUED".into()));
        assert!(matches!(r.call(&["GET"]), Value::Error(_)));
        assert_eq!(
            r.call(&["EXEC"]),
            err("EXECABORT Transaction discarded because of previous errors.")
        );
        assert_eq!(r.call(&["GET", "tx:n"]), bulk("1"));
        // Other errors are replies at EXEC, as in Redis; CLIENT and TIME
        // run in their turn.
        assert_eq!(r.call(&["MULTI"]), ok());
        assert_eq!(
            r.call(&["SET", "tx:e", "v", "EX", "soon"]),
            Value::Status("QUEUED".into())
        );
        assert_eq!(
            r.call(&["CLIENT", "SETNAME", "in-tx"]),
            Value::Status("QUEUED".into())
        );
        assert_eq!(
            r.call(&["CLIENT", "GETNAME"]),
            Value::Status("QUEUED".into())
        );
        assert_eq!(
            r.call(&["EXEC"]),
            Value::Array(Some(vec![
                err("ERR value is not an integer or out of range"),
                ok(),
                bulk("in-tx"),
            ]))
        );
        // DISCARD drops what was queued, CLIENT calls too.
        assert_eq!(r.call(&["MULTI"]), ok());
        assert_eq!(r.call(&["INCR", "tx:n"]), Value::Status("QUEUED".into()));
        assert_eq!(
            r.call(&["CLIENT", "SETNAME", "dropped"]),
            Value::Status("QUEUED".into())
        );
        assert_eq!(r.call(&["DISCARD"]), ok());
        assert_eq!(r.call(&["GET", "tx:n"]), bulk("1"));
        assert_eq!(r.call(&["CLIENT", "GETNAME"]), bulk("in-tx"));
        // Answers held for EXEC count their size: COMMAND's whole table
        // queued over and over is refused long before 10,000 of them.
        assert_eq!(r.call(&["MULTI"]), ok());
        let mut queued = 0;
        while let Value::Status(_) = r.call(&["COMMAND"]) {
            queued += 1;
            assert!(queued < 10_000, "COMMAND queued without bound");
        }
        assert!(matches!(r.call(&["EXEC"]), Value::Error(_)));
        assert_eq!(r.call(&["EXEC"]), err("ERR EXEC without MULTI"));
        assert!(matches!(r.call(&["WATCH", "tx:n"]), Value::Error(_)));
        // A transaction past its bound is refused whole.
        assert_eq!(r.call(&["MULTI"]), ok());
        let big = "x".repeat(600 * 1024);
        let mut refused = false;
        // One maximal request's bytes (8 MiB values by default): 16 × 600 KiB
        // is past it.
        for i in 0..16 {
            match r.call(&["SET", &format!("tx:big{i}"), &big]) {
                Value::Status(s) if &s[..] == b"QUEUED" => {}
                Value::Error(_) => refused = true,
                other => panic!("{other:?}"),
            }
        }
        assert!(refused, "16 × 600 KiB queued past the bound");
        assert!(matches!(r.call(&["EXEC"]), Value::Error(_)));
        assert_eq!(r.call(&["EXISTS", "tx:big0"]), Value::Integer(0));
    }
}
