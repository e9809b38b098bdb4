//! Starting and stopping the real host binary, finding the guests, and
//! talking to a host's admin API.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a host may take to compile its components and bind.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// The cargo target directory this test binary was built into
/// (`target/debug/deps/e2e-…` → `target`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// The host binary built next to this test binary (override: `HOST_BIN`).
pub fn host_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HOST_BIN") {
        return bin.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe.ancestors().nth(2).expect("profile dir").join("host");
    assert!(
        bin.is_file(),
        "host binary not found at {}: run `make test` (or `cargo build -p host` first)",
        bin.display()
    );
    bin
}

/// A guest component built by `make build-guests`, by crate name.
pub fn guest(name: &str) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    let path = target_dir().join("wasm32-wasip2/release").join(file);
    assert!(
        path.is_file(),
        "guest {} not built: run `make build-guests` ({} missing)",
        name,
        path.display()
    );
    path
}

/// A guest component's bytes, by crate name.
pub fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest component")
}

/// The workspace root (for running the host as `cargo run` would).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The serve arguments every test host gets: free ports for both listeners.
fn test_ports(cmd: &mut Command) {
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
}

/// A running host process, killed when dropped.
pub struct Host {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
    /// The state directory, when the host owns a temporary one.
    _state: Option<TempDir>,
}

impl Host {
    /// `host serve COMPONENT ARGS…` on free ports with a fresh state
    /// directory, waiting for the startup line.
    pub fn start(component: &Path, args: &[&str]) -> Host {
        let state = TempDir::new("state");
        let path = component.to_str().expect("utf-8 path");
        let mut host = Host::start_in(&state.0, &[&[path], args].concat(), &[]);
        host._state = Some(state);
        host
    }

    /// A host serving no default app (only what tests deploy), with a fresh
    /// state directory.
    pub fn bare(args: &[&str]) -> Host {
        let state = TempDir::new("bare");
        let mut host = Host::start_in(&state.0, &[&["--no-default-app"], args].concat(), &[]);
        host._state = Some(state);
        host
    }

    /// `host serve ARGS…` on free ports with `state` as its state directory
    /// (kept after the host stops, for restarts) and extra environment.
    pub fn start_in(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
        let mut cmd = Command::new(host_bin());
        cmd.arg("serve").arg("--state-dir").arg(state);
        test_ports(&mut cmd);
        cmd.args(args).env_remove("HOST_ADMIN_TOKEN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Host::spawn(cmd)
    }

    /// Start from a prepared command (its stdout/stderr are taken over) and
    /// wait for the startup lines.
    pub fn spawn(mut cmd: Command) -> Host {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("failed to start the host binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });

        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<(String, String)>();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut admin = String::new();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("Admin API on http://") {
                    admin = rest.trim_end_matches('/').to_string();
                }
                let serving = line
                    .strip_prefix("Serving HTTP on http://")
                    .or_else(|| line.strip_prefix("Serving HTTP on https://"));
                if let Some(rest) = serving {
                    let _ = tx.send((rest.trim_end_matches('/').to_string(), admin.clone()));
                }
            }
        });
        let Ok((addr, admin)) = rx.recv_timeout(STARTUP_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "host did not print its startup line; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        Host {
            child,
            addr: addr.parse().expect("startup line carries an address"),
            admin: admin
                .parse()
                .expect("the admin line precedes the serving line"),
            stderr,
            _state: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the host has logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The host's log once every one of `needles` appears in it (stderr is
    /// collected by another thread, so a line can trail the event behind
    /// it); panics after 20 s naming what is missing.
    pub fn log_with(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = self.stderr();
            if needles.iter().all(|n| log.contains(n)) {
                return log;
            }
            if Instant::now() > deadline {
                let missing: Vec<_> = needles.iter().filter(|n| !log.contains(*n)).collect();
                panic!("log never showed {missing:?}; it has:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Wait for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A field of /proc/PID/status in KiB (`VmRSS`, `VmHWM`).
    pub fn proc_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} missing from /proc status"))
    }

    /// Run a client subcommand (`deploy`, `apps`, …) against this host.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> CliOutput {
        let mut cmd = Command::new(host_bin());
        cmd.args(args)
            .args(["--server", &self.admin_url("")])
            .env_remove("HOST_ADMIN_TOKEN")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let output = cmd.output().expect("failed to run the host client");
        CliOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Deploy through the admin API: `(status, JSON body)`.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        settings: serde_json::Value,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let form = reqwest::multipart::Form::new()
            .part(
                "component",
                reqwest::multipart::Part::bytes(wasm).file_name("app.wasm"),
            )
            .part(
                "settings",
                reqwest::multipart::Part::text(settings.to_string()),
            );
        let mut request = client()
            .post(self.admin_url(&format!("/v1/apps/{name}/versions")))
            .multipart(form);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("deploy request");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }

    /// An admin API call: `(status, JSON body)`.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut request = client().request(method, self.admin_url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("admin request");
        let status = response.status().as_u16();
        (
            status,
            response.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a client subcommand printed.
pub struct CliOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

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
        test_ports(&mut cmd);
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

/// An HTTP client for tests: no proxy.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
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

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("host-e2e-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The value of metric `name` whose labels include all of `labels`, summed
/// over matching series (0 when absent), from `/metrics` text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

impl Host {
    /// Wait (at most 20 s) until metric `name` with `labels` satisfies
    /// `want`; its last value. Instances end on their own tasks a moment
    /// after their response, so gauges are read with a bound, not once.
    pub async fn metric_until(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = metric(&self.metrics().await, name, labels);
            if want(value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} stayed at {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The host's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body")
    }
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
