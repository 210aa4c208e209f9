//! Process plumbing shared by the binaries: logging to stderr, and signals
//! turned into a shutdown. Only this module knows signal numbers.

use crate::net::ShutdownTrigger;

/// Exit statuses (systemd units use `RestartPreventExitStatus=2`).
pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

/// Logs go to stderr, where journald picks them up.
pub fn init_logging(level: tracing::Level) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false)
        .try_init();
}

/// Triggers `trigger` on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals(trigger: ShutdownTrigger) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received: finishing in-flight requests, then exiting");
        trigger.trigger();
    });
    Ok(())
}

/// The shared `main` of both daemons: config errors exit 2 with every
/// problem listed, `--print-config` / `--check-config` exit 0, otherwise
/// logging starts and `run` (given the validated config and a shutdown
/// wired to SIGTERM/SIGINT) returns the exit status.
pub fn main_with<R, C, F, Fut>(
    name: &str,
    common: &crate::config::CommonFlags,
    loaded: Result<R, crate::config::ConfigError>,
    validate: impl FnOnce(&R) -> Result<(C, tracing::Level), crate::config::ConfigError>,
    run: F,
) -> !
where
    R: serde::Serialize,
    F: FnOnce(C, crate::net::Shutdown) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let (raw, config, level) = match loaded.and_then(|raw| validate(&raw).map(|(c, l)| (raw, c, l)))
    {
        Ok(v) => v,
        Err(e) => {
            eprint!("{name}: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if common.print_config {
        print!("{}", crate::config::to_toml(&raw));
        std::process::exit(EXIT_OK);
    }
    if common.check_config {
        std::process::exit(EXIT_OK);
    }
    init_logging(level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        let (trigger, shutdown) = crate::net::shutdown_channel();
        if let Err(e) = shutdown_on_signals(trigger) {
            tracing::error!("cannot install signal handlers: {e}");
            return EXIT_RUNTIME;
        }
        let code = run(config, shutdown).await;
        tracing::info!("stopped");
        code
    });
    std::process::exit(code);
}
