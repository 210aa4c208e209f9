//! `rcache local`: an orchestrator and two worker pairs on loopback, in this
//! one process, with the defaults of a fresh install. Ctrl-C stops them all
//! (in-flight requests finish first).

use crate::config::units::Scalar;
use crate::config::{RawOrchestrator, RawWorker};
use crate::orchestrator;
use crate::shutdown::shutdown_channel;
use crate::worker;

/// Worker pairs `rcache local` runs.
pub const LOCAL_PAIRS: u16 = 2;

#[derive(Debug, clap::Args)]
pub struct LocalArgs {
    /// Client port; workers take the next four, metrics base+100 on.
    #[arg(long, default_value_t = 7000)]
    pub base_port: u16,
    /// Memory per worker.
    #[arg(long, default_value = "256MiB")]
    pub max_memory: String,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

pub async fn run(args: LocalArgs) -> i32 {
    let level = args.log_level.parse().unwrap_or(tracing::Level::INFO);
    crate::daemon::init_logging(level);
    let base = args.base_port;
    if u32::from(base) + 100 + 2 * u32::from(LOCAL_PAIRS) > u32::from(u16::MAX) {
        eprintln!("rcache local: --base-port {base} leaves no room for the worker ports");
        return 2;
    }
    let addr = |offset: u16| format!("127.0.0.1:{}", base + offset);
    let mut workers = Vec::new();
    for i in 1..=2 * LOCAL_PAIRS {
        let partner = if i % 2 == 1 { i + 1 } else { i - 1 };
        let raw = RawWorker {
            listen: addr(i),
            partner: Some(addr(partner)),
            metrics_listen: addr(100 + i),
            max_memory: Scalar::Str(args.max_memory.clone()),
            // Served on this process's runtime, which every worker and the
            // orchestrator share: no connection loops of their own.
            threads: 1,
            ..RawWorker::default()
        };
        let config = match raw.validate() {
            Ok((config, _)) => config,
            Err(e) => {
                eprintln!("rcache local: --max-memory: {e}");
                return 2;
            }
        };
        match worker::bind(config).await {
            Ok(bound) => workers.push(bound),
            Err(e) => return port_taken(e),
        }
    }
    let pairs: Vec<[String; 2]> = (0..LOCAL_PAIRS)
        .map(|p| [addr(2 * p + 1), addr(2 * p + 2)])
        .collect();
    let raw = RawOrchestrator {
        listen: addr(0),
        metrics_listen: addr(100),
        workers: pairs.iter().map(|p| p.to_vec()).collect(),
        ..RawOrchestrator::default()
    };
    let config = match raw.validate() {
        Ok((config, _)) => config,
        Err(e) => {
            eprintln!("rcache local: {e}");
            return 2;
        }
    };
    let orchestrator = match orchestrator::bind(config).await {
        Ok(b) => b,
        Err(e) => return port_taken(e),
    };
    let (trigger, shutdown) = shutdown_channel();
    if let Err(e) = crate::daemon::shutdown_on_signals(trigger) {
        eprintln!("rcache local: cannot install signal handlers: {e}");
        return 1;
    }
    let mut tasks = Vec::new();
    let (ready, mut readied) = tokio::sync::mpsc::channel::<()>(workers.len());
    for (i, w) in workers.into_iter().enumerate() {
        let metrics = addr(101 + i as u16);
        if let Err(e) = crate::metrics::spawn(&metrics, w.worker.clone(), shutdown.clone()).await {
            return port_taken(e);
        }
        let ready = ready.clone();
        tasks.push(tokio::spawn(w.run(shutdown.clone(), move |_| {
            let _ = ready.try_send(());
        })));
    }
    if let Err(e) =
        crate::metrics::spawn(&addr(100), orchestrator.router.clone(), shutdown.clone()).await
    {
        return port_taken(e);
    }
    let client = orchestrator.local_addr;
    let router = orchestrator.router.clone();
    tasks.push(tokio::spawn(orchestrator.run(shutdown.clone())));
    // The address is printed once a request would be served: every worker
    // refilled and the orchestrator seeing each one take reads.
    drop(ready);
    let settled = async {
        for _ in 0..2 * LOCAL_PAIRS {
            if readied.recv().await.is_none() {
                return;
            }
        }
        while !router.topology().all_serving() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let mut stop = shutdown.clone();
    tokio::select! {
        _ = settled => {}
        _ = stop.wait() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            eprintln!("rcache local: the workers are not all serving after 30 s; starting anyway");
        }
    }
    let pairs: Vec<String> = pairs
        .iter()
        .map(|p| format!("({}, {})", p[0], p[1]))
        .collect();
    println!(
        "rcache local: orchestrator on {client}, worker pairs {}",
        pairs.join(" ")
    );
    println!("connect with:  rcache set greeting hello && rcache get greeting");
    println!(
        "          or:  nc {} {}   (then type get||greeting)",
        client.ip(),
        client.port()
    );
    println!(
        "metrics:      http://{}/metrics (orchestrator), ports {}-{} (workers)",
        addr(100),
        base + 101,
        base + 100 + 2 * LOCAL_PAIRS
    );
    println!("stop with Ctrl-C");
    for t in tasks {
        let _ = t.await;
    }
    println!("rcache local: stopped");
    0
}

fn port_taken(e: std::io::Error) -> i32 {
    eprintln!("rcache local: {e}\n(stop whatever uses it, or move the cluster with --base-port)");
    1
}
