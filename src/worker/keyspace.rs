//! The worker as the command table sees it: its store, stamped with its
//! clock, reads refused while it refills.

use super::store::Applied;
use super::{antientropy, Worker};
use crate::command::decode_fields;
use crate::command::{Info, Keyspace, Updated};
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::fields::{FieldUpdate, Fields};
use crate::protocol::{ErrorCode, ErrorReply, InfoSections, Limits, SetWhen, Update};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Direct clients: the command table against the store, stamped with the
/// worker's own clock. Reads (and conditional sets, which read) wait for
/// the refill: until then they answer "loading".
impl Keyspace for Worker {
    const CONCURRENT: bool = false;
    const ROLE: &'static str = "worker";
    const FAN_OUT: usize = 1;

    fn limits(&self) -> Limits {
        self.live.load().limits
    }

    async fn read(&self, key: Bytes) -> Result<Option<(Bytes, u64)>, ErrorReply> {
        self.ready()?;
        match self.store.get(&key) {
            Some(found) if found.hash => Err(ErrorReply::wrong_type()),
            found => Ok(found.map(|found| (found.value, found.ttl_ms))),
        }
    }

    async fn read_hash(&self, key: Bytes) -> Result<Option<(Fields, u64)>, ErrorReply> {
        match self.read_hash(&key)? {
            Some(found) => Ok(Some((decode_fields(&found.value)?, found.ttl_ms))),
            None => Ok(None),
        }
    }

    async fn write_fields(
        &self,
        key: Bytes,
        fields: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(u32, u32), ErrorReply> {
        self.write_fields_direct(&key, fields)
    }

    async fn update_field(
        &self,
        key: Bytes,
        field: Bytes,
        update: FieldUpdate,
    ) -> Result<(bool, Option<Bytes>), ErrorReply> {
        Updated::from_response(self.decide_field(&key, 0, field, &update))
            .map(|u| (u.changed, u.value))
    }

    async fn update(&self, key: Bytes, update: Update) -> Result<Updated, ErrorReply> {
        Updated::from_response(self.decide_update(&key, 0, &update))
    }

    async fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> Result<bool, ErrorReply> {
        if when != SetWhen::Always {
            self.ready()?;
        }
        match self.set_direct(&key, &value, ttl, when) {
            Ok(applied) => Ok(applied != Applied::Unmet),
            Err(e) => Err(Worker::store_error(e)),
        }
    }

    /// Deletes at a version of this worker's clock, stamped again above
    /// a newer one the entry holds (an `EXPIRE` ticks an entry's version
    /// past the clock).
    async fn delete(&self, key: Bytes) -> Result<bool, ErrorReply> {
        loop {
            match self.store.delete_at(&key, self.clock.next()) {
                Ok((Applied::Newer(held), _)) => self.clock.observe(held),
                Ok((applied, was_live)) => return Ok(applied == Applied::Yes && was_live),
                Err(e) => return Err(Worker::store_error(e)),
            }
        }
    }

    async fn ttl(&self, key: Bytes) -> Result<Option<u64>, ErrorReply> {
        self.ready()?;
        Ok(self.store.meta(&key).map(|(_, ttl_ms)| ttl_ms))
    }

    async fn expire(&self, key: Bytes, ttl: Duration) -> Result<bool, ErrorReply> {
        self.ready()?;
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let Some((version, _)) = self.store.meta(&key) else {
            return Ok(false);
        };
        // The entry takes the version after its own: the clock goes past
        // it, so a later write of this worker is newer.
        self.clock.observe(crate::version::after(version));
        Ok(self.store.expire(&key, ttl_ms, Some(version)))
    }

    /// The cursor is the anti-entropy bucket to go on from.
    async fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Bytes,
    ) -> Result<(u64, Vec<Bytes>), ErrorReply> {
        self.ready()?;
        if cursor >= self.cursor_span() {
            return Err(ErrorReply::new(ErrorCode::Parse, "invalid cursor"));
        }
        let (next, keys) = self.scan_keys(cursor as usize, count, &pattern);
        let next = if next >= DIGEST_BUCKETS {
            0
        } else {
            next as u64
        };
        Ok((next, keys))
    }

    fn cursor_span(&self) -> u64 {
        DIGEST_BUCKETS as u64
    }

    async fn flush(&self) -> Result<(), ErrorReply> {
        Worker::flush(self);
        Ok(())
    }

    async fn db_size(&self) -> Result<u64, ErrorReply> {
        Ok(self.store.len())
    }

    async fn info(&self, _: InfoSections) -> Info {
        use crate::command::server::human;
        let usage = self.store.usage();
        let max = self.store.max_memory() as u64;
        let stats = &self.store.stats;
        Info {
            max_clients: self.live.load().max_connections,
            memory: vec![
                ("used_memory", usage.charged_bytes.to_string()),
                ("used_memory_human", human(usage.charged_bytes)),
                ("maxmemory", max.to_string()),
                ("maxmemory_human", human(max)),
                ("maxmemory_policy", "sieve".to_string()),
                ("rcache_value_bytes", usage.raw_value_bytes.to_string()),
                (
                    "rcache_stored_value_bytes",
                    usage.stored_value_bytes.to_string(),
                ),
            ],
            stats: vec![
                (
                    "evicted_keys",
                    stats.evictions.load(Ordering::Relaxed).to_string(),
                ),
                (
                    "expired_keys",
                    stats.expirations.load(Ordering::Relaxed).to_string(),
                ),
            ],
            keys: Some(usage.entries),
            rcache: vec![
                ("rcache_state", self.state().name().to_string()),
                (
                    "rcache_partner",
                    self.partner()
                        .map(|p| String::clone(&p))
                        .unwrap_or_default(),
                ),
                ("rcache_tombstones", usage.tombstones.to_string()),
            ],
            loading: self.state() != crate::protocol::link::WorkerState::Ready,
            ..Info::default()
        }
    }

    fn server_metrics(&self) -> &crate::metrics::ServerMetrics {
        &self.metrics.server
    }

    async fn memory_usage(&self, key: Bytes) -> Result<Option<u64>, ErrorReply> {
        Ok(self.store.charge_of(&key).map(|bytes| bytes as u64))
    }

    async fn describe(&self) -> String {
        let usage = self.store.usage();
        // The whole store's digest: partners holding the same versions of
        // the same keys show the same number.
        let digest = antientropy::digest(&self.store)
            .await
            .iter()
            .fold(0u64, |sum, b| sum.wrapping_add(b.hash));
        format!(
            "worker={} partner={} state={} complete={} entries={} tombstones={} \
             refilled={} synced={} repaired={} digest={digest:016x}",
            self.config.listen,
            self.partner_name(),
            self.state().name(),
            self.incomplete().is_none(),
            usage.entries,
            usage.tombstones,
            self.refilled.load(Ordering::Relaxed),
            self.anti_entropy.rounds(),
            self.anti_entropy.repaired(),
        )
    }
}
