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

async fn deploy(server: &Server, name: &str, settings: &str) -> (u16, serde_json::Value) {
    let form = reqwest::multipart::Form::new()
        .part(
            "component",
            reqwest::multipart::Part::bytes(guest()).file_name("guest.wasm"),
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
