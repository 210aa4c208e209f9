//! A worker's connections: the first byte picks a link (the orchestrator,
//! a partner) or a client session; the link server answers link requests
//! and streams refills.

use super::{antientropy, Worker};
use crate::metrics::Tally;
use crate::net::{self, Closed, Conn, Handler, ServerConfig};
use crate::protocol::link::{
    decode_request, encode_response, max_frame_bytes, read_frame, Request, Response, WorkerState,
    HELLO, HELLO_FIRST_BYTE, REFILL_CHUNK_BYTES,
};
use crate::protocol::{ErrorCode, ErrorReply, Op, Outcome};
use crate::shutdown::Shutdown;
use crate::sys::TcpStream;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub(super) struct WorkerHandler {
    pub(super) worker: Arc<Worker>,
}

impl Handler for WorkerHandler {
    async fn handle(self: Arc<Self>, stream: TcpStream, mut shutdown: Shutdown) -> Closed {
        let worker = &self.worker;
        let stream = match net::secure(stream, &worker.live.load()).await {
            Ok(s) => s,
            Err(closed) => return closed,
        };
        let mut conn = Conn::new(stream);
        // The first byte tells the protocol: a link hello, or a text request.
        let idle = worker.live.load().idle_timeout;
        if let Err(closed) = conn.fill(Instant::now() + idle, &mut shutdown).await {
            return closed;
        }
        let closed = if conn.rbuf.first() == Some(&HELLO_FIRST_BYTE) {
            serve_link(&mut conn, worker, &mut shutdown).await
        } else {
            net::serve_client(
                &mut conn,
                &**worker,
                &worker.live,
                &worker.metrics.server,
                &mut shutdown,
            )
            .await
        };
        if let Closed::Io(e) = &closed {
            tracing::debug!(error = %e, "connection ended");
        }
        closed
    }
}

/// Serves the link protocol: pipelined requests, answered in order, and
/// refill streams.
pub(super) async fn serve_link<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    worker: &Worker,
    shutdown: &mut Shutdown,
) -> Closed {
    let mut config = worker.live.load_full();
    let mut deadline = Instant::now() + config.idle_timeout;
    while conn.rbuf.len() < HELLO.len() {
        if let Err(c) = conn.fill(deadline, shutdown).await {
            return c;
        }
    }
    if conn.rbuf[..HELLO.len()] != HELLO[..] {
        // Another protocol version or garbage: framing cannot be trusted.
        tracing::info!("closing a link with an unknown hello");
        return Closed::Eof;
    }
    let _ = conn.rbuf.split_to(HELLO.len());
    conn.wbuf.extend_from_slice(HELLO);
    let max = max_frame_bytes(&config.limits);
    let mut responder = antientropy::Responder::default();
    let mut authenticated = config.auth.is_none();
    let metrics = &worker.metrics.server;
    let mut tally = Tally::default();
    loop {
        // One clock reading per request: each ends where the next starts.
        let mut started = Instant::now();
        loop {
            let frame = match read_frame(&mut conn.rbuf, max) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "closing a link that sent a bad frame");
                    return Closed::Eof;
                }
            };
            let request = decode_request(frame, &config.limits);
            if !authenticated {
                // A link must present the cluster's token first; a peer
                // without it is a stranger and is hung up on.
                let ok = matches!(
                    (&request, &config.auth),
                    (Ok(Request::Auth { token }), Some(secret)) if secret.matches(token)
                );
                if !ok {
                    metrics.auth_failures.inc();
                    tally.observe(metrics, Op::Auth, Outcome::Error, started.elapsed());
                    tally.flush();
                    tracing::warn!("closing a link that did not present the cluster's token");
                    let error = ErrorReply::new(ErrorCode::Auth, "authentication required");
                    encode_response(&Response::Error(error), &mut conn.wbuf);
                    let _ = conn.flush(config.idle_timeout).await;
                    return Closed::Eof;
                }
                authenticated = true;
            }
            let (op, response) = match request {
                Ok(Request::Refill) => {
                    // The stream flushes what was answered before it.
                    tally.flush();
                    if let Err(c) = stream_refill(conn, worker, &config).await {
                        return c;
                    }
                    let ended = Instant::now();
                    tally.observe(metrics, Op::Refill, Outcome::Ok, ended - started);
                    started = ended;
                    deadline = ended + config.idle_timeout;
                    continue;
                }
                Ok(request @ (Request::Digest | Request::Sync { .. } | Request::Apply { .. })) => {
                    (Op::AntiEntropy, responder.handle(worker, request).await)
                }
                Ok(request) => (link_op(&request), worker.execute(request)),
                Err(e) => {
                    let error = ErrorReply::new(ErrorCode::Parse, e.to_string());
                    (Op::Invalid, Response::Error(error))
                }
            };
            let outcome = match &response {
                Response::NotFound => Outcome::NotFound,
                Response::Error(_) => Outcome::Error,
                _ => Outcome::Ok,
            };
            let ended = Instant::now();
            tally.observe(metrics, op, outcome, ended - started);
            started = ended;
            deadline = ended + config.idle_timeout;
            encode_response(&response, &mut conn.wbuf);
        }
        // Counted before the answers go out.
        tally.flush();
        if let Err(c) = conn.flush(config.idle_timeout).await {
            return c;
        }
        config = worker.live.load_full();
        // An initiator that goes quiet mid-round must not hold this
        // worker's round lock for a whole idle timeout.
        let wait_until = if responder.in_round() {
            deadline.min(Instant::now() + antientropy::ROUND_TIMEOUT)
        } else {
            deadline
        };
        if let Err(c) = conn.fill(wait_until, shutdown).await {
            return c;
        }
    }
}

pub(super) fn link_op(request: &Request) -> Op {
    match request {
        Request::Get { .. } => Op::Get,
        Request::Set { .. } => Op::Set,
        Request::Del { .. } => Op::Del,
        Request::Meta { .. } => Op::Meta,
        Request::Expire { .. } => Op::Expire,
        Request::Ping => Op::Ping,
        Request::Auth { .. } => Op::Auth,
        Request::Status | Request::Missed => Op::Status,
        Request::Refill => Op::Refill,
        Request::Digest | Request::Sync { .. } | Request::Apply { .. } => Op::AntiEntropy,
    }
}

/// Streams every entry to a partner that is refilling, a bounded chunk at a
/// time; the socket's backpressure paces the scan, so memory stays bounded
/// on both sides and the shard locks are held only while copying a chunk.
pub(super) async fn stream_refill<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    worker: &Worker,
    config: &ServerConfig,
) -> Result<(), Closed> {
    if worker.state() != WorkerState::Ready {
        encode_response(&Response::Error(Worker::loading()), &mut conn.wbuf);
        return Ok(());
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let mut chunk = Vec::new();
    for shard in 0..worker.store.shard_count() {
        let mut cursor = Some(0);
        while let Some(c) = cursor {
            chunk.clear();
            cursor = worker.store.scan(shard, c, REFILL_CHUNK_BYTES, &mut chunk);
            if chunk.is_empty() {
                continue;
            }
            sent += chunk.len() as u64;
            encode_response(&Response::Chunk(std::mem::take(&mut chunk)), &mut conn.wbuf);
            conn.flush(config.idle_timeout).await?;
        }
    }
    encode_response(&Response::End { entries: sent }, &mut conn.wbuf);
    tracing::info!(entries = sent, elapsed = ?started.elapsed(), "served a refill to the partner");
    // A new process of the partner holds all of this one now, and nothing
    // of its own: whatever this worker lacked is gone from the pair.
    worker.completed("a new process of the partner refilled from it");
    Ok(())
}
