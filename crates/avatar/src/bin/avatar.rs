//! The native baseline of the avatar guest, and the tools its tests and
//! bench use. The pipeline is the same code the guest runs
//! (`avatar::process`), natively.
//!
//! - `avatar IN OUT [SIZE] [jpeg|webp]`: one avatar.
//! - `avatar bench ROUNDS IMAGE...`: each image ROUNDS times, one line per
//!   image: `PATH WIDTHxHEIGHT p50_ms p99_ms`, then the p50 of each stage
//!   (`decode_ms resize_ms encode_ms`).
//! - `--full` (with either): decode every image at full size, without the
//!   pipeline's JPEG shrink-on-load, to compare; `--one-core`: run on one
//!   CPU (a guest instance runs on one; natively `jpeg-decoder` starts a
//!   thread per colour component).
//! - `avatar prepare PHOTOS OUT`: test images from real photos (the PNG and
//!   JPEG files in PHOTOS, scikit-image's sample photos as `make tools`
//!   extracts them): each as a JPEG (quality 90, as a phone would upload
//!   it), one as PNG and WebP, one with an EXIF "rotate 90°" tag and the
//!   same turned in its pixels (`rotated.jpg`, `upright.jpg`), and
//!   mosaics of them at 3 and 12 megapixels.
//! - `avatar info FILE`: `WIDTH HEIGHT FORMAT`; `avatar pixel FILE X Y`:
//!   `R G B`; `avatar diff A B`: the largest and the mean difference of
//!   two images' RGB values.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use avatar::{Limits, Options, Output, process, with_exif_orientation};
use image::imageops::FilterType;
use image::{DynamicImage, GenericImage, ImageFormat, RgbImage};

type Result<T> = std::result::Result<T, String>;

fn load(path: &str) -> Result<DynamicImage> {
    image::open(path).map_err(|e| format!("{path}: {e}"))
}

fn save(image: &DynamicImage, path: &Path, format: ImageFormat) -> Result<()> {
    let mut out = Vec::new();
    match format {
        ImageFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
                .encode_image(&image.to_rgb8())
                .map_err(|e| e.to_string())?;
        }
        other => DynamicImage::ImageRgb8(image.to_rgb8())
            .write_to(&mut Cursor::new(&mut out), other)
            .map_err(|e| e.to_string())?,
    }
    std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))
}

/// A `width`×`height` mosaic of `photos`, each scaled to fill its tile.
fn mosaic(photos: &[DynamicImage], width: u32, height: u32) -> Result<DynamicImage> {
    let (cols, rows) = (2, 2);
    let (tw, th) = (width / cols, height / rows);
    let mut out = RgbImage::new(width, height);
    for (i, photo) in photos
        .iter()
        .cycle()
        .take((cols * rows) as usize)
        .enumerate()
    {
        let tile = photo.resize_to_fill(tw, th, FilterType::Lanczos3).to_rgb8();
        let (x, y) = ((i as u32 % cols) * tw, (i as u32 / cols) * th);
        out.copy_from(&tile, x, y).map_err(|e| e.to_string())?;
    }
    Ok(DynamicImage::ImageRgb8(out))
}

fn prepare(photos: &str, out: &str) -> Result<()> {
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut names: Vec<PathBuf> = std::fs::read_dir(photos)
        .map_err(|e| format!("{photos}: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(format!(
            "{photos} holds no photo: `make tools` extracts them"
        ));
    }
    let mut loaded = Vec::new();
    for path in &names {
        let image = load(path.to_str().ok_or("utf-8 path")?)?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("photo");
        save(&image, &out.join(format!("{stem}.jpg")), ImageFormat::Jpeg)?;
        loaded.push(image);
    }
    let first = &loaded[0];
    save(first, &out.join("photo.png"), ImageFormat::Png)?;
    save(first, &out.join("photo.webp"), ImageFormat::WebP)?;
    let jpeg = std::fs::read(out.join(format!(
        "{}.jpg",
        names[0].file_stem().and_then(|s| s.to_str()).unwrap_or("photo")
    )))
    .map_err(|e| e.to_string())?;
    std::fs::write(out.join("rotated.jpg"), with_exif_orientation(&jpeg, 6))
        .map_err(|e| e.to_string())?;
    // What `rotated.jpg` shows once its tag is honoured: the pixels turned.
    save(
        &first.rotate90(),
        &out.join("upright.jpg"),
        ImageFormat::Jpeg,
    )?;
    save(
        &mosaic(&loaded, 2048, 1536)?,
        &out.join("mosaic-3mp.jpg"),
        ImageFormat::Jpeg,
    )?;
    save(
        &mosaic(&loaded, 4032, 3024)?,
        &out.join("mosaic-12mp.jpg"),
        ImageFormat::Jpeg,
    )?;
    Ok(())
}

fn bench(rounds: usize, paths: &[String], options: Options) -> Result<()> {
    let p50 = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) / 2]
    };
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let mut times = Vec::with_capacity(rounds);
        let mut stages = [const { Vec::new() }; 3];
        let mut source = (0, 0);
        for _ in 0..rounds.max(1) {
            let start = Instant::now();
            let avatar =
                process(&bytes, options, Limits::default()).map_err(|e| format!("{path}: {e}"))?;
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            let t = avatar.timings;
            for (stage, took) in stages.iter_mut().zip([t.decode, t.resize, t.encode]) {
                stage.push(took.as_secs_f64() * 1000.0);
            }
            source = avatar.source;
        }
        times.sort_by(f64::total_cmp);
        let at =
            |q: f64| times[((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        let [decode, resize, encode] = stages.map(p50);
        println!(
            "{path} {}x{} {:.2} {:.2} {decode:.2} {resize:.2} {encode:.2}",
            source.0,
            source.1,
            at(0.5),
            at(0.99)
        );
    }
    Ok(())
}

/// Keep this process (and any thread the pipeline starts: `jpeg-decoder`
/// gives each colour component one natively) on one CPU, as a guest
/// instance runs on one.
#[cfg(target_os = "linux")]
fn one_core() -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it.
    let done = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .ok_or("no CPU to run on")?;
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if done != 0 {
        return Err(format!("--one-core: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn one_core() -> Result<()> {
    Err("--one-core works on Linux only".into())
}

fn run() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut options = Options::default();
    if let Some(at) = args.iter().position(|a| a == "--full") {
        args.remove(at);
        options.shrink_on_load = false;
    }
    if let Some(at) = args.iter().position(|a| a == "--one-core") {
        args.remove(at);
        one_core()?;
    }
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match args.first().map(String::as_str) {
        Some("bench") => {
            let rounds = arg(1)?.parse().map_err(|_| "ROUNDS must be a number")?;
            bench(rounds, &args[2..], options)
        }
        Some("prepare") => prepare(arg(1)?, arg(2)?),
        Some("info") => {
            let bytes = std::fs::read(arg(1)?).map_err(|e| e.to_string())?;
            let format = image::guess_format(&bytes).map_err(|e| e.to_string())?;
            let image = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
            println!("{} {} {format:?}", image.width(), image.height());
            Ok(())
        }
        Some("pixel") => {
            let image = load(arg(1)?)?.to_rgb8();
            let (x, y): (u32, u32) = (
                arg(2)?.parse().map_err(|_| "X")?,
                arg(3)?.parse().map_err(|_| "Y")?,
            );
            let p = image.get_pixel_checked(x, y).ok_or("outside the image")?;
            println!("{} {} {}", p[0], p[1], p[2]);
            Ok(())
        }
        Some("diff") => {
            let (a, b) = (load(arg(1)?)?.to_rgb8(), load(arg(2)?)?.to_rgb8());
            if a.dimensions() != b.dimensions() {
                return Err(format!("{:?} against {:?}", a.dimensions(), b.dimensions()));
            }
            let diffs: Vec<u32> = a
                .as_raw()
                .iter()
                .zip(b.as_raw())
                .map(|(x, y)| u32::from(x.abs_diff(*y)))
                .collect();
            let max = diffs.iter().max().copied().unwrap_or(0);
            let mean = diffs.iter().map(|d| f64::from(*d)).sum::<f64>() / diffs.len().max(1) as f64;
            println!("{max} {mean:.3}");
            Ok(())
        }
        Some(input) if args.len() >= 2 => {
            let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
            if let Some(size) = args.get(2) {
                options.size = size.parse().map_err(|_| format!("size {size:?}"))?;
            }
            if args.get(3).map(String::as_str) == Some("webp") {
                options.format = Output::Webp;
            }
            let avatar = process(&bytes, options, Limits::default()).map_err(|e| e.to_string())?;
            std::fs::write(&args[1], &avatar.bytes).map_err(|e| format!("{}: {e}", args[1]))
        }
        _ => Err("usage: avatar IN OUT [SIZE] [jpeg|webp] [--full] | bench ROUNDS IMAGE... [--full] [--one-core] | prepare PHOTOS OUT | info FILE | pixel FILE X Y | diff A B".into()),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("avatar: {err}");
            ExitCode::FAILURE
        }
    }
}
