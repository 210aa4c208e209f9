//! Who may talk to rcache: `auth_token` on client connections (text
//! protocol) and on the links between daemons.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "correct horse battery staple";

fn with_token(token: &str) -> Vec<String> {
    vec!["--auth-token".into(), token.into()]
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A runtime for a test's async link client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn a_token_guards_clients_workers_and_links() {
    let t = with_token(TOKEN);
    let (a, b) = pair(&args(&t));
    let o = orchestrator(&[a.port, b.port], &args(&t));

    for port in [o.port, a.port] {
        let mut c = Client::connect(port);
        assert_eq!(
            c.req("set||k||v"),
            "9||authentication required: send auth||<token> first"
        );
        assert!(c.req("get||k").starts_with("9||"));
        assert!(c.req("ping").starts_with("9||"));
        assert_eq!(c.req("auth||wrong"), "9||invalid token");
        assert!(
            c.req("get||k").starts_with("9||"),
            "a wrong token let it in"
        );
        assert_eq!(c.req(&format!("auth||{TOKEN}")), "0||");
        assert_eq!(c.req("ping"), "0||pong");
    }
    let mut c = Client::connect(o.port);
    assert_eq!(c.req(&format!("auth||{TOKEN}")), "0||");
    for i in 0..100 {
        assert_eq!(c.req(&format!("set||key{i}||value{i}")), "0||");
    }
    assert_eq!(c.req("get||key7"), "0||value7");
    // A wrong token after a right one logs the connection out.
    assert_eq!(c.req("auth||wrong"), "9||invalid token");
    assert!(c.req("get||key7").starts_with("9||"));

    // An orchestrator with another token is refused by the workers: its
    // requests fail, nothing is written.
    let stranger = orchestrator(&[a.port, b.port], &args(&with_token("guess")));
    let mut s = Client::connect(stranger.port);
    assert_eq!(s.req("auth||guess"), "0||");
    let reply = s.req("set||key7||overwritten");
    assert!(reply.starts_with("6||"), "{reply}");
    assert!(s.req("get||key7").starts_with("6||"));
    assert_eq!(c.req(&format!("auth||{TOKEN}")), "0||");
    assert_eq!(c.req("get||key7"), "0||value7");
    let wm = http_get(&a.metrics_addr(), "/metrics").1;
    assert!(
        metric(&wm, "rcache_auth_failures_total").unwrap_or(0.0) >= 1.0,
        "{wm}"
    );
    assert!(a.log_text().contains("did not present the cluster's token"));

    // A raw link without the token: an error frame, then the worker hangs up.
    let mut raw = TcpStream::connect(a.addr()).expect("connect");
    raw.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    use rcache::protocol::link::{encode_request, Request, HELLO};
    let mut frame = bytes::BytesMut::new();
    encode_request(&Request::Status, &mut frame);
    raw.write_all(HELLO).expect("hello");
    raw.write_all(&frame).expect("a STATUS frame");
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.starts_with(HELLO), "{got:?}");
    assert!(got.ends_with(b"authentication required"), "{got:?}");
}

#[test]
fn partners_with_a_token_refill_each_other() {
    let t = with_token(TOKEN);
    let [pa, pb] = free_ports();
    // Alone at first: it starts empty once it found no partner.
    let a = worker(
        pa,
        Some(pb),
        &[args(&t), vec!["--refill-wait", "0s"]].concat(),
    );
    let mut c = Client::connect(a.port);
    assert_eq!(c.req(&format!("auth||{TOKEN}")), "0||");
    for i in 0..300 {
        assert_eq!(c.req(&format!("set||key{i}||value{i}")), "0||");
    }
    let b = worker(pb, Some(pa), &args(&t));
    assert!(
        b.log_text().contains("refilled from the partner") && b.log_text().contains("entries=300"),
        "{}",
        b.log_text()
    );
    // A partner with the wrong token is refused and starts empty.
    let pc = free_port();
    let stranger = worker(pc, Some(pa), &args(&with_token("guess")));
    let log = stranger.log_text();
    assert!(
        log.contains("not refilling") && log.contains("refused the link"),
        "{log}"
    );
}

#[test]
fn the_cli_sends_the_token_and_configs_never_print_it() {
    let t = with_token(TOKEN);
    let (a, b) = pair(&args(&t));
    let o = orchestrator(&[a.port, b.port], &args(&t));
    let rcache = |env: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rcache"));
        cmd.args(["--addr", &o.addr()])
            .args(args)
            .env_remove("RCACHE_AUTH_TOKEN");
        if let Some(token) = env {
            cmd.env("RCACHE_AUTH_TOKEN", token);
        }
        cmd.output().expect("rcache runs")
    };
    let out = rcache(Some(TOKEN), &["set", "greeting", "hello"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = rcache(Some(TOKEN), &["get", "greeting"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
    let out = rcache(None, &["get", "greeting"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("(9) authentication required"));
    let out = rcache(Some("guess"), &["get", "greeting"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth refused: invalid token"));

    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .args(["--auth-token", TOKEN, "--print-config"])
        .output()
        .expect("runs");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("auth_token = \"<redacted>\""), "{printed}");
    assert!(!printed.contains(TOKEN));
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-worker"))
        .args(["--check-config"])
        .env("RCACHE_AUTH_TOKEN", "two\nlines")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth_token = <redacted>: must not contain line breaks"),
        "{err}"
    );
    assert!(!err.contains("two"));
}

/// With `cluster_token` set, the clients' token opens client sessions
/// only: a link that presents it is refused with a clear error and
/// counted, and only the daemons' token opens a link (a REFILL, a write
/// of any version, the anti-entropy lock).
#[test]
fn a_client_token_cannot_open_a_link() {
    use rcache::auth::Secret;
    use rcache::client::{link::LinkConn, ClientError, Dial};
    use rcache::protocol::link::{Request, Response};
    const CLUSTER: &str = "daemons only";
    let t = [
        with_token(TOKEN),
        vec!["--cluster-token".into(), CLUSTER.into()],
    ]
    .concat();
    let (a, b) = pair(&args(&t));
    let o = orchestrator(&[a.port, b.port], &args(&t));
    let mut c = Client::connect(o.port);
    assert_eq!(c.req(&format!("auth||{TOKEN}")), "0||");
    for i in 0..50 {
        assert_eq!(c.req(&format!("set||key{i}||value{i}")), "0||");
    }
    assert_eq!(c.req("get||key7"), "0||value7");
    // A worker's client sessions take the clients' token, not the daemons'.
    let mut w = Client::connect(a.port);
    assert_eq!(w.req(&format!("auth||{CLUSTER}")), "9||invalid token");
    assert_eq!(w.req(&format!("auth||{TOKEN}")), "0||");
    assert_eq!(w.req("get||key7"), "0||value7");

    let runtime = runtime();
    let timeout = Duration::from_secs(5);
    let dial = |token: &str| Dial {
        token: Some(Secret::new(token.as_bytes())),
        ..Dial::default()
    };
    runtime.block_on(async {
        match LinkConn::connect(&a.addr(), &dial(TOKEN), timeout).await {
            Err(ClientError::Refused { reason, .. }) => assert!(
                reason.contains("this is the clients' auth_token: links need the cluster_token"),
                "{reason}"
            ),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("the clients' token opened a link"),
        }
        match LinkConn::connect(&a.addr(), &dial("guess"), timeout).await {
            Err(ClientError::Refused { reason, .. }) => {
                assert!(reason.contains("authentication required"), "{reason}")
            }
            other => panic!("a wrong token: {:?}", other.err()),
        }
        let mut link = LinkConn::connect(&a.addr(), &dial(CLUSTER), timeout)
            .await
            .expect("the daemons' token opens a link");
        match link.call(&Request::Status, timeout).await {
            Ok(Response::Status { entries, .. }) => assert_eq!(entries, 50),
            other => panic!("STATUS answered {other:?}"),
        }
    });
    let wm = http_get(&a.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric(&wm, "rcache_link_client_tokens_total"),
        Some(1.0),
        "{wm}"
    );
    assert!(metric(&wm, "rcache_auth_failures_total").unwrap_or(0.0) >= 3.0);
    assert!(a.log_text().contains("presented the clients' auth_token"));

    // An orchestrator that has only the clients' token cannot reach the
    // workers: its requests fail and write nothing.
    let half = orchestrator(&[a.port, b.port], &args(&with_token(TOKEN)));
    assert!(half
        .log_text()
        .contains("auth_token is set but cluster_token is not"));
    let mut h = Client::connect(half.port);
    assert_eq!(h.req(&format!("auth||{TOKEN}")), "0||");
    let reply = h.req("set||key7||overwritten");
    assert!(reply.starts_with("6||"), "{reply}");
    assert_eq!(c.req("get||key7"), "0||value7");
    // A worker started later refills from its partner over the daemons' link.
    let pc = free_port();
    let late = worker(pc, Some(a.port), &args(&t));
    assert!(
        late.log_text().contains("refilled from the partner")
            && late.log_text().contains("entries=50"),
        "{}",
        late.log_text()
    );
}

/// A round holds a worker's anti-entropy lock for `anti_entropy_lease`
/// at most, however often its initiator sends: a holder that keeps
/// sending DIGEST (each well within the 10 s a responder waits for the
/// next message) is cut off at the lease and another link gets the lock;
/// one that goes silent is hung up on at the lease.
#[test]
fn the_anti_entropy_lock_has_a_lease() {
    use rcache::client::{link::LinkConn, ClientError};
    use rcache::protocol::link::{Request, Response};
    use std::time::Instant;
    let w = solo(&["--anti-entropy-lease", "1s"]);
    let runtime = runtime();
    let timeout = Duration::from_secs(5);
    let dial = secure::link_dial();
    runtime.block_on(async {
        let connect = || async {
            LinkConn::connect(&w.addr(), &dial, timeout)
                .await
                .expect("link")
        };
        let (mut holder, mut other) = (connect().await, connect().await);
        let taken = Instant::now();
        match holder.call(&Request::Digest { floor: 0 }, timeout).await {
            Ok(Response::Digest { .. }) => {}
            other => panic!("DIGEST answered {other:?}"),
        }
        match other.call(&Request::Digest { floor: 0 }, timeout).await {
            Ok(Response::Error(e)) => assert!(e.to_string().contains("busy"), "{e}"),
            answer => panic!("a second round while one runs: {answer:?}"),
        }
        let cut_off = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(
                taken.elapsed() < Duration::from_secs(5),
                "the holder kept the lock for 5 s with a 1 s lease"
            );
            // Cut off at the lease: hung up on while it waited for the
            // next message, or that message answered with the reason.
            match holder.call(&Request::Digest { floor: 0 }, timeout).await {
                Ok(Response::Digest { .. }) => continue,
                Ok(Response::Error(e)) => {
                    assert!(e.to_string().contains("anti_entropy_lease"), "{e}");
                    break taken.elapsed();
                }
                Err(ClientError::Closed) => break taken.elapsed(),
                answer => panic!("DIGEST answered {answer:?}"),
            }
        };
        eprintln!("cut off after {cut_off:?}");
        assert!(cut_off >= Duration::from_secs(1), "{cut_off:?}");
        match other.call(&Request::Digest { floor: 0 }, timeout).await {
            Ok(Response::Digest { .. }) => {}
            answer => panic!("the lock was not given back: {answer:?}"),
        }
        // `other` now holds it and goes silent: hung up on at the lease.
        let silent = Instant::now();
        match other.call(&Request::Ping, Duration::from_secs(5)).await {
            Ok(Response::Pong) => {}
            answer => panic!("PING answered {answer:?}"),
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            other.call(&Request::Ping, timeout).await.is_err(),
            "a silent holder's link outlived its lease"
        );
        assert!(silent.elapsed() < Duration::from_secs(5));
        let mut third = connect().await;
        match third.call(&Request::Digest { floor: 0 }, timeout).await {
            Ok(Response::Digest { .. }) => {}
            answer => panic!("the silent holder kept the lock: {answer:?}"),
        }
    });
    let wm = http_get(&w.metrics_addr(), "/metrics").1;
    assert_eq!(
        metric(&wm, "rcache_anti_entropy_leases_expired_total"),
        Some(2.0),
        "{wm}"
    );
}
