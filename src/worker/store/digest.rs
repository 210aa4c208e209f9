//! Anti-entropy digests of the store.
//!
//! A shard keeps the anti-entropy digest of its buckets up to date as
//! entries come and go (the wrapping sum of each entry's fingerprint), so a
//! digest costs nothing per entry: partners whose data agree compare 4,096
//! numbers and are done. An entry counts until it is removed (expired
//! entries included, until the active expiry or a read removes them).
//!

use super::slot::Slot;
use super::{Store, BUCKETS_PER_SHARD, FLAG_FREE, FLAG_HASH, FLAG_TOMBSTONE, SHARD_COUNT};
use crate::hash::{digest_bucket, DIGEST_BUCKETS};
use crate::protocol::link::{BucketDigest, Entry, Summary};
use crate::worker::arena::Arena;
use bytes::Bytes;

/// A set of anti-entropy buckets.
#[derive(Debug, Clone)]
pub struct BucketSet([u64; DIGEST_BUCKETS / 64]);

impl BucketSet {
    pub fn new(buckets: &[u16]) -> BucketSet {
        let mut set = BucketSet([0; DIGEST_BUCKETS / 64]);
        for &b in buckets {
            let b = b as usize % DIGEST_BUCKETS;
            set.0[b / 64] |= 1 << (b % 64);
        }
        set
    }

    pub fn contains(&self, bucket: u16) -> bool {
        let b = bucket as usize % DIGEST_BUCKETS;
        self.0[b / 64] & (1 << (b % 64)) != 0
    }

    /// The set's buckets in `shard`, one bit per bucket of the shard.
    pub(super) fn of_shard(&self, shard: usize) -> u64 {
        const _: () = assert!(BUCKETS_PER_SHARD == 64);
        self.0[shard % SHARD_COUNT]
    }

    /// The shards holding a bucket of the set.
    pub fn shards(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SHARD_COUNT).filter(|&s| self.of_shard(s) != 0)
    }
}

/// An entry's share of its bucket's digest: two partners holding the same
/// version (and kind, and for a hash the same fields: `content`) of a key
/// add the same number.
pub(super) fn fingerprint(key_hash: u64, version: u64, tombstone: bool, content: u64) -> u64 {
    crate::hash::fmix64(key_hash ^ version.rotate_left(17) ^ tombstone as u64 ^ content)
}

/// What a slot's content adds to its fingerprint and summary: for a hash,
/// a hash of its fields' bytes (replicas of one version may hold
/// different fields until they merged: two `HSET`s of different fields
/// arrived in different orders); 0 for anything else, whose version says
/// it all.
pub(super) fn content_print(slot: &Slot, arena: &Arena) -> u64 {
    if slot.is(FLAG_HASH) && !slot.is(FLAG_TOMBSTONE) {
        crate::hash::key_hash(slot.value(arena).0) | 1
    } else {
        0
    }
}

impl Store {
    /// Copies entries (tombstones included) of one shard from slab index
    /// `cursor` on into `out` until about `max_bytes` are taken. Returns
    /// the cursor to continue from, or `None` when the shard is done.
    ///
    /// Slots never move while they hold an entry, so an entry that stays in
    /// the store during a scan is copied exactly once.
    pub fn scan(
        &self,
        shard: usize,
        cursor: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Option<usize> {
        let now = self.now();
        let shard = self.shard(shard);
        let mut taken = 0;
        let mut i = cursor;
        while i < shard.slots.len() {
            let slot = &shard.slots[i];
            i += 1;
            if slot.is(FLAG_FREE) || slot.expired(now) {
                continue;
            }
            taken += shard.arena.len(slot.loc) + 32;
            out.push(slot.entry(&shard.arena, now));
            if taken >= max_bytes {
                return Some(i);
            }
        }
        None
    }

    /// Copies the digest of one shard's buckets into `out` (indexed by
    /// [`digest_bucket`]). Two stores holding the same versions of the same
    /// keys have equal digests.
    pub fn digest_shard(&self, shard: usize, out: &mut [BucketDigest]) {
        let first = shard * BUCKETS_PER_SHARD;
        if let Some(out) = out.get_mut(first..first + BUCKETS_PER_SHARD) {
            out.copy_from_slice(&self.shard(shard).digest);
        }
    }

    /// Summaries of one shard's entries (tombstones included) that fall in
    /// `buckets`; a shard holding none of them is not scanned.
    pub fn summarize_shard(&self, shard: usize, buckets: &BucketSet, out: &mut Vec<Summary>) {
        let wanted = buckets.of_shard(shard);
        if wanted == 0 {
            return;
        }
        let now = self.now();
        let shard = self.shard(shard);
        for slot in shard.slots.iter() {
            if slot.is(FLAG_FREE) || slot.expired(now) {
                continue;
            }
            let key = slot.key(&shard.arena);
            if wanted != u64::MAX
                && wanted & 1 << (digest_bucket(key) as usize % BUCKETS_PER_SHARD) == 0
            {
                continue;
            }
            out.push(Summary {
                key: Bytes::copy_from_slice(key),
                version: slot.version,
                tombstone: slot.is(FLAG_TOMBSTONE),
                content: content_print(slot, &shard.arena),
            });
        }
    }
}
