//! The e2e suite's harness: the process helpers it shares with the bench
//! (the `tests` library: starting and stopping the real host binary,
//! finding the guests, talking to a host's admin API), and what only the
//! tests need: a host that must refuse to start, the API schema check, and
//! stand-in upstreams.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

pub use tests::*;

/// Run the host on `component` expecting it to refuse to start: its exit
/// status and stderr.
pub fn start_failure(component: &Path) -> (ExitStatus, String) {
    start_failure_with(&[component.to_str().expect("utf-8 path")])
}

/// Run `host serve ARGS…` (free ports unless given, fresh state) expecting
/// it to refuse to start: its exit status and stderr.
pub fn start_failure_with(args: &[&str]) -> (ExitStatus, String) {
    let state = TempDir::new("state");
    let mut cmd = Command::new(host_bin());
    cmd.arg("serve").arg("--state-dir").arg(&state.0);
    if !args.contains(&"--admin-listen") {
        cmd.args(FREE_PORTS);
    }
    let output = cmd
        .args(args)
        .stdin(Stdio::null())
        .env_remove("HOST_ADMIN_TOKEN")
        .output()
        .expect("failed to run the host binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("Serving HTTP"),
        "host started serving when it should have refused: {stdout}"
    );
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Check `value` against schema `name` of `api/openapi.json`.
pub fn assert_schema(value: &serde_json::Value, name: &str) {
    static SPEC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let spec = SPEC.get_or_init(|| {
        let path = workspace_root().join("api/openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read api/openapi.json"))
            .expect("api/openapi.json is JSON")
    });
    let schema = serde_json::json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": spec["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "response does not match {name}: {errors:?}\n{value:#}"
    );
}

/// A tiny upstream on loopback answering every request with `body`; it
/// stops when the test's runtime ends.
pub async fn upstream(body: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// A loopback upstream that accepts connections and never answers, counting
/// how many are open at once: each open one is an outbound call in flight.
/// It stops when the test's runtime ends.
pub struct SilentUpstream {
    pub addr: SocketAddr,
    open: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

impl SilentUpstream {
    pub async fn start() -> SilentUpstream {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (now, max) = (open.clone(), peak.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                max.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                let now = now.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(1..) = stream.read(&mut buf).await {}
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        SilentUpstream { addr, open, peak }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most connections that were open at once.
    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}
