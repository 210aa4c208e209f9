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
//! [`Arena`], the version, the expiry, key length and flags packed in one
//! word, and the SIEVE queue links: 32 bytes. The arena packs entries back to
//! back in segments (no allocator header or rounding per entry) and
//! compacts a segment when holes pass an eighth of the shard's segment
//! bytes.
//!
//! # Digests
//! A shard keeps the anti-entropy digest of its buckets up to date as
//! entries come and go (the wrapping sum of each entry's fingerprint), so a
//! digest costs nothing per entry: partners whose data agree compare 4,096
//! numbers and are done. An entry counts until it is removed (expired
//! entries included, until the active expiry or a read removes them).
//!
//! # Eviction: SIEVE
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

use super::arena::{self, Arena, Loc, NO_LOC};
use crate::protocol::link::{
    bucket_of_hash, digest_bucket, BucketDigest, Entry, Summary, DIGEST_BUCKETS,
};
use crate::protocol::SetWhen;
use bytes::Bytes;
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;
use tokio::time::Instant;

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
            max_memory_bytes: 1 << 30,
            compression: true,
            compress_min_bytes: 128,
            tombstone_ttl: Duration::from_secs(3600),
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
}

/// The share of `max_memory` beyond which anti-entropy stops adding keys a
/// worker lacks: under memory pressure partners evict different entries,
/// and re-adding them would only evict others.
pub const REPAIR_ADMIT_PERCENT: usize = 90;

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
    fn of_shard(&self, shard: usize) -> u64 {
        const _: () = assert!(BUCKETS_PER_SHARD == 64);
        self.0[shard % SHARD_COUNT]
    }

    /// The shards holding a bucket of the set.
    pub fn shards(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SHARD_COUNT).filter(|&s| self.of_shard(s) != 0)
    }
}

/// An entry's share of its bucket's digest: two partners holding the same
/// version (and kind) of a key add the same number.
fn fingerprint(key_hash: u64, version: u64, tombstone: bool) -> u64 {
    crate::hash::fmix64(key_hash ^ version.rotate_left(17) ^ tombstone as u64)
}

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
    /// `config.max_memory_bytes`, which a reload may change.
    max_memory: AtomicUsize,
    config: StoreConfig,
    epoch: Instant,
    pub stats: StoreStats,
}

/// One entry of a shard's slab: 32 bytes.
struct Slot {
    /// Where the key and the body live in the shard's arena. The body is
    /// the stored value, after a compressed value's length once
    /// decompressed (u32, little endian).
    loc: Loc,
    version: u64,
    /// The expiry (bits 0..40: milliseconds since the store's epoch, all
    /// ones for none), the key's length (bits 40..56) and the flags (bits
    /// 56..64), packed in one word.
    meta: u64,
    /// SIEVE queue links (slab indices), towards the newest and oldest entry.
    newer: u32,
    older: u32,
}

/// Expiries are kept in 40 bits of milliseconds: about 34 years after the
/// store started. A later one is kept as that far (the entry outlives the
/// process anyway); all ones means none.
const EXPIRY_MASK: u64 = (1 << 40) - 1;

/// Bytes before the value in a compressed entry's body: the value's length
/// once decompressed.
const RAW_LEN_BYTES: usize = 4;

fn pack_meta(expires_at: u64, key_len: u16, flags: u8) -> u64 {
    let expiry = if expires_at == NEVER {
        EXPIRY_MASK
    } else {
        expires_at.min(EXPIRY_MASK - 1)
    };
    expiry | u64::from(key_len) << 40 | u64::from(flags) << 56
}

impl Slot {
    fn expires_at(&self) -> u64 {
        match self.meta & EXPIRY_MASK {
            EXPIRY_MASK => NEVER,
            at => at,
        }
    }

    fn set_expires_at(&mut self, expires_at: u64) {
        self.meta = pack_meta(expires_at, self.key_len(), self.flags());
    }

    fn key_len(&self) -> u16 {
        (self.meta >> 40) as u16
    }

    fn flags(&self) -> u8 {
        (self.meta >> 56) as u8
    }

    fn set_flags(&mut self, flags: u8) {
        self.meta = self.meta & !(0xff << 56) | u64::from(flags) << 56;
    }

    fn key<'a>(&self, arena: &'a Arena) -> &'a [u8] {
        arena.get(self.loc).0
    }

    /// The stored value and its length once decompressed.
    fn value<'a>(&self, arena: &'a Arena) -> (&'a [u8], u32) {
        split_body(arena.get(self.loc).1, self.flags())
    }

    fn is(&self, flag: u8) -> bool {
        self.flags() & flag != 0
    }

    /// What two writes of one version are compared by: the stored value
    /// (the same order as comparing key and value, the key being equal),
    /// then its kind and raw length, so no two different entries compare
    /// equal whatever their layout.
    fn content<'a>(&self, arena: &'a Arena) -> (&'a [u8], u8, u32) {
        let (value, raw_len) = self.value(arena);
        (value, self.flags() & KIND_FLAGS, raw_len)
    }

    fn charge(&self, arena: &Arena) -> usize {
        arena.len(self.loc) + ENTRY_OVERHEAD_BYTES
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at() <= now
    }

    fn ttl_ms(&self, now: u64) -> u64 {
        match self.expires_at() {
            NEVER => 0,
            at => at.saturating_sub(now).max(1),
        }
    }

    /// The slot as it travels between partners.
    fn entry(&self, arena: &Arena, now: u64) -> Entry {
        let (value, raw_len) = self.value(arena);
        Entry {
            key: Bytes::copy_from_slice(self.key(arena)),
            version: self.version,
            ttl_ms: self.ttl_ms(now),
            tombstone: self.is(FLAG_TOMBSTONE),
            compressed: self.is(FLAG_COMPRESSED),
            raw_len,
            data: Bytes::copy_from_slice(value),
        }
    }
}

/// The flags that say what an entry holds (not how it is used).
const KIND_FLAGS: u8 = FLAG_TOMBSTONE | FLAG_COMPRESSED;

impl NewSlot<'_> {
    /// As [`Slot::content`].
    fn content(&self) -> (&[u8], u8, u32) {
        let raw_len = self
            .raw_len
            .map_or(self.value.len() as u32, u32::from_le_bytes);
        (&self.value, self.flags & KIND_FLAGS, raw_len)
    }

    /// The body's parts as the arena stores them (see [`Slot::loc`]).
    fn body(&self) -> [&[u8]; 2] {
        [
            self.raw_len.as_ref().map_or(&[][..], |r| &r[..]),
            &self.value,
        ]
    }

    /// Its bytes in the arena.
    fn bytes(&self) -> usize {
        let prefix = if self.raw_len.is_some() {
            RAW_LEN_BYTES
        } else {
            0
        };
        arena::entry_bytes(self.key_len as usize, prefix + self.value.len())
    }
}

/// A slot's body taken apart (see [`Slot::loc`]): the stored value and the
/// value's length once decompressed.
fn split_body(body: &[u8], flags: u8) -> (&[u8], u32) {
    if flags & FLAG_COMPRESSED == 0 {
        return (body, body.len() as u32);
    }
    match body.split_first_chunk::<RAW_LEN_BYTES>() {
        Some((raw_len, value)) => (value, u32::from_le_bytes(*raw_len)),
        None => (&[], 0),
    }
}

/// What a shard's `put` did.
struct Put {
    applied: Applied,
    added: usize,
    freed: usize,
    /// A live entry was there before.
    was_live: bool,
}

/// A write prepared outside the lock.
struct NewSlot<'a> {
    /// A compressed value's length once decompressed (little endian).
    raw_len: Option<[u8; RAW_LEN_BYTES]>,
    /// The stored value (compressed or not).
    value: std::borrow::Cow<'a, [u8]>,
    key_len: u16,
    version: u64,
    expires_at: u64,
    flags: u8,
    /// Store only over an existing entry (a repair under memory pressure).
    replace_only: bool,
    /// Store only if a live entry is there (`Some(true)`) or is not.
    require_live: Option<bool>,
}

#[derive(Default)]
struct Shard {
    table: HashTable<u32>,
    slots: Vec<Slot>,
    arena: Arena,
    free: Vec<u32>,
    newest: u32,
    oldest: u32,
    hand: u32,
    /// Next slab index the active expiry looks at.
    expiry_cursor: usize,
    entries: u64,
    tombstones: u64,
    raw_value_bytes: u64,
    stored_value_bytes: u64,
    /// The digest of this shard's buckets (see the module's Digests).
    digest: Vec<BucketDigest>,
    /// Per bucket, the newest version this shard evicted (0: none). Eviction
    /// keeps no record of the key, so a value older than this for a key the
    /// shard lacks may be an older copy of one it evicted: such a value
    /// (from the partner's repair, a late hint, a write stamped by a clock
    /// behind) is refused, so the key reads as a miss, never as an older
    /// value. 512 bytes a shard.
    evicted: Vec<u64>,
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
            max_memory: AtomicUsize::new(config.max_memory_bytes),
            config,
            epoch: Instant::now(),
            stats: StoreStats::default(),
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

    /// Reads a live entry. Expired entries found here are removed.
    pub fn get(&self, key: &[u8]) -> Option<Found> {
        let (hash, _, index) = self.locate(key);
        let now = self.now();
        let (data, compressed, raw_len, version, ttl_ms) = {
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
            if slot.is(FLAG_TOMBSTONE) {
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
        if slot.is(FLAG_TOMBSTONE) || slot.expired(now) {
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
            require_live: match when {
                SetWhen::Always => None,
                SetWhen::Absent => Some(false),
                SetWhen::Present => Some(true),
            },
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
        let now = self.now();
        let new = NewSlot {
            raw_len: None,
            value: (&[][..]).into(),
            key_len: key_len(key),
            version,
            expires_at: now.saturating_add(self.config.tombstone_ttl.as_millis() as u64),
            flags: FLAG_TOMBSTONE,
            replace_only: false,
            require_live: None,
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
        // A tombstone has no value, whatever its flags say.
        let compressed = entry.compressed && !entry.tombstone;
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
            require_live: None,
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
        let charge = new.bytes() + ENTRY_OVERHEAD_BYTES;
        let max = self.max_memory();
        if charge > max || new.bytes() > arena::MAX_ENTRY_BYTES {
            return Err(StoreError::TooLarge { charge, max });
        }
        let (hash, key_hash, index) = self.locate(key);
        let put = self
            .shard(index)
            .put((hash, key_hash), key, new, now, &self.hasher);
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
        Ok(put)
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

    pub fn shard_count(&self) -> usize {
        SHARD_COUNT
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
            });
        }
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

impl Shard {
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
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
    fn put(
        &mut self,
        (hash, key_hash): (u64, u64),
        key: &[u8],
        new: NewSlot<'_>,
        now: u64,
        hasher: &crate::sys::TableHasher,
    ) -> Put {
        if let Some(idx) = self.find(hash, key) {
            let slot = &self.slots[idx as usize];
            let was_live = !slot.is(FLAG_TOMBSTONE) && !slot.expired(now);
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
            if new.require_live.is_some_and(|live| live != was_live) {
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
            let newer = new.version > slot.version
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
            if !was_live && new.flags & FLAG_TOMBSTONE == 0 {
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
        if new.require_live == Some(true) {
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
    fn account(&mut self, idx: u32, sign: i64, key_hash: u64) {
        let slot = &self.slots[idx as usize];
        let print = fingerprint(key_hash, slot.version, slot.is(FLAG_TOMBSTONE));
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
    fn remove(&mut self, idx: u32, hasher: &crate::sys::TableHasher) -> usize {
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
    fn compact_if_needed(&mut self, hasher: &crate::sys::TableHasher) {
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
    fn evict_one(&mut self, hasher: &crate::sys::TableHasher) -> Option<usize> {
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
    fn evicted_above(&self, key_hash: u64, version: u64) -> Option<u64> {
        let bucket = bucket_of_hash(key_hash) as usize % BUCKETS_PER_SHARD;
        self.evicted
            .get(bucket)
            .copied()
            .filter(|&evicted| evicted >= version && evicted > 0)
    }

    /// Removes a slot for room, remembering its version in its bucket's
    /// eviction mark. Returns the bytes freed.
    fn evict_slot(&mut self, idx: u32, hasher: &crate::sys::TableHasher) -> usize {
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
    fn expire_slot(
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
    fn expire(
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

#[cfg(test)]
mod tests {

    #[test]
    fn an_expire_never_refuses_a_newer_set_and_travels_with_the_entry() {
        // A SET stamped after the value an EXPIRE was asked for, in both
        // orders (partners may see them so): the same value, version and
        // TTL either way.
        let mut finals = Vec::new();
        for expire_first in [true, false] {
            let store = Store::new(StoreConfig::default());
            store.set(b"k", b"old", None, 5).expect("set");
            if expire_first {
                assert!(store.expire(b"k", 60_000, Some(5)));
                assert_eq!(
                    store.meta(b"k").map(|(v, _)| v),
                    Some(crate::version::after(5))
                );
            }
            // Another node's stamp one tick later.
            let later = crate::version::after(5) + 1;
            store.set(b"k", b"new", None, later).expect("set");
            if !expire_first {
                assert!(store.expire(b"k", 60_000, Some(5)), "the key is there");
            }
            let found = store.get(b"k").expect("present");
            finals.push((found.value, found.version, found.ttl_ms));
        }
        assert_eq!(finals[0], finals[1]);
        assert_eq!(
            (&finals[0].0[..], finals[0].1, finals[0].2),
            (&b"new"[..], crate::version::after(5) + 1, 0)
        );

        // Without a concurrent write the TTL takes the next version, so a
        // partner that missed it takes the entry (and its TTL) from this one.
        let a = Store::new(StoreConfig::default());
        let b = Store::new(StoreConfig::default());
        for s in [&a, &b] {
            s.set(b"k", b"v", None, 5).expect("set");
        }
        assert!(a.expire(b"k", 60_000, Some(5)));
        let mut entries = Vec::new();
        for shard in 0..a.shard_count() {
            let _ = a.scan(shard, 0, usize::MAX, &mut entries);
        }
        for entry in &entries {
            b.apply(entry).expect("apply");
        }
        let (version, ttl) = b.meta(b"k").expect("present");
        assert_eq!(version, crate::version::after(5));
        assert!(ttl > 59_000 && ttl <= 60_000, "{ttl}");
    }

    use super::*;
    use crate::zipf::{Rng, Zipf};

    fn store(max_memory_bytes: usize) -> Store {
        Store::new(StoreConfig {
            max_memory_bytes,
            ..StoreConfig::default()
        })
    }

    fn digest(s: &Store) -> Vec<BucketDigest> {
        let mut out = vec![BucketDigest::default(); DIGEST_BUCKETS];
        for shard in 0..s.shard_count() {
            s.digest_shard(shard, &mut out);
        }
        out
    }

    #[test]
    fn digests_agree_on_equal_data_and_locate_differences() {
        let (a, b) = (store(1 << 30), store(1 << 30));
        for i in 0..2_000u64 {
            a.set(format!("k{i}").as_bytes(), b"v", None, i + 1)
                .expect("set");
        }
        // The same versions, another order and another process's hashing.
        for i in (0..2_000u64).rev() {
            b.set(format!("k{i}").as_bytes(), b"v", None, i + 1)
                .expect("set");
        }
        a.delete(b"k7", 10_000).expect("delete");
        b.delete(b"k7", 10_000).expect("delete");
        assert_eq!(digest(&a), digest(&b));
        // One newer version on one side: exactly its bucket differs.
        b.set(b"k42", b"w", None, 20_000).expect("set");
        let (da, db) = (digest(&a), digest(&b));
        let differing: Vec<usize> = (0..DIGEST_BUCKETS).filter(|&i| da[i] != db[i]).collect();
        assert_eq!(differing, vec![digest_bucket(b"k42") as usize]);
        // Summaries of that bucket carry the key and both versions.
        let set = BucketSet::new(&[digest_bucket(b"k42")]);
        let mut sa = Vec::new();
        for shard in 0..a.shard_count() {
            a.summarize_shard(shard, &set, &mut sa);
        }
        assert!(sa
            .iter()
            .all(|s| digest_bucket(&s.key) == digest_bucket(b"k42")));
        assert!(sa.iter().any(|s| &s.key[..] == b"k42" && s.version == 43));
        // A repair applies the newer entry and the digests meet again.
        let newer = b.entry(b"k42").expect("present");
        assert_eq!(a.apply_repair(&newer), Ok(Applied::Yes));
        assert_eq!(digest(&a), digest(&b));
    }

    /// The digest computed from scratch: every slot in use.
    fn scanned_digest(s: &Store) -> Vec<BucketDigest> {
        let mut out = vec![BucketDigest::default(); DIGEST_BUCKETS];
        for index in 0..SHARD_COUNT {
            let shard = s.shard(index);
            for slot in shard.slots.iter().filter(|slot| !slot.is(FLAG_FREE)) {
                let hash = crate::hash::key_hash(slot.key(&shard.arena));
                assert_eq!(shard_of(hash), index, "a key in another shard");
                let b = &mut out[bucket_of_hash(hash) as usize];
                b.hash =
                    b.hash
                        .wrapping_add(fingerprint(hash, slot.version, slot.is(FLAG_TOMBSTONE)));
                b.entries += 1;
            }
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn kept_digests_equal_a_scan_through_every_kind_of_change() {
        let seed = crate::sys::random_u64();
        println!("seed {seed}");
        let mut rng = seed | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Small enough that writes evict.
        let s = store(256 << 10);
        for step in 0..20_000u64 {
            let key = format!("k{}", next() % 3_000);
            let version = step + 1;
            match next() % 8 {
                0..=2 => {
                    let ttl = (next() % 2 == 0).then(|| Duration::from_millis(next() % 50 + 1));
                    s.set(
                        key.as_bytes(),
                        &vec![b'v'; (next() % 300) as usize],
                        ttl,
                        version,
                    )
                    .expect("set");
                }
                3 => {
                    s.delete(key.as_bytes(), version).expect("delete");
                }
                4 => {
                    s.expire(key.as_bytes(), next() % 50 + 1, None);
                }
                5 => {
                    s.get(key.as_bytes());
                }
                6 => {
                    if let Some(found) = s.get(key.as_bytes()) {
                        s.evict_at(key.as_bytes(), found.version);
                    }
                }
                _ => {
                    tokio::time::advance(Duration::from_millis(next() % 20)).await;
                    s.expire_step(64);
                }
            }
            if step % 1_000 == 0 {
                assert_eq!(digest(&s), scanned_digest(&s), "seed {seed} step {step}");
            }
        }
        assert!(
            s.stats.evictions.load(Ordering::Relaxed) > 0,
            "nothing evicted"
        );
        assert_eq!(digest(&s), scanned_digest(&s), "seed {seed}");
    }

    #[test]
    fn evict_at_drops_only_the_version_named() {
        let s = store(1 << 20);
        s.set(b"k", b"v", None, 5).expect("set");
        assert!(!s.evict_at(b"k", 4), "another version");
        assert!(s.get(b"k").is_some());
        assert!(s.evict_at(b"k", 5));
        assert!(s.get(b"k").is_none());
        s.delete(b"t", 9).expect("delete");
        assert!(!s.evict_at(b"t", 9), "a tombstone stays");
        assert_eq!(s.stats.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_evicted_key_does_not_come_back_as_an_older_copy() {
        let s = store(1 << 20);
        s.set(b"k", &[b'a'; 100], None, 10).expect("set");
        let mut i = 0u64;
        while s.entry(b"k").is_some() {
            s.set(format!("fill{i}").as_bytes(), &[b'x'; 100], None, 20 + i)
                .expect("set");
            i += 1;
        }
        let old = |tombstone| Entry {
            key: Bytes::from_static(b"k"),
            version: 5,
            ttl_ms: 0,
            tombstone,
            compressed: false,
            raw_len: 3,
            data: Bytes::from_static(b"old"),
        };
        // An older copy, from a refill, a repair or a late write: refused.
        for applied in [
            s.apply(&old(false)),
            s.apply_repair(&old(false)),
            s.set(b"k", b"old", None, 5),
        ] {
            assert!(
                matches!(applied, Ok(Applied::Evicted(v)) if v >= 10),
                "{applied:?}"
            );
            assert!(s.entry(b"k").is_none());
        }
        // A tombstone brings nothing back; a write stamped above the mark
        // is stored.
        assert_eq!(s.apply(&old(true)), Ok(Applied::Yes));
        let Ok(Applied::Evicted(mark)) = s.set(b"k", b"old", None, 6) else {
            panic!("not refused");
        };
        assert_eq!(s.set(b"k", b"new", None, mark + 1), Ok(Applied::Yes));
        assert_eq!(
            s.get(b"k").map(|f| f.value),
            Some(Bytes::from_static(b"new"))
        );
    }

    #[test]
    fn repairs_near_the_memory_limit_add_no_new_keys() {
        let s = store(1 << 20);
        let mut i = 0;
        while s.usage().charged_bytes < (1 << 20) / 100 * 95 {
            s.set(format!("fill{i}").as_bytes(), &[b'x'; 100], None, 1)
                .expect("set");
            i += 1;
        }
        let entry = |key: &str, version, tombstone| Entry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version,
            ttl_ms: 0,
            tombstone,
            compressed: false,
            raw_len: 1,
            data: Bytes::from_static(b"y"),
        };
        assert_eq!(s.apply_repair(&entry("new", 5, false)), Ok(Applied::NoRoom));
        assert_eq!(s.apply_repair(&entry("fill0", 5, false)), Ok(Applied::Yes));
        assert_eq!(s.apply_repair(&entry("gone", 5, true)), Ok(Applied::Yes));
        assert_eq!(s.apply(&entry("refilled", 5, false)), Ok(Applied::Yes));
    }

    #[test]
    fn set_get_delete() {
        let s = store(1 << 20);
        assert_eq!(s.get(b"k"), None);
        assert_eq!(s.set(b"k", b"v", None, 10), Ok(Applied::Yes));
        let found = s.get(b"k").expect("present");
        assert_eq!(
            (&found.value[..], found.version, found.ttl_ms),
            (&b"v"[..], 10, 0)
        );
        assert_eq!(s.len(), 1);
        assert_eq!(s.delete(b"k", 11), Ok(true));
        assert_eq!(s.get(b"k"), None);
        assert_eq!(s.delete(b"k", 12), Ok(false));
        assert_eq!(s.usage().tombstones, 1);
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn newer_version_wins_in_any_order() {
        let a = store(1 << 20);
        let b = store(1 << 20);
        a.set(b"k", b"old", None, 1).expect("fits");
        a.set(b"k", b"new", None, 2).expect("fits");
        b.set(b"k", b"new", None, 2).expect("fits");
        assert_eq!(b.set(b"k", b"old", None, 1), Ok(Applied::Newer(2)));
        assert_eq!(a.get(b"k").map(|f| f.value), b.get(b"k").map(|f| f.value));
        // Equal versions: the larger bytes win on both sides.
        a.set(b"t", b"x", None, 5).expect("fits");
        a.set(b"t", b"y", None, 5).expect("fits");
        b.set(b"t", b"y", None, 5).expect("fits");
        b.set(b"t", b"x", None, 5).expect("fits");
        assert_eq!(a.get(b"t").map(|f| f.value), Some(Bytes::from_static(b"y")));
        assert_eq!(b.get(b"t").map(|f| f.value), Some(Bytes::from_static(b"y")));
    }

    #[test]
    fn tombstone_blocks_older_writes_and_yields_to_newer() {
        let s = store(1 << 20);
        s.set(b"k", b"v", None, 1).expect("fits");
        assert_eq!(s.delete(b"k", 5), Ok(true));
        assert_eq!(s.set(b"k", b"late", None, 3), Ok(Applied::Newer(5)));
        assert_eq!(s.get(b"k"), None);
        // A delete of an absent key still leaves a tombstone.
        assert_eq!(s.delete(b"never", 5), Ok(false));
        assert_eq!(s.set(b"never", b"old", None, 4), Ok(Applied::Newer(5)));
        assert_eq!(s.set(b"k", b"again", None, 6), Ok(Applied::Yes));
        assert_eq!(
            s.get(b"k").map(|f| f.value),
            Some(Bytes::from_static(b"again"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_lazily_and_actively() {
        let s = store(1 << 20);
        s.set(b"lazy", b"v", Some(Duration::from_secs(10)), 1)
            .expect("fits");
        s.set(b"active", b"v", Some(Duration::from_secs(10)), 1)
            .expect("fits");
        s.set(b"forever", b"v", None, 1).expect("fits");
        let ttl = s.get(b"lazy").expect("live").ttl_ms;
        assert!(ttl > 9_000 && ttl <= 10_000, "ttl {ttl}");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(s.get(b"lazy"), None);
        assert_eq!(s.usage().entries, 2, "the lazily expired entry is gone");
        assert_eq!(s.expire_step(1024), 1);
        assert_eq!(s.usage().entries, 1);
        assert!(s.get(b"forever").is_some());
        assert_eq!(s.stats.expirations.load(Ordering::Relaxed), 2);
    }

    /// An overwrite with a TTL that expired is as final as a delete: the
    /// older value a partner kept (it missed the overwrite) cannot come
    /// back through a repair or a refill, until `tombstone_ttl` after the
    /// deadline. Lazily (a read) and actively (the expiry step) alike.
    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_leaves_a_tombstone_of_its_version() {
        let s = Store::new(StoreConfig {
            tombstone_ttl: Duration::from_secs(60),
            ..StoreConfig::default()
        });
        let old = |key: &str| Entry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version: 1,
            ttl_ms: 0,
            tombstone: false,
            compressed: false,
            raw_len: 3,
            data: Bytes::from_static(b"old"),
        };
        for key in ["read", "stepped"] {
            s.set(key.as_bytes(), b"new", Some(Duration::from_secs(1)), 2)
                .expect("set");
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.get(b"read").is_none(), "expired");
        s.expire_step(1024);
        assert_eq!((s.usage().entries, s.usage().tombstones), (0, 2));
        for key in ["read", "stepped"] {
            assert_eq!(s.apply_repair(&old(key)), Ok(Applied::Newer(2)), "{key}");
            assert_eq!(s.apply(&old(key)), Ok(Applied::Newer(2)), "{key}");
            assert!(s.get(key.as_bytes()).is_none(), "{key} came back");
            let tomb = s.entry(key.as_bytes()).expect("the tombstone travels");
            assert!(tomb.tombstone && tomb.version == 2, "{key}: {tomb:?}");
        }
        // A partner's tombstone of the same version replaces an expired
        // entry not yet turned into one (so partners agree at once).
        let other = Store::new(StoreConfig {
            tombstone_ttl: Duration::from_secs(60),
            ..StoreConfig::default()
        });
        other
            .set(b"late", b"new", Some(Duration::from_millis(10)), 2)
            .expect("set");
        tokio::time::advance(Duration::from_millis(20)).await;
        let mut tomb = s.entry(b"stepped").expect("the tombstone");
        tomb.key = Bytes::from_static(b"late");
        assert_eq!(other.apply_repair(&tomb), Ok(Applied::Yes));
        assert_eq!((other.usage().entries, other.usage().tombstones), (0, 1));
        // A newer write replaces it as it would a delete's tombstone.
        assert_eq!(s.set(b"read", b"newer", None, 3), Ok(Applied::Yes));
        // And it goes tombstone_ttl after the deadline.
        tokio::time::advance(Duration::from_secs(60)).await;
        s.expire_step(1024);
        assert_eq!((s.usage().entries, s.usage().tombstones), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn tombstones_expire_after_tombstone_ttl() {
        let s = Store::new(StoreConfig {
            tombstone_ttl: Duration::from_secs(60),
            ..StoreConfig::default()
        });
        s.delete(b"k", 1).expect("fits");
        tokio::time::advance(Duration::from_secs(59)).await;
        s.expire_step(1024);
        assert_eq!(s.usage().tombstones, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        s.expire_step(1024);
        assert_eq!(s.usage().tombstones, 0);
        assert_eq!(s.usage().charged_bytes, 0);
    }

    #[test]
    fn writes_of_one_version_converge_in_any_order() {
        // A delete and an empty value stamped with the same version hold
        // the same bytes (just the key): partners that got them in either
        // order still agree on one of them.
        let a = store(1 << 20);
        let b = store(1 << 20);
        a.set(b"k", b"", None, 5).expect("fits");
        a.delete(b"k", 5).expect("fits");
        b.delete(b"k", 5).expect("fits");
        b.set(b"k", b"", None, 5).expect("fits");
        assert_eq!(a.get(b"k"), b.get(b"k"));
        assert_eq!(digest(&a), digest(&b));
        // A compressed and a plain value of one version.
        let text = b"abcdefgh".repeat(100);
        let expected: &[u8] = if lz4_flex::block::compress(&text)[..] > b"plain"[..] {
            &text
        } else {
            b"plain"
        };
        for (first, second) in [(&text[..], &b"plain"[..]), (&b"plain"[..], &text[..])] {
            let s = store(1 << 20);
            s.set(b"x", first, None, 9).expect("fits");
            s.set(b"x", second, None, 9).expect("fits");
            let kept = s.get(b"x").expect("live").value;
            assert_eq!(&kept[..], expected, "the larger stored bytes win");
        }
    }

    #[test]
    fn a_slot_is_32_bytes_and_keeps_what_it_packs() {
        assert_eq!(std::mem::size_of::<Slot>(), 32);
        let s = store(1 << 20);
        // A compressed value travels with its raw length ahead of the key.
        let text = b"abcdefgh".repeat(100);
        s.set(b"text", &text, Some(Duration::from_secs(60)), 7)
            .expect("fits");
        let mut out = Vec::new();
        for shard in 0..SHARD_COUNT {
            let mut cursor = Some(0);
            while let Some(c) = cursor {
                cursor = s.scan(shard, c, 1 << 20, &mut out);
            }
        }
        let entry = out.iter().find(|e| &e.key[..] == b"text").expect("scanned");
        assert!(entry.compressed);
        assert_eq!(entry.raw_len, 800);
        assert!(
            entry.ttl_ms > 59_000 && entry.ttl_ms <= 60_000,
            "{}",
            entry.ttl_ms
        );
        // Flags change without touching the expiry or the key.
        let found = s.get(b"text").expect("live");
        assert_eq!(found.value.to_vec(), text);
        assert!(s.expire(b"text", 5_000, Some(7)));
        assert_eq!(
            s.meta(b"text").map(|(v, _)| v),
            Some(crate::version::after(7))
        );
        let ttl = s.meta(b"text").map(|(_, t)| t).unwrap_or_default();
        assert!(ttl > 4_000 && ttl <= 5_000, "{ttl}");
        assert_eq!(s.get(b"text").map(|f| f.value.to_vec()), Some(text));
        // An expiry beyond what 40 bits of milliseconds hold is kept as the
        // farthest they do: decades, not "never" and not a wrap-around.
        let far = Duration::from_millis(u64::MAX / 2);
        s.set(b"far", b"v", Some(far), 1).expect("fits");
        let ttl = s.get(b"far").expect("live").ttl_ms;
        assert!(ttl > 30 * 365 * 24 * 3_600_000, "{ttl}");
        s.set(b"never", b"v", None, 1).expect("fits");
        assert_eq!(s.get(b"never").expect("live").ttl_ms, 0);
    }

    /// Overwrites of other sizes, deletes and evictions leave holes in the
    /// arena; compaction moves entries under the lock. Every entry reads back
    /// as last written, the segments stay within their bound of the live
    /// bytes, and a refill of the result rebuilds the same store.
    #[test]
    fn churn_compacts_the_arena_and_keeps_every_entry() {
        let seed = crate::zipf::test_seed("store churn", 0xc0ffee_u64);
        let mut rng = Rng::new(seed);
        let s = Store::new(StoreConfig {
            max_memory_bytes: 4 << 20,
            compression: false,
            ..StoreConfig::default()
        });
        let mut model: std::collections::HashMap<Vec<u8>, Vec<u8>> = Default::default();
        let mut version = 0;
        for _ in 0..200_000 {
            version += 1;
            let key = format!("k{}", rng.next_u64() % 20_000).into_bytes();
            match rng.next_u64() % 10 {
                0 => {
                    s.delete(&key, version).expect("fits");
                    model.remove(&key);
                }
                _ => {
                    let len = match rng.next_u64() % 50 {
                        0 => 20_000 + (rng.next_u64() % 30_000) as usize,
                        _ => (rng.next_u64() % 400) as usize,
                    };
                    let value: Vec<u8> = (0..len).map(|i| (i as u64 ^ version) as u8).collect();
                    s.set(&key, &value, None, version).expect("fits");
                    model.insert(key, value);
                }
            }
        }
        let evictions = s.stats.evictions.load(Ordering::Relaxed);
        assert!(evictions > 0, "the churn never filled the store");
        let mut held = 0;
        for (key, value) in &model {
            // Evicted keys are gone; any key still held has its last value.
            if let Some(found) = s.get(key) {
                assert_eq!(found.value, &value[..], "{}", String::from_utf8_lossy(key));
                held += 1;
            }
        }
        let usage = s.usage();
        assert_eq!(usage.entries, held);
        let mut live = 0;
        for index in 0..SHARD_COUNT {
            let shard = s.shard(index);
            shard.arena.check();
            live += shard.arena.capacity() - shard.arena.dead();
        }
        assert!(
            usage.arena_bytes as usize <= live * 8 / 7 + SHARD_COUNT * 2 * arena::SEGMENT_BYTES,
            "{usage:?}, {live} live"
        );
        assert!(
            (usage.arena_free_bytes as usize) < usage.arena_bytes as usize / 4,
            "{usage:?}"
        );
        // Everything the scan sees rebuilds an equal store.
        let copy = Store::new(StoreConfig {
            max_memory_bytes: 8 << 20,
            compression: false,
            ..StoreConfig::default()
        });
        for shard in 0..SHARD_COUNT {
            let mut entries = Vec::new();
            let _ = s.scan(shard, 0, usize::MAX, &mut entries);
            for entry in &entries {
                copy.apply(entry).expect("fits");
            }
        }
        assert_eq!(digest(&s), digest(&copy));
    }

    #[test]
    fn an_overwrite_of_the_same_size_is_done_in_place() {
        let s = Store::new(StoreConfig {
            compression: false,
            ..StoreConfig::default()
        });
        for i in 0..1_000u64 {
            s.set(b"k", format!("value {i:04}").as_bytes(), None, i + 1)
                .expect("fits");
        }
        let usage = s.usage();
        assert_eq!(usage.arena_free_bytes, 0, "{usage:?}");
        let found = s.get(b"k").expect("live");
        assert_eq!(
            (&found.value[..], found.version),
            (&b"value 0999"[..], 1_000)
        );
        // Another size takes a new place and leaves a hole.
        s.set(b"k", b"longer value", None, 1_001).expect("fits");
        assert!(s.usage().arena_free_bytes > 0);
        assert_eq!(s.get(b"k").expect("live").value, &b"longer value"[..]);
    }

    #[test]
    fn compresses_only_when_it_pays() {
        let s = store(1 << 20);
        let text = b"abcdefgh".repeat(100);
        s.set(b"text", &text, None, 1).expect("fits");
        let usage = s.usage();
        assert_eq!(usage.raw_value_bytes, 800);
        assert!(
            usage.stored_value_bytes < 100,
            "stored {}",
            usage.stored_value_bytes
        );
        assert_eq!(s.get(b"text").map(|f| f.value.to_vec()), Some(text));

        let mut rng = Rng::new(7);
        let noise: Vec<u8> = (0..800).map(|_| rng.next_u64() as u8).collect();
        s.set(b"noise", &noise, None, 1).expect("fits");
        let after = s.usage();
        assert_eq!(after.raw_value_bytes - usage.raw_value_bytes, 800);
        assert_eq!(
            after.stored_value_bytes - usage.stored_value_bytes,
            800,
            "noise is kept raw"
        );
        assert_eq!(s.get(b"noise").map(|f| f.value.to_vec()), Some(noise));

        let short = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(); // 48 bytes < 128
        let before = s.usage().stored_value_bytes;
        s.set(b"short", &short, None, 1).expect("fits");
        assert_eq!(s.usage().stored_value_bytes - before, 48);
    }

    #[test]
    fn lowering_the_limit_evicts_down_to_it() {
        let store = store(8 << 20);
        let mut rng = crate::zipf::Rng::new(7);
        for i in 0..25_000 {
            // Random bytes: lz4 cannot shrink them.
            let value: Vec<u8> = (0..100).map(|_| rng.next_u64() as u8).collect();
            store
                .set(format!("key{i}").as_bytes(), &value, None, 1)
                .unwrap();
        }
        let before = store.usage().charged_bytes;
        let limit = 2 << 20;
        assert!(before > 3 << 20, "{before}");
        let evicted = store.set_max_memory(limit);
        let after = store.usage().charged_bytes;
        assert!(after <= limit as u64, "{after} over the new limit");
        assert_eq!(store.stats.evictions.load(Ordering::Relaxed), evicted);
        // Spread over the shards: none is emptied while others stay full.
        let empty = (0..SHARD_COUNT)
            .filter(|&i| store.shard(i).entries == 0)
            .count();
        assert_eq!(empty, 0, "{empty} shards emptied by a lowered limit");
        // Writes go on under the new limit (SIEVE may pick any unvisited
        // entry as the next victim, the new one included).
        for i in 0..100 {
            store
                .set(format!("fresh{i}").as_bytes(), b"value", None, 2)
                .unwrap();
        }
        assert!(store.usage().charged_bytes <= limit as u64);
    }

    #[test]
    fn memory_stays_under_the_limit_and_evictions_are_counted() {
        let max = 256 * 1024;
        let s = store(max);
        let value = vec![b'x'; 100];
        let s2 = Store::new(StoreConfig {
            max_memory_bytes: max,
            compression: false,
            ..StoreConfig::default()
        });
        for i in 0..20_000u32 {
            let key = format!("key:{i:08}");
            // Each write newer than the last: one no newer than an evicted
            // entry's version would be refused (`Applied::Evicted`).
            let version = u64::from(i) + 1;
            s.set(key.as_bytes(), &value, None, version).expect("fits");
            s2.set(key.as_bytes(), &value, None, version).expect("fits");
            assert!(s2.usage().charged_bytes as usize <= max);
        }
        let usage = s2.usage();
        let per_entry = 12 + 100 + ENTRY_OVERHEAD_BYTES;
        assert!(usage.entries as usize <= max / per_entry);
        assert!(
            usage.entries as usize >= max / per_entry * 9 / 10,
            "{usage:?}"
        );
        assert_eq!(
            s2.stats.evictions.load(Ordering::Relaxed),
            20_000 - usage.entries
        );
        // The newest entry survived.
        assert!(s2.get(b"key:00019999").is_some());
        assert!(s.usage().charged_bytes as usize <= max);
    }

    #[test]
    fn an_entry_larger_than_memory_is_refused() {
        let s = store(1000);
        let mut rng = Rng::new(3);
        let noise: Vec<u8> = (0..2000).map(|_| rng.next_u64() as u8).collect();
        assert!(matches!(
            s.set(b"k", &noise, None, 1),
            Err(StoreError::TooLarge { .. })
        ));
        assert!(s.is_empty());
    }

    #[test]
    fn scan_copies_everything_once_and_apply_rebuilds_it() {
        let src = store(64 << 20);
        let mut rng = Rng::new(11);
        for i in 0..5_000u32 {
            let value: Vec<u8> = if i % 2 == 0 {
                vec![b'a'; 300]
            } else {
                (0..50).map(|_| rng.next_u64() as u8).collect()
            };
            let ttl = (i % 3 == 0).then(|| Duration::from_secs(3600));
            src.set(format!("k{i}").as_bytes(), &value, ttl, u64::from(i) + 1)
                .expect("fits");
        }
        for i in 0..100u32 {
            src.delete(format!("k{i}").as_bytes(), 100_000)
                .expect("fits");
        }
        let dst = store(64 << 20);
        let mut chunk = Vec::new();
        let mut copied = 0;
        for shard in 0..src.shard_count() {
            let mut cursor = Some(0);
            while let Some(c) = cursor {
                chunk.clear();
                cursor = src.scan(shard, c, 4096, &mut chunk);
                for e in &chunk {
                    dst.apply(e).expect("fits");
                    copied += 1;
                }
            }
        }
        assert_eq!(copied, 5_000);
        // Equal but for how each arena happens to be laid out.
        let logical = |u: Usage| Usage {
            arena_bytes: 0,
            arena_free_bytes: 0,
            ..u
        };
        assert_eq!(logical(dst.usage()), logical(src.usage()));
        for i in 0..5_000u32 {
            let k = format!("k{i}");
            let (a, b) = (src.get(k.as_bytes()), dst.get(k.as_bytes()));
            assert_eq!(
                a.as_ref().map(|f| (&f.value, f.version)),
                b.as_ref().map(|f| (&f.value, f.version))
            );
            if let (Some(a), Some(b)) = (a, b) {
                assert!(a.ttl_ms.abs_diff(b.ttl_ms) < 5_000);
            }
        }
        // A refill never overrides a newer local write.
        dst.set(b"k4999", b"newer", None, 1_000_000).expect("fits");
        let mut chunk = Vec::new();
        for shard in 0..src.shard_count() {
            src.scan(shard, 0, usize::MAX, &mut chunk);
        }
        for e in &chunk {
            dst.apply(e).expect("fits");
        }
        assert_eq!(
            dst.get(b"k4999").map(|f| f.value),
            Some(Bytes::from_static(b"newer"))
        );
    }

    #[test]
    fn corrupt_compressed_refill_entries_are_skipped() {
        let s = store(1 << 20);
        let entry = Entry {
            key: Bytes::from_static(b"k"),
            version: 1,
            ttl_ms: 0,
            tombstone: false,
            compressed: true,
            raw_len: 1000,
            data: Bytes::from_static(b"\xff\xff\xff garbage"),
        };
        assert_eq!(s.apply(&entry), Ok(Applied::Stale));
        assert_eq!(s.get(b"k"), None);
    }

    /// Plain LRU, for comparison only.
    struct Lru {
        capacity: usize,
        tick: u64,
        last_use: std::collections::HashMap<u64, u64>,
        by_age: std::collections::BTreeMap<u64, u64>,
    }

    impl Lru {
        fn access(&mut self, key: u64) -> bool {
            self.tick += 1;
            if let Some(old) = self.last_use.insert(key, self.tick) {
                self.by_age.remove(&old);
                self.by_age.insert(self.tick, key);
                return true;
            }
            self.by_age.insert(self.tick, key);
            if self.last_use.len() > self.capacity {
                if let Some((_, victim)) = self.by_age.pop_first() {
                    self.last_use.remove(&victim);
                }
            }
            false
        }
    }

    /// The eviction policy's figures: SIEVE (the store itself) against plain
    /// LRU with the same capacity on the same Zipf trace.
    #[test]
    fn sieve_beats_lru_on_a_zipf_trace() {
        let seed = 2024;
        let (universe, capacity, requests) = (100_000u64, 5_000usize, 400_000);
        println!("zipf trace: seed {seed}, {universe} keys, capacity {capacity} entries, {requests} requests");
        for alpha in [0.8, 1.0] {
            let zipf = Zipf::new(universe, alpha);
            let mut rng = Rng::new(seed);
            let per_entry = 8 + 8 + ENTRY_OVERHEAD_BYTES;
            let sieve = Store::new(StoreConfig {
                max_memory_bytes: capacity * per_entry,
                compression: false,
                ..StoreConfig::default()
            });
            let mut lru = Lru {
                capacity,
                tick: 0,
                last_use: Default::default(),
                by_age: Default::default(),
            };
            let (mut sieve_hits, mut lru_hits) = (0u64, 0u64);
            for _ in 0..requests {
                let k = zipf.sample(&mut rng);
                let key = k.to_be_bytes();
                if sieve.get(&key).is_some() {
                    sieve_hits += 1;
                } else {
                    sieve.set(&key, &key, None, 1).expect("fits");
                }
                if lru.access(k) {
                    lru_hits += 1;
                }
            }
            let (s, l) = (
                sieve_hits as f64 / requests as f64,
                lru_hits as f64 / requests as f64,
            );
            println!(
                "alpha {alpha}: SIEVE hit ratio {s:.4}, LRU {l:.4}, SIEVE/LRU {:.3}",
                s / l
            );
            assert!(
                s >= l * 0.99,
                "SIEVE {s:.4} fell behind LRU {l:.4} at alpha {alpha}"
            );
        }
    }
}
