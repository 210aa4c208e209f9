//! A client of the text protocol: one connection, one request at a time.

use super::{connect_stream, ClientError};
use crate::net::Stream;
use crate::net::{Closed, Conn};
use crate::protocol::text::{encode_command, parse_reply};
use crate::protocol::{Command, Reply};
use std::time::Duration;
use tokio::time::Instant;

pub struct TextClient {
    conn: Conn<Stream>,
    timeout: Duration,
}

impl TextClient {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<TextClient, ClientError> {
        TextClient::connect_tls(addr, None, timeout).await
    }

    /// Connects in TLS when given a client config.
    pub async fn connect_tls(
        addr: &str,
        tls: Option<&std::sync::Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<TextClient, ClientError> {
        let stream = connect_stream(addr, tls, timeout).await?;
        Ok(TextClient {
            conn: Conn::new(stream),
            timeout,
        })
    }

    /// Waits up to `timeout` for each answer from now on.
    pub fn with_timeout(mut self, timeout: Duration) -> TextClient {
        self.timeout = timeout;
        self
    }

    /// Whether the server has closed this connection (or it broke), found
    /// without waiting: a pooled connection is checked before reuse, so a
    /// request is never sent on one the server already let go.
    pub async fn is_closed(&mut self) -> bool {
        // The socket first: a close that arrived while nobody polled the
        // connection shows there before the runtime has noticed it.
        if crate::sys::peer_closed(self.conn.io.tcp()) {
            return true;
        }
        // One read attempt, polled once: EOF or an error shows at once; an
        // open idle connection has nothing to read (no timer is involved,
        // so a healthy connection costs no wait).
        use tokio::io::AsyncReadExt;
        self.conn.rbuf.reserve(64);
        let mut read = std::pin::pin!(self.conn.io.read_buf(&mut self.conn.rbuf));
        let once = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
        })
        .await;
        // Ready: EOF, an error, or bytes nobody asked for (out of step).
        once.is_ready()
    }

    /// Sends one command and reads its reply.
    pub async fn request(&mut self, command: &Command) -> Result<Reply, ClientError> {
        encode_command(command, &mut self.conn.wbuf)
            .map_err(|e| ClientError::Protocol(e.message.into_owned()))?;
        self.conn
            .flush(self.timeout)
            .await
            .map_err(|c| closed(c, self.timeout))?;
        self.read_reply().await
    }

    /// Sends a raw line (a `\n` is added) and reads the reply.
    pub async fn request_line(&mut self, line: &[u8]) -> Result<Reply, ClientError> {
        self.conn.wbuf.extend_from_slice(line);
        self.conn.wbuf.extend_from_slice(b"\n");
        self.conn
            .flush(self.timeout)
            .await
            .map_err(|c| closed(c, self.timeout))?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(i) = self.conn.rbuf.iter().position(|&b| b == b'\n') {
                let line = self.conn.rbuf.split_to(i + 1);
                return parse_reply(&line[..i]).map_err(ClientError::Protocol);
            }
            self.conn
                .fill_until(deadline)
                .await
                .map_err(|c| closed(c, self.timeout))?;
        }
    }
}

/// Maps why a connection stopped to the client's error.
pub(crate) fn closed(c: Closed, timeout: Duration) -> ClientError {
    match c {
        Closed::Io(e) => ClientError::Io(e),
        Closed::Idle => ClientError::Timeout(timeout),
        Closed::Eof | Closed::Shutdown | Closed::Full | Closed::Killed => ClientError::Closed,
    }
}
