//! The command line, as clap parses it. Nothing here is validated beyond its
//! type: [`crate::config`] turns these raw values into a `Config` before
//! anything binds or compiles.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;

/// Serve HTTP by running WebAssembly components: every request runs in a
/// fresh, sandboxed instance of the component.
#[derive(Debug, Parser)]
#[command(name = "host", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no subcommand, `host` behaves as `host serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a component over HTTP (the default).
    Serve(ServeArgs),
}

/// Flags of `host serve`. Every flag can also be set by the environment
/// variable shown in `--help`; a flag on the command line wins.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The component to serve (a `.wasm` exporting `wasi:http/incoming-handler`).
    /// Defaults to the guest built by `make build-guest`.
    #[arg(env = "HOST_COMPONENT", value_name = "COMPONENT.wasm")]
    pub component: Option<PathBuf>,

    /// Address to listen on. Port 0 picks a free port; the startup line
    /// `Serving HTTP on http://ADDR/` shows the one bound.
    #[arg(long, env = "HOST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Linear memory cap per instance, in MiB. A guest that grows past it traps (500).
    #[arg(long, env = "HOST_MEMORY_MIB", default_value_t = 128)]
    pub memory_mib: u64,

    /// Request timeout in milliseconds, on guest CPU and on waiting alike (504).
    #[arg(long, env = "HOST_TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,

    /// Requests served at once; more are refused with 503.
    #[arg(long, env = "HOST_MAX_CONCURRENT", default_value_t = 1000)]
    pub max_concurrent: u32,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "HOST_MAX_BODY_BYTES", default_value_t = 100 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish, in milliseconds.
    #[arg(long, env = "HOST_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,
}

/// Parse the command line and run what it asks for.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => cli.serve,
    };
    let config = Config::from_args(args)?;
    init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(crate::server::serve(config))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
