//! Secure mode (`RCACHE_TEST_SECURE=1`): every daemon the harness starts
//! speaks TLS only, with mutual TLS, an `auth_token` and a `cluster_token`
//! of its own for links, and every harness connection does the TLS
//! handshake (with a client certificate) and sends `auth||<token>` first. CI runs the cluster and chaos suites once more in
//! this mode; tests that check plaintext or raw bytes themselves say they
//! are skipped in it.

use super::Pki;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const TOKEN: &str = "secure-mode-token";
/// The daemons' token on links, which clients never hold.
pub const CLUSTER_TOKEN: &str = "secure-mode-cluster-token";

pub fn on() -> bool {
    std::env::var("RCACHE_TEST_SECURE").as_deref() == Ok("1")
}

/// Returns true (after saying why) when a test must not run in secure mode.
pub fn skip(why: &str) -> bool {
    if on() {
        eprintln!("SKIPPED in secure mode: {why}");
    }
    on()
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::new("secure-mode"))
}

/// Flags that make a daemon TLS-only with mutual TLS and the token.
pub fn daemon_args() -> Vec<String> {
    let p = pki();
    [
        "--auth-token",
        TOKEN,
        "--cluster-token",
        CLUSTER_TOKEN,
        "--tls-cert",
        &p.cert,
        "--tls-key",
        &p.key,
        "--tls-ca",
        &p.ca,
        "--tls-client-auth",
        "true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Flags for the `rcache` command in secure mode.
pub fn cli_args() -> Vec<String> {
    let p = pki();
    [
        "--tls-ca",
        &p.ca,
        "--tls-cert",
        &p.cert,
        "--tls-key",
        &p.key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// A connection to `addr` (`127.0.0.1:port`): plain, or in secure mode
/// TLS with a client certificate and already authenticated. `tcp` is the
/// socket underneath (for timeouts).
pub fn dial(addr: &str) -> Result<(Box<dyn ReadWrite>, TcpStream), String> {
    let (mut io, sock) = dial_unauthenticated(addr)?;
    if on() {
        io.write_all(format!("auth||{TOKEN}\n").as_bytes())
            .and_then(|_| io.flush())
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        let mut reply = [0u8; 4];
        io.read_exact(&mut reply)
            .map_err(|e| format!("TLS to {addr}: {e}"))?;
        if &reply != b"0||\n" {
            return Err(format!("auth refused by {addr}: {reply:?}"));
        }
    }
    Ok((io, sock))
}

/// [`dial`] without authenticating: the first bytes sent choose the
/// protocol (RESP clients send `AUTH` themselves).
pub fn dial_unauthenticated(addr: &str) -> Result<(Box<dyn ReadWrite>, TcpStream), String> {
    let tcp = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let sock = tcp.try_clone().map_err(|e| e.to_string())?;
    if !on() {
        return Ok((Box::new(tcp), sock));
    }
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let p = pki();
        rcache::tls::client_config(&p.ca, Some((&p.cert, &p.key))).expect("client TLS config")
    });
    let name = rcache::tls::server_name(addr)?;
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let tls = rustls::StreamOwned::new(conn, tcp);
    Ok((Box::new(tls), sock))
}

/// The TLS configuration of a client with the secure-mode certificate.
pub fn client_tls() -> Arc<rustls::ClientConfig> {
    let p = pki();
    rcache::tls::client_config(&p.ca, Some((&p.cert, &p.key))).expect("client TLS config")
}

/// A library client of `addrs`: in secure mode with TLS and the token.
pub fn library_client<S: Into<String>>(
    addrs: impl IntoIterator<Item = S>,
) -> rcache::client::Builder {
    let builder = rcache::Client::builder(addrs);
    if on() {
        builder.tls(client_tls()).auth_token(TOKEN)
    } else {
        builder
    }
}

/// How a test opens a link as a daemon would: in secure mode with TLS and
/// the daemons' token.
pub fn link_dial() -> rcache::client::Dial {
    if !on() {
        return rcache::client::Dial::default();
    }
    rcache::client::Dial {
        token: Some(rcache::auth::Secret::new(CLUSTER_TOKEN.as_bytes())),
        tls: Some(client_tls()),
        ..rcache::client::Dial::default()
    }
}
