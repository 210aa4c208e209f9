//! Frames to requests and responses, every length checked before it is
//! used.

use super::{
    op, status, BucketDigest, Entry, Handoff, Layout, LinkError, Request, RequestKind, Response,
    Summary, WorkerState, FLAG_COMPRESSED, FLAG_HASH, FLAG_TOMBSTONE, MAX_LAYOUT_PAIRS,
    MAX_TOKEN_BYTES,
};
use crate::hash::DIGEST_BUCKETS;
use crate::protocol::fields::FieldUpdate;
use crate::protocol::update::{TtlChange, Update};
use crate::protocol::{ErrorCode, ErrorReply, Expiry, Limits, SetWhen};
use bytes::{Buf, Bytes, BytesMut};

/// Takes one frame body out of `buf` once it is complete.
pub fn read_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, LinkError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(LinkError::FrameTooLarge { len, max });
    }
    if buf.len() < 4 + len {
        // The buffer grows with what arrives, not with the header's length.
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// A cursor over a frame body that fails instead of panicking.
pub(super) struct Reader(Bytes);

impl Reader {
    pub(super) fn u8(&mut self) -> Result<u8, LinkError> {
        if self.0.is_empty() {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u8())
    }

    pub(super) fn u32(&mut self) -> Result<u32, LinkError> {
        if self.0.len() < 4 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u32())
    }

    pub(super) fn u64(&mut self) -> Result<u64, LinkError> {
        if self.0.len() < 8 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u64())
    }

    pub(super) fn bytes(&mut self, len: usize) -> Result<Bytes, LinkError> {
        if self.0.len() < len {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.split_to(len))
    }

    pub(super) fn key(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
        if self.0.len() < 2 {
            return Err(LinkError::Malformed("truncated"));
        }
        let len = self.0.get_u16() as usize;
        if len == 0 {
            return Err(LinkError::Malformed("empty key"));
        }
        if len > limits.max_key_bytes {
            return Err(LinkError::Malformed("key over max_key_bytes"));
        }
        self.bytes(len)
    }

    pub(super) fn u16(&mut self) -> Result<u16, LinkError> {
        if self.0.len() < 2 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u16())
    }

    /// A count of items of at least `min_bytes` each: refused when the rest
    /// of the frame cannot hold them, so no allocation exceeds the frame.
    pub(super) fn count(&mut self, min_bytes: usize) -> Result<usize, LinkError> {
        let count = self.u32()? as usize;
        if count > self.0.len() / min_bytes {
            return Err(LinkError::Malformed("count beyond the frame"));
        }
        Ok(count)
    }

    pub(super) fn summaries(&mut self, limits: &Limits) -> Result<Vec<Summary>, LinkError> {
        // A summary takes at least 12 bytes.
        let count = self.count(12)?;
        let mut summaries = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8()?;
            let version = self.u64()?;
            let key = self.key(limits)?;
            let content = if flags & FLAG_HASH != 0 {
                match self.u64()? {
                    0 => return Err(LinkError::Malformed("a hash summary without content")),
                    content => content,
                }
            } else {
                0
            };
            summaries.push(Summary {
                key,
                version,
                tombstone: flags & FLAG_TOMBSTONE != 0,
                content,
            });
        }
        Ok(summaries)
    }

    pub(super) fn entries(&mut self, limits: &Limits) -> Result<Vec<Entry>, LinkError> {
        // Each entry takes at least 27 bytes.
        let count = self.count(27)?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8()?;
            let version = self.u64()?;
            let ttl_ms = self.u64()?;
            let key = self.key(limits)?;
            let raw_len = self.u32()?;
            if raw_len as usize > limits.max_value_bytes {
                return Err(LinkError::Malformed("value over max_value_bytes"));
            }
            let len = self.u32()? as usize;
            let data = self.bytes(len)?;
            entries.push(Entry {
                key,
                version,
                ttl_ms,
                tombstone: flags & FLAG_TOMBSTONE != 0,
                compressed: flags & FLAG_COMPRESSED != 0,
                hash: flags & FLAG_HASH != 0,
                raw_len,
                data,
            });
        }
        Ok(entries)
    }

    /// A worker's address: 1 to 255 bytes of UTF-8.
    pub(super) fn addr(&mut self) -> Result<String, LinkError> {
        let len = self.u16()? as usize;
        if len == 0 || len > 255 {
            return Err(LinkError::Malformed("an address of 0 or over 255 bytes"));
        }
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| LinkError::Malformed("an address not UTF-8"))
    }

    /// A layout's pairs: at least one that is not a hole, no worker twice.
    fn pairs(&mut self) -> Result<Vec<[String; 2]>, LinkError> {
        let n = self.u16()? as usize;
        // A pair takes at least 4 bytes (a hole).
        if n == 0 || n > MAX_LAYOUT_PAIRS || n * 4 > self.0.len() {
            return Err(LinkError::Malformed("a layout's pair count"));
        }
        let mut pairs = Vec::with_capacity(n);
        let mut seen = std::collections::HashSet::with_capacity(2 * n);
        for _ in 0..n {
            if self.0.len() >= 4 && self.0[..4] == [0; 4] {
                self.bytes(4)?;
                pairs.push(super::hole());
                continue;
            }
            let pair = [self.addr()?, self.addr()?];
            for addr in &pair {
                if !seen.insert(addr.clone()) {
                    return Err(LinkError::Malformed("a worker twice in a layout"));
                }
            }
            pairs.push(pair);
        }
        if seen.is_empty() {
            return Err(LinkError::Malformed("a layout of holes only"));
        }
        Ok(pairs)
    }

    /// `has:u8` and, if 1, a layout.
    pub(super) fn layout(&mut self) -> Result<Option<Layout>, LinkError> {
        match self.u8()? {
            0 => return Ok(None),
            1 => {}
            _ => return Err(LinkError::Malformed("unknown layout flag")),
        }
        let epoch = self.u64()?;
        let pairs = self.pairs()?;
        let source = match self.u8()? {
            0 => None,
            flag @ (1 | 2) => Some(super::Source {
                pairs: self.pairs()?,
                sealed: flag == 2,
            }),
            _ => return Err(LinkError::Malformed("unknown layout source flag")),
        };
        Ok(Some(Layout {
            epoch,
            pairs,
            source,
        }))
    }

    /// `has:u8` and, if 1, a worker's part in a migration.
    fn handoff(&mut self) -> Result<Option<Handoff>, LinkError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(Handoff {
                epoch: self.u64()?,
                done: self.u8()? != 0,
                keys_moved: self.u64()?,
                bytes_moved: self.u64()?,
                keys_left: self.u64()?,
            })),
            _ => Err(LinkError::Malformed("unknown handoff flag")),
        }
    }

    /// A field name or value (`len:u32` and the bytes), at most
    /// `max_value_bytes`.
    pub(super) fn long(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
        let len = self.u32()? as usize;
        if len > limits.max_value_bytes {
            return Err(LinkError::Malformed("field over max_value_bytes"));
        }
        self.bytes(len)
    }

    /// A key or, with length 0, no bound.
    pub(super) fn bound(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
        if self.0.len() >= 2 && self.0[..2] == [0, 0] {
            self.0.advance(2);
            return Ok(Bytes::new());
        }
        self.key(limits)
    }

    /// A value that makes up the rest of the frame, within the limits.
    fn value(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
        let value = self.rest();
        if value.len() > limits.max_value_bytes {
            return Err(LinkError::Malformed("value over max_value_bytes"));
        }
        Ok(value)
    }

    fn ttl(&mut self) -> Result<TtlChange, LinkError> {
        Ok(match self.u8()? {
            0 => TtlChange::Clear,
            1 => TtlChange::Keep,
            2 => TtlChange::Set(Expiry::In(std::time::Duration::from_millis(
                self.u64()?.clamp(1, crate::protocol::MAX_TTL_MS),
            ))),
            _ => return Err(LinkError::Malformed("unknown ttl change")),
        })
    }

    fn update(&mut self, kind: u8, limits: &Limits) -> Result<Update, LinkError> {
        Ok(match kind {
            1 => Update::IncrBy(self.u64()? as i64),
            2 => {
                let bits = self.u64()?;
                if !f64::from_bits(bits).is_finite() {
                    return Err(LinkError::Malformed("increment not finite"));
                }
                Update::IncrByFloat(bits)
            }
            3 => Update::Append(self.value(limits)?),
            4 => Update::SetRange {
                offset: self.u64()?,
                value: self.value(limits)?,
            },
            5 => {
                let when = match self.u8()? {
                    0 => SetWhen::Always,
                    1 => SetWhen::Absent,
                    2 => SetWhen::Present,
                    _ => return Err(LinkError::Malformed("unknown set condition")),
                };
                let ttl = self.ttl()?;
                Update::Replace {
                    value: self.value(limits)?,
                    ttl,
                    when,
                }
            }
            6 => Update::Retime(self.ttl()?),
            7 => Update::Take,
            _ => return Err(LinkError::Malformed("unknown update")),
        })
    }

    pub(super) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    pub(super) fn end(self) -> Result<(), LinkError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(LinkError::Malformed("trailing bytes"))
        }
    }
}

pub fn decode_request(frame: Bytes, limits: &Limits) -> Result<Request, LinkError> {
    let mut r = Reader(frame);
    let request = match r.u8()? {
        op::GET => Request::Get {
            key: r.key(limits)?,
        },
        code @ (op::SET | op::SET_IF) => {
            let when = if code == op::SET {
                SetWhen::Always
            } else {
                match r.u8()? {
                    1 => SetWhen::Absent,
                    2 => SetWhen::Present,
                    _ => return Err(LinkError::Malformed("unknown set condition")),
                }
            };
            let version = r.u64()?;
            let ttl_ms = r.u64()?;
            let key = r.key(limits)?;
            let value = r.rest();
            if value.len() > limits.max_value_bytes {
                return Err(LinkError::Malformed("value over max_value_bytes"));
            }
            Request::Set {
                version,
                ttl_ms,
                key,
                value,
                when,
            }
        }
        op::META => Request::Meta {
            key: r.key(limits)?,
        },
        op::EXPIRE => {
            let version = r.u64()?;
            let ttl_ms = r.u64()?;
            Request::Expire {
                version,
                ttl_ms,
                key: r.key(limits)?,
            }
        }
        op::DEL => {
            let version = r.u64()?;
            Request::Del {
                version,
                key: r.key(limits)?,
            }
        }
        op::UPDATE => {
            let version = r.u64()?;
            let kind = r.u8()?;
            let key = r.key(limits)?;
            let update = r.update(kind, limits)?;
            Request::Update {
                version,
                key,
                update,
            }
        }
        op::REPLICATE => {
            let version = r.u64()?;
            let ttl_ms = r.u64()?;
            let base = r.u64()?;
            let deleted = r.u8()? != 0;
            let key = r.key(limits)?;
            let value = r.value(limits)?;
            if deleted && !value.is_empty() {
                return Err(LinkError::Malformed("a value for a delete"));
            }
            Request::Replicate {
                version,
                ttl_ms,
                base,
                key,
                value: (!deleted).then_some(value),
            }
        }
        op::HSET => {
            let version = r.u64()?;
            let base = match r.u8()? {
                0 => None,
                1 => Some(r.u64()?),
                _ => return Err(LinkError::Malformed("unknown field condition")),
            };
            let key = r.key(limits)?;
            // A field takes at least 5 bytes.
            let n = r.count(5)?;
            if n == 0 {
                return Err(LinkError::Malformed("no fields"));
            }
            let mut fields = Vec::with_capacity(n);
            let mut total = 0usize;
            for _ in 0..n {
                let name = r.long(limits)?;
                let value = match r.u8()? {
                    0 => None,
                    1 => Some(r.long(limits)?),
                    _ => return Err(LinkError::Malformed("unknown field flag")),
                };
                total += name.len() + value.as_ref().map_or(0, |v| v.len());
                fields.push((name, value));
            }
            if total > limits.max_value_bytes {
                return Err(LinkError::Malformed("fields over max_value_bytes"));
            }
            Request::HSet {
                version,
                key,
                fields,
                base,
            }
        }
        op::HGET => Request::HGet {
            key: r.key(limits)?,
        },
        op::HUPDATE => {
            let version = r.u64()?;
            let key = r.key(limits)?;
            let field = r.long(limits)?;
            let update = match r.u8()? {
                1 => FieldUpdate::IncrBy(r.u64()? as i64),
                2 => FieldUpdate::IncrByFloat(r.u64()?),
                3 => FieldUpdate::SetNx(r.value(limits)?),
                _ => return Err(LinkError::Malformed("unknown field update")),
            };
            Request::HUpdate {
                version,
                key,
                field,
                update,
            }
        }
        op::PING => Request::Ping,
        op::AUTH => {
            let token = r.rest();
            if token.len() > MAX_TOKEN_BYTES {
                return Err(LinkError::Malformed("token over its maximum length"));
            }
            Request::Auth { token }
        }
        op::STATUS => Request::Status,
        op::MISSED => Request::Missed,
        op::REFILL => Request::Refill,
        op::DIGEST => Request::Digest { floor: r.u64()? },
        op::SCAN => {
            let from = r.u16()?;
            if from as usize >= DIGEST_BUCKETS {
                return Err(LinkError::Malformed("bucket out of range"));
            }
            let count = r.u32()?;
            let pattern = r.rest();
            if pattern.len() > limits.max_key_bytes {
                return Err(LinkError::Malformed("pattern over max_key_bytes"));
            }
            Request::Scan {
                from,
                count,
                pattern,
            }
        }
        op::FLUSH => Request::Flush { version: r.u64()? },
        op::LAYOUT => Request::Layout {
            you: r.addr()?,
            layout: r.layout()?,
        },
        op::SYNC => {
            let n = r.u16()? as usize;
            if n > DIGEST_BUCKETS {
                return Err(LinkError::Malformed("more buckets than a digest has"));
            }
            let mut buckets = Vec::with_capacity(n);
            for _ in 0..n {
                let b = r.u16()?;
                if b as usize >= DIGEST_BUCKETS {
                    return Err(LinkError::Malformed("bucket out of range"));
                }
                buckets.push(b);
            }
            let after = r.bound(limits)?;
            let upto = r.bound(limits)?;
            let summaries = r.summaries(limits)?;
            Request::Sync {
                buckets,
                after,
                upto,
                summaries,
            }
        }
        op::APPLY => Request::Apply {
            last: r.u8()? != 0,
            entries: r.entries(limits)?,
            evict: r.summaries(limits)?,
        },
        op::TAKE => Request::Take {
            entries: r.entries(limits)?,
        },
        _ => return Err(LinkError::Malformed("unknown op")),
    };
    r.end()?;
    Ok(request)
}

/// Decodes a response to `request` (the op decides the OK body's shape).
pub fn decode_response(
    frame: Bytes,
    request: RequestKind,
    limits: &Limits,
) -> Result<Response, LinkError> {
    let mut r = Reader(frame);
    let response = match r.u8()? {
        status::OK => match request {
            RequestKind::Get | RequestKind::HGet => {
                let version = r.u64()?;
                let ttl_ms = r.u64()?;
                let value = r.rest();
                if value.len() > limits.max_value_bytes {
                    return Err(LinkError::Malformed("value over max_value_bytes"));
                }
                Response::Value {
                    version,
                    ttl_ms,
                    value,
                }
            }
            RequestKind::Set | RequestKind::Replicate => Response::Set {
                applied: r.u8()? != 0,
            },
            RequestKind::Del | RequestKind::Expire => Response::Del {
                existed: r.u8()? != 0,
            },
            RequestKind::Meta => Response::Meta {
                version: r.u64()?,
                ttl_ms: r.u64()?,
            },
            RequestKind::Ping => Response::Pong,
            RequestKind::Auth => Response::Authenticated,
            RequestKind::Missed => Response::Noted,
            RequestKind::Status => {
                let state = WorkerState::from_u8(r.u8()?)
                    .ok_or(LinkError::Malformed("unknown worker state"))?;
                Response::Status {
                    state,
                    entries: r.u64()?,
                    incarnation: r.u64()?,
                    synced: r.u64()?,
                    complete: r.u8()? != 0,
                    partner_behind: r.u8()? != 0,
                    serving_ms: r.u64()?,
                }
            }
            RequestKind::Refill => return Err(LinkError::Malformed("OK in a refill stream")),
            RequestKind::Digest => {
                let n = r.count(12)?;
                if n != DIGEST_BUCKETS {
                    return Err(LinkError::Malformed("digest of another size"));
                }
                let mut buckets = Vec::with_capacity(n);
                for _ in 0..n {
                    buckets.push(BucketDigest {
                        hash: r.u64()?,
                        entries: r.u32()?,
                    });
                }
                Response::Digest {
                    buckets,
                    floor: r.u64()?,
                }
            }
            RequestKind::Scan => {
                let next = r.u32()?;
                if next as usize > DIGEST_BUCKETS {
                    return Err(LinkError::Malformed("bucket out of range"));
                }
                // A key takes at least 3 bytes.
                let n = r.count(3)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.key(limits)?);
                }
                Response::Keys { next, keys }
            }
            RequestKind::Layout => Response::Layout {
                layout: r.layout()?,
                handoff: r.handoff()?,
            },
            RequestKind::Take => Response::Taken { applied: r.u32()? },
            RequestKind::Flush => Response::Flushed {
                floor: r.u64()?,
                removed: r.u64()?,
            },
            RequestKind::Sync => {
                let complete = r.u8()? != 0;
                let entries = r.entries(limits)?;
                // A wanted key takes at least 3 bytes.
                let n = r.count(3)?;
                let mut wanted = Vec::with_capacity(n);
                for _ in 0..n {
                    wanted.push(r.key(limits)?);
                }
                Response::Synced {
                    complete,
                    entries,
                    wanted,
                }
            }
            RequestKind::HSet => Response::FieldsWritten {
                added: r.u32()?,
                removed: r.u32()?,
            },
            RequestKind::Update | RequestKind::HUpdate => {
                let flags = r.u8()?;
                let version = r.u64()?;
                let base = r.u64()?;
                let ttl_ms = r.u64()?;
                let len = r.u32()? as usize;
                if len > limits.max_value_bytes {
                    return Err(LinkError::Malformed("value over max_value_bytes"));
                }
                let value = r.bytes(len)?;
                let old = r.value(limits)?;
                Response::Updated {
                    changed: flags & 1 != 0,
                    version,
                    base,
                    ttl_ms,
                    value: (flags & 2 != 0).then_some(value),
                    old: (flags & 4 != 0).then_some(old),
                }
            }
            RequestKind::Apply => Response::Applied {
                count: r.u32()?,
                refused: r.summaries(limits)?,
            },
        },
        status::NOT_FOUND => Response::NotFound,
        status::NOT_STORED
            if matches!(
                request,
                RequestKind::Set | RequestKind::Replicate | RequestKind::HSet
            ) =>
        {
            Response::NotStored
        }
        status::NEWER
            if matches!(
                request,
                RequestKind::Set | RequestKind::Del | RequestKind::Replicate | RequestKind::HSet
            ) =>
        {
            Response::Newer { version: r.u64()? }
        }
        status::ERROR => {
            let code =
                ErrorCode::from_u8(r.u8()?).ok_or(LinkError::Malformed("unknown error code"))?;
            let message = String::from_utf8_lossy(&r.rest()).into_owned();
            Response::Error(ErrorReply::new(code, message))
        }
        status::CHUNK if request == RequestKind::Refill => Response::Chunk(r.entries(limits)?),
        status::END if request == RequestKind::Refill => Response::End {
            entries: r.u64()?,
            floor: r.u64()?,
        },
        _ => return Err(LinkError::Malformed("unknown status")),
    };
    r.end()?;
    Ok(response)
}
