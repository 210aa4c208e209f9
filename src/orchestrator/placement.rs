//! Key -> pair placement: jump consistent hash (Lamping & Veach, 2014) over
//! a stable 64-bit hash of the key.
//!
//! Jump hash spreads keys evenly (no virtual nodes, no table) and, when pairs
//! are appended to the list, moves only the keys the new pairs take over.
//! The key hash ([`crate::hash::key_hash`]) is pinned by golden vectors
//! below, because a changed hash would silently move every key to another
//! pair.

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

pub fn locate(key: &[u8], pairs: usize) -> Slot {
    let h = key_hash(key);
    let pair = jump(h, u32::try_from(pairs).unwrap_or(u32::MAX)) as usize;
    // An independent bit: jump consumed `h` as its seed.
    let first = (fmix64(h ^ 0x9e37_79b9_7f4a_7c15) & 1) as usize;
    Slot { pair, first }
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
}
