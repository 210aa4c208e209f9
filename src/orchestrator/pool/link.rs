//! The tasks of one link: connecting, writing queued requests in batches,
//! reading responses in order and timing them out.

use super::{request_bytes, LinkSettings, Pending, LINK_BATCH_BYTES, LINK_BATCH_MAX};
use crate::client::link::{LinkConn, LinkReader};
use crate::client::ClientError;
use crate::protocol::link::{Request, RequestKind, Response};
use prometheus::Histogram;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

pub(super) async fn run_link(
    addr: String,
    settings: LinkSettings,
    mut rx: mpsc::Receiver<Pending>,
    latency: Histogram,
    probed: Arc<AtomicU8>,
) {
    // Requests taken off the queue but not written: a connection that
    // turned out closed before they were written hands them to the next.
    let mut carried: Vec<Pending> = Vec::new();
    loop {
        if carried.is_empty() {
            let Some(first) = rx.recv().await else {
                return;
            };
            carried.push(first);
        }
        // Connect on demand, with no backoff: requests to a worker believed
        // down are not waited on, and a write that finds the worker back
        // must reach it (a refilling worker needs every live write).
        let dial = settings.dial.load_full();
        match LinkConn::connect(&addr, &dial, settings.connect_timeout).await {
            Ok(link) => {
                carried = run_connected(
                    link,
                    std::mem::take(&mut carried),
                    &mut rx,
                    &settings,
                    &latency,
                    &probed,
                )
                .await;
            }
            Err(e) => {
                tracing::debug!(worker = %addr, error = %e, "cannot connect");
                let mut error = Some(e);
                for p in carried.drain(..) {
                    let e = error
                        .take()
                        .unwrap_or_else(|| ClientError::NotConnected(addr.clone()));
                    fail(p, e);
                }
                // Requests that queued during this attempt fail with it.
                while let Ok(p) = rx.try_recv() {
                    fail(p, ClientError::NotConnected(addr.clone()));
                }
            }
        }
    }
}

pub(super) fn fail(pending: Pending, error: ClientError) {
    if let Some(reply) = pending.reply {
        let _ = reply.send(Err(error));
    }
}

/// A request written to a link and not answered yet.
pub(super) struct InFlight {
    pub(super) kind: RequestKind,
    /// `None` once answered with a timeout (its response is still read,
    /// and dropped), or for a keepalive ping.
    pub(super) reply: Option<oneshot::Sender<Result<Response, ClientError>>>,
    /// When its batch was written.
    pub(super) sent_at: Instant,
    pub(super) deadline: Instant,
}

/// Runs one connection until it breaks or the backend is dropped, writing
/// `first` before anything queued. Returns the requests taken off the
/// queue that this connection never wrote (its reader had found it
/// closed, or the connection speaks an older link version than `probed`,
/// the one the worker's probe agreed on): the next connection writes them.
pub(super) async fn run_connected(
    link: LinkConn,
    first: Vec<Pending>,
    rx: &mut mpsc::Receiver<Pending>,
    settings: &LinkSettings,
    latency: &Histogram,
    probed: &AtomicU8,
) -> Vec<Pending> {
    let version = link.version();
    let (reader, mut writer) = link.split();
    // Unbounded: what is in flight was written to the worker, so it is
    // bounded by what the socket buffers hold, and a link whose answers
    // stop coming is closed after `response_timeout`.
    let (inflight_tx, inflight_rx) = mpsc::unbounded_channel::<InFlight>();
    let mut reader_task = tokio::spawn(read_responses(
        reader,
        inflight_rx,
        settings.response_timeout,
        settings.request_timeout,
        latency.clone(),
    ));
    let mut next = first;
    // One timer for the keepalive, moved only when it fires: re-arming it
    // for every batch would cost a timer update per batch.
    let mut last_write = Instant::now();
    let keepalive = tokio::time::sleep(settings.keepalive);
    tokio::pin!(keepalive);
    loop {
        let mut batch = std::mem::take(&mut next);
        if batch.is_empty() {
            let pending = loop {
                tokio::select! {
                    biased;
                    // A connection the worker closed (its idle timeout) is
                    // noticed by the reader, which watches an idle link
                    // too, before a request is taken for it.
                    _ = &mut reader_task => return Vec::new(),
                    p = rx.recv() => match p {
                        Some(p) => break p,
                        None => {
                            reader_task.abort();
                            return Vec::new();
                        }
                    },
                    _ = &mut keepalive => {
                        let due = last_write + settings.keepalive;
                        if Instant::now() >= due {
                            keepalive.as_mut().reset(Instant::now() + settings.keepalive);
                            break Pending {
                                request: Arc::new(Request::Ping),
                                reply: None,
                                deadline: Instant::now() + settings.request_timeout,
                                _queued: None,
                            };
                        }
                        keepalive.as_mut().reset(due);
                    }
                }
            };
            batch.push(pending);
        }
        // Take everything queued so far into one batch, one write.
        let mut bytes: usize = batch.iter().map(|p| request_bytes(&p.request)).sum();
        while batch.len() < LINK_BATCH_MAX && bytes < LINK_BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += request_bytes(&p.request);
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if reader_task.is_finished() {
            // Closed under us (the worker's idle timeout): nothing of the
            // batch was written, the next connection writes it.
            return batch;
        }
        if version < probed.load(Ordering::Relaxed) {
            // The worker speaks a newer version than this connection (it
            // closed this connection's first hello for another reason, so
            // the older one was tried): once what is in flight is
            // answered, a new connection at the newer version writes the
            // batch. What an older version cannot carry (hash requests,
            // moved keys' refusals) is then carried again.
            tracing::debug!(version, "replacing a link at an older version");
            drop(inflight_tx);
            let _ = reader_task.await;
            return batch;
        }
        // One clock reading per batch: its requests' latencies count from
        // here.
        let sent_at = Instant::now();
        let mut batch = batch.into_iter();
        while let Some(p) = batch.next() {
            if p.deadline <= sent_at {
                // Its caller stopped waiting while the link was busy
                // writing or connecting: it is not sent now.
                fail(p, ClientError::Unsent(settings.request_timeout));
                continue;
            }
            if let Err(e) = writer.queue(&p.request) {
                // The worker speaks an older link version.
                fail(p, e);
                continue;
            }
            // The reader must learn of a request before its answer can arrive.
            let sent = InFlight {
                kind: p.request.kind(),
                reply: p.reply,
                sent_at,
                deadline: p.deadline,
            };
            if let Err(unsent) = inflight_tx.send(sent) {
                // The reader ended: nothing of this batch gets written.
                let mut carried = vec![Pending {
                    request: p.request,
                    reply: unsent.0.reply,
                    deadline: p.deadline,
                    _queued: p._queued,
                }];
                carried.extend(batch);
                return carried;
            }
        }
        // A worker that does not take a batch within the time a request
        // may wait is treated as gone.
        if let Err(e) = writer.flush(settings.request_timeout).await {
            tracing::debug!(error = %e, "link write failed");
            break;
        }
        last_write = sent_at;
    }
    reader_task.abort();
    Vec::new()
}

/// Matches responses to requests in order; answers a request whose caller's
/// deadline passed with a timeout (its response, if it ever comes, is read
/// and dropped); on a broken connection fails everything still in flight.
/// While nothing is in flight it watches the connection, so one the worker
/// closed is replaced before the next request is written to it.
pub(super) async fn read_responses(
    mut reader: LinkReader,
    mut inflight: mpsc::UnboundedReceiver<InFlight>,
    response_timeout: Duration,
    request_timeout: Duration,
    latency: Histogram,
) {
    // Requests written and not answered, in the order they were written.
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
    // Never later than the earliest deadline of a waiting request: moved
    // earlier when one with an earlier deadline arrives (a rare retry), and
    // otherwise only when it fires, never per request.
    let expiry = tokio::time::sleep(request_timeout);
    tokio::pin!(expiry);
    // The link is broken when answers stop coming while one is awaited:
    // no answer between two firings of one timer (so after one to two
    // `response_timeout`s). The timer is moved only when it fires, and
    // answers are counted, not timed.
    let mut answered: u64 = 0;
    let mut answered_at_arming: u64 = 0;
    let stall = tokio::time::sleep(response_timeout);
    tokio::pin!(stall);
    // Latencies are added to the shared histogram a few at a time (each
    // update of it is several atomic operations).
    let latency = latency.local();
    loop {
        while let Ok(next) = inflight.try_recv() {
            learn(next, &mut waiting, &mut expiry);
        }
        let Some(front) = waiting.front() else {
            if reader.buffered() > 0 {
                // Bytes nobody asked for: the framing cannot be trusted.
                tracing::debug!("link sent data while no answer was awaited");
                return;
            }
            // Whatever is still counted locally (the last answers may have
            // been followed by timeouts) is published while idle.
            latency.flush();
            let next = tokio::select! {
                biased;
                next = inflight.recv() => next,
                // Nothing is awaited: the end of the connection is noticed
                // now. (An answer read here belongs to a request whose
                // entry is on its way: it stays buffered for it.)
                ended = reader.closed() => if ended { None } else { continue },
            };
            let Some(next) = next else {
                return;
            };
            learn(next, &mut waiting, &mut expiry);
            // Busy again after being idle: the wait starts now.
            stall.as_mut().reset(Instant::now() + response_timeout);
            answered_at_arming = answered;
            continue;
        };
        let kind = front.kind;
        let response = loop {
            tokio::select! {
                biased;
                response = reader.recv(kind) => break response,
                _ = &mut expiry => {
                    while let Ok(next) = inflight.try_recv() {
                        learn(next, &mut waiting, &mut expiry);
                    }
                    let now = Instant::now();
                    // Answers come in order: the oldest request unanswered
                    // past its deadline means nothing came back for a whole
                    // `request_timeout`. Its caller marks the worker down;
                    // the connection goes too, so the worker is reached on
                    // a fresh one when a probe finds it back (one whose
                    // bytes were lost, as across a partition or a peer that
                    // restarted behind it, would never answer again).
                    if waiting.front().is_some_and(|w| w.deadline <= now) {
                        break Err(ClientError::Timeout(request_timeout));
                    }
                    let mut next_deadline = now + request_timeout;
                    for w in waiting.iter_mut() {
                        if w.deadline > now {
                            next_deadline = next_deadline.min(w.deadline);
                        } else if let Some(reply) = w.reply.take() {
                            let _ = reply.send(Err(ClientError::Timeout(request_timeout)));
                        }
                    }
                    expiry.as_mut().reset(next_deadline);
                }
                _ = &mut stall => {
                    if answered == answered_at_arming {
                        break Err(ClientError::Timeout(response_timeout));
                    }
                    answered_at_arming = answered;
                    stall.as_mut().reset(Instant::now() + response_timeout);
                }
            }
        };
        answered += 1;
        let Some(InFlight { reply, sent_at, .. }) = waiting.pop_front() else {
            return;
        };
        match response {
            Ok(response) => {
                if let Some(reply) = reply {
                    // The time the answer was read, without a clock
                    // reading per answer.
                    let took = reader.read_at().saturating_duration_since(sent_at);
                    latency.observe(took.as_secs_f64());
                    // Counted before the caller has its answer when nothing
                    // else is in flight.
                    if waiting.is_empty() || answered % 64 == 0 {
                        latency.flush();
                    }
                    let _ = reply.send(Ok(response));
                }
            }
            Err(e) => {
                let error = match e {
                    ClientError::Closed | ClientError::Io(_) => ClientError::Closed,
                    other => other,
                };
                tracing::debug!(error = %error, "link read failed");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
                inflight.close();
                while let Ok(next) = inflight.try_recv() {
                    waiting.push_back(next);
                }
                for w in waiting {
                    if let Some(reply) = w.reply {
                        let _ = reply.send(Err(ClientError::Closed));
                    }
                }
                return;
            }
        }
    }
}

/// Adds a written request to the reader's queue, moving the expiry timer
/// earlier if its deadline is the earliest.
pub(super) fn learn(
    next: InFlight,
    waiting: &mut VecDeque<InFlight>,
    expiry: &mut std::pin::Pin<&mut tokio::time::Sleep>,
) {
    if next.deadline < expiry.deadline() {
        expiry.as_mut().reset(next.deadline);
    }
    waiting.push_back(next);
}
