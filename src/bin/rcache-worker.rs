//! `rcache-worker`: stores entries in memory and serves them; see `rcache::worker`.

use clap::Parser;
use rcache::config::{self, CommonFlags, RawWorker, WorkerFlags};
use rcache::daemon::{self, EXIT_OK, EXIT_RUNTIME};

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
    let loaded = config::load::<RawWorker>(args.common.config.as_deref(), &args.flags);
    daemon::main_with(
        "rcache-worker",
        &args.common,
        loaded,
        RawWorker::validate,
        |config, shutdown| async move {
            let bound = match rcache::worker::bind(config.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("{e}");
                    return EXIT_RUNTIME;
                }
            };
            let listen = bound.local_addr;
            let partner = config.partner.unwrap_or_else(|| "none".into());
            bound
                .run(shutdown, |worker| {
                    tracing::info!(%listen, entries = worker.store.len(), "ready");
                    println!("rcache-worker ready listen={listen} partner={partner}");
                })
                .await;
            EXIT_OK
        },
    )
}
