//! A stream with its read and write buffers, and why a connection ended.

use super::budget::{Charge, ReadBudget, BASE_BYTES};
use crate::protocol::dialect::UNAUTHENTICATED_BYTES;
use crate::shutdown::Shutdown;
use bytes::{BufMut, BytesMut};
use std::io;
use std::sync::Arc;
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
    /// The read buffer reached its limit without a complete request.
    Full,
    /// A `CLIENT KILL` closed it.
    Killed,
    Io(io::Error),
}

/// A stream with its read and write buffers.
pub struct Conn<S> {
    pub io: S,
    pub rbuf: BytesMut,
    pub wbuf: BytesMut,
    /// The most `rbuf` may hold: reads stop there. The buffer grows with
    /// what has arrived (never with a length a request announces).
    pub limit: usize,
    /// What `rbuf` holds of the daemon's [`ReadBudget`] (accepted
    /// connections only).
    charge: Option<Charge>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// A connection this side opened: what it reads is bounded by what it
    /// asked for.
    pub fn new(io: S) -> Conn<S> {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            limit: usize::MAX,
            charge: None,
        }
    }

    /// A connection a listener accepted: until the session loop says who
    /// is on the other end, it holds at most [`UNAUTHENTICATED_BYTES`]
    /// (and nothing is allocated for replies before the first one); its
    /// read buffer grows past [`BASE_BYTES`] only with room in `budget`.
    pub fn accepted(io: S, budget: &Arc<ReadBudget>) -> Conn<S> {
        Conn {
            io,
            rbuf: BytesMut::with_capacity(UNAUTHENTICATED_BYTES),
            wbuf: BytesMut::new(),
            limit: UNAUTHENTICATED_BYTES,
            charge: Some(Charge::new(budget.clone())),
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

    /// Reads more bytes, up to [`Conn::limit`] buffered, giving up at
    /// `deadline`. With the buffer at its limit there is nothing to read
    /// into: the caller decides what a full buffer means.
    pub async fn fill_until(&mut self, deadline: Instant) -> Result<usize, Closed> {
        let room = self.limit.saturating_sub(self.rbuf.len());
        if room == 0 {
            return Err(Closed::Full);
        }
        let want = READ_CHUNK_BYTES.min(room);
        if let Some(charge) = &mut self.charge {
            // A big request taken out gives its memory back first.
            shrink(&mut self.rbuf);
            charge.settle(self.rbuf.capacity());
            let (len, capacity) = (self.rbuf.len(), self.rbuf.capacity());
            if capacity - len < want {
                // `reserve` grows a buffer to at most this: doubling it,
                // or a fresh allocation of its original size (at most
                // 64 KiB in `bytes`).
                let grown = (2 * capacity).max(len + want).max(BASE_BYTES);
                if !charge.reserve(grown, deadline).await {
                    return Err(Closed::Idle);
                }
            }
        }
        self.rbuf.reserve(want);
        if let Some(charge) = &mut self.charge {
            charge.settle(self.rbuf.capacity());
        }
        let mut into = (&mut self.rbuf).limit(room);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut into)).await {
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

/// Replaces a read buffer grown past [`BASE_BYTES`] that now holds little
/// with one of ordinary size (the big allocation is freed, or once the
/// requests cut from it are), so its claim on the budget is given back.
fn shrink(rbuf: &mut BytesMut) {
    if rbuf.capacity() > BASE_BYTES && rbuf.len() <= BASE_BYTES / 2 {
        let mut fresh = BytesMut::with_capacity(READ_CHUNK_BYTES.max(rbuf.len()));
        fresh.extend_from_slice(rbuf);
        *rbuf = fresh;
    }
}
