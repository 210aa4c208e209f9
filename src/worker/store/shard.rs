//! One shard: its slab, its table, its arena, its digests and its SIEVE
//! queue.
//!
//! Each shard keeps its entries in insertion order with a "visited" bit that a
//! hit sets. To evict, a hand walks from the oldest entry towards the newest:
//! visited entries get their bit cleared and stay where they are, the first
//! unvisited one is evicted, and the hand stays there for the next eviction.
//! A hit costs one bit write under the shard lock (LRU moves the entry on
//! every hit), new entries that are never read again are evicted quickly
//! (scan resistance that LRU lacks), and the hit ratio on skewed web and cache
//! traces matches or beats LRU (Zhang et al., NSDI 2024). The test
//! `sieve_beats_lru_on_a_zipf_trace` measures that on a Zipf trace.
//!

use super::digest::{content_print, fingerprint};
use super::slot::{pack_meta, NewSlot, Put, Slot};
use super::{
    key_len, Applied, BUCKETS_PER_SHARD, FLAG_FREE, FLAG_TOMBSTONE, FLAG_VISITED, NEVER, NIL,
};
use crate::hash::bucket_of_hash;
use crate::protocol::link::BucketDigest;
use crate::worker::arena::{Arena, NO_LOC};
use hashbrown::HashTable;
use std::hash::BuildHasher;

#[derive(Default)]
pub(super) struct Shard {
    pub(super) table: HashTable<u32>,
    pub(super) slots: Vec<Slot>,
    pub(super) arena: Arena,
    pub(super) free: Vec<u32>,
    pub(super) newest: u32,
    pub(super) oldest: u32,
    pub(super) hand: u32,
    /// Next slab index the active expiry looks at.
    pub(super) expiry_cursor: usize,
    pub(super) entries: u64,
    pub(super) tombstones: u64,
    pub(super) raw_value_bytes: u64,
    pub(super) stored_value_bytes: u64,
    /// The digest of this shard's buckets (see the module's Digests).
    pub(super) digest: Vec<BucketDigest>,
    /// Per bucket, the newest version this shard evicted (0: none). Eviction
    /// keeps no record of the key, so a value older than this for a key the
    /// shard lacks may be an older copy of one it evicted: such a value
    /// (from the partner's repair, a late hint, a write stamped by a clock
    /// behind) is refused, so the key reads as a miss, never as an older
    /// value. 512 bytes a shard.
    pub(super) evicted: Vec<u64>,
}

impl Shard {
    pub(super) fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let (slots, arena) = (&self.slots, &self.arena);
        let key_len = key_len(key);
        self.table
            .find(hash, |&i| {
                let slot = &slots[i as usize];
                slot.key_len() == key_len && slot.key(arena) == key
            })
            .copied()
    }

    /// Inserts or replaces, keeping the newer version.
    /// `hashes` are the key's table hash and stable hash.
    /// `found`: the key's slab index ([`Shard::find`]).
    pub(super) fn put(
        &mut self,
        found: Option<u32>,
        (hash, key_hash): (u64, u64),
        key: &[u8],
        new: NewSlot<'_>,
        now: u64,
        hasher: &crate::sys::TableHasher,
    ) -> Put {
        if let Some(idx) = found {
            let slot = &self.slots[idx as usize];
            // A hash without live fields reads as missing, and is so to
            // a condition on presence.
            let was_live =
                !slot.is(FLAG_TOMBSTONE) && !slot.expired(now) && !slot.reads_missing(&self.arena);
            // The same write again (a retry after a link broke): already
            // applied, whatever its condition says now.
            if new.version == slot.version && new.content() == slot.content(&self.arena) {
                return Put {
                    applied: Applied::Stale,
                    added: 0,
                    freed: 0,
                    was_live,
                };
            }
            if !new.require.met(was_live.then_some(slot.version)) {
                return Put {
                    applied: Applied::Unmet,
                    added: 0,
                    freed: 0,
                    was_live,
                };
            }
            // An expired entry is the tombstone it is about to become: a
            // tombstone of its version (the partner's, which already
            // turned it into one) replaces it.
            let same_expired = new.version == slot.version
                && new.flags & FLAG_TOMBSTONE != 0
                && !slot.is(FLAG_TOMBSTONE)
                && slot.expired(now);
            let newer = new.force
                || new.version > slot.version
                || same_expired
                || (new.version == slot.version && new.content() > slot.content(&self.arena));
            if !newer {
                return Put {
                    applied: Applied::Newer(slot.version),
                    added: 0,
                    freed: 0,
                    was_live,
                };
            }
            // No live value here (a tombstone, an expired entry): a value
            // is as suspect as for a key the shard lacks.
            if !was_live && !new.force && new.flags & FLAG_TOMBSTONE == 0 {
                if let Some(evicted) = self.evicted_above(key_hash, new.version) {
                    return Put {
                        applied: Applied::Evicted(evicted),
                        added: 0,
                        freed: 0,
                        was_live,
                    };
                }
            }
            let slot = &self.slots[idx as usize];
            let freed = slot.charge(&self.arena);
            let old = slot.loc;
            self.account(idx, -1, key_hash);
            if self.arena.rewrite(old, &new.body()) {
                let slot = &mut self.slots[idx as usize];
                slot.version = new.version;
                slot.meta = pack_meta(new.expires_at, new.key_len, new.flags | FLAG_VISITED);
                self.account(idx, 1, key_hash);
                return Put {
                    applied: Applied::Yes,
                    added: freed,
                    freed,
                    was_live,
                };
            }
            let Some(loc) = self.arena.alloc(key, &new.body()) else {
                // Refused by Store::put before it got here.
                self.account(idx, 1, key_hash);
                return Put {
                    applied: Applied::NoRoom,
                    added: 0,
                    freed: 0,
                    was_live,
                };
            };
            let slot = &mut self.slots[idx as usize];
            slot.loc = loc;
            slot.version = new.version;
            // An overwrite counts as a hit: the key is in use.
            slot.meta = pack_meta(new.expires_at, new.key_len, new.flags | FLAG_VISITED);
            let added = slot.charge(&self.arena);
            self.account(idx, 1, key_hash);
            self.arena.free(old);
            self.compact_if_needed(hasher);
            return Put {
                applied: Applied::Yes,
                added,
                freed,
                was_live,
            };
        }
        if !new.require.met(None) {
            return Put {
                applied: Applied::Unmet,
                added: 0,
                freed: 0,
                was_live: false,
            };
        }
        if new.flags & FLAG_TOMBSTONE == 0 {
            if let Some(evicted) = self.evicted_above(key_hash, new.version) {
                return Put {
                    applied: Applied::Evicted(evicted),
                    added: 0,
                    freed: 0,
                    was_live: false,
                };
            }
        }
        if new.replace_only {
            return Put {
                applied: Applied::NoRoom,
                added: 0,
                freed: 0,
                was_live: false,
            };
        }
        let Some(loc) = self.arena.alloc(key, &new.body()) else {
            // Refused by Store::put before it got here.
            return Put {
                applied: Applied::NoRoom,
                added: 0,
                freed: 0,
                was_live: false,
            };
        };
        let slot = Slot {
            loc,
            version: new.version,
            meta: pack_meta(new.expires_at, new.key_len, new.flags),
            newer: NIL,
            older: self.newest,
        };
        let added = slot.charge(&self.arena);
        let idx = match self.free.pop() {
            Some(idx) => {
                self.slots[idx as usize] = slot;
                idx
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        if self.newest != NIL {
            self.slots[self.newest as usize].newer = idx;
        }
        self.newest = idx;
        if self.oldest == NIL {
            self.oldest = idx;
        }
        let (slots, arena) = (&self.slots, &self.arena);
        self.table.insert_unique(hash, idx, |&i| {
            hasher.hash_one(slots[i as usize].key(arena))
        });
        self.account(idx, 1, key_hash);
        Put {
            applied: Applied::Yes,
            added,
            freed: 0,
            was_live: false,
        }
    }

    /// Adds (`sign` 1) or removes (-1) a slot's share of the shard's sizes
    /// and of its bucket's digest (`key_hash` is its key's stable hash).
    pub(super) fn account(&mut self, idx: u32, sign: i64, key_hash: u64) {
        let slot = &self.slots[idx as usize];
        let print = fingerprint(
            key_hash,
            slot.version,
            slot.is(FLAG_TOMBSTONE),
            content_print(slot, &self.arena),
        );
        if let Some(d) = self
            .digest
            .get_mut(bucket_of_hash(key_hash) as usize % BUCKETS_PER_SHARD)
        {
            if sign > 0 {
                d.hash = d.hash.wrapping_add(print);
                d.entries += 1;
            } else {
                d.hash = d.hash.wrapping_sub(print);
                d.entries = d.entries.saturating_sub(1);
            }
        }
        let (entries, tombstones, raw, stored) = if slot.is(FLAG_TOMBSTONE) {
            (0, 1, 0, 0)
        } else {
            let (value, raw_len) = slot.value(&self.arena);
            (1, 0, u64::from(raw_len), value.len() as u64)
        };
        let apply = |total: &mut u64, n: u64| {
            *total = if sign > 0 {
                *total + n
            } else {
                total.saturating_sub(n)
            }
        };
        apply(&mut self.entries, entries);
        apply(&mut self.tombstones, tombstones);
        apply(&mut self.raw_value_bytes, raw);
        apply(&mut self.stored_value_bytes, stored);
    }

    /// Unlinks and frees slot `idx`; returns the bytes it was charged.
    pub(super) fn remove(&mut self, idx: u32, hasher: &crate::sys::TableHasher) -> usize {
        let key_hash = crate::hash::key_hash(self.slots[idx as usize].key(&self.arena));
        self.account(idx, -1, key_hash);
        let (newer, older, hash, charge) = {
            let slot = &self.slots[idx as usize];
            (
                slot.newer,
                slot.older,
                hasher.hash_one(slot.key(&self.arena)),
                slot.charge(&self.arena),
            )
        };
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == idx) {
            entry.remove();
        }
        if newer != NIL {
            self.slots[newer as usize].older = older;
        } else {
            self.newest = older;
        }
        if older != NIL {
            self.slots[older as usize].newer = newer;
        } else {
            self.oldest = newer;
        }
        if self.hand == idx {
            self.hand = newer;
        }
        let slot = &mut self.slots[idx as usize];
        let loc = std::mem::replace(&mut slot.loc, NO_LOC);
        slot.meta = pack_meta(NEVER, 0, FLAG_FREE);
        slot.newer = NIL;
        slot.older = NIL;
        self.free.push(idx);
        self.arena.free(loc);
        self.compact_if_needed(hasher);
        charge
    }

    /// Compacts one arena segment when its holes ask for it (see
    /// [`Arena::wants_compaction`]): at most one segment's copy per write,
    /// so no write holds the lock for long.
    pub(super) fn compact_if_needed(&mut self, hasher: &crate::sys::TableHasher) {
        if !self.arena.wants_compaction() {
            return;
        }
        let Shard {
            table,
            slots,
            arena,
            ..
        } = self;
        arena.compact(|arena, from, to| {
            let hash = hasher.hash_one(arena.get(to).0);
            match table.find(hash, |&i| slots[i as usize].loc == from) {
                Some(&idx) => {
                    slots[idx as usize].loc = to;
                    true
                }
                None => false,
            }
        });
    }

    /// SIEVE: walks the hand from old to new, clearing visited bits, and
    /// evicts the first unvisited entry. Returns the bytes freed.
    pub(super) fn evict_one(&mut self, hasher: &crate::sys::TableHasher) -> Option<usize> {
        if self.oldest == NIL {
            return None;
        }
        let mut idx = if self.hand == NIL {
            self.oldest
        } else {
            self.hand
        };
        loop {
            let slot = &mut self.slots[idx as usize];
            if !slot.is(FLAG_VISITED) {
                break;
            }
            slot.set_flags(slot.flags() & !FLAG_VISITED);
            idx = if slot.newer == NIL {
                self.oldest
            } else {
                slot.newer
            };
        }
        self.hand = self.slots[idx as usize].newer;
        Some(self.evict_slot(idx, hasher))
    }

    /// The newest version evicted from `key_hash`'s bucket, if it is not
    /// older than `version`.
    pub(super) fn evicted_above(&self, key_hash: u64, version: u64) -> Option<u64> {
        let bucket = bucket_of_hash(key_hash) as usize % BUCKETS_PER_SHARD;
        self.evicted
            .get(bucket)
            .copied()
            .filter(|&evicted| evicted >= version && evicted > 0)
    }

    /// Removes a slot for room, remembering its version in its bucket's
    /// eviction mark. Returns the bytes freed.
    pub(super) fn evict_slot(&mut self, idx: u32, hasher: &crate::sys::TableHasher) -> usize {
        let slot = &self.slots[idx as usize];
        let bucket = bucket_of_hash(crate::hash::key_hash(slot.key(&self.arena))) as usize
            % BUCKETS_PER_SHARD;
        let version = slot.version;
        if let Some(mark) = self.evicted.get_mut(bucket) {
            *mark = (*mark).max(version);
        }
        self.remove(idx, hasher)
    }

    /// An expired slot: an entry becomes a tombstone of its version until
    /// `tombstone_ms` after its deadline (removed if that has passed too),
    /// a tombstone is removed. Returns the bytes (charged, freed).
    pub(super) fn expire_slot(
        &mut self,
        idx: u32,
        now: u64,
        tombstone_ms: u64,
        hasher: &crate::sys::TableHasher,
    ) -> (usize, usize) {
        let slot = &self.slots[idx as usize];
        let until = slot.expires_at().saturating_add(tombstone_ms);
        if slot.is(FLAG_TOMBSTONE) || until <= now {
            return (0, self.remove(idx, hasher));
        }
        let key = slot.key(&self.arena).to_vec();
        let key_hash = crate::hash::key_hash(&key);
        let (old, freed) = (slot.loc, slot.charge(&self.arena));
        let Some(loc) = self.arena.alloc(&key, &[&[], &[]]) else {
            return (0, self.remove(idx, hasher));
        };
        self.account(idx, -1, key_hash);
        let slot = &mut self.slots[idx as usize];
        slot.loc = loc;
        slot.meta = pack_meta(until, key_len(&key), FLAG_TOMBSTONE);
        let added = slot.charge(&self.arena);
        self.account(idx, 1, key_hash);
        self.arena.free(old);
        self.compact_if_needed(hasher);
        (added, freed)
    }

    /// Expires slots among the next `budget` slab indices (see
    /// [`Shard::expire_slot`]). Returns (entries expired, tombstones
    /// removed, bytes charged, bytes freed).
    pub(super) fn expire(
        &mut self,
        now: u64,
        budget: usize,
        tombstone_ms: u64,
        hasher: &crate::sys::TableHasher,
    ) -> (usize, usize, usize, usize) {
        let (mut entries, mut tombstones, mut added, mut freed) = (0, 0, 0, 0);
        let len = self.slots.len();
        if len == 0 {
            return (0, 0, 0, 0);
        }
        for _ in 0..budget.min(len) {
            if self.expiry_cursor >= len {
                self.expiry_cursor = 0;
            }
            let idx = self.expiry_cursor as u32;
            self.expiry_cursor += 1;
            let slot = &self.slots[idx as usize];
            if slot.is(FLAG_FREE) || !slot.expired(now) {
                continue;
            }
            if slot.is(FLAG_TOMBSTONE) {
                tombstones += 1;
            } else {
                entries += 1;
            }
            let (a, f) = self.expire_slot(idx, now, tombstone_ms, hasher);
            added += a;
            freed += f;
        }
        (entries, tombstones, added, freed)
    }
}
