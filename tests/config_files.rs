//! Shipped example configs are accepted; every file under
//! `tests/config/invalid*` and every bad flag is refused with status 2.

use std::path::Path;
use std::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_rcache-worker");
const ORCHESTRATOR: &str = env!("CARGO_BIN_EXE_rcache-orchestrator");

fn run(bin: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin)
        .args(args)
        .env_remove("RCACHE_LISTEN")
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn files(dir: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path().display().to_string())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no configs in {}", dir.display());
    files
}

#[test]
fn shipped_configs_are_valid() {
    for file in files("config") {
        let bin = if file.contains("orchestrator") {
            ORCHESTRATOR
        } else {
            WORKER
        };
        let (code, stderr) = run(bin, &["--config", &file, "--check-config"]);
        assert_eq!(code, 0, "{file}: {stderr}");
    }
}

#[test]
fn invalid_configs_are_refused_with_status_2() {
    for (dir, bin) in [
        ("tests/config/invalid", WORKER),
        ("tests/config/invalid-orchestrator", ORCHESTRATOR),
    ] {
        for file in files(dir) {
            let (code, stderr) = run(bin, &["--config", &file, "--check-config"]);
            assert_eq!(code, 2, "{file} was not refused: {stderr}");
            assert!(stderr.contains("invalid configuration"), "{file}: {stderr}");
        }
    }
}

#[test]
fn bad_flags_and_arguments_are_refused_with_status_2() {
    let cases: &[(&str, &[&str], &str)] = &[
        (WORKER, &["--idle-timeout", "soon"], "idle_timeout"),
        (WORKER, &["--max-memory", "12 apples"], "max_memory"),
        (WORKER, &["--listen", "nowhere"], "listen"),
        (
            WORKER,
            &["--config", "/nonexistent/rcache.toml"],
            "does not exist",
        ),
        (WORKER, &["--no-such-flag"], "no-such-flag"),
        (ORCHESTRATOR, &["127.0.0.1", "7001", "127.0.0.1"], "pairs"),
        (ORCHESTRATOR, &["127.0.0.1", "7001"], "odd"),
        (ORCHESTRATOR, &[], "no workers"),
        (
            ORCHESTRATOR,
            &[
                "--worker-timeout",
                "1",
                "127.0.0.1",
                "7001",
                "127.0.0.1",
                "7002",
            ],
            "worker_timeout",
        ),
    ];
    for (bin, args, needle) in cases {
        let (code, stderr) = run(bin, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
    }
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let dir = std::env::temp_dir().join(format!("rcache-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("w.toml");
    std::fs::write(&file, "idle_timeout = \"10s\"\nmax_connections = 5\n").expect("write");
    let out = Command::new(WORKER)
        .args([
            "--config",
            file.to_str().expect("utf-8"),
            "--print-config",
            "--max-connections",
            "9",
        ])
        .env("RCACHE_IDLE_TIMEOUT", "20s")
        .env("RCACHE_MAX_CONNECTIONS", "7")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("idle_timeout = \"20s\""), "{text}");
    assert!(text.contains("max_connections = 9"), "{text}");
}
