//! The TOML apps manifest (`host serve --manifest apps.toml`), for static
//! setups and containers. Apps declared here are served as declared and are
//! read-only through the admin API.
//!
//! ```toml
//! [[app]]
//! name = "hello"
//! component = "hello.wasm"          # relative to this file
//! route = "/hello"
//! host = "hello.example.com"        # optional
//! env = { GREETING = "hi" }
//! config = { upstream_url = "https://api.example.com/" }
//! secrets = { API_KEY = "env:HELLO_API_KEY" }
//! allow_outbound = ["https://api.example.com"]
//! key_value = ["default"]             # key-value stores it may open
//! memory_mib = 64
//! timeout_ms = 5000
//! max_concurrent = 100
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::apps::error::AppError;
use crate::apps::settings::AppSettings;
use crate::routing::Route;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    #[serde(default)]
    app: Vec<AppEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    name: String,
    component: PathBuf,
    route: String,
    host: Option<String>,
    #[serde(flatten)]
    settings: AppSettings,
}

/// An app declared in the manifest, paths resolved.
#[derive(Debug)]
pub struct ManifestApp {
    pub name: String,
    pub component: PathBuf,
    pub route: Route,
    pub settings: AppSettings,
}

pub fn load(path: &Path) -> Result<Vec<ManifestApp>, AppError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        AppError::Invalid(format!("failed to read manifest {}: {e}", path.display()))
    })?;
    parse(&text, path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| AppError::Invalid(format!("invalid manifest {}: {e}", path.display())))
}

/// Parse manifest `text`, component paths relative to `base`.
pub fn parse(text: &str, base: &Path) -> Result<Vec<ManifestApp>, AppError> {
    let manifest: Manifest = toml::from_str(text).map_err(|e| AppError::Invalid(e.to_string()))?;
    if manifest.app.is_empty() {
        return Err(AppError::Invalid("it declares no [[app]]".into()));
    }
    manifest
        .app
        .into_iter()
        .map(|app| {
            let route = Route::new(&app.route, app.host.as_deref())
                .map_err(|e| AppError::Invalid(format!("app {}: {e}", app.name)))?;
            Ok(ManifestApp {
                component: base.join(&app.component),
                name: app.name,
                route,
                settings: app.settings,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apps_with_settings_relative_to_the_manifest() {
        let apps = parse(
            r#"
            [[app]]
            name = "hello"
            component = "hello.wasm"
            route = "/hello/"
            host = "Hello.Example.com"
            env = { A = "1" }
            secrets = { KEY = "env:HOST_KEY" }
            allow_outbound = ["https://*.example.com"]
            memory_mib = 64
            "#,
            Path::new("/etc/apps"),
        )
        .unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].component, Path::new("/etc/apps/hello.wasm"));
        assert_eq!(apps[0].route.prefix, "/hello");
        assert_eq!(apps[0].route.host.as_deref(), Some("hello.example.com"));
        assert_eq!(apps[0].settings.memory_mib, Some(64));
        assert_eq!(apps[0].settings.env["A"], "1");
    }

    #[test]
    fn unknown_keys_and_empty_manifests_are_errors() {
        assert!(
            parse(
                "[[app]]\nname='a'\ncomponent='a.wasm'\nroute='/'\nmemroy_mib=1\n",
                Path::new(".")
            )
            .is_err()
        );
        assert!(
            parse("", Path::new("."))
                .unwrap_err()
                .to_string()
                .to_string()
                .contains("no [[app]]")
        );
    }
}
