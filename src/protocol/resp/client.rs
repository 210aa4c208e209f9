//! The client's side of RESP: requests out, replies in.

use super::frame::{parse_i64, printable};
use super::reply::{put_bulk, put_header};
use bytes::{Buf, Bytes, BytesMut};

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
