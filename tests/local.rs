//! `rcache local`: the README's first command.

mod common;

use common::Client;
use std::time::Duration;

#[test]
fn rcache_local_serves_and_stops_on_ctrl_c() {
    let (mut child, base, lines) = common::rcache_local();
    let mut c = Client::connect(base);
    assert_eq!(c.req("set||greeting||hello"), "0||");
    assert_eq!(c.req("get||greeting"), "0||hello");
    // Both pairs answer directly too.
    for w in 1..=4 {
        assert_eq!(Client::connect(base + w).req("ping"), "0||pong");
    }
    // Metrics: the orchestrator on base+100, the workers on base+101..104.
    let (status, body) = common::http_get(&format!("127.0.0.1:{}", base + 100), "/metrics");
    assert_eq!(status, 200);
    assert_eq!(common::metric(&body, "rcache_pairs"), Some(2.0));
    for w in 1..=4 {
        let (status, _) = common::http_get(&format!("127.0.0.1:{}", base + 100 + w), "/health");
        assert_eq!(status, 200, "worker {w}'s /health");
    }
    drop(c);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("exits");
    assert!(status.success(), "{status}");
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    assert!(
        std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{base}").parse().expect("addr"),
            Duration::from_secs(1)
        )
        .is_err(),
        "the port is released"
    );
}
