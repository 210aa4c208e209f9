//! Configuration: built-in defaults < TOML file (`--config`) < `RCACHE_*`
//! environment < command-line flags, merged by figment into a raw struct that
//! refuses unknown keys, then validated into each component's typed config.
//! Validation reports every problem at once, each with its key, its value and
//! the reason; binaries exit with status 2 on any of them.

mod flags;
mod raw;
#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests;
pub mod units;
mod validate;

pub use flags::{
    CommonFlags, OrchestratorFlags, OrchestratorOverrides, TlsFlags, WorkerFlags, WorkerOverrides,
};
pub use raw::{RawOrchestrator, RawTls, RawWorker};
pub use validate::pairs_from_args;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{de::DeserializeOwned, Serialize};
use std::path::Path;

pub const ENV_PREFIX: &str = "RCACHE_";

/// Largest `max_key_bytes`: keys travel with a 16-bit length on links.
pub const MAX_KEY_BYTES_LIMIT: u64 = 65_535;
/// Largest `max_value_bytes`: a value must fit a link frame.
pub const MAX_VALUE_BYTES_LIMIT: u64 = 512 << 20;

/// Everything wrong with a configuration, one line each.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> ConfigError {
        ConfigError {
            problems: error.into_iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// A raw config figment can merge: its keys, for filtering the environment.
pub trait RawConfig: Default + Clone + Serialize + DeserializeOwned {
    const KEYS: &'static [&'static str];
    /// Keys a reload (SIGHUP) applies while serving; a change to any other
    /// key is logged as needing a restart.
    const LIVE_KEYS: &'static [&'static str];

    /// Threads of the daemon's runtime: 1 is a single-threaded runtime (no
    /// cross-thread wake-ups), 0 one thread per CPU core.
    fn runtime_threads(&self) -> usize;
}

/// The keys whose values differ between two configs, in `R::KEYS` order.
pub fn changed_keys<R: RawConfig>(old: &R, new: &R) -> Vec<&'static str> {
    let table = |raw: &R| match toml::Value::try_from(raw) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (old, new) = (table(old), table(new));
    R::KEYS
        .iter()
        .copied()
        .filter(|k| old.get(*k) != new.get(*k))
        .collect()
}

impl RawConfig for RawWorker {
    const KEYS: &'static [&'static str] = &[
        "listen",
        "metrics_listen",
        "partner",
        "idle_timeout",
        "request_timeout",
        "max_connections",
        "max_connections_per_source",
        "max_request_buffers",
        "max_key_bytes",
        "max_value_bytes",
        "tombstone_ttl",
        "max_memory",
        "compression",
        "compress_min_bytes",
        "anti_entropy_interval",
        "anti_entropy_lease",
        "refill_wait",
        "threads",
        "log_level",
        "auth_token",
        "cluster_token",
        "tls",
    ];
    const LIVE_KEYS: &'static [&'static str] = &[
        "idle_timeout",
        "request_timeout",
        "max_memory",
        "log_level",
        "tls",
        "partner",
    ];

    /// One: the worker's runtime accepts connections and runs its
    /// background tasks; `threads` connection loops of their own serve the
    /// connections (see [`crate::net::Loops`]).
    fn runtime_threads(&self) -> usize {
        1
    }
}

impl RawConfig for RawOrchestrator {
    const KEYS: &'static [&'static str] = &[
        "listen",
        "metrics_listen",
        "idle_timeout",
        "request_timeout",
        "max_connections",
        "max_connections_per_source",
        "max_request_buffers",
        "max_key_bytes",
        "max_value_bytes",
        "worker_timeout",
        "health_interval",
        "health_timeout",
        "health_failures",
        "max_hint_bytes",
        "workers",
        "threads",
        "log_level",
        "auth_token",
        "cluster_token",
        "tls",
    ];
    const LIVE_KEYS: &'static [&'static str] = &[
        "idle_timeout",
        "request_timeout",
        "workers",
        "log_level",
        "tls",
    ];

    fn runtime_threads(&self) -> usize {
        usize::try_from(self.threads).unwrap_or(usize::MAX)
    }
}

/// Merges defaults, the file, the environment and `flags` (only the flags
/// that were given: `None` fields must be skipped when serialized).
/// Environment variables that name no key of `R` are left alone: the
/// environment is shared with other programs.
pub fn load<R: RawConfig>(file: Option<&Path>, flags: &impl Serialize) -> Result<R, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(R::default()));
    if let Some(path) = file {
        // figment reads a missing file as an empty config: refuse it here.
        if !path.is_file() {
            return Err(ConfigError {
                problems: vec![format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )],
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let env = Env::prefixed(ENV_PREFIX)
        .filter(move |key| {
            let top = key.as_str().split("__").next().unwrap_or("");
            R::KEYS.iter().any(|k| k.eq_ignore_ascii_case(top))
        })
        .split("__");
    figment = figment.merge(env).merge(Serialized::defaults(flags));
    Ok(figment.extract()?)
}

/// Renders a raw config as TOML for `--print-config` (the token redacted).
pub fn to_toml(raw: &impl Serialize) -> String {
    let mut value = match toml::Value::try_from(raw) {
        Ok(v) => v,
        Err(e) => return format!("# cannot render config: {e}\n"),
    };
    for secret in ["auth_token", "cluster_token"] {
        if let Some(token) = value.get_mut(secret) {
            *token = toml::Value::String("<redacted>".into());
        }
    }
    toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}
