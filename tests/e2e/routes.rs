//! The default guest's routes, served the way users run it.

use std::process::Command;

use bytes::Bytes;
use futures::StreamExt;

use crate::harness::{Host, TempDir, client, guest, host_bin, workspace_root};

#[tokio::test]
async fn default_guest_answers_each_route() {
    let host = Host::start(&guest("guest"), &[]);
    let http = client();

    let root = http.get(host.url("/")).send().await.unwrap();
    assert_eq!(root.status(), 200);
    assert_eq!(root.headers()["content-type"], "text/plain");
    assert_eq!(root.text().await.unwrap(), "Hello, world!\n");

    let headers = http
        .get(host.url("/headers?x=1"))
        .header("x-test", "abc \"quoted\"")
        .send()
        .await
        .unwrap();
    assert_eq!(headers.status(), 200);
    assert_eq!(headers.headers()["content-type"], "application/json");
    let json: serde_json::Value = headers.json().await.unwrap();
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/headers?x=1");
    assert_eq!(json["headers"]["x-test"], "abc \"quoted\"");
    assert_eq!(json["authority"], host.addr.to_string());

    let echo = http
        .post(host.url("/echo"))
        .header("content-type", "text/x-demo")
        .body("hello, echo")
        .send()
        .await
        .unwrap();
    assert_eq!(echo.status(), 200);
    assert_eq!(echo.headers()["content-type"], "text/x-demo");
    assert_eq!(echo.text().await.unwrap(), "hello, echo");

    let missing = http.get(host.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.text().await.unwrap(), "not found\n");

    let wrong_method = http.get(host.url("/echo")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
}

/// `cargo run -p host` with no arguments serves the default guest: run the
/// binary the same way, from the workspace root, with only a free port.
#[tokio::test]
async fn no_arguments_serves_the_default_guest() {
    let state = TempDir::new("noargs");
    let mut cmd = Command::new(host_bin());
    cmd.current_dir(workspace_root())
        .env_remove("HOST_COMPONENT")
        .env("HOST_STATE_DIR", &state.0)
        .env("HOST_ADMIN_LISTEN", "127.0.0.1:0")
        .args(["--listen", "127.0.0.1:0"]);
    let host = Host::spawn(cmd);
    let body = client()
        .get(host.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "Hello, world!\n");
}

/// A deterministic byte at offset `i` of the echo payload.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// 64 MiB streamed through `/echo` comes back byte-identical, and the host's
/// peak RSS grows by far less than the payload: nothing holds it whole.
#[tokio::test]
async fn echo_streams_64_mib_without_buffering() {
    const TOTAL: u64 = 64 * 1024 * 1024;
    const CHUNK: u64 = 256 * 1024;
    let host = Host::start(&guest("guest"), &[]);
    let http = client();

    // Warm up the allocator and pools so the baseline is fair.
    let warm = vec![7u8; 1 << 20];
    let resp = http
        .post(host.url("/echo"))
        .body(warm.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.bytes().await.unwrap().len(), warm.len());
    let hwm_before = host.proc_kib("VmHWM");

    let chunks = futures::stream::iter((0..TOTAL / CHUNK).map(|c| {
        let bytes: Vec<u8> = (c * CHUNK..(c + 1) * CHUNK).map(pattern).collect();
        Ok::<Bytes, std::io::Error>(Bytes::from(bytes))
    }));
    let resp = http
        .post(host.url("/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut offset = 0u64;
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(
                *b,
                pattern(offset + i as u64),
                "byte {} differs",
                offset + i as u64
            );
        }
        offset += chunk.len() as u64;
    }
    assert_eq!(offset, TOTAL, "echo returned {offset} of {TOTAL} bytes");

    let growth_mib = (host.proc_kib("VmHWM").saturating_sub(hwm_before)) / 1024;
    eprintln!("peak RSS growth during a 64 MiB echo: {growth_mib} MiB");
    assert!(
        growth_mib < 16,
        "host peak RSS grew by {growth_mib} MiB for a 64 MiB echo: the body is being buffered"
    );
}
