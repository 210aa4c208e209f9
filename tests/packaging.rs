//! What the package ships, checked without root: man pages that match the
//! programs, hardened units, alert rules Prometheus accepts, and a Grafana
//! dashboard and alert rules that only query metrics the daemons export.
//! (tests/systemd.rs installs the package and runs it for real, as root.)

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a tool the test needs; in CI a missing tool fails the test.
fn tool(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program).args(args).output() {
        Ok(out) => Some(out),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI needs {program}: {e}"
            );
            eprintln!("SKIPPED: {program} is not installed ({e})");
            None
        }
    }
}

#[test]
fn man_pages_match_the_programs() {
    use clap::CommandFactory;
    for cmd in [
        rcache::daemon::args::WorkerArgs::cli(),
        rcache::daemon::args::OrchestratorArgs::cli(),
        rcache::cli::Cli::command(),
    ] {
        let name = format!("{}.1", cmd.get_name());
        let mut fresh = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut fresh)
            .expect("render");
        let committed =
            std::fs::read(Path::new(ROOT).join("packaging/man").join(&name)).unwrap_or_default();
        assert!(
            committed == fresh,
            "packaging/man/{name} differs from the program's --help: run \
             `cargo run --example manpages` and commit the result"
        );
    }
    let worker = std::fs::read_to_string(Path::new(ROOT).join("packaging/man/rcache-worker.1"))
        .expect("man page");
    for flag in ["config", "max\\-memory", "metrics\\-listen", "SIGHUP"] {
        assert!(worker.contains(flag), "rcache-worker.1 lacks {flag}");
    }
}

#[test]
fn units_are_hardened_to_an_exposure_of_1_1_or_lower() {
    for unit in ["rcache-worker@.service", "rcache-orchestrator.service"] {
        let path = Path::new(ROOT).join("systemd").join(unit);
        let Some(out) = tool(
            "systemd-analyze",
            &[
                "security",
                "--offline=true",
                path.to_str().expect("utf-8 path"),
            ],
        ) else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| {
                l.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no exposure level for {unit}:\n{text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        println!("{unit}: exposure {score}");
        assert!(score <= 1.1, "{unit} exposure {score} > 1.1:\n{text}");
        let body = std::fs::read_to_string(&path).expect("unit");
        for line in [
            "Type=notify",
            "Restart=on-failure",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "DynamicUser=yes",
            "LimitNOFILE=",
        ] {
            assert!(body.contains(line), "{unit} lacks {line}");
        }
    }
}

#[test]
fn the_dashboard_and_alerts_query_only_exported_metrics() {
    let queries = shipped_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut wanted = BTreeSet::new();
    for q in &queries {
        wanted.extend(metric_names(q));
    }
    // A live cluster's expositions, worker and orchestrator.
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let mut exported = BTreeSet::new();
    for addr in [a.metrics_addr(), o.metrics_addr()] {
        let (_, body) = http_get(&addr, "/metrics");
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            exported.insert(name.to_string());
        }
    }
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alerts query metrics nobody exports: {missing:?}"
    );
    println!("{} metrics queried, all exported", wanted.len());

    if let Some(out) = tool(
        "promtool",
        &[
            "check",
            "rules",
            &format!("{ROOT}/packaging/prometheus/rcache-alerts.yml"),
        ],
    ) {
        assert!(
            out.status.success(),
            "promtool check rules: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
