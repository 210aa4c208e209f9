//! The cluster's layout: held by the workers, changed by one orchestrator
//! (`rcache cluster replace-worker`), followed by the others and by the
//! partner without a restart or a config edit, and adopted by an
//! orchestrator that starts with a stale file. On real processes, under a
//! load through two orchestrators that checks every acknowledged write.

mod common;

use common::load::{orchestrator_from, rcache, serves_from, Load};
use common::*;
use std::time::Duration;

#[test]
fn a_killed_worker_is_replaced_by_a_new_address_from_one_command() {
    let [pa, pb, pc, p1, p2] = free_ports();
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut a = worker_starting(pa, Some(pb), &ae);
    let mut b = worker_starting(pb, Some(pa), &ae);
    a.wait_ready();
    b.wait_ready();
    // Both orchestrators' files name the first pair; they never change.
    let config = |port: u16| {
        let path = log_dir().join(format!("orchestrator-{port}.toml"));
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:{port}\"\nworker_timeout = \"300ms\"\n\
                 health_interval = \"200ms\"\n\
                 workers = [[\"127.0.0.1:{pa}\", \"127.0.0.1:{pb}\"]]\n"
            ),
        )
        .expect("config");
        path
    };
    let (c1, c2) = (config(p1), config(p2));
    let o1 = orchestrator_from(&c1, p1);
    let mut o2 = orchestrator_from(&c2, p2);
    let (old, new) = (format!("127.0.0.1:{pb}"), format!("127.0.0.1:{pc}"));
    let load = Load::start([p1, p2], 4);
    load.run(2_000);

    b.kill9();
    load.run(1_000);
    // An orchestrator started after the worker died never reached it; the
    // replacement is made through it all the same.
    load.drain(p2);
    assert_eq!(o2.terminate().and_then(|s| s.code()), Some(0));
    o2 = orchestrator_from(&c2, p2);
    load.undrain();
    load.run(1_000);
    // Not settled while a worker is down: `wait` says so at its timeout.
    let (ok, said) = rcache(p1, &["cluster", "wait", "--timeout", "1s"]);
    assert!(!ok && said.contains(&format!("{old} down")), "{said}");
    // Refused while the replacement is not there: nothing changes.
    let (ok, said) = rcache(p1, &["cluster", "replace-worker", &old, &new]);
    assert!(!ok && said.contains("does not answer"), "{said}");
    let (_, shown) = rcache(p1, &["cluster"]);
    assert!(shown.contains(&old) && !shown.contains(&new), "{shown}");

    // The new worker, its partner the survivor: it refills, then one
    // command puts it in the dead one's place.
    let c = worker(pc, Some(pa), &ae);
    assert!(
        c.log_text().contains("refilled from the partner"),
        "{}",
        c.log_text()
    );
    let (ok, said) = rcache(p2, &["cluster", "replace-worker", &old, &new]);
    assert!(ok, "{said}");
    // A table: the header, then epoch 1, pair 0, the two workers.
    let row: Vec<&str> = said
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(row[..4], ["1", "0", old.as_str(), new.as_str()], "{said}");
    // The survivor follows: its anti-entropy rounds go to the new worker.
    a.wait_for_log(
        "partner changed by the cluster's layout",
        Duration::from_secs(5),
    );
    let reached = format!("anti-entropy reaches the partner again partner={new}");
    a.wait_for_log(&reached, Duration::from_secs(10));
    // The other orchestrator learns the layout from a probe.
    serves_from(&o2, pc, 0);
    serves_from(&o1, pc, 0);
    assert!(
        o1.log_text().contains("the config's workers list is stale"),
        "{}",
        o1.log_text()
    );
    let (_, shown) = rcache(p1, &["cluster"]);
    assert!(shown.contains(&new) && !shown.contains(&old), "{shown}");
    // Settled: every worker of the layout up, no hints left.
    for port in [p1, p2] {
        let (ok, said) = rcache(port, &["cluster", "wait", "--timeout", "30s"]);
        assert!(ok && said.contains("settled: 2 workers up"), "{said}");
    }
    load.run(2_000);

    // An orchestrator restarted with its original file (the dead worker in
    // it) takes the cluster's layout from the survivor before it serves.
    load.drain(p2);
    assert_eq!(o2.terminate().and_then(|s| s.code()), Some(0));
    o2 = orchestrator_from(&c2, p2);
    assert!(
        o2.log_text().contains("the cluster's layout is in force"),
        "{}",
        o2.log_text()
    );
    let (_, shown) = rcache(p2, &["cluster"]);
    assert!(shown.contains(&new) && !shown.contains(&old), "{shown}");
    load.undrain();
    load.run(2_000);
    // A reload with the same stale file changes nothing.
    o2.signal(libc::SIGHUP);
    o2.wait_for_log("config reloaded", Duration::from_secs(5));
    load.run(1_000);
    let (lasts, requests) = load.stop_without_failures();
    let (_, shown) = rcache(p2, &["cluster"]);
    assert!(
        shown.contains(&new) && !shown.contains(&old),
        "after the reload: {shown}"
    );

    // The survivor goes too: the new worker alone holds every write.
    assert_eq!(a.terminate().and_then(|s| s.code()), Some(0));
    for port in [p1, p2] {
        Load::check_all(port, &lasts);
    }
    println!("replaced under load: {requests} requests, 0 failed");
}

/// `rcache cluster wait` waits for an orchestrator that does not answer
/// yet (one restarting, as in an upgrade) until its timeout, and names it
/// when it times out.
#[test]
fn cluster_wait_waits_for_an_orchestrator_that_is_not_up_yet() {
    let (a, b) = pair(&[]);
    let port = free_port();
    let (ok, said) = rcache(port, &["cluster", "wait", "--timeout", "1s"]);
    assert!(
        !ok && said.contains("not settled after 1s") && said.contains("does not answer"),
        "{said}"
    );
    let wait = std::process::Command::new(env!("CARGO_BIN_EXE_rcache"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["cluster", "wait", "--timeout", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("rcache runs");
    let _o = orchestrator_on(port, &[a.port, b.port], &[]);
    let out = wait.wait_with_output().expect("rcache ends");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("settled: 2 workers up"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
