//! A component the host cannot serve is refused at startup with a message
//! that names the problem, and a non-zero exit.

use crate::harness::{TempDir, start_failure, start_failure_with};

fn assert_refused(file: &std::path::Path, expected: &str) {
    let (status, stderr) = start_failure(file);
    assert!(!status.success(), "host accepted {}", file.display());
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in the error, got:\n{stderr}"
    );
}

#[test]
fn not_wasm_is_refused() {
    let dir = TempDir::new("notwasm");
    assert_refused(
        &dir.write("app.wasm", b"hello, I am text"),
        "not a WebAssembly binary",
    );
}

#[test]
fn core_module_is_refused() {
    let dir = TempDir::new("core");
    let module = wat::parse_str("(module (func (export \"_start\")))").unwrap();
    assert_refused(
        &dir.write("core.wasm", &module),
        "core WebAssembly module, not a component",
    );
}

#[test]
fn component_without_the_handler_export_is_refused() {
    let dir = TempDir::new("noexport");
    let component = wat::parse_str(
        r#"(component
             (core module $m (func (export "run")))
             (core instance $i (instantiate $m))
             (func $run (canon lift (core func $i "run")))
             (export "run" (func $run)))"#,
    )
    .unwrap();
    let (status, stderr) = start_failure(&dir.write("cli.wasm", &component));
    assert!(!status.success());
    assert!(
        stderr.contains("does not export `wasi:http/incoming-handler`"),
        "{stderr}"
    );
    assert!(stderr.contains("its exports are: run"), "{stderr}");
}

#[test]
fn component_with_an_unknown_import_is_refused_naming_it() {
    let dir = TempDir::new("import");
    let component = wat::parse_str(
        r#"(component
             (import "acme:missing/thing@1.0.0" (instance (export "poke" (func))))
             (instance $handler)
             (export "wasi:http/incoming-handler@0.2.12" (instance $handler)))"#,
    )
    .unwrap();
    let (status, stderr) = start_failure(&dir.write("import.wasm", &component));
    assert!(!status.success());
    assert!(
        stderr.contains("imports something this host does not provide"),
        "{stderr}"
    );
    assert!(stderr.contains("acme:missing/thing@1.0.0"), "{stderr}");
}

#[test]
fn missing_file_is_refused() {
    let dir = TempDir::new("missing");
    assert_refused(&dir.0.join("nope.wasm"), "does not exist");
}

#[test]
fn invalid_flags_are_refused_before_binding() {
    let (status, stderr) = start_failure_with(&["--memory-mib", "0"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--memory-mib must be between 1 and 4096"),
        "{stderr}"
    );
    let (status, stderr) = start_failure_with(&["--instance-reuse", "0"]);
    assert!(!status.success());
    assert!(
        stderr.contains("--instance-reuse must be between 1"),
        "{stderr}"
    );
}
