//! The avatar example (`guests/avatar`) through the real binary: real
//! photos (scikit-image's sample photos, which `make tools` extracts, made
//! into phone-style JPEGs and 3 and 12 MP mosaics by `avatar prepare`) in
//! every format in and out, the same output as the native pipeline, EXIF
//! orientation, each kind of bad upload with its status (bombs refused from
//! their header, the host's memory unchanged), and concurrent uploads.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::json;

use crate::harness::{Host, TempDir, client, metric, profile_dir, target_dir, wasm};

/// The native `avatar` tool (`make test` builds it).
fn tool(args: &[&str]) -> String {
    let bin = profile_dir().join("avatar");
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo build -p avatar`)", bin.display()));
    assert!(
        out.status.success(),
        "avatar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The test images, made once from the real photos.
fn images() -> &'static Path {
    static IMAGES: OnceLock<TempDir> = OnceLock::new();
    &IMAGES
        .get_or_init(|| {
            let dir = TempDir::new("avatar-images");
            let photos = target_dir().join("tools/photos");
            tool(&["prepare", photos.to_str().unwrap(), dir.0.to_str().unwrap()]);
            dir
        })
        .0
}

fn image(name: &str) -> Vec<u8> {
    std::fs::read(images().join(name)).unwrap()
}

/// A host serving the avatar app at `/avatar` with 512 MiB of memory.
async fn app() -> Host {
    let host = Host::bare(&[]);
    let (status, body) = host
        .deploy(
            "avatar",
            wasm("avatar-guest"),
            json!({"route": "/avatar", "memory_mib": 512}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    host
}

struct Reply {
    status: u16,
    content_type: String,
    etag: String,
    cache_control: String,
    server_timing: String,
    body: Vec<u8>,
}

async fn upload(host: &Host, query: &str, accept: Option<&str>, body: Vec<u8>) -> Reply {
    let mut request = client()
        .post(host.url(&format!("/avatar{query}")))
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (content_type, etag, cache_control, server_timing) = (
        header("content-type"),
        header("etag"),
        header("cache-control"),
        header("server-timing"),
    );
    Reply {
        status: response.status().as_u16(),
        content_type,
        etag,
        cache_control,
        server_timing,
        body: response.bytes().await.unwrap().to_vec(),
    }
}

/// The largest and the mean difference of two images' RGB values, read
/// by the native tool.
fn difference(a: &Path, b: &Path) -> (u32, f64) {
    let diff = tool(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
    let (max, mean) = diff.split_once(' ').unwrap();
    (max.parse().unwrap(), mean.parse().unwrap())
}

/// A pixel of an avatar: x, y and its RGB.
type Sample = (u32, u32, [i32; 3]);

/// The sum and count of the avatar app's `host_guest_memory_peak_bytes`.
async fn memory_seen(host: &Host) -> (f64, f64) {
    let text = host.metrics().await;
    let labels = [("app", "avatar")];
    (
        metric(&text, "host_guest_memory_peak_bytes_sum", &labels),
        metric(&text, "host_guest_memory_peak_bytes_count", &labels),
    )
}

/// [`memory_seen`] once `count` instances have been recorded (an instance
/// ends on its own task a moment after its response).
async fn memory_after(host: &Host, count: f64) -> (f64, f64) {
    host.metric_until(
        "host_guest_memory_peak_bytes_count",
        &[("app", "avatar")],
        |seen| seen >= count,
    )
    .await;
    memory_seen(host).await
}

/// `WIDTH HEIGHT FORMAT` of an image, read by the native tool.
fn info(bytes: &[u8], scratch: &TempDir, name: &str) -> (String, PathBuf) {
    let path = scratch.write(name, bytes);
    (tool(&["info", path.to_str().unwrap()]), path)
}

#[tokio::test]
async fn photos_in_every_format_become_avatars_in_every_format() {
    let host = app().await;
    let scratch = TempDir::new("avatar-out");
    for input in [
        "astronaut.jpg",
        "coffee.jpg",
        "photo.png",
        "photo.webp",
        "mosaic-3mp.jpg",
        "mosaic-12mp.jpg",
    ] {
        let reply = upload(&host, "", None, image(input)).await;
        assert_eq!(
            reply.status,
            200,
            "{input}: {}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.content_type, "image/jpeg");
        assert!(
            reply.cache_control.contains("max-age"),
            "{}",
            reply.cache_control
        );
        assert!(
            reply.etag.starts_with('"') && reply.etag.len() > 10,
            "{}",
            reply.etag
        );
        let (shown, _) = info(&reply.body, &scratch, "out.jpg");
        assert_eq!(shown, "256 256 Jpeg", "{input}");
        // Where the time went, stage by stage.
        for stage in ["read", "decode", "resize", "encode"] {
            assert!(
                reply.server_timing.contains(&format!("{stage};dur=")),
                "{input}: {}",
                reply.server_timing
            );
        }
    }
    // Each upload's guest memory is in the metrics. The 12 MP photo is 36
    // MB of pixels at full size; shrunk on load, its instance needs a
    // fraction of that.
    let before = memory_after(&host, 6.0).await;
    let reply = upload(&host, "", None, image("mosaic-12mp.jpg")).await;
    assert_eq!(reply.status, 200);
    let after = memory_after(&host, before.1 + 1.0).await;
    let grown = after.0 - before.0;
    eprintln!(
        "the 12 MP upload's instance: {} MiB",
        grown / f64::from(1 << 20)
    );
    assert!(
        grown < f64::from(24 << 20),
        "the 12 MP upload's instance grew to {grown} bytes"
    );
    // WebP by query or by Accept; another size; the same input gives the
    // same ETag.
    let by_query = upload(&host, "?format=webp&size=64", None, image("chelsea.jpg")).await;
    assert_eq!(
        (by_query.status, by_query.content_type.as_str()),
        (200, "image/webp")
    );
    assert_eq!(info(&by_query.body, &scratch, "q.webp").0, "64 64 WebP");
    let by_accept = upload(
        &host,
        "",
        Some("image/avif,image/webp,*/*"),
        image("chelsea.jpg"),
    )
    .await;
    assert_eq!(info(&by_accept.body, &scratch, "a.webp").0, "256 256 WebP");
    let again = upload(&host, "", Some("image/webp"), image("chelsea.jpg")).await;
    assert_eq!(again.etag, by_accept.etag);
    let quality = upload(&host, "?quality=30", None, image("chelsea.jpg")).await;
    let full = upload(&host, "?quality=95", None, image("chelsea.jpg")).await;
    assert!(quality.body.len() < full.body.len());
    // The form for browsers.
    let form = client().get(host.url("/avatar")).send().await.unwrap();
    assert_eq!(form.status(), 200);
    assert!(form.text().await.unwrap().contains("<input type=\"file\""));
}

#[tokio::test]
async fn the_wasm_avatar_matches_the_native_one_and_honours_exif_orientation() {
    let host = app().await;
    let scratch = TempDir::new("avatar-same");
    for input in ["coffee.jpg", "rotated.jpg", "mosaic-3mp.jpg"] {
        let reply = upload(&host, "", None, image(input)).await;
        assert_eq!(reply.status, 200);
        let wasm_out = scratch.write(&format!("wasm-{input}"), &reply.body);
        let native_out = scratch.0.join(format!("native-{input}"));
        tool(&[
            images().join(input).to_str().unwrap(),
            native_out.to_str().unwrap(),
        ]);
        let (max, mean) = difference(&wasm_out, &native_out);
        // The same code; SIMD kernels may round differently by a level.
        assert!(max <= 8 && mean < 0.5, "{input}: max {max}, mean {mean}");
    }
    // Known photos give the avatars they gave when this test was written
    // (scikit-image 0.26.0's photos; a few pixels, each channel within 12
    // levels): a change of crop, orientation, filter or colour shows here.
    let golden: [(&str, [Sample; 5]); 2] = [
        (
            "coffee.jpg",
            [
                (64, 64, [199, 142, 89]),
                (128, 128, [253, 251, 255]),
                (192, 64, [242, 241, 246]),
                (64, 192, [32, 4, 0]),
                (200, 200, [177, 39, 13]),
            ],
        ),
        (
            "mosaic-12mp.jpg",
            [
                (64, 64, [229, 118, 75]),
                (128, 128, [29, 31, 26]),
                (192, 64, [158, 106, 56]),
                (64, 192, [90, 7, 0]),
                (200, 200, [8, 10, 9]),
            ],
        ),
    ];
    for (input, pixels) in golden {
        let reply = upload(&host, "", None, image(input)).await;
        let out = scratch.write(&format!("golden-{input}"), &reply.body);
        for (x, y, want) in pixels {
            let got: Vec<i32> = tool(&[
                "pixel",
                out.to_str().unwrap(),
                &x.to_string(),
                &y.to_string(),
            ])
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
            assert!(
                got.iter().zip(want).all(|(g, w)| (g - w).abs() <= 12),
                "{input} at ({x}, {y}): {got:?}, was {want:?}"
            );
        }
    }
    // A 12 MP photo shrunk on load (decoded at a quarter) gives nearly
    // the avatar of a full decode.
    let reply = upload(&host, "", None, image("mosaic-12mp.jpg")).await;
    let shrunk = scratch.write("wasm-12mp.jpg", &reply.body);
    let full = scratch.0.join("native-full-12mp.jpg");
    tool(&[
        images().join("mosaic-12mp.jpg").to_str().unwrap(),
        full.to_str().unwrap(),
        "--full",
    ]);
    let (max, mean) = difference(&shrunk, &full);
    assert!(
        mean < 3.0,
        "shrunk against full decode: max {max}, mean {mean}"
    );
    // The photo stored sideways with an EXIF "rotate 90° clockwise" tag
    // comes out as the same photo turned in its pixels (so: that way, not
    // counter-clockwise or flipped), and not as the pixels read as stored.
    let first = tool(&["info", images().join("rotated.jpg").to_str().unwrap()]);
    assert_eq!(first, "512 512 Jpeg");
    let upright = scratch.0.join("wasm-rotated.jpg");
    let reply = upload(&host, "", None, image("upright.jpg")).await;
    let turned = scratch.write("wasm-upright.jpg", &reply.body);
    let (max, mean) = difference(&upright, &turned);
    assert!(
        mean < 3.0,
        "tagged against turned pixels: max {max}, mean {mean}"
    );
    let as_stored = scratch.0.join("wasm-astronaut.jpg");
    let reply = upload(&host, "", None, image("astronaut.jpg")).await;
    std::fs::write(&as_stored, &reply.body).unwrap();
    let (_, mean) = difference(&upright, &as_stored);
    assert!(
        mean > 20.0,
        "rotated and stored avatars are alike (mean {mean})"
    );
}

#[tokio::test]
async fn bad_uploads_get_their_status_cheaply_and_the_host_stays_healthy() {
    let host = app().await;
    // Warm: one real upload, so the memory measured below is steady.
    assert_eq!(
        upload(&host, "", None, image("coffee.jpg")).await.status,
        200
    );
    let rss_before = host.proc_kib("VmRSS");

    let not_an_image = upload(&host, "", None, b"GIF89a not what we take".to_vec()).await;
    assert_eq!(not_an_image.status, 415);
    assert!(String::from_utf8_lossy(&not_an_image.body).contains("not a JPEG, PNG or WebP"));

    let mut cut = image("coffee.jpg");
    cut.truncate(cut.len() / 2);
    let truncated = upload(&host, "", None, cut).await;
    assert_eq!(truncated.status, 400);
    assert!(String::from_utf8_lossy(&truncated.body).contains("truncated"));

    // Bombs: 50,000 × 50,000 (7.5 GB of pixels) in a 67-byte PNG, five
    // times: refused from the header, no pixel allocated (the instances'
    // memory stays what a request needs anyway).
    // (Three requests so far: the warm one, the 415 and the 400.)
    let before = memory_after(&host, 3.0).await;
    for _ in 0..5 {
        let bomb = upload(&host, "", None, avatar::png_bomb(50_000, 50_000)).await;
        eprintln!(
            "bomb: {} {}",
            bomb.status,
            String::from_utf8_lossy(&bomb.body)
        );
        assert!(matches!(bomb.status, 413 | 422), "{}", bomb.status);
    }
    let after = memory_after(&host, before.1 + 5.0).await;
    let mean = (after.0 - before.0) / (after.1 - before.1);
    assert!(
        mean < f64::from(8 << 20),
        "a bomb's instance grew to {mean} bytes"
    );
    let over_cap = upload(&host, "", None, vec![0xFF; 11 << 20]).await;
    assert_eq!(over_cap.status, 413);
    let bad_size = upload(&host, "?size=4000", None, image("coffee.jpg")).await;
    assert_eq!(bad_size.status, 422);
    assert!(String::from_utf8_lossy(&bad_size.body).contains("size must be"));

    let rss_after = host.proc_kib("VmRSS");
    eprintln!("host RSS {rss_before} KiB before the bad uploads, {rss_after} KiB after");
    assert!(
        rss_after < rss_before + 64 * 1024,
        "the host grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(
        upload(&host, "", None, image("chelsea.jpg")).await.status,
        200
    );
}

#[tokio::test]
async fn twenty_concurrent_uploads_are_all_right() {
    let host = app().await;
    let inputs = [
        "astronaut.jpg",
        "chelsea.jpg",
        "coffee.jpg",
        "photo.png",
        "mosaic-3mp.jpg",
    ];
    let replies = futures::future::join_all(
        (0..20).map(|i| upload(&host, "", None, image(inputs[i % inputs.len()]))),
    )
    .await;
    let scratch = TempDir::new("avatar-many");
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(reply.status, 200, "upload {i}");
        assert_eq!(info(&reply.body, &scratch, "out.jpg").0, "256 256 Jpeg");
    }
    // Each input always gives the same avatar.
    for (i, reply) in replies.iter().enumerate().skip(inputs.len()) {
        assert_eq!(reply.etag, replies[i % inputs.len()].etag);
    }
}
