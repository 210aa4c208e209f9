//! Clients of rcache's protocols: [`Client`] (the library for
//! applications: pooled, failing over between orchestrators; the `rcache`
//! command uses it), [`text::TextClient`] (one connection) and
//! [`link::LinkConn`] (the orchestrator's pooled links to workers and a
//! worker's refill from its partner).
//!
//! Errors say whether the request may have reached the server, so callers
//! can decide between retrying, failing over, and reporting an unknown
//! outcome.

pub mod link;
pub mod pool;
pub mod text;

pub use pool::{Builder, Client, Error};

use crate::protocol::link::LinkError;
use std::io;
use std::time::Duration;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("too many requests queued for {0}")]
    Overloaded(String),
    #[error("the link to {0} could not connect")]
    NotConnected(String),
    #[error("not sent within {0:?}: the link was busy or reconnecting")]
    Unsent(Duration),
    #[error("{addr} refused the link: {reason}")]
    Refused { addr: String, reason: String },
    #[error("{op} cannot be sent on a link of protocol version {version}: the worker runs an older release")]
    Unsupported { op: &'static str, version: u8 },
}

impl ClientError {
    /// The request certainly never reached the server.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::ConnectTimeout { .. }
                | ClientError::Overloaded(_)
                | ClientError::NotConnected(_)
                | ClientError::Unsent(_)
                | ClientError::Refused { .. }
                | ClientError::Unsupported { .. }
        )
    }
}

/// How a daemon opens links to others: the frame limits it accepts, and
/// the daemons' token (`cluster_token`, or `auth_token`) to present when
/// it has one.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    pub limits: crate::protocol::Limits,
    pub token: Option<crate::auth::Secret>,
    /// TLS for links, when the daemon has `tls.ca`.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Dial {
    /// What a daemon with these listener settings dials with.
    pub fn from_server(server: &crate::net::ServerConfig) -> Dial {
        Dial {
            limits: server.limits,
            token: server.cluster.clone(),
            tls: server.tls.client.clone(),
        }
    }
}

/// Opens a connection, in TLS when `tls` is given (the peer's certificate
/// must name the host of `addr`), all within `timeout`.
pub async fn connect_stream(
    addr: &str,
    tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<crate::net::Stream, ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let tcp = connect_tcp(addr, timeout).await?;
    let Some(config) = tls else {
        return Ok(crate::net::Stream::Plain(tcp));
    };
    let name = crate::tls::server_name(addr).map_err(|reason| ClientError::Refused {
        addr: addr.to_string(),
        reason,
    })?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    match tokio::time::timeout_at(deadline, connector.connect(name, tcp)).await {
        Err(_) => Err(ClientError::ConnectTimeout {
            addr: addr.to_string(),
            timeout,
        }),
        Ok(Err(e)) => Err(ClientError::Refused {
            addr: addr.to_string(),
            reason: format!("TLS handshake failed: {e}"),
        }),
        Ok(Ok(stream)) => Ok(crate::net::Stream::Client(Box::new(stream))),
    }
}

/// Opens a TCP connection within `timeout`, naming the address on failure.
pub async fn connect_tcp(
    addr: &str,
    timeout: Duration,
) -> Result<crate::sys::TcpStream, ClientError> {
    match tokio::time::timeout(timeout, crate::sys::TcpStream::connect(addr)).await {
        Err(_) => Err(ClientError::ConnectTimeout {
            addr: addr.to_string(),
            timeout,
        }),
        Ok(Err(source)) => Err(ClientError::Connect {
            addr: addr.to_string(),
            source,
        }),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}
