//! Application clients against a real `rcache local`: Django's RedisCache
//! backend (its cache API, over redis-py) and node's ioredis, each run as
//! the application would run it. Outside CI a missing client skips its
//! test with a message; in CI it fails (`.ci/test` installs them:
//! Django into the redis-py virtualenv, ioredis under target/ioredis).

mod common;

use std::process::{Child, Command};

/// `rcache local` on free ports, stopped when dropped.
struct Local {
    child: Child,
    port: u16,
}

impl Local {
    fn start() -> Local {
        let (child, port, lines) = common::rcache_local();
        // Keep reading its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Local { child, port }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid: SIGINT, as Ctrl-C would.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let _ = self.child.wait();
    }
}

/// Runs `program args` and asserts it passed, showing its output.
fn run(program: &str, args: &[&str], env: &[(&str, String)], what: &str) {
    let out = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("checks passed"),
        "{what}: {stdout}\n{stderr}"
    );
    println!("{}", stdout.trim_end());
}

/// Whether `program -c/-e check` succeeds; in CI its failure fails the test.
fn available(program: &str, args: &[&str], env: &[(&str, String)], install: &str) -> bool {
    let ok = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs {program} {args:?} ({install})"
        );
        eprintln!("SKIPPED: {program} {args:?} fails ({install})");
    }
    ok
}

fn script(name: &str) -> String {
    format!("{}/tests/compat/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn django_redis_cache_runs_its_cache_api() {
    if common::secure::skip("rcache local runs without TLS") {
        return;
    }
    let python = std::env::var("RCACHE_PYTHON").unwrap_or_else(|_| "python3".into());
    let install = "pip install django redis, or set RCACHE_PYTHON";
    if !available(&python, &["-c", "import django, redis"], &[], install) {
        return;
    }
    let local = Local::start();
    run(
        &python,
        &[&script("django_cache.py"), &local.port.to_string()],
        &[],
        "Django's RedisCache",
    );
}

#[test]
fn ioredis_runs_an_application_s_commands() {
    if common::secure::skip("rcache local runs without TLS") {
        return;
    }
    let node_path = std::env::var("RCACHE_NODE_PATH")
        .unwrap_or_else(|_| format!("{}/target/ioredis/node_modules", env!("CARGO_MANIFEST_DIR")));
    let env = [("NODE_PATH", node_path)];
    let install = "npm install --prefix target/ioredis ioredis, or set RCACHE_NODE_PATH";
    if !available("node", &["-e", "require('ioredis')"], &env, install) {
        return;
    }
    let local = Local::start();
    run(
        "node",
        &[&script("ioredis.js"), &local.port.to_string()],
        &env,
        "ioredis",
    );
}
