//! The host started in process, in the style of tokio-rs/mini-redis's
//! tests: [`start_server`] validates flags into a config exactly as the
//! binary does, binds both listeners on port 0, runs [`host::serve::run`]
//! on a task with a temporary state directory, and stops it on demand. For
//! tests of whole flows that do not need a separate process (the e2e suite
//! in `tests/` covers the binary itself: signals, exit codes, stdout).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use host::cli::args::Cli;
use host::serve::{Listeners, run};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A host running on this process's runtime.
struct Server {
    public: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    state: PathBuf,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stop it (as a SIGTERM would) and wait for it to drain.
    async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = std::mem::replace(&mut self.task, tokio::spawn(async { Ok(()) }));
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the server drains within 20 s")
            .expect("the server task does not panic")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Start a host with `flags` (on top of: no default app, a fresh state
/// directory, no shutdown delay) and wait until it is ready.
async fn start_server(flags: &[&str]) -> Server {
    let state = std::env::temp_dir().join(format!(
        "host-in-process-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    start_server_in(state, flags).await
}

/// The same on the state directory `state` (removed when the server is
/// dropped).
async fn start_server_in(state: PathBuf, flags: &[&str]) -> Server {
    let state_arg = state.to_string_lossy().into_owned();
    let mut argv = vec![
        "host",
        "--no-default-app",
        "--state-dir",
        &state_arg,
        "--shutdown-delay-ms",
        "1",
    ];
    argv.extend(flags);
    let cli = Cli::try_parse_from(argv).expect("flags parse");
    let config = host::cli::validate::config(cli.serve).expect("flags validate");
    let public = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, Listeners { public, admin }, async move {
        let _ = stopped.await;
    }));
    let server = Server {
        public: public_addr,
        admin: admin_addr,
        stop: Some(stop),
        task,
        state,
    };
    for _ in 0..200 {
        if let Ok(response) = reqwest::get(server.admin_url("/readyz")).await
            && response.status() == 200
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the in-process host did not become ready");
}

/// The default guest, built by `make build-guest` (`make test` builds it
/// first).
fn guest() -> Vec<u8> {
    // The cargo target directory this test was built into
    // (`target/debug/deps/in_process-…` → `target`).
    let exe = std::env::current_exe().expect("current_exe");
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps");
    let path = target.join("wasm32-wasip2/release/guest.wasm");
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run `make build-guest`", path.display()))
}

/// The guest with a custom section naming `n`: another digest, so
/// another version of the same app.
fn variant(n: u8) -> Vec<u8> {
    tests::variant(&guest(), n.into())
}

async fn deploy(server: &Server, name: &str, settings: &str) -> (u16, serde_json::Value) {
    deploy_wasm(server, name, guest(), settings).await
}

async fn deploy_wasm(
    server: &Server,
    name: &str,
    wasm: Vec<u8>,
    settings: &str,
) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(wasm).file_name("guest.wasm"),
        )
        .text("settings", settings.to_string());
    let response = reqwest::Client::new()
        .post(server.admin_url(&format!("/v1/apps/{name}/versions")))
        .multipart(form)
        .send()
        .await
        .expect("deploy request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_deployed_app_is_served_and_the_host_drains_on_shutdown() {
    let server = start_server(&[]).await;
    let response = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(response.status(), 404, "no app yet");

    let (status, body) = deploy(&server, "hello", r#"{"route": "/"}"#).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["name"], "hello");
    let response = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-app-name"], "hello");
    let text = response.text().await.unwrap();
    assert!(text.starts_with("Hello"), "{text}");

    let (status, body) = deploy(&server, "Bad_Name", r#"{"route": "/x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("app name"),
        "{body}"
    );

    server.shutdown().await.expect("a clean drain");
}

#[tokio::test]
async fn a_restart_on_the_same_state_dir_serves_what_was_deployed() {
    let server = start_server(&[]).await;
    let (status, body) = deploy(&server, "kept", r#"{"route": "/"}"#).await;
    assert_eq!(status, 201, "{body}");
    // Keep the directory for the second server (it removes it).
    let mut first = server;
    let state = std::mem::take(&mut first.state);
    first.shutdown().await.unwrap();

    let second = start_server_in(state, &[]).await;
    let response = reqwest::get(second.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-app-name"], "kept");
    second.shutdown().await.unwrap();
}

/// An admin call: `(status, JSON body or null, headers)`.
async fn admin(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut request = reqwest::Client::new().request(method, server.admin_url(path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, response.json().await.unwrap_or_default(), headers)
}

/// Every endpoint of the admin API's table (`admin/mod.rs`), each with what
/// it answers when it works and a status that says what went wrong when it
/// does not.
#[tokio::test]
async fn every_admin_endpoint_answers_with_its_status() {
    use reqwest::Method;
    let server = start_server(&[]).await;
    let (status, body, _) = admin(&server, Method::GET, "/v1/apps", None).await;
    assert_eq!(
        (status, body["apps"].as_array().map(Vec::len)),
        (200, Some(0))
    );

    let (status, body) = deploy(&server, "app", r#"{"route": "/"}"#).await;
    assert_eq!(status, 201, "{body}");
    let v1 = body["current_version"].as_str().unwrap().to_string();
    let (status, body, _) = admin(&server, Method::GET, "/v1/apps/app", None).await;
    assert_eq!(
        (status, body["current_version"].as_str()),
        (200, Some(&*v1))
    );
    assert_eq!(body["source"], "deployed");

    // One version so far: nothing older to roll back to.
    let (status, body, _) = admin(&server, Method::POST, "/v1/apps/app/rollback", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no version older"),
        "{body}"
    );

    let (status, body) =
        deploy_wasm(&server, "app", variant(1), r#"{"key_value": ["default"]}"#).await;
    assert_eq!(status, 201, "{body}");
    let canary = serde_json::json!({"version": v1, "weight": 20});
    let (status, body, _) = admin(&server, Method::PUT, "/v1/apps/app/canary", Some(canary)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["canary"]["weight"], 20);
    let (status, body, _) = admin(&server, Method::DELETE, "/v1/apps/app/canary", None).await;
    assert_eq!(
        (status, &body["canary"]),
        (200, &serde_json::Value::Null),
        "{body}"
    );
    let (status, body, _) = admin(&server, Method::POST, "/v1/apps/app/canary/promote", None).await;
    assert_eq!(status, 409, "no canary to promote: {body}");
    let bad = serde_json::json!({"version": v1, "weight": 101});
    let (status, body, _) = admin(&server, Method::PUT, "/v1/apps/app/canary", Some(bad)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("0 to 100"),
        "{body}"
    );

    let (status, _, headers) = admin(&server, Method::PATCH, "/v1/apps/app", None).await;
    assert_eq!(status, 405);
    assert_eq!(headers["allow"], "GET, DELETE");

    // The app's key-value data, in the store its settings declare.
    let http = reqwest::Client::new();
    let put = http
        .put(server.admin_url("/v1/apps/app/kv/greeting"))
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let got = http
        .get(server.admin_url("/v1/apps/app/kv/greeting?store=default"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.headers()["content-type"], "application/octet-stream");
    assert_eq!(got.text().await.unwrap(), "hi");
    let (status, body, _) = admin(&server, Method::GET, "/v1/apps/app/kv", None).await;
    assert_eq!(
        (status, &body["keys"]),
        (200, &serde_json::json!(["greeting"]))
    );
    assert_eq!(body["usage"], serde_json::json!({"keys": 1, "bytes": 10}));
    let (status, body, _) = admin(&server, Method::DELETE, "/v1/apps/app/kv/greeting", None).await;
    assert_eq!((status, body["deleted"].as_str()), (200, Some("greeting")));
    let (status, _, _) = admin(&server, Method::GET, "/v1/apps/app/kv/greeting", None).await;
    assert_eq!(status, 404);
    let (status, body, _) =
        admin(&server, Method::GET, "/v1/apps/app/kv?store=sessions", None).await;
    assert_eq!(status, 404, "an undeclared store: {body}");
    let (status, _, _) = admin(
        &server,
        Method::GET,
        "/v1/apps/app/kv?store=No%20Such",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, headers) = admin(&server, Method::POST, "/v1/apps/app/kv/k", None).await;
    assert_eq!(
        (status, headers["allow"].to_str().unwrap()),
        (405, "GET, PUT, DELETE")
    );
    let (status, body, _) = admin(&server, Method::GET, "/v1/nothing", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, _) = admin(&server, Method::GET, "/v1/apps/other", None).await;
    assert_eq!(status, 404);

    let page = reqwest::Client::new()
        .delete(server.admin_url("/v1/apps/app"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 403, "a web page cannot delete apps");
    let (status, body, _) = admin(&server, Method::DELETE, "/v1/apps/app", None).await;
    assert_eq!((status, body["deleted"].as_str()), (200, Some("app")));
    assert_eq!(body["kv_data"]["deleted"], true, "{body}");
    let (status, _, _) = admin(&server, Method::DELETE, "/v1/apps/app", None).await;
    assert_eq!(status, 404);
    assert_eq!(reqwest::get(server.url("/")).await.unwrap().status(), 404);

    for open in ["/healthz", "/readyz", "/metrics"] {
        let response = reqwest::get(server.admin_url(open)).await.unwrap();
        assert_eq!(response.status(), 200, "{open}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn with_a_token_only_its_bearer_may_call_the_admin_api() {
    // The token file lives in the server's state directory, removed with it.
    let state = std::env::temp_dir().join(format!("host-in-process-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&state).unwrap();
    let file = state.join("token");
    std::fs::write(&file, "s3cret-token-of-some-length\n").unwrap();
    let token_file = file.to_str().unwrap().to_string();
    let server = start_server_in(state, &["--admin-token-file", &token_file]).await;
    let client = reqwest::Client::new();
    let url = server.admin_url("/v1/apps");
    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let wrong = client.get(&url).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(&url)
        .bearer_auth("s3cret-token-of-some-length")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    let probe = client
        .get(server.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200, "probes need no token");
    server.shutdown().await.unwrap();
}

/// A client that hangs up while its deploy compiles does not stop the
/// deploy half-way: it completes (record written and served), as it would
/// have for a patient client.
#[tokio::test]
async fn a_deploy_whose_client_hangs_up_still_completes() {
    let server = start_server(&[]).await;
    // The whole request, then the connection closed at once: the host
    // reads the body (it came before the close) and sees the client gone
    // while it compiles.
    let boundary = "in-process-boundary";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"component\"; filename=\"a.wasm\"\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&variant(7));
    body.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"settings\"\r\n\r\n{{\"route\": \"/gone\"}}\r\n--{boundary}--\r\n"
        )
        .as_bytes(),
    );
    let head = format!(
        "POST /v1/apps/gone/versions HTTP/1.1\r\nhost: {}\r\ncontent-type: multipart/form-data; boundary={boundary}\r\ncontent-length: {}\r\n\r\n",
        server.admin,
        body.len()
    );
    let mut client = tokio::net::TcpStream::connect(server.admin).await.unwrap();
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(&body).await.unwrap();
    drop(client);
    let mut served = false;
    for _ in 0..600 {
        // The app answers 404 itself for paths it does not know; the
        // routing header says the host sent the request to it.
        let response = reqwest::get(server.url("/gone")).await.unwrap();
        if response
            .headers()
            .get("x-app-name")
            .is_some_and(|v| v == "gone")
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the deploy was abandoned with its client");
    let record = server.state.join("apps/gone.json");
    assert!(record.is_file(), "{} is written", record.display());
    server.shutdown().await.unwrap();
}
