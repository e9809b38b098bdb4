//! What a run is asked for: the environment's settings (ROUNDS, DURATION,
//! APPS, FOREIGN_APPS, BENCH_ONLY) and where the binaries, guests and
//! tools it runs are.

use std::path::PathBuf;

use ::tests::{guest_path, release_bin, target_dir};
use anyhow::{Context, Result, bail};

/// Every section, in report order; BENCH_ONLY picks among them.
pub const SECTIONS: [&str; 9] = [
    "throughput",
    "micro",
    "cold",
    "memory",
    "echo",
    "foreign",
    "kv",
    "cluster",
    "avatar",
];

/// Concurrency of the hello throughput runs.
pub const CONCURRENCY: [u32; 3] = [1, 64, 256];

/// wrk and redis-benchmark connections in the key-value section.
pub const KV_CONCURRENCY: [u32; 2] = [16, 64];

/// How many apps are deployed (distinct code) before the restart of the
/// cold-start section.
pub const RESTART_APPS: usize = 100;

/// The settings of one run.
pub struct Config {
    /// Rounds of every wrk run (the median is reported).
    pub rounds: usize,
    /// Seconds per wrk run.
    pub duration: u64,
    /// Deployed hello apps for the many-apps RSS measurement.
    pub apps: usize,
    /// Deployed Python apps for the foreign RSS measurement.
    pub foreign_apps: usize,
    /// The sections BENCH_ONLY names (empty: all, and BENCHMARKS.md is
    /// written).
    pub only: Vec<String>,
    /// The command as the report names it (`make bench ROUNDS=…`).
    pub command: String,
}

impl Config {
    pub fn from_env() -> Result<Config> {
        let only: Vec<String> = std::env::var("BENCH_ONLY")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let unknown: Vec<&str> = only
            .iter()
            .map(String::as_str)
            .filter(|s| !SECTIONS.contains(s))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "BENCH_ONLY: unknown section(s) {}; choose from {}",
                unknown.join(", "),
                SECTIONS.join(", ")
            );
        }
        let mut command = "make bench".to_string();
        for key in ["ROUNDS", "DURATION", "APPS", "FOREIGN_APPS", "BENCH_ONLY"] {
            if let Ok(value) = std::env::var(key) {
                command.push_str(&format!(" {key}={value}"));
            }
        }
        Ok(Config {
            rounds: number("ROUNDS", 3)?,
            duration: number("DURATION", 5)? as u64,
            apps: number("APPS", 1000)?,
            foreign_apps: number("FOREIGN_APPS", 50)?,
            only,
            command,
        })
    }

    /// Does this run measure `section`?
    pub fn selected(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn number(key: &str, default: usize) -> Result<usize> {
    match std::env::var(key) {
        Ok(value) => value
            .trim()
            .parse()
            .with_context(|| format!("{key}={value} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// The release builds and tools a run uses; none is built here (`make
/// bench` builds them first).
pub struct Bins {
    pub host: PathBuf,
    pub native: PathBuf,
    pub guest: PathBuf,
    pub big_guest: PathBuf,
    /// The key-value example app.
    pub kv_guest: PathBuf,
    /// Where `wasmtime serve` is installed (it may not be).
    pub wasmtime: PathBuf,
    /// The install root of wasmtime-cli.
    pub tools: PathBuf,
}

impl Bins {
    pub fn find() -> Bins {
        let tools = target_dir().join("bench-tools");
        Bins {
            host: release_bin("host"),
            native: release_bin("native-hello"),
            guest: guest_path("guest"),
            big_guest: guest_path("big-guest"),
            kv_guest: guest_path("kv-guest"),
            wasmtime: tools.join("bin/wasmtime"),
            tools,
        }
    }

    /// Is the wasmtime baseline there?
    pub fn has_wasmtime(&self) -> bool {
        self.wasmtime.is_file()
    }

    /// Say which of the built files are missing: the sections that use one
    /// will fail.
    pub fn note_missing(&self) {
        for path in [
            &self.host,
            &self.native,
            &self.guest,
            &self.big_guest,
            &self.kv_guest,
        ] {
            if !path.exists() {
                crate::log(&format!(
                    "NOTE: {} is missing (`make bench` builds it): the sections that use it will fail",
                    path.display()
                ));
            }
        }
    }
}
