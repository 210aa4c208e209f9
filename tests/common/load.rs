//! A load that checks every acknowledged write: clients that write and
//! read their own keys through orchestrators, for tests that change the
//! cluster under it.

use super::{eventually, scrape, Client, Daemon};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Clients that write and read their own keys through a "home"
/// orchestrator, moving to the other while theirs is drained (as a load
/// balancer does before an orchestrator is restarted).
pub struct Load {
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
pub type Written = (Vec<Option<usize>>, Vec<String>);

impl Load {
    pub fn start(orchestrators: [u16; 2], clients: usize) -> Load {
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
    pub fn drain(&self, port: u16) {
        self.drained.store(port, Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(10), || self
                .using
                .iter()
                .all(|u| u.load(Ordering::Relaxed) != port)),
            "clients did not leave orchestrator {port}"
        );
    }

    pub fn undrain(&self) {
        self.drained.store(0, Ordering::Relaxed);
    }

    /// Lets at least `more` requests run.
    pub fn run(&self, more: usize) {
        let until = self.requests.load(Ordering::Relaxed) + more;
        assert!(
            eventually(Duration::from_secs(60), || self
                .requests
                .load(Ordering::Relaxed)
                >= until),
            "the load stalled"
        );
    }

    /// Stops the clients and fails the test if any request failed: what
    /// each client wrote last to each key, and the requests made.
    pub fn stop_without_failures(self) -> (Vec<Vec<Option<usize>>>, usize) {
        let (lasts, failed, requests) = self.stop();
        assert!(
            failed.is_empty(),
            "{} of {requests} requests failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        (lasts, requests)
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
pub fn serves_from(orchestrator: &Daemon, worker: u16, pair: usize) {
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

impl Load {
    /// Every acknowledged write reads back through the orchestrator on
    /// `port`.
    pub fn check_all(port: u16, lasts: &[Vec<Option<usize>>]) {
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
}

/// Runs `rcache ARGS` against the orchestrator on `port`: whether it
/// succeeded, and what it printed.
pub fn rcache(orchestrator: u16, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rcache"))
        .arg("--addr")
        .arg(format!("127.0.0.1:{orchestrator}"))
        .args(args)
        .output()
        .expect("rcache runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// An orchestrator reading `config`, serving on `port`.
pub fn orchestrator_from(config: &Path, port: u16) -> Daemon {
    Daemon::spawn(
        &format!("orchestrator-{port}"),
        env!("CARGO_BIN_EXE_rcache-orchestrator"),
        &["--config".to_string(), config.display().to_string()],
        port,
    )
}
