//! The hello guest's sections: throughput and latency against native hyper
//! and `wasmtime serve`, cold start, memory with many apps, and the 64 MiB
//! streamed echo. Each starts its servers and stops them before it returns.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ::tests::Host;
use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::config::{CONCURRENCY, RESTART_APPS};
use crate::servers::{Running, cli_deploy, host};
use crate::tools::file_size;
use crate::wrk::{self, Measured};
use crate::{Bench, log};
use tests::variant;

/// Medians per (server, concurrency), servers in the order started.
pub struct Throughput {
    pub servers: Vec<&'static str>,
    pub table: HashMap<(&'static str, u32), Measured>,
}

/// native, host, host-reuse (and wasmtime, wasmtime-reuse when installed)
/// at each concurrency, interleaved, for the configured rounds.
pub fn throughput(b: &Bench, state: &Path) -> Result<Throughput> {
    let bins = &b.bins;
    let mut servers: Vec<(&'static str, Running)> =
        vec![("native", Running::native(&bins.native)?)];
    let guest = bins.guest.to_str().context("utf-8 path")?;
    for (name, extra) in [
        ("host", &[][..]),
        ("host-reuse", &["--instance-reuse", "128"][..]),
    ] {
        let args = [&[guest][..], extra].concat();
        servers.push((name, Running::host(&bins.host, &state.join(name), &args)?));
    }
    if bins.has_wasmtime() {
        // `wasmtime` = fresh instance per request (what our host does);
        // `wasmtime-reuse` = up to 128 requests per instance (the baseline
        // for opt-in instance reuse).
        for (name, extra) in [
            ("wasmtime", &[][..]),
            ("wasmtime-reuse", &["--max-instance-reuse-count", "128"][..]),
        ] {
            servers.push((name, Running::wasmtime(&bins.wasmtime, &bins.guest, extra)?));
        }
    }
    for (_, server) in &servers {
        let url = format!("http://{}/", server.addr);
        b.http.wait_200(&url, None, Duration::from_secs(60))?;
    }
    let mut runs: HashMap<(&'static str, u32), Vec<Measured>> = HashMap::new();
    for round in 1..=b.cfg.rounds {
        for c in CONCURRENCY {
            for (name, server) in &servers {
                let m = wrk::run(server.addr, c, b.cfg.duration, server.process())?;
                log(&format!("round {round} c={c} {name}: {}", m.summary()));
                runs.entry((name, c)).or_default().push(m);
            }
        }
    }
    for (_, server) in &mut servers {
        server.stop();
    }
    Ok(Throughput {
        servers: servers.iter().map(|(name, _)| *name).collect(),
        table: runs.iter().map(|(k, v)| (*k, wrk::median(v))).collect(),
    })
}

/// Cold-start times in ms, component sizes in bytes.
pub struct Cold {
    pub hello: (f64, u64),
    pub large: (f64, u64),
    /// Seconds to deploy the other apps.
    pub deploy_many: f64,
    pub ready: f64,
    pub all: f64,
}

/// Deploy -> first 200 for the hello guest and the large (several-MB,
/// release) guest; restart with RESTART_APPS distinct deployed apps ->
/// ready and every app answering, from the precompiled cache.
pub fn cold_start(b: &Bench, state: &Path) -> Result<Cold> {
    let bins = &b.bins;
    let serve = ["--no-default-app"];
    let mut server = host(&bins.host, state, &serve)?;
    let first_200 = |name: &str, wasm: &Path| -> Result<(f64, u64)> {
        let t0 = Instant::now();
        cli_deploy(&server, wasm, name)?;
        let vhost = format!("{name}.bench");
        b.http
            .wait_200(&server.url("/"), Some(&vhost), Duration::from_secs(60))?;
        Ok((ms(t0), file_size(wasm)))
    };
    let hello = first_200("hello", &bins.guest)?;
    let large = first_200("large", &bins.big_guest)?;
    let wasm = std::fs::read(&bins.guest).context("read the hello guest")?;
    let t0 = Instant::now();
    let others: Vec<String> = (0..RESTART_APPS - 2).map(|i| format!("app{i}")).collect();
    for (i, name) in others.iter().enumerate() {
        b.http
            .deploy(&server, name, variant(&wasm, i), app_settings(name))?;
    }
    let deploy_many = t0.elapsed().as_secs_f64();
    server.stop();
    drop(server);

    let hosts = ["hello", "large"]
        .into_iter()
        .chain(others.iter().map(String::as_str))
        .map(|name| format!("{name}.bench"));
    let t0 = Instant::now();
    let mut server = host(&bins.host, state, &serve)?;
    b.http
        .wait_200(&server.admin_url("/readyz"), None, Duration::from_secs(60))?;
    let ready = ms(t0);
    for vhost in hosts {
        b.http
            .wait_200(&server.url("/"), Some(&vhost), Duration::from_secs(60))?;
    }
    let all = ms(t0);
    server.stop();
    Ok(Cold {
        hello,
        large,
        deploy_many,
        ready,
        all,
    })
}

/// RSS in KiB of the host with the default guest, idle and with many apps.
pub struct Memory {
    pub idle: u64,
    pub many: u64,
    pub answered: usize,
    pub deploy_s: f64,
}

/// Idle RSS with the default guest, then RSS with APPS deployed hello apps
/// (one digest), each asked once.
pub fn memory(b: &Bench, state: &Path) -> Result<Memory> {
    let bins = &b.bins;
    let guest = bins.guest.to_str().context("utf-8 path")?;
    let mut server = host(&bins.host, state, &[guest])?;
    b.http
        .wait_200(&server.url("/"), None, Duration::from_secs(60))?;
    let idle = server.proc_kib("VmRSS");
    let wasm = std::fs::read(&bins.guest).context("read the hello guest")?;
    let deploy_s = deploy_copies(b, &server, &wasm, "app", 0..b.cfg.apps)?;
    let answered = answered(b, &server.url("/"), "app", b.cfg.apps);
    let many = server.proc_kib("VmRSS");
    server.stop();
    Ok(Memory {
        idle,
        many,
        answered,
        deploy_s,
    })
}

/// An app's settings: routed at `/` on host `NAME.bench` (apps see the
/// full path, so the guest sees `/`).
pub fn app_settings(name: &str) -> serde_json::Value {
    json!({"route": "/", "host": format!("{name}.bench")})
}

/// Deploy `wasm` as the apps `PREFIXi` for each i in `range`, through the
/// admin API; the seconds it took.
pub fn deploy_copies(
    b: &Bench,
    server: &Host,
    wasm: &[u8],
    prefix: &str,
    range: Range<usize>,
) -> Result<f64> {
    let t0 = Instant::now();
    for i in range {
        let name = format!("{prefix}{i}");
        b.http
            .deploy(server, &name, wasm.to_vec(), app_settings(&name))?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// How many of the apps `PREFIX0.bench` … answer `url` with 200, each
/// asked once.
pub fn answered(b: &Bench, url: &str, prefix: &str, apps: usize) -> usize {
    (0..apps)
        .filter(|i| {
            let vhost = format!("{prefix}{i}.bench");
            let status = b.http.status(url, Some(&vhost), Duration::from_secs(60));
            matches!(status, Ok(200))
        })
        .count()
}

/// MiB/s streaming 64 MiB through `/echo`, native and host.
pub struct Echo {
    pub native: f64,
    pub host: f64,
}

/// The median of three 64 MiB uploads to `/echo` (chunked, streamed back)
/// with curl, native hyper against the host.
pub fn echo(b: &Bench, dir: &Path) -> Result<Echo> {
    const MIB: u64 = 64;
    let payload = dir.join("payload.bin");
    let mut random = std::fs::File::open("/dev/urandom")?.take(MIB << 20);
    std::io::copy(&mut random, &mut std::fs::File::create(&payload)?)?;
    let bins = &b.bins;
    let guest = bins.guest.to_str().context("utf-8 path")?;
    let rate = |mut server: Running| -> Result<f64> {
        let mut times = Vec::new();
        for _ in 0..3 {
            let mut curl = Command::new("curl");
            curl.args(["-s", "-o", "/dev/null", "-H", "Expect:"])
                .args(["-H", "Transfer-Encoding: chunked", "--data-binary"])
                .arg(format!("@{}", payload.display()))
                .arg(format!("http://{}/echo", server.addr));
            let t0 = Instant::now();
            let status = curl.status().context("failed to run curl")?;
            times.push(t0.elapsed().as_secs_f64());
            ensure!(status.success(), "curl failed: {status}");
        }
        server.stop();
        Ok(MIB as f64 / wrk::middle(times))
    };
    let native = rate(Running::native(&bins.native)?)?;
    let host = rate(Running::host(&bins.host, &dir.join("echo"), &[guest])?)?;
    Ok(Echo { native, host })
}

/// Milliseconds since `t0`.
pub fn ms(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}
