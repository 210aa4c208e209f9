use super::units::Scalar;
use super::*;
use crate::protocol::Limits;
use figment::Jail;
use std::time::Duration;

/// The environment filter's key lists name exactly the struct's keys.
#[test]
fn key_lists_match_the_structs() {
    fn keys<R: RawConfig>() -> Vec<String> {
        match toml::Value::try_from(R::default()) {
            Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
            other => panic!("not a table: {other:?}"),
        }
    }
    let sorted = |v: &[&str]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let mut worker = keys::<RawWorker>();
    // None by default, so not serialized.
    worker.push("partner".into());
    worker.push("auth_token".into());
    worker.push("cluster_token".into());
    worker.push("tls".into());
    worker.sort();
    assert_eq!(worker, sorted(RawWorker::KEYS));
    let mut orchestrator = keys::<RawOrchestrator>();
    orchestrator.push("auth_token".into());
    orchestrator.push("cluster_token".into());
    orchestrator.push("tls".into());
    orchestrator.sort();
    assert_eq!(orchestrator, sorted(RawOrchestrator::KEYS));
}

#[test]
fn defaults_are_valid() {
    RawWorker::default().validate().expect("worker defaults");
    let o = RawOrchestrator {
        workers: vec![vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]],
        ..RawOrchestrator::default()
    };
    let (config, _) = o.validate().expect("orchestrator defaults");
    assert_eq!(config.worker_timeout, Duration::from_secs(1));
    assert_eq!(config.health_interval, Duration::from_millis(500));
    assert_eq!(config.server.idle_timeout, Duration::from_secs(300));
    assert_eq!(config.server.limits, Limits::default());
}

#[test]
fn precedence_is_defaults_file_env_flags() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "w.toml",
            "listen = \"127.0.0.1:8001\"\nidle_timeout = \"10s\"\nmax_memory = \"64MiB\"\n",
        )?;
        jail.set_env("RCACHE_IDLE_TIMEOUT", "20s");
        jail.set_env("RCACHE_MAX_CONNECTIONS", "77");
        jail.set_env("RCACHE_UNRELATED_THING", "ignored");
        let flags = WorkerFlags {
            max_connections: Some(99),
            ..WorkerFlags::default()
        };
        let raw: RawWorker = load(Some(Path::new("w.toml")), &flags).expect("loads");
        let (c, _) = raw.validate().expect("valid");
        assert_eq!(c.listen, "127.0.0.1:8001");
        assert_eq!(c.server.idle_timeout, Duration::from_secs(20));
        assert_eq!(c.server.max_connections, 99);
        assert_eq!(c.store.max_memory_bytes, 64 << 20);
        Ok(())
    });
}

#[test]
fn unknown_keys_and_missing_files_are_refused() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "w.toml",
            "listen = \"127.0.0.1:8001\"\nmax_memroy = \"1GiB\"\n",
        )?;
        let e = load::<RawWorker>(Some(Path::new("w.toml")), &WorkerFlags::default())
            .expect_err("unknown key");
        assert!(e.to_string().contains("max_memroy"), "{e}");
        let e = load::<RawWorker>(Some(Path::new("nope.toml")), &WorkerFlags::default())
            .expect_err("missing file");
        assert!(e.to_string().contains("nope.toml"), "{e}");
        Ok(())
    });
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let raw = RawWorker {
        listen: "nowhere".into(),
        idle_timeout: "5 fortnights".into(),
        max_memory: "lots".into(),
        compression: "zstd".into(),
        log_level: "loud".into(),
        max_key_bytes: Scalar::Int(100_000),
        ..RawWorker::default()
    };
    let e = raw.validate().expect_err("invalid");
    let text = e.to_string();
    for key in [
        "listen",
        "idle_timeout",
        "max_memory",
        "compression",
        "log_level",
        "max_key_bytes",
    ] {
        assert!(
            text.contains(&format!("{key} = ")),
            "{key} missing in {text}"
        );
    }
    assert_eq!(e.problems.len(), 6, "{text}");
}

#[test]
fn changed_keys_name_what_differs() {
    let old = RawWorker::default();
    let mut new = old.clone();
    assert!(changed_keys(&old, &new).is_empty());
    new.max_memory = Scalar::Str("2GiB".into());
    new.listen = "127.0.0.1:9".into();
    assert_eq!(changed_keys(&old, &new), vec!["listen", "max_memory"]);
    for key in RawWorker::LIVE_KEYS {
        assert!(RawWorker::KEYS.contains(key), "{key}");
    }
    for key in RawOrchestrator::LIVE_KEYS {
        assert!(RawOrchestrator::KEYS.contains(key), "{key}");
    }
}

#[test]
fn orchestrator_pairs() {
    let args: Vec<String> = ["127.0.0.1", "7001", "127.0.0.1", "7002"]
        .map(String::from)
        .into();
    assert_eq!(
        pairs_from_args(&args).expect("pairs"),
        vec![vec![
            "127.0.0.1:7001".to_string(),
            "127.0.0.1:7002".to_string()
        ]]
    );
    assert!(pairs_from_args(&args[..3]).is_err());
    assert!(
        pairs_from_args(&args[..2]).is_err(),
        "one worker is an odd count"
    );
    let raw = RawOrchestrator {
        workers: vec![
            vec!["127.0.0.1:7001".into()],
            vec!["a:1".into(), "a:1".into()],
        ],
        ..RawOrchestrator::default()
    };
    let e = raw.validate().expect_err("bad pairs");
    assert_eq!(e.problems.len(), 2, "{e}");
    assert!(RawOrchestrator::default().validate().is_err(), "no workers");
}

/// Links take `cluster_token` when it is set and `auth_token` when it is
/// not; the two may not be the same secret.
#[test]
fn links_take_the_cluster_token_or_else_the_auth_token() {
    let with = |auth: Option<&str>, cluster: Option<&str>| RawWorker {
        auth_token: auth.map(String::from),
        cluster_token: cluster.map(String::from),
        ..RawWorker::default()
    };
    let (c, _) = with(Some("clients"), None).validate().expect("valid");
    assert!(c
        .server
        .cluster
        .as_ref()
        .is_some_and(|s| s.matches(b"clients")));
    assert!(!c.server.roles());
    let (c, _) = with(Some("clients"), Some("daemons"))
        .validate()
        .expect("valid");
    assert!(c
        .server
        .auth
        .as_ref()
        .is_some_and(|s| s.matches(b"clients")));
    assert!(c
        .server
        .cluster
        .as_ref()
        .is_some_and(|s| s.matches(b"daemons")));
    assert!(c.server.roles());
    let (c, _) = with(None, Some("daemons")).validate().expect("valid");
    assert!(c.server.auth.is_none() && c.server.roles());
    let (c, _) = with(None, None).validate().expect("valid");
    assert!(c.server.cluster.is_none() && !c.server.roles());
    let e = with(Some("same"), Some("same"))
        .validate()
        .expect_err("same token");
    let text = e.to_string();
    assert!(
        text.contains("cluster_token") && text.contains("must differ"),
        "{text}"
    );
    assert!(!text.contains("same\""), "the token is echoed: {text}");
    let e = with(None, Some("")).validate().expect_err("empty");
    assert!(e.to_string().contains("cluster_token"), "{e}");
    let printed = to_toml(&with(Some("clients"), Some("daemons")));
    assert!(
        !printed.contains("daemons") && !printed.contains("clients"),
        "{printed}"
    );
}

#[test]
fn max_request_buffers_is_auto_or_room_for_the_largest_request() {
    let with = |value: &str| RawOrchestrator {
        workers: vec![vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]],
        max_request_buffers: value.into(),
        ..RawOrchestrator::default()
    };
    let least = crate::net::budget::claim(&Limits::default());
    let (auto, _) = with("auto").validate().expect("auto");
    assert!(auto.server.max_request_buffers >= least);
    let (set, _) = with("64MiB").validate().expect("64MiB");
    assert_eq!(set.server.max_request_buffers, 64 << 20);
    let e = with("1MiB")
        .validate()
        .expect_err("too small for an 8 MiB value");
    assert!(e.to_string().contains("max_request_buffers"), "{e}");
    assert!(e.to_string().contains("twice the largest request"), "{e}");
}
