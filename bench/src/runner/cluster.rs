//! The cluster section: three host replicas in cluster mode on one real
//! `redis-server`, and a standalone host, all serving the hello guest at
//! `/` (a fresh instance per request).
//!
//! - Convergence: CLUSTER_DEPLOYS deploys of the hello guest (each a new
//!   version: another digest, so every replica fetches and compiles it),
//!   made in turn on each replica; for each, the time from sending the
//!   upload, and from its 201, until the last of the three replicas
//!   answers `GET /` with the new version (`x-app-version`, polled on each).
//! - Throughput: wrk at c=64 on one replica alone against the standalone
//!   host alone (the cost of cluster mode on the request path: none is
//!   expected, the routing table is the same), interleaved for the
//!   configured rounds; and the three replicas driven at once (one wrk
//!   each) against one, on the same machine.

use std::path::Path;
use std::time::{Duration, Instant};

use ::tests::{RedisServer, variant};
use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::servers::Running;
use crate::wrk::{self, Measured};
use crate::{Bench, log};

/// Deploys measured for convergence.
pub const CLUSTER_DEPLOYS: usize = 20;

/// Connections per wrk in the throughput runs.
const CONNS: u32 = 64;

/// Longest one deploy may take to reach every replica before the run
/// fails.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Cluster {
    /// Per deploy: (from the upload, from the 201), in ms.
    pub convergence: Vec<(f64, f64)>,
    pub standalone: Measured,
    pub replica: Measured,
    /// The three replicas at once: each one's median, and their sum.
    pub aggregate: Vec<Measured>,
}

pub fn cluster(b: &Bench, state: &Path) -> Result<Cluster> {
    let bins = &b.bins;
    let redis = RedisServer::start();
    let url = redis.url();
    let hello = std::fs::read(&bins.guest)
        .with_context(|| format!("read {} (`make build-guest`)", bins.guest.display()))?;
    let mut replicas = Vec::new();
    for i in 0..3 {
        let id = format!("bench-{i}");
        let args = [
            "--no-default-app",
            "--version-headers",
            "true",
            "--cluster-url",
            &url,
            "--replica-id",
            &id,
        ];
        replicas.push(Running::host(
            &bins.host,
            &state.join(format!("replica-{i}")),
            &args,
        )?);
    }
    let guest = bins.guest.to_str().context("utf-8 path")?;
    let mut standalone = Running::host(&bins.host, &state.join("standalone"), &[guest])?;

    let settings = json!({"route": "/"});
    let first = replicas[0].as_host().context("a host")?;
    b.http
        .deploy(first, "hello", hello.clone(), settings.clone())?;
    for server in replicas.iter().chain([&standalone]) {
        b.http
            .wait_200(&format!("http://{}/", server.addr), None, CONVERGE_TIMEOUT)?;
    }

    let mut convergence = Vec::new();
    for i in 0..CLUSTER_DEPLOYS {
        let on = replicas[i % 3].as_host().context("a host")?;
        let wasm = variant(&hello, 10_000 + i);
        let sent = Instant::now();
        let body = b.http.deploy(on, "hello", wasm, json!({}))?;
        let created = Instant::now();
        let version = body["current_version"]
            .as_str()
            .context("the deploy's answer names its version")?
            .to_string();
        let mut pending: Vec<String> = replicas
            .iter()
            .map(|r| format!("http://{}/", r.addr))
            .collect();
        while !pending.is_empty() {
            if created.elapsed() > CONVERGE_TIMEOUT {
                bail!(
                    "deploy {i}: {pending:?} did not serve {version} within {CONVERGE_TIMEOUT:?}"
                );
            }
            let mut still = Vec::new();
            for url in pending {
                match b.http.version(&url) {
                    Ok((200, served)) if served == version => {}
                    _ => still.push(url),
                }
            }
            pending = still;
        }
        let ms = |since: Instant| since.elapsed().as_secs_f64() * 1000.0;
        let (all, after) = (ms(sent), ms(created));
        log(&format!(
            "cluster deploy {i}: every replica serves it {all:.0} ms after the upload began, {after:.0} ms after the 201"
        ));
        convergence.push((all, after));
    }

    let mut alone: Vec<Measured> = Vec::new();
    let mut one: Vec<Measured> = Vec::new();
    let mut together: Vec<Vec<Measured>> = vec![Vec::new(); 3];
    for round in 1..=b.cfg.rounds {
        let m = wrk::run(standalone.addr, CONNS, b.cfg.duration, standalone.process())?;
        log(&format!(
            "cluster round {round} standalone: {}",
            m.summary()
        ));
        alone.push(m);
        let m = wrk::run(
            replicas[0].addr,
            CONNS,
            b.cfg.duration,
            replicas[0].process(),
        )?;
        log(&format!(
            "cluster round {round} one replica: {}",
            m.summary()
        ));
        one.push(m);
        let measured: Vec<Result<Measured>> = std::thread::scope(|s| {
            let runs: Vec<_> = replicas
                .iter()
                .map(|r| s.spawn(|| wrk::run(r.addr, CONNS, b.cfg.duration, r.process())))
                .collect();
            runs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a wrk thread panicked")))
                .collect()
        });
        for (i, m) in measured.into_iter().enumerate() {
            let m = m?;
            log(&format!(
                "cluster round {round} replica {i} of 3 at once: {}",
                m.summary()
            ));
            together[i].push(m);
        }
    }
    for server in replicas.iter_mut().chain([&mut standalone]) {
        server.stop();
    }
    Ok(Cluster {
        convergence,
        standalone: wrk::median(&alone),
        replica: wrk::median(&one),
        aggregate: together.iter().map(|runs| wrk::median(runs)).collect(),
    })
}

/// The `q` quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn report(w: &mut Vec<String>, b: &Bench, c: &Cluster) {
    w.push("## Cluster mode\n".into());
    w.push(format!(
        "Three replicas (`--cluster-url` to one local redis-server, no persistence) and a standalone \
         host, all serving the hello guest at `/`, a fresh instance per request. Convergence: {} deploys \
         of the hello guest, each a new version (another digest: every replica fetches the component \
         from Redis and compiles it itself), made in turn on each replica; the time until the last of \
         the three answers `GET /` with the new version, from when the upload began (compile on the \
         deploying replica included) and from its 201.\n",
        c.convergence.len()
    ));
    let all: Vec<f64> = c.convergence.iter().map(|c| c.0).collect();
    let after: Vec<f64> = c.convergence.iter().map(|c| c.1).collect();
    let p99 = quantile(&all, 0.99);
    w.push("| convergence to 3 replicas | p50 ms | p99 ms | max ms | target |".into());
    w.push("|---|---|---|---|---|".into());
    w.push(format!(
        "| from the upload | {:.0} | {:.0} | {:.0} | p99 ≤ 1000 ms: {} |",
        quantile(&all, 0.5),
        p99,
        quantile(&all, 1.0),
        if p99 <= 1000.0 { "met" } else { "missed" }
    ));
    w.push(format!(
        "| from the 201 | {:.0} | {:.0} | {:.0} | |",
        quantile(&after, 0.5),
        quantile(&after, 0.99),
        quantile(&after, 1.0)
    ));
    w.push(String::new());
    w.push(format!(
        "Throughput: wrk -t1 -c{CONNS}, {} s per run, median of {} rounds: the standalone host alone, \
         one replica alone, then the three replicas at once (three wrk, one each; all on the same 2 \
         cores).\n",
        b.cfg.duration, b.cfg.rounds
    ));
    w.push("| server | req/s | p50 ms | p99 ms | non-2xx | CPU µs/req | ratio |".into());
    w.push("|---|---|---|---|---|---|---|".into());
    let row = |w: &mut Vec<String>, name: &str, m: &Measured, ratio: String| {
        w.push(format!(
            "| {name} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {ratio} |",
            m.rps, m.p50, m.p99, m.errors, m.cpu_us
        ));
    };
    row(w, "standalone", &c.standalone, String::new());
    row(
        w,
        "one replica (cluster mode)",
        &c.replica,
        format!("{:.2}× standalone", c.replica.rps / c.standalone.rps),
    );
    let total: f64 = c.aggregate.iter().map(|m| m.rps).sum();
    for (i, m) in c.aggregate.iter().enumerate() {
        row(w, &format!("replica {i} of 3 at once"), m, String::new());
    }
    w.push(format!(
        "| 3 replicas at once, total | {total:.0} | | | {} | | {:.2}× one replica |",
        c.aggregate.iter().map(|m| m.errors).sum::<u64>(),
        total / c.replica.rps
    ));
    w.push(String::new());
}

#[cfg(test)]
mod tests {
    use super::quantile;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 10.0);
        assert_eq!(quantile(&v, 0.99), 20.0);
        assert_eq!(quantile(&v, 1.0), 20.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
