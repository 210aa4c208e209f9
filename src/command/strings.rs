//! String commands: `GET`, `SET`, `MGET`, `MSET`, `MSETNX`, `GETRANGE`,
//! `STRLEN`, and the read-modify-writes (`INCR`, `APPEND`, `GETDEL`, ...).

use super::{each, Keyspace};
use crate::protocol::update::parse_int;
use crate::protocol::{
    max_reply_bytes, ErrorCode, ErrorReply, Reply, SetWhen, Update, UpdateReply,
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
            let value = value?.map(|(v, _)| v);
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
