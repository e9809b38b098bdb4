//! The fault suite: slowloris, header bombs, oversized and trickled bodies,
//! clients that vanish mid-response, rate limits. Loopback only, bounded in
//! connections, requests and time.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Host, client, guest, metric, wasm};

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

async fn latencies(url: &str, n: usize) -> Vec<Duration> {
    let http = client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let resp = http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        out.push(start.elapsed());
    }
    out
}

/// 500 connections trickle their headers while normal clients are served:
/// normal p99 stays under 10× its idle value, and the slow connections are
/// closed at the header timeout.
#[tokio::test]
async fn slowloris_does_not_starve_normal_clients() {
    let host = Host::start(&guest("guest"), &["--header-read-timeout-ms", "2000"]);
    let url = host.url("/");
    latencies(&url, 50).await; // warm up
    let idle = p99(latencies(&url, 300).await);

    let started = Instant::now();
    let slow: Vec<_> = (0..500)
        .map(|i| {
            let addr = host.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.ok()?;
                stream
                    .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .ok()?;
                // One header byte every 200 ms: never finishing, at most 15 s.
                for _ in 0..75 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream
                        .write_all(format!("X-{i}: y\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return Some(started.elapsed());
                    }
                }
                let mut buf = [0u8; 1024];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
                    _ => None,
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = p99(latencies(&url, 300).await);
    let bound = idle.max(Duration::from_millis(2)) * 10;
    eprintln!("p99 idle {idle:?}, under slowloris {loaded:?}");
    assert!(
        loaded < bound,
        "p99 under slowloris {loaded:?} is not under 10x idle ({idle:?})"
    );

    let mut closed = 0;
    for task in slow {
        if let Some(at) = task.await.unwrap() {
            assert!(
                at < Duration::from_secs(12),
                "a slow connection lived {at:?}"
            );
            closed += 1;
        }
    }
    assert_eq!(
        closed, 500,
        "every slow connection is closed at the header timeout"
    );
}

#[tokio::test]
async fn header_bombs_are_431() {
    let host = Host::start(&guest("guest"), &[]);
    let http = client();
    let resp = http
        .get(host.url("/"))
        .header("x-big", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("larger than 16384 bytes")
    );
    let mut many = http.get(host.url("/"));
    for i in 0..150 {
        many = many.header(format!("x-{i}"), "1");
    }
    let resp = many.send().await.unwrap();
    assert_eq!(resp.status(), 431);
    // Far past any limit: hyper refuses it at parse time.
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    let bomb = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Bomb: {}\r\n\r\n",
        "b".repeat(200_000)
    );
    let _ = stream.write_all(bomb.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let head = String::from_utf8_lossy(&response);
    assert!(
        head.is_empty() || head.starts_with("HTTP/1.1 431"),
        "{head}"
    );
    assert_eq!(http.get(host.url("/")).send().await.unwrap().status(), 200);
    let m = host.metrics().await;
    assert_eq!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "headers_too_large")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "too_many_headers")]
        ),
        1.0
    );
}

/// A body that stops arriving is cut off at the body timeout.
#[tokio::test]
async fn trickled_body_is_cut_off_at_the_timeout() {
    let host = Host::start(&guest("counter-guest"), &["--body-read-timeout-ms", "500"]);
    let (status, _) = host
        .deploy(
            "echo",
            wasm("guest"),
            serde_json::json!({"route": "/echo"}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the connection was not cut off");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "cut off before the timeout"
    );
    let text = String::from_utf8_lossy(&response);
    assert!(
        !text.contains(&"0123456789".repeat(2)),
        "the body was never completed: {text}"
    );
    let m = host.metrics().await;
    assert_eq!(
        metric(&m, "host_rejections_total", &[("reason", "body_timeout")]),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "host_requests_in_flight", &[]), 0.0);
}

/// Clients that hang up mid-response leak nothing: the in-flight gauge
/// returns to 0 and the host keeps serving.
#[tokio::test]
async fn disconnects_mid_response_leak_nothing() {
    let mut host = Host::start(&guest("guest"), &[]);
    for _ in 0..10 {
        let mut stream = TcpStream::connect(host.addr).await.unwrap();
        stream
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n")
            .await
            .unwrap();
        stream.write_all(&vec![7u8; 256 * 1024]).await.unwrap();
        let mut buf = vec![0u8; 16 * 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        drop(stream);
    }
    // Also hang up before the response head.
    let mut stream = TcpStream::connect(host.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n01")
        .await
        .unwrap();
    drop(stream);

    // The request ends a moment before its connection task does: wait
    // (bounded) for both gauges.
    let (mut in_flight, mut open) = (f64::NAN, f64::NAN);
    for _ in 0..200 {
        let m = host.metrics().await;
        in_flight = metric(&m, "host_requests_in_flight", &[]);
        open = metric(&m, "host_open_connections", &[]);
        if in_flight == 0.0 && open == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        in_flight, 0.0,
        "requests still counted in flight after their clients left"
    );
    assert_eq!(open, 0.0, "connections still open after their clients left");
    assert!(host.alive());
    assert_eq!(
        client().get(host.url("/")).send().await.unwrap().status(),
        200
    );
}

/// With a limit of N per second, a burst gets exactly N through (N+1 if a
/// token refills during the burst), the rest 429 with Retry-After.
#[tokio::test]
async fn rate_limits_are_exact_within_one_token() {
    let host = Host::start(&guest("guest"), &["--rate-limit-rps", "5"]);
    let http = client();
    let mut ok = 0;
    let mut limited = 0;
    let started = Instant::now();
    for _ in 0..20 {
        let resp = http.get(host.url("/")).send().await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
            }
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refills = (elapsed * 5.0).floor() as i32;
    assert!(
        (5..=6 + refills).contains(&ok),
        "{ok} passed in {elapsed:.2}s at 5/s"
    );
    assert_eq!(ok + limited, 20);

    let per_client = Host::start(&guest("guest"), &["--client-rate-limit-rps", "3"]);
    let mut ok = 0;
    let started = Instant::now();
    for _ in 0..10 {
        if http.get(per_client.url("/")).send().await.unwrap().status() == 200 {
            ok += 1;
        }
    }
    let refills = (started.elapsed().as_secs_f64() * 3.0).floor() as i32;
    assert!(
        (3..=4 + refills).contains(&ok),
        "{ok} passed at 3/s per client"
    );
    let m = per_client.metrics().await;
    assert_eq!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "rate_limited_client")]
        ),
        (10 - ok) as f64
    );
}

/// At `--max-connections`, a new connection waits until one closes.
#[tokio::test]
async fn connection_cap_holds_new_connections_until_one_closes() {
    let host = Host::start(&guest("guest"), &["--max-connections", "2"]);
    let first = TcpStream::connect(host.addr).await.unwrap();
    let second = TcpStream::connect(host.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    assert!(
        quick.get(host.url("/")).send().await.is_err(),
        "a third connection was served"
    );
    drop(first);
    let resp = client().get(host.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200, "served once a slot freed");
    drop(second);
}

/// An app's own `max_concurrent` answers 503 with Retry-After.
#[tokio::test]
async fn per_app_concurrency_cap_is_503() {
    let host = Host::bare(&[]);
    let (status, _) = host
        .deploy(
            "one",
            wasm("slow-guest"),
            serde_json::json!({"route": "/one", "max_concurrent": 1}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let url = host.url("/one?ms=1500");
    let slow =
        tokio::spawn(async move { client().get(url).send().await.unwrap().status().as_u16() });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = client().get(host.url("/one?ms=1")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("app is at its concurrency limit")
    );
    assert_eq!(slow.await.unwrap(), 200);
    let m = host.metrics().await;
    assert_eq!(
        metric(&m, "host_rejections_total", &[("reason", "app_busy")]),
        1.0
    );
}
