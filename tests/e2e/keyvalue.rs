//! Apps' key-value state through the real binary, on both backends: the
//! embedded store in the state directory and a real `redis-server` on a
//! free loopback port (`--kv-url`). The apps are the `kv-guest` example
//! (`wasi:keyvalue@0.2.0-draft2`) and `kv-draft-guest` (`@0.2.0-draft`),
//! driven over HTTP: counters and compare-and-swap under contention,
//! restarts, two hosts on one Redis, isolation between apps, limits,
//! a Redis outage, and the operators' `host kv` and `host remove`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, RedisServer, TempDir, assert_schema, client, metric, wasm};

/// Where the hosts of a test keep apps' data.
enum Store {
    Embedded,
    Redis(RedisServer),
}

impl Store {
    fn redis() -> Store {
        Store::Redis(RedisServer::start())
    }

    /// The host flags that select this store.
    fn args(&self) -> Vec<String> {
        match self {
            Store::Embedded => Vec::new(),
            Store::Redis(server) => vec!["--kv-url".into(), server.url()],
        }
    }

    /// A host with no default app on this store, with `extra` flags.
    fn host(&self, extra: &[&str]) -> Host {
        let args = self.args();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Host::bare(&all)
    }
}

/// Deploy `guest` as app `name` at `/name`, declaring `stores`.
async fn deploy(host: &Host, name: &str, guest: &str, stores: &[&str]) {
    let (status, body) = host
        .deploy(
            name,
            wasm(guest),
            json!({"route": format!("/{name}"), "key_value": stores}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// A request to the public listener: `(status, body)`.
async fn call(host: &Host, method: Method, path: &str, body: &str) -> (u16, String) {
    let response = client()
        .request(method, host.url(path))
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

async fn get(host: &Host, path: &str) -> (u16, String) {
    call(host, Method::GET, path, "").await
}

/// `host_kv_operations_total` of `app`'s operation `op` that ended in
/// `result`, in the `/metrics` text `metrics`.
fn kv_ops(metrics: &str, app: &str, op: &str, result: &str) -> f64 {
    metric(
        metrics,
        "host_kv_operations_total",
        &[("app", app), ("op", op), ("result", result)],
    )
}

/// The host still answers its liveness probe.
async fn assert_healthy(host: &Host) {
    let health = client()
        .get(host.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// Run `n` requests `make(i)` with `at_once` in flight; their answers.
async fn many<F, Fut>(n: usize, at_once: usize, make: F) -> Vec<(u16, String)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = (u16, String)>,
{
    futures::stream::iter((0..n).map(make))
        .buffer_unordered(at_once)
        .collect()
        .await
}

macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(super::Store::Embedded).await
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                super::$scenario(super::Store::redis()).await
            })*
        }
    };
}

on_both_backends!(
    concurrent_increments_and_swaps_lose_no_update,
    apps_cannot_reach_each_others_keys_with_any_identifier,
    limits_reach_the_guest_as_errors_and_the_host_stays_healthy,
    a_component_built_against_the_draft_interface_links_and_shares_the_store,
);

/// 1,000 concurrent increments count exactly 1,000; 200 concurrent
/// compare-and-swap appends each land once.
async fn concurrent_increments_and_swaps_lose_no_update(store: Store) {
    let host = store.host(&[]);
    deploy(&host, "count", "kv-guest", &["default"]).await;
    let answers = many(1000, 64, |_| {
        call(&host, Method::POST, "/count/kv/default/hits?incr=1", "")
    })
    .await;
    let mut counts: Vec<i64> = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 200, "{body}");
            body.parse().expect("a count")
        })
        .collect();
    counts.sort_unstable();
    // Every increment saw a different count: 1 to 1000, each once.
    assert_eq!(counts, (1..=1000).collect::<Vec<i64>>());
    assert_eq!(
        get(&host, "/count/kv/default/hits").await,
        (200, "1000".into())
    );

    let host = &host;
    let answers = many(200, 32, |i| {
        let path = format!("/count/kv/default/log?append={i}%2C");
        async move { call(host, Method::POST, &path, "").await }
    })
    .await;
    let retried = answers.iter().filter(|(_, tries)| tries != "1").count();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    let (status, log) = get(host, "/count/kv/default/log").await;
    assert_eq!(status, 200);
    let mut seen: Vec<usize> = log
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..200).collect::<Vec<_>>(),
        "{retried} swaps retried"
    );
    let metrics = host.metrics().await;
    let ok = |op| kv_ops(&metrics, "count", op, "ok");
    assert_eq!(ok("increment"), 1000.0);
    assert!(ok("swap") >= 200.0);
}

/// App `b`'s keys are out of app `a`'s reach whatever it opens: its own
/// store names, `b`'s names, Redis key shapes, paths, NULs, the empty
/// identifier; and listing shows only its own keys.
async fn apps_cannot_reach_each_others_keys_with_any_identifier(store: Store) {
    let host = store.host(&[]);
    deploy(&host, "a", "kv-guest", &["default", "b"]).await;
    deploy(&host, "b", "kv-guest", &["default"]).await;
    let (status, _) = call(&host, Method::PUT, "/b/kv/default/secret", "b's value").await;
    assert_eq!(status, 204);
    assert_eq!(
        get(&host, "/b/kv/default/secret").await,
        (200, "b's value".into())
    );
    let identifiers = [
        "default",
        "b",
        "b:default",
        "kv:b:default",
        "kv%3Ab%3Adefault",
        "..%2Fb",
        "b%2Fdefault",
        "b%00default",
        "default%00",
        "DEFAULT",
        "%2A",
        "",
        "b.default",
        "kv",
        "usage",
    ];
    for id in identifiers {
        let (status, body) = get(&host, &format!("/a/kv/{id}/secret")).await;
        assert!(
            // 400: the front refuses an encoded `/` before any app runs.
            matches!(status, 400 | 403 | 404) && body != "b's value",
            "open({id:?}) gave {status} {body}"
        );
        let (status, body) = get(&host, &format!("/a/kv/{id}")).await;
        assert!(!body.contains("secret"), "list of {id:?}: {status} {body}");
    }
    // An undeclared store is access-denied; a name no app can declare is
    // no-such-store.
    assert_eq!(
        get(&host, "/a/kv/sessions/x").await,
        (403, "access-denied".into())
    );
    assert_eq!(
        get(&host, "/a/kv/b%3Adefault/x").await,
        (404, "no-such-store".into())
    );
    // Its own store `b` is its own: empty.
    assert_eq!(get(&host, "/a/kv/b/secret").await, (404, "absent".into()));
    let (_, listed) = get(&host, "/a/kv/default").await;
    assert_eq!(listed, r#"{"keys":[],"cursor":null}"#);
    // Batch reads and the draft interface's default store are fenced the
    // same way.
    let (_, many) = call(&host, Method::POST, "/a/kv/default?get-many=secret", "").await;
    assert_eq!(many, r#"{"secret":null}"#);
    deploy(&host, "d", "kv-draft-guest", &["default"]).await;
    assert_eq!(get(&host, "/d/secret").await, (404, "absent".into()));
    assert_eq!(
        get(&host, "/d/secret?store=b").await,
        (403, "access-denied".into())
    );
    let metrics = host.metrics().await;
    assert!(kv_ops(&metrics, "a", "open", "denied") >= 1.0);
}

/// Each limit reaches the guest as `other(...)` naming it, changes
/// nothing, and leaves the host and the other apps serving.
async fn limits_reach_the_guest_as_errors_and_the_host_stays_healthy(store: Store) {
    let host = store.host(&[
        "--kv-max-key-bytes",
        "16",
        "--kv-max-value-bytes",
        "1024",
        "--kv-max-keys-per-app",
        "4",
        "--kv-quota-mib",
        "1",
        "--kv-max-ops-per-request",
        "20",
    ]);
    deploy(&host, "small", "kv-guest", &["default"]).await;
    deploy(&host, "other", "kv-guest", &["default"]).await;
    let long_key = "k".repeat(17);
    let (status, body) = call(
        &host,
        Method::PUT,
        &format!("/small/kv/default/{long_key}"),
        "v",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (422, "other: key of 17 bytes is over the limit of 16 bytes")
    );
    let (status, body) = call(&host, Method::PUT, "/small/kv/default/big?fill=1025", "").await;
    assert_eq!(
        (status, body.as_str()),
        (
            422,
            "other: value of 1025 bytes is over the limit of 1024 bytes"
        )
    );
    for key in ["k1", "k2", "k3", "k4"] {
        let (status, body) =
            call(&host, Method::PUT, &format!("/small/kv/default/{key}"), "v").await;
        assert_eq!(status, 204, "{body}");
    }
    let (status, body) = call(&host, Method::PUT, "/small/kv/default/k5", "v").await;
    assert_eq!(status, 422);
    assert!(body.contains("over its quota of 4"), "{body}");
    let (status, body) = call(&host, Method::POST, "/small/kv/default?ops=25", "").await;
    assert_eq!(status, 422);
    assert!(body.contains("its 20 key-value operations"), "{body}");
    // Nothing over a limit was written; the rest works, for this app and others.
    assert_eq!(get(&host, "/small/kv/default/k5").await.0, 404);
    assert_eq!(get(&host, "/small/kv/default/k1").await, (200, "v".into()));
    assert_eq!(
        call(&host, Method::PUT, "/other/kv/default/k5", "v")
            .await
            .0,
        204
    );
    assert_healthy(&host).await;
    let metrics = host.metrics().await;
    assert!(kv_ops(&metrics, "small", "set", "limit") >= 3.0);
    assert_eq!(metric(&metrics, "host_kv_keys", &[("app", "small")]), 4.0);
}

/// A component built against `wasi:keyvalue@0.2.0-draft` links next to a
/// draft2 app: its empty identifier is the store `default`, its
/// increments and listing work, and it sees what an operator wrote.
async fn a_component_built_against_the_draft_interface_links_and_shares_the_store(store: Store) {
    let host = store.host(&[]);
    deploy(&host, "draft", "kv-draft-guest", &["default"]).await;
    assert_eq!(
        call(&host, Method::PUT, "/draft/greeting", "hi").await.0,
        204
    );
    assert_eq!(get(&host, "/draft/greeting").await, (200, "hi".into()));
    for want in 1..=3 {
        let (status, count) = call(&host, Method::POST, "/draft/n?incr=1", "").await;
        assert_eq!((status, count), (200, want.to_string()));
    }
    let set = host.cli(&["kv", "draft", "set", "note", "from the operator"], &[]);
    assert!(set.success, "{}", set.stderr);
    assert_eq!(
        get(&host, "/draft/note").await,
        (200, "from the operator".into())
    );
    let (status, page) = get(&host, "/draft/").await;
    assert_eq!(status, 200);
    assert_eq!(page, r#"{"keys":["greeting","n","note"],"cursor":null}"#);
    // A cursor the host never gave is an error, not a crash.
    let (status, body) = get(&host, "/draft/?cursor=7").await;
    assert_eq!(status, 422, "{body}");
}

/// The embedded store keeps every acknowledged value across a restart,
/// and across a kill -9.
#[tokio::test]
async fn embedded_values_survive_restarts_and_crashes() {
    let state = TempDir::new("kv-restart");
    let mut host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    deploy(&host, "keep", "kv-guest", &["default", "links"]).await;
    let (status, link) = call(&host, Method::POST, "/keep/links", "https://example.com/").await;
    assert_eq!(status, 201, "{link}");
    let answers = many(50, 8, |_| {
        call(&host, Method::POST, "/keep/kv/default/n?incr=1", "")
    })
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200));
    host.stop();

    let mut host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    assert_eq!(get(&host, "/keep/kv/default/n").await, (200, "50".into()));
    let (status, links) = get(&host, "/keep/links").await;
    assert_eq!(
        (status, links.as_str()),
        (200, r#"{"1":"https://example.com/"}"#)
    );
    for _ in 0..10 {
        assert_eq!(
            call(&host, Method::POST, "/keep/kv/default/n?incr=1", "")
                .await
                .0,
            200
        );
    }
    host.signal(libc::SIGKILL);
    host.wait_exit(Duration::from_secs(10));

    let host = Host::start_in(&state.0, &["--no-default-app"], &[]);
    assert_eq!(get(&host, "/keep/kv/default/n").await, (200, "60".into()));
}

/// Two hosts on one Redis share an app's data: what one writes the other
/// reads, and their increments add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_redis_share_state() {
    let store = Store::redis();
    let one = store.host(&[]);
    let two = store.host(&[]);
    for host in [&one, &two] {
        deploy(host, "shared", "kv-guest", &["default"]).await;
    }
    assert_eq!(
        call(&one, Method::PUT, "/shared/kv/default/k", "from one")
            .await
            .0,
        204
    );
    assert_eq!(
        get(&two, "/shared/kv/default/k").await,
        (200, "from one".into())
    );
    let answers = many(200, 32, |i| {
        let host = if i % 2 == 0 { &one } else { &two };
        call(host, Method::POST, "/shared/kv/default/n?incr=1", "")
    })
    .await;
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert_eq!(get(&one, "/shared/kv/default/n").await, (200, "200".into()));
    assert_eq!(get(&two, "/shared/kv/default/n").await, (200, "200".into()));
}

/// Redis killed under load: KV calls fail fast with an error the guest
/// sees, another app keeps answering 200 throughout, and KV works again
/// once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_fails_kv_calls_and_nothing_else() {
    let Store::Redis(redis) = Store::redis() else {
        unreachable!()
    };
    let url = redis.url();
    let host = Host::bare(&["--kv-url", &url]);
    deploy(&host, "state", "kv-guest", &["default"]).await;
    let (status, _) = host
        .deploy(
            "hello",
            wasm("counter-guest"),
            json!({"route": "/hello"}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        call(&host, Method::POST, "/state/kv/default/n?incr=1", "")
            .await
            .0,
        200
    );

    // Load on both apps; Redis is killed after the 100th answer.
    let redis = std::sync::Mutex::new(redis);
    let answered = std::sync::atomic::AtomicUsize::new(0);
    let (host, redis_ref, answered) = (&host, &redis, &answered);
    let answers = many(400, 16, |i| async move {
        let answer = if i % 2 == 0 {
            let (status, body) = get(host, "/hello").await;
            (status, format!("hello {body}"))
        } else {
            call(host, Method::POST, "/state/kv/default/n?incr=1", "").await
        };
        if answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 100 {
            redis_ref.lock().unwrap().kill();
        }
        answer
    })
    .await;
    let mut failed = 0;
    for (status, body) in &answers {
        if body.starts_with("hello") {
            assert_eq!(*status, 200, "{body}");
        } else if *status != 200 {
            failed += 1;
            assert_eq!(*status, 422, "{body}");
            assert!(
                body.contains("Redis key-value store at redis://127.0.0.1:"),
                "{body}"
            );
        }
    }
    assert!(failed >= 1, "no KV call failed after Redis was killed");
    let mut redis = redis.into_inner().unwrap();
    // Calls fail at once while it stays down (the backoff), instead of
    // each waiting for a connect: the log says so once, not per call.
    let warned = host
        .stderr()
        .matches("key-value store is unreachable")
        .count();
    assert_eq!(warned, 1, "{}", host.stderr());
    assert_healthy(host).await;

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(host, Method::POST, "/state/kv/default/n?incr=1", "").await;
        if status == 200 {
            // The restarted Redis is empty: counting starts again.
            assert_eq!(body, "1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KV never recovered: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = host.metrics().await;
    assert!(kv_ops(&metrics, "state", "increment", "error") >= 1.0);
}

/// Operators read and change an app's data with `host kv` (and the API
/// behind it, checked against its schema), and `host remove` deletes the
/// data unless `--keep-data`.
#[tokio::test]
async fn operators_manage_data_with_host_kv_and_remove() {
    let host = Host::bare(&["--kv-max-value-bytes", "4096"]);
    deploy(&host, "ops", "kv-guest", &["default", "links"]).await;
    for _ in 0..3 {
        assert_eq!(get(&host, "/ops/").await.0, 200);
    }
    let set = host.cli(&["kv", "ops", "set", "message", "Hello from ops"], &[]);
    assert!(set.success, "{}", set.stderr);
    assert_eq!(
        get(&host, "/ops/").await,
        (200, "visit 4\nHello from ops\n".into())
    );
    let listed = host.cli(&["kv", "ops", "list"], &[]);
    assert_eq!(listed.stdout, "message\nvisits\n");
    let value = host.cli(&["kv", "ops", "get", "visits"], &[]);
    assert_eq!(value.stdout, "4");
    let json_value = host.cli(&["kv", "ops", "get", "visits", "--json"], &[]);
    let parsed: Value = serde_json::from_str(&json_value.stdout).unwrap();
    assert_eq!(parsed, json!({"key": "visits", "value": "4"}));
    // A file's bytes, a key with a slash and a space, a prefix, another store.
    let dir = TempDir::new("kv-cli");
    let file = dir.write("value.bin", b"\x00\x01binary");
    let at = format!("@{}", file.display());
    assert!(host.cli(&["kv", "ops", "set", "dir/a b", &at], &[]).success);
    let listed = host.cli(&["kv", "ops", "list", "--prefix", "dir/", "--json"], &[]);
    let page: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_schema(&page, "KvPage");
    assert_eq!(page["keys"], json!(["dir/a b"]));
    assert_eq!(page["usage"]["keys"], 3);
    let raw = client()
        .get(host.admin_url("/v1/apps/ops/kv/dir%2Fa%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"\x00\x01binary");
    assert!(
        host.cli(
            &[
                "kv",
                "ops",
                "--store",
                "links",
                "set",
                "l:x",
                "https://x.example/"
            ],
            &[]
        )
        .success
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let link = no_redirects.get(host.url("/ops/l/x")).send().await.unwrap();
    assert_eq!(link.status(), 302);
    assert_eq!(link.headers()["location"], "https://x.example/");
    assert!(host.cli(&["kv", "ops", "delete", "dir/a b"], &[]).success);
    assert!(
        host.cli(&["kv", "ops", "get", "dir/a b"], &[])
            .stderr
            .contains("HTTP 404")
    );
    // Clear errors for what cannot be done.
    let undeclared = host.cli(&["kv", "ops", "--store", "sessions", "list"], &[]);
    assert!(
        undeclared.stderr.contains("it declares default, links"),
        "{}",
        undeclared.stderr
    );
    assert!(
        host.cli(&["kv", "nope", "list"], &[])
            .stderr
            .contains("no app named nope")
    );
    let big = dir.write("big.bin", &[b'x'; 5000]);
    let too_big = host.cli(
        &["kv", "ops", "set", "big", &format!("@{}", big.display())],
        &[],
    );
    assert!(too_big.stderr.contains("(HTTP 413)"), "{}", too_big.stderr);
    let (status, body) = host
        .deploy(
            "bad",
            wasm("kv-guest"),
            json!({"route": "/bad", "key_value": ["Not Valid"]}),
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("key_value"),
        "{body}"
    );

    // Removing keeps the data only when asked.
    let kept = host.cli(&["remove", "ops", "--keep-data"], &[]);
    assert!(
        kept.stdout.contains("key-value data is kept"),
        "{}",
        kept.stdout
    );
    deploy(&host, "ops", "kv-guest", &["default", "links"]).await;
    assert_eq!(
        get(&host, "/ops/").await,
        (200, "visit 5\nHello from ops\n".into())
    );
    let removed = host.cli(&["remove", "ops"], &[]);
    assert!(
        removed
            .stdout
            .contains("removed with its key-value data (3 keys"),
        "{}",
        removed.stdout
    );
    deploy(&host, "ops", "kv-guest", &["default"]).await;
    assert_eq!(get(&host, "/ops/").await, (200, "visit 1\n".into()));
}

/// A Redis password comes from a file (a mounted secret) and shows up in
/// no log line, error, metric or `/readyz`, even when Redis refuses it or
/// goes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_credentials_come_from_a_file_and_are_never_shown() {
    let password = "pw-0123456789-secret";
    let mut redis = RedisServer::start_with_password(password);
    let dir = TempDir::new("kv-secret");
    let url_file = dir.write("kv-url", format!("{}\n", redis.url()).as_bytes());
    let url_file = url_file.to_str().unwrap();
    let host = Host::bare(&["--kv-url-file", url_file]);
    deploy(&host, "secret", "kv-guest", &["default"]).await;
    assert_eq!(
        call(&host, Method::POST, "/secret/kv/default/n?incr=2", "").await,
        (200, "2".into())
    );
    redis.kill();
    let (status, body) = call(&host, Method::POST, "/secret/kv/default/n?incr=1", "").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains(&format!("redis://127.0.0.1:{}/0", redis.port)),
        "{body}"
    );
    // A wrong password: refused, said without either password.
    let wrong = dir.write(
        "wrong-url",
        redis.url().replace(password, "not-the-password").as_bytes(),
    );
    redis.restart();
    let other = Host::bare(&["--kv-url-file", wrong.to_str().unwrap()]);
    deploy(&other, "secret", "kv-guest", &["default"]).await;
    let (status, refused) = get(&other, "/secret/kv/default/n").await;
    assert_eq!(status, 422, "{refused}");
    let metrics = host.metrics().await;
    let (_, readyz) = host.readyz().await;
    for text in [
        body,
        refused,
        host.stderr(),
        other.stderr(),
        metrics,
        readyz,
    ] {
        assert!(!text.contains(password), "the password leaked: {text}");
        assert!(
            !text.contains("not-the-password"),
            "the password leaked: {text}"
        );
    }
    // A URL on the command line is checked before the host starts, and the
    // error hides it too.
    let (status, stderr) =
        crate::harness::start_failure_with(&["--kv-url", "http://user:hunter2@example.com/"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--kv-url must be a redis:// URL"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
