//! One entry of a shard's slab, packed in 32 bytes, and a write prepared
//! outside the shard's lock.

use super::{Applied, ENTRY_OVERHEAD_BYTES, FLAG_COMPRESSED, FLAG_HASH, FLAG_TOMBSTONE, NEVER};
use crate::protocol::link::Entry;
use crate::worker::arena::{self, Arena, Loc};
use bytes::Bytes;

/// One entry of a shard's slab: 32 bytes.
pub(super) struct Slot {
    /// Where the key and the body live in the shard's arena. The body is
    /// the stored value, after a compressed value's length once
    /// decompressed (u32, little endian).
    pub(super) loc: Loc,
    pub(super) version: u64,
    /// The expiry (bits 0..40: milliseconds since the store's epoch, all
    /// ones for none), the key's length (bits 40..56) and the flags (bits
    /// 56..64), packed in one word.
    pub(super) meta: u64,
    /// SIEVE queue links (slab indices), towards the newest and oldest entry.
    pub(super) newer: u32,
    pub(super) older: u32,
}

/// Expiries are kept in 40 bits of milliseconds: about 34 years after the
/// store started. A later one is kept as that far (the entry outlives the
/// process anyway); all ones means none.
pub(super) const EXPIRY_MASK: u64 = (1 << 40) - 1;

/// Bytes before the value in a compressed entry's body: the value's length
/// once decompressed.
pub(super) const RAW_LEN_BYTES: usize = 4;

pub(super) fn pack_meta(expires_at: u64, key_len: u16, flags: u8) -> u64 {
    let expiry = if expires_at == NEVER {
        EXPIRY_MASK
    } else {
        expires_at.min(EXPIRY_MASK - 1)
    };
    expiry | u64::from(key_len) << 40 | u64::from(flags) << 56
}

impl Slot {
    pub(super) fn expires_at(&self) -> u64 {
        match self.meta & EXPIRY_MASK {
            EXPIRY_MASK => NEVER,
            at => at,
        }
    }

    pub(super) fn set_expires_at(&mut self, expires_at: u64) {
        self.meta = pack_meta(expires_at, self.key_len(), self.flags());
    }

    pub(super) fn key_len(&self) -> u16 {
        (self.meta >> 40) as u16
    }

    pub(super) fn flags(&self) -> u8 {
        (self.meta >> 56) as u8
    }

    pub(super) fn set_flags(&mut self, flags: u8) {
        self.meta = self.meta & !(0xff << 56) | u64::from(flags) << 56;
    }

    pub(super) fn key<'a>(&self, arena: &'a Arena) -> &'a [u8] {
        arena.get(self.loc).0
    }

    /// The stored value and its length once decompressed.
    pub(super) fn value<'a>(&self, arena: &'a Arena) -> (&'a [u8], u32) {
        split_body(arena.get(self.loc).1, self.flags())
    }

    pub(super) fn is(&self, flag: u8) -> bool {
        self.flags() & flag != 0
    }

    /// A hash whose fields are all deleted: kept (the deletions' versions
    /// still count against older writes of them) but read as missing.
    pub(super) fn reads_missing(&self, arena: &Arena) -> bool {
        self.is(FLAG_HASH) && !crate::protocol::fields::has_live(self.value(arena).0)
    }

    /// What two writes of one version are compared by: the stored value
    /// (the same order as comparing key and value, the key being equal),
    /// then its kind and raw length, so no two different entries compare
    /// equal whatever their layout.
    pub(super) fn content<'a>(&self, arena: &'a Arena) -> (&'a [u8], u8, u32) {
        let (value, raw_len) = self.value(arena);
        (value, self.flags() & KIND_FLAGS, raw_len)
    }

    pub(super) fn charge(&self, arena: &Arena) -> usize {
        arena.len(self.loc) + ENTRY_OVERHEAD_BYTES
    }

    pub(super) fn expired(&self, now: u64) -> bool {
        self.expires_at() <= now
    }

    pub(super) fn ttl_ms(&self, now: u64) -> u64 {
        match self.expires_at() {
            NEVER => 0,
            at => at.saturating_sub(now).max(1),
        }
    }

    /// The slot as it travels between partners.
    pub(super) fn entry(&self, arena: &Arena, now: u64) -> Entry {
        let (value, raw_len) = self.value(arena);
        Entry {
            key: Bytes::copy_from_slice(self.key(arena)),
            version: self.version,
            ttl_ms: self.ttl_ms(now),
            tombstone: self.is(FLAG_TOMBSTONE),
            compressed: self.is(FLAG_COMPRESSED),
            hash: self.is(FLAG_HASH),
            raw_len,
            data: Bytes::copy_from_slice(value),
        }
    }
}

/// The flags that say what an entry holds (not how it is used).
pub(super) const KIND_FLAGS: u8 = FLAG_TOMBSTONE | FLAG_COMPRESSED | FLAG_HASH;

impl NewSlot<'_> {
    /// As [`Slot::content`].
    pub(super) fn content(&self) -> (&[u8], u8, u32) {
        let raw_len = self
            .raw_len
            .map_or(self.value.len() as u32, u32::from_le_bytes);
        (&self.value, self.flags & KIND_FLAGS, raw_len)
    }

    /// The body's parts as the arena stores them (see [`Slot::loc`]).
    pub(super) fn body(&self) -> [&[u8]; 2] {
        [
            self.raw_len.as_ref().map_or(&[][..], |r| &r[..]),
            &self.value,
        ]
    }

    /// Its bytes in the arena.
    pub(super) fn bytes(&self) -> usize {
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
pub(super) fn split_body(body: &[u8], flags: u8) -> (&[u8], u32) {
    if flags & FLAG_COMPRESSED == 0 {
        return (body, body.len() as u32);
    }
    match body.split_first_chunk::<RAW_LEN_BYTES>() {
        Some((raw_len, value)) => (value, u32::from_le_bytes(*raw_len)),
        None => (&[], 0),
    }
}

/// What a shard's `put` did.
pub(super) struct Put {
    pub(super) applied: Applied,
    pub(super) added: usize,
    pub(super) freed: usize,
    /// A live entry was there before.
    pub(super) was_live: bool,
}

/// A write prepared outside the lock.
pub(super) struct NewSlot<'a> {
    /// A compressed value's length once decompressed (little endian).
    pub(super) raw_len: Option<[u8; RAW_LEN_BYTES]>,
    /// The stored value (compressed or not).
    pub(super) value: std::borrow::Cow<'a, [u8]>,
    pub(super) key_len: u16,
    pub(super) version: u64,
    pub(super) expires_at: u64,
    pub(super) flags: u8,
    /// Store only over an existing entry (a repair under memory pressure).
    pub(super) replace_only: bool,
    /// What must hold of the entry there for the write to apply.
    pub(super) require: Require,
    /// Replaces the entry there whatever their versions say: a hash
    /// merged with it under the shard's lock (`hashes.rs`).
    pub(super) force: bool,
    /// A hash's field writes (`HSET`, `HDEL`), not a whole entry: they
    /// merge into the hash there and keep its TTL, and find a live
    /// string there the wrong type.
    pub(super) fields_write: bool,
}

/// A write's condition on the entry it replaces, checked under the
/// shard's lock ([`super::Applied::Unmet`] when it does not hold).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    Nothing,
    /// A live entry is there (`true`) or is not (`false`).
    Live(bool),
    /// The live entry holds exactly this version (`None`: no live entry):
    /// a read-modify-write stores only over what it read.
    Holds(Option<u64>),
    /// No live entry after version `base` stamped by `node` is there: the
    /// replica of an update decided from `base` by a partner, which must
    /// not land over an update this node (`node`) decided meanwhile from
    /// an older value. (A later version of another node is a descendant
    /// of the update or a plain write over it, and wins as any newer
    /// version does.)
    NotAfter {
        base: u64,
        node: u16,
    },
}

impl Require {
    /// Whether it holds of an entry that is live at `version`, or of none.
    pub(super) fn met(self, live: Option<u64>) -> bool {
        match self {
            Require::Nothing => true,
            Require::Live(want) => want == live.is_some(),
            Require::Holds(want) => want == live,
            Require::NotAfter { base, node } => {
                !matches!(live, Some(v) if v > base && crate::version::node_of(v) == node)
            }
        }
    }
}
