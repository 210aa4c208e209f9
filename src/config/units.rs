//! Human units in configs: durations (`"300ms"`, `"2s"`, `"5m"`) and sizes
//! (`"64MiB"` or plain bytes).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A config scalar before it is checked: TOML, environment and flags may
/// give a number or a string for the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Int(u64),
    Str(String),
}

impl From<&str> for Scalar {
    fn from(s: &str) -> Scalar {
        Scalar::Str(s.to_owned())
    }
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(n) => write!(f, "{n}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Parses `"300ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"` (also `"1.5s"`).
pub fn parse_duration(value: &Scalar) -> Result<Duration, String> {
    let s = match value {
        Scalar::Int(_) => return Err("a duration needs a unit, e.g. \"2s\" or \"300ms\"".into()),
        Scalar::Str(s) => s.trim(),
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or("a duration needs a unit, e.g. \"2s\" or \"300ms\"")?;
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number"))?;
    let unit_secs = match unit.trim() {
        "ms" => 0.001,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    let secs = number * unit_secs;
    if !secs.is_finite() || secs > 1e10 {
        return Err("duration out of range".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses plain bytes (`1048576`, `"1048576"`) or `"64MiB"`, `"1GiB"`,
/// `"512KiB"`, `"10MB"` (powers of 1000), `"100B"`.
pub fn parse_size(value: &Scalar) -> Result<u64, String> {
    let s = match value {
        Scalar::Int(n) => return Ok(*n),
        Scalar::Str(s) => s.trim(),
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. \"64MiB\" or 1048576)"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "size out of range".to_string())
}

/// A duration as a config file writes it: whole hours, seconds or
/// milliseconds (`1h`, `300s`, `500ms`).
pub fn duration_text(d: Duration) -> Scalar {
    let ms = d.as_millis();
    Scalar::Str(if ms > 0 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    })
}

/// A size as a config file writes it: whole GiB or MiB (`1GiB`, `8MiB`),
/// else bytes.
pub fn size_text(bytes: u64) -> Scalar {
    const MIB: u64 = 1 << 20;
    if bytes > 0 && bytes % (MIB << 10) == 0 {
        Scalar::Str(format!("{}GiB", bytes / (MIB << 10)))
    } else if bytes > 0 && bytes % MIB == 0 {
        Scalar::Str(format!("{}MiB", bytes / MIB))
    } else {
        Scalar::Int(bytes)
    }
}

pub use crate::net::check_address;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(&Scalar::from(s));
        assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(d("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(d("5").is_err());
        assert!(d("5 parsecs").is_err());
        assert!(d("s").is_err());
        assert!(parse_duration(&Scalar::Int(5)).is_err());
    }

    #[test]
    fn sizes() {
        let s = |s: &str| parse_size(&Scalar::from(s));
        assert_eq!(s("64MiB"), Ok(64 << 20));
        assert_eq!(s("1GiB"), Ok(1 << 30));
        assert_eq!(s("10MB"), Ok(10_000_000));
        assert_eq!(s("100"), Ok(100));
        assert_eq!(parse_size(&Scalar::Int(7)), Ok(7));
        assert!(s("12XB").is_err());
        assert!(s("-1").is_err());
        assert!(s("99999999999TiB").is_err());
    }

    #[test]
    fn addresses() {
        assert!(check_address("127.0.0.1:7001").is_ok());
        assert!(check_address("cache-1.internal:7001").is_ok());
        assert!(check_address("[::1]:7001").is_ok());
        assert!(check_address("::1:7001").is_err());
        assert!(check_address("127.0.0.1").is_err());
        assert!(check_address(":7001").is_err());
        assert!(check_address("host:99999").is_err());
    }
}
