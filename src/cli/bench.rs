//! `rcache bench`: a load generator for rcache (or anything speaking the
//! text protocol or RESP).
//!
//! `--connections` tasks each keep `--pipeline` requests in flight: they
//! write a batch, read its replies, and record every request's latency
//! (from the batch's write to its reply) in an HDR histogram. Keys are
//! `key:%012d` (16 bytes, as redis-benchmark names them) drawn uniformly
//! or by a Zipf law from `--keys`; `--ratio G:S` mixes gets and sets
//! (`--load incr`: gets and INCRs of counters; `--load hash`: HGETs and
//! HSETs of fields, [`HASH_FIELDS`] to a hash). On a
//! terminal the rate is shown every second; the summary gives requests/s
//! and p50/p99/p99.9/max, and `--csv FILE` appends it as one row.

use super::Cli;
use crate::client::connect_stream;
use crate::net::{Conn, Stream};
use crate::protocol::resp::{decode_value, encode_request, Value};
use crate::zipf::{Rng, Zipf};
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Text,
    Resp,
}

/// What the writes (and reads) of a run are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Load {
    /// `GET key` and `SET key value`.
    Kv,
    /// `GET key` and `INCR key` (RESP only): counters, each write decided
    /// by one worker of the pair and replicated as its result.
    Incr,
    /// `HGET` and `HSET` of one field (RESP only): the `--keys` are fields,
    /// [`HASH_FIELDS`] to a hash (`key:N/8`, field `fN%8`), each write
    /// merged into the hash on both workers.
    Hash,
}

/// Fields of one hash under `--load hash`.
pub const HASH_FIELDS: u64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "resp")]
    pub protocol: Protocol,
    /// Connections, each its own task.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Requests in flight per connection.
    #[arg(long, short = 'P', default_value_t = 1)]
    pub pipeline: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Gets to sets, e.g. 1:1, 9:1, 0:1 (sets only).
    #[arg(long, default_value = "1:1", value_parser = parse_ratio)]
    pub ratio: (u32, u32),
    /// What the writes are: `kv` sets values, `incr` increments counters
    /// (the --ratio's sets are INCRs, its gets read the counters), `hash`
    /// sets fields of hashes (HSET; the gets are HGETs).
    #[arg(long, value_enum, default_value = "kv")]
    pub load: Load,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    /// Skew of --distribution zipf.
    #[arg(long, default_value_t = 0.99)]
    pub zipf_alpha: f64,
    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Set every key once before measuring.
    #[arg(long)]
    pub prefill: bool,
    /// Append the summary as a CSV row to this file (a header when new).
    #[arg(long)]
    pub csv: Option<std::path::PathBuf>,
    /// Seed of the key and operation choices (printed; random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
}

fn parse_ratio(s: &str) -> Result<(u32, u32), String> {
    let (g, set) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: use GETS:SETS, e.g. 1:1"))?;
    let g: u32 = g.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    let set: u32 = set.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if g == 0 && set == 0 {
        return Err("a ratio of 0:0 sends nothing".into());
    }
    Ok((g, set))
}

/// What one connection measured.
struct Tally {
    latency: Histogram<u64>,
    gets: u64,
    sets: u64,
    misses: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    #[allow(clippy::expect_used)]
    fn new() -> Tally {
        Tally {
            // Nanoseconds from 1 ns to 60 s, 3 significant digits: valid
            // bounds, so creation cannot fail.
            latency: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            gets: 0,
            sets: 0,
            misses: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what);
        }
    }
}

struct Plan {
    args: BenchArgs,
    /// Longest wait for a reply (`--timeout`).
    timeout: Duration,
    token: Option<String>,
    zipf: Option<Zipf>,
    value: Vec<u8>,
}

pub async fn run(cli: &Cli, args: BenchArgs) -> i32 {
    if args.connections == 0 || args.pipeline == 0 || args.keys == 0 {
        eprintln!("rcache bench: --connections, --pipeline and --keys must be at least 1");
        return 2;
    }
    if args.load != Load::Kv && args.protocol == Protocol::Text {
        eprintln!(
            "rcache bench: --load incr and --load hash need --protocol resp (the text protocol has neither INCR nor HSET)"
        );
        return 2;
    }
    let addr = cli
        .addr
        .split(',')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let tls = match super::tls_config(cli) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("rcache bench: {e}");
            return 2;
        }
    };
    let seed = args.seed.unwrap_or_else(crate::sys::random_u64);
    let zipf =
        (args.distribution == Distribution::Zipf).then(|| Zipf::new(args.keys, args.zipf_alpha));
    // Printable bytes, never a line break: the text protocol can carry them.
    let mut rng = Rng::new(seed ^ 0x5eed);
    let value = (0..args.value_size)
        .map(|_| b'a' + (rng.below(26) as u8))
        .collect();
    let plan = Arc::new(Plan {
        args: args.clone(),
        timeout: cli.timeout,
        token: cli.auth_token.clone(),
        zipf,
        value,
    });
    eprintln!(
        "rcache bench: {addr} {:?} {:?}, {} connections, pipeline {}, {} keys ({:?}), {} B values, \
         get:set {}:{}, {:?}, seed {seed}",
        args.protocol,
        args.load,
        args.connections,
        args.pipeline,
        args.keys,
        args.distribution,
        args.value_size,
        args.ratio.0,
        args.ratio.1,
        args.duration
    );
    if args.prefill {
        if let Err(e) = prefill(&addr, tls.as_ref(), &plan, cli.timeout).await {
            eprintln!("rcache bench: prefill: {e}");
            return 1;
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut tasks = Vec::new();
    for c in 0..args.connections {
        let stream = match connect_stream(&addr, tls.as_ref(), cli.timeout).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("rcache bench: connection {c}: {e}");
                return 1;
            }
        };
        let plan = plan.clone();
        let done = done.clone();
        let seed = seed
            .wrapping_add(c as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        tasks.push(tokio::spawn(drive(stream, plan, seed, deadline, done)));
    }
    let progress = std::io::stderr().is_terminal().then(|| {
        let done = done.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                eprint!(
                    "\r  {:>4.0}s  {:>12} requests/s  {:>12} requests ",
                    started.elapsed().as_secs_f64(),
                    thousands((now - last) as f64),
                    thousands(now as f64)
                );
                let _ = std::io::stderr().flush();
                last = now;
            }
        })
    });
    let mut total = Tally::new();
    for task in tasks {
        match task.await {
            Ok(tally) => {
                let _ = total.latency.add(&tally.latency);
                total.gets += tally.gets;
                total.sets += tally.sets;
                total.misses += tally.misses;
                total.errors += tally.errors;
                if total.first_error.is_none() {
                    total.first_error = tally.first_error;
                }
            }
            Err(e) => total.error(format!("a connection task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    report(&args, &addr, seed, elapsed, &total)
}

/// Sets every key once, over one pipelined connection.
async fn prefill(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    plan: &Plan,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect_stream(addr, tls, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Conn::new(stream);
    authenticate(&mut conn, plan).await?;
    let mut key = 0;
    while key < plan.args.keys {
        let batch = (plan.args.keys - key).min(1000);
        for k in key..key + batch {
            match plan.args.load {
                Load::Kv => encode(&mut conn.wbuf, plan, false, k),
                // Counters start at 0.
                Load::Incr => encode_request(&[b"SET", &key_name(k), b"0"], &mut conn.wbuf),
                Load::Hash => encode(&mut conn.wbuf, plan, false, k),
            }
        }
        conn.io
            .write_all(&conn.wbuf)
            .await
            .map_err(|e| e.to_string())?;
        conn.wbuf.clear();
        for _ in 0..batch {
            if let Reply::Error(e) = read_reply(&mut conn, plan).await? {
                return Err(e);
            }
        }
        key += batch;
    }
    eprintln!("prefilled {} keys", plan.args.keys);
    Ok(())
}

/// Sends the token first, when there is one.
async fn authenticate(conn: &mut Conn<Stream>, plan: &Plan) -> Result<(), String> {
    let Some(token) = &plan.token else {
        return Ok(());
    };
    match plan.args.protocol {
        Protocol::Text => {
            conn.wbuf.put_slice(b"auth||");
            conn.wbuf.put_slice(token.as_bytes());
            conn.wbuf.put_u8(b'\n');
        }
        Protocol::Resp => encode_request(&[b"AUTH", token.as_bytes()], &mut conn.wbuf),
    }
    conn.io
        .write_all(&conn.wbuf)
        .await
        .map_err(|e| e.to_string())?;
    conn.wbuf.clear();
    match read_reply(conn, plan).await? {
        Reply::Error(e) => Err(format!("auth refused: {e}")),
        _ => Ok(()),
    }
}

fn key_name(k: u64) -> [u8; 16] {
    let mut name = *b"key:000000000000";
    let mut n = k;
    for i in (4..16).rev() {
        name[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    name
}

/// The hash and field of key number `k` under `--load hash`.
pub fn hash_field(k: u64) -> ([u8; 16], [u8; 2]) {
    (
        key_name(k / HASH_FIELDS),
        [b'f', b'0' + (k % HASH_FIELDS) as u8],
    )
}

fn encode(out: &mut BytesMut, plan: &Plan, get: bool, k: u64) {
    let key = key_name(k);
    match (plan.args.protocol, get) {
        (Protocol::Text, true) => {
            out.put_slice(b"get||");
            out.put_slice(&key);
            out.put_u8(b'\n');
        }
        (Protocol::Text, false) => {
            out.put_slice(b"set||");
            out.put_slice(&key);
            out.put_slice(b"||");
            out.put_slice(&plan.value);
            out.put_u8(b'\n');
        }
        (Protocol::Resp, get) if plan.args.load == Load::Hash => {
            let (hash, field) = hash_field(k);
            if get {
                encode_request(&[b"HGET", &hash, &field], out)
            } else {
                encode_request(&[b"HSET", &hash, &field, &plan.value], out)
            }
        }
        (Protocol::Resp, true) => encode_request(&[b"GET", &key], out),
        (Protocol::Resp, false) => match plan.args.load {
            Load::Kv | Load::Hash => encode_request(&[b"SET", &key, &plan.value], out),
            Load::Incr => encode_request(&[b"INCR", &key], out),
        },
    }
}

enum Reply {
    Ok,
    Miss,
    Error(String),
}

async fn read_reply(conn: &mut Conn<Stream>, plan: &Plan) -> Result<Reply, String> {
    let protocol = plan.args.protocol;
    loop {
        match protocol {
            Protocol::Text => {
                if let Some(i) = conn.rbuf.iter().position(|&b| b == b'\n') {
                    let line = conn.rbuf.split_to(i + 1);
                    return Ok(if line.starts_with(b"0||") {
                        Reply::Ok
                    } else if line.starts_with(b"2||") {
                        Reply::Miss
                    } else {
                        Reply::Error(String::from_utf8_lossy(&line[..i]).into_owned())
                    });
                }
            }
            Protocol::Resp => match decode_value(&mut conn.rbuf, 1 << 30) {
                Ok(Some(Value::Error(e))) => {
                    return Ok(Reply::Error(String::from_utf8_lossy(&e).into_owned()))
                }
                Ok(Some(Value::Bulk(None))) => return Ok(Reply::Miss),
                Ok(Some(_)) => return Ok(Reply::Ok),
                Ok(None) => {}
                Err(e) => return Err(e),
            },
        }
        conn.rbuf.reserve(16 * 1024);
        match tokio::time::timeout(plan.timeout, conn.io.read_buf(&mut conn.rbuf)).await {
            Err(_) => return Err(format!("no reply within {:?}", plan.timeout)),
            Ok(Ok(0)) => return Err("the server closed the connection".into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// One connection's loop: a batch of `pipeline` requests, then their
/// replies, until the deadline.
async fn drive(
    stream: Stream,
    plan: Arc<Plan>,
    seed: u64,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> Tally {
    let mut tally = Tally::new();
    let mut conn = Conn::new(stream);
    if let Err(e) = authenticate(&mut conn, &plan).await {
        tally.error(e);
        return tally;
    }
    let mut rng = Rng::new(seed);
    let (gets, sets) = plan.args.ratio;
    let total = u64::from(gets) + u64::from(sets);
    let mut kinds = Vec::with_capacity(plan.args.pipeline);
    while Instant::now() < deadline {
        kinds.clear();
        for _ in 0..plan.args.pipeline {
            let k = match &plan.zipf {
                Some(z) => z.sample(&mut rng),
                None => rng.below(plan.args.keys),
            };
            let get = rng.below(total) < u64::from(gets);
            encode(&mut conn.wbuf, &plan, get, k);
            kinds.push(get);
        }
        let sent = std::time::Instant::now();
        if let Err(e) = conn.io.write_all(&conn.wbuf).await {
            tally.error(format!("write: {e}"));
            return tally;
        }
        let _ = conn.io.flush().await;
        conn.wbuf.clear();
        for &get in &kinds {
            match read_reply(&mut conn, &plan).await {
                Ok(reply) => {
                    let nanos = sent.elapsed().as_nanos().clamp(1, 60_000_000_000) as u64;
                    let _ = tally.latency.record(nanos);
                    if get {
                        tally.gets += 1;
                    } else {
                        tally.sets += 1;
                    }
                    match reply {
                        Reply::Ok => {}
                        Reply::Miss => tally.misses += 1,
                        Reply::Error(e) => tally.error(e),
                    }
                }
                Err(e) => {
                    tally.error(e);
                    return tally;
                }
            }
        }
        done.fetch_add(kinds.len() as u64, Ordering::Relaxed);
    }
    tally
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn report(args: &BenchArgs, addr: &str, seed: u64, elapsed: f64, t: &Tally) -> i32 {
    let requests = t.gets + t.sets;
    let rate = requests as f64 / elapsed.max(1e-9);
    let ms = |q: f64| t.latency.value_at_quantile(q) as f64 / 1e6;
    let max = t.latency.max() as f64 / 1e6;
    println!(
        "{} requests in {elapsed:.2}s: {} requests/s ({} gets, {} misses, {} sets, {} errors)",
        thousands(requests as f64),
        thousands(rate),
        thousands(t.gets as f64),
        thousands(t.misses as f64),
        thousands(t.sets as f64),
        t.errors
    );
    println!(
        "latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        max
    );
    if let Some(e) = &t.first_error {
        println!("first error: {e}");
    }
    if let Some(path) = &args.csv {
        let new = !path.exists();
        let row = format!(
            "{addr},{:?},{},{},{},{},{}:{},{:?},{},{seed},{elapsed:.3},{requests},{rate:.0},{},{},{},{:.3},{:.3},{:.3},{:.3},{:?}\n",
            args.protocol,
            args.connections,
            args.pipeline,
            args.keys,
            args.value_size,
            args.ratio.0,
            args.ratio.1,
            args.distribution,
            args.duration.as_secs_f64(),
            t.gets,
            t.sets,
            t.errors,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            max,
            args.load
        )
        .to_lowercase();
        let header = "addr,protocol,connections,pipeline,keys,value_size,ratio,distribution,duration_s,seed,elapsed_s,requests,requests_per_s,gets,sets,errors,p50_ms,p99_ms,p999_ms,max_ms,load\n";
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| {
                if new {
                    f.write_all(header.as_bytes())?;
                }
                f.write_all(row.as_bytes())
            });
        if let Err(e) = written {
            eprintln!("rcache bench: cannot write {}: {e}", path.display());
            return 1;
        }
    }
    if t.errors > 0 {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sixteen_bytes_like_redis_benchmark() {
        assert_eq!(&key_name(0), b"key:000000000000");
        assert_eq!(&key_name(123_456), b"key:000000123456");
    }

    #[test]
    fn ratios_parse() {
        assert_eq!(parse_ratio("9:1"), Ok((9, 1)));
        assert!(parse_ratio("0:0").is_err());
        assert!(parse_ratio("x").is_err());
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
