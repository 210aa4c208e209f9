//! Configuration: built-in defaults < TOML file (`--config`) < `RCACHE_*`
//! environment < command-line flags, merged by figment into a raw struct that
//! refuses unknown keys, then validated into each component's typed config.
//! Validation reports every problem at once, each with its key, its value and
//! the reason; binaries exit with status 2 on any of them.

pub mod units;

use crate::defaults;
use crate::net::ServerConfig;
use crate::orchestrator::OrchestratorConfig;
use crate::protocol::Limits;
use crate::worker::store::StoreConfig;
use crate::worker::WorkerConfig;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use units::{check_address, duration_text, parse_duration, parse_size, size_text, Scalar};

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

/// The `[tls]` section (both daemons): PEM paths, and mutual TLS.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_auth: bool,
}

impl RawTls {
    fn files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.ca.clone(),
            client_auth: self.client_auth,
        }
    }
}

/// Keys both daemons take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub listen: String,
    pub metrics_listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    pub idle_timeout: Scalar,
    pub max_connections: u64,
    pub max_key_bytes: Scalar,
    pub max_value_bytes: Scalar,
    pub tombstone_ttl: Scalar,
    pub max_memory: Scalar,
    pub compression: String,
    pub compress_min_bytes: Scalar,
    pub anti_entropy_interval: Scalar,
    pub refill_wait: Scalar,
    pub threads: u64,
    pub log_level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

impl Default for RawWorker {
    fn default() -> RawWorker {
        RawWorker {
            listen: defaults::WORKER_LISTEN.into(),
            metrics_listen: defaults::WORKER_METRICS_LISTEN.into(),
            partner: None,
            idle_timeout: duration_text(defaults::IDLE_TIMEOUT),
            max_connections: defaults::MAX_CONNECTIONS,
            max_key_bytes: Scalar::Int(defaults::MAX_KEY_BYTES),
            max_value_bytes: size_text(defaults::MAX_VALUE_BYTES),
            tombstone_ttl: duration_text(defaults::TOMBSTONE_TTL),
            max_memory: size_text(defaults::MAX_MEMORY),
            compression: defaults::COMPRESSION.into(),
            compress_min_bytes: Scalar::Int(defaults::COMPRESS_MIN_BYTES),
            anti_entropy_interval: duration_text(defaults::ANTI_ENTROPY_INTERVAL),
            refill_wait: duration_text(defaults::REFILL_WAIT),
            threads: defaults::WORKER_THREADS,
            log_level: defaults::LOG_LEVEL.into(),
            auth_token: None,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOrchestrator {
    pub listen: String,
    pub metrics_listen: String,
    pub idle_timeout: Scalar,
    pub max_connections: u64,
    pub max_key_bytes: Scalar,
    pub max_value_bytes: Scalar,
    pub worker_timeout: Scalar,
    pub health_interval: Scalar,
    pub health_timeout: Scalar,
    pub health_failures: u64,
    pub max_hint_bytes: Scalar,
    pub workers: Vec<Vec<String>>,
    pub threads: u64,
    pub log_level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

impl Default for RawOrchestrator {
    fn default() -> RawOrchestrator {
        RawOrchestrator {
            listen: defaults::ORCHESTRATOR_LISTEN.into(),
            metrics_listen: defaults::ORCHESTRATOR_METRICS_LISTEN.into(),
            idle_timeout: duration_text(defaults::IDLE_TIMEOUT),
            max_connections: defaults::MAX_CONNECTIONS,
            max_key_bytes: Scalar::Int(defaults::MAX_KEY_BYTES),
            max_value_bytes: size_text(defaults::MAX_VALUE_BYTES),
            worker_timeout: duration_text(defaults::WORKER_TIMEOUT),
            health_interval: duration_text(defaults::HEALTH_INTERVAL),
            health_timeout: duration_text(defaults::HEALTH_TIMEOUT),
            health_failures: defaults::HEALTH_FAILURES,
            max_hint_bytes: size_text(defaults::MAX_HINT_BYTES),
            workers: Vec::new(),
            threads: defaults::ORCHESTRATOR_THREADS,
            log_level: defaults::LOG_LEVEL.into(),
            auth_token: None,
            tls: None,
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
        "max_connections",
        "max_key_bytes",
        "max_value_bytes",
        "tombstone_ttl",
        "max_memory",
        "compression",
        "compress_min_bytes",
        "anti_entropy_interval",
        "refill_wait",
        "threads",
        "log_level",
        "auth_token",
        "tls",
    ];
    const LIVE_KEYS: &'static [&'static str] = &["idle_timeout", "max_memory", "log_level", "tls"];

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
        "max_connections",
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
        "tls",
    ];
    const LIVE_KEYS: &'static [&'static str] = &["idle_timeout", "workers", "log_level", "tls"];

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

/// Collects validation problems, naming the key and its value.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, key: &str, value: impl std::fmt::Display, reason: impl std::fmt::Display) {
        self.0.push(format!("{key} = {value}: {reason}"));
    }

    fn duration(&mut self, key: &str, value: &Scalar, min: Duration) -> Duration {
        match parse_duration(value) {
            Ok(d) if d < min => {
                self.push(key, value, format!("must be at least {min:?}"));
                min
            }
            Ok(d) => d,
            Err(e) => {
                self.push(key, value, e);
                Duration::ZERO
            }
        }
    }

    fn size(&mut self, key: &str, value: &Scalar, min: u64, max: u64) -> u64 {
        match parse_size(value) {
            Ok(n) if n < min || n > max => {
                self.push(key, value, format!("must be between {min} and {max} bytes"));
                n.clamp(min, max)
            }
            Ok(n) => n,
            Err(e) => {
                self.push(key, value, e);
                min
            }
        }
    }

    fn address(&mut self, key: &str, value: &str) {
        if let Err(e) = check_address(value) {
            self.push(key, format!("{value:?}"), e);
        }
    }

    fn threads(&mut self, threads: u64) {
        if threads > 1024 {
            self.push("threads", threads, "at most 1024 (0 = one per CPU core)");
        }
    }

    fn log_level(&mut self, value: &str) -> tracing::Level {
        match value.parse() {
            Ok(level) => level,
            Err(_) => {
                self.push(
                    "log_level",
                    format!("{value:?}"),
                    "use error, warn, info, debug or trace",
                );
                tracing::Level::INFO
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

fn server(
    p: &mut Problems,
    idle_timeout: &Scalar,
    max_connections: u64,
    max_key_bytes: &Scalar,
    max_value_bytes: &Scalar,
    auth_token: Option<&str>,
    tls: Option<&RawTls>,
) -> ServerConfig {
    let tls = match tls.map(RawTls::files) {
        None => crate::tls::Tls::default(),
        Some(files) if files.is_off() => crate::tls::Tls::default(),
        Some(files) => match files.load() {
            Ok(tls) => tls,
            Err(problems) => {
                p.0.extend(problems);
                crate::tls::Tls::default()
            }
        },
    };
    if max_connections == 0 {
        p.push("max_connections", 0, "must be at least 1");
    }
    let auth = auth_token.and_then(|token| {
        let why = if token.is_empty() {
            Some("must not be empty (leave the key out for no authentication)".to_string())
        } else if token.len() > crate::protocol::link::MAX_TOKEN_BYTES {
            Some(format!(
                "longer than {} bytes",
                crate::protocol::link::MAX_TOKEN_BYTES
            ))
        } else if token.contains(['\n', '\r']) {
            Some("must not contain line breaks".to_string())
        } else {
            None
        };
        match why {
            // The value itself is a secret: never echoed.
            Some(why) => {
                p.push("auth_token", "<redacted>", why);
                None
            }
            None => Some(crate::auth::Secret::new(token.as_bytes())),
        }
    });
    ServerConfig {
        auth,
        tls,
        idle_timeout: p.duration("idle_timeout", idle_timeout, Duration::from_millis(10)),
        max_connections: max_connections.max(1) as usize,
        limits: Limits {
            max_key_bytes: p.size("max_key_bytes", max_key_bytes, 1, MAX_KEY_BYTES_LIMIT) as usize,
            max_value_bytes: p.size("max_value_bytes", max_value_bytes, 1, MAX_VALUE_BYTES_LIMIT)
                as usize,
        },
    }
}

impl RawWorker {
    pub fn validate(&self) -> Result<(WorkerConfig, tracing::Level), ConfigError> {
        let mut p = Problems::default();
        p.address("listen", &self.listen);
        p.address("metrics_listen", &self.metrics_listen);
        if let Some(partner) = &self.partner {
            p.address("partner", partner);
            if partner == &self.listen {
                p.push(
                    "partner",
                    format!("{partner:?}"),
                    "a worker cannot be its own partner",
                );
            }
        }
        let server = server(
            &mut p,
            &self.idle_timeout,
            self.max_connections,
            &self.max_key_bytes,
            &self.max_value_bytes,
            self.auth_token.as_deref(),
            self.tls.as_ref(),
        );
        let compression = match self.compression.as_str() {
            "lz4" => true,
            "none" => false,
            other => {
                p.push(
                    "compression",
                    format!("{other:?}"),
                    "use \"lz4\" or \"none\"",
                );
                false
            }
        };
        let max_memory = p.size("max_memory", &self.max_memory, 1 << 20, u64::MAX);
        let store = StoreConfig {
            max_memory_bytes: usize::try_from(max_memory).unwrap_or(usize::MAX),
            compression,
            compress_min_bytes: p.size("compress_min_bytes", &self.compress_min_bytes, 0, u64::MAX)
                as usize,
            tombstone_ttl: p.duration("tombstone_ttl", &self.tombstone_ttl, Duration::from_secs(1)),
        };
        let anti_entropy_interval = p.duration(
            "anti_entropy_interval",
            &self.anti_entropy_interval,
            Duration::from_millis(50),
        );
        let refill_wait = p.duration("refill_wait", &self.refill_wait, Duration::ZERO);
        p.threads(self.threads);
        let level = p.log_level(&self.log_level);
        p.finish((
            WorkerConfig {
                listen: self.listen.clone(),
                partner: self.partner.clone(),
                metrics_listen: self.metrics_listen.clone(),
                server,
                store,
                anti_entropy_interval,
                refill_wait,
                connection_loops: match self.threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => usize::try_from(n).unwrap_or(usize::MAX),
                },
            },
            level,
        ))
    }
}

impl RawOrchestrator {
    pub fn validate(&self) -> Result<(OrchestratorConfig, tracing::Level), ConfigError> {
        let mut p = Problems::default();
        p.address("listen", &self.listen);
        p.address("metrics_listen", &self.metrics_listen);
        let server = server(
            &mut p,
            &self.idle_timeout,
            self.max_connections,
            &self.max_key_bytes,
            &self.max_value_bytes,
            self.auth_token.as_deref(),
            self.tls.as_ref(),
        );
        let worker_timeout = p.duration(
            "worker_timeout",
            &self.worker_timeout,
            Duration::from_millis(1),
        );
        let health_interval = p.duration(
            "health_interval",
            &self.health_interval,
            Duration::from_millis(10),
        );
        let health_timeout = p.duration(
            "health_timeout",
            &self.health_timeout,
            Duration::from_millis(1),
        );
        if self.health_failures == 0 {
            p.push("health_failures", 0, "must be at least 1");
        }
        p.threads(self.threads);
        let max_hint_bytes = p.size("max_hint_bytes", &self.max_hint_bytes, 0, u64::MAX);
        let mut pairs = Vec::new();
        if self.workers.is_empty() {
            p.0.push(
                "workers: no workers configured: give pairs in the config \
                 (workers = [[\"127.0.0.1:7001\", \"127.0.0.1:7002\"]]) or as arguments \
                 <ip 1> <port 1> <ip 2> <port 2> ..."
                    .into(),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, pair) in self.workers.iter().enumerate() {
            let key = format!("workers[{i}]");
            match pair.as_slice() {
                [a, b] => {
                    p.address(&key, a);
                    p.address(&key, b);
                    for addr in [a, b] {
                        if !seen.insert(addr.clone()) {
                            p.push(&key, format!("{addr:?}"), "a worker may appear only once");
                        }
                    }
                    pairs.push([a.clone(), b.clone()]);
                }
                other => p.push(
                    &key,
                    format!("{other:?}"),
                    "a pair has exactly two workers (partners)",
                ),
            }
        }
        let level = p.log_level(&self.log_level);
        p.finish((
            OrchestratorConfig {
                listen: self.listen.clone(),
                metrics_listen: self.metrics_listen.clone(),
                server,
                worker_timeout,
                health_interval,
                health_timeout,
                health_failures: self.health_failures.clamp(1, u64::from(u32::MAX)) as u32,
                max_hint_bytes: usize::try_from(max_hint_bytes).unwrap_or(usize::MAX),
                pairs,
            },
            level,
        ))
    }
}

/// Turns the seed-style positional arguments `<ip 1> <port 1> ... <ip n>
/// <port n>` into pairs of worker addresses (workers 1 and 2 are partners,
/// then 3 and 4, ...).
pub fn pairs_from_args(args: &[String]) -> Result<Vec<Vec<String>>, ConfigError> {
    let fail = |m: String| Err(ConfigError { problems: vec![m] });
    if args.len() % 2 != 0 {
        return fail(format!(
            "worker arguments come as <ip> <port> pairs; got {} arguments",
            args.len()
        ));
    }
    let workers: Vec<String> = args
        .chunks(2)
        .map(|c| {
            if c[0].contains(':') && !c[0].starts_with('[') {
                format!("[{}]:{}", c[0], c[1])
            } else {
                format!("{}:{}", c[0], c[1])
            }
        })
        .collect();
    if workers.len() % 2 != 0 {
        return fail(format!(
            "workers form partner pairs (1,2), (3,4), ...: got an odd count of {} workers",
            workers.len()
        ));
    }
    Ok(workers.chunks(2).map(|c| c.to_vec()).collect())
}

/// Flags every daemon takes besides its keys.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonFlags {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print nothing, exit 0 (or 2 with the problems).
    #[arg(long)]
    pub check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

macro_rules! flag_struct {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, clap::Args, Serialize)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[arg(long)]
                #[serde(skip_serializing_if = "Option::is_none")]
                pub $field: Option<$ty>,
            )*
        }
    };
}

flag_struct!(
    /// One flag per worker config key.
    WorkerFlags {
        /// Text/RESP protocol address [default: 127.0.0.1:7001]
        listen: String,
        /// Metrics and health HTTP address [default: 127.0.0.1:7101]
        metrics_listen: String,
        /// Address of the partner worker
        partner: String,
        /// Close connections idle this long [default: 300s]
        idle_timeout: String,
        /// Refuse connections beyond this many [default: 10000]
        max_connections: u64,
        /// Longest key [default: 1024]
        max_key_bytes: String,
        /// Longest value [default: 8MiB]
        max_value_bytes: String,
        /// How long a delete is remembered [default: 1h]
        tombstone_ttl: String,
        /// Memory for stored entries; beyond it entries are evicted [default: 1GiB]
        max_memory: String,
        /// "lz4" or "none" [default: lz4]
        compression: String,
        /// Values shorter than this are stored as they are [default: 128]
        compress_min_bytes: String,
        /// How often partners compare their stores and repair differences [default: 2s]
        anti_entropy_interval: String,
        /// How long a starting worker keeps trying to reach an unreachable partner before it starts empty [default: 10s]
        refill_wait: String,
        /// Connection loops (threads) serving clients and links; 0 = one per CPU core, 1 = one thread for everything [default: 0]
        threads: u64,
        /// error, warn, info, debug or trace [default: info]
        log_level: String,
        /// Clients must `auth||<token>` first; links present it too (prefer RCACHE_AUTH_TOKEN: flags show in ps)
        auth_token: String,
    }
);

flag_struct!(
    /// One flag per orchestrator config key (`workers` come as arguments).
    OrchestratorFlags {
        /// Text/RESP protocol address [default: 127.0.0.1:7000]
        listen: String,
        /// Metrics and health HTTP address [default: 127.0.0.1:7100]
        metrics_listen: String,
        /// Close client connections idle this long [default: 300s]
        idle_timeout: String,
        /// Refuse connections beyond this many [default: 10000]
        max_connections: u64,
        /// Longest key [default: 1024]
        max_key_bytes: String,
        /// Longest value [default: 8MiB]
        max_value_bytes: String,
        /// Longest wait for one worker before its partner is asked [default: 1s]
        worker_timeout: String,
        /// How often workers are probed [default: 500ms]
        health_interval: String,
        /// Longest wait for a probe's answer [default: 500ms]
        health_timeout: String,
        /// Failed probes in a row before a worker counts as down [default: 2]
        health_failures: u64,
        /// Writes queued per unreachable worker for hinted handoff, in bytes [default: 64MiB]
        max_hint_bytes: String,
        /// Threads serving requests; 1 = single-threaded, 0 = one per CPU core [default: 1]
        threads: u64,
        /// error, warn, info, debug or trace [default: info]
        log_level: String,
        /// Clients must `auth||<token>` first; links present it too (prefer RCACHE_AUTH_TOKEN: flags show in ps)
        auth_token: String,
    }
);

/// Flags of the `[tls]` keys (`--tls-cert` is `tls.cert`).
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct TlsFlags {
    /// PEM certificate chain of the listener (with --tls-key: TLS on) [tls.cert]
    #[arg(long)]
    #[serde(rename = "cert", skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// PEM private key of --tls-cert [tls.key]
    #[arg(long)]
    #[serde(rename = "key", skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// PEM CA that signs peers: links use TLS and verify them [tls.ca]
    #[arg(long)]
    #[serde(rename = "ca", skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// Require client certificates signed by --tls-ca; links present --tls-cert [tls.client_auth]
    #[arg(long)]
    #[serde(rename = "client_auth", skip_serializing_if = "Option::is_none")]
    pub tls_client_auth: Option<bool>,
}

impl TlsFlags {
    fn given(&self) -> Option<&TlsFlags> {
        let any = self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_ca.is_some()
            || self.tls_client_auth.is_some();
        any.then_some(self)
    }
}

/// A worker's flags as figment merges them.
#[derive(Serialize)]
pub struct WorkerOverrides<'a> {
    #[serde(flatten)]
    pub flags: &'a WorkerFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a TlsFlags>,
}

impl<'a> WorkerOverrides<'a> {
    pub fn new(flags: &'a WorkerFlags, tls: &'a TlsFlags) -> WorkerOverrides<'a> {
        WorkerOverrides {
            flags,
            tls: tls.given(),
        }
    }
}

/// The orchestrator's flags plus the positional workers, as figment merges them.
#[derive(Serialize)]
pub struct OrchestratorOverrides<'a> {
    #[serde(flatten)]
    pub flags: &'a OrchestratorFlags,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<&'a TlsFlags>,
}

impl<'a> OrchestratorOverrides<'a> {
    pub fn new(
        flags: &'a OrchestratorFlags,
        workers: Option<Vec<Vec<String>>>,
        tls: &'a TlsFlags,
    ) -> OrchestratorOverrides<'a> {
        OrchestratorOverrides {
            flags,
            workers,
            tls: tls.given(),
        }
    }
}

/// Renders a raw config as TOML for `--print-config` (the token redacted).
pub fn to_toml(raw: &impl Serialize) -> String {
    let mut value = match toml::Value::try_from(raw) {
        Ok(v) => v,
        Err(e) => return format!("# cannot render config: {e}\n"),
    };
    if let Some(token) = value.get_mut("auth_token") {
        *token = toml::Value::String("<redacted>".into());
    }
    toml::to_string_pretty(&value).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    /// The environment filter's key lists name exactly the struct's keys.
    #[test]
    fn key_lists_match_the_structs() {
        fn keys<R: RawConfig>() -> Vec<String> {
            match toml::Value::try_from(R::default()) {
                Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
                other => panic!("not a table: {other:?}"),
            }
        }
        let sorted = |v: &[&str]| {
            let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
            v.sort();
            v
        };
        let mut worker = keys::<RawWorker>();
        // None by default, so not serialized.
        worker.push("partner".into());
        worker.push("auth_token".into());
        worker.push("tls".into());
        worker.sort();
        assert_eq!(worker, sorted(RawWorker::KEYS));
        let mut orchestrator = keys::<RawOrchestrator>();
        orchestrator.push("auth_token".into());
        orchestrator.push("tls".into());
        orchestrator.sort();
        assert_eq!(orchestrator, sorted(RawOrchestrator::KEYS));
    }

    #[test]
    fn defaults_are_valid() {
        RawWorker::default().validate().expect("worker defaults");
        let o = RawOrchestrator {
            workers: vec![vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]],
            ..RawOrchestrator::default()
        };
        let (config, _) = o.validate().expect("orchestrator defaults");
        assert_eq!(config.worker_timeout, Duration::from_secs(1));
        assert_eq!(config.health_interval, Duration::from_millis(500));
        assert_eq!(config.server.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.server.limits, Limits::default());
    }

    #[test]
    fn precedence_is_defaults_file_env_flags() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "listen = \"127.0.0.1:8001\"\nidle_timeout = \"10s\"\nmax_memory = \"64MiB\"\n",
            )?;
            jail.set_env("RCACHE_IDLE_TIMEOUT", "20s");
            jail.set_env("RCACHE_MAX_CONNECTIONS", "77");
            jail.set_env("RCACHE_UNRELATED_THING", "ignored");
            let flags = WorkerFlags {
                max_connections: Some(99),
                ..WorkerFlags::default()
            };
            let raw: RawWorker = load(Some(Path::new("w.toml")), &flags).expect("loads");
            let (c, _) = raw.validate().expect("valid");
            assert_eq!(c.listen, "127.0.0.1:8001");
            assert_eq!(c.server.idle_timeout, Duration::from_secs(20));
            assert_eq!(c.server.max_connections, 99);
            assert_eq!(c.store.max_memory_bytes, 64 << 20);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "w.toml",
                "listen = \"127.0.0.1:8001\"\nmax_memroy = \"1GiB\"\n",
            )?;
            let e = load::<RawWorker>(Some(Path::new("w.toml")), &WorkerFlags::default())
                .expect_err("unknown key");
            assert!(e.to_string().contains("max_memroy"), "{e}");
            let e = load::<RawWorker>(Some(Path::new("nope.toml")), &WorkerFlags::default())
                .expect_err("missing file");
            assert!(e.to_string().contains("nope.toml"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let raw = RawWorker {
            listen: "nowhere".into(),
            idle_timeout: "5 fortnights".into(),
            max_memory: "lots".into(),
            compression: "zstd".into(),
            log_level: "loud".into(),
            max_key_bytes: Scalar::Int(100_000),
            ..RawWorker::default()
        };
        let e = raw.validate().expect_err("invalid");
        let text = e.to_string();
        for key in [
            "listen",
            "idle_timeout",
            "max_memory",
            "compression",
            "log_level",
            "max_key_bytes",
        ] {
            assert!(
                text.contains(&format!("{key} = ")),
                "{key} missing in {text}"
            );
        }
        assert_eq!(e.problems.len(), 6, "{text}");
    }

    #[test]
    fn changed_keys_name_what_differs() {
        let old = RawWorker::default();
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.max_memory = Scalar::Str("2GiB".into());
        new.listen = "127.0.0.1:9".into();
        assert_eq!(changed_keys(&old, &new), vec!["listen", "max_memory"]);
        for key in RawWorker::LIVE_KEYS {
            assert!(RawWorker::KEYS.contains(key), "{key}");
        }
        for key in RawOrchestrator::LIVE_KEYS {
            assert!(RawOrchestrator::KEYS.contains(key), "{key}");
        }
    }

    #[test]
    fn orchestrator_pairs() {
        let args: Vec<String> = ["127.0.0.1", "7001", "127.0.0.1", "7002"]
            .map(String::from)
            .into();
        assert_eq!(
            pairs_from_args(&args).expect("pairs"),
            vec![vec![
                "127.0.0.1:7001".to_string(),
                "127.0.0.1:7002".to_string()
            ]]
        );
        assert!(pairs_from_args(&args[..3]).is_err());
        assert!(
            pairs_from_args(&args[..2]).is_err(),
            "one worker is an odd count"
        );
        let raw = RawOrchestrator {
            workers: vec![
                vec!["127.0.0.1:7001".into()],
                vec!["a:1".into(), "a:1".into()],
            ],
            ..RawOrchestrator::default()
        };
        let e = raw.validate().expect_err("bad pairs");
        assert_eq!(e.problems.len(), 2, "{e}");
        assert!(RawOrchestrator::default().validate().is_err(), "no workers");
    }
}
