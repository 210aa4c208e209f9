//! Test harness: starts the real binaries on loopback, waits for their
//! ready line, talks TCP, and stops them with SIGTERM (asserting a clean
//! exit) when dropped. Logs go to files, printed when a test fails.
//!
//! A daemon nobody has to know the address of before it starts (an
//! orchestrator, a worker without a partner) binds port 0 and the harness
//! reads the bound port from its ready line. Partners must name each other
//! before either starts, and a restart must come back on the same address,
//! so pairs and restarted daemons take ports from [`free_ports`].

#![allow(dead_code)]

pub mod chaos;
pub mod load;
pub mod resp;
pub mod secure;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct ports nobody listens on right now (held open together
/// while they are picked, so two calls cannot return the same one).
///
/// They come from below the kernel's ephemeral range (10000..20000 here;
/// `rcache_local` uses the range above), so no socket bound to port 0 and
/// no outgoing connection's local port can take one after its daemon stops:
/// a worker restarted on its old port finds it free. Tests run as separate
/// processes, so the start is random and a taken port is skipped.
pub fn free_ports<const N: usize>() -> [u16; N] {
    const LOW: u32 = 10_000;
    const SPAN: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_low >= LOW + SPAN,
        "the ephemeral port range starts at {ephemeral_low}, inside the test ports"
    );
    let mut state = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0))
        | 1;
    let mut next = move || {
        // xorshift64*: enough to spread concurrent test processes apart.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        LOW + (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32 % SPAN
    };
    let mut held: Vec<TcpListener> = Vec::with_capacity(N);
    for _ in 0..10 * SPAN {
        if held.len() == N {
            break;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", next() as u16)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), N, "free test ports below the ephemeral range");
    std::array::from_fn(|i| held[i].local_addr().expect("bound").port())
}

/// `rcache local` on free ports (64 MiB per worker): the process, its base
/// (client) port, and its stdout after the first line, which says every
/// daemon is ready.
pub fn rcache_local() -> (
    std::process::Child,
    u16,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let base = local_base_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rcache"))
        .args([
            "local",
            "--base-port",
            &base.to_string(),
            "--max-memory",
            "64MiB",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("rcache local starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf-8");
    assert!(
        first.contains(&format!("orchestrator on 127.0.0.1:{base}")),
        "{first}"
    );
    (child, base, lines)
}

/// A base port for `rcache local` whose five neighbours (and their
/// metrics ports, 100 above) are free right now.
fn local_base_port() -> u16 {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    (0..200)
        .map(|i| 20_000 + (std::process::id() as u16 % 200) * 50 + i * 7)
        .find(|&b| (0..5).all(|o| free(b + o) && free(b + 100 + o)))
        .expect("a free port range")
}

pub fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rcache-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

pub struct Daemon {
    pub name: String,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    stdout: Option<mpsc::Receiver<String>>,
    metrics: Option<String>,
}

impl Daemon {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn spawn(name: &str, bin: &str, args: &[String], port: u16) -> Daemon {
        let mut daemon = Daemon::start(name, bin, args, port);
        daemon.wait_ready();
        daemon
    }

    /// Starts the process without waiting for its ready line.
    pub fn start(name: &str, bin: &str, args: &[String], port: u16) -> Daemon {
        Daemon::start_with_env(name, bin, args, port, &[])
    }

    /// [`Daemon::start`] with extra environment variables. A daemon gets
    /// its metrics on a free port unless `args` name one.
    pub fn start_with_env(
        name: &str,
        bin: &str,
        args: &[String],
        port: u16,
        env: &[(&str, &str)],
    ) -> Daemon {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = log_dir().join(format!("{name}-{n}.log"));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut args = args.to_vec();
        let is_daemon = std::iter::once(bin)
            .chain(args.iter().map(String::as_str))
            .any(|a| a.ends_with("rcache-worker") || a.ends_with("rcache-orchestrator"));
        if is_daemon && !args.iter().any(|a| a.starts_with("--metrics-listen")) {
            args.push("--metrics-listen".into());
            args.push("127.0.0.1:0".into());
        }
        if is_daemon && secure::on() && !args.iter().any(|a| a == "--config") {
            args.extend(secure::daemon_args());
        }
        let mut child = Command::new(bin)
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        Daemon {
            name: name.to_string(),
            port,
            child: Some(child),
            log,
            stdout: Some(rx),
            metrics: None,
        }
    }

    /// The metrics address from the ready line.
    pub fn metrics_addr(&self) -> String {
        self.metrics
            .clone()
            .unwrap_or_else(|| panic!("{} has not reported its metrics address", self.name))
    }

    /// Waits for the ready line (a worker prints it once refilled) and
    /// takes the bound client port and metrics address from it.
    pub fn wait_ready(&mut self) {
        let Some(rx) = self.stdout.take() else {
            return;
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(line) if line.contains(" ready ") => {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|f| f.strip_prefix(key))
                        .map(str::to_string)
                };
                self.metrics = field("metrics=");
                if let Some(port) = field("listen=")
                    .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_string()))
                    .and_then(|p| p.parse().ok())
                {
                    self.port = port;
                }
            }
            other => {
                let log = self.log_text();
                self.kill9();
                panic!(
                    "{} did not report ready ({other:?}); log:\n{log}",
                    self.name
                );
            }
        }
    }

    /// Waits up to `timeout` for `text` in the log; fails the test with
    /// the log otherwise.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        assert!(
            eventually(timeout, || self.log_text().contains(text)),
            "{} never logged {text:?}:\n{}",
            self.name,
            self.log_text()
        );
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, sig);
            }
        }
    }

    /// SIGTERM, then the exit status within a deadline.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within 15s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.log_text());
            self.kill9();
            return;
        }
        if let Some(status) = self.terminate() {
            assert!(
                status.success(),
                "{} exited with {status} after SIGTERM; log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }
}

pub fn worker(port: u16, partner: Option<u16>, extra: &[&str]) -> Daemon {
    let mut w = worker_starting(port, partner, extra);
    w.wait_ready();
    w
}

/// A worker process, started but perhaps not ready yet (refilling).
pub fn worker_starting(port: u16, partner: Option<u16>, extra: &[&str]) -> Daemon {
    let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    if let Some(p) = partner {
        args.push("--partner".into());
        args.push(format!("127.0.0.1:{p}"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::start(
        &format!("worker-{port}"),
        env!("CARGO_BIN_EXE_rcache-worker"),
        &args,
        port,
    )
}

/// A worker without a partner, on a port the kernel picks.
pub fn solo(extra: &[&str]) -> Daemon {
    worker(0, None, extra)
}

/// A pair of partner workers on fresh ports, started together (the first
/// keeps trying to reach the second while it starts).
pub fn pair(extra: &[&str]) -> (Daemon, Daemon) {
    let [a, b] = free_ports();
    let mut wa = worker_starting(a, Some(b), extra);
    let mut wb = worker_starting(b, Some(a), extra);
    wa.wait_ready();
    wb.wait_ready();
    (wa, wb)
}

/// An orchestrator on a port the kernel picks.
pub fn orchestrator(workers: &[u16], extra: &[&str]) -> Daemon {
    orchestrator_on(0, workers, extra)
}

pub fn orchestrator_on(port: u16, workers: &[u16], extra: &[&str]) -> Daemon {
    let mut args = vec!["--listen".to_string(), format!("127.0.0.1:{port}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    for w in workers {
        args.push("127.0.0.1".into());
        args.push(w.to_string());
    }
    Daemon::spawn(
        &format!("orchestrator-{port}"),
        env!("CARGO_BIN_EXE_rcache-orchestrator"),
        &args,
        port,
    )
}

/// A blocking text-protocol client.
pub struct Client {
    /// The socket underneath (for timeouts).
    sock: TcpStream,
    io: BufReader<Box<dyn secure::ReadWrite>>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let (io, sock) =
            secure::dial(&format!("127.0.0.1:{port}")).unwrap_or_else(|e| panic!("{e}"));
        Client {
            sock,
            io: BufReader::new(io),
        }
    }

    /// A connection that speaks RESP from its first byte (in secure mode
    /// it authenticates with a RESP `AUTH`, which chooses RESP).
    #[allow(dead_code)]
    pub fn connect_resp(port: u16) -> Client {
        let (io, sock) = secure::dial_unauthenticated(&format!("127.0.0.1:{port}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut c = Client {
            sock,
            io: BufReader::new(io),
        };
        if secure::on() {
            let token = secure::TOKEN;
            c.send_raw(format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n", token.len()).as_bytes());
            assert_eq!(c.read_line().trim_end(), "+OK", "AUTH");
        }
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        let w = self.io.get_mut();
        w.write_all(bytes).and_then(|_| w.flush()).expect("write");
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.io.read_line(&mut line).expect("read a response line");
        assert!(line.ends_with('\n'), "connection closed; got {line:?}");
        line.pop();
        line
    }

    /// Sends one request line and returns the response line.
    pub fn req(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_line()
    }

    /// True when the server closed the connection (EOF within the timeout).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.sock.set_read_timeout(Some(timeout)).expect("timeout");
        let mut buf = [0u8; 64];
        match self.io.read(&mut buf) {
            Ok(n) => n == 0,
            // Still open: nothing came within the timeout.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            // A TLS peer may close without close_notify, a reset is a close.
            Err(_) => true,
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A plain HTTP/1.0 GET (no chunked body to decode); returns the status
/// code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// [`http_get`] that reports failures instead of panicking.
pub fn try_http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of one series (`name{labels}` exactly as exposed) in a
/// Prometheus text exposition.
pub fn metric(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// One series scraped from a daemon's metrics address now; `None` while
/// it does not answer or lacks the series.
pub fn scrape(addr: &str, series: &str) -> Option<f64> {
    try_http_get(addr, "/metrics")
        .ok()
        .and_then(|(_, body)| metric(&body, series))
}

/// Metric names a PromQL text refers to (`rcache_*`, `process_*`).
pub fn metric_names(promql: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = promql.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &promql[i..];
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (rest.starts_with("rcache_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `expr` of the shipped dashboard, and the alert rules' text.
pub fn shipped_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/grafana/rcache-dashboard.json"),
        )
        .expect("dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    // Only the exprs name metrics in the rules file (the annotations say
    // "rcache " with a space), so its whole text is scanned.
    queries.push(
        std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("packaging/prometheus/rcache-alerts.yml"),
        )
        .expect("rules"),
    );
    queries
}

/// A test CA and one certificate it signed for 127.0.0.1 and localhost
/// (server and client use), made with openssl(1). Both are valid from one
/// hour ago (as public CAs back-date), so a daemon whose clock runs behind
/// (see [`skewed_clock`]) accepts certificates made a moment ago.
pub struct Pki {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir = log_dir().join(format!("pki-{name}"));
        std::fs::create_dir_all(&dir).expect("pki dir");
        let p = |f: &str| dir.join(f).display().to_string();
        let write = |f: &str, text: &str| std::fs::write(p(f), text).expect("pki file");
        write(
            "ca.cnf",
            &format!(
                "[ca]\ndefault_ca = test\n[test]\ndatabase = {}\nnew_certs_dir = {}\n\
                 serial = {}\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
                 [any]\ncommonName = supplied\n",
                p("index.txt"),
                dir.display(),
                p("serial")
            ),
        );
        write("index.txt", "");
        write("serial", "01\n");
        write(
            "ca-ext.cnf",
            "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        );
        write(
            "node-ext.cnf",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n\
             basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n",
        );
        let run = |program: &str, args: &[&str]| -> String {
            let out = Command::new(program)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{program} is installed: {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let stamp = |when: &str| run("date", &["-u", "-d", when, "+%Y%m%d%H%M%SZ"]);
        let (start, end) = (stamp("-1 hour"), stamp("+2 days"));
        let key_and_csr = |key: &str, csr: &str, subject: &str| {
            run(
                "openssl",
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    &p(key),
                    "-out",
                    &p(csr),
                    "-subj",
                    subject,
                ],
            );
        };
        let sign = |csr: &str, pem: &str, ext: &str, how: &[&str]| {
            let (config, csr, pem, ext) = (p("ca.cnf"), p(csr), p(pem), p(ext));
            let mut args = vec![
                "ca",
                "-batch",
                "-notext",
                "-config",
                &config,
                "-in",
                &csr,
                "-out",
                &pem,
                "-extfile",
                &ext,
                "-startdate",
                &start,
                "-enddate",
                &end,
            ];
            args.extend(how);
            run("openssl", &args);
        };
        key_and_csr("ca.key", "ca.csr", &format!("/CN=rcache test CA {name}"));
        let ca_key = p("ca.key");
        sign(
            "ca.csr",
            "ca.pem",
            "ca-ext.cnf",
            &["-selfsign", "-keyfile", &ca_key],
        );
        key_and_csr("node.key", "node.csr", "/CN=rcache node");
        let ca_pem = p("ca.pem");
        sign(
            "node.csr",
            "node.pem",
            "node-ext.cnf",
            &["-cert", &ca_pem, "-keyfile", &ca_key],
        );
        Pki {
            ca: p("ca.pem"),
            cert: p("node.pem"),
            key: p("node.key"),
        }
    }

    /// The `[tls]` section of a config that uses this PKI.
    pub fn toml(&self, client_auth: bool) -> String {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\nclient_auth = {client_auth}\n",
            self.cert, self.key, self.ca
        )
    }
}

/// libfaketime (Debian's `faketime`), which shifts a process's wall clock:
/// the environment that starts a daemon with its clock `offset` off (e.g.
/// `"-10s"`). `None`, with a message, when it is not installed; under
/// `CI=true` that fails the test instead.
pub fn skewed_clock(offset: &str) -> Option<Vec<(&'static str, String)>> {
    const LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    if !std::path::Path::new(LIB).exists() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must run the clock-skew tests: install faketime"
        );
        eprintln!("SKIPPED: clock-skew test needs libfaketime (apt install faketime)");
        return None;
    }
    Some(vec![
        ("LD_PRELOAD", LIB.to_string()),
        ("FAKETIME", offset.to_string()),
        // Timers and timeouts keep the true monotonic clock.
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ])
}

/// An orchestrator whose wall clock is `offset` off (see [`skewed_clock`]).
/// An orchestrator on a port the kernel picks, its clock skewed by `env`.
pub fn orchestrator_skewed(workers: &[u16], env: &[(&'static str, String)]) -> Daemon {
    let mut args = vec!["--listen".to_string(), "127.0.0.1:0".to_string()];
    for w in workers {
        args.push("127.0.0.1".into());
        args.push(w.to_string());
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut d = Daemon::start_with_env(
        "orchestrator-skewed",
        env!("CARGO_BIN_EXE_rcache-orchestrator"),
        &args,
        0,
        &env,
    );
    d.wait_ready();
    d
}
