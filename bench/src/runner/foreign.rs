//! Components from other toolchains (built by `make build-guests`; a
//! missing one is skipped with a note): Python (componentize-py),
//! JavaScript (componentize-js) and Rust on WASI 0.3, each on our host and
//! on `wasmtime serve` in the same run: a fresh instance per request at
//! c=16 (and, for the WASI 0.3 one, at c=64 fresh and with instance reuse
//! against wasmtime serve's default reuse), deploy -> first 200 and restart
//! -> first 200 on our host, and RSS with FOREIGN_APPS deployed Python
//! apps. Its part of the report is written here too.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ::tests::guest_path;
use anyhow::{Context, Result};

use crate::sections::{answered, app_settings, deploy_copies, ms};
use crate::servers::{Running, host};
use crate::tools::file_size;
use crate::wrk::{self, Measured};
use crate::{Bench, log};

/// The components measured: key, label, crate (its .wasm under
/// target/wasm32-wasip2/release) and how it is built.
const FOREIGN: [(&str, &str, &str, &str); 3] = [
    (
        "python",
        "Python",
        "python_guest",
        "componentize-py 0.25.1, wasi:http 0.2",
    ),
    (
        "javascript",
        "JavaScript",
        "javascript_guest",
        "componentize-js 0.23.0 (StarlingMonkey), wasi:http 0.2",
    ),
    (
        "p3",
        "Rust, WASI 0.3",
        "p3_guest",
        "Rust exporting `wasi:http/handler@0.3.0`",
    ),
];

/// Concurrency of every component's fresh-instance runs.
const FOREIGN_C: u32 = 16;

/// Concurrency of the WASI 0.3 component's fresh and reuse runs.
const P3_C: u32 = 64;

/// The memory reset the host used for every component before it picked one
/// per component (README: Guest memory): scan for dirty pages, whatever the
/// image. The default (`auto`) resets large images such as Python's by copy.
const SCAN_RESET: [&str; 2] = ["--memory-reset", "scan"];

/// A server of this section: its mode, what the table calls it, its
/// `serve` flags (host) or `wasmtime serve` flags, and the server it is
/// compared with.
struct ServerKind {
    name: &'static str,
    mode: &'static str,
    label: &'static str,
    flags: &'static [&'static str],
    baseline: &'static str,
}

const SERVERS: [ServerKind; 6] = [
    ServerKind {
        name: "host",
        mode: "fresh",
        label: "host",
        flags: &[],
        baseline: "wasmtime",
    },
    // wasmtime serve 48 never reuses a WASI 0.2 instance but reuses a
    // WASI 0.3 one by default (128 requests, 16 at once); a count of 1
    // makes every request fresh whatever the world.
    ServerKind {
        name: "wasmtime",
        mode: "fresh",
        label: "wasmtime serve `--max-instance-reuse-count 1`",
        flags: &["--max-instance-reuse-count", "1"],
        baseline: "wasmtime",
    },
    ServerKind {
        name: "host-scan",
        mode: "fresh",
        label: "host `--memory-reset scan` (the default before `auto`)",
        flags: &SCAN_RESET,
        baseline: "wasmtime",
    },
    ServerKind {
        name: "host-reuse",
        mode: "reuse",
        label: "host `--instance-reuse 128`",
        flags: &["--instance-reuse", "128"],
        baseline: "wasmtime-reuse",
    },
    ServerKind {
        name: "host-shared",
        mode: "reuse",
        label: "host `--instance-reuse 128 --instance-concurrency 16`",
        flags: &["--instance-reuse", "128", "--instance-concurrency", "16"],
        baseline: "wasmtime-reuse",
    },
    ServerKind {
        name: "wasmtime-reuse",
        mode: "reuse",
        label: "wasmtime serve, defaults (≤128 requests, 16 at once per instance)",
        flags: &[],
        baseline: "wasmtime-reuse",
    },
];

fn server_kind(name: &str) -> &'static ServerKind {
    SERVERS
        .iter()
        .find(|s| s.name == name)
        .expect("a server of the foreign section")
}

/// A built component.
pub struct Component {
    key: &'static str,
    label: &'static str,
    path: PathBuf,
    how: &'static str,
}

/// One row of the throughput table: (component key, server, concurrency).
type Run = (&'static str, &'static str, u32);

/// Deploy -> first 200 and restart -> first 200, in ms.
struct ColdTimes {
    deploy: f64,
    restart: f64,
}

/// RSS (KiB) and times of the many-Python-apps measurement.
struct PythonMemory {
    idle: u64,
    compiled: u64,
    one: u64,
    many: u64,
    answered: usize,
    first_s: f64,
    rest_s: f64,
}

/// What the section measured.
pub struct Foreign {
    comps: Vec<Component>,
    runs: Vec<Run>,
    table: HashMap<Run, Measured>,
    cold: Vec<ColdTimes>,
    mem: Option<PythonMemory>,
}

/// The FOREIGN components that are built.
fn components() -> Vec<Component> {
    let mut found = Vec::new();
    for (key, label, name, how) in FOREIGN {
        let path = guest_path(name);
        if path.is_file() {
            found.push(Component {
                key,
                label,
                path,
                how,
            });
        } else {
            log(&format!(
                "NOTE: {} is missing (make build-guests builds it); its rows are skipped",
                path.display()
            ));
        }
    }
    found
}

/// Measure every built component.
pub fn foreign(b: &Bench, state: &Path) -> Result<Foreign> {
    let comps = components();
    let (runs, table) = throughput(b, &state.join("tp"), &comps)?;
    let cold = comps
        .iter()
        .map(|c| cold(b, &state.join("cold").join(c.key), c))
        .collect::<Result<_>>()?;
    let mem = match comps.iter().find(|c| c.key == "python") {
        Some(python) => Some(memory(b, &state.join("mem"), &python.path)?),
        None => None,
    };
    Ok(Foreign {
        comps,
        runs,
        table,
        cold,
        mem,
    })
}

/// wrk against each component on our host and on wasmtime serve, a fresh
/// instance per request, at FOREIGN_C; the WASI 0.3 one also at P3_C,
/// fresh and reusing instances. The runs in table order and their medians.
fn throughput(
    b: &Bench,
    state: &Path,
    comps: &[Component],
) -> Result<(Vec<Run>, HashMap<Run, Measured>)> {
    let mut runs: Vec<Run> = Vec::new();
    for c in comps {
        runs.extend([(c.key, "host", FOREIGN_C), (c.key, "wasmtime", FOREIGN_C)]);
        if c.key == "python" {
            runs.push((c.key, "host-scan", FOREIGN_C));
        }
    }
    if comps.iter().any(|c| c.key == "p3") {
        for server in [
            "host",
            "wasmtime",
            "host-reuse",
            "host-shared",
            "wasmtime-reuse",
        ] {
            runs.push(("p3", server, P3_C));
        }
    }
    if !b.bins.has_wasmtime() {
        runs.retain(|(_, server, _)| !server.starts_with("wasmtime"));
    }
    let mut servers: Vec<((&str, &str), Running)> = Vec::new();
    for &(key, server, _) in &runs {
        if servers.iter().any(|(k, _)| *k == (key, server)) {
            continue;
        }
        let path = &comps.iter().find(|c| c.key == key).expect("built").path;
        let kind = server_kind(server);
        let running = if server.starts_with("host") {
            let wasm = path.to_str().context("utf-8 path")?;
            let args = [&[wasm][..], kind.flags].concat();
            let dir = state.join(format!("{key}-{server}"));
            Running::host(&b.bins.host, &dir, &args)?
        } else {
            Running::wasmtime(&b.bins.wasmtime, path, kind.flags)?
        };
        servers.push(((key, server), running));
    }
    // Python and JavaScript compile for seconds each, all at once here.
    for (_, server) in &servers {
        let url = format!("http://{}/", server.addr);
        b.http.wait_200(&url, None, Duration::from_secs(600))?;
    }
    let mut results: HashMap<Run, Vec<Measured>> = HashMap::new();
    for round in 1..=b.cfg.rounds {
        for &(key, server, c) in &runs {
            let (_, running) = servers
                .iter()
                .find(|(k, _)| *k == (key, server))
                .expect("started");
            let m = wrk::run(running.addr, c, b.cfg.duration, running.process())?;
            log(&format!(
                "round {round} {key} c={c} {server}: {}",
                m.summary()
            ));
            results.entry((key, server, c)).or_default().push(m);
        }
    }
    for (_, server) in &mut servers {
        server.stop();
    }
    let table = results
        .iter()
        .map(|(run, ms)| (*run, wrk::median(ms)))
        .collect();
    Ok((runs, table))
}

/// Our host, a fresh state directory: deploy -> first 200 (compile), then
/// SIGTERM, start again on the same state dir -> first 200 (from the
/// precompiled cache).
fn cold(b: &Bench, state: &Path, comp: &Component) -> Result<ColdTimes> {
    let wasm = std::fs::read(&comp.path).context("read the component")?;
    let vhost = format!("{}.bench", comp.key);
    let wait = Duration::from_secs(300);
    let mut server = host(&b.bins.host, state, &["--no-default-app"])?;
    let t0 = Instant::now();
    b.http
        .deploy(&server, comp.key, wasm, app_settings(comp.key))?;
    b.http.wait_200(&server.url("/"), Some(&vhost), wait)?;
    let deploy = ms(t0);
    server.stop();
    drop(server);
    let t0 = Instant::now();
    let mut server = host(&b.bins.host, state, &["--no-default-app"])?;
    b.http.wait_200(&server.url("/"), Some(&vhost), wait)?;
    let restart = ms(t0);
    server.stop();
    Ok(ColdTimes { deploy, restart })
}

/// RSS of one host with FOREIGN_APPS Python apps, each answering 200
/// once. They are the same component under FOREIGN_APPS names (one digest,
/// compiled once and shared): a Python compile takes seconds, and what is
/// measured is what each further app costs. The one-app baseline is taken
/// after a restart (code from the cache): just after a compile, RSS still
/// holds the compiler's memory.
fn memory(b: &Bench, state: &Path, path: &Path) -> Result<PythonMemory> {
    let wait = Duration::from_secs(300);
    let mut server = host(&b.bins.host, state, &["--no-default-app"])?;
    b.http
        .wait_200(&server.admin_url("/readyz"), None, Duration::from_secs(60))?;
    let idle = server.proc_kib("VmRSS");
    let wasm = std::fs::read(path).context("read the Python component")?;
    let t0 = Instant::now();
    deploy_copies(b, &server, &wasm, "py", 0..1)?;
    b.http.wait_200(&server.url("/"), Some("py0.bench"), wait)?;
    let first_s = t0.elapsed().as_secs_f64();
    let compiled = server.proc_kib("VmRSS");
    server.stop();
    drop(server);

    let mut server = host(&b.bins.host, state, &["--no-default-app"])?;
    b.http.wait_200(&server.url("/"), Some("py0.bench"), wait)?;
    let one = server.proc_kib("VmRSS");
    let rest_s = deploy_copies(b, &server, &wasm, "py", 1..b.cfg.foreign_apps)?;
    let answered = answered(b, &server.url("/"), "py", b.cfg.foreign_apps);
    let many = server.proc_kib("VmRSS");
    server.stop();
    Ok(PythonMemory {
        idle,
        compiled,
        one,
        many,
        answered,
        first_s,
        rest_s,
    })
}

/// MiB, as the report gives component sizes.
fn mib(path: &Path) -> f64 {
    file_size(path) as f64 / f64::from(1 << 20)
}

/// The `Components from other toolchains` section.
pub fn report(w: &mut Vec<String>, b: &Bench, f: &Foreign) {
    let (rounds, duration, apps) = (b.cfg.rounds, b.cfg.duration, b.cfg.foreign_apps);
    w.push("## Components from other toolchains\n".into());
    if f.comps.is_empty() {
        w.push("None built (`make build-guests`).\n".into());
        return;
    }
    let label = |key: &str| f.comps.iter().find(|c| c.key == key).expect("built").label;
    let built: Vec<String> = f
        .comps
        .iter()
        .map(|c| format!("{}: {}, {:.1} MiB", c.label, c.how, mib(&c.path)))
        .collect();
    w.push(format!(
        "Built by `make build-guests` ({}). Each answers `GET /` with one line of text. Each is served by \
         our host and by `wasmtime serve -Scli` 48.0.8 in the same run: wrk -t1, {duration} s per run, servers \
         interleaved, median of {rounds} rounds. Fresh = a new instance per request (our default; wasmtime serve \
         with `--max-instance-reuse-count 1`); reuse = our `--instance-reuse 128` against wasmtime serve's \
         defaults, which reuse a WASI 0.3 instance. CPU = the server process's user+system time per request.\n",
        built.join("; ")
    ));
    w.push(
        "| component | mode | server | c | req/s | p50 ms | p99 ms | CPU µs/req | vs wasmtime |"
            .into(),
    );
    w.push("|---|---|---|---|---|---|---|---|---|".into());
    for run @ &(key, server, c) in &f.runs {
        let r = &f.table[run];
        let kind = server_kind(server);
        let vs_wt = match f.table.get(&(key, kind.baseline, c)) {
            Some(base) => format!("{:.2}x", r.rps / base.rps),
            None => "n/a".into(),
        };
        w.push(format!(
            "| {} | {} | {} | {c} | {:.0} | {:.3} | {:.3} | {:.1} | {vs_wt} |",
            label(key),
            kind.mode,
            kind.label,
            r.rps,
            r.p50,
            r.p99,
            r.cpu_us
        ));
    }
    let errors: Vec<String> = f
        .runs
        .iter()
        .filter(|run| f.table[*run].errors > 0)
        .map(|run @ (key, server, c)| {
            format!("{} {server} c={c}: {}", label(key), f.table[run].errors)
        })
        .collect();
    let errors = if errors.is_empty() {
        "none".to_string()
    } else {
        errors.join("; ")
    };
    w.push(format!("\nNon-2xx responses: {errors}.\n"));
    w.push("Our host only, a fresh state directory per component:\n".into());
    w.push(
        "| component | size | deploy → first 200 (compile) | restart (SIGTERM, same state dir) → first 200 (cache) |"
            .into(),
    );
    w.push("|---|---|---|---|".into());
    for (c, t) in f.comps.iter().zip(&f.cold) {
        w.push(format!(
            "| {} | {:.1} MiB | {:.0} ms | {:.0} ms |",
            c.label,
            mib(&c.path),
            t.deploy,
            t.restart
        ));
    }
    if let Some(m) = &f.mem {
        let per_app = (m.many as f64 - m.one as f64) / apps.saturating_sub(1).max(1) as f64;
        w.push(format!(
            "\nRSS with {apps} Python apps on one host: {:.1} MiB ({} of {apps} answered 200 once). With one app \
             (restarted, its code from the cache, answered once): {:.1} MiB, so {per_app:.0} KiB per further app; \
             idle with no app: {:.1} MiB; just after compiling the first: {:.1} MiB. Deploying the first took \
             {:.1} s (compile), the other {} {:.1} s. The {apps} are the same component under as many names (one \
             digest, compiled once and shared; a Python compile takes seconds here): this is the memory each \
             further app costs, not that of as many distinct Python programs.",
            m.many as f64 / 1024.0,
            m.answered,
            m.one as f64 / 1024.0,
            m.idle as f64 / 1024.0,
            m.compiled as f64 / 1024.0,
            m.first_s,
            apps as i64 - 1,
            m.rest_s
        ));
    }
    w.push(String::new());
}
