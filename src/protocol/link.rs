//! The link protocol: binary, versioned, pipelined framing between the
//! orchestrator and the workers, and between partners (refill).
//!
//! A link opens with [`HELLO`] from the connecting side; the server answers
//! with its own. Then every message is a frame: a big-endian `u32` body length
//! and the body. Requests and responses are matched by order (pipelining).
//! Every write carries the version the orchestrator stamped, so replicas can
//! keep the newest (see `crate::version`). All integers are big-endian.
//!
//! ```text
//! request  = op:u8 body
//!   GET     1  key
//!   SET     2  version:u64 ttl_ms:u64 key value(rest)      ttl_ms 0 = none
//!   DEL     3  version:u64 key
//!   PING    4
//!   STATUS  5
//!   REFILL  6                         the rest of the link carries the stream
//!   DIGEST  7                         anti-entropy: start a round
//!   SYNC    8  n:u16 bucket:u16* after:bound upto:bound m:u32 summary*
//!   APPLY   9  last:u8 count:u32 entry* n:u32 summary*  (summaries: evict)
//! response = status:u8 body
//!   OK          0  op-specific (GET: version:u64 ttl_ms:u64 value(rest);
//!                  SET: applied:u8; DEL: existed:u8;
//!                  STATUS: state:u8 entries:u64 incarnation:u64 synced:u64
//!                          complete:u8;
//!                  DIGEST: n:u32 (hash:u64 entries:u32)*;
//!                  SYNC: complete:u8 count:u32 entry* n:u32 key*;
//!                  APPLY: applied:u32 n:u32 summary*   (refused for room))
//!   NOT_FOUND   2
//!   NOT_STORED  3                      (a conditional set's condition failed)
//!   NEWER       4  version:u64         (SET, DEL: a newer version is held)
//!   ERROR     255  code:u8 message(rest)
//!   CHUNK      10  count:u32 entry*   (refill stream)
//!   END        11  entries:u64        (refill stream)
//! key     = len:u16 bytes
//! entry   = flags:u8 version:u64 ttl_ms:u64 key raw_len:u32 len:u32 data
//! summary = flags:u8 version:u64 key
//! bound   = len:u16 bytes              (len 0: unbounded)
//! ```
//!
//! Decoding checks every length against the frame and the configured limits
//! before it allocates or slices, so a hostile or corrupt peer gets an error,
//! never a panic or a huge allocation.

use super::{ErrorCode, ErrorReply, Limits, SetWhen};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// First bytes of a link: a marker no text or RESP request starts with, the
/// protocol name and its version.
pub const HELLO: &[u8; 5] = b"\xF0rcl\x06";

/// The first byte of [`HELLO`]: a listener that sees it speaks the link protocol.
pub const HELLO_FIRST_BYTE: u8 = 0xF0;

/// A refill chunk is cut once it holds this many bytes of entries.
pub const REFILL_CHUNK_BYTES: usize = 1 << 20;

/// Anti-entropy compares partners bucket by bucket: a key's bucket is the
/// top bits of its stable hash ([`crate::hash::key_hash`]).
pub const DIGEST_BUCKETS: usize = 4096;

/// The anti-entropy bucket of a key.
pub fn digest_bucket(key: &[u8]) -> u16 {
    bucket_of_hash(crate::hash::key_hash(key))
}

/// The anti-entropy bucket of a key whose stable hash is known.
pub fn bucket_of_hash(key_hash: u64) -> u16 {
    (key_hash >> (64 - DIGEST_BUCKETS.trailing_zeros())) as u16
}

/// The longest `auth_token` (config validation refuses longer ones).
pub const MAX_TOKEN_BYTES: usize = 1024;

/// Room in a frame beyond one key and one value.
const FRAME_OVERHEAD_BYTES: usize = 4096;

/// The largest frame a peer may send with these limits: a refill chunk plus
/// one maximal entry that started just below the cut.
pub fn max_frame_bytes(limits: &Limits) -> usize {
    REFILL_CHUNK_BYTES + limits.max_key_bytes + limits.max_value_bytes + FRAME_OVERHEAD_BYTES
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    #[error("peer is not an rcache link (bad hello)")]
    BadHello,
}

/// Worker states as a link reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Listening, deciding whether to refill.
    Starting = 0,
    /// Receiving its partner's data; takes writes, serves no reads.
    Refilling = 1,
    /// Serving everything.
    Ready = 2,
}

impl WorkerState {
    pub fn from_u8(v: u8) -> Option<WorkerState> {
        match v {
            0 => Some(WorkerState::Starting),
            1 => Some(WorkerState::Refilling),
            2 => Some(WorkerState::Ready),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Refilling => "refilling",
            WorkerState::Ready => "ready",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Get {
        key: Bytes,
    },
    Set {
        version: u64,
        ttl_ms: u64,
        key: Bytes,
        value: Bytes,
        /// A conditional set is answered `NotStored` when its condition
        /// does not hold.
        when: SetWhen,
    },
    Del {
        version: u64,
        key: Bytes,
    },
    /// A live key's version and remaining TTL, without its value.
    Meta {
        key: Bytes,
    },
    /// Gives the entry a new TTL and the version after `version`
    /// ([`crate::version::after`]: one logical tick, same node) if it holds
    /// exactly `version` (the value the client's EXPIRE found); answered
    /// `Del { existed }` (a live entry was there, changed or not).
    Expire {
        version: u64,
        ttl_ms: u64,
        key: Bytes,
    },
    Ping,
    Status,
    Refill,
    /// Starts an anti-entropy round: the partner answers with its digest.
    Digest,
    /// The sender's summaries of every entry in `buckets` whose key lies in
    /// the window `after < key <= upto` (an empty bound is open): the
    /// partner answers with the entries of that window it holds newer and
    /// the keys it wants.
    Sync {
        buckets: Vec<u16>,
        after: Bytes,
        upto: Bytes,
        summaries: Vec<Summary>,
    },
    /// Entries the partner wanted; `last` ends the round. `evict` names
    /// entries the sender was sent but refused for room (it is near its
    /// memory limit and lacks them): the partner evicts each one it still
    /// holds at that version, so a full pair converges on one set of keys.
    Apply {
        last: bool,
        entries: Vec<Entry>,
        evict: Vec<Summary>,
    },
    /// The cluster's `auth_token`: the first request on a link to a
    /// daemon that has one.
    Auth {
        token: Bytes,
    },
    /// An orchestrator's notice that this worker's partner missed a write
    /// this worker stored (answered `Noted`): STATUS says `partner_behind`
    /// until an anti-entropy round that began after the notice completes.
    Missed,
}

/// One bucket of a store's digest: a sum of its entries' fingerprints
/// (key, version, kind), and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketDigest {
    pub hash: u64,
    pub entries: u32,
}

/// What anti-entropy compares of an entry: its key, version and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub key: Bytes,
    pub version: u64,
    pub tombstone: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Value {
        version: u64,
        ttl_ms: u64,
        value: Bytes,
    },
    Set {
        applied: bool,
    },
    /// A conditional set's condition did not hold.
    NotStored,
    /// A set or delete lost: the worker holds `version`, newer than the
    /// write's (or equal, with content that wins the tie). The
    /// orchestrator stamps the write again above it.
    Newer {
        version: u64,
    },
    Del {
        existed: bool,
    },
    /// A live key's version and remaining TTL (0 = none).
    Meta {
        version: u64,
        ttl_ms: u64,
    },
    Pong,
    /// The link's token was accepted.
    Authenticated,
    /// A `Missed` notice was recorded.
    Noted,
    /// `incarnation` is drawn at each start: a change means a restart.
    /// `synced` counts the anti-entropy rounds this process completed.
    /// `complete` is false while the worker may lack data its partner
    /// holds (it started empty, or its refill broke off) and no
    /// anti-entropy round has repaired it since. `partner_behind`: an
    /// orchestrator said the partner missed a write stored here
    /// ([`Request::Missed`]) and no round that began after that has
    /// completed, so reads should come here while this worker can serve.
    Status {
        state: WorkerState,
        entries: u64,
        incarnation: u64,
        synced: u64,
        complete: bool,
        partner_behind: bool,
    },
    Digest(Vec<BucketDigest>),
    /// `complete` is false when the answer was cut to bound the frame.
    Synced {
        complete: bool,
        entries: Vec<Entry>,
        wanted: Vec<Bytes>,
    },
    /// `refused`: entries not stored for room (the receiver lacked them
    /// near its memory limit); the sender evicts them.
    Applied {
        count: u32,
        refused: Vec<Summary>,
    },
    NotFound,
    Error(ErrorReply),
    Chunk(Vec<Entry>),
    End {
        entries: u64,
    },
}

/// One stored entry as it travels in a refill: the stored form, compressed
/// or not, so neither side recompresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub version: u64,
    /// Remaining time to live in milliseconds; 0 = none.
    pub ttl_ms: u64,
    pub tombstone: bool,
    pub compressed: bool,
    /// Length of the value once decompressed.
    pub raw_len: u32,
    pub data: Bytes,
}

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_COMPRESSED: u8 = 2;

mod op {
    pub const GET: u8 = 1;
    pub const SET: u8 = 2;
    pub const DEL: u8 = 3;
    pub const PING: u8 = 4;
    pub const STATUS: u8 = 5;
    pub const REFILL: u8 = 6;
    pub const DIGEST: u8 = 7;
    pub const SYNC: u8 = 8;
    pub const APPLY: u8 = 9;
    pub const AUTH: u8 = 10;
    /// A set with a condition byte: 1 = only if absent, 2 = only if present.
    pub const SET_IF: u8 = 11;
    pub const META: u8 = 12;
    pub const EXPIRE: u8 = 13;
    pub const MISSED: u8 = 14;
}

mod status {
    pub const OK: u8 = 0;
    pub const NOT_FOUND: u8 = 2;
    pub const NOT_STORED: u8 = 3;
    pub const NEWER: u8 = 4;
    pub const ERROR: u8 = 255;
    pub const CHUNK: u8 = 10;
    pub const END: u8 = 11;
}

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
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Writes a frame whose body `body` fills in; the length is patched after.
fn write_frame(out: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_key(out: &mut BytesMut, key: &[u8]) {
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
        Request::Ping => out.put_u8(op::PING),
        Request::Auth { token } => {
            out.put_u8(op::AUTH);
            out.put_slice(token);
        }
        Request::Status => out.put_u8(op::STATUS),
        Request::Missed => out.put_u8(op::MISSED),
        Request::Refill => out.put_u8(op::REFILL),
        Request::Digest => out.put_u8(op::DIGEST),
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
    })
}

fn put_summaries(out: &mut BytesMut, summaries: &[Summary]) {
    for s in summaries {
        out.put_u8(if s.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.put_u64(s.version);
        put_key(out, &s.key);
    }
}

fn put_entries(out: &mut BytesMut, entries: &[Entry]) {
    out.put_u32(entries.len() as u32);
    for e in entries {
        let flags = if e.tombstone { FLAG_TOMBSTONE } else { 0 }
            | if e.compressed { FLAG_COMPRESSED } else { 0 };
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
        } => {
            out.put_u8(status::OK);
            out.put_u8(*state as u8);
            out.put_u64(*entries);
            out.put_u64(*incarnation);
            out.put_u64(*synced);
            out.put_u8(u8::from(*complete));
            out.put_u8(u8::from(*partner_behind));
        }
        Response::Digest(buckets) => {
            out.put_u8(status::OK);
            out.put_u32(buckets.len() as u32);
            for b in buckets {
                out.put_u64(b.hash);
                out.put_u32(b.entries);
            }
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
        Response::End { entries } => {
            out.put_u8(status::END);
            out.put_u64(*entries);
        }
    })
}

/// A cursor over a frame body that fails instead of panicking.
struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Result<u8, LinkError> {
        if self.0.is_empty() {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u8())
    }

    fn u32(&mut self) -> Result<u32, LinkError> {
        if self.0.len() < 4 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, LinkError> {
        if self.0.len() < 8 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, LinkError> {
        if self.0.len() < len {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.split_to(len))
    }

    fn key(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
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

    fn u16(&mut self) -> Result<u16, LinkError> {
        if self.0.len() < 2 {
            return Err(LinkError::Malformed("truncated"));
        }
        Ok(self.0.get_u16())
    }

    /// A count of items of at least `min_bytes` each: refused when the rest
    /// of the frame cannot hold them, so no allocation exceeds the frame.
    fn count(&mut self, min_bytes: usize) -> Result<usize, LinkError> {
        let count = self.u32()? as usize;
        if count > self.0.len() / min_bytes {
            return Err(LinkError::Malformed("count beyond the frame"));
        }
        Ok(count)
    }

    fn summaries(&mut self, limits: &Limits) -> Result<Vec<Summary>, LinkError> {
        // A summary takes at least 12 bytes.
        let count = self.count(12)?;
        let mut summaries = Vec::with_capacity(count);
        for _ in 0..count {
            let flags = self.u8()?;
            let version = self.u64()?;
            summaries.push(Summary {
                key: self.key(limits)?,
                version,
                tombstone: flags & FLAG_TOMBSTONE != 0,
            });
        }
        Ok(summaries)
    }

    fn entries(&mut self, limits: &Limits) -> Result<Vec<Entry>, LinkError> {
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
                raw_len,
                data,
            });
        }
        Ok(entries)
    }

    /// A key or, with length 0, no bound.
    fn bound(&mut self, limits: &Limits) -> Result<Bytes, LinkError> {
        if self.0.len() >= 2 && self.0[..2] == [0, 0] {
            self.0.advance(2);
            return Ok(Bytes::new());
        }
        self.key(limits)
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }

    fn end(self) -> Result<(), LinkError> {
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
        op::DIGEST => Request::Digest,
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
            RequestKind::Get => {
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
            RequestKind::Set => Response::Set {
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
                Response::Digest(buckets)
            }
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
            RequestKind::Apply => Response::Applied {
                count: r.u32()?,
                refused: r.summaries(limits)?,
            },
        },
        status::NOT_FOUND => Response::NotFound,
        status::NOT_STORED if request == RequestKind::Set => Response::NotStored,
        status::NEWER if matches!(request, RequestKind::Set | RequestKind::Del) => {
            Response::Newer { version: r.u64()? }
        }
        status::ERROR => {
            let code =
                ErrorCode::from_u8(r.u8()?).ok_or(LinkError::Malformed("unknown error code"))?;
            let message = String::from_utf8_lossy(&r.rest()).into_owned();
            Response::Error(ErrorReply::new(code, message))
        }
        status::CHUNK if request == RequestKind::Refill => Response::Chunk(r.entries(limits)?),
        status::END if request == RequestKind::Refill => Response::End { entries: r.u64()? },
        _ => return Err(LinkError::Malformed("unknown status")),
    };
    r.end()?;
    Ok(response)
}

/// What a response answers, so its body can be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Auth,
    Get,
    Set,
    Del,
    Meta,
    Expire,
    Ping,
    Status,
    Refill,
    Digest,
    Sync,
    Apply,
    Missed,
}

impl RequestKind {
    /// Every kind, for code that must try them all (decoders under test).
    pub const ALL: [RequestKind; 13] = [
        RequestKind::Auth,
        RequestKind::Get,
        RequestKind::Set,
        RequestKind::Del,
        RequestKind::Meta,
        RequestKind::Expire,
        RequestKind::Ping,
        RequestKind::Status,
        RequestKind::Refill,
        RequestKind::Digest,
        RequestKind::Sync,
        RequestKind::Apply,
        RequestKind::Missed,
    ];
}

impl Request {
    /// The same write stamped with `version` (a set or delete; any other
    /// request as it is).
    pub fn restamped(&self, version: u64) -> Request {
        let mut request = self.clone();
        if let Request::Set { version: v, .. } | Request::Del { version: v, .. } = &mut request {
            *v = version;
        }
        request
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Get { .. } => RequestKind::Get,
            Request::Set { .. } => RequestKind::Set,
            Request::Del { .. } => RequestKind::Del,
            Request::Meta { .. } => RequestKind::Meta,
            Request::Expire { .. } => RequestKind::Expire,
            Request::Ping => RequestKind::Ping,
            Request::Auth { .. } => RequestKind::Auth,
            Request::Status => RequestKind::Status,
            Request::Refill => RequestKind::Refill,
            Request::Digest => RequestKind::Digest,
            Request::Sync { .. } => RequestKind::Sync,
            Request::Apply { .. } => RequestKind::Apply,
            Request::Missed => RequestKind::Missed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_key_bytes: 64,
            max_value_bytes: 1024,
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn requests_round_trip() {
        let requests = [
            Request::Get { key: b("k") },
            Request::Set {
                version: 7,
                ttl_ms: 1500,
                key: b("k"),
                value: b("v\r\n\0"),
                when: SetWhen::Always,
            },
            Request::Set {
                version: 8,
                ttl_ms: 0,
                key: b("k"),
                value: Bytes::new(),
                when: SetWhen::Absent,
            },
            Request::Set {
                version: 9,
                ttl_ms: 5,
                key: b("k"),
                value: b("x"),
                when: SetWhen::Present,
            },
            Request::Meta { key: b("m") },
            Request::Expire {
                version: 10,
                ttl_ms: 2500,
                key: b("e"),
            },
            Request::Del {
                version: u64::MAX,
                key: b("k"),
            },
            Request::Ping,
            Request::Auth { token: b("s3cret") },
            Request::Status,
            Request::Missed,
            Request::Refill,
            Request::Digest,
            Request::Sync {
                buckets: vec![0, 17, (DIGEST_BUCKETS - 1) as u16],
                after: Bytes::new(),
                upto: b("m"),
                summaries: vec![
                    Summary {
                        key: b("a"),
                        version: 9,
                        tombstone: false,
                    },
                    Summary {
                        key: b("b"),
                        version: 10,
                        tombstone: true,
                    },
                ],
            },
            Request::Apply {
                last: true,
                entries: vec![Entry {
                    key: b("k"),
                    version: 3,
                    ttl_ms: 5,
                    tombstone: false,
                    compressed: false,
                    raw_len: 1,
                    data: b("v"),
                }],
                evict: vec![Summary {
                    key: b("gone"),
                    version: 4,
                    tombstone: false,
                }],
            },
        ];
        let mut buf = BytesMut::new();
        for r in &requests {
            encode_request(r, &mut buf);
        }
        for r in &requests {
            let frame = read_frame(&mut buf, 4096)
                .expect("valid")
                .expect("complete");
            assert_eq!(&decode_request(frame, &limits()).expect("decodes"), r);
        }
        assert_eq!(read_frame(&mut buf, 4096), Ok(None));
    }

    #[test]
    fn responses_round_trip() {
        let entry = Entry {
            key: b("k"),
            version: 3,
            ttl_ms: 0,
            tombstone: false,
            compressed: true,
            raw_len: 300,
            data: b("xyz"),
        };
        let cases = [
            (
                Response::Value {
                    version: 1,
                    ttl_ms: 2,
                    value: b("v"),
                },
                RequestKind::Get,
            ),
            (Response::Set { applied: true }, RequestKind::Set),
            (Response::NotStored, RequestKind::Set),
            (Response::Newer { version: 42 }, RequestKind::Set),
            (Response::Newer { version: 43 }, RequestKind::Del),
            (
                Response::Meta {
                    version: 3,
                    ttl_ms: 0,
                },
                RequestKind::Meta,
            ),
            (Response::Del { existed: true }, RequestKind::Expire),
            (Response::Del { existed: false }, RequestKind::Del),
            (Response::Pong, RequestKind::Ping),
            (Response::Authenticated, RequestKind::Auth),
            (
                Response::Status {
                    state: WorkerState::Refilling,
                    entries: 9,
                    incarnation: 77,
                    synced: 4,
                    complete: true,
                    partner_behind: true,
                },
                RequestKind::Status,
            ),
            (Response::Noted, RequestKind::Missed),
            (
                Response::Digest(
                    (0..DIGEST_BUCKETS as u64)
                        .map(|i| BucketDigest {
                            hash: i * 31,
                            entries: i as u32,
                        })
                        .collect(),
                ),
                RequestKind::Digest,
            ),
            (
                Response::Synced {
                    complete: false,
                    entries: vec![entry.clone()],
                    wanted: vec![b("w1"), b("w2")],
                },
                RequestKind::Sync,
            ),
            (
                Response::Applied {
                    count: 12,
                    refused: vec![Summary {
                        key: b("full"),
                        version: 7,
                        tombstone: false,
                    }],
                },
                RequestKind::Apply,
            ),
            (Response::NotFound, RequestKind::Get),
            (
                Response::Error(ErrorReply::new(ErrorCode::Loading, "refilling")),
                RequestKind::Get,
            ),
            (
                Response::Chunk(vec![
                    entry.clone(),
                    Entry {
                        tombstone: true,
                        ..entry
                    },
                ]),
                RequestKind::Refill,
            ),
            (Response::End { entries: 2 }, RequestKind::Refill),
        ];
        let mut buf = BytesMut::new();
        for (r, _) in &cases {
            encode_response(r, &mut buf);
        }
        for (r, kind) in &cases {
            let frame = read_frame(&mut buf, 1 << 20)
                .expect("valid")
                .expect("complete");
            assert_eq!(
                &decode_response(frame, *kind, &limits()).expect("decodes"),
                r
            );
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            read_frame(&mut buf, 4096),
            Err(LinkError::FrameTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0, 0, 0, 5, 1][..]);
        assert_eq!(read_frame(&mut buf, 4096), Ok(None));
        for frame in [
            &b""[..],
            b"\x01",
            b"\x01\x00",
            b"\x01\x00\x05ab",
            b"\x02\x00",
            b"\x09",
            b"\x04x",
        ] {
            assert!(
                decode_request(Bytes::copy_from_slice(frame), &limits()).is_err(),
                "{frame:?}"
            );
        }
        // A chunk claiming a million entries in a few bytes is refused before allocating.
        let frame = Bytes::from_static(b"\x0a\x00\x0f\x42\x40abc");
        assert!(decode_response(frame, RequestKind::Refill, &limits()).is_err());
    }

    #[test]
    fn random_frames_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let kinds = RequestKind::ALL;
        for _ in 0..50_000 {
            let len = (next() % 48) as usize;
            let mut frame: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = frame.first_mut() {
                *first %= 13;
            }
            let frame = Bytes::from(frame);
            let _ = decode_request(frame.clone(), &limits());
            let _ = decode_response(
                frame,
                kinds[(next() % kinds.len() as u64) as usize],
                &limits(),
            );
        }
    }
}
