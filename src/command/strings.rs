//! String commands: `GET`, `SET`, `MGET`, `MSET`.

use super::{each, Keyspace};
use crate::protocol::{max_reply_bytes, ErrorReply, Reply, SetWhen};
use bytes::Bytes;
use std::time::Duration;

pub async fn get<K: Keyspace>(ks: &K, key: Bytes) -> Reply {
    match ks.get(key).await {
        Ok(Some(value)) => Reply::Value(value),
        Ok(None) => Reply::not_found(),
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
        |key| ks.get(key.clone()),
        |value| {
            let value = value?;
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
