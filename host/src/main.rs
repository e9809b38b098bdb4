//! The `host` binary: parse the command line, run, map the outcome to an exit
//! code. Everything else lives in the library.

use std::process::ExitCode;

/// mimalloc: per-thread free lists suit the many small, short-lived
/// allocations of a request (see BENCHMARKS.md for what it bought). Built
/// without transparent huge pages: with them, the memory a compile frees
/// stayed resident (idle RSS 80 MiB instead of 29).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match host::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`host apps | head -1`): nothing to report.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
