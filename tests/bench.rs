//! `rcache bench` against a real worker: what it reports matches what the
//! server counted, over RESP and the text protocol, and its CSV row holds
//! the same figures.

mod common;

use common::*;
use std::process::Command;

fn counted(metrics: &str, command: &str) -> f64 {
    ["ok", "not_found", "error"]
        .iter()
        .filter_map(|result| {
            metric(
                metrics,
                &format!(r#"rcache_requests_total{{command="{command}",result="{result}"}}"#),
            )
        })
        .sum()
}

/// Runs `rcache --addr <addr> bench <args>` (with the secure mode's TLS
/// and token) and asserts it succeeded; its stdout and stderr.
fn bench(addr: &str, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rcache"));
    cmd.args(["--addr", addr])
        .args(if secure::on() {
            secure::cli_args()
        } else {
            Vec::new()
        })
        .arg("bench")
        .args(args);
    if secure::on() {
        cmd.env("RCACHE_AUTH_TOKEN", secure::TOKEN);
    }
    let out = cmd.output().expect("rcache bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn bench_reports_what_the_server_served() {
    let w = solo(&[]);
    let csv = log_dir().join(format!("bench-{}.csv", w.port));
    let _ = std::fs::remove_file(&csv);
    for (protocol, pipeline) in [("resp", "1"), ("text", "8")] {
        let before = http_get(&w.metrics_addr(), "/metrics").1;
        let csv_arg = csv.to_string_lossy();
        let (stdout, stderr) = bench(
            &w.addr(),
            &[
                "--protocol",
                protocol,
                "-c",
                "4",
                "-P",
                pipeline,
                "--keys",
                "1000",
                "--duration",
                "1s",
                "--ratio",
                "3:1",
                "--seed",
                "7",
                "--csv",
                &csv_arg,
            ],
        );
        assert!(stderr.contains("seed 7"), "{stderr}");
        let after = http_get(&w.metrics_addr(), "/metrics").1;
        let gets = counted(&after, "get") - counted(&before, "get");
        let sets = counted(&after, "set") - counted(&before, "set");
        // The summary line: "<n> requests in …: … (<g> gets, <m> misses, <s> sets, 0 errors)".
        let number = |word: &str| -> f64 {
            let i = stdout
                .find(word)
                .unwrap_or_else(|| panic!("{word} in {stdout}"));
            stdout[..i]
                .rsplit(['(', ' '])
                .find(|s| !s.is_empty())
                .expect("a number")
                .replace(',', "")
                .parse()
                .expect("a number")
        };
        assert_eq!(
            number(" gets"),
            gets,
            "gets reported vs served ({protocol})"
        );
        assert_eq!(
            number(" sets"),
            sets,
            "sets reported vs served ({protocol})"
        );
        assert!(gets > 2.0 * sets, "a 3:1 mix: {gets} gets, {sets} sets");
        assert!(stdout.contains(", 0 errors)"), "{stdout}");
        assert!(stdout.contains("p99.9"), "{stdout}");
    }
    let rows = std::fs::read_to_string(&csv).expect("csv written");
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 3, "a header and one row per run: {rows}");
    assert!(lines[0].starts_with("addr,protocol,connections,pipeline"));
    assert!(
        lines[1].contains(",resp,4,1,1000,100,3:1,uniform,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].contains(",text,4,8,1000,100,3:1,uniform,"),
        "{}",
        lines[2]
    );
}

/// The number right after the first `after` in a bench summary
/// ("(<g> gets, <m> misses, <s> sets, 0 errors)"), commas dropped.
fn figure(stdout: &str, after: &str) -> u64 {
    stdout
        .split(after)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure after {after:?} in {stdout}"))
}

/// `--load incr` through an orchestrator: the counters add up to the
/// INCRs it reports, and the orchestrator counted as many.
#[test]
fn bench_incr_load_adds_up() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let before = http_get(&o.metrics_addr(), "/metrics").1;
    let (stdout, _) = bench(
        &o.addr(),
        &[
            "--load",
            "incr",
            "-c",
            "4",
            "-P",
            "4",
            "--keys",
            "50",
            "--duration",
            "1s",
            "--ratio",
            "1:3",
            "--prefill",
            "--seed",
            "3",
        ],
    );
    // "(<g> gets, <m> misses, <s> sets, 0 errors)": sets are INCRs here.
    let sets = figure(&stdout, " misses, ");
    assert!(sets > 100, "{stdout}");
    let after = http_get(&o.metrics_addr(), "/metrics").1;
    assert_eq!(
        counted(&after, "incr") - counted(&before, "incr"),
        sets as f64,
        "INCRs reported vs counted"
    );
    let mut r = common::resp::Resp::connect(o.port);
    let mut total = 0;
    for k in 0..50 {
        let key = format!("key:{k:012}");
        match r.call(&["GET", &key]) {
            rcache::protocol::resp::Value::Bulk(Some(v)) => {
                total += std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{key} holds {v:?}"));
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(total, sets, "the counters add up to the INCRs acknowledged");
}

/// `--load hash` through an orchestrator: every HGET of a prefilled field
/// hits, the orchestrator counted the HSETs it reports as hash writes, and
/// each hash holds its 8 fields.
#[test]
fn bench_hash_load_sets_and_gets_fields() {
    let (a, b) = pair(&[]);
    let o = orchestrator(&[a.port, b.port], &[]);
    let before = http_get(&o.metrics_addr(), "/metrics").1;
    let (stdout, _) = bench(
        &o.addr(),
        &[
            "--load",
            "hash",
            "-c",
            "4",
            "-P",
            "4",
            "--keys",
            "80",
            "--value-size",
            "32",
            "--duration",
            "1s",
            "--prefill",
            "--seed",
            "5",
        ],
    );
    let (gets, sets) = (figure(&stdout, "("), figure(&stdout, " misses, "));
    assert!(gets > 100 && sets > 100, "{stdout}");
    assert!(
        stdout.contains(" 0 misses, "),
        "prefilled fields all hit: {stdout}"
    );
    assert!(stdout.contains(" 0 errors"), "{stdout}");
    let after = http_get(&o.metrics_addr(), "/metrics").1;
    // The prefill's 80 HSETs, then the run's.
    assert_eq!(
        counted(&after, "hwrite") - counted(&before, "hwrite"),
        (sets + 80) as f64,
        "HSETs reported vs counted"
    );
    assert_eq!(
        counted(&after, "hread") - counted(&before, "hread"),
        gets as f64
    );
    let mut r = common::resp::Resp::connect(o.port);
    for h in 0..10 {
        let key = format!("key:{h:012}");
        assert_eq!(
            r.call(&["HLEN", &key]),
            rcache::protocol::resp::Value::Integer(8),
            "{key}"
        );
        match r.call(&["HGET", &key, "f7"]) {
            rcache::protocol::resp::Value::Bulk(Some(v)) => assert_eq!(v.len(), 32, "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }
}
