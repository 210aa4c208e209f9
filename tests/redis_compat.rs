//! Real Redis clients against a real cluster: redis-cli (Debian's
//! `redis-tools`) and redis-py (PyPI) through the orchestrator, with an
//! `auth_token` set everywhere. Outside CI a missing client skips its test
//! with a message; in CI it fails.

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

const TOKEN: &str = "compat-token";

/// Two pairs behind an orchestrator, every daemon with [`TOKEN`].
struct Cluster {
    workers: Vec<Daemon>,
    orchestrator: Daemon,
}

fn cluster() -> Cluster {
    let auth = ["--auth-token", TOKEN];
    let (a, b) = pair(&auth);
    let (c, d) = pair(&auth);
    let orchestrator = orchestrator(&[a.port, b.port, c.port, d.port], &auth);
    Cluster {
        workers: vec![a, b, c, d],
        orchestrator,
    }
}

/// Whether `program` runs; in CI its absence fails the test.
fn available(program: &str, args: &[&str], install: &str) -> bool {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => true,
        other => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs {program} ({install}): {other:?}"
            );
            eprintln!("SKIPPED: {program} is not available ({install})");
            false
        }
    }
}

/// Runs redis-cli against `port` with the token; returns stdout.
fn cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", TOKEN])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli starts");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("feed redis-cli");
    }
    drop(input);
    let out = child.wait_with_output().expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

#[test]
fn redis_cli_speaks_to_the_orchestrator() {
    if secure::skip("redis-cli is driven without TLS here") {
        return;
    }
    if !available("redis-cli", &["--version"], "apt install redis-tools") {
        return;
    }
    let c = cluster();
    let port = c.orchestrator.port;
    let run = |args: &[&str]| cli(port, args, None);

    // AUTH: nothing runs without it, a wrong token is refused.
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "set", "k", "v"])
        .output()
        .expect("redis-cli runs");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "NOAUTH Authentication required."
    );
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", "wrong"])
        .args(["get", "k"])
        .output()
        .expect("redis-cli runs");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("WRONGPASS"), "{said}");

    assert_eq!(run(&["ping"]), "PONG");
    assert_eq!(run(&["set", "greeting", "hello world"]), "OK");
    assert_eq!(run(&["get", "greeting"]), "hello world");
    assert_eq!(run(&["get", "missing"]), "");
    assert_eq!(run(&["set", "greeting", "again", "NX"]), "");
    assert_eq!(run(&["set", "absent", "v", "XX"]), "");
    assert_eq!(run(&["set", "greeting", "again", "XX", "EX", "100"]), "OK");
    let ttl: i64 = run(&["ttl", "greeting"]).parse().expect("a number");
    assert!((98..=100).contains(&ttl), "ttl {ttl}");
    assert!(
        run(&["lpush", "greeting", "x"]).starts_with("ERR unknown command 'lpush'"),
        "an unknown command is named in its error"
    );
    assert_eq!(run(&["expire", "greeting", "50"]), "1");
    let ttl: i64 = run(&["ttl", "greeting"]).parse().expect("a number");
    assert!((48..=50).contains(&ttl), "ttl {ttl}");
    assert_eq!(run(&["ttl", "missing"]), "-2");
    let pttl: i64 = run(&["pttl", "greeting"]).parse().expect("a number");
    assert!((49_000..=50_000).contains(&pttl), "{pttl}");

    // Binary values in and out: NUL, CR, LF.
    let value = b"a\0b\r\nc\n";
    assert_eq!(cli(port, &["-x", "set", "binary"], Some(value)), "OK");
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--no-auth-warning", "-a", TOKEN])
        .args(["--raw", "get", "binary"])
        .output()
        .expect("redis-cli runs");
    // --raw prints the bytes as they are, then a newline.
    assert_eq!(&out.stdout[..], b"a\0b\r\nc\n\n");

    // MSET / MGET across both pairs; DEL / EXISTS with many keys.
    let mut mset = vec!["mset".to_string()];
    for i in 0..100 {
        mset.push(format!("key:{i}"));
        mset.push(format!("value:{i}"));
    }
    let mset: Vec<&str> = mset.iter().map(String::as_str).collect();
    assert_eq!(run(&mset), "OK");
    for w in &c.workers {
        let held: u64 = cli(w.port, &["dbsize"], None).parse().expect("a number");
        assert!(held > 10, "worker {} holds {held} keys", w.port);
    }
    let keys: Vec<String> = (0..100).map(|i| format!("key:{i}")).collect();
    // A missing key first: redis-cli prints it as an empty line.
    let mut mget = vec!["mget", "key:none"];
    mget.extend(keys.iter().map(String::as_str));
    let values = run(&mget);
    let expected: Vec<String> = std::iter::once(String::new())
        .chain((0..100).map(|i| format!("value:{i}")))
        .collect();
    assert_eq!(values.split('\n').collect::<Vec<_>>(), expected);
    let mut exists = vec!["exists"];
    exists.extend(keys.iter().map(String::as_str));
    assert_eq!(run(&exists), "100");
    let mut del = vec!["del"];
    del.extend(keys.iter().map(String::as_str));
    del.push("key:none");
    assert_eq!(run(&del), "100");
    assert_eq!(run(&exists), "0");

    // A pipeline of 1,000 commands in one write (redis-cli --pipe).
    let mut wire = Vec::new();
    for i in 0..1000 {
        let (k, v) = (format!("pipe:{i}"), format!("v{i}"));
        write!(
            wire,
            "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
            k.len(),
            v.len()
        )
        .expect("in memory");
    }
    let piped = cli(port, &["--pipe"], Some(&wire));
    assert!(
        piped.contains("errors: 0, replies: 1000"),
        "redis-cli --pipe said: {piped}"
    );
    assert_eq!(run(&["get", "pipe:999"]), "v999");
    let size: u64 = run(&["dbsize"]).parse().expect("a number");
    assert!(size >= 1000, "dbsize {size}");
    assert!(run(&["info"]).contains("redis_mode:standalone"));
    eprintln!(
        "redis-cli: every check passed against {}",
        c.orchestrator.addr()
    );
}

#[test]
fn redis_py_speaks_to_the_orchestrator() {
    if secure::skip("redis-py is driven without TLS here") {
        return;
    }
    let python = std::env::var("RCACHE_PYTHON").unwrap_or_else(|_| "python3".into());
    if !available(
        &python,
        &["-c", "import redis"],
        "pip install redis, or set RCACHE_PYTHON",
    ) {
        return;
    }
    let c = cluster();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/compat/redis_py.py");
    let mut args = vec![
        script.to_string(),
        c.orchestrator.port.to_string(),
        TOKEN.to_string(),
    ];
    args.extend(c.workers.iter().map(|w| w.port.to_string()));
    let out = Command::new(&python)
        .args(&args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("checks passed"), "{stdout}");
    eprintln!("{}", stdout.trim());
}
