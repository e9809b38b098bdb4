//! The avatar section: the avatar example app (`guests/avatar`, a fresh
//! instance per request, 512 MiB) against the same pipeline natively (the
//! `avatar` tool, `avatar::process`), on real photos: scikit-image's sample
//! photos as phone-style JPEGs (≤ 1 MP) and mosaics of them at 3 and 12 MP
//! (`avatar prepare`). Per image, end to end over HTTP (upload, instance,
//! decode, resize, encode, answer; a new connection each) against the
//! native call; throughput at c=2 (two clients uploading the 3 MP photo in
//! a loop); and the host's peak RSS, which the guest's memory is part of.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ::tests::{guest_path, release_bin, target_dir};
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

pub struct Row {
    pub class: &'static str,
    pub image: &'static str,
    pub pixels: String,
    pub wasm: (f64, f64),
    pub native: (f64, f64),
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

/// One upload on a new connection: the status and the time to the end of
/// the answer, in ms.
fn post(addr: SocketAddr, body: &[u8]) -> Result<(u16, f64)> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "POST /avatar HTTP/1.1\r\nhost: bench\r\ncontent-type: image/jpeg\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let status = std::str::from_utf8(answer.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, start.elapsed().as_secs_f64() * 1000.0))
}

fn tool() -> PathBuf {
    release_bin("avatar")
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
    let mut server = Running::host(&b.bins.host, &state.join("host"), &["--no-default-app"])?;
    let host = server.as_host().context("a host")?;
    b.http.deploy(
        host,
        "avatar",
        wasm,
        json!({"route": "/avatar", "memory_mib": 512}),
    )?;
    let addr = server.addr;
    let idle_mib = server.process().proc_kib("VmRSS") as f64 / 1024.0;

    let mut rows = Vec::new();
    for (class, name, rounds) in IMAGES {
        let path = images.join(name);
        let body = std::fs::read(&path)?;
        // One to warm the code, then the measured ones.
        post(addr, &body)?;
        let mut times = Vec::new();
        for _ in 0..rounds {
            let (status, ms) = post(addr, &body)?;
            if status != 200 {
                bail!("{name}: the avatar app answered {status}");
            }
            times.push(ms);
        }
        let native = Command::new(tool())
            .args(["bench", &rounds.to_string()])
            .arg(&path)
            .output()?;
        let line = String::from_utf8_lossy(&native.stdout).to_string();
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (pixels, p50, p99) = match fields.as_slice() {
            [_, dims, p50, p99] => (dims.to_string(), p50.parse()?, p99.parse()?),
            _ => bail!(
                "avatar bench printed {line:?}: {}",
                String::from_utf8_lossy(&native.stderr)
            ),
        };
        let row = Row {
            class,
            image: name,
            pixels,
            wasm: (quantile(&times, 0.5), quantile(&times, 0.99)),
            native: (p50, p99),
        };
        log(&format!(
            "avatar {name} ({}): wasm p50 {:.1} ms p99 {:.1} ms, native p50 {:.1} ms p99 {:.1} ms",
            row.pixels, row.wasm.0, row.wasm.1, row.native.0, row.native.1
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
                        match post(addr, &body) {
                            Ok((200, _)) => ok += 1,
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
        "The avatar app (`guests/avatar`: decode, EXIF orientation, centre crop, Lanczos3 resize to \
         256×256, JPEG quality 80), a fresh instance per request with 512 MiB, against the same \
         pipeline natively (`avatar bench`, the `avatar` crate in one process). Images: scikit-image's \
         sample photos as JPEG (quality 90) and mosaics of them at 3 and 12 MP. wasm = end to end over \
         HTTP on loopback, a new connection per upload, one at a time; native = the call alone.\n"
            .into(),
    );
    w.push("| class | image | pixels | wasm p50 ms | wasm p99 ms | native p50 ms | native p99 ms | wasm / native (p50) | target |".into());
    w.push("|---|---|---|---|---|---|---|---|---|".into());
    for r in &a.rows {
        let ratio = r.wasm.0 / r.native.0;
        let target = match r.class {
            "12 MP" => "stated".to_string(),
            "3 MP" => format!(
                "≤ 1.5×: {}; p50 < 110 ms: {}",
                if ratio <= 1.5 { "met" } else { "missed" },
                if r.wasm.0 < 110.0 { "met" } else { "missed" }
            ),
            _ => format!("≤ 1.5×: {}", if ratio <= 1.5 { "met" } else { "missed" }),
        };
        w.push(format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {ratio:.2}× | {target} |",
            r.class, r.image, r.pixels, r.wasm.0, r.wasm.1, r.native.0, r.native.1
        ));
    }
    w.push(String::new());
    w.push(format!(
        "Throughput at c=2 (two clients uploading the 3 MP photo in a loop): {:.1} uploads/s, {} \
         failed. Host RSS: {:.0} MiB idle with the app deployed, {:.0} MiB at its peak (guest memory \
         included).\n",
        a.throughput, a.errors, a.idle_mib, a.peak_mib
    ));
}
