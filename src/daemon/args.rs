//! The daemons' command lines (parsed by the thin `bin/` mains; here so the
//! man pages are generated from the same definitions).

use crate::config::{
    CommonFlags, OrchestratorFlags, RawOrchestrator, RawWorker, TlsFlags, WorkerFlags,
};
use clap::{CommandFactory, FromArgMatches};
use serde::Serialize;

#[derive(clap::Parser)]
#[command(
    name = "rcache-worker",
    version,
    about = "rcache worker: holds entries in memory; partners hold the same data",
    after_help = "Signals: SIGHUP reloads the config (idle_timeout, request_timeout, max_memory, log_level, \
                  tls and partner change live), SIGTERM finishes in-flight requests and exits 0. Exit status 2: \
                  the config is invalid."
)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub common: CommonFlags,
    #[command(flatten)]
    pub flags: WorkerFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
}

#[derive(clap::Parser)]
#[command(
    name = "rcache-orchestrator",
    version,
    about = "rcache orchestrator: routes every client request to its worker pair",
    after_help = "Workers come as <ip 1> <port 1> ... <ip n> <port n>; workers 1 and 2 are \
                  partners, then 3 and 4, ... (or the `workers` config key). Signals: SIGHUP \
                  reloads the config (workers, idle_timeout, request_timeout and log_level change live), SIGTERM finishes in-flight requests and exits 0. Exit status 2: the \
                  config is invalid."
)]
pub struct OrchestratorArgs {
    #[command(flatten)]
    pub common: CommonFlags,
    #[command(flatten)]
    pub flags: OrchestratorFlags,
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Workers as <ip> <port> pairs, overriding the `workers` key.
    #[arg(value_name = "IP PORT")]
    pub workers: Vec<String>,
}

impl WorkerArgs {
    /// The command line, each flag's help ending in its key's default.
    pub fn cli() -> clap::Command {
        with_defaults(
            <WorkerArgs as CommandFactory>::command(),
            &RawWorker::default(),
        )
    }

    /// Parses the process's arguments (exits with clap's message on a bad one).
    pub fn from_command_line() -> WorkerArgs {
        parse(WorkerArgs::cli())
    }
}

impl OrchestratorArgs {
    /// The command line, each flag's help ending in its key's default.
    pub fn cli() -> clap::Command {
        with_defaults(
            <OrchestratorArgs as CommandFactory>::command(),
            &RawOrchestrator::default(),
        )
    }

    /// Parses the process's arguments (exits with clap's message on a bad one).
    pub fn from_command_line() -> OrchestratorArgs {
        parse(OrchestratorArgs::cli())
    }
}

fn parse<A: FromArgMatches>(cmd: clap::Command) -> A {
    let mut cmd = cmd;
    let matches = cmd.get_matches_mut();
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Appends `[default: V]` to the help of every flag that sets a key of
/// `defaults`, read from the config's own defaults (so the text never
/// drifts from them). A flag left off keeps no default of its own: the
/// file and the environment come under it.
fn with_defaults(cmd: clap::Command, defaults: &impl Serialize) -> clap::Command {
    let Ok(toml::Value::Table(keys)) = toml::Value::try_from(defaults) else {
        return cmd;
    };
    let text: std::collections::HashMap<String, String> = keys
        .into_iter()
        .filter_map(|(key, value)| {
            let shown = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return None,
            };
            Some((key.replace('_', "-"), shown))
        })
        .collect();
    cmd.mut_args(|arg| {
        let Some(shown) = arg.get_long().and_then(|long| text.get(long)) else {
            return arg;
        };
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        let help = format!("{help} [default: {shown}]");
        arg.help(help)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help_of(cmd: &clap::Command, long: &str) -> String {
        cmd.get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_else(|| panic!("no --{long}"))
    }

    #[test]
    fn flag_help_shows_the_config_defaults() {
        let worker = WorkerArgs::cli();
        assert_eq!(
            help_of(&worker, "max-memory"),
            "Memory for stored entries; beyond it entries are evicted [default: 1GiB]"
        );
        assert!(help_of(&worker, "listen")
            .ends_with(&format!("[default: {}]", crate::defaults::WORKER_LISTEN)));
        assert!(!help_of(&worker, "partner").contains("[default"));
        let orchestrator = OrchestratorArgs::cli();
        assert!(help_of(&orchestrator, "worker-timeout").ends_with("[default: 1s]"));
        assert!(help_of(&orchestrator, "threads").ends_with(&format!(
            "[default: {}]",
            crate::defaults::ORCHESTRATOR_THREADS
        )));
        worker.debug_assert();
        orchestrator.debug_assert();
    }
}
