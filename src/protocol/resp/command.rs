//! The command grammar: a request's arguments to a [`Command`] or to an
//! answer the decoder gives itself, with Redis's error wording.

use super::frame::parse_i64;
use super::{Answer, RespRequest, Shape};
use crate::protocol::{Command, Expiry, Limits, SetWhen};
use bytes::Bytes;
use std::borrow::Cow;
use std::time::Duration;

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
        crate::protocol::MAX_KEYS_PER_COMMAND
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
const MAX_TTL_MS: i64 = crate::protocol::MAX_TTL_MS as i64;

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
            if n / 2 > crate::protocol::MAX_KEYS_PER_COMMAND {
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
    let mut ttl: Option<Expiry> = None;
    let mut when = SetWhen::Always;
    let mut i = 0;
    while i < options.len() {
        let option = options[i].to_ascii_lowercase();
        match option.as_slice() {
            b"nx" if when == SetWhen::Always => when = SetWhen::Absent,
            b"xx" if when == SetWhen::Always => when = SetWhen::Present,
            b"ex" | b"px" | b"exat" | b"pxat" if ttl.is_none() => {
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
