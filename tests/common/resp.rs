//! A blocking RESP client over raw sockets, for tests of the Redis
//! surface (TLS and auth in secure mode are handled by the harness's
//! dialer).

use super::secure;
use bytes::BytesMut;
use rcache::protocol::resp::{decode_value, encode_request, Value};
use std::io::{Read, Write};
use std::time::Duration;

/// A blocking RESP client over the harness's connection (TLS and auth in
/// secure mode are handled by `Client`'s dialer).
pub struct Resp {
    pub io: Box<dyn secure::ReadWrite>,
    /// The socket underneath, for read timeouts.
    pub sock: std::net::TcpStream,
    pub buf: BytesMut,
}

impl Resp {
    pub fn connect(port: u16) -> Resp {
        let (io, sock) = secure::dial_unauthenticated(&format!("127.0.0.1:{port}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut r = Resp {
            io,
            sock,
            buf: BytesMut::new(),
        };
        if secure::on() {
            assert_eq!(r.call(&["AUTH", secure::TOKEN]), Value::Status("OK".into()));
        }
        r
    }

    /// Plain TCP whatever the mode (another server, such as redis-server).
    pub fn connect_plain(port: u16) -> Resp {
        let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let sock = tcp.try_clone().expect("clone");
        Resp {
            io: Box::new(tcp),
            sock,
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, args: &[&str]) {
        let mut out = BytesMut::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        encode_request(&args, &mut out);
        self.io.write_all(&out).expect("write");
        self.io.flush().expect("flush");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).expect("write");
        self.io.flush().expect("flush");
    }

    pub fn read(&mut self) -> Value {
        loop {
            if let Some(v) = decode_value(&mut self.buf, 64 << 20).expect("a valid reply") {
                return v;
            }
            let mut chunk = [0u8; 16384];
            let n = self.io.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until EOF: true if the server closed the connection within
    /// `timeout`, false if it was still open then.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.sock.set_read_timeout(Some(timeout)).expect("timeout");
        let mut chunk = [0u8; 1024];
        loop {
            match self.io.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                // A reset, or a TLS peer gone without close_notify.
                Err(_) => return true,
            }
        }
    }

    pub fn call(&mut self, args: &[&str]) -> Value {
        self.send(args);
        self.read()
    }
}

pub fn bulk(s: &str) -> Value {
    Value::Bulk(Some(s.as_bytes().to_vec().into()))
}

pub fn ok() -> Value {
    Value::Status("OK".into())
}

pub fn err(line: &str) -> Value {
    Value::Error(line.as_bytes().to_vec().into())
}
