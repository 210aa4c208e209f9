//! A shard's entry memory: entries packed back to back in segments.
//!
//! An entry costs its key and body bytes plus a header of two bytes (for
//! keys under 64 bytes and bodies under 128) instead of a heap block of its
//! own, which would add the allocator's header and round the size up (a
//! 116-byte key and value took a 128-byte block). Entries are appended to
//! the shard's active segment; a freed entry leaves a hole. When the holes of
//! a shard's sealed segments pass an eighth of its segment bytes, the sealed
//! segment with the most holes is compacted: its live entries are copied to
//! the active segment and it is released. A sealed segment's unused tail is
//! smaller than the entry that did not fit (at most [`LARGE_ENTRY_BYTES`]),
//! and compaction cannot shrink tails (moving entries seals new ones), so
//! tails do not count towards compaction. A shard's segments hold at most
//! about 8/7 of its live bytes and tails, plus its active segment.
//!
//! Entries over [`LARGE_ENTRY_BYTES`] get a segment of their own, released
//! when they are freed, so large values are never copied by compaction.
//!
//! # Entry layout
//! `varint(key_len << 1 | freed)`, `varint(body_len)`, the key, the body.
//! The freed bit lets compaction skip holes without looking them up.
//!
//! The arena knows nothing of slots: compaction hands the owner of each live
//! entry it moves to a callback that points the owner at the new place.

/// Where an entry lives: its segment (high 32 bits) and offset (low 32).
pub type Loc = u64;

/// No entry.
pub const NO_LOC: Loc = u64::MAX;

/// The size of a full segment. A shard starts with smaller ones (down to
/// [`MIN_SEGMENT_BYTES`]) and doubles them as it grows, so an idle worker
/// holds little.
pub const SEGMENT_BYTES: usize = 64 * 1024;
const MIN_SEGMENT_BYTES: usize = 4 * 1024;

/// Entries larger than this get a segment of their own.
pub const LARGE_ENTRY_BYTES: usize = SEGMENT_BYTES / 16;

/// The largest entry (header, key and body): offsets and lengths are u32.
pub const MAX_ENTRY_BYTES: usize = u32::MAX as usize;

struct Segment {
    buf: Box<[u8]>,
    /// Bytes appended so far.
    used: u32,
    /// Bytes of entries not freed.
    live: u32,
    /// Holds one large entry.
    large: bool,
    /// Its entries are being moved out: not a place for new ones.
    compacting: bool,
}

#[derive(Default)]
pub struct Arena {
    segments: Vec<Segment>,
    /// Released segment numbers, reused before new ones.
    spare: Vec<u32>,
    active: Option<u32>,
    /// Bytes of every segment's buffer.
    capacity: usize,
    /// Bytes of segments no entry uses: freed entries, the unused tails of
    /// sealed segments. The active segment's unused tail is not counted.
    dead: usize,
    /// The share of `dead` in the active segment.
    active_dead: usize,
    /// The share of `dead` in sealed segments' unused tails.
    tails: usize,
}

/// Bytes of an unsigned LEB128 number.
fn varint_len(mut n: u64) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn put_varint(out: &mut [u8], mut n: u64) -> usize {
    let mut i = 0;
    while n >= 0x80 {
        out[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    out[i] = n as u8;
    i + 1
}

/// Reads a varint at `at`; a truncated one reads as what it holds (the arena
/// only reads what it wrote).
fn get_varint(buf: &[u8], at: usize) -> (u64, usize) {
    let mut n = 0u64;
    let mut i = 0;
    while let Some(&b) = buf.get(at + i) {
        n |= u64::from(b & 0x7f) << (7 * i);
        i += 1;
        if b < 0x80 || i == 10 {
            break;
        }
    }
    (n, i)
}

/// An entry's bytes in a segment: header, key and body.
pub fn entry_bytes(key_len: usize, body_len: usize) -> usize {
    varint_len((key_len as u64) << 1) + varint_len(body_len as u64) + key_len + body_len
}

fn loc(segment: u32, offset: u32) -> Loc {
    u64::from(segment) << 32 | u64::from(offset)
}

fn split_loc(at: Loc) -> (usize, usize) {
    ((at >> 32) as usize, (at & 0xffff_ffff) as usize)
}

/// The entry at `at` of `buf`: (header's first varint, key range, body range).
fn parse(buf: &[u8], at: usize) -> (u64, std::ops::Range<usize>, std::ops::Range<usize>) {
    let (first, a) = get_varint(buf, at);
    let (body_len, b) = get_varint(buf, at + a);
    let key_at = at + a + b;
    let body_at = key_at + (first >> 1) as usize;
    (first, key_at..body_at, body_at..body_at + body_len as usize)
}

impl Arena {
    /// Copies an entry in; `None` if it is larger than [`MAX_ENTRY_BYTES`].
    pub fn alloc(&mut self, key: &[u8], body: &[&[u8]]) -> Option<Loc> {
        let body_len: usize = body.iter().map(|p| p.len()).sum();
        let len = entry_bytes(key.len(), body_len);
        if len > MAX_ENTRY_BYTES {
            return None;
        }
        let (segment, offset) = self.reserve(len);
        let buf = &mut self.segments[segment as usize].buf[offset as usize..][..len];
        let mut i = put_varint(buf, (key.len() as u64) << 1);
        i += put_varint(&mut buf[i..], body_len as u64);
        buf[i..i + key.len()].copy_from_slice(key);
        i += key.len();
        for part in body {
            buf[i..i + part.len()].copy_from_slice(part);
            i += part.len();
        }
        Some(loc(segment, offset))
    }

    /// Room for `len` bytes: (segment, offset), counted as used and live.
    fn reserve(&mut self, len: usize) -> (u32, u32) {
        if len > LARGE_ENTRY_BYTES {
            let segment = self.new_segment(len, true);
            let s = &mut self.segments[segment as usize];
            s.used = len as u32;
            s.live = len as u32;
            return (segment, 0);
        }
        let fits = self.active.filter(|&a| {
            let s = &self.segments[a as usize];
            s.buf.len() - s.used as usize >= len
        });
        let segment = match fits {
            Some(active) => active,
            None => {
                self.seal();
                let size = (self.capacity / 2)
                    .next_power_of_two()
                    .clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES)
                    .max(len.next_power_of_two());
                let segment = self.new_segment(size, false);
                self.active = Some(segment);
                segment
            }
        };
        let s = &mut self.segments[segment as usize];
        let offset = s.used;
        s.used += len as u32;
        s.live += len as u32;
        (segment, offset)
    }

    /// The active segment's unused tail becomes dead.
    fn seal(&mut self) {
        if let Some(active) = self.active.take() {
            let s = &self.segments[active as usize];
            let tail = s.buf.len() - s.used as usize;
            self.dead += tail;
            self.tails += tail;
            self.active_dead = 0;
        }
    }

    fn new_segment(&mut self, size: usize, large: bool) -> u32 {
        self.capacity += size;
        let segment = Segment {
            buf: vec![0; size].into_boxed_slice(),
            used: 0,
            live: 0,
            large,
            compacting: false,
        };
        match self.spare.pop() {
            Some(n) => {
                self.segments[n as usize] = segment;
                n
            }
            None => {
                self.segments.push(segment);
                (self.segments.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, segment: usize) {
        let s = &mut self.segments[segment];
        self.capacity -= s.buf.len();
        self.dead -= s.buf.len() - s.live as usize;
        self.tails -= s.buf.len() - s.used as usize;
        s.buf = Box::default();
        s.used = 0;
        s.live = 0;
        s.compacting = false;
        self.spare.push(segment as u32);
    }

    fn range(&self, at: Loc) -> (&[u8], std::ops::Range<usize>, std::ops::Range<usize>) {
        let (segment, offset) = split_loc(at);
        let buf: &[u8] = self.segments.get(segment).map_or(&[], |s| &s.buf[..]);
        let (_, key, body) = parse(buf, offset);
        (buf, key, body)
    }

    /// Writes `body` over the body of the entry at `at` if it has the same
    /// length (an overwrite of a key with a value of the same size, common
    /// in caches, then leaves no hole). Returns whether it did.
    pub fn rewrite(&mut self, at: Loc, body: &[&[u8]]) -> bool {
        let len: usize = body.iter().map(|p| p.len()).sum();
        let (segment, _) = split_loc(at);
        let (_, _, range) = self.range(at);
        if range.len() != len {
            return false;
        }
        let Some(buf) = self
            .segments
            .get_mut(segment)
            .and_then(|s| s.buf.get_mut(range))
        else {
            return false;
        };
        let mut i = 0;
        for part in body {
            buf[i..i + part.len()].copy_from_slice(part);
            i += part.len();
        }
        true
    }

    /// The key and body of the entry at `at`.
    pub fn get(&self, at: Loc) -> (&[u8], &[u8]) {
        let (buf, key, body) = self.range(at);
        (
            buf.get(key).unwrap_or_default(),
            buf.get(body).unwrap_or_default(),
        )
    }

    /// The bytes the entry at `at` takes (header, key and body).
    pub fn len(&self, at: Loc) -> usize {
        let (_, _, body) = self.range(at);
        body.end - split_loc(at).1
    }

    /// Frees the entry at `at`. A segment left with no live entry is
    /// released (the active one is emptied and reused).
    pub fn free(&mut self, at: Loc) {
        let len = self.len(at);
        let (segment, offset) = split_loc(at);
        let active = self.active == Some(segment as u32);
        let Some(s) = self.segments.get_mut(segment).filter(|s| !s.buf.is_empty()) else {
            debug_assert!(false, "free of {at:#x}: no such segment");
            return;
        };
        if let Some(b) = s.buf.get_mut(offset) {
            *b |= 1;
        }
        s.live -= len as u32;
        self.dead += len;
        if active {
            self.active_dead += len;
            if s.live == 0 {
                // Nothing left in it: start it over.
                self.dead -= s.used as usize;
                self.active_dead = 0;
                s.used = 0;
            }
        } else if s.live == 0 && !s.compacting {
            self.release(segment);
        }
    }

    /// Bytes of freed entries in sealed segments: what compaction reclaims.
    pub fn holes(&self) -> usize {
        self.dead - self.active_dead - self.tails
    }

    /// Whether the holes in sealed segments are worth a compaction: over
    /// an eighth of the segment bytes, and at least the smallest segment.
    pub fn wants_compaction(&self) -> bool {
        let holes = self.holes();
        holes > self.capacity / 8 && holes >= MIN_SEGMENT_BYTES
    }

    /// Compacts the sealed segment with the most holes: every live entry
    /// in it is copied to the active segment and `moved(old, new)` is called
    /// for it (a copy it returns `false` for, an entry nobody owns, is
    /// freed), then the segment is released. Returns the entries moved.
    pub fn compact(&mut self, mut moved: impl FnMut(&Arena, Loc, Loc) -> bool) -> usize {
        let candidate = self
            .segments
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                !s.large && !s.compacting && !s.buf.is_empty() && self.active != Some(*i as u32)
            })
            .max_by_key(|(_, s)| s.used - s.live)
            .map(|(i, _)| i);
        let Some(segment) = candidate else {
            return 0;
        };
        // Marked, not released, while entries move: a released number could
        // come back as the active segment and give a new entry an old one's
        // place.
        self.segments[segment].compacting = true;
        let old = std::mem::take(&mut self.segments[segment].buf);
        let used = self.segments[segment].used as usize;
        let mut count = 0;
        let mut at = 0;
        while at < used {
            let (first, _, body) = parse(&old, at);
            let end = body.end.min(used);
            if first & 1 == 0 {
                let bytes = &old[at..end];
                let (to, offset) = self.reserve(bytes.len());
                self.segments[to as usize].buf[offset as usize..][..bytes.len()]
                    .copy_from_slice(bytes);
                let to = loc(to, offset);
                if moved(self, loc(segment as u32, at as u32), to) {
                    count += 1;
                } else {
                    self.free(to);
                }
            }
            at = end.max(at + 1);
        }
        // The moved copies are counted in their new segment; the old one
        // goes with everything it counted.
        self.segments[segment].buf = old;
        self.release(segment);
        count
    }

    /// Bytes of every segment.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of segments no entry uses (see [`Arena::wants_compaction`]).
    pub fn dead(&self) -> usize {
        self.dead
    }

    /// Checks the counters against the segments (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let mut capacity = 0;
        let mut dead = 0;
        let mut tails = 0;
        for (i, s) in self.segments.iter().enumerate() {
            if s.buf.is_empty() {
                continue;
            }
            capacity += s.buf.len();
            let mut live = 0;
            let mut at = 0;
            while at < s.used as usize {
                let (first, _, body) = parse(&s.buf, at);
                if first & 1 == 0 {
                    live += body.end - at;
                }
                at = body.end;
            }
            assert_eq!(live, s.live as usize, "segment {i}'s live bytes");
            dead += if self.active == Some(i as u32) {
                s.used as usize - live
            } else {
                tails += s.buf.len() - s.used as usize;
                s.buf.len() - live
            };
        }
        assert_eq!(capacity, self.capacity, "capacity");
        assert_eq!(dead, self.dead, "dead bytes");
        assert_eq!(tails, self.tails, "tail bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zipf::Rng;
    use std::collections::HashMap;

    #[test]
    fn varints_round_trip() {
        let mut buf = [0u8; 10];
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let len = put_varint(&mut buf, n);
            assert_eq!(len, varint_len(n));
            assert_eq!(get_varint(&buf, 0), (n, len), "{n}");
        }
    }

    #[test]
    fn a_small_entry_costs_two_header_bytes() {
        assert_eq!(entry_bytes(16, 100), 118);
        let mut arena = Arena::default();
        let at = arena
            .alloc(b"0123456789abcdef", &[&[7u8; 100]])
            .expect("fits");
        assert_eq!(arena.len(at), 118);
        let (key, body) = arena.get(at);
        assert_eq!((key, body), (&b"0123456789abcdef"[..], &[7u8; 100][..]));
        arena.check();
    }

    /// Random allocations and frees against a model, with compaction when
    /// the arena asks for it: every live entry reads back, the counters
    /// match the segments, and the segments stay within 8/7 of the live
    /// bytes plus the active segment.
    #[test]
    fn random_churn_keeps_entries_and_bounds_holes() {
        let seed = crate::zipf::test_seed("arena churn", 0x5eed_a7e4u64);
        let mut rng = Rng::new(seed);
        let mut arena = Arena::default();
        // id -> (loc, key, body)
        let mut live: HashMap<u32, (Loc, Vec<u8>, Vec<u8>)> = HashMap::new();
        let mut by_loc: HashMap<Loc, u32> = HashMap::new();
        let mut next_id = 0u32;
        let mut compactions = 0;
        for step in 0..60_000 {
            let grow = live.len() < 2_000 || rng.next_u64() % 2 == 0;
            if grow {
                let key = format!("key-{next_id}").into_bytes();
                let len = match rng.next_u64() % 100 {
                    0 => 5_000 + (rng.next_u64() % 50_000) as usize, // large
                    1..=10 => (rng.next_u64() % 4_000) as usize,
                    _ => (rng.next_u64() % 300) as usize,
                };
                let body: Vec<u8> = (0..len)
                    .map(|i| (i as u64 ^ next_id as u64) as u8)
                    .collect();
                let at = arena
                    .alloc(&key, &[&body[..len / 2], &body[len / 2..]])
                    .expect("fits");
                assert!(
                    by_loc.insert(at, next_id).is_none(),
                    "step {step}: a place given twice"
                );
                live.insert(next_id, (at, key, body));
                next_id += 1;
            } else {
                let id = *live
                    .keys()
                    .nth((rng.next_u64() % live.len() as u64) as usize)
                    .expect("some");
                let (at, _, _) = live.remove(&id).expect("live");
                by_loc.remove(&at);
                arena.free(at);
            }
            while arena.wants_compaction() {
                let holes = arena.holes();
                let mut moves = Vec::new();
                let n = arena.compact(|_, from, to| {
                    moves.push((from, to));
                    true
                });
                assert_eq!(n, moves.len());
                assert!(
                    n > 0 || arena.dead() == 0,
                    "step {step}: a compaction that moved nothing"
                );
                for (from, to) in moves {
                    let id = by_loc.remove(&from).expect("moved a live entry");
                    live.get_mut(&id).expect("live").0 = to;
                    by_loc.insert(to, id);
                }
                compactions += 1;
                // Every compaction reclaims holes, whatever tails it seals.
                assert!(arena.holes() < holes, "step {step}: no progress");
            }
            if step % 5_000 == 0 {
                arena.check();
            }
            let live_bytes: usize = live.values().map(|(at, _, _)| arena.len(*at)).sum();
            assert!(
                arena.capacity() <= (live_bytes + arena.tails) * 8 / 7 + 2 * SEGMENT_BYTES,
                "step {step}: {} bytes of segments for {live_bytes} live",
                arena.capacity()
            );
            // A tail is less than the entry that did not fit.
            assert!(
                arena.tails <= arena.capacity() / 15 + 2 * SEGMENT_BYTES,
                "step {step}: {} bytes of tails in {}",
                arena.tails,
                arena.capacity()
            );
        }
        arena.check();
        assert!(
            compactions > 10,
            "{compactions} compactions: the churn never compacted"
        );
        for (at, key, body) in live.values() {
            let (k, b) = arena.get(*at);
            assert_eq!((k, b), (&key[..], &body[..]));
        }
        // Freeing everything releases every segment but the active one.
        for (at, _, _) in live.values() {
            arena.free(*at);
        }
        arena.check();
        assert!(arena.capacity() <= SEGMENT_BYTES, "{}", arena.capacity());
    }
}
