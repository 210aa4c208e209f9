//! Key and TTL commands: `DEL`, `EXISTS`, `EXPIRE`, `TTL`, `EXPIRETIME`,
//! `TYPE`, `RENAME`, `COPY`, `DBSIZE`.

use super::{each, Keyspace};
use crate::protocol::{ErrorCode, ErrorReply, ExpireWhen, Expiry, Reply, ScanType, SetWhen};
use bytes::Bytes;
use std::time::Duration;

/// `del` of one key (the text protocol's form): done, or not found.
pub async fn del<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.delete(key).await {
        Ok(true) => Reply::Done,
        Ok(false) => Reply::not_found(),
        Err(e) => Reply::Error(e),
    }
}

/// `DEL key...`: how many existed.
pub async fn del_many<K: Keyspace>(ks: &K, keys: Vec<Bytes>) -> Reply {
    count::<K, _, _>(&keys, |key| ks.delete(key.clone())).await
}

/// How many of the keys exist (a key named twice counts twice).
pub async fn exists<K: Keyspace>(ks: &K, keys: Vec<Bytes>) -> Reply {
    count::<K, _, _>(&keys, |key| {
        let ttl = ks.ttl(key.clone());
        async { ttl.await.map(|ttl| ttl.is_some()) }
    })
    .await
}

/// How many keys `f` says yes to; the first error is the reply.
async fn count<K, F, Fut>(keys: &[Bytes], f: F) -> Reply
where
    K: Keyspace,
    F: Fn(&Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<bool, crate::protocol::ErrorReply>>,
{
    let mut n = 0;
    match each::<K, _, _, _, _>(keys, f, |yes| {
        n += i64::from(yes?);
        Ok(())
    })
    .await
    {
        Ok(()) => Reply::Integer(n),
        Err(e) => Reply::Error(e),
    }
}

/// 1 if the key was there, `when` held of its TTL, and it now has the new
/// one (or, for a moment already past, is deleted), else 0. The condition
/// is read, then the TTL written: a TTL another client changes in between
/// is not checked again.
pub async fn expire<K: Keyspace>(ks: &K, key: Bytes, ttl: Expiry, when: ExpireWhen) -> Reply {
    let ms = match ttl {
        Expiry::In(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
        Expiry::At(at) => at.saturating_sub(crate::sys::wall_ms()),
    };
    if when != ExpireWhen::Always {
        match ks.ttl(key.clone()).await {
            Ok(Some(current)) if when.holds(current, ms) => {}
            Ok(_) => return Reply::Integer(0),
            Err(e) => return Reply::Error(e),
        }
    }
    // Redis deletes a key given a moment already past.
    let done = if ms == 0 {
        ks.delete(key).await
    } else {
        ks.expire(key, Duration::from_millis(ms)).await
    };
    match done {
        Ok(present) => Reply::Integer(i64::from(present)),
        Err(e) => Reply::Error(e),
    }
}

/// The moment of expiry in milliseconds since the epoch, `-1` without a
/// TTL, `-2` for a missing key.
pub async fn expire_time<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.ttl(key).await {
        Ok(None) => Reply::Integer(-2),
        Ok(Some(0)) => Reply::Integer(-1),
        Ok(Some(ms)) => Reply::Integer(
            i64::try_from(crate::sys::wall_ms().saturating_add(ms)).unwrap_or(i64::MAX),
        ),
        Err(e) => Reply::Error(e),
    }
}

pub async fn key_type<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match kind_of(ks, key).await {
        Ok(kind) => Reply::Status(kind),
        Err(e) => Reply::Error(e),
    }
}

/// `string`, `hash`, or `none` for a missing key.
async fn kind_of<K: Keyspace>(ks: &K, key: Bytes) -> Result<&'static str, ErrorReply> {
    if ks.ttl(key.clone()).await?.is_none() {
        return Ok("none");
    }
    match ks.read_hash(key).await {
        Ok(Some(_)) => Ok("hash"),
        // Gone between the two reads.
        Ok(None) => Ok("none"),
        Err(e) if e.code == ErrorCode::WrongType => Ok("string"),
        Err(e) => Err(e),
    }
}

/// Moves the value and its TTL to `to` (`nx`: only if `to` is missing):
/// a read, a write of `to` and a delete of `from`, which may live on
/// different pairs. A failure after the write leaves both keys, never
/// neither: the client hears the error and may delete one.
pub async fn rename<K: Keyspace>(ks: &K, from: Bytes, to: Bytes, nx: bool) -> Reply {
    let (value, ttl_ms) = match ks.read(from.clone()).await {
        Ok(Some(found)) => found,
        Ok(None) => return Reply::error(ErrorCode::Parse, "no such key"),
        Err(e) => return Reply::Error(e),
    };
    let done = |stored: bool| {
        if nx {
            Reply::Integer(i64::from(stored))
        } else {
            Reply::Done
        }
    };
    if from == to {
        return done(!nx);
    }
    let when = if nx { SetWhen::Absent } else { SetWhen::Always };
    let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
    match ks.set(to, value, ttl, when).await {
        Ok(true) => {}
        Ok(false) => return done(false),
        Err(e) => return Reply::Error(e),
    }
    match ks.delete(from).await {
        Ok(_) => done(true),
        Err(e) => Reply::Error(e),
    }
}

/// Copies the value and its TTL to `to`, over an existing key only with
/// `replace`: 1 if copied, else 0.
pub async fn copy<K: Keyspace>(ks: &K, from: Bytes, to: Bytes, replace: bool) -> Reply {
    if from == to {
        return Reply::error(
            ErrorCode::Parse,
            "source and destination objects are the same",
        );
    }
    let (value, ttl_ms) = match ks.read(from).await {
        Ok(Some(found)) => found,
        Ok(None) => return Reply::Integer(0),
        Err(e) => return Reply::Error(e),
    };
    let when = if replace {
        SetWhen::Always
    } else {
        SetWhen::Absent
    };
    let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
    match ks.set(to, value, ttl, when).await {
        Ok(stored) => Reply::Integer(i64::from(stored)),
        Err(e) => Reply::Error(e),
    }
}

/// Milliseconds left, `-1` without a TTL, `-2` for a missing key.
pub async fn ttl<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.ttl(key).await {
        Ok(None) => Reply::Integer(-2),
        Ok(Some(0)) => Reply::Integer(-1),
        Ok(Some(ms)) => Reply::Integer(i64::try_from(ms).unwrap_or(i64::MAX)),
        Err(e) => Reply::Error(e),
    }
}

/// `SCAN`: the next cursor and the keys of the stretch it walked.
pub async fn scan<K: Keyspace>(
    ks: &K,
    cursor: u64,
    pattern: Bytes,
    count: usize,
    kind: ScanType,
) -> Reply {
    let (next, keys) = match ks.scan(cursor, count, pattern).await {
        Ok(step) => step,
        Err(e) => return Reply::Error(e),
    };
    let wanted = match kind {
        ScanType::Any => Some(keys),
        ScanType::Nothing => None,
        ScanType::String | ScanType::Hash => {
            // Each key's type is asked where it is; a key gone meanwhile
            // is left out.
            let name = if kind == ScanType::Hash {
                "hash"
            } else {
                "string"
            };
            let mut kept = Vec::new();
            let walked = each::<K, _, _, _, _>(
                &keys,
                |key| {
                    let key = key.clone();
                    async move { (kind_of(ks, key.clone()).await, key) }
                },
                |(found, key)| {
                    if found? == name {
                        kept.push(key);
                    }
                    Ok(())
                },
            )
            .await;
            if let Err(e) = walked {
                return Reply::Error(e);
            }
            Some(kept)
        }
    };
    Reply::Array(vec![
        Reply::Value(Bytes::from(next.to_string())),
        Reply::Values(wanted.unwrap_or_default().into_iter().map(Some).collect()),
    ])
}

/// Keys one `SCAN` step of `KEYS` and `RANDOMKEY` looks at.
const WALK_STEP: usize = 10_000;

/// Every key matching `pattern`: a whole walk, failing rather than
/// holding more than [`max_reply_bytes`] of keys.
pub async fn keys<K: Keyspace>(ks: &K, pattern: Bytes) -> Reply {
    let budget = crate::protocol::max_reply_bytes(&ks.limits());
    let (mut cursor, mut bytes, mut out) = (0, 0, Vec::new());
    loop {
        let (next, keys) = match ks.scan(cursor, WALK_STEP, pattern.clone()).await {
            Ok(step) => step,
            Err(e) => return Reply::Error(e),
        };
        for key in keys {
            bytes += key.len() + 16;
            if bytes > budget {
                return Reply::Error(crate::protocol::ErrorReply::too_large(budget));
            }
            out.push(Some(key));
        }
        if next == 0 {
            return Reply::Values(out);
        }
        cursor = next;
    }
}

/// A key from the first stretch holding any, walking from a random
/// cursor (so not uniform: a key after an empty stretch is likelier);
/// nil when there is none.
pub async fn random_key<K: Keyspace>(ks: &K) -> Reply {
    let start = crate::sys::random_u64() % ks.cursor_span().max(1);
    let (mut cursor, mut wrapped) = (start, false);
    loop {
        let (next, mut keys) = match ks.scan(cursor, 16, Bytes::new()).await {
            Ok(step) => step,
            Err(e) => return Reply::Error(e),
        };
        if !keys.is_empty() {
            let pick = (crate::sys::random_u64() % keys.len() as u64) as usize;
            return Reply::Value(keys.swap_remove(pick));
        }
        // Around once: from the start to the end, then from 0 back to it.
        if next == 0 {
            if wrapped || start == 0 {
                return Reply::not_found();
            }
            wrapped = true;
        } else if wrapped && next >= start {
            return Reply::not_found();
        }
        cursor = next;
    }
}

pub async fn flush<K: Keyspace>(ks: &K) -> Reply {
    match ks.flush().await {
        Ok(()) => Reply::Done,
        Err(e) => Reply::Error(e),
    }
}

pub async fn db_size<K: Keyspace>(ks: &K) -> Reply {
    match ks.db_size().await {
        Ok(n) => Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => Reply::Error(e),
    }
}
