//! Hostile guests that try to exhaust the HOST, not their own linear memory:
//! every wasi:http resource (a `fields`, an outgoing body's buffer, an
//! outbound call) lives in the host and costs the guest only a handle. Each
//! flood must end as a clean failure of its own request (500) or a bounded
//! success, the host must answer the next request, and its peak RSS must stay
//! bounded. Without these limits one `fields` or body flood took the host
//! past 3.4 GiB in 12 to 30 s (where it was killed), and one fan-out used all
//! 20,000 file descriptors, so the host stopped accepting connections.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};

use crate::harness::{Host, SilentUpstream, client, guest, metric, wasm};

/// Floods sent at once, to show the limits are per instance and hold
/// together. The per-instance limits bound each flood, not their sum: the
/// memory of `fields` and body floods grows with how many run at once.
const FLOODS: usize = 4;

/// The limits these tests rely on, given explicitly so they do not depend on
/// the defaults.
const LIMITS: [&str; 6] = [
    "--max-guest-resources",
    "1024",
    "--max-outbound-per-instance",
    "16",
    "--max-outbound-per-app",
    "32",
];

/// Bytes an outgoing body may buffer in the host: 2 chunks of 12 KiB.
const BODY_BUFFER_BYTES: u64 = 2 * 12 * 1024;

/// Peak RSS growth allowed for the floods of each test, in MiB: about three
/// times what the bounded host measured (table: 16 floods, ~2 MiB; fields: 4
/// floods, ~145 MiB; bodies: 4 floods, ~135 MiB; fan-out: ~2 MiB).
/// Without the limits the host grew by 211 MiB (16 table floods, stopped by
/// wasmtime's 100,000-handle cap) and past 3.4 GiB (fields, bodies).
const TABLE_FLOOD_MIB: u64 = 32;
const FIELDS_FLOOD_MIB: u64 = 448;
const BODIES_FLOOD_MIB: u64 = 400;
const FANOUT_FLOOD_MIB: u64 = 32;

/// The host's RSS before a flood, with its peak (VmHWM) reset to now.
struct Rss {
    before_kib: u64,
}

impl Rss {
    fn start(host: &Host) -> Rss {
        // Writing 5 to clear_refs resets VmHWM to the current RSS, so
        // startup's compile peak does not count; if the kernel refuses, the
        // measurement only gets more conservative.
        let _ = std::fs::write(format!("/proc/{}/clear_refs", host.pid()), "5");
        Rss {
            before_kib: host.proc_kib("VmRSS"),
        }
    }

    /// How far above the starting RSS the host's peak went, in MiB.
    fn peak_growth_mib(&self, host: &Host) -> u64 {
        host.proc_kib("VmHWM").saturating_sub(self.before_kib) / 1024
    }
}

async fn get(url: String) -> (u16, String) {
    let response = client().get(url).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// `count` requests for `path` at once.
async fn flood(host: &Host, path: &str, count: usize) -> Vec<(u16, String)> {
    join_all((0..count).map(|_| get(host.url(path)))).await
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The host is alive and the app answers a normal request.
async fn assert_serving(host: &mut Host, path: &str) {
    assert!(host.alive(), "the host died; log:\n{}", host.stderr());
    let (status, body) = get(host.url(path)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "hostile guest\n");
}

/// One small trap, before measuring: the first trap logged by a host
/// symbolizes a backtrace, which loads the binary's line tables once
/// (~80 MiB) whatever the flood.
async fn trap_once(host: &Host) {
    let (status, body) = get(host.url("/fields?n=1&kb=100")).await;
    assert_eq!(status, 500, "one fields grew past 24 KiB: {body}");
}

fn assert_rss_bounded(what: &str, rss: &Rss, host: &Host, bound_mib: u64) {
    let growth = rss.peak_growth_mib(host);
    eprintln!("{what}: peak RSS growth {growth} MiB (bound {bound_mib} MiB)");
    assert!(
        growth < bound_mib,
        "{what} grew the host's peak RSS by {growth} MiB (bound {bound_mib} MiB)"
    );
}

/// Millions of empty `fields`: each is a resource-table entry (and a
/// component handle) in the host. The table is capped per instance, so the
/// guest traps long before the host notices.
#[tokio::test]
async fn resource_table_flood_fails_cleanly_and_host_rss_stays_bounded() {
    let mut host = Host::start(&guest("hostile-guest"), &LIMITS);
    assert_serving(&mut host, "/").await;
    trap_once(&host).await;
    let rss = Rss::start(&host);
    let started = Instant::now();
    for (status, body) in flood(&host, "/table", 16).await {
        assert_eq!(status, 500, "a resource-table flood must trap: {body}");
    }
    eprintln!("resource table floods took {:?}", started.elapsed());
    assert_serving(&mut host, "/").await;
    assert_rss_bounded("resource table flood", &rss, &host, TABLE_FLOOD_MIB);
}

/// `fields` filled just under the per-fields size limit, as many as the
/// guest can make: the size limit bounds each one, the resource-table cap
/// bounds how many.
#[tokio::test]
async fn header_flood_is_capped_per_fields_and_per_instance_and_host_rss_stays_bounded() {
    let mut host = Host::start(&guest("hostile-guest"), &LIMITS);

    // 100 KiB in one `fields` is over the host's 24 KiB limit: wasmtime traps
    // the append that crosses it (a guest that got there would answer 200).
    trap_once(&host).await;
    // Under the limit a modest number of fields is fine.
    let (status, body) = get(host.url("/fields?n=100&kb=20")).await;
    assert_eq!(status, 200, "{body}");
    let report = json(&body);
    assert_eq!(report["kib"], 2000, "{report}");
    assert_eq!(report["errors"], 0, "{report}");

    let rss = Rss::start(&host);
    for (status, body) in flood(&host, "/fields?kb=20", FLOODS).await {
        assert_eq!(status, 500, "a header flood must trap: {body}");
    }
    assert_serving(&mut host, "/").await;
    assert_rss_bounded("header flood", &rss, &host, FIELDS_FLOOD_MIB);
}

/// Outgoing requests that are never sent, each body written as far as
/// `check-write` allows: the host buffers at most two 12 KiB chunks per
/// body, and the resource-table cap bounds how many bodies.
#[tokio::test]
async fn body_buffer_flood_is_capped_per_body_and_per_instance_and_host_rss_stays_bounded() {
    let mut host = Host::start(&guest("hostile-guest"), &LIMITS);

    let (status, body) = get(host.url("/bodies?n=20")).await;
    assert_eq!(status, 200, "{body}");
    let report = json(&body);
    let per_body = report["max_per_body"].as_u64().unwrap();
    assert!(
        per_body > 0 && per_body <= BODY_BUFFER_BYTES,
        "one unsent body buffered {per_body} bytes in the host: {report}"
    );
    assert!(
        report["bytes"].as_u64().unwrap() <= 20 * BODY_BUFFER_BYTES,
        "{report}"
    );

    trap_once(&host).await;
    let rss = Rss::start(&host);
    for (status, body) in flood(&host, "/bodies", FLOODS).await {
        assert_eq!(status, 500, "a body-buffer flood must trap: {body}");
    }
    assert_serving(&mut host, "/").await;
    assert_rss_bounded("body buffer flood", &rss, &host, BODIES_FLOOD_MIB);
}

/// Outbound calls started and never awaited, to an upstream that never
/// answers: each accepted call is a task, a socket and buffers in the host.
/// At most 16 are in flight per instance and 32 per app; the rest fail at
/// once with an error code (counted as `limited`), the host keeps accepting
/// connections meanwhile, and every call is gone when its instance is.
#[tokio::test]
async fn outbound_fanout_is_capped_per_instance_and_per_app_and_the_host_keeps_serving() {
    const CALLS: u64 = 500;
    let upstream = SilentUpstream::start().await;
    let mut host = Host::bare(&LIMITS);
    let (status, body) = host
        .deploy(
            "h",
            wasm("hostile-guest"),
            json!({"route": "/h", "allow_outbound": [format!("http://{}", upstream.addr)]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_serving(&mut host, "/h").await;

    let rss = Rss::start(&host);
    let path = format!(
        "/h/fanout?n={CALLS}&url=http://{}/&settle_ms=1000&hold_ms=2000",
        upstream.addr
    );
    // While the floods hold their calls open, a new connection is served.
    let meanwhile = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let started = Instant::now();
        let (status, body) = get(host.url("/h")).await;
        (status, body, started.elapsed())
    };
    let (floods, (status, body, took)) = tokio::join!(flood(&host, &path, FLOODS), meanwhile);
    assert_eq!(status, 200, "no answer during the fan-out: {body}");
    assert!(took < Duration::from_secs(5), "answer took {took:?}");

    let mut refused = 0;
    for (status, body) in floods {
        assert_eq!(status, 200, "{body}");
        let report = json(&body);
        eprintln!("fan-out: {report}");
        let count = |k: &str| {
            report[k]
                .as_u64()
                .unwrap_or_else(|| panic!("{k}: {report}"))
        };
        assert_eq!(count("ok") + count("err"), CALLS, "{report}");
        assert_eq!(
            count("responses"),
            0,
            "the upstream never answers: {report}"
        );
        assert!(
            count("pending") <= 16,
            "more than 16 calls in flight in one instance: {report}"
        );
        let refused_here = count("err") + count("failed");
        assert!(
            refused_here >= CALLS - 16,
            "the cap did not refuse the calls beyond 16: {report}"
        );
        refused += refused_here;
    }
    // The first instance gets its 16; all together never more than 32.
    let peak = upstream.peak();
    assert!(
        (16..=32).contains(&peak),
        "{peak} outbound connections were open at once (caps: 16 per instance, 32 per app)"
    );

    // Ending an instance ends its calls.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.open() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(upstream.open(), 0, "outbound calls outlived their instance");

    assert_serving(&mut host, "/h").await;
    let metrics = host.metrics().await;
    let limited = metric(
        &metrics,
        "host_outbound_requests_total",
        &[("app", "h"), ("result", "limited")],
    );
    assert!(
        limited >= refused as f64,
        "{refused} calls were refused but host_outbound_requests_total{{result=\"limited\"}} is {limited}"
    );
    assert_rss_bounded("outbound fan-out", &rss, &host, FANOUT_FLOOD_MIB);
}

/// What the caps allow one instance to hold in the host is reserved from
/// the host-wide guest memory budget before it starts: with room for one
/// instance's reserve, a second one at the same time is refused (503)
/// instead of adding its floods on top, and runs once the first is done.
#[tokio::test]
async fn host_side_reserves_keep_instances_within_the_memory_budget() {
    let upstream = SilentUpstream::start().await;
    // Reserve per instance: 1024 resources × 48 KiB + 16 calls × 64 KiB =
    // 49 MiB; an app may use three quarters of the 120 MiB budget.
    let mut host = Host::bare(
        &[
            &LIMITS[..],
            &["--memory-budget-mib", "120", "--memory-mib", "8"],
        ]
        .concat(),
    );
    let (status, body) = host
        .deploy(
            "h",
            wasm("hostile-guest"),
            json!({"route": "/h", "allow_outbound": [format!("http://{}", upstream.addr)]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_serving(&mut host, "/h").await;
    trap_once_at(&host, "/h").await;
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;

    // One instance holds its reserve for a few seconds...
    let holder = tokio::spawn(get(host.url(&format!(
        "/h/fanout?n=1&url=http://{}/&settle_ms=1&hold_ms=3000",
        upstream.addr
    ))));
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&host.metrics().await, "host_guest_memory_bytes", &[]) < (49u64 << 20) as f64 {
        assert!(
            Instant::now() < deadline,
            "the holder never reserved its share"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...so a flood that would add up to another 49 MiB cannot start.
    let rss = Rss::start(&host);
    let (status, body) = get(host.url("/h/bodies")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("out of memory"), "{body}");
    let (status, _) = holder.await.unwrap();
    assert_eq!(status, 200);
    // The client can read the holder's answer before the host has dropped
    // its store: wait for the reserve to come back rather than racing it.
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    // Once the holder is gone the flood runs, and stops at its own caps.
    let (status, body) = get(host.url("/h/bodies")).await;
    assert_eq!(status, 500, "{body}");
    assert_serving(&mut host, "/h").await;
    let m = host.metrics().await;
    assert!(metric(&m, "host_rejections_total", &[("reason", "memory_budget")]) >= 1.0);
    host.metric_until("host_guest_memory_bytes", &[], |v| v == 0.0)
        .await;
    assert_rss_bounded("budgeted body flood", &rss, &host, BODIES_FLOOD_MIB / 4);
}

/// [`trap_once`] for an app mounted under `prefix`.
async fn trap_once_at(host: &Host, prefix: &str) {
    let (status, body) = get(host.url(&format!("{prefix}/fields?n=1&kb=100"))).await;
    assert_eq!(status, 500, "one fields grew past 24 KiB: {body}");
}
