//! Hostile clients against real daemons: connection floods, a 100 MB line
//! without a newline, a client that never reads, garbage, truncated link
//! frames, invalid UTF-8, a write flood against the memory limit. For each:
//! the expected error, other clients are still served, and the data stored
//! before is intact. (Wrong tokens, plaintext to a TLS port and foreign
//! certificates: tests/security.rs and tests/tls.rs.)

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Stores 100 known keys through `port` and returns a checker for them.
fn known_data(port: u16) -> impl Fn() {
    let mut c = Client::connect(port);
    for i in 0..100 {
        assert_eq!(c.req(&format!("set||known{i}||value{i}")), "0||");
    }
    move || {
        let mut c = Client::connect(port);
        for i in 0..100 {
            assert_eq!(
                c.req(&format!("get||known{i}")),
                format!("0||value{i}"),
                "known{i} damaged"
            );
        }
    }
}

fn rss(metrics: &str) -> f64 {
    metric(
        &http_get(metrics, "/metrics").1,
        "process_resident_memory_bytes",
    )
    .expect("rss")
}

#[test]
fn a_connection_flood_is_refused_with_an_error_and_counted() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &["--max-connections", "50"]);
    let intact = known_data(o.port);
    // 48 more held open (the checker's connection is closed by now).
    let mut held: Vec<Client> = (0..49).map(|_| Client::connect(o.port)).collect();
    assert!(eventually(Duration::from_secs(5), || {
        metric(
            &http_get(&o.metrics_addr(), "/metrics").1,
            "rcache_connections_open",
        ) == Some(49.0)
    }));
    let mut refused = 0;
    for _ in 0..100 {
        let mut c = Client::connect(o.port);
        let reply = c.req("ping");
        if reply == "8||too many connections" {
            refused += 1;
            assert!(c.closed_within(Duration::from_secs(5)));
        } else {
            assert_eq!(reply, "0||pong");
            held.push(c);
        }
    }
    assert_eq!(
        refused, 99,
        "one slot was free, every other connection refused"
    );
    for c in held.iter_mut() {
        assert_eq!(
            c.req("ping"),
            "0||pong",
            "a held connection stopped being served"
        );
    }
    let om = http_get(&o.metrics_addr(), "/metrics").1;
    assert_eq!(metric(&om, "rcache_connections_rejected_total"), Some(99.0));
    drop(held);
    assert!(eventually(Duration::from_secs(5), || {
        let mut c = Client::connect(o.port);
        c.req("ping") == "0||pong"
    }));
    intact();
}

#[test]
fn a_100mb_line_without_a_newline_never_sits_in_memory() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let intact = known_data(o.port);
    let before = rss(&o.metrics_addr());
    let mut s = TcpStream::connect(o.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    while sent < 100 << 20 {
        s.write_all(&chunk).expect("the server keeps reading");
        sent += chunk.len();
    }
    // A NUL and then more of the same (Redis's protocol test).
    s.write_all(b"\0").expect("write");
    s.write_all(&chunk).expect("write");
    s.write_all(b"\nping\n").expect("write");
    let mut reader = std::io::BufReader::new(s);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).expect("an error line");
    assert!(line.starts_with("1||"), "{line:?}");
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).expect("pong");
    assert_eq!(
        line, "0||pong\n",
        "the connection is usable after the over-long line"
    );
    let after = rss(&o.metrics_addr());
    println!(
        "orchestrator RSS {:.1} MB before, {:.1} MB after 101 MB without a newline",
        before / 1e6,
        after / 1e6
    );
    assert!(after < before + 32e6, "RSS grew from {before} to {after}");
    intact();
}

#[test]
fn a_client_that_never_reads_cannot_make_the_server_buffer_without_bound() {
    let w = solo(&["--idle-timeout", "2s"]);
    let intact = known_data(w.port);
    let big = "x".repeat(512 * 1024);
    let mut c = Client::connect(w.port);
    assert_eq!(c.req(&format!("set||big||{big}")), "0||");
    let before = rss(&w.metrics_addr());
    // 4000 pipelined reads of 512 KiB (2 GB of answers), never read.
    let mut s = TcpStream::connect(w.addr()).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let requests = "get||big\n".repeat(4000);
    let started = Instant::now();
    let writer = std::thread::spawn(move || {
        let _ = s.write_all(requests.as_bytes());
        s
    });
    // The worker stops answering the stalled client once its socket
    // buffers are full: wait until the gets it has run stop growing (well
    // short of all 4,000, which would mean it buffered every answer).
    let gets = || {
        metric(
            &http_get(&w.metrics_addr(), "/metrics").1,
            r#"rcache_requests_total{command="get",result="ok"}"#,
        )
        .unwrap_or(0.0)
    };
    let mut last = -1.0;
    let mut same = 0;
    let stalled = eventually(Duration::from_secs(10), || {
        let now = gets();
        same = if now == last { same + 1 } else { 0 };
        last = now;
        now > 0.0 && same >= 5
    });
    assert!(
        stalled,
        "the worker's answers never stalled ({last} gets run)"
    );
    assert!(last < 4000.0, "the worker ran every get: {last}");
    // Others are served meanwhile.
    let mut other = Client::connect(w.port);
    assert_eq!(other.req("ping"), "0||pong");
    let during = rss(&w.metrics_addr());
    println!(
        "worker RSS {:.1} MB before, {:.1} MB with a client not reading",
        before / 1e6,
        during / 1e6
    );
    assert!(during < before + 64e6, "RSS grew from {before} to {during}");
    // The stalled connection is given up on: its replies stall past
    // idle_timeout and it is closed (counted as reaped).
    let _s = writer.join().expect("writer");
    let reaped = eventually(Duration::from_secs(15), || {
        let wm = http_get(&w.metrics_addr(), "/metrics").1;
        metric(&wm, "rcache_connections_reaped_total").unwrap_or(0.0) >= 1.0
    });
    assert!(
        reaped,
        "the server kept a non-reading client for {:?}",
        started.elapsed()
    );
    intact();
}

#[test]
fn garbage_truncated_frames_and_invalid_utf8_hurt_nothing() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let intact = known_data(o.port);
    let seed = common::chaos::seed("garbage");
    let mut rng = rcache::zipf::Rng::new(seed);
    for port in [o.port, a.port] {
        for _ in 0..20 {
            let garbage: Vec<u8> = (0..rng.below(4096) + 1)
                .map(|_| rng.next_u64() as u8)
                .collect();
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let _ = s.write_all(&garbage);
            let _ = s.write_all(b"\n");
            let mut sink = [0u8; 4096];
            let _ = s.read(&mut sink);
        }
    }
    // Truncated link frames: a hello, half a frame, then gone.
    for cut in [1usize, 3, 5, 9] {
        let mut s = TcpStream::connect(a.addr()).expect("connect");
        let mut frame = bytes::BytesMut::new();
        rcache::protocol::link::encode_request(
            &rcache::protocol::link::Request::Set {
                version: u64::MAX,
                ttl_ms: 0,
                key: "known1".into(),
                value: "overwritten".into(),
                when: rcache::protocol::SetWhen::Always,
            },
            &mut frame,
        );
        s.write_all(rcache::protocol::link::HELLO).expect("hello");
        s.write_all(&frame[..cut]).expect("part of a frame");
    }
    // Invalid UTF-8 is just bytes.
    let mut c = Client::connect(o.port);
    c.send_raw(b"set||\xff\xfe||\xc3\x28\x80\n");
    assert_eq!(c.read_line(), "0||");
    let mut reply = Vec::new();
    let mut one = [0u8; 1];
    let mut raw = TcpStream::connect(o.addr()).expect("connect");
    raw.write_all(b"get||\xff\xfe\n").expect("write");
    while raw.read(&mut one).expect("read") == 1 && one[0] != b'\n' {
        reply.push(one[0]);
    }
    assert_eq!(reply, b"0||\xc3\x28\x80");
    intact();
    // The truncated frames never applied their write.
    assert_eq!(Client::connect(a.port).req("get||known1"), "0||value1");
}

#[test]
fn a_write_flood_keeps_the_worker_within_max_memory() {
    let limit = 8u64 << 20;
    let w = solo(&["--max-memory", "8MiB"]);
    let mut rng = rcache::zipf::Rng::new(11);
    let mut s = TcpStream::connect(w.addr()).expect("connect");
    let reader = s.try_clone().expect("clone");
    let total = 65_536usize;
    let counter = std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(reader);
        let mut line = String::new();
        let mut ok = 0;
        for _ in 0..total {
            line.clear();
            std::io::BufRead::read_line(&mut r, &mut line).expect("reply");
            ok += (line == "0||\n") as usize;
        }
        ok
    });
    // 64 MiB of incompressible 1 KiB values, pipelined.
    let mut batch = Vec::new();
    for i in 0..total {
        let value: String = (0..1024)
            .map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char)
            .collect();
        batch.extend_from_slice(format!("set||flood{i}||{value}\n").as_bytes());
        if batch.len() > 1 << 20 {
            s.write_all(&batch).expect("write");
            batch.clear();
        }
    }
    s.write_all(&batch).expect("write");
    assert_eq!(
        counter.join().expect("counter"),
        total,
        "every write was accepted"
    );
    let wm = http_get(&w.metrics_addr(), "/metrics").1;
    let used = metric(&wm, "rcache_memory_used_bytes").expect("used");
    let evictions = metric(&wm, "rcache_evictions_total").expect("evictions");
    let resident = metric(&wm, "process_resident_memory_bytes").expect("rss");
    println!(
        "64 MiB written: used {used} of {limit}, {evictions} evictions, RSS {:.1} MB",
        resident / 1e6
    );
    // The documented margin: one entry per thread in flight (2 KiB here).
    assert!(used <= (limit + 64 * 1024) as f64, "{used} over {limit}");
    assert!(evictions > 50_000.0, "{evictions}");
    assert!(
        resident < 48e6,
        "RSS {resident} after a 64 MiB flood into 8 MiB"
    );
}

/// Hints for a frozen worker cost what `max_hint_bytes` says: 200,000
/// 10-byte SETs, each sent alone and each a hint for the frozen worker,
/// grow the orchestrator's RSS (measured, not the gauge) by at most the
/// limit plus a fixed margin, once the queue is full and writes go on
/// being dropped as hints.
#[test]
fn hints_for_a_frozen_worker_stay_within_max_hint_bytes() {
    const LIMIT: f64 = 8.0 * 1024.0 * 1024.0;
    const MARGIN: f64 = 24e6;
    let (a, b) = pair(&[]);
    let o = orchestrator(
        &[a.port, b.port],
        &["--worker-timeout", "200ms", "--max-hint-bytes", "8MiB"],
    );
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("set||warm||up"), "0||");
    b.signal(libc::SIGSTOP);
    // The first write waits out worker_timeout and marks the worker down;
    // later ones are acknowledged by its partner alone and hinted.
    assert_eq!(c.req("set||first||miss"), "0||");
    let before = rss(&o.metrics_addr());
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let port = o.port;
            std::thread::spawn(move || {
                let mut c = Client::connect(port);
                for i in 0..25_000 {
                    assert_eq!(c.req(&format!("set||t{t}k{i}||0123456789")), "0||");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let exposition = http_get(&o.metrics_addr(), "/metrics").1;
    let largest = |name: &str| {
        exposition
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, f64::max)
    };
    let (queued, hints) = (
        largest("rcache_hints_queued_bytes"),
        largest("rcache_hints_queued"),
    );
    let after = rss(&o.metrics_addr());
    println!(
        "orchestrator RSS {:.1} MB before, {:.1} MB after 200k hinted writes; \
         {hints} hints charged {:.1} MB of {:.1} MB; {:.0} B of RSS per hint",
        before / 1e6,
        after / 1e6,
        queued / 1e6,
        LIMIT / 1e6,
        (after - before) / hints.max(1.0)
    );
    assert!(
        queued > LIMIT * 0.9,
        "the hint queue did not fill: {queued}"
    );
    assert!(
        after < before + LIMIT + MARGIN,
        "RSS grew by {:.1} MB for hints limited to {:.1} MB",
        (after - before) / 1e6,
        LIMIT / 1e6
    );
    b.signal(libc::SIGCONT);
}

/// Opens `count` connections that each declare `declared` bytes and send
/// `sent` of them without authenticating, all held open; returns them.
fn strangers(port: u16, count: usize, header: &[u8], sent: usize) -> Vec<TcpStream> {
    let body = vec![b'x'; sent];
    (0..count)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            s.set_write_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            // The daemon may hang up part way (that is the point): a
            // failed write is what a stranger gets.
            let _ = s.write_all(header).and_then(|_| s.write_all(&body));
            s
        })
        .collect()
}

/// What a stranger's connection reads until the daemon closes it.
fn read_to_close(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// An authenticated client's round trip, RESP.
fn authenticated_set_get(port: u16, token: &str, key: &str) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n",
        token.len(),
        key.len(),
        key.len()
    );
    c.write_all(request.as_bytes()).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"$1\r\nv\r\n") {
        let n = c
            .read(&mut buf)
            .expect("an answer while strangers hold connections");
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+OK\r\n+OK\r\n$1\r\nv\r\n");
}

#[test]
fn strangers_declaring_8mib_bulks_cannot_grow_a_worker() {
    const TOKEN: &str = "a-long-cluster-secret";
    // Every stranger comes from 127.0.0.1, as the test does.
    let w = solo(&[
        "--auth-token",
        TOKEN,
        "--max-connections-per-source",
        "2000",
    ]);
    let before = rss(&w.metrics_addr());
    // 1,000 connections, each declaring an 8 MiB value and sending 4 MiB
    // of it before any AUTH: 4 GB if the worker buffered what it is sent.
    let header = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n";
    let mut held = strangers(w.port, 1000, header, 4 << 20);
    authenticated_set_get(w.port, TOKEN, "during");
    let during = rss(&w.metrics_addr());
    println!(
        "worker RSS {:.1} MB before, {:.1} MB with 1,000 strangers each declaring 8 MiB",
        before / 1e6,
        during / 1e6
    );
    assert!(during < before + 64e6, "RSS grew from {before} to {during}");
    // Each is told why, as Redis tells it, and hung up on.
    for s in held.iter_mut().take(3) {
        let answer = read_to_close(s);
        assert!(
            answer.starts_with("-ERR Protocol error: unauthenticated bulk length"),
            "{answer:?}"
        );
    }
    authenticated_set_get(w.port, TOKEN, "after");
}

#[test]
fn an_unauthenticated_text_line_or_link_frame_is_bounded_too() {
    const TOKEN: &str = "a-long-cluster-secret";
    let w = solo(&["--auth-token", TOKEN]);
    let before = rss(&w.metrics_addr());
    // A text SET of 4 MiB before auth, and a link hello followed by a
    // frame header announcing 8 MiB and 4 MiB of it: 200 of each.
    let mut text = strangers(w.port, 200, b"set||k||", 4 << 20);
    // The link hello of this version, then a frame header.
    let mut frame = rcache::protocol::link::HELLO.to_vec();
    frame.extend_from_slice(&(8u32 << 20).to_be_bytes());
    let mut links = strangers(w.port, 200, &frame, 4 << 20);
    authenticated_set_get(w.port, TOKEN, "during");
    let during = rss(&w.metrics_addr());
    println!(
        "worker RSS {:.1} MB before, {:.1} MB with 400 strangers each sending 4 MiB",
        before / 1e6,
        during / 1e6
    );
    assert!(during < before + 64e6, "RSS grew from {before} to {during}");
    let answer = read_to_close(&mut text[0]);
    assert!(answer.starts_with("9||"), "{answer:?}");
    let _ = read_to_close(&mut links[0]);
    authenticated_set_get(w.port, TOKEN, "after");
}

/// Whether the daemon closed `s` (EOF or a reset; bytes before the close
/// are read past), rather than leaving it open (nothing within 200 ms).
fn closed_by_daemon(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut b = [0u8; 256];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                )
            }
        }
    }
}

#[test]
fn slowloris_connections_are_closed_after_request_timeout() {
    // idle_timeout stays at its 300 s default: only request_timeout can
    // close a connection that trickles bytes and completes nothing.
    let w = solo(&["--request-timeout", "1s"]);
    let intact = known_data(w.port);
    let started = Instant::now();
    let mut strangers: Vec<(TcpStream, Instant, bool)> = Vec::new();
    let mut max_open = 0.0f64;
    // 50 new connections a second for 4 s: half trickle a request that
    // never ends (one byte every 100 ms), half send nothing at all.
    while started.elapsed() < Duration::from_secs(4) {
        let tick = Instant::now();
        let s = TcpStream::connect(("127.0.0.1", w.port)).expect("connect");
        let trickles = strangers.len() % 2 == 0;
        strangers.push((s, tick, trickles));
        for (s, _, trickles) in strangers.iter_mut() {
            if *trickles {
                let _ = s.write_all(b"s");
            }
        }
        if strangers.len() % 25 == 0 {
            let open = metric(
                &http_get(&w.metrics_addr(), "/metrics").1,
                "rcache_connections_open",
            )
            .unwrap_or(0.0);
            max_open = max_open.max(open);
            let mut c = Client::connect(w.port);
            assert_eq!(c.req("ping"), "0||pong", "others are served meanwhile");
        }
        std::thread::sleep(Duration::from_millis(20).saturating_sub(tick.elapsed()));
    }
    println!(
        "{} slow connections in {:?}; at most {max_open} open at once",
        strangers.len(),
        started.elapsed()
    );
    // At 50/s and closed after 1 s, about 50 are open at any moment (and
    // 200 would be, had none been closed).
    assert!(max_open <= 120.0, "{max_open} open at once");
    let now = Instant::now();
    for (s, opened, trickles) in strangers.iter_mut() {
        if now - *opened > Duration::from_secs(2) {
            assert!(
                closed_by_daemon(s),
                "a connection opened {:?} ago (trickling: {trickles}) is still open",
                now - *opened
            );
        }
    }
    intact();
}

#[test]
fn one_source_address_cannot_hold_more_than_its_share() {
    let w = solo(&["--max-connections-per-source", "20"]);
    let intact = known_data(w.port);
    let open = || {
        metric(
            &http_get(&w.metrics_addr(), "/metrics").1,
            "rcache_connections_open",
        )
    };
    // The writer's connection is gone before the 20 are opened.
    assert!(eventually(Duration::from_secs(5), || open() == Some(0.0)));
    let mut held: Vec<Client> = (0..20).map(|_| Client::connect(w.port)).collect();
    for c in held.iter_mut() {
        assert_eq!(c.req("ping"), "0||pong");
    }
    // The 21st from the same address is refused with the error line and
    // closed; the 20 keep being served.
    let mut extra = Client::connect(w.port);
    assert_eq!(extra.req("ping"), "8||too many connections");
    assert!(extra.closed_within(Duration::from_secs(5)));
    for c in held.iter_mut() {
        assert_eq!(c.req("ping"), "0||pong", "a held connection stopped");
    }
    let wm = http_get(&w.metrics_addr(), "/metrics").1;
    assert_eq!(metric(&wm, "rcache_connections_rejected_total"), Some(1.0));
    // A connection that closes gives its place back.
    drop(held.pop());
    assert!(eventually(Duration::from_secs(5), || {
        let mut c = Client::connect(w.port);
        c.req("ping") == "0||pong"
    }));
    drop(held);
    assert!(eventually(Duration::from_secs(5), || open() == Some(0.0)));
    intact();
}

/// Opens `count` connections in parallel that each authenticate, declare
/// an 8 MiB value and send `sent` bytes of it, all held open; a write
/// that the daemon stops reading gives up after two seconds.
fn half_sent_values(port: u16, token: &str, count: usize, sent: usize) -> Vec<TcpStream> {
    let body = std::sync::Arc::new(vec![b'x'; sent]);
    let head = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n",
        token.len()
    );
    let threads: Vec<_> = (0..count)
        .map(|_| {
            let (body, head) = (body.clone(), head.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                s.set_write_timeout(Some(Duration::from_secs(2)))
                    .expect("timeout");
                let _ = s
                    .write_all(head.as_bytes())
                    .and_then(|_| s.write_all(&body));
                s
            })
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().expect("writer"))
        .collect()
}

/// A client's SET of the largest value the limits allow, RESP.
fn set_8mib(port: u16, token: &str) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let head = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$8388608\r\n",
        token.len()
    );
    c.write_all(head.as_bytes()).expect("write");
    c.write_all(&vec![b'v'; 8 << 20]).expect("write");
    c.write_all(b"\r\n").expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Authenticated clients are bounded too: what their connections buffer
/// beyond 64 KiB each comes from one budget per daemon
/// (`max_request_buffers`), and past it their reads wait instead of the
/// daemon growing. 150 clients each declaring an 8 MiB value and sending
/// 6 MiB of it would make a daemon hold about 1.2 GB.
#[test]
fn half_sent_values_cannot_grow_a_daemon_past_max_request_buffers() {
    const TOKEN: &str = "a-long-client-secret";
    let limit = ["--max-request-buffers", "64MiB", "--auth-token", TOKEN];
    let (a, b) = pair(&limit);
    let o = orchestrator(&[a.port, b.port], &limit);
    for (name, d) in [("worker", &a), ("orchestrator", &o)] {
        let before = rss(&d.metrics_addr());
        let held = half_sent_values(d.port, TOKEN, 150, 6 << 20);
        authenticated_set_get(d.port, TOKEN, "during");
        let metrics = http_get(&d.metrics_addr(), "/metrics").1;
        let during = metric(&metrics, "process_resident_memory_bytes").expect("rss");
        let buffered = metric(&metrics, "rcache_request_buffer_bytes").expect("gauge");
        let waits = metric(&metrics, "rcache_request_buffer_waits_total").expect("counter");
        println!(
            "{name} RSS {:.1} MB before, {:.1} MB with 150 clients each sending 6 MiB of an \
             8 MiB value; {:.1} MB of the 64 MiB budget taken, {waits} reads waited",
            before / 1e6,
            during / 1e6,
            buffered / 1e6,
        );
        assert!(buffered <= 64.0 * 1024.0 * 1024.0, "{buffered}");
        assert!(waits >= 1.0, "no read waited: {metrics}");
        assert!(
            during < before + 128e6,
            "RSS grew from {before} to {during}"
        );
        drop(held);
        assert!(
            eventually(Duration::from_secs(10), || {
                let m = http_get(&d.metrics_addr(), "/metrics").1;
                metric(&m, "rcache_request_buffer_bytes") == Some(0.0)
            }),
            "{name}: closed connections did not give the budget back"
        );
        // The largest value the limits allow still fits.
        assert_eq!(set_8mib(d.port, TOKEN), "+OK\r\n+OK\r\n", "{name}");
    }
}

/// The 99th percentile of `samples`.
fn p99(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// One client's GETs, timed, until `stop` is set (at least `least`).
fn timed_gets(port: u16, least: usize, stop: &std::sync::atomic::AtomicBool) -> Vec<Duration> {
    let mut c = Client::connect(port);
    let mut samples = Vec::new();
    while samples.len() < least || !stop.load(std::sync::atomic::Ordering::Acquire) {
        let key = format!("k{:05}", samples.len() % 10_000);
        let started = Instant::now();
        let answer = c.req(&format!("get||{key}"));
        samples.push(started.elapsed());
        assert!(answer.starts_with("0||val"), "{answer}");
        if samples.len() > 200_000 {
            break;
        }
    }
    samples
}

/// A RESP command of `name` on `keys` keys named `<prefix>00000`... .
fn multi_key(name: &str, prefix: char, keys: usize) -> Vec<u8> {
    let mut out = format!("*{}\r\n${}\r\n{name}\r\n", keys + 1, name.len()).into_bytes();
    for i in 0..keys {
        out.extend_from_slice(format!("$6\r\n{prefix}{i:05}\r\n").as_bytes());
    }
    out
}

/// What another client's GETs see while one client pipelines `count`
/// copies of `command`, whose replies end `lines` lines each: their p99,
/// their count, and how long the pipeline took.
fn gets_during(
    port: u16,
    command: Vec<u8>,
    count: usize,
    lines: usize,
) -> (Duration, usize, Duration) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (mut during, attack) = std::thread::scope(|s| {
        let attacker = s.spawn(|| {
            let mut sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(60)))
                .expect("timeout");
            let started = Instant::now();
            let mut writer = sock.try_clone().expect("clone");
            let sending = std::thread::spawn(move || {
                for _ in 0..count {
                    writer.write_all(&command).expect("pipeline");
                }
            });
            // Values hold no line breaks: the replies are complete at
            // this many.
            let (mut got, expected) = (0usize, count * lines);
            let mut buf = vec![0u8; 1 << 16];
            while got < expected {
                let n = sock.read(&mut buf).expect("replies");
                assert!(n > 0, "closed after {got} of {expected} lines");
                got += buf[..n].iter().filter(|&&b| b == b'\n').count();
            }
            sending.join().expect("sender");
            stop.store(true, std::sync::atomic::Ordering::Release);
            started.elapsed()
        });
        let during = timed_gets(port, 200, &stop);
        (during, attacker.join().expect("attacker"))
    });
    let answered = during.len();
    (p99(&mut during), answered, attack)
}

/// One client pipelining multi-key commands (256 MGETs of 10,000 keys, or
/// 25,600 of 100: 2.56 M keys, 36 MB of replies either way; 128 DELs of
/// 10,000 keys) does not starve another client, of the orchestrator or of
/// a worker with one connection thread: its GETs are all answered, at
/// least 1,000 of them while the pipeline runs, with a p99 within 200
/// times (and at least 10 ms) of what it is with the daemon to itself.
#[test]
fn a_client_pipelining_multi_key_commands_does_not_starve_others() {
    if secure::skip("raw plaintext pipelines") {
        return;
    }
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    // A worker with one connection loop: every connection shares it.
    let w = solo(&["--threads", "1"]);
    for (name, port) in [("orchestrator", o.port), ("worker", w.port)] {
        let mut loader = Client::connect_resp(port);
        let mut mset = Vec::new();
        for chunk in (0..10_000).collect::<Vec<_>>().chunks(1000) {
            mset.clear();
            mset.extend_from_slice(
                format!("*{}\r\n$4\r\nMSET\r\n", 1 + 2 * chunk.len()).as_bytes(),
            );
            for i in chunk {
                mset.extend_from_slice(format!("$6\r\nk{i:05}\r\n$8\r\nval{i:05}\r\n").as_bytes());
            }
            loader.send_raw(&mset);
            assert_eq!(loader.read_line().trim_end(), "+OK");
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let alone = p99(&mut timed_gets(port, 3000, &stop));
        // MGET replies: "*<keys>", then "$8" and the value per key.
        let shapes = [
            ("MGET", 'k', 256, 10_000, 1 + 2 * 10_000),
            ("MGET", 'k', 25_600, 100, 1 + 2 * 100),
            ("DEL", 'd', 128, 10_000, 1),
        ];
        for (command, prefix, count, keys, lines) in shapes {
            let pipeline = multi_key(command, prefix, keys);
            let (shared, answered, attack) = gets_during(port, pipeline, count, lines);
            println!(
                "{name}: GET p99 {alone:?} alone, {shared:?} over {answered} GETs while \
                 another client's {count} pipelined {keys}-key {command}s took {attack:?}"
            );
            let bound = (alone * 200).max(Duration::from_millis(10));
            assert!(
                shared <= bound,
                "{name}: p99 {shared:?} past {bound:?} (200 times {alone:?}, at least 10 ms)"
            );
            assert!(
                answered >= 1000,
                "{name}: {answered} GETs answered in {attack:?}"
            );
        }
    }
}
