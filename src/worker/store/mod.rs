//! The worker's in-memory store: a sharded map of byte keys to byte values
//! with versions, TTLs, tombstones, lz4 compression and a memory limit
//! enforced by SIEVE eviction.
//!
//! # Layout
//! A key's shard is the top bits of its stable hash ([`crate::hash::key_hash`],
//! the same on every worker), so a shard holds a fixed range of anti-entropy
//! buckets ([`BUCKETS_PER_SHARD`]) and partners can compare and repair a
//! shard at a time. Within a shard, keys hash with foldhash (seeded per
//! process, so clients cannot aim table collisions). Each of the
//! [`SHARD_COUNT`] shards is behind its own mutex; a lock is held
//! only for the map operation itself, never across I/O, compression or
//! decompression. A shard keeps its entries in a slab (`Vec<Slot>`) and maps
//! keys to slab indices with a `hashbrown::HashTable<u32>`, so the table
//! itself costs 5 bytes per bucket. A slot holds where its key and stored
//! value (after a compressed value's raw length) are packed in the shard's
//! [`arena::Arena`], the version, the expiry, key length and flags packed in one
//! word, and the SIEVE queue links: 32 bytes. The arena packs entries back to
//! back in segments (no allocator header or rounding per entry) and
//! compacts a segment when holes pass an eighth of the shard's segment
//! bytes.
//!
//! # Memory accounting
//! Every entry is charged its bytes in the arena (a header of two bytes for
//! short keys and values, the key, a compressed value's 4-byte raw length,
//! the stored value) plus [`ENTRY_OVERHEAD_BYTES`] (slot, table bucket).
//! Holes the arena has not compacted yet are not charged: they are at most
//! about an eighth of a shard's segments, beside the sealed segments'
//! tails (each under 4 KiB) and the active segment. The
//! store-wide charge is kept below `max_memory`: a write that takes it over
//! evicts, in the writer's shard first, until it is back under. The charge may
//! exceed the limit only by the writes in flight on other threads, at most one
//! maximal entry per worker thread.
//!
//! Digests: `digest.rs`; the SIEVE eviction of a shard: `shard.rs`.
//!
//! # Versions, tombstones, expiry
//! A write carries a version; a slot keeps the one with the largest version
//! (ties: the larger bytes win, so replicas converge whatever the arrival
//! order). A delete leaves a tombstone carrying its version for
//! `tombstone_ttl`, so a refill or a late write with an older version cannot
//! bring the key back. An entry whose TTL ran out becomes such a tombstone
//! too (its version, for `tombstone_ttl` from its deadline), so an expiry is
//! as final as a delete: a partner's older copy cannot come back over it.
//! Expired entries are turned into tombstones (and expired tombstones
//! removed) lazily when read and actively by [`Store::expire_step`], which
//! a worker runs in the background.

use super::arena;
use crate::defaults;
use crate::hash::{bucket_of_hash, DIGEST_BUCKETS};
use crate::protocol::fields::Fields;
use crate::protocol::link::{BucketDigest, Entry};
use crate::protocol::SetWhen;
use bytes::Bytes;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

mod digest;
mod hashes;
mod keys;
#[cfg(test)]
mod memory_tests;
mod moving;
mod shard;
mod slot;
#[cfg(test)]
mod tests;

pub use digest::BucketSet;
pub use moving::{Moving, Watch};
use shard::Shard;
pub use slot::Require;
use slot::{NewSlot, Put, Slot};

/// Number of shards: enough that writers on all cores rarely meet on a lock.
pub const SHARD_COUNT: usize = 64;

/// Anti-entropy buckets per shard: shard `s` holds buckets
/// `s * BUCKETS_PER_SHARD ..` (both are the top bits of the stable hash).
pub const BUCKETS_PER_SHARD: usize = DIGEST_BUCKETS / SHARD_COUNT;
const _: () = assert!(DIGEST_BUCKETS % SHARD_COUNT == 0 && SHARD_COUNT.is_power_of_two());

/// The shard of a key whose stable hash is `key_hash`.
fn shard_of(key_hash: u64) -> usize {
    bucket_of_hash(key_hash) as usize / BUCKETS_PER_SHARD
}

/// What an entry costs beyond its bytes in the arena (header, key and
/// stored value): its slot and its table bucket at 7/8 load.
pub const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Slot>() + 6;

const NIL: u32 = u32::MAX;
const NEVER: u64 = u64::MAX;

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_COMPRESSED: u8 = 2;
const FLAG_VISITED: u8 = 4;
const FLAG_FREE: u8 = 8;
/// The value is a hash's fields ([`crate::protocol::fields`]), never
/// compressed: replicas merge it field by field (`hashes.rs`).
const FLAG_HASH: u8 = 16;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub max_memory_bytes: usize,
    pub compression: bool,
    pub compress_min_bytes: usize,
    pub tombstone_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            max_memory_bytes: defaults::MAX_MEMORY as usize,
            compression: true,
            compress_min_bytes: defaults::COMPRESS_MIN_BYTES as usize,
            tombstone_ttl: defaults::TOMBSTONE_TTL,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("entry of {charge} bytes can never fit in max_memory of {max} bytes")]
    TooLarge { charge: usize, max: usize },
}

/// A value read from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub value: Bytes,
    pub version: u64,
    /// Remaining time to live in milliseconds; 0 = no expiry.
    pub ttl_ms: u64,
    /// The value is a hash's fields (their canonical encoding), with at
    /// least one live field.
    pub hash: bool,
}

/// Whether a versioned write took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Yes,
    /// The store already holds this very write (same version, same
    /// content: a retry); nothing changed.
    Stale,
    /// The store holds a newer version (the one given), or the same
    /// version with content that wins the tie: nothing changed, and the
    /// write lost.
    Newer(u64),
    /// A repair brought a key the store lacks while it is near its memory
    /// limit: not stored (see [`Store::apply_repair`]).
    NoRoom,
    /// A value for a key the store lacks, at a version no newer than one
    /// this store evicted from the key's bucket (the version given): it may
    /// be an older copy of a key evicted here, so it is not stored. A
    /// write stamped again above that version is.
    Evicted(u64),
    /// A conditional set found the key present (`NX`) or absent (`XX`).
    Unmet,
    /// Field writes found a live string there (Redis's `WRONGTYPE`).
    WrongType,
}

/// The share of `max_memory` beyond which anti-entropy stops adding keys a
/// worker lacks: under memory pressure partners evict different entries,
/// and re-adding them would only evict others.
pub const REPAIR_ADMIT_PERCENT: usize = 90;

/// Counters a worker exposes.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
}

/// A snapshot of sizes, summed over the shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Live entries (tombstones excluded).
    pub entries: u64,
    pub tombstones: u64,
    /// Value bytes as clients sent them.
    pub raw_value_bytes: u64,
    /// Value bytes as stored (after compression).
    pub stored_value_bytes: u64,
    /// What counts against `max_memory`.
    pub charged_bytes: u64,
    /// Bytes of the arena segments entries are packed in.
    pub arena_bytes: u64,
    /// Bytes of those segments no entry uses (holes, sealed tails).
    pub arena_free_bytes: u64,
}

pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    hasher: crate::sys::TableHasher,
    charged: AtomicUsize,
    /// The version of the last flush: nothing older is stored any more
    /// ([`Store::flush`]).
    floor: AtomicU64,
    /// `config.max_memory_bytes`, which a reload may change.
    max_memory: AtomicUsize,
    config: StoreConfig,
    epoch: Instant,
    pub stats: StoreStats,
    /// Keys written that a migration sends again ([`Watch`]).
    watch: arc_swap::ArcSwapOption<Watch>,
}

impl Store {
    pub fn new(config: StoreConfig) -> Store {
        let shards = (0..SHARD_COUNT)
            .map(|_| {
                Mutex::new(Shard {
                    newest: NIL,
                    oldest: NIL,
                    hand: NIL,
                    digest: vec![BucketDigest::default(); BUCKETS_PER_SHARD],
                    evicted: vec![0; BUCKETS_PER_SHARD],
                    ..Shard::default()
                })
            })
            .collect();
        Store {
            shards,
            hasher: crate::sys::table_hasher(),
            charged: AtomicUsize::new(0),
            floor: AtomicU64::new(0),
            max_memory: AtomicUsize::new(config.max_memory_bytes),
            config,
            epoch: Instant::now(),
            stats: StoreStats::default(),
            watch: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The memory limit in force.
    pub fn max_memory(&self) -> usize {
        self.max_memory.load(Ordering::Relaxed)
    }

    /// Changes the memory limit; a lower one evicts down to it at once,
    /// a few entries per shard per pass (so every shard keeps its hottest
    /// entries and no shard lock is held for long). Returns the entries
    /// evicted.
    pub fn set_max_memory(&self, bytes: usize) -> u64 {
        const PER_SHARD_PER_PASS: usize = 4;
        self.max_memory.store(bytes, Ordering::Relaxed);
        let mut evicted = 0;
        while self.charged.load(Ordering::Relaxed) > bytes {
            let mut progress = false;
            for index in 0..SHARD_COUNT {
                let mut shard = self.shard(index);
                for _ in 0..PER_SHARD_PER_PASS {
                    if self.charged.load(Ordering::Relaxed) <= bytes {
                        break;
                    }
                    let Some(freed) = shard.evict_one(&self.hasher) else {
                        break;
                    };
                    self.charged.fetch_sub(freed, Ordering::Relaxed);
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    evicted += 1;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        evicted
    }

    fn tombstone_ms(&self) -> u64 {
        self.config.tombstone_ttl.as_millis() as u64
    }

    /// Milliseconds since this store was made (monotonic; follows
    /// `tokio::time::pause` in tests).
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A key's table hash, stable hash and shard.
    fn locate(&self, key: &[u8]) -> (u64, u64, usize) {
        let key_hash = crate::hash::key_hash(key);
        (self.hasher.hash_one(key), key_hash, shard_of(key_hash))
    }

    fn shard(&self, index: usize) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard lock leaves the shard consistent
        // (every mutation completes before it can panic), so poisoning is
        // not a reason to stop serving.
        self.shards[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// What a live entry of `key` counts against `max_memory` (its key,
    /// its value as stored, its slot and bucket); `None` when there is
    /// none. Leaves the entry as it is (an expired one is left to the
    /// next read or sweep).
    pub fn charge_of(&self, key: &[u8]) -> Option<usize> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let shard = self.shard(index);
        let idx = shard.find(hash, key)?;
        let slot = &shard.slots[idx as usize];
        if slot.expired(now) || slot.is(FLAG_TOMBSTONE) || slot.reads_missing(&shard.arena) {
            return None;
        }
        Some(slot.charge(&shard.arena))
    }

    /// Reads a live entry. Expired entries found here are removed.
    pub fn get(&self, key: &[u8]) -> Option<Found> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let (data, compressed, raw_len, version, ttl_ms, hash) = {
            let mut shard = self.shard(index);
            let idx = shard.find(hash, key)?;
            let Shard { slots, arena, .. } = &mut *shard;
            let slot = &mut slots[idx as usize];
            if slot.expired(now) {
                if !slot.is(FLAG_TOMBSTONE) {
                    self.stats.expirations.fetch_add(1, Ordering::Relaxed);
                }
                let (added, freed) = shard.expire_slot(idx, now, self.tombstone_ms(), &self.hasher);
                self.charged.fetch_add(added, Ordering::Relaxed);
                self.charged.fetch_sub(freed, Ordering::Relaxed);
                return None;
            }
            if slot.is(FLAG_TOMBSTONE) || slot.reads_missing(arena) {
                return None;
            }
            slot.set_flags(slot.flags() | FLAG_VISITED);
            let (value, raw_len) = slot.value(arena);
            (
                Bytes::copy_from_slice(value),
                slot.is(FLAG_COMPRESSED),
                raw_len,
                slot.version,
                slot.ttl_ms(now),
                slot.is(FLAG_HASH),
            )
        };
        let value = if compressed {
            // Entries are verified when they enter the store, so this only
            // fails on a bug; a miss is the safe answer then.
            match lz4_flex::block::decompress(&data, raw_len as usize) {
                Ok(v) => Bytes::from(v),
                Err(e) => {
                    tracing::error!(error = %e, "stored entry does not decompress; treating as missing");
                    return None;
                }
            }
        } else {
            data
        };
        Some(Found {
            value,
            version,
            ttl_ms,
            hash,
        })
    }

    /// A live entry's version and remaining TTL in ms (0 = none), without
    /// copying its value.
    pub fn meta(&self, key: &[u8]) -> Option<(u64, u64)> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let shard = self.shard(index);
        let idx = shard.find(hash, key)?;
        let slot = &shard.slots[idx as usize];
        if slot.is(FLAG_TOMBSTONE) || slot.expired(now) || slot.reads_missing(&shard.arena) {
            return None;
        }
        Some((slot.version, slot.ttl_ms(now)))
    }

    /// Stores `value` under `key` unless a newer version is already there.
    pub fn set(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        version: u64,
    ) -> Result<Applied, StoreError> {
        self.set_when(key, value, ttl, version, SetWhen::Always)
    }

    /// [`Store::set`] under a condition on the key's presence, checked
    /// under the shard's lock ([`Applied::Unmet`] when it does not hold).
    pub fn set_when(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        version: u64,
        when: SetWhen,
    ) -> Result<Applied, StoreError> {
        let require = match when {
            SetWhen::Always => Require::Nothing,
            SetWhen::Absent => Require::Live(false),
            SetWhen::Present => Require::Live(true),
        };
        self.set_over(key, value, ttl, version, require)
    }

    /// [`Store::set`] under a condition on the entry there, such as
    /// holding the version a read-modify-write read ([`Applied::Unmet`]
    /// when another write got there since the read).
    pub fn set_over(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        version: u64,
        require: Require,
    ) -> Result<Applied, StoreError> {
        let (stored, compressed) = self.maybe_compress(value);
        let now = self.now();
        let new = NewSlot {
            raw_len: compressed.then(|| (value.len() as u32).to_le_bytes()),
            value: stored,
            key_len: key_len(key),
            version,
            expires_at: ttl.map_or(NEVER, |t| now.saturating_add(t.as_millis() as u64)),
            flags: if compressed { FLAG_COMPRESSED } else { 0 },
            replace_only: false,
            force: false,
            fields_write: false,
            require,
        };
        self.put(key, new, now).map(|p| p.applied)
    }

    /// Gives a live entry a new time to live (`ttl_ms` from now) and the
    /// version right after its own ([`crate::version::after`]), if it holds version `at` (whatever
    /// version it holds when `None`). Returns whether a live entry was there.
    ///
    /// A TTL change is a change of the entry, so it takes a version (anti-
    /// entropy and refill carry it to a partner that missed it), but only
    /// the version right after the value it was asked for: any write
    /// stamped later is still newer, so an `expire` never turns one away,
    /// and an entry holding another version than `at` (a newer write got
    /// there first, or this worker lacks the value) is left as it is.
    pub fn expire(&self, key: &[u8], ttl_ms: u64, at: Option<u64>) -> bool {
        let (hash, key_hash, index) = self.locate(key);
        let now = self.now();
        let mut shard = self.shard(index);
        let Some(idx) = shard.find(hash, key) else {
            return false;
        };
        let slot = &shard.slots[idx as usize];
        if slot.is(FLAG_TOMBSTONE) || slot.expired(now) {
            return false;
        }
        if at.is_some_and(|at| at != slot.version) {
            return true;
        }
        shard.account(idx, -1, key_hash);
        let slot = &mut shard.slots[idx as usize];
        slot.version = crate::version::after(slot.version);
        slot.set_expires_at(now.saturating_add(ttl_ms.max(1)));
        shard.account(idx, 1, key_hash);
        drop(shard);
        self.note_write(key);
        true
    }

    /// Deletes `key` at `version`: leaves a tombstone for `tombstone_ttl`.
    /// Returns whether a live entry was there (and is now gone).
    pub fn delete(&self, key: &[u8], version: u64) -> Result<bool, StoreError> {
        self.delete_at(key, version)
            .map(|(applied, was_live)| applied == Applied::Yes && was_live)
    }

    /// [`Store::delete`], saying what came of the tombstone and whether a
    /// live entry was there before.
    pub fn delete_at(&self, key: &[u8], version: u64) -> Result<(Applied, bool), StoreError> {
        self.delete_over(key, version, Require::Nothing)
    }

    /// [`Store::delete_at`] under a condition on the entry there.
    pub fn delete_over(
        &self,
        key: &[u8],
        version: u64,
        require: Require,
    ) -> Result<(Applied, bool), StoreError> {
        let now = self.now();
        let new = NewSlot {
            raw_len: None,
            value: (&[][..]).into(),
            key_len: key_len(key),
            version,
            expires_at: now.saturating_add(self.config.tombstone_ttl.as_millis() as u64),
            flags: FLAG_TOMBSTONE,
            replace_only: false,
            force: false,
            fields_write: false,
            require,
        };
        let put = self.put(key, new, now)?;
        Ok((put.applied, put.was_live))
    }

    /// Applies an entry streamed from the partner (refill), keeping the newer
    /// version. Compressed data is verified before it is accepted.
    pub fn apply(&self, entry: &Entry) -> Result<Applied, StoreError> {
        self.apply_entry(entry, false)
    }

    /// Applies an entry an anti-entropy round brought, keeping the newer
    /// version. Near the memory limit (above [`REPAIR_ADMIT_PERCENT`]) a key
    /// this store lacks is not added: it may have been evicted here, and a
    /// cache under pressure must not trade its own choice for its partner's.
    /// Newer versions of present keys and tombstones always apply.
    pub fn apply_repair(&self, entry: &Entry) -> Result<Applied, StoreError> {
        let crowded =
            self.charged.load(Ordering::Relaxed) > self.max_memory() / 100 * REPAIR_ADMIT_PERCENT;
        self.apply_entry(entry, crowded && !entry.tombstone)
    }

    fn apply_entry(&self, entry: &Entry, replace_only: bool) -> Result<Applied, StoreError> {
        if !crate::version::plausible(entry.version) {
            tracing::warn!(key = ?String::from_utf8_lossy(&entry.key), version = entry.version, "entry from the partner with a version far in the future; skipped");
            return Ok(Applied::Stale);
        }
        // A tombstone has no value, whatever its flags say; a hash is
        // never compressed, and only its canonical encoding is taken.
        let hash = entry.hash && !entry.tombstone;
        if hash && crate::protocol::fields::Fields::decode(&entry.data).is_err() {
            tracing::warn!(key = ?String::from_utf8_lossy(&entry.key), "hash entry from the partner is malformed; skipped");
            return Ok(Applied::Stale);
        }
        let compressed = entry.compressed && !entry.tombstone && !hash;
        if compressed {
            let ok = lz4_flex::block::decompress(&entry.data, entry.raw_len as usize)
                .is_ok_and(|v| v.len() == entry.raw_len as usize);
            if !ok {
                tracing::warn!(key = ?String::from_utf8_lossy(&entry.key), "refill entry does not decompress; skipped");
                return Ok(Applied::Stale);
            }
        }
        let now = self.now();
        let flags = if entry.tombstone {
            FLAG_TOMBSTONE
        } else if hash {
            FLAG_HASH
        } else if compressed {
            FLAG_COMPRESSED
        } else {
            0
        };
        let new = NewSlot {
            raw_len: compressed.then(|| entry.raw_len.to_le_bytes()),
            value: if entry.tombstone {
                (&[][..]).into()
            } else {
                (&entry.data[..]).into()
            },
            key_len: key_len(&entry.key),
            version: entry.version,
            expires_at: if entry.ttl_ms == 0 {
                NEVER
            } else {
                now.saturating_add(entry.ttl_ms)
            },
            flags,
            replace_only,
            force: false,
            fields_write: false,
            require: Require::Nothing,
        };
        self.put(&entry.key, new, now).map(|p| p.applied)
    }

    fn maybe_compress<'v>(&self, value: &'v [u8]) -> (std::borrow::Cow<'v, [u8]>, bool) {
        if self.config.compression && value.len() >= self.config.compress_min_bytes {
            let compressed = lz4_flex::block::compress(value);
            if compressed.len() < value.len() {
                return (compressed.into(), true);
            }
        }
        (value.into(), false)
    }

    fn put(&self, key: &[u8], new: NewSlot, now: u64) -> Result<Put, StoreError> {
        // Refused before taking the lock when its size alone says so (a
        // merged hash is checked again once merged).
        let charge = new.bytes() + ENTRY_OVERHEAD_BYTES;
        let max = self.max_memory();
        if charge > max || new.bytes() > arena::MAX_ENTRY_BYTES {
            return Err(StoreError::TooLarge { charge, max });
        }
        self.put_with(key, now, |_, _| Ok(new))
    }

    /// Stores the write `make` prepares under the shard's lock from what
    /// the shard holds of the key (its slab index), or gives `make`'s
    /// answer when it stores nothing.
    fn put_with<'a>(
        &self,
        key: &[u8],
        now: u64,
        make: impl FnOnce(&Shard, Option<u32>) -> Result<NewSlot<'a>, Put>,
    ) -> Result<Put, StoreError> {
        let max = self.max_memory();
        let (hash, key_hash, index) = self.locate(key);
        let mut shard = self.shard(index);
        let found = shard.find(hash, key);
        let new = match make(&shard, found) {
            Ok(new) => new,
            Err(answer) => return Ok(answer),
        };
        // Read under the shard's lock: a flush raises the floor before it
        // sweeps each shard, so a write older than it either lands before
        // the sweep (and is swept) or sees it.
        let floor = self.floor.load(Ordering::Acquire);
        if new.version < floor {
            return Ok(Put {
                applied: Applied::Newer(floor),
                added: 0,
                freed: 0,
                was_live: false,
            });
        }
        let (new, answer) = match hashes::resolve(&shard, found, new, now, self.tombstone_ms()) {
            Ok(resolved) => resolved,
            Err(answer) => return Ok(answer),
        };
        let charge = new.bytes() + ENTRY_OVERHEAD_BYTES;
        if charge > max || new.bytes() > arena::MAX_ENTRY_BYTES {
            return Err(StoreError::TooLarge { charge, max });
        }
        let mut put = shard.put(found, (hash, key_hash), key, new, now, &self.hasher);
        drop(shard);
        if put.added > put.freed {
            self.charged
                .fetch_add(put.added - put.freed, Ordering::Relaxed);
        } else {
            self.charged
                .fetch_sub(put.freed - put.added, Ordering::Relaxed);
        }
        if self.charged.load(Ordering::Relaxed) > max {
            self.evict(index);
        }
        if put.applied == Applied::Yes {
            self.note_write(key);
        }
        if let (Some(answer), Applied::Yes) = (answer, put.applied) {
            put.applied = answer;
        }
        Ok(put)
    }

    /// Writes fields of the hash under `key` (a value, or `None` to delete
    /// one): `compute` gets the live hash there (`None`: missing) and the
    /// version of whatever entry is there (0: none), and gives the version
    /// to stamp and the writes, under the shard's lock, so nothing comes
    /// between its read and its write (`HINCRBY`). A live string there is
    /// the wrong type ([`Applied::WrongType`], `compute` not called).
    pub fn write_fields<E>(
        &self,
        key: &[u8],
        compute: impl FnOnce(Option<&Fields>, u64) -> Result<(u64, Vec<(Bytes, Option<Bytes>)>), E>,
    ) -> Result<Result<Applied, E>, StoreError> {
        let now = self.now();
        let mut refused = None;
        let put = self.put_with(key, now, |shard, found| {
            let held = found.map(|idx| &shard.slots[idx as usize]);
            let live = held.filter(|s| !s.is(FLAG_TOMBSTONE) && !s.expired(now));
            let answer = |applied| Put {
                applied,
                added: 0,
                freed: 0,
                was_live: live.is_some(),
            };
            let current = match live {
                Some(slot) if slot.is(FLAG_HASH) => {
                    let bytes = Bytes::copy_from_slice(slot.value(&shard.arena).0);
                    Some(Fields::decode(&bytes).map_err(|e| {
                        tracing::error!(error = %e, "a hash in the store does not decode");
                        answer(Applied::Stale)
                    })?)
                }
                Some(_) => return Err(answer(Applied::WrongType)),
                None => None,
            };
            let (version, writes) = match compute(current.as_ref(), held.map_or(0, |s| s.version)) {
                Ok(computed) => computed,
                Err(e) => {
                    refused = Some(e);
                    return Err(answer(Applied::Stale));
                }
            };
            if writes.is_empty() {
                return Err(answer(Applied::Stale));
            }
            let fields = Fields::writes(version, writes);
            let mut value = Vec::with_capacity(fields.encoded_len());
            fields.encode(&mut value);
            Ok(NewSlot {
                raw_len: None,
                value: value.into(),
                key_len: key_len(key),
                version,
                expires_at: NEVER,
                flags: FLAG_HASH,
                replace_only: false,
                require: Require::Nothing,
                force: false,
                fields_write: true,
            })
        })?;
        Ok(match refused {
            Some(e) => Err(e),
            None => Ok(put.applied),
        })
    }

    /// Evicts until the charge is under the limit, starting with `first`.
    fn evict(&self, first: usize) {
        let max = self.max_memory();
        for offset in 0..SHARD_COUNT {
            let mut shard = self.shard((first + offset) % SHARD_COUNT);
            while self.charged.load(Ordering::Relaxed) > max {
                let Some(freed) = shard.evict_one(&self.hasher) else {
                    break;
                };
                self.charged.fetch_sub(freed, Ordering::Relaxed);
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
            if self.charged.load(Ordering::Relaxed) <= max {
                return;
            }
        }
    }

    /// Turns expired entries into tombstones and removes expired
    /// tombstones, looking at up to `budget` slots of every shard. Returns
    /// how many it expired or removed.
    pub fn expire_step(&self, budget: usize) -> usize {
        let now = self.now();
        let mut removed = 0;
        for index in 0..SHARD_COUNT {
            let mut shard = self.shard(index);
            let (entries, tombstones, added, freed) =
                shard.expire(now, budget, self.tombstone_ms(), &self.hasher);
            removed += entries + tombstones;
            self.charged.fetch_add(added, Ordering::Relaxed);
            self.charged.fetch_sub(freed, Ordering::Relaxed);
            self.stats
                .expirations
                .fetch_add(entries as u64, Ordering::Relaxed);
        }
        removed
    }

    pub fn shard_count(&self) -> usize {
        SHARD_COUNT
    }

    /// Evicts `key` if it holds a live value at `version`: the partner
    /// refused this entry for room, so the pair drops it (anti-entropy on
    /// a full cache). Returns whether it was evicted.
    pub fn evict_at(&self, key: &[u8], version: u64) -> bool {
        let (hash, _, index) = self.locate(key);
        let mut shard = self.shard(index);
        let Some(idx) = shard.find(hash, key) else {
            return false;
        };
        let slot = &shard.slots[idx as usize];
        if slot.version != version || slot.is(FLAG_TOMBSTONE) {
            return false;
        }
        let freed = shard.evict_slot(idx, &self.hasher);
        drop(shard);
        self.charged.fetch_sub(freed, Ordering::Relaxed);
        self.stats.evictions.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The entry under `key` as it would travel in a refill (a tombstone
    /// too), unless it is missing or expired.
    pub fn entry(&self, key: &[u8]) -> Option<Entry> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let shard = self.shard(index);
        let idx = shard.find(hash, key)?;
        let slot = &shard.slots[idx as usize];
        if slot.expired(now) {
            return None;
        }
        Some(slot.entry(&shard.arena, now))
    }

    pub fn usage(&self) -> Usage {
        let mut usage = Usage {
            charged_bytes: self.charged.load(Ordering::Relaxed) as u64,
            ..Usage::default()
        };
        for index in 0..SHARD_COUNT {
            let shard = self.shard(index);
            usage.entries += shard.entries;
            usage.tombstones += shard.tombstones;
            usage.raw_value_bytes += shard.raw_value_bytes;
            usage.stored_value_bytes += shard.stored_value_bytes;
            usage.arena_bytes += shard.arena.capacity() as u64;
            usage.arena_free_bytes += shard.arena.dead() as u64;
        }
        usage
    }

    /// Live entries, tombstones excluded.
    pub fn len(&self) -> u64 {
        self.usage().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key_len(key: &[u8]) -> u16 {
    // Config caps max_key_bytes below u16::MAX and every decoder enforces it.
    u16::try_from(key.len()).unwrap_or(u16::MAX)
}
