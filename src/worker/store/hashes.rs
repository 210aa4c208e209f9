//! Hashes in the store: one entry whose value is the hash's fields with a
//! version each ([`Fields`], never compressed), merged field by field under
//! the shard's lock, so replicas converge whatever order the writes of
//! different fields arrive in.
//!
//! An entry's version is the newest it holds (a field's, or a TTL change
//! stamped after them). How a write meets what is there:
//! - fields over a hash: merged ([`Fields::merge`]); the entry keeps the
//!   newer version and, for field writes (`HSET`), its TTL.
//! - fields over a tombstone, an expired entry or a string of version `t`
//!   (a `DEL`, an expiry, a `SET`): the fields newer than `t` make a hash
//!   over it ([`Fields::rebase`]); with none, the write lost to `t`. A
//!   client's field writes over a live string are the wrong type.
//! - a string or tombstone of version `t` over a hash newer than `t`: the
//!   hash loses its fields up to `t` and stays, and the write lost (the
//!   orchestrator stamps it again above the hash, and then it replaces it
//!   whole, as over any newer value).
//!
//! Either order of two writes leaves the same entry, so refills, hints and
//! anti-entropy converge on it. A hash whose fields are all deleted reads
//! as missing and is kept for a tombstone's time, as a tombstone is.

use super::shard::Shard;
use super::slot::{NewSlot, Put, Require};
use super::{Applied, FLAG_HASH, FLAG_TOMBSTONE, NEVER};
use crate::protocol::fields::Fields;
use bytes::Bytes;
use std::borrow::Cow;

/// What a write becomes over the entry there (`found`): the slot to store,
/// and the answer to give instead of the store's own; or, when nothing is
/// stored, the answer.
pub(super) fn resolve<'a>(
    shard: &Shard,
    found: Option<u32>,
    mut new: NewSlot<'a>,
    now: u64,
    tombstone_ms: u64,
) -> Result<(NewSlot<'a>, Option<Applied>), Put> {
    let new_hash = new.flags & FLAG_HASH != 0;
    let held = found.map(|idx| &shard.slots[idx as usize]);
    let live = held.filter(|s| !s.is(FLAG_TOMBSTONE) && !s.expired(now));
    let held_hash = live.filter(|s| s.is(FLAG_HASH));
    if !new_hash && held_hash.is_none() {
        return Ok((new, None));
    }
    let done = |applied| Put {
        applied,
        added: 0,
        freed: 0,
        was_live: live.is_some(),
    };
    let empty_until = now.saturating_add(tombstone_ms);
    let decode = |bytes: &[u8]| {
        Fields::decode(&Bytes::copy_from_slice(bytes)).map_err(|e| {
            tracing::error!(error = %e, "a hash in the store does not decode; left as it is");
            done(Applied::Stale)
        })
    };
    if let (true, Some(slot)) = (new_hash, held_hash) {
        if !new.require.met(Some(slot.version)) {
            return Err(done(Applied::Unmet));
        }
        let mut fields = decode(slot.value(&shard.arena).0)?;
        let changed = fields.merge(&decode(&new.value)?);
        let version = slot.version.max(new.version).max(fields.version());
        if !changed && version == slot.version {
            return Err(done(Applied::Stale));
        }
        let expires_at = if new.fields_write || new.version <= slot.version {
            slot.expires_at()
        } else {
            new.expires_at
        };
        hold(&mut new, &fields, version, expires_at, empty_until);
        new.force = true;
        return Ok((new, None));
    }
    if new_hash {
        // Nothing there, or a whole-key write of version `t`.
        if new.fields_write && live.is_some() {
            return Err(done(Applied::WrongType));
        }
        let t = held.map_or(0, |s| s.version);
        let mut fields = decode(&new.value)?;
        fields.rebase(t);
        let version = new.version.max(fields.version());
        if held.is_some() && version <= t {
            return Err(done(Applied::Newer(t)));
        }
        let expires_at = if new.fields_write {
            NEVER
        } else {
            new.expires_at
        };
        hold(&mut new, &fields, version, expires_at, empty_until);
        return Ok((new, None));
    }
    // A string or a tombstone over a live hash.
    let Some(slot) = held_hash else {
        return Ok((new, None));
    };
    if new.version >= slot.version {
        return Ok((new, None));
    }
    if !new.require.met(Some(slot.version)) {
        return Err(done(Applied::Unmet));
    }
    let mut fields = decode(slot.value(&shard.arena).0)?;
    if !fields.rebase(new.version) {
        return Err(done(Applied::Newer(slot.version)));
    }
    let mut rebased = NewSlot {
        raw_len: None,
        value: Cow::Borrowed(&[]),
        key_len: new.key_len,
        version: 0,
        expires_at: NEVER,
        flags: FLAG_HASH,
        replace_only: false,
        require: Require::Nothing,
        force: true,
        fields_write: false,
    };
    hold(
        &mut rebased,
        &fields,
        slot.version,
        slot.expires_at(),
        empty_until,
    );
    Ok((rebased, Some(Applied::Newer(slot.version))))
}

/// Makes `new` hold `fields` at `version`, expiring at `expires_at` or,
/// with no live field left, at `empty_until` if that is sooner (a hash
/// without fields is kept only as long as a tombstone).
fn hold(new: &mut NewSlot<'_>, fields: &Fields, version: u64, expires_at: u64, empty_until: u64) {
    new.value = encoded(fields);
    new.version = version;
    new.expires_at = if fields.is_empty() {
        expires_at.min(empty_until)
    } else {
        expires_at
    };
}

fn encoded(fields: &Fields) -> Cow<'static, [u8]> {
    let mut out = Vec::with_capacity(fields.encoded_len());
    fields.encode(&mut out);
    Cow::Owned(out)
}
