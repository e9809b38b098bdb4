//! What the admin API reads and shows of apps: the deploy request's fields
//! besides the component, and each app and version as listed. Secrets
//! appear as where they are read from, never as values.

use serde::{Deserialize, Serialize};

use crate::apps::records::{CanaryRecord, VersionRecord};
use crate::apps::settings::AppSettings;
use crate::runtime::component::World;

/// What a deploy asks for besides the component.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeployRequest {
    /// Path prefix; required on an app's first deploy, kept when omitted.
    pub route: Option<String>,
    /// Host name the route is limited to.
    pub host: Option<String>,
    #[serde(flatten)]
    pub settings: AppSettings,
}

/// An app as the admin API shows it. Secrets appear as where they are read
/// from, never as values.
#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    pub name: String,
    pub route: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub url: String,
    /// `deployed` (admin API) or `static` (command line or manifest).
    pub source: &'static str,
    pub current_version: String,
    pub canary: Option<CanaryRecord>,
    pub versions: Vec<VersionView>,
    /// Why a deployed app is not being served (it failed to restore at
    /// start); absent for served apps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    #[serde(flatten)]
    pub record: VersionRecord,
    pub current: bool,
    /// The world of a WASI 0.2 version, which its record leaves out: the
    /// API always says which world a version serves.
    #[serde(rename = "world", skip_serializing_if = "Option::is_none")]
    default_world: Option<World>,
}

impl VersionView {
    pub(crate) fn new(record: VersionRecord, current: bool) -> VersionView {
        VersionView {
            default_world: record.world.is_default().then_some(record.world),
            record,
            current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::records::fixture as version;

    #[test]
    fn records_store_only_a_wasi_0_3_world_and_views_always_say_it() {
        let p2 = version(1);
        let stored = serde_json::to_value(&p2).unwrap();
        assert!(
            stored.get("world").is_none(),
            "older hosts read it: {stored}"
        );
        let view = serde_json::to_string(&VersionView::new(p2, true)).unwrap();
        assert_eq!(view.matches("\"world\"").count(), 1, "{view}");
        assert!(view.contains("\"world\":\"wasi:http@0.2\""), "{view}");

        let p3 = VersionRecord {
            world: World::Http03,
            ..version(2)
        };
        let stored = serde_json::to_string(&p3).unwrap();
        assert!(stored.contains("\"world\":\"wasi:http@0.3\""), "{stored}");
        let back: VersionRecord = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, p3);
        let view = serde_json::to_string(&VersionView::new(p3, false)).unwrap();
        assert_eq!(view.matches("\"world\"").count(), 1, "{view}");
    }
}
