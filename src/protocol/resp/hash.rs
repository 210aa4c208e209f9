//! The grammar of the hash commands (`HSET` … `HSCAN`), with Redis's
//! error wording.

use super::command::{
    check_key, check_value, error, match_all, not_integer, syntax_error, too_many_keys, wrong_args,
};
use super::{RespRequest, Shape};
use crate::protocol::fields::FieldUpdate;
use crate::protocol::update::{parse_float, parse_int};
use crate::protocol::{Command, HashOp, Limits, MAX_KEYS_PER_COMMAND};
use bytes::Bytes;

/// A hash command's request, `None` when `name` is not one.
pub(super) fn parse(name: &str, args: &[Bytes], limits: &Limits) -> Option<RespRequest> {
    let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_args(name)) };
    let parsed = (|| {
        let n = args.len();
        let op = match name {
            "hset" | "hmset" => {
                arity(n >= 3 && n % 2 == 1)?;
                if n / 2 > MAX_KEYS_PER_COMMAND {
                    return Err(too_many_keys());
                }
                let mut fields = Vec::with_capacity(n / 2);
                for pair in args[1..].chunks(2) {
                    check_value(&pair[0], limits)?;
                    check_value(&pair[1], limits)?;
                    fields.push((pair[0].clone(), pair[1].clone()));
                }
                HashOp::Set {
                    fields,
                    ok: name == "hmset",
                }
            }
            "hsetnx" => {
                arity(n == 3)?;
                check_value(&args[2], limits)?;
                HashOp::Update {
                    field: args[1].clone(),
                    update: FieldUpdate::SetNx(args[2].clone()),
                }
            }
            "hincrby" => {
                arity(n == 3)?;
                let by = parse_int(&args[2]).ok_or_else(not_integer)?;
                HashOp::Update {
                    field: args[1].clone(),
                    update: FieldUpdate::IncrBy(by),
                }
            }
            "hincrbyfloat" => {
                arity(n == 3)?;
                let by = parse_float(&args[2])
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| error("ERR value is not a valid float"))?;
                HashOp::Update {
                    field: args[1].clone(),
                    update: FieldUpdate::IncrByFloat(by.to_bits()),
                }
            }
            "hdel" | "hmget" => {
                arity(n >= 2)?;
                if n > MAX_KEYS_PER_COMMAND {
                    return Err(too_many_keys());
                }
                let fields = args[1..].to_vec();
                if name == "hdel" {
                    HashOp::Del { fields }
                } else {
                    HashOp::MGet { fields }
                }
            }
            "hget" | "hexists" | "hstrlen" => {
                arity(n == 2)?;
                let field = args[1].clone();
                match name {
                    "hget" => HashOp::Get { field },
                    "hexists" => HashOp::Exists { field },
                    _ => HashOp::StrLen { field },
                }
            }
            "hgetall" | "hlen" | "hkeys" | "hvals" => {
                arity(n == 1)?;
                match name {
                    "hgetall" => HashOp::GetAll,
                    "hlen" => HashOp::Len,
                    "hkeys" => HashOp::Keys,
                    _ => HashOp::Vals,
                }
            }
            "hrandfield" => {
                arity((1..=3).contains(&n))?;
                let count = match args.get(1) {
                    Some(c) => Some(parse_int(c).ok_or_else(not_integer)?),
                    None => None,
                };
                let with_values = match args.get(2) {
                    Some(w) if w.eq_ignore_ascii_case(b"withvalues") => true,
                    Some(_) => return Err(syntax_error()),
                    None => false,
                };
                if count.is_some_and(|c| c.unsigned_abs() > MAX_KEYS_PER_COMMAND as u64) {
                    return Err(error(format!(
                        "ERR count out of range: at most {MAX_KEYS_PER_COMMAND} fields"
                    )));
                }
                HashOp::RandField { count, with_values }
            }
            "hscan" => {
                arity(n >= 2)?;
                parse_hscan(&args[1..], limits)?
            }
            _ => return Ok(None),
        };
        check_key(&args[0], limits)?;
        Ok(Some(RespRequest::Run(
            Command::Hash {
                key: args[0].clone(),
                op,
            },
            Shape::Plain,
        )))
    })();
    parsed.unwrap_or_else(Some)
}

/// `cursor [MATCH pattern] [COUNT count] [NOVALUES]`.
fn parse_hscan(args: &[Bytes], limits: &Limits) -> Result<HashOp, RespRequest> {
    let cursor = std::str::from_utf8(&args[0])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| error("ERR invalid cursor"))?;
    let (mut pattern, mut no_values) = (Bytes::new(), false);
    let mut i = 1;
    while i < args.len() {
        let option = args[i].to_ascii_lowercase();
        match (option.as_slice(), args.get(i + 1)) {
            (b"novalues", _) => {
                no_values = true;
                i += 1;
                continue;
            }
            (b"match", Some(value)) => {
                if value.len() > limits.max_key_bytes {
                    return Err(error("ERR pattern longer than max_key_bytes"));
                }
                pattern = match_all(value);
            }
            (b"count", Some(value)) => match parse_int(value) {
                Some(n) if n >= 1 => {}
                Some(_) => return Err(syntax_error()),
                None => return Err(not_integer()),
            },
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    Ok(HashOp::Scan {
        cursor,
        pattern,
        no_values,
    })
}
