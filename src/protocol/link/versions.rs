//! What each link version carries: a link that speaks an older version
//! (a peer of the previous release, during a rolling upgrade) is never
//! sent what that version cannot express.

use super::{Entry, Request, Response, Summary, HASH_LINK_VERSION};
use crate::protocol::{ErrorCode, ErrorReply};
use std::borrow::Cow;

fn entries_for(entries: &[Entry], version: u8) -> Option<Vec<Entry>> {
    (version < HASH_LINK_VERSION && entries.iter().any(|e| e.hash))
        .then(|| entries.iter().filter(|e| !e.hash).cloned().collect())
}

fn summaries_for(summaries: &[Summary], version: u8) -> Option<Vec<Summary>> {
    (version < HASH_LINK_VERSION && summaries.iter().any(|s| s.content != 0)).then(|| {
        summaries
            .iter()
            .filter(|s| s.content == 0)
            .cloned()
            .collect()
    })
}

impl Request {
    /// This request as a link of `version` carries it: hash entries and
    /// hash summaries left out below [`HASH_LINK_VERSION`] (the peer has
    /// no hashes to compare them with, nor a way to store them). `None`
    /// when the version cannot carry the request at all (a hash request
    /// to a peer without hashes).
    pub fn for_version(&self, version: u8) -> Option<Cow<'_, Request>> {
        if version >= HASH_LINK_VERSION {
            return Some(Cow::Borrowed(self));
        }
        match self {
            // Version 8 has neither hashes nor layouts.
            Request::HSet { .. }
            | Request::HGet { .. }
            | Request::HUpdate { .. }
            | Request::Layout { .. }
            | Request::Take { .. } => None,
            Request::Sync {
                buckets,
                after,
                upto,
                summaries,
            } => Some(match summaries_for(summaries, version) {
                Some(summaries) => Cow::Owned(Request::Sync {
                    buckets: buckets.clone(),
                    after: after.clone(),
                    upto: upto.clone(),
                    summaries,
                }),
                None => Cow::Borrowed(self),
            }),
            Request::Apply {
                last,
                entries,
                evict,
            } => {
                let kept = entries_for(entries, version);
                let evicted = summaries_for(evict, version);
                Some(if kept.is_none() && evicted.is_none() {
                    Cow::Borrowed(self)
                } else {
                    Cow::Owned(Request::Apply {
                        last: *last,
                        entries: kept.unwrap_or_else(|| entries.clone()),
                        evict: evicted.unwrap_or_else(|| evict.clone()),
                    })
                })
            }
            _ => Some(Cow::Borrowed(self)),
        }
    }
}

impl Response {
    /// This response as a link of `version` carries it (hash entries and
    /// summaries left out below [`HASH_LINK_VERSION`], as for requests).
    pub fn for_version(&self, version: u8) -> Cow<'_, Response> {
        if version >= HASH_LINK_VERSION {
            return Cow::Borrowed(self);
        }
        match self {
            Response::Chunk(entries) => match entries_for(entries, version) {
                Some(entries) => Cow::Owned(Response::Chunk(entries)),
                None => Cow::Borrowed(self),
            },
            Response::Synced {
                complete,
                entries,
                wanted,
            } => match entries_for(entries, version) {
                Some(entries) => Cow::Owned(Response::Synced {
                    complete: *complete,
                    entries,
                    wanted: wanted.clone(),
                }),
                None => Cow::Borrowed(self),
            },
            // Version 8 knows error codes 1 to 9: WRONGTYPE goes as an
            // invalid command, its words kept; a key on the move (never
            // sent to it: layouts need this release) as unavailable.
            Response::Error(e) if e.code == ErrorCode::WrongType => {
                Cow::Owned(Response::Error(ErrorReply {
                    code: ErrorCode::InvalidCommand,
                    ..e.clone()
                }))
            }
            Response::Error(e) if matches!(e.code, ErrorCode::Moved | ErrorCode::TryAgain) => {
                Cow::Owned(Response::Error(ErrorReply {
                    code: ErrorCode::Unavailable,
                    ..e.clone()
                }))
            }
            Response::Applied { count, refused } => match summaries_for(refused, version) {
                Some(refused) => Cow::Owned(Response::Applied {
                    count: *count,
                    refused,
                }),
                None => Cow::Borrowed(self),
            },
            _ => Cow::Borrowed(self),
        }
    }
}
