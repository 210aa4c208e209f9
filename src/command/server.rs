//! Server and connection commands: `PING`, `AUTH`, `EXIT`, `INFO`,
//! `CLUSTER`, `OBJECT`, `MEMORY`. (The session answers `AUTH` and `EXIT`
//! itself; run here they only succeed.)

use super::Keyspace;
use crate::protocol::resp::REDIS_VERSION;
use crate::protocol::{ErrorCode, ErrorReply, InfoSections, Inspect, Op, Outcome, Reply};
use bytes::Bytes;
use std::fmt::Write as _;

pub fn ping() -> Reply {
    Reply::Pong
}

pub fn done() -> Reply {
    Reply::Done
}

/// `INFO`: Redis's sections (`# Server`, `name:value` lines, a blank line
/// between sections), with the figures this daemon has.
pub async fn info<K: Keyspace>(ks: &K, sections: InfoSections) -> Reply {
    let info = ks.info(sections).await;
    let metrics = ks.server_metrics();
    let mut text = String::new();
    let mut section = |bit: u8, title: &str, fields: &[(&str, String)]| {
        if !sections.has(bit) {
            return;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let _ = write!(text, "# {title}\r\n");
        for (name, value) in fields {
            let _ = write!(text, "{name}:{value}\r\n");
        }
    };
    let uptime = metrics.started.elapsed().as_secs();
    let mut server = vec![
        ("redis_version", REDIS_VERSION.to_string()),
        ("rcache_version", env!("CARGO_PKG_VERSION").to_string()),
        ("rcache_role", K::ROLE.to_string()),
        ("redis_mode", "standalone".to_string()),
        ("os", std::env::consts::OS.to_string()),
        ("arch_bits", (usize::BITS).to_string()),
        ("process_id", std::process::id().to_string()),
    ];
    server.extend(info.server.iter().cloned());
    server.push(("uptime_in_seconds", uptime.to_string()));
    server.push(("uptime_in_days", (uptime / 86_400).to_string()));
    section(InfoSections::SERVER, "Server", &server);
    section(
        InfoSections::CLIENTS,
        "Clients",
        &[
            (
                "connected_clients",
                metrics.connections_open.get().to_string(),
            ),
            ("maxclients", info.max_clients.to_string()),
            ("blocked_clients", "0".to_string()),
        ],
    );
    let mut memory = info.memory.clone();
    if let Some(rss) = crate::metrics::resident_bytes() {
        memory.push(("used_memory_rss", rss.to_string()));
        memory.push(("used_memory_rss_human", human(rss)));
    }
    section(InfoSections::MEMORY, "Memory", &memory);
    // Nothing is persisted; `loading` says whether reads are served yet,
    // which clients' ready checks (ioredis) wait on.
    let mut persistence = vec![
        ("loading", u8::from(info.loading).to_string()),
        ("async_loading", "0".to_string()),
    ];
    if info.loading {
        persistence.push(("loading_eta_seconds", "1".to_string()));
    }
    section(InfoSections::PERSISTENCE, "Persistence", &persistence);
    let count = |op: Op, outcome: Outcome| metrics.requests(op, outcome);
    let mut commands = 0;
    let mut errors = 0;
    for op in Op::ALL {
        for outcome in Outcome::ALL {
            commands += count(op, outcome);
        }
        errors += count(op, Outcome::Error);
    }
    let mut stats = vec![
        (
            "total_connections_received",
            metrics.connections_accepted.get().to_string(),
        ),
        ("total_commands_processed", commands.to_string()),
        (
            "rejected_connections",
            metrics.connections_rejected.get().to_string(),
        ),
        ("keyspace_hits", count(Op::Get, Outcome::Ok).to_string()),
        (
            "keyspace_misses",
            count(Op::Get, Outcome::NotFound).to_string(),
        ),
        ("total_error_replies", errors.to_string()),
    ];
    stats.extend(info.stats.iter().cloned());
    section(InfoSections::STATS, "Stats", &stats);
    let keyspace: Vec<(&str, String)> = match info.keys {
        Some(keys) if keys > 0 => vec![("db0", format!("keys={keys}"))],
        _ => Vec::new(),
    };
    section(InfoSections::KEYSPACE, "Keyspace", &keyspace);
    section(InfoSections::CLUSTER, "Rcache", &info.rcache);
    Reply::Value(text.into())
}

/// Bytes as Redis's `_human` fields show them (`1.50M`).
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2}{}", UNITS[unit])
}

pub async fn cluster<K: Keyspace>(ks: &K) -> Reply {
    Reply::Value(ks.describe().await.into())
}

/// `OBJECT ENCODING|FREQ|REFCOUNT`, `MEMORY USAGE`: nil for a missing key.
pub async fn inspect<K: Keyspace>(ks: &K, key: Bytes, what: Inspect) -> Reply {
    let found = match what {
        Inspect::MemoryUsage => {
            return match ks.memory_usage(key).await {
                Ok(Some(bytes)) => Reply::Integer(i64::try_from(bytes).unwrap_or(i64::MAX)),
                Ok(None) => Reply::not_found(),
                Err(e) => Reply::Error(e),
            }
        }
        _ => match ks.read(key.clone()).await {
            Ok(Some((value, _))) => value,
            Ok(None) => return Reply::not_found(),
            Err(e) if e.code == ErrorCode::WrongType => {
                return match (what, ks.read_hash(key).await) {
                    (_, Err(e)) => Reply::Error(e),
                    (_, Ok(None)) => Reply::not_found(),
                    (Inspect::Encoding, Ok(Some(_))) => {
                        Reply::Value(Bytes::from_static(b"hashtable"))
                    }
                    (Inspect::RefCount, Ok(Some(_))) => Reply::Integer(1),
                    (_, Ok(Some(_))) => Reply::Error(no_lfu()),
                }
            }
            Err(e) => return Reply::Error(e),
        },
    };
    match what {
        Inspect::Encoding => Reply::Value(Bytes::from_static(encoding(&found).as_bytes())),
        Inspect::RefCount => Reply::Integer(1),
        Inspect::Freq | Inspect::MemoryUsage => Reply::Error(no_lfu()),
    }
}

/// `OBJECT FREQ`'s error: eviction is SIEVE, not LFU.
fn no_lfu() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::InvalidCommand,
        "An LFU maxmemory policy is not selected, access frequency not tracked. \
         rcache evicts with SIEVE.",
    )
}

/// How Redis would encode a string value: `int` for a 64-bit integer in
/// canonical form, `embstr` up to 44 bytes, `raw` beyond.
pub fn encoding(value: &[u8]) -> &'static str {
    let canonical = value.len() <= 20
        && crate::protocol::update::parse_int(value)
            .is_some_and(|n| n.to_string().as_bytes() == value);
    if canonical {
        "int"
    } else if value.len() <= 44 {
        "embstr"
    } else {
        "raw"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_redis_s() {
        assert_eq!(encoding(b"12345"), "int");
        assert_eq!(encoding(b"-7"), "int");
        assert_eq!(encoding(b"007"), "embstr");
        assert_eq!(encoding(b"hello"), "embstr");
        assert_eq!(encoding(&[b'x'; 45]), "raw");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(3 * 1024 * 1024), "3.00M");
    }
}
