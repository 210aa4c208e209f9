//! The config files' keys as they are written, before validation.

use super::units::{duration_text, size_text, Scalar};
use crate::defaults;
use serde::{Deserialize, Serialize};

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
    pub(super) fn files(&self) -> crate::tls::TlsFiles {
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
    pub request_timeout: Scalar,
    pub max_connections: u64,
    pub max_connections_per_source: u64,
    pub max_key_bytes: Scalar,
    pub max_value_bytes: Scalar,
    pub tombstone_ttl: Scalar,
    pub max_memory: Scalar,
    pub compression: String,
    pub compress_min_bytes: Scalar,
    pub anti_entropy_interval: Scalar,
    pub anti_entropy_lease: Scalar,
    pub refill_wait: Scalar,
    pub threads: u64,
    pub log_level: String,
    pub max_request_buffers: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,
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
            request_timeout: duration_text(defaults::REQUEST_TIMEOUT),
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_source: defaults::MAX_CONNECTIONS_PER_SOURCE,
            max_key_bytes: Scalar::Int(defaults::MAX_KEY_BYTES),
            max_value_bytes: size_text(defaults::MAX_VALUE_BYTES),
            tombstone_ttl: duration_text(defaults::TOMBSTONE_TTL),
            max_memory: size_text(defaults::MAX_MEMORY),
            compression: defaults::COMPRESSION.into(),
            compress_min_bytes: Scalar::Int(defaults::COMPRESS_MIN_BYTES),
            anti_entropy_interval: duration_text(defaults::ANTI_ENTROPY_INTERVAL),
            anti_entropy_lease: duration_text(defaults::ANTI_ENTROPY_LEASE),
            refill_wait: duration_text(defaults::REFILL_WAIT),
            threads: defaults::WORKER_THREADS,
            log_level: defaults::LOG_LEVEL.into(),
            max_request_buffers: defaults::MAX_REQUEST_BUFFERS.into(),
            auth_token: None,
            cluster_token: None,
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
    pub request_timeout: Scalar,
    pub max_connections: u64,
    pub max_connections_per_source: u64,
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
    pub max_request_buffers: Scalar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
}

impl Default for RawOrchestrator {
    fn default() -> RawOrchestrator {
        RawOrchestrator {
            listen: defaults::ORCHESTRATOR_LISTEN.into(),
            metrics_listen: defaults::ORCHESTRATOR_METRICS_LISTEN.into(),
            idle_timeout: duration_text(defaults::IDLE_TIMEOUT),
            request_timeout: duration_text(defaults::REQUEST_TIMEOUT),
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_source: defaults::MAX_CONNECTIONS_PER_SOURCE,
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
            max_request_buffers: defaults::MAX_REQUEST_BUFFERS.into(),
            auth_token: None,
            cluster_token: None,
            tls: None,
        }
    }
}
