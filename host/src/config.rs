//! The validated configuration. [`Config::from_args`] checks every value from
//! the command line and says exactly what to fix, before anything binds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail, ensure};

use crate::cli::ServeArgs;
use crate::limits::Limits;

/// Where `make build-guest` leaves the default guest, relative to the workspace.
pub const DEFAULT_GUEST: &str = "target/wasm32-wasip2/release/guest.wasm";

/// Upper bound on `--max-concurrent`: every slot reserves pooled instance
/// memory (virtual address space) up front.
pub const MAX_CONCURRENT_CEILING: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct Config {
    pub component: PathBuf,
    pub listen: SocketAddr,
    pub limits: Limits,
    pub drain_timeout: Duration,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Config> {
        let component = match args.component {
            Some(path) => {
                ensure!(
                    path.is_file(),
                    "component file {} does not exist",
                    path.display()
                );
                path
            }
            None => default_guest()?,
        };
        ensure!(
            args.memory_mib >= 1 && args.memory_mib <= 4096,
            "--memory-mib must be between 1 and 4096, got {}",
            args.memory_mib
        );
        ensure!(
            args.timeout_ms >= 1,
            "--timeout-ms must be at least 1, got 0"
        );
        ensure!(
            args.max_concurrent >= 1 && args.max_concurrent <= MAX_CONCURRENT_CEILING,
            "--max-concurrent must be between 1 and {MAX_CONCURRENT_CEILING}, got {}",
            args.max_concurrent
        );
        Ok(Config {
            component,
            listen: args.listen,
            limits: Limits {
                memory_bytes: args.memory_mib * 1024 * 1024,
                timeout: Duration::from_millis(args.timeout_ms),
                max_concurrent: args.max_concurrent,
                max_body_bytes: args.max_body_bytes,
            },
            drain_timeout: Duration::from_millis(args.drain_timeout_ms),
        })
    }
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
         run `make build-guest` first, or pass the path of a component to serve"
    )
}
