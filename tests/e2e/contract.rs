//! The admin API against its own contract: schemathesis (installed by `make
//! tools`) generates requests from `api/openapi.json`, valid and invalid,
//! sends them to the real binary (with a token) and checks every answer
//! against the spec: statuses, bodies, headers, 405s with `Allow`, schema
//! violations refused, valid requests accepted. The hooks in
//! `api/contract/hooks.py` supply what a schema cannot (a real component).

use std::process::Command;

use crate::harness::{Host, TempDir, guest, target_dir, workspace_root};

#[test]
fn the_admin_api_matches_its_openapi_spec() {
    let token = "contract-test-token-0123456789";
    let state = TempDir::new("contract");
    let host = Host::start_in(
        &state.0,
        &[
            guest("guest").to_str().unwrap(),
            // The spec's bounds are the defaults' on any machine.
            "--max-app-memory-mib",
            "4096",
            "--memory-budget-mib",
            "8192",
        ],
        &[("HOST_ADMIN_TOKEN", token)],
    );
    let output = Command::new(target_dir().join("tools/bin/schemathesis"))
        .current_dir(workspace_root().join("api/contract"))
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", ".")
        .env("HOST_CONTRACT_COMPONENT", guest("guest"))
        .args(["run", "../openapi.json", "--url", &host.admin_url("")])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "60", "--checks", "all", "--seed", "1"])
        .args(["--no-color"])
        .output()
        .expect("run schemathesis: `make tools` installs it");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the API and its spec disagreeing:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("passed"), "{report}");
}
