//! Entry points for fuzzing the decoders with arbitrary bytes, shared by the
//! cargo-fuzz targets (`fuzz/`) and the test that replays their corpus
//! (`tests/fuzz_corpus.rs`). Each must return for any input, never panic,
//! and keep its invariants (checked with asserts: a failed one is a bug the
//! fuzzer reports).

use crate::protocol::link::{
    decode_request, decode_response, read_frame, Request, RequestKind, Response,
};
use crate::protocol::text::{encode_reply, TextDecoder};
use crate::protocol::{Command, Limits, Reply};
use bytes::BytesMut;

/// Cuts `data` the way a socket might deliver it: each piece's length
/// comes from its first byte (`1 + byte * mul % modulo`).
fn pieces(data: &[u8], mul: usize, modulo: usize) -> impl Iterator<Item = &[u8]> {
    let mut rest = data;
    std::iter::from_fn(move || {
        let first = *rest.first()?;
        let take = 1 + (first as usize * mul) % modulo;
        let (piece, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        Some(piece)
    })
}

fn limits() -> Limits {
    Limits {
        max_key_bytes: 64,
        max_value_bytes: 512,
    }
}

/// The text protocol as a server reads it: `data` arrives in pieces whose
/// sizes come from the data itself; every request either decodes or is an
/// error, and the buffer never holds more than one maximal line.
pub fn text_stream(data: &[u8]) {
    let limits = limits();
    let mut decoder = TextDecoder::new(limits);
    let max_line = decoder.max_line();
    let mut buf = BytesMut::new();
    let mut out = BytesMut::new();
    for piece in pieces(data, 7, 97) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(command)) => {
                    if let Command::Set { key, value, .. } = &command {
                        assert!(key.len() <= limits.max_key_bytes);
                        assert!(value.len() <= limits.max_value_bytes);
                    }
                }
                Err(error) => encode_reply(&Reply::Error(error), &mut out),
            }
        }
        assert!(
            buf.len() <= max_line + 1,
            "the decoder kept {} bytes (limit {max_line})",
            buf.len()
        );
    }
}

/// What a worker does with the writes among link requests, against a
/// store: refill and repair entries, read-modify-writes (computed from the
/// value held and stored over it), their replicas, flushes and walks.
fn apply_request(store: &crate::worker::store::Store, request: &Request, limits: &Limits) {
    use crate::worker::store::Require;
    match request {
        Request::Apply { entries, .. } => {
            for entry in entries {
                let _ = store.apply(entry);
                stored_hash_decodes(store, &entry.key);
            }
        }
        Request::Update {
            version,
            key,
            update,
        } => {
            let found = store.get(key);
            let old = found.as_ref().map(|f| f.value.clone());
            let held = found.as_ref().map(|f| f.version);
            let ttl_ms = update.ttl_after(found.map_or(0, |f| f.ttl_ms), || 0);
            let ttl = (ttl_ms > 0).then(|| std::time::Duration::from_millis(ttl_ms));
            match crate::protocol::update::apply(update, old.as_deref(), limits.max_value_bytes) {
                Ok(crate::protocol::update::Change::Value(v)) => {
                    assert!(
                        v.len() <= limits.max_value_bytes,
                        "an update outgrew the limit"
                    );
                    let _ = store.set_over(key, &v, ttl, *version, Require::Holds(held));
                }
                Ok(crate::protocol::update::Change::Delete) => {
                    let _ = store.delete_over(key, *version, Require::Holds(held));
                }
                Ok(crate::protocol::update::Change::None) | Err(_) => {}
            }
        }
        Request::Replicate {
            version,
            base,
            key,
            value,
            ..
        } => {
            let require = Require::NotAfter {
                base: *base,
                node: 1,
            };
            let _ = match value {
                Some(v) => store.set_over(key, v, None, *version, require),
                None => store.delete_over(key, *version, require).map(|(a, _)| a),
            };
        }
        Request::HSet {
            version,
            key,
            fields,
            ..
        } => {
            let (version, fields) = (*version, fields.clone());
            let _ = store.write_fields(key, move |_, _| Ok::<_, ()>((version, fields)));
            stored_hash_decodes(store, key);
        }
        Request::HUpdate {
            version,
            key,
            field,
            update,
        } => {
            let _ = store.write_fields(key, |current, _| {
                let old = current.and_then(|f| f.get(field)).cloned();
                let new = update.apply(old.as_ref())?;
                Ok::<_, crate::protocol::ErrorReply>((
                    *version,
                    new.into_iter().map(|v| (field.clone(), Some(v))).collect(),
                ))
            });
            stored_hash_decodes(store, key);
        }
        Request::Flush { version } => {
            store.flush(*version);
        }
        Request::Scan {
            from,
            count,
            pattern,
        } => {
            let mut keys = Vec::new();
            let next = store.keys_from(
                usize::from(*from),
                (*count as usize).min(1 << 16),
                |k| crate::protocol::glob::matches(pattern, k),
                &mut keys,
            );
            assert!(next <= crate::hash::DIGEST_BUCKETS);
        }
        _ => {}
    }
}

/// Whatever hash the store holds under `key` is a canonical encoding.
fn stored_hash_decodes(store: &crate::worker::store::Store, key: &[u8]) {
    if let Some(found) = store.get(key).filter(|f| f.hash) {
        let decoded = crate::protocol::fields::Fields::decode(&found.value);
        assert!(
            decoded.is_ok(),
            "the store holds a hash that does not decode"
        );
    }
}

/// A hash's stored fields: what decodes is canonical (encodes to the same
/// bytes), and merging it into itself or into an empty hash changes
/// nothing more than once.
fn hash_fields(bytes: &bytes::Bytes) {
    use crate::protocol::fields::Fields;
    let Ok(fields) = Fields::decode(bytes) else {
        return;
    };
    let mut again = Vec::new();
    fields.encode(&mut again);
    assert_eq!(
        &again[..],
        &bytes[..],
        "hash fields re-encode to other bytes"
    );
    let mut merged = Fields::default();
    merged.merge(&fields);
    assert!(!merged.merge(&fields), "a second merge changed something");
    assert_eq!(merged, fields);
}

/// The link protocol as both ends read it: frames cut from `data`, each
/// decoded as a request and as a response to every kind of request; the
/// writes among the requests (refill entries, read-modify-writes and
/// their replicas, flushes) and the walks are applied to a small store
/// (lz4 included), which must stay within its memory limit. Each frame
/// is read as a hash's stored fields too.
pub fn link_stream(data: &[u8]) {
    let limits = limits();
    let max = crate::protocol::link::max_frame_bytes(&limits);
    let mut buf = BytesMut::from(data);
    let store = crate::worker::store::Store::new(crate::worker::store::StoreConfig {
        max_memory_bytes: 1 << 20,
        ..Default::default()
    });
    while let Ok(Some(frame)) = read_frame(&mut buf, max) {
        hash_fields(&frame);
        if let Ok(request) = decode_request(frame.clone(), &limits) {
            // What decodes re-encodes to the same request.
            let mut again = BytesMut::new();
            crate::protocol::link::encode_request(&request, &mut again);
            let reread = read_frame(&mut again, max)
                .ok()
                .flatten()
                .map(|f| decode_request(f, &limits));
            assert_eq!(reread, Some(Ok(request.clone())), "request round trip");
            apply_request(&store, &request, &limits);
        }
        for kind in RequestKind::ALL {
            if let Ok(Response::Chunk(entries)) = decode_response(frame.clone(), kind, &limits) {
                for entry in &entries {
                    let _ = store.apply(entry);
                    stored_hash_decodes(&store, &entry.key);
                }
            }
        }
    }
    assert!(store.usage().charged_bytes <= 1 << 20);
}

/// RESP as a session speaks it: a dialect on an open connection
/// (`MULTI` queues, `CLIENT` calls run) over `data` in pieces; every
/// command stays within the limits and every answer reads back whole.
fn resp_session(data: &[u8]) {
    use crate::protocol::dialect::{Decoded, Dialect, Gate};
    use crate::protocol::resp::{self, Answer, RespDialect};
    let limits = limits();
    let mut dialect = RespDialect::new(limits, "worker");
    let mut gate = Gate {
        required: false,
        authenticated: true,
    };
    let mut buf = BytesMut::new();
    for piece in pieces(data, 13, 89) {
        buf.extend_from_slice(piece);
        loop {
            let answered = match dialect.decode(&mut buf, &gate) {
                Decoded::Incomplete => break,
                Decoded::Run(command, _) => {
                    check_command(&command, &limits);
                    continue;
                }
                Decoded::Answer(answered) => answered,
                Decoded::Credential(token) => dialect.credential(token.map(|_| true), &mut gate),
                Decoded::Refused(_) | Decoded::Greeting(_) => continue,
            };
            if let Some(answer) = &answered.answer {
                match &answer.0 {
                    // An EXEC's array header, its items follow; HELLO's map.
                    Answer::Raw(_) => {}
                    _ => {
                        let mut out = BytesMut::new();
                        dialect.encode_answer(answer, &mut out);
                        let read = resp::decode_value(&mut out, usize::MAX);
                        assert!(
                            matches!(read, Ok(Some(_))) && out.is_empty(),
                            "answer {answer:?} does not read back: {read:?}"
                        );
                    }
                }
            }
            if answered.close {
                dialect = RespDialect::new(limits, "worker");
                buf.clear();
                break;
            }
        }
    }
}

/// RESP as a server reads it: `data` arrives in pieces whose sizes come
/// from the data itself; the buffer never holds more than one maximal
/// request; every command stays within the limits; every reply the decoder
/// gives reads back whole with the client's decoder, in RESP2 and RESP3. A
/// framing error ends the connection, so the rest starts a new one. The
/// client's reply decoder is fed the raw bytes too.
pub fn resp_stream(data: &[u8]) {
    use crate::protocol::resp::{self, Answer, RespDecoder, RespRequest, Version};
    let limits = limits();
    let mut decoder = RespDecoder::new(limits);
    let max = decoder.max_request();
    let mut buf = BytesMut::new();
    let mut arrived = 0usize;
    for piece in pieces(data, 13, 89) {
        buf.extend_from_slice(piece);
        arrived += piece.len();
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(request)) => {
                    let answer = match request {
                        RespRequest::Run(command, _) => {
                            check_command(&command, &limits);
                            continue;
                        }
                        RespRequest::Answer(answer) => answer,
                        RespRequest::Quit => Answer::Ok,
                        _ => continue,
                    };
                    for version in [Version::Resp2, Version::Resp3] {
                        let mut out = BytesMut::new();
                        resp::encode_answer(&answer, version, &mut out);
                        let read = resp::decode_value(&mut out, usize::MAX);
                        assert!(
                            matches!(read, Ok(Some(_))) && out.is_empty(),
                            "reply {answer:?} does not read back: {read:?}"
                        );
                    }
                }
                Err(_) => {
                    decoder = RespDecoder::new(limits);
                    buf.clear();
                    break;
                }
            }
        }
        assert!(
            buf.len() <= max,
            "the decoder kept {} bytes (limit {max})",
            buf.len()
        );
        // The buffer grows with what arrived, never with a length a header
        // announces.
        assert!(
            buf.capacity() <= 4 * arrived + 64,
            "{} bytes reserved after {arrived} arrived",
            buf.capacity()
        );
    }
    resp_session(data);
    let mut replies = BytesMut::from(data);
    while let Ok(Some(_)) = resp::decode_value(&mut replies, limits.max_value_bytes) {}
}

fn check_command(command: &Command, limits: &Limits) {
    let key_ok = |k: &bytes::Bytes| !k.is_empty() && k.len() <= limits.max_key_bytes;
    let value_ok = |v: &bytes::Bytes| v.len() <= limits.max_value_bytes;
    match command {
        Command::Get { key } | Command::Del { key } | Command::Ttl { key } => {
            assert!(key_ok(key))
        }
        Command::Expire { key, .. } => assert!(key_ok(key)),
        Command::Set { key, value, .. } => assert!(key_ok(key) && value_ok(value)),
        Command::MGet { keys } | Command::DelMany { keys } | Command::Exists { keys } => {
            assert!(!keys.is_empty() && keys.iter().all(key_ok))
        }
        Command::MSet { entries } => {
            assert!(!entries.is_empty() && entries.iter().all(|(k, v)| key_ok(k) && value_ok(v)))
        }
        _ => {}
    }
}
