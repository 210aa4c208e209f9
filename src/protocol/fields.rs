//! A hash's fields as one stored value, with a version per field, so that
//! replicas converge field by field rather than value by value: two
//! `HSET`s of different fields, decided by different orchestrators, both
//! survive wherever they land first.
//!
//! A [`Fields`] holds a *base* (the version of the whole-key write the hash
//! started after: a `DEL`, a `SET` it replaced, a flush) and, per field,
//! the version of its last write and its value, or `None` for a deleted
//! field (kept so that an older write of it cannot come back). Nothing at
//! or below the base is kept.
//!
//! [`Fields::merge`] is commutative, associative and idempotent: any two
//! replicas that have seen the same writes hold the same fields, in any
//! order of arrival, and encode to the same bytes ([`Fields::encode`] is
//! canonical), so a digest of the bytes compares them.
//!
//! # Encoding
//! Little endian: the base (u64), the number of fields (u32), then per
//! field in byte order of the names: the name's length (u32), the name, the
//! version (u64), the value's length (u32; `u32::MAX` for a deleted field)
//! and the value.

use crate::protocol::{ErrorCode, ErrorReply};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;

/// A field's last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub version: u64,
    /// `None`: deleted.
    pub value: Option<Bytes>,
}

impl Field {
    /// Whether `self` wins over `other`: the newer version, and of one
    /// version a value over a deletion, then the larger value (any fixed
    /// order does; this one matches the store's for whole values).
    fn beats(&self, other: &Field) -> bool {
        (self.version, &self.value) > (other.version, &other.value)
    }
}

/// A hash's fields with their versions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    base: u64,
    fields: BTreeMap<Bytes, Field>,
}

/// Bytes that are not a canonical encoding of [`Fields`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed hash value: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

const DELETED: u32 = u32::MAX;

impl Fields {
    /// No fields, after a whole-key write of version `base`.
    pub fn after(base: u64) -> Fields {
        Fields {
            base,
            fields: BTreeMap::new(),
        }
    }

    pub fn base(&self) -> u64 {
        self.base
    }

    /// The newest version it holds: the base or a field's.
    pub fn version(&self) -> u64 {
        self.fields
            .values()
            .map(|f| f.version)
            .fold(self.base, u64::max)
    }

    /// A field's last write, a deletion included.
    pub fn field(&self, name: &[u8]) -> Option<&Field> {
        self.fields.get(name)
    }

    /// A field's value (`None` when missing or deleted).
    pub fn get(&self, name: &[u8]) -> Option<&Bytes> {
        self.fields.get(name)?.value.as_ref()
    }

    /// The live fields and their values, in byte order of the names.
    pub fn live(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.fields
            .iter()
            .filter_map(|(name, f)| Some((name, f.value.as_ref()?)))
    }

    /// How many fields are live.
    pub fn len(&self) -> usize {
        self.live().count()
    }

    /// No field is live (the hash reads as missing).
    pub fn is_empty(&self) -> bool {
        self.live().next().is_none()
    }

    /// Every field it holds, deleted ones included.
    pub fn all(&self) -> impl Iterator<Item = (&Bytes, &Field)> {
        self.fields.iter()
    }

    /// Writes `field` of `name` unless what is there beats it or it is at
    /// or below the base; whether it changed anything.
    pub fn write(&mut self, name: Bytes, field: Field) -> bool {
        if field.version <= self.base {
            return false;
        }
        match self.fields.get_mut(&name) {
            Some(held) if !field.beats(held) => false,
            Some(held) => {
                *held = field;
                true
            }
            None => {
                self.fields.insert(name, field);
                true
            }
        }
    }

    /// Raises the base to `base` (a whole-key write of that version),
    /// dropping the fields it covers; whether it changed anything.
    pub fn rebase(&mut self, base: u64) -> bool {
        if base <= self.base {
            return false;
        }
        self.base = base;
        self.fields.retain(|_, f| f.version > base);
        true
    }

    /// Takes in everything `other` holds; whether `self` changed.
    pub fn merge(&mut self, other: &Fields) -> bool {
        let mut changed = self.rebase(other.base);
        for (name, field) in &other.fields {
            changed |= self.write(name.clone(), field.clone());
        }
        changed
    }

    /// Writes of one version, one per field: a value (`HSET`) or a
    /// deletion (`HDEL`); a field named twice keeps its last write.
    pub fn writes(
        version: u64,
        writes: impl IntoIterator<Item = (Bytes, Option<Bytes>)>,
    ) -> Fields {
        let mut fields = BTreeMap::new();
        for (name, value) in writes {
            fields.insert(name, Field { version, value });
        }
        Fields { base: 0, fields }
    }

    /// [`Fields::encode`] into a buffer of its own.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out.into()
    }

    /// The bytes [`Fields::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        12 + self
            .fields
            .iter()
            .map(|(name, f)| 16 + name.len() + f.value.as_ref().map_or(0, |v| v.len()))
            .sum::<usize>()
    }

    /// The canonical bytes (see the module's documentation).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&(self.fields.len() as u32).to_le_bytes());
        for (name, f) in &self.fields {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&f.version.to_le_bytes());
            match &f.value {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&DELETED.to_le_bytes()),
            }
        }
    }

    /// Reads a canonical encoding: names in strictly increasing order,
    /// every field above the base, nothing after the last field.
    pub fn decode(bytes: &Bytes) -> Result<Fields, Malformed> {
        let mut r = Reader { bytes, at: 0 };
        let base = r.u64()?;
        let count = r.u32()? as usize;
        // Each field takes at least 16 bytes: a count past that is a lie.
        if count > (bytes.len() - r.at) / 16 {
            return Err(Malformed("more fields announced than the bytes hold"));
        }
        let mut fields = BTreeMap::new();
        let mut last: Option<Bytes> = None;
        for _ in 0..count {
            let len = r.u32()? as usize;
            let name = r.take(len)?;
            if last.as_ref().is_some_and(|l| *l >= name) {
                return Err(Malformed("field names out of order"));
            }
            let version = r.u64()?;
            if version <= base {
                return Err(Malformed("a field at or below the base"));
            }
            let value = match r.u32()? {
                DELETED => None,
                len => Some(r.take(len as usize)?),
            };
            last = Some(name.clone());
            fields.insert(name, Field { version, value });
        }
        if r.at != bytes.len() {
            return Err(Malformed("bytes after the last field"));
        }
        Ok(Fields { base, fields })
    }
}

/// A read-modify-write of one field, decided where the hash is
/// (`HINCRBY`, `HINCRBYFLOAT`, `HSETNX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldUpdate {
    IncrBy(i64),
    /// The increment's bits (`f64::to_bits`), so the type stays `Eq`.
    IncrByFloat(u64),
    /// Sets the field only if it is missing.
    SetNx(Bytes),
}

impl FieldUpdate {
    /// The field's new value from its current one, or `None` when it
    /// stays as it is (`HSETNX` of a present field); Redis's errors for a
    /// value that is not a number and a result out of range.
    pub fn apply(&self, current: Option<&Bytes>) -> Result<Option<Bytes>, ErrorReply> {
        use crate::protocol::update::{format_float, parse_float, parse_int};
        match self {
            FieldUpdate::IncrBy(by) => {
                let now = match current {
                    None => 0,
                    Some(v) => parse_int(v).ok_or_else(|| {
                        ErrorReply::new(ErrorCode::Parse, "hash value is not an integer")
                    })?,
                };
                let next = now.checked_add(*by).ok_or_else(|| {
                    ErrorReply::new(ErrorCode::Parse, "increment or decrement would overflow")
                })?;
                Ok(Some(next.to_string().into()))
            }
            FieldUpdate::IncrByFloat(bits) => {
                let now = match current {
                    None => 0.0,
                    Some(v) => parse_float(v).ok_or_else(|| {
                        ErrorReply::new(ErrorCode::Parse, "hash value is not a float")
                    })?,
                };
                let next = now + f64::from_bits(*bits);
                if !next.is_finite() {
                    return Err(ErrorReply::new(
                        ErrorCode::Parse,
                        "increment would produce NaN or Infinity",
                    ));
                }
                Ok(Some(format_float(next).into()))
            }
            FieldUpdate::SetNx(value) => Ok(current.is_none().then(|| value.clone())),
        }
    }
}

/// Whether a canonical encoding holds a live field, read without copying
/// (false for bytes that are not one).
pub fn has_live(bytes: &[u8]) -> bool {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(count) = word(8) else {
        return false;
    };
    let mut at = 12usize;
    for _ in 0..count {
        let Some(name) = word(at) else {
            return false;
        };
        at = at
            .saturating_add(4)
            .saturating_add(name as usize)
            .saturating_add(8);
        match word(at) {
            None => return false,
            Some(DELETED) => at += 4,
            Some(_) => return true,
        }
    }
    false
}

struct Reader<'a> {
    bytes: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<Bytes, Malformed> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(Malformed("truncated"))?;
        let taken = self.bytes.slice(self.at..end);
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(&b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zipf::Rng;

    fn set(name: &str, version: u64, value: &str) -> (Bytes, Field) {
        (
            Bytes::copy_from_slice(name.as_bytes()),
            Field {
                version,
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
            },
        )
    }

    fn encoded(f: &Fields) -> Bytes {
        let mut out = Vec::new();
        f.encode(&mut out);
        assert_eq!(out.len(), f.encoded_len());
        out.into()
    }

    #[test]
    fn writes_keep_the_newest_per_field() {
        let mut h = Fields::after(10);
        let (n, f) = set("a", 12, "one");
        assert!(h.write(n, f));
        let (n, f) = set("b", 11, "two");
        assert!(h.write(n, f));
        let (n, f) = set("a", 11, "older");
        assert!(!h.write(n, f), "an older write of a loses");
        let (n, f) = set("c", 9, "below the base");
        assert!(!h.write(n, f));
        assert!(h.write(
            "b".into(),
            Field {
                version: 13,
                value: None
            }
        ));
        assert_eq!(h.get(b"a").map(|v| &v[..]), Some(&b"one"[..]));
        assert_eq!(h.get(b"b"), None, "deleted");
        assert_eq!((h.len(), h.version()), (1, 13));
        assert!(h.rebase(12));
        assert!(h.is_empty(), "a whole-key write at 12 covers a");
        assert_eq!(h.version(), 13, "b's deletion at 13 stays");
    }

    /// Random writes, deletions and rebases applied to replicas in
    /// different orders and merged in different groupings end the same.
    #[test]
    fn merges_converge_in_any_order() {
        for seed in 0..200u64 {
            let mut rng = Rng::new(seed);
            let writes: Vec<Fields> = (0..6)
                .map(|_| {
                    let mut h = Fields::after(rng.below(20));
                    for _ in 0..rng.below(5) {
                        let name = Bytes::from(vec![b'a' + rng.below(4) as u8]);
                        let version = 1 + rng.below(40);
                        let value =
                            (rng.below(3) > 0).then(|| Bytes::from(vec![rng.below(3) as u8]));
                        h.write(name, Field { version, value });
                    }
                    h
                })
                .collect();
            let forward = writes.iter().fold(Fields::default(), |mut acc, w| {
                acc.merge(w);
                acc
            });
            let backward = writes.iter().rev().fold(Fields::default(), |mut acc, w| {
                acc.merge(w);
                acc
            });
            // (w0 ∪ w1 ∪ w2) ∪ (w3 ∪ w4 ∪ w5), grouped another way.
            let (mut left, mut right) = (Fields::default(), Fields::default());
            for w in &writes[..3] {
                left.merge(w);
            }
            for w in &writes[3..] {
                right.merge(w);
            }
            left.merge(&right);
            assert_eq!(forward, backward, "seed {seed}");
            assert_eq!(forward, left, "seed {seed}");
            assert_eq!(encoded(&forward), encoded(&left), "seed {seed}");
            let mut again = forward.clone();
            assert!(
                !again.merge(&forward),
                "seed {seed}: merging twice changes nothing"
            );
            for w in &writes {
                assert!(!again.merge(w), "seed {seed}: a merged write is not news");
            }
            assert_eq!(
                Fields::decode(&encoded(&forward)),
                Ok(forward),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn only_canonical_bytes_decode() {
        let mut h = Fields::after(5);
        h.write(
            "a".into(),
            Field {
                version: 6,
                value: Some("x".into()),
            },
        );
        h.write(
            "b".into(),
            Field {
                version: 7,
                value: None,
            },
        );
        let bytes = encoded(&h);
        assert!(has_live(&bytes));
        assert!(!has_live(&bytes[..25]), "cut before a's value");
        assert_eq!(Fields::decode(&bytes), Ok(h.clone()));
        h.write(
            "a".into(),
            Field {
                version: 8,
                value: None,
            },
        );
        assert!(!has_live(&encoded(&h)), "both deleted");
        let bytes = {
            h.write(
                "a".into(),
                Field {
                    version: 9,
                    value: Some("x".into()),
                },
            );
            h.write(
                "b".into(),
                Field {
                    version: 10,
                    value: None,
                },
            );
            encoded(&h)
        };
        for cut in 0..bytes.len() {
            assert!(Fields::decode(&bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.to_vec();
        trailing.push(0);
        assert!(Fields::decode(&trailing.into()).is_err());
        // The fields swapped: out of order.
        let mut swapped = Vec::new();
        swapped.extend_from_slice(&5u64.to_le_bytes());
        swapped.extend_from_slice(&2u32.to_le_bytes());
        for (name, version) in [(b"b", 7u64), (b"a", 6u64)] {
            swapped.extend_from_slice(&1u32.to_le_bytes());
            swapped.extend_from_slice(name);
            swapped.extend_from_slice(&version.to_le_bytes());
            swapped.extend_from_slice(&DELETED.to_le_bytes());
        }
        assert_eq!(
            Fields::decode(&swapped.into()),
            Err(Malformed("field names out of order"))
        );
        let mut huge = Vec::new();
        huge.extend_from_slice(&0u64.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Fields::decode(&huge.into()).is_err());
    }
}
