//! Every default setting, once: the config files' defaults (SPEC) and the
//! defaults of the components they configure are these values.

use std::time::Duration;

pub const WORKER_LISTEN: &str = "127.0.0.1:7001";
pub const WORKER_METRICS_LISTEN: &str = "127.0.0.1:7101";
pub const ORCHESTRATOR_LISTEN: &str = "127.0.0.1:7000";
pub const ORCHESTRATOR_METRICS_LISTEN: &str = "127.0.0.1:7100";

/// A connection with nothing complete for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// A connection's first request, and any request once its first byte has
/// arrived, must be complete within this (slow senders).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_CONNECTIONS: u64 = 10_000;
/// Connections one source address may hold open at once.
pub const MAX_CONNECTIONS_PER_SOURCE: u64 = 1_000;
/// `max_request_buffers`: sized to the machine (an eighth of its memory,
/// see `net::budget`).
pub const MAX_REQUEST_BUFFERS: &str = "auto";
pub const MAX_KEY_BYTES: u64 = 1024;
pub const MAX_VALUE_BYTES: u64 = 8 << 20;
pub const LOG_LEVEL: &str = "info";

pub const MAX_MEMORY: u64 = 1 << 30;
pub const COMPRESSION: &str = "lz4";
pub const COMPRESS_MIN_BYTES: u64 = 128;
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(3600);
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(2);
/// The longest one anti-entropy round holds a responder's round lock.
pub const ANTI_ENTROPY_LEASE: Duration = Duration::from_secs(600);
pub const REFILL_WAIT: Duration = Duration::from_secs(10);
/// Worker connection threads: 0 is one per core.
pub const WORKER_THREADS: u64 = 0;

pub const WORKER_TIMEOUT: Duration = Duration::from_secs(1);
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
pub const HEALTH_FAILURES: u64 = 2;
pub const MAX_HINT_BYTES: u64 = 64 << 20;
pub const ORCHESTRATOR_THREADS: u64 = 1;
