//! `rcache-worker`: stores entries in memory and serves them; see `rcache::worker`.

#![forbid(unsafe_code)]

use rcache::config::{self, RawWorker};
use rcache::daemon::{self, notify, EXIT_OK, EXIT_RUNTIME};
use rcache::protocol::link::WorkerState;

fn main() {
    let args = rcache::daemon::args::WorkerArgs::from_command_line();
    let file = args.common.config.clone();
    let flags = args.flags.clone();
    let tls = args.tls.clone();
    let load = move || {
        config::load::<RawWorker>(file.as_deref(), &config::WorkerOverrides::new(&flags, &tls))
    };
    daemon::main_with(
        "rcache-worker",
        &args.common,
        load,
        RawWorker::validate,
        |config, mut ctx| async move {
            daemon::warn_about_tokens(&config.server);
            let bound = match rcache::worker::bind(config.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("{e}");
                    return EXIT_RUNTIME;
                }
            };
            let worker = bound.worker.clone();
            let metrics = match rcache::daemon::spawn_metrics_or_exit(
                &config.metrics_listen,
                worker.clone(),
                ctx.shutdown.clone(),
            )
            .await
            {
                Ok(addr) => addr,
                Err(code) => return code,
            };
            let w = worker.clone();
            notify::spawn_status(
                move || (w.status_line(), w.state() == WorkerState::Refilling),
                ctx.shutdown.clone(),
            );
            let w = worker.clone();
            tokio::spawn(async move {
                while let Some(reload) = ctx.reloads.recv().await {
                    // Lowering max_memory may evict many entries: off the
                    // runtime's threads.
                    let worker = w.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || worker.reload(&reload.config)).await;
                    let _ = reload.done.send(());
                }
            });
            let listen = bound.local_addr;
            let partner = config.partner.unwrap_or_else(|| "none".into());
            bound
                .run(ctx.shutdown, |worker| {
                    tracing::info!(%listen, %metrics, entries = worker.store.len(), "ready");
                    println!(
                        "rcache-worker ready listen={listen} partner={partner} metrics={metrics}"
                    );
                    notify::ready(&worker.status_line());
                })
                .await;
            EXIT_OK
        },
    )
}
