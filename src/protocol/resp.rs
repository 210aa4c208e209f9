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

use super::{Command, ErrorCode, ErrorReply, Limits, Reply, SetWhen};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::borrow::Cow;
use std::time::Duration;

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
    /// `TTL`: milliseconds rounded to seconds (negative codes unchanged).
    Seconds,
}

/// What one RESP request asks of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespRequest {
    /// Execute against the store or the cluster.
    Run(Command, Shape),
    /// `AUTH [default] <token>`.
    Auth { token: Bytes },
    /// `HELLO [2|3] [AUTH <user> <token>] [SETNAME <name>]`: answered with
    /// the server's description once any token checks out; `version`
    /// switches the connection's replies to RESP2 or RESP3.
    Hello {
        version: Option<u8>,
        token: Option<Bytes>,
    },
    /// `QUIT`: answered `+OK`, then the connection is closed.
    Quit,
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
}

/// A framing error: reply with it, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub Cow<'static, str>);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// Splits a byte stream into RESP requests; remembers how far the request
/// in progress was parsed.
#[derive(Debug)]
pub struct RespDecoder {
    limits: Limits,
    max_request: usize,
    max_bulk: usize,
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    /// Arguments announced by the request's header.
    expected: usize,
    /// (start, end) of each argument parsed so far, in buffer offsets.
    args: Vec<(usize, usize)>,
    /// Where parsing resumes.
    pos: usize,
}

impl RespDecoder {
    pub fn new(limits: Limits) -> RespDecoder {
        RespDecoder {
            limits,
            max_request: max_request_bytes(&limits),
            max_bulk: limits.max_key_bytes.max(limits.max_value_bytes),
            partial: None,
        }
    }

    /// The most bytes one request may take.
    pub fn max_request(&self) -> usize {
        self.max_request
    }

    /// Takes the next request out of `buf`: `Ok(None)` when more bytes are
    /// needed. After an `Err` the connection must be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<RespRequest>, ProtocolError> {
        loop {
            let mut partial = match self.partial.take() {
                Some(p) => p,
                None => {
                    let Some(first) = buf.first() else {
                        return Ok(None);
                    };
                    // Empty lines between requests are skipped, as Redis
                    // does (`redis-cli --pipe` sends one before its last).
                    if *first == b'\r' || *first == b'\n' {
                        let blank = buf
                            .iter()
                            .take_while(|&&b| b == b'\r' || b == b'\n')
                            .count();
                        buf.advance(blank);
                        continue;
                    }
                    if *first != FIRST_BYTE {
                        return Err(ProtocolError(
                            format!("expected '*', got '{}'", printable(*first)).into(),
                        ));
                    }
                    let Some((count, used)) = header(buf, 0)? else {
                        return Ok(None);
                    };
                    if count <= 0 {
                        // An empty request: Redis ignores it.
                        buf.advance(used);
                        continue;
                    }
                    let count = count as usize;
                    // Every argument takes at least 6 bytes (`$0\r\n\r\n`).
                    if count > MAX_ARGS || count.saturating_mul(6) > self.max_request {
                        return Err(ProtocolError("invalid multibulk length".into()));
                    }
                    Partial {
                        expected: count,
                        args: Vec::with_capacity(count.min(64)),
                        pos: used,
                    }
                }
            };
            while partial.args.len() < partial.expected {
                let pos = partial.pos;
                let Some(&marker) = buf.get(pos) else {
                    self.partial = Some(partial);
                    return Ok(None);
                };
                if marker != b'$' {
                    return Err(ProtocolError(
                        format!("expected '$', got '{}'", printable(marker)).into(),
                    ));
                }
                let Some((len, used)) = header(buf, pos)? else {
                    self.partial = Some(partial);
                    return Ok(None);
                };
                if len < 0 || len as usize > self.max_bulk {
                    return Err(ProtocolError("invalid bulk length".into()));
                }
                let len = len as usize;
                let start = pos + used;
                let end = start + len;
                if end + 2 > self.max_request {
                    return Err(ProtocolError(
                        format!("request larger than {} bytes", self.max_request).into(),
                    ));
                }
                if buf.len() < end + 2 {
                    // Room for the whole argument, so it arrives without
                    // the buffer growing step by step.
                    buf.reserve(end + 2 - buf.len());
                    self.partial = Some(partial);
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError("bulk string not followed by CRLF".into()));
                }
                partial.args.push((start, end));
                partial.pos = end + 2;
            }
            let frame = buf.split_to(partial.pos).freeze();
            let args: Vec<Bytes> = partial
                .args
                .iter()
                .map(|&(start, end)| frame.slice(start..end))
                .collect();
            return Ok(Some(parse_command(args, &self.limits)));
        }
    }
}

/// The most bytes one RESP request may take: one maximal key and value
/// plus [`REQUEST_OVERHEAD_BYTES`] (the same bound as the text protocol's
/// line, so a connection never buffers more than one maximal request).
pub fn max_request_bytes(limits: &Limits) -> usize {
    limits.max_key_bytes + limits.max_value_bytes + REQUEST_OVERHEAD_BYTES
}

/// Parses `<marker><integer>\r\n` at `pos`: the number and the bytes used.
fn header(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let window = &buf[pos..buf.len().min(pos + MAX_HEADER_BYTES)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        if window.len() >= MAX_HEADER_BYTES {
            return Err(ProtocolError(
                if buf[pos] == b'*' {
                    "invalid multibulk length"
                } else {
                    "invalid bulk length"
                }
                .into(),
            ));
        }
        return Ok(None);
    };
    let Some(&lf) = window.get(cr + 1) else {
        return Ok(None);
    };
    let bad = || {
        ProtocolError(
            if buf[pos] == b'*' {
                "invalid multibulk length"
            } else {
                "invalid bulk length"
            }
            .into(),
        )
    };
    if lf != b'\n' {
        return Err(bad());
    }
    let number = parse_i64(&window[1..cr]).ok_or_else(bad)?;
    Ok(Some((number, cr + 2)))
}

fn parse_i64(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        b as char
    } else {
        '?'
    }
}

fn error(message: impl Into<Cow<'static, str>>) -> RespRequest {
    RespRequest::Answer(Answer::Error(message.into()))
}

fn wrong_args(name: &str) -> RespRequest {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn too_many_keys() -> RespRequest {
    error(format!(
        "ERR too many keys: at most {} per command",
        super::MAX_KEYS_PER_COMMAND
    ))
}

fn syntax_error() -> RespRequest {
    error("ERR syntax error")
}

fn not_integer() -> RespRequest {
    error("ERR value is not an integer or out of range")
}

/// A command name or argument as it may appear in an error line.
fn shown(arg: &[u8]) -> String {
    let mut s: String = String::from_utf8_lossy(&arg[..arg.len().min(128)])
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if arg.len() > 128 {
        s.push_str("...");
    }
    s
}

fn check_key(key: &Bytes, limits: &Limits) -> Result<(), RespRequest> {
    if key.is_empty() {
        return Err(error("ERR empty keys are not supported"));
    }
    if key.len() > limits.max_key_bytes {
        return Err(error(format!(
            "ERR key longer than {} bytes",
            limits.max_key_bytes
        )));
    }
    Ok(())
}

fn check_value(value: &Bytes, limits: &Limits) -> Result<(), RespRequest> {
    if value.len() > limits.max_value_bytes {
        return Err(error(format!(
            "ERR value longer than {} bytes",
            limits.max_value_bytes
        )));
    }
    Ok(())
}

/// Longest accepted TTL: ten years, as in the text protocol.
const MAX_TTL_MS: i64 = 10 * 365 * 24 * 3600 * 1000;

/// Parses an expiry in `unit_ms` units; `Err` is the reply to give.
fn parse_expiry(arg: &[u8], unit_ms: i64, command: &str) -> Result<i64, RespRequest> {
    let n = parse_i64(arg).ok_or_else(not_integer)?;
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= MAX_TTL_MS)
        .ok_or_else(|| error(format!("ERR invalid expire time in '{command}' command")))
}

/// Turns a request's arguments into what the connection does with it.
pub fn parse_command(mut args: Vec<Bytes>, limits: &Limits) -> RespRequest {
    if args.is_empty() {
        return error("ERR empty command");
    }
    let name_arg = args.remove(0);
    // Lowercased on the stack: every command rcache knows is short ASCII.
    let mut lower = [0u8; 16];
    let name = match lower.get_mut(..name_arg.len()) {
        Some(buf) => {
            buf.copy_from_slice(&name_arg);
            buf.make_ascii_lowercase();
            std::str::from_utf8(buf).unwrap_or("")
        }
        None => "",
    };
    match parse_known(name, &args, limits) {
        Some(request) => request,
        None => {
            let mut line = format!(
                "ERR unknown command '{}', with args beginning with: ",
                shown(&name_arg)
            );
            for arg in args.iter().take(8) {
                line.push_str(&format!("'{}' ", shown(arg)));
            }
            error(line)
        }
    }
}

fn parse_known(name: &str, args: &[Bytes], limits: &Limits) -> Option<RespRequest> {
    let n = args.len();
    let run = |command| RespRequest::Run(command, Shape::Plain);
    let keys = |args: &[Bytes]| -> Result<Vec<Bytes>, RespRequest> {
        if args.len() > super::MAX_KEYS_PER_COMMAND {
            return Err(too_many_keys());
        }
        for key in args {
            check_key(key, limits)?;
        }
        Ok(args.to_vec())
    };
    Some(match name {
        "ping" => match n {
            0 => RespRequest::Answer(Answer::Pong),
            1 => RespRequest::Answer(Answer::Bulk(args[0].clone())),
            _ => wrong_args(name),
        },
        "echo" => match n {
            1 => RespRequest::Answer(Answer::Bulk(args[0].clone())),
            _ => wrong_args(name),
        },
        "get" => match n {
            1 => match check_key(&args[0], limits) {
                Ok(()) => run(Command::Get {
                    key: args[0].clone(),
                }),
                Err(e) => e,
            },
            _ => wrong_args(name),
        },
        "set" => {
            if n < 2 {
                return Some(wrong_args(name));
            }
            parse_set(args, limits).unwrap_or_else(|e| e)
        }
        "setex" | "psetex" => {
            if n != 3 {
                return Some(wrong_args(name));
            }
            let unit = if name == "setex" { 1000 } else { 1 };
            let ms = match parse_expiry(&args[1], unit, name) {
                Ok(ms) if ms > 0 => ms,
                Ok(_) => {
                    return Some(error(format!(
                        "ERR invalid expire time in '{name}' command"
                    )))
                }
                Err(e) => return Some(e),
            };
            if let Err(e) = check_key(&args[0], limits).and(check_value(&args[2], limits)) {
                return Some(e);
            }
            run(Command::Set {
                key: args[0].clone(),
                value: args[2].clone(),
                ttl: Some(Duration::from_millis(ms as u64)),
                when: SetWhen::Always,
            })
        }
        "setnx" => {
            if n != 2 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits).and(check_value(&args[1], limits)) {
                return Some(e);
            }
            RespRequest::Run(
                Command::Set {
                    key: args[0].clone(),
                    value: args[1].clone(),
                    ttl: None,
                    when: SetWhen::Absent,
                },
                Shape::Stored,
            )
        }
        "del" | "unlink" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            match keys(args) {
                Ok(keys) => run(Command::DelMany { keys }),
                Err(e) => e,
            }
        }
        "exists" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            match keys(args) {
                Ok(keys) => run(Command::Exists { keys }),
                Err(e) => e,
            }
        }
        "mget" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            match keys(args) {
                Ok(keys) => run(Command::MGet { keys }),
                Err(e) => e,
            }
        }
        "mset" => {
            if n == 0 || n % 2 != 0 {
                return Some(wrong_args(name));
            }
            if n / 2 > super::MAX_KEYS_PER_COMMAND {
                return Some(too_many_keys());
            }
            let mut entries = Vec::with_capacity(n / 2);
            for pair in args.chunks_exact(2) {
                let (key, value) = (&pair[0], &pair[1]);
                if let Err(e) = check_key(key, limits).and(check_value(value, limits)) {
                    return Some(e);
                }
                entries.push((key.clone(), value.clone()));
            }
            run(Command::MSet { entries })
        }
        "expire" | "pexpire" => {
            if n != 2 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits) {
                return Some(e);
            }
            let unit = if name == "expire" { 1000 } else { 1 };
            match parse_expiry(&args[1], unit, name) {
                // Redis deletes a key given a TTL in the past.
                Ok(ms) if ms <= 0 => run(Command::DelMany {
                    keys: vec![args[0].clone()],
                }),
                Ok(ms) => run(Command::Expire {
                    key: args[0].clone(),
                    ttl: Duration::from_millis(ms as u64),
                }),
                Err(e) => e,
            }
        }
        "ttl" | "pttl" => {
            if n != 1 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits) {
                return Some(e);
            }
            let shape = if name == "ttl" {
                Shape::Seconds
            } else {
                Shape::Plain
            };
            RespRequest::Run(
                Command::Ttl {
                    key: args[0].clone(),
                },
                shape,
            )
        }
        "dbsize" => match n {
            0 => run(Command::DbSize),
            _ => wrong_args(name),
        },
        "info" => run(Command::Info),
        "auth" => match n {
            1 => RespRequest::Auth {
                token: args[0].clone(),
            },
            2 if args[0].eq_ignore_ascii_case(b"default") => RespRequest::Auth {
                token: args[1].clone(),
            },
            2 => error("WRONGPASS invalid username-password pair or user is disabled."),
            _ => wrong_args(name),
        },
        "hello" => parse_hello(args),
        "quit" => RespRequest::Quit,
        "select" => match n {
            1 => match parse_i64(&args[0]) {
                Some(0) => RespRequest::Answer(Answer::Ok),
                Some(_) => error("ERR DB index is out of range"),
                None => not_integer(),
            },
            _ => wrong_args(name),
        },
        "client" => parse_client(args),
        "config" => parse_config(args),
        "command" => match args.first().map(|a| a.to_ascii_lowercase()) {
            None => RespRequest::Answer(Answer::Array(Vec::new())),
            Some(sub) => match sub.as_slice() {
                b"count" => RespRequest::Answer(Answer::Integer(COMMANDS.len() as i64)),
                b"docs" | b"info" | b"list" => {
                    RespRequest::Answer(Answer::Array(if sub.as_slice() == b"list" {
                        COMMANDS
                            .iter()
                            .map(|c| Bytes::from_static(c.as_bytes()))
                            .collect()
                    } else {
                        Vec::new()
                    }))
                }
                _ => error(format!(
                    "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                    shown(&args[0])
                )),
            },
        },
        _ => return None,
    })
}

/// Every command rcache answers over RESP.
pub const COMMANDS: &[&str] = &[
    "auth", "client", "command", "config", "dbsize", "del", "echo", "exists", "expire", "get",
    "hello", "info", "mget", "mset", "pexpire", "ping", "psetex", "pttl", "quit", "select", "set",
    "setex", "setnx", "ttl", "unlink",
];

fn parse_set(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    let [key, value, options @ ..] = args else {
        return Err(wrong_args("set"));
    };
    let (key, value) = (key.clone(), value.clone());
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    let mut ttl_ms: Option<i64> = None;
    let mut when = SetWhen::Always;
    let mut i = 0;
    while i < options.len() {
        let option = options[i].to_ascii_lowercase();
        match option.as_slice() {
            b"nx" if when == SetWhen::Always => when = SetWhen::Absent,
            b"xx" if when == SetWhen::Always => when = SetWhen::Present,
            b"ex" | b"px" | b"exat" | b"pxat" if ttl_ms.is_none() => {
                let Some(arg) = options.get(i + 1) else {
                    return Err(syntax_error());
                };
                i += 1;
                let ms = match option.as_slice() {
                    b"ex" => parse_expiry(arg, 1000, "set")?,
                    b"px" => parse_expiry(arg, 1, "set")?,
                    absolute => {
                        let unit = if absolute == b"exat" { 1000 } else { 1 };
                        let at = parse_i64(arg)
                            .ok_or_else(not_integer)?
                            .checked_mul(unit)
                            .ok_or_else(|| error("ERR invalid expire time in 'set' command"))?;
                        if at <= 0 {
                            return Err(error("ERR invalid expire time in 'set' command"));
                        }
                        // A moment in the past leaves the shortest TTL:
                        // the entry is gone at once, as in Redis.
                        (at - unix_ms()).clamp(1, MAX_TTL_MS)
                    }
                };
                if ms <= 0 {
                    return Err(error("ERR invalid expire time in 'set' command"));
                }
                ttl_ms = Some(ms);
            }
            b"keepttl" | b"get" => {
                return Err(error(format!(
                    "ERR SET {} is not supported by rcache",
                    shown(&options[i]).to_uppercase()
                )))
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(RespRequest::Run(
        Command::Set {
            key,
            value,
            ttl: ttl_ms.map(|ms| Duration::from_millis(ms as u64)),
            when,
        },
        Shape::Plain,
    ))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn parse_hello(args: &[Bytes]) -> RespRequest {
    let mut token = None;
    let mut rest = args;
    let mut version = None;
    if let Some(asked) = args.first() {
        match parse_i64(asked) {
            Some(v @ (2 | 3)) => version = Some(v as u8),
            Some(_) => return error("NOPROTO unsupported protocol version"),
            None => {
                return error("ERR Protocol version is not an integer or out of range");
            }
        }
        rest = &args[1..];
    }
    let mut i = 0;
    while i < rest.len() {
        let option = rest[i].to_ascii_lowercase();
        match option.as_slice() {
            b"auth" => {
                if i + 2 >= rest.len() {
                    return syntax_error();
                }
                if !rest[i + 1].eq_ignore_ascii_case(b"default") {
                    return error("WRONGPASS invalid username-password pair or user is disabled.");
                }
                token = Some(rest[i + 2].clone());
                i += 3;
            }
            b"setname" if i + 1 < rest.len() => i += 2,
            _ => {
                return error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    shown(&rest[i])
                ))
            }
        }
    }
    RespRequest::Hello { version, token }
}

fn parse_client(args: &[Bytes]) -> RespRequest {
    let Some(sub) = args.first() else {
        return wrong_args("client");
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"setname" | b"setinfo" | b"no-evict" | b"no-touch" | b"reply" => {
            RespRequest::Answer(Answer::Ok)
        }
        b"getname" => RespRequest::Answer(Answer::Nil),
        b"id" => RespRequest::Answer(Answer::Integer(0)),
        b"info" | b"list" => RespRequest::Answer(Answer::Bulk(Bytes::new())),
        _ => error(format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            shown(sub)
        )),
    }
}

fn parse_config(args: &[Bytes]) -> RespRequest {
    let Some(sub) = args.first() else {
        return wrong_args("config");
    };
    match sub.to_ascii_lowercase().as_slice() {
        b"get" => {
            if args.len() < 2 {
                return wrong_args("config|get");
            }
            // What tools ask for (redis-benchmark: save, appendonly): a
            // memory-only cache persists nothing.
            let mut out = Vec::new();
            for pattern in &args[1..] {
                for (name, value) in [("save", ""), ("appendonly", "no")] {
                    if pattern.eq_ignore_ascii_case(name.as_bytes()) || pattern.as_ref() == b"*" {
                        out.push((
                            Bytes::from_static(name.as_bytes()),
                            Bytes::from_static(value.as_bytes()),
                        ));
                    }
                }
            }
            RespRequest::Answer(Answer::Map(out))
        }
        b"set" | b"resetstat" | b"rewrite" => {
            error("ERR rcache is configured by its TOML file, not CONFIG SET")
        }
        _ => error(format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            shown(sub)
        )),
    }
}

fn put_bulk(out: &mut BytesMut, value: &[u8]) {
    out.reserve(value.len() + 16);
    put_header(out, b'$', value.len() as i64);
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, marker: u8, n: i64) {
    out.put_u8(marker);
    // Digits without an allocation: an i64 has at most 20 characters.
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

fn put_error(out: &mut BytesMut, line: &str) {
    out.put_u8(b'-');
    // An error line never breaks the framing.
    for b in line.bytes() {
        out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
    }
    out.put_slice(b"\r\n");
}

/// The reply encoding of a connection: RESP2 unless `HELLO 3` asked for RESP3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    Resp2,
    Resp3,
}

fn put_nil(out: &mut BytesMut, version: Version) {
    out.put_slice(match version {
        Version::Resp2 => b"$-1\r\n",
        Version::Resp3 => b"_\r\n",
    });
}

fn put_map_header(out: &mut BytesMut, pairs: usize, version: Version) {
    match version {
        Version::Resp2 => put_header(out, b'*', 2 * pairs as i64),
        Version::Resp3 => put_header(out, b'%', pairs as i64),
    }
}

/// Appends a reply the decoder gave.
pub fn encode_answer(answer: &Answer, version: Version, out: &mut BytesMut) {
    match answer {
        Answer::Ok => out.put_slice(b"+OK\r\n"),
        Answer::Pong => out.put_slice(b"+PONG\r\n"),
        Answer::Bulk(b) => put_bulk(out, b),
        Answer::Nil => put_nil(out, version),
        Answer::Integer(n) => put_header(out, b':', *n),
        Answer::Array(items) => {
            put_header(out, b'*', items.len() as i64);
            for item in items {
                put_bulk(out, item);
            }
        }
        Answer::Map(pairs) => {
            put_map_header(out, pairs.len(), version);
            for (name, value) in pairs {
                put_bulk(out, name);
                put_bulk(out, value);
            }
        }
        Answer::Error(line) => put_error(out, line),
        Answer::Raw(bytes) => out.put_slice(bytes),
    }
}

/// Appends the reply to a [`RespRequest::Run`] in the shape Redis gives it.
pub fn encode_reply(reply: &Reply, shape: Shape, version: Version, out: &mut BytesMut) {
    match (reply, shape) {
        (Reply::Done, Shape::Stored) => out.put_slice(b":1\r\n"),
        (Reply::NotStored, Shape::Stored) => out.put_slice(b":0\r\n"),
        (Reply::Integer(ms), Shape::Seconds) if *ms >= 0 => {
            put_header(out, b':', (*ms + 500) / 1000)
        }
        (Reply::Value(v), _) => put_bulk(out, v),
        (Reply::Done, _) => out.put_slice(b"+OK\r\n"),
        (Reply::Pong, _) => out.put_slice(b"+PONG\r\n"),
        (Reply::NotStored, _) => put_nil(out, version),
        (Reply::Integer(n), _) => put_header(out, b':', *n),
        (Reply::Values(values), _) => {
            put_header(out, b'*', values.len() as i64);
            for value in values {
                match value {
                    Some(v) => put_bulk(out, v),
                    None => put_nil(out, version),
                }
            }
        }
        (Reply::Error(e), _) if e.code == ErrorCode::NotFound => put_nil(out, version),
        (Reply::Error(e), _) => put_error(out, &error_line(e)),
    }
}

/// A service error as Redis would word its kind.
fn error_line(e: &ErrorReply) -> String {
    let prefix = match e.code {
        ErrorCode::Loading => "LOADING",
        ErrorCode::OutOfMemory => "OOM",
        ErrorCode::Auth => "NOAUTH",
        _ => "ERR",
    };
    format!("{prefix} {}", e.message)
}

/// The answer to `HELLO`: the server's description, a map (a flat array
/// of names and values in RESP2).
pub fn encode_hello(role: &str, version: Version, out: &mut BytesMut) {
    put_map_header(out, 7, version);
    for (name, value) in [("server", "redis"), ("version", REDIS_VERSION)] {
        put_bulk(out, name.as_bytes());
        put_bulk(out, value.as_bytes());
    }
    put_bulk(out, b"proto");
    out.put_slice(match version {
        Version::Resp2 => b":2\r\n",
        Version::Resp3 => b":3\r\n",
    });
    put_bulk(out, b"id");
    out.put_slice(b":0\r\n");
    put_bulk(out, b"mode");
    put_bulk(out, b"standalone");
    put_bulk(out, b"role");
    put_bulk(
        out,
        if role == "worker" {
            b"master".as_slice()
        } else {
            b"proxy".as_slice()
        },
    );
    put_bulk(out, b"modules");
    out.put_slice(b"*0\r\n");
}

/// The text of `INFO`: Redis's section format, with rcache's own fields.
pub fn info_text(role: &str, fields: &[(&str, String)], keys: u64) -> String {
    let mut s = String::new();
    s.push_str("# Server\r\n");
    s.push_str(&format!("redis_version:{REDIS_VERSION}\r\n"));
    s.push_str(&format!("rcache_version:{}\r\n", env!("CARGO_PKG_VERSION")));
    s.push_str(&format!("rcache_role:{role}\r\n"));
    s.push_str("redis_mode:standalone\r\n");
    s.push_str(&format!("process_id:{}\r\n", std::process::id()));
    s.push_str("\r\n# Stats\r\n");
    for (name, value) in fields {
        s.push_str(&format!("{name}:{value}\r\n"));
    }
    s.push_str("\r\n# Keyspace\r\n");
    if keys > 0 {
        s.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
    }
    s
}

/// Encodes a request as a client sends it: an array of bulk strings.
pub fn encode_request(args: &[&[u8]], out: &mut BytesMut) {
    put_header(out, b'*', args.len() as i64);
    for arg in args {
        put_bulk(out, arg);
    }
}

/// A reply as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Status(Bytes),
    Error(Bytes),
    Integer(i64),
    Bulk(Option<Bytes>),
    Array(Option<Vec<Value>>),
}

/// Takes one reply out of `buf` (a client's decoder); `Ok(None)` when more
/// bytes are needed.
pub fn decode_value(buf: &mut BytesMut, max_bulk: usize) -> Result<Option<Value>, String> {
    match parse_value(buf, 0, max_bulk, 0)? {
        None => Ok(None),
        Some((value, used)) => {
            buf.advance(used);
            Ok(Some(value))
        }
    }
}

fn parse_value(
    buf: &[u8],
    pos: usize,
    max_bulk: usize,
    depth: usize,
) -> Result<Option<(Value, usize)>, String> {
    if depth > 8 {
        return Err("replies nested too deep".into());
    }
    let Some(&marker) = buf.get(pos) else {
        return Ok(None);
    };
    let Some(cr) = buf[pos..].iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    if cr == 0 {
        return Err("a reply with no type".into());
    }
    if buf.len() < pos + cr + 2 {
        return Ok(None);
    }
    let line = &buf[pos + 1..pos + cr];
    let after = pos + cr + 2;
    let number = || parse_i64(line).ok_or_else(|| format!("bad number in reply: {line:?}"));
    Ok(match marker {
        b'+' => Some((Value::Status(Bytes::copy_from_slice(line)), after)),
        b'-' => Some((Value::Error(Bytes::copy_from_slice(line)), after)),
        b':' => Some((Value::Integer(number()?), after)),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Value::Bulk(None), after)));
            }
            let len = len as usize;
            if len > max_bulk {
                return Err(format!("bulk reply of {len} bytes is over the limit"));
            }
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            Some((
                Value::Bulk(Some(Bytes::copy_from_slice(&buf[after..after + len]))),
                after + len + 2,
            ))
        }
        b'_' => Some((Value::Bulk(None), after)),
        b'*' | b'%' => {
            let n = number()?;
            if n < 0 {
                return Ok(Some((Value::Array(None), after)));
            }
            // A map's entries are read as a flat array of names and values.
            let n = if marker == b'%' {
                n.checked_mul(2)
                    .ok_or_else(|| "map length out of range".to_string())?
            } else {
                n
            };
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut at = after;
            for _ in 0..n {
                match parse_value(buf, at, max_bulk, depth + 1)? {
                    None => return Ok(None),
                    Some((v, next)) => {
                        items.push(v);
                        at = next;
                    }
                }
            }
            Some((Value::Array(Some(items)), at))
        }
        other => return Err(format!("unknown reply type {:?}", printable(other))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_key_bytes: 16,
            max_value_bytes: 64,
        }
    }

    fn request(args: &[&str]) -> BytesMut {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode_request(&args, &mut out);
        out
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<RespRequest, ProtocolError>> {
        let mut decoder = RespDecoder::new(limits());
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(r)) => out.push(Ok(r)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn commands_decode_byte_by_byte() {
        let mut wire = request(&["SET", "k", "v\r\n\0", "EX", "10", "NX"]);
        wire.extend_from_slice(&request(&["get", "k"]));
        let mut decoder = RespDecoder::new(limits());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(r) = decoder.decode(&mut buf).expect("valid") {
                got.push(r);
            }
        }
        assert_eq!(
            got,
            vec![
                RespRequest::Run(
                    Command::Set {
                        key: b("k"),
                        value: b("v\r\n\0"),
                        ttl: Some(Duration::from_secs(10)),
                        when: SetWhen::Absent,
                    },
                    Shape::Plain
                ),
                RespRequest::Run(Command::Get { key: b("k") }, Shape::Plain),
            ]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn argument_errors_keep_the_connection() {
        let cases: &[(&[&str], &str)] = &[
            (&["GET"], "ERR wrong number of arguments for 'get' command"),
            (
                &["SET", "k", "v", "EX", "x"],
                "ERR value is not an integer or out of range",
            ),
            (
                &["SET", "k", "v", "EX", "0"],
                "ERR invalid expire time in 'set' command",
            ),
            (&["SET", "k", "v", "NX", "XX"], "ERR syntax error"),
            (&["SET", "k", "v", "EX"], "ERR syntax error"),
            (
                &["MSET", "a"],
                "ERR wrong number of arguments for 'mset' command",
            ),
            (&["SELECT", "1"], "ERR DB index is out of range"),
            (&["HELLO", "4"], "NOPROTO unsupported protocol version"),
            (
                &["GET", "a-key-longer-than-16"],
                "ERR key longer than 16 bytes",
            ),
            (
                &["FLUSHALL", "x"],
                "ERR unknown command 'FLUSHALL', with args beginning with: 'x' ",
            ),
        ];
        for (args, line) in cases {
            let mut wire = request(args);
            wire.extend_from_slice(&request(&["PING"]));
            let got = decode_all(&wire);
            assert_eq!(
                got,
                vec![
                    Ok(RespRequest::Answer(Answer::Error(Cow::Owned(
                        line.to_string()
                    )))),
                    Ok(RespRequest::Answer(Answer::Pong)),
                ],
                "{args:?}"
            );
        }
    }

    #[test]
    fn framing_errors_close() {
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$-5\r\n", "invalid bulk length"),
            (b"*1\r\n$100000\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nabc", "bulk string not followed by CRLF"),
            (b"*99999999\r\n", "invalid multibulk length"),
            (b"GET k\r\n", "expected '*', got 'G'"),
            (&[b'*'; 40], "invalid multibulk length"),
        ];
        for (wire, message) in cases {
            let got = decode_all(wire);
            assert_eq!(
                got.last(),
                Some(&Err(ProtocolError(Cow::Borrowed(message)))),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn a_request_never_exceeds_its_bound() {
        let limits = limits();
        let max = max_request_bytes(&limits);
        // Many small arguments adding up past the bound.
        let args: Vec<String> = std::iter::once("MGET".to_string())
            .chain((0..max / 8).map(|i| format!("k{i}")))
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let got = decode_all(&request(&args));
        assert!(matches!(got.last(), Some(Err(_))), "{:?}", got.last());
    }

    #[test]
    fn empty_requests_are_skipped() {
        let mut wire = BytesMut::from(&b"*0\r\n*-1\r\n\r\n\n"[..]);
        wire.extend_from_slice(&request(&["PING"]));
        assert_eq!(
            decode_all(&wire),
            vec![Ok(RespRequest::Answer(Answer::Pong))]
        );
    }

    #[test]
    fn replies_take_redis_shapes() {
        let cases: Vec<(Reply, Shape, &[u8])> = vec![
            (Reply::Value(b("a\r\nb")), Shape::Plain, b"$4\r\na\r\nb\r\n"),
            (Reply::not_found(), Shape::Plain, b"$-1\r\n"),
            (Reply::Done, Shape::Plain, b"+OK\r\n"),
            (Reply::NotStored, Shape::Plain, b"$-1\r\n"),
            (Reply::Done, Shape::Stored, b":1\r\n"),
            (Reply::NotStored, Shape::Stored, b":0\r\n"),
            (Reply::Integer(1499), Shape::Seconds, b":1\r\n"),
            (Reply::Integer(1500), Shape::Seconds, b":2\r\n"),
            (Reply::Integer(-2), Shape::Seconds, b":-2\r\n"),
            (
                Reply::Values(vec![Some(b("x")), None]),
                Shape::Plain,
                b"*2\r\n$1\r\nx\r\n$-1\r\n",
            ),
            (
                Reply::error(ErrorCode::Loading, "refilling"),
                Shape::Plain,
                b"-LOADING refilling\r\n",
            ),
            (
                Reply::error(ErrorCode::Unavailable, "no\nworker"),
                Shape::Plain,
                b"-ERR no worker\r\n",
            ),
        ];
        for (reply, shape, wire) in cases {
            let mut out = BytesMut::new();
            encode_reply(&reply, shape, Version::Resp2, &mut out);
            assert_eq!(&out[..], wire, "{reply:?}");
        }
        let mut out = BytesMut::new();
        encode_reply(
            &Reply::Values(vec![None, Some(b("v"))]),
            Shape::Plain,
            Version::Resp3,
            &mut out,
        );
        encode_reply(&Reply::NotStored, Shape::Plain, Version::Resp3, &mut out);
        encode_answer(
            &Answer::Map(vec![(b("save"), b(""))]),
            Version::Resp3,
            &mut out,
        );
        assert_eq!(
            &out[..],
            b"*2\r\n_\r\n$1\r\nv\r\n_\r\n%1\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn client_decoder_reads_every_reply_type() {
        let mut buf =
            BytesMut::from(&b"+OK\r\n-ERR x\r\n:-3\r\n$-1\r\n*2\r\n$1\r\na\r\n*0\r\n"[..]);
        let mut got = Vec::new();
        while let Some(v) = decode_value(&mut buf, 1024).expect("valid") {
            got.push(v);
        }
        assert_eq!(
            got,
            vec![
                Value::Status(b("OK")),
                Value::Error(b("ERR x")),
                Value::Integer(-3),
                Value::Bulk(None),
                Value::Array(Some(vec![
                    Value::Bulk(Some(b("a"))),
                    Value::Array(Some(vec![]))
                ])),
            ]
        );
    }
}
