//! Which app answers a request, and which of its versions: the [`Route`]s
//! apps are deployed at, the apps as they are served right now
//! ([`LiveApp`], with an optional [`Canary`]), and the [`RoutingTable`]
//! that maps a host and a path to one of them. Pure data and lookups: no
//! I/O, no HTTP beyond reading a header for sticky canaries.
//!
//! The table is an immutable snapshot swapped atomically on every change
//! (deploy, rollback, canary, delete), so a request sees one consistent
//! table and in-flight requests finish on the version they started on.
//! Host-specific routes win over host-less ones; among those, the longest
//! path prefix wins (`/api` matches `/api` and `/api/x`, not `/apix`).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, header};
use serde::{Deserialize, Serialize};

use crate::runtime::served::ServedVersion;

/// Where an app answers: a path prefix, optionally only for one host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// A route prefix or host name that cannot be served; says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRoute(String);

impl Route {
    /// Validate and normalise (`/api/` → `/api`, host lowercased).
    pub fn new(prefix: &str, host: Option<&str>) -> Result<Route, InvalidRoute> {
        Route::parse(prefix, host).map_err(InvalidRoute)
    }

    fn parse(prefix: &str, host: Option<&str>) -> Result<Route, String> {
        if !prefix.starts_with('/') {
            return Err(format!("route {prefix:?} must start with `/`"));
        }
        let dotted = prefix
            .split('/')
            .any(|segment| segment == "." || segment == "..");
        if prefix.contains(['?', '#', ' ', '%', '\\']) || prefix.contains("//") || dotted {
            return Err(format!(
                "route {prefix:?} must be a plain path (no `?`, `#`, `%`, `\\`, spaces, `//`, `.` or `..` segments)"
            ));
        }
        let prefix = match prefix.trim_end_matches('/') {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        let host = match host {
            None => None,
            Some(h) => {
                let h = h.to_ascii_lowercase();
                let h = h.strip_suffix('.').unwrap_or(&h).to_string();
                let valid = !h.is_empty()
                    && h.len() <= 253
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
                if !valid {
                    return Err(format!(
                        "host {h:?} must be a DNS name like app.example.com"
                    ));
                }
                Some(h)
            }
        };
        Ok(Route { prefix, host })
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host}{}", self.prefix),
            None => f.write_str(&self.prefix),
        }
    }
}

/// A canary: `weight` percent of requests go to `version`.
pub struct Canary {
    pub version: Arc<ServedVersion>,
    pub weight: u8,
    pub sticky: bool,
}

/// An app as it is served right now.
pub struct LiveApp {
    pub name: Arc<str>,
    pub route: Route,
    pub current: Arc<ServedVersion>,
    pub canary: Option<Canary>,
}

/// Header or cookie that pins a client to one side of a sticky canary.
pub const CANARY_KEY_HEADER: &str = "x-canary-key";
pub const CANARY_KEY_COOKIE: &str = "canary-key";

impl LiveApp {
    /// The version that serves this request: the canary for `weight`% of
    /// requests (the same side every time for a sticky key), else current.
    pub(crate) fn pick(&self, headers: &HeaderMap) -> &Arc<ServedVersion> {
        let Some(canary) = &self.canary else {
            return &self.current;
        };
        let bucket = match canary.sticky.then(|| sticky_key(headers)).flatten() {
            Some(key) => {
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % 100) as u8
            }
            None => fastrand::u8(0..100),
        };
        if bucket < canary.weight {
            &canary.version
        } else {
            &self.current
        }
    }
}

fn sticky_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(CANARY_KEY_HEADER).and_then(|v| v.to_str().ok()) {
        return Some(v);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(CANARY_KEY_COOKIE)?.strip_prefix('='))
}

/// An immutable routing snapshot.
#[derive(Default)]
pub struct RoutingTable {
    by_host: HashMap<String, HashMap<String, Arc<LiveApp>>>,
    any_host: HashMap<String, Arc<LiveApp>>,
    /// How many apps the table holds.
    pub len: usize,
}

impl RoutingTable {
    pub fn new(apps: impl IntoIterator<Item = Arc<LiveApp>>) -> RoutingTable {
        let mut table = RoutingTable::default();
        for app in apps {
            table.len += 1;
            let prefix = app.route.prefix.clone();
            match &app.route.host {
                Some(host) => {
                    table
                        .by_host
                        .entry(host.clone())
                        .or_default()
                        .insert(prefix, app);
                }
                None => {
                    table.any_host.insert(prefix, app);
                }
            }
        }
        table
    }

    /// The app for `host` (without port) and `path`.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<&Arc<LiveApp>> {
        if let Some(routes) = host.and_then(|h| self.by_host.get(h))
            && let Some(app) = prefixes(path).find_map(|p| routes.get(p))
        {
            return Some(app);
        }
        prefixes(path).find_map(|p| self.any_host.get(p))
    }
}

/// `/a/b/c` → `/a/b/c`, `/a/b`, `/a`, `/` (trailing slashes ignored).
pub(crate) fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    });
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.rfind('/') {
            _ if current == "/" => None,
            Some(0) => Some("/"),
            Some(i) => Some(&current[..i]),
            None => None,
        };
        Some(current)
    })
}

/// The routing table as served now: the deploy path publishes a new one,
/// the front reads the current one, without a lock on either side.
#[derive(Default)]
pub struct Routes {
    table: ArcSwap<RoutingTable>,
}

impl Routes {
    /// Swap in a new table atomically.
    pub fn publish(&self, table: RoutingTable) {
        self.table.store(Arc::new(table));
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_walk_up_the_path() {
        let all = |p| prefixes(p).collect::<Vec<_>>();
        assert_eq!(all("/a/b/c"), ["/a/b/c", "/a/b", "/a", "/"]);
        assert_eq!(all("/a/b/"), ["/a/b", "/a", "/"]);
        assert_eq!(all("/"), ["/"]);
        assert_eq!(all(""), ["/"]);
    }

    #[test]
    fn routes_are_validated_and_normalised() {
        assert_eq!(Route::new("/api/", None).unwrap().prefix, "/api");
        assert_eq!(Route::new("/", None).unwrap().prefix, "/");
        assert_eq!(
            Route::new("/x", Some("A.Example.com"))
                .unwrap()
                .host
                .as_deref(),
            Some("a.example.com")
        );
        assert!(Route::new("api", None).is_err());
        assert!(Route::new("/a?b", None).is_err());
        assert!(Route::new("/a//b", None).is_err());
        assert!(Route::new("/", Some("bad host")).is_err());
        assert_eq!(
            Route::new("/", Some("x.example.com."))
                .unwrap()
                .host
                .as_deref(),
            Some("x.example.com")
        );
    }
}
