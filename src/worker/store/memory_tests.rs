//! Memory: slot packing, arena compaction, compression, the limit and
//! eviction.

use super::tests::{digest, store};
use super::*;
use crate::zipf::{Rng, Zipf};

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
        hash: false,
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
