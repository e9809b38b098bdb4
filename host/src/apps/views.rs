//! What the admin API reads and shows of apps: the deploy request's fields
//! besides the component, and each app and version as listed, with the URL
//! it answers at. Secrets appear as where they are read from, never as
//! values.

use serde::{Deserialize, Serialize};

use crate::apps::records::{AppRecord, CanaryRecord, StaticApp, VersionRecord};
use crate::apps::settings::AppSettings;
use crate::cluster::replicas::Failed;
use crate::routing::Route;
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
    /// Cluster mode: the cluster store's revision of the app's record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Cluster mode: the revision each live replica serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<Vec<ReplicaView>>,
}

/// What one replica serves of an app.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaView {
    pub replica: String,
    /// The revision it serves (0: none yet).
    pub revision: u64,
    /// A newer revision it could not serve, and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed: Option<Failed>,
}

impl AppView {
    /// A static app as listed; `public_base` is `http://ADDR` of the public
    /// listener.
    pub(crate) fn of_static(name: &str, app: &StaticApp, public_base: &str) -> AppView {
        AppView {
            name: name.to_string(),
            route: app.route.prefix.clone(),
            host: app.route.host.clone(),
            url: url(public_base, &app.route),
            source: "static",
            current_version: app.version.version.clone(),
            canary: None,
            versions: vec![VersionView::new(app.version.clone(), true)],
            failed: None,
            revision: None,
            replicas: None,
        }
    }

    /// A deployed app as listed, with why it is not served if it failed to
    /// restore.
    pub(crate) fn of_deployed(
        record: &AppRecord,
        failed: Option<String>,
        public_base: &str,
    ) -> AppView {
        AppView {
            name: record.name.clone(),
            route: record.route.prefix.clone(),
            host: record.route.host.clone(),
            url: url(public_base, &record.route),
            source: "deployed",
            current_version: record.current.clone(),
            canary: record.canary.clone(),
            versions: record
                .versions
                .iter()
                .map(|v| VersionView::new(v.clone(), v.version == record.current))
                .collect(),
            failed,
            revision: record.revision,
            replicas: None,
        }
    }
}

/// Where an app at `route` answers, as a URL a user can curl.
pub(crate) fn url(public_base: &str, route: &Route) -> String {
    match &route.host {
        None => format!("{public_base}{}", route.prefix),
        Some(host) => {
            let port = public_base.rsplit(':').next().unwrap_or("80");
            format!("http://{host}:{port}{}", route.prefix)
        }
    }
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

    #[test]
    fn urls_name_the_public_port_and_the_app_host() {
        let base = "http://127.0.0.1:8080";
        let plain = Route::new("/api", None).unwrap();
        assert_eq!(url(base, &plain), "http://127.0.0.1:8080/api");
        let hosted = Route::new("/", Some("App.Example.com")).unwrap();
        assert_eq!(url(base, &hosted), "http://app.example.com:8080/");
    }
}
