//! Cluster mode through the real binary: three host replicas (real
//! processes on loopback ports) sharing one real `redis-server`
//! (`--cluster-url`). A change made on any replica reaches all of them;
//! concurrent changes lose no update; replicas killed, restarted and
//! joining converge; a Redis outage stops changes, not serving; load
//! through every replica sees no error while apps change; and apps' data
//! is shared.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Host, Load, RedisServer, TempDir, client, metric, variant, wasm};

/// How long a replica may take to serve a change (generous: the machine
/// is shared; the bench measures the real figure).
const CONVERGE: Duration = Duration::from_secs(30);

/// A redis-server and replicas on it, each with a state directory of its
/// own that outlives it (for restarts).
struct Cluster {
    redis: RedisServer,
    replicas: Vec<Option<Host>>,
    states: Vec<TempDir>,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        let mut cluster = Cluster {
            redis: RedisServer::start(),
            replicas: Vec::new(),
            states: Vec::new(),
        };
        for _ in 0..n {
            cluster.join();
        }
        cluster
    }

    /// Start one more replica, with a fresh state directory.
    fn join(&mut self) -> usize {
        self.states.push(TempDir::new("replica"));
        self.replicas.push(None);
        let i = self.replicas.len() - 1;
        self.restart(i);
        i
    }

    /// Start replica `i` (again) on its state directory: back once its
    /// startup line is out, i.e. once it is ready.
    fn restart(&mut self, i: usize) {
        self.restart_with(i, &[]);
    }

    /// [`Cluster::restart`] with extra environment.
    fn restart_with(&mut self, i: usize, env: &[(&str, &str)]) {
        let url = self.redis.url();
        let host = Host::start_in(
            &self.states[i].0,
            &[
                "--no-default-app",
                "--version-headers",
                "true",
                "--cluster-url",
                &url,
                "--replica-id",
                &format!("replica-{i}"),
            ],
            env,
        );
        self.replicas[i] = Some(host);
    }

    fn replica(&self, i: usize) -> &Host {
        self.replicas[i].as_ref().expect("replica is running")
    }

    fn running(&self) -> impl Iterator<Item = &Host> {
        self.replicas.iter().flatten()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut host) = self.replicas[i].take() {
            host.signal(libc::SIGKILL);
            host.wait_exit(Duration::from_secs(10));
        }
    }
}

/// GET `path` on `host`'s public listener: (status, x-app-version, body).
async fn get(host: &Host, path: &str) -> (u16, String, String) {
    let response = client().get(host.url(path)).send().await.unwrap();
    let version = response
        .headers()
        .get("x-app-version")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (
        response.status().as_u16(),
        version,
        response.text().await.unwrap_or_default(),
    )
}

/// Deploy `wasm` as app `name` at `/name` through `host`: (status, body).
async fn deploy(host: &Host, name: &str, wasm: Vec<u8>) -> (u16, Value) {
    host.deploy(name, wasm, json!({"route": format!("/{name}")}), None)
        .await
}

/// Wait until `host`'s app answers `path` (any status the app gives, not
/// the host's 404 or 5xx) from `version`: how long it took.
async fn serves(host: &Host, path: &str, version: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, served, _) = get(host, path).await;
        if status < 500 && served == version {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < CONVERGE,
            "{} still serves {served:?} (status {status}) at {path}, not {version}",
            host.addr
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The app as `host` shows it.
async fn app(host: &Host, name: &str) -> Value {
    let (status, body) = host
        .admin(Method::GET, &format!("/v1/apps/{name}"), None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn version(body: &Value) -> String {
    body["current_version"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_deploy_on_one_replica_reaches_all_three() {
    let cluster = Cluster::start(3);
    let (status, first) = deploy(cluster.replica(0), "hello", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{first}");
    let deployed = Instant::now();
    let v1 = version(&first);
    let mut third = Duration::ZERO;
    for host in cluster.running() {
        serves(host, "/hello", &v1).await;
        third = deployed.elapsed();
    }
    eprintln!("from the deploy's 201 to the third replica serving it: {third:?}");

    // A new version: each replica swaps to it, and each shows the same
    // record at the same revision, with every replica listed at it.
    let (status, second) = deploy(
        cluster.replica(0),
        "hello",
        variant(&wasm("counter-guest"), 1),
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let deployed = Instant::now();
    let v2 = version(&second);
    let revision = second["revision"]
        .as_u64()
        .expect("a revision in cluster mode");
    for host in cluster.running() {
        serves(host, "/hello", &v2).await;
    }
    eprintln!(
        "second deploy: the third replica served it {:?} after the 201",
        deployed.elapsed()
    );
    for host in cluster.running() {
        let start = Instant::now();
        loop {
            let shown = app(host, "hello").await;
            assert_eq!(shown["revision"], revision, "{shown}");
            assert_eq!(version(&shown), v2);
            let replicas = shown["replicas"].as_array().unwrap().clone();
            if replicas.len() == 3 && replicas.iter().all(|r| r["revision"] == revision) {
                break;
            }
            assert!(start.elapsed() < CONVERGE, "{shown}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every replica lists the others.
    let (_, cluster_info) = cluster
        .replica(2)
        .admin(Method::GET, "/v1/cluster", None, None)
        .await;
    assert_eq!(cluster_info["replica"], "replica-2", "{cluster_info}");
    assert_eq!(cluster_info["replicas"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn rollback_and_canary_on_another_replica_route_alike_and_wait_means_all() {
    let cluster = Cluster::start(3);
    let dir = TempDir::new("components");
    let one = dir.write("one.wasm", &wasm("counter-guest"));
    let two = dir.write("two.wasm", &variant(&wasm("counter-guest"), 2));
    let run = |host: &Host, args: &[&str]| {
        let out = host.cli(args, &[]);
        assert!(out.success, "{args:?}: {}{}", out.stdout, out.stderr);
        out
    };
    let r0 = cluster.replica(0);
    let r1 = cluster.replica(1);
    let one = one.to_str().unwrap();
    run(
        r0,
        &["deploy", one, "--name", "web", "--route", "/web", "--wait"],
    );
    let v1 = version(&app(r0, "web").await);
    let out = run(
        r0,
        &["deploy", two.to_str().unwrap(), "--name", "web", "--wait"],
    );
    assert!(
        out.stderr.contains("served by all 3 replica(s)"),
        "{}",
        out.stderr
    );
    let v2 = version(&app(r0, "web").await);
    assert_ne!(v1, v2);
    // `--wait` returned: every replica serves it now, with no polling.
    for host in cluster.running() {
        assert_eq!(get(host, "/web").await.1, v2);
    }

    // Rollback on replica 1: every replica serves v1 once --wait returns.
    run(r1, &["rollback", "web", "--wait"]);
    for host in cluster.running() {
        for _ in 0..20 {
            assert_eq!(get(host, "/web").await.1, v1, "{}", host.addr);
        }
    }
    // A canary at 100% of v2, then 0%: every replica routes alike.
    run(
        r1,
        &[
            "canary",
            "web",
            "--version",
            &v2,
            "--weight",
            "100",
            "--wait",
        ],
    );
    for host in cluster.running() {
        let shown = app(host, "web").await;
        assert_eq!(shown["canary"]["weight"], 100, "{shown}");
        assert_eq!(shown["canary"]["version"], v2.as_str());
        for _ in 0..20 {
            assert_eq!(get(host, "/web").await.1, v2, "{}", host.addr);
        }
    }
    run(
        r1,
        &[
            "canary",
            "web",
            "--version",
            &v2,
            "--weight",
            "30",
            "--wait",
        ],
    );
    for host in cluster.running() {
        let shown = app(host, "web").await;
        assert_eq!(shown["canary"]["weight"], 30, "{shown}");
        assert_eq!(version(&shown), v1);
        // Both sides serve on every replica.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(get(host, "/web").await.1);
        }
        assert_eq!(seen.len(), 2, "{seen:?} on {}", host.addr);
    }
    run(r1, &["canary", "web", "--abort", "--wait"]);
    for host in cluster.running() {
        assert!(app(host, "web").await["canary"].is_null());
        assert_eq!(get(host, "/web").await.1, v1);
    }
    // `host apps` on any replica shows every replica at the revision.
    let out = run(cluster.replica(2), &["apps", "web"]);
    assert!(out.stdout.contains("(3/3 replicas)"), "{}", out.stdout);
    for i in 0..3 {
        assert!(
            out.stdout.contains(&format!("replica replica-{i}")),
            "{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn concurrent_deploys_of_one_app_lose_no_update() {
    let cluster = Cluster::start(3);
    let (status, body) = deploy(cluster.replica(0), "race", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{body}");
    let mut conflicts = 0;
    for round in 0..5 {
        let (a, b) = (
            variant(&wasm("counter-guest"), 100 + round * 2),
            variant(&wasm("counter-guest"), 101 + round * 2),
        );
        let ((sa, ba), (sb, bb)) = tokio::join!(
            deploy(cluster.replica(1), "race", a),
            deploy(cluster.replica(2), "race", b)
        );
        let winner = match (sa, sb) {
            (201, 409) => {
                assert!(bb["error"].as_str().unwrap().contains("revision"), "{bb}");
                conflicts += 1;
                version(&ba)
            }
            (409, 201) => {
                assert!(ba["error"].as_str().unwrap().contains("revision"), "{ba}");
                conflicts += 1;
                version(&bb)
            }
            // One finished before the other was planned: both apply, in
            // revision order, and the later one is current.
            (201, 201) => {
                let (ra, rb) = (
                    ba["revision"].as_u64().unwrap(),
                    bb["revision"].as_u64().unwrap(),
                );
                assert_ne!(ra, rb);
                let (later, earlier) = if ra > rb { (&ba, &bb) } else { (&bb, &ba) };
                // The later one was planned on the earlier one: its
                // history holds it (no update lost).
                let history: Vec<&str> = later["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v["version"].as_str().unwrap())
                    .collect();
                assert!(history.contains(&version(earlier).as_str()), "{later}");
                version(later)
            }
            other => panic!("round {round}: {other:?}: {ba} {bb}"),
        };
        // Every replica agrees on the winner, and its record holds both
        // earlier versions only as history.
        for host in cluster.running() {
            serves(host, "/race", &winner).await;
        }
        let records: Vec<Value> =
            futures::future::join_all(cluster.running().map(|h| app(h, "race"))).await;
        for record in &records[1..] {
            assert_eq!(record["revision"], records[0]["revision"]);
            assert_eq!(record["versions"], records[0]["versions"]);
        }
        if conflicts > 0 && round >= 1 {
            break;
        }
    }
    assert!(
        conflicts > 0,
        "no round raced: every deploy finished before the other began"
    );
}

#[tokio::test]
async fn replicas_killed_restarted_or_joining_converge() {
    let mut cluster = Cluster::start(3);
    for (i, app) in ["a", "b", "c"].iter().enumerate() {
        let (status, body) =
            deploy(cluster.replica(i), app, variant(&wasm("counter-guest"), i)).await;
        assert_eq!(status, 201, "{body}");
    }
    // Replica 2 is killed while replica 0 deploys; the deploying replica
    // itself is killed during another deploy.
    let next = variant(&wasm("counter-guest"), 10);
    let deploying = {
        let host = cluster.replica(0);
        let (addr, next) = (host.admin, next.clone());
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .part(
                    "component",
                    reqwest::multipart::Part::bytes(next).file_name("a.wasm"),
                )
                .part("settings", reqwest::multipart::Part::text("{}"));
            client()
                .post(format!("http://{addr}/v1/apps/a/versions"))
                .multipart(form)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    cluster.kill(2);
    let status = deploying.await.unwrap().unwrap();
    assert_eq!(status, 201);
    let (_, body) = deploy(cluster.replica(1), "b", variant(&wasm("counter-guest"), 11)).await;
    let wanted_b = version(&body);
    // Replica 1 dies during a deploy of its own: the change is either in
    // the store or not at all; the others agree on which.
    let doomed = {
        let addr = cluster.replica(1).admin;
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .part(
                    "component",
                    reqwest::multipart::Part::bytes(variant(&wasm("counter-guest"), 12))
                        .file_name("c.wasm"),
                )
                .part("settings", reqwest::multipart::Part::text("{}"));
            let _ = client()
                .post(format!("http://{addr}/v1/apps/c/versions"))
                .multipart(form)
                .send()
                .await;
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    cluster.kill(1);
    let _ = doomed.await;
    // A change after it, waited for on replica 0: revisions apply in
    // order, so replica 0 has then applied the doomed deploy too, if it
    // was committed.
    let dir = TempDir::new("marker");
    let marker = dir.write("marker.wasm", &wasm("counter-guest"));
    let out = cluster.replica(0).cli(
        &[
            "deploy",
            marker.to_str().unwrap(),
            "--name",
            "marker",
            "--route",
            "/marker",
            "--wait",
        ],
        &[],
    );
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let c_now = version(&app(cluster.replica(0), "c").await);
    let a_now = version(&app(cluster.replica(0), "a").await);

    // Both come back on their state directories and serve everything at
    // the store's versions as soon as they are up (ready means routable).
    cluster.restart(1);
    cluster.restart(2);
    let expected = [("a", a_now.clone()), ("b", wanted_b.clone())];
    for host in cluster.running() {
        for (name, v) in &expected {
            let (status, served, _) = get(host, &format!("/{name}")).await;
            assert_eq!(
                (status, served.as_str()),
                (200, v.as_str()),
                "/{name} on {}",
                host.addr
            );
        }
        // The store has the doomed deploy or not; every replica agrees.
        serves(host, "/c", &c_now).await;
    }

    // A replica that joins later serves every app before it is ready.
    let late = cluster.join();
    let host = cluster.replica(late);
    for (name, v) in expected.iter().chain([("c", c_now.clone())].iter()) {
        let (status, served, _) = get(host, &format!("/{name}")).await;
        assert_eq!((status, served.as_str()), (200, v.as_str()), "/{name}");
    }
    let (status, ready) = host.readyz().await;
    assert_eq!((status, ready.as_str()), (200, "ready\n"));
}

#[tokio::test]
async fn a_redis_outage_stops_changes_not_serving() {
    let mut cluster = Cluster::start(3);
    let (status, body) = deploy(cluster.replica(0), "up", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{body}");
    let v1 = version(&body);
    for host in cluster.running() {
        serves(host, "/up", &v1).await;
    }

    cluster.redis.kill();
    // Serving goes on everywhere.
    for host in cluster.running() {
        for _ in 0..20 {
            let (status, served, _) = get(host, "/up").await;
            assert_eq!((status, served.as_str()), (200, v1.as_str()));
        }
    }
    // Changes answer 503 naming the cluster store, on every replica; and
    // nothing changed.
    for host in cluster.running() {
        let (status, body) = deploy(host, "up", variant(&wasm("counter-guest"), 1)).await;
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("the cluster store at redis://127.0.0.1"),
            "{error}"
        );
        let (status, _) = host
            .admin(Method::POST, "/v1/apps/up/rollback", None, None)
            .await;
        assert_eq!(status, 503);
        assert_eq!(get(host, "/up").await.1, v1);
    }
    // The outage is visible: the readiness body, the metric.
    let host = cluster.replica(1);
    let start = Instant::now();
    loop {
        let (_, body) = host.readyz().await;
        let metrics = host.metrics().await;
        if body.contains("cluster store") && metric(&metrics, "host_cluster_store_up", &[]) == 0.0 {
            assert!(body.starts_with("ready\n"), "{body}");
            break;
        }
        assert!(start.elapsed() < CONVERGE, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A replica that joins now, with nothing cached, knows no app: it
    // starts, but is not ready (it would answer 404 for every app) and
    // says why.
    let late = cluster.join();
    let (status, body) = cluster.replica(late).readyz().await;
    assert_eq!(status, 503);
    assert!(body.contains("never loaded the cluster's apps"), "{body}");
    // `host apps` says the replicas cannot be listed.
    let out = cluster.replica(0).cli(&["apps"], &[]);
    assert!(out.stdout.contains("replicas unknown"), "{}", out.stdout);

    // Redis comes back (empty: it kept nothing): the replicas put back what
    // they serve, and a deploy works and reaches every replica (the late
    // one too, which becomes ready).
    cluster.redis.restart();
    let start = Instant::now();
    let v2 = loop {
        let (status, body) =
            deploy(cluster.replica(2), "up", variant(&wasm("counter-guest"), 2)).await;
        if status == 201 {
            break version(&body);
        }
        assert!(
            matches!(status, 503 | 409) && start.elapsed() < CONVERGE,
            "{status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for host in cluster.running() {
        serves(host, "/up", &v2).await;
    }
    let start = Instant::now();
    while cluster.replica(late).readyz().await.0 != 200 {
        assert!(
            start.elapsed() < CONVERGE,
            "the late replica never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The history came back with it: a rollback returns to v1 everywhere.
    let (status, body) = cluster
        .replica(0)
        .admin(Method::POST, "/v1/apps/up/rollback", None, None)
        .await;
    assert_eq!(status, 200, "{body}");
    for host in cluster.running() {
        serves(host, "/up", &v1).await;
    }
    let metrics = cluster.replica(1).metrics().await;
    assert_eq!(metric(&metrics, "host_cluster_store_up", &[]), 1.0);
}

#[tokio::test]
async fn load_through_every_replica_sees_no_error_during_deploys_and_rollbacks() {
    let cluster = Cluster::start(3);
    let (status, body) = deploy(cluster.replica(0), "live", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{body}");
    for host in cluster.running() {
        serves(host, "/live", &version(&body)).await;
    }
    let load = Load::start(cluster.running().map(|h| h.url("/live?ms=0")).collect(), 6);

    let mut last = String::new();
    for i in 0..5 {
        let on = cluster.replica(i % 3);
        let guest = if i % 2 == 0 {
            "slow-guest"
        } else {
            "counter-guest"
        };
        let (status, body) = deploy(on, "live", variant(&wasm(guest), i)).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = cluster
            .replica((i + 1) % 3)
            .admin(Method::POST, "/v1/apps/live/rollback", None, None)
            .await;
        assert_eq!(status, 200, "{body}");
        last = version(&body);
    }
    // Let every replica apply the last change under load too.
    for host in cluster.running() {
        serves(host, "/live?ms=0", &last).await;
    }
    load.stop_without_failures("across 3 replicas during 5 deploys and 5 rollbacks")
        .await;
}

#[tokio::test]
async fn key_value_data_written_through_one_replica_is_read_through_another() {
    let cluster = Cluster::start(3);
    let (status, body) = cluster
        .replica(0)
        .deploy(
            "notes",
            wasm("kv-guest"),
            json!({"route": "/notes", "key_value": ["default"]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let v = version(&body);
    for host in cluster.running() {
        serves(host, "/notes/kv/default/missing", &v).await;
    }
    // Through the guest on replica 0, read through the guest on the others.
    let response = client()
        .put(cluster.replica(0).url("/notes/kv/default/greeting"))
        .body("hello from replica 0")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.status());
    for host in cluster.running() {
        let (status, _, body) = get(host, "/notes/kv/default/greeting").await;
        assert_eq!((status, body.as_str()), (200, "hello from replica 0"));
    }
    // Through the admin API of replica 2, read by the guest on replica 1.
    let response = client()
        .put(cluster.replica(2).admin_url("/v1/apps/notes/kv/motd"))
        .body("set by an operator")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let (status, _, body) = get(cluster.replica(1), "/notes/kv/default/motd").await;
    assert_eq!((status, body.as_str()), (200, "set by an operator"));
    // Counters from every replica add up.
    let mut last = 0;
    for round in 0..30 {
        let (status, _, body) = get(cluster.replica(round % 3), "/notes/").await;
        assert_eq!(status, 200, "{body}");
        last = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("visit "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{body}"));
    }
    assert_eq!(last, 30);
}

/// Routes swapped between apps while a replica is paused (SIGSTOP): it
/// catches up with all of it in one snapshot, and serves every app at its
/// new route, with no clash on the way.
#[tokio::test]
async fn a_paused_replica_catches_up_with_routes_swapped_between_apps() {
    let cluster = Cluster::start(3);
    let guest = wasm("counter-guest");
    let on = |i: usize| cluster.replica(i);
    let deploy_at = |i: usize, name: &'static str, route: &'static str, n: usize| {
        let wasm = variant(&guest, n);
        async move {
            let (status, body) = on(i)
                .deploy(name, wasm, json!({ "route": route }), None)
                .await;
            assert_eq!(status, 201, "{body}");
            version(&body)
        }
    };
    let a1 = deploy_at(0, "a", "/a", 1).await;
    let b1 = deploy_at(0, "b", "/b", 2).await;
    for host in cluster.running() {
        serves(host, "/a", &a1).await;
        serves(host, "/b", &b1).await;
    }
    let paused = cluster.replica(2);
    paused.signal(libc::SIGSTOP);
    // a: /a → /c; b: /b → /a; a: /c → /b. Each step is valid on its own.
    let a2 = deploy_at(0, "a", "/c", 3).await;
    let b2 = deploy_at(1, "b", "/a", 4).await;
    let a3 = deploy_at(0, "a", "/b", 5).await;
    for host in [on(0), on(1)] {
        serves(host, "/a", &b2).await;
        serves(host, "/b", &a3).await;
    }
    paused.signal(libc::SIGCONT);
    serves(paused, "/a", &b2).await;
    serves(paused, "/b", &a3).await;
    assert_ne!(a2, a3);
    let (status, _, _) = get(paused, "/c").await;
    assert_eq!(status, 404, "no app is left at /c");
    // Nothing is owed: every replica reports the latest revisions.
    let start = Instant::now();
    loop {
        let shown = app(on(0), "b").await;
        let replicas = shown["replicas"].as_array().unwrap().clone();
        if replicas.len() == 3
            && replicas
                .iter()
                .all(|r| r["revision"] == shown["revision"] && r["failed"].is_null())
        {
            break;
        }
        assert!(start.elapsed() < CONVERGE, "{shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A host switched to cluster mode and back keeps its own apps: the
/// cluster's cache is kept apart, and its collector deletes nothing of the
/// standalone host's.
#[tokio::test]
async fn a_standalone_host_switched_to_cluster_mode_and_back_keeps_its_apps() {
    let redis = RedisServer::start();
    let state = TempDir::new("switch");
    let standalone = |state: &TempDir| {
        Host::start_in(
            &state.0,
            &["--no-default-app", "--version-headers", "true"],
            &[],
        )
    };
    let host = standalone(&state);
    let (status, body) = deploy(&host, "own", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{body}");
    let own = version(&body);
    drop(host);

    let url = redis.url();
    let replica = Host::start_in(
        &state.0,
        &[
            "--no-default-app",
            "--version-headers",
            "true",
            "--cluster-url",
            &url,
        ],
        &[],
    );
    // The cluster knows nothing of it; its changes wake the collectors.
    assert_eq!(get(&replica, "/own").await.0, 404);
    for n in 0..3 {
        let (status, body) = deploy(&replica, "shared", variant(&wasm("counter-guest"), n)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = replica
        .admin(Method::DELETE, "/v1/apps/shared", None, None)
        .await;
    assert_eq!(status, 200);
    // The collector runs shortly after a change; give it the chance.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(replica);

    let host = standalone(&state);
    let (status, served, _) = get(&host, "/own").await;
    assert_eq!((status, served.as_str()), (200, own.as_str()));
}

/// A version one replica cannot serve (a secret its environment lacks)
/// leaves that replica on the version before, says why in `host apps`, and
/// makes `--wait` fail naming it; the others serve it.
#[tokio::test]
async fn a_replica_that_cannot_serve_a_version_keeps_the_old_one_and_says_why() {
    let mut cluster = Cluster::start(0);
    for i in 0..3 {
        cluster.states.push(TempDir::new("replica"));
        cluster.replicas.push(None);
        if i < 2 {
            cluster.restart_with(i, &[("APP_SECRET_TOKEN", "s3cret")]);
        } else {
            cluster.restart(i);
        }
    }
    let (status, body) = deploy(cluster.replica(0), "web", wasm("config-guest")).await;
    assert_eq!(status, 201, "{body}");
    let v1 = version(&body);
    for host in cluster.running() {
        serves(host, "/web", &v1).await;
    }
    let dir = TempDir::new("components");
    let v2_file = dir.write("v2.wasm", &variant(&wasm("config-guest"), 1));
    let out = cluster.replica(1).cli(
        &[
            "deploy",
            v2_file.to_str().unwrap(),
            "--name",
            "web",
            "--secret",
            "TOKEN=env:APP_SECRET_TOKEN",
            "--wait",
        ],
        &[],
    );
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("replica replica-2 cannot serve revision")
            && out.stderr.contains("APP_SECRET_TOKEN"),
        "{}",
        out.stderr
    );
    let v2 = version(&app(cluster.replica(1), "web").await);
    assert_ne!(v1, v2);
    serves(cluster.replica(0), "/web", &v2).await;
    serves(cluster.replica(1), "/web", &v2).await;
    for _ in 0..10 {
        assert_eq!(get(cluster.replica(2), "/web").await.1, v1);
    }
    let out = cluster.replica(0).cli(&["apps", "web"], &[]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("(2/3 replicas)"), "{}", out.stdout);
    assert!(
        out.stdout.contains("cannot serve revision"),
        "{}",
        out.stdout
    );
    // The value never appears.
    assert!(!out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"));
}

/// A replica that starts while the store is down and has never loaded the
/// cluster is not ready; once the store answers (a new, empty one) it is,
/// with no deploy needed.
#[tokio::test]
async fn a_replica_started_before_its_store_becomes_ready_when_it_answers() {
    let mut cluster = Cluster::start(0);
    cluster.redis.kill();
    let i = cluster.join();
    assert_eq!(cluster.replica(i).readyz().await.0, 503);
    cluster.redis.restart();
    let start = Instant::now();
    while cluster.replica(i).readyz().await.0 != 200 {
        assert!(start.elapsed() < CONVERGE, "never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = deploy(cluster.replica(i), "first", wasm("counter-guest")).await;
    assert_eq!(status, 201, "{body}");
}
