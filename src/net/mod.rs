//! Connections over any `AsyncRead + AsyncWrite` stream: the accept loop
//! (connection limit, shutdown, drain), the buffered connection both sides
//! use, and the text-protocol driver that both daemons run for clients.
//!
//! Nothing here knows what a command does: a [`Service`] executes it. The
//! stream type is generic so TLS wraps a socket without touching the drivers.

pub mod stream;

pub use stream::Stream;

use crate::metrics::{Op, Outcome, ServerMetrics};
use crate::protocol::text::{encode_reply, TextDecoder};
use crate::protocol::{Command, ErrorCode, Limits, Reply};
use crate::sys::{TcpListener, TcpStream};
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// How long in-flight connections may take to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read per read call.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Replies are written out once this many bytes are pending, even mid-batch.
const WRITE_HIGH_WATER_BYTES: usize = 256 * 1024;

/// Listener settings shared by both daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub limits: Limits,
    /// When set, a connection must present this token before anything else.
    pub auth: Option<crate::auth::Secret>,
    /// The listener's TLS and the links' (see [`crate::tls`]).
    pub tls: crate::tls::Tls,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            idle_timeout: Duration::from_secs(300),
            max_connections: 10_000,
            limits: Limits::default(),
            auth: None,
            tls: crate::tls::Tls::default(),
        }
    }
}

/// Listener settings that a reload can change while connections are open:
/// every connection reads them again before each wait for a request.
pub type LiveConfig = arc_swap::ArcSwap<ServerConfig>;

/// Fires once; every clone sees it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

impl Shutdown {
    /// Resolves once shutdown has begun (or its trigger is gone).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// What a daemon does with each accepted connection; says why it ended.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        shutdown: Shutdown,
    ) -> impl Future<Output = Closed> + Send;
}

/// Executes client commands (the worker's store, the orchestrator's router).
pub trait Service: Send + Sync + 'static {
    fn call(&self, command: Command) -> impl Future<Output = Reply> + Send;
}

/// Binds `address` (`host:port`), naming the address when that fails.
pub async fn bind(address: &str) -> io::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|e| bind_error(address, e))
}

/// Names the address a bind failed on, and says so when the port is taken.
pub fn bind_error(address: &str, e: io::Error) -> io::Error {
    let hint = if e.kind() == io::ErrorKind::AddrInUse {
        ": the port is taken by another process"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("cannot listen on {address}: {e}{hint}"))
}

/// Accepts connections until shutdown, then waits up to [`DRAIN_TIMEOUT`]
/// for the open ones to finish what they are doing.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    max_connections: usize,
    metrics: Arc<ServerMetrics>,
    mut shutdown: Shutdown,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    loop {
        let accepted = tokio::select! {
        biased;
                   _ = shutdown.wait() => break,
                   accepted = listener.accept() => accepted,
               };
        let stream = match accepted {
            Ok((stream, _)) => stream,
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
            tokio::spawn(refuse(stream));
            continue;
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let open = OpenConnection::new(metrics.clone());
        tokio::spawn(async move {
            let closed = handler.handle(stream, shutdown).await;
            if matches!(closed, Closed::Idle) {
                open.metrics.connections_reaped.inc();
            }
            drop(open);
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

/// Tells a connection over the limit why it is closed.
async fn refuse(mut stream: TcpStream) {
    let mut out = BytesMut::new();
    encode_reply(
        &Reply::error(ErrorCode::TooManyConnections, "too many connections"),
        &mut out,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// Writes `buf` and flushes: under TLS the encrypting layer may hold
/// written bytes until flushed.
pub async fn write_flushed<W: AsyncWrite + Unpin>(io: &mut W, buf: &[u8]) -> io::Result<()> {
    io.write_all(buf).await?;
    io.flush().await
}

/// Why a connection ended.
#[derive(Debug)]
pub enum Closed {
    /// The peer closed it.
    Eof,
    /// Nothing complete arrived for the idle timeout.
    Idle,
    /// The daemon is shutting down.
    Shutdown,
    Io(io::Error),
}

/// A stream with its read and write buffers.
pub struct Conn<S> {
    pub io: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(io: S) -> Conn<S> {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }

    /// Reads more bytes, giving up at `deadline` or when shutdown begins.
    pub async fn fill(
        &mut self,
        deadline: Instant,
        shutdown: &mut Shutdown,
    ) -> Result<usize, Closed> {
        tokio::select! {
        biased;
                   _ = shutdown.wait() => Err(Closed::Shutdown),
                   read = self.fill_until(deadline) => read,
               }
    }

    /// Reads more bytes, giving up at `deadline`.
    pub async fn fill_until(&mut self, deadline: Instant) -> Result<usize, Closed> {
        self.rbuf.reserve(READ_CHUNK_BYTES);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.rbuf)).await {
            Err(_) => Err(Closed::Idle),
            Ok(Ok(0)) => Err(Closed::Eof),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(Closed::Io(e)),
        }
    }

    /// Writes out everything buffered; a peer that does not read for
    /// `timeout` is given up on, so it cannot pin the buffer.
    pub async fn flush(&mut self, timeout: Duration) -> Result<(), Closed> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(timeout, write_flushed(&mut self.io, &self.wbuf)).await {
            Err(_) => Err(Closed::Idle),
            Ok(Err(e)) => Err(Closed::Io(e)),
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
        }
    }
}

/// Serves the text protocol on `conn` until the client leaves, idles past
/// the timeout, or shutdown begins. `conn.rbuf` may already hold bytes
/// read while detecting the protocol.
///
/// Every complete request in the buffer is executed before the replies are
/// written with one write (pipelining). A request in progress when shutdown
/// begins completes and is answered.
pub async fn serve_text<S, Svc>(
    conn: &mut Conn<S>,
    service: &Svc,
    live: &LiveConfig,
    metrics: &ServerMetrics,
    shutdown: &mut Shutdown,
) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
    Svc: Service,
{
    let mut config = live.load_full();
    let mut decoder = TextDecoder::new(config.limits);
    let mut last_request = Instant::now();
    let mut authenticated = false;
    loop {
        loop {
            let started = Instant::now();
            let (op, reply) = match decoder.decode(&mut conn.rbuf) {
                Ok(None) => break,
                Ok(Some(Command::Exit)) => {
                    metrics.observe(Op::Exit, Outcome::Ok, started.elapsed());
                    let _ = conn.flush(config.idle_timeout).await;
                    return Closed::Eof;
                }
                Ok(Some(Command::Auth { token })) => {
                    let reply = match &config.auth {
                        // A daemon without a token accepts any (SPEC).
                        None => Reply::Done,
                        Some(secret)
                            if token.len() <= crate::protocol::link::MAX_TOKEN_BYTES
                                && secret.matches(&token) =>
                        {
                            authenticated = true;
                            Reply::Done
                        }
                        Some(_) => {
                            authenticated = false;
                            metrics.auth_failures.inc();
                            Reply::error(ErrorCode::Auth, "invalid token")
                        }
                    };
                    (Op::Auth, reply)
                }
                Ok(Some(command)) if config.auth.is_some() && !authenticated => (
                    command_op(&command),
                    Reply::error(
                        ErrorCode::Auth,
                        "authentication required: send auth||<token> first",
                    ),
                ),
                Ok(Some(command)) => {
                    let op = command_op(&command);
                    (op, service.call(command).await)
                }
                Err(error) => (Op::Invalid, Reply::Error(error)),
            };
            last_request = Instant::now();
            metrics.observe(op, reply_outcome(&reply), last_request - started);
            encode_reply(&reply, &mut conn.wbuf);
            if conn.wbuf.len() >= WRITE_HIGH_WATER_BYTES {
                if let Err(closed) = conn.flush(config.idle_timeout).await {
                    return closed;
                }
            }
        }
        if let Err(closed) = conn.flush(config.idle_timeout).await {
            return closed;
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

/// The metrics label of a client command.
pub fn command_op(command: &Command) -> Op {
    match command {
        Command::Get { .. } => Op::Get,
        Command::Set { .. } => Op::Set,
        Command::Del { .. } => Op::Del,
        Command::Ping => Op::Ping,
        Command::Auth { .. } => Op::Auth,
        Command::Exit => Op::Exit,
        Command::Cluster => Op::Cluster,
    }
}

/// The metrics result of a reply.
pub fn reply_outcome(reply: &Reply) -> Outcome {
    match reply {
        Reply::Error(e) if e.code == ErrorCode::NotFound => Outcome::NotFound,
        Reply::Error(_) => Outcome::Error,
        _ => Outcome::Ok,
    }
}
