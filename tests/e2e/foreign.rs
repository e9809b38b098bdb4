//! Components no one on the project wrote the host for, built from source
//! by other toolchains: Python (componentize-py), JavaScript
//! (componentize-js, StarlingMonkey) and Rust on WASI 0.3 (the `wasip3`
//! crate). Each is deployed through the admin API and must answer a GET,
//! echo a streamed POST, turn an exception or panic into a 500 with the
//! next request served, and come back after a restart from the precompiled
//! cache, without compiling again. WASI 0.3 guests also keep the deadline,
//! the memory cap and client-disconnect behaviour of WASI 0.2 ones. A
//! component the pool cannot hold is refused with what it needs.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, assert_schema, client, metric, wasm};

/// Bytes the echo test streams through each guest, in chunks.
const ECHO_BYTES: usize = 1 << 20;
const ECHO_CHUNK: usize = 16 * 1024;

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

async fn get(host: &Host, path: &str) -> (u16, String) {
    let response = client().get(host.url(path)).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// GET `path` and give up after `ms`, before the app answers; then wait
/// until the host has counted the p3 app's request as cancelled.
async fn give_up(host: &Host, path: &str, ms: u64) {
    let request = client()
        .get(host.url(path))
        .timeout(Duration::from_millis(ms))
        .send()
        .await;
    assert!(request.is_err(), "the client gave up first");
    host.metric_until(
        "host_guest_failures_total",
        &[("app", "p3"), ("kind", "cancelled")],
        |v| v == 1.0,
    )
    .await;
}

/// POST `ECHO_BYTES` in chunks as a stream (no content-length) and check
/// every byte comes back.
async fn streamed_echo(host: &Host) {
    let chunks = futures::stream::iter((0..ECHO_BYTES / ECHO_CHUNK).map(|c| {
        let bytes: Vec<u8> = (c * ECHO_CHUNK..(c + 1) * ECHO_CHUNK)
            .map(pattern)
            .collect();
        Ok::<Bytes, std::io::Error>(Bytes::from(bytes))
    }));
    let response = client()
        .post(host.url("/echo"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("echo request");
    assert_eq!(response.status(), 200);
    let mut offset = 0;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("echo body");
        for (i, b) in chunk.iter().enumerate() {
            assert_eq!(*b, pattern(offset + i), "byte {} differs", offset + i);
        }
        offset += chunk.len();
    }
    assert_eq!(offset, ECHO_BYTES, "the whole body came back");
}

/// The `key=N` field of the host's "restored deployed apps" log line.
fn restored(log: &str, key: &str) -> usize {
    let line = log
        .lines()
        .find(|l| l.contains("restored deployed apps"))
        .unwrap_or_else(|| panic!("no restore line in:\n{log}"));
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
        .parse()
        .unwrap()
}

/// Deploy `guest` at `/`, check it serves, echoes, fails cleanly and
/// recovers, then restart the host and check it is served again from the
/// cache. `greeting` is what its GET answers start with; `world` what the
/// API must say it serves.
async fn serves_like_any_app(guest: &str, greeting: &str, world: &str) {
    let state = TempDir::new(guest);
    let mut host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let (status, body) = host
        .deploy("app", wasm(guest), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["versions"][0]["world"], world, "{body}");

    let (status, text) = get(&host, "/hello").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with(greeting), "{text}");
    streamed_echo(&host).await;
    let (status, text) = get(&host, "/raise").await;
    assert_eq!(status, 500, "an uncaught exception is a 500: {text}");
    let (status, text) = get(&host, "/after").await;
    assert_eq!(status, 200, "the next request is served: {text}");
    assert!(text.contains("/after"), "{text}");
    let metrics = host.metrics().await;
    assert!(
        metric(
            &metrics,
            "host_requests_total",
            &[("app", "app"), ("status", "2xx")]
        ) >= 2.0,
        "requests are counted per app like any other's"
    );

    host.signal(libc::SIGTERM);
    let exit = host.wait_exit(Duration::from_secs(20));
    assert_eq!(exit.and_then(|s| s.code()), Some(0));
    drop(host);
    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let log = host.log_with(&["restored deployed apps"]);
    assert_eq!(restored(&log, "from_cache"), 1, "{log}");
    assert_eq!(restored(&log, "compiled"), 0, "{log}");
    let (status, text) = get(&host, "/again").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with(greeting), "{text}");
}

#[tokio::test]
async fn a_componentize_py_app_serves_like_any_app() {
    serves_like_any_app("python-guest", "hello from Python", "wasi:http@0.2").await;
}

/// StarlingMonkey exports `wasi:http/incoming-handler@0.2.10` and imports
/// `wasi:http/types@0.2.10` next to `wasi:io/*@0.2.12`: both link against
/// the host's 0.2.12 by semver.
#[tokio::test]
async fn a_componentize_js_app_with_mixed_wasi_versions_serves_like_any_app() {
    let component = wasm("javascript-guest");
    let contains = |needle: &str| {
        component
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    };
    assert!(
        contains("wasi:http/types@0.2.10"),
        "the JS component imports http 0.2.10"
    );
    assert!(contains("wasi:io/streams@0.2.12"), "and io 0.2.12");
    serves_like_any_app("javascript-guest", "hello from JavaScript", "wasi:http@0.2").await;
}

#[tokio::test]
async fn a_wasi_0_3_rust_app_serves_like_any_app() {
    serves_like_any_app("p3-guest", "hello from Rust (WASI 0.3)", "wasi:http@0.3").await;
}

/// The deadline stops a WASI 0.3 guest burning CPU (epoch) and one waiting
/// (timer); the memory cap stops one growing; each is counted under its own
/// kind, and the next request is served.
#[tokio::test]
async fn wasi_0_3_guests_keep_the_deadline_and_the_memory_cap() {
    let host = Host::bare(&["--timeout-ms", "1000", "--memory-mib", "32"]);
    let (status, body) = host
        .deploy("p3", wasm("p3-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    for path in ["/spin", "/sleep?ms=5000"] {
        let started = Instant::now();
        let (status, text) = get(&host, path).await;
        assert_eq!(status, 504, "{path}: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{path} was stopped, not left to run"
        );
    }
    let (status, text) = get(&host, "/memhog").await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("memory limit"), "{text}");
    let (status, text) = get(&host, "/sleep?ms=1").await;
    assert_eq!(status, 200, "{text}");
    let metrics = host.metrics().await;
    let failures = |kind| {
        metric(
            &metrics,
            "host_guest_failures_total",
            &[("app", "p3"), ("kind", kind)],
        )
    };
    assert_eq!(failures("timeout"), 2.0);
    assert_eq!(failures("memory_limit"), 1.0);
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
}

/// A WASI 0.3 guest that answers and then streams forever (from a task it
/// spawned) is stopped at its deadline: the response is cut off, the
/// instance dropped and counted as a timeout.
#[tokio::test]
async fn a_wasi_0_3_guest_streaming_forever_is_cut_off_at_its_deadline() {
    let host = Host::bare(&["--timeout-ms", "1000"]);
    let (status, body) = host
        .deploy("p3", wasm("p3-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let started = Instant::now();
    let response = client().get(host.url("/drip")).send().await.unwrap();
    assert_eq!(response.status(), 200, "it answered before its deadline");
    let mut ticks = 0;
    let mut body = response.bytes_stream();
    while let Some(Ok(chunk)) = body.next().await {
        ticks += chunk.windows(5).filter(|w| w == b"tick\n").count();
    }
    assert!(ticks >= 1, "the body streamed before the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the body ended at the deadline, not never"
    );
    host.metric_until(
        "host_guest_failures_total",
        &[("app", "p3"), ("kind", "timeout")],
        |v| v == 1.0,
    )
    .await;
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    let (status, _) = get(&host, "/after").await;
    assert_eq!(status, 200);
}

/// A client that goes away before a WASI 0.3 guest answers cancels it: the
/// instance is dropped at once (its slot and memory come back), long
/// before its deadline.
#[tokio::test]
async fn a_wasi_0_3_guest_is_cancelled_when_its_client_goes_away() {
    let host = Host::bare(&["--timeout-ms", "60000"]);
    let (status, body) = host
        .deploy("p3", wasm("p3-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    give_up(&host, "/sleep?ms=50000", 500).await;
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    host.metric_until("host_requests_in_flight", &[], |v| v == 0.0)
        .await;
}

/// A component with more core instances than the pool allows is refused
/// with what it needs and the flag to raise; nothing is deployed.
#[tokio::test]
async fn a_component_the_pool_cannot_hold_is_refused_with_the_flag_to_raise() {
    let host = Host::bare(&["--max-core-instances-per-component", "8"]);
    let (status, body) = host
        .deploy("py", wasm("python-guest"), json!({"route": "/py"}), None)
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("needs 14 core module instances")
            && message.contains("allows 8")
            && message.contains("--max-core-instances-per-component"),
        "{message}"
    );
    let (status, _) = host.admin(Method::GET, "/v1/apps/py", None, None).await;
    assert_eq!(status, 404, "a refused deploy leaves nothing behind");
}

/// A WASI 0.3 app that opts into instance reuse is served by one instance,
/// one request after another; one that traps is replaced.
#[tokio::test]
async fn a_wasi_0_3_app_can_opt_into_instance_reuse() {
    let host = Host::bare(&[]);
    let (status, body) = host
        .deploy(
            "p3",
            wasm("p3-guest"),
            json!({"route": "/", "instance_reuse": 100}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    for i in 0..20 {
        let (status, text) = get(&host, &format!("/n{i}")).await;
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(&format!("/n{i} (request {} ", i + 1)),
            "{text}"
        );
    }
    let instantiations = |m: &str| metric(m, "host_instantiation_duration_seconds_count", &[]);
    assert_eq!(instantiations(&host.metrics().await), 1.0);
    let (status, _) = get(&host, "/raise").await;
    assert_eq!(status, 500);
    let (status, _) = get(&host, "/after").await;
    assert_eq!(status, 200);
    assert_eq!(
        instantiations(&host.metrics().await),
        2.0,
        "the instance that trapped was dropped, not reused"
    );
}

/// `n` GETs of `path` at once: (status, text) of each, in order.
async fn at_once(host: &Host, path: &str, n: usize) -> Vec<(u16, String)> {
    futures::future::join_all((0..n).map(|_| get(host, path))).await
}

/// The `N at once` a p3 guest reports in its answer.
fn served_at_once(text: &str) -> u32 {
    text.split(", ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {text:?}"))
}

/// With `instance_concurrency`, one WASI 0.3 instance serves several
/// requests at once: 16 requests that each wait 400 ms take at most three
/// instances of 8 (sixteen without it), and the guest itself sees them
/// overlap. A client that goes away does not end its request: it runs on
/// in the instance beside the next ones. WASI 0.2 components and
/// contradictory settings are refused.
#[tokio::test]
async fn a_wasi_0_3_instance_serves_several_requests_at_once_when_asked() {
    let host = Host::bare(&["--timeout-ms", "20000"]);
    let settings = json!({"route": "/", "instance_reuse": 1000, "instance_concurrency": 8});
    let (status, body) = host
        .deploy("p3", wasm("p3-guest"), settings.clone(), None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["versions"][0]["settings"]["instance_concurrency"], 8);
    let instantiations = |m: &str| metric(m, "host_instantiation_duration_seconds_count", &[]);

    // A client that gives up: its request runs on beside the next one.
    give_up(&host, "/sleep?ms=10000", 300).await;
    let (status, text) = get(&host, "/after").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("(request 2 of this instance, 2 at once)"),
        "{text}"
    );
    assert_eq!(instantiations(&host.metrics().await), 1.0);

    let answers = at_once(&host, "/sleep?ms=400", 16).await;
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{text}");
    }
    let most = answers
        .iter()
        .map(|(_, t)| served_at_once(t))
        .max()
        .unwrap();
    assert!(
        most >= 2,
        "requests overlapped in one instance: {answers:?}"
    );
    assert!(most <= 8, "never more than 8 at once: {answers:?}");
    let made = instantiations(&host.metrics().await) - 1.0;
    assert!(
        made <= 2.0,
        "16 requests, 8 per instance, one instance with room for 7: {made} new instances"
    );

    // Refused: for a WASI 0.2 component, beyond the range, without reuse.
    let (status, body) = host
        .deploy(
            "p2",
            wasm("guest"),
            json!({"route": "/p2", "instance_reuse": 10, "instance_concurrency": 4}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("WASI 0.3") && message.contains("wasi:http@0.2"),
        "{message}"
    );
    for (settings, needle) in [
        (
            json!({"route": "/p2", "instance_reuse": 10, "instance_concurrency": 0}),
            "between 1",
        ),
        (
            json!({"route": "/p2", "instance_reuse": 10, "instance_concurrency": 257}),
            "between 1",
        ),
        (
            json!({"route": "/p2", "instance_reuse": 1, "instance_concurrency": 4}),
            "instance_reuse above 1",
        ),
        (
            json!({"route": "/p2", "instance_concurrency": 4}),
            "instance_reuse above 1",
        ),
    ] {
        let (status, body) = host.deploy("p3b", wasm("p3-guest"), settings, None).await;
        assert_eq!(status, 400, "{body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains("instance_concurrency") && message.contains(needle),
            "{message}"
        );
    }
    let (status, _) = host.admin(Method::GET, "/v1/apps/p2", None, None).await;
    assert_eq!(status, 404, "a refused deploy leaves nothing behind");
}

/// The price of sharing: a request that burns CPU holds the instance until
/// the epoch interrupts it at its deadline (504), which ends the instance,
/// so the requests waiting in it fail too; the host and the next request
/// are fine.
#[tokio::test]
async fn a_shared_wasi_0_3_instance_that_overruns_fails_only_its_own_requests() {
    let host = Host::bare(&["--timeout-ms", "800"]);
    let (status, body) = host
        .deploy(
            "p3",
            wasm("p3-guest"),
            json!({"route": "/", "instance_reuse": 1000, "instance_concurrency": 8}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let spin = get(&host, "/spin");
    let waiters = async {
        // Once the spin is in the instance.
        host.metric_until("host_requests_in_flight", &[], |v| v >= 1.0)
            .await;
        at_once(&host, "/sleep?ms=1", 3).await
    };
    let ((status, text), waiters) = tokio::join!(spin, waiters);
    assert_eq!(status, 504, "{text}");
    // Once they are in the instance, it runs on to the latest deadline of
    // its requests (theirs), so the interrupt and their own timers come
    // together: each fails with the instance (500) or at its deadline
    // (504), whichever is first; none is answered.
    for (status, text) in waiters {
        assert!(
            status == 500 || status == 504,
            "it shared the instance that was interrupted: {status} {text}"
        );
    }
    let (status, text) = get(&host, "/after").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("(request 1 of this instance"), "{text}");
    // One that only waits past its deadline is a timeout too, whichever of
    // its timer and its instance notices first.
    let (status, text) = get(&host, "/sleep?ms=5000").await;
    assert_eq!(status, 504, "{text}");
    // Every failure is counted: the spin's and the last one's timeouts,
    // and each waiter's trap or timeout.
    let metrics = host.metrics().await;
    let failures = |kind| {
        metric(
            &metrics,
            "host_guest_failures_total",
            &[("app", "p3"), ("kind", kind)],
        )
    };
    assert!(failures("timeout") >= 2.0, "{metrics}");
    assert!(failures("timeout") + failures("trap") >= 5.0, "{metrics}");
    let (status, _) = host.admin(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
}

/// Minor page faults the host process has taken so far (`/proc/PID/stat`).
fn minor_faults(host: &Host) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", host.pid())).expect("stat");
    // Fields after the command name, which is in parentheses: state is
    // field 3, minflt field 10.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after
        .split_whitespace()
        .nth(7)
        .expect("minflt")
        .parse()
        .expect("number")
}

/// The median of the host's minor faults per request over `n` sequential
/// GETs after a warm-up: the median, because now and then a request lands
/// on a memory slot no instance of the app has used yet (an instance's slot
/// is freed just after its answer, and batched decommits hold some back),
/// and faults its whole image in once.
async fn faults_per_request(host: &Host, n: usize) -> u64 {
    for _ in 0..10 {
        assert_eq!(get(host, "/warm").await.0, 200);
    }
    let mut faults = Vec::with_capacity(n);
    for _ in 0..n {
        let before = minor_faults(host);
        let (status, text) = get(host, "/count").await;
        faults.push(minor_faults(host) - before);
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains("(request 1 of this instance)"),
            "every request starts from the image: {text}"
        );
    }
    faults.sort_unstable();
    faults[n / 2]
}

/// CPython dirties pages all over its heap, which wasmtime's dirty-page
/// scan cannot track: with `--memory-reset scan` most of the image is
/// copy-on-write faulted in again by every request (each fault a TLB
/// flush on every core). By default the host sees the large memory image
/// at deploy, records it, and serves the app from a pool that copies the
/// image back instead, also after a restart that loads the code from the
/// cache (the pick comes from the record; for a record written before
/// image sizes were recorded, from the stored bytes).
#[tokio::test]
async fn a_large_memory_image_is_reset_by_copy_without_faults_by_default() {
    let state = TempDir::new("python-reset");
    let mut host = Host::start_in(
        &state.0,
        &["--no-default-app", "--memory-reset", "scan"],
        &[],
    );
    let (status, body) = host
        .deploy("py", wasm("python-guest"), json!({"route": "/"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let image = body["versions"][0]["memory_image_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("a 10 MiB image is on record: {body}"));
    assert!(image >= 4 << 20, "{body}");
    assert_schema(&body, "App");
    let scanned = faults_per_request(&host, 41).await;

    host.signal(libc::SIGTERM);
    assert_eq!(
        host.wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    drop(host);
    // As a host from before memory images were recorded wrote it: the
    // stored bytes must still tell.
    let record = state.0.join("apps/py.json");
    let text = std::fs::read_to_string(&record).expect("record");
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("json");
    let mut stripped = 0;
    for version in value["versions"].as_array_mut().expect("versions") {
        stripped += usize::from(
            version
                .as_object_mut()
                .expect("version")
                .remove("memory_image_bytes")
                .is_some(),
        );
    }
    assert_eq!(stripped, 1, "{text}");
    std::fs::write(&record, value.to_string()).expect("write record");
    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    let log = host.log_with(&["restored deployed apps"]);
    assert_eq!(restored(&log, "from_cache"), 1, "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("engine ready") && l.contains("Http02") && l.contains("Copy")),
        "the app got a copy-reset pool: {log}"
    );
    let copied = faults_per_request(&host, 41).await;
    eprintln!("minor faults per request: {scanned} with scan, {copied} by default");
    assert!(
        scanned >= 100 && copied * 4 < scanned,
        "faults per request: {scanned} with scan, {copied} with the default"
    );

    // A small guest on the same host stays on the scan pool: its record
    // carries no image size.
    let (status, body) = host
        .deploy("hello", wasm("guest"), json!({"route": "/hello"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body["versions"][0].get("memory_image_bytes").is_none(),
        "{body}"
    );
}
