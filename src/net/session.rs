//! The session loop every client protocol runs: read, decode, execute a
//! batch, encode, write, with the connection's authentication.

use super::batch::{execute, Window};
use super::{Closed, Conn, LiveConfig, ServerConfig};
use crate::command::{self, Keyspace};
use crate::metrics::{ServerMetrics, Tally};
use crate::protocol::dialect::{Decoded, Dialect, Gate};
use crate::protocol::resp::{self, RespDialect};
use crate::protocol::text::TextDialect;
use crate::shutdown::Shutdown;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
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
        serve_session(conn, dialect, service, live, metrics, shutdown).await
    } else {
        let dialect = TextDialect::new(limits);
        serve_session(conn, dialect, service, live, metrics, shutdown).await
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

/// Serves one client connection in `dialect` until the client leaves,
/// idles past the timeout, or shutdown begins: the one session loop of
/// every client protocol.
///
/// The complete requests of each read are executed as one batch (see
/// `execute` in `batch`) and their replies written with one write (pipelining). A
/// request in progress when shutdown begins completes and is answered.
/// Tokens are checked here ([`Gate`]); the dialect only words the answers.
pub async fn serve_session<S, K, D>(
    conn: &mut Conn<S>,
    mut dialect: D,
    service: &K,
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    K: Keyspace,
    D: Dialect,
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
            let mut commands = Vec::new();
            while slots.len() < window.size() && !close {
                let answered = match dialect.decode(&mut conn.rbuf, &gate) {
                    Decoded::Incomplete => break,
                    Decoded::Run(command, tag) => {
                        slots.push(Slot::Run(commands.len(), tag));
                        commands.push(command);
                        continue;
                    }
                    Decoded::Refused(command) => dialect.refused(command::spec(&command).op),
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
            let replies = execute(service, commands, metrics, &mut tally).await;
            // Counted before the replies go out: a client that has its
            // reply sees its request in the metrics.
            tally.flush();
            window.observe(&replies);
            last_request = Instant::now();
            for slot in &slots {
                match slot {
                    Slot::Run(i, tag) => dialect.encode_reply(&replies[*i], *tag, &mut conn.wbuf),
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
        if let Err(closed) = conn
            .fill(last_request + config.idle_timeout, shutdown)
            .await
        {
            return closed;
        }
    }
}
