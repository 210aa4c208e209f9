//! The command table: for every [`Command`], how it routes (the daemon
//! answers it alone, one key, many keys, every pair), whether it writes,
//! its metrics label ([`spec`]), and how it runs ([`run`]) against a
//! [`Keyspace`], the one thing each daemon provides: the worker's store or
//! the orchestrator's router.
//!
//! Each family of commands has its own module ([`strings`], [`keys`],
//! [`server`]) with one function per command; the two matches below are
//! the table, one line per command. Decoding stays in [`crate::protocol`],
//! executing batches in [`crate::net`].

pub mod hashes;
pub mod keys;
pub mod server;
pub mod strings;

use crate::protocol::fields::{FieldUpdate, Fields};
use crate::protocol::Op;
use crate::protocol::{Command, ErrorReply, InfoSections, Limits, Reply, SetWhen, Update};
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;

/// What a daemon's commands run against. Misses are answers (`Ok(None)`,
/// `Ok(false)`), not errors; an error is what the client is told.
pub trait Keyspace: Send + Sync + 'static {
    /// Whether the operations wait on other hosts, so the commands of a
    /// pipeline (and the keys of a multi-key command) should run
    /// concurrently rather than one after another.
    const CONCURRENT: bool;
    /// What `HELLO` and `INFO` report as the server's role.
    const ROLE: &'static str;
    /// Keys of one multi-key command in flight at once when
    /// [`Keyspace::CONCURRENT`].
    const FAN_OUT: usize;

    /// The size limits in force (a reload may change them).
    fn limits(&self) -> Limits;

    /// A key's value and its remaining time to live in milliseconds (0:
    /// none).
    fn read(
        &self,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<(Bytes, u64)>, ErrorReply>> + Send;

    /// Runs a read-modify-write where the key's value is, once.
    fn update(
        &self,
        key: Bytes,
        update: Update,
    ) -> impl Future<Output = Result<Updated, ErrorReply>> + Send;

    /// The hash under `key` and its remaining time to live in
    /// milliseconds (0: none); `None` when the key is missing, the wrong
    /// type when it holds a string.
    fn read_hash(
        &self,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<(Fields, u64)>, ErrorReply>> + Send;

    /// Writes fields of `key`'s hash (a value, or `None` to delete one):
    /// how many fields it added and removed.
    fn write_fields(
        &self,
        key: Bytes,
        fields: Vec<(Bytes, Option<Bytes>)>,
    ) -> impl Future<Output = Result<(u32, u32), ErrorReply>> + Send;

    /// Runs a read-modify-write of one field where the hash is, once:
    /// whether it changed the field, and the field's value after.
    fn update_field(
        &self,
        key: Bytes,
        field: Bytes,
        update: FieldUpdate,
    ) -> impl Future<Output = Result<(bool, Option<Bytes>), ErrorReply>> + Send;

    /// Stores `value`; `false` when the condition `when` did not hold.
    fn set(
        &self,
        key: Bytes,
        value: Bytes,
        ttl: Option<Duration>,
        when: SetWhen,
    ) -> impl Future<Output = Result<bool, ErrorReply>> + Send;

    /// Deletes a key: whether it was there.
    fn delete(&self, key: Bytes) -> impl Future<Output = Result<bool, ErrorReply>> + Send;

    /// A present key's remaining time to live in milliseconds (0: none);
    /// `None` when the key is missing.
    fn ttl(&self, key: Bytes) -> impl Future<Output = Result<Option<u64>, ErrorReply>> + Send;

    /// Gives a present key a time to live: whether it was there.
    fn expire(
        &self,
        key: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, ErrorReply>> + Send;

    /// Keys from `cursor` on (0: the start) that match `pattern` (empty:
    /// all), after about `count` keys were looked at: the next cursor (0:
    /// done) and the keys. A key present for the whole walk is returned
    /// at least once.
    fn scan(
        &self,
        cursor: u64,
        count: usize,
        pattern: Bytes,
    ) -> impl Future<Output = Result<(u64, Vec<Bytes>), ErrorReply>> + Send;

    /// Cursors of [`Keyspace::scan`] run from 0 below this.
    fn cursor_span(&self) -> u64;

    /// Deletes every key on every worker so that no refill, hint or
    /// repair brings one back.
    fn flush(&self) -> impl Future<Output = Result<(), ErrorReply>> + Send;

    /// Live entries: the store's, or the whole cluster's.
    fn db_size(&self) -> impl Future<Output = Result<u64, ErrorReply>> + Send;

    /// The `INFO` figures of this daemon for `sections` (the keys only
    /// when the keyspace section is asked for: on an orchestrator they
    /// are counted on every pair).
    fn info(&self, sections: InfoSections) -> impl Future<Output = Info> + Send;

    /// The daemon's client-facing metrics, which `INFO` reports from.
    fn server_metrics(&self) -> &crate::metrics::ServerMetrics;

    /// The bytes `key`'s entry takes in memory; `None` when it is missing.
    /// By default the key, the value and a fixed overhead (a worker
    /// answers from its store, compression included).
    fn memory_usage(
        &self,
        key: Bytes,
    ) -> impl Future<Output = Result<Option<u64>, ErrorReply>> + Send {
        async move {
            let size = match self.read(key.clone()).await {
                Ok(read) => read.map(|(value, _)| value.len()),
                Err(e) if e.code == crate::protocol::ErrorCode::WrongType => self
                    .read_hash(key.clone())
                    .await?
                    .map(|(fields, _)| fields.encoded_len()),
                Err(e) => return Err(e),
            };
            Ok(size.map(|len| (key.len() + len + ENTRY_OVERHEAD_ESTIMATE) as u64))
        }
    }

    /// The `CLUSTER` answer: the daemon's view of the cluster.
    fn describe(&self) -> impl Future<Output = String> + Send;

    /// `cluster||ACTION||...`: what changed, as `name=value` fields. Only
    /// an orchestrator holds a layout to change.
    fn change_cluster(
        &self,
        _change: crate::protocol::ClusterChange,
    ) -> impl Future<Output = Result<String, ErrorReply>> + Send {
        async {
            Err(ErrorReply::new(
                crate::protocol::ErrorCode::InvalidCommand,
                "changing the cluster's layout is an orchestrator's: ask one",
            ))
        }
    }
}

/// What a read-modify-write did ([`Keyspace::update`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Updated {
    /// Whether it stored anything.
    pub changed: bool,
    /// The key's value after it (`None`: missing or deleted).
    pub value: Option<Bytes>,
    /// The value before it, if the key was live.
    pub old: Option<Bytes>,
}

impl Updated {
    /// What a worker's answer to a link `UPDATE` says; an error answer is
    /// the client's error.
    pub fn from_response(answer: crate::protocol::link::Response) -> Result<Updated, ErrorReply> {
        use crate::protocol::link::Response;
        match answer {
            Response::Updated {
                changed,
                value,
                old,
                ..
            } => Ok(Updated {
                changed,
                value,
                old,
            }),
            Response::Error(e) => Err(e),
            other => Err(ErrorReply::new(
                crate::protocol::ErrorCode::Unavailable,
                format!("unexpected answer {other:?}"),
            )),
        }
    }
}

/// A hash's fields as a worker sent them; bytes that do not decode are
/// the worker's fault, told as unavailable.
pub fn decode_fields(bytes: &Bytes) -> Result<Fields, ErrorReply> {
    Fields::decode(bytes).map_err(|e| {
        ErrorReply::new(
            crate::protocol::ErrorCode::Unavailable,
            format!("a worker sent a hash that does not decode: {e}"),
        )
    })
}

/// What `MEMORY USAGE` adds to a key and value where the daemon does not
/// hold the entry itself (an orchestrator): a worker's slot and table
/// bucket.
pub const ENTRY_OVERHEAD_ESTIMATE: usize = 40;

/// What `INFO` reports beyond what [`crate::metrics::ServerMetrics`] says.
#[derive(Debug, Default)]
pub struct Info {
    /// Fields of the server section beyond the common ones (`tcp_port`).
    pub server: Vec<(&'static str, String)>,
    /// The connection limit (`maxclients`).
    pub max_clients: usize,
    pub memory: Vec<(&'static str, String)>,
    /// Fields of the stats section beyond the request counts
    /// (`evicted_keys`).
    pub stats: Vec<(&'static str, String)>,
    /// Live keys, when the keyspace section was asked for.
    pub keys: Option<u64>,
    /// rcache's own figures.
    pub rcache: Vec<(&'static str, String)>,
    /// Not serving reads yet (a worker starting or refilling).
    pub loading: bool,
}

/// How a command routes, whether it writes, and how it is counted.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub op: Op,
    /// Whether it changes the keys it touches (or, for
    /// [`Route::AllPairs`], any key).
    pub writes: bool,
    pub route: Route<'a>,
}

/// Where a command goes.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// The daemon answers it alone (`PING`, `CLUSTER`).
    Local,
    Key(&'a [u8]),
    Keys(&'a [Bytes]),
    /// Keys with their values (`MSET`).
    Entries(&'a [(Bytes, Bytes)]),
    /// A source key and a destination (`RENAME`, `COPY`).
    Pair(&'a [u8], &'a [u8]),
    /// Every pair (`DBSIZE`): it sees every write before it.
    AllPairs,
}

impl Route<'_> {
    /// Calls `f` with every key the command touches.
    pub fn for_each_key(&self, mut f: impl FnMut(&[u8])) {
        match self {
            Route::Key(key) => f(key),
            Route::Keys(keys) => keys.iter().for_each(|k| f(k)),
            Route::Entries(entries) => entries.iter().for_each(|(k, _)| f(k)),
            Route::Pair(from, to) => {
                f(from);
                f(to);
            }
            Route::Local | Route::AllPairs => {}
        }
    }
}

impl<'a> Spec<'a> {
    const fn read(op: Op, route: Route<'a>) -> Spec<'a> {
        Spec {
            op,
            writes: false,
            route,
        }
    }

    const fn write(op: Op, route: Route<'a>) -> Spec<'a> {
        Spec {
            op,
            writes: true,
            route,
        }
    }
}

/// The table's first half: how each command routes and is counted.
pub fn spec(command: &Command) -> Spec<'_> {
    use Route::{AllPairs, Entries, Key, Keys, Local, Pair};
    match command {
        Command::Get { key } => Spec::read(Op::Get, Key(key)),
        Command::Set { key, .. } => Spec::write(Op::Set, Key(key)),
        Command::MGet { keys } => Spec::read(Op::MGet, Keys(keys)),
        Command::MSet { entries } => Spec::write(Op::MSet, Entries(entries)),
        Command::Del { key } => Spec::write(Op::Del, Key(key)),
        Command::DelMany { keys } => Spec::write(Op::Del, Keys(keys)),
        Command::Exists { keys } => Spec::read(Op::Exists, Keys(keys)),
        Command::Expire { key, .. } => Spec::write(Op::Expire, Key(key)),
        Command::Ttl { key } | Command::ExpireTime { key } => Spec::read(Op::Ttl, Key(key)),
        Command::Update { key, update, .. } => Spec::write(update.op(), Key(key)),
        Command::GetRange { key, .. } | Command::StrLen { key } => Spec::read(Op::Get, Key(key)),
        Command::MSetNx { entries } => Spec::write(Op::MSet, Entries(entries)),
        Command::Type { key } => Spec::read(Op::Exists, Key(key)),
        Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => {
            Spec::write(Op::Update, Pair(from, to))
        }
        Command::DbSize => Spec::read(Op::DbSize, AllPairs),
        Command::Scan { .. } | Command::Keys { .. } | Command::RandomKey => {
            Spec::read(Op::Scan, AllPairs)
        }
        Command::Flush => Spec::write(Op::Flush, AllPairs),
        Command::Info { .. } => Spec::read(Op::Info, AllPairs),
        // Introspection, not a read of the value: not a keyspace hit.
        Command::Inspect { key, .. } => Spec::read(Op::Other, Key(key)),
        Command::Lcs { a, b, .. } => Spec::read(Op::Get, Pair(a, b)),
        Command::Hash { key, op } if op.writes() => Spec::write(Op::HWrite, Key(key)),
        Command::Hash { key, .. } => Spec::read(Op::HRead, Key(key)),
        Command::Ping => Spec::read(Op::Ping, Local),
        Command::Auth { .. } => Spec::read(Op::Auth, Local),
        Command::Exit => Spec::read(Op::Exit, Local),
        Command::Cluster => Spec::read(Op::Cluster, Local),
        Command::ChangeCluster(_) => Spec::read(Op::Cluster, Local),
    }
}

/// The table's second half: runs `command` against `ks`.
pub async fn run<K: Keyspace>(ks: &K, command: Command) -> Reply {
    // The future of a command is as large as the largest it may be, and a
    // pipelined batch holds and moves one per command: the commands about
    // many keys or every pair run boxed, so a GET's or a SET's stays small.
    match command {
        Command::Get { key } => strings::get(ks, key).await,
        Command::Set {
            key,
            value,
            ttl,
            when,
        } => {
            let ttl = ttl.map(|e| e.ttl(crate::sys::wall_ms));
            strings::set(ks, key, value, ttl, when).await
        }
        Command::MGet { keys } => Box::pin(strings::mget(ks, keys)).await,
        Command::MSet { entries } => Box::pin(strings::mset(ks, entries)).await,
        Command::Del { key } => keys::del(ks, key).await,
        Command::DelMany { keys } => Box::pin(keys::del_many(ks, keys)).await,
        Command::Exists { keys } => Box::pin(keys::exists(ks, keys)).await,
        Command::Expire { key, ttl, when } => keys::expire(ks, key, ttl, when).await,
        Command::Ttl { key } => keys::ttl(ks, key).await,
        Command::ExpireTime { key } => keys::expire_time(ks, key).await,
        Command::Update { key, update, reply } => strings::update(ks, key, update, reply).await,
        Command::GetRange { key, start, end } => strings::get_range(ks, key, start, end).await,
        Command::StrLen { key } => strings::strlen(ks, key).await,
        Command::MSetNx { entries } => Box::pin(strings::mset_nx(ks, entries)).await,
        Command::Type { key } => keys::key_type(ks, key).await,
        Command::Rename { from, to, nx } => Box::pin(keys::rename(ks, from, to, nx)).await,
        Command::Copy { from, to, replace } => Box::pin(keys::copy(ks, from, to, replace)).await,
        Command::DbSize => Box::pin(keys::db_size(ks)).await,
        Command::Scan {
            cursor,
            pattern,
            count,
            kind,
        } => Box::pin(keys::scan(ks, cursor, pattern, count, kind)).await,
        Command::Hash { key, op } => Box::pin(hashes::run(ks, key, op)).await,
        Command::Keys { pattern } => Box::pin(keys::keys(ks, pattern)).await,
        Command::RandomKey => Box::pin(keys::random_key(ks)).await,
        Command::Flush => Box::pin(keys::flush(ks)).await,
        Command::Info { sections } => Box::pin(server::info(ks, sections)).await,
        Command::Inspect { key, what } => Box::pin(server::inspect(ks, key, what)).await,
        Command::Lcs { a, b, mode } => Box::pin(strings::lcs(ks, a, b, mode)).await,
        Command::Ping => server::ping(),
        Command::Auth { .. } | Command::Exit => server::done(),
        Command::Cluster => Box::pin(server::cluster(ks)).await,
        Command::ChangeCluster(change) => match Box::pin(ks.change_cluster(change)).await {
            Ok(done) => Reply::Value(done.into()),
            Err(e) => Reply::Error(e),
        },
    }
}

/// Runs `f` on each of `items` in order, passing each output to `sink`
/// (which stops the walk with an error): [`Keyspace::FAN_OUT`] at a time
/// concurrently when the keyspace waits on the network, one after another
/// when it does not.
async fn each<K, T, F, Fut, S>(items: &[T], f: F, mut sink: S) -> Result<(), ErrorReply>
where
    K: Keyspace,
    F: Fn(&T) -> Fut,
    Fut: Future,
    S: FnMut(Fut::Output) -> Result<(), ErrorReply>,
{
    if K::CONCURRENT {
        for chunk in items.chunks(K::FAN_OUT.max(1)) {
            for output in crate::join::join_all(chunk.iter().map(&f).collect()).await {
                sink(output)?;
            }
        }
    } else {
        for item in items {
            sink(f(item).await)?;
            // The keys of one command finish in memory without waiting:
            // a 10,000-key command gives the other connections of its
            // thread their turn now and then (every 128 keys or so, with
            // the rest of the task's budget).
            tokio::task::coop::consume_budget().await;
        }
    }
    Ok(())
}
