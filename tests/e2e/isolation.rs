//! A fresh instance per request: guest failures stay inside their request,
//! and nothing a request leaves in guest memory reaches the next one.

use futures::future::join_all;

use crate::harness::{Host, client, guest};

#[tokio::test]
async fn counter_answers_one_every_time() {
    let host = Host::start(&guest("counter-guest"), &[]);
    let http = client();
    for _ in 0..20 {
        let body = http
            .get(host.url("/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "1", "guest state leaked between requests");
    }
    let parallel = join_all((0..50).map(|_| {
        let http = http.clone();
        let url = host.url("/");
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    }))
    .await;
    assert!(
        parallel.iter().all(|b| b == "1"),
        "state leaked: {parallel:?}"
    );
}

#[tokio::test]
async fn trap_is_500_and_the_next_request_is_fine() {
    let mut host = Host::start(&guest("trap-guest"), &[]);
    let http = client();
    let trap = http.get(host.url("/trap")).send().await.unwrap();
    assert_eq!(trap.status(), 500);
    let body = trap.text().await.unwrap();
    assert!(body.contains("the app failed"), "{body}");
    assert!(
        !body.contains("unreachable"),
        "error body leaks internals: {body}"
    );
    let ok = http.get(host.url("/ok")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(host.alive());
    assert!(
        !host.log_with(&["guest trapped"]).is_empty(),
        "the cause is logged"
    );
}

#[tokio::test]
async fn fifty_traps_do_not_disturb_fifty_good_requests() {
    let host = Host::start(&guest("trap-guest"), &[]);
    let http = client();
    let requests = (0..100).map(|i| {
        let http = http.clone();
        let url = host.url(if i % 2 == 0 { "/ok" } else { "/trap" });
        async move {
            (
                i % 2 == 0,
                http.get(url).send().await.unwrap().status().as_u16(),
            )
        }
    });
    let results = join_all(requests).await;
    let good: Vec<u16> = results.iter().filter(|r| r.0).map(|r| r.1).collect();
    let bad: Vec<u16> = results.iter().filter(|r| !r.0).map(|r| r.1).collect();
    assert_eq!(good, vec![200; 50]);
    assert_eq!(bad, vec![500; 50]);
}

#[tokio::test]
async fn memory_hog_is_stopped_and_the_host_survives() {
    let mut host = Host::start(&guest("memhog-guest"), &["--memory-mib", "32"]);
    let http = client();
    let hog = http.get(host.url("/hog")).send().await.unwrap();
    assert_eq!(hog.status(), 500);
    assert!(hog.text().await.unwrap().contains("memory limit"));
    assert!(host.alive());
    assert_eq!(
        http.get(host.url("/ok")).send().await.unwrap().status(),
        200
    );
    // Again, to show the pool slot came back clean.
    assert_eq!(
        http.get(host.url("/hog")).send().await.unwrap().status(),
        500
    );
    assert_eq!(
        http.get(host.url("/ok")).send().await.unwrap().status(),
        200
    );
    host.log_with(&["guest hit its memory limit"]);
}

#[tokio::test]
async fn unbounded_recursion_is_500_even_200_at_once() {
    let mut host = Host::start(&guest("recurse-guest"), &[]);
    let http = client();
    let statuses = join_all((0..200).map(|_| {
        let http = http.clone();
        let url = host.url("/recurse");
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    }))
    .await;
    assert_eq!(statuses, vec![500; 200]);
    assert!(host.alive());
    assert_eq!(
        http.get(host.url("/ok")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn returning_without_a_response_is_500() {
    let host = Host::start(&guest("noresponse-guest"), &[]);
    let http = client();
    let resp = http.get(host.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("without sending a response")
    );
    assert_eq!(
        http.get(host.url("/ok")).send().await.unwrap().status(),
        200
    );
}
