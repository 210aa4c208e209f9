//! `rcache local`: the README's first command.

mod common;

use common::Client;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn rcache_local_serves_and_stops_on_ctrl_c() {
    let base = common::local_base_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rcache"))
        .args([
            "local",
            "--base-port",
            &base.to_string(),
            "--max-memory",
            "64MiB",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rcache local starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(
        first.contains(&format!("orchestrator on 127.0.0.1:{base}")),
        "{first}"
    );
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
