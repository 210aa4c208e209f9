//! TLS (rustls, the `ring` provider) for every hop: a daemon's listener
//! (`tls.cert` + `tls.key`), its outgoing links (`tls.ca`: the peer must
//! present a certificate that CA signed, for the host name or IP in its
//! address), and mutual TLS (`tls.client_auth = true`: the listener
//! requires a client certificate signed by `tls.ca`, and the daemon's own
//! links present `tls.cert`).
//!
//! Certificates are read when the config is validated, so a bad file fails
//! the start or refuses a reload with the path and the reason; a reload with
//! good files swaps them in for new connections (open ones keep theirs).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Longest a TLS handshake may take (a stalled one is a slowloris).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The paths of the `[tls]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ca: Option<String>,
    pub client_auth: bool,
}

/// TLS as a daemon uses it; compared by identity (a reload makes new ones).
#[derive(Clone, Default)]
pub struct Tls {
    /// For the listener, when `cert` and `key` are set.
    pub server: Option<Arc<rustls::ServerConfig>>,
    /// For outgoing links, when `ca` is set.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server", &self.server.is_some())
            .field("client", &self.client.is_some())
            .finish()
    }
}

impl PartialEq for Tls {
    fn eq(&self, other: &Tls) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        same(&self.server, &other.server) && same(&self.client, &other.client)
    }
}

impl Eq for Tls {}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(Path::new(path))
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .collect();
    let certs = certs.map_err(|e| format!("{path}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(Path::new(path))
        .map_err(|e| format!("{path}: no usable private key: {e}"))
}

fn roots(path: &str) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store
            .add(cert)
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
    }
    Ok(Arc::new(store))
}

impl TlsFiles {
    /// Nothing set at all (`client_auth` alone is an error, not "off").
    pub fn is_off(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none() && !self.client_auth
    }

    /// Reads the files and builds the configs; problems as `key: reason`.
    pub fn load(&self) -> Result<Tls, Vec<String>> {
        let mut problems = Vec::new();
        let mut note = |key: &str, r: Result<(), String>| {
            if let Err(e) = r {
                problems.push(format!("tls.{key}: {e}"));
            }
        };
        let pair = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => match (certs(c), key(k)) {
                (Ok(c), Ok(k)) => Some((c, k)),
                (c, k) => {
                    note("cert", c.map(|_| ()));
                    note("key", k.map(|_| ()));
                    None
                }
            },
            (None, None) => None,
            _ => {
                note("cert", Err("tls.cert and tls.key go together".into()));
                None
            }
        };
        let ca = match &self.ca {
            Some(path) => match roots(path) {
                Ok(r) => Some(r),
                Err(e) => {
                    note("ca", Err(e));
                    None
                }
            },
            None => None,
        };
        if self.client_auth && (self.ca.is_none() || self.cert.is_none()) {
            note(
                "client_auth",
                Err(
                    "needs tls.ca (to verify clients) and tls.cert/tls.key (to present on links)"
                        .into(),
                ),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut tls = Tls::default();
        if let Some((chain, key)) = &pair {
            let builder = match rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
            {
                Ok(b) => b,
                Err(e) => return Err(vec![format!("tls: {e}")]),
            };
            let builder = match (&ca, self.client_auth) {
                (Some(roots), true) => {
                    match rustls::server::WebPkiClientVerifier::builder_with_provider(
                        roots.clone(),
                        provider(),
                    )
                    .build()
                    {
                        Ok(v) => builder.with_client_cert_verifier(v),
                        Err(e) => return Err(vec![format!("tls.ca: {e}")]),
                    }
                }
                _ => builder.with_no_client_auth(),
            };
            match builder.with_single_cert(chain.clone(), key.clone_key()) {
                Ok(config) => tls.server = Some(Arc::new(config)),
                Err(e) => return Err(vec![format!("tls.key: does not match tls.cert: {e}")]),
            }
        }
        if let Some(roots) = ca {
            let builder = match rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
            {
                Ok(b) => b.with_root_certificates(roots),
                Err(e) => return Err(vec![format!("tls: {e}")]),
            };
            let config = match (&pair, self.client_auth) {
                (Some((chain, key)), true) => {
                    match builder.with_client_auth_cert(chain.clone(), key.clone_key()) {
                        Ok(c) => c,
                        Err(e) => return Err(vec![format!("tls.cert: {e}")]),
                    }
                }
                _ => builder.with_no_client_auth(),
            };
            tls.client = Some(Arc::new(config));
        }
        Ok(tls)
    }
}

/// A client config that trusts `ca` and, with `cert` and `key`, presents
/// them (the `rcache` command's `--tls-ca`, `--tls-cert`, `--tls-key`).
pub fn client_config(
    ca: &str,
    cert_and_key: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots(ca)?);
    let config = match cert_and_key {
        Some((c, k)) => builder
            .with_client_auth_cert(certs(c)?, key(k)?)
            .map_err(|e| format!("{c}: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name a peer's certificate must carry: the host part of `addr`
/// (`host:port`, `[v6]:port`).
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: not a valid TLS name: {e}"))
}
