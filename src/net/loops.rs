//! Connection loops: single-threaded runtimes, one per thread, that the
//! accept loop hands connections to. A connection stays on the loop it was
//! given, so its reads, its requests and its writes never wake another
//! thread; the loops share the store (its shards' locks are held for one
//! operation), the version clock and the metrics (atomics). This is how
//! memcached spreads connections over its threads, and it spends fewer
//! cycles per request than a work-stealing runtime, whose threads wake each
//! other whenever a task becomes ready on one and runs on another.
//!
//! With one loop, connections are served on the runtime the accept loop
//! runs on. With more, each is a thread of its own, which ends when the
//! [`Loops`] are dropped, and the accept loop's runtime keeps what the
//! worker starts itself (accepting, its refill from the partner, the
//! anti-entropy rounds it begins, expiry, metrics): a refill streaming in
//! never holds up a connection. A partner's refill or anti-entropy round
//! arrives as a connection and is served on a loop like any other.

use crate::sys::TcpStream;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Where accepted connections are served.
pub struct Loops {
    loops: Vec<Loop>,
    /// Dropping these ends the extra loops' threads.
    _stops: Vec<oneshot::Sender<()>>,
}

struct Loop {
    /// The loop's runtime; `None` for the current one.
    #[cfg_attr(feature = "simulation", allow(dead_code))]
    handle: Option<Handle>,
    /// Connections open on this loop.
    open: Arc<AtomicUsize>,
}

impl Loops {
    /// Only the current runtime. Must be called within a runtime.
    pub fn current() -> Loops {
        Loops {
            loops: vec![Loop {
                handle: None,
                open: Arc::default(),
            }],
            _stops: Vec::new(),
        }
    }

    /// `count` threads, each running a single-threaded runtime; for a
    /// `count` of 0 or 1, the current runtime only (as in a simulation,
    /// where everything runs on one thread).
    pub fn start(count: usize) -> io::Result<Loops> {
        if count <= 1 || cfg!(feature = "simulation") {
            return Ok(Loops::current());
        }
        let mut loops = Loops {
            loops: Vec::with_capacity(count),
            _stops: Vec::with_capacity(count),
        };
        for n in 0..count {
            let named =
                |e: io::Error| io::Error::new(e.kind(), format!("connection loop {n}: {e}"));
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready, handle) = std::sync::mpsc::sync_channel(1);
            // The runtime is built and dropped on its own thread: a runtime
            // dropped within another (had the thread failed to start) panics.
            std::thread::Builder::new()
                .name(format!("rcache-loop-{n}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Returns when the sender is dropped; dropping the
                    // runtime then ends what is left on it.
                    let _ = runtime.block_on(stopped);
                })
                .map_err(named)?;
            // Waits only for the runtime to be built, once, at start.
            let handle = handle
                .recv()
                .map_err(|_| io::Error::other(format!("connection loop {n} did not start")))?
                .map_err(named)?;
            loops.loops.push(Loop {
                handle: Some(handle),
                open: Arc::default(),
            });
            loops._stops.push(stop);
        }
        Ok(loops)
    }

    /// Serves `stream` with `serve` on the loop with the fewest open
    /// connections (the first of them on a tie).
    pub fn spawn<S, F>(&self, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(chosen) = self
            .loops
            .iter()
            .min_by_key(|l| l.open.load(Ordering::Relaxed))
        else {
            return;
        };
        let open = OpenOn::new(chosen.open.clone());
        #[cfg(not(feature = "simulation"))]
        if let Some(handle) = &chosen.handle {
            hand_over(handle, stream, serve, open);
            return;
        }
        tokio::spawn(async move {
            serve(stream).await;
            drop(open);
        });
    }
}

/// Serves `stream` on another runtime's loop. A socket is registered with
/// the runtime that polls it: this takes it off the current one and
/// registers it with `handle`'s.
#[cfg(not(feature = "simulation"))]
fn hand_over<S, F>(handle: &Handle, stream: TcpStream, serve: S, open: OpenOn)
where
    S: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand a connection to its loop");
            return;
        }
    };
    handle.spawn(async move {
        match TcpStream::from_std(std_stream) {
            Ok(stream) => serve(stream).await,
            Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
        }
        drop(open);
    });
}

/// Counts a connection open on a loop while it lives.
struct OpenOn(Arc<AtomicUsize>);

impl OpenOn {
    fn new(open: Arc<AtomicUsize>) -> OpenOn {
        open.fetch_add(1, Ordering::Relaxed);
        OpenOn(open)
    }
}

impl Drop for OpenOn {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(feature = "simulation")))]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Connections go to the least busy loop, each is served on its loop's
    /// own thread, and a closed one frees its place.
    #[tokio::test(flavor = "current_thread")]
    async fn connections_spread_over_the_loops_and_are_served_there() {
        let loops = Loops::start(3).expect("loops");
        assert_eq!(loops.loops.len(), 3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut clients = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..6 {
            let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (server, _) = listener.accept().await.expect("accept");
            let (tx, rx) = oneshot::channel();
            loops.spawn(server, move |mut s| async move {
                let _ = tx.send(std::thread::current().id());
                let mut b = [0u8; 1];
                // Echo one byte, then wait for the client to close.
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
                let _ = s.read(&mut b).await;
            });
            threads.push(rx.await.expect("served"));
            clients.push(client);
        }
        let open: Vec<usize> = loops
            .loops
            .iter()
            .map(|l| l.open.load(Ordering::Relaxed))
            .collect();
        assert_eq!(open, vec![2, 2, 2]);
        let distinct: std::collections::HashSet<_> = threads.iter().collect();
        assert_eq!(distinct.len(), 3, "served on three threads: {threads:?}");
        assert!(
            !threads.contains(&std::thread::current().id()),
            "none on the accepting thread"
        );
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(&[i as u8]).await.expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.expect("echo");
            assert_eq!(b[0], i as u8);
        }
        // Closing the connections served on the second loop frees it.
        let served_on_second: Vec<usize> = (0..6).filter(|&i| threads[i] == threads[1]).collect();
        for i in served_on_second.iter().rev() {
            drop(clients.remove(*i));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while loops.loops[1].open.load(Ordering::Relaxed) != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the loop kept its count"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let (tx, rx) = oneshot::channel();
        loops.spawn(server, move |_| async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(
            rx.await.expect("served"),
            threads[1],
            "the freed loop is chosen"
        );
        drop(client);
    }
}
