//! Walking and flushing the whole store: `SCAN`'s cursor over anti-entropy
//! buckets (the same on both partners, so a cursor survives a failover),
//! and `FLUSHDB`'s floor.

use super::{Store, BUCKETS_PER_SHARD, FLAG_FREE, FLAG_TOMBSTONE};
use crate::hash::{bucket_of_hash, key_hash, DIGEST_BUCKETS};
use bytes::Bytes;
use std::sync::atomic::Ordering;

impl Store {
    /// Live keys of whole buckets from bucket `from` on, in bucket order,
    /// that `matches`: buckets are taken until at least `count` keys were
    /// looked at (matching or not, as Redis counts `SCAN`'s work). Returns
    /// the next bucket to walk, [`DIGEST_BUCKETS`] once all were.
    ///
    /// A key present for the whole walk is returned once; one written or
    /// deleted meanwhile may or may not be, as in Redis.
    pub fn keys_from(
        &self,
        from: usize,
        count: usize,
        matches: impl Fn(&[u8]) -> bool,
        out: &mut Vec<Bytes>,
    ) -> usize {
        let now = self.now();
        let mut bucket = from;
        let mut looked = 0;
        while bucket < DIGEST_BUCKETS {
            let index = bucket / BUCKETS_PER_SHARD;
            // Each key looked at, with a copy if it matches.
            let mut found: Vec<(usize, Option<Bytes>)> = Vec::new();
            {
                let shard = self.shard(index);
                for slot in &shard.slots {
                    if slot.is(FLAG_FREE)
                        || slot.is(FLAG_TOMBSTONE)
                        || slot.expired(now)
                        || slot.reads_missing(&shard.arena)
                    {
                        continue;
                    }
                    let key = slot.key(&shard.arena);
                    let b = bucket_of_hash(key_hash(key)) as usize;
                    if b >= bucket {
                        let copy = matches(key).then(|| Bytes::copy_from_slice(key));
                        found.push((b, copy));
                    }
                }
            }
            found.sort_unstable_by_key(|(b, ..)| *b);
            let mut i = 0;
            while i < found.len() {
                let b = found[i].0;
                if looked >= count {
                    return b;
                }
                while i < found.len() && found[i].0 == b {
                    out.extend(found[i].1.take());
                    looked += 1;
                    i += 1;
                }
            }
            bucket = (index + 1) * BUCKETS_PER_SHARD;
            if looked >= count {
                return bucket;
            }
        }
        DIGEST_BUCKETS
    }

    /// Deletes every entry (tombstones too) older than `floor`, and from
    /// now on refuses any write older than it (a set, a delete, a refill
    /// or repair entry: answered as if a newer version were held). Nothing
    /// written before the flush can come back. Returns the entries removed.
    pub fn flush(&self, floor: u64) -> u64 {
        self.floor.fetch_max(floor, Ordering::AcqRel);
        let floor = self.floor();
        let mut removed = 0;
        for index in 0..self.shard_count() {
            let mut shard = self.shard(index);
            let old: Vec<u32> = (0..shard.slots.len() as u32)
                .filter(|&i| {
                    let slot = &shard.slots[i as usize];
                    !slot.is(FLAG_FREE) && slot.version < floor
                })
                .collect();
            let mut freed = 0;
            for idx in old {
                freed += shard.remove(idx, &self.hasher);
                removed += 1;
            }
            drop(shard);
            self.charged.fetch_sub(freed, Ordering::Relaxed);
        }
        removed
    }

    /// The floor of the last flush (0: never flushed).
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Applied, StoreConfig};
    use super::*;

    #[test]
    fn a_scan_walks_every_key_once_in_bucket_order() {
        let store = Store::new(StoreConfig::default());
        for i in 0..5000u64 {
            store
                .set(format!("k{i}").as_bytes(), b"v", None, i + 1)
                .unwrap();
        }
        store.delete(b"k7", 10_000).unwrap();
        let (mut cursor, mut seen, mut calls) = (0, Vec::new(), 0);
        loop {
            let before = seen.len();
            cursor = store.keys_from(cursor, 100, |_| true, &mut seen);
            calls += 1;
            assert!(
                seen.len() - before <= 200,
                "one call took {}",
                seen.len() - before
            );
            if cursor == DIGEST_BUCKETS {
                break;
            }
        }
        let distinct: std::collections::HashSet<_> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), 4999);
        assert_eq!(distinct.len(), 4999);
        assert!(!distinct.contains(&Bytes::from_static(b"k7")));
        assert!(calls > 20, "{calls} calls");
        let mut odd = Vec::new();
        store.keys_from(0, usize::MAX, |k| k.ends_with(b"1"), &mut odd);
        assert_eq!(odd.len(), 500);
    }

    #[test]
    fn a_flush_removes_everything_older_and_refuses_it_after() {
        let store = Store::new(StoreConfig::default());
        for i in 0..1000u64 {
            store
                .set(format!("k{i}").as_bytes(), b"v", None, 100 + i)
                .unwrap();
        }
        store.delete(b"k1", 5000).unwrap();
        store.set(b"late", b"v", None, 10_000).unwrap();
        assert_eq!(store.flush(9_000), 1000);
        assert_eq!(store.len(), 1);
        assert_eq!(store.usage().tombstones, 0);
        assert_eq!(
            store.set(b"k2", b"old", None, 500).unwrap(),
            Applied::Newer(9_000)
        );
        assert!(store.get(b"k2").is_none());
        assert_eq!(store.set(b"k2", b"new", None, 9_001).unwrap(), Applied::Yes);
        // A lower floor later changes nothing.
        assert_eq!(store.flush(10), 0);
        assert_eq!(store.floor(), 9_000);
        assert_eq!(store.len(), 2);
    }
}
