//! Connections over any `AsyncRead + AsyncWrite` stream: the accept loop
//! (connection limit, shutdown, drain), the buffered connection both sides
//! use, and the text-protocol driver that both daemons run for clients.
//!
//! Nothing here knows what a command does: the command table
//! ([`crate::command`]) runs it against the daemon's [`Keyspace`]. The
//! stream type is generic so TLS wraps a socket without touching the drivers.

pub mod loops;
pub mod stream;

pub use loops::Loops;
pub use stream::Stream;

use crate::command::{self, Keyspace, Route};
use crate::metrics::{Op, Outcome, ServerMetrics, Tally};
use crate::protocol::resp;
use crate::protocol::text::{encode_reply, TextDecoder};
use crate::protocol::{Command, ErrorCode, Limits, Reply};
use crate::shutdown::Shutdown;
use crate::sys::{bind_error, TcpListener, TcpStream};
use bytes::BytesMut;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
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
/// are doing.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    loops: Loops,
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
        loops.spawn(stream, move |stream| async move {
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

    /// Writes out the buffered replies once they pass the high-water mark
    /// (mid-batch, so large replies never pile up).
    pub async fn flush_if_full(&mut self, timeout: Duration) -> Result<(), Closed> {
        if self.wbuf.len() >= WRITE_HIGH_WATER_BYTES {
            self.flush(timeout).await
        } else {
            Ok(())
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
                // A large reply's buffer is not kept for the connection's life.
                if self.wbuf.capacity() > 4 * WRITE_HIGH_WATER_BYTES {
                    self.wbuf = BytesMut::with_capacity(READ_CHUNK_BYTES);
                }
                Ok(())
            }
        }
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
    if conn.rbuf.first() == Some(&resp::FIRST_BYTE) {
        serve_resp(conn, service, live, metrics, shutdown).await
    } else {
        serve_text(conn, service, live, metrics, shutdown).await
    }
}

/// How many requests of a pipeline are executed together (see
/// [`execute`]): replies are held until their batch is done, so the batch
/// follows the size of the replies, keeping about [`WRITE_HIGH_WATER_BYTES`]
/// of them in memory per connection. A connection starts with
/// [`Window::FIRST`] and moves between 1 and [`Window::MAX`].
struct Window(usize);

impl Window {
    const FIRST: usize = 1;
    const MAX: usize = 256;

    fn new() -> Window {
        Window(Window::FIRST)
    }

    /// Sizes the next batch after one whose replies took `bytes`.
    fn observe(&mut self, replies: &[Reply]) {
        if replies.is_empty() {
            return;
        }
        let bytes: usize = replies.iter().map(reply_bytes).sum();
        let average = (bytes / replies.len()).max(1);
        let fits = (WRITE_HIGH_WATER_BYTES / average).clamp(1, Window::MAX);
        // Grow gradually, shrink at once.
        self.0 = fits.min(self.0.saturating_mul(2));
    }
}

/// About what a reply takes in memory and on the wire.
fn reply_bytes(reply: &Reply) -> usize {
    16 + match reply {
        Reply::Value(v) => v.len(),
        Reply::Values(values) => values.iter().flatten().map(|v| v.len() + 16).sum(),
        Reply::Error(e) => e.message.len(),
        _ => 0,
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

/// Executes `commands` and returns their replies in order.
///
/// A keyspace whose commands wait on the network ([`Keyspace::CONCURRENT`],
/// the orchestrator) runs them concurrently, so a pipelining client keeps
/// many requests in flight to the workers. Order is kept where it can be
/// observed: a command that touches a key an earlier command of the batch
/// touches, either of them writing, waits until the earlier ones are done.
async fn execute<K: Keyspace>(
    service: &K,
    commands: Vec<Command>,
    metrics: &ServerMetrics,
    tally: &mut Tally,
) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(commands.len());
    if !K::CONCURRENT || commands.len() == 1 {
        // One clock reading per command: each ends where the next starts.
        let mut started = Instant::now();
        for command in commands {
            let op = command::spec(&command).op;
            let reply = command::run(service, command).await;
            let ended = Instant::now();
            tally.observe(metrics, op, reply_outcome(&reply), ended - started);
            started = ended;
            replies.push(reply);
        }
        return replies;
    }
    // Keys are told apart by a 64-bit hash of their bytes (seeded per
    // batch, so clients cannot aim collisions): two keys with the same hash
    // only keep an order they did not need, never lose one.
    let hasher = foldhash::fast::RandomState::default();
    let mut hashes: Vec<u64> = Vec::new();
    // Sized once for the batch and reused by every segment.
    let mut touched: hashbrown::HashMap<u64, bool, PassThrough> =
        hashbrown::HashMap::with_capacity_and_hasher(commands.len(), PassThrough(0));
    let mut commands = commands.into_iter().peekable();
    while commands.peek().is_some() {
        // One segment: commands that do not conflict with each other.
        // Keys touched so far (by hash), and whether one of the commands
        // writes it.
        touched.clear();
        let mut segment_writes = false;
        // A command about the whole store (DBSIZE, INFO) is in the segment.
        let mut segment_whole = false;
        let mut segment = Vec::new();
        // Their metrics labels, read with the rest of their specs.
        let mut ops = Vec::new();
        while let Some(next) = commands.peek() {
            let spec = command::spec(next);
            let (writes, op) = (spec.writes, spec.op);
            hashes.clear();
            spec.route
                .for_each_key(|k| hashes.push(std::hash::BuildHasher::hash_one(&hasher, k)));
            // A command about the whole store sees every write before it,
            // and a write after it waits for it.
            let whole = matches!(spec.route, Route::AllPairs);
            let conflict = (whole && segment_writes)
                || (writes && segment_whole)
                || hashes
                    .iter()
                    .any(|h| touched.get(h).is_some_and(|&w| w || writes));
            if conflict && !segment.is_empty() {
                break;
            }
            segment_writes |= writes;
            segment_whole |= whole;
            for &h in &hashes {
                *touched.entry(h).or_insert(false) |= writes;
            }
            if let Some(command) = commands.next() {
                segment.push(command);
                ops.push(op);
            }
        }
        replies.extend(run_together(service, segment, &ops, metrics, tally).await);
    }
    replies
}

/// A hasher for keys that are hashes already.
#[derive(Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl std::hash::BuildHasher for PassThrough {
    type Hasher = PassThrough;

    fn build_hasher(&self) -> PassThrough {
        PassThrough(0)
    }
}

/// Runs `commands` (labelled `ops`) concurrently; replies in order.
async fn run_together<K: Keyspace>(
    service: &K,
    commands: Vec<Command>,
    ops: &[Op],
    metrics: &ServerMetrics,
    tally: &mut Tally,
) -> Vec<Reply> {
    let started = Instant::now();
    let calls = commands
        .into_iter()
        .map(|c| command::run(service, c))
        .collect();
    crate::join::join_all_then(calls, |i, reply, now| {
        tally.observe(metrics, ops[i], reply_outcome(reply), now - started);
    })
    .await
}

/// A reply of a batch, in the order of the requests.
enum Slot<A> {
    /// The reply to the batch's n-th executed command.
    Run(usize),
    /// Given without executing anything.
    Ready(A),
}

/// Serves the text protocol on `conn` until the client leaves, idles past
/// the timeout, or shutdown begins.
///
/// The complete requests of each read are executed as one batch (see
/// [`execute`]) and their replies written with one write (pipelining). A
/// request in progress when shutdown begins completes and is answered.
pub async fn serve_text<S, K>(
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
    let mut config = live.load_full();
    let mut decoder = TextDecoder::new(config.limits);
    let mut last_request = Instant::now();
    let mut authenticated = false;
    let mut window = Window::new();
    let mut tally = Tally::default();
    loop {
        let mut exit = false;
        loop {
            let mut slots: Vec<Slot<Reply>> = Vec::new();
            let mut commands = Vec::new();
            while slots.len() < window.0 {
                let decoded = decoder.decode(&mut conn.rbuf);
                let ready = match decoded {
                    Ok(None) => break,
                    Ok(Some(Command::Exit)) => {
                        tally.observe(metrics, Op::Exit, Outcome::Ok, Duration::ZERO);
                        exit = true;
                        break;
                    }
                    Ok(Some(Command::Auth { token })) => {
                        authenticated = token_accepted(&config, &token, metrics);
                        let reply = if authenticated {
                            Reply::Done
                        } else {
                            Reply::error(ErrorCode::Auth, "invalid token")
                        };
                        tally.observe(metrics, Op::Auth, reply_outcome(&reply), Duration::ZERO);
                        reply
                    }
                    Ok(Some(command)) if config.auth.is_some() && !authenticated => {
                        let reply = Reply::error(
                            ErrorCode::Auth,
                            "authentication required: send auth||<token> first",
                        );
                        tally.observe(
                            metrics,
                            command::spec(&command).op,
                            Outcome::Error,
                            Duration::ZERO,
                        );
                        reply
                    }
                    Ok(Some(command)) => {
                        slots.push(Slot::Run(commands.len()));
                        commands.push(command);
                        continue;
                    }
                    Err(error) => {
                        tally.observe(metrics, Op::Invalid, Outcome::Error, Duration::ZERO);
                        Reply::Error(error)
                    }
                };
                slots.push(Slot::Ready(ready));
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
                    Slot::Run(i) => encode_reply(&replies[*i], &mut conn.wbuf),
                    Slot::Ready(reply) => encode_reply(reply, &mut conn.wbuf),
                }
                if let Err(closed) = conn.flush_if_full(config.idle_timeout).await {
                    return closed;
                }
            }
            if exit {
                break;
            }
        }
        if let Err(closed) = conn.flush(config.idle_timeout).await {
            return closed;
        }
        if exit {
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

/// What Redis says to a command before `AUTH` on a connection that needs it.
const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Serves RESP2 on `conn`: the same batching as [`serve_text`], with
/// Redis's replies. A framing error is answered and closes the connection
/// (a RESP stream cannot be resynchronised); `QUIT` is answered `+OK`.
pub async fn serve_resp<S, K>(
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
    use resp::{Answer, RespRequest};
    let mut config = live.load_full();
    let mut decoder = resp::RespDecoder::new(config.limits);
    let mut last_request = Instant::now();
    let mut authenticated = false;
    let mut version = resp::Version::Resp2;
    let mut window = Window::new();
    let mut tally = Tally::default();
    let error = |line: &'static str| Answer::Error(line.into());
    loop {
        let mut close = false;
        loop {
            // Each reply is encoded in the version in force when its
            // request arrived (a `HELLO 3` may come mid-batch).
            let mut slots: Vec<Slot<(Answer, resp::Version)>> = Vec::new();
            let mut commands = Vec::new();
            let mut shapes = Vec::new();
            while slots.len() < window.0 {
                let open = config.auth.is_none() || authenticated;
                let answer = match decoder.decode(&mut conn.rbuf) {
                    Ok(None) => break,
                    Err(e) => {
                        tally.observe(metrics, Op::Invalid, Outcome::Error, Duration::ZERO);
                        close = true;
                        Answer::Error(format!("ERR {e}").into())
                    }
                    Ok(Some(RespRequest::Quit)) => {
                        tally.observe(metrics, Op::Other, Outcome::Ok, Duration::ZERO);
                        close = true;
                        Answer::Ok
                    }
                    Ok(Some(RespRequest::Auth { token })) => {
                        // As in Redis, a failed AUTH leaves an earlier
                        // successful one in force.
                        let accepted = token_accepted(&config, &token, metrics);
                        authenticated |= accepted;
                        let answer = if accepted {
                            Answer::Ok
                        } else {
                            error(WRONGPASS)
                        };
                        tally.observe(metrics, Op::Auth, answer_outcome(&answer), Duration::ZERO);
                        answer
                    }
                    Ok(Some(RespRequest::Hello {
                        version: asked,
                        token,
                    })) => {
                        let answer = match token {
                            Some(token) => {
                                let accepted = token_accepted(&config, &token, metrics);
                                authenticated |= accepted;
                                if accepted {
                                    Answer::Ok
                                } else {
                                    error(WRONGPASS)
                                }
                            }
                            None if open => Answer::Ok,
                            None => error(
                                "NOAUTH HELLO must be called with the client already \
                                 authenticated, otherwise the HELLO <proto> AUTH <user> <pass> \
                                 option can be used to authenticate the client and select the \
                                 RESP protocol version at the same time",
                            ),
                        };
                        tally.observe(metrics, Op::Other, answer_outcome(&answer), Duration::ZERO);
                        if answer == Answer::Ok {
                            version = match asked {
                                Some(3) => resp::Version::Resp3,
                                Some(_) => resp::Version::Resp2,
                                None => version,
                            };
                            let mut hello = BytesMut::new();
                            resp::encode_hello(K::ROLE, version, &mut hello);
                            Answer::Raw(hello.freeze())
                        } else {
                            answer
                        }
                    }
                    Ok(Some(_)) if !open => {
                        tally.observe(metrics, Op::Invalid, Outcome::Error, Duration::ZERO);
                        error(NOAUTH)
                    }
                    Ok(Some(RespRequest::Run(command, shape))) => {
                        slots.push(Slot::Run(commands.len()));
                        commands.push(command);
                        shapes.push((shape, version));
                        continue;
                    }
                    Ok(Some(RespRequest::Answer(answer))) => {
                        let op = match answer {
                            Answer::Pong => Op::Ping,
                            Answer::Error(_) => Op::Invalid,
                            _ => Op::Other,
                        };
                        tally.observe(metrics, op, answer_outcome(&answer), Duration::ZERO);
                        answer
                    }
                };
                slots.push(Slot::Ready((answer, version)));
                if close {
                    break;
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
                    Slot::Run(i) => {
                        let (shape, version) = shapes[*i];
                        resp::encode_reply(&replies[*i], shape, version, &mut conn.wbuf)
                    }
                    Slot::Ready((answer, version)) => {
                        resp::encode_answer(answer, *version, &mut conn.wbuf)
                    }
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

fn answer_outcome(answer: &resp::Answer) -> Outcome {
    match answer {
        resp::Answer::Error(_) => Outcome::Error,
        _ => Outcome::Ok,
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
