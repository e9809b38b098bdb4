//! Smaller edges found by trying the host as others would: the access log's
//! `completed`, our own 431 for every header violation hyper can parse, path
//! and host normalisation, the outbound filter's exemptions, the deploy
//! concurrency cap, and flags validated to sane ranges.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Host, client, guest, metric, start_failure_with, upstream, wasm};

/// The host's JSON log lines, once one matches `pred` (bounded wait).
async fn json_line(host: &Host, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = host
            .stderr()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| pred(l));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no such log line:\n{}",
            host.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_access_log_says_whether_the_response_was_fully_sent() {
    let host = Host::start(&guest("guest"), &["--log-format", "json"]);
    // HTTP/1.1 with a content-length: hyper stops polling after the
    // declared bytes, and that is a complete response.
    let resp = client()
        .get(host.url("/"))
        .header("x-request-id", "e2e-complete-h1")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("content-length"));
    resp.bytes().await.unwrap();
    let line = json_line(&host, |l| {
        l["target"] == "access" && l["request_id"] == "e2e-complete-h1"
    })
    .await;
    assert_eq!(line["completed"], true, "{line}");
    // HEAD: hyper sends no body, and that is complete too.
    let resp = client()
        .head(host.url("/"))
        .header("x-request-id", "e2e-complete-head")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let line = json_line(&host, |l| {
        l["target"] == "access" && l["request_id"] == "e2e-complete-head"
    })
    .await;
    assert_eq!(line["completed"], true, "{line}");

    // A streamed response the client abandons is not complete.
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nx-request-id: e2e-abandoned\r\nContent-Length: 8388608\r\n\r\n",
        )
        .await
        .unwrap();
    stream.write_all(&vec![1u8; 256 * 1024]).await.unwrap();
    let mut buf = vec![0u8; 16 * 1024];
    let _ = stream.read(&mut buf).await.unwrap();
    drop(stream);
    let line = json_line(&host, |l| {
        l["target"] == "access" && l["request_id"] == "e2e-abandoned"
    })
    .await;
    assert_eq!(line["completed"], false, "{line}");
}

/// A raw HTTP/1.1 request with `count` headers of `value_len` bytes each:
/// the response head and body.
async fn many_headers(host: &Host, count: usize, value_len: usize) -> String {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: x\r\nx-request-id: e2e-many\r\n");
    let value = "v".repeat(value_len);
    for i in 0..count {
        request.push_str(&format!("x-{i}: {value}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("the host answers")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn every_header_violation_hyper_can_parse_gets_our_431() {
    let host = Host::start(&guest("guest"), &[]);
    // Counts past our 100, up to hyper's own limit (2,048 headers).
    for count in [101, 200, 1000, 2040] {
        let response = many_headers(&host, count, 0).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{count}: {response}");
        assert!(
            response.contains("x-request-id: e2e-many"),
            "{count}: {response}"
        );
        assert!(
            response.contains("more than 100 headers"),
            "{count}: {response}"
        );
    }
    // Bare-LF header lines are the shortest hyper takes (3 bytes): up to
    // hyper's count limit (2,048) they still get our answer.
    let mut request = String::from("GET / HTTP/1.1\nHost: x\nx-request-id: e2e-lf\n");
    request.push_str(&"a:\n".repeat(2_000));
    request.push_str("Connection: close\n\n");
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("the host answers")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(response.contains("x-request-id: e2e-lf"), "{response}");
    // Sizes past our 16 KiB, within hyper's buffer.
    let response = many_headers(&host, 20, 1200).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    assert!(response.contains("larger than 16384 bytes"), "{response}");
    let m = host.metrics().await;
    assert_eq!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "too_many_headers")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "headers_too_large")]
        ),
        1.0
    );
    // Past hyper's buffer nothing can be parsed: hyper answers, and the
    // metric still counts it.
    let response = many_headers(&host, 1, 40_000).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431"),
        "{response}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(
        &host.metrics().await,
        "host_rejections_total",
        &[("reason", "head_too_large")],
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "hyper's own 431 was not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(status, x-app-name, body)` of a raw HTTP/1.1 GET with `target` sent
/// as is (no client-side normalisation) and `host_header`.
async fn raw_get(host: &Host, target: &str, host_header: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text[9..12].parse().unwrap();
    let app = text
        .lines()
        .find_map(|l| l.strip_prefix("x-app-name: "))
        .unwrap_or("-")
        .to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, app, body)
}

#[tokio::test]
async fn paths_and_host_names_are_normalised_before_routing() {
    let host = Host::start(&guest("guest"), &[]);
    let (status, _) = host
        .deploy(
            "private",
            wasm("counter-guest"),
            json!({"route": "/private"}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = host
        .deploy(
            "tenant",
            wasm("counter-guest"),
            json!({"route": "/", "host": "x.example.com"}),
            None,
        )
        .await;
    assert_eq!(status, 201);

    // Dot segments and doubled slashes are resolved: the request reaches the
    // app its normalised path names, and the app sees that path.
    for target in [
        "/private/../headers",
        "//headers",
        "/private/./..//headers",
        "/%68eaders",
    ] {
        let (status, app, body) = raw_get(&host, target, "h").await;
        assert_eq!((status, app.as_str()), (200, "default"), "{target}: {body}");
        let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(seen["path"], "/headers", "{target}");
    }
    let (_, app, _) = raw_get(&host, "/%70rivate", "h").await;
    assert_eq!(app, "private");
    // Encoded separators and broken escapes are refused, not guessed at.
    for target in ["/private%2F..%2Fheaders", "/a%5c..%5cprivate", "/x%zz"] {
        let (status, _, body) = raw_get(&host, target, "h").await;
        assert_eq!(status, 400, "{target}: {body}");
    }
    // A trailing dot names the same host.
    for name in ["x.example.com", "x.example.com.", "X.EXAMPLE.COM.:80"] {
        let (status, app, _) = raw_get(&host, "/", name).await;
        assert_eq!((status, app.as_str()), (200, "tenant"), "{name}");
    }
    let m = host.metrics().await;
    assert_eq!(
        metric(&m, "host_rejections_total", &[("reason", "bad_path")]),
        3.0
    );
}

#[tokio::test]
async fn a_listed_ip_exempts_only_itself_on_its_scheme_and_port() {
    let host = Host::bare(&[]);
    let up = upstream("private service\n").await;
    let port = up.port();
    // The IP is listed on another port; the name is allowed on this one.
    // The name resolves to loopback: it must stay blocked.
    let (status, body) = host
        .deploy(
            "f",
            wasm("fetch-guest"),
            json!({"route": "/f", "allow_outbound": [
                format!("http://localhost:{port}"),
                format!("http://127.0.0.1:{}", port.wrapping_add(1)),
                format!("https://[::1]:{port}"),
            ]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let get = |url: String| {
        let host = &host;
        async move {
            let resp = client()
                .get(host.url(&format!("/f?url={url}")))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = get(format!("http://localhost:{port}/")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let (status, body) = get(format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(status, 502);
    assert!(body.contains("HttpRequestDenied"), "{body}");
    // https to a bracketed IPv6 literal is attempted (nothing speaks TLS
    // there), not refused up front as an invalid certificate name.
    let (status, body) = get(format!("https://[::1]:{port}/")).await;
    assert_eq!(status, 502);
    assert!(!body.contains("TlsCertificateError"), "{body}");
    assert!(!body.contains("HttpRequestDenied"), "{body}");
}

#[tokio::test]
async fn deploys_are_capped_while_uploads_are_in_flight() {
    let host = Host::bare(&[]);
    // Two uploads that never finish hold both deploy slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(host.admin).await.unwrap();
        let head = format!(
            "POST /v1/apps/slow/versions HTTP/1.1\r\nHost: {}\r\n\
             Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"component\"; filename=\"a.wasm\"\r\n\r\n",
            host.admin
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&[0u8; 1000]).await.unwrap();
        slow.push(stream);
    }
    // Both are being read (the gauge says so) before a third one comes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&host.metrics().await, "host_deploys_in_progress", &[]) < 2.0 {
        assert!(Instant::now() < deadline, "the slow uploads never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = host
        .deploy("quick", wasm("counter-guest"), json!({"route": "/q"}), None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("deploys are already in progress")
    );
    // Reads and other changes are not blocked meanwhile.
    let (status, _) = host
        .admin(reqwest::Method::GET, "/v1/apps", None, None)
        .await;
    assert_eq!(status, 200);
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = host
            .deploy("quick", wasm("counter-guest"), json!({"route": "/q"}), None)
            .await;
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn flags_are_validated_to_sane_ranges_before_binding() {
    for (flag, value, message) in [
        (
            "--timeout-ms",
            "18446744073709551615",
            "--timeout-ms must be between 1 and 3600000",
        ),
        (
            "--max-upload-bytes",
            "18446744073709551615",
            "--max-upload-bytes must be between",
        ),
        (
            "--max-body-bytes",
            "18446744073709551615",
            "--max-body-bytes must be between",
        ),
        (
            "--body-read-timeout-ms",
            "0",
            "--body-read-timeout-ms must be between 1",
        ),
        (
            "--header-read-timeout-ms",
            "99999999999",
            "--header-read-timeout-ms must be between",
        ),
        (
            "--drain-timeout-ms",
            "18446744073709551615",
            "--drain-timeout-ms must be between",
        ),
        (
            "--compile-timeout-ms",
            "0",
            "--compile-timeout-ms must be between 1",
        ),
        (
            "--keep-versions",
            "100000",
            "--keep-versions must be between 1 and 1000",
        ),
        (
            "--max-connections",
            "0",
            "--max-connections must be between 1",
        ),
        (
            "--app-max-concurrent",
            "2000",
            "--app-max-concurrent must be between 1 and 1000",
        ),
        (
            "--memory-budget-mib",
            "0",
            "--memory-budget-mib must be between 1",
        ),
        (
            "--max-guest-resources",
            "1",
            "--max-guest-resources must be between 16",
        ),
        (
            "--max-core-instances-per-component",
            "0",
            "--max-core-instances-per-component must be between 1",
        ),
        (
            "--memory-keep-resident-mib",
            "2048",
            "--memory-keep-resident-mib must be between 0 and 1024",
        ),
        ("--memory-reset", "sometimes", "--memory-reset"),
        (
            "--instance-concurrency",
            "300",
            "--instance-concurrency must be between 1 and 256",
        ),
        ("--secret-env-prefix", "", "--secret-env-prefix"),
        (
            "--secrets-dir",
            "/surely/not/a/dir",
            "--secrets-dir /surely/not/a/dir cannot be opened",
        ),
    ] {
        let (status, stderr) = start_failure_with(&[flag, value]);
        assert!(!status.success(), "{flag} {value}");
        assert!(stderr.contains(message), "{flag} {value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{flag} {value}: {stderr}");
    }
    // Two engines' pools of 10,256 slots of 4 GiB do not fit the address
    // space: refused at start, not at the first WASI 0.3 deploy.
    let (status, stderr) = start_failure_with(&[
        "--max-concurrent",
        "10000",
        "--max-app-memory-mib",
        "4096",
        "--memory-budget-mib",
        "1048576",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("reserve 80 TiB of address space per engine")
            && stderr.contains("lower --max-concurrent or --max-app-memory-mib"),
        "{stderr}"
    );
    let (status, stderr) =
        start_failure_with(&["--memory-mib", "512", "--memory-budget-mib", "256"]);
    assert!(!status.success());
    assert!(
        stderr.contains("over an app's share of the guest memory"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_trickled_body_is_cut_at_the_default_minimum_rate() {
    // Defaults: 1024 bytes/s after a 5 s grace (--timeout-ms is 30 s).
    let host = Host::start(&guest("guest"), &[]);
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // A byte a second: never a pause of 30 s, far below 1024 bytes/s.
    let trickle = async {
        for _ in 0..40 {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(15), trickle).await;
    let took = started.elapsed();
    let m = host.metrics().await;
    assert_eq!(
        metric(&m, "host_rejections_total", &[("reason", "body_too_slow")]),
        1.0,
        "the trickle was not cut within {took:?}"
    );
}
