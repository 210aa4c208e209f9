//! Process plumbing shared by the binaries: logging to stderr, signals
//! (SIGTERM/SIGINT: shutdown; SIGHUP: reload), and systemd notifications
//! ([`notify`]). Only this module knows signal numbers.

pub mod args;
pub mod notify;

use crate::shutdown::ShutdownTrigger;

/// Exit statuses (systemd units use `RestartPreventExitStatus=2`).
pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_CONFIG: i32 = 2;

/// Changes the log level of a running daemon.
pub type LogLevelHandle = tracing_subscriber::reload::Handle<
    tracing_subscriber::filter::LevelFilter,
    tracing_subscriber::Registry,
>;

/// Says at start what the daemon's tokens leave open: a token sent in
/// the clear on links, and links that the clients' token opens.
pub fn warn_about_tokens(server: &crate::net::ServerConfig) {
    if server.cluster.is_some() && server.tls.client.is_none() {
        tracing::warn!(
            "a token is set but tls.ca is not: this daemon sends it in the clear on its links; \
             set [tls] ca (and cert/key) to encrypt them"
        );
    }
    if server.auth.is_some() && !server.roles() {
        tracing::warn!(
            "auth_token is set but cluster_token is not: links take auth_token, so any client \
             holding it can open a link (refill a whole worker, write any version); set \
             cluster_token on every daemon to keep links to daemons"
        );
    }
}

/// Logs go to stderr, where journald picks them up. The level can change
/// later through the returned handle (a reload).
pub fn init_logging(level: tracing::Level) -> Option<LogLevelHandle> {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(
        tracing_subscriber::filter::LevelFilter::from_level(level),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    // Under systemd, journald stamps every line itself.
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
    };
    result.ok().map(|()| handle)
}

/// Triggers `trigger` on the first SIGTERM or SIGINT (`rcache local`).
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

/// A validated config delivered to a running daemon by a reload (SIGHUP).
/// The daemon applies what can change live, then drops `done` (or sends
/// on it), after which READY=1 goes to systemd.
pub struct Reload<C> {
    pub config: C,
    pub done: tokio::sync::oneshot::Sender<()>,
}

/// What a running daemon gets besides its config.
pub struct Context<C> {
    pub shutdown: crate::shutdown::Shutdown,
    pub reloads: tokio::sync::mpsc::Receiver<Reload<C>>,
}

/// The shared `main` of both daemons: config errors exit 2 with every
/// problem listed, `--print-config` / `--check-config` exit 0, otherwise
/// logging starts and `run` (given the validated config, a shutdown wired
/// to SIGTERM/SIGINT, and the reloads SIGHUP brings) returns the exit
/// status.
///
/// SIGHUP: RELOADING=1; `load` reads the config again (same file,
/// environment and flags) and it is validated; a bad one is refused with
/// its problems logged and the running config stays in force; a good one
/// changes the log level, goes to `run` to apply the rest of
/// `R::LIVE_KEYS`, and every other changed key is logged as needing a
/// restart; READY=1 either way.
pub fn main_with<R, C, L, V, F, Fut>(
    name: &'static str,
    common: &crate::config::CommonFlags,
    load: L,
    validate: V,
    run: F,
) -> !
where
    R: crate::config::RawConfig + Send + 'static,
    C: Send + 'static,
    L: Fn() -> Result<R, crate::config::ConfigError> + Send + 'static,
    V: Fn(&R) -> Result<(C, tracing::Level), crate::config::ConfigError> + Send + 'static,
    F: FnOnce(C, Context<C>) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let (raw, config, level) = match load().and_then(|raw| validate(&raw).map(|(c, l)| (raw, c, l)))
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
    let log_level = init_logging(level);
    // One thread: a single-threaded runtime, where a task waking another
    // costs no cross-thread wake-up (the orchestrator's default; a proxy
    // spends most of its time handing requests between tasks).
    let built = match raw.runtime_threads() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            std::process::exit(EXIT_RUNTIME);
        }
    };
    let code = runtime.block_on(async move {
        let (trigger, shutdown) = crate::shutdown::shutdown_channel();
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(1);
        let signals = Signals {
            name,
            started: raw.clone(),
            in_force: raw,
            load,
            validate,
            log_level,
            reload_tx,
        };
        if let Err(e) = signals.install(trigger) {
            tracing::error!("cannot install signal handlers: {e}");
            return EXIT_RUNTIME;
        }
        notify::spawn_watchdog(shutdown.clone());
        let code = run(config, Context { shutdown, reloads }).await;
        tracing::info!("stopped");
        code
    });
    std::process::exit(code);
}

struct Signals<R, C, L, V> {
    name: &'static str,
    /// The config the process started with: what restart-only keys hold.
    started: R,
    /// The config last applied: what live keys hold.
    in_force: R,
    load: L,
    validate: V,
    log_level: Option<LogLevelHandle>,
    reload_tx: tokio::sync::mpsc::Sender<Reload<C>>,
}

impl<R, C, L, V> Signals<R, C, L, V>
where
    R: crate::config::RawConfig + Send + 'static,
    C: Send + 'static,
    L: Fn() -> Result<R, crate::config::ConfigError> + Send + 'static,
    V: Fn(&R) -> Result<(C, tracing::Level), crate::config::ConfigError> + Send + 'static,
{
    /// SIGTERM/SIGINT trigger the shutdown (STOPPING=1); SIGHUP reloads.
    fn install(mut self, trigger: ShutdownTrigger) -> std::io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                    _ = hup.recv() => {
                        self.reload().await;
                        continue;
                    }
                };
                tracing::info!("{name} received: finishing in-flight requests, then exiting");
                notify::stopping();
                trigger.trigger();
                return;
            }
        });
        Ok(())
    }

    async fn reload(&mut self) {
        notify::reloading();
        tracing::info!("SIGHUP received: reloading the config");
        let checked = (self.load)().and_then(|raw| (self.validate)(&raw).map(|(c, l)| (raw, c, l)));
        let outcome = match checked {
            Err(e) => {
                let problems = e.to_string();
                tracing::error!(
                    "{}: reload refused, the running config stays in force: {}",
                    self.name,
                    problems.trim_end().replace('\n', "; ")
                );
                "reload refused: the running config stays in force (see the log)".to_string()
            }
            Ok((raw, config, level)) => {
                let live: Vec<&str> = crate::config::changed_keys(&self.in_force, &raw)
                    .into_iter()
                    .filter(|k| R::LIVE_KEYS.contains(k))
                    .collect();
                let restart: Vec<&str> = crate::config::changed_keys(&self.started, &raw)
                    .into_iter()
                    .filter(|k| !R::LIVE_KEYS.contains(k))
                    .collect();
                if let Some(handle) = &self.log_level {
                    let filter = tracing_subscriber::filter::LevelFilter::from_level(level);
                    if let Err(e) = handle.modify(|f| *f = filter) {
                        tracing::warn!(error = %e, "cannot change the log level");
                    }
                }
                let (done, applied) = tokio::sync::oneshot::channel();
                if self.reload_tx.send(Reload { config, done }).await.is_ok() {
                    let _ = applied.await;
                }
                for key in &restart {
                    tracing::warn!(
                        key,
                        "{key} changed in the config: it takes effect at the next restart"
                    );
                }
                tracing::info!(applied = ?live, needs_restart = ?restart, "config reloaded");
                self.in_force = raw;
                if live.is_empty() && restart.is_empty() {
                    "reloaded: nothing changed".to_string()
                } else {
                    format!("reloaded: applied {live:?}; needs a restart: {restart:?}")
                }
            }
        };
        notify::reloaded(&outcome);
    }
}

/// [`crate::metrics::spawn`] for a daemon's `run`: logs a failure and gives
/// the exit status.
pub async fn spawn_metrics_or_exit(
    address: &str,
    exporter: std::sync::Arc<dyn crate::metrics::Exporter>,
    shutdown: crate::shutdown::Shutdown,
) -> Result<std::net::SocketAddr, i32> {
    crate::metrics::spawn(address, exporter, shutdown)
        .await
        .map_err(|e| {
            tracing::error!("{e}");
            EXIT_RUNTIME
        })
}
