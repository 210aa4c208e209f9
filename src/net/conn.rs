//! A stream with its read and write buffers, and why a connection ended.

use crate::shutdown::Shutdown;
use bytes::BytesMut;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
/// Bytes read per read call.
pub(super) const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Replies are written out once this many bytes are pending, even mid-batch.
pub(super) const WRITE_HIGH_WATER_BYTES: usize = 256 * 1024;

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

    /// The buffered replies passed the high-water mark: they are written
    /// out mid-batch, so large replies never pile up.
    pub fn full(&self) -> bool {
        self.wbuf.len() >= WRITE_HIGH_WATER_BYTES
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
