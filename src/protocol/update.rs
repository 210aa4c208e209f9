//! Read-modify-writes of one string key (`INCR`, `APPEND`, `SETRANGE`,
//! `SET … GET`, `GETDEL`, `GETEX`, `PERSIST`): what the command asks, and
//! the pure function that computes the new value from the old one. A
//! worker runs it against its store, for a client of its own or deciding
//! for the orchestrator; the outcome is replicated as the value it
//! produced, never as the operation (so it applies once).

use super::{ErrorCode, ErrorReply, Expiry, SetWhen};
use bytes::{Bytes, BytesMut};

/// What a read-modify-write does to a key's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// `INCRBY` (`INCR`, `DECR`, `DECRBY`): a missing key counts as 0.
    IncrBy(i64),
    /// `INCRBYFLOAT`: the increment's bits (an `f64`, finite).
    IncrByFloat(u64),
    /// `APPEND`: a missing key counts as empty.
    Append(Bytes),
    /// `SETRANGE`: overwrites from `offset`, padding with zero bytes.
    SetRange { offset: u64, value: Bytes },
    /// `SET … GET` / `GETSET` / `SET … KEEPTTL`: stores `value` if `when`
    /// holds; the reply is the old value.
    Replace {
        value: Bytes,
        ttl: TtlChange,
        when: SetWhen,
    },
    /// `GETEX … EX|PX|EXAT|PXAT|PERSIST` and `PERSIST`: a present key's new
    /// time to live; the value stays.
    Retime(TtlChange),
    /// `GETDEL`: deletes the key, replying with its value.
    Take,
}

/// What an update does to the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlChange {
    /// None after it (`SET`, `PERSIST`).
    Clear,
    /// As before (`INCR`, `APPEND`, `KEEPTTL`).
    Keep,
    Set(Expiry),
}

impl Update {
    /// The metrics label.
    pub fn op(&self) -> super::Op {
        match self {
            Update::IncrBy(_) | Update::IncrByFloat(_) => super::Op::Incr,
            _ => super::Op::Update,
        }
    }

    /// `INCRBYFLOAT`'s update; `None` unless `by` is finite.
    pub fn incr_by_float(by: f64) -> Option<Update> {
        by.is_finite().then(|| Update::IncrByFloat(by.to_bits()))
    }

    /// The time to live this update leaves, in milliseconds (0: none),
    /// given the one the key had; `wall_ms` reads the wall clock for an
    /// absolute expiry.
    pub fn ttl_after(&self, old_ttl_ms: u64, wall_ms: impl FnOnce() -> u64) -> u64 {
        let change = match self {
            Update::Replace { ttl, .. } | Update::Retime(ttl) => *ttl,
            _ => TtlChange::Keep,
        };
        match change {
            TtlChange::Clear => 0,
            TtlChange::Keep => old_ttl_ms,
            TtlChange::Set(expiry) => {
                u64::try_from(expiry.ttl(wall_ms).as_millis()).unwrap_or(u64::MAX)
            }
        }
    }

    /// The same update with an absolute expiry turned into a relative one,
    /// read off `wall_ms` now: what travels to a worker.
    pub fn resolved(self, wall_ms: impl FnOnce() -> u64) -> Update {
        let resolve = |ttl: TtlChange| match ttl {
            TtlChange::Set(expiry @ Expiry::At(_)) => {
                TtlChange::Set(Expiry::In(expiry.ttl(wall_ms)))
            }
            other => other,
        };
        match self {
            Update::Replace { value, ttl, when } => Update::Replace {
                value,
                ttl: resolve(ttl),
                when,
            },
            Update::Retime(ttl) => Update::Retime(resolve(ttl)),
            other => other,
        }
    }
}

/// What an update made of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to store: the condition did not hold, the key was missing,
    /// or the value stays as it is.
    None,
    /// The key's new value.
    Value(Bytes),
    /// The key is deleted.
    Delete,
}

/// Computes `update` against `old` (the key's live value, `None` if
/// missing), with values bounded by `max_value_bytes`. An error is the
/// client's reply, and nothing changes.
pub fn apply(
    update: &Update,
    old: Option<&[u8]>,
    max_value_bytes: usize,
) -> Result<Change, ErrorReply> {
    Ok(match update {
        Update::IncrBy(by) => {
            let current = match old {
                Some(v) => parse_int(v).ok_or_else(not_integer)?,
                None => 0,
            };
            let next = current.checked_add(*by).ok_or_else(|| {
                ErrorReply::new(ErrorCode::Parse, "increment or decrement would overflow")
            })?;
            Change::Value(Bytes::from(next.to_string()))
        }
        Update::IncrByFloat(bits) => {
            let current = match old {
                Some(v) => parse_float(v).ok_or_else(not_float)?,
                None => 0.0,
            };
            let next = current + f64::from_bits(*bits);
            if !next.is_finite() {
                return Err(ErrorReply::new(
                    ErrorCode::Parse,
                    "increment would produce NaN or Infinity",
                ));
            }
            Change::Value(Bytes::from(format_float(next)))
        }
        Update::Append(tail) => {
            let head = old.unwrap_or_default();
            fits(head.len() as u64 + tail.len() as u64, max_value_bytes)?;
            let mut value = BytesMut::with_capacity(head.len() + tail.len());
            value.extend_from_slice(head);
            value.extend_from_slice(tail);
            Change::Value(value.freeze())
        }
        Update::SetRange { offset, value } => {
            let head = old.unwrap_or_default();
            if value.is_empty() {
                // Nothing to write: the key stays as it is (and a missing
                // one is not created).
                return Ok(Change::None);
            }
            let end = offset.saturating_add(value.len() as u64);
            fits(end, max_value_bytes)?;
            let (offset, end) = (*offset as usize, end as usize);
            let mut out = BytesMut::with_capacity(end.max(head.len()));
            out.extend_from_slice(head);
            if out.len() < end {
                out.resize(end, 0);
            }
            out[offset..end].copy_from_slice(value);
            Change::Value(out.freeze())
        }
        Update::Replace { value, when, .. } => {
            let holds = match when {
                SetWhen::Always => true,
                SetWhen::Absent => old.is_none(),
                SetWhen::Present => old.is_some(),
            };
            if holds {
                Change::Value(value.clone())
            } else {
                Change::None
            }
        }
        Update::Retime(_) => match old {
            Some(v) => Change::Value(Bytes::copy_from_slice(v)),
            None => Change::None,
        },
        Update::Take => match old {
            Some(_) => Change::Delete,
            None => Change::None,
        },
    })
}

fn fits(len: u64, max_value_bytes: usize) -> Result<(), ErrorReply> {
    if len > max_value_bytes as u64 {
        return Err(ErrorReply::new(
            ErrorCode::Parse,
            format!("string exceeds maximum allowed size ({max_value_bytes} bytes)"),
        ));
    }
    Ok(())
}

fn not_integer() -> ErrorReply {
    ErrorReply::new(ErrorCode::Parse, "value is not an integer or out of range")
}

fn not_float() -> ErrorReply {
    ErrorReply::new(ErrorCode::Parse, "value is not a valid float")
}

/// An integer as Redis reads one (`string2ll`): optional `-`, digits, no
/// leading zeros, no `+`, no spaces, at most 20 characters.
pub fn parse_int(s: &[u8]) -> Option<i64> {
    let digits = s.strip_prefix(b"-").unwrap_or(s);
    let first = *digits.first()?;
    if s.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if first == b'0' && (digits.len() > 1 || digits.len() != s.len()) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// A float as `INCRBYFLOAT` reads one: finite, no spaces.
pub fn parse_float(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s.len() > 256 || s.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let v: f64 = std::str::from_utf8(s).ok()?.parse().ok()?;
    v.is_finite().then_some(v)
}

/// A float as `INCRBYFLOAT` writes one: the shortest decimal that reads
/// back as the same number, without an exponent (`10.6`, `3`, `-0.5`).
pub fn format_float(v: f64) -> String {
    if v == 0.0 {
        // Not "-0".
        return "0".to_string();
    }
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn value(change: Change) -> Bytes {
        match change {
            Change::Value(v) => v,
            other => panic!("expected a value, got {other:?}"),
        }
    }

    #[test]
    fn increments_count_from_zero_and_refuse_overflow_and_non_integers() {
        assert_eq!(value(apply(&Update::IncrBy(5), None, MAX).unwrap()), "5");
        assert_eq!(
            value(apply(&Update::IncrBy(-7), Some(b"5"), MAX).unwrap()),
            "-2"
        );
        let overflow = apply(&Update::IncrBy(1), Some(b"9223372036854775807"), MAX);
        assert_eq!(
            overflow.unwrap_err().message,
            "increment or decrement would overflow"
        );
        for bad in [&b"abc"[..], b"05", b"+5", b" 5", b"5 ", b"", b"-0", b"1.5"] {
            let e = apply(&Update::IncrBy(1), Some(bad), MAX).unwrap_err();
            assert_eq!(
                e.message, "value is not an integer or out of range",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn float_increments_print_as_redis_does() {
        let by = |f: f64| Update::incr_by_float(f).unwrap();
        assert_eq!(value(apply(&by(0.1), Some(b"10.5"), MAX).unwrap()), "10.6");
        assert_eq!(value(apply(&by(2.0), Some(b"1"), MAX).unwrap()), "3");
        assert_eq!(value(apply(&by(5.0e3), None, MAX).unwrap()), "5000");
        assert_eq!(value(apply(&by(-1.0), Some(b"1"), MAX).unwrap()), "0");
        assert!(Update::incr_by_float(f64::INFINITY).is_none());
        let e = apply(&by(1.0), Some(b"x"), MAX).unwrap_err();
        assert_eq!(e.message, "value is not a valid float");
        let e = apply(&by(f64::MAX), Some(b"1.7976931348623157e308"), MAX).unwrap_err();
        assert_eq!(e.message, "increment would produce NaN or Infinity");
    }

    #[test]
    fn appends_and_ranges_stay_within_max_value_bytes() {
        let append = Update::Append(Bytes::from_static(b"lo"));
        assert_eq!(value(apply(&append, Some(b"hel"), MAX).unwrap()), "hello");
        assert!(apply(&append, Some(b"hel"), 4).is_err());
        let range = |offset, v: &'static [u8]| Update::SetRange {
            offset,
            value: Bytes::from_static(v),
        };
        assert_eq!(
            value(apply(&range(6, b"Redis"), Some(b"Hello World"), MAX).unwrap()),
            "Hello Redis"
        );
        assert_eq!(
            value(apply(&range(3, b"x"), None, MAX).unwrap()),
            &b"\0\0\0x"[..]
        );
        assert_eq!(apply(&range(3, b""), None, MAX).unwrap(), Change::None);
        let e = apply(&range(MAX as u64, b"x"), None, MAX).unwrap_err();
        assert!(e.message.starts_with("string exceeds maximum allowed size"));
        assert!(apply(&range(u64::MAX, b"x"), None, MAX).is_err());
    }

    #[test]
    fn replace_take_and_retime_follow_the_key() {
        let replace = |when| Update::Replace {
            value: Bytes::from_static(b"new"),
            ttl: TtlChange::Clear,
            when,
        };
        assert_eq!(
            value(apply(&replace(SetWhen::Always), Some(b"old"), MAX).unwrap()),
            "new"
        );
        assert_eq!(
            apply(&replace(SetWhen::Absent), Some(b"old"), MAX).unwrap(),
            Change::None
        );
        assert_eq!(
            apply(&replace(SetWhen::Present), None, MAX).unwrap(),
            Change::None
        );
        assert_eq!(
            apply(&Update::Take, Some(b"v"), MAX).unwrap(),
            Change::Delete
        );
        assert_eq!(apply(&Update::Take, None, MAX).unwrap(), Change::None);
        let retime = Update::Retime(TtlChange::Clear);
        assert_eq!(value(apply(&retime, Some(b"v"), MAX).unwrap()), "v");
        assert_eq!(apply(&retime, None, MAX).unwrap(), Change::None);
    }

    #[test]
    fn ttls_after_an_update() {
        let wall = || 1_000_000;
        assert_eq!(Update::IncrBy(1).ttl_after(500, wall), 500);
        let at = Update::Retime(TtlChange::Set(Expiry::At(1_002_000)));
        assert_eq!(at.ttl_after(0, wall), 2000);
        let persist = Update::Retime(TtlChange::Clear);
        assert_eq!(persist.ttl_after(500, wall), 0);
    }

    #[test]
    fn integers_parse_as_redis_reads_them() {
        assert_eq!(parse_int(b"0"), Some(0));
        assert_eq!(parse_int(b"-12"), Some(-12));
        assert_eq!(parse_int(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_int(b"9223372036854775808"), None);
        assert_eq!(parse_int(b"-"), None);
        assert_eq!(parse_int(b"007"), None);
    }
}
