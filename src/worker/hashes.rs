//! Hash requests on a worker: field writes from the orchestrator (or a
//! direct client), reads, and the read-modify-writes of one field it
//! decides (`HINCRBY`, `HINCRBYFLOAT`, `HSETNX`).

use super::store::{Applied, Found};
use super::Worker;
use crate::protocol::fields::{FieldUpdate, Fields};
use crate::protocol::link::Response;
use crate::protocol::{ErrorCode, ErrorReply};
use bytes::Bytes;

/// Tries of one field update that met something evicted from the key's
/// bucket (each stamps above it) before it gives up.
const TRIES: usize = 16;

/// The field writes would make the hash's encoding larger than a value may
/// be.
fn too_large(max_value_bytes: usize) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Parse,
        format!("the hash would exceed max_value_bytes ({max_value_bytes} bytes with its field versions)"),
    )
}

/// The bytes field writes add to a hash's encoding, at most.
fn written_bytes(fields: &[(Bytes, Option<Bytes>)]) -> usize {
    fields
        .iter()
        .map(|(name, value)| 16 + name.len() + value.as_ref().map_or(0, |v| v.len()))
        .sum()
}

impl Worker {
    /// The live hash under `key` (its fields' encoding); `None` when the
    /// key is missing; the wrong type for a string.
    pub(super) fn read_hash(&self, key: &[u8]) -> Result<Option<Found>, ErrorReply> {
        self.ready()?;
        match self.store.get(key) {
            Some(found) if !found.hash => Err(ErrorReply::wrong_type()),
            found => Ok(found),
        }
    }

    /// Writes fields of `key`'s hash at `version` (the orchestrator's
    /// stamp): answered with how many fields it added and removed,
    /// `Newer` when a whole-key write newer than `version` holds the key,
    /// the wrong type over a string. With a `base` (the partner decided
    /// the field from its version `base`), `NotStored` when a field holds
    /// a version after `base` this worker stamped: an update it decided
    /// itself meanwhile, which the partner's did not see.
    pub(super) fn write_fields(
        &self,
        key: &[u8],
        version: u64,
        fields: Vec<(Bytes, Option<Bytes>)>,
        base: Option<u64>,
    ) -> Response {
        let max_value_bytes = self.live.load().limits.max_value_bytes;
        let node = self.clock.node();
        let mut counts = (0u32, 0u32);
        let mut conflict = false;
        let written = self.store.write_fields(key, |current, _| {
            if let (Some(base), Some(current)) = (base, current) {
                conflict = fields.iter().any(|(name, _)| {
                    current.field(name).is_some_and(|f| {
                        f.version > base && crate::version::node_of(f.version) == node
                    })
                });
                if conflict {
                    return Ok((version, Vec::new()));
                }
            }
            if current.map_or(12, Fields::encoded_len) + written_bytes(&fields) > max_value_bytes {
                return Err(too_large(max_value_bytes));
            }
            counts = count_changes(current, &fields);
            Ok((version, fields))
        });
        if conflict {
            return Response::NotStored;
        }
        match written {
            Ok(Ok(Applied::Yes | Applied::Stale)) => Response::FieldsWritten {
                added: counts.0,
                removed: counts.1,
            },
            Ok(Ok(Applied::Newer(held) | Applied::Evicted(held))) => {
                Response::Newer { version: held }
            }
            Ok(Ok(Applied::WrongType)) => Response::Error(ErrorReply::wrong_type()),
            Ok(Ok(Applied::Unmet | Applied::NoRoom)) => Response::FieldsWritten {
                added: 0,
                removed: 0,
            },
            Ok(Err(e)) => Response::Error(e),
            Err(e) => Response::Error(Worker::store_error(e)),
        }
    }

    /// Field writes of a direct client, stamped by this worker's clock
    /// (again above a newer entry there): how many fields it added and
    /// removed.
    pub(super) fn write_fields_direct(
        &self,
        key: &[u8],
        fields: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(u32, u32), ErrorReply> {
        for _ in 0..TRIES {
            match self.write_fields(key, self.clock.next(), fields.clone(), None) {
                Response::FieldsWritten { added, removed, .. } => return Ok((added, removed)),
                Response::Newer { version } => self.clock.observe(version),
                Response::Error(e) => return Err(e),
                other => return Err(unexpected(&other)),
            }
        }
        Err(gave_up())
    }

    /// Reads field `field` of `key`, computes `update` and stores the
    /// result at a version of this worker's clock above `floor` and the
    /// entry's, all under the store's lock of the key, so no write comes
    /// between the read and the write. Answers [`Response::Updated`] with
    /// the field's value after (`changed` false: `HSETNX` found it set),
    /// which the orchestrator writes to the partner.
    pub(super) fn decide_field(
        &self,
        key: &[u8],
        floor: u64,
        field: Bytes,
        update: &FieldUpdate,
    ) -> Response {
        if let Err(e) = self.ready() {
            return Response::Error(e);
        }
        self.clock.observe(floor);
        let max_value_bytes = self.live.load().limits.max_value_bytes;
        for _ in 0..TRIES {
            let mut outcome = None;
            let written = self.store.write_fields(key, |current, held| {
                self.clock.observe(held);
                let old = current.and_then(|f| f.get(&field)).cloned();
                // The version the result is decided from, for the partner.
                let base = current
                    .and_then(|f| f.field(&field))
                    .map_or(0, |f| f.version);
                let new = update.apply(old.as_ref())?;
                let version = self.clock.next();
                let writes: Vec<_> = new
                    .iter()
                    .map(|v| (field.clone(), Some(v.clone())))
                    .collect();
                if current.map_or(12, Fields::encoded_len) + written_bytes(&writes)
                    > max_value_bytes
                {
                    return Err(too_large(max_value_bytes));
                }
                outcome = Some((version, base, new, old));
                Ok((version, writes))
            });
            let applied = match written {
                Ok(Ok(applied)) => applied,
                Ok(Err(e)) => return Response::Error(e),
                Err(e) => return Response::Error(Worker::store_error(e)),
            };
            let Some((version, base, new, old)) = outcome else {
                return Response::Error(ErrorReply::wrong_type());
            };
            match applied {
                Applied::Yes | Applied::Stale => {
                    let changed = new.is_some();
                    return Response::Updated {
                        changed,
                        version,
                        base,
                        ttl_ms: 0,
                        value: if changed { new } else { old.clone() },
                        old,
                    };
                }
                Applied::Newer(v) | Applied::Evicted(v) => self.clock.observe(v),
                Applied::WrongType => return Response::Error(ErrorReply::wrong_type()),
                Applied::Unmet | Applied::NoRoom => {}
            }
        }
        Response::Error(gave_up())
    }
}

/// The fields `writes` add (not live before) and remove (live before,
/// deleted by them), each name once.
fn count_changes(current: Option<&Fields>, writes: &[(Bytes, Option<Bytes>)]) -> (u32, u32) {
    let mut last: std::collections::BTreeMap<&[u8], bool> = Default::default();
    for (name, value) in writes {
        last.insert(name, value.is_some());
    }
    let live = |name: &[u8]| current.is_some_and(|f| f.get(name).is_some());
    let added = last.iter().filter(|(n, &set)| set && !live(n)).count();
    let removed = last.iter().filter(|(n, &set)| !set && live(n)).count();
    (added as u32, removed as u32)
}

fn unexpected(answer: &Response) -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        format!("unexpected answer {answer:?}"),
    )
}

fn gave_up() -> ErrorReply {
    ErrorReply::new(
        ErrorCode::Unavailable,
        format!("the hash changed under each of {TRIES} tries: try again"),
    )
}
