//! What a request was and how it ended, as metrics and logs label it:
//! every dialect names its requests and control messages with these.

/// Kinds of requests, as the `command` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Op {
    Get,
    Set,
    Del,
    Ping,
    Auth,
    Cluster,
    Exit,
    MGet,
    MSet,
    Exists,
    Expire,
    Ttl,
    DbSize,
    Info,
    /// `INCR`, `INCRBY`, `DECR`, `DECRBY`, `INCRBYFLOAT`.
    Incr,
    /// `SCAN`, `KEYS`, `RANDOMKEY` (and the link's walk of a worker's keys).
    Scan,
    /// `FLUSHDB`, `FLUSHALL`.
    Flush,
    /// The other read-modify-writes of a string (`APPEND`, `SETRANGE`,
    /// `GETSET`, `SET … GET`, `GETDEL`, `GETEX`, `PERSIST`).
    Update,
    /// Reads of a hash (`HGET`, `HGETALL`, `HSCAN`, …).
    HRead,
    /// Writes of a hash (`HSET`, `HDEL`, `HINCRBY`, …).
    HWrite,
    /// Connection housekeeping of Redis clients (`HELLO`, `SELECT`,
    /// `CLIENT`, `CONFIG`, `COMMAND`, `ECHO`, `QUIT`).
    Other,
    /// Link requests between daemons.
    Meta,
    Status,
    Refill,
    AntiEntropy,
    /// A request that could not be parsed.
    Invalid,
}

impl Op {
    pub const ALL: [Op; 26] = [
        Op::Get,
        Op::Set,
        Op::Del,
        Op::Ping,
        Op::Auth,
        Op::Cluster,
        Op::Exit,
        Op::MGet,
        Op::MSet,
        Op::Exists,
        Op::Expire,
        Op::Ttl,
        Op::DbSize,
        Op::Info,
        Op::Incr,
        Op::Update,
        Op::Scan,
        Op::Flush,
        Op::HRead,
        Op::HWrite,
        Op::Other,
        Op::Meta,
        Op::Status,
        Op::Refill,
        Op::AntiEntropy,
        Op::Invalid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Del => "del",
            Op::Ping => "ping",
            Op::Auth => "auth",
            Op::Cluster => "cluster",
            Op::Exit => "exit",
            Op::MGet => "mget",
            Op::MSet => "mset",
            Op::Exists => "exists",
            Op::Expire => "expire",
            Op::Ttl => "ttl",
            Op::DbSize => "dbsize",
            Op::Info => "info",
            Op::Incr => "incr",
            Op::Update => "update",
            Op::Scan => "scan",
            Op::Flush => "flush",
            Op::HRead => "hread",
            Op::HWrite => "hwrite",
            Op::Other => "other",
            Op::Meta => "meta",
            Op::Status => "status",
            Op::Refill => "refill",
            Op::AntiEntropy => "anti_entropy",
            Op::Invalid => "invalid",
        }
    }
}

/// How a request ended, as the `result` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    Ok = 0,
    NotFound = 1,
    Error = 2,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::NotFound, Outcome::Error];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}
