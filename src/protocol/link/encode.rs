//! Requests and responses to frames.

use super::{
    op, status, Entry, Handoff, Layout, Request, Response, Summary, FLAG_COMPRESSED, FLAG_HASH,
    FLAG_TOMBSTONE,
};
use crate::protocol::fields::FieldUpdate;
use crate::protocol::update::{TtlChange, Update};
use crate::protocol::SetWhen;
use bytes::{BufMut, BytesMut};

/// Writes a frame whose body `body` fills in; the length is patched after.
pub(super) fn write_frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

pub(super) fn put_key(out: &mut BytesMut, key: &[u8]) {
    // Keys are bounded by max_key_bytes, which config caps below u16::MAX.
    out.put_u16(key.len() as u16);
    out.put_slice(key);
}

pub fn encode_request(request: &Request, out: &mut BytesMut) {
    write_frame(out, |out| match request {
        Request::Get { key } => {
            out.put_u8(op::GET);
            put_key(out, key);
        }
        Request::Set {
            version,
            ttl_ms,
            key,
            value,
            when,
        } => {
            out.reserve(value.len() + key.len() + 32);
            match when {
                SetWhen::Always => out.put_u8(op::SET),
                SetWhen::Absent => {
                    out.put_u8(op::SET_IF);
                    out.put_u8(1);
                }
                SetWhen::Present => {
                    out.put_u8(op::SET_IF);
                    out.put_u8(2);
                }
            }
            out.put_u64(*version);
            out.put_u64(*ttl_ms);
            put_key(out, key);
            out.put_slice(value);
        }
        Request::Del { version, key } => {
            out.put_u8(op::DEL);
            out.put_u64(*version);
            put_key(out, key);
        }
        Request::Meta { key } => {
            out.put_u8(op::META);
            put_key(out, key);
        }
        Request::Expire {
            version,
            ttl_ms,
            key,
        } => {
            out.put_u8(op::EXPIRE);
            out.put_u64(*version);
            out.put_u64(*ttl_ms);
            put_key(out, key);
        }
        Request::Update {
            version,
            key,
            update,
        } => {
            out.put_u8(op::UPDATE);
            out.put_u64(*version);
            put_update(out, key, update);
        }
        Request::Replicate {
            version,
            ttl_ms,
            base,
            key,
            value,
        } => {
            let data = value.as_deref().unwrap_or_default();
            out.reserve(data.len() + key.len() + 40);
            out.put_u8(op::REPLICATE);
            out.put_u64(*version);
            out.put_u64(*ttl_ms);
            out.put_u64(*base);
            out.put_u8(u8::from(value.is_none()));
            put_key(out, key);
            out.put_slice(data);
        }
        Request::HSet {
            version,
            key,
            fields,
            base,
        } => {
            out.reserve(
                key.len()
                    + 16
                    + fields
                        .iter()
                        .map(|(n, v)| 9 + n.len() + v.as_ref().map_or(0, |v| v.len()))
                        .sum::<usize>(),
            );
            out.put_u8(op::HSET);
            out.put_u64(*version);
            match base {
                None => out.put_u8(0),
                Some(base) => {
                    out.put_u8(1);
                    out.put_u64(*base);
                }
            }
            put_key(out, key);
            out.put_u32(fields.len() as u32);
            for (name, value) in fields {
                put_long(out, name);
                match value {
                    None => out.put_u8(0),
                    Some(value) => {
                        out.put_u8(1);
                        put_long(out, value);
                    }
                }
            }
        }
        Request::HGet { key } => {
            out.put_u8(op::HGET);
            put_key(out, key);
        }
        Request::HUpdate {
            version,
            key,
            field,
            update,
        } => {
            out.put_u8(op::HUPDATE);
            out.put_u64(*version);
            put_key(out, key);
            put_long(out, field);
            match update {
                FieldUpdate::IncrBy(by) => {
                    out.put_u8(1);
                    out.put_i64(*by);
                }
                FieldUpdate::IncrByFloat(bits) => {
                    out.put_u8(2);
                    out.put_u64(*bits);
                }
                FieldUpdate::SetNx(value) => {
                    out.put_u8(3);
                    out.put_slice(value);
                }
            }
        }
        Request::Ping => out.put_u8(op::PING),
        Request::Auth { token } => {
            out.put_u8(op::AUTH);
            out.put_slice(token);
        }
        Request::Status => out.put_u8(op::STATUS),
        Request::Missed => out.put_u8(op::MISSED),
        Request::Refill => out.put_u8(op::REFILL),
        Request::Digest { floor } => {
            out.put_u8(op::DIGEST);
            out.put_u64(*floor);
        }
        Request::Scan {
            from,
            count,
            pattern,
        } => {
            out.put_u8(op::SCAN);
            out.put_u16(*from);
            out.put_u32(*count);
            out.put_slice(pattern);
        }
        Request::Layout { layout, you } => {
            out.put_u8(op::LAYOUT);
            put_addr(out, you);
            put_layout(out, layout.as_ref());
        }
        Request::Flush { version } => {
            out.put_u8(op::FLUSH);
            out.put_u64(*version);
        }
        Request::Sync {
            buckets,
            after,
            upto,
            summaries,
        } => {
            out.put_u8(op::SYNC);
            out.put_u16(buckets.len() as u16);
            for b in buckets {
                out.put_u16(*b);
            }
            put_key(out, after);
            put_key(out, upto);
            out.put_u32(summaries.len() as u32);
            put_summaries(out, summaries);
        }
        Request::Apply {
            last,
            entries,
            evict,
        } => {
            out.put_u8(op::APPLY);
            out.put_u8(*last as u8);
            put_entries(out, entries);
            out.put_u32(evict.len() as u32);
            put_summaries(out, evict);
        }
        Request::Take { entries } => {
            out.put_u8(op::TAKE);
            put_entries(out, entries);
        }
    })
}

fn put_addr(out: &mut BytesMut, addr: &str) {
    out.put_u16(addr.len() as u16);
    out.put_slice(addr.as_bytes());
}

fn put_pairs(out: &mut BytesMut, pairs: &[[String; 2]]) {
    out.put_u16(pairs.len() as u16);
    for pair in pairs {
        for addr in pair {
            put_addr(out, addr);
        }
    }
}

fn put_layout(out: &mut BytesMut, layout: Option<&Layout>) {
    let Some(layout) = layout else {
        out.put_u8(0);
        return;
    };
    out.put_u8(1);
    out.put_u64(layout.epoch);
    put_pairs(out, &layout.pairs);
    match &layout.source {
        None => out.put_u8(0),
        Some(source) => {
            out.put_u8(if source.sealed { 2 } else { 1 });
            put_pairs(out, &source.pairs);
        }
    }
}

fn put_handoff(out: &mut BytesMut, handoff: Option<&Handoff>) {
    let Some(h) = handoff else {
        out.put_u8(0);
        return;
    };
    out.put_u8(1);
    out.put_u64(h.epoch);
    out.put_u8(h.done as u8);
    out.put_u64(h.keys_moved);
    out.put_u64(h.bytes_moved);
    out.put_u64(h.keys_left);
}

/// A field name or value: `len:u32` and the bytes.
fn put_long(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_update(out: &mut BytesMut, key: &[u8], update: &Update) {
    let kind = match update {
        Update::IncrBy(_) => 1,
        Update::IncrByFloat(_) => 2,
        Update::Append(_) => 3,
        Update::SetRange { .. } => 4,
        Update::Replace { .. } => 5,
        Update::Retime(_) => 6,
        Update::Take => 7,
    };
    out.put_u8(kind);
    put_key(out, key);
    match update {
        Update::IncrBy(by) => out.put_i64(*by),
        Update::IncrByFloat(bits) => out.put_u64(*bits),
        Update::Append(tail) => out.put_slice(tail),
        Update::SetRange { offset, value } => {
            out.put_u64(*offset);
            out.put_slice(value);
        }
        Update::Replace { value, ttl, when } => {
            out.put_u8(match when {
                SetWhen::Always => 0,
                SetWhen::Absent => 1,
                SetWhen::Present => 2,
            });
            put_ttl(out, *ttl);
            out.put_slice(value);
        }
        Update::Retime(ttl) => put_ttl(out, *ttl),
        Update::Take => {}
    }
}

fn put_ttl(out: &mut BytesMut, ttl: TtlChange) {
    match ttl {
        TtlChange::Clear => out.put_u8(0),
        TtlChange::Keep => out.put_u8(1),
        TtlChange::Set(expiry) => {
            out.put_u8(2);
            let ttl = expiry.ttl(crate::sys::wall_ms);
            out.put_u64(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
        }
    }
}

pub(super) fn put_summaries(out: &mut BytesMut, summaries: &[Summary]) {
    for s in summaries {
        let hash = s.content != 0;
        out.put_u8(if s.tombstone { FLAG_TOMBSTONE } else { 0 } | if hash { FLAG_HASH } else { 0 });
        out.put_u64(s.version);
        put_key(out, &s.key);
        if hash {
            out.put_u64(s.content);
        }
    }
}

pub(super) fn put_entries(out: &mut BytesMut, entries: &[Entry]) {
    out.put_u32(entries.len() as u32);
    for e in entries {
        let flags = if e.tombstone { FLAG_TOMBSTONE } else { 0 }
            | if e.compressed { FLAG_COMPRESSED } else { 0 }
            | if e.hash { FLAG_HASH } else { 0 };
        out.put_u8(flags);
        out.put_u64(e.version);
        out.put_u64(e.ttl_ms);
        put_key(out, &e.key);
        out.put_u32(e.raw_len);
        out.put_u32(e.data.len() as u32);
        out.put_slice(&e.data);
    }
}

pub fn encode_response(response: &Response, out: &mut BytesMut) {
    write_frame(out, |out| match response {
        Response::Value {
            version,
            ttl_ms,
            value,
        } => {
            out.reserve(value.len() + 17);
            out.put_u8(status::OK);
            out.put_u64(*version);
            out.put_u64(*ttl_ms);
            out.put_slice(value);
        }
        Response::Set { applied } => {
            out.put_u8(status::OK);
            out.put_u8(*applied as u8);
        }
        Response::NotStored => out.put_u8(status::NOT_STORED),
        Response::Newer { version } => {
            out.put_u8(status::NEWER);
            out.put_u64(*version);
        }
        Response::Meta { version, ttl_ms } => {
            out.put_u8(status::OK);
            out.put_u64(*version);
            out.put_u64(*ttl_ms);
        }
        Response::Del { existed } => {
            out.put_u8(status::OK);
            out.put_u8(*existed as u8);
        }
        Response::Pong | Response::Authenticated | Response::Noted => out.put_u8(status::OK),
        Response::Status {
            state,
            entries,
            incarnation,
            synced,
            complete,
            partner_behind,
            serving_ms,
        } => {
            out.put_u8(status::OK);
            out.put_u8(*state as u8);
            out.put_u64(*entries);
            out.put_u64(*incarnation);
            out.put_u64(*synced);
            out.put_u8(u8::from(*complete));
            out.put_u8(u8::from(*partner_behind));
            out.put_u64(*serving_ms);
        }
        Response::Digest { buckets, floor } => {
            out.put_u8(status::OK);
            out.put_u32(buckets.len() as u32);
            for b in buckets {
                out.put_u64(b.hash);
                out.put_u32(b.entries);
            }
            out.put_u64(*floor);
        }
        Response::Keys { next, keys } => {
            out.put_u8(status::OK);
            out.put_u32(*next);
            out.put_u32(keys.len() as u32);
            for key in keys {
                put_key(out, key);
            }
        }
        Response::Layout { layout, handoff } => {
            out.put_u8(status::OK);
            put_layout(out, layout.as_ref());
            put_handoff(out, handoff.as_ref());
        }
        Response::Taken { applied } => {
            out.put_u8(status::OK);
            out.put_u32(*applied);
        }
        Response::Flushed { floor, removed } => {
            out.put_u8(status::OK);
            out.put_u64(*floor);
            out.put_u64(*removed);
        }
        Response::Synced {
            complete,
            entries,
            wanted,
        } => {
            out.put_u8(status::OK);
            out.put_u8(*complete as u8);
            put_entries(out, entries);
            out.put_u32(wanted.len() as u32);
            for key in wanted {
                put_key(out, key);
            }
        }
        Response::Applied { count, refused } => {
            out.put_u8(status::OK);
            out.put_u32(*count);
            out.put_u32(refused.len() as u32);
            put_summaries(out, refused);
        }
        Response::Updated {
            changed,
            version,
            base,
            ttl_ms,
            value,
            old,
        } => {
            let flags =
                u8::from(*changed) | u8::from(value.is_some()) << 1 | u8::from(old.is_some()) << 2;
            let value = value.as_deref().unwrap_or_default();
            let old = old.as_deref().unwrap_or_default();
            out.reserve(value.len() + old.len() + 32);
            out.put_u8(status::OK);
            out.put_u8(flags);
            out.put_u64(*version);
            out.put_u64(*base);
            out.put_u64(*ttl_ms);
            out.put_u32(value.len() as u32);
            out.put_slice(value);
            out.put_slice(old);
        }
        Response::FieldsWritten { added, removed } => {
            out.put_u8(status::OK);
            out.put_u32(*added);
            out.put_u32(*removed);
        }
        Response::NotFound => out.put_u8(status::NOT_FOUND),
        Response::Error(error) => {
            out.put_u8(status::ERROR);
            out.put_u8(error.code.as_u8());
            out.put_slice(error.message.as_bytes());
        }
        Response::Chunk(entries) => {
            out.put_u8(status::CHUNK);
            put_entries(out, entries);
        }
        Response::End { entries, floor } => {
            out.put_u8(status::END);
            out.put_u64(*entries);
            out.put_u64(*floor);
        }
    })
}
