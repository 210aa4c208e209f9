//! `rcache-orchestrator`: the stateless proxy; see `rcache::orchestrator`.

#![forbid(unsafe_code)]

use rcache::config::{self, OrchestratorOverrides, RawOrchestrator};
use rcache::daemon::{self, notify, EXIT_OK, EXIT_RUNTIME};

fn main() {
    let args = rcache::daemon::args::OrchestratorArgs::from_command_line();
    let file = args.common.config.clone();
    let flags = args.flags.clone();
    let tls = args.tls.clone();
    let positional = args.workers.clone();
    let load = move || {
        let workers = if positional.is_empty() {
            None
        } else {
            Some(config::pairs_from_args(&positional)?)
        };
        let overrides = OrchestratorOverrides::new(&flags, workers, &tls);
        config::load::<RawOrchestrator>(file.as_deref(), &overrides)
    };
    daemon::main_with(
        "rcache-orchestrator",
        &args.common,
        load,
        RawOrchestrator::validate,
        |config, mut ctx| async move {
            daemon::warn_about_tokens(&config.server);
            let bound = match rcache::orchestrator::bind(config.clone()).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("{e}");
                    return EXIT_RUNTIME;
                }
            };
            let router = bound.router.clone();
            let metrics = match rcache::daemon::spawn_metrics_or_exit(
                &config.metrics_listen,
                router.clone(),
                ctx.shutdown.clone(),
            )
            .await
            {
                Ok(addr) => addr,
                Err(code) => return code,
            };
            let r = router.clone();
            notify::spawn_status(move || (r.status_line(), false), ctx.shutdown.clone());
            let r = router.clone();
            tokio::spawn(async move {
                while let Some(reload) = ctx.reloads.recv().await {
                    r.reload(&reload.config);
                    let _ = reload.done.send(());
                }
            });
            let mut bound = bound;
            bound.probe(ctx.shutdown.clone()).await;
            let pairs: Vec<String> = config.pairs.iter().map(|p| p.join(",")).collect();
            println!(
                "rcache-orchestrator ready listen={} pairs={} metrics={metrics}",
                bound.local_addr,
                pairs.join(";")
            );
            tracing::info!(listen = %bound.local_addr, %metrics, "ready");
            notify::ready(&router.status_line());
            bound.run(ctx.shutdown).await;
            EXIT_OK
        },
    )
}
