//! The stable 64-bit key hash every rcache process computes the same way:
//! FNV-1a followed by the MurmurHash3 finalizer. It is fixed here,
//! independent of any crate's version, because two things depend on it
//! agreeing across processes and releases: the orchestrator's placement of
//! keys on pairs (`orchestrator::placement`, pinned by golden vectors there)
//! and the anti-entropy buckets partners compare (`worker::antientropy`, cut
//! here as [`digest_bucket`]).
//! It is not keyed: it must never index a table that clients can flood.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable hash of a key.
pub fn key_hash(key: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h)
}

/// Anti-entropy compares partners bucket by bucket: a key's bucket is the
/// top bits of its stable hash ([`key_hash`]).
pub const DIGEST_BUCKETS: usize = 4096;

/// The anti-entropy bucket of a key.
pub fn digest_bucket(key: &[u8]) -> u16 {
    bucket_of_hash(key_hash(key))
}

/// The anti-entropy bucket of a key whose stable hash is known.
pub fn bucket_of_hash(key_hash: u64) -> u16 {
    (key_hash >> (64 - DIGEST_BUCKETS.trailing_zeros())) as u16
}

/// The MurmurHash3 64-bit finalizer: every input bit flips about half of the
/// output bits.
pub fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}
