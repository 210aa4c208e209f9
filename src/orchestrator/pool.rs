//! Persistent, pipelined links from the orchestrator to one worker.
//!
//! A [`Backend`] owns [`LINKS_PER_WORKER`] links. Each link is a task that
//! connects on first use, then writes every request queued to it in one
//! batch per wake-up (one write syscall for many client requests), while a
//! reader task answers the callers in order. A link that breaks fails its
//! in-flight requests and reconnects on the next request. Idle links send a ping now and then so the
//! worker's idle timeout never closes them under a request; if it closes
//! one anyway, the request is retried once on a fresh connection (versioned
//! writes are idempotent, so a retry cannot apply anything twice).

use crate::client::link::{LinkConn, LinkReader, LinkWriter};
use crate::client::ClientError;
use crate::protocol::link::{Request, RequestKind, Response};
use crate::protocol::Limits;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Links per worker; each is one TCP connection carrying pipelined requests.
pub const LINKS_PER_WORKER: usize = 2;

/// Requests that may wait for one link before callers are refused.
pub const LINK_QUEUE_DEPTH: usize = 4096;

/// Requests written to a link in one batch at most.
const LINK_BATCH_MAX: usize = 256;

/// A link idle this long sends a ping to stay open.
pub const KEEPALIVE_MAX: Duration = Duration::from_secs(10);

/// Health of a worker as the orchestrator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Ready: takes reads and writes.
    Up = 0,
    /// Reachable but refilling or starting: takes writes, no reads.
    Loading = 1,
    /// Unreachable or failing: not waited on.
    Down = 2,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Loading => "loading",
            Health::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LinkSettings {
    pub limits: Limits,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
}

struct Pending {
    request: Request,
    reply: Option<oneshot::Sender<Result<Response, ClientError>>>,
}

/// One worker and the links to it.
pub struct Backend {
    pub addr: String,
    links: Vec<mpsc::Sender<Pending>>,
    next_link: AtomicUsize,
    health: AtomicU8,
    /// Entries the worker reported in its last health probe.
    pub entries: AtomicU64,
}

impl Backend {
    /// Starts the link tasks. The worker starts out `Down` until a probe
    /// or a request proves otherwise.
    pub fn start(addr: String, settings: LinkSettings) -> Arc<Backend> {
        let links = (0..LINKS_PER_WORKER)
            .map(|_| {
                let (tx, rx) = mpsc::channel(LINK_QUEUE_DEPTH);
                tokio::spawn(run_link(addr.clone(), settings.clone(), rx));
                tx
            })
            .collect();
        Arc::new(Backend {
            addr,
            links,
            next_link: AtomicUsize::new(0),
            health: AtomicU8::new(Health::Down as u8),
            entries: AtomicU64::new(0),
        })
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Relaxed) {
            0 => Health::Up,
            1 => Health::Loading,
            _ => Health::Down,
        }
    }

    /// Records a new health; returns the previous one.
    pub fn set_health(&self, health: Health) -> Health {
        let previous = self.health.swap(health as u8, Ordering::Relaxed);
        let previous = match previous {
            0 => Health::Up,
            1 => Health::Loading,
            _ => Health::Down,
        };
        if previous != health {
            match health {
                Health::Down => tracing::warn!(worker = %self.addr, "worker is down"),
                _ => tracing::info!(worker = %self.addr, "worker is {}", health.name()),
            }
        }
        previous
    }

    /// Marks the worker down after a request failed on it.
    pub fn report_failure(&self, error: &ClientError) {
        if self.health() != Health::Down {
            tracing::debug!(worker = %self.addr, %error, "request failed");
            self.set_health(Health::Down);
        }
    }

    fn pick_link(&self) -> &mpsc::Sender<Pending> {
        let i = self.next_link.fetch_add(1, Ordering::Relaxed) % self.links.len();
        &self.links[i]
    }

    fn enqueue(
        &self,
        request: Request,
    ) -> Result<oneshot::Receiver<Result<Response, ClientError>>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.pick_link()
            .try_send(Pending {
                request,
                reply: Some(tx),
            })
            .map_err(|_| ClientError::Overloaded(self.addr.clone()))?;
        Ok(rx)
    }

    /// Sends a request and waits up to `timeout` for its response. A link
    /// that turns out closed before answering is retried once.
    pub async fn call(&self, request: Request, timeout: Duration) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        // Each link found closed reconnects on its next request, so a retry
        // per link is enough when the worker closed them all (idle timeout).
        let mut retries = LINKS_PER_WORKER;
        loop {
            let rx = self.enqueue(request.clone())?;
            let result = match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => Err(ClientError::Timeout(timeout)),
                // The link dropped the request with its connection.
                Ok(Err(_)) => Err(ClientError::Closed),
                Ok(Ok(result)) => result,
            };
            match result {
                Err(ClientError::Closed) if retries > 0 => retries -= 1,
                result => return result,
            }
        }
    }

    /// Queues a request whose answer nobody waits for (a write to a worker
    /// believed down: if it is back, it gets the write).
    pub fn send_and_forget(&self, request: Request) {
        let _ = self.pick_link().try_send(Pending {
            request,
            reply: None,
        });
    }
}

async fn run_link(addr: String, settings: LinkSettings, mut rx: mpsc::Receiver<Pending>) {
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        // Connect on demand, with no backoff: requests to a worker believed
        // down are not waited on, and a write that finds the worker back
        // must reach it (a refilling worker needs every live write).
        match LinkConn::connect(&addr, settings.limits, settings.connect_timeout).await {
            Ok(link) => run_connected(link, first, &mut rx, &settings).await,
            Err(e) => {
                tracing::debug!(worker = %addr, error = %e, "cannot connect");
                fail(first, e);
                // Requests that queued during this attempt fail with it.
                while let Ok(p) = rx.try_recv() {
                    fail(p, ClientError::NotConnected(addr.clone()));
                }
            }
        }
    }
}

fn fail(pending: Pending, error: ClientError) {
    if let Some(reply) = pending.reply {
        let _ = reply.send(Err(error));
    }
}

type InFlight = (
    RequestKind,
    Option<oneshot::Sender<Result<Response, ClientError>>>,
);

/// Runs one connection until it breaks or the backend is dropped.
async fn run_connected(
    link: LinkConn,
    first: Pending,
    rx: &mut mpsc::Receiver<Pending>,
    settings: &LinkSettings,
) {
    let (reader, mut writer) = link.split();
    let (inflight_tx, inflight_rx) = mpsc::channel::<InFlight>(LINK_QUEUE_DEPTH);
    let mut reader_task = tokio::spawn(read_responses(reader, inflight_rx));
    let mut next = Some(first);
    loop {
        let batch_start = next.take();
        let pending = match batch_start {
            Some(p) => p,
            None => {
                tokio::select! {
                    p = rx.recv() => match p {
                        Some(p) => p,
                        None => break,
                    },
                    _ = tokio::time::sleep(settings.keepalive) => Pending { request: Request::Ping, reply: None },
                    _ = &mut reader_task => return,
                }
            }
        };
        // Take everything queued so far into one batch, one write.
        let mut batch = vec![pending];
        while batch.len() < LINK_BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        for p in batch {
            writer.queue(&p.request);
            // The reader must learn of a request before its answer can arrive.
            if inflight_tx.send((p.request.kind(), p.reply)).await.is_err() {
                return;
            }
        }
        if let Err(e) = flush(&mut writer, settings).await {
            tracing::debug!(error = %e, "link write failed");
            break;
        }
    }
    reader_task.abort();
}

async fn flush(writer: &mut LinkWriter, settings: &LinkSettings) -> Result<(), ClientError> {
    // A worker that stops reading for this long is treated as gone.
    writer
        .flush(settings.connect_timeout.max(Duration::from_secs(5)))
        .await
}

/// Matches responses to requests in order; on a broken connection fails
/// everything still in flight.
async fn read_responses(mut reader: LinkReader, mut inflight: mpsc::Receiver<InFlight>) {
    loop {
        let Some((kind, reply)) = inflight.recv().await else {
            return;
        };
        match reader.recv(kind).await {
            Ok(response) => {
                if let Some(reply) = reply {
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
                while let Some((_, reply)) = inflight.recv().await {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(ClientError::Closed));
                    }
                }
                return;
            }
        }
    }
}
