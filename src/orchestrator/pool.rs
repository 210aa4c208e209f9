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
    /// Reachable, but it missed an acknowledged write: takes writes, serves
    /// reads only when its partner cannot, until it restarts (and refills).
    Behind = 3,
}

impl Health {
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Loading => "loading",
            Health::Down => "down",
            Health::Behind => "behind",
        }
    }

    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Up,
            1 => Health::Loading,
            3 => Health::Behind,
            _ => Health::Down,
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
    /// The worker process's incarnation as last probed (0: never seen).
    incarnation: AtomicU64,
    /// The incarnation that missed a write (0: none missed; `u64::MAX`:
    /// missed while its incarnation was unknown).
    missed: AtomicU64,
}

impl Backend {
    /// Starts the link tasks. The worker starts out `Up`: the first failed
    /// request or probe says otherwise.
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
            health: AtomicU8::new(Health::Up as u8),
            entries: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        })
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Records a new health; returns the previous one.
    pub fn set_health(&self, health: Health) -> Health {
        let previous = Health::from_u8(self.health.swap(health as u8, Ordering::Relaxed));
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

    /// Records that this worker may lack an acknowledged write: it serves
    /// no reads while its partner can, until a new incarnation (a restart,
    /// which refills from the partner) shows up.
    pub fn missed_write(&self) {
        let known = self.incarnation.load(Ordering::Relaxed);
        let mark = if known == 0 { u64::MAX } else { known };
        if self.missed.swap(mark, Ordering::Relaxed) == 0 {
            tracing::warn!(worker = %self.addr, "worker missed an acknowledged write; no reads from it until it restarts");
        }
        if self.health() != Health::Down {
            self.set_health(Health::Behind);
        }
    }

    /// Applies a probe's answer: the worker is reachable in `healthy`
    /// state (`Up` or `Loading`) as process `incarnation`.
    pub fn probed(&self, healthy: Health, incarnation: u64, entries: u64) {
        self.entries.store(entries, Ordering::Relaxed);
        self.incarnation.store(incarnation, Ordering::Relaxed);
        let missed = self.missed.load(Ordering::Relaxed);
        if missed != 0 && missed != u64::MAX && missed != incarnation {
            // A new process: it refilled from its partner (or is refilling).
            self.missed.store(0, Ordering::Relaxed);
        }
        if self.missed.load(Ordering::Relaxed) != 0 && healthy == Health::Up {
            self.set_health(Health::Behind);
        } else {
            self.set_health(healthy);
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
        self.missed_write();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backend() -> Arc<Backend> {
        let settings = LinkSettings {
            limits: Limits::default(),
            connect_timeout: Duration::from_millis(100),
            keepalive: Duration::from_secs(10),
        };
        Backend::start("127.0.0.1:9".into(), settings)
    }

    #[tokio::test]
    async fn a_worker_that_missed_a_write_serves_no_reads_until_it_restarts() {
        let b = backend();
        b.probed(Health::Up, 5, 0);
        assert_eq!(b.health(), Health::Up);
        b.missed_write();
        assert_eq!(b.health(), Health::Behind);
        b.probed(Health::Up, 5, 0);
        assert_eq!(b.health(), Health::Behind, "same process: still behind");
        b.probed(Health::Loading, 6, 0);
        assert_eq!(b.health(), Health::Loading, "a new process refills");
        b.probed(Health::Up, 6, 0);
        assert_eq!(b.health(), Health::Up);
    }

    #[tokio::test]
    async fn a_miss_before_the_first_probe_is_never_forgotten_by_a_probe() {
        let b = backend();
        b.report_failure(&ClientError::Closed);
        assert_eq!(b.health(), Health::Down);
        b.missed_write();
        assert_eq!(b.health(), Health::Down);
        b.probed(Health::Up, 42, 0);
        assert_eq!(b.health(), Health::Behind);
    }
}
