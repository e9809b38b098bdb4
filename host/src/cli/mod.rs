//! The command line, as clap parses it, and what it runs. `serve`'s raw
//! values are validated into a [`crate::config::Config`] ([`validate`])
//! before anything binds or compiles; the client subcommands talk to a
//! running host's admin API ([`client`], and [`kv`] for apps' data).

pub mod args;
pub mod client;
pub mod kv;
pub mod validate;

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::args::{Cli, Command, ServeArgs};

/// Parse the command line and run what it asks for.
pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")
    };
    match cli.command {
        None => serve(cli.serve, runtime()?),
        Some(Command::Serve(args)) => serve(*args, runtime()?),
        Some(Command::Deploy(args)) => runtime()?.block_on(crate::cli::client::deploy(args)),
        Some(Command::Apps(args)) => runtime()?.block_on(crate::cli::client::apps(args)),
        Some(Command::Rollback(args)) => runtime()?.block_on(crate::cli::client::rollback(args)),
        Some(Command::Canary(args)) => runtime()?.block_on(crate::cli::client::canary(args)),
        Some(Command::Remove(args)) => runtime()?.block_on(crate::cli::client::remove(args)),
        Some(Command::Kv(args)) => runtime()?.block_on(crate::cli::kv::run(args)),
    }
}

fn serve(args: ServeArgs, runtime: tokio::runtime::Runtime) -> Result<()> {
    let json = args.log_format == "json";
    let config = crate::cli::validate::config(args)?;
    init_logging(json);
    let served = runtime.block_on(crate::serve::serve(config));
    // A compile still running on a blocking thread (a signal came during
    // startup) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
