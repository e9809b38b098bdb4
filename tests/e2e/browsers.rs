//! Web pages cannot drive the admin API: a browser sends a cross-site
//! `multipart/form-data` POST without a preflight, and a DNS-rebound name
//! makes a page same-origin with the admin listener. Both are refused (403)
//! in every configuration; probes and scrapers still get `/healthz`,
//! `/readyz` and `/metrics`.

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, client, guest, metric, wasm};

/// The reproduction: a deploy that would hand the host's
/// environment to an app at `/x`, sent as a page would send it.
fn hostile_deploy(host: &Host, origin: Option<&str>, host_header: &str) -> reqwest::RequestBuilder {
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(wasm("config-guest")).file_name("hello.wasm"),
        )
        .part(
            "settings",
            reqwest::multipart::Part::text(
                json!({"route": "/x", "secrets": {"k": "file:/proc/self/environ"},
                       "allow_outbound": ["https://attacker.example"]})
                .to_string(),
            )
            .mime_str("application/json")
            .unwrap(),
        );
    let mut request = client()
        .post(host.admin_url("/v1/apps/x/versions"))
        .header("host", host_header)
        .multipart(form);
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    request
}

#[tokio::test]
async fn web_pages_and_rebound_names_cannot_use_the_admin_api() {
    let host = Host::start(&guest("guest"), &[]);
    let port = host.admin.port();
    let rebound = format!("rebind.evil.example:{port}");
    let own = host.admin.to_string();

    for (what, origin, host_header, why) in [
        (
            "origin and rebound host",
            Some("http://evil.example"),
            rebound.as_str(),
            "web pages",
        ),
        (
            "origin alone",
            Some("http://evil.example"),
            own.as_str(),
            "web pages",
        ),
        ("opaque origin", Some("null"), own.as_str(), "web pages"),
        (
            "rebound host alone",
            None,
            rebound.as_str(),
            "DNS rebinding",
        ),
    ] {
        let resp = hostile_deploy(&host, origin, host_header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{what}");
        let body: serde_json::Value = resp.json().await.unwrap();
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(why), "{what}: {message}");
    }
    // Reads are refused too (a rebound page would read them same-origin),
    // and so is anything a fetch() marks cross-site.
    let read = client()
        .get(host.admin_url("/v1/apps"))
        .header("host", &rebound)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 403);
    let fetched = client()
        .delete(host.admin_url("/v1/apps/x"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 403);
    // A CORS preflight gets no permission either.
    let preflight = client()
        .request(Method::OPTIONS, host.admin_url("/v1/apps/x/versions"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 403);
    assert!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Nothing was deployed, nothing answers at /x.
    let (status, apps) = host.admin(Method::GET, "/v1/apps", None, None).await;
    assert_eq!(status, 200);
    assert!(
        apps["apps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["name"] != "x"),
        "{apps}"
    );
    let x = client().get(host.url("/x")).send().await.unwrap();
    assert_ne!(
        x.headers().get("x-app-name").map(|v| v.as_bytes()),
        Some(&b"x"[..])
    );

    // The listener's own names work: its address and localhost.
    let local = client()
        .get(host.admin_url("/v1/apps"))
        .header("host", format!("localhost:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(local.status(), 200);

    // Probes and scrapers answer whatever the Host or Origin.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let resp = client()
            .get(host.admin_url(path))
            .header("host", &rebound)
            .header("origin", "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let m = host.metrics().await;
    assert!(
        metric(
            &m,
            "host_rejections_total",
            &[("reason", "admin_cross_site")]
        ) >= 7.0
    );
    host.log_with(&["admin request refused"]);
}

#[tokio::test]
async fn with_a_token_pages_are_still_refused_and_other_host_names_work() {
    let state = TempDir::new("browser-token");
    let token = "e2e-browser-token-0123456789";
    let host = Host::start_in(
        &state.0,
        &[guest("guest").to_str().unwrap()],
        &[("HOST_ADMIN_TOKEN", token)],
    );
    // The token is the gate: a Service name reaches the API...
    let by_name = client()
        .get(host.admin_url("/v1/apps"))
        .header("host", "host-admin.default.svc:8081")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(by_name.status(), 200);
    // ...but a request a page made is refused even with the right token.
    let from_page = client()
        .get(host.admin_url("/v1/apps"))
        .header("origin", "https://evil.example")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(from_page.status(), 403);
    let resp = hostile_deploy(&host, Some("https://evil.example"), &host.admin.to_string())
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}
