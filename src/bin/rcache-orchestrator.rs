//! `rcache-orchestrator`: the stateless proxy; see `rcache::orchestrator`.

use clap::Parser;
use rcache::config::{
    self, CommonFlags, OrchestratorFlags, OrchestratorOverrides, RawOrchestrator,
};
use rcache::daemon::{self, EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME};
use rcache::net::shutdown_channel;

#[derive(Parser)]
#[command(
    version,
    about = "rcache orchestrator: routes every client request to its worker pair",
    after_help = "Workers come as <ip 1> <port 1> ... <ip n> <port n>; workers 1 and 2 are \
                  partners, then 3 and 4, ... (or the `workers` config key)."
)]
struct Args {
    #[command(flatten)]
    common: CommonFlags,
    #[command(flatten)]
    flags: OrchestratorFlags,
    /// Workers as <ip> <port> pairs, overriding the `workers` key.
    #[arg(value_name = "IP PORT")]
    workers: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let workers = if args.workers.is_empty() {
        None
    } else {
        match config::pairs_from_args(&args.workers) {
            Ok(pairs) => Some(pairs),
            Err(e) => exit_config(e),
        }
    };
    let overrides = OrchestratorOverrides {
        flags: &args.flags,
        workers,
    };
    let raw: RawOrchestrator = match config::load(args.common.config.as_deref(), &overrides) {
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
            eprintln!("rcache-orchestrator: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        let bound = match rcache::orchestrator::bind(config.clone()).await {
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
        let workers: Vec<String> = config.pairs.iter().map(|p| p.join(",")).collect();
        println!(
            "rcache-orchestrator ready listen={} pairs={}",
            bound.local_addr,
            workers.join(";")
        );
        tracing::info!(listen = %bound.local_addr, "ready");
        bound.run(shutdown).await;
        tracing::info!("stopped");
        EXIT_OK
    });
    std::process::exit(code);
}

fn exit_config(e: config::ConfigError) -> ! {
    eprint!("rcache-orchestrator: {e}");
    std::process::exit(EXIT_CONFIG);
}
