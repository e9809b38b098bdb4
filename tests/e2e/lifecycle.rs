//! Graceful shutdown: SIGTERM stops accepting, lets in-flight requests
//! finish, and exits 0.

use std::time::Duration;

use futures::future::join_all;

use crate::harness::{Host, client, guest};

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_0() {
    let mut host = Host::start(&guest("slow-guest"), &["--drain-timeout-ms", "20000"]);
    let http = client();
    let in_flight = (0..5).map(|_| {
        let http = http.clone();
        let url = host.url("/?ms=1500");
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    });
    let in_flight = tokio::spawn(join_all(in_flight));
    tokio::time::sleep(Duration::from_millis(500)).await;

    host.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No longer accepting new connections.
    assert!(
        tokio::net::TcpStream::connect(host.addr).await.is_err(),
        "the listener is still accepting after SIGTERM"
    );

    for (status, body) in in_flight.await.unwrap() {
        assert_eq!(status, 200);
        assert_eq!(body, "slept 1500 ms\n");
    }
    let status = host
        .wait_exit(Duration::from_secs(20))
        .expect("host did not exit after draining");
    assert_eq!(status.code(), Some(0), "stderr:\n{}", host.stderr());
}

#[tokio::test]
async fn sigint_on_an_idle_host_exits_0() {
    let mut host = Host::start(&guest("guest"), &[]);
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
