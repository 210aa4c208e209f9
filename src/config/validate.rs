//! Raw configs to the components' configs: every problem found at once,
//! each naming its key.

use super::units::{check_address, parse_duration, parse_size, Scalar};
use super::{
    ConfigError, RawOrchestrator, RawTls, RawWorker, MAX_KEY_BYTES_LIMIT, MAX_VALUE_BYTES_LIMIT,
};
use crate::net::ServerConfig;
use crate::orchestrator::OrchestratorConfig;
use crate::protocol::Limits;
use crate::worker::store::StoreConfig;
use crate::worker::WorkerConfig;
use std::time::Duration;

/// Collects validation problems, naming the key and its value.
#[derive(Default)]
pub(super) struct Problems(Vec<String>);

impl Problems {
    pub(super) fn push(
        &mut self,
        key: &str,
        value: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) {
        self.0.push(format!("{key} = {value}: {reason}"));
    }

    pub(super) fn duration(&mut self, key: &str, value: &Scalar, min: Duration) -> Duration {
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

    pub(super) fn size(&mut self, key: &str, value: &Scalar, min: u64, max: u64) -> u64 {
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

    pub(super) fn address(&mut self, key: &str, value: &str) {
        if let Err(e) = check_address(value) {
            self.push(key, format!("{value:?}"), e);
        }
    }

    pub(super) fn threads(&mut self, threads: u64) {
        if threads > 1024 {
            self.push("threads", threads, "at most 1024 (0 = one per CPU core)");
        }
    }

    pub(super) fn log_level(&mut self, value: &str) -> tracing::Level {
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

    pub(super) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }
}

/// The raw timeouts both daemons take.
pub(super) struct Timeouts<'a> {
    pub(super) idle: &'a Scalar,
    pub(super) request: &'a Scalar,
}

/// The raw sizes both daemons take.
pub(super) struct Sizes<'a> {
    pub(super) request_buffers: &'a Scalar,
    pub(super) key: &'a Scalar,
    pub(super) value: &'a Scalar,
}

pub(super) fn server(
    p: &mut Problems,
    timeouts: Timeouts<'_>,
    connections: [u64; 2],
    sizes: Sizes<'_>,
    tokens: [Option<&str>; 2],
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
    let [max_connections, max_per_source] = connections;
    if max_connections == 0 {
        p.push("max_connections", 0, "must be at least 1");
    }
    if max_per_source == 0 {
        p.push("max_connections_per_source", 0, "must be at least 1");
    }
    let [auth_token, cluster_token] = tokens;
    let auth = auth_token.and_then(|token| secret(p, "auth_token", token));
    let cluster = cluster_token.and_then(|token| secret(p, "cluster_token", token));
    if auth_token.is_some() && auth_token == cluster_token {
        p.push(
            "cluster_token",
            "<redacted>",
            "must differ from auth_token (clients hold auth_token; only daemons may hold cluster_token)",
        );
    }
    let limits = Limits {
        max_key_bytes: p.size("max_key_bytes", sizes.key, 1, MAX_KEY_BYTES_LIMIT) as usize,
        max_value_bytes: p.size("max_value_bytes", sizes.value, 1, MAX_VALUE_BYTES_LIMIT) as usize,
    };
    let max_request_buffers = match sizes.request_buffers {
        Scalar::Str(auto) if auto == "auto" => crate::net::budget::auto_limit(&limits),
        size => {
            let least = crate::net::budget::claim(&limits) as u64;
            let bytes = p.size("max_request_buffers", size, 0, u64::MAX);
            if bytes < least {
                p.push(
                    "max_request_buffers",
                    size,
                    format!(
                        "must be at least {least} bytes (twice the largest request the key and value limits allow), or \"auto\""
                    ),
                );
            }
            usize::try_from(bytes).unwrap_or(usize::MAX)
        }
    };
    ServerConfig {
        cluster: cluster.or_else(|| auth.clone()),
        auth,
        tls,
        idle_timeout: p.duration("idle_timeout", timeouts.idle, Duration::from_millis(10)),
        request_timeout: p.duration(
            "request_timeout",
            timeouts.request,
            Duration::from_millis(10),
        ),
        max_connections: max_connections.max(1) as usize,
        max_connections_per_source: max_per_source.max(1) as usize,
        max_request_buffers,
        limits,
    }
}

/// A token key's secret, or its problem (the value itself never echoed).
fn secret(p: &mut Problems, key: &str, token: &str) -> Option<crate::auth::Secret> {
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
        Some(why) => {
            p.push(key, "<redacted>", why);
            None
        }
        None => Some(crate::auth::Secret::new(token.as_bytes())),
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
            Timeouts {
                idle: &self.idle_timeout,
                request: &self.request_timeout,
            },
            [self.max_connections, self.max_connections_per_source],
            Sizes {
                request_buffers: &self.max_request_buffers,
                key: &self.max_key_bytes,
                value: &self.max_value_bytes,
            },
            [self.auth_token.as_deref(), self.cluster_token.as_deref()],
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
        let anti_entropy_lease = p.duration(
            "anti_entropy_lease",
            &self.anti_entropy_lease,
            Duration::from_millis(100),
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
                anti_entropy_lease,
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
            Timeouts {
                idle: &self.idle_timeout,
                request: &self.request_timeout,
            },
            [self.max_connections, self.max_connections_per_source],
            Sizes {
                request_buffers: &self.max_request_buffers,
                key: &self.max_key_bytes,
                value: &self.max_value_bytes,
            },
            [self.auth_token.as_deref(), self.cluster_token.as_deref()],
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
        if self.workers.len() > crate::protocol::link::MAX_LAYOUT_PAIRS {
            p.push(
                "workers",
                format!("{} pairs", self.workers.len()),
                "at most 4096 pairs (what the cluster's layout holds)",
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
