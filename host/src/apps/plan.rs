//! The version/canary state machine: each change is a pure function from
//! an app's record to its next record.

use crate::apps::error::AppError;
use crate::apps::records::{AppRecord, CanaryRecord, VersionRecord};
use crate::routing::Route;

/// `version` becomes current (the front of the history); any canary ends.
pub fn deploy(
    existing: Option<&AppRecord>,
    name: &str,
    route: Route,
    version: VersionRecord,
    keep: usize,
) -> AppRecord {
    let mut versions = existing.map(|r| r.versions.clone()).unwrap_or_default();
    versions.retain(|v| v.digest != version.digest);
    let current = version.version.clone();
    versions.insert(0, version);
    versions.truncate(keep.max(1));
    AppRecord {
        name: name.to_string(),
        route,
        current,
        canary: None,
        versions,
        revision: existing.and_then(|r| r.revision),
    }
}

/// The previous version (or `to`) becomes current; any canary ends.
pub fn rollback(record: &AppRecord, to: Option<&str>) -> Result<AppRecord, AppError> {
    let target = match to {
        Some(wanted) => record.find_version(wanted)?,
        None => {
            let at = record
                .versions
                .iter()
                .position(|v| v.version == record.current);
            at.and_then(|i| record.versions.get(i + 1)).ok_or_else(|| {
                AppError::Conflict(format!(
                    "app {} has no version older than {} to roll back to",
                    record.name, record.current
                ))
            })?
        }
    };
    if target.version == record.current && record.canary.is_none() {
        return Err(AppError::Conflict(format!(
            "version {} is already current",
            target.version
        )));
    }
    Ok(AppRecord {
        current: target.version.clone(),
        canary: None,
        ..record.clone()
    })
}

/// `weight`% of requests go to `version`.
pub fn canary(
    record: &AppRecord,
    version: &str,
    weight: u8,
    sticky: bool,
) -> Result<AppRecord, AppError> {
    if weight > 100 {
        return Err(AppError::Invalid(format!(
            "weight must be 0 to 100, got {weight}"
        )));
    }
    let target = record.find_version(version)?;
    if target.version == record.current {
        return Err(AppError::Conflict(format!(
            "version {} is already current; a canary needs another version",
            target.version
        )));
    }
    Ok(AppRecord {
        canary: Some(CanaryRecord {
            version: target.version.clone(),
            weight,
            sticky,
        }),
        ..record.clone()
    })
}

/// The canary's version becomes current.
pub fn promote(record: &AppRecord) -> Result<AppRecord, AppError> {
    let canary = record.canary.as_ref().ok_or_else(|| {
        AppError::Conflict(format!("app {} has no canary to promote", record.name))
    })?;
    Ok(AppRecord {
        current: canary.version.clone(),
        canary: None,
        ..record.clone()
    })
}

/// The canary ends; the current version takes all traffic.
pub fn abort(record: &AppRecord) -> Result<AppRecord, AppError> {
    if record.canary.is_none() {
        return Err(AppError::Conflict(format!(
            "app {} has no canary to abort",
            record.name
        )));
    }
    Ok(AppRecord {
        canary: None,
        ..record.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::records::fixture as version;

    fn route() -> Route {
        Route::new("/a", None).unwrap()
    }

    #[test]
    fn deploy_puts_the_version_first_and_keeps_the_history_bounded() {
        let r = deploy(None, "a", route(), version(1), 2);
        assert_eq!(r.current, version(1).version);
        let r = deploy(Some(&r), "a", route(), version(2), 2);
        let r = deploy(Some(&r), "a", route(), version(3), 2);
        let ids: Vec<_> = r.versions.iter().map(|v| v.version.clone()).collect();
        assert_eq!(ids, [version(3).version, version(2).version]);
        // Redeploying a version in the history moves it to the front once.
        let r = deploy(Some(&r), "a", route(), version(2), 2);
        assert_eq!(r.versions.len(), 2);
        assert_eq!(r.current, version(2).version);
    }

    #[test]
    fn rollback_canary_promote_and_abort_follow_the_state_machine() {
        let r = deploy(None, "a", route(), version(1), 10);
        assert!(matches!(rollback(&r, None), Err(AppError::Conflict(_))));
        let r = deploy(Some(&r), "a", route(), version(2), 10);
        let back = rollback(&r, None).unwrap();
        assert_eq!(back.current, version(1).version);
        assert!(matches!(
            rollback(&r, Some("ffff")),
            Err(AppError::NotFound(_))
        ));

        let c = canary(&r, &version(1).version[..6], 30, true).unwrap();
        assert_eq!(c.canary.as_ref().unwrap().weight, 30);
        assert!(matches!(
            canary(&r, &version(2).version, 30, false),
            Err(AppError::Conflict(_))
        ));
        assert!(matches!(
            canary(&r, &version(1).version, 101, false),
            Err(AppError::Invalid(_))
        ));
        let promoted = promote(&c).unwrap();
        assert_eq!(promoted.current, version(1).version);
        assert!(promoted.canary.is_none());
        assert!(matches!(promote(&r), Err(AppError::Conflict(_))));
        let aborted = abort(&c).unwrap();
        assert_eq!(aborted.current, version(2).version);
        assert!(aborted.canary.is_none());
        assert!(matches!(abort(&r), Err(AppError::Conflict(_))));
        // A rollback ends a canary, even back to the current version.
        let ended = rollback(&c, Some(&version(2).version)).unwrap();
        assert!(ended.canary.is_none());
    }
}
