//! Server and connection commands: `PING`, `AUTH`, `EXIT`, `INFO`,
//! `CLUSTER`. (The session answers `AUTH` and `EXIT` itself; run here they
//! only succeed.)

use super::Keyspace;
use crate::protocol::{resp, Reply};

pub fn ping() -> Reply {
    Reply::Pong
}

pub fn done() -> Reply {
    Reply::Done
}

pub async fn info<K: Keyspace>(ks: &K) -> Reply {
    let info = ks.info().await;
    Reply::Value(resp::info_text(K::ROLE, &info.fields, info.keys).into())
}

pub async fn cluster<K: Keyspace>(ks: &K) -> Reply {
    Reply::Value(ks.describe().await.into())
}
