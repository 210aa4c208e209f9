//! One link to a worker: connect, exchange hellos, then framed requests and
//! responses. [`LinkConn::split`] gives independent halves so a writer can
//! pipeline requests while a reader matches responses in order.

use super::text::closed;
use super::{connect_stream, ClientError, Dial};
use crate::net::Conn;
use crate::net::Stream;
use crate::protocol::link::{
    decode_response, encode_request, hello, hello_version, max_frame_bytes, read_frame, Request,
    RequestKind, Response, HELLO, LINK_VERSION, OLDEST_LINK_VERSION,
};
use crate::protocol::Limits;
use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncReadExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

pub struct LinkConn {
    conn: Conn<Stream>,
    limits: Limits,
    /// The link protocol version agreed with the peer.
    version: u8,
}

/// Encodes `request` as a link of `version` carries it; refused (nothing
/// buffered) when that version cannot carry it at all (a hash request to
/// a peer of the previous release).
fn encode_for(request: &Request, version: u8, out: &mut BytesMut) -> Result<(), ClientError> {
    let carried = request
        .for_version(version)
        .ok_or(ClientError::Unsupported {
            op: request.op().name(),
            version,
        })?;
    encode_request(&carried, out);
    Ok(())
}

impl LinkConn {
    /// Connects, agrees on a link version, and presents the token (if
    /// any), all within `timeout`. A peer that closes on this build's
    /// hello is of the previous release: the link is opened again with
    /// [`OLDEST_LINK_VERSION`].
    pub async fn connect(
        addr: &str,
        dial: &Dial,
        timeout: Duration,
    ) -> Result<LinkConn, ClientError> {
        let deadline = Instant::now() + timeout;
        let conn = match greet(addr, dial, LINK_VERSION, deadline, timeout).await {
            // Closed on, before any answer: an older release.
            Err(ClientError::Closed) => {
                tracing::debug!(
                    worker = addr,
                    version = OLDEST_LINK_VERSION,
                    "the peer closed on the hello: trying the previous link version"
                );
                greet(addr, dial, OLDEST_LINK_VERSION, deadline, timeout).await?
            }
            other => other?,
        };
        let (conn, version) = conn;
        let mut link = LinkConn {
            conn,
            limits: dial.limits,
            version,
        };
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

    /// The link protocol version agreed with the peer.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Buffers `request` as the link's version carries it.
    fn encode(&mut self, request: &Request) -> Result<(), ClientError> {
        encode_for(request, self.version, &mut self.conn.wbuf)
    }

    /// Sends one request and waits for its response.
    pub async fn call(
        &mut self,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        self.encode(request)?;
        self.conn
            .flush(timeout)
            .await
            .map_err(|c| closed(c, timeout))?;
        self.recv(request.kind(), timeout).await
    }

    /// Sends a request without waiting (a refill then reads the stream).
    pub async fn send(&mut self, request: &Request, timeout: Duration) -> Result<(), ClientError> {
        self.encode(request)?;
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
                version: self.version,
            },
        )
    }
}

/// Opens a connection and exchanges hellos offering `offered`: the
/// connection and the version the peer answered with.
async fn greet(
    addr: &str,
    dial: &Dial,
    offered: u8,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Conn<Stream>, u8), ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    let stream = connect_stream(addr, dial.tls.as_ref(), left).await?;
    let mut conn = Conn::new(stream);
    conn.wbuf.extend_from_slice(&hello(offered));
    // Every step within the one `timeout`.
    let left = deadline.saturating_duration_since(Instant::now());
    conn.flush(left).await.map_err(|c| closed(c, timeout))?;
    while conn.rbuf.len() < HELLO.len() {
        conn.fill_until(deadline)
            .await
            .map_err(|c| closed(c, timeout))?;
    }
    let Some(answered) =
        hello_version(&conn.rbuf).filter(|v| (OLDEST_LINK_VERSION..=offered).contains(v))
    else {
        return Err(ClientError::Protocol(format!(
            "{addr} does not speak the rcache link protocol (versions \
             {OLDEST_LINK_VERSION} to {LINK_VERSION})"
        )));
    };
    let _ = conn.rbuf.split_to(HELLO.len());
    Ok((conn, answered))
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
    version: u8,
}

impl LinkWriter {
    /// Buffers a request as the link's version carries it;
    /// [`LinkWriter::flush`] sends everything buffered. A request the
    /// version cannot carry is refused, and nothing is buffered.
    pub fn queue(&mut self, request: &Request) -> Result<(), ClientError> {
        encode_for(request, self.version, &mut self.wbuf)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::link::{decode_request, encode_response};
    use tokio::io::AsyncWriteExt;

    /// A worker of the previous release: it closes on any hello but its
    /// own version's, then answers pings.
    async fn previous_release() -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let mut refused = 0;
            loop {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut hello_bytes = [0u8; 5];
                socket.read_exact(&mut hello_bytes).await.expect("hello");
                if hello_bytes != hello(OLDEST_LINK_VERSION) {
                    refused += 1;
                    continue;
                }
                socket
                    .write_all(&hello(OLDEST_LINK_VERSION))
                    .await
                    .expect("hello");
                let mut buf = BytesMut::new();
                while socket.read_buf(&mut buf).await.unwrap_or(0) > 0 {
                    while let Ok(Some(frame)) = read_frame(&mut buf, 1 << 20) {
                        let request = decode_request(frame, &Limits::default()).expect("request");
                        assert_eq!(request, Request::Ping, "sent what v8 cannot read");
                        let mut out = BytesMut::new();
                        encode_response(&Response::Pong, &mut out);
                        socket.write_all(&out).await.expect("answer");
                    }
                }
                return refused;
            }
        });
        (addr, server)
    }

    #[tokio::test]
    async fn a_link_to_the_previous_release_falls_back_to_its_version() {
        let (addr, server) = previous_release().await;
        let timeout = Duration::from_secs(5);
        let mut link = LinkConn::connect(&addr, &Dial::default(), timeout)
            .await
            .expect("connects at the older version");
        assert_eq!(link.version(), OLDEST_LINK_VERSION);
        let hget = Request::HGet {
            key: bytes::Bytes::from_static(b"h"),
        };
        match link.call(&hget, timeout).await {
            Err(ClientError::Unsupported { version, .. }) => {
                assert_eq!(version, OLDEST_LINK_VERSION)
            }
            other => panic!("a hash request went to an older link: {other:?}"),
        }
        // Refused before anything was written: the link still works.
        assert_eq!(
            link.call(&Request::Ping, timeout).await.expect("ping"),
            Response::Pong
        );
        drop(link);
        assert_eq!(server.await.expect("server"), 1, "one hello was refused");
    }
}
