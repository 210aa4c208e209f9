//! The session loop every protocol runs: read, decode, execute a batch,
//! encode, write, with the connection's authentication. A [`Dialect`]
//! says what the bytes mean, an [`Executor`] what the daemon does with
//! them.

use super::batch::{execute, reply_bytes, Window};
use super::{Closed, Conn, LiveConfig, ServerConfig};
use crate::command::{self, Keyspace};
use crate::metrics::{ServerMetrics, Tally};
use crate::protocol::dialect::{Decoded, Dialect, Gate};
use crate::protocol::resp::{self, RespDialect};
use crate::protocol::text::TextDialect;
use crate::protocol::{Command, Op, Reply};
use crate::shutdown::Shutdown;
use bytes::BytesMut;
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The daemon's side of one connection: what its requests run against.
pub trait Executor: Send {
    type Request: Send;
    type Reply: Send;

    /// The metrics label of a request (one refused before it runs).
    fn op(&self, request: &Self::Request) -> Op;

    /// Executes a batch of requests and returns their replies in order,
    /// counting each in `tally`. What a client can observe happens in the
    /// order it asked for.
    fn execute(
        &mut self,
        requests: Vec<Self::Request>,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) -> impl Future<Output = Vec<Self::Reply>> + Send;

    /// About what a reply takes in memory and on the wire.
    fn reply_bytes(reply: &Self::Reply) -> usize;

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
        commands: Vec<Command>,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) -> impl Future<Output = Vec<Reply>> + Send {
        execute(self.0, commands, metrics, tally)
    }

    fn reply_bytes(reply: &Reply) -> usize {
        reply_bytes(reply)
    }
}

/// Serves a client on `conn` in the protocol its first byte chooses: RESP2
/// when it is `*`, the text protocol otherwise. `conn.rbuf` may already
/// hold bytes read while detecting the protocol.
pub async fn serve_client<S, K>(
    conn: &mut Conn<S>,
    service: &K,
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: Keyspace,
{
    if conn.rbuf.is_empty() {
        let idle = live.load().idle_timeout;
        if let Err(closed) = conn.fill(Instant::now() + idle, shutdown).await {
            return closed;
        }
    }
    let limits = live.load().limits;
    if conn.rbuf.first() == Some(&resp::FIRST_BYTE) {
        let dialect = RespDialect::new(limits, K::ROLE);
        serve_session(conn, dialect, Clients(service), live, metrics, shutdown).await
    } else {
        let dialect = TextDialect::new(limits);
        serve_session(conn, dialect, Clients(service), live, metrics, shutdown).await
    }
}

/// Whether `token` opens a connection under `config` (a daemon without a
/// token accepts any, SPEC).
fn token_accepted(config: &ServerConfig, token: &[u8], metrics: &ServerMetrics) -> bool {
    match &config.auth {
        None => true,
        Some(secret)
            if token.len() <= crate::protocol::link::MAX_TOKEN_BYTES && secret.matches(token) =>
        {
            true
        }
        Some(_) => {
            metrics.auth_failures.inc();
            false
        }
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
/// the answers.
pub async fn serve_session<S, X, D>(
    conn: &mut Conn<S>,
    mut dialect: D,
    mut executor: X,
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    X: Executor,
    D: Dialect<Request = X::Request, Reply = X::Reply>,
{
    let mut config = live.load_full();
    let mut gate = Gate::default();
    let mut last_request = Instant::now();
    let mut window = Window::new();
    let mut tally = Tally::default();
    loop {
        let mut close = false;
        gate.required = config.auth.is_some();
        loop {
            let mut slots: Vec<Slot<D::Tag, D::Answer>> = Vec::new();
            let mut requests = Vec::new();
            while slots.len() < window.size() && !close {
                let answered = match dialect.decode(&mut conn.rbuf, &gate) {
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
                        let accepted = token.map(|t| token_accepted(&config, &t, metrics));
                        dialect.credential(accepted, &mut gate)
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
            let replies = if requests.is_empty() {
                Vec::new()
            } else {
                executor.execute(requests, metrics, &mut tally).await
            };
            // Counted before the replies go out: a client that has its
            // reply sees its request in the metrics.
            tally.flush();
            window.observe(&replies, X::reply_bytes);
            last_request = Instant::now();
            for slot in &slots {
                match slot {
                    Slot::Run(i, tag) => {
                        let reply = &replies[*i];
                        dialect.encode_reply(reply, *tag, &mut conn.wbuf);
                        while executor.stream(reply, &mut conn.wbuf, metrics, &mut tally) {
                            if let Err(closed) = conn.flush(config.idle_timeout).await {
                                return closed;
                            }
                        }
                    }
                    Slot::Ready(answer) => dialect.encode_answer(answer, &mut conn.wbuf),
                }
                if let Err(closed) = conn.flush_if_full(config.idle_timeout).await {
                    return closed;
                }
            }
            if close {
                break;
            }
        }
        if let Err(closed) = conn.flush(config.idle_timeout).await {
            return closed;
        }
        if close {
            let _ = conn.io.shutdown().await;
            return Closed::Eof;
        }
        config = live.load_full();
        let wait_until = executor.wait_until(last_request + config.idle_timeout);
        if let Err(closed) = conn.fill(wait_until, shutdown).await {
            return closed;
        }
    }
}
