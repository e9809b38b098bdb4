//! The key-value section: the `kv-guest` example app, whose `GET /` makes
//! one `increment` and one `get`, on the embedded store and on a real
//! `redis-server`, against the hello app in the same run (a fresh instance
//! per request for both); and `redis-benchmark -t incr` against that Redis
//! at the same concurrency, the ceiling the Redis-backed app is measured
//! against.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ::tests::RedisServer;
use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::config::KV_CONCURRENCY;
use crate::servers::Running;
use crate::wrk::{self, Measured};
use crate::{Bench, log};

/// The servers of the section, in the report's order.
pub const SERVERS: [&str; 3] = ["hello", "kv-embedded", "kv-redis"];

/// Medians per (server, concurrency), and redis-benchmark's INCR per
/// concurrency.
pub struct Kv {
    pub table: HashMap<(&'static str, u32), Measured>,
    pub incr: HashMap<u32, Measured>,
}

/// Start the three servers, measure them interleaved with redis-benchmark
/// for the configured rounds, stop them.
pub fn kv(b: &Bench, state: &Path) -> Result<Kv> {
    let bins = &b.bins;
    let redis = RedisServer::start();
    let guest = bins.guest.to_str().context("utf-8 path")?;
    let kv_wasm = std::fs::read(&bins.kv_guest)
        .with_context(|| format!("read {} (`make build-guests`)", bins.kv_guest.display()))?;
    let url = redis.url();
    let mut servers: Vec<(&'static str, Running)> = vec![(
        "hello",
        Running::host(&bins.host, &state.join("hello"), &[guest])?,
    )];
    for (name, args) in [
        ("kv-embedded", vec!["--no-default-app"]),
        ("kv-redis", vec!["--no-default-app", "--kv-url", &url]),
    ] {
        let server = Running::host(&bins.host, &state.join(name), &args)?;
        let host = server.as_host().context("a host")?;
        b.http.deploy(
            host,
            "kv",
            kv_wasm.clone(),
            json!({"route": "/", "key_value": ["default"]}),
        )?;
        servers.push((name, server));
    }
    for (_, server) in &servers {
        let url = format!("http://{}/", server.addr);
        b.http.wait_200(&url, None, Duration::from_secs(60))?;
    }
    let mut runs: HashMap<(&'static str, u32), Vec<Measured>> = HashMap::new();
    let mut incr: HashMap<u32, Vec<Measured>> = HashMap::new();
    for round in 1..=b.cfg.rounds {
        for c in KV_CONCURRENCY {
            for (name, server) in &servers {
                let m = wrk::run(server.addr, c, b.cfg.duration, server.process())?;
                log(&format!("kv round {round} c={c} {name}: {}", m.summary()));
                runs.entry((name, c)).or_default().push(m);
            }
            let m = redis_benchmark(redis.port, c, b.cfg.duration)?;
            log(&format!(
                "kv round {round} c={c} redis-benchmark INCR: {}",
                m.summary()
            ));
            incr.entry(c).or_default().push(m);
        }
    }
    for (_, server) in &mut servers {
        server.stop();
    }
    Ok(Kv {
        table: runs.iter().map(|(k, v)| (*k, wrk::median(v))).collect(),
        incr: incr.iter().map(|(k, v)| (*k, wrk::median(v))).collect(),
    })
}

/// `redis-benchmark -t incr` at `conns` clients for about `seconds` (it
/// runs a request count: a first short run sizes it).
fn redis_benchmark(port: u16, conns: u32, seconds: u64) -> Result<Measured> {
    let probe = incr(port, conns, 20_000)?;
    let requests = ((probe.rps * seconds as f64) as u64).max(20_000);
    incr(port, conns, requests)
}

fn incr(port: u16, conns: u32, requests: u64) -> Result<Measured> {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &conns.to_string(), "-n", &requests.to_string()])
        .args(["-t", "incr", "--csv"])
        .output()
        .context("failed to run redis-benchmark (`make tools` installs it with redis-server)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_csv(&String::from_utf8_lossy(&output.stdout))
}

/// redis-benchmark's `--csv` line for INCR: `"INCR","rps","avg","min",
/// "p50","p95","p99","max"` (latencies in ms).
pub fn parse_csv(out: &str) -> Result<Measured> {
    let line = out
        .lines()
        .find(|l| l.starts_with("\"INCR\""))
        .with_context(|| format!("redis-benchmark printed no INCR line:\n{out}"))?;
    let fields: Vec<f64> = line
        .split(',')
        .skip(1)
        .map(|f| f.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("redis-benchmark's line is not numbers: {line}"))?;
    if fields.len() < 7 {
        bail!("redis-benchmark's line has too few fields: {line}");
    }
    Ok(Measured {
        rps: fields[0],
        p50: fields[3],
        p99: fields[5],
        errors: 0,
        cpu_us: 0.0,
    })
}

/// The section's Markdown: each server's row with its ratio to what it is
/// held to (the hello app; redis-benchmark's INCR), and the targets.
pub fn report(w: &mut Vec<String>, b: &Bench, k: &Kv) {
    w.push("## Key-value state\n".into());
    w.push(format!(
        "`kv-guest` at `/`: each `GET /` opens the store, makes one `increment` and one `get` and \
         answers the count, in a fresh instance per request (`kv-embedded`: the embedded redb store in \
         the state directory, every write committed durably; `kv-redis`: `--kv-url` to a local \
         redis-server, no persistence). `hello` is the hello app on the same host binary. \
         `redis-benchmark -t incr` runs against the same redis-server with as many clients as wrk has \
         connections. wrk -t1, {} s per run, servers interleaved, median of {} rounds.\n",
        b.cfg.duration, b.cfg.rounds
    ));
    w.push("| concurrency | server | req/s | p50 ms | p99 ms | non-2xx | CPU µs/req | ratio | target |".into());
    w.push("|---|---|---|---|---|---|---|---|---|".into());
    for c in KV_CONCURRENCY {
        let hello = &k.table[&("hello", c)];
        let incr = &k.incr[&c];
        for name in SERVERS {
            let m = &k.table[&(name, c)];
            let (ratio, target) = match name {
                "kv-embedded" => (
                    format!("{:.0}% of hello", m.rps / hello.rps * 100.0),
                    verdict(m.rps / hello.rps),
                ),
                "kv-redis" => (
                    format!("{:.0}% of INCR", m.rps / incr.rps * 100.0),
                    verdict(m.rps / incr.rps),
                ),
                _ => (String::new(), String::new()),
            };
            w.push(format!(
                "| {c} | {name} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {ratio} | {target} |",
                m.rps, m.p50, m.p99, m.errors, m.cpu_us
            ));
        }
        w.push(format!(
            "| {c} | redis-benchmark INCR | {:.0} | {:.3} | {:.3} | | | | |",
            incr.rps, incr.p50, incr.p99
        ));
    }
    w.push(String::new());
}

/// Against the 50% target.
fn verdict(ratio: f64) -> String {
    if ratio >= 0.5 {
        "≥ 50%: met".into()
    } else {
        "≥ 50%: missed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"INCR\",\"97087.38\",\"0.351\",\"0.088\",\"0.335\",\"0.511\",\"0.727\",\"2.103\"\n";
        let m = parse_csv(out).unwrap();
        assert_eq!((m.rps, m.p50, m.p99), (97087.38, 0.335, 0.727));
        assert!(parse_csv("\"test\",\"rps\"\n").is_err());
    }
}
