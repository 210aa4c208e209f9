//! RESP framing: requests (arrays of bulk strings) out of a read buffer,
//! with every length checked before the bytes it announces arrive.

use super::{
    parse_command, ProtocolError, RespRequest, FIRST_BYTE, MAX_ARGS, MAX_HEADER_BYTES,
    REQUEST_OVERHEAD_BYTES,
};
use crate::protocol::Limits;
use bytes::{Buf, Bytes, BytesMut};

/// Splits a byte stream into RESP requests; remembers how far the request
/// in progress was parsed.
#[derive(Debug)]
pub struct RespDecoder {
    limits: Limits,
    max_request: usize,
    max_bulk: usize,
    partial: Option<Partial>,
    /// The last decoded request's command, an index into
    /// [`super::COMMANDS`] (`None`: unknown).
    command: Option<usize>,
    /// The bytes of the last decoded request.
    frame_len: usize,
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
            command: None,
            frame_len: 0,
        }
    }

    /// The command of the request [`RespDecoder::decode`] returned last,
    /// as an index into [`super::COMMANDS`].
    pub fn command(&self) -> Option<usize> {
        self.command
    }

    /// The bytes the request [`RespDecoder::decode`] returned last took.
    pub fn frame_len(&self) -> usize {
        self.frame_len
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
                    // The buffer grows with what arrives, never with what a
                    // header announces (a stranger's 8 MiB bulk costs
                    // nothing until its bytes are here).
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
            self.frame_len = frame.len();
            let args: Vec<Bytes> = partial
                .args
                .iter()
                .map(|&(start, end)| frame.slice(start..end))
                .collect();
            let (request, command) = parse_command(args, &self.limits);
            self.command = command;
            return Ok(Some(request));
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

pub(super) fn parse_i64(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

pub(super) fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        b as char
    } else {
        '?'
    }
}
