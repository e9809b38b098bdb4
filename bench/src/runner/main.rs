//! `make bench`: measure our host against its baselines in one run.
//!
//! Servers, all on loopback, all serving the same 14-byte hello:
//! - `native`: a plain hyper 1 server (`native-hello`, this crate)
//! - `host`: our host with the default guest (fresh instance per request)
//! - `host-reuse`: the same with `--instance-reuse 128`
//! - `wasmtime`: `wasmtime serve -Scli` 48.0.8 on the same .wasm
//! - `wasmtime-reuse`: the same with `--max-instance-reuse-count 128`
//!
//! Each is driven by wrk at concurrency 1, 64 and 256, interleaved, for
//! ROUNDS rounds; the median of the rounds is reported with ratios to native
//! and to wasmtime serve in the same mode, and the server's CPU time per
//! request (from /proc, less sensitive to a noisy machine than req/s). Also:
//! the in-process criterion microbench (instantiate + handle), cold start
//! (deploy -> first 200 for the hello and a several-MB guest, restart with 100
//! deployed apps -> all ready), idle RSS and RSS with many deployed apps, and
//! a 64 MiB streamed echo against native. The results replace the measured
//! part of BENCHMARKS.md (between its `bench:begin` / `bench:end` markers); the
//! written analysis after it stays.
//!
//! Every server runs without RUST_BACKTRACE: with it set, wasmtime captures a
//! backtrace for an error it builds and drops on every instance teardown,
//! which costs the fresh-instance servers a third of their throughput.
//!
//! Components from other toolchains (built by `make build-guests`; a missing
//! one is skipped with a note): Python (componentize-py), JavaScript
//! (componentize-js) and Rust on WASI 0.3, each on our host and on `wasmtime
//! serve` in the same run: a fresh instance per request at c=16 (and, for the
//! WASI 0.3 one, at c=64 fresh and with instance reuse against wasmtime
//! serve's default reuse), deploy -> first 200 and restart -> first 200 on our
//! host, and RSS with FOREIGN_APPS deployed Python apps.
//!
//! Key-value state: the `kv-guest` app (`GET /` = one increment and one
//! get) on the embedded store and on a real redis-server, against the
//! hello app at c=16 and 64 in the same run, and `redis-benchmark -t incr`
//! on that Redis at the same concurrency.
//!
//! Cluster mode: three replicas on one redis-server, convergence time of
//! 20 deploys of the hello guest (p50/p99) and the throughput of one
//! replica against a standalone host, and of three replicas at once.
//!
//! The avatar example: per image (≤ 1, 3 and 12 MP real photos) through
//! the host against the same pipeline natively, throughput at c=2, peak
//! RSS.
//!
//! The servers are started, watched and stopped with the e2e suite's process
//! helpers (the `tests` library). Everything it starts is stopped before it
//! exits, on an error or a panic too (they are killed when dropped; an
//! interrupt reaches them as it reaches this process, in its process group);
//! it only talks to 127.0.0.1. It builds nothing but the microbench: `make
//! bench` builds the release host, this runner and the guests first, and
//! installs wrk and redis-server (Debian) and wasmtime-cli 48.0.8 (crates.io, into
//! target/bench-tools) when missing. Environment: ROUNDS (3), DURATION
//! seconds per run (5), APPS (1000) for the many-apps RSS measurement,
//! FOREIGN_APPS (50) for the many-Python-apps one. BENCH_ONLY=foreign,cold,...
//! runs only those sections (throughput, micro, cold, memory, echo, foreign, kv,
//! cluster, avatar)
//! and prints the report instead of writing BENCHMARKS.md; NO_BUILD=1 (read
//! by the Makefile) runs the binaries already in target/ without building.

mod avatar;
mod cluster;
mod config;
mod foreign;
mod kv;
mod micro;
mod report;
mod sections;
mod servers;
mod tools;
mod wrk;

use ::tests::{TempDir, workspace_root};
use anyhow::Result;

use crate::config::{Bins, Config};
use crate::report::Results;
use crate::servers::Http;

/// What every section works with.
pub struct Bench {
    pub cfg: Config,
    pub bins: Bins,
    pub http: Http,
}

/// Progress, on stderr (the report goes to stdout).
pub fn log(msg: &str) {
    eprintln!("{msg}");
}

fn main() {
    // Every server is stopped by now (dropped with what started it).
    if let Err(err) = run() {
        eprintln!("make bench: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cfg = Config::from_env()?;
    let bins = Bins::find();
    tools::ensure(&bins)?;
    bins.note_missing();
    let b = Bench {
        cfg,
        bins,
        http: Http::new()?,
    };
    let mut results = Results::default();
    if b.cfg.selected("micro") {
        results.micro = Some(micro::run_bench()?);
    }
    let tmp = TempDir::with_prefix("host-bench", "run");
    if b.cfg.selected("throughput") {
        results.throughput = Some(sections::throughput(&b, &tmp.0.join("tp"))?);
    }
    if b.cfg.selected("cold") {
        results.cold = Some(sections::cold_start(&b, &tmp.0.join("cold"))?);
    }
    if b.cfg.selected("memory") {
        results.memory = Some(sections::memory(&b, &tmp.0.join("mem"))?);
    }
    if b.cfg.selected("echo") {
        results.echo = Some(sections::echo(&b, &tmp.0)?);
    }
    if b.cfg.selected("foreign") {
        results.foreign = Some(foreign::foreign(&b, &tmp.0.join("foreign"))?);
    }
    if b.cfg.selected("kv") {
        results.kv = Some(kv::kv(&b, &tmp.0.join("kv"))?);
    }
    if b.cfg.selected("cluster") {
        results.cluster = Some(cluster::cluster(&b, &tmp.0.join("cluster"))?);
    }
    if b.cfg.selected("avatar") {
        results.avatar = Some(avatar::avatar(&b, &tmp.0.join("avatar"))?);
    }
    drop(tmp);

    let text = report::render(&b, &results);
    println!("{text}");
    if b.cfg.only.is_empty() {
        report::write(&workspace_root().join("BENCHMARKS.md"), &text)?;
    } else {
        log(&format!(
            "BENCH_ONLY={}: a partial run, so BENCHMARKS.md is left as it is (the report is above)",
            b.cfg.only.join(",")
        ));
    }
    Ok(())
}
