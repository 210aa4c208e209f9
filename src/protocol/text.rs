//! The text protocol: one request per `\n`-terminated line, fields split by `||`.
//!
//! [`TextDecoder`] finds lines in a read buffer and never lets one grow past
//! the longest valid request: an over-long line is answered with error 1 as
//! soon as it crosses the limit, and its remaining bytes are discarded up to
//! the next `\n` without being kept. [`encode_reply`] writes one response line.

use super::{Command, ErrorCode, ErrorReply, Limits, Reply, SetWhen};
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
                ttl: Some(ttl),
                when: SetWhen::Always,
            })
        }
        b"ping" => no_fields(rest, Command::Ping),
        b"exit" => no_fields(rest, Command::Exit),
        b"cluster" => no_fields(rest, Command::Cluster),
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
const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

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
        Reply::Values(_) => encode_error(
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

/// Encodes `command` as a request line (for clients). Fails when a field
/// cannot travel in the text protocol.
pub fn encode_command(command: &Command, out: &mut BytesMut) -> Result<(), ErrorReply> {
    let check = |field: &[u8], what: &'static str, allow_sep: bool| {
        if field.iter().any(|&b| b == b'\n' || b == b'\r')
            || (!allow_sep && find(field, SEP).is_some())
        {
            Err(ErrorReply::new(
                ErrorCode::Parse,
                format!("{what} cannot hold a line break or `||` in the text protocol"),
            ))
        } else {
            Ok(())
        }
    };
    match command {
        Command::Get { key } => {
            check(key, "key", false)?;
            put_fields(out, &[b"get", key]);
        }
        Command::Del { key } => {
            check(key, "key", false)?;
            put_fields(out, &[b"del", key]);
        }
        Command::Set {
            key,
            value,
            ttl,
            when: SetWhen::Always,
        } => {
            check(key, "key", false)?;
            check(value, "value", true)?;
            match ttl {
                None => put_fields(out, &[b"set", key, value]),
                Some(ttl) => {
                    let secs = ttl.as_secs().max(1).to_string();
                    put_fields(out, &[b"setex", key, secs.as_bytes(), value]);
                }
            }
        }
        Command::Ping => put_fields(out, &[b"ping"]),
        Command::Exit => put_fields(out, &[b"exit"]),
        Command::Cluster => put_fields(out, &[b"cluster"]),
        Command::Auth { token } => {
            check(token, "token", true)?;
            put_fields(out, &[b"auth", token]);
        }
        Command::Set { .. }
        | Command::MGet { .. }
        | Command::MSet { .. }
        | Command::DelMany { .. }
        | Command::Exists { .. }
        | Command::Expire { .. }
        | Command::Ttl { .. }
        | Command::DbSize
        | Command::Info => {
            return Err(ErrorReply::new(
                ErrorCode::InvalidCommand,
                "the text protocol has no such command: use RESP",
            ))
        }
    }
    Ok(())
}

fn put_fields(out: &mut BytesMut, fields: &[&[u8]]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.put_slice(SEP);
        }
        out.put_slice(field);
    }
    out.put_u8(b'\n');
}

/// Parses a response line (without `\n`) as a client reads it.
pub fn parse_reply(line: &[u8]) -> Result<Reply, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let i = find(line, SEP).ok_or_else(|| {
        format!(
            "malformed response line: {:?}",
            String::from_utf8_lossy(line)
        )
    })?;
    let (code, rest) = (&line[..i], &line[i + SEP.len()..]);
    if code == b"0" {
        return Ok(Reply::Value(Bytes::copy_from_slice(rest)));
    }
    let code = std::str::from_utf8(code)
        .ok()
        .and_then(|c| c.parse::<u8>().ok())
        .and_then(ErrorCode::from_u8)
        .ok_or_else(|| {
            format!(
                "unknown response code in {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
    Ok(Reply::Error(ErrorReply::new(
        code,
        String::from_utf8_lossy(rest).into_owned(),
    )))
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

    fn decode_all(input: &[u8]) -> Vec<Result<Command, ErrorCode>> {
        let mut decoder = TextDecoder::new(limits());
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(c)) => out.push(Ok(c)),
                Ok(None) => break,
                Err(e) => out.push(Err(e.code)),
            }
        }
        out
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn decodes_every_command() {
        let got = decode_all(
            b"get||k\nset||k||v\r\nset||k||a||b\ndel||k\nsetex||k||10||v\nping\nexit\nauth||t\nset||k||\n",
        );
        assert_eq!(
            got,
            vec![
                Ok(Command::Get { key: b("k") }),
                Ok(Command::Set {
                    key: b("k"),
                    value: b("v"),
                    ttl: None,
                    when: SetWhen::Always,
                }),
                Ok(Command::Set {
                    key: b("k"),
                    value: b("a||b"),
                    ttl: None,
                    when: SetWhen::Always,
                }),
                Ok(Command::Del { key: b("k") }),
                Ok(Command::Set {
                    key: b("k"),
                    value: b("v"),
                    ttl: Some(Duration::from_secs(10)),
                    when: SetWhen::Always,
                }),
                Ok(Command::Ping),
                Ok(Command::Exit),
                Ok(Command::Auth { token: b("t") }),
                Ok(Command::Set {
                    key: b("k"),
                    value: b(""),
                    ttl: None,
                    when: SetWhen::Always,
                }),
            ]
        );
    }

    #[test]
    fn malformed_requests_get_their_codes() {
        use ErrorCode::*;
        let cases: &[(&[u8], ErrorCode)] = &[
            (b"\n", Parse),
            (b"get\n", Parse),
            (b"get||\n", Parse),
            (b"get||a||b\n", Parse),
            (b"set||k\n", Parse),
            (b"set||||v\n", Parse),
            (b"setex||k||0||v\n", Parse),
            (b"setex||k||-1||v\n", Parse),
            (b"setex||k||abc||v\n", Parse),
            (b"setex||k||10\n", Parse),
            (b"setex||k||99999999999999999999999||v\n", Parse),
            (b"ping||x\n", Parse),
            (b"get||12345678901234567\n", Parse),
            (b"bogus||k\n", InvalidCommand),
            (b"GETX\n", InvalidCommand),
        ];
        for (input, code) in cases {
            assert_eq!(
                decode_all(input),
                vec![Err(*code)],
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn commands_are_case_insensitive() {
        assert_eq!(
            decode_all(b"GET||K\n"),
            vec![Ok(Command::Get { key: b("K") })]
        );
    }

    #[test]
    fn value_over_the_limit_is_refused() {
        let mut line = b"set||k||".to_vec();
        line.extend(std::iter::repeat_n(b'x', 65));
        line.push(b'\n');
        assert_eq!(decode_all(&line), vec![Err(ErrorCode::Parse)]);
    }

    #[test]
    fn partial_line_waits_for_more() {
        let mut decoder = TextDecoder::new(limits());
        let mut buf = BytesMut::from(&b"set||k||va"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"lue\nping\n");
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Command::Set {
                key: b("k"),
                value: b("value"),
                ttl: None,
                when: SetWhen::Always,
            }))
        );
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Command::Ping)));
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn over_long_line_is_reported_once_and_discarded_without_buffering() {
        let mut decoder = TextDecoder::new(limits());
        let max = decoder.max_line();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&vec![b'x'; max + 1]);
        assert_eq!(
            decoder.decode(&mut buf).map_err(|e| e.code),
            Err(ErrorCode::Parse)
        );
        assert!(
            buf.is_empty(),
            "the decoder keeps nothing of an over-long line"
        );
        // More of the same line: silently dropped, nothing kept.
        for _ in 0..10 {
            buf.extend_from_slice(&vec![b'y'; max]);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert!(buf.is_empty());
        }
        // The line ends; the connection is usable again.
        buf.extend_from_slice(b"yyy\nping\n");
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Command::Ping)));
    }

    #[test]
    fn replies_encode_as_the_spec_says() {
        let mut out = BytesMut::new();
        encode_reply(&Reply::Value(b("a||b")), &mut out);
        encode_reply(&Reply::Done, &mut out);
        encode_reply(&Reply::Pong, &mut out);
        encode_reply(&Reply::not_found(), &mut out);
        encode_reply(&Reply::Value(b("two\nlines")), &mut out);
        encode_reply(&Reply::error(ErrorCode::Parse, "bad\nmessage"), &mut out);
        assert_eq!(
            &out[..],
            b"0||a||b\n0||\n0||pong\n2||key not found\n4||value holds a line break: read it over RESP\n1||bad message\n"
        );
    }

    #[test]
    fn commands_round_trip_through_the_encoder() {
        let commands = [
            Command::Get { key: b("k") },
            Command::Set {
                key: b("k"),
                value: b("v||w"),
                ttl: None,
                when: SetWhen::Always,
            },
            Command::Set {
                key: b("k"),
                value: b("v"),
                ttl: Some(Duration::from_secs(7)),
                when: SetWhen::Always,
            },
            Command::Del { key: b("k") },
            Command::Ping,
            Command::Exit,
            Command::Cluster,
        ];
        let mut out = BytesMut::new();
        for c in &commands {
            encode_command(c, &mut out).expect("encodable");
        }
        let got: Vec<_> = decode_all(&out)
            .into_iter()
            .map(|r| r.expect("decodes"))
            .collect();
        assert_eq!(got, commands);
        assert!(encode_command(&Command::Get { key: b("a||b") }, &mut out).is_err());
    }

    #[test]
    fn reply_lines_parse_back() {
        assert_eq!(parse_reply(b"0||v||w"), Ok(Reply::Value(b("v||w"))));
        assert_eq!(parse_reply(b"2||key not found"), Ok(Reply::not_found()));
        assert!(parse_reply(b"garbage").is_err());
        assert!(parse_reply(b"77||x").is_err());
    }

    /// Deterministic garbage never panics the decoder and never grows the buffer.
    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut decoder = TextDecoder::new(limits());
        let mut buf = BytesMut::new();
        for _ in 0..20_000 {
            let n = (next() % 40) as usize;
            for _ in 0..n {
                let r = next();
                let byte = match r % 8 {
                    0 => b'\n',
                    1 => b'|',
                    _ => (r >> 8) as u8,
                };
                buf.put_u8(byte);
            }
            while let Ok(Some(_)) | Err(_) = decoder.decode(&mut buf) {}
            assert!(buf.len() <= decoder.max_line());
        }
    }
}
