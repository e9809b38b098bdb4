//! The avatar section: the avatar example app (`guests/avatar`, a fresh
//! instance per request, 512 MiB) against the same pipeline natively (the
//! `avatar` tool, `avatar::process`), on real photos: scikit-image's sample
//! photos as phone-style JPEGs (≤ 1 MP) and mosaics of them at 3 and 12 MP
//! (`avatar prepare`).
//!
//! Per image: end to end over HTTP (upload, instance, decode, resize,
//! encode, answer; a new connection each), split by stage with the app's
//! `server-timing` header; natively the call alone, as it runs and on one
//! CPU (`--one-core`), and without shrink-on-load on one CPU (`--full`,
//! against the one-CPU run: the full decode starts no thread); the same app
//! built without `simd128` (`make bench` builds it into
//! `target/no-simd128`); each upload's peak guest memory
//! (`host_guest_memory_peak_bytes`). Then throughput at c=2 and the host's
//! peak RSS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ::tests::{Host, guest_path, metric, release_bin, target_dir};
use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::cluster::quantile;
use crate::servers::Running;
use crate::{Bench, log};

/// The images, by size class, and how many times each is measured.
const IMAGES: [(&str, &str, usize); 5] = [
    ("≤ 1 MP", "coffee.jpg", 40),
    ("≤ 1 MP", "astronaut.jpg", 40),
    ("≤ 1 MP", "hubble_deep_field.jpg", 40),
    ("3 MP", "mosaic-3mp.jpg", 30),
    ("12 MP", "mosaic-12mp.jpg", 15),
];

/// The guest's stages, as its `server-timing` names them.
const STAGES: [&str; 4] = ["read", "decode", "resize", "encode"];

/// p50 and p99, ms.
type Spread = (f64, f64);

pub struct Row {
    pub class: &'static str,
    pub image: &'static str,
    pub pixels: String,
    pub wasm: Spread,
    /// p50 of each of [`STAGES`] in the guest, then of the rest (HTTP and
    /// the instance: end to end less the guest's stages).
    pub wasm_stages: [f64; 5],
    /// p50 of the app built without `simd128`, when built.
    pub no_simd: Option<f64>,
    pub native: Spread,
    /// p50 of decode, resize, encode.
    pub native_stages: [f64; 3],
    pub native_one_core: f64,
    pub native_full: f64,
    /// The guest's linear memory at the end of an upload, MiB.
    pub guest_mib: f64,
}

pub struct Avatar {
    pub rows: Vec<Row>,
    /// Uploads of the 3 MP photo per second at c=2.
    pub throughput: f64,
    pub errors: usize,
    /// The host's peak RSS, MiB, and its RSS before the first upload.
    pub peak_mib: f64,
    pub idle_mib: f64,
}

/// One upload on a new connection: the status, the time to the end of the
/// answer in ms, and the `server-timing` header.
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Result<(u16, f64, String)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let head = String::from_utf8_lossy(&answer[..answer.len().min(4096)]).to_string();
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let timing = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("server-timing:")
                .or_else(|| l.strip_prefix("Server-Timing:"))
        })
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok((status, ms, timing))
}

/// `name;dur=MS` out of a `server-timing` header.
fn stage(timing: &str, name: &str) -> f64 {
    timing
        .split(',')
        .filter_map(|entry| entry.trim().split_once(";dur="))
        .find(|(n, _)| *n == name)
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap_or(0.0)
}

fn tool() -> PathBuf {
    release_bin("avatar")
}

/// `avatar bench ROUNDS IMAGE [flags]`: the pixels, p50, p99 and the
/// stages' p50s.
fn native(image: &Path, rounds: usize, flags: &[&str]) -> Result<(String, Spread, [f64; 3])> {
    let out = Command::new(tool())
        .args(["bench", &rounds.to_string()])
        .arg(image)
        .args(flags)
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        [_, dims, p50, p99, decode, resize, encode] => Ok((
            dims.to_string(),
            (p50.parse()?, p99.parse()?),
            [decode.parse()?, resize.parse()?, encode.parse()?],
        )),
        _ => bail!(
            "avatar bench printed {line:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The sum and count of an app's `host_guest_memory_peak_bytes` once it
/// has counted `count` instances (each is recorded on its own task a
/// moment after its response), or after 5 s.
fn memory_seen(b: &Bench, host: &Host, app: &str, count: f64) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = b.http.metrics(host);
        let seen = (
            metric(&text, "host_guest_memory_peak_bytes_sum", &[("app", app)]),
            metric(&text, "host_guest_memory_peak_bytes_count", &[("app", app)]),
        );
        if seen.1 >= count || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rounds` uploads of `body` to `path`, after one to warm: end-to-end
/// times and `server-timing` headers.
fn uploads(addr: SocketAddr, path: &str, body: &[u8], rounds: usize) -> Result<Vec<(f64, String)>> {
    post(addr, path, body)?;
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (status, ms, timing) = post(addr, path, body)?;
        if status != 200 {
            bail!("{path}: the avatar app answered {status}");
        }
        if STAGES
            .iter()
            .any(|s| !timing.contains(&format!("{s};dur=")))
        {
            bail!("{path}: the avatar app's server-timing is {timing:?}");
        }
        out.push((ms, timing));
    }
    Ok(out)
}

pub fn avatar(b: &Bench, state: &Path) -> Result<Avatar> {
    let images = state.join("images");
    let photos = target_dir().join("tools/photos");
    let out = Command::new(tool())
        .arg("prepare")
        .args([&photos, &images])
        .output()
        .context("run the avatar tool (`make bench` builds it)")?;
    if !out.status.success() {
        bail!("avatar prepare: {}", String::from_utf8_lossy(&out.stderr));
    }
    let wasm = std::fs::read(guest_path("avatar-guest"))
        .context("the avatar guest (`make build-guests`)")?;
    let no_simd_path = target_dir().join("no-simd128/wasm32-wasip2/release/avatar_guest.wasm");
    // `make bench` builds it; without it (NO_BUILD) its column is empty.
    let no_simd = std::fs::read(&no_simd_path).ok();
    if no_simd.is_none() {
        log(&format!(
            "{}: no avatar guest without simd128, so that column is left out",
            no_simd_path.display()
        ));
    }
    let mut server = Running::host(&b.bins.host, &state.join("host"), &["--no-default-app"])?;
    let host = server.as_host().context("a host")?;
    let apps = [
        ("avatar", "/avatar", Some(wasm)),
        ("avatar-no-simd", "/no-simd/avatar", no_simd),
    ];
    let with_no_simd = apps[1].2.is_some();
    for (name, route, wasm) in apps {
        if let Some(wasm) = wasm {
            b.http
                .deploy(host, name, wasm, json!({"route": route, "memory_mib": 512}))?;
        }
    }
    let addr = server.addr;
    let idle_mib = server.process().proc_kib("VmRSS") as f64 / 1024.0;

    let mut rows = Vec::new();
    let mut uploaded = 0.0;
    for (class, name, rounds) in IMAGES {
        let path = images.join(name);
        let body = std::fs::read(&path)?;
        let memory_before = memory_seen(b, host, "avatar", uploaded);
        let runs = uploads(addr, "/avatar", &body, rounds)?;
        uploaded += rounds as f64 + 1.0;
        let memory_after = memory_seen(b, host, "avatar", uploaded);
        let guest_mib = (memory_after.0 - memory_before.0)
            / (memory_after.1 - memory_before.1).max(1.0)
            / (1 << 20) as f64;
        let times: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let p50 = |values: Vec<f64>| quantile(&values, 0.5);
        let mut wasm_stages = [0.0; 5];
        for (i, name) in STAGES.iter().enumerate() {
            wasm_stages[i] = p50(runs.iter().map(|r| stage(&r.1, name)).collect());
        }
        wasm_stages[4] = p50(runs
            .iter()
            .map(|(ms, timing)| ms - STAGES.iter().map(|s| stage(timing, s)).sum::<f64>())
            .collect());
        let no_simd = match with_no_simd {
            true => Some(p50(uploads(addr, "/no-simd/avatar", &body, rounds)?
                .iter()
                .map(|r| r.0)
                .collect())),
            false => None,
        };
        let (pixels, native_spread, native_stages) = native(&path, rounds, &[])?;
        let (_, one_core, _) = native(&path, rounds, &["--one-core"])?;
        let (_, full, _) = native(&path, rounds, &["--full", "--one-core"])?;
        let row = Row {
            class,
            image: name,
            pixels,
            wasm: (quantile(&times, 0.5), quantile(&times, 0.99)),
            wasm_stages,
            no_simd,
            native: native_spread,
            native_stages,
            native_one_core: one_core.0,
            native_full: full.0,
            guest_mib,
        };
        log(&format!(
            "avatar {name} ({}): wasm p50 {:.1} ms p99 {:.1} ms (stages {:?}), native p50 {:.1} ms \
             p99 {:.1} ms (stages {:?}; one core {:.1}; full decode {:.1}), without simd128 {:?} ms, \
             guest memory {:.1} MiB",
            row.pixels,
            row.wasm.0,
            row.wasm.1,
            row.wasm_stages,
            row.native.0,
            row.native.1,
            row.native_stages,
            row.native_one_core,
            row.native_full,
            row.no_simd,
            row.guest_mib
        ));
        rows.push(row);
    }

    let body = std::fs::read(images.join("mosaic-3mp.jpg"))?;
    let until = Instant::now() + Duration::from_secs(b.cfg.duration);
    let results: Vec<(usize, usize)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut bad) = (0, 0);
                    while Instant::now() < until {
                        match post(addr, "/avatar", &body) {
                            Ok((200, _, _)) => ok += 1,
                            _ => bad += 1,
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or((0, 1)))
            .collect()
    });
    let ok: usize = results.iter().map(|r| r.0).sum();
    let errors: usize = results.iter().map(|r| r.1).sum();
    let throughput = ok as f64 / b.cfg.duration as f64;
    log(&format!(
        "avatar c=2, 3 MP: {throughput:.1} uploads/s, {errors} errors"
    ));
    let peak_mib = server.process().proc_kib("VmHWM") as f64 / 1024.0;
    server.stop();
    Ok(Avatar {
        rows,
        throughput,
        errors,
        peak_mib,
        idle_mib,
    })
}

pub fn report(w: &mut Vec<String>, a: &Avatar) {
    w.push("## Avatar example: wasm against native\n".into());
    w.push(
        "The avatar app (`guests/avatar`: decode (JPEGs of 1024 px and more shrunk on load in the \
         DCT), centre crop, Lanczos3 resize to 256×256, EXIF orientation, JPEG quality 80), a fresh \
         instance per request with 512 MiB, against the same pipeline natively (`avatar bench`: the \
         `avatar` crate in one process). Images: scikit-image's sample photos as JPEG (quality 90) and \
         mosaics of them at 3 and 12 MP. wasm = end to end over HTTP on loopback, a new connection per \
         upload, one at a time; native = the call alone, as it runs (`jpeg-decoder` gives each colour \
         component a thread when it shrinks on load) and on one CPU (`--one-core`, as a guest runs). \
         The targets are judged against native as it runs, the stricter of the two.\n"
            .into(),
    );
    w.push("| class | image | pixels | wasm p50 ms | wasm p99 ms | native p50 ms | native p99 ms | native, one CPU, p50 ms | wasm / native | wasm / native on one CPU | target |".into());
    w.push("|---|---|---|---|---|---|---|---|---|---|---|".into());
    for r in &a.rows {
        let ratio = r.wasm.0 / r.native.0;
        let one = r.wasm.0 / r.native_one_core;
        let met = |ok: bool| if ok { "met" } else { "**missed**" };
        let target = match r.class {
            "12 MP" => "stated".to_string(),
            "3 MP" => format!(
                "≤ 1.5×: {}; p50 < 110 ms: {}",
                met(ratio <= 1.5),
                met(r.wasm.0 < 110.0)
            ),
            _ => format!("≤ 1.5×: {}", met(ratio <= 1.5)),
        };
        w.push(format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio:.2}× | {one:.2}× | {target} |",
            r.class,
            r.image,
            r.pixels,
            r.wasm.0,
            r.wasm.1,
            r.native.0,
            r.native.1,
            r.native_one_core
        ));
    }
    w.push(String::new());
    w.push(
        "Where the time goes (p50 ms; the guest's stages from its `server-timing` header; \"HTTP + \
         instance\" is end to end less the guest's stages: the connection, the request, the \
         instantiation, the answer), the guest's memory at the end of an upload \
         (`host_guest_memory_peak_bytes`), and what `simd128` and shrink-on-load buy:\n"
            .into(),
    );
    w.push("| image | wasm: read body | decode | resize | encode | HTTP + instance | native: decode | resize | encode | guest memory MiB | wasm without simd128 p50 ms | native on one CPU, full decode, p50 ms |".into());
    w.push("|---|---|---|---|---|---|---|---|---|---|---|---|".into());
    for r in &a.rows {
        let s = &r.wasm_stages;
        let n = &r.native_stages;
        w.push(format!(
            "| {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
            r.image,
            s[0],
            s[1],
            s[2],
            s[3],
            s[4],
            n[0],
            n[1],
            n[2],
            r.guest_mib,
            r.no_simd.map_or("not built".to_string(), |ms| format!(
                "{ms:.1} ({:+.0}%)",
                (ms / r.wasm.0 - 1.0) * 100.0
            )),
            r.native_full
        ));
    }
    w.push(String::new());
    w.push(format!(
        "Throughput at c=2 (two clients uploading the 3 MP photo in a loop): {:.1} uploads/s, {} \
         failed. Host RSS: {:.0} MiB idle with both apps deployed, {:.0} MiB at its peak (guest memory \
         included).\n",
        a.throughput, a.errors, a.idle_mib, a.peak_mib
    ));
}
