//! The validated configuration of `host serve`. [`Config::from_args`] checks
//! every value from the command line and says exactly what to fix, before
//! anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::cli::ServeArgs;
use crate::limits::{Limits, MAX_INSTANCE_REUSE};
use crate::router::FrontConfig;

/// Where `make build-guest` leaves the default guest, relative to the workspace.
pub const DEFAULT_GUEST: &str = "target/wasm32-wasip2/release/guest.wasm";

/// Upper bound on `--max-concurrent`: every slot reserves pooled instance
/// memory (virtual address space) up front.
pub const MAX_CONCURRENT_CEILING: u32 = 10_000;

/// The component served at `/` as app `default`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultApp {
    /// None: only the manifest's and deployed apps are served.
    None,
    /// Given on the command line: always served.
    Explicit(PathBuf),
    /// The built default guest: served only if no other app serves `/`.
    Implicit(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub default_app: DefaultApp,
    pub listen: SocketAddr,
    pub manifest: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<String>,
    pub keep_versions: usize,
    pub max_upload_bytes: u64,
    pub compile_timeout: Duration,
    pub limits: Limits,
    pub front: FrontConfig,
    pub drain_timeout: Duration,
    pub shutdown_delay: Duration,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub h2_max_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Config> {
        let state_dir = match args.state_dir {
            Some(dir) => dir,
            None => default_state_dir(),
        };
        let default_app = match args.component {
            // --no-default-app wins, even over HOST_COMPONENT from the environment.
            _ if args.no_default_app => DefaultApp::None,
            Some(path) => {
                ensure!(
                    path.is_file(),
                    "component file {} does not exist",
                    path.display()
                );
                DefaultApp::Explicit(path)
            }
            // With a manifest or deployed apps, the default guest is optional.
            None if args.manifest.is_some() || has_deployed_apps(&state_dir) => {
                default_guest().map_or(DefaultApp::None, DefaultApp::Implicit)
            }
            None => DefaultApp::Implicit(default_guest()?),
        };
        if let Some(manifest) = &args.manifest {
            ensure!(
                manifest.is_file(),
                "manifest {} does not exist",
                manifest.display()
            );
        }
        ensure!(
            (1..=4096).contains(&args.memory_mib),
            "--memory-mib must be between 1 and 4096, got {}",
            args.memory_mib
        );
        ensure!(
            (1..=MAX_INSTANCE_REUSE).contains(&args.instance_reuse),
            "--instance-reuse must be between 1 (a fresh instance per request) and {MAX_INSTANCE_REUSE}, got {}",
            args.instance_reuse
        );
        ensure!(
            args.timeout_ms >= 1,
            "--timeout-ms must be at least 1, got 0"
        );
        ensure!(
            (1..=MAX_CONCURRENT_CEILING).contains(&args.max_concurrent),
            "--max-concurrent must be between 1 and {MAX_CONCURRENT_CEILING}, got {}",
            args.max_concurrent
        );
        ensure!(
            args.keep_versions >= 1,
            "--keep-versions must be at least 1"
        );
        ensure!(
            args.compile_timeout_ms >= 1,
            "--compile-timeout-ms must be at least 1"
        );

        ensure!(
            args.max_connections >= 1,
            "--max-connections must be at least 1"
        );
        ensure!(
            args.header_read_timeout_ms >= 1,
            "--header-read-timeout-ms must be at least 1"
        );
        ensure!(
            args.body_read_timeout_ms >= 1,
            "--body-read-timeout-ms must be at least 1"
        );
        ensure!(
            args.max_header_bytes >= 1024,
            "--max-header-bytes must be at least 1024, got {}",
            args.max_header_bytes
        );
        ensure!(
            args.max_headers >= 8,
            "--max-headers must be at least 8, got {}",
            args.max_headers
        );
        ensure!(
            args.h2_max_streams >= 1,
            "--h2-max-streams must be at least 1"
        );
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => {
                ensure!(
                    cert.is_file(),
                    "TLS certificate {} does not exist",
                    cert.display()
                );
                ensure!(key.is_file(), "TLS key {} does not exist", key.display());
                Some((cert, key))
            }
            _ => None,
        };

        let admin_token = admin_token(args.admin_token_file.as_deref())?;
        if admin_token.is_none() && !args.admin_listen.ip().is_loopback() {
            bail!(
                "refusing to serve the admin API on {} without a token: set HOST_ADMIN_TOKEN \
                 (or --admin-token-file), or listen on a loopback address",
                args.admin_listen
            );
        }
        ensure!(
            args.admin_listen != args.listen || args.listen.port() == 0,
            "--admin-listen must differ from --listen: the admin API never shares the public port"
        );

        Ok(Config {
            default_app,
            listen: args.listen,
            manifest: args.manifest,
            state_dir,
            admin_listen: args.admin_listen,
            admin_token,
            keep_versions: args.keep_versions,
            max_upload_bytes: args.max_upload_bytes,
            compile_timeout: Duration::from_millis(args.compile_timeout_ms),
            limits: Limits {
                memory_bytes: args.memory_mib * 1024 * 1024,
                timeout: Duration::from_millis(args.timeout_ms),
                max_concurrent: args.max_concurrent,
                max_body_bytes: args.max_body_bytes,
                body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
                rate_limit_rps: args.rate_limit_rps,
                client_rate_limit_rps: args.client_rate_limit_rps,
                instance_reuse: args.instance_reuse,
            },
            front: FrontConfig {
                max_concurrent: args.max_concurrent,
                version_headers: args.version_headers,
                max_header_bytes: args.max_header_bytes,
                max_headers: args.max_headers,
            },
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
            shutdown_delay: Duration::from_millis(args.shutdown_delay_ms),
            tls,
            max_connections: args.max_connections,
            header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
            h2_max_streams: args.h2_max_streams,
            h2_max_pending_resets: args.h2_max_pending_resets,
            h2_max_local_error_resets: args.h2_max_local_error_resets,
        })
    }
}

/// The admin token from `--admin-token-file`, else `$HOST_ADMIN_TOKEN`.
fn admin_token(file: Option<&Path>) -> Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the admin token file {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var("HOST_ADMIN_TOKEN").ok(),
    };
    match token {
        Some(t) if t.is_empty() => bail!("the admin token is empty"),
        Some(t) if t.len() < 16 => {
            bail!("the admin token is too short: use at least 16 characters")
        }
        other => Ok(other),
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("host");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/host"),
        None => PathBuf::from(".host-state"),
    }
}

fn has_deployed_apps(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir.join("apps"))
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// The guest `make build-guest` produces: looked up from the current
/// directory, then from this crate's workspace (so `cargo run -p host` works
/// from any folder of the checkout).
fn default_guest() -> Result<PathBuf> {
    let candidates = [
        PathBuf::from(DEFAULT_GUEST),
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(DEFAULT_GUEST),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the default guest has not been built ({DEFAULT_GUEST} is missing): \
         run `make build-guest` first, pass the path of a component to serve, \
         or start with --no-default-app"
    )
}
