//! Graceful shutdown: SIGTERM turns readiness false, the listeners stop
//! accepting after the shutdown delay, in-flight requests finish, exit 0.

use std::time::Duration;

use futures::future::join_all;

use crate::harness::{Host, client, guest};

#[tokio::test]
async fn sigterm_drains_not_ready_then_closed_then_exit_0() {
    let mut host = Host::start(
        &guest("slow-guest"),
        &["--drain-timeout-ms", "20000", "--shutdown-delay-ms", "800"],
    );
    let http = client();
    let ready = http.get(host.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let in_flight = (0..5).map(|_| {
        let http = http.clone();
        let url = host.url("/?ms=2000");
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    });
    let in_flight = tokio::spawn(join_all(in_flight));
    tokio::time::sleep(Duration::from_millis(400)).await;

    host.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Readiness goes false at once, while the host still serves.
    let ready = http.get(host.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let live = http.get(host.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);

    // After the delay, no longer accepting new connections.
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(host.addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(closed, "the listener still accepts 5 s after SIGTERM");

    for (status, body) in in_flight.await.unwrap() {
        assert_eq!(status, 200);
        assert_eq!(body, "slept 2000 ms\n");
    }
    let status = host
        .wait_exit(Duration::from_secs(20))
        .expect("host did not exit after draining");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", host.stderr());
}

#[tokio::test]
async fn sigint_on_an_idle_host_exits_0() {
    let mut host = Host::start(&guest("guest"), &["--shutdown-delay-ms", "0"]);
    assert_eq!(
        client().get(host.url("/")).send().await.unwrap().status(),
        200
    );
    host.signal(libc::SIGINT);
    let status = host
        .wait_exit(Duration::from_secs(20))
        .expect("host did not exit");
    assert_eq!(status.code(), Some(0));
}
