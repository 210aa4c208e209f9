//! A worker's connections: the first byte picks a link (the orchestrator,
//! a partner) or a client session; the link server answers link requests
//! and streams refills.

use super::{antientropy, Worker};
use crate::metrics::{ServerMetrics, Tally};
use crate::net::{self, Closed, Conn, Executor, Handler};
use crate::protocol::link::{
    encode_response, LinkDialect, LinkReply, Request, Response, WorkerState, HELLO_FIRST_BYTE,
    REFILL_CHUNK_BYTES,
};
use crate::protocol::{Op, Outcome};
use crate::shutdown::Shutdown;
use crate::sys::TcpStream;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

pub(super) struct WorkerHandler {
    pub(super) worker: Arc<Worker>,
}

impl Handler for WorkerHandler {
    async fn handle(self: Arc<Self>, stream: TcpStream, mut shutdown: Shutdown) -> Closed {
        let worker = &self.worker;
        let addrs = (stream.peer_addr().ok(), stream.local_addr().ok());
        let stream = match net::secure(stream, &worker.live.load()).await {
            Ok(s) => s,
            Err(closed) => return closed,
        };
        let mut conn = Conn::accepted(stream, &worker.budget);
        // The first byte tells the protocol: a link hello, or a text request.
        let first = net::first_request_deadline(&worker.live.load());
        if let Err(closed) = conn.fill(first, &mut shutdown).await {
            return closed;
        }
        let closed = if conn.rbuf.first() == Some(&HELLO_FIRST_BYTE) {
            serve_link(&mut conn, worker, &mut shutdown).await
        } else {
            net::serve_client(
                &mut conn,
                &**worker,
                (&worker.clients, addrs),
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

/// The link side of a worker: requests from the orchestrator and the
/// partner, the anti-entropy rounds a partner opens, and refill streams.
struct Links<'w> {
    worker: &'w Worker,
    responder: antientropy::Responder,
    /// The refill being streamed, once its first chunk was asked for.
    refill: Option<Refill>,
    /// The link version agreed with the peer: what the stream may carry.
    version: Arc<AtomicU8>,
}

impl Drop for Links<'_> {
    fn drop(&mut self) {
        self.responder.close(self.worker);
    }
}

/// Where a refill stream is: a bounded chunk at a time, so memory stays
/// bounded on both sides and the shard locks are held only while copying
/// a chunk; the socket's backpressure paces the scan.
struct Refill {
    shard: usize,
    cursor: Option<usize>,
    sent: u64,
    started: Instant,
}

/// Serves the link protocol on `conn` (pipelined requests, answered in
/// order, and refill streams) with the session loop of every protocol.
pub(super) async fn serve_link<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    worker: &Worker,
    shutdown: &mut Shutdown,
) -> Closed {
    let dialect = LinkDialect::new(worker.live.load().limits);
    let links = Links {
        worker,
        responder: antientropy::Responder::default(),
        refill: None,
        version: dialect.agreed(),
    };
    let metrics = &worker.metrics.server;
    net::serve_session(conn, dialect, links, &worker.live, metrics, shutdown, None).await
}

impl Executor for Links<'_> {
    type Request = Request;
    type Reply = LinkReply;

    fn op(&self, request: &Request) -> Op {
        request.op()
    }

    async fn execute(
        &mut self,
        clock: &mut Instant,
        requests: &mut Vec<Request>,
        replies: &mut Vec<LinkReply>,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) {
        replies.reserve(requests.len());
        // One clock reading per request: each ends where the next starts.
        for request in requests.drain(..) {
            let op = request.op();
            let response = match request {
                Request::Refill if self.worker.state() == WorkerState::Ready => {
                    // Counted once streamed.
                    replies.push(LinkReply::Streamed);
                    continue;
                }
                Request::Refill => Response::Error(Worker::loading()),
                request @ (Request::Digest { .. }
                | Request::Sync { .. }
                | Request::Apply { .. }) => self.responder.handle(self.worker, request).await,
                request => self.worker.execute(request),
            };
            let outcome = match &response {
                Response::NotFound => Outcome::NotFound,
                Response::Error(_) => Outcome::Error,
                _ => Outcome::Ok,
            };
            let ended = Instant::now();
            tally.observe(metrics, op, outcome, ended - *clock);
            *clock = ended;
            replies.push(LinkReply::Response(response));
        }
    }

    // Link requests finish in memory; a refill streams as the socket drains.
    const ONE_AT_A_TIME: bool = true;

    fn reply_bytes(reply: &LinkReply) -> usize {
        match reply {
            LinkReply::Response(Response::Value { value, .. }) => 32 + value.len(),
            LinkReply::Response(Response::Synced { entries, .. }) => entries
                .iter()
                .map(|e| 48 + e.key.len() + e.data.len())
                .sum(),
            // A stream is written as it goes, not held.
            _ => 32,
        }
    }

    fn stream(
        &mut self,
        reply: &LinkReply,
        out: &mut BytesMut,
        metrics: &ServerMetrics,
        tally: &mut Tally,
    ) -> bool {
        if !matches!(reply, LinkReply::Streamed) {
            return false;
        }
        let store = &self.worker.store;
        let refill = self.refill.get_or_insert_with(|| Refill {
            shard: 0,
            cursor: Some(0),
            sent: 0,
            started: Instant::now(),
        });
        let mut chunk = Vec::new();
        while refill.shard < store.shard_count() {
            let Some(cursor) = refill.cursor else {
                refill.shard += 1;
                refill.cursor = Some(0);
                continue;
            };
            refill.cursor = store.scan(refill.shard, cursor, REFILL_CHUNK_BYTES, &mut chunk);
            if !chunk.is_empty() {
                // What the peer's link version carries of it (an older
                // peer gets no hashes), counted as sent.
                let chunk = Response::Chunk(chunk);
                let sent = chunk.for_version(self.version.load(Ordering::Relaxed));
                if let Response::Chunk(entries) = &*sent {
                    refill.sent += entries.len() as u64;
                }
                encode_response(&sent, out);
                return true;
            }
        }
        let Some(refill) = self.refill.take() else {
            return false;
        };
        encode_response(
            &Response::End {
                entries: refill.sent,
                floor: store.floor(),
            },
            out,
        );
        let elapsed = refill.started.elapsed();
        tally.observe(metrics, Op::Refill, Outcome::Ok, elapsed);
        tracing::info!(
            entries = refill.sent,
            ?elapsed,
            "served a refill to the partner"
        );
        // A new process of the partner holds all of this one now, and
        // nothing of its own: whatever this worker lacked is gone from the
        // pair.
        self.worker
            .completed("a new process of the partner refilled from it");
        false
    }

    fn wait_until(&self, idle: Instant) -> Instant {
        // An initiator that goes quiet mid-round must not hold this
        // worker's round lock for a whole idle timeout, nor one that
        // keeps talking past the round's lease.
        match self.responder.lease_ends() {
            Some(ends) => idle
                .min(Instant::now() + antientropy::ROUND_TIMEOUT)
                .min(ends),
            None => idle,
        }
    }
}
