//! The link protocol: binary, versioned, pipelined framing between the
//! orchestrator and the workers, and between partners (refill).
//!
//! A link opens with [`HELLO`] from the connecting side, naming the highest
//! version it speaks; the server answers with the version both will speak:
//! the lower of the two, if it is one the server still speaks
//! ([`OLDEST_LINK_VERSION`]), else it closes. A server of the previous
//! release closes on any version but its own, so a client whose hello was
//! closed on tries again with [`OLDEST_LINK_VERSION`]. Daemons of releases
//! N and N−1 thus work together during a rolling upgrade; what a version
//! cannot carry is never sent on a link that speaks it
//! ([`Request::for_version`], [`Response::for_version`]). Then every message is a frame: a big-endian `u32` body length
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
//!   DIGEST  7  floor:u64              anti-entropy: start a round
//!   SCAN   17  from:u16 count:u32 pattern(rest)   live keys by bucket
//!   FLUSH  18  version:u64            drop everything older, refuse it after
//!   SYNC    8  n:u16 bucket:u16* after:bound upto:bound m:u32 summary*
//!   APPLY   9  last:u8 count:u32 entry* n:u32 summary*  (summaries: evict)
//!   REPLICATE 16 version:u64 ttl_ms:u64 base:u64 deleted:u8 key value(rest)
//!   HSET   19  version:u64 based:u8 [base:u64] key n:u32 (name value?)*
//!              (name = len:u32 bytes; value? = 0 deleted | 1 len:u32 bytes)
//!   HGET   20  key                    a hash's fields (OK: as GET, value = encoding)
//!   HUPDATE 21 version:u64 key name kind:u8 args  (1 INCRBY i64
//!              | 2 INCRBYFLOAT f64-bits | 3 SETNX rest)  decided, as UPDATE
//!   LAYOUT 22  you:addr has:u8 [layout]   the cluster's layout: the sender's
//!              (if it has one) and the address it knows the worker by;
//!              answered with the layout the worker holds after
//!   TAKE   23  count:u32 entry*       entries of keys moving to this
//!              worker's pair: each kept where newer than what it holds
//!   UPDATE 15  version:u64 kind:u8 key args               read-modify-write
//!              (1 INCRBY i64 | 2 INCRBYFLOAT f64-bits | 3 APPEND rest
//!               | 4 SETRANGE offset:u64 rest | 5 REPLACE when:u8 ttl rest
//!               | 6 RETIME ttl | 7 TAKE;  ttl = 0 clear | 1 keep | 2 ms:u64)
//! response = status:u8 body
//!   OK          0  op-specific (GET: version:u64 ttl_ms:u64 value(rest);
//!                  SET: applied:u8; DEL: existed:u8;
//!                  STATUS: state:u8 entries:u64 incarnation:u64 synced:u64
//!                          complete:u8;
//!                  DIGEST: n:u32 (hash:u64 entries:u32)* floor:u64;
//!                  SCAN: next:u32 n:u32 key*;  FLUSH: floor:u64 removed:u64;
//!                  SYNC: complete:u8 count:u32 entry* n:u32 key*;
//!                  APPLY: applied:u32 n:u32 summary*   (refused for room);
//!                  UPDATE: flags:u8 version:u64 base:u64 ttl_ms:u64 len:u32
//!                          value old(rest)   flags: 1 changed, 2 value, 4 old;
//!                  REPLICATE: applied:u8;  HSET: added:u32 removed:u32;
//!                  HUPDATE: as UPDATE, value = the field's;
//!                  LAYOUT: has:u8 [layout] moving:u8 [handoff];
//!                  TAKE: applied:u32)
//!   NOT_FOUND   2
//!   NOT_STORED  3                      (a conditional set's condition failed)
//!   NEWER       4  version:u64         (SET, DEL: a newer version is held)
//!   ERROR     255  code:u8 message(rest)
//!   CHUNK      10  count:u32 entry*   (refill stream)
//!   END        11  entries:u64 floor:u64  (refill stream)
//! key     = len:u16 bytes
//! entry   = flags:u8 version:u64 ttl_ms:u64 key raw_len:u32 len:u32 data
//!           (flags: 1 tombstone, 2 compressed, 4 hash)
//! summary = flags:u8 version:u64 key [content:u64 if flags has 4]
//! bound   = len:u16 bytes              (len 0: unbounded)
//! layout  = epoch:u64 pairs source:u8 [pairs]   (source 0 none, 1 moving
//!           from those pairs, 2 moving and sealed)
//! pairs   = n:u16 (addr addr)*        in placement order; a hole (a removed
//!           pair) is two empty addresses
//! handoff = epoch:u64 done:u8 keys_moved:u64 bytes_moved:u64 keys_left:u64
//! addr    = len:u16 bytes              (1 to 255 bytes of UTF-8; 0 in a hole)
//! ```
//!
//! Decoding checks every length against the frame and the configured limits
//! before it allocates or slices, so a hostile or corrupt peer gets an error,
//! never a panic or a huge allocation.

mod decode;
mod dialect;
mod encode;
#[cfg(test)]
mod tests;
mod versions;

pub use decode::{decode_request, decode_response, read_frame};
pub use dialect::{LinkAnswer, LinkDialect, LinkReply};
pub use encode::{encode_request, encode_response};

use super::fields::FieldUpdate;
use super::{ErrorReply, Limits, SetWhen, Update};
use bytes::Bytes;
use thiserror::Error;

/// First bytes of a link: a marker no text or RESP request starts with, the
/// protocol name and the highest version this build speaks.
pub const HELLO: &[u8; 5] = b"\xF0rcl\x09";

/// The link protocol version this build speaks best.
pub const LINK_VERSION: u8 = HELLO[4];

/// The oldest version this build still speaks: the previous release's,
/// so that one worker of a pair (or one orchestrator) can be upgraded at
/// a time.
pub const OLDEST_LINK_VERSION: u8 = 8;

/// The first version that carries hashes (`HSET`, `HGET`, `HUPDATE`, hash
/// entries and hash summaries).
pub const HASH_LINK_VERSION: u8 = 9;

const _: () = assert!(OLDEST_LINK_VERSION < HASH_LINK_VERSION && HASH_LINK_VERSION <= LINK_VERSION);

/// The hello of one version.
pub fn hello(version: u8) -> [u8; 5] {
    let mut hello = *HELLO;
    hello[4] = version;
    hello
}

/// The version a hello names, if `bytes` (at least [`HELLO`]'s length)
/// start with one.
pub fn hello_version(bytes: &[u8]) -> Option<u8> {
    let prefix = HELLO.len() - 1;
    (bytes.len() >= HELLO.len() && bytes[..prefix] == HELLO[..prefix]).then(|| bytes[prefix])
}

/// The version a server speaks with a peer whose hello named `offered`:
/// the lower of the two, or `None` when the peer is too old.
pub fn agree(offered: u8) -> Option<u8> {
    (offered >= OLDEST_LINK_VERSION).then(|| offered.min(LINK_VERSION))
}

/// The first byte of [`HELLO`]: a listener that sees it speaks the link protocol.
pub const HELLO_FIRST_BYTE: u8 = 0xF0;

/// A refill chunk is cut once it holds this many bytes of entries.
pub const REFILL_CHUNK_BYTES: usize = 1 << 20;

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
    /// Both sides adopt the higher flush floor ([`Request::Flush`]), so a
    /// flush one of them missed is not undone by the round.
    Digest {
        floor: u64,
    },
    /// Live keys of whole buckets from bucket `from` on that match
    /// `pattern` (empty: all), until `count` keys were looked at: `SCAN`
    /// (answered `Keys`). Buckets are the same on both partners, so a
    /// cursor survives a failover.
    Scan {
        from: u16,
        count: u32,
        pattern: Bytes,
    },
    /// `FLUSHDB`: deletes every entry older than a floor (`version`, or
    /// past everything this worker stored if that is later) and refuses
    /// every older write after, from a client, a hint, a refill or
    /// anti-entropy. Answered `Flushed`.
    Flush {
        version: u64,
    },
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
    /// A read-modify-write this worker decides: it reads the key, computes
    /// ([`crate::protocol::update::apply`]) and stores the result at a
    /// version above both `version` and the one it read, and answers
    /// [`Response::Updated`] with that result for the partner.
    Update {
        version: u64,
        key: Bytes,
        update: Update,
    },
    /// The result of an update the partner decided: the key's new value
    /// (deleted when `None`) at `version`, stored only if this worker
    /// holds no version after `base` (the one the decider read). Another
    /// version there means this worker took a write the decider did not
    /// see, such as an update it decided itself: answered `NotStored`.
    Replicate {
        version: u64,
        ttl_ms: u64,
        base: u64,
        key: Bytes,
        value: Option<Bytes>,
    },
    /// Writes fields of a hash at `version` (`None`: deletes the field),
    /// merged with what the worker holds; answered
    /// [`Response::FieldsWritten`], `Newer` when a whole-key write newer
    /// than `version` is there, or `WRONGTYPE` over a string.
    ///
    /// `base`: the result of a field update the partner decided from the
    /// field at that version ([`Request::HUpdate`]), answered `NotStored`
    /// where this worker holds a version of the field after `base` that it
    /// stamped itself (an update it decided meanwhile from an older
    /// value: the two conflict, as for [`Request::Replicate`]).
    HSet {
        version: u64,
        key: Bytes,
        fields: Vec<(Bytes, Option<Bytes>)>,
        base: Option<u64>,
    },
    /// A hash's fields: answered `Value` with their encoding
    /// ([`crate::protocol::fields`]), `NotFound`, or `WRONGTYPE`.
    HGet {
        key: Bytes,
    },
    /// The cluster's layout, gossiped by the orchestrators' probes: the
    /// sender's (`None`: it has none yet) and `you`, the address the sender
    /// knows this worker by. The worker keeps the one with the higher
    /// epoch and answers [`Response::Layout`] with what it holds then.
    Layout {
        layout: Option<Layout>,
        you: String,
    },
    /// Entries of keys that move to this worker's pair, from a worker that
    /// loses them (see [`Handoff`]): each is kept where it is newer than
    /// what this worker holds, as a refill's are. Answered
    /// [`Response::Taken`].
    Take {
        entries: Vec<Entry>,
    },
    /// A read-modify-write of one field this worker decides (as
    /// [`Request::Update`]): answered [`Response::Updated`] with the
    /// field's new value and the version it was stored at, which the
    /// orchestrator writes to the partner as an `HSet`.
    HUpdate {
        version: u64,
        key: Bytes,
        field: Bytes,
        update: FieldUpdate,
    },
}

/// One bucket of a store's digest: a sum of its entries' fingerprints
/// (key, version, kind), and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketDigest {
    pub hash: u64,
    pub entries: u32,
}

/// What anti-entropy compares of an entry: its key, version and kind,
/// and for a hash a hash of its fields (`content`; 0 for anything else),
/// since replicas of one version may hold different fields until they
/// merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub key: Bytes,
    pub version: u64,
    pub tombstone: bool,
    pub content: u64,
}

impl Summary {
    /// Whether the entry summarized holds everything `other`'s does: a
    /// newer version, or the same one with the same content.
    pub fn covers(&self, other: &Summary) -> bool {
        self.version > other.version
            || (self.version == other.version && self.content == other.content)
    }
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
    ///
    /// `serving_ms`: how long it has been ready and complete without a
    /// break, counted from the first `STATUS` that found it so; 0 while it
    /// is not. Every orchestrator counts from the same moment, so all of
    /// them agree when a worker that came back starts deciding updates
    /// again ([`crate::orchestrator`]).
    Status {
        state: WorkerState,
        entries: u64,
        incarnation: u64,
        synced: u64,
        complete: bool,
        partner_behind: bool,
        serving_ms: u64,
    },
    Digest {
        buckets: Vec<BucketDigest>,
        floor: u64,
    },
    /// `next`: the bucket to go on from; `DIGEST_BUCKETS` when all were
    /// walked.
    Keys {
        next: u32,
        keys: Vec<Bytes>,
    },
    Flushed {
        floor: u64,
        removed: u64,
    },
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
    /// What a [`Request::Update`] did: when `changed`, the key now holds
    /// `value` (deleted when `None`) at `version` with `ttl_ms` left (0:
    /// none); `old` is the value it held before, if it was live.
    /// `base` is the version it read (0: none).
    Updated {
        changed: bool,
        version: u64,
        base: u64,
        ttl_ms: u64,
        value: Option<Bytes>,
        old: Option<Bytes>,
    },
    /// What an `HSet` did: fields it added (not live before) and removed
    /// (live before, deleted now).
    FieldsWritten {
        added: u32,
        removed: u32,
    },
    /// The layout a worker holds (`None`: none yet), and its part in the
    /// migration that layout makes, if it makes one.
    Layout {
        layout: Option<Layout>,
        handoff: Option<Handoff>,
    },
    /// How many entries of a [`Request::Take`] were newer than what the
    /// worker held.
    Taken {
        applied: u32,
    },
    NotFound,
    Error(ErrorReply),
    Chunk(Vec<Entry>),
    /// The stream is over; `floor` is the sender's flush floor.
    End {
        entries: u64,
        floor: u64,
    },
}

/// The cluster's pairs as the cluster holds them (on every worker, given
/// by the orchestrators): in placement order, with an epoch that grows
/// with every change (`rcache cluster replace-worker`, `add-pair`,
/// `remove-pair`). An orchestrator places keys by the layout with the
/// highest epoch it has seen; its config's `workers` only seed it.
///
/// A removed pair leaves a hole (two empty addresses) so the pairs after
/// it keep their places ([`crate::placement`]). While keys move between
/// pairs, `source` holds the pairs they move from: requests still go by
/// it, and the workers losing keys copy them to their new pairs (see
/// [`Handoff`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub epoch: u64,
    pub pairs: Vec<[String; 2]>,
    pub source: Option<Source>,
}

/// The pairs a migration moves keys from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Source {
    pub pairs: Vec<[String; 2]>,
    /// The workers losing keys take no more requests for them (answered
    /// `TRYAGAIN`) and send what they took last: the step before the
    /// layout without a source.
    pub sealed: bool,
}

/// A worker's part in a migration, answered with LAYOUT: for the layout
/// of `epoch`, the keys and bytes it copied to their new pairs so far,
/// the keys it still has to copy, and whether it is `done` (every moving
/// key reached every worker of its new pair, and, at a sealed layout,
/// nothing it took before the seal is left to send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Handoff {
    pub epoch: u64,
    pub done: bool,
    pub keys_moved: u64,
    pub bytes_moved: u64,
    pub keys_left: u64,
}

/// The most pairs a layout holds.
pub const MAX_LAYOUT_PAIRS: usize = 4096;

/// What a removed pair leaves in a layout.
pub fn hole() -> [String; 2] {
    [String::new(), String::new()]
}

pub fn is_hole(pair: &[String; 2]) -> bool {
    pair[0].is_empty()
}

fn find_in(pairs: &[[String; 2]], addr: &str) -> Option<(usize, usize)> {
    if addr.is_empty() {
        return None;
    }
    pairs
        .iter()
        .enumerate()
        .find_map(|(i, pair)| pair.iter().position(|a| a == addr).map(|j| (i, j)))
}

/// Placement over `pairs`, holes included.
pub fn placement_of(pairs: &[[String; 2]]) -> crate::placement::Placement {
    crate::placement::Placement::new(pairs.iter().map(is_hole).collect())
}

impl Layout {
    /// A layout of `pairs` with nothing moving.
    pub fn settled(epoch: u64, pairs: Vec<[String; 2]>) -> Layout {
        Layout {
            epoch,
            pairs,
            source: None,
        }
    }

    /// The next epoch: keys move from this layout's pairs to `pairs`.
    pub fn moving_to(&self, pairs: Vec<[String; 2]>) -> Layout {
        Layout {
            epoch: self.epoch + 1,
            pairs,
            source: Some(Source {
                pairs: self.pairs.clone(),
                sealed: false,
            }),
        }
    }

    /// Where `addr` is in the pairs keys go to: its pair and its place in
    /// the pair.
    pub fn find(&self, addr: &str) -> Option<(usize, usize)> {
        find_in(&self.pairs, addr)
    }

    /// Where `addr` is in the pairs requests go to now (the source while
    /// keys move).
    pub fn find_serving(&self, addr: &str) -> Option<(usize, usize)> {
        find_in(self.serving(), addr)
    }

    /// The pairs requests go to now: the source while keys move.
    pub fn serving(&self) -> &[[String; 2]] {
        self.source.as_ref().map_or(&self.pairs, |s| &s.pairs)
    }

    pub fn placement(&self) -> crate::placement::Placement {
        placement_of(&self.pairs)
    }

    /// Every worker the layout names (the source's too), once each.
    pub fn workers(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        let source = self.source.iter().flat_map(|s| s.pairs.iter());
        for addr in self.pairs.iter().chain(source).flatten() {
            if !addr.is_empty() && !all.contains(&addr.as_str()) {
                all.push(addr);
            }
        }
        all
    }

    /// Pairs that are not holes.
    pub fn live_pairs(&self) -> usize {
        self.pairs.iter().filter(|p| !is_hole(p)).count()
    }

    /// Whether this layout replaces `other`: a higher epoch, or the same
    /// one with greater pairs (then source). Two orchestrators that
    /// changed the layout at once made two layouts of one epoch; everyone
    /// keeps the same one of them.
    pub fn supersedes(&self, other: &Layout) -> bool {
        (self.epoch, &self.pairs, &self.source) > (other.epoch, &other.pairs, &other.source)
    }

    /// The partner of the worker at `addr`, if the layout has it (in the
    /// source, for a pair that is leaving).
    pub fn partner_of(&self, addr: &str) -> Option<&str> {
        match self.find(addr) {
            Some((i, j)) => Some(self.pairs[i][1 - j].as_str()),
            None => self
                .source
                .as_ref()
                .and_then(|s| find_in(&s.pairs, addr).map(|(i, j)| s.pairs[i][1 - j].as_str())),
        }
    }
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
    /// The data is a hash's fields ([`crate::protocol::fields`]).
    pub hash: bool,
    /// Length of the value once decompressed.
    pub raw_len: u32,
    pub data: Bytes,
}

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_COMPRESSED: u8 = 2;
const FLAG_HASH: u8 = 4;

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
    pub const UPDATE: u8 = 15;
    pub const REPLICATE: u8 = 16;
    pub const SCAN: u8 = 17;
    pub const FLUSH: u8 = 18;
    pub const HSET: u8 = 19;
    pub const HGET: u8 = 20;
    pub const HUPDATE: u8 = 21;
    pub const LAYOUT: u8 = 22;
    pub const TAKE: u8 = 23;
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
    Update,
    Replicate,
    Scan,
    Flush,
    HSet,
    HGet,
    HUpdate,
    Layout,
    Take,
}

impl RequestKind {
    /// Every kind, for code that must try them all (decoders under test).
    pub const ALL: [RequestKind; 22] = [
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
        RequestKind::Update,
        RequestKind::Replicate,
        RequestKind::Scan,
        RequestKind::Flush,
        RequestKind::HSet,
        RequestKind::HGet,
        RequestKind::HUpdate,
        RequestKind::Layout,
        RequestKind::Take,
    ];
}

impl Request {
    /// The same write stamped with `version` (a set or delete; any other
    /// request as it is).
    pub fn restamped(&self, version: u64) -> Request {
        let mut request = self.clone();
        if let Request::Set { version: v, .. }
        | Request::Del { version: v, .. }
        | Request::Update { version: v, .. }
        | Request::HSet { version: v, .. }
        | Request::HUpdate { version: v, .. }
        | Request::Replicate { version: v, .. } = &mut request
        {
            *v = version;
        }
        request
    }

    /// The plain write a [`Request::Replicate`] (or a based `HSet`)
    /// stands for (a set or a delete at its version, without the
    /// condition); any other request as it is.
    pub fn plain(&self) -> Request {
        match self {
            Request::Replicate {
                version,
                ttl_ms,
                key,
                value: Some(value),
                ..
            } => Request::Set {
                version: *version,
                ttl_ms: *ttl_ms,
                key: key.clone(),
                value: value.clone(),
                when: SetWhen::Always,
            },
            Request::Replicate {
                version,
                key,
                value: None,
                ..
            } => Request::Del {
                version: *version,
                key: key.clone(),
            },
            Request::HSet {
                version,
                key,
                fields,
                base: Some(_),
            } => Request::HSet {
                version: *version,
                key: key.clone(),
                fields: fields.clone(),
                base: None,
            },
            other => other.clone(),
        }
    }

    /// The key a request reads or writes, if it names one.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Request::Get { key }
            | Request::Set { key, .. }
            | Request::Del { key, .. }
            | Request::Meta { key }
            | Request::Expire { key, .. }
            | Request::Update { key, .. }
            | Request::Replicate { key, .. }
            | Request::HSet { key, .. }
            | Request::HGet { key }
            | Request::HUpdate { key, .. } => Some(key),
            _ => None,
        }
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
            Request::Digest { .. } => RequestKind::Digest,
            Request::Scan { .. } => RequestKind::Scan,
            Request::Flush { .. } => RequestKind::Flush,
            Request::Sync { .. } => RequestKind::Sync,
            Request::Apply { .. } => RequestKind::Apply,
            Request::Missed => RequestKind::Missed,
            Request::Update { .. } => RequestKind::Update,
            Request::Replicate { .. } => RequestKind::Replicate,
            Request::HSet { .. } => RequestKind::HSet,
            Request::HGet { .. } => RequestKind::HGet,
            Request::HUpdate { .. } => RequestKind::HUpdate,
            Request::Layout { .. } => RequestKind::Layout,
            Request::Take { .. } => RequestKind::Take,
        }
    }
}
