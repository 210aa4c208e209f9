//! The `rcache` command: one-shot commands against an orchestrator or a
//! worker, an interactive shell, and `rcache local` (a whole cluster on
//! loopback in one process).

pub mod bench;
pub mod local;

use crate::client::{Client, Error};
use crate::protocol::{ClusterChange, Command, Expiry, Reply, SetWhen};
use bytes::Bytes;
use std::io::{BufRead, Write};
use std::time::Duration;

#[derive(Debug, clap::Parser)]
#[command(
    name = "rcache",
    version,
    about = "rcache client and local cluster",
    after_help = "With no command, starts an interactive shell."
)]
pub struct Cli {
    /// Server to talk to (an orchestrator, or a worker directly); several,
    /// comma-separated, are tried in turn.
    #[arg(
        long,
        global = true,
        env = "RCACHE_ADDR",
        default_value = "127.0.0.1:7000"
    )]
    pub addr: String,
    /// Longest wait for a connection or an answer.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The cluster's auth_token, sent as auth||<token> first.
    #[arg(long, global = true, env = "RCACHE_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Speak TLS, trusting servers whose certificate this PEM CA signed.
    #[arg(long, global = true, env = "RCACHE_TLS_CA")]
    pub tls_ca: Option<String>,
    /// Client certificate (PEM) for servers that require one (with --tls-key).
    #[arg(long, global = true)]
    pub tls_cert: Option<String>,
    /// Private key of --tls-cert.
    #[arg(long, global = true)]
    pub tls_key: Option<String>,
    #[command(subcommand)]
    pub command: Option<CliCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CliCommand {
    /// Print the value of KEY.
    Get { key: String },
    /// Store VALUE under KEY (optionally expiring after --ttl seconds).
    Set {
        key: String,
        value: String,
        /// Time to live in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Delete KEY.
    Del { key: String },
    /// Check that the server answers.
    Ping,
    /// Show the cluster as the orchestrator sees it (layout epoch, pairs,
    /// health, entries, hints queued, anti-entropy rounds, keys moving
    /// between pairs), or a worker's own state; or change the cluster's
    /// layout: replace a worker, add or remove a pair.
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
    /// Run an orchestrator and two worker pairs on loopback until Ctrl-C.
    Local(local::LocalArgs),
    /// Load a server with gets and sets (text or RESP) and report
    /// requests/s and latency percentiles.
    Bench(bench::BenchArgs),
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterAction {
    /// NEW takes OLD's place in its pair, under the layout's next epoch:
    /// start NEW empty with OLD's partner as its partner and wait until it
    /// is ready (it refilled) first. Every orchestrator and the partner
    /// follow, without a restart or a config edit.
    ReplaceWorker {
        /// The worker to replace (HOST:PORT, as the layout names it).
        old: String,
        /// Its replacement (HOST:PORT, as orchestrators will reach it).
        new: String,
    },
    /// Add a pair: A and B, two new workers started empty as partners of
    /// each other. The keys the pair takes over move to it while every
    /// pair serves; `rcache cluster wait` returns once they have.
    AddPair {
        /// A worker of the new pair (HOST:PORT, as orchestrators will reach it).
        a: String,
        /// Its partner.
        b: String,
    },
    /// Remove the pair of WORKER: its keys move to the other pairs while
    /// every pair serves, then its workers drop them and leave the layout
    /// (stop them once `rcache cluster wait` returns).
    RemovePair {
        /// Either worker of the pair (HOST:PORT, as the layout names it).
        worker: String,
    },
    /// Wait until no migration, refill or catch-up runs: every worker up,
    /// no keys moving, no hints queued. Shows progress on a terminal;
    /// exits 1 at the timeout, naming what is left.
    Wait {
        #[arg(long, default_value = "10m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::units::parse_duration(&crate::config::units::Scalar::Str(s.to_string()))
}

/// Runs the CLI; returns the process exit status.
pub async fn run(mut cli: Cli) -> i32 {
    let command = match cli.command.take() {
        None => return shell(&cli).await,
        Some(CliCommand::Local(args)) => return local::run(args).await,
        Some(CliCommand::Bench(args)) => return bench::run(&cli, args).await,
        Some(CliCommand::Get { key }) => Command::Get { key: key.into() },
        Some(CliCommand::Set { key, value, ttl }) => Command::Set {
            key: key.into(),
            value: value.into(),
            ttl: ttl.map(|s| Expiry::In(Duration::from_secs(s))),
            when: SetWhen::Always,
        },
        Some(CliCommand::Del { key }) => Command::Del { key: key.into() },
        Some(CliCommand::Ping) => Command::Ping,
        Some(CliCommand::Cluster { action: None }) => Command::Cluster,
        Some(CliCommand::Cluster {
            action: Some(ClusterAction::Wait { timeout }),
        }) => return wait(&cli, timeout).await,
        Some(CliCommand::Cluster {
            action: Some(ClusterAction::ReplaceWorker { old, new }),
        }) => Command::ChangeCluster(ClusterChange::ReplaceWorker {
            old: old.into(),
            new: new.into(),
        }),
        Some(CliCommand::Cluster {
            action: Some(ClusterAction::AddPair { a, b }),
        }) => Command::ChangeCluster(ClusterChange::AddPair {
            a: a.into(),
            b: b.into(),
        }),
        Some(CliCommand::Cluster {
            action: Some(ClusterAction::RemovePair { worker }),
        }) => Command::ChangeCluster(ClusterChange::RemovePair {
            worker: worker.into(),
        }),
    };
    let client = match connect(&cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rcache: {e}");
            return 1;
        }
    };
    match client.request(&command).await {
        Ok(reply) => print_reply(&command, &reply),
        Err(Error::Server(e)) => print_reply(&command, &Reply::Error(e)),
        Err(e) => {
            eprintln!("rcache: {}: {e}", cli.addr);
            1
        }
    }
}

/// What is left before a cluster has settled, from a `cluster` reply: a
/// migration's step and the keys left to move, the workers not up (with
/// their entries against their partner's while they load), and the hints
/// queued.
fn unsettled(reply: &str) -> (Vec<String>, u64) {
    let records: Vec<std::collections::HashMap<&str, &str>> = reply
        .split(';')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.split_whitespace()
                .filter_map(|f| f.split_once('='))
                .collect()
        })
        .collect();
    let number = |r: &std::collections::HashMap<&str, &str>, k: &str| -> u64 {
        r.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let mut left = Vec::new();
    let mut hints = 0;
    if let Some(step) = records
        .iter()
        .filter_map(|r| r.get("step"))
        .find(|s| **s != "settled")
    {
        let keys: u64 = records.iter().map(|r| number(r, "left")).sum();
        let moved: u64 = records.iter().map(|r| number(r, "moved")).sum();
        left.push(format!("keys moving ({step}): {moved} moved, {keys} left"));
    }
    for (i, r) in records.iter().enumerate() {
        hints += number(r, "hints");
        // A worker asked directly tells its own state.
        let health = match (r.get("health"), r.get("state")) {
            (Some(h), _) => *h,
            (None, Some(&"ready")) => "up",
            (None, Some(s)) => *s,
            (None, None) => "unknown",
        };
        if health == "up" {
            continue;
        }
        let worker = r.get("worker").copied().unwrap_or("?");
        // Records come in pairs: the partner is the other of the two.
        let partner = records.get(i ^ 1).map(|p| number(p, "entries"));
        match partner {
            Some(of) if health == "loading" && of > 0 => {
                let have = number(r, "entries").min(of);
                left.push(format!("{worker} loading {}%", have * 100 / of));
            }
            _ => left.push(format!("{worker} {health}")),
        }
    }
    (left, hints)
}

/// `rcache cluster wait`: polls `cluster` until every worker is up and no
/// hints are queued.
async fn wait(cli: &Cli, timeout: Duration) -> i32 {
    use std::io::IsTerminal;
    let client = match connect(cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rcache: {e}");
            return 1;
        }
    };
    let terminal = std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    loop {
        let status = match client.request(&Command::Cluster).await {
            Ok(Reply::Value(v)) => {
                let reply = String::from_utf8_lossy(&v);
                let (left, hints) = unsettled(&reply);
                let workers = reply.split(';').filter(|r| !r.trim().is_empty()).count();
                if left.is_empty() && hints == 0 {
                    if terminal {
                        eprint!("\r\x1b[K");
                    }
                    println!("settled: {workers} workers up, no keys moving, no hints queued");
                    return 0;
                }
                let not_up = left
                    .iter()
                    .filter(|l| !l.starts_with("keys moving"))
                    .count();
                format!(
                    "{} of {workers} workers up; {hints} hints queued; {}",
                    workers - not_up,
                    left.join(", ")
                )
            }
            Ok(other) => {
                eprintln!("rcache: {}: unexpected answer {other:?}", cli.addr);
                return 1;
            }
            Err(e @ Error::Server(_)) => {
                eprintln!("rcache: {}: {e}", cli.addr);
                return 1;
            }
            // An orchestrator that is restarting (as an upgrade does) is
            // waited for, up to the timeout.
            Err(e) => format!("{} does not answer: {e}", cli.addr),
        };
        if started.elapsed() >= timeout {
            if terminal {
                eprint!("\r\x1b[K");
            }
            eprintln!("rcache: not settled after {timeout:?}: {status}");
            return 1;
        }
        if terminal {
            eprint!("\r\x1b[K{status}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The TLS configuration the flags describe, if any.
fn tls_config(cli: &Cli) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    let pair = match (cli.tls_cert.as_deref(), cli.tls_key.as_deref()) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    match (&cli.tls_ca, pair) {
        (Some(ca), pair) => Ok(Some(crate::tls::client_config(ca, pair)?)),
        (None, None) => Ok(None),
        (None, Some(_)) => Err("--tls-cert needs --tls-ca".into()),
    }
}

/// The client the flags describe (nothing is dialed yet).
async fn connect(cli: &Cli) -> Result<Client, String> {
    let tls = tls_config(cli)?;
    let addrs: Vec<String> = cli
        .addr
        .split(',')
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .collect();
    let mut builder = Client::builder(addrs)
        .timeout(cli.timeout)
        .connect_timeout(cli.timeout)
        .pool_size(1);
    if let Some(token) = &cli.auth_token {
        builder = builder.auth_token(token);
    }
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    Ok(builder.build())
}

/// Prints a reply as a person reads it; returns the exit status.
fn print_reply(command: &Command, reply: &Reply) -> i32 {
    match (command, reply) {
        (Command::Ping, _) if !matches!(reply, Reply::Error(_)) => {
            println!("pong");
            0
        }
        (Command::Cluster, Reply::Value(v)) => {
            print!("{}", cluster_table(&String::from_utf8_lossy(v)));
            0
        }
        (Command::ChangeCluster(_), Reply::Value(v)) => {
            print!("{}", cluster_table(&String::from_utf8_lossy(v)));
            0
        }
        (Command::Get { .. }, Reply::Value(v)) => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(v);
            let _ = out.write_all(b"\n");
            0
        }
        (_, Reply::Value(_) | Reply::Done) => {
            println!("OK");
            0
        }
        (_, Reply::NotStored) => {
            println!("not stored");
            0
        }
        (_, Reply::Integer(n)) => {
            println!("{n}");
            0
        }
        (_, Reply::Pairs(pairs)) => {
            let mut out = std::io::stdout().lock();
            for (name, value) in pairs {
                let _ = out.write_all(name);
                let _ = out.write_all(b" ");
                let _ = out.write_all(value);
                let _ = out.write_all(b"\n");
            }
            0
        }
        (_, Reply::Values(values)) => {
            let mut out = std::io::stdout().lock();
            for v in values {
                let _ = out.write_all(v.as_deref().unwrap_or(b"(nil)"));
                let _ = out.write_all(b"\n");
            }
            0
        }
        (_, Reply::Pong) => {
            println!("pong");
            0
        }
        (_, Reply::Array(items)) => {
            let mut status = 0;
            for item in items {
                status = status.max(print_reply(command, item));
            }
            status
        }
        (_, Reply::Map(pairs)) => {
            let mut status = 0;
            for (name, item) in pairs {
                println!("{name}");
                status = status.max(print_reply(command, item));
            }
            status
        }
        (_, Reply::Status(word)) => {
            println!("{word}");
            0
        }
        (_, Reply::Error(e)) => {
            eprintln!("({}) {}", e.code.as_u8(), e.message);
            1
        }
    }
}

/// Lays out a `cluster` reply (`;` between records, `name=value` fields)
/// as an aligned table whose columns are the fields' names.
fn cluster_table(reply: &str) -> String {
    let records: Vec<Vec<(&str, &str)>> = reply
        .split(';')
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            r.split_whitespace()
                .map(|f| f.split_once('=').unwrap_or((f, "")))
                .collect()
        })
        .collect();
    let Some(first) = records.first() else {
        return String::new();
    };
    let names: Vec<&str> = first.iter().map(|(n, _)| *n).collect();
    let mut rows = vec![names.iter().map(|n| n.to_uppercase()).collect::<Vec<_>>()];
    for r in &records {
        rows.push(
            names
                .iter()
                .map(|n| {
                    r.iter()
                        .find(|(k, _)| k == n)
                        .map_or("", |(_, v)| *v)
                        .to_string()
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..names.len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Parses a shell line: `get k`, `set k some value`, `setex k 10 v`,
/// `del k`, `ping`, or a raw protocol line holding `||`.
fn parse_shell_line(line: &str) -> Option<Result<Command, String>> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    if line.contains("||") {
        let limits = crate::protocol::Limits::default();
        return Some(
            crate::protocol::text::parse_line(Bytes::copy_from_slice(line.as_bytes()), &limits)
                .map_err(|e| e.message.into_owned()),
        );
    }
    let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    let rest = rest.trim_start();
    let (key, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let need_key = || {
        if key.is_empty() {
            Err(format!("usage: {word} <key> ..."))
        } else {
            Ok(Bytes::copy_from_slice(key.as_bytes()))
        }
    };
    Some(match word.to_ascii_lowercase().as_str() {
        "get" => need_key().map(|key| Command::Get { key }),
        "del" => need_key().map(|key| Command::Del { key }),
        "set" => need_key().map(|key| Command::Set {
            key,
            value: Bytes::copy_from_slice(tail.trim_start().as_bytes()),
            ttl: None,
            when: SetWhen::Always,
        }),
        "setex" => need_key().and_then(|key| {
            let (ttl, value) = tail.trim_start().split_once(char::is_whitespace).unwrap_or((tail, ""));
            let ttl: u64 = ttl.parse().map_err(|_| "usage: setex <key> <seconds> <value>".to_string())?;
            Ok(Command::Set {
                key,
                value: Bytes::copy_from_slice(value.trim_start().as_bytes()),
                ttl: Some(Expiry::In(Duration::from_secs(ttl))),
                when: SetWhen::Always,
            })
        }),
        "ping" => Ok(Command::Ping),
        "cluster" => Ok(Command::Cluster),
        "exit" | "quit" => Ok(Command::Exit),
        other => Err(format!(
            "unknown command {other:?}: use get, set, setex, del, ping, quit (or a raw line like get||key)"
        )),
    })
}

async fn shell(cli: &Cli) -> i32 {
    let addr = cli.addr.as_str();
    let client = match connect(cli).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rcache: {e}");
            return 1;
        }
    };
    eprintln!("talking to {addr}; commands: get, set, setex, del, ping, quit");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    loop {
        eprint!("{addr}> ");
        let Some(line) = rx.recv().await else {
            eprintln!();
            return 0;
        };
        let command = match parse_shell_line(&line) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("{e}");
                continue;
            }
            Some(Ok(Command::Exit)) => return 0,
            Some(Ok(c)) => c,
        };
        // The client reconnects (and fails over) by itself.
        match client.request(&command).await {
            Ok(reply) => {
                print_reply(&command, &reply);
            }
            Err(Error::Server(e)) => {
                print_reply(&command, &Reply::Error(e));
            }
            Err(e) => eprintln!("rcache: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_left_before_a_cluster_settles() {
        let reply = "epoch=0 pair=0 worker=a:1 health=up entries=1000 hints=3 synced=1;\
                     epoch=0 pair=0 worker=a:2 health=loading entries=250 hints=0 synced=0;\
                     epoch=0 pair=1 worker=b:1 health=down entries=0 hints=0 synced=0;\
                     epoch=0 pair=1 worker=b:2 health=up entries=9 hints=0 synced=4";
        assert_eq!(
            unsettled(reply),
            (
                vec!["a:2 loading 25%".to_string(), "b:1 down".to_string()],
                3
            )
        );
        let settled = "epoch=1 pair=0 worker=a:1 health=up entries=5 hints=0 synced=1;\
                       epoch=1 pair=0 worker=a:2 health=up entries=5 hints=0 synced=1";
        assert_eq!(unsettled(settled), (vec![], 0));
        let moving = "epoch=4 pair=0 worker=a:1 health=up entries=5 hints=0 synced=1 step=copying moved=7 left=30;\
                      epoch=4 pair=0 worker=a:2 health=up entries=5 hints=0 synced=1 step=copying moved=3 left=12;\
                      epoch=4 pair=1 worker=c:1 health=up entries=0 hints=0 synced=1 step=copying moved=0 left=0;\
                      epoch=4 pair=1 worker=c:2 health=up entries=0 hints=0 synced=1 step=copying moved=0 left=0";
        assert_eq!(
            unsettled(moving),
            (
                vec!["keys moving (copying): 10 moved, 42 left".to_string()],
                0
            )
        );
    }

    #[test]
    fn cluster_replies_become_a_table() {
        let table = cluster_table(
            "pair=0 worker=127.0.0.1:7001 health=up entries=10;pair=0 worker=127.0.0.1:7002 health=behind entries=9",
        );
        assert_eq!(
            table,
            "PAIR  WORKER          HEALTH  ENTRIES\n\
             0     127.0.0.1:7001  up      10\n\
             0     127.0.0.1:7002  behind  9\n"
        );
    }

    #[test]
    fn shell_lines() {
        let parse = |l: &str| parse_shell_line(l).map(|r| r.map_err(|_| ()));
        assert_eq!(parse("  "), None);
        assert_eq!(parse("get k"), Some(Ok(Command::Get { key: "k".into() })));
        assert_eq!(
            parse("set k hello  world"),
            Some(Ok(Command::Set {
                key: "k".into(),
                value: "hello  world".into(),
                ttl: None,
                when: SetWhen::Always,
            }))
        );
        assert_eq!(
            parse("setex k 5 v"),
            Some(Ok(Command::Set {
                key: "k".into(),
                value: "v".into(),
                ttl: Some(Expiry::In(Duration::from_secs(5))),
                when: SetWhen::Always,
            }))
        );
        assert_eq!(parse("get||k"), Some(Ok(Command::Get { key: "k".into() })));
        assert_eq!(parse("get"), Some(Err(())));
        assert_eq!(parse("frobnicate"), Some(Err(())));
    }
}
