//! Deploying to a running host: deploy → curl, redeploy, rollback, delete,
//! canaries, every kind of rejected deploy, and the admin token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::join_all;
use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, Load, assert_schema, client, guest, start_failure_with, wasm};

/// GET `url`: (status, x-app-name, x-app-version, body).
async fn get(url: &str) -> (u16, String, String, String) {
    let resp = client().get(url).send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (app, version) = (header("x-app-name"), header("x-app-version"));
    (
        resp.status().as_u16(),
        app,
        version,
        resp.text().await.unwrap(),
    )
}

#[tokio::test]
async fn deploy_redeploy_rollback_and_delete_with_the_cli() {
    let host = Host::start(&guest("guest"), &[]);
    let counter = guest("counter-guest");
    let slow = guest("slow-guest");

    let out = host.cli(
        &[
            "deploy",
            counter.to_str().unwrap(),
            "--name",
            "hello",
            "--route",
            "/hello",
        ],
        &[],
    );
    assert!(out.success, "{}", out.stderr);
    let url = host.url("/hello");
    assert!(
        out.stdout.contains(&format!("serving at {url}")),
        "{}",
        out.stdout
    );
    let (status, app, v1, body) = get(&url).await;
    assert_eq!((status, app.as_str(), body.as_str()), (200, "hello", "1"));
    assert_eq!(v1.len(), 12);

    // Redeploy: the new version answers.
    let out = host.cli(
        &[
            "deploy",
            slow.to_str().unwrap(),
            "--name",
            "hello",
            "--json",
        ],
        &[],
    );
    assert!(out.success, "{}", out.stderr);
    let deployed: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_schema(&deployed, "App");
    let v2 = deployed["current_version"].as_str().unwrap().to_string();
    assert_ne!(v1, v2);
    let (status, _, version, body) = get(&host.url("/hello/x?ms=1")).await;
    assert_eq!(
        (status, version.as_str(), body.as_str()),
        (200, v2.as_str(), "slept 1 ms\n")
    );

    // Listing, human and JSON.
    let out = host.cli(&["apps"], &[]);
    assert!(
        out.stdout.contains("hello") && out.stdout.contains(&v2),
        "{}",
        out.stdout
    );
    let out = host.cli(&["apps", "hello"], &[]);
    assert!(
        out.stdout.contains(&v1) && out.stdout.contains(&v2),
        "{}",
        out.stdout
    );

    // Roll back to the previous version, then forward by name.
    let out = host.cli(&["rollback", "hello"], &[]);
    assert!(
        out.success && out.stdout.contains(&v1),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let (_, _, version, body) = get(&url).await;
    assert_eq!((version.as_str(), body.as_str()), (v1.as_str(), "1"));
    let out = host.cli(&["rollback", "hello", "--to", &v2[..6]], &[]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(get(&url).await.2, v2);

    // A server error is the server's message and a non-zero exit.
    let out = host.cli(&["rollback", "hello", "--to", "ffffff"], &[]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("has no version ffffff") && out.stderr.contains("HTTP 404"),
        "{}",
        out.stderr
    );

    // Delete: /hello falls back to the default app at `/`.
    let out = host.cli(&["remove", "hello"], &[]);
    assert!(out.success, "{}", out.stderr);
    let (status, app, _, _) = get(&url).await;
    assert_eq!((status, app.as_str()), (404, "default"));
    let (status, body) = host.admin(Method::GET, "/v1/apps/hello", None, None).await;
    assert_eq!(status, 404);
    assert_schema(&body, "Error");
}

#[tokio::test]
async fn canary_splits_traffic_by_weight_then_promotes() {
    let host = Host::bare(&[]);
    let (status, first) = host
        .deploy(
            "split",
            wasm("counter-guest"),
            json!({"route": "/split"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, second) = host
        .deploy("split", wasm("slow-guest"), json!({}), None)
        .await;
    assert_eq!(status, 201, "{second}");
    let (v1, v2) = (
        first["current_version"].as_str().unwrap(),
        second["current_version"].as_str().unwrap(),
    );
    // Back to v1 as current, v2 as a 30% canary.
    let (status, _) = host
        .admin(Method::POST, "/v1/apps/split/rollback", None, None)
        .await;
    assert_eq!(status, 200);
    let (status, app) = host
        .admin(
            Method::PUT,
            "/v1/apps/split/canary",
            Some(json!({"version": v2, "weight": 30})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{app}");
    assert_schema(&app, "App");
    assert_eq!(
        app["canary"],
        json!({"version": v2, "weight": 30, "sticky": false})
    );

    const N: usize = 2000;
    let canary_hits = Arc::new(AtomicUsize::new(0));
    let url = host.url("/split?ms=0");
    let workers = (0..16).map(|_| {
        let (url, hits, v2) = (url.clone(), canary_hits.clone(), v2.to_string());
        async move {
            let http = client();
            for _ in 0..N / 16 {
                let resp = http.get(&url).send().await.unwrap();
                assert_eq!(resp.status(), 200);
                if resp.headers()["x-app-version"] == v2.as_str() {
                    hits.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    join_all(workers).await;
    let share = canary_hits.load(Ordering::Relaxed) as f64 * 100.0 / N as f64;
    eprintln!("canary share at weight 30: {share:.1}%");
    assert!(
        (25.0..=35.0).contains(&share),
        "canary got {share:.1}% of requests at weight 30"
    );

    // Sticky: one key always lands on the same side.
    let (status, _) = host
        .admin(
            Method::PUT,
            "/v1/apps/split/canary",
            Some(json!({"version": v2, "weight": 50, "sticky": true})),
            None,
        )
        .await;
    assert_eq!(status, 200);
    for key in ["alice", "bob", "carol"] {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            let resp = client()
                .get(&url)
                .header("x-canary-key", key)
                .send()
                .await
                .unwrap();
            seen.insert(
                resp.headers()["x-app-version"]
                    .to_str()
                    .unwrap()
                    .to_string(),
            );
        }
        assert_eq!(seen.len(), 1, "sticky key {key} saw versions {seen:?}");
    }

    // Promote: every request is v2; the canary is gone.
    let (status, app) = host
        .admin(Method::POST, "/v1/apps/split/canary/promote", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(app["current_version"], v2);
    assert_eq!(app["canary"], serde_json::Value::Null);
    for _ in 0..20 {
        assert_eq!(get(&url).await.2, v2);
    }
    // Abort with no canary is a conflict; a canary on the current version too.
    let (status, body) = host
        .admin(Method::DELETE, "/v1/apps/split/canary", None, None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = host
        .admin(
            Method::PUT,
            "/v1/apps/split/canary",
            Some(json!({"version": v2, "weight": 10})),
            None,
        )
        .await;
    assert_eq!(status, 409);
    // Abort a real canary: back to current only.
    host.admin(
        Method::PUT,
        "/v1/apps/split/canary",
        Some(json!({"version": v1, "weight": 100})),
        None,
    )
    .await;
    assert_eq!(get(&url).await.2, v1);
    let (status, _) = host
        .admin(Method::DELETE, "/v1/apps/split/canary", None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(get(&url).await.2, v2);
}

#[tokio::test]
async fn rejected_deploys_explain_why_and_change_nothing() {
    let host = Host::start(
        &guest("guest"),
        &[
            "--max-upload-bytes",
            "200000",
            "--secret-env-prefix",
            "E2E_",
        ],
    );
    let (status, good) = host
        .deploy("app", wasm("counter-guest"), json!({"route": "/app"}), None)
        .await;
    assert_eq!(status, 201, "{good}");
    let version = good["current_version"].as_str().unwrap().to_string();

    let core = wat::parse_str("(module)").unwrap();
    let no_export = wat::parse_str("(component)").unwrap();
    let bad_import = wat::parse_str(
        r#"(component
             (import "acme:missing/thing@1.0.0" (instance (export "poke" (func))))
             (instance $h)
             (export "wasi:http/incoming-handler@0.2.12" (instance $h)))"#,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, serde_json::Value, u16, &str)> = vec![
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            json!({}),
            422,
            "not a WebAssembly binary",
        ),
        (
            "core module",
            core,
            json!({}),
            422,
            "core WebAssembly module",
        ),
        (
            "no export",
            no_export,
            json!({}),
            422,
            "does not export `wasi:http/incoming-handler`",
        ),
        (
            "missing import",
            bad_import,
            json!({}),
            422,
            "acme:missing/thing@1.0.0",
        ),
        (
            "too large",
            vec![0u8; 300_000],
            json!({}),
            413,
            "larger than the limit of 200000 bytes",
        ),
        (
            "bad setting",
            wasm("slow-guest"),
            json!({"memory_mib": 0}),
            400,
            "memory_mib",
        ),
        (
            "unknown setting",
            wasm("slow-guest"),
            json!({"memroy_mib": 1}),
            400,
            "unknown field",
        ),
        (
            "bad outbound",
            wasm("slow-guest"),
            json!({"allow_outbound": ["example.com"]}),
            400,
            "outbound pattern",
        ),
        (
            "missing secret",
            wasm("slow-guest"),
            json!({"secrets": {"K": "env:E2E_SURELY_UNSET"}}),
            400,
            "E2E_SURELY_UNSET is not set",
        ),
        (
            "route of another app",
            wasm("slow-guest"),
            json!({"route": "/"}),
            409,
            "already served by app default",
        ),
    ];
    for (what, bytes, settings, expected, reason) in cases {
        let (status, body) = host.deploy("app", bytes, settings, None).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert_schema(&body, "Error");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(reason),
            "{what}: {message:?} lacks {reason:?}"
        );
        // The old version still answers.
        let (status, _, v, body) = get(&host.url("/app")).await;
        assert_eq!(
            (status, v.as_str(), body.as_str()),
            (200, version.as_str(), "1"),
            "after {what}"
        );
    }

    // Names, first deploys and static apps.
    let (status, body) = host
        .deploy("Bad_Name", wasm("slow-guest"), json!({"route": "/x"}), None)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = host
        .deploy("fresh", wasm("slow-guest"), json!({}), None)
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("needs a route"));
    let (status, body) = host
        .deploy("default", wasm("slow-guest"), json!({"route": "/d"}), None)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = host
        .admin(Method::DELETE, "/v1/apps/default", None, None)
        .await;
    assert_eq!(status, 409);
    let (_, apps) = host.admin(Method::GET, "/v1/apps", None, None).await;
    assert_eq!(apps["apps"].as_array().unwrap().len(), 2, "{apps}");
}

#[tokio::test]
async fn compile_over_the_time_bound_is_rejected() {
    let host = Host::start(&guest("guest"), &["--compile-timeout-ms", "1"]);
    // A component this host has never compiled (the default app's code
    // would be found in its cache).
    let (status, body) = host
        .deploy(
            "slowbuild",
            wasm("fetch-guest"),
            json!({"route": "/s"}),
            None,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("longer than the limit of 1 ms")
    );
    assert_eq!(
        get(&host.url("/s")).await.1,
        "default",
        "nothing was deployed"
    );
}

#[tokio::test]
async fn wrong_or_missing_token_is_401_and_changes_nothing() {
    const TOKEN: &str = "e2e-admin-token-0123456789";
    let state = crate::harness::TempDir::new("auth");
    let component = guest("guest");
    let host = Host::start_in(
        &state.0,
        &[component.to_str().unwrap()],
        &[("HOST_ADMIN_TOKEN", TOKEN)],
    );
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, body) = host
            .deploy(
                "app",
                wasm("counter-guest"),
                json!({"route": "/app"}),
                token,
            )
            .await;
        assert_eq!(status, 401, "{body}");
        assert_schema(&body, "Error");
        let (status, _) = host.admin(Method::GET, "/v1/apps", None, token).await;
        assert_eq!(status, 401);
        let (status, _) = host
            .admin(Method::DELETE, "/v1/apps/default", None, token)
            .await;
        assert_eq!(status, 401);
    }
    let (status, apps) = host.admin(Method::GET, "/v1/apps", None, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(
        apps["apps"].as_array().unwrap().len(),
        1,
        "nothing was deployed: {apps}"
    );
    assert_eq!(get(&host.url("/app")).await.1, "default");
    let (status, _) = host
        .deploy(
            "app",
            wasm("counter-guest"),
            json!({"route": "/app"}),
            Some(TOKEN),
        )
        .await;
    assert_eq!(status, 201);
    // The CLI takes the token from HOST_ADMIN_TOKEN.
    let out = host.cli(&["apps"], &[]);
    assert!(
        !out.success && out.stderr.contains("HTTP 401"),
        "{}",
        out.stderr
    );
    let out = host.cli(&["apps"], &[("HOST_ADMIN_TOKEN", TOKEN)]);
    assert!(out.success && out.stdout.contains("app"), "{}", out.stderr);
}

#[test]
fn admin_api_without_a_token_refuses_a_non_loopback_address() {
    let (status, stderr) =
        start_failure_with(&["--admin-listen", "0.0.0.0:0", "--listen", "127.0.0.1:0"]);
    assert!(!status.success());
    assert!(stderr.contains("without a token"), "{stderr}");
}

/// 20 deploys and 20 rollbacks while a load loop runs: not one request fails.
#[tokio::test]
async fn deploys_and_rollbacks_under_load_drop_nothing() {
    let host = Host::bare(&[]);
    let (status, _) = host
        .deploy(
            "live",
            wasm("counter-guest"),
            json!({"route": "/live"}),
            None,
        )
        .await;
    assert_eq!(status, 201);

    let load = Load::start(vec![host.url("/live?ms=0")], 8);

    for i in 0..20 {
        let name = if i % 2 == 0 {
            "slow-guest"
        } else {
            "counter-guest"
        };
        let (status, body) = host.deploy("live", wasm(name), json!({}), None).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = host
            .admin(Method::POST, "/v1/apps/live/rollback", None, None)
            .await;
        assert_eq!(status, 200, "{body}");
    }
    load.stop_without_failures("during 20 deploys and 20 rollbacks")
        .await;
}
