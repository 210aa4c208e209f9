//! The daemons' command lines (parsed by the thin `bin/` mains; here so the
//! man pages are generated from the same definitions).

use crate::config::{CommonFlags, OrchestratorFlags, TlsFlags, WorkerFlags};

#[derive(clap::Parser)]
#[command(
    name = "rcache-worker",
    version,
    about = "rcache worker: holds entries in memory; partners hold the same data",
    after_help = "Signals: SIGHUP reloads the config (idle_timeout, max_memory and log_level \
                  change live), SIGTERM finishes in-flight requests and exits 0. Exit status 2: \
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
                  reloads the config (workers, idle_timeout and log_level change live), SIGTERM finishes in-flight requests and exits 0. Exit status 2: the \
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
