//! Where cargo put what the tests and the bench run: the target directory,
//! the host binary, the guest components, and the workspace itself.

use std::path::{Path, PathBuf};

/// The cargo target directory the running binary was built into: the
/// nearest ancestor of the executable holding cargo's `CACHEDIR.TAG`, which
/// finds it from a test binary (`target/debug/deps/e2e-…`) as from a plain
/// one (`target/release/bench`); else `CARGO_TARGET_DIR`, else the
/// workspace's `target/`.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    if let Some(dir) = exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
    {
        return dir.to_path_buf();
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The directory of the profile the running binary was built with, where
/// cargo puts that profile's binaries (`target/debug` for
/// `target/debug/deps/e2e-…`, `target/release` for `target/release/bench`).
pub fn profile_dir() -> PathBuf {
    profile_dir_of(&std::env::current_exe().expect("current_exe"))
}

fn profile_dir_of(exe: &Path) -> PathBuf {
    let dir = exe.parent().expect("the executable is in a directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().expect("profile dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The host binary built with the same profile as the running binary
/// (override: `HOST_BIN`).
pub fn host_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("HOST_BIN") {
        return bin.into();
    }
    let bin = profile_dir().join("host");
    assert!(
        bin.is_file(),
        "host binary not found at {}: run `make test` (or `cargo build -p host` first)",
        bin.display()
    );
    bin
}

/// A binary of the release profile, whatever profile the running binary
/// has (the bench measures release builds); it may not exist.
pub fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

/// Where `make build-guests` puts a guest component, by crate name; it may
/// not exist.
pub fn guest_path(name: &str) -> PathBuf {
    let file = format!("{}.wasm", name.replace('-', "_"));
    target_dir().join("wasm32-wasip2/release").join(file)
}

/// A guest component built by `make build-guests`, by crate name.
pub fn guest(name: &str) -> PathBuf {
    let path = guest_path(name);
    assert!(
        path.is_file(),
        "guest {} not built: run `make build-guests` ({} missing)",
        name,
        path.display()
    );
    path
}

/// A guest component's bytes, by crate name.
pub fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("read guest component")
}

/// The workspace root (for running the host as `cargo run` would).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_dir_of_a_test_binary_is_above_deps() {
        let dir = profile_dir_of(Path::new("/w/target/debug/deps/e2e-0123abcd"));
        assert_eq!(dir, Path::new("/w/target/debug"));
    }

    #[test]
    fn the_profile_dir_of_a_plain_binary_is_its_own() {
        let dir = profile_dir_of(Path::new("/w/target/release/bench"));
        assert_eq!(dir, Path::new("/w/target/release"));
    }
}
