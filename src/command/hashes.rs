//! Hash commands: writes of fields go where the hash is (both workers of
//! its pair, merged field by field), reads fetch the hash and answer from
//! its fields here.

use super::Keyspace;
use crate::protocol::fields::{FieldUpdate, Fields};
use crate::protocol::{HashOp, Reply};
use bytes::Bytes;

pub async fn run<K: Keyspace>(ks: &K, key: Bytes, op: HashOp) -> Reply {
    match op {
        HashOp::Set { fields, ok } => {
            let writes = fields.into_iter().map(|(f, v)| (f, Some(v))).collect();
            match ks.write_fields(key, writes).await {
                Ok(_) if ok => Reply::Done,
                Ok((added, _)) => Reply::Integer(i64::from(added)),
                Err(e) => Reply::Error(e),
            }
        }
        HashOp::Del { fields } => {
            let writes = fields.into_iter().map(|f| (f, None)).collect();
            match ks.write_fields(key, writes).await {
                Ok((_, removed)) => Reply::Integer(i64::from(removed)),
                Err(e) => Reply::Error(e),
            }
        }
        HashOp::Update { field, update } => {
            // HSETNX answers whether it set the field, HINCRBY the new
            // integer, HINCRBYFLOAT the new value as a string.
            let (set_nx, integer) = match &update {
                FieldUpdate::SetNx(_) => (true, false),
                FieldUpdate::IncrBy(_) => (false, true),
                FieldUpdate::IncrByFloat(_) => (false, false),
            };
            match ks.update_field(key, field, update).await {
                Err(e) => Reply::Error(e),
                Ok((changed, _)) if set_nx => Reply::Integer(i64::from(changed)),
                Ok((_, Some(v))) if integer => match crate::protocol::update::parse_int(&v) {
                    Some(n) => Reply::Integer(n),
                    None => Reply::Value(v),
                },
                Ok((_, Some(v))) => Reply::Value(v),
                Ok((_, None)) => Reply::not_found(),
            }
        }
        read => {
            let fields = match ks.read_hash(key).await {
                Ok(found) => found.map(|(fields, _)| fields),
                Err(e) => return Reply::Error(e),
            };
            let budget = crate::protocol::max_reply_bytes(&ks.limits());
            bounded(answer(fields.as_ref(), read), budget)
        }
    }
}

/// The answer, or the too-large error when its values pass `budget`
/// bytes: `HMGET` and `HRANDFIELD` may name one large field many times.
fn bounded(reply: Reply, budget: usize) -> Reply {
    let size = |values: &[Option<Bytes>]| -> usize {
        values
            .iter()
            .map(|v| 16 + v.as_ref().map_or(0, |v| v.len()))
            .sum()
    };
    let bytes = match &reply {
        Reply::Values(values) => size(values),
        Reply::Array(parts) => parts
            .iter()
            .map(|p| match p {
                Reply::Values(values) => size(values),
                _ => 16,
            })
            .sum(),
        _ => 0,
    };
    if bytes > budget {
        Reply::Error(crate::protocol::ErrorReply::too_large(budget))
    } else {
        reply
    }
}

/// A read's answer from the hash's fields (`None`: the key is missing).
fn answer(hash: Option<&Fields>, op: HashOp) -> Reply {
    let empty = Fields::default();
    let fields = hash.unwrap_or(&empty);
    let count = |n: usize| Reply::Integer(i64::try_from(n).unwrap_or(i64::MAX));
    match op {
        HashOp::Get { field } => match fields.get(&field) {
            Some(v) => Reply::Value(v.clone()),
            None => Reply::not_found(),
        },
        HashOp::MGet { fields: names } => {
            Reply::Values(names.iter().map(|n| fields.get(n).cloned()).collect())
        }
        HashOp::GetAll => {
            Reply::Pairs(fields.live().map(|(n, v)| (n.clone(), v.clone())).collect())
        }
        HashOp::Exists { field } => count(usize::from(fields.get(&field).is_some())),
        HashOp::Len => count(fields.len()),
        HashOp::Keys => Reply::Values(fields.live().map(|(n, _)| Some(n.clone())).collect()),
        HashOp::Vals => Reply::Values(fields.live().map(|(_, v)| Some(v.clone())).collect()),
        HashOp::StrLen { field } => count(fields.get(&field).map_or(0, |v| v.len())),
        HashOp::RandField {
            count: n,
            with_values,
        } => rand_field(hash, fields, n, with_values),
        HashOp::Scan {
            cursor,
            pattern,
            no_values,
        } => {
            let mut out = Vec::new();
            if cursor == 0 {
                for (name, value) in fields.live() {
                    if pattern.is_empty() || crate::protocol::glob::matches(&pattern, name) {
                        out.push(Some(name.clone()));
                        if !no_values {
                            out.push(Some(value.clone()));
                        }
                    }
                }
            }
            Reply::Array(vec![
                Reply::Value(Bytes::from_static(b"0")),
                Reply::Values(out),
            ])
        }
        // Writes are run above.
        HashOp::Set { .. } | HashOp::Del { .. } | HashOp::Update { .. } => Reply::not_found(),
    }
}

/// `HRANDFIELD`: one field (nil for a missing key), or `count` of them:
/// distinct when positive (all of them when it asks for more), possibly
/// repeated when negative; with their values after each when asked.
fn rand_field(
    hash: Option<&Fields>,
    fields: &Fields,
    count: Option<i64>,
    with_values: bool,
) -> Reply {
    let live: Vec<(&Bytes, &Bytes)> = fields.live().collect();
    let mut rng = crate::zipf::Rng::new(crate::sys::random_u64());
    let Some(count) = count else {
        return match (hash, live.is_empty()) {
            (Some(_), false) => Reply::Value(live[rng.below(live.len() as u64) as usize].0.clone()),
            _ => Reply::not_found(),
        };
    };
    let picked: Vec<(&Bytes, &Bytes)> = if live.is_empty() {
        Vec::new()
    } else if count < 0 {
        (0..count.unsigned_abs())
            .map(|_| live[rng.below(live.len() as u64) as usize])
            .collect()
    } else {
        // A partial Fisher–Yates shuffle: the first `count` are distinct.
        let mut all = live.clone();
        let take = (count as usize).min(all.len());
        for i in 0..take {
            let j = i + rng.below((all.len() - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(take);
        all
    };
    let mut out = Vec::with_capacity(picked.len() * if with_values { 2 } else { 1 });
    for (name, value) in picked {
        out.push(Some(name.clone()));
        if with_values {
            out.push(Some(value.clone()));
        }
    }
    Reply::Values(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fields::Field;

    fn hash(pairs: &[(&str, &str)]) -> Fields {
        let mut h = Fields::default();
        for (i, (n, v)) in pairs.iter().enumerate() {
            h.write(
                Bytes::copy_from_slice(n.as_bytes()),
                Field {
                    version: 1 + i as u64,
                    value: Some(Bytes::copy_from_slice(v.as_bytes())),
                },
            );
        }
        h
    }

    fn values(reply: Reply) -> Vec<String> {
        match reply {
            Reply::Values(v) => v
                .into_iter()
                .map(|v| String::from_utf8_lossy(&v.unwrap_or_default()).into_owned())
                .collect(),
            other => panic!("not values: {other:?}"),
        }
    }

    #[test]
    fn answers_larger_than_the_budget_are_refused() {
        let h = hash(&[("big", &"x".repeat(1000))]);
        let names = vec![Bytes::from_static(b"big"); 100];
        let reply = answer(
            Some(&h),
            HashOp::MGet {
                fields: names.clone(),
            },
        );
        assert!(matches!(bounded(reply.clone(), 200_000), Reply::Values(_)));
        assert!(matches!(bounded(reply, 50_000), Reply::Error(_)));
        let reply = rand_field(Some(&h), &h, Some(-100), true);
        assert!(matches!(bounded(reply, 50_000), Reply::Error(_)));
    }

    #[test]
    fn random_fields_are_distinct_for_a_positive_count_and_may_repeat_for_a_negative_one() {
        let h = hash(&[("a", "1"), ("b", "2"), ("c", "3")]);
        for _ in 0..50 {
            let mut got = values(rand_field(Some(&h), &h, Some(2), false));
            got.sort();
            got.dedup();
            assert_eq!(got.len(), 2, "{got:?}");
            let mut all = values(rand_field(Some(&h), &h, Some(10), false));
            all.sort();
            assert_eq!(all, ["a", "b", "c"]);
            assert_eq!(values(rand_field(Some(&h), &h, Some(-7), false)).len(), 7);
        }
        let with = values(rand_field(Some(&h), &h, Some(-4), true));
        for pair in with.chunks(2) {
            let expected = match pair[0].as_str() {
                "a" => "1",
                "b" => "2",
                _ => "3",
            };
            assert_eq!(pair[1], expected, "{with:?}");
        }
        assert_eq!(
            rand_field(None, &Fields::default(), None, false),
            Reply::not_found()
        );
        assert_eq!(
            values(rand_field(None, &Fields::default(), Some(-3), false)).len(),
            0
        );
    }
}
