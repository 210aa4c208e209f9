//! Key -> pair placement: jump consistent hash (Lamping & Veach, 2014) over
//! a stable 64-bit hash of the key.
//!
//! Jump hash spreads keys evenly (no virtual nodes, no table) and, when pairs
//! are appended to the list, moves only the keys the new pairs take over.
//! The key hash ([`crate::hash::key_hash`]) is pinned by golden vectors
//! below, because a changed hash would silently move every key to another
//! pair.
//!
//! A pair removed from the middle of a layout leaves a *hole* there, so the
//! pairs after it keep their places ([`Placement`]): a key whose jump
//! bucket is a hole goes to the live bucket with the highest rendezvous
//! score (`fmix64` of the key's hash and the bucket), which spreads the
//! removed pair's keys evenly over the others and moves nothing else. A
//! layout without holes places every key as plain jump hash does. A pair
//! added later fills the lowest hole, taking exactly its share back.

use crate::hash::fmix64;
pub use crate::hash::key_hash;

/// Jump consistent hash: a bucket in `0..buckets` for `key`.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// Where a key lives: its pair, and which worker of the pair reads first
/// (so reads spread over both partners).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub pair: usize,
    pub first: usize,
}

/// Which worker of the pair reads first for the key hash `h`.
fn first_of(h: u64) -> usize {
    // An independent bit: jump consumed `h` as its seed.
    (fmix64(h ^ 0x9e37_79b9_7f4a_7c15) & 1) as usize
}

pub fn locate(key: &[u8], pairs: usize) -> Slot {
    let h = key_hash(key);
    let pair = jump(h, u32::try_from(pairs).unwrap_or(u32::MAX)) as usize;
    Slot {
        pair,
        first: first_of(h),
    }
}

/// Placement over a layout's buckets, some of which may be holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    buckets: u32,
    /// The buckets that are pairs, in order; empty when none is a hole.
    live: Vec<u32>,
    holes: Vec<bool>,
}

impl Placement {
    /// `holes[i]`: whether bucket `i` is a hole. At least one bucket must
    /// be a pair; with none, every key goes to bucket 0.
    pub fn new(holes: Vec<bool>) -> Placement {
        let buckets = u32::try_from(holes.len()).unwrap_or(u32::MAX);
        let live = if holes.iter().any(|h| *h) {
            (0..buckets).filter(|&i| !holes[i as usize]).collect()
        } else {
            Vec::new()
        };
        Placement {
            buckets,
            live,
            holes,
        }
    }

    /// Buckets, holes included.
    pub fn buckets(&self) -> usize {
        self.holes.len()
    }

    pub fn is_hole(&self, bucket: usize) -> bool {
        self.holes.get(bucket).copied().unwrap_or(true)
    }

    /// The key's pair (a bucket that is not a hole) and first reader.
    pub fn locate(&self, key: &[u8]) -> Slot {
        self.locate_hash(key_hash(key))
    }

    pub fn locate_hash(&self, h: u64) -> Slot {
        let bucket = jump(h, self.buckets.max(1));
        let pair = if self.is_hole(bucket as usize) {
            self.live
                .iter()
                .copied()
                .max_by_key(|&b| fmix64(h ^ u64::from(b).wrapping_mul(0xff51_afd7_ed55_8ccd)))
                .unwrap_or(0)
        } else {
            bucket
        };
        Slot {
            pair: pair as usize,
            first: first_of(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: if this test fails, the hash changed and every key of
    /// every cluster would move. Do not update the numbers; revert the change.
    #[test]
    fn placement_is_pinned() {
        let cases: &[(&[u8], u64, [u32; 4])] = &[
            (b"", 0xefd0_1f60_ba99_2926, [0, 1, 1, 1]),
            (b"greeting", 0x151f_d25d_2d4f_b978, [0, 0, 3, 7]),
            (b"user:1001", 0xa4c6_bfa8_864f_af62, [0, 0, 0, 6]),
            (b"\x00\xff binary", 0xdf42_a28c_bfd0_8f18, [0, 0, 2, 5]),
        ];
        for (key, hash, buckets) in cases {
            assert_eq!(key_hash(key), *hash, "hash of {key:?}");
            let got = [1, 2, 4, 8].map(|n| jump(*hash, n));
            assert_eq!(got, *buckets, "buckets of {key:?}");
        }
    }

    #[test]
    fn keys_spread_evenly_over_pairs_and_readers() {
        for pairs in [2usize, 3, 5] {
            let mut counts = vec![0u32; pairs];
            let mut first = [0u32; 2];
            let n = 60_000;
            for i in 0..n {
                let slot = locate(format!("key:{i}").as_bytes(), pairs);
                counts[slot.pair] += 1;
                first[slot.first] += 1;
            }
            let expected = n as f64 / pairs as f64;
            for c in &counts {
                assert!(
                    (f64::from(*c) - expected).abs() < expected * 0.05,
                    "{counts:?}"
                );
            }
            assert!(
                (f64::from(first[0]) - n as f64 / 2.0).abs() < n as f64 * 0.02,
                "{first:?}"
            );
        }
    }

    #[test]
    fn adding_a_pair_moves_only_keys_to_the_new_pair() {
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("k{i}");
            let (before, after) = (
                locate(key.as_bytes(), 3).pair,
                locate(key.as_bytes(), 4).pair,
            );
            if before != after {
                assert_eq!(after, 3);
                moved += 1;
            }
        }
        assert!((2_000..3_000).contains(&moved), "{moved}");
    }

    #[test]
    fn without_holes_placement_is_plain_jump_hash() {
        let placement = Placement::new(vec![false; 5]);
        for i in 0..2_000 {
            let key = format!("k{i}");
            assert_eq!(placement.locate(key.as_bytes()), locate(key.as_bytes(), 5));
        }
    }

    #[test]
    fn removing_a_middle_pair_moves_only_its_keys_evenly() {
        let before = Placement::new(vec![false; 4]);
        let after = Placement::new(vec![false, true, false, false]);
        let mut landed = [0u32; 4];
        for i in 0..40_000 {
            let key = format!("k{i}");
            let (b, a) = (before.locate(key.as_bytes()), after.locate(key.as_bytes()));
            assert_eq!(a.first, b.first);
            if b.pair == 1 {
                assert_ne!(a.pair, 1, "{key} stayed in the hole");
                landed[a.pair] += 1;
            } else {
                assert_eq!(a.pair, b.pair, "{key} moved though its pair stayed");
            }
        }
        // About 10,000 keys leave pair 1, a third to each of the others.
        for p in [0, 2, 3] {
            assert!((3_000..3_700).contains(&landed[p]), "{landed:?}");
        }
        // A second hole moves only the keys of that pair.
        let again = Placement::new(vec![false, true, false, true]);
        for i in 0..10_000 {
            let key = format!("k{i}");
            let (b, a) = (after.locate(key.as_bytes()), again.locate(key.as_bytes()));
            if b.pair != 3 {
                assert_eq!(a.pair, b.pair, "{key}");
            }
        }
    }
}
