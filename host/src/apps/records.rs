//! The on-disk schema of deployed apps: one [`AppRecord`] per app in
//! `STATE_DIR/apps/NAME.json`, with its versions ([`VersionRecord`]: the
//! component's digest, its settings and what the host learned from its
//! bytes) and its canary. Records are read by this host and by older and
//! newer ones (a binary rollback), so fields are only added, and only
//! written when they say something.

use serde::{Deserialize, Serialize};

use crate::apps::error::AppError;
use crate::apps::settings::AppSettings;
use crate::routing::Route;
use crate::runtime::component::World;
use crate::runtime::engine::COPY_IMAGE_BYTES;

/// A deployed app as stored in `STATE_DIR/apps/NAME.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    pub name: String,
    pub route: Route,
    /// The version serving (all traffic but the canary's share).
    pub current: String,
    #[serde(default)]
    pub canary: Option<CanaryRecord>,
    /// Newest first; at most `--keep-versions`.
    pub versions: Vec<VersionRecord>,
    /// In cluster mode, the cluster store's revision of this record (the
    /// store keeps it beside the record; the local cache keeps it in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
}

/// An app declared on the command line or in the manifest: never stored,
/// read-only at run time.
#[derive(Debug, Clone)]
pub(crate) struct StaticApp {
    pub(crate) route: Route,
    pub(crate) version: VersionRecord,
}

/// A deployed app on disk that is not being served, and why.
#[derive(Debug, Clone)]
pub(crate) struct FailedApp {
    pub(crate) record: AppRecord,
    pub(crate) reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryRecord {
    pub version: String,
    /// Percent of requests (0..=100) that go to `version`.
    pub weight: u8,
    #[serde(default)]
    pub sticky: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The first 12 hex digits of `digest`.
    pub version: String,
    /// SHA-256 of the component.
    pub digest: String,
    pub size: u64,
    /// Unix seconds.
    pub deployed_at: u64,
    pub settings: AppSettings,
    /// The `wasi:http` world the component serves. Stored only for WASI
    /// 0.3, so that records of WASI 0.2 apps stay readable by a host from
    /// before WASI 0.3 support (a rollback of the binary); records without
    /// it are WASI 0.2.
    #[serde(default, skip_serializing_if = "World::is_default")]
    pub world: World,
    /// Bytes of the component's memory image
    /// ([`component::memory_image_bytes`]), which picks how its memory is
    /// reset (and so its engine) before its cached code is loaded. Stored
    /// only from [`COPY_IMAGE_BYTES`] up, where it changes the pick, so
    /// that other records stay readable by older hosts; records without it
    /// are small.
    #[serde(default, skip_serializing_if = "is_small_image")]
    pub memory_image_bytes: u64,
}

impl VersionRecord {
    /// Settings that only one world can apply are refused for the other.
    pub(crate) fn check_world(&self) -> Result<(), AppError> {
        match self.settings.instance_concurrency {
            Some(n) if n > 1 && self.world == World::Http02 => Err(AppError::Invalid(format!(
                "instance_concurrency {n} applies to WASI 0.3 components (wasi:http@0.3) only, and this \
                 one serves wasi:http@0.2, whose instances take one request at a time: remove the \
                 setting or set it to 1"
            ))),
            _ => Ok(()),
        }
    }
}

fn is_small_image(bytes: &u64) -> bool {
    *bytes < COPY_IMAGE_BYTES
}

impl AppRecord {
    /// The record of `version`, by exact id.
    pub(crate) fn version(&self, id: &str) -> Result<&VersionRecord, AppError> {
        self.versions
            .iter()
            .find(|v| v.version == id)
            .ok_or_else(|| {
                AppError::Invalid(format!(
                    "the record of app {} names version {id}, which it does not hold",
                    self.name
                ))
            })
    }

    /// Resolve a version id (or a unique prefix of one).
    pub(crate) fn find_version(&self, wanted: &str) -> Result<&VersionRecord, AppError> {
        let matches: Vec<&VersionRecord> = self
            .versions
            .iter()
            .filter(|v| !wanted.is_empty() && v.version.starts_with(wanted))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(AppError::NotFound(format!(
                "app {} has no version {wanted}; it has: {}",
                self.name,
                self.versions
                    .iter()
                    .map(|v| v.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Err(AppError::Invalid(format!(
                "version {wanted} is ambiguous; give more digits"
            ))),
        }
    }

    /// Every component digest the record names.
    pub(crate) fn digests(&self) -> impl Iterator<Item = &str> {
        self.versions.iter().map(|v| v.digest.as_str())
    }
}

/// App names: lowercase letters, digits and `-`, 1 to 63 characters.
pub fn validate_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "app name {name:?} must be 1-63 lowercase letters, digits or `-`, not starting with `-`"
        )))
    }
}

/// What of a version's settings a served version was built from: a
/// served version is reused only for the very same version and settings.
pub fn version_settings_key(version: &VersionRecord) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    version.digest.hash(&mut h);
    serde_json::to_string(&version.settings)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// A WASI 0.2 version record whose digest is `n` repeated, for tests.
#[cfg(test)]
pub(crate) fn fixture(n: u8) -> VersionRecord {
    let digest = format!("{n:02x}").repeat(32);
    VersionRecord {
        version: digest[..12].to_string(),
        digest,
        size: 1,
        deployed_at: 0,
        settings: AppSettings::default(),
        world: World::Http02,
        memory_image_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u8) -> VersionRecord {
        fixture(n)
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("app-1").is_ok());
        for bad in ["", "-a", "A", "a_b", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn records_store_a_memory_image_only_when_it_picks_the_copy_pool() {
        let small = VersionRecord {
            memory_image_bytes: COPY_IMAGE_BYTES - 1,
            ..version(3)
        };
        let stored = serde_json::to_value(&small).unwrap();
        assert!(stored.get("memory_image_bytes").is_none(), "{stored}");
        let large = VersionRecord {
            memory_image_bytes: 11 << 20,
            ..version(4)
        };
        let stored = serde_json::to_string(&large).unwrap();
        assert!(
            stored.contains("\"memory_image_bytes\":11534336"),
            "{stored}"
        );
        assert_eq!(
            serde_json::from_str::<VersionRecord>(&stored).unwrap(),
            large
        );
        // Unknown fields are refused: a record is never half understood.
        assert!(
            serde_json::from_str::<VersionRecord>(&stored.replace("\"size\"", "\"sise\"")).is_err()
        );
    }

    #[test]
    fn instance_concurrency_is_for_wasi_0_3_only() {
        let mut p2 = version(5);
        p2.settings.instance_concurrency = Some(4);
        let err = p2.check_world().unwrap_err().to_string();
        assert!(err.contains("wasi:http@0.2"), "{err}");
        p2.settings.instance_concurrency = Some(1);
        assert!(p2.check_world().is_ok());
        let p3 = VersionRecord {
            world: World::Http03,
            settings: AppSettings {
                instance_concurrency: Some(4),
                ..AppSettings::default()
            },
            ..version(6)
        };
        assert!(p3.check_world().is_ok());
    }
}
