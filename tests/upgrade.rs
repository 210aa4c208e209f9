//! A rolling upgrade from the previous release (link protocol 8) to this
//! one, on real processes under a load that checks every acknowledged
//! write: one orchestrator, then one worker of each pair at a time, then
//! the other orchestrator, as docs/operations.md tells it. Needs the
//! previous release's daemons (`.ci/previous-release` builds them).

mod common;

use common::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
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

/// Clients that write and read their own keys through a "home"
/// orchestrator, moving to the other while theirs is drained (as a load
/// balancer does before an orchestrator is restarted).
struct Load {
    stop: Arc<AtomicBool>,
    /// The port of the orchestrator clients must leave (0: none).
    drained: Arc<AtomicU16>,
    /// The port each client uses now.
    using: Vec<Arc<AtomicU16>>,
    requests: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Written>>,
}

const KEYS: usize = 200;

/// What one client wrote last to each of its keys, and what failed.
type Written = (Vec<Option<usize>>, Vec<String>);

impl Load {
    fn start(orchestrators: [u16; 2], clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicU16::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let mut using = Vec::new();
        let mut threads = Vec::new();
        for t in 0..clients {
            let home = orchestrators[t % 2];
            let other = orchestrators[1 - t % 2];
            let now = Arc::new(AtomicU16::new(home));
            using.push(now.clone());
            let (stop, drained, requests) = (stop.clone(), drained.clone(), requests.clone());
            threads.push(std::thread::spawn(move || {
                let mut port = home;
                let mut c = Client::connect(port);
                let mut last = vec![None; KEYS];
                let mut failed = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let want_port = if drained.load(Ordering::Relaxed) == home {
                        other
                    } else {
                        home
                    };
                    if want_port != port {
                        port = want_port;
                        c = Client::connect(port);
                        now.store(port, Ordering::Relaxed);
                    }
                    let k = n % KEYS;
                    match c.req(&format!("set||c{t}k{k}||v{n}")) {
                        reply if reply == "0||" => last[k] = Some(n),
                        reply => failed.push(format!("set c{t}k{k} via {port}: {reply}")),
                    }
                    // A key written before reads as its last write.
                    let r = (n * 7) % KEYS;
                    let want =
                        last[r].map_or("2||key not found".to_string(), |v| format!("0||v{v}"));
                    let got = c.req(&format!("get||c{t}k{r}"));
                    if got != want {
                        failed.push(format!("get c{t}k{r} via {port}: {got}, want {want}"));
                    }
                    n += 1;
                    requests.fetch_add(2, Ordering::Relaxed);
                }
                (last, failed)
            }));
        }
        Load {
            stop,
            drained,
            using,
            requests,
            threads,
        }
    }

    /// Moves every client off the orchestrator on `port`, returning once
    /// none uses it.
    fn drain(&self, port: u16) {
        self.drained.store(port, Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(10), || self
                .using
                .iter()
                .all(|u| u.load(Ordering::Relaxed) != port)),
            "clients did not leave orchestrator {port}"
        );
    }

    fn undrain(&self) {
        self.drained.store(0, Ordering::Relaxed);
    }

    /// Lets at least `more` requests run.
    fn run(&self, more: usize) {
        let until = self.requests.load(Ordering::Relaxed) + more;
        assert!(
            eventually(Duration::from_secs(60), || self
                .requests
                .load(Ordering::Relaxed)
                >= until),
            "the load stalled"
        );
    }

    fn stop(self) -> (Vec<Vec<Option<usize>>>, Vec<String>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut lasts = Vec::new();
        let mut failed = Vec::new();
        for t in self.threads {
            let (last, f) = t.join().expect("load thread");
            lasts.push(last);
            failed.extend(f);
        }
        (lasts, failed, self.requests.load(Ordering::Relaxed))
    }
}

/// Waits until the orchestrator serves reads from `worker` again.
fn serves_from(orchestrator: &Daemon, worker: u16, pair: usize) {
    let up = format!(r#"rcache_worker_up{{pair="{pair}",worker="127.0.0.1:{worker}"}}"#);
    assert!(
        eventually(Duration::from_secs(20), || scrape(
            &orchestrator.metrics_addr(),
            &up
        ) == Some(1.0)),
        "{} does not serve from worker {worker}: {}",
        orchestrator.name,
        orchestrator.log_text()
    );
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
    let (lasts, failed, requests) = load.stop();
    assert!(
        failed.is_empty(),
        "{} of {requests} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );

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
        let mut c = Client::connect(port);
        for (t, last) in lasts.iter().enumerate() {
            for (k, v) in last.iter().enumerate() {
                let want = v.map_or("2||key not found".to_string(), |v| format!("0||v{v}"));
                assert_eq!(
                    c.req(&format!("get||c{t}k{k}")),
                    want,
                    "c{t}k{k} via {port}"
                );
            }
        }
    }
    println!("upgraded under load: {requests} requests, 0 failed");
}
