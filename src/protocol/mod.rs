//! Wire formats: bytes <-> typed requests and replies, no I/O.
//!
//! Every client-facing protocol decodes into the same [`Command`] and encodes
//! the same [`Reply`], so the code that executes commands (the worker's store,
//! the orchestrator's router) never knows which protocol a client spoke.
//! `text` is the line protocol of the SPEC; `resp` is RESP2, the protocol of
//! Redis clients, on the same port; `link` is the binary, versioned,
//! pipelined framing between the orchestrator and the workers and between
//! partners. Decoders are pure functions over buffers: "need more bytes" is
//! `Ok(None)`, never an error, and no input makes them panic.

pub mod dialect;
pub mod fields;
pub mod glob;
pub mod link;
mod op;
pub mod resp;
pub mod text;
pub mod update;

pub use op::{Op, Outcome};
pub use update::{TtlChange, Update};

use crate::defaults;
use bytes::Bytes;
use std::borrow::Cow;
use std::time::Duration;

/// A request, whatever protocol carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Get {
        key: Bytes,
    },
    Set {
        key: Bytes,
        value: Bytes,
        ttl: Option<Expiry>,
        /// Store only if the key is absent (`NX`) or present (`XX`).
        when: SetWhen,
    },
    Del {
        key: Bytes,
    },
    /// Values of several keys, in order; a missing key is `None`
    /// ([`Reply::Values`]).
    MGet {
        keys: Vec<Bytes>,
    },
    /// Several unconditional sets (not atomic across keys).
    MSet {
        entries: Vec<(Bytes, Bytes)>,
    },
    /// Deletes several keys; replies with how many existed
    /// ([`Reply::Integer`]).
    DelMany {
        keys: Vec<Bytes>,
    },
    /// How many of the keys exist (a key named twice counts twice).
    Exists {
        keys: Vec<Bytes>,
    },
    /// Sets a present key's time to live if `when` holds of the one it
    /// has; replies 1 if it did, else 0. A moment already past (a TTL of
    /// zero) deletes the key.
    Expire {
        key: Bytes,
        ttl: Expiry,
        when: ExpireWhen,
    },
    /// A read-modify-write of one string key (`INCR`, `APPEND`, `SET …
    /// GET`, `GETDEL`, `GETEX`, `PERSIST`); `reply` is what the client is
    /// told of it.
    Update {
        key: Bytes,
        update: Update,
        reply: UpdateReply,
    },
    /// `GETRANGE` / `SUBSTR`: the bytes `start..=end` of the value (negative
    /// offsets count from its end); empty for a missing key.
    GetRange {
        key: Bytes,
        start: i64,
        end: i64,
    },
    /// The value's length in bytes; 0 for a missing key.
    StrLen {
        key: Bytes,
    },
    /// `MSETNX`: sets the keys only if none of them exists (1), else 0.
    MSetNx {
        entries: Vec<(Bytes, Bytes)>,
    },
    /// The key's type: `string`, or `none` for a missing key.
    Type {
        key: Bytes,
    },
    /// The moment the key expires in milliseconds since the epoch; `-1`
    /// without a TTL, `-2` for a missing key.
    ExpireTime {
        key: Bytes,
    },
    /// `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`: keys of the next
    /// stretch of the cluster, pair by pair and bucket by bucket; replies
    /// the next cursor (0: done) and the keys of type `kind`.
    Scan {
        cursor: u64,
        pattern: Bytes,
        count: usize,
        kind: ScanType,
    },
    /// A command on the hash under `key` (`HSET`, `HGET`, …).
    Hash {
        key: Bytes,
        op: HashOp,
    },
    /// Every key matching the pattern ([`Reply::Values`]).
    Keys {
        pattern: Bytes,
    },
    /// A key picked at random; nil when there is none.
    RandomKey,
    /// `FLUSHDB` / `FLUSHALL`: every key goes, on every worker, for good.
    Flush,
    /// `RENAME` (`nx`: `RENAMENX`): moves the value and its TTL.
    Rename {
        from: Bytes,
        to: Bytes,
        nx: bool,
    },
    /// `COPY`: copies the value and its TTL; over an existing key only
    /// with `replace`.
    Copy {
        from: Bytes,
        to: Bytes,
        replace: bool,
    },
    /// The remaining time to live in milliseconds, `-1` without one, `-2`
    /// for a missing key ([`Reply::Integer`]).
    Ttl {
        key: Bytes,
    },
    /// Live entries held ([`Reply::Integer`]).
    DbSize,
    /// `INFO [section …]`: `name:value` lines about the server
    /// ([`Reply::Value`]), the sections asked for.
    Info {
        sections: InfoSections,
    },
    /// `LCS a b [LEN | IDX …]`: the longest common subsequence of two
    /// values (a missing key is empty).
    Lcs {
        a: Bytes,
        b: Bytes,
        mode: LcsMode,
    },
    /// `OBJECT ENCODING|FREQ|REFCOUNT key`, `MEMORY USAGE key`.
    Inspect {
        key: Bytes,
        what: Inspect,
    },
    Ping,
    Auth {
        token: Bytes,
    },
    /// The client asks the server to close the connection.
    Exit,
    /// The server's view of the cluster: one record per worker, `;`
    /// between records, `name=value` fields within one (see
    /// docs/protocol.md).
    Cluster,
    /// `cluster||ACTION||...` (orchestrators): a change of the cluster's
    /// layout, under the next epoch.
    ChangeCluster(ClusterChange),
}

/// A change of the cluster's layout (docs/operations.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChange {
    /// `replace-worker||OLD||NEW`: `new`, a worker that refilled from
    /// `old`'s partner, takes `old`'s place.
    ReplaceWorker { old: Bytes, new: Bytes },
    /// `add-pair||A||B`: two new, empty workers, partners of each other,
    /// become a pair; the keys it takes over move to it.
    AddPair { a: Bytes, b: Bytes },
    /// `remove-pair||WORKER`: the pair of `worker` leaves once its keys
    /// moved to the other pairs.
    RemovePair { worker: Bytes },
}

impl ClusterChange {
    /// The action's name and its fields, as the text protocol carries them.
    pub fn fields(&self) -> (&'static [u8], Vec<&Bytes>) {
        match self {
            ClusterChange::ReplaceWorker { old, new } => (b"replace-worker", vec![old, new]),
            ClusterChange::AddPair { a, b } => (b"add-pair", vec![a, b]),
            ClusterChange::RemovePair { worker } => (b"remove-pair", vec![worker]),
        }
    }
}

/// The keys a `SCAN … TYPE` lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanType {
    /// No `TYPE`: every key.
    Any,
    String,
    Hash,
    /// A type rcache holds none of (`list`, `set`, …).
    Nothing,
}

/// What a [`Command::Hash`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOp {
    /// `HSET` (replies the fields added) or `HMSET` (`ok`: replies OK).
    Set {
        fields: Vec<(Bytes, Bytes)>,
        ok: bool,
    },
    /// `HSETNX`, `HINCRBY`, `HINCRBYFLOAT`: decided where the hash is.
    Update {
        field: Bytes,
        update: fields::FieldUpdate,
    },
    /// `HDEL`: replies the fields removed.
    Del {
        fields: Vec<Bytes>,
    },
    Get {
        field: Bytes,
    },
    MGet {
        fields: Vec<Bytes>,
    },
    GetAll,
    Exists {
        field: Bytes,
    },
    Len,
    Keys,
    Vals,
    StrLen {
        field: Bytes,
    },
    /// `HRANDFIELD key [count [WITHVALUES]]`: `count` `None` answers one
    /// field (nil for a missing key); negative counts may repeat fields.
    RandField {
        count: Option<i64>,
        with_values: bool,
    },
    /// `HSCAN key cursor [MATCH p] [COUNT n] [NOVALUES]`: every matching
    /// field in one step (next cursor 0), as Redis answers a small hash; a
    /// cursor other than 0 (never given out) finds nothing more.
    Scan {
        cursor: u64,
        pattern: Bytes,
        no_values: bool,
    },
}

impl HashOp {
    /// Whether it changes the hash.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            HashOp::Set { .. } | HashOp::Update { .. } | HashOp::Del { .. }
        )
    }
}

/// What `LCS` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LcsMode {
    /// The subsequence itself.
    Text,
    /// Its length (`LEN`).
    Len,
    /// The matching ranges of both values and the length (`IDX`), ranges
    /// shorter than `min_len` left out, each with its length when
    /// `with_len`.
    Idx { min_len: u64, with_len: bool },
}

/// What `OBJECT` or `MEMORY` asks about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspect {
    /// `int`, `embstr` or `raw`, as Redis would store the string.
    Encoding,
    /// Not tracked (eviction is SIEVE, not LFU): Redis's error.
    Freq,
    /// Always 1.
    RefCount,
    /// Bytes the entry takes in memory.
    MemoryUsage,
}

/// The sections an `INFO` asks for, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoSections(pub u8);

impl InfoSections {
    pub const SERVER: u8 = 1;
    pub const CLIENTS: u8 = 2;
    pub const MEMORY: u8 = 4;
    pub const STATS: u8 = 8;
    pub const KEYSPACE: u8 = 16;
    /// rcache's own figures (pairs, workers up, a worker's state).
    pub const CLUSTER: u8 = 32;
    /// `loading:1` while a worker refills (clients' ready checks wait).
    pub const PERSISTENCE: u8 = 64;
    pub const ALL: InfoSections = InfoSections(127);
    pub const NAMES: [(&'static str, u8); 7] = [
        ("persistence", Self::PERSISTENCE),
        ("server", Self::SERVER),
        ("clients", Self::CLIENTS),
        ("memory", Self::MEMORY),
        ("stats", Self::STATS),
        ("keyspace", Self::KEYSPACE),
        ("rcache", Self::CLUSTER),
    ];

    /// The sections `INFO` names ask for: none named, `default`, `all`
    /// or `everything` ask for all; an unknown name adds nothing.
    pub fn parse(names: &[impl AsRef<[u8]>]) -> InfoSections {
        if names.is_empty() {
            return Self::ALL;
        }
        let mut bits = 0;
        for name in names {
            let name = name.as_ref();
            if [&b"default"[..], b"all", b"everything"]
                .iter()
                .any(|all| name.eq_ignore_ascii_case(all))
            {
                return Self::ALL;
            }
            for (section, bit) in Self::NAMES {
                if name.eq_ignore_ascii_case(section.as_bytes()) {
                    bits |= bit;
                }
            }
        }
        InfoSections(bits)
    }

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// What the client is told of a [`Command::Update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateReply {
    /// The new value as an integer (`INCR`).
    Integer,
    /// The new value (`INCRBYFLOAT`).
    Value,
    /// The new value's length (`APPEND`, `SETRANGE`).
    Length,
    /// The old value, nil if there was none (`GETSET`, `SET … GET`,
    /// `GETDEL`, `GETEX`).
    Old,
    /// 1 if it changed the key, else 0 (`PERSIST`).
    Changed,
    /// `OK`, or nil when the condition did not hold (`SET … KEEPTTL`).
    Stored,
}

/// When an `EXPIRE` applies, given the key's current TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpireWhen {
    #[default]
    Always,
    /// The key has no TTL.
    Nx,
    /// The key has a TTL.
    Xx,
    /// The new TTL is longer (no TTL counts as endless).
    Gt,
    /// The new TTL is shorter.
    Lt,
    /// The key has a TTL and the new one is shorter (`XX LT`).
    XxLt,
}

impl ExpireWhen {
    /// Whether a new TTL of `new_ms` applies over `current_ms` (0: none).
    pub fn holds(self, current_ms: u64, new_ms: u64) -> bool {
        match self {
            ExpireWhen::Always => true,
            ExpireWhen::Nx => current_ms == 0,
            ExpireWhen::Xx => current_ms != 0,
            ExpireWhen::Gt => current_ms != 0 && new_ms > current_ms,
            ExpireWhen::Lt => current_ms == 0 || new_ms < current_ms,
            ExpireWhen::XxLt => current_ms != 0 && new_ms < current_ms,
        }
    }
}

/// The outcome of a [`Command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Value(Bytes),
    /// A status word (`TYPE`'s `string`): `+string` in RESP.
    Status(&'static str),
    /// `set`, `setex`, `del` of a present key, `auth`: success without a result.
    Done,
    Pong,
    /// A conditional set whose condition did not hold: nothing changed.
    NotStored,
    Integer(i64),
    /// One value per key of an `MGET`; `None` for a missing key.
    Values(Vec<Option<Bytes>>),
    /// Nested replies (`SCAN`'s cursor and keys).
    Array(Vec<Reply>),
    /// Names and replies: a map in RESP3, a flat array in RESP2 (`LCS …
    /// IDX`).
    Map(Vec<(&'static str, Reply)>),
    /// Fields and values: a map in RESP3, a flat array in RESP2
    /// (`HGETALL`).
    Pairs(Vec<(Bytes, Bytes)>),
    Error(ErrorReply),
}

/// The longest time to live a command may set: ten years.
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// When an entry a command writes expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This long after the command runs (`EX`, `PX`, `setex`).
    In(Duration),
    /// At this moment of the wall clock, in milliseconds since the Unix
    /// epoch (`EXAT`, `PXAT`): the command layer reads the clock.
    At(u64),
}

impl Expiry {
    /// The time to live left; `wall_ms` reads the wall clock (milliseconds
    /// since the epoch), only for a moment. A moment already past leaves
    /// the shortest one, a millisecond.
    pub fn ttl(self, wall_ms: impl FnOnce() -> u64) -> Duration {
        match self {
            Expiry::In(ttl) => ttl,
            Expiry::At(at) => {
                Duration::from_millis(at.saturating_sub(wall_ms()).clamp(1, MAX_TTL_MS))
            }
        }
    }
}

/// When a [`Command::Set`] stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetWhen {
    #[default]
    Always,
    /// Only if no live entry holds the key (`NX`).
    Absent,
    /// Only if a live entry holds the key (`XX`).
    Present,
}

/// Stable error codes of the text protocol (SPEC: 1–3 fixed, the rest ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorCode {
    /// Missing field, empty key, too long, bad number.
    Parse = 1,
    /// The key does not exist (or expired, or was deleted).
    NotFound = 2,
    /// Unknown command.
    InvalidCommand = 3,
    /// The value holds `\n` or `\r` and cannot travel in the text protocol.
    NotText = 4,
    /// The entry can never fit in the worker's `max_memory`.
    OutOfMemory = 5,
    /// No worker of the key's pair answered: for a write, its outcome is unknown.
    Unavailable = 6,
    /// The worker is refilling from its partner and serves no reads yet.
    Loading = 7,
    /// The server is at `max_connections`; the connection is closed.
    TooManyConnections = 8,
    /// Authentication failed or is required.
    Auth = 9,
    /// A string command on a hash, or a hash command on a string.
    WrongType = 10,
    /// Link only: the key belongs to another pair in the worker's layout
    /// (newer than the sender's): take the layout from the worker and send
    /// the request to the key's pair.
    Moved = 11,
    /// The key is moving to another pair and this moment takes no
    /// requests for it: try again shortly.
    TryAgain = 12,
}

impl ErrorCode {
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    pub fn from_u8(code: u8) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::Parse,
            2 => ErrorCode::NotFound,
            3 => ErrorCode::InvalidCommand,
            4 => ErrorCode::NotText,
            5 => ErrorCode::OutOfMemory,
            6 => ErrorCode::Unavailable,
            7 => ErrorCode::Loading,
            8 => ErrorCode::TooManyConnections,
            9 => ErrorCode::Auth,
            10 => ErrorCode::WrongType,
            11 => ErrorCode::Moved,
            12 => ErrorCode::TryAgain,
            _ => return None,
        })
    }
}

/// An error as the client sees it: a stable code and a short message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
}

impl ErrorReply {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> ErrorReply {
        ErrorReply {
            code,
            message: message.into(),
        }
    }

    pub fn not_found() -> ErrorReply {
        ErrorReply::new(ErrorCode::NotFound, "key not found")
    }

    /// Redis's error for a command of one type on a key of another
    /// (`WRONGTYPE` in RESP).
    pub fn wrong_type() -> ErrorReply {
        ErrorReply::new(
            ErrorCode::WrongType,
            "Operation against a key holding the wrong kind of value",
        )
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code.as_u8(), self.message)
    }
}

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(ErrorReply::new(code, message))
    }

    pub fn not_found() -> Reply {
        Reply::Error(ErrorReply::not_found())
    }

    /// How the request ended, as metrics label it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Reply::Error(e) if e.code == ErrorCode::NotFound => Outcome::NotFound,
            Reply::Error(_) => Outcome::Error,
            _ => Outcome::Ok,
        }
    }
}

/// Keys one multi-key command (`MGET`, `MSET`, `DEL`, `EXISTS`) may name.
pub const MAX_KEYS_PER_COMMAND: usize = 10_000;

impl ErrorReply {
    /// The error for a multi-key read whose values would exceed `budget`
    /// bytes (see [`max_reply_bytes`]).
    pub fn too_large(budget: usize) -> ErrorReply {
        ErrorReply::new(
            ErrorCode::Parse,
            format!("reply larger than {budget} bytes: ask for fewer keys"),
        )
    }
}

/// The largest reply a multi-key read (`MGET`) builds: beyond it the
/// command fails instead of holding more values in memory.
pub fn max_reply_bytes(limits: &Limits) -> usize {
    (64 << 20usize).max(2 * limits.max_value_bytes)
}

/// Size limits every decoder enforces while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_key_bytes: defaults::MAX_KEY_BYTES as usize,
            max_value_bytes: defaults::MAX_VALUE_BYTES as usize,
        }
    }
}
