//! Starting the measured servers (the host, native hyper, `wasmtime
//! serve`) with the `tests` library's process helpers, waiting for them to
//! answer, and deploying apps to a host, all on 127.0.0.1.
//!
//! Every server runs without RUST_BACKTRACE: with it set, wasmtime captures
//! a backtrace for an error it builds and drops on every instance teardown,
//! which costs the fresh-instance servers a third of their throughput.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ::tests::{Host, KeepStderr, Process, serve_command, start_server};
use anyhow::{Context, Result, bail};

/// Stderr kept of each server, for the error when one fails to start.
const STDERR_TAIL: KeepStderr = KeepStderr::Last(64 * 1024);

/// Drop the backtrace switches from a server's environment (see the
/// module doc).
fn without_backtraces(cmd: &mut Command) -> &mut Command {
    cmd.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
}

/// `host serve ARGS…` (release build) on free loopback ports with
/// `state` as its state directory and `RUST_LOG=warn` (no per-request
/// access log).
pub fn host(bin: &Path, state: &Path, args: &[&str]) -> Result<Host> {
    let mut cmd = serve_command(bin, state, args);
    without_backtraces(&mut cmd).env("RUST_LOG", "warn");
    Host::try_spawn(cmd, STDERR_TAIL)
}

/// A server being measured: where it listens and its process.
pub struct Running {
    pub addr: SocketAddr,
    kind: Kind,
}

enum Kind {
    Host(Host),
    Other(Process),
}

impl Running {
    /// The native hyper baseline, `native-hello 127.0.0.1:0`.
    pub fn native(bin: &Path) -> Result<Running> {
        let mut cmd = Command::new(bin);
        cmd.arg("127.0.0.1:0");
        without_backtraces(&mut cmd).env("RUST_LOG", "warn");
        let server = start_server(cmd, STDERR_TAIL)?;
        Ok(Running {
            addr: server.addr,
            kind: Kind::Other(server.process),
        })
    }

    /// Our host serving `args` (see `host`).
    pub fn host(bin: &Path, state: &Path, args: &[&str]) -> Result<Running> {
        let host = host(bin, state, args)?;
        Ok(Running {
            addr: host.addr,
            kind: Kind::Host(host),
        })
    }

    /// `wasmtime serve -Scli EXTRA… WASM` on a free port. It prints no
    /// startup line to wait for: poll it with `Http::wait_200`.
    pub fn wasmtime(bin: &Path, wasm: &Path, extra: &[&str]) -> Result<Running> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "-Scli"])
            .args(extra)
            .arg("--addr")
            .arg(addr.to_string())
            .arg(wasm)
            .stdout(Stdio::null());
        without_backtraces(&mut cmd);
        let process = Process::spawn(cmd, STDERR_TAIL)?;
        Ok(Running {
            addr,
            kind: Kind::Other(process),
        })
    }

    /// The host, when this is one (to deploy to it).
    pub fn as_host(&self) -> Option<&Host> {
        match &self.kind {
            Kind::Host(host) => Some(host),
            Kind::Other(_) => None,
        }
    }

    pub fn process(&self) -> &Process {
        match &self.kind {
            Kind::Host(host) => host,
            Kind::Other(process) => process,
        }
    }

    /// SIGTERM, then SIGKILL after 20 s (dropping it kills at once).
    pub fn stop(&mut self) {
        match &mut self.kind {
            Kind::Host(host) => host.stop(),
            Kind::Other(process) => process.stop(),
        }
    }
}

/// Blocking HTTP over loopback: one request per connection, as a client
/// arriving afresh.
pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Http> {
        Ok(Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()?,
        })
    }

    /// The status of `GET url` (with `Host: host` when given), its body
    /// read to the end.
    pub fn status(&self, url: &str, host: Option<&str>, timeout: Duration) -> Result<u16> {
        let mut request = self.client.get(url).timeout(timeout);
        if let Some(host) = host {
            request = request.header(reqwest::header::HOST, host);
        }
        self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            response.bytes().await?;
            Ok(status)
        })
    }

    /// Poll `GET url` until it answers 200, at most `timeout`.
    pub fn wait_200(&self, url: &str, host: Option<&str>, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.status(url, host, Duration::from_secs(2)) {
                Ok(200) => return Ok(()),
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        bail!("{url} never answered 200")
    }

    /// Deploy `wasm` as app `name` through the host's admin API (a
    /// multipart upload) with `settings`.
    pub fn deploy(
        &self,
        host: &Host,
        name: &str,
        wasm: Vec<u8>,
        settings: serde_json::Value,
    ) -> Result<serde_json::Value> {
        let (status, body) = self
            .runtime
            .block_on(host.deploy(name, wasm, settings, None));
        if !(200..300).contains(&status) {
            bail!("deploying {name} answered {status}: {body}");
        }
        Ok(body)
    }

    /// The host's `/metrics` text.
    pub fn metrics(&self, host: &Host) -> String {
        self.runtime.block_on(host.metrics())
    }

    /// The status of `GET url` and the version that answered it (its
    /// `x-app-version`, with `--version-headers`).
    pub fn version(&self, url: &str) -> Result<(u16, String)> {
        let request = self.client.get(url).timeout(Duration::from_secs(5));
        self.runtime.block_on(async {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let version = response
                .headers()
                .get("x-app-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            response.bytes().await?;
            Ok((status, version))
        })
    }
}

/// Deploy a component file as app `name` with the host's own client,
/// `host deploy FILE --name NAME --route / --host NAME.bench`: a host route
/// at `/`, so the guest sees `/` (apps see the full path).
pub fn cli_deploy(host: &Host, wasm: &Path, name: &str) -> Result<()> {
    let file = wasm.to_str().context("utf-8 path")?;
    let vhost = format!("{name}.bench");
    let out = host.cli(
        &[
            "deploy", file, "--name", name, "--route", "/", "--host", &vhost,
        ],
        &[],
    );
    if !out.success {
        bail!("host deploy {name} failed: {}", out.stderr);
    }
    Ok(())
}
