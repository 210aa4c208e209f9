//! Key and TTL commands: `DEL`, `EXISTS`, `EXPIRE`, `TTL`, `DBSIZE`.

use super::{each, Keyspace};
use crate::protocol::Reply;
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

/// 1 if the key was there and now has the TTL, else 0.
pub async fn expire<K: Keyspace>(ks: &K, key: Bytes, ttl: Duration) -> Reply {
    match ks.expire(key, ttl).await {
        Ok(present) => Reply::Integer(i64::from(present)),
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

pub async fn db_size<K: Keyspace>(ks: &K) -> Reply {
    match ks.db_size().await {
        Ok(n) => Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => Reply::Error(e),
    }
}
