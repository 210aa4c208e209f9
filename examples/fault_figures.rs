//! Fault-tolerance figures, measured on real processes over loopback (a
//! benchmark, not a test: it asserts nothing about speed). Run:
//!
//! ```sh
//! cargo build --release && cargo run --release --example fault_figures
//! ```
//!
//! 1. Refill: 1,000,000 entries (16-byte keys, 100-byte values) stream from
//!    a worker to its returning partner, while a reader keeps asking the
//!    source: refill time and rate, and the reader's latency before and
//!    during the refill.
//! 2. Failover: clients read and write through the orchestrator; a worker is
//!    killed (-9): failed requests, and p50/p99 latency before and in the
//!    two seconds after the kill.
//! 3. Catch-up: a worker frozen (SIGSTOP) for 5 s under writes, then
//!    continued: time until both partners hold identical data.
//! 4. Single-copy window: a write acknowledged while the partner is down
//!    lives on one worker only until the partner is back and has it: how
//!    long after the partner's return that takes.
//! 5. A full cache cut: two workers at 32 MiB holding what is left of
//!    1,000,000 writes (both evict), one frozen for 10 s under writes: time
//!    until the partners hold the same keys again
//!    (`cargo run --release --example fault_figures full-cache` runs only
//!    this one).
//!
//! Binaries are taken from the folder this example was built into
//! (`target/release`).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(|p| p.parent())
        .ok_or("cannot find the target folder")?;
    let path = dir.join(name);
    if !path.is_file() {
        return Err(format!(
            "{} is missing: run cargo build --release first",
            path.display()
        )
        .into());
    }
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, args: &[String], wait_ready: bool) -> Result<Proc> {
        let log =
            std::env::temp_dir().join(format!("rcache-figures-{name}-{}.log", std::process::id()));
        let mut child = Command::new(bin(name)?)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                let _ = tx.send(line);
            }
        });
        if wait_ready {
            let line = rx.recv_timeout(Duration::from_secs(120))?;
            if !line.contains(" ready ") {
                return Err(format!("{name}: {line}").into());
            }
        }
        std::mem::forget(rx);
        Ok(Proc { child, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn worker(port: u16, partner: u16, wait_ready: bool) -> Result<Proc> {
    worker_with_memory(port, partner, wait_ready, "4GiB")
}

fn worker_with_memory(port: u16, partner: u16, wait_ready: bool, memory: &str) -> Result<Proc> {
    Proc::start(
        "rcache-worker",
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--partner".into(),
            format!("127.0.0.1:{partner}"),
            "--max-memory".into(),
            memory.into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ],
        wait_ready,
    )
}

fn orchestrator(port: u16, workers: &[u16]) -> Result<Proc> {
    let mut args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{port}"),
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ];
    for w in workers {
        args.push("127.0.0.1".into());
        args.push(w.to_string());
    }
    Proc::start("rcache-orchestrator", &args, true)
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn new(port: u16) -> Result<Conn> {
        let w = TcpStream::connect(("127.0.0.1", port))?;
        w.set_nodelay(true)?;
        w.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            r: BufReader::new(w.try_clone()?),
            w,
        })
    }

    fn req(&mut self, line: &str) -> Result<String> {
        self.w.write_all(format!("{line}\n").as_bytes())?;
        let mut out = String::new();
        if self.r.read_line(&mut out)? == 0 {
            return Err("closed".into());
        }
        Ok(out.trim_end().to_string())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn fill(port: u16, n: usize) -> Result<()> {
    let mut w = TcpStream::connect(("127.0.0.1", port))?;
    let mut r = BufReader::new(w.try_clone()?);
    let value = "v".repeat(100);
    let batch = 20_000;
    let mut line = String::new();
    for start in (0..n).step_by(batch) {
        let mut out = String::with_capacity(batch * 130);
        for i in start..(start + batch).min(n) {
            out.push_str(&format!("set||key:{i:012}||{value}\n"));
        }
        w.write_all(out.as_bytes())?;
        for _ in start..(start + batch).min(n) {
            line.clear();
            r.read_line(&mut line)?;
        }
    }
    Ok(())
}

/// A reader asking `port` for known keys until stopped; its latencies.
fn reader(port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<(Instant, Duration)>> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let Ok(mut c) = Conn::new(port) else {
            return out;
        };
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i = (i + 7919) % 1_000_000;
            let t = Instant::now();
            if c.req(&format!("get||key:{i:012}")).is_err() {
                break;
            }
            out.push((t, t.elapsed()));
        }
        out
    })
}

fn refill_figures() -> Result<()> {
    const N: usize = 1_000_000;
    let (a, b) = (free_port()?, free_port()?);
    let source = worker(a, b, true)?;
    let filled = Instant::now();
    fill(a, N)?;
    println!(
        "refill: {N} entries of 100 bytes written to the source in {:?}",
        filled.elapsed()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let reads = reader(a, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let returning = worker(b, a, true)?;
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let reads = reads.join().map_err(|_| "reader panicked")?;
    let log = returning.log();
    let line = log
        .lines()
        .find(|l| l.contains("refilled from the partner"))
        .unwrap_or("(no refill line)");
    println!(
        "refill: returning worker ready {ready:?} after start; its log: {}",
        line.trim()
    );
    let (mut before, mut during): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    for (t, d) in reads {
        if t < started {
            before.push(d);
        } else if t < started + ready {
            during.push(d);
        }
    }
    before.sort();
    during.sort();
    println!(
        "refill: source kept serving: {} reads/s before (p99 {:?}), {} reads/s during (p99 {:?})",
        before.len(),
        percentile(&before, 0.99),
        (during.len() as f64 / ready.as_secs_f64()) as u64,
        percentile(&during, 0.99)
    );
    drop(source);
    Ok(())
}

fn failover_figures() -> Result<()> {
    let (a, b, o) = (free_port()?, free_port()?, free_port()?);
    let wa = worker(a, b, true)?;
    let _wb = worker(b, a, true)?;
    let _orch = orchestrator(o, &[a, b])?;
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0u64));
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (stop, samples, failed) = (stop.clone(), samples.clone(), failed.clone());
            std::thread::spawn(move || {
                let Ok(mut c) = Conn::new(o) else { return };
                let mut n = 0u64;
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let line = if n % 2 == 0 {
                        format!("set||c{t}:{}||value-{n}", n % 1000)
                    } else {
                        format!("get||c{t}:{}", (n - 1) % 1000)
                    };
                    let t0 = Instant::now();
                    match c.req(&line) {
                        Ok(r) if r.starts_with("0||") || r.starts_with("2||") => {
                            local.push((t0, t0.elapsed()))
                        }
                        _ => *failed.lock().unwrap_or_else(|p| p.into_inner()) += 1,
                    }
                }
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(local);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let killed = Instant::now();
    drop(wa);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    let mut steady: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t < killed)
        .map(|s| s.1)
        .collect();
    let mut after: Vec<Duration> = samples
        .iter()
        .filter(|(t, _)| *t >= killed && *t < killed + Duration::from_secs(2))
        .map(|s| s.1)
        .collect();
    steady.sort();
    after.sort();
    let failed = *failed.lock().unwrap_or_else(|p| p.into_inner());
    println!(
        "failover: {} requests, {failed} failed; steady p50 {:?} p99 {:?}; first 2s after kill -9: p50 {:?} p99 {:?} max {:?} ({:.1}x steady p99)",
        samples.len(),
        percentile(&steady, 0.5),
        percentile(&steady, 0.99),
        percentile(&after, 0.5),
        percentile(&after, 0.99),
        after.last().copied().unwrap_or_default(),
        percentile(&after, 0.99).as_secs_f64() / percentile(&steady, 0.99).as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn status(port: u16) -> Result<String> {
    Conn::new(port)?.req("cluster")
}

fn digest(port: u16) -> Result<String> {
    let s = status(port)?;
    Ok(s.split_whitespace()
        .find(|f| f.starts_with("digest="))
        .unwrap_or("")
        .to_string())
}

fn catch_up_figures() -> Result<()> {
    let (a, b, o) = (free_port()?, free_port()?, free_port()?);
    let wa = worker(a, b, true)?;
    let _wb = worker(b, a, true)?;
    let _orch = orchestrator(o, &[a, b])?;
    let mut c = Conn::new(o)?;
    wa.signal("-STOP");
    let frozen = Instant::now();
    let mut n = 0;
    while frozen.elapsed() < Duration::from_secs(5) {
        c.req(&format!("set||frozen:{n}||{n}"))?;
        n += 1;
    }
    wa.signal("-CONT");
    let continued = Instant::now();
    while digest(a)? != digest(b)? {
        if continued.elapsed() > Duration::from_secs(60) {
            return Err("no convergence within 60s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "catch-up: {n} writes during a 5s freeze; partners identical {:?} after SIGCONT",
        continued.elapsed()
    );
    // The single-copy window: the partner is down, a write is acknowledged
    // by one worker; how long after the partner's return it has the write.
    drop(wa);
    std::thread::sleep(Duration::from_millis(1500));
    let acked = Instant::now();
    assert_eq!(c.req("set||single-copy||1")?, "0||");
    std::thread::sleep(Duration::from_secs(2));
    let back = Instant::now();
    let _wa = worker(a, b, true)?;
    let mut direct = Conn::new(a)?;
    while direct.req("get||single-copy")? != "0||1" {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "single-copy window: the write lived on one worker for {:?}: the 2s the partner was down, then {:?} from the partner's start until it served the write",
        acked.elapsed(),
        back.elapsed()
    );
    Ok(())
}

/// A full cache (two workers at 32 MiB, 1,000,000 keys written through
/// the orchestrator, so both evict), one worker frozen for 10 s under
/// writes, as cut off from everyone: the time from SIGCONT until both
/// partners hold the same keys and versions (equal digests).
fn full_cache_partition_figures() -> Result<()> {
    let (a, b, o) = (free_port()?, free_port()?, free_port()?);
    let wa = worker_with_memory(a, b, true, "32MiB")?;
    let _wb = worker_with_memory(b, a, true, "32MiB")?;
    let _orch = orchestrator(o, &[a, b])?;
    fill(o, 1_000_000)?;
    let mut c = Conn::new(o)?;
    wa.signal("-STOP");
    let frozen = Instant::now();
    let mut n = 0;
    while frozen.elapsed() < Duration::from_secs(10) {
        c.req(&format!("set||cut:{n}||{n}"))?;
        n += 1;
    }
    wa.signal("-CONT");
    let continued = Instant::now();
    while digest(a)? != digest(b)? {
        if continued.elapsed() > Duration::from_secs(120) {
            return Err("no convergence within 120s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let entries = |port| -> Result<String> {
        Ok(status(port)?
            .split_whitespace()
            .find(|f| f.starts_with("entries="))
            .unwrap_or("")
            .to_string())
    };
    println!(
        "full cache: {n} writes during a 10s freeze; partners identical {:?} after SIGCONT ({} / {})",
        continued.elapsed(),
        entries(a)?,
        entries(b)?
    );
    Ok(())
}

fn main() -> Result<()> {
    println!(
        "rcache fault figures ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `fault_figures full-cache` measures only the full-cache partition.
    if std::env::args().nth(1).as_deref() == Some("full-cache") {
        return full_cache_partition_figures();
    }
    refill_figures()?;
    failover_figures()?;
    catch_up_figures()?;
    full_cache_partition_figures()?;
    Ok(())
}
