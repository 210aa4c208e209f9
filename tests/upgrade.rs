//! A rolling upgrade from the previous release (link protocol 8) to this
//! one, on real processes under a load that checks every acknowledged
//! write: one orchestrator, then one worker of each pair at a time, then
//! the other orchestrator, as docs/operations.md tells it. Needs the
//! previous release's daemons (`.ci/previous-release` builds them).

mod common;

use common::load::{rcache, serves_from, Load};
use common::*;
use std::path::PathBuf;
use std::time::Duration;

/// The previous release's daemons, or `None` (with a message) when they
/// were not built; under `CI=true` that fails the test instead.
fn previous_release() -> Option<PathBuf> {
    let dir = std::env::var_os("RCACHE_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/previous/bin"));
    if dir.join("rcache-worker").exists() && dir.join("rcache-orchestrator").exists() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI must run the upgrade test: .ci/previous-release builds the previous release into {}",
        dir.display()
    );
    eprintln!(
        "SKIPPED: the upgrade test needs the previous release's daemons: run .ci/previous-release"
    );
    None
}

/// Which release a daemon runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Release {
    Previous,
    This,
}

struct Binaries {
    previous: PathBuf,
}

impl Binaries {
    fn of(&self, release: Release, name: &str) -> String {
        match release {
            Release::Previous => self.previous.join(name).display().to_string(),
            Release::This => match name {
                "rcache-worker" => env!("CARGO_BIN_EXE_rcache-worker").to_string(),
                _ => env!("CARGO_BIN_EXE_rcache-orchestrator").to_string(),
            },
        }
    }

    fn worker(&self, release: Release, port: u16, partner: u16) -> Daemon {
        let args: Vec<String> = [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--partner",
            &format!("127.0.0.1:{partner}"),
            "--anti-entropy-interval",
            "300ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Daemon::start(
            &format!("worker-{port}-{release:?}"),
            &self.of(release, "rcache-worker"),
            &args,
            port,
        )
    }

    fn orchestrator(&self, release: Release, port: u16, workers: &[u16]) -> Daemon {
        let mut args = vec![
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--worker-timeout".to_string(),
            "300ms".to_string(),
        ];
        for w in workers {
            args.push("127.0.0.1".into());
            args.push(w.to_string());
        }
        Daemon::spawn(
            &format!("orchestrator-{port}-{release:?}"),
            &self.of(release, "rcache-orchestrator"),
            &args,
            port,
        )
    }
}

/// One RESP command; the reply's first line.
fn resp(c: &mut Client, args: &[&str]) -> String {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    c.send_raw(out.as_bytes());
    c.read_line().trim_end().to_string()
}

#[test]
fn a_running_cluster_upgrades_from_the_previous_release_with_no_failed_request() {
    let Some(previous) = previous_release() else {
        return;
    };
    let bins = Binaries { previous };
    let [w1, w2, w3, w4, p1, p2] = free_ports();
    let pairs = [(w1, w2), (w3, w4)];
    let workers = [w1, w2, w3, w4];
    let mut running: Vec<Daemon> = workers
        .iter()
        .zip([w2, w1, w4, w3])
        .map(|(&w, partner)| bins.worker(Release::Previous, w, partner))
        .collect();
    for w in &mut running {
        w.wait_ready();
    }
    let mut o1 = bins.orchestrator(Release::Previous, p1, &workers);
    let mut o2 = bins.orchestrator(Release::Previous, p2, &workers);
    let load = Load::start([p1, p2], 4);
    load.run(2_000);

    // 1. One orchestrator: it speaks the previous version to every worker
    // and refuses hashes, which they cannot hold.
    load.drain(p2);
    assert_eq!(o2.terminate().and_then(|s| s.code()), Some(0));
    o2 = bins.orchestrator(Release::This, p2, &workers);
    load.undrain();
    for (i, &w) in workers.iter().enumerate() {
        serves_from(&o2, w, i / 2);
    }
    let mut hashes = Client::connect_resp(p2);
    assert!(
        eventually(Duration::from_secs(5), || o2
            .log_text()
            .matches("the worker's link protocol version")
            .count()
            == 4),
        "{}",
        o2.log_text()
    );
    // A hash key of each pair.
    let hash_keys: Vec<String> = (0..2)
        .map(|p| {
            (0..)
                .map(|i| format!("h{i}"))
                .find(|k| rcache::orchestrator::placement::locate(k.as_bytes(), 2).pair == p)
                .expect("a key of the pair")
        })
        .collect();
    let refused = resp(&mut hashes, &["HSET", "h", "f", "v"]);
    assert!(
        refused.starts_with("-") && refused.contains("wait for the upgrade"),
        "HSET on workers of the previous release: {refused}"
    );
    load.run(2_000);

    // 2. One worker of each pair at a time: each refills from its partner
    // of the previous release, and both orchestrators serve from it again
    // before its partner goes.
    for (pair, &(a, b)) in pairs.iter().enumerate() {
        for w in [a, b] {
            let i = workers.iter().position(|&x| x == w).expect("a worker");
            let partner = if w == a { b } else { a };
            assert_eq!(running[i].terminate().and_then(|s| s.code()), Some(0));
            running[i] = bins.worker(Release::This, w, partner);
            running[i].wait_ready();
            assert!(
                running[i].log_text().contains("refilled from the partner"),
                "{}",
                running[i].log_text()
            );
            serves_from(&o1, w, pair);
            serves_from(&o2, w, pair);
            load.run(1_000);
            // Hashes go to a pair once both its workers run this release.
            let upgraded = w == b;
            for (p, key) in hash_keys.iter().enumerate() {
                let both_new = p < pair || (p == pair && upgraded);
                if both_new {
                    assert!(
                        eventually(Duration::from_secs(10), || resp(
                            &mut hashes,
                            &["HSET", key, "f", "v"]
                        )
                        .starts_with(':')),
                        "HSET {key} on pair {p}, both workers upgraded: {}",
                        resp(&mut hashes, &["HSET", key, "f", "v"])
                    );
                } else {
                    let refused = resp(&mut hashes, &["HSET", key, "f", "v"]);
                    assert!(
                        refused.contains("wait for the upgrade"),
                        "HSET {key} on pair {p}, a worker of the previous release: {refused}"
                    );
                }
            }
        }
    }
    // The first upgraded worker spoke the previous version to its partner
    // and to the old orchestrator.
    let first = running[0].log_text();
    assert!(
        first.contains("a peer speaks an older link protocol"),
        "{first}"
    );

    // 3. The other orchestrator.
    load.drain(p1);
    assert_eq!(o1.terminate().and_then(|s| s.code()), Some(0));
    o1 = bins.orchestrator(Release::This, p1, &workers);
    load.undrain();
    for (i, &w) in workers.iter().enumerate() {
        serves_from(&o1, w, i / 2);
    }
    load.run(2_000);
    let (lasts, requests) = load.stop_without_failures();

    // Everything upgraded: hashes work, through both orchestrators.
    assert!(
        eventually(Duration::from_secs(10), || resp(
            &mut hashes,
            &["HSET", "h", "f", "v"]
        ) == ":1"),
        "HSET after the upgrade: {}",
        resp(&mut hashes, &["HSET", "h", "f", "v"])
    );
    let mut other = Client::connect_resp(p1);
    assert_eq!(resp(&mut other, &["HLEN", "h"]), ":1");
    // Every acknowledged write, through each orchestrator.
    for port in [p1, p2] {
        Load::check_all(port, &lasts);
    }
    println!("upgraded under load: {requests} requests, 0 failed");
}

/// Workers of the previous release hold no layout and take no moving
/// keys: a pair of them is not added (the move could never end), and the
/// layout stays as it was.
#[test]
fn a_pair_of_the_previous_release_is_not_added() {
    let Some(previous) = previous_release() else {
        return;
    };
    let bins = Binaries { previous };
    let [w1, w2, n1, n2, port] = free_ports();
    let mut current = [
        bins.worker(Release::This, w1, w2),
        bins.worker(Release::This, w2, w1),
    ];
    let mut newcomers = [
        bins.worker(Release::Previous, n1, n2),
        bins.worker(Release::Previous, n2, n1),
    ];
    for w in current.iter_mut().chain(newcomers.iter_mut()) {
        w.wait_ready();
    }
    let o = bins.orchestrator(Release::This, port, &[w1, w2]);
    let (a, b) = (format!("127.0.0.1:{n1}"), format!("127.0.0.1:{n2}"));
    let (ok, said) = rcache(port, &["cluster", "add-pair", &a, &b]);
    assert!(
        !ok && said.contains("runs the previous release"),
        "add-pair of workers of the previous release: {said}"
    );
    let (ok, shown) = rcache(port, &["cluster"]);
    assert!(
        ok && !shown.contains(&a) && !shown.contains("copying"),
        "{shown}"
    );
    let mut c = Client::connect(o.port);
    assert_eq!(c.req("set||k||v"), "0||");
    assert_eq!(c.req("get||k"), "0||v");
}
