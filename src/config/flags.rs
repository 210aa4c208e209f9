//! Command-line flags, merged over the file and the environment.

use serde::Serialize;
use std::path::PathBuf;

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
        /// Text/RESP protocol address
        listen: String,
        /// Metrics and health HTTP address
        metrics_listen: String,
        /// Address of the partner worker
        partner: String,
        /// Close connections idle this long
        idle_timeout: String,
        /// A connection's first request, and any request once begun, must be complete within this
        request_timeout: String,
        /// Refuse connections beyond this many
        max_connections: u64,
        /// Refuse connections beyond this many from one source address
        max_connections_per_source: u64,
        /// What connections' read buffers may hold together beyond 64 KiB each ("auto": an eighth of memory); reads wait past it
        max_request_buffers: String,
        /// Longest key
        max_key_bytes: String,
        /// Longest value
        max_value_bytes: String,
        /// How long a delete is remembered
        tombstone_ttl: String,
        /// Memory for stored entries; beyond it entries are evicted
        max_memory: String,
        /// "lz4" or "none"
        compression: String,
        /// Values shorter than this are stored as they are
        compress_min_bytes: String,
        /// How often partners compare their stores and repair differences
        anti_entropy_interval: String,
        /// Longest one anti-entropy round of the partner may hold this worker's round lock
        anti_entropy_lease: String,
        /// How long a starting worker keeps trying to reach an unreachable partner before it starts empty
        refill_wait: String,
        /// Connection loops (threads) serving clients and links; 0 = one per CPU core, 1 = one thread for everything
        threads: u64,
        /// error, warn, info, debug or trace
        log_level: String,
        /// Clients must `auth||<token>` first; links present it too unless cluster_token is set (prefer RCACHE_AUTH_TOKEN: flags show in ps)
        auth_token: String,
        /// The daemons' own token: links present it and a worker's links require it, so auth_token cannot open one (prefer RCACHE_CLUSTER_TOKEN)
        cluster_token: String,
    }
);

flag_struct!(
    /// One flag per orchestrator config key (`workers` come as arguments).
    OrchestratorFlags {
        /// Text/RESP protocol address
        listen: String,
        /// Metrics and health HTTP address
        metrics_listen: String,
        /// Close client connections idle this long
        idle_timeout: String,
        /// A connection's first request, and any request once begun, must be complete within this
        request_timeout: String,
        /// Refuse connections beyond this many
        max_connections: u64,
        /// Refuse connections beyond this many from one source address
        max_connections_per_source: u64,
        /// What connections' read buffers may hold together beyond 64 KiB each ("auto": an eighth of memory); reads wait past it
        max_request_buffers: String,
        /// Longest key
        max_key_bytes: String,
        /// Longest value
        max_value_bytes: String,
        /// Longest wait for one worker before its partner is asked
        worker_timeout: String,
        /// How often workers are probed
        health_interval: String,
        /// Longest wait for a probe's answer
        health_timeout: String,
        /// Failed probes in a row before a worker counts as down
        health_failures: u64,
        /// Writes queued per unreachable worker for hinted handoff, in bytes
        max_hint_bytes: String,
        /// Threads serving requests; 1 = single-threaded, 0 = one per CPU core
        threads: u64,
        /// error, warn, info, debug or trace
        log_level: String,
        /// Clients must `auth||<token>` first; links present it too unless cluster_token is set (prefer RCACHE_AUTH_TOKEN: flags show in ps)
        auth_token: String,
        /// The daemons' own token: links present it and a worker's links require it, so auth_token cannot open one (prefer RCACHE_CLUSTER_TOKEN)
        cluster_token: String,
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
