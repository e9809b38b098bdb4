//! Operators' mistakes lose nothing and do not stop the host: a restart
//! without a secret keeps the skipped app's code, an app named `default`
//! never blocks a restart, per-app memory is applied or refused (never
//! silently capped), the guest memory budget holds host-wide, failed apps
//! show in `/readyz`, a signal during startup exits 0, and the CLI ends
//! quietly on a closed pipe.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, client, guest, host_bin, metric, wasm};

/// Every file under `dir/sub`.
fn files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join(sub))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

fn named(dir: &Path, digest: &str) -> usize {
    ["components", "cache"]
        .iter()
        .flat_map(|sub| files(dir, sub))
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(digest))
        .count()
}

async fn stop(mut host: Host) {
    host.signal(libc::SIGTERM);
    host.wait_exit(Duration::from_secs(20)).expect("host exits");
}

#[tokio::test]
async fn a_skipped_app_keeps_its_code_and_comes_back() {
    let state = TempDir::new("gc-skip");
    let prefix = ["--no-default-app", "--secret-env-prefix", "E2E_GC_"];
    let host = Host::start_in(&state.0, &prefix, &[("E2E_GC_KEY", "v")]);
    let (status, body) = host
        .deploy(
            "a",
            wasm("config-guest"),
            json!({"route": "/a", "secrets": {"K": "env:E2E_GC_KEY"}}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let digest = body["versions"][0]["digest"].as_str().unwrap().to_string();
    stop(host).await;

    // Restart without the secret: `a` is skipped, listed as failed, and the
    // host is still ready (one bad app must not take a fleet out).
    let host = Host::start_in(&state.0, &prefix, &[]);
    let ready = client()
        .get(host.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("app a is not served") && text.contains("E2E_GC_KEY"),
        "{text}"
    );
    assert_eq!(metric(&host.metrics().await, "host_apps_failed", &[]), 1.0);
    let (_, listed) = host.admin(Method::GET, "/v1/apps/a", None, None).await;
    assert!(
        listed["failed"].as_str().unwrap().contains("E2E_GC_KEY"),
        "{listed}"
    );
    let resp = client().get(host.url("/a")).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Deploys and removals run the garbage collector; it must keep `a`'s code.
    let (status, b) = host
        .deploy("b", wasm("counter-guest"), json!({"route": "/b"}), None)
        .await;
    assert_eq!(status, 201);
    let b_digest = b["versions"][0]["digest"].as_str().unwrap().to_string();
    let (status, _) = host.admin(Method::DELETE, "/v1/apps/b", None, None).await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while named(&state.0, &b_digest) > 0 {
        assert!(Instant::now() < deadline, "b's files were never collected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(named(&state.0, &digest), 2, "a's component and cache entry");
    assert!(state.0.join("apps/a.json").is_file());
    stop(host).await;

    // The secret is back: so is `a`.
    let host = Host::start_in(&state.0, &prefix, &[("E2E_GC_KEY", "v")]);
    let resp = client().get(host.url("/a?secret=K")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["secret"]["set"], true);
    assert_eq!(metric(&host.metrics().await, "host_apps_failed", &[]), 0.0);
}

#[tokio::test]
async fn an_app_named_default_never_blocks_a_restart() {
    let state = TempDir::new("default-name");
    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let (status, _) = host
        .deploy("root", wasm("counter-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201);
    // The name is reserved for the default guest...
    let (status, body) = host
        .deploy(
            "default",
            wasm("counter-guest"),
            json!({"route": "/d"}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("reserved"),
        "{body}"
    );
    stop(host).await;

    // ...but a state directory from before that rule may hold one: the
    // issue's sequence (deploy `default` at /d, remove `root`) then restart.
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.0.join("apps/root.json")).unwrap()).unwrap();
    record["name"] = json!("default");
    record["route"] = json!({"prefix": "/d"});
    std::fs::write(
        state.0.join("apps/default.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(state.0.join("apps/root.json")).unwrap();
    for _ in 0..2 {
        // A normal start (the implicit default guest wanted at `/`), twice.
        let host = Host::start_in(&state.0, &[], &[]);
        let d = client().get(host.url("/d")).send().await.unwrap();
        assert_eq!(d.status(), 200);
        assert_eq!(d.headers()["x-app-name"], "default");
        stop(host).await;
    }
    let host = Host::start_in(&state.0, &[], &[]);
    host.log_with(&["a deployed app is named `default`"]);
}

#[tokio::test]
async fn per_app_memory_is_applied_up_to_the_ceiling_and_refused_above() {
    let host = Host::bare(&["--memory-mib", "32", "--max-app-memory-mib", "256"]);
    let (status, body) = host
        .deploy(
            "hog",
            wasm("memhog-guest"),
            json!({"route": "/", "memory_mib": 96}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["versions"][0]["settings"]["memory_mib"], 96);
    // 64 MiB is over the host default but within the app's 96: it works.
    let held = client()
        .get(host.url("/hold?mib=64&ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        held.status(),
        200,
        "the app's own limit applies, not the host's 32 MiB"
    );
    let hog = client().get(host.url("/hog")).send().await.unwrap();
    assert_eq!(hog.status(), 500);
    let log = host.log_with(&["guest hit its memory limit"]);
    assert!(
        log.contains(&format!("{}", 96u64 << 20)),
        "capped at 96 MiB: {log}"
    );
    let m = host.metrics().await;
    assert_eq!(
        metric(
            &m,
            "host_guest_failures_total",
            &[("app", "hog"), ("kind", "memory_limit")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "host_guest_failures_total",
            &[("app", "hog"), ("kind", "trap")]
        ),
        0.0
    );
    // Over the ceiling: refused, naming it.
    let (status, body) = host
        .deploy(
            "hog",
            wasm("memhog-guest"),
            json!({"memory_mib": 512}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("256") && message.contains("--max-app-memory-mib"),
        "{message}"
    );
}

#[tokio::test]
async fn the_guest_memory_budget_holds_across_instances() {
    // A small host-side reserve per instance (16 × 24 KiB + 64 KiB), so
    // the budget is about linear memory here.
    let host = Host::bare(&[
        "--memory-mib",
        "40",
        "--memory-budget-mib",
        "64",
        "--max-guest-resources",
        "16",
        "--max-outbound-per-instance",
        "1",
    ]);
    let (status, body) = host
        .deploy("hog", wasm("memhog-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    // One instance holds ~36 MiB for a while...
    let holder = tokio::spawn({
        let url = host.url("/hold?mib=36&ms=4000");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    // 36 blocks of 1 MiB plus the guest's own heap: all allocated at 37 MiB.
    while metric(&host.metrics().await, "host_guest_memory_bytes", &[]) < (37u64 << 20) as f64 {
        assert!(
            Instant::now() < deadline,
            "the holder never charged its memory"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...so another that wants as much does not fit in 64 MiB: 503, not a
    // host that grows past what the operator allowed.
    let second = client()
        .get(host.url("/hold?mib=36&ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    assert!(second.text().await.unwrap().contains("out of memory"));
    assert_eq!(holder.await.unwrap(), 200);
    // Once it is done (its store dropped, which can come just after the
    // client has read the answer), the memory is back.
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    let again = client()
        .get(host.url("/hold?mib=36&ms=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let m = host.metrics().await;
    assert_eq!(
        metric(&m, "host_rejections_total", &[("reason", "memory_budget")]),
        1.0
    );
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    // A single app can never ask for more than the budget.
    let (status, body) = host
        .deploy(
            "big",
            wasm("memhog-guest"),
            json!({"route": "/big", "memory_mib": 100}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("--memory-budget-mib")
    );
}

#[tokio::test]
async fn a_signal_during_startup_stops_it_and_exits_0() {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("early-signal");
    let mut manifest = String::new();
    for name in [
        "guest",
        "trap-guest",
        "spin-guest",
        "memhog-guest",
        "recurse-guest",
        "slow-guest",
        "counter-guest",
        "config-guest",
        "fetch-guest",
        "chatty-guest",
    ] {
        manifest.push_str(&format!(
            "[[app]]\nname = \"{name}\"\ncomponent = \"{}\"\nroute = \"/{name}\"\n\n",
            guest(name).display()
        ));
    }
    let path = dir.write("apps.toml", manifest.as_bytes());
    let mut child = Command::new(host_bin())
        .args(["serve", "--no-default-app", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--manifest")
        .arg(&path)
        .arg("--state-dir")
        .arg(dir.0.join("state"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Alive (the admin API is up) but still loading.
    let http = client();
    let mut loading = false;
    for _ in 0..4000 {
        if let Ok(r) = http.get(format!("http://{admin}/readyz")).send().await {
            loading = r.status() == 503;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // No change is taken while the apps on disk load: it could not know
    // what it replaces, and the collector could not know what they name.
    let form = reqwest::multipart::Form::new()
        .part("component", reqwest::multipart::Part::bytes(wasm("guest")))
        .part(
            "settings",
            reqwest::multipart::Part::text(r#"{"route":"/early"}"#),
        );
    let early = http
        .post(format!("http://{admin}/v1/apps/early/versions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let early_status = early.status().as_u16();
    let early_body = early.text().await.unwrap();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                return child.wait_with_output().unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "the host did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "exit status; stderr:\n{stderr}"
    );
    assert!(
        loading,
        "the ten apps were loaded before the signal could be sent"
    );
    assert_eq!(early_status, 503, "{early_body}");
    assert!(early_body.contains("still loading"), "{early_body}");
    assert!(
        stderr.contains("shutdown requested during startup"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("Serving HTTP"));
}

#[tokio::test]
async fn the_cli_ends_quietly_on_a_closed_pipe() {
    let host = Host::bare(&[]);
    for name in ["one", "two", "three"] {
        let (status, _) = host
            .deploy(
                name,
                wasm("counter-guest"),
                json!({"route": format!("/{name}")}),
                None,
            )
            .await;
        assert_eq!(status, 201);
    }
    // A pipe whose reader is already gone, as with `host apps | head -0`.
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors we then own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: closing the read end we own.
    unsafe { libc::close(fds[0]) };
    // SAFETY: the write end is ours and handed to the child only.
    let writer = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
    for args in [&["apps"][..], &["apps", "--json"], &["apps", "one"]] {
        let output = Command::new(host_bin())
            .args(args)
            .args(["--server", &host.admin_url("")])
            .stdout(writer.try_clone().unwrap())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_restart_with_lower_ceilings_refuses_what_it_cannot_apply() {
    let state = TempDir::new("ceilings");
    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let (status, body) = host
        .deploy(
            "big",
            wasm("memhog-guest"),
            json!({"route": "/big", "memory_mib": 256}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    stop(host).await;
    // The same state on a host whose slots hold 128 MiB: `big` is not
    // silently capped at 128, it is not served, and says why.
    let host = Host::start_in(
        &state.0,
        &["--no-default-app", "--max-app-memory-mib", "128"],
        &[],
    );
    let ready = client()
        .get(host.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("app big is not served") && text.contains("memory_mib"),
        "{text}"
    );
    let resp = client().get(host.url("/big/ok")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn removing_a_failed_app_keeps_the_static_app_of_the_same_name() {
    let state = TempDir::new("shadow");
    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let (status, _) = host
        .deploy("api", wasm("counter-guest"), json!({"route": "/api"}), None)
        .await;
    assert_eq!(status, 201);
    stop(host).await;
    let manifest = state.write(
        "apps.toml",
        format!(
            "[[app]]\nname = \"api\"\ncomponent = \"{}\"\nroute = \"/m\"\n",
            guest("counter-guest").display()
        )
        .as_bytes(),
    );
    let host = Host::start_in(
        &state.0,
        &["--no-default-app", "--manifest", manifest.to_str().unwrap()],
        &[],
    );
    let ready = client()
        .get(host.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    let text = ready.text().await.unwrap();
    assert!(
        text.contains("app api is not served")
            && text.contains("also declared on the command line or in the manifest"),
        "{text}"
    );
    // The record on disk can be removed; the static app keeps serving.
    let (status, body) = host.admin(Method::DELETE, "/v1/apps/api", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(!state.0.join("apps/api.json").exists());
    let resp = client().get(host.url("/m")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-app-name"], "api");
}

/// A version's sticky key that lands on `version` (the bucket is a fixed
/// hash of the key).
async fn key_for(host: &Host, version: &str) -> String {
    for i in 0..500 {
        let key = format!("k{i}");
        let resp = client()
            .get(host.url("/hold?mib=1&ms=1"))
            .header("x-canary-key", &key)
            .send()
            .await
            .unwrap();
        if resp.headers()["x-app-version"] == version {
            return key;
        }
    }
    panic!("no key lands on {version}");
}

#[tokio::test]
async fn a_canary_shares_its_apps_concurrency_cap() {
    let host = Host::bare(&[]);
    // Two versions that both wait on `/hold?ms=`: slow-guest reads only
    // `ms`, memhog holds 1 MiB for `ms`.
    let (status, slow) = host
        .deploy(
            "shared",
            wasm("slow-guest"),
            json!({"route": "/", "max_concurrent": 1}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{slow}");
    let slow = slow["current_version"].as_str().unwrap().to_string();
    let (status, hog) = host
        .deploy(
            "shared",
            wasm("memhog-guest"),
            json!({"max_concurrent": 1}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{hog}");
    let hog = hog["current_version"].as_str().unwrap().to_string();
    let (status, body) = host
        .admin(
            Method::PUT,
            "/v1/apps/shared/canary",
            Some(json!({"version": slow, "weight": 50, "sticky": true})),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (to_slow, to_hog) = (key_for(&host, &slow).await, key_for(&host, &hog).await);
    // One request holds the app's only slot on the canary...
    let holder = tokio::spawn({
        let url = host.url("/hold?mib=1&ms=2000");
        async move {
            client()
                .get(url)
                .header("x-canary-key", to_slow)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...so the current version has none either: the cap is the app's.
    let other = client()
        .get(host.url("/hold?mib=1&ms=1"))
        .header("x-canary-key", &to_hog)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 503);
    assert!(
        other
            .text()
            .await
            .unwrap()
            .contains("app is at its concurrency limit")
    );
    assert_eq!(holder.await.unwrap(), 200);
}
