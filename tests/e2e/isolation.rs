//! A fresh instance per request: guest failures stay inside their request,
//! and nothing a request leaves in guest memory reaches the next one, unless
//! the app opted into instance reuse.

use futures::future::join_all;

use serde_json::json;

use crate::harness::{Host, assert_schema, client, guest, wasm};

#[tokio::test]
async fn counter_answers_one_every_time() {
    counter_answers_one(&[]).await;
}

/// The other way to reset a memory slot (copy the kept part back from the
/// image whole, for interpreters) isolates requests just the same.
#[tokio::test]
async fn counter_answers_one_every_time_with_copy_reset() {
    counter_answers_one(&["--memory-reset", "copy", "--memory-keep-resident-mib", "16"]).await;
}

async fn counter_answers_one(args: &[&str]) {
    let host = Host::start(&guest("counter-guest"), args);
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

/// Instance reuse is opt-in per app: a stateless app's instance serves up
/// to `instance_reuse` requests (the counter goes on), then a fresh one
/// takes over; a trap drops the instance at once; other apps keep a fresh
/// instance per request.
#[tokio::test]
async fn instance_reuse_is_opt_in_and_a_trap_discards_the_instance() {
    let host = Host::start(&guest("guest"), &[]);
    let (status, app) = host
        .deploy(
            "reused",
            wasm("counter-guest"),
            json!({"route": "/reused", "instance_reuse": 3}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{app}");
    assert_schema(&app, "App");
    let (status, app) = host
        .deploy(
            "fresh",
            wasm("counter-guest"),
            json!({"route": "/fresh"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{app}");

    let http = client();
    let get = |path: &'static str| {
        let http = http.clone();
        let url = host.url(path);
        async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(get("/reused").await.1);
    }
    assert_eq!(seen, ["1", "2", "3", "1", "2", "3", "1"], "reuse cycle");
    for _ in 0..3 {
        assert_eq!(get("/fresh").await.1, "1", "reuse leaked into another app");
    }

    // The instance that served "1" traps on its next request ("2"): the
    // one after that starts from a fresh instance.
    let (status, _) = get("/reused/trap").await;
    assert_eq!(status, 500);
    assert_eq!(get("/reused").await.1, "1", "a trapped instance was reused");

    // Parallel requests each get an instance of their own.
    let parallel = join_all((0..40).map(|_| get("/reused"))).await;
    assert!(parallel.iter().all(|(s, _)| *s == 200), "{parallel:?}");

    for bad in [0, 100_001] {
        let (status, body) = host
            .deploy(
                "reused",
                wasm("counter-guest"),
                json!({"instance_reuse": bad}),
                None,
            )
            .await;
        assert_eq!(status, 400, "instance_reuse {bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("instance_reuse"),
            "{body}"
        );
    }
}
