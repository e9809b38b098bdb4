//! Restarts: every deployed app comes back at its current version and canary
//! weights from the precompiled cache, without recompiling; a corrupt cache
//! entry is recompiled and a corrupt record is skipped.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, client, wasm};

/// The `key=N` field of the host's "restored deployed apps" log line.
fn restored(stderr: &str, key: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.contains("restored deployed apps"))
        .unwrap_or_else(|| panic!("no restore line in:\n{stderr}"));
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"));
    field.parse().unwrap()
}

async fn version_of(host: &Host, path: &str) -> (u16, String) {
    let resp = client().get(host.url(path)).send().await.unwrap();
    let v = resp
        .headers()
        .get("x-app-version")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (resp.status().as_u16(), v)
}

#[tokio::test]
async fn restart_restores_every_app_from_the_cache() {
    let state = TempDir::new("restart");
    let mut host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    for (name, route, component) in [
        ("a", "/a", "counter-guest"),
        ("b", "/b", "slow-guest"),
        ("c", "/c", "guest"),
    ] {
        let (status, body) = host
            .deploy(name, wasm(component), json!({"route": route}), None)
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // b gets a second version and a 25% canary back to its first.
    let (_, first_b) = host.admin(Method::GET, "/v1/apps/b", None, None).await;
    let b1 = first_b["current_version"].as_str().unwrap().to_string();
    let (status, _) = host
        .deploy("b", wasm("counter-guest"), json!({}), None)
        .await;
    assert_eq!(status, 201);
    let (status, _) = host
        .admin(
            Method::PUT,
            "/v1/apps/b/canary",
            Some(json!({"version": b1, "weight": 25, "sticky": true})),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, mut before) = host.admin(Method::GET, "/v1/apps", None, None).await;

    host.signal(libc::SIGTERM);
    assert_eq!(
        host.wait_exit(std::time::Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    drop(host);

    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let log = host.log_with(&["restored deployed apps"]);
    assert_eq!(restored(&log, "apps"), 3, "{log}");
    assert_eq!(
        restored(&log, "from_cache"),
        4,
        "current versions and the canary, all from cache: {log}"
    );
    assert_eq!(restored(&log, "compiled"), 0, "{log}");
    let (_, mut after) = host.admin(Method::GET, "/v1/apps", None, None).await;
    // The public port differs between runs, and with it each app's URL.
    for listing in [&mut before, &mut after] {
        for app in listing["apps"].as_array_mut().unwrap() {
            app.as_object_mut().unwrap().remove("url");
        }
    }
    assert_eq!(
        before, after,
        "apps, versions and canary weights survive a restart"
    );
    for (path, status) in [("/a", 200), ("/b?ms=0", 200), ("/c", 404)] {
        let (got, version) = version_of(&host, path).await;
        assert_eq!(
            got, status,
            "{path} (the default guest at /c answers 404 itself)"
        );
        assert_eq!(version.len(), 12, "{path} is served by a deployed app");
    }
}

#[tokio::test]
async fn corrupt_cache_is_recompiled_and_a_corrupt_record_is_skipped() {
    let state = TempDir::new("corrupt");
    let mut host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    for (name, component) in [
        ("one", "counter-guest"),
        ("two", "slow-guest"),
        ("three", "guest"),
    ] {
        let (status, _) = host
            .deploy(
                name,
                wasm(component),
                json!({"route": format!("/{name}")}),
                None,
            )
            .await;
        assert_eq!(status, 201);
    }
    host.signal(libc::SIGTERM);
    host.wait_exit(std::time::Duration::from_secs(20))
        .expect("host exits");
    drop(host);

    // Flip bytes in one cache entry; garble one record.
    let (_, two) = {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(state.0.join("apps/two.json")).unwrap()).unwrap();
        (
            (),
            record["versions"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let cache = std::fs::read_dir(state.0.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(&two))
        .expect("cache entry for app two");
    let mut bytes = std::fs::read(&cache).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&cache, bytes).unwrap();
    std::fs::write(state.0.join("apps/three.json"), b"{ not json").unwrap();

    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let log = host.log_with(&["restored deployed apps", "fails its checksum", "three.json"]);
    assert_eq!(restored(&log, "apps"), 2, "{log}");
    assert_eq!(restored(&log, "from_cache"), 1, "{log}");
    assert_eq!(restored(&log, "compiled"), 1, "{log}");
    assert_eq!(restored(&log, "failed"), 1, "{log}");
    assert!(log.contains("fails its checksum"), "{log}");
    assert!(log.contains("three.json"), "the bad record is named: {log}");
    assert_eq!(version_of(&host, "/one").await.0, 200);
    assert_eq!(version_of(&host, "/two?ms=0").await.0, 200);
    assert_eq!(version_of(&host, "/three").await.0, 404);
}
