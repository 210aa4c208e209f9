//! `rcache-orchestrator`: the stateless proxy; see `rcache::orchestrator`.

use clap::Parser;
use rcache::config::{
    self, CommonFlags, OrchestratorFlags, OrchestratorOverrides, RawOrchestrator,
};
use rcache::daemon::{self, EXIT_OK, EXIT_RUNTIME};

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
    let loaded = (if args.workers.is_empty() {
        Ok(None)
    } else {
        config::pairs_from_args(&args.workers).map(Some)
    })
    .and_then(|workers| {
        let overrides = OrchestratorOverrides {
            flags: &args.flags,
            workers,
        };
        config::load::<RawOrchestrator>(args.common.config.as_deref(), &overrides)
    });
    daemon::main_with(
        "rcache-orchestrator",
        &args.common,
        loaded,
        RawOrchestrator::validate,
        |config, shutdown| async move {
            let bound = match rcache::orchestrator::bind(config.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("{e}");
                    return EXIT_RUNTIME;
                }
            };
            let pairs: Vec<String> = config.pairs.iter().map(|p| p.join(",")).collect();
            println!(
                "rcache-orchestrator ready listen={} pairs={}",
                bound.local_addr,
                pairs.join(";")
            );
            tracing::info!(listen = %bound.local_addr, "ready");
            bound.run(shutdown).await;
            EXIT_OK
        },
    )
}
