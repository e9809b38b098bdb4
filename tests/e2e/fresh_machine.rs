//! A fresh machine has the pinned toolchain without the `wasm32-wasip2`
//! target, and rustup does not add targets to an installed toolchain: every
//! make target that builds guests must add it. Checked with a stand-in
//! `rustup` that records what it is asked.

use std::process::Command;

use crate::harness::{TempDir, workspace_root};

/// Run `make wasm-target` with a fake rustup whose installed targets are
/// `installed`; what it was asked to do.
fn wasm_target_with(installed: &str) -> (bool, String) {
    let dir = TempDir::new("fake-rustup");
    let log = dir.0.join("calls");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{log}'\n\
         if [ \"$1 $2 $3\" = 'target list --installed' ]; then printf '{installed}'; fi\n",
        log = log.display()
    );
    let fake = dir.write("rustup", script.as_bytes());
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let status = Command::new("make")
        .arg("-s")
        .arg("-C")
        .arg(workspace_root())
        .arg("wasm-target")
        .arg(format!("RUSTUP={}", fake.display()))
        .status()
        .expect("run make");
    (
        status.success(),
        std::fs::read_to_string(&log).unwrap_or_default(),
    )
}

#[test]
fn make_adds_the_wasm_target_when_the_toolchain_lacks_it() {
    let (ok, calls) = wasm_target_with("x86_64-unknown-linux-gnu\\n");
    assert!(ok, "{calls}");
    assert!(calls.contains("target add wasm32-wasip2"), "{calls}");

    let (ok, calls) = wasm_target_with("wasm32-wasip2\\nx86_64-unknown-linux-gnu\\n");
    assert!(ok, "{calls}");
    assert!(!calls.contains("target add"), "{calls}");

    // Every guest-building target goes through it.
    let makefile = std::fs::read_to_string(workspace_root().join("Makefile")).unwrap();
    for target in ["build-guest:", "build-guests:", "lint:", "bench:"] {
        let line = makefile
            .lines()
            .find(|l| l.starts_with(target))
            .unwrap_or_else(|| panic!("no {target} rule"));
        assert!(line.contains("wasm-target"), "{line}");
    }
}
