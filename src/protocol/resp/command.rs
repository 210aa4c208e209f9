//! The command grammar: a request's arguments to a [`Command`] or to an
//! answer the decoder gives itself, with Redis's error wording.

use super::frame::parse_i64;
use super::{Answer, RespRequest, Shape};
use crate::protocol::update::{parse_float, parse_int};
use crate::protocol::{
    Command, ExpireWhen, Expiry, Inspect, LcsMode, Limits, ScanType, SetWhen, TtlChange, Update,
    UpdateReply,
};
use bytes::Bytes;
use std::borrow::Cow;
use std::time::Duration;

pub(super) fn error(message: impl Into<Cow<'static, str>>) -> RespRequest {
    RespRequest::Answer(Answer::Error(message.into()))
}

pub(super) fn wrong_args(name: &str) -> RespRequest {
    error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

pub(super) fn too_many_keys() -> RespRequest {
    error(format!(
        "ERR too many keys: at most {} per command",
        crate::protocol::MAX_KEYS_PER_COMMAND
    ))
}

pub(super) fn syntax_error() -> RespRequest {
    error("ERR syntax error")
}

pub(super) fn not_integer() -> RespRequest {
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

pub(super) fn check_key(key: &Bytes, limits: &Limits) -> Result<(), RespRequest> {
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

pub(super) fn check_value(value: &Bytes, limits: &Limits) -> Result<(), RespRequest> {
    if value.len() > limits.max_value_bytes {
        return Err(error(format!(
            "ERR value longer than {} bytes",
            limits.max_value_bytes
        )));
    }
    Ok(())
}

/// Longest accepted TTL: ten years, as in the text protocol.
const MAX_TTL_MS: i64 = crate::protocol::MAX_TTL_MS as i64;

/// Parses an expiry in `unit_ms` units; `Err` is the reply to give.
fn parse_expiry(arg: &[u8], unit_ms: i64, command: &str) -> Result<i64, RespRequest> {
    let n = parse_i64(arg).ok_or_else(not_integer)?;
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= MAX_TTL_MS)
        .ok_or_else(|| error(format!("ERR invalid expire time in '{command}' command")))
}

/// Turns a request's arguments into what the connection does with it, and
/// the command's index in [`super::COMMANDS`] when it is one rcache knows.
pub fn parse_command(mut args: Vec<Bytes>, limits: &Limits) -> (RespRequest, Option<usize>) {
    if args.is_empty() {
        return (error("ERR empty command"), None);
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
        Some(request) => (request, super::table::find(name)),
        None => {
            let mut line = format!(
                "ERR unknown command '{}', with args beginning with: ",
                shown(&name_arg)
            );
            for arg in args.iter().take(8) {
                line.push_str(&format!("'{}' ", shown(arg)));
            }
            (error(line), None)
        }
    }
}

fn parse_known(name: &str, args: &[Bytes], limits: &Limits) -> Option<RespRequest> {
    let n = args.len();
    let run = |command| RespRequest::Run(command, Shape::Plain);
    let keys = |args: &[Bytes]| -> Result<Vec<Bytes>, RespRequest> {
        if args.len() > crate::protocol::MAX_KEYS_PER_COMMAND {
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
                ttl: Some(Expiry::In(Duration::from_millis(ms as u64))),
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
            match entries(args, limits) {
                Ok(entries) => run(Command::MSet { entries }),
                Err(e) => e,
            }
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            if n < 2 {
                return Some(wrong_args(name));
            }
            parse_expire(name, args, limits).unwrap_or_else(|e| e)
        }
        "expiretime" | "pexpiretime" => {
            // The moment comes from the TTL left, exact to a millisecond or
            // two: rounded, as TTL is, it gives back the second it was set to.
            let shape = if name == "expiretime" {
                Shape::Seconds
            } else {
                Shape::Plain
            };
            match one_key(name, args, limits) {
                Ok(key) => RespRequest::Run(Command::ExpireTime { key }, shape),
                Err(e) => e,
            }
        }
        "persist" => match one_key(name, args, limits) {
            Ok(key) => run(Command::Update {
                key,
                update: Update::Retime(TtlChange::Clear),
                reply: UpdateReply::Changed,
            }),
            Err(e) => e,
        },
        "type" => match one_key(name, args, limits) {
            Ok(key) => run(Command::Type { key }),
            Err(e) => e,
        },
        "touch" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            match keys(args) {
                Ok(keys) => run(Command::Exists { keys }),
                Err(e) => e,
            }
        }
        "incr" | "decr" => match one_key(name, args, limits) {
            Ok(key) => run(Command::Update {
                key,
                update: Update::IncrBy(if name == "incr" { 1 } else { -1 }),
                reply: UpdateReply::Integer,
            }),
            Err(e) => e,
        },
        "incrby" | "decrby" => {
            if n != 2 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits) {
                return Some(e);
            }
            let Some(by) = parse_int(&args[1]) else {
                return Some(not_integer());
            };
            let by = if name == "incrby" {
                by
            } else {
                match by.checked_neg() {
                    Some(by) => by,
                    None => return Some(error("ERR decrement would overflow")),
                }
            };
            run(Command::Update {
                key: args[0].clone(),
                update: Update::IncrBy(by),
                reply: UpdateReply::Integer,
            })
        }
        "incrbyfloat" => {
            if n != 2 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits) {
                return Some(e);
            }
            match parse_float(&args[1]).and_then(Update::incr_by_float) {
                Some(update) => run(Command::Update {
                    key: args[0].clone(),
                    update,
                    reply: UpdateReply::Value,
                }),
                None => error("ERR value is not a valid float"),
            }
        }
        "append" => match key_value(name, args, limits) {
            Ok((key, value)) => run(Command::Update {
                key,
                update: Update::Append(value),
                reply: UpdateReply::Length,
            }),
            Err(e) => e,
        },
        "getset" => match key_value(name, args, limits) {
            Ok((key, value)) => run(Command::Update {
                key,
                update: Update::Replace {
                    value,
                    ttl: TtlChange::Clear,
                    when: SetWhen::Always,
                },
                reply: UpdateReply::Old,
            }),
            Err(e) => e,
        },
        "getdel" => match one_key(name, args, limits) {
            Ok(key) => run(Command::Update {
                key,
                update: Update::Take,
                reply: UpdateReply::Old,
            }),
            Err(e) => e,
        },
        "getex" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            parse_getex(args, limits).unwrap_or_else(|e| e)
        }
        "strlen" => match one_key(name, args, limits) {
            Ok(key) => run(Command::StrLen { key }),
            Err(e) => e,
        },
        "getrange" | "substr" => {
            if n != 3 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits) {
                return Some(e);
            }
            match (parse_int(&args[1]), parse_int(&args[2])) {
                (Some(start), Some(end)) => run(Command::GetRange {
                    key: args[0].clone(),
                    start,
                    end,
                }),
                _ => not_integer(),
            }
        }
        "setrange" => {
            if n != 3 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits).and(check_value(&args[2], limits)) {
                return Some(e);
            }
            match parse_int(&args[1]) {
                Some(offset) if offset >= 0 => run(Command::Update {
                    key: args[0].clone(),
                    update: Update::SetRange {
                        offset: offset as u64,
                        value: args[2].clone(),
                    },
                    reply: UpdateReply::Length,
                }),
                Some(_) => error("ERR offset is out of range"),
                None => not_integer(),
            }
        }
        "msetnx" => {
            if n == 0 || n % 2 != 0 {
                return Some(wrong_args(name));
            }
            match entries(args, limits) {
                Ok(entries) => run(Command::MSetNx { entries }),
                Err(e) => e,
            }
        }
        "rename" | "renamenx" => {
            if n != 2 {
                return Some(wrong_args(name));
            }
            if let Err(e) = check_key(&args[0], limits).and(check_key(&args[1], limits)) {
                return Some(e);
            }
            run(Command::Rename {
                from: args[0].clone(),
                to: args[1].clone(),
                nx: name == "renamenx",
            })
        }
        "copy" => {
            if n < 2 {
                return Some(wrong_args(name));
            }
            parse_copy(args, limits).unwrap_or_else(|e| e)
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
        "scan" => {
            if n == 0 {
                return Some(wrong_args(name));
            }
            parse_scan(args, limits).unwrap_or_else(|e| e)
        }
        "keys" => match args {
            [pattern] if pattern.len() <= limits.max_key_bytes => run(Command::Keys {
                pattern: match_all(pattern),
            }),
            [_] => error("ERR pattern longer than max_key_bytes"),
            _ => wrong_args(name),
        },
        "randomkey" => match n {
            0 => run(Command::RandomKey),
            _ => wrong_args(name),
        },
        "flushdb" | "flushall" => match args {
            [] => run(Command::Flush),
            [mode] if mode.eq_ignore_ascii_case(b"async") || mode.eq_ignore_ascii_case(b"sync") => {
                run(Command::Flush)
            }
            _ => syntax_error(),
        },
        "dbsize" => match n {
            0 => run(Command::DbSize),
            _ => wrong_args(name),
        },
        "info" => run(Command::Info {
            sections: crate::protocol::InfoSections::parse(args),
        }),
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
        "multi" | "exec" | "discard" if n > 0 => wrong_args(name),
        "multi" => RespRequest::Multi,
        "exec" => RespRequest::Exec,
        "discard" => RespRequest::Discard,
        "watch" if n == 0 => wrong_args(name),
        "watch" => RespRequest::Watch,
        "unwatch" if n > 0 => wrong_args(name),
        "unwatch" => RespRequest::Answer(Answer::Ok),
        "select" => match n {
            1 => match parse_i64(&args[0]) {
                Some(0) => RespRequest::Answer(Answer::Ok),
                Some(_) => error("ERR DB index is out of range"),
                None => not_integer(),
            },
            _ => wrong_args(name),
        },
        "client" => parse_client(args),
        "time" => match n {
            0 => RespRequest::Time,
            _ => wrong_args(name),
        },
        "object" | "memory" => parse_inspect(name, args, limits),
        "lcs" => parse_lcs(args, limits).unwrap_or_else(|e| e),
        "config" => parse_config(args),
        // The answer grows with the names asked for: as many as a command
        // may name keys.
        "command" if n > 1 + crate::protocol::MAX_KEYS_PER_COMMAND => too_many_keys(),
        "command" => {
            let sub = args.first().map(|a| a.to_ascii_lowercase());
            match super::table::answer(sub.as_deref(), args.get(1..).unwrap_or_default()) {
                Some(answer) => RespRequest::Answer(answer),
                None => error(format!(
                    "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                    shown(&args[0])
                )),
            }
        }
        _ => return super::hash::parse(name, args, limits),
    })
}

/// The one key of a command that takes exactly that.
fn one_key(name: &str, args: &[Bytes], limits: &Limits) -> Result<Bytes, RespRequest> {
    let [key] = args else {
        return Err(wrong_args(name));
    };
    check_key(key, limits)?;
    Ok(key.clone())
}

/// The key and value of a command that takes exactly those.
fn key_value(name: &str, args: &[Bytes], limits: &Limits) -> Result<(Bytes, Bytes), RespRequest> {
    let [key, value] = args else {
        return Err(wrong_args(name));
    };
    check_key(key, limits)?;
    check_value(value, limits)?;
    Ok((key.clone(), value.clone()))
}

/// Keys and values in turn (`MSET`, `MSETNX`); the count is even.
fn entries(args: &[Bytes], limits: &Limits) -> Result<Vec<(Bytes, Bytes)>, RespRequest> {
    if args.len() / 2 > crate::protocol::MAX_KEYS_PER_COMMAND {
        return Err(too_many_keys());
    }
    let mut entries = Vec::with_capacity(args.len() / 2);
    for pair in args.chunks_exact(2) {
        let (key, value) = (&pair[0], &pair[1]);
        check_key(key, limits)?;
        check_value(value, limits)?;
        entries.push((key.clone(), value.clone()));
    }
    Ok(entries)
}

/// `EXPIRE`, `PEXPIRE`, `EXPIREAT`, `PEXPIREAT` with `NX|XX|GT|LT`.
fn parse_expire(name: &str, args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    check_key(&args[0], limits)?;
    let unit = if name.starts_with('p') { 1 } else { 1000 };
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in &args[2..] {
        match option.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => return Err(error(format!("ERR Unsupported option {}", shown(option)))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    // GT and LT with XX: GT already asks for a TTL; LT then does too.
    let when = match (nx, xx, gt, lt) {
        (true, ..) => ExpireWhen::Nx,
        (_, _, true, _) => ExpireWhen::Gt,
        (_, true, _, true) => ExpireWhen::XxLt,
        (_, _, _, true) => ExpireWhen::Lt,
        (_, true, ..) => ExpireWhen::Xx,
        _ => ExpireWhen::Always,
    };
    let n = parse_i64(&args[1]).ok_or_else(not_integer)?;
    let invalid = || error(format!("ERR invalid expire time in '{name}' command"));
    let ms = n.checked_mul(unit).ok_or_else(invalid)?;
    let ttl = if name.ends_with("at") {
        // A moment already past deletes the key, as a TTL of zero does.
        if ms <= 0 {
            Expiry::In(Duration::ZERO)
        } else {
            Expiry::At(ms as u64)
        }
    } else if ms > MAX_TTL_MS {
        return Err(invalid());
    } else {
        Expiry::In(Duration::from_millis(ms.max(0) as u64))
    };
    Ok(RespRequest::Run(
        Command::Expire {
            key: args[0].clone(),
            ttl,
            when,
        },
        Shape::Plain,
    ))
}

/// `GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]`.
fn parse_getex(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    let key = args[0].clone();
    check_key(&key, limits)?;
    let ttl = match &args[1..] {
        [] => return Ok(RespRequest::Run(Command::Get { key }, Shape::Plain)),
        [option] if option.eq_ignore_ascii_case(b"persist") => TtlChange::Clear,
        [option, arg] => TtlChange::Set(expiry_option(option, arg, "getex")?),
        _ => return Err(syntax_error()),
    };
    Ok(RespRequest::Run(
        Command::Update {
            key,
            update: Update::Retime(ttl),
            reply: UpdateReply::Old,
        },
        Shape::Plain,
    ))
}

/// One of `EX`, `PX`, `EXAT`, `PXAT` and its argument: a positive time.
fn expiry_option(option: &[u8], arg: &[u8], command: &str) -> Result<Expiry, RespRequest> {
    let invalid = || error(format!("ERR invalid expire time in '{command}' command"));
    let option = option.to_ascii_lowercase();
    let unit = match option.as_slice() {
        b"ex" | b"exat" => 1000,
        b"px" | b"pxat" => 1,
        _ => return Err(syntax_error()),
    };
    let n = parse_i64(arg).ok_or_else(not_integer)?;
    if n <= 0 {
        return Err(invalid());
    }
    if option.ends_with(b"at") {
        let at = n.checked_mul(unit).ok_or_else(invalid)?;
        Ok(Expiry::At(at as u64))
    } else {
        let ms = parse_expiry(arg, unit, command)?;
        Ok(Expiry::In(Duration::from_millis(ms as u64)))
    }
}

/// A pattern as the walk takes it: `*` (every key) as no pattern at all.
pub(super) fn match_all(pattern: &Bytes) -> Bytes {
    if pattern.as_ref() == b"*" {
        Bytes::new()
    } else {
        pattern.clone()
    }
}

/// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
fn parse_scan(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    let cursor = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| error("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut kind) = (Bytes::new(), 10, ScanType::Any);
    for option in args[1..].chunks(2) {
        let [name, value] = option else {
            return Err(syntax_error());
        };
        match name.to_ascii_lowercase().as_slice() {
            b"match" => {
                if value.len() > limits.max_key_bytes {
                    return Err(error("ERR pattern longer than max_key_bytes"));
                }
                pattern = match_all(value);
            }
            b"count" => match parse_int(value) {
                Some(n) if n >= 1 => count = n.min(1_000_000) as usize,
                Some(_) => return Err(syntax_error()),
                None => return Err(not_integer()),
            },
            b"type" => {
                kind = match value.to_ascii_lowercase().as_slice() {
                    b"string" => ScanType::String,
                    b"hash" => ScanType::Hash,
                    _ => ScanType::Nothing,
                }
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(RespRequest::Run(
        Command::Scan {
            cursor,
            pattern,
            count,
            kind,
        },
        Shape::Plain,
    ))
}

/// `COPY source destination [DB 0] [REPLACE]`.
fn parse_copy(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    check_key(&args[0], limits)?;
    check_key(&args[1], limits)?;
    let mut replace = false;
    let mut i = 2;
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        match option.as_slice() {
            b"replace" => replace = true,
            b"db" => {
                match args.get(i + 1).map(|db| parse_i64(db)) {
                    Some(Some(0)) => {}
                    Some(Some(_)) => return Err(error("ERR DB index is out of range")),
                    Some(None) => return Err(not_integer()),
                    None => return Err(syntax_error()),
                }
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(RespRequest::Run(
        Command::Copy {
            from: args[0].clone(),
            to: args[1].clone(),
            replace,
        },
        Shape::Plain,
    ))
}

fn parse_set(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    let [key, value, options @ ..] = args else {
        return Err(wrong_args("set"));
    };
    let (key, value) = (key.clone(), value.clone());
    check_key(&key, limits)?;
    check_value(&value, limits)?;
    let mut ttl: Option<Expiry> = None;
    let mut when = SetWhen::Always;
    let (mut get, mut keep_ttl) = (false, false);
    let mut i = 0;
    while i < options.len() {
        let option = options[i].to_ascii_lowercase();
        match option.as_slice() {
            b"nx" if when == SetWhen::Always => when = SetWhen::Absent,
            b"xx" if when == SetWhen::Always => when = SetWhen::Present,
            b"get" => get = true,
            b"keepttl" if ttl.is_none() => keep_ttl = true,
            b"ex" | b"px" | b"exat" | b"pxat" if ttl.is_none() && !keep_ttl => {
                let Some(arg) = options.get(i + 1) else {
                    return Err(syntax_error());
                };
                i += 1;
                ttl = Some(match option.as_slice() {
                    b"ex" => Expiry::In(relative(parse_expiry(arg, 1000, "set")?)?),
                    b"px" => Expiry::In(relative(parse_expiry(arg, 1, "set")?)?),
                    absolute => {
                        let unit = if absolute == b"exat" { 1000 } else { 1 };
                        let at = parse_i64(arg)
                            .ok_or_else(not_integer)?
                            .checked_mul(unit)
                            .ok_or_else(|| error("ERR invalid expire time in 'set' command"))?;
                        if at <= 0 {
                            return Err(error("ERR invalid expire time in 'set' command"));
                        }
                        Expiry::At(at as u64)
                    }
                });
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    if get || keep_ttl {
        let ttl = match ttl {
            Some(expiry) => TtlChange::Set(expiry),
            None if keep_ttl => TtlChange::Keep,
            None => TtlChange::Clear,
        };
        return Ok(RespRequest::Run(
            Command::Update {
                key,
                update: Update::Replace { value, ttl, when },
                reply: if get {
                    UpdateReply::Old
                } else {
                    UpdateReply::Stored
                },
            },
            Shape::Plain,
        ));
    }
    Ok(RespRequest::Run(
        Command::Set {
            key,
            value,
            ttl,
            when,
        },
        Shape::Plain,
    ))
}

/// A relative expiry of `SET`, which must be positive.
fn relative(ms: i64) -> Result<Duration, RespRequest> {
    if ms <= 0 {
        return Err(error("ERR invalid expire time in 'set' command"));
    }
    Ok(Duration::from_millis(ms as u64))
}

fn parse_hello(args: &[Bytes]) -> RespRequest {
    let mut token = None;
    let mut name = None;
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
            b"setname" if i + 1 < rest.len() => {
                match plain_name(&rest[i + 1]) {
                    Some(n) => name = Some(n),
                    None => return error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ),
                }
                i += 2;
            }
            _ => {
                return error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    shown(&rest[i])
                ))
            }
        }
    }
    RespRequest::Hello {
        version,
        token,
        name,
    }
}

/// Whether `s` may name a client (`CLIENT SETNAME`, `SETINFO`): printable
/// ASCII without spaces, as Redis requires.
fn plain_name(s: &[u8]) -> Option<String> {
    s.iter()
        .all(|b| (b'!'..=b'~').contains(b))
        .then(|| String::from_utf8_lossy(s).into_owned())
}

fn on_off(arg: &[u8]) -> Option<bool> {
    if arg.eq_ignore_ascii_case(b"on") {
        Some(true)
    } else if arg.eq_ignore_ascii_case(b"off") {
        Some(false)
    } else {
        None
    }
}

const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are: ID <client-id>, ADDR <ip:port>, LADDR <ip:port>,",
    "    TYPE normal, USER default, SKIPME (YES|NO), MAXAGE <seconds>.",
    "LIST [TYPE normal] [ID <client-id> [<client-id> ...]]",
    "    Return information about client connections.",
    "NO-EVICT (ON|OFF)",
    "    Accepted; rcache evicts by memory, never a connection.",
    "NO-TOUCH (ON|OFF)",
    "    Accepted; reads do not change what eviction keeps.",
    "REPLY ON",
    "    Accepted (OFF and SKIP are not supported).",
    "SETINFO <LIB-NAME|LIB-VER> <value>",
    "    Set client meta attr.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "HELP",
    "    Print this help.",
];

fn parse_client(args: &[Bytes]) -> RespRequest {
    use super::ClientCall as Call;
    let Some(sub) = args.first() else {
        return wrong_args("client");
    };
    let sub = sub.to_ascii_lowercase();
    let rest = &args[1..];
    let wrong = || {
        wrong_args(&format!(
            "client|{}",
            String::from_utf8_lossy(&sub).into_owned()
        ))
    };
    let call = match (sub.as_slice(), rest) {
        (b"id", []) => Call::Id,
        (b"info", []) => Call::Info,
        (b"getname", []) => Call::GetName,
        (b"list", _) => match parse_client_ids(rest) {
            Ok(ids) => Call::List { ids },
            Err(e) => return e,
        },
        (b"kill", [addr]) => Call::Kill {
            filter: crate::clients::KillFilter {
                addr: Some(String::from_utf8_lossy(addr).into_owned()),
                ..Default::default()
            },
            legacy: true,
        },
        (b"kill", [_, _, ..]) => match parse_kill(rest) {
            Ok(filter) => Call::Kill {
                filter,
                legacy: false,
            },
            Err(e) => return e,
        },
        (b"setname", [name]) => match plain_name(name) {
            Some(name) => Call::SetName(name),
            None => {
                return error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                )
            }
        },
        (b"setinfo", [attribute, value]) => {
            let lib_version = if attribute.eq_ignore_ascii_case(b"lib-ver") {
                true
            } else if attribute.eq_ignore_ascii_case(b"lib-name") {
                false
            } else {
                return error(format!("ERR Unrecognized option '{}'", shown(attribute)));
            };
            match plain_name(value) {
                Some(value) => Call::SetInfo { lib_version, value },
                None => {
                    return error(format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        if lib_version { "lib-ver" } else { "lib-name" }
                    ))
                }
            }
        }
        (b"no-evict", [arg]) => match on_off(arg) {
            Some(on) => Call::NoEvict(on),
            None => return syntax_error(),
        },
        (b"no-touch", [arg]) => match on_off(arg) {
            Some(_) => return RespRequest::Answer(Answer::Ok),
            None => return syntax_error(),
        },
        (b"reply", [arg]) if arg.eq_ignore_ascii_case(b"on") => {
            return RespRequest::Answer(Answer::Ok)
        }
        (b"reply", [arg])
            if arg.eq_ignore_ascii_case(b"off") || arg.eq_ignore_ascii_case(b"skip") =>
        {
            return error("ERR CLIENT REPLY OFF and SKIP are not supported")
        }
        (b"reply", [_]) => return syntax_error(),
        (b"help", []) => {
            return RespRequest::Answer(Answer::List(
                CLIENT_HELP
                    .iter()
                    .map(|line| Answer::Status(line))
                    .collect(),
            ))
        }
        (
            b"id" | b"info" | b"getname" | b"kill" | b"setname" | b"setinfo" | b"no-evict"
            | b"no-touch" | b"reply" | b"help",
            _,
        ) => return wrong(),
        _ => {
            return error(format!(
                "ERR unknown subcommand '{}'. Try CLIENT HELP.",
                shown(&args[0])
            ))
        }
    };
    RespRequest::Client(call)
}

/// `CLIENT LIST`'s options: `None` lists every connection; a type other
/// than `normal` lists none (rcache has no replica or pub/sub clients).
fn parse_client_ids(args: &[Bytes]) -> Result<Option<Vec<u64>>, RespRequest> {
    match args {
        [] => Ok(None),
        [option, kind] if option.eq_ignore_ascii_case(b"type") => match client_type(kind)? {
            true => Ok(None),
            false => Ok(Some(Vec::new())),
        },
        [option, ids @ ..] if option.eq_ignore_ascii_case(b"id") && !ids.is_empty() => {
            // Each connection once, however often it is named: the answer
            // is bounded by the connections, not by the request.
            let mut wanted = std::collections::BTreeSet::new();
            for id in ids {
                match parse_i64(id) {
                    Some(id) if id > 0 => wanted.insert(id as u64),
                    _ => return Err(error("ERR Invalid client ID")),
                };
            }
            Ok(Some(wanted.into_iter().collect()))
        }
        _ => Err(syntax_error()),
    }
}

/// Whether a `TYPE` of `CLIENT LIST`/`KILL` takes in ordinary clients.
fn client_type(kind: &[u8]) -> Result<bool, RespRequest> {
    match kind.to_ascii_lowercase().as_slice() {
        b"normal" => Ok(true),
        b"master" | b"replica" | b"slave" | b"pubsub" => Ok(false),
        _ => Err(error(format!("ERR Unknown client type '{}'", shown(kind)))),
    }
}

fn parse_kill(args: &[Bytes]) -> Result<crate::clients::KillFilter, RespRequest> {
    let mut filter = crate::clients::KillFilter {
        skip_me: true,
        ..Default::default()
    };
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    for pair in args.chunks(2) {
        let [option, value] = pair else {
            return Err(syntax_error());
        };
        match option.to_ascii_lowercase().as_slice() {
            b"id" => match parse_i64(value) {
                Some(id) if id > 0 => filter.id = Some(id as u64),
                _ => return Err(error("ERR client-id should be greater than 0")),
            },
            b"addr" => filter.addr = Some(text(value)),
            b"laddr" => filter.laddr = Some(text(value)),
            b"type" => filter.nobody |= !client_type(value)?,
            b"user" => filter.nobody |= !value.eq_ignore_ascii_case(b"default"),
            b"maxage" => match parse_i64(value) {
                Some(age) if age >= 0 => filter.max_age = Some(age as u64),
                _ => return Err(not_integer()),
            },
            b"skipme" => match value.to_ascii_lowercase().as_slice() {
                b"yes" => filter.skip_me = true,
                b"no" => filter.skip_me = false,
                _ => return Err(syntax_error()),
            },
            _ => return Err(syntax_error()),
        }
    }
    Ok(filter)
}

/// `LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN]`.
fn parse_lcs(args: &[Bytes], limits: &Limits) -> Result<RespRequest, RespRequest> {
    let [a, b, options @ ..] = args else {
        return Err(wrong_args("lcs"));
    };
    check_key(a, limits)?;
    check_key(b, limits)?;
    let (mut len, mut idx, mut with_len, mut min_len) = (false, false, false, 0u64);
    let mut i = 0;
    while i < options.len() {
        match options[i].to_ascii_lowercase().as_slice() {
            b"len" => len = true,
            b"idx" => idx = true,
            b"withmatchlen" => with_len = true,
            b"minmatchlen" => {
                let n = options.get(i + 1).ok_or_else(syntax_error)?;
                // Redis takes a negative length as 0.
                min_len = parse_i64(n).ok_or_else(not_integer)?.max(0) as u64;
                i += 1;
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let mode = match (len, idx) {
        (true, true) => {
            return Err(error(
                "ERR If you want both the length and indexes, please just use IDX.",
            ))
        }
        (true, false) => LcsMode::Len,
        (false, true) => LcsMode::Idx { min_len, with_len },
        (false, false) => LcsMode::Text,
    };
    Ok(RespRequest::Run(
        Command::Lcs {
            a: a.clone(),
            b: b.clone(),
            mode,
        },
        Shape::Plain,
    ))
}

/// `OBJECT` and `MEMORY` about one key.
fn parse_inspect(name: &str, args: &[Bytes], limits: &Limits) -> RespRequest {
    let Some(sub) = args.first() else {
        return wrong_args(name);
    };
    let sub = sub.to_ascii_lowercase();
    let what = match (name, sub.as_slice()) {
        ("object", b"encoding") => Inspect::Encoding,
        ("object", b"freq") => Inspect::Freq,
        ("object", b"refcount") => Inspect::RefCount,
        ("memory", b"usage") => Inspect::MemoryUsage,
        ("object", b"help") | ("memory", b"help") if args.len() == 1 => {
            let lines: &[&'static str] = if name == "object" {
                &[
                    "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "ENCODING <key>",
                    "    Return the kind of internal representation used in order to store the value",
                    "    associated with a <key>.",
                    "FREQ <key>",
                    "    Not tracked: rcache evicts with SIEVE, not LFU.",
                    "REFCOUNT <key>",
                    "    Return the number of references of the value associated with the specified",
                    "    <key> (always 1).",
                ]
            } else {
                &[
                    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                    "USAGE <key> [SAMPLES <count>]",
                    "    Return memory in bytes used by <key> and its value.",
                ]
            };
            return RespRequest::Answer(Answer::List(
                lines.iter().map(|line| Answer::Status(line)).collect(),
            ));
        }
        _ => {
            return error(format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                shown(&args[0]),
                name.to_ascii_uppercase()
            ))
        }
    };
    let key = match (what, &args[1..]) {
        (_, [key]) => key,
        (Inspect::MemoryUsage, [key, option, count]) if option.eq_ignore_ascii_case(b"samples") => {
            if !parse_i64(count).is_some_and(|n| n >= 0) {
                return not_integer();
            }
            key
        }
        (Inspect::MemoryUsage, [_, _, ..]) => return syntax_error(),
        _ => {
            return wrong_args(&format!(
                "{name}|{}",
                String::from_utf8_lossy(&sub).into_owned()
            ))
        }
    };
    if let Err(e) = check_key(key, limits) {
        return e;
    }
    RespRequest::Run(
        Command::Inspect {
            key: key.clone(),
            what,
        },
        Shape::Plain,
    )
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
