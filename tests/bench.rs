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

#[test]
fn bench_reports_what_the_server_served() {
    let w = solo(&[]);
    let csv = log_dir().join(format!("bench-{}.csv", w.port));
    let _ = std::fs::remove_file(&csv);
    for (protocol, pipeline) in [("resp", "1"), ("text", "8")] {
        let before = http_get(&w.metrics_addr(), "/metrics").1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rcache"));
        cmd.args(["--addr", &w.addr()])
            .args(if secure::on() {
                secure::cli_args()
            } else {
                Vec::new()
            })
            .args(["bench", "--protocol", protocol, "-c", "4", "-P", pipeline])
            .args([
                "--keys",
                "1000",
                "--duration",
                "1s",
                "--ratio",
                "3:1",
                "--seed",
                "7",
            ])
            .arg("--csv")
            .arg(&csv);
        if secure::on() {
            cmd.env("RCACHE_AUTH_TOKEN", secure::TOKEN);
        }
        let out = cmd.output().expect("rcache bench runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("seed 7"));
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
