//! [`Client`]: the Rust client library of rcache, async on tokio.
//!
//! It speaks the text protocol to one or more orchestrators (or a worker
//! directly), keeps a pool of connections to each, and fails over: a
//! request that cannot reach one address goes to the next, and the address
//! that answered is tried first from then on. Every request has a timeout.
//! Connections may use TLS and present the cluster's `auth_token`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rcache::client::Error> {
//! use std::time::Duration;
//!
//! let client = rcache::Client::builder(["10.0.0.1:7000", "10.0.0.2:7000"])
//!     .timeout(Duration::from_secs(2))
//!     .auth_token("correct horse battery staple")
//!     .build();
//! client.set("greeting", "hello").await?;
//! client.set_with_ttl("session:42", "token", Duration::from_secs(60)).await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! assert!(client.delete("greeting").await?);
//! # Ok(())
//! # }
//! ```
//!
//! Retries: a read is retried on the next address after any transport
//! failure. A write is retried only when it certainly never left (the
//! connection could not be opened or authenticated); once it was written,
//! a failure means its outcome is unknown and the error says so
//! ([`Error::is_outcome_unknown`]). A pooled connection is checked before
//! reuse, so one the server closed while idle costs nothing. Errors the
//! server answered with ([`Error::Server`]) are not retried: another
//! orchestrator reaches the same workers.
//!
//! The text protocol carries values without `\n` and `\r`; use a Redis
//! client over RESP for arbitrary bytes. Use a client within one tokio
//! runtime: its pooled connections belong to the runtime that opened them.

use super::text::TextClient;
use super::ClientError;
use crate::protocol::{Command, ErrorCode, ErrorReply, Expiry, Reply, SetWhen};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;

/// Idle connections kept per address unless the builder says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 8;

/// What a [`Client`] request can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// The server answered with an error (its code and message).
    #[error("the server answered: {0}")]
    Server(ErrorReply),
    /// The request may have been applied, but no answer came.
    #[error("{addr}: {source} (the request may have been applied)")]
    Unknown { addr: String, source: ClientError },
    /// No address could be reached; each one's failure is listed.
    #[error("no server could be reached: {0}")]
    Unreachable(String),
    /// The request cannot travel in the text protocol.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// The request may or may not have been applied.
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::Unknown { .. })
            || matches!(self, Error::Server(e) if e.code == ErrorCode::Unavailable)
    }
}

/// Settings of a [`Client`]; see [`Client::builder`].
#[derive(Clone)]
pub struct Builder {
    addrs: Vec<String>,
    timeout: Duration,
    connect_timeout: Duration,
    pool_size: usize,
    token: Option<Bytes>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Builder {
    /// The longest wait for an answer to one request, per address tried
    /// (default 3 s: longer than an orchestrator's failover between the
    /// workers of a pair).
    pub fn timeout(mut self, timeout: Duration) -> Builder {
        self.timeout = timeout;
        self
    }

    /// The longest wait to open a connection (TLS handshake included;
    /// default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Builder {
        self.connect_timeout = timeout;
        self
    }

    /// Idle connections kept per address (default [`DEFAULT_POOL_SIZE`]).
    /// More are opened when more requests are in flight at once.
    pub fn pool_size(mut self, size: usize) -> Builder {
        self.pool_size = size;
        self
    }

    /// The cluster's `auth_token`, presented on every new connection.
    pub fn auth_token(mut self, token: impl AsRef<[u8]>) -> Builder {
        self.token = Some(Bytes::copy_from_slice(token.as_ref()));
        self
    }

    /// Speak TLS with this configuration (see [`crate::tls::client_config`]).
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Builder {
        self.tls = Some(config);
        self
    }

    /// The client. Nothing is dialed until the first request.
    pub fn build(self) -> Client {
        let pools = self.addrs.iter().map(|_| Mutex::new(Vec::new())).collect();
        Client {
            inner: Arc::new(Inner {
                settings: self,
                pools,
                preferred: AtomicUsize::new(0),
            }),
        }
    }
}

/// A pooled, failing-over client of rcache (cheap to clone; clones share
/// the pool).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Builder,
    /// Idle connections, one stack per address.
    pools: Vec<Mutex<Vec<TextClient>>>,
    /// The address to try first: the last one that answered.
    preferred: AtomicUsize,
}

impl Client {
    /// A client of the servers at `addrs` (`host:port`, tried in order).
    pub fn builder<I, S>(addrs: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder {
            addrs: addrs.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(1),
            pool_size: DEFAULT_POOL_SIZE,
            token: None,
            tls: None,
        }
    }

    /// A client of one server with the default settings.
    pub fn new(addr: impl Into<String>) -> Client {
        Client::builder([addr.into()]).build()
    }

    /// The value of `key`, or `None` if it is not there.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, Error> {
        let command = Command::Get {
            key: Bytes::copy_from_slice(key.as_ref()),
        };
        match self.request(&command).await? {
            Reply::Value(v) => Ok(Some(v)),
            Reply::Error(e) if e.code == ErrorCode::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    /// Stores `value` under `key` with no expiry.
    pub async fn set(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.store(key.as_ref(), value.as_ref(), None).await
    }

    /// Stores `value` under `key` for `ttl` (whole seconds, at least one).
    pub async fn set_with_ttl(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<(), Error> {
        self.store(key.as_ref(), value.as_ref(), Some(ttl)).await
    }

    async fn store(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<(), Error> {
        let command = Command::Set {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            ttl: ttl.map(Expiry::In),
            when: SetWhen::Always,
        };
        match self.request(&command).await? {
            Reply::Done | Reply::Value(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key`: whether it was there.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        let command = Command::Del {
            key: Bytes::copy_from_slice(key.as_ref()),
        };
        match self.request(&command).await? {
            Reply::Done | Reply::Value(_) => Ok(true),
            Reply::Error(e) if e.code == ErrorCode::NotFound => Ok(false),
            other => Err(unexpected(other)),
        }
    }

    /// Checks that a server answers.
    pub async fn ping(&self) -> Result<(), Error> {
        match self.request(&Command::Ping).await? {
            Reply::Pong | Reply::Value(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Sends any command and returns the reply. "Key not found" comes back
    /// as `Ok(Reply::Error(…))` with code 2; every other error the server
    /// answers is [`Error::Server`].
    pub async fn request(&self, command: &Command) -> Result<Reply, Error> {
        let mut line = bytes::BytesMut::new();
        crate::protocol::text::encode_command(command, &mut line)
            .map_err(|e| Error::Invalid(e.message.into_owned()))?;
        line.truncate(line.len() - 1);
        let reply = self
            .send(
                &line,
                !matches!(command, Command::Get { .. } | Command::Ping),
            )
            .await?;
        match reply {
            Reply::Error(e) if e.code != ErrorCode::NotFound => Err(Error::Server(e)),
            reply => Ok(reply),
        }
    }

    /// Sends one raw request line (without its `\n`) and returns the reply.
    pub async fn request_line(&self, line: &[u8]) -> Result<Reply, Error> {
        if line.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(Error::Invalid(
                "a request line cannot hold a line break".into(),
            ));
        }
        self.send(line, true).await
    }

    /// Tries the addresses from the preferred one on.
    async fn send(&self, line: &[u8], writes: bool) -> Result<Reply, Error> {
        let inner = &*self.inner;
        let n = inner.settings.addrs.len();
        if n == 0 {
            return Err(Error::Unreachable("no address given".into()));
        }
        let first = inner.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in (0..n).map(|k| (first + k) % n) {
            let addr = &inner.settings.addrs[i];
            match self.send_to(i, line).await {
                Ok(reply) => {
                    inner.preferred.store(i, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) if writes && !e.never_sent() => {
                    return Err(Error::Unknown {
                        addr: addr.clone(),
                        source: e,
                    })
                }
                Err(e) => failures.push(format!("{addr}: {e}")),
            }
        }
        Err(Error::Unreachable(failures.join("; ")))
    }

    /// One request on a connection to address `i`: a pooled one if one is
    /// still open (checked without waiting before it is used), else a new
    /// one. Once the request was written, a failure is returned as it is:
    /// the caller decides whether it may be sent again.
    async fn send_to(&self, i: usize, line: &[u8]) -> Result<Reply, ClientError> {
        let inner = &*self.inner;
        let mut conn = loop {
            let pooled = inner.pools[i]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop();
            match pooled {
                Some(mut conn) => {
                    if !conn.is_closed().await {
                        break conn;
                    }
                    // Closed while it sat idle (the server's idle_timeout):
                    // dropped, and the next one is tried.
                }
                None => break self.dial(i).await?,
            }
        };
        let reply = conn.request_line(line).await?;
        self.give_back(i, conn);
        Ok(reply)
    }

    fn give_back(&self, i: usize, conn: TextClient) {
        let mut pool = self.inner.pools[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if pool.len() < self.inner.settings.pool_size {
            pool.push(conn);
        }
    }

    /// Opens a connection to address `i` and authenticates it.
    async fn dial(&self, i: usize) -> Result<TextClient, ClientError> {
        let s = &self.inner.settings;
        let addr = &s.addrs[i];
        let mut conn = match TextClient::connect_tls(addr, s.tls.as_ref(), s.connect_timeout).await
        {
            Ok(conn) => conn.with_timeout(s.timeout),
            Err(e) => return Err(e),
        };
        if let Some(token) = &s.token {
            let auth = Command::Auth {
                token: token.clone(),
            };
            // An unanswered auth is a connection that never carried the
            // request: report it as a refusal.
            match conn.request(&auth).await {
                Ok(Reply::Done) => {}
                Ok(Reply::Value(v)) if v.is_empty() => {}
                Ok(Reply::Error(e)) => {
                    return Err(ClientError::Refused {
                        addr: addr.clone(),
                        reason: format!("auth refused: {}", e.message),
                    })
                }
                Ok(other) => {
                    return Err(ClientError::Refused {
                        addr: addr.clone(),
                        reason: format!("unexpected answer to auth: {other:?}"),
                    })
                }
                Err(e) => {
                    return Err(ClientError::Refused {
                        addr: addr.clone(),
                        reason: format!("auth: {e}"),
                    })
                }
            }
        }
        Ok(conn)
    }
}

fn unexpected(reply: Reply) -> Error {
    match reply {
        Reply::Error(e) => Error::Server(e),
        other => Error::Invalid(format!("unexpected reply {other:?}")),
    }
}
