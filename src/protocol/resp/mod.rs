//! RESP2, the protocol of Redis clients, on the same port as the text
//! protocol: a connection whose first byte is `*` speaks it.
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`).
//! [`RespDecoder`] takes requests out of a read buffer without ever holding
//! more than one request of the maximal size: the lengths in the headers
//! are checked before the bytes they announce arrive, and parsing resumes
//! where it stopped when more bytes come. A framing error (a header that is
//! not a number, a bulk longer than the limits, anything but `$` inside a
//! request) cannot be resynchronised: the client gets Redis's
//! `-ERR Protocol error: …` and the connection is closed, as Redis does.
//! Anything wrong with a well-framed request (unknown command, wrong
//! arguments, a key over `max_key_bytes`) gets an error reply and the
//! connection stays usable.
//!
//! Commands become the protocol-neutral [`Command`]; [`encode_reply`] gives
//! each reply the shape Redis gives it ([`Shape`]). `HELLO 3` switches a
//! connection to RESP3 replies (nil as `_`, maps as `%`), which the newest
//! clients ask for by default; the requests are the same. Commands that need no
//! data (`ECHO`, `SELECT 0`, `CLIENT SETNAME`, `CONFIG GET`, `COMMAND`) are
//! answered by the decoder itself; `AUTH`, `HELLO` and `QUIT` are left to
//! the connection, which owns the authentication state.

use super::Command;
use bytes::Bytes;
use std::borrow::Cow;

/// The first byte of a RESP request.
pub const FIRST_BYTE: u8 = b'*';

/// Bytes a request may carry beyond one maximal key and value: headers and
/// further small arguments (`EX 10`, several keys of an `MGET`).
pub const REQUEST_OVERHEAD_BYTES: usize = 64 * 1024;

/// The most arguments one request may have (Redis's own limit).
const MAX_ARGS: usize = 1024 * 1024;

/// The longest header line (`*<count>` or `$<length>`) before its `\r\n`.
const MAX_HEADER_BYTES: usize = 32;

/// The Redis version `INFO` and `HELLO` report, so clients that check it
/// enable the commands rcache implements.
pub const REDIS_VERSION: &str = "7.0.0";

/// How a reply is written for the command that asked (Redis gives the same
/// outcome different shapes in different commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Values as bulk strings, `+OK`, integers, arrays; a missing key or a
    /// set whose condition failed is nil.
    Plain,
    /// `SETNX`: `:1` if stored, `:0` if not.
    Stored,
    /// `TTL`, `EXPIRETIME`: milliseconds rounded to seconds (negative
    /// codes unchanged).
    Seconds,
}

/// What one RESP request asks of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespRequest {
    /// Execute against the store or the cluster.
    Run(Command, Shape),
    /// `AUTH [default] <token>`.
    Auth {
        token: Bytes,
    },
    /// `HELLO [2|3] [AUTH <user> <token>] [SETNAME <name>]`: answered with
    /// the server's description once any token checks out; `version`
    /// switches the connection's replies to RESP2 or RESP3.
    Hello {
        version: Option<u8>,
        token: Option<Bytes>,
        name: Option<String>,
    },
    /// `QUIT`: answered `+OK`, then the connection is closed.
    Quit,
    /// A `CLIENT` subcommand about the connections of the daemon.
    Client(ClientCall),
    /// `TIME`: the daemon's wall clock.
    Time,
    /// `MULTI`, `EXEC`, `DISCARD`: commands queued, then run in order.
    Multi,
    Exec,
    Discard,
    /// `WATCH key…`: refused (nothing checks keys at `EXEC`).
    Watch,
    /// Answered at once with this reply.
    Answer(Answer),
}

/// A reply the decoder gives without executing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Ok,
    Pong,
    Bulk(Bytes),
    Nil,
    Integer(i64),
    /// An array of bulk strings.
    Array(Vec<Bytes>),
    /// Names and values: a map in RESP3, a flat array in RESP2.
    Map(Vec<(Bytes, Bytes)>),
    /// A whole error line without the `-` and `\r\n` (`ERR syntax error`).
    Error(Cow<'static, str>),
    /// Bytes already encoded.
    Raw(Bytes),
    /// A status word (`+string`).
    Status(&'static str),
    /// Nested answers.
    List(Vec<Answer>),
    /// Nested names and values: a map in RESP3, a flat array in RESP2.
    Dict(Vec<(Answer, Answer)>),
}

/// The `CLIENT` subcommands that read or change the daemon's table of
/// connections ([`crate::clients`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCall {
    Id,
    /// `CLIENT INFO`: this connection's line.
    Info,
    /// `CLIENT LIST [TYPE normal] [ID id …]`.
    List {
        ids: Option<Vec<u64>>,
    },
    /// `CLIENT KILL addr` (`legacy`: answered `+OK` or an error) or
    /// `CLIENT KILL <filter> <value> …` (answered with the count).
    Kill {
        filter: crate::clients::KillFilter,
        legacy: bool,
    },
    SetName(String),
    GetName,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`.
    SetInfo {
        lib_version: bool,
        value: String,
    },
    NoEvict(bool),
}

/// A framing error: reply with it, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub Cow<'static, str>);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

mod client;
mod command;
mod dialect;
mod frame;
mod hash;
mod reply;
mod table;
#[cfg(test)]
mod tests;

pub use client::{decode_value, encode_request, Value};
pub use command::parse_command;
pub use dialect::RespDialect;
pub use frame::{max_request_bytes, RespDecoder};
pub use reply::{encode_answer, encode_hello, encode_reply, Version};
pub use table::{Info as CommandInfo, TABLE as COMMANDS};
