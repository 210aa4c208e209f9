//! What a migration needs of the store: the keys written while it runs
//! ([`Watch`]), a count of the keys that move, and dropping keys that
//! moved away (no tombstone: the worker no longer owns them).

use super::{Store, FLAG_FREE};
use crate::protocol::link::Entry;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Which keys move away from this worker.
pub type Moving = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Keys written since the watch began that `moving` selects: what a
/// migration sends again after its pass, so a write that lands behind the
/// pass's scan still reaches the key's new pair.
pub struct Watch {
    pub moving: Moving,
    keys: Mutex<HashSet<Bytes>>,
}

impl Watch {
    pub fn new(moving: Moving) -> Arc<Watch> {
        Arc::new(Watch {
            moving,
            keys: Mutex::default(),
        })
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashSet<Bytes>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys written since the last call.
    pub fn take(&self) -> Vec<Bytes> {
        self.keys().drain().collect()
    }

    pub fn len(&self) -> usize {
        self.keys().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Store {
    /// Starts (or, with `None`, ends) recording the keys written that
    /// `watch` selects.
    pub fn watch(&self, watch: Option<Arc<Watch>>) {
        self.watch.store(watch);
    }

    /// The watch in force.
    pub fn watching(&self) -> Option<Arc<Watch>> {
        self.watch.load_full()
    }

    /// Records a write of `key` if a watch selects it.
    pub(super) fn note_write(&self, key: &[u8]) {
        let watch = self.watch.load();
        if let Some(watch) = watch.as_ref() {
            if (watch.moving)(key) {
                watch.keys().insert(Bytes::copy_from_slice(key));
            }
        }
    }

    /// The entry under `key` as it is handed to the key's new pair: as
    /// [`Store::entry`], and an entry whose TTL ran out since it was
    /// written too, with the shortest TTL, so that an older copy the new
    /// pair holds (a pass sent it before the TTL was set) expires there
    /// as well.
    pub fn handoff_entry(&self, key: &[u8]) -> Option<Entry> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let shard = self.shard(index);
        let idx = shard.find(hash, key)?;
        Some(shard.slots[idx as usize].entry(&shard.arena, now))
    }

    /// How many of one shard's entries (tombstones too) `select` picks.
    pub fn count_where(&self, shard: usize, select: &dyn Fn(&[u8]) -> bool) -> u64 {
        let shard = self.shard(shard);
        shard
            .slots
            .iter()
            .filter(|slot| !slot.is(FLAG_FREE) && select(slot.key(&shard.arena)))
            .count() as u64
    }

    /// Keys of one shard's entries (tombstones too) that `select` picks.
    pub fn keys_where(&self, shard: usize, select: &dyn Fn(&[u8]) -> bool) -> Vec<Bytes> {
        let shard = self.shard(shard);
        shard
            .slots
            .iter()
            .filter(|slot| !slot.is(FLAG_FREE))
            .map(|slot| slot.key(&shard.arena))
            .filter(|key| select(key))
            .map(Bytes::copy_from_slice)
            .collect()
    }

    /// Drops whatever `key` holds, tombstone included, leaving nothing:
    /// the key moved to another pair. Returns whether something was there.
    pub fn forget(&self, key: &[u8]) -> bool {
        let (hash, _, index) = self.locate(key);
        let mut shard = self.shard(index);
        let Some(idx) = shard.find(hash, key) else {
            return false;
        };
        let freed = shard.remove(idx, &self.hasher);
        drop(shard);
        self.charged.fetch_sub(freed, Ordering::Relaxed);
        true
    }
}
