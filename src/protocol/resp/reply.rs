//! Replies in the shape Redis gives them, in RESP2 or RESP3.

use super::{Answer, Shape, REDIS_VERSION};
use crate::protocol::{ErrorCode, ErrorReply, Reply};
use bytes::{BufMut, BytesMut};

pub(super) fn put_bulk(out: &mut BytesMut, value: &[u8]) {
    out.reserve(value.len() + 16);
    put_header(out, b'$', value.len() as i64);
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

pub(super) fn put_header(out: &mut BytesMut, marker: u8, n: i64) {
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
        Answer::Status(word) => {
            out.put_u8(b'+');
            out.put_slice(word.as_bytes());
            out.put_slice(b"\r\n");
        }
        Answer::List(items) => {
            put_header(out, b'*', items.len() as i64);
            for item in items {
                encode_answer(item, version, out);
            }
        }
        Answer::Dict(pairs) => {
            put_map_header(out, pairs.len(), version);
            for (name, value) in pairs {
                encode_answer(name, version, out);
                encode_answer(value, version, out);
            }
        }
    }
}

/// Appends the reply to a [`super::RespRequest::Run`] in the shape Redis gives it.
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
        (Reply::Status(word), _) => {
            out.put_u8(b'+');
            out.put_slice(word.as_bytes());
            out.put_slice(b"\r\n");
        }
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
        (Reply::Array(items), _) => {
            put_header(out, b'*', items.len() as i64);
            for item in items {
                encode_reply(item, Shape::Plain, version, out);
            }
        }
        (Reply::Map(pairs), _) => {
            put_map_header(out, pairs.len(), version);
            for (name, item) in pairs {
                put_bulk(out, name.as_bytes());
                encode_reply(item, Shape::Plain, version, out);
            }
        }
        (Reply::Pairs(pairs), _) => {
            put_map_header(out, pairs.len(), version);
            for (name, value) in pairs {
                put_bulk(out, name);
                put_bulk(out, value);
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
        ErrorCode::WrongType => "WRONGTYPE",
        ErrorCode::TryAgain => "TRYAGAIN",
        _ => "ERR",
    };
    format!("{prefix} {}", e.message)
}

/// The answer to `HELLO`: the server's description, a map (a flat array
/// of names and values in RESP2).
pub fn encode_hello(role: &str, version: Version, id: u64, out: &mut BytesMut) {
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
    put_header(out, b':', i64::try_from(id).unwrap_or(i64::MAX));
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
