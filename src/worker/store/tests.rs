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

use super::digest::fingerprint;
use super::*;
use crate::hash::digest_bucket;

pub(super) fn store(max_memory_bytes: usize) -> Store {
    Store::new(StoreConfig {
        max_memory_bytes,
        ..StoreConfig::default()
    })
}

pub(super) fn digest(s: &Store) -> Vec<BucketDigest> {
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
            b.hash = b.hash.wrapping_add(fingerprint(
                hash,
                slot.version,
                slot.is(FLAG_TOMBSTONE),
                super::digest::content_print(slot, &shard.arena),
            ));
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
        match next() % 10 {
            // Field writes: merged hashes, rebased by older deletes.
            8 | 9 => {
                let field = Bytes::from(format!("f{}", next() % 4));
                let value =
                    (next() % 4 > 0).then(|| Bytes::from(vec![b'h'; (next() % 40) as usize]));
                let _ = s.write_fields(key.as_bytes(), |_, _| {
                    Ok::<_, ()>((version, vec![(field, value)]))
                });
            }
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
        hash: false,
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
        hash: false,
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
        hash: false,
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

/// One write of a hash test: fields (`None`: deleted) at a version, or a
/// whole-key write (a string value, or a delete).
#[derive(Debug, Clone)]
enum HashWrite {
    Fields(u64, Vec<(Bytes, Option<Bytes>)>),
    Set(u64, Bytes),
    Del(u64),
}

/// Applies `w`: whether the replica took it (a client's field writes over
/// a string are the wrong type there).
fn write(s: &Store, key: &[u8], w: &HashWrite) -> bool {
    match w {
        HashWrite::Fields(version, writes) => {
            let version = *version;
            let writes = writes.clone();
            matches!(
                s.write_fields(key, move |_, _| Ok::<_, ()>((version, writes))),
                Ok(Ok(Applied::Yes | Applied::Stale))
            )
        }
        HashWrite::Set(version, value) => s.set(key, value, None, *version).is_ok(),
        HashWrite::Del(version) => s.delete(key, *version).is_ok(),
    }
}

/// What a replica holds of `key`, as anti-entropy compares it.
fn held(s: &Store, key: &[u8]) -> Option<(u64, bool, bool, Bytes)> {
    s.entry(key)
        .map(|e| (e.version, e.tombstone, e.hash, e.data))
}

/// Replicas that took the same field writes, string writes and deletes in
/// different orders hold the same entry, bytes and digests once they
/// swapped entries (an anti-entropy round); no field written after the
/// last whole-key write is lost.
#[test]
fn hashes_converge_whatever_order_writes_arrive_in() {
    let seed = crate::sys::random_u64();
    println!("seed {seed}");
    let mut rng = crate::zipf::Rng::new(seed);
    for round in 0..300 {
        let keys: [&[u8]; 3] = [b"h0", b"h1", b"h2"];
        let mut writes: Vec<(usize, HashWrite)> = Vec::new();
        let mut versions: Vec<u64> = (1..=12).map(|v| v * 10).collect();
        // Distinct versions, as clocks stamp them.
        for i in (1..versions.len()).rev() {
            versions.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for version in versions {
            let key = rng.below(3) as usize;
            let w = match rng.below(10) {
                0 => HashWrite::Set(version, Bytes::from(format!("s{version}"))),
                1 => HashWrite::Del(version),
                _ => HashWrite::Fields(
                    version,
                    (0..1 + rng.below(3))
                        .map(|_| {
                            let name = Bytes::from(vec![b'a' + rng.below(4) as u8]);
                            let value =
                                (rng.below(4) > 0).then(|| Bytes::from(format!("v{version}")));
                            (name, value)
                        })
                        .collect(),
                ),
            };
            writes.push((key, w));
        }
        let (a, b) = (store(1 << 30), store(1 << 30));
        // Acknowledged: some replica took it.
        let mut taken = vec![false; writes.len()];
        for (i, (key, w)) in writes.iter().enumerate() {
            taken[i] |= write(&a, keys[*key], w);
        }
        let mut order: Vec<usize> = (0..writes.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            let (key, w) = &writes[i];
            taken[i] |= write(&b, keys[*key], w);
        }
        for key in keys {
            if let Some(e) = a.entry(key) {
                let _ = b.apply(&e);
            }
            if let Some(e) = b.entry(key) {
                let _ = a.apply(&e);
            }
            assert_eq!(
                held(&a, key),
                held(&b, key),
                "seed {seed} round {round}: {writes:?}"
            );
        }
        assert_eq!(digest(&a), digest(&b), "seed {seed} round {round}");
        // Every field write newer than every whole-key write of its key
        // is there.
        for (k, key) in keys.iter().enumerate() {
            let last_whole = writes
                .iter()
                .filter(|(wk, w)| *wk == k && !matches!(w, HashWrite::Fields(..)))
                .map(|(_, w)| match w {
                    HashWrite::Set(v, _) | HashWrite::Del(v) | HashWrite::Fields(v, _) => *v,
                })
                .max()
                .unwrap_or(0);
            let mut newest: std::collections::BTreeMap<Bytes, (u64, Option<Bytes>)> =
                Default::default();
            for ((wk, w), _) in writes.iter().zip(&taken).filter(|(_, t)| **t) {
                if let (true, HashWrite::Fields(v, fields)) = (*wk == k, w) {
                    for (name, value) in fields {
                        if *v > last_whole && newest.get(name).map_or(true, |(held, _)| *held <= *v)
                        {
                            newest.insert(name.clone(), (*v, value.clone()));
                        }
                    }
                }
            }
            let found = a.get(key);
            let fields = found
                .as_ref()
                .filter(|f| f.hash)
                .map(|f| crate::protocol::fields::Fields::decode(&f.value).expect("decodes"));
            for (name, (_, value)) in &newest {
                assert_eq!(
                    fields.as_ref().and_then(|f| f.get(name)),
                    value.as_ref(),
                    "seed {seed} round {round}: field {name:?} of {key:?}: {writes:?}"
                );
            }
        }
    }
}

#[test]
fn field_writes_over_a_string_are_the_wrong_type_and_a_hash_without_fields_reads_missing() {
    let s = store(1 << 30);
    s.set(b"str", b"v", None, 5).expect("fits");
    let w = |version, writes: Vec<(Bytes, Option<Bytes>)>| {
        move |_: Option<&crate::protocol::fields::Fields>, _| Ok::<_, ()>((version, writes))
    };
    assert_eq!(
        s.write_fields(b"str", w(6, vec![("f".into(), Some("x".into()))])),
        Ok(Ok(Applied::WrongType))
    );
    assert_eq!(s.get(b"str").map(|f| f.value), Some(Bytes::from("v")));
    assert_eq!(
        s.write_fields(b"h", w(7, vec![("f".into(), Some("x".into()))])),
        Ok(Ok(Applied::Yes))
    );
    let found = s.get(b"h").expect("a hash");
    assert!(found.hash);
    assert_eq!(
        s.write_fields(b"h", w(8, vec![("f".into(), None)])),
        Ok(Ok(Applied::Yes))
    );
    assert_eq!(s.get(b"h"), None, "no live field: missing");
    assert_eq!(s.meta(b"h"), None);
    // Kept, so an older write of the field cannot come back.
    assert!(s.entry(b"h").is_some_and(|e| e.hash && !e.tombstone));
    s.write_fields(b"h", w(7, vec![("f".into(), Some("old".into()))]))
        .expect("fits")
        .expect("computed");
    assert_eq!(s.get(b"h"), None, "the deletion at 8 beats a write at 7");
    // A delete older than a field takes the fields before it only.
    s.write_fields(b"h", w(9, vec![("g".into(), Some("y".into()))]))
        .expect("fits")
        .expect("computed");
    assert_eq!(s.delete_at(b"h", 8), Ok((Applied::Newer(9), true)));
    let fields =
        crate::protocol::fields::Fields::decode(&s.get(b"h").expect("g").value).expect("decodes");
    assert_eq!(fields.get(b"g").map(|v| &v[..]), Some(&b"y"[..]));
    assert_eq!(s.delete_at(b"h", 10), Ok((Applied::Yes, true)));
    assert_eq!(s.get(b"h"), None);
}

#[test]
fn a_hash_without_fields_is_missing_to_conditions_and_deletes() {
    let s = store(1 << 30);
    let w = |version, writes: Vec<(Bytes, Option<Bytes>)>| {
        move |_: Option<&crate::protocol::fields::Fields>, _| Ok::<_, ()>((version, writes))
    };
    s.write_fields(b"h", w(3, vec![("f".into(), Some("x".into()))]))
        .expect("fits")
        .expect("computed");
    s.write_fields(b"h", w(4, vec![("f".into(), None)]))
        .expect("fits")
        .expect("computed");
    assert_eq!(
        s.set_when(b"h", b"v", None, 5, SetWhen::Present),
        Ok(Applied::Unmet),
        "XX: nothing there"
    );
    assert_eq!(
        s.delete_at(b"h", 6),
        Ok((Applied::Yes, false)),
        "DEL: did not exist"
    );
    s.write_fields(b"h", w(7, vec![("f".into(), None)]))
        .expect("fits")
        .expect("computed");
    assert_eq!(
        s.set_when(b"h", b"v", None, 8, SetWhen::Absent),
        Ok(Applied::Yes)
    );
    assert_eq!(
        s.get(b"h").map(|f| (f.value, f.hash)),
        Some((Bytes::from("v"), false))
    );
}
