//! Connections over any `AsyncRead + AsyncWrite` stream: the accept loop
//! (connection limit, shutdown, drain) and TLS here, the buffered
//! connection in `conn`, and in `session` the one session loop that
//! every protocol runs (a [`crate::protocol::dialect::Dialect`] picked
//! once per connection from its first byte, and the daemon's
//! [`Executor`]), executing pipelined client batches as `batch` says.
//!
//! Nothing here knows what a command does: the command table
//! ([`crate::command`]) runs it against the daemon's
//! [`crate::command::Keyspace`], and a worker's links run on its own
//! executor. The stream type is generic so TLS wraps a
//! socket without touching the session loop.

mod batch;
pub mod budget;
mod conn;
pub mod loops;
mod session;
pub mod stream;

pub use budget::ReadBudget;
pub use conn::{write_flushed, Closed, Conn};
pub use loops::Loops;
pub use session::{first_request_deadline, serve_client, serve_session, Executor};
pub use stream::Stream;

use crate::defaults;
use crate::metrics::ServerMetrics;
use crate::protocol::{ErrorCode, Limits, Reply};
use crate::shutdown::Shutdown;
use crate::sys::{bind_error, TcpListener, TcpStream};
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// How long in-flight connections may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Listener settings shared by both daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub idle_timeout: Duration,
    /// A connection's first request, and any request once its first byte
    /// has arrived, must be complete within this.
    pub request_timeout: Duration,
    pub max_connections: usize,
    /// Connections one source address may hold open at once.
    pub max_connections_per_source: usize,
    /// What accepted connections' read buffers may hold together beyond
    /// [`budget::BASE_BYTES`] each (read at start).
    pub max_request_buffers: usize,
    pub limits: Limits,
    /// When set, a client connection must present this token before
    /// anything else (`auth_token`).
    pub auth: Option<crate::auth::Secret>,
    /// The daemons' token: links present it, and a link must present it
    /// before anything else (`cluster_token`, or `auth_token` without one).
    pub cluster: Option<crate::auth::Secret>,
    /// The listener's TLS and the links' (see [`crate::tls`]).
    pub tls: crate::tls::Tls,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            idle_timeout: defaults::IDLE_TIMEOUT,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_connections: defaults::MAX_CONNECTIONS as usize,
            max_connections_per_source: defaults::MAX_CONNECTIONS_PER_SOURCE as usize,
            max_request_buffers: budget::auto_limit(&Limits::default()),
            limits: Limits::default(),
            auth: None,
            cluster: None,
            tls: crate::tls::Tls::default(),
        }
    }
}

impl ServerConfig {
    /// Clients and daemons hold different tokens (`cluster_token` is
    /// set), so a link that presents the clients' is told so.
    pub fn roles(&self) -> bool {
        self.cluster.is_some() && self.cluster != self.auth
    }
}

/// Listener settings that a reload can change while connections are open:
/// every connection reads them again before each wait for a request.
pub type LiveConfig = arc_swap::ArcSwap<ServerConfig>;

/// What a daemon does with each accepted connection; says why it ended.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        shutdown: Shutdown,
    ) -> impl Future<Output = Closed> + Send;
}

/// Binds `address` (`host:port`), naming the address when that fails.
pub async fn bind(address: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| bind_error(address, e))
}

/// Accepts connections until shutdown, serving each on one of `loops`,
/// then waits up to [`DRAIN_TIMEOUT`] for the open ones to finish what they
/// are doing. Past `max_connections` open, or `max_per_source` from one
/// address, a connection is refused on the spot (one error line, no task).
pub async fn serve<H: Handler>(
    listener: TcpListener,
    loops: Loops,
    handler: Arc<H>,
    max_connections: usize,
    max_per_source: usize,
    metrics: Arc<ServerMetrics>,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let sources = Arc::new(Sources::default());
    loop {
        let accepted = tokio::select! {
        biased;
                   _ = shutdown.wait() => break,
                   accepted = listener.accept() => accepted,
               };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_accepted.inc();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.connections_rejected.inc();
            refuse(stream);
            continue;
        };
        let Some(from) = Sources::admit(&sources, peer.ip(), max_per_source) else {
            metrics.connections_rejected.inc();
            refuse(stream);
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let open = OpenConnection::new(metrics.clone());
        loops.spawn(stream, move |stream| async move {
            let closed = handler.handle(stream, shutdown).await;
            if matches!(closed, Closed::Idle) {
                open.metrics.connections_reaped.inc();
            }
            drop(open);
            drop(from);
            drop(permit);
        });
    }
    drop(listener);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain deadline; closing them");
    }
}

/// Wraps an accepted connection in TLS when the listener has a
/// certificate. A client that speaks plaintext to a TLS port is told so in
/// plaintext (`1||TLS required on this port`) and hung up on; a handshake
/// has [`crate::tls::HANDSHAKE_TIMEOUT`] to finish.
pub async fn secure(mut stream: TcpStream, config: &ServerConfig) -> Result<Stream, Closed> {
    /// Every TLS connection starts with a handshake record.
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let Some(server) = &config.tls.server else {
        return Ok(Stream::Plain(stream));
    };
    let deadline = Instant::now() + crate::tls::HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(Closed::Idle),
        Ok(Ok(0)) => return Err(Closed::Eof),
        Ok(Err(e)) => return Err(Closed::Io(e)),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                stream.write_all(b"1||TLS required on this port\n"),
            )
            .await;
            let _ = stream.shutdown().await;
            return Err(Closed::Eof);
        }
        Ok(Ok(_)) => {}
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => Err(Closed::Idle),
        Ok(Ok(tls)) => Ok(Stream::Server(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            Err(Closed::Io(e))
        }
    }
}

/// Counts a connection as open for as long as it lives (its task may end
/// early, even by a panic).
struct OpenConnection {
    metrics: Arc<ServerMetrics>,
}

impl OpenConnection {
    fn new(metrics: Arc<ServerMetrics>) -> OpenConnection {
        metrics.connections_open.inc();
        OpenConnection { metrics }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// Tells a connection over a limit why it is closed, with one
/// non-blocking write (the line fits any socket buffer), and closes it: a
/// flood of refused connections costs no task and no timer.
fn refuse(stream: TcpStream) {
    let mut out = BytesMut::new();
    crate::protocol::text::encode_reply(
        &Reply::error(ErrorCode::TooManyConnections, "too many connections"),
        &mut out,
    );
    let _ = stream.try_write(&out);
}

/// Connections open per source address.
#[derive(Default)]
struct Sources(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl Sources {
    /// Counts a connection from `ip` while the guard lives, unless `ip`
    /// holds `max` already.
    fn admit(sources: &Arc<Sources>, ip: std::net::IpAddr, max: usize) -> Option<FromSource> {
        let mut open = sources.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(FromSource {
            sources: sources.clone(),
            ip,
        })
    }
}

/// One open connection of a source.
struct FromSource {
    sources: Arc<Sources>,
    ip: std::net::IpAddr,
}

impl Drop for FromSource {
    fn drop(&mut self) {
        let mut open = self.sources.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Checks a `host:port` address without resolving it (that happens when
/// connecting, so DNS names follow their records).
pub fn check_address(address: &str) -> Result<(), String> {
    // The longest a layout carries (a DNS name is at most 253 bytes).
    if address.len() > 255 {
        return Err("longer than 255 bytes".into());
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or("expected host:port, e.g. \"127.0.0.1:7001\"")?;
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("write an IPv6 address in brackets, e.g. \"[::1]:7001\"".into());
    }
    port.parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port number"))?;
    Ok(())
}
