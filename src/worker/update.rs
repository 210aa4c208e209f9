//! Read-modify-writes decided here: for a client of this worker, or for
//! the orchestrator, which replicates the result to the partner.

use super::store::{Applied, Require};
use super::Worker;
use crate::protocol::link::Response;
use crate::protocol::update::{self, Change, TtlChange, Update};
use crate::protocol::{ErrorCode, ErrorReply};
use std::time::Duration;

/// Tries of one update that found the key changed between its read and
/// its write (concurrent writers of one key) before it gives up.
const TRIES: usize = 16;

impl Worker {
    /// Reads `key`, computes `update` and stores the result over exactly
    /// what it read, at a version of this worker's clock above both
    /// `floor` (the orchestrator's stamp) and the version it read; tried
    /// again if another write got in between. Answers
    /// [`Response::Updated`], or the error the client is told.
    pub(super) fn decide_update(&self, key: &[u8], floor: u64, update: &Update) -> Response {
        match self.try_update(key, floor, update) {
            Ok(response) => response,
            Err(e) => Response::Error(e),
        }
    }

    fn try_update(&self, key: &[u8], floor: u64, update: &Update) -> Result<Response, ErrorReply> {
        self.ready()?;
        self.clock.observe(floor);
        let max_value_bytes = self.live.load().limits.max_value_bytes;
        for _ in 0..TRIES {
            let found = self.store.get(key);
            if found.as_ref().is_some_and(|f| f.hash) {
                return Err(ErrorReply::wrong_type());
            }
            let held = found.as_ref().map(|f| f.version);
            let old_ttl = found.as_ref().map_or(0, |f| f.ttl_ms);
            let old = found.map(|f| f.value);
            let mut change = update::apply(update, old.as_deref(), max_value_bytes)?;
            if *update == Update::Retime(TtlChange::Clear) && old_ttl == 0 {
                // PERSIST of a key without a TTL changes nothing.
                change = Change::None;
            }
            if let Some(held) = held {
                self.clock.observe(held);
            }
            let ttl_ms = update.ttl_after(old_ttl, crate::sys::wall_ms);
            let version = self.clock.next();
            let (applied, value) = match change {
                Change::None => {
                    return Ok(Response::Updated {
                        changed: false,
                        version: held.unwrap_or(0),
                        base: held.unwrap_or(0),
                        ttl_ms: old_ttl,
                        value: old.clone(),
                        old,
                    })
                }
                Change::Value(value) => {
                    let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
                    let applied = self
                        .store
                        .set_over(key, &value, ttl, version, Require::Holds(held))
                        .map_err(Worker::store_error)?;
                    (applied, Some(value))
                }
                Change::Delete => {
                    let (applied, _) = self
                        .store
                        .delete_over(key, version, Require::Holds(held))
                        .map_err(Worker::store_error)?;
                    (applied, None)
                }
            };
            match applied {
                Applied::Yes => {
                    return Ok(Response::Updated {
                        changed: true,
                        version,
                        base: held.unwrap_or(0),
                        ttl_ms: if value.is_some() { ttl_ms } else { 0 },
                        value,
                        old,
                    })
                }
                // Something newer is there, or was evicted from the
                // key's bucket: the next try stamps above it.
                Applied::Newer(v) | Applied::Evicted(v) => self.clock.observe(v),
                // Another write got in since the read: read again.
                Applied::Unmet | Applied::Stale | Applied::NoRoom => {}
                // A hash got there since the read.
                Applied::WrongType => return Err(ErrorReply::wrong_type()),
            }
        }
        Err(ErrorReply::new(
            ErrorCode::Unavailable,
            format!("the key changed under each of {TRIES} tries of the update: try again"),
        ))
    }

    /// Stores the result of an update the partner decided, unless this
    /// worker holds an update of its own decided after the version the
    /// partner read (answered `NotStored`: the two conflict).
    pub(super) fn replicate(
        &self,
        key: &[u8],
        version: u64,
        ttl_ms: u64,
        base: u64,
        value: Option<&[u8]>,
    ) -> Response {
        let require = Require::NotAfter {
            base,
            node: self.clock.node(),
        };
        let applied = match value {
            Some(value) => {
                let ttl = (ttl_ms > 0).then(|| Duration::from_millis(ttl_ms));
                self.store.set_over(key, value, ttl, version, require)
            }
            None => self
                .store
                .delete_over(key, version, require)
                .map(|(applied, _)| applied),
        };
        match applied {
            Ok(Applied::Unmet) => Response::NotStored,
            Ok(Applied::Newer(version) | Applied::Evicted(version)) => Response::Newer { version },
            Ok(applied) => Response::Set {
                applied: applied == Applied::Yes,
            },
            Err(e) => Response::Error(Worker::store_error(e)),
        }
    }
}
