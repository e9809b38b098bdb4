//! The report: Markdown text of what a run measured, and its place in
//! BENCHMARKS.md, between the `bench:begin` and `bench:end` markers (the
//! written analysis around them stays).

use std::path::Path;

use anyhow::{Context, Result};

use crate::Bench;
use crate::avatar::{self, Avatar};
use crate::cluster::{self, Cluster};
use crate::config::{CONCURRENCY, RESTART_APPS};
use crate::foreign::{self, Foreign};
use crate::kv::{self, Kv};
use crate::micro::Estimate;
use crate::sections::{Cold, Echo, Memory, Throughput};

pub const BEGIN: &str = "<!-- bench:begin (written by make bench) -->";
pub const END: &str = "<!-- bench:end -->";

/// What the selected sections measured.
#[derive(Default)]
pub struct Results {
    pub throughput: Option<Throughput>,
    pub micro: Option<Vec<Estimate>>,
    pub cold: Option<Cold>,
    pub memory: Option<Memory>,
    pub echo: Option<Echo>,
    pub foreign: Option<Foreign>,
    pub kv: Option<Kv>,
    pub cluster: Option<Cluster>,
    pub avatar: Option<Avatar>,
}

/// The server each one is compared with: wasmtime serve in the same mode.
fn baseline(server: &str) -> &'static str {
    match server {
        "host-reuse" | "wasmtime-reuse" => "wasmtime-reuse",
        _ => "wasmtime",
    }
}

/// The report's Markdown.
pub fn render(b: &Bench, r: &Results) -> String {
    let (rounds, duration) = (b.cfg.rounds, b.cfg.duration);
    let mut lines: Vec<String> = Vec::new();
    let w = &mut lines;
    w.push("# Benchmarks\n".into());
    w.push(format!(
        "Produced by `{}` on {}; machine: {}.",
        b.cfg.command,
        today(),
        machine()
    ));
    let concurrency: Vec<String> = CONCURRENCY.iter().map(u32::to_string).collect();
    if r.throughput.is_some() {
        w.push(format!(
            "wrk -t1, {duration} s per run, concurrency {}, servers interleaved, median of {rounds} rounds. \
             Hello = `GET /` answering 14 bytes. Host runs with `RUST_LOG=warn` (no per-request access log); \
             `host` is a fresh instance per request, `host-reuse` runs with `--instance-reuse 128`. No server \
             has `RUST_BACKTRACE` set. CPU = the server process's user+system time per request (wrk runs on \
             the same 2 cores).\n",
            concurrency.join(", ")
        ));
    } else {
        w.push(
            "Host runs with `RUST_LOG=warn`; no server has `RUST_BACKTRACE` set; wrk runs on the same cores.\n"
                .into(),
        );
    }
    if let Some(t) = &r.throughput {
        w.push("## Throughput and latency\n".into());
        w.push(
            "| concurrency | server | req/s | p50 ms | p99 ms | non-2xx | CPU µs/req | vs native | vs wasmtime (same mode) |"
                .into(),
        );
        w.push("|---|---|---|---|---|---|---|---|---|".into());
        for c in CONCURRENCY {
            for &s in &t.servers {
                let m = &t.table[&(s, c)];
                let vs_native = m.rps / t.table[&("native", c)].rps;
                let vs_wt = match t.table.get(&(baseline(s), c)) {
                    Some(base) => format!("{:.2}x", m.rps / base.rps),
                    None => "n/a".into(),
                };
                w.push(format!(
                    "| {c} | {s} | {:.0} | {:.3} | {:.3} | {} | {:.1} | {:.1}% | {vs_wt} |",
                    m.rps,
                    m.p50,
                    m.p99,
                    m.errors,
                    m.cpu_us,
                    vs_native * 100.0
                ));
            }
        }
        w.push(String::new());
    }
    if let Some(micro) = &r.micro {
        w.push("## Per request, in process (criterion)\n".into());
        w.push(
            "`cargo bench -p host --bench per_request`: one request through `ServedVersion::handle`, body read \
             to the end, no sockets.\n"
                .into(),
        );
        for e in micro {
            w.push(format!(
                "- {}: {} {}",
                e.name.replace('_', " "),
                float(e.value),
                e.unit
            ));
        }
        w.push(String::new());
    }
    if let Some(cold) = &r.cold {
        w.push("## Cold start\n".into());
        w.push("| what | component size | time |".into());
        w.push("|---|---|---|".into());
        w.push(format!(
            "| deploy the hello guest → first 200 (compile) | {:.0} KiB | {:.0} ms |",
            cold.hello.1 as f64 / 1024.0,
            cold.hello.0
        ));
        w.push(format!(
            "| deploy the large guest → first 200 (compile) | {:.1} MiB | {:.0} ms |",
            cold.large.1 as f64 / f64::from(1 << 20),
            cold.large.0
        ));
        w.push(format!(
            "| restart with {RESTART_APPS} deployed apps (distinct code) → ready | | {:.0} ms |",
            cold.ready
        ));
        w.push(format!(
            "| restart with {RESTART_APPS} deployed apps → every one answered 200 | | {:.0} ms |",
            cold.all
        ));
        w.push(format!(
            "\n(Deploying the other {} apps took {:.1} s, each compiled.)\n",
            RESTART_APPS - 2,
            cold.deploy_many
        ));
    }
    if let Some(m) = &r.memory {
        let apps = b.cfg.apps;
        w.push("## Memory\n".into());
        w.push(format!(
            "- idle RSS, default guest: {:.1} MiB",
            m.idle as f64 / 1024.0
        ));
        w.push(format!(
            "- RSS with {apps} deployed hello apps: {:.1} MiB; {} of {apps} answered; deploying them took {:.1} s",
            m.many as f64 / 1024.0,
            m.answered,
            m.deploy_s
        ));
        w.push(String::new());
    }
    if let Some(e) = &r.echo {
        w.push("## 64 MiB streamed echo\n".into());
        w.push(format!(
            "- native: {:.0} MiB/s; host: {:.0} MiB/s ({:.0}% of native)",
            e.native,
            e.host,
            e.host / e.native * 100.0
        ));
        w.push(String::new());
    }
    if let Some(f) = &r.foreign {
        foreign::report(w, b, f);
    }
    if let Some(k) = &r.kv {
        kv::report(w, b, k);
    }
    if let Some(c) = &r.cluster {
        cluster::report(w, b, c);
    }
    if let Some(a) = &r.avatar {
        avatar::report(w, a);
    }
    lines.join("\n")
}

/// A number as Python prints a float: `20.0`, not `20`.
fn float(value: f64) -> String {
    let text = value.to_string();
    if text.contains(['.', 'e', 'N', 'i']) {
        text
    } else {
        text + ".0"
    }
}

/// Today's local date, `YYYY-MM-DD`.
fn today() -> String {
    // SAFETY: time(NULL) and localtime_r into a zeroed tm we own.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "unknown date".into();
        }
        format!(
            "{:04}-{:02}-{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        )
    }
}

/// `N cores (CPU model), M GiB, Linux RELEASE`.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, model)| model.trim());
    // SAFETY: sysconf has no preconditions.
    let (cores, page, pages) = unsafe {
        (
            libc::sysconf(libc::_SC_NPROCESSORS_ONLN),
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_PHYS_PAGES),
        )
    };
    let gib = page as f64 * pages as f64 / f64::from(1 << 30);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {gib:.0} GiB, Linux {}",
        release.trim()
    )
}

/// `old` with its measured part (between BEGIN and END) replaced by
/// `report`, what is around it kept; without both markers, just the
/// measured part.
pub fn replace_measured(old: &str, report: &str) -> String {
    let block = format!("{BEGIN}\n{}\n{END}", report.trim_end());
    if let Some((head, rest)) = old.split_once(BEGIN)
        && let Some((_, tail)) = rest.split_once(END)
    {
        format!("{head}{block}{tail}")
    } else {
        block + "\n"
    }
}

/// Write `report` into the measured part of `path`.
pub fn write(path: &Path, report: &str) -> Result<()> {
    // Only a missing file starts empty: any other failure to read it must
    // not replace the analysis around the measured part.
    let old = match std::fs::read_to_string(path) {
        Ok(old) => old,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(err).with_context(|| format!("read {}", path.display())),
    };
    std::fs::write(path, replace_measured(&old, report))
        .with_context(|| format!("write {}", path.display()))?;
    crate::log(&format!(
        "wrote the measured part of {}; the analysis after it is unchanged: review and commit",
        path.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_part_is_replaced_and_the_analysis_kept() {
        let old =
            format!("intro\n{BEGIN}\n# Benchmarks\nold numbers\n{END}\n\n## Analysis\nstays\n");
        let new = replace_measured(&old, "# Benchmarks\nnew numbers\n\n");
        assert_eq!(
            new,
            format!("intro\n{BEGIN}\n# Benchmarks\nnew numbers\n{END}\n\n## Analysis\nstays\n")
        );
        assert_eq!(replace_measured(&new, "# Benchmarks\nnew numbers"), new);
    }

    #[test]
    fn a_file_without_markers_becomes_the_measured_part() {
        assert_eq!(
            replace_measured("no markers here\n", "report"),
            format!("{BEGIN}\nreport\n{END}\n")
        );
        assert_eq!(
            replace_measured(&format!("{BEGIN} but no end"), "report"),
            format!("{BEGIN}\nreport\n{END}\n")
        );
    }

    #[test]
    fn floats_print_as_python_prints_them() {
        assert_eq!(float(19.884), "19.884");
        assert_eq!(float(6.9098), "6.9098");
        assert_eq!(float(20.0), "20.0");
    }
}
