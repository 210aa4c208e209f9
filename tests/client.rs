//! The client library (`rcache::Client`) against real daemons: the basic
//! commands, connection pooling, failover between orchestrators, timeouts,
//! TLS and the token.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn get_set_delete_ttl_and_ping() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let client = secure::library_client([o.addr()]).build();
    runtime().block_on(async {
        client.ping().await.expect("ping");
        client.set("greeting", "hello").await.expect("set");
        assert_eq!(
            client.get("greeting").await.expect("get").as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(client.get("missing").await.expect("get"), None);
        client
            .set_with_ttl("short", "v", Duration::from_secs(1))
            .await
            .expect("set with ttl");
        assert!(client.get("short").await.expect("get").is_some());
        assert!(client.delete("greeting").await.expect("delete"));
        assert!(!client.delete("greeting").await.expect("delete again"));
        // A value the text protocol cannot carry is refused before sending.
        let err = client.set("k", "a\nb").await.expect_err("line break");
        assert!(matches!(err, rcache::client::Error::Invalid(_)), "{err}");
        // Expiry is the server's: gone after its TTL.
        let deadline = Instant::now() + Duration::from_secs(5);
        while client.get("short").await.expect("get").is_some() {
            assert!(Instant::now() < deadline, "a 1 s entry outlived 5 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
fn sequential_requests_share_one_pooled_connection() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let accepted = || {
        metric(
            &http_get(&o.metrics_addr(), "/metrics").1,
            "rcache_connections_accepted_total",
        )
        .unwrap_or(0.0)
    };
    let before = accepted();
    let client = secure::library_client([o.addr()]).build();
    // One runtime for the client's whole life: pooled connections belong
    // to the runtime that opened them.
    let rt = runtime();
    rt.block_on(async {
        for i in 0..500 {
            client
                .set(format!("k{i}"), format!("v{i}"))
                .await
                .expect("set");
        }
        for i in 0..500 {
            assert_eq!(
                client.get(format!("k{i}")).await.expect("get").as_deref(),
                Some(format!("v{i}").as_bytes())
            );
        }
    });
    assert_eq!(accepted() - before, 1.0, "1,000 requests on one connection");

    // 64 tasks at once: more connections are opened, all succeed.
    rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..50 {
                        let key = format!("t{t}:{i}");
                        client.set(&key, "x").await.expect("set");
                        assert!(client.get(&key).await.expect("get").is_some());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
    });
}

#[test]
fn a_connection_the_server_closed_while_idle_is_replaced_silently() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &["--idle-timeout", "1s"]);
    let client = secure::library_client([o.addr()]).build();
    let rt = runtime();
    let reaped = || {
        metric(
            &http_get(&o.metrics_addr(), "/metrics").1,
            "rcache_connections_reaped_total",
        )
    };
    rt.block_on(async {
        client.set("k", "v1").await.expect("set");
    });
    // The orchestrator reaps the pooled connection meanwhile.
    assert!(
        eventually(Duration::from_secs(10), || reaped() == Some(1.0)),
        "the idle connection was never reaped: {:?}",
        reaped()
    );
    rt.block_on(async {
        client
            .set("k", "v2")
            .await
            .expect("a write after the idle close");
        assert_eq!(
            client.get("k").await.expect("get").as_deref(),
            Some(&b"v2"[..])
        );
    });
    assert_eq!(reaped(), Some(1.0), "only the first connection was reaped");
}

#[test]
fn requests_fail_over_between_orchestrators() {
    let (a, b) = pair(&[]);
    let mut o1 = orchestrator(&[a.port, b.port], &[]);
    let o2 = orchestrator(&[a.port, b.port], &[]);
    // The first address listens nowhere: skipped.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let client = secure::library_client([nowhere, o1.addr(), o2.addr()])
        .timeout(Duration::from_secs(2))
        .build();
    let rt = runtime();
    rt.block_on(async {
        for i in 0..100 {
            client.set(format!("k{i}"), "before").await.expect("set");
        }
    });
    // The orchestrator in use goes away: the next request finds its pooled
    // connection closed and the address refusing, and goes to o2.
    let status = o1.terminate().expect("running");
    assert!(status.success());
    rt.block_on(async {
        for i in 0..100 {
            assert_eq!(
                client
                    .get(format!("k{i}"))
                    .await
                    .expect("get after failover")
                    .as_deref(),
                Some(&b"before"[..])
            );
            client
                .set(format!("k{i}"), "after")
                .await
                .expect("set after failover");
        }
    });
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(2) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(3));
    });
    let client = rcache::Client::builder([addr])
        .timeout(Duration::from_millis(300))
        .build();
    runtime().block_on(async {
        let started = Instant::now();
        let err = client.get("k").await.expect_err("no answer");
        assert!(
            matches!(err, rcache::client::Error::Unreachable(_)),
            "a read is reported unreachable: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let err = client.set("k", "v").await.expect_err("no answer");
        assert!(
            err.is_outcome_unknown(),
            "a write's outcome is unknown: {err}"
        );
    });
    drop(held);
}

#[test]
fn tls_and_token() {
    if secure::skip("every test runs with TLS and a token in secure mode") {
        return;
    }
    let args = secure::daemon_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (a, b) = pair(&args);
    let o = orchestrator(&[a.port, b.port], &args);
    let rt = runtime();
    let good = rcache::Client::builder([o.addr()])
        .tls(secure::client_tls())
        .auth_token(secure::TOKEN)
        .build();
    rt.block_on(async {
        good.set("k", "v").await.expect("set over TLS");
        assert_eq!(
            good.get("k").await.expect("get").as_deref(),
            Some(&b"v"[..])
        );
    });
    let no_token = rcache::Client::builder([o.addr()])
        .tls(secure::client_tls())
        .build();
    let err = rt.block_on(no_token.get("k")).expect_err("no token");
    assert!(err.to_string().contains("authentication required"), "{err}");
    let plaintext = rcache::Client::builder([o.addr()])
        .auth_token(secure::TOKEN)
        .build();
    let err = rt
        .block_on(plaintext.get("k"))
        .expect_err("plaintext to TLS");
    assert!(err.to_string().contains("TLS required"), "{err}");
}
