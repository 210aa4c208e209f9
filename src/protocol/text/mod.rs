//! The text protocol: one request per `\n`-terminated line, fields split by `||`.
//!
//! [`TextDecoder`] finds lines in a read buffer and never lets one grow past
//! the longest valid request: an over-long line is answered with error 1 as
//! soon as it crosses the limit, and its remaining bytes are discarded up to
//! the next `\n` without being kept. [`encode_reply`] writes one response line.

mod client;
#[cfg(test)]
mod tests;

pub use client::{encode_command, parse_reply};

use super::dialect::{Answered, Decoded, Dialect, Gate};
use super::{
    ClusterChange, Command, ErrorCode, ErrorReply, Expiry, Limits, Op, Outcome, Reply, SetWhen,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;

const SEP: &[u8] = b"||";

/// Bytes a request line may carry beyond its key and value: the longest
/// command name, three separators, a TTL and a `\r`.
const LINE_OVERHEAD_BYTES: usize = 64;

/// Splits a byte stream into requests; keeps state across reads so an
/// over-long line is discarded in pieces.
#[derive(Debug)]
pub struct TextDecoder {
    limits: Limits,
    max_line: usize,
    /// Inside an over-long line whose error was already reported.
    discarding: bool,
}

impl TextDecoder {
    pub fn new(limits: Limits) -> TextDecoder {
        TextDecoder {
            limits,
            max_line: limits.max_key_bytes + limits.max_value_bytes + LINE_OVERHEAD_BYTES,
            discarding: false,
        }
    }

    /// The longest line (without `\n`) this decoder accepts.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Takes the next request out of `buf`.
    ///
    /// `Ok(None)`: more bytes are needed (everything unusable was consumed).
    /// `Err`: the request was malformed; it was consumed and the caller
    /// answers with the error and carries on.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, ErrorReply> {
        loop {
            let newline = memchr(b'\n', buf);
            if self.discarding {
                match newline {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.discarding = false;
                        continue;
                    }
                    None => {
                        buf.clear();
                        return Ok(None);
                    }
                }
            }
            let Some(i) = newline else {
                if buf.len() > self.max_line {
                    buf.clear();
                    self.discarding = true;
                    return Err(too_long(self.max_line));
                }
                return Ok(None);
            };
            let mut line = buf.split_to(i + 1).freeze();
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            if line.len() > self.max_line {
                return Err(too_long(self.max_line));
            }
            return parse_line(line, &self.limits).map(Some);
        }
    }
}

fn too_long(max_line: usize) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Parse,
        format!("request line longer than {max_line} bytes"),
    )
}

/// Parses one line without its terminator.
pub fn parse_line(line: Bytes, limits: &Limits) -> Result<Command, ErrorReply> {
    if line.is_empty() {
        return Err(parse_error("empty request"));
    }
    let (name, rest) = match find(&line, SEP) {
        Some(i) => (line.slice(..i), Some(line.slice(i + SEP.len()..))),
        None => (line.clone(), None),
    };
    let name = name.to_ascii_lowercase();
    match name.as_slice() {
        b"get" => {
            let key = last_key(rest, limits)?;
            Ok(Command::Get { key })
        }
        b"del" => {
            let key = last_key(rest, limits)?;
            Ok(Command::Del { key })
        }
        b"set" => {
            let rest = rest.ok_or_else(|| parse_error("missing key"))?;
            let (key, value) = split_field(rest).ok_or_else(|| parse_error("missing value"))?;
            let key = check_key(key, limits)?;
            let value = check_value(value, limits)?;
            Ok(Command::Set {
                key,
                value,
                ttl: None,
                when: SetWhen::Always,
            })
        }
        b"setex" => {
            let rest = rest.ok_or_else(|| parse_error("missing key"))?;
            let (key, rest) = split_field(rest).ok_or_else(|| parse_error("missing ttl"))?;
            let key = check_key(key, limits)?;
            let (ttl, value) = split_field(rest).ok_or_else(|| parse_error("missing value"))?;
            let ttl = parse_ttl(&ttl)?;
            let value = check_value(value, limits)?;
            Ok(Command::Set {
                key,
                value,
                ttl: Some(Expiry::In(ttl)),
                when: SetWhen::Always,
            })
        }
        b"ping" => no_fields(rest, Command::Ping),
        b"exit" => no_fields(rest, Command::Exit),
        b"cluster" => match rest {
            None => Ok(Command::Cluster),
            Some(rest) => {
                const USAGE: &str = "usage: cluster||replace-worker||OLD||NEW, \
                                     cluster||add-pair||A||B or cluster||remove-pair||WORKER";
                let (action, rest) = match split_field(rest.clone()) {
                    Some(split) => split,
                    None => (rest, Bytes::new()),
                };
                let two = |rest: Bytes| split_field(rest).ok_or_else(|| parse_error(USAGE));
                let change = if action.eq_ignore_ascii_case(b"replace-worker") {
                    let (old, new) = two(rest)?;
                    ClusterChange::ReplaceWorker { old, new }
                } else if action.eq_ignore_ascii_case(b"add-pair") {
                    let (a, b) = two(rest)?;
                    ClusterChange::AddPair { a, b }
                } else if action.eq_ignore_ascii_case(b"remove-pair") && !rest.is_empty() {
                    ClusterChange::RemovePair { worker: rest }
                } else {
                    return Err(parse_error(USAGE));
                };
                Ok(Command::ChangeCluster(change))
            }
        },
        b"auth" => {
            let token = rest.ok_or_else(|| parse_error("missing token"))?;
            Ok(Command::Auth { token })
        }
        _ => Err(ErrorReply::new(
            ErrorCode::InvalidCommand,
            "invalid command type",
        )),
    }
}

fn parse_error(message: &'static str) -> ErrorReply {
    ErrorReply::new(ErrorCode::Parse, message)
}

fn no_fields(rest: Option<Bytes>, command: Command) -> Result<Command, ErrorReply> {
    match rest {
        None => Ok(command),
        Some(_) => Err(parse_error("unexpected field")),
    }
}

/// The key of `get`/`del`: the only remaining field.
fn last_key(rest: Option<Bytes>, limits: &Limits) -> Result<Bytes, ErrorReply> {
    let key = rest.ok_or_else(|| parse_error("missing key"))?;
    if find(&key, SEP).is_some() {
        return Err(parse_error("unexpected field"));
    }
    check_key(key, limits)
}

fn check_key(key: Bytes, limits: &Limits) -> Result<Bytes, ErrorReply> {
    if key.is_empty() {
        return Err(parse_error("empty key"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(ErrorReply::new(
            ErrorCode::Parse,
            format!("key longer than {} bytes", limits.max_key_bytes),
        ));
    }
    Ok(key)
}

fn check_value(value: Bytes, limits: &Limits) -> Result<Bytes, ErrorReply> {
    if value.len() > limits.max_value_bytes {
        return Err(ErrorReply::new(
            ErrorCode::Parse,
            format!("value longer than {} bytes", limits.max_value_bytes),
        ));
    }
    Ok(value)
}

/// Longest accepted TTL: ten years, so `now + ttl` never overflows.
const MAX_TTL_SECS: u64 = super::MAX_TTL_MS / 1000;

fn parse_ttl(field: &[u8]) -> Result<Duration, ErrorReply> {
    let bad = || parse_error("ttl must be a whole number of seconds > 0");
    if field.is_empty() || field.len() > 20 || !field.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let secs: u64 = std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// Splits at the first `||`: (field, rest).
fn split_field(bytes: Bytes) -> Option<(Bytes, Bytes)> {
    let i = find(&bytes, SEP)?;
    Some((bytes.slice(..i), bytes.slice(i + SEP.len()..)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn memchr(byte: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == byte)
}

/// Appends the response line for `reply`.
pub fn encode_reply(reply: &Reply, out: &mut BytesMut) {
    match reply {
        Reply::Value(value) => {
            if value.iter().any(|&b| b == b'\n' || b == b'\r') {
                encode_error(
                    &ErrorReply::new(
                        ErrorCode::NotText,
                        "value holds a line break: read it over RESP",
                    ),
                    out,
                );
                return;
            }
            out.reserve(value.len() + 4);
            out.put_slice(b"0||");
            out.put_slice(value);
            out.put_u8(b'\n');
        }
        Reply::Done => out.put_slice(b"0||\n"),
        Reply::Pong => out.put_slice(b"0||pong\n"),
        // Replies to commands only RESP has; written as faithfully as a
        // line allows.
        Reply::NotStored => out.put_slice(b"2||not stored: the condition did not hold\n"),
        Reply::Integer(n) => {
            use std::fmt::Write;
            let _ = writeln!(out, "0||{n}");
        }
        Reply::Status(word) => {
            out.put_slice(b"0||");
            out.put_slice(word.as_bytes());
            out.put_u8(b'\n');
        }
        Reply::Values(_) | Reply::Array(_) | Reply::Map(_) | Reply::Pairs(_) => encode_error(
            &ErrorReply::new(ErrorCode::NotText, "several values: read them over RESP"),
            out,
        ),
        Reply::Error(error) => encode_error(error, out),
    }
}

fn encode_error(error: &ErrorReply, out: &mut BytesMut) {
    use std::fmt::Write;
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{}||", error.code.as_u8());
    // A message never breaks the line it travels on.
    for b in error.message.bytes() {
        out.put_u8(if b == b'\n' || b == b'\r' { b' ' } else { b });
    }
    out.put_u8(b'\n');
}

/// The text protocol as a session speaks it: `auth||<token>` sets the
/// connection's authentication (a wrong token closes it again), `exit`
/// closes the connection without a reply, and a malformed line is answered
/// and the connection stays usable.
#[derive(Debug)]
pub struct TextDialect {
    decoder: TextDecoder,
}

impl TextDialect {
    pub fn new(limits: Limits) -> TextDialect {
        TextDialect {
            decoder: TextDecoder::new(limits),
        }
    }
}

impl Dialect for TextDialect {
    type Request = Command;
    type Reply = Reply;
    type Tag = ();
    type Answer = Reply;

    fn decode(&mut self, buf: &mut BytesMut, gate: &Gate) -> Decoded<Command, (), Reply> {
        match self.decoder.decode(buf) {
            Ok(None) => Decoded::Incomplete,
            Ok(Some(Command::Exit)) => Decoded::Answer(Answered {
                answer: None,
                op: Op::Exit,
                outcome: Outcome::Ok,
                close: true,
            }),
            Ok(Some(Command::Auth { token })) => Decoded::Credential(Some(token)),
            Ok(Some(command)) if !gate.open() => Decoded::Refused(command),
            Ok(Some(command)) => Decoded::Run(command, ()),
            Err(error) => Decoded::Answer(Answered::new(
                Reply::Error(error),
                Op::Invalid,
                Outcome::Error,
            )),
        }
    }

    fn credential(&mut self, accepted: Option<bool>, gate: &mut Gate) -> Answered<Reply> {
        gate.authenticated = accepted == Some(true);
        if gate.authenticated {
            Answered::new(Reply::Done, Op::Auth, Outcome::Ok)
        } else {
            let error = ErrorReply::new(ErrorCode::Auth, "invalid token");
            Answered::new(Reply::Error(error), Op::Auth, Outcome::Error)
        }
    }

    fn refused(&self, op: Op) -> Answered<Reply> {
        let error = ErrorReply::new(
            ErrorCode::Auth,
            "authentication required: send auth||<token> first",
        );
        Answered::new(Reply::Error(error), op, Outcome::Error)
    }

    fn too_large_unauthenticated(&self) -> Answered<Reply> {
        let error = ErrorReply::new(
            ErrorCode::Auth,
            "request too large before authentication: send auth||<token> first",
        );
        Answered::new(Reply::Error(error), Op::Invalid, Outcome::Error).closing()
    }

    fn encode_reply(&self, reply: &Reply, _: (), out: &mut BytesMut) {
        encode_reply(reply, out)
    }

    fn encode_answer(&self, reply: &Reply, out: &mut BytesMut) {
        encode_reply(reply, out)
    }
}
