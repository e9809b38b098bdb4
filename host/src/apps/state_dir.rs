//! The state directory: everything a restart needs to bring every deployed
//! app back at its current version and canary weights.
//!
//! ```text
//! STATE_DIR/
//!   apps/NAME.json                 one record per deployed app
//!   components/SHA256.wasm         uploaded components, content-addressed
//!   cache/SHA256-ENGINE.cwasm      code this host compiled itself
//!   cluster/                       in cluster mode, the same layout again: a
//!                                  cache of the cluster store's records,
//!                                  components and code (and apps/store-id,
//!                                  the store's id), kept apart so that a
//!                                  host switched to cluster mode and back
//!                                  never loses or mixes up its own apps
//! ```
//!
//! Every write goes to a temporary file that is fsynced and renamed into
//! place, then the directory is fsynced: a crash leaves the old file or the
//! new one, never a torn one. Precompiled code is only ever produced here,
//! never accepted from outside, and each cache file carries a SHA-256 of its
//! contents that is checked before the code is loaded; a missing or corrupt
//! entry is recompiled from the component.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::apps::error::StorageError;
use crate::apps::records::AppRecord;

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Name the file and what was being done to it on an I/O error.
fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |error| StorageError::Io {
        action,
        path,
        error,
    }
}

fn corrupt(path: &Path, why: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// First bytes of a cache file, before the checksum and the code.
const CACHE_MAGIC: &[u8] = b"host-precompiled-v1\n";

pub struct StateDir {
    root: PathBuf,
}

/// Where a replica keeps its cache of the cluster, under the state
/// directory.
pub const CLUSTER_SUBDIR: &str = "cluster";

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl StateDir {
    /// Open (creating if needed) the state directory at `root`.
    pub fn open(root: &Path) -> Result<StateDir> {
        for sub in ["apps", "components", "cache"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io("create state directory", &dir))?;
        }
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The id of the cluster store the cached records came from, if known.
    pub fn store_id(&self) -> Option<String> {
        let path = self.root.join("apps").join("store-id");
        let id = fs::read_to_string(path).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_string())
    }

    pub fn save_store_id(&self, id: &str) -> Result<()> {
        write_atomic(&self.root.join("apps").join("store-id"), id.as_bytes())
    }

    /// Is the component of `digest` stored here?
    pub fn has_component(&self, digest: &str) -> bool {
        self.component_path(digest).is_file()
    }

    fn component_path(&self, digest: &str) -> PathBuf {
        self.root.join("components").join(format!("{digest}.wasm"))
    }

    fn cache_path(&self, digest: &str, engine_key: &str) -> PathBuf {
        self.root
            .join("cache")
            .join(format!("{digest}-{engine_key}.cwasm"))
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join("apps").join(format!("{name}.json"))
    }

    /// Store an uploaded component under its digest (once).
    pub fn save_component(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let path = self.component_path(digest);
        if path.is_file() {
            return Ok(());
        }
        write_atomic(&path, bytes)
    }

    pub fn read_component(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.component_path(digest);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        if sha256_hex(&bytes) != digest {
            return Err(corrupt(
                &path,
                "is corrupt: its contents do not match its digest",
            ));
        }
        Ok(bytes)
    }

    /// Store code compiled by this host for `digest`.
    pub fn save_precompiled(&self, digest: &str, engine_key: &str, code: &[u8]) -> Result<()> {
        let mut file = Vec::with_capacity(CACHE_MAGIC.len() + 32 + code.len());
        file.extend_from_slice(CACHE_MAGIC);
        file.extend_from_slice(&Sha256::digest(code));
        file.extend_from_slice(code);
        write_atomic(&self.cache_path(digest, engine_key), &file)
    }

    /// Code this host compiled earlier for `digest`, if present and intact.
    /// `Err` means an entry exists but is corrupt (the caller recompiles).
    pub fn load_precompiled(&self, digest: &str, engine_key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.cache_path(digest, engine_key);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io("read", &path)(err)),
        };
        let header = CACHE_MAGIC.len() + 32;
        if bytes.len() < header || !bytes.starts_with(CACHE_MAGIC) {
            return Err(corrupt(&path, "is a cache entry with no valid header"));
        }
        let code = &bytes[header..];
        if Sha256::digest(code).as_slice() != &bytes[CACHE_MAGIC.len()..header] {
            return Err(corrupt(&path, "is a cache entry that fails its checksum"));
        }
        bytes.drain(..header);
        Ok(Some(bytes))
    }

    pub fn save_record(&self, record: &AppRecord) -> Result<()> {
        let path = self.record_path(&record.name);
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| corrupt(&path, format!("could not be encoded: {e}")))?;
        write_atomic(&self.record_path(&record.name), &json)
    }

    pub fn remove_record(&self, name: &str) -> Result<()> {
        let path = self.record_path(name);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().unwrap_or(&self.root)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io("remove", &path)(err)),
        }
    }

    /// Every app record on disk; unreadable ones come back as errors naming
    /// the file, so one bad record never hides the others.
    pub fn load_records(&self) -> Result<Vec<Result<AppRecord>>> {
        let dir = self.root.join("apps");
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io("list", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        Ok(paths
            .into_iter()
            .map(|path| {
                let bytes = fs::read(&path).map_err(io("read", &path))?;
                let record: AppRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| corrupt(&path, format!("is not a valid app record: {e}")))?;
                let expected = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default();
                if record.name != expected {
                    return Err(corrupt(
                        &path,
                        format!("names app {:?}, not {expected:?}", record.name),
                    ));
                }
                Ok(record)
            })
            .collect())
    }

    /// The digest of every stored component and cache entry.
    pub fn stored_digests(&self) -> HashSet<String> {
        let mut digests = HashSet::new();
        for sub in ["components", "cache"] {
            let Ok(entries) = fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Some(digest) = file_digest(&entry.file_name().to_string_lossy()) {
                    digests.insert(digest.to_string());
                }
            }
        }
        digests
    }

    /// Remove the stored components and cache entries of `digests`; how
    /// many files went.
    pub fn remove_digests(&self, digests: &[String]) -> usize {
        let doomed: HashSet<&str> = digests.iter().map(String::as_str).collect();
        let mut removed = 0;
        for sub in ["components", "cache"] {
            let Ok(entries) = fs::read_dir(self.root.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !file_digest(&name.to_string_lossy()).is_some_and(|d| doomed.contains(d)) {
                    continue;
                }
                match fs::remove_file(entry.path()) {
                    Ok(()) => removed += 1,
                    Err(err) => {
                        tracing::warn!(file = %entry.path().display(), error = %err, "failed to remove unused state file")
                    }
                }
            }
        }
        removed
    }
}

/// The digest a state file is named after (`DIGEST.wasm`,
/// `DIGEST-ENGINE.cwasm`), if it is one.
fn file_digest(name: &str) -> Option<&str> {
    let digest = name.split(['.', '-']).next()?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
}

/// Write `bytes` to `path` so that a crash leaves either the old contents or
/// the new ones: temp file in the same directory, fsync, rename, fsync dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| corrupt(path, "has no parent directory"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(err) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io("write", path)(err));
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::records::VersionRecord;
    use crate::routing::Route;

    /// A state directory under the system temp dir, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "host-state-dir-test-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn record(name: &str, n: u8) -> AppRecord {
        let digest = format!("{n:02x}").repeat(32);
        AppRecord {
            name: name.into(),
            route: Route::new(&format!("/{name}"), None).unwrap(),
            current: digest[..12].into(),
            canary: None,
            versions: vec![VersionRecord {
                version: digest[..12].into(),
                digest,
                size: 1,
                deployed_at: 0,
                settings: Default::default(),
                world: Default::default(),
                memory_image_bytes: 0,
            }],
            revision: None,
        }
    }

    fn loaded(state: &StateDir) -> Vec<Result<String, String>> {
        state
            .load_records()
            .unwrap()
            .into_iter()
            .map(|r| r.map(|r| r.name).map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn records_round_trip_and_removal_is_idempotent() {
        let dir = Scratch::new();
        let state = StateDir::open(&dir.0).unwrap();
        state.save_record(&record("b", 2)).unwrap();
        state.save_record(&record("a", 1)).unwrap();
        let records = state.load_records().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].as_ref().unwrap(), &record("a", 1));
        state.remove_record("a").unwrap();
        state.remove_record("a").unwrap();
        assert_eq!(loaded(&state), [Ok("b".to_string())]);
    }

    /// A torn write cannot happen (temp file, fsync, rename): what a crash
    /// leaves is a temp file next to the intact record, which is ignored. A
    /// corrupt record, or one naming another app, is reported with its file
    /// and never hides the others.
    #[test]
    fn crash_leftovers_are_ignored_and_corrupt_records_named() {
        let dir = Scratch::new();
        let state = StateDir::open(&dir.0).unwrap();
        state.save_record(&record("a", 1)).unwrap();
        fs::write(
            dir.0.join("apps/.a.json.tmp-1-2"),
            b"{\"name\": \"a\", \"rou",
        )
        .unwrap();
        fs::write(dir.0.join("apps/broken.json"), b"{not json").unwrap();
        let other = serde_json::to_vec(&record("c", 3)).unwrap();
        fs::write(dir.0.join("apps/d.json"), other).unwrap();
        let records = loaded(&state);
        assert_eq!(records.len(), 3, "{records:?}");
        assert_eq!(records[0], Ok("a".to_string()));
        let broken = records[1].as_ref().unwrap_err();
        assert!(broken.contains("broken.json"), "{broken}");
        let misnamed = records[2].as_ref().unwrap_err();
        assert!(
            misnamed.contains("d.json") && misnamed.contains("\"c\""),
            "{misnamed}"
        );
    }

    #[test]
    fn precompiled_code_is_checked_before_it_is_loaded() {
        let dir = Scratch::new();
        let state = StateDir::open(&dir.0).unwrap();
        let digest = sha256_hex(b"component");
        assert!(state.load_precompiled(&digest, "k").unwrap().is_none());
        state
            .save_precompiled(&digest, "k", b"machine code")
            .unwrap();
        assert_eq!(
            state.load_precompiled(&digest, "k").unwrap().unwrap(),
            b"machine code"
        );
        assert!(
            state
                .load_precompiled(&digest, "other-engine")
                .unwrap()
                .is_none()
        );

        let path = state.cache_path(&digest, "k");
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(&path, &bytes).unwrap();
        let err = state
            .load_precompiled(&digest, "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        fs::write(&path, b"short").unwrap();
        let err = state
            .load_precompiled(&digest, "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("header"), "{err}");
    }

    #[test]
    fn stored_files_are_found_and_removed_by_digest() {
        let dir = Scratch::new();
        let state = StateDir::open(&dir.0).unwrap();
        let (one, two) = (sha256_hex(b"one"), sha256_hex(b"two"));
        state.save_component(&one, b"one").unwrap();
        state.save_component(&two, b"two").unwrap();
        state.save_precompiled(&one, "k", b"code").unwrap();
        assert_eq!(state.read_component(&one).unwrap(), b"one");
        assert_eq!(
            state.stored_digests(),
            HashSet::from([one.clone(), two.clone()])
        );
        assert_eq!(state.remove_digests(std::slice::from_ref(&one)), 2);
        assert_eq!(state.stored_digests(), HashSet::from([two]));
        assert!(state.read_component(&one).is_err());
    }
}
