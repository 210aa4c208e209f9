//! String commands: `GET`, `SET`, `MGET`, `MSET`, `MSETNX`, `GETRANGE`,
//! `STRLEN`, `LCS`, and the read-modify-writes (`INCR`, `APPEND`, `GETDEL`,
//! ...).

use super::{each, Keyspace};
use crate::protocol::update::parse_int;
use crate::protocol::{
    max_reply_bytes, ErrorCode, ErrorReply, LcsMode, Reply, SetWhen, Update, UpdateReply,
};
use bytes::Bytes;
use std::time::Duration;

pub async fn get<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.read(key).await {
        Ok(Some((value, _))) => Reply::Value(value),
        Ok(None) => Reply::not_found(),
        Err(e) => Reply::Error(e),
    }
}

/// Runs `update` where the key lives and tells the client what `reply`
/// asks of it.
pub async fn update<K: Keyspace>(ks: &K, key: Bytes, update: Update, reply: UpdateReply) -> Reply {
    let update = update.resolved(crate::sys::wall_ms);
    let updated = match ks.update(key, update).await {
        Ok(updated) => updated,
        Err(e) => return Reply::Error(e),
    };
    let len = |v: &Option<Bytes>| v.as_ref().map_or(0, |v| v.len() as i64);
    match reply {
        UpdateReply::Integer => match updated.value.as_deref().and_then(parse_int) {
            Some(n) => Reply::Integer(n),
            None => Reply::error(ErrorCode::Parse, "value is not an integer or out of range"),
        },
        UpdateReply::Value => match updated.value {
            Some(value) => Reply::Value(value),
            None => Reply::not_found(),
        },
        UpdateReply::Length => Reply::Integer(len(&updated.value)),
        UpdateReply::Old => match updated.old {
            Some(old) => Reply::Value(old),
            None => Reply::not_found(),
        },
        UpdateReply::Changed => Reply::Integer(i64::from(updated.changed)),
        UpdateReply::Stored if updated.changed => Reply::Done,
        UpdateReply::Stored => Reply::NotStored,
    }
}

/// The bytes `start..=end` of the value, offsets from its end when
/// negative, clamped to it (Redis's `GETRANGE`).
pub async fn get_range<K: Keyspace>(ks: &K, key: Bytes, start: i64, end: i64) -> Reply {
    let value = match ks.read(key).await {
        Ok(Some((value, _))) => value,
        Ok(None) => return Reply::Value(Bytes::new()),
        Err(e) => return Reply::Error(e),
    };
    Reply::Value(range(&value, start, end))
}

/// `GETRANGE`'s slice of `value`.
pub fn range(value: &Bytes, start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 || (start < 0 && end < 0 && start > end) {
        return Bytes::new();
    }
    let from_end = |i: i64| if i < 0 { (len + i).max(0) } else { i };
    let (start, end) = (from_end(start), from_end(end).min(len - 1));
    if start > end || start >= len {
        return Bytes::new();
    }
    value.slice(start as usize..=end as usize)
}

pub async fn strlen<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.read(key).await {
        Ok(value) => Reply::Integer(value.map_or(0, |(v, _)| v.len() as i64)),
        Err(e) => Reply::Error(e),
    }
}

/// Sets every key only if none exists: 1 if it set them all, else 0. The
/// check and the sets are not atomic across keys: a key another client
/// creates in between keeps that client's value (its own set, `NX`, did
/// not hold), and the reply is then 0 while the other keys were set.
pub async fn mset_nx<K: Keyspace>(ks: &K, entries: Vec<(Bytes, Bytes)>) -> Reply {
    let mut present = false;
    let checked = each::<K, _, _, _, _>(
        &entries,
        |(key, _)| ks.ttl(key.clone()),
        |ttl| {
            present |= ttl?.is_some();
            Ok(())
        },
    )
    .await;
    if let Err(e) = checked {
        return Reply::Error(e);
    }
    if present {
        return Reply::Integer(0);
    }
    let mut all = true;
    let walked = each::<K, _, _, _, _>(
        &entries,
        |(key, value)| ks.set(key.clone(), value.clone(), None, SetWhen::Absent),
        |stored| {
            all &= stored?;
            Ok(())
        },
    )
    .await;
    match walked {
        Ok(()) => Reply::Integer(i64::from(all)),
        Err(e) => Reply::Error(e),
    }
}

pub async fn set<K: Keyspace>(
    ks: &K,
    key: Bytes,
    value: Bytes,
    ttl: Option<Duration>,
    when: SetWhen,
) -> Reply {
    match ks.set(key, value, ttl, when).await {
        Ok(true) => Reply::Done,
        Ok(false) => Reply::NotStored,
        Err(e) => Reply::Error(e),
    }
}

/// Values in key order; fails once they pass [`max_reply_bytes`] instead
/// of holding more.
pub async fn mget<K: Keyspace>(ks: &K, keys: Vec<Bytes>) -> Reply {
    let budget = max_reply_bytes(&ks.limits());
    let mut bytes = 0;
    let mut values = Vec::with_capacity(keys.len());
    let walked = each::<K, _, _, _, _>(
        &keys,
        |key| ks.read(key.clone()),
        |value| {
            // A key of another type reads as missing, as in Redis.
            let value = match value {
                Err(e) if e.code == crate::protocol::ErrorCode::WrongType => None,
                value => value?.map(|(v, _)| v),
            };
            bytes += value.as_ref().map_or(0, |v| v.len());
            if bytes > budget {
                return Err(ErrorReply::too_large(budget));
            }
            values.push(value);
            Ok(())
        },
    )
    .await;
    match walked {
        Ok(()) => Reply::Values(values),
        Err(e) => Reply::Error(e),
    }
}

/// Unconditional sets, not atomic across keys: the first error is the
/// reply.
pub async fn mset<K: Keyspace>(ks: &K, entries: Vec<(Bytes, Bytes)>) -> Reply {
    let walked = each::<K, _, _, _, _>(
        &entries,
        |(key, value)| ks.set(key.clone(), value.clone(), None, SetWhen::Always),
        |stored| stored.map(drop),
    )
    .await;
    match walked {
        Ok(()) => Reply::Done,
        Err(e) => Reply::Error(e),
    }
}

/// The most cells of `LCS`'s table (4 bytes each): 16 MiB of transient
/// memory and some milliseconds of CPU per command, two values of up to
/// 2,047 bytes.
pub const MAX_LCS_CELLS: usize = 4 << 20;

/// `LCS a b [LEN | IDX [MINMATCHLEN n] [WITHMATCHLEN]]` over the values of
/// two keys (a missing key is empty).
pub async fn lcs<K: Keyspace>(ks: &K, a: Bytes, b: Bytes, mode: LcsMode) -> Reply {
    let mut values = Vec::with_capacity(2);
    for read in crate::join::join_all(vec![ks.read(a), ks.read(b)]).await {
        match read {
            Ok(value) => values.push(value.map(|(v, _)| v).unwrap_or_default()),
            Err(e) => return Reply::Error(e),
        }
    }
    let [a, b] = <[Bytes; 2]>::try_from(values).unwrap_or_default();
    let cells = (a.len() + 1).saturating_mul(b.len() + 1);
    if cells > MAX_LCS_CELLS {
        return Reply::Error(ErrorReply::new(
            ErrorCode::InvalidCommand,
            format!(
                "Insufficient memory, transient memory for LCS exceeds {} MiB",
                (MAX_LCS_CELLS * 4) >> 20
            ),
        ));
    }
    let found = longest_common_subsequence(&a, &b);
    match mode {
        LcsMode::Text => Reply::Value(found.text.into()),
        LcsMode::Len => Reply::Integer(found.text.len() as i64),
        LcsMode::Idx { min_len, with_len } => {
            let int = |n: usize| Reply::Integer(n as i64);
            let matches = found
                .ranges
                .iter()
                .filter(|r| (r.len as u64) >= min_len)
                .map(|r| {
                    let mut item = vec![
                        Reply::Array(vec![int(r.a.0), int(r.a.1)]),
                        Reply::Array(vec![int(r.b.0), int(r.b.1)]),
                    ];
                    if with_len {
                        item.push(int(r.len));
                    }
                    Reply::Array(item)
                })
                .collect();
            Reply::Map(vec![
                ("matches", Reply::Array(matches)),
                ("len", int(found.text.len())),
            ])
        }
    }
}

/// A common subsequence and the ranges of both values it matches.
#[derive(Debug, PartialEq, Eq)]
pub struct Lcs {
    pub text: Vec<u8>,
    /// Contiguous matches, from the ends of the values back, as Redis
    /// lists them: the inclusive ranges in `a` and `b`, and the length.
    pub ranges: Vec<LcsRange>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct LcsRange {
    pub a: (usize, usize),
    pub b: (usize, usize),
    pub len: usize,
}

/// The longest common subsequence of `a` and `b` by the classic table,
/// walked back from the ends the way Redis walks it (so ties pick the
/// same subsequence and the same ranges).
pub fn longest_common_subsequence(a: &[u8], b: &[u8]) -> Lcs {
    let width = b.len() + 1;
    let mut table = vec![0u32; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            table[at(i, j)] = if a[i - 1] == b[j - 1] {
                table[at(i - 1, j - 1)] + 1
            } else {
                table[at(i - 1, j)].max(table[at(i, j - 1)])
            };
        }
    }
    let mut text = vec![0u8; table[at(a.len(), b.len())] as usize];
    let mut left = text.len();
    let mut ranges = Vec::new();
    // The match being extended backwards: its starts and ends in a and b.
    let mut current: Option<((usize, usize), (usize, usize))> = None;
    let close = |range: ((usize, usize), (usize, usize)), ranges: &mut Vec<LcsRange>| {
        let ((a_start, b_start), (a_end, b_end)) = range;
        ranges.push(LcsRange {
            a: (a_start, a_end),
            b: (b_start, b_end),
            len: a_end - a_start + 1,
        });
    };
    let (mut i, mut j) = (a.len(), b.len());
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            left -= 1;
            text[left] = a[i - 1];
            i -= 1;
            j -= 1;
            // A match right after one extends its range backwards (after
            // a step without one, that range was closed).
            let ends = current.map_or((i, j), |(_, ends)| ends);
            current = Some(((i, j), ends));
        } else {
            if table[at(i - 1, j)] > table[at(i, j - 1)] {
                i -= 1;
            } else {
                j -= 1;
            }
            if let Some(range) = current.take() {
                close(range, &mut ranges);
            }
        }
    }
    if let Some(range) = current {
        close(range, &mut ranges);
    }
    Lcs { text, ranges }
}

#[cfg(test)]
mod lcs_tests {
    use super::*;

    #[test]
    fn redis_s_documented_example() {
        let found = longest_common_subsequence(b"ohmytext", b"mynewtext");
        assert_eq!(found.text, b"mytext");
        assert_eq!(
            found.ranges,
            vec![
                LcsRange {
                    a: (4, 7),
                    b: (5, 8),
                    len: 4
                },
                LcsRange {
                    a: (2, 3),
                    b: (0, 1),
                    len: 2
                },
            ]
        );
    }

    #[test]
    fn empty_and_disjoint_values() {
        assert_eq!(longest_common_subsequence(b"", b"abc").text, b"");
        let found = longest_common_subsequence(b"abc", b"xyz");
        assert!(found.text.is_empty() && found.ranges.is_empty());
        let same = longest_common_subsequence(b"abc", b"abc");
        assert_eq!(same.text, b"abc");
        assert_eq!(
            same.ranges,
            vec![LcsRange {
                a: (0, 2),
                b: (0, 2),
                len: 3
            }]
        );
    }
}
