//! The outside tools a run needs, installed when missing: wrk from Debian
//! (apt-get) and wasmtime-cli 48.0.8 from crates.io into
//! target/bench-tools; and running a command with a `+ …` log line.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

use crate::config::Bins;
use crate::log;

/// The wasmtime-cli release measured against (the host's wasmtime).
const WASMTIME_VERSION: &str = "48.0.8";

/// Install wrk and wasmtime serve where missing. Without wasmtime the
/// wasmtime baseline is skipped (with a note); without wrk nothing can be
/// measured.
pub fn ensure(bins: &Bins) -> Result<()> {
    if !on_path("wrk") {
        log("wrk is missing; installing it from Debian");
        let install = ["apt-get", "install", "-y", "-qq", "wrk"];
        if run_quiet(&install).is_err() {
            run_quiet(&["apt-get", "update", "-qq"])?;
            run_quiet(&install)?;
        }
    }
    if !bins.has_wasmtime() {
        log(&format!(
            "wasmtime {WASMTIME_VERSION} is missing; installing it into target/bench-tools (takes a while)"
        ));
        let mut cargo = Command::new("cargo");
        cargo
            .args(["install", "wasmtime-cli", "--version", WASMTIME_VERSION])
            .arg("--locked")
            .arg("--root")
            .arg(&bins.tools);
        if let Err(err) = run(cargo) {
            log(&format!(
                "NOTE: could not install wasmtime-cli {WASMTIME_VERSION} ({err:#}); the wasmtime baseline is skipped"
            ));
        }
    }
    Ok(())
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// Run `args` with its stdout discarded.
fn run_quiet(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).stdout(Stdio::null());
    run(cmd).map(drop)
}

/// Log `+ COMMAND`, run it to the end (stdout captured unless the command
/// says otherwise, stderr to ours) and fail unless it succeeds.
pub fn run(mut cmd: Command) -> Result<Output> {
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    log(&format!("+ {}", line.join(" ")));
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", line[0]))?;
    if !output.status.success() {
        bail!("`{}` failed: {}", line.join(" "), output.status);
    }
    Ok(output)
}

/// The size of a file in bytes (0 if it cannot be read).
pub fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
