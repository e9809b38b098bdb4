//! Per-app settings end to end: env vars, wasi:config values, secrets that
//! never show up anywhere, and the outbound HTTP policy.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, client, guest, upstream, wasm};

const SECRET: &str = "hunter2-e2e-secret-value";

#[tokio::test]
async fn env_config_and_secrets_reach_the_guest_and_secrets_stay_secret() {
    let state = TempDir::new("secrets");
    let component = guest("guest");
    let host = Host::start_in(
        &state.0,
        &[
            component.to_str().unwrap(),
            "--secret-env-prefix",
            "E2E_SECRET_",
        ],
        &[("E2E_SECRET_VAR", SECRET)],
    );
    let config = guest("config-guest");
    let out = host.cli(
        &[
            "deploy",
            config.to_str().unwrap(),
            "--name",
            "cfg",
            "--route",
            "/cfg",
            "--env",
            "PLAIN=1",
            "--config",
            "greeting=hi",
            "--secret",
            "API_KEY=E2E_SECRET_VAR",
        ],
        &[],
    );
    assert!(out.success, "{}", out.stderr);

    let resp = client()
        .get(host.url("/cfg?config=greeting,absent&secret=API_KEY"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["env"]["PLAIN"], "1");
    assert_eq!(json["config"]["greeting"], "hi");
    assert_eq!(json["config"]["absent"], serde_json::Value::Null);
    assert_eq!(json["secret"], json!({"name": "API_KEY", "set": true}));
    let unset: serde_json::Value = client()
        .get(host.url("/cfg?secret=NOPE"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(unset["secret"]["set"], false);

    // The secret's value is in no output: responses, listings, CLI, logs, disk.
    let (_, listing) = host.admin(Method::GET, "/v1/apps", None, None).await;
    let cfg = listing["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "cfg")
        .unwrap();
    assert_eq!(
        cfg["versions"][0]["settings"]["secrets"]["API_KEY"],
        "env:E2E_SECRET_VAR"
    );
    let apps_human = host.cli(&["apps", "cfg"], &[]);
    let apps_json = host.cli(&["apps", "--json"], &[]);
    let mut on_disk = String::new();
    for dir in ["apps"] {
        for entry in std::fs::read_dir(state.0.join(dir)).unwrap() {
            on_disk.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
    }
    for (what, text) in [
        ("response", body),
        ("listing", listing.to_string()),
        ("deploy output", out.stdout + &out.stderr),
        ("apps output", apps_human.stdout + &apps_json.stdout),
        ("host log", host.log_with(&["path=/cfg"])),
        ("app records", on_disk),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into the {what}");
    }
}

#[tokio::test]
async fn outbound_calls_are_denied_unless_allowed_and_private_ips_need_listing() {
    let upstream = upstream("upstream says hi").await;
    let host = Host::start(&guest("guest"), &[]);
    let fetch = wasm("fetch-guest");
    let port = upstream.port();

    // Allowed: the literal loopback address and port are listed.
    let (status, body) = host
        .deploy(
            "allowed",
            fetch.clone(),
            json!({"route": "/allowed", "allow_outbound": [format!("http://127.0.0.1:{port}")]}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let resp = client()
        .get(host.url(&format!("/allowed?url=http://127.0.0.1:{port}/x")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream says hi");

    // Denied by default: nothing listed.
    let (status, _) = host
        .deploy("denied", fetch.clone(), json!({"route": "/denied"}), None)
        .await;
    assert_eq!(status, 201);
    let resp = client()
        .get(host.url(&format!("/denied?url=http://127.0.0.1:{port}/x")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("HttpRequestDenied"));

    // Allowed by name, but the name resolves to loopback: blocked after DNS.
    let (status, _) = host
        .deploy(
            "byname",
            fetch,
            json!({"route": "/byname", "allow_outbound": [format!("http://localhost:{port}")]}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    let resp = client()
        .get(host.url(&format!("/byname?url=http://localhost:{port}/x")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert!(resp.text().await.unwrap().contains("HttpRequestDenied"));

    let log = host.log_with(&[
        "outbound request denied",
        "not in the app's outbound allow-list",
        "loopback, private or link-local",
    ]);
    assert!(
        log.contains("outbound request denied")
            && log.contains("not in the app's outbound allow-list"),
        "{log}"
    );
    assert!(log.contains("loopback, private or link-local"), "{log}");
}

#[tokio::test]
async fn manifest_apps_route_by_host_and_longest_prefix() {
    let dir = TempDir::new("manifest");
    let manifest = format!(
        r#"
[[app]]
name = "root"
component = "{guest}"
route = "/"

[[app]]
name = "api"
component = "{counter}"
route = "/api"

[[app]]
name = "api-v2"
component = "{slow}"
route = "/api/v2"

[[app]]
name = "tenant"
component = "{counter}"
route = "/"
host = "tenant.example"
env = {{ TENANT = "1" }}
"#,
        guest = guest("guest").display(),
        counter = guest("counter-guest").display(),
        slow = guest("slow-guest").display(),
    );
    let path = dir.write("apps.toml", manifest.as_bytes());
    let host = Host::start_in(
        &dir.0.join("state"),
        &["--manifest", path.to_str().unwrap()],
        &[],
    );
    let app_for = |path: &str, host_header: Option<&str>| {
        let mut request = client().get(host.url(path));
        if let Some(h) = host_header {
            request = request.header("host", h);
        }
        async move {
            let resp = request.send().await.unwrap();
            resp.headers()
                .get("x-app-name")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        }
    };
    assert_eq!(app_for("/", None).await, "root");
    assert_eq!(app_for("/apix", None).await, "root");
    assert_eq!(app_for("/api", None).await, "api");
    assert_eq!(app_for("/api/v1/users", None).await, "api");
    assert_eq!(app_for("/api/v2?ms=0", None).await, "api-v2");
    assert_eq!(app_for("/api/v2/deep?ms=0", None).await, "api-v2");
    assert_eq!(
        app_for("/api/v2", Some("tenant.example:8080")).await,
        "tenant",
        "host routes win"
    );
    assert_eq!(app_for("/", Some("other.example")).await, "root");
    // Manifest apps are read-only through the admin API.
    let (status, body) = host.admin(Method::DELETE, "/v1/apps/api", None, None).await;
    assert_eq!(status, 409, "{body}");

    // No route at all: 404 with a JSON error.
    let bare = Host::bare(&[]);
    let resp = client().get(bare.url("/anything")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no app is routed at /anything");
}
