//! Running rcache as a service, without root: the metrics endpoint, the
//! systemd notification protocol (against a datagram socket of the test's
//! own, as `$NOTIFY_SOCKET`), and reloading the config with SIGHUP.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rcache-worker");
const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_rcache-orchestrator");

/// Checks an exposition with `promtool check metrics` (Debian's
/// `prometheus` package); in CI a missing promtool fails the test.
fn promtool_accepts(exposition: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs promtool (apt install prometheus): {e}"
            );
            eprintln!("SKIPPED promtool check: promtool is not installed");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics refused the exposition:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_describe_requests_the_store_and_the_workers() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let mut c = Client::connect(o.port);
    let value = "abcdefgh".repeat(40); // 320 bytes that lz4 shrinks
    for i in 0..50 {
        assert_eq!(c.req(&format!("set||key{i}||{value}")), "0||");
    }
    for i in 0..20 {
        assert_eq!(c.req(&format!("get||key{i}")), format!("0||{value}"));
    }
    for i in 0..5 {
        assert!(c.req(&format!("get||missing{i}")).starts_with("2||"));
    }
    for i in 0..3 {
        assert_eq!(c.req(&format!("del||key{i}")), "0||");
    }
    assert!(c.req("bogus||x").starts_with("3||"));

    let (status, om) = http_get(&o.metrics_addr(), "/metrics");
    assert_eq!(status, 200);
    let series = |name: &str| metric(&om, name).unwrap_or_else(|| panic!("{name} missing:\n{om}"));
    assert_eq!(
        series(r#"rcache_requests_total{command="set",result="ok"}"#),
        50.0
    );
    assert_eq!(
        series(r#"rcache_requests_total{command="get",result="ok"}"#),
        20.0
    );
    assert_eq!(
        series(r#"rcache_requests_total{command="get",result="not_found"}"#),
        5.0
    );
    assert_eq!(
        series(r#"rcache_requests_total{command="del",result="ok"}"#),
        3.0
    );
    assert_eq!(
        series(r#"rcache_requests_total{command="invalid",result="error"}"#),
        1.0
    );
    assert_eq!(
        series(r#"rcache_request_duration_seconds_count{command="set"}"#),
        50.0
    );
    assert_eq!(series("rcache_pairs"), 1.0);
    assert_eq!(series("rcache_connections_open"), 1.0);
    for w in [&a, &b] {
        let up = format!(r#"rcache_worker_up{{pair="0",worker="{}"}}"#, w.addr());
        assert!(
            eventually(Duration::from_secs(5), || {
                metric(&http_get(&o.metrics_addr(), "/metrics").1, &up) == Some(1.0)
            }),
            "{up} never 1"
        );
        let latency = format!(
            r#"rcache_worker_request_duration_seconds_count{{worker="{}"}}"#,
            w.addr()
        );
        assert!(series(&latency) >= 50.0, "{latency}");
    }
    assert!(om.contains("rcache_build_info{role=\"orchestrator\",version=\""));
    promtool_accepts(&om);

    for w in [&a, &b] {
        let (status, wm) = http_get(&w.metrics_addr(), "/metrics");
        assert_eq!(status, 200);
        let series =
            |name: &str| metric(&wm, name).unwrap_or_else(|| panic!("{name} missing:\n{wm}"));
        assert_eq!(series("rcache_entries"), 47.0);
        assert_eq!(series("rcache_tombstones"), 3.0);
        assert_eq!(series("rcache_value_raw_bytes"), 47.0 * 320.0);
        let stored = series("rcache_value_stored_bytes");
        assert!(
            stored > 0.0 && stored < 47.0 * 320.0 / 2.0,
            "lz4 should halve repetitive values at least: {stored}"
        );
        assert!(series("rcache_memory_used_bytes") > stored);
        assert_eq!(series("rcache_memory_max_bytes"), (1u64 << 30) as f64);
        assert_eq!(series(r#"rcache_worker_state{state="ready"}"#), 1.0);
        assert!(series(r#"rcache_requests_total{command="set",result="ok"}"#) >= 50.0);
        assert!(series("process_resident_memory_bytes") > 1e6);
        promtool_accepts(&wm);
        assert_eq!(
            http_get(&w.metrics_addr(), "/health"),
            (200, "ready\n".into())
        );
    }
    assert_eq!(http_get(&o.metrics_addr(), "/health").0, 200);
    assert_eq!(http_get(&o.metrics_addr(), "/nothing-here").0, 404);
}

/// Collects what a daemon sends to `$NOTIFY_SOCKET`.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::Receiver<String>,
}

impl NotifySocket {
    fn new(name: &str) -> NotifySocket {
        let path = log_dir().join(format!("{name}.notify"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket { path, rx }
    }

    /// Waits for a message with a line equal to `line` (or starting with
    /// it, when it ends in `=`); returns the whole message.
    fn expect(&self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(message) => {
                    let hit = message.lines().any(|l| {
                        if line.ends_with('=') {
                            l.starts_with(line)
                        } else {
                            l == line
                        }
                    });
                    if hit {
                        return message;
                    }
                    seen.push(message);
                }
                Err(_) => break,
            }
        }
        panic!("no {line} within {timeout:?}; got {seen:?}");
    }
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the config");
}

#[test]
fn a_worker_notifies_systemd_and_reloads_its_config() {
    // A partner with data, so READY=1 must wait for the refill.
    let a = solo(&[]);
    let (pa, pb) = (a.port, free_port());
    let mut c = Client::connect(a.port);
    for i in 0..500 {
        assert_eq!(c.req(&format!("set||key{i}||value{i}")), "0||");
    }

    let notify = NotifySocket::new(&format!("worker-{pb}"));
    let config = log_dir().join(format!("worker-{pb}.toml"));
    let base = format!("listen = \"127.0.0.1:{pb}\"\npartner = \"127.0.0.1:{pa}\"\n");
    write_config(
        &config,
        &format!("{base}idle_timeout = \"300s\"\nmax_memory = \"64MiB\"\n"),
    );
    let mut b = Daemon::start_with_env(
        &format!("worker-{pb}"),
        WORKER,
        &["--config".into(), config.display().to_string()],
        pb,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let ready = notify.expect("READY=1", Duration::from_secs(20));
    // READY=1 comes once the refill is over: everything is there.
    b.wait_ready();
    let metrics = b.metrics_addr();
    let entries = metric(&http_get(&metrics, "/metrics").1, "rcache_entries");
    assert_eq!(entries, Some(500.0), "READY=1 before the refill ended");
    assert!(ready.contains("STATUS=serving 500 entries"), "{ready:?}");
    notify.expect("WATCHDOG=1", Duration::from_secs(2));
    notify.expect("STATUS=", Duration::from_secs(5));

    // A good new config: idle_timeout and max_memory apply live; a
    // restart-only key is named in the log.
    write_config(
        &config,
        &format!("{base}idle_timeout = \"1s\"\nmax_memory = \"1MiB\"\ncompression = \"none\"\n"),
    );
    b.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(5));
    let reloaded = notify.expect("READY=1", Duration::from_secs(5));
    assert!(reloaded.contains("STATUS=reloaded"), "{reloaded:?}");
    let wm = http_get(&metrics, "/metrics").1;
    assert_eq!(metric(&wm, "rcache_memory_max_bytes"), Some(1048576.0));
    let mut idle = Client::connect(b.port);
    assert_eq!(idle.req("ping"), "0||pong");
    assert!(
        idle.closed_within(Duration::from_secs(5)),
        "the new idle_timeout (1s) did not close an idle connection"
    );
    let log = b.log_text();
    assert!(
        log.contains("compression changed in the config: it takes effect at the next restart"),
        "{log}"
    );

    // A bad new config is refused; the running one stays in force.
    write_config(&config, &format!("{base}max_memory = \"lots\"\n"));
    b.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(5));
    let refused = notify.expect("READY=1", Duration::from_secs(5));
    assert!(refused.contains("STATUS=reload refused"), "{refused:?}");
    assert!(b.log_text().contains("reload refused"));
    let mut c = Client::connect(b.port);
    assert_eq!(c.req("get||key7"), "0||value7");
    let wm = http_get(&metrics, "/metrics").1;
    assert_eq!(metric(&wm, "rcache_memory_max_bytes"), Some(1048576.0));

    b.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", Duration::from_secs(5));
    assert_eq!(b.terminate().and_then(|s| s.code()), Some(0));
}

#[test]
fn the_orchestrator_reloads_its_pair_list() {
    let (a, b) = pair(&[]);
    let (c, d) = pair(&[]);
    let port = free_port();
    let notify = NotifySocket::new(&format!("orchestrator-{port}"));
    let config = log_dir().join(format!("orchestrator-{port}.toml"));
    let one = format!("[[\"{}\", \"{}\"]]", a.addr(), b.addr());
    let two = format!(
        "[[\"{}\", \"{}\"], [\"{}\", \"{}\"]]",
        a.addr(),
        b.addr(),
        c.addr(),
        d.addr()
    );
    write_config(
        &config,
        &format!("listen = \"127.0.0.1:{port}\"\nworkers = {one}\n"),
    );
    let mut o = Daemon::start_with_env(
        &format!("orchestrator-{port}"),
        ORCHESTRATOR,
        &["--config".into(), config.display().to_string()],
        port,
        &[("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path"))],
    );
    o.wait_ready();
    notify.expect("READY=1", Duration::from_secs(5));
    let mut client = Client::connect(o.port);
    for i in 0..100 {
        assert_eq!(client.req(&format!("set||before{i}||v")), "0||");
    }
    let entries = |w: &Daemon| metric(&http_get(&w.metrics_addr(), "/metrics").1, "rcache_entries");
    assert_eq!(entries(&c), Some(0.0));

    write_config(
        &config,
        &format!("listen = \"127.0.0.1:{port}\"\nworkers = {two}\n"),
    );
    o.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(5));
    notify.expect("READY=1", Duration::from_secs(5));
    let cluster = client.req("cluster");
    for w in [&a, &b, &c, &d] {
        assert!(
            cluster.contains(&w.addr()),
            "{} missing in {cluster}",
            w.addr()
        );
    }
    for i in 0..100 {
        assert_eq!(client.req(&format!("set||after{i}||v")), "0||");
    }
    // Jump hashing moves about half of the new keys to the new pair.
    let moved = entries(&c).expect("entries");
    assert!(
        (20.0..=80.0).contains(&moved),
        "{moved} of 100 keys on the new pair"
    );
    assert_eq!(entries(&d), Some(moved));
    let om = http_get(&o.metrics_addr(), "/metrics").1;
    assert_eq!(metric(&om, "rcache_pairs"), Some(2.0));
    let up = |w: &Daemon, pair: usize| {
        format!(r#"rcache_worker_up{{pair="{pair}",worker="{}"}}"#, w.addr())
    };
    assert!(metric(&om, &up(&c, 1)).is_some(), "{om}");
    // What a reload of the pair list does to the keys written before (a
    // cluster that moves them is a later feature): each key jump hashing
    // keeps on pair 0 reads as before, and each it moves to the new pair
    // reads as a miss there (its copy stays on pair 0, unreachable).
    let mut kept = 0;
    for i in 0..100 {
        let key = format!("before{i}");
        let stays = rcache::orchestrator::placement::locate(key.as_bytes(), 2).pair == 0;
        let expected = if stays { "0||v" } else { "2||key not found" };
        assert_eq!(client.req(&format!("get||{key}")), expected, "{key}");
        kept += usize::from(stays);
    }
    println!("{kept} of 100 keys written before the reload still read; the others are misses");
    assert!(
        (20..=80).contains(&kept),
        "jump hashing kept {kept} of 100 keys on pair 0"
    );

    // Back to the second pair alone: the first pair's series go away.
    let only_second = format!("[[\"{}\", \"{}\"]]", c.addr(), d.addr());
    write_config(
        &config,
        &format!("listen = \"127.0.0.1:{port}\"\nworkers = {only_second}\n"),
    );
    o.signal(libc::SIGHUP);
    notify.expect("RELOADING=1", Duration::from_secs(5));
    notify.expect("READY=1", Duration::from_secs(5));
    let om = http_get(&o.metrics_addr(), "/metrics").1;
    assert_eq!(metric(&om, "rcache_pairs"), Some(1.0));
    assert!(metric(&om, &up(&c, 0)).is_some(), "{om}");
    assert!(
        !om.contains(&format!("worker=\"{}\"", a.addr())),
        "a removed worker left series behind:\n{om}"
    );
    assert_eq!(client.req("set||third||v"), "0||");
}

/// Replacing a dead worker with a new host, without restarting its
/// partner, under a load that checks every acknowledged write: the
/// orchestrator's `workers` names the new worker in the dead one's place
/// (SIGHUP; writes go to the survivor and are hinted for the new one), the
/// new worker starts with the survivor as its partner and refills from
/// it, and the survivor's `partner` names the new worker (SIGHUP). No
/// request fails, and once the survivor is stopped too, every
/// acknowledged write reads back from the new worker alone.
#[test]
fn a_dead_worker_is_replaced_without_restarting_its_partner() {
    let [pa, pb, pc, port] = free_ports();
    let a_config = log_dir().join(format!("worker-{pa}.toml"));
    let a_text = |partner: u16| {
        format!(
            "listen = \"127.0.0.1:{pa}\"\npartner = \"127.0.0.1:{partner}\"\n\
             anti_entropy_interval = \"300ms\"\n"
        )
    };
    write_config(&a_config, &a_text(pb));
    let config_arg = |path: &Path| vec!["--config".to_string(), path.display().to_string()];
    let mut a = Daemon::start(&format!("worker-{pa}"), WORKER, &config_arg(&a_config), pa);
    let ae = ["--anti-entropy-interval", "300ms"];
    let mut b = worker_starting(pb, Some(pa), &ae);
    a.wait_ready();
    b.wait_ready();
    let o_config = log_dir().join(format!("orchestrator-{port}.toml"));
    let o_text = |second: u16| {
        format!(
            "listen = \"127.0.0.1:{port}\"\nworker_timeout = \"300ms\"\n\
             workers = [[\"127.0.0.1:{pa}\", \"127.0.0.1:{second}\"]]\n"
        )
    };
    write_config(&o_config, &o_text(pb));
    let o = Daemon::spawn(
        &format!("orchestrator-{port}"),
        ORCHESTRATOR,
        &config_arg(&o_config),
        port,
    );
    const KEYS: usize = 300;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rounds of the load done so far: each step below waits for the load
    // to have run through the state the step before left.
    let rounds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let load = {
        let stop = stop.clone();
        let rounds = rounds.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(port);
            let mut last = vec![None; KEYS];
            let mut failed = Vec::new();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let k = n % KEYS;
                match c.req(&format!("set||k{k}||v{n}")) {
                    reply if reply == "0||" => last[k] = Some(n),
                    reply => failed.push(format!("set k{k}: {reply}")),
                }
                // A read of a key written before sees its last write.
                let r = (n * 7) % KEYS;
                let want = last[r].map_or("2||key not found".to_string(), |v| format!("0||v{v}"));
                let got = c.req(&format!("get||k{r}"));
                if got != want {
                    failed.push(format!("get k{r}: {got}, want {want}"));
                }
                n += 1;
                rounds.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            (last, failed, n)
        })
    };
    let load_runs = |more: usize| {
        let from = rounds.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            eventually(Duration::from_secs(10), || rounds
                .load(std::sync::atomic::Ordering::Relaxed)
                >= from + more),
            "the load stalled at round {from}"
        );
    };
    load_runs(100);
    b.kill9();
    // Writes the dead worker misses, hinted for its place.
    load_runs(100);
    // 1. Every orchestrator: the new worker in the dead one's place.
    write_config(&o_config, &o_text(pc));
    o.signal(libc::SIGHUP);
    o.wait_for_log("config reloaded", Duration::from_secs(5));
    load_runs(100);
    // 2. The new worker, its partner the survivor: it refills from it.
    let c = worker(pc, Some(pa), &ae);
    assert!(
        c.log_text().contains("refilled from the partner"),
        "{}",
        c.log_text()
    );
    // 3. The survivor's partner: the new worker, without a restart.
    write_config(&a_config, &a_text(pc));
    a.signal(libc::SIGHUP);
    a.wait_for_log("partner changed", Duration::from_secs(5));
    let reached = format!("anti-entropy reaches the partner again partner=127.0.0.1:{pc}");
    a.wait_for_log(&reached, Duration::from_secs(10));
    load_runs(100);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (last, failed, n) = load.join().expect("load thread");
    assert!(
        failed.is_empty(),
        "{} of {n} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // The survivor goes too: the new worker alone holds every write.
    a.signal(libc::SIGTERM);
    assert_eq!(a.terminate().and_then(|s| s.code()), Some(0));
    let mut client = Client::connect(o.port);
    for (k, v) in last.iter().enumerate() {
        let want = v.map_or("2||key not found".to_string(), |v| format!("0||v{v}"));
        assert!(
            eventually(Duration::from_secs(5), || client.req(&format!("get||k{k}"))
                == want),
            "k{k}: {}, want {want}",
            client.req(&format!("get||k{k}"))
        );
    }
}
