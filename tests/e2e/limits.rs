//! Request limits: deadlines on CPU and on waiting, the body cap, the
//! concurrency cap.

use std::time::{Duration, Instant};

use futures::future::join_all;

use crate::harness::{Host, client, guest};

/// A guest spinning forever is cut off at the deadline (504) while other
/// requests to the same host keep succeeding.
#[tokio::test]
async fn infinite_loop_is_504_within_the_timeout_and_others_still_work() {
    const TIMEOUT_MS: u64 = 2000;
    let mut host = Host::start(
        &guest("spin-guest"),
        &["--timeout-ms", &TIMEOUT_MS.to_string()],
    );
    let http = client();

    let spinning = (0..2).map(|_| {
        let http = http.clone();
        let url = host.url("/spin");
        async move {
            let start = Instant::now();
            let status = http.get(url).send().await.unwrap().status().as_u16();
            (status, start.elapsed())
        }
    });
    let spinning = tokio::spawn(join_all(spinning));

    // While both spin (one per core on CI), short requests keep being served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let resp = http.get(host.url("/ok")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    for (status, elapsed) in spinning.await.unwrap() {
        assert_eq!(status, 504);
        assert!(
            elapsed < Duration::from_millis(TIMEOUT_MS + 1000),
            "504 came after {elapsed:?}, past timeout + 1 s"
        );
    }
    assert!(host.alive());
    host.log_with(&["guest exceeded its deadline"]);
}

/// A guest that waits (no CPU) past the deadline is cut off too.
#[tokio::test]
async fn waiting_guest_is_504_at_the_timeout() {
    let host = Host::start(&guest("slow-guest"), &["--timeout-ms", "500"]);
    let http = client();
    let resp = http.get(host.url("/?ms=60000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let resp = http.get(host.url("/?ms=10")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slept 10 ms\n");
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let host = Host::start(&guest("guest"), &["--max-body-bytes", "1024"]);
    let http = client();
    let resp = http
        .post(host.url("/echo"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert!(resp.text().await.unwrap().contains("1024 bytes"));
    // At the limit is fine.
    let resp = http
        .post(host.url("/echo"))
        .body(vec![b'y'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 1024);
}

/// Over `--max-concurrent`, requests are refused at once with 503.
#[tokio::test]
async fn over_the_concurrency_cap_is_503() {
    let host = Host::start(
        &guest("slow-guest"),
        &["--max-concurrent", "2", "--app-max-concurrent", "2"],
    );
    let http = client();
    let slow = (0..2).map(|_| {
        let http = http.clone();
        let url = host.url("/?ms=3000");
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    });
    let slow = tokio::spawn(join_all(slow));
    tokio::time::sleep(Duration::from_millis(700)).await;

    let refused = http.get(host.url("/?ms=1")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), vec![200, 200]);
    // Capacity is back once they finish.
    assert_eq!(
        http.get(host.url("/?ms=1")).send().await.unwrap().status(),
        200
    );
}
