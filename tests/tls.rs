//! TLS on every hop (client → orchestrator → workers, worker → partner),
//! mutual TLS, refusal of strangers, and certificates reloaded on SIGHUP.

mod common;

use common::*;
use rcache::client::text::TextClient;
use rcache::protocol::{Command, Reply};
use std::process::Command as Process;
use std::time::Duration;

const TOKEN: &str = "tls-cluster-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A TLS text client (this process's own, not the CLI).
struct TlsClient {
    rt: tokio::runtime::Runtime,
    client: TextClient,
}

impl TlsClient {
    fn connect(addr: &str, pki: &Pki, with_cert: bool) -> Result<TlsClient, String> {
        let rt = runtime();
        let pair = with_cert.then_some((pki.cert.as_str(), pki.key.as_str()));
        let config = rcache::tls::client_config(&pki.ca, pair)?;
        let client = rt
            .block_on(TextClient::connect_tls(
                addr,
                Some(&config),
                Duration::from_secs(5),
            ))
            .map_err(|e| e.to_string())?;
        Ok(TlsClient { rt, client })
    }

    fn req(&mut self, line: &str) -> Result<Reply, String> {
        self.rt
            .block_on(self.client.request_line(line.as_bytes()))
            .map_err(|e| e.to_string())
    }

    fn auth(&mut self) {
        let reply = self.rt.block_on(self.client.request(&Command::Auth {
            token: TOKEN.as_bytes().to_vec().into(),
        }));
        assert!(
            matches!(&reply, Ok(Reply::Value(v)) if v.is_empty()),
            "{reply:?}"
        );
    }
}

fn config_file(name: &str, body: &str) -> String {
    let path = log_dir().join(name);
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

fn start(bin: &str, name: &str, port: u16, config: &str) -> Daemon {
    Daemon::spawn(
        name,
        bin,
        &["--config".to_string(), config.to_string()],
        port,
    )
}

const WORKER: &str = env!("CARGO_BIN_EXE_rcache-worker");
const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_rcache-orchestrator");

#[test]
fn a_tls_only_cluster_with_auth_runs_from_config_files() {
    let pki = Pki::new("cluster");
    let [pa, pb, po] = free_ports();
    let common = format!("auth_token = \"{TOKEN}\"\n{}", pki.toml(true));
    let worker_conf = |me: u16, partner: u16| {
        config_file(
            &format!("tls-worker-{me}.toml"),
            &format!("listen = \"127.0.0.1:{me}\"\npartner = \"127.0.0.1:{partner}\"\n{common}"),
        )
    };
    let (ca, cb) = (worker_conf(pa, pb), worker_conf(pb, pa));
    // Partners start together: neither waits out refill_wait for the other.
    let config = |path: &str| vec!["--config".to_string(), path.to_string()];
    let mut a = Daemon::start(&format!("tls-worker-{pa}"), WORKER, &config(&ca), pa);
    let mut b = Daemon::start(&format!("tls-worker-{pb}"), WORKER, &config(&cb), pb);
    a.wait_ready();
    b.wait_ready();
    let oc = config_file(
        &format!("tls-orchestrator-{po}.toml"),
        &format!(
            "listen = \"127.0.0.1:{po}\"\nworkers = [[\"127.0.0.1:{pa}\", \"127.0.0.1:{pb}\"]]\n{common}"
        ),
    );
    let o = start(ORCHESTRATOR, &format!("tls-orchestrator-{po}"), po, &oc);

    let mut c = TlsClient::connect(&o.addr(), &pki, true).expect("TLS to the orchestrator");
    assert!(matches!(c.req("get||k"), Ok(Reply::Error(e)) if e.code.as_u8() == 9));
    c.auth();
    for i in 0..200 {
        assert_eq!(
            c.req(&format!("set||key{i}||value{i}")),
            Ok(Reply::Value("".into()))
        );
    }
    assert_eq!(c.req("get||key42"), Ok(Reply::Value("value42".into())));
    // Multi-MiB values through every TLS hop, pipelined past the socket
    // buffers (the encrypting layer must be flushed, or replies stall).
    let big = "v".repeat(3 << 20);
    for i in 0..3 {
        assert_eq!(
            c.req(&format!("set||big{i}||{big}")),
            Ok(Reply::Value("".into()))
        );
    }
    for i in 0..3 {
        let got = c.req(&format!("get||big{i}"));
        assert!(
            matches!(&got, Ok(Reply::Value(v)) if v.len() == big.len()),
            "big{i}: {:?}",
            got.map(|_| ())
        );
    }

    // The CLI speaks TLS with a client certificate.
    let cli = |ca: &str, cert: Option<(&str, &str)>, args: &[&str]| {
        let mut cmd = Process::new(env!("CARGO_BIN_EXE_rcache"));
        cmd.args(["--addr", &o.addr(), "--tls-ca", ca])
            .env("RCACHE_AUTH_TOKEN", TOKEN)
            .args(args);
        if let Some((c, k)) = cert {
            cmd.args(["--tls-cert", c, "--tls-key", k]);
        }
        cmd.output().expect("rcache runs")
    };
    let mine = Some((pki.cert.as_str(), pki.key.as_str()));
    let out = cli(&pki.ca, mine, &["get", "key7"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "value7\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without a client certificate: refused by mutual TLS.
    let out = cli(&pki.ca, None, &["get", "key7"]);
    assert!(!out.status.success());
    // A client certificate another CA signed: refused by the server.
    let other = Pki::new("other");
    let foreign =
        rcache::tls::client_config(&pki.ca, Some((&other.cert, &other.key))).expect("config");
    let rt = runtime();
    let refused = rt.block_on(async {
        let mut client =
            TextClient::connect_tls(&o.addr(), Some(&foreign), Duration::from_secs(5)).await?;
        // TLS 1.3: the server's verdict on the client certificate arrives
        // with the first read.
        client.request_line(b"ping").await
    });
    assert!(
        refused.is_err(),
        "a foreign client certificate was accepted: {refused:?}"
    );
    // A server certificate another CA signed: refused by the client.
    let out = cli(
        &other.ca,
        Some((other.cert.as_str(), other.key.as_str())),
        &["get", "key7"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TLS handshake failed") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // Plaintext to a TLS port: told so, hung up on; the daemons serve on.
    for port in [o.port, a.port] {
        let mut plain = Client::connect(port);
        plain.send_raw(b"get||key7\n");
        assert_eq!(plain.read_line(), "1||TLS required on this port");
        assert!(plain.closed_within(Duration::from_secs(5)));
    }
    assert_eq!(c.req("get||key8"), Ok(Reply::Value("value8".into())));

    // A worker restarted refills from its partner over mutual TLS + auth.
    drop(b);
    let b = start(WORKER, &format!("tls-worker-{pb}-again"), pb, &cb);
    let log = b.log_text();
    assert!(
        log.contains("refilled from the partner") && log.contains("entries=203"),
        "{log}"
    );
    // A would-be partner with another CA's certificate gets nothing.
    let ps = free_port();
    let stranger_conf = config_file(
        &format!("tls-stranger-{ps}.toml"),
        &format!(
            "listen = \"127.0.0.1:{ps}\"\npartner = \"127.0.0.1:{pa}\"\nauth_token = \"{TOKEN}\"\n{}",
            other.toml(true)
        ),
    );
    let stranger = start(WORKER, &format!("tls-stranger-{ps}"), ps, &stranger_conf);
    let log = stranger.log_text();
    assert!(
        log.contains("not refilling") && log.contains("TLS handshake failed"),
        "{log}"
    );
    drop(stranger);
    for i in 0..200 {
        assert_eq!(
            c.req(&format!("get||key{i}")),
            Ok(Reply::Value(format!("value{i}").into()))
        );
    }
    drop(a);
}

#[test]
fn certificates_reload_on_sighup_without_dropping_connections() {
    let first = Pki::new("reload-first");
    let second = Pki::new("reload-second");
    let dir = log_dir().join("reload-live");
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let install = |pki: &Pki| {
        std::fs::copy(&pki.cert, &cert).expect("cert");
        std::fs::copy(&pki.key, &key).expect("key");
    };
    install(&first);
    let port = free_port();
    let conf = config_file(
        &format!("reload-{port}.toml"),
        &format!(
            "listen = \"127.0.0.1:{port}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    );
    let w = start(WORKER, &format!("reload-{port}"), port, &conf);
    let mut open = TlsClient::connect(&w.addr(), &first, false).expect("first CA");
    assert_eq!(open.req("set||k||v"), Ok(Reply::Value("".into())));

    install(&second);
    w.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || w
            .log_text()
            .contains("config reloaded")),
        "{}",
        w.log_text()
    );
    // The open connection goes on; new ones get the new certificate.
    assert_eq!(open.req("get||k"), Ok(Reply::Value("v".into())));
    let refused = TlsClient::connect(&w.addr(), &first, false)
        .err()
        .unwrap_or_default();
    assert!(refused.contains("UnknownIssuer"), "{refused}");
    let mut fresh = TlsClient::connect(&w.addr(), &second, false).expect("second CA");
    assert_eq!(fresh.req("get||k"), Ok(Reply::Value("v".into())));

    // A key that does not match is refused; the running certificate stays.
    std::fs::copy(&first.key, &key).expect("key");
    w.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(10), || w
            .log_text()
            .contains("reload refused")),
        "{}",
        w.log_text()
    );
    let mut again = TlsClient::connect(&w.addr(), &second, false).expect("second CA still");
    assert_eq!(again.req("ping"), Ok(Reply::Value("pong".into())));
}
