//! The package, installed and run for real (root only): `apt install` of
//! the built .deb, a real systemd booted in a container over the host's
//! root file system (systemd-nspawn), the shipped units and configs started
//! with `systemctl`, a reload after editing `/etc/rcache/`, a real
//! Prometheus scraping all three daemons with the shipped scrape config and
//! alert rules, and a clean stop. The package is purged at the end.
//!
//! Needs: root, `target/debian/rcache_<version>_amd64.deb` (`cargo deb`),
//! systemd-container, prometheus, lintian. Without root the test says it
//! is skipped; under `CI=true` anything missing fails it.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Runs a command, panicking with its output unless it succeeds.
fn must(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package stays installed while this lives; purged on drop.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        let deb = deb.to_str().expect("utf-8 path");
        must(
            "apt-get",
            &[
                "install",
                "-y",
                "-q",
                "--allow-downgrades",
                "--reinstall",
                deb,
            ],
        );
        Installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("apt-get")
            .args(["purge", "-y", "-q", "rcache"])
            .stdout(Stdio::null())
            .status();
    }
}

/// A systemd booted in a container that shares the host's /usr and
/// network; powered off on drop.
struct Container {
    nspawn: Child,
    init: i32,
    log: PathBuf,
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The first descendant of `pid` that is PID 1 of a PID namespace.
fn namespace_init(pid: u32) -> Option<u32> {
    let mut queue = children(pid);
    while let Some(p) = queue.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let is_init = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last())
            == Some("1");
        if is_init {
            return Some(p);
        }
        queue.extend(children(p));
    }
    None
}

impl Container {
    fn boot() -> Container {
        let log = log_dir().join("nspawn.log");
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--register=no",
                "--keep-unit",
                "--volatile=yes",
                "-D",
                "/",
                "--machine=rcache-test",
                "--bind=/etc/rcache",
                "-b",
                "systemd.firstboot=off",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log"))
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).expect("log"),
            ))
            .spawn()
            .expect("systemd-nspawn (apt install systemd-container)");
        let mut container = Container {
            nspawn,
            init: 0,
            log,
        };
        // The container's PID 1: a descendant of nspawn that is PID 1 in
        // its own namespace (nspawn forks helpers on the way there).
        let booted = eventually(Duration::from_secs(30), || {
            let Some(init) = namespace_init(container.nspawn.id()) else {
                return false;
            };
            container.init = init as i32;
            let comm = std::fs::read_to_string(format!("/proc/{init}/comm")).unwrap_or_default();
            // "offline" until systemd answers on its bus.
            let state = container
                .run(&["systemctl", "is-system-running"])
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            comm.trim() == "systemd"
                && ["initializing", "starting", "running", "degraded"].contains(&state.as_str())
        });
        assert!(
            booted,
            "systemd did not boot in the container:\n{}",
            std::fs::read_to_string(&container.log).unwrap_or_default()
        );
        // "running", or "degraded" when some unrelated unit of the host's
        // image fails in a container: either way systemd is up.
        let state = container
            .run(&["systemctl", "is-system-running", "--wait"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        assert!(
            state == "running" || state == "degraded",
            "systemd in the container ended up {state:?}"
        );
        container
    }

    fn run(&self, args: &[&str]) -> std::io::Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a"])
            .args(args)
            .output()
    }

    /// Runs in the container, panicking with the output unless it succeeds.
    fn must(&self, args: &[&str]) -> String {
        let out = self.run(args).expect("nsenter");
        assert!(
            out.status.success(),
            "{args:?} in the container failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn property(&self, unit: &str, name: &str) -> String {
        self.must(&["systemctl", "show", "-p", name, "--value", unit])
            .trim()
            .to_string()
    }

    fn journal(&self, unit: &str) -> String {
        self.must(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.init > 0 {
            let _ = self.run(&["systemctl", "poweroff"]);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Killing the namespace's PID 1 ends every process in it.
        if self.init > 0 {
            // SAFETY: kill(2) on the container's init, started by this test.
            unsafe {
                libc::kill(self.init, libc::SIGKILL);
            }
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A real Prometheus on a free port, with the shipped scrape config.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start() -> Prometheus {
        let dir = log_dir().join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let shipped = std::fs::read_to_string("/usr/share/rcache/prometheus/rcache-scrape.yml")
            .expect("the package ships a scrape config");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{shipped}"),
        )
        .expect("write the config");
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log"))
            .spawn()
            .expect("prometheus (apt install prometheus)");
        Prometheus { child, addr }
    }

    fn api(&self, path_and_query: &str) -> serde_json::Value {
        let (status, body) = http_get(&self.addr, path_and_query);
        assert_eq!(status, 200, "{path_and_query}: {body}");
        serde_json::from_str(&body).expect("JSON from the Prometheus API")
    }

    fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let v = self.api(&format!("/api/v1/query?query={}", url_encode(promql)));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_package_installs_and_runs_under_systemd_and_prometheus() {
    if !is_root() {
        assert!(!in_ci(), "CI must run the systemd test as root");
        eprintln!("SKIPPED: the systemd test needs root (apt, systemd-nspawn)");
        return;
    }
    let deb = Path::new(ROOT).join(format!(
        "target/debian/rcache_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    if !deb.is_file() {
        assert!(!in_ci(), "CI must build the package first (cargo deb)");
        eprintln!(
            "SKIPPED: {} is missing: run `cargo deb` first",
            deb.display()
        );
        return;
    }
    for port in [7000, 7001, 7002, 7100, 7101, 7102] {
        assert!(
            port_is_free(port),
            "port {port} is taken: the shipped configs need 7000-7002 and 7100-7102"
        );
    }

    // lintian: no errors.
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", deb.to_str().expect("utf-8")])
        .output()
        .expect("lintian (apt install lintian)");
    println!(
        "lintian: {}",
        String::from_utf8_lossy(&lintian.stdout).trim()
    );
    assert!(
        lintian.status.success(),
        "lintian reports errors:\n{}{}",
        String::from_utf8_lossy(&lintian.stdout),
        String::from_utf8_lossy(&lintian.stderr)
    );

    let _installed = Installed::install(&deb);
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "rcache"]);
    for conf in ["worker-1.toml", "worker-2.toml", "orchestrator.toml"] {
        assert!(
            conffiles.contains(&format!("/etc/rcache/{conf}")),
            "{conf} is not a conffile: {conffiles}"
        );
    }
    must("man", &["-w", "rcache-worker"]);

    let c = Container::boot();
    let units = ["rcache-worker@1", "rcache-worker@2", "rcache-orchestrator"];
    // Type=notify: `systemctl start` returns once READY=1 arrived.
    c.must(&["systemctl", "start", units[0], units[1], units[2]]);
    for unit in units {
        assert_eq!(c.must(&["systemctl", "is-active", unit]).trim(), "active");
        assert!(
            c.property(unit, "StatusText").starts_with("serving"),
            "{unit}: {}",
            c.property(unit, "StatusText")
        );
    }
    assert!(c
        .journal("rcache-worker@1")
        .contains("rcache-worker ready listen=127.0.0.1:7001"));

    // Through the orchestrator the units started.
    let mut client = Client::connect(7000);
    for i in 0..100 {
        assert_eq!(client.req(&format!("set||key{i}||value{i}")), "0||");
    }
    for i in 0..100 {
        assert_eq!(client.req(&format!("get||key{i}")), format!("0||value{i}"));
    }
    let entries = |port: u16| {
        metric(
            &http_get(&format!("127.0.0.1:{port}"), "/metrics").1,
            "rcache_entries",
        )
    };
    assert_eq!(entries(7101), Some(100.0));
    assert_eq!(entries(7102), Some(100.0));

    // Reload after editing /etc/rcache: max_memory applies live.
    let conf = Path::new("/etc/rcache/worker-1.toml");
    let text = std::fs::read_to_string(conf).expect("installed config");
    assert!(text.contains("max_memory = \"1GiB\""), "{text}");
    std::fs::write(
        conf,
        text.replace("max_memory = \"1GiB\"", "max_memory = \"512MiB\""),
    )
    .expect("edit the config");
    // systemd 252 considers the reload done once `kill -HUP` returned, not
    // at the daemon's READY=1: wait for the new setting to show.
    c.must(&["systemctl", "reload", "rcache-worker@1"]);
    let applied = eventually(Duration::from_secs(10), || {
        let max = try_http_get("127.0.0.1:7101", "/metrics")
            .ok()
            .and_then(|(_, body)| metric(&body, "rcache_memory_max_bytes"));
        max == Some(512.0 * 1024.0 * 1024.0)
            && c.property("rcache-worker@1", "StatusText")
                .contains("applied [\"max_memory\"]")
    });
    assert!(
        applied,
        "the reload did not apply max_memory: {}",
        c.property("rcache-worker@1", "StatusText")
    );
    assert_eq!(
        c.must(&["systemctl", "is-active", "rcache-worker@1"])
            .trim(),
        "active"
    );

    // A real Prometheus scrapes all three with the shipped config.
    let prometheus = Prometheus::start();
    let up_query = format!(
        "/api/v1/query?query={}",
        url_encode("up{job=~\"rcache-.*\"} == 1")
    );
    let all_up = eventually(Duration::from_secs(60), || {
        let Ok((200, body)) = try_http_get(&prometheus.addr, &up_query) else {
            return false;
        };
        serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().map(|r| r.len()))
            == Some(3)
    });
    assert!(all_up, "Prometheus did not scrape 3 rcache targets");
    let info = prometheus.query("rcache_build_info");
    assert_eq!(info.len(), 3, "{info:?}");
    let names: BTreeSet<String> = prometheus.api("/api/v1/label/__name__/values")["data"]
        .as_array()
        .expect("names")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    let mut queried = BTreeSet::new();
    for q in shipped_queries() {
        queried.extend(metric_names(&q));
    }
    let missing: Vec<_> = queried.difference(&names).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts query metrics Prometheus never scraped: {missing:?}"
    );
    let rules = prometheus.api("/api/v1/rules");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, |r| r.len());
    assert_eq!(loaded, 7, "the shipped alert rules did not load: {rules}");
    println!(
        "prometheus: 3 targets up, {} rcache series names, dashboard and alerts query {} names, 7 rules loaded",
        names.iter().filter(|n| n.starts_with("rcache_")).count(),
        queried.len()
    );

    // A clean stop: SIGTERM, in-flight requests drained, exit 0.
    drop(client);
    c.must(&["systemctl", "stop", units[0], units[1], units[2]]);
    for unit in units {
        assert_eq!(c.property(unit, "Result"), "success", "{unit}");
        assert_eq!(c.property(unit, "ExecMainStatus"), "0", "{unit}");
    }
    assert!(
        eventually(Duration::from_secs(5), || port_is_free(7000)),
        "the orchestrator's port is still taken after stop"
    );
}
