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
