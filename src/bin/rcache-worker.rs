//! `rcache-worker`: stores entries in memory and serves them; see `rcache::worker`.

use clap::Parser;
use rcache::config::{self, CommonFlags, RawWorker, WorkerFlags};
use rcache::daemon::{self, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME};
use rcache::net::shutdown_channel;

#[derive(Parser)]
#[command(
    version,
    about = "rcache worker: holds entries in memory; partners hold the same data"
)]
struct Args {
    #[command(flatten)]
    common: CommonFlags,
    #[command(flatten)]
    flags: WorkerFlags,
}

fn main() {
    let args = Args::parse();
    let raw: RawWorker = match config::load(args.common.config.as_deref(), &args.flags) {
        Ok(raw) => raw,
        Err(e) => exit_config(e),
    };
    let (config, level) = match raw.validate() {
        Ok(c) => c,
        Err(e) => exit_config(e),
    };
    if args.common.print_config {
        print!("{}", config::to_toml(&raw));
        std::process::exit(EXIT_OK);
    }
    if args.common.check_config {
        std::process::exit(EXIT_OK);
    }
    daemon::init_logging(level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rcache-worker: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        let bound = match rcache::worker::bind(config.clone()).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!("{e}");
                return EXIT_RUNTIME;
            }
        };
        let (trigger, shutdown) = shutdown_channel();
        if let Err(e) = daemon::shutdown_on_signals(trigger) {
            tracing::error!("cannot install signal handlers: {e}");
            return EXIT_RUNTIME;
        }
        let listen = bound.local_addr;
        let partner = config.partner.clone().unwrap_or_else(|| "none".into());
        bound
            .run(shutdown, |worker| {
                tracing::info!(%listen, entries = worker.store.len(), "ready");
                println!("rcache-worker ready listen={listen} partner={partner}");
            })
            .await;
        tracing::info!("stopped");
        EXIT_OK
    });
    std::process::exit(code);
}

fn exit_config(e: config::ConfigError) -> ! {
    eprint!("rcache-worker: {e}");
    std::process::exit(EXIT_CONFIG);
}
