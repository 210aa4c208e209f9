//! The session loop every protocol runs: read, decode, execute a batch,
//! encode, write, with the connection's authentication. A [`Dialect`]
//! says what the bytes mean, an [`Executor`] what the daemon does with
//! them.

use super::batch::{execute, reply_bytes, Window};
use super::{Closed, Conn, LiveConfig, ServerConfig};
use crate::clients::{Client, Registry};
use crate::command::{self, Keyspace};
use crate::metrics::{ServerMetrics, Tally};
use crate::protocol::dialect::{Decoded, Dialect, Gate, Holder, UNAUTHENTICATED_BYTES};
use crate::protocol::resp::{self, RespDialect};
use crate::protocol::text::TextDialect;
use crate::protocol::{Command, Op, Reply};
use crate::shutdown::Shutdown;
use bytes::BytesMut;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The daemon's side of one connection: what its requests run against.
pub trait Executor: Send {
    type Request: Send;
    type Reply: Send;

    /// The metrics label of a request (one refused before it runs).
    fn op(&self, request: &Self::Request) -> Op;

    /// Executes a batch of requests (leaving `requests` empty) and appends
    /// their replies to `replies` in order, counting each in `tally`. What
    /// a client can observe happens in the order it asked for. The loop
    /// keeps both buffers from batch to batch.
    ///
    /// `clock` is when the batch's first request was read or the request
    /// before it ended; an executor that runs requests in turn times each
    /// from it and moves it to where the request ended (one clock reading
    /// per request).
    fn execute(
        &mut self,
        clock: &mut Instant,
        requests: &mut Vec<Self::Request>,
        replies: &mut Vec<Self::Reply>,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) -> impl Future<Output = ()> + Send;

    /// About what a reply takes in memory and on the wire.
    fn reply_bytes(reply: &Self::Reply) -> usize;

    /// Requests run one at a time, each answered before the next is
    /// decoded, rather than in batches: for an executor whose requests
    /// finish in memory (a worker's), where nothing gains from running
    /// them together and each reply's value is encoded and freed at once
    /// instead of a batch of them held.
    const ONE_AT_A_TIME: bool = false;

    /// Writes the next part of a reply too large for one write (a refill
    /// stream) after its encoding: `true` while more is to come, so the
    /// loop writes what is buffered (the socket paces the stream) and asks
    /// again. Nothing streams by default.
    fn stream(
        &mut self,
        _reply: &Self::Reply,
        _out: &mut BytesMut,
        _metrics: &ServerMetrics,
        _tally: &mut Tally,
    ) -> bool {
        false
    }

    /// The latest moment to wait for the next request, given the one the
    /// idle timeout sets.
    fn wait_until(&self, idle: Instant) -> Instant {
        idle
    }
}

/// A client session's executor: commands run on the daemon's keyspace.
struct Clients<'k, K>(&'k K);

impl<K: Keyspace> Executor for Clients<'_, K> {
    type Request = Command;
    type Reply = Reply;

    fn op(&self, command: &Command) -> Op {
        command::spec(command).op
    }

    fn execute(
        &mut self,
        clock: &mut Instant,
        commands: &mut Vec<Command>,
        replies: &mut Vec<Reply>,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) -> impl Future<Output = ()> + Send {
        execute(self.0, clock, commands, replies, metrics, tally)
    }

    fn reply_bytes(reply: &Reply) -> usize {
        reply_bytes(reply)
    }

    const ONE_AT_A_TIME: bool = !K::CONCURRENT;
}

/// Serves a client on `conn` in the protocol its first byte chooses: RESP2
/// when it is `*`, the text protocol otherwise. `conn.rbuf` may already
/// hold bytes read while detecting the protocol.
pub async fn serve_client<S, K>(
    conn: &mut Conn<S>,
    service: &K,
    (clients, (addr, laddr)): (&Arc<Registry>, (Option<SocketAddr>, Option<SocketAddr>)),
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: Keyspace,
{
    if conn.rbuf.is_empty() {
        let first = first_request_deadline(&live.load());
        if let Err(closed) = conn.fill(first, shutdown).await {
            return closed;
        }
    }
    let limits = live.load().limits;
    let registered = clients.open(addr, laddr);
    let client = registered.client.clone();
    let executor = Clients(service);
    if conn.rbuf.first() == Some(&resp::FIRST_BYTE) {
        let dialect = RespDialect::registered(limits, K::ROLE, registered);
        serve_session(
            conn,
            dialect,
            executor,
            live,
            metrics,
            shutdown,
            Some(&client),
        )
        .await
    } else {
        // The connection stays in the table until `registered` drops.
        let dialect = TextDialect::new(limits);
        serve_session(
            conn,
            dialect,
            executor,
            live,
            metrics,
            shutdown,
            Some(&client),
        )
        .await
    }
}

/// The latest moment a new connection's first bytes may arrive.
pub fn first_request_deadline(config: &ServerConfig) -> Instant {
    Instant::now() + config.idle_timeout.min(config.request_timeout)
}

/// The token that opens a connection of `holder`'s protocol, if any.
fn secret(config: &ServerConfig, holder: Holder) -> Option<&crate::auth::Secret> {
    match holder {
        Holder::Client => config.auth.as_ref(),
        Holder::Daemon => config.cluster.as_ref(),
    }
}

/// What a presented token is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accepted,
    Wrong,
    /// The clients' token on a daemons' protocol (a link) when the
    /// daemons have a token of their own.
    ClientToken,
}

/// Whether `token` opens a connection of `holder`'s protocol under
/// `config` (a daemon without a token accepts any, SPEC).
fn check_token(
    config: &ServerConfig,
    holder: Holder,
    token: &[u8],
    metrics: &ServerMetrics,
) -> Verdict {
    let Some(secret) = secret(config, holder) else {
        return Verdict::Accepted;
    };
    let readable = token.len() <= crate::protocol::link::MAX_TOKEN_BYTES;
    if readable && secret.matches(token) {
        return Verdict::Accepted;
    }
    metrics.auth_failures.inc();
    let client_token = || config.auth.as_ref().is_some_and(|a| a.matches(token));
    if holder == Holder::Daemon && readable && config.roles() && client_token() {
        metrics.link_client_tokens.inc();
        return Verdict::ClientToken;
    }
    Verdict::Wrong
}

/// Empties `batch`, giving back its memory when it grew past what most
/// batches take (a long pipeline's batch is not kept for the connection's
/// life).
fn keep_small<T>(batch: &mut Vec<T>) {
    const KEPT: usize = 32;
    batch.clear();
    if batch.capacity() > KEPT {
        batch.shrink_to(KEPT);
    }
}

/// A reply of a batch, in the order of the requests.
enum Slot<T, A> {
    /// The reply to the batch's n-th executed command, encoded with its tag.
    Run(usize, T),
    /// Given without executing anything.
    Ready(A),
}

/// Serves one connection in `dialect` until the peer leaves, idles past
/// the timeout, or shutdown begins: the one session loop of every
/// protocol, clients' and links'.
///
/// The complete requests of each read are executed as one batch (see
/// [`Executor::execute`]) and their replies written with one write
/// (pipelining). A request in progress when shutdown begins completes and
/// is answered. Tokens are checked here ([`Gate`]); the dialect only words
/// the answers. A client connection (`client`) is closed once a `CLIENT
/// KILL` matches it, after the answers already decoded are written.
pub async fn serve_session<S, X, D>(
    conn: &mut Conn<S>,
    mut dialect: D,
    mut executor: X,
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
    client: Option<&Client>,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    X: Executor,
    D: Dialect<Request = X::Request, Reply = X::Reply>,
{
    let mut config = live.load_full();
    let mut gate = Gate {
        required: secret(&config, D::HOLDER).is_some(),
        authenticated: false,
    };
    let mut last_request = Instant::now();
    let opened = last_request;
    // When the last read returned, and when the last read returned or the
    // last request ended.
    let mut read_at = opened;
    let mut clock = opened;
    // Something was answered: the first request is no longer awaited.
    let mut answered_any = false;
    // When the first byte of the request in the buffer arrived (at the
    // latest): it must be complete within `request_timeout`.
    let mut partial_since: Option<Instant> = None;
    let mut window = Window::new();
    let mut tally = Tally::default();
    // A batch's requests, replies and their order, kept from batch to
    // batch (no allocation per batch) up to a small size.
    let mut slots: Vec<Slot<D::Tag, D::Answer>> = Vec::new();
    let mut requests = Vec::new();
    let mut replies = Vec::new();
    loop {
        let mut close = false;
        let mut served = false;
        let mut executed = false;
        loop {
            keep_small(&mut slots);
            keep_small(&mut requests);
            keep_small(&mut replies);
            let size = if X::ONE_AT_A_TIME { 1 } else { window.size() };
            while slots.len() < size && !close {
                let answered = match dialect.decode(&mut conn.rbuf, &gate) {
                    // A stranger gets a small buffer, not a request's worth.
                    Decoded::Incomplete
                        if !gate.open() && conn.rbuf.len() >= UNAUTHENTICATED_BYTES =>
                    {
                        dialect.too_large_unauthenticated()
                    }
                    Decoded::Incomplete => break,
                    Decoded::Run(request, tag) => {
                        slots.push(Slot::Run(requests.len(), tag));
                        requests.push(request);
                        continue;
                    }
                    Decoded::Greeting(Some(answer)) => {
                        slots.push(Slot::Ready(answer));
                        continue;
                    }
                    Decoded::Greeting(None) => {
                        close = true;
                        continue;
                    }
                    Decoded::Refused(request) => {
                        let refused = dialect.refused(executor.op(&request));
                        // A protocol that hangs up on a request without
                        // a token (a link) counts a failed authentication.
                        if refused.close {
                            metrics.auth_failures.inc();
                        }
                        refused
                    }
                    Decoded::Answer(answered) => answered,
                    Decoded::Credential(token) => {
                        match token.map(|t| check_token(&config, D::HOLDER, &t, metrics)) {
                            Some(Verdict::ClientToken) => dialect.client_credential(&mut gate),
                            verdict => dialect
                                .credential(verdict.map(|v| v == Verdict::Accepted), &mut gate),
                        }
                    }
                };
                tally.observe(metrics, answered.op, answered.outcome, Duration::ZERO);
                close = answered.close;
                if let Some(answer) = answered.answer {
                    slots.push(Slot::Ready(answer));
                }
            }
            if slots.is_empty() {
                break;
            }
            served = true;
            if !requests.is_empty() {
                executed = true;
                executor
                    .execute(&mut clock, &mut requests, &mut replies, metrics, &mut tally)
                    .await;
                // Requests that finish in memory never wait: a pipeline
                // gives the other connections of its thread their turn
                // every so many requests (the task's coop budget), however
                // much of it is buffered.
                tokio::task::coop::consume_budget().await;
            }
            if !X::ONE_AT_A_TIME {
                window.observe(&replies, X::reply_bytes);
            }
            for slot in slots.drain(..) {
                match slot {
                    Slot::Run(i, tag) => {
                        let reply = &replies[i];
                        dialect.encode_reply(reply, tag, &mut conn.wbuf);
                        if executor.stream(reply, &mut conn.wbuf, metrics, &mut tally) {
                            loop {
                                tally.flush();
                                if let Err(closed) = conn.flush(config.idle_timeout).await {
                                    return closed;
                                }
                                if !executor.stream(reply, &mut conn.wbuf, metrics, &mut tally) {
                                    break;
                                }
                            }
                            // The next request is not timed from before
                            // the stream.
                            clock = Instant::now();
                        }
                    }
                    Slot::Ready(answer) => dialect.encode_answer(&answer, &mut conn.wbuf),
                }
                if conn.full() {
                    // Counted before the replies go out: a client that
                    // has its reply sees its request in the metrics.
                    tally.flush();
                    if let Err(closed) = conn.flush(config.idle_timeout).await {
                        return closed;
                    }
                }
            }
            if close {
                break;
            }
        }
        if executed {
            last_request = clock;
        } else if served {
            last_request = Instant::now();
        }
        answered_any |= served;
        partial_since = if conn.rbuf.is_empty() {
            None
        } else if served {
            // What is left began in the last read, after what was served.
            Some(read_at)
        } else {
            partial_since.or(Some(read_at))
        };
        tally.flush();
        if let Err(closed) = conn.flush(config.idle_timeout).await {
            return closed;
        }
        if let Some(client) = client {
            client.active_at(last_request);
            if client.is_killed() {
                let _ = conn.io.shutdown().await;
                return Closed::Killed;
            }
        }
        if close {
            let _ = conn.io.shutdown().await;
            return Closed::Eof;
        }
        config = live.load_full();
        gate.required = secret(&config, D::HOLDER).is_some();
        conn.limit = if gate.open() {
            usize::MAX
        } else {
            UNAUTHENTICATED_BYTES
        };
        // A slow sender (slowloris) is closed once its first request or a
        // begun one takes longer than `request_timeout`, however often
        // its bytes trickle in.
        let mut wait_until = executor.wait_until(last_request + config.idle_timeout);
        if !answered_any {
            wait_until = wait_until.min(opened + config.request_timeout);
        }
        if let Some(since) = partial_since {
            wait_until = wait_until.min(since + config.request_timeout);
        }
        let filled = match client {
            Some(client) => tokio::select! {
                biased;
                _ = client.killed() => Err(Closed::Killed),
                filled = conn.fill(wait_until, shutdown) => filled,
            },
            None => conn.fill(wait_until, shutdown).await,
        };
        if let Err(closed) = filled {
            if matches!(closed, Closed::Killed) {
                let _ = conn.io.shutdown().await;
            }
            return closed;
        }
        read_at = Instant::now();
        clock = read_at;
    }
}
