//! Replays the fuzz corpus (`fuzz/corpus/<target>/*`) through the same entry
//! points the cargo-fuzz targets call, then seeded mutations of valid
//! streams: the ordinary test suite catches a decoder panic even where
//! cargo-fuzz does not run. The seed is printed; `RCACHE_SEED=N` replays.

mod common;

use bytes::{Bytes, BytesMut};
use common::chaos::seed;
use rcache::fuzzing::{link_stream, resp_stream, text_stream};
use rcache::protocol::link::{encode_request, encode_response, Entry, Request, Response, Summary};
use rcache::zipf::Rng;
use std::path::Path;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
        .collect();
    assert!(!inputs.is_empty(), "no corpus in {}", dir.display());
    inputs.sort();
    inputs
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len() as u64) as usize;
                out[i] = rng.next_u64() as u8;
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len() as u64) as usize;
                out.truncate(i);
            }
            2 => {
                let i = rng.below(out.len() as u64 + 1) as usize;
                out.insert(i, rng.next_u64() as u8);
            }
            _ => {
                let i = rng.below(out.len() as u64 + 1) as usize;
                let tail = out.split_off(i);
                out.extend_from_slice(&tail);
                out.extend_from_slice(&tail);
            }
        }
    }
    out
}

/// Valid link traffic of every kind, as encoded by rcache itself.
fn link_sample() -> Vec<u8> {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let entry = Entry {
        key: b("key"),
        version: 42,
        ttl_ms: 1000,
        tombstone: false,
        compressed: false,
        hash: false,
        raw_len: 5,
        data: b("value"),
    };
    let compressed = Entry {
        compressed: true,
        raw_len: 200,
        data: Bytes::from(lz4_flex::compress(&[b'x'; 200])),
        ..entry.clone()
    };
    let mut fields = rcache::protocol::fields::Fields::after(3);
    fields.write(
        b("f"),
        rcache::protocol::fields::Field {
            version: 5,
            value: Some(b("1")),
        },
    );
    fields.write(
        b("g"),
        rcache::protocol::fields::Field {
            version: 6,
            value: None,
        },
    );
    let hash = Entry {
        key: b("h"),
        hash: true,
        version: 6,
        raw_len: fields.encoded_len() as u32,
        data: fields.to_bytes(),
        ..entry.clone()
    };
    let mut out = BytesMut::new();
    for r in [
        Request::HSet {
            version: 11,
            key: b("h"),
            fields: vec![(b("f"), Some(b("2"))), (b("g"), None)],
            base: None,
        },
        Request::HSet {
            version: 15,
            key: b("h"),
            fields: vec![(b("n"), Some(b("7")))],
            base: Some(12),
        },
        Request::HGet { key: b("h") },
        Request::HUpdate {
            version: 12,
            key: b("h"),
            field: b("n"),
            update: rcache::protocol::fields::FieldUpdate::IncrBy(-3),
        },
        Request::HUpdate {
            version: 13,
            key: b("h"),
            field: b("x"),
            update: rcache::protocol::fields::FieldUpdate::IncrByFloat(1.5f64.to_bits()),
        },
        Request::HUpdate {
            version: 14,
            key: b("h"),
            field: b("y"),
            update: rcache::protocol::fields::FieldUpdate::SetNx(b("z")),
        },
        Request::Auth { token: b("t") },
        Request::Get { key: b("k") },
        Request::Set {
            version: 1,
            ttl_ms: 0,
            key: b("k"),
            value: b("v"),
            when: rcache::protocol::SetWhen::Always,
        },
        Request::Set {
            version: 3,
            ttl_ms: 5,
            key: b("k"),
            value: b("w"),
            when: rcache::protocol::SetWhen::Absent,
        },
        Request::Meta { key: b("k") },
        Request::Expire {
            version: 4,
            ttl_ms: 9,
            key: b("k"),
        },
        Request::Del {
            version: 2,
            key: b("k"),
        },
        Request::Ping,
        Request::Status,
        Request::Refill,
        Request::Digest { floor: 7 },
        Request::Scan {
            from: 3,
            count: 10,
            pattern: b("k*"),
        },
        Request::Flush { version: 8 },
        Request::Update {
            version: 9,
            key: b("n"),
            update: rcache::protocol::Update::IncrBy(1),
        },
        Request::Update {
            version: 9,
            key: b("n"),
            update: rcache::protocol::Update::SetRange {
                offset: 2,
                value: b("xy"),
            },
        },
        Request::Replicate {
            version: 10,
            ttl_ms: 0,
            base: 9,
            key: b("n"),
            value: Some(b("2")),
        },
        Request::Sync {
            buckets: vec![1, 2],
            after: Bytes::new(),
            upto: b("z"),
            summaries: vec![Summary {
                key: b("k"),
                version: 3,
                tombstone: true,
                content: 0,
            }],
        },
        Request::Apply {
            last: true,
            entries: vec![entry.clone()],
            evict: vec![Summary {
                key: b("evicted"),
                version: 4,
                tombstone: false,
                content: 0,
            }],
        },
        Request::Apply {
            last: false,
            entries: vec![hash.clone()],
            evict: vec![Summary {
                key: b("h"),
                version: 6,
                tombstone: false,
                content: 77,
            }],
        },
    ] {
        encode_request(&r, &mut out);
    }
    encode_response(&Response::Chunk(vec![entry, compressed, hash]), &mut out);
    encode_response(
        &Response::End {
            entries: 2,
            floor: 7,
        },
        &mut out,
    );
    out.to_vec()
}

#[test]
fn the_text_corpus_and_its_mutations_decode_without_panics() {
    let inputs = corpus("text_stream");
    for input in &inputs {
        text_stream(input);
    }
    let mut rng = Rng::new(seed("text corpus"));
    for _ in 0..20_000 {
        let base = &inputs[rng.below(inputs.len() as u64) as usize];
        text_stream(&mutate(&mut rng, base));
    }
}

#[test]
fn the_link_corpus_and_its_mutations_decode_without_panics() {
    let mut inputs = corpus("link_stream");
    inputs.push(link_sample());
    for input in &inputs {
        link_stream(input);
    }
    let mut rng = Rng::new(seed("link corpus"));
    for _ in 0..5_000 {
        let base = &inputs[rng.below(inputs.len() as u64) as usize];
        link_stream(&mutate(&mut rng, base));
    }
}

#[test]
fn the_resp_corpus_and_its_mutations_decode_without_panics() {
    let inputs = corpus("resp_stream");
    for input in &inputs {
        resp_stream(input);
    }
    let mut rng = Rng::new(seed("resp corpus"));
    for _ in 0..20_000 {
        let base = &inputs[rng.below(inputs.len() as u64) as usize];
        resp_stream(&mutate(&mut rng, base));
    }
}
