//! The client's side of the text protocol: request lines out, response
//! lines in.

use super::{find, SEP};
use crate::protocol::{Command, ErrorCode, ErrorReply, Expiry, Reply, SetWhen};
use bytes::{BufMut, Bytes, BytesMut};

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
                Some(Expiry::At(_)) => {
                    return Err(ErrorReply::new(
                        ErrorCode::Parse,
                        "an expiry at a moment cannot travel in the text protocol: send a TTL",
                    ))
                }
                Some(Expiry::In(ttl)) => {
                    let secs = ttl.as_secs().max(1).to_string();
                    put_fields(out, &[b"setex", key, secs.as_bytes(), value]);
                }
            }
        }
        Command::Ping => put_fields(out, &[b"ping"]),
        Command::Exit => put_fields(out, &[b"exit"]),
        Command::Cluster => put_fields(out, &[b"cluster"]),
        Command::ChangeCluster(change) => {
            let (action, workers) = change.fields();
            let mut fields: Vec<&[u8]> = vec![b"cluster", action];
            for w in workers {
                check(w, "worker", false)?;
                fields.push(w);
            }
            put_fields(out, &fields);
        }
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
        | Command::ExpireTime { .. }
        | Command::Update { .. }
        | Command::GetRange { .. }
        | Command::StrLen { .. }
        | Command::MSetNx { .. }
        | Command::Type { .. }
        | Command::Rename { .. }
        | Command::Copy { .. }
        | Command::Scan { .. }
        | Command::Hash { .. }
        | Command::Keys { .. }
        | Command::RandomKey
        | Command::Flush
        | Command::DbSize
        | Command::Info { .. }
        | Command::Inspect { .. }
        | Command::Lcs { .. } => {
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
