//! The router as the command table sees it.

use super::pool::{Backend, Health};
use super::route::tell_missed;
use super::{Router, FAN_OUT};
use crate::command::{decode_fields, Info, Keyspace, Updated};
use crate::hash::DIGEST_BUCKETS;
use crate::join::join_all;
use crate::protocol::fields::{FieldUpdate, Fields};
use crate::protocol::link::{Request, Response};
use crate::protocol::{
    ClusterChange, ErrorCode, ErrorReply, InfoSections, Limits, SetWhen, Update,
};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Whether a worker of the pair said the key was there (a delete, an
/// expire).
fn existed(responses: &[Response]) -> bool {
    responses
        .iter()
        .any(|r| matches!(r, Response::Del { existed: true }))
}

fn unexpected(answer: &Response) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        format!("unexpected answer {answer:?}"),
    )
}

/// Clients: the command table against the cluster, each key at its pair.
impl Keyspace for Router {
    const CONCURRENT: bool = true;
    const ROLE: &'static str = "orchestrator";
    const FAN_OUT: usize = FAN_OUT;

    fn limits(&self) -> Limits {
        self.live.load().limits
    }

    async fn read(&self, key: Bytes) -> Result<Option<(Bytes, u64)>, ErrorReply> {
        match self.read_with(key.clone(), Request::Get { key }).await? {
            Response::Value { value, ttl_ms, .. } => Ok(Some((value, ttl_ms))),
            Response::NotFound => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    async fn read_hash(&self, key: Bytes) -> Result<Option<(Fields, u64)>, ErrorReply> {
        self.hashes_reach(&key)?;
        match self.read_with(key.clone(), Request::HGet { key }).await? {
            Response::Value { value, ttl_ms, .. } => Ok(Some((decode_fields(&value)?, ttl_ms))),
            Response::NotFound => Ok(None),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes the fields to both workers of the pair. The counts told are
    /// the deciding worker's ([`Backend::decider`]: the one that has
    /// served longest, not a worker that came back and may have had the
    /// write from its partner's refill or anti-entropy first), or the one
    /// answer there is.
    async fn write_fields(
        &self,
        key: Bytes,
        fields: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(u32, u32), ErrorReply> {
        self.hashes_reach(&key)?;
        let request = Request::HSet {
            version: self.clock.next(),
            key: key.clone(),
            fields,
            base: None,
        };
        let responses = self.write(&key, request).await?;
        // Both answered: in the pair's order.
        let decider = (responses.len() == 2)
            .then(|| {
                let topology = self.topology();
                let slot = topology.locate(&key);
                Backend::decider(&topology.pairs[slot.pair], slot.first, self.probe.settle())
            })
            .flatten()
            .unwrap_or(0);
        match responses.get(decider).or(responses.first()) {
            Some(Response::FieldsWritten { added, removed }) => Ok((*added, *removed)),
            Some(other) => Err(unexpected(other)),
            None => Err(ErrorReply::new(
                ErrorCode::Unavailable,
                "no answer to the field writes",
            )),
        }
    }

    async fn update_field(
        &self,
        key: Bytes,
        field: Bytes,
        update: FieldUpdate,
    ) -> Result<(bool, Option<Bytes>), ErrorReply> {
        self.hashes_reach(&key)?;
        Updated::from_response(self.update_field_decided(key, field, update).await?)
            .map(|u| (u.changed, u.value))
    }

    async fn update(&self, key: Bytes, update: Update) -> Result<Updated, ErrorReply> {
        Updated::from_response(self.update_decided(key, update).await?)
    }

    /// Writes `key` to its pair: `false` when the condition `when` held on
    /// neither worker.
    async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> Result<bool, ErrorReply> {
        let request = Request::Set {
            version: self.clock.next(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            key: key.clone(),
            value,
            when,
        };
        let responses = self.write(&key, request).await?;
        Ok(!responses.iter().all(|r| matches!(r, Response::NotStored)))
    }

    /// Deletes `key`: whether either worker had it.
    async fn delete(&self, key: Bytes) -> Result<bool, ErrorReply> {
        let request = Request::Del {
            version: self.clock.next(),
            key: key.clone(),
        };
        Ok(existed(&self.write(&key, request).await?))
    }

    async fn ttl(&self, key: Bytes) -> Result<Option<u64>, ErrorReply> {
        Ok(self.meta(key).await?.map(|(_, ttl_ms)| ttl_ms))
    }

    async fn expire(&self, key: Bytes, ttl: Duration) -> Result<bool, ErrorReply> {
        // The TTL goes to the value read now (see `Store::expire`): a write
        // stamped meanwhile stays newer than the change.
        let Some((version, _)) = self.meta(key.clone()).await? else {
            return Ok(false);
        };
        self.clock.observe(crate::version::after(version));
        let request = Request::Expire {
            version,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            key: key.clone(),
        };
        Ok(existed(&self.write(&key, request).await?))
    }

    /// The cursor is the pair times the buckets of one, plus the bucket to
    /// go on from: the same on both workers of a pair, so a walk goes on
    /// at the partner when a worker fails.
    async fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Bytes,
    ) -> Result<(u64, Vec<Bytes>), ErrorReply> {
        let topology = self.topology();
        let buckets = DIGEST_BUCKETS as u64;
        if cursor >= topology.pairs.len() as u64 * buckets {
            return Err(ErrorReply::new(ErrorCode::Parse, "invalid cursor"));
        }
        let (index, from) = ((cursor / buckets) as usize, cursor % buckets);
        let request = Request::Scan {
            from: from as u16,
            count: u32::try_from(count.max(1)).unwrap_or(u32::MAX),
            pattern,
        };
        let first = (crate::sys::random_u64() % 2) as usize;
        match self
            .read_from(&topology.pairs[index], index, first, request)
            .await?
        {
            Response::Keys { next, keys } => {
                let next = if u64::from(next) < buckets {
                    index as u64 * buckets + u64::from(next)
                } else if index + 1 < topology.pairs.len() {
                    (index as u64 + 1) * buckets
                } else {
                    0
                };
                Ok((next, keys))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn cursor_span(&self) -> u64 {
        self.topology().pairs.len() as u64 * DIGEST_BUCKETS as u64
    }

    /// Flushes both workers of every pair. A worker that did not answer is
    /// kept from reads until anti-entropy brought it its partner's flush
    /// (the round's first message carries it), and a refill carries it to
    /// a worker that restarts; the reply fails if a pair flushed nowhere.
    async fn flush(&self) -> Result<(), ErrorReply> {
        let topology = self.topology();
        let version = self.clock.next();
        let asks = topology
            .pairs
            .iter()
            .enumerate()
            .map(|(i, pair)| async move {
                let request = Arc::new(Request::Flush { version });
                let (a, b) =
                    tokio::join!(pair[0].call(request.clone()), pair[1].call(request.clone()));
                let flushed = |r: &Result<Response, _>| matches!(r, Ok(Response::Flushed { .. }));
                match (flushed(&a), flushed(&b)) {
                    (true, true) => Ok(()),
                    (false, false) => Err(ErrorReply::new(
                        ErrorCode::Unavailable,
                        format!("no worker of pair {i} flushed ({a:?}, {b:?})"),
                    )),
                    (a_done, _) => {
                        let (missed, holder) = if a_done { (1, 0) } else { (0, 1) };
                        pair[missed].missed_write(&request);
                        tell_missed(&pair[holder]).await;
                        Ok(())
                    }
                }
            });
        // Workers of a pair keys are moving to hold copies of them: they
        // flush too, or the copies would come back once the move settles.
        let joining = topology.joining.iter().map(|b| async move {
            match b.call(Arc::new(Request::Flush { version })).await {
                Ok(Response::Flushed { .. }) => Ok(()),
                other => Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!(
                        "{} (a worker keys are moving to) did not flush ({other:?}): flush again",
                        b.addr
                    ),
                )),
            }
        });
        let (pairs, joining) = tokio::join!(
            join_all(asks.collect()),
            join_all(joining.collect::<Vec<_>>())
        );
        pairs.into_iter().chain(joining).collect()
    }

    /// Live entries in the cluster: one worker's count per pair (an up one
    /// when there is one), asked now.
    async fn db_size(&self) -> Result<u64, ErrorReply> {
        let topology = self.topology();
        let asks = topology
            .pairs
            .iter()
            .enumerate()
            .map(|(i, pair)| async move {
                // An up worker first, then one not known to be down.
                let rank = |b: &Arc<Backend>| match b.health() {
                    Health::Up => 0,
                    Health::Behind | Health::Loading => 1,
                    Health::Down => 2,
                };
                let mut order = [&pair[0], &pair[1]];
                if rank(order[1]) < rank(order[0]) {
                    order.swap(0, 1);
                }
                let mut last = String::new();
                for backend in order {
                    match backend.call(Arc::new(Request::Status)).await {
                        Ok(Response::Status { entries, .. }) => return Ok(entries),
                        Ok(other) => last = format!("unexpected answer {other:?}"),
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(ErrorReply::new(
                    ErrorCode::Unavailable,
                    format!("no worker of pair {i} answered ({last})"),
                ))
            });
        let counts = join_all(asks.collect()).await;
        counts.into_iter().sum()
    }

    async fn info(&self, sections: InfoSections) -> Info {
        let topology = self.topology();
        let up = topology.workers_up();
        let resident = crate::metrics::resident_bytes().unwrap_or(0);
        Info {
            max_clients: self.live.load().max_connections,
            // An orchestrator holds no entries: its memory is the process's.
            memory: vec![
                ("used_memory", resident.to_string()),
                ("used_memory_human", crate::command::server::human(resident)),
            ],
            keys: if sections.has(InfoSections::KEYSPACE) {
                Some(self.db_size().await.unwrap_or(0))
            } else {
                None
            },
            rcache: vec![
                ("rcache_pairs", topology.pairs.len().to_string()),
                ("rcache_workers_up", up.to_string()),
            ],
            ..Info::default()
        }
    }

    fn server_metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.metrics.server
    }

    async fn describe(&self) -> String {
        Router::describe(self).await
    }

    async fn change_cluster(&self, change: ClusterChange) -> Result<String, ErrorReply> {
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        match change {
            ClusterChange::ReplaceWorker { old, new } => {
                Router::replace_worker(self, &text(&old), &text(&new)).await
            }
            ClusterChange::AddPair { a, b } => Router::add_pair(self, &text(&a), &text(&b)).await,
            ClusterChange::RemovePair { worker } => Router::remove_pair(self, &text(&worker)).await,
        }
    }
}
