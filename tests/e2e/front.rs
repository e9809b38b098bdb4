//! The production front door: health, readiness, metrics, request ids,
//! access and guest logs, TLS, HTTP/2 and h2c.

use std::net::TcpListener;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::harness::{Host, TempDir, client, guest, host_bin, metric, wasm};

#[tokio::test]
async fn readiness_is_false_until_apps_are_loaded() {
    // A fixed admin port so /readyz can be polled before the startup line.
    let admin = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = TempDir::new("ready");
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
    let mut cmd = std::process::Command::new(host_bin());
    cmd.args(["serve", "--no-default-app", "--listen", "127.0.0.1:0"])
        .args([
            "--admin-listen",
            &admin.to_string(),
            "--manifest",
            path.to_str().unwrap(),
        ])
        .arg("--state-dir")
        .arg(dir.0.join("state"));
    let spawner = std::thread::spawn(move || Host::spawn(cmd));

    let http = client();
    let mut seen_not_ready = false;
    for _ in 0..2000 {
        match http.get(format!("http://{admin}/readyz")).send().await {
            Ok(r) if r.status() == 503 => {
                seen_not_ready = true;
                let live = http
                    .get(format!("http://{admin}/healthz"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(live.status(), 200, "alive while loading");
                break;
            }
            Ok(r) if r.status() == 200 => break,
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    let host = spawner.join().unwrap();
    assert!(
        seen_not_ready,
        "never saw /readyz answer 503 while ten components compiled"
    );
    let ready = http.get(host.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn request_ids_are_kept_or_made_and_reach_the_guest() {
    let host = Host::start(&guest("guest"), &[]);
    let http = client();
    let resp = http
        .get(host.url("/headers"))
        .header("x-request-id", "e2e-req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "e2e-req-1");
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        json["headers"]["x-request-id"], "e2e-req-1",
        "the guest sees the id"
    );

    let resp = http.get(host.url("/headers")).send().await.unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(made.len(), 32);
    assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["headers"]["x-request-id"], made.as_str());
    // Host-made responses carry one too.
    let resp = http
        .get(host.url("/x"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "bad id with spaces");
}

#[tokio::test]
async fn json_logs_carry_the_request_id_and_guest_output_is_captured_with_a_budget() {
    let host = Host::start(&guest("chatty-guest"), &["--log-format", "json"]);
    let http = client();
    let resp = http
        .get(host.url("/?lines=2"))
        .header("x-request-id", "e2e-json-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "printed 2 lines\n");
    let resp = http
        .get(host.url("/?lines=5000"))
        .header("x-request-id", "e2e-flood")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();

    // Wait for the last request's access line (the log is collected by
    // another thread), then read every line as JSON.
    let parse = |log: String| -> Vec<serde_json::Value> {
        log.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let mut lines = parse(host.stderr());
    for _ in 0..1000 {
        if lines
            .iter()
            .any(|l| l["target"] == "access" && l["request_id"] == "e2e-flood")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        lines = parse(host.stderr());
    }
    let access = lines
        .iter()
        .find(|l| l["target"] == "access" && l["request_id"] == "e2e-json-7")
        .expect("an access log line with the request id");
    assert_eq!(access["app"], "default");
    assert_eq!(access["status"], 200);
    assert_eq!(access["bytes"], 16);
    assert!(access["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(access["guest_ms"].is_number());

    let guest_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "guest" && l["request_id"] == "e2e-json-7")
        .collect();
    assert_eq!(
        guest_lines.len(),
        4,
        "2 stdout + 2 stderr lines: {guest_lines:?}"
    );
    assert!(
        guest_lines
            .iter()
            .any(|l| l["message"] == "chatty stdout line 1" && l["stream"] == "stdout")
    );
    assert!(
        guest_lines
            .iter()
            .any(|l| l["message"] == "chatty stderr line 0" && l["stream"] == "stderr")
    );

    let flood = lines
        .iter()
        .filter(|l| l["target"] == "guest" && l["request_id"] == "e2e-flood")
        .count();
    assert_eq!(
        flood, 101,
        "100 lines, then one saying the rest was dropped"
    );
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let host = Host::start(
        &guest("guest"),
        &["--max-body-bytes", "100", "--max-headers", "20"],
    );
    let http = client();
    for _ in 0..3 {
        assert_eq!(http.get(host.url("/")).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        http.post(host.url("/echo"))
            .body(vec![0u8; 500])
            .send()
            .await
            .unwrap()
            .status(),
        413
    );
    let mut bomb = http.get(host.url("/"));
    for i in 0..30 {
        bomb = bomb.header(format!("x-h{i}"), "v");
    }
    assert_eq!(bomb.send().await.unwrap().status(), 431);
    let (status, _) = host
        .deploy("trap", wasm("trap-guest"), json!({"route": "/trap"}), None)
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        http.get(host.url("/trap/x")).send().await.unwrap().status(),
        500
    );
    let (status, _) = host.deploy("trap", b"junk".to_vec(), json!({}), None).await;
    assert_eq!(status, 422);
    let (status, _) = host
        .deploy(
            "fetch",
            wasm("fetch-guest"),
            json!({"route": "/fetch"}),
            None,
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        http.get(host.url("/fetch?url=http://127.0.0.1:9/"))
            .send()
            .await
            .unwrap()
            .status(),
        502
    );

    let m = host.metrics().await;
    let v = |name: &str, labels: &[(&str, &str)]| metric(&m, name, labels);
    assert_eq!(
        v(
            "host_requests_total",
            &[("app", "default"), ("status", "2xx")]
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        v("host_requests_total", &[("app", "trap"), ("status", "5xx")]),
        1.0
    );
    assert_eq!(
        v("host_request_duration_seconds_count", &[("app", "default")]),
        4.0,
        "3 ok and the 413 (the 431 comes before routing)"
    );
    assert!(v("host_guest_duration_seconds_count", &[("app", "default")]) >= 3.0);
    assert!(v("host_instantiation_duration_seconds_count", &[]) >= 4.0);
    assert_eq!(
        v(
            "host_guest_failures_total",
            &[("app", "trap"), ("kind", "trap")]
        ),
        1.0
    );
    assert_eq!(
        v("host_rejections_total", &[("reason", "body_too_large")]),
        1.0
    );
    assert_eq!(
        v("host_rejections_total", &[("reason", "too_many_headers")]),
        1.0
    );
    assert_eq!(v("host_deploys_total", &[("result", "ok")]), 2.0);
    assert_eq!(v("host_deploys_total", &[("result", "rejected")]), 1.0);
    assert!(
        v("host_compile_duration_seconds_count", &[]) >= 3.0,
        "default, trap, fetch compiled"
    );
    assert!(v("host_code_loads_total", &[("result", "compiled")]) >= 3.0);
    assert_eq!(
        v(
            "host_outbound_requests_total",
            &[("app", "fetch"), ("result", "denied")]
        ),
        1.0
    );
    assert_eq!(v("host_requests_in_flight", &[]), 0.0);
}

/// A certificate for 127.0.0.1 and localhost, as (cert PEM, key PEM, cert DER).
fn certificate(name: &str) -> (String, String, Vec<u8>) {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn tls_client(roots: &[&[u8]]) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .tls_info(true);
    for der in roots {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(der).unwrap());
    }
    builder.build().unwrap()
}

fn peer_cert(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("TLS info")
        .to_vec()
}

#[tokio::test]
async fn http2_tls_and_h2c_get_the_same_answers_and_certificates_reload() {
    let dir = TempDir::new("tls");
    let (cert, key, der1) = certificate("first");
    let cert_path = dir.write("cert.pem", cert.as_bytes());
    let key_path = dir.write("key.pem", key.as_bytes());
    let tls = Host::start(
        &guest("guest"),
        &[
            "--tls-cert",
            cert_path.to_str().unwrap(),
            "--tls-key",
            key_path.to_str().unwrap(),
        ],
    );
    let plain = Host::start(&guest("guest"), &[]);
    let url = |host: &Host, scheme: &str| {
        format!("{scheme}://localhost:{}/headers?x=1", host.addr.port())
    };

    let h1 = client()
        .get(url(&plain, "http"))
        .header("x-probe", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    let expected: serde_json::Value = h1.json().await.unwrap();

    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2c
        .get(url(&plain, "http"))
        .header("x-probe", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let got: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (
            got["method"].clone(),
            got["path"].clone(),
            got["headers"]["x-probe"].clone()
        ),
        (
            expected["method"].clone(),
            expected["path"].clone(),
            expected["headers"]["x-probe"].clone()
        )
    );

    let https = tls_client(&[&der1]);
    let resp = https
        .get(url(&tls, "https"))
        .header("x-probe", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    assert_eq!(peer_cert(&resp), der1);
    let got: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(got["path"], expected["path"]);
    assert_eq!(got["headers"]["x-probe"], "1");
    let h1_tls = tls_client(&[&der1]);
    let h1_tls_resp = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_der(&der1).unwrap())
        .http1_only()
        .build()
        .unwrap()
        .get(url(&tls, "https"))
        .send()
        .await
        .unwrap();
    assert_eq!(h1_tls_resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1_tls_resp.status(), 200);

    // Rotate the certificate: SIGHUP makes new handshakes use it; the open
    // HTTP/2 connection keeps working.
    let (cert2, key2, der2) = certificate("second");
    std::fs::write(&cert_path, cert2).unwrap();
    std::fs::write(&key_path, key2).unwrap();
    tls.signal(libc::SIGHUP);
    let mut rotated = false;
    for _ in 0..100 {
        let fresh = tls_client(&[&der1, &der2]);
        let resp = fresh.get(url(&tls, "https")).send().await.unwrap();
        if peer_cert(&resp) == der2 {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rotated, "new connections never got the new certificate");
    let again = https.get(url(&tls, "https")).send().await.unwrap();
    assert_eq!(
        again.status(),
        200,
        "the existing connection survived the reload"
    );
    assert_eq!(
        peer_cert(&again),
        der1,
        "it is the same connection as before"
    );
    let _ = h1_tls;

    // Rotate again without a signal: the host notices the files changed.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a distinct mtime
    let (cert3, key3, der3) = certificate("third");
    std::fs::write(&key_path, key3).unwrap();
    std::fs::write(&cert_path, cert3).unwrap();
    let mut watched = false;
    for _ in 0..100 {
        let fresh = tls_client(&[&der2, &der3]);
        if let Ok(resp) = fresh.get(url(&tls, "https")).send().await
            && peer_cert(&resp) == der3
        {
            watched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(watched, "a changed certificate file was not picked up");
    let (_, apps) = tls.admin(Method::GET, "/v1/apps", None, None).await;
    assert!(
        apps["apps"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
}
