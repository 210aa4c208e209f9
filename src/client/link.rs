//! One link to a worker: connect, exchange hellos, then framed requests and
//! responses. [`LinkConn::split`] gives independent halves so a writer can
//! pipeline requests while a reader matches responses in order.

use super::text::closed;
use super::{connect_stream, ClientError, Dial};
use crate::net::Conn;
use crate::net::Stream;
use crate::protocol::link::{
    decode_response, encode_request, max_frame_bytes, read_frame, Request, RequestKind, Response,
    HELLO,
};
use crate::protocol::Limits;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

pub struct LinkConn {
    conn: Conn<Stream>,
    limits: Limits,
}

impl LinkConn {
    /// Connects, exchanges hellos and presents the token (if any), all
    /// within `timeout`.
    pub async fn connect(
        addr: &str,
        dial: &Dial,
        timeout: Duration,
    ) -> Result<LinkConn, ClientError> {
        let limits = dial.limits;
        let deadline = Instant::now() + timeout;
        let stream = connect_stream(addr, dial.tls.as_ref(), timeout).await?;
        let mut conn = Conn::new(stream);
        conn.wbuf.extend_from_slice(HELLO);
        // Every step within the one `timeout`.
        let left = deadline.saturating_duration_since(Instant::now());
        conn.flush(left).await.map_err(|c| closed(c, timeout))?;
        while conn.rbuf.len() < HELLO.len() {
            conn.fill_until(deadline)
                .await
                .map_err(|c| closed(c, timeout))?;
        }
        if conn.rbuf[..HELLO.len()] != HELLO[..] {
            return Err(ClientError::Protocol(format!(
                "{addr} does not speak the rcache link protocol (version {})",
                HELLO[4]
            )));
        }
        let _ = conn.rbuf.split_to(HELLO.len());
        let mut link = LinkConn { conn, limits };
        if let Some(token) = &dial.token {
            let left = deadline.saturating_duration_since(Instant::now());
            let auth = Request::Auth {
                token: bytes::Bytes::copy_from_slice(token.expose()),
            };
            match link.call(&auth, left).await? {
                Response::Authenticated => {}
                Response::Error(e) => {
                    return Err(ClientError::Refused {
                        addr: addr.to_string(),
                        reason: e.to_string(),
                    })
                }
                other => {
                    return Err(ClientError::Protocol(format!(
                        "unexpected answer to auth: {other:?}"
                    )))
                }
            }
        }
        Ok(link)
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        encode_request(request, &mut self.conn.wbuf);
        self.conn
            .flush(timeout)
            .await
            .map_err(|c| closed(c, timeout))?;
        self.recv(request.kind(), timeout).await
    }

    /// Sends a request without waiting (a refill then reads the stream).
    pub async fn send(&mut self, request: &Request, timeout: Duration) -> Result<(), ClientError> {
        encode_request(request, &mut self.conn.wbuf);
        self.conn
            .flush(timeout)
            .await
            .map_err(|c| closed(c, timeout))
    }

    /// Reads the next response, answering a request of `kind`.
    pub async fn recv(
        &mut self,
        kind: RequestKind,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let max = max_frame_bytes(&self.limits);
        loop {
            if let Some(frame) = read_frame(&mut self.conn.rbuf, max)? {
                return Ok(decode_response(frame, kind, &self.limits)?);
            }
            self.conn
                .fill_until(deadline)
                .await
                .map_err(|c| closed(c, timeout))?;
        }
    }

    pub fn split(self) -> (LinkReader, LinkWriter) {
        let (r, w) = tokio::io::split(self.conn.io);
        (
            LinkReader {
                io: r,
                rbuf: self.conn.rbuf,
                limits: self.limits,
                read_at: Instant::now(),
            },
            LinkWriter {
                io: w,
                wbuf: BytesMut::with_capacity(16 * 1024),
            },
        )
    }
}

pub struct LinkReader {
    io: ReadHalf<Stream>,
    rbuf: BytesMut,
    limits: Limits,
    read_at: Instant,
}

impl LinkReader {
    /// Reads the next response; waits as long as it takes (the caller
    /// times out each request on its own).
    pub async fn recv(&mut self, kind: RequestKind) -> Result<Response, ClientError> {
        let max = max_frame_bytes(&self.limits);
        loop {
            if let Some(frame) = read_frame(&mut self.rbuf, max)? {
                return Ok(decode_response(frame, kind, &self.limits)?);
            }
            self.rbuf.reserve(16 * 1024);
            if self.io.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
            self.read_at = Instant::now();
        }
    }

    /// Bytes read and not yet taken as responses.
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Waits until the peer closes the connection or it fails (`true`), or
    /// some bytes arrive (`false`: they stay buffered for
    /// [`LinkReader::recv`]). Cancel safe: a read either happened or did
    /// not.
    pub async fn closed(&mut self) -> bool {
        self.rbuf.reserve(1024);
        match self.io.read_buf(&mut self.rbuf).await {
            Ok(0) | Err(_) => true,
            Ok(_) => {
                self.read_at = Instant::now();
                false
            }
        }
    }

    /// When the last read from the socket returned: every response read
    /// since arrived by then.
    pub fn read_at(&self) -> Instant {
        self.read_at
    }
}

pub struct LinkWriter {
    io: WriteHalf<Stream>,
    wbuf: BytesMut,
}

impl LinkWriter {
    /// Buffers a request; [`LinkWriter::flush`] sends everything buffered.
    pub fn queue(&mut self, request: &Request) {
        encode_request(request, &mut self.wbuf);
    }

    pub fn buffered(&self) -> usize {
        self.wbuf.len()
    }

    pub async fn flush(&mut self, timeout: Duration) -> Result<(), ClientError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let write = crate::net::write_flushed(&mut self.io, &self.wbuf);
        match tokio::time::timeout(timeout, write).await {
            Err(_) => Err(ClientError::Timeout(timeout)),
            Ok(Err(e)) => Err(ClientError::Io(e)),
            Ok(Ok(())) => {
                self.wbuf.clear();
                Ok(())
            }
        }
    }
}
