//! The apps this host serves, their versions, and every change to them.
//!
//! Two kinds of app: *static* ones declared on the command line or in the
//! manifest (read-only at run time), and *deployed* ones managed through the
//! admin API and persisted in the state directory. Every change (deploy,
//! rollback, canary, promote, abort, delete) is validated first, compiled
//! off the serving threads, written to disk crash-safely, and only then
//! published to the router in one atomic swap. A rejected change leaves
//! both the disk and what is served exactly as they were.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::component;
use crate::invoke::Deployment;
use crate::limits::Limits;
use crate::metrics::metrics;
use crate::outbound::OutboundPolicy;
use crate::persist::{StateDir, sha256_hex};
use crate::router::{Canary, LiveApp, Route, Router, RoutingTable};
use crate::settings::AppSettings;
use crate::state::HostState;

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
}

/// An error for the admin API: a status and a message that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, m)
    }
    fn not_found(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, m)
    }
    fn conflict(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, m)
    }
    fn unprocessable(m: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
    fn internal(err: anyhow::Error) -> ApiError {
        tracing::error!(error = ?err, "admin operation failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the host could not complete the operation; see its log",
        )
    }
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct VersionView {
    #[serde(flatten)]
    pub record: VersionRecord,
    pub current: bool,
}

/// Settings of the registry that come from the command line.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    pub defaults: Limits,
    pub keep_versions: usize,
    pub compile_timeout: Duration,
    /// `http://ADDR` of the public listener, for the URLs shown to users.
    pub public_base: String,
}

/// Where a version's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Already loaded in memory.
    Memory,
    /// Loaded from the precompiled cache in the state directory.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// Compiles components and keeps the precompiled cache. Cheap to clone, so
/// it can move onto a blocking thread.
#[derive(Clone)]
struct Compiler {
    engine: Engine,
    linker: Linker<HostState>,
    engine_key: String,
    state: Arc<StateDir>,
}

impl Compiler {
    /// Code for `digest`: from the cache when intact, else compiled from
    /// `wasm` (or the stored component) and cached.
    fn obtain(
        &self,
        digest: &str,
        wasm: Option<&[u8]>,
    ) -> anyhow::Result<(ProxyPre<HostState>, CodeSource)> {
        match self.state.load_precompiled(digest, &self.engine_key) {
            Ok(Some(code)) => {
                // SAFETY: this host wrote the file itself (precompiled input
                // is never accepted from outside) and its checksum matched.
                match unsafe { Component::deserialize(&self.engine, &code) } {
                    Ok(component) => {
                        let pre = component::prepare(&self.engine, &self.linker, &component)?;
                        metrics().code_load("cache");
                        return Ok((pre, CodeSource::Cache));
                    }
                    Err(err) => {
                        tracing::warn!(digest, error = %err, "cached code is unusable; recompiling")
                    }
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(digest, error = %err, "cache entry is corrupt; recompiling"),
        }
        let stored;
        let wasm = match wasm {
            Some(wasm) => wasm,
            None => {
                stored = self.state.read_component(digest)?;
                &stored
            }
        };
        let started = std::time::Instant::now();
        let component = component::compile(&self.engine, wasm)?;
        metrics()
            .compile_duration
            .observe(started.elapsed().as_secs_f64());
        metrics().code_load("compiled");
        let pre = component::prepare(&self.engine, &self.linker, &component)?;
        match component.serialize() {
            Ok(code) => {
                if let Err(err) = self.state.save_precompiled(digest, &self.engine_key, &code) {
                    tracing::warn!(digest, error = %err, "failed to cache compiled code");
                }
            }
            Err(err) => tracing::warn!(digest, error = %err, "failed to serialize compiled code"),
        }
        Ok((pre, CodeSource::Compiled))
    }
}

struct StaticApp {
    route: Route,
    version: VersionRecord,
}

#[derive(Default)]
struct Inner {
    /// Deployed apps, as persisted.
    records: BTreeMap<String, AppRecord>,
    statics: BTreeMap<String, StaticApp>,
    /// Every app as served now.
    live: BTreeMap<String, Arc<LiveApp>>,
    /// Pre-instantiated code by digest, for the versions being served.
    compiled: HashMap<String, ProxyPre<HostState>>,
}

pub struct Registry {
    compiler: Compiler,
    config: RegistryConfig,
    router: Arc<Router>,
    inner: Mutex<Inner>,
}

/// Summary of a restart's restore.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub apps: usize,
    pub from_cache: usize,
    pub compiled: usize,
    pub failed: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// App names: lowercase letters, digits and `-`, 1 to 63 characters.
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "app name {name:?} must be 1-63 lowercase letters, digits or `-`, not starting with `-`"
        )))
    }
}

impl Registry {
    pub fn new(
        engine: Engine,
        linker: Linker<HostState>,
        state: StateDir,
        router: Arc<Router>,
        config: RegistryConfig,
    ) -> Registry {
        let engine_key = component::engine_key(&engine);
        Registry {
            compiler: Compiler {
                engine,
                linker,
                engine_key,
                state: Arc::new(state),
            },
            config,
            router,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Run `obtain` on a blocking thread.
    async fn obtain(
        &self,
        digest: String,
        wasm: Option<Arc<[u8]>>,
    ) -> anyhow::Result<(ProxyPre<HostState>, CodeSource)> {
        let compiler = self.compiler.clone();
        tokio::task::spawn_blocking(move || compiler.obtain(&digest, wasm.as_deref()))
            .await
            .context("compiler thread failed")?
    }

    fn deployment(
        &self,
        name: &str,
        version: &VersionRecord,
        pre: ProxyPre<HostState>,
    ) -> Result<Arc<Deployment>, String> {
        let settings = &version.settings;
        let config = settings.resolve_config()?;
        let outbound = OutboundPolicy::parse(&settings.allow_outbound)?;
        Ok(Arc::new(Deployment::new(
            name.into(),
            version.version.as_str().into(),
            pre,
            settings.limits(&self.config.defaults),
            settings
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config,
            outbound,
        )))
    }

    /// The deployment for `version` of app `name`, compiling or loading its
    /// code if it is not in memory.
    async fn deployment_for(
        &self,
        inner: &mut Inner,
        name: &str,
        version: &VersionRecord,
    ) -> Result<(Arc<Deployment>, CodeSource), ApiError> {
        let (pre, source) = match inner.compiled.get(&version.digest) {
            Some(pre) => {
                metrics().code_load("memory");
                (pre.clone(), CodeSource::Memory)
            }
            None => {
                let (pre, source) =
                    self.obtain(version.digest.clone(), None)
                        .await
                        .map_err(|e| {
                            ApiError::internal(e.context(format!(
                                "failed to load version {} of {name}",
                                version.version
                            )))
                        })?;
                inner.compiled.insert(version.digest.clone(), pre.clone());
                (pre, source)
            }
        };
        let deployment = self
            .deployment(name, version, pre)
            .map_err(|e| ApiError::bad_request(format!("version {}: {e}", version.version)))?;
        Ok((deployment, source))
    }

    /// Publish the live apps to the router, and drop code no longer served.
    fn publish(&self, inner: &mut Inner) {
        self.router
            .publish(RoutingTable::new(inner.live.values().cloned()));
        let mut used = HashSet::new();
        for app in inner.live.values() {
            used.insert(digest_of(inner, &app.name, &app.current.version));
            if let Some(canary) = &app.canary {
                used.insert(digest_of(inner, &app.name, &canary.deployment.version));
            }
        }
        inner.compiled.retain(|digest, _| used.contains(digest));
    }

    /// Remove stored components and cache entries nothing refers to.
    fn collect_garbage(&self, inner: &Inner) {
        let live: HashSet<String> = inner
            .records
            .values()
            .flat_map(|r| r.versions.iter().map(|v| v.digest.clone()))
            .chain(inner.statics.values().map(|s| s.version.digest.clone()))
            .collect();
        self.compiler.state.collect_garbage(&live);
    }

    fn route_taken(inner: &Inner, route: &Route, except: &str) -> Option<String> {
        inner
            .live
            .values()
            .find(|app| &app.route == route && &*app.name != except)
            .map(|app| app.name.to_string())
    }

    fn view(&self, inner: &Inner, name: &str) -> Option<AppView> {
        if let Some(s) = inner.statics.get(name) {
            return Some(AppView {
                name: name.to_string(),
                route: s.route.prefix.clone(),
                host: s.route.host.clone(),
                url: self.url(&s.route),
                source: "static",
                current_version: s.version.version.clone(),
                canary: None,
                versions: vec![VersionView {
                    record: s.version.clone(),
                    current: true,
                }],
            });
        }
        let r = inner.records.get(name)?;
        Some(AppView {
            name: r.name.clone(),
            route: r.route.prefix.clone(),
            host: r.route.host.clone(),
            url: self.url(&r.route),
            source: "deployed",
            current_version: r.current.clone(),
            canary: r.canary.clone(),
            versions: r
                .versions
                .iter()
                .map(|v| VersionView {
                    record: v.clone(),
                    current: v.version == r.current,
                })
                .collect(),
        })
    }

    /// Where the app answers, as a URL a user can curl.
    pub fn url(&self, route: &Route) -> String {
        let base = &self.config.public_base;
        match &route.host {
            None => format!("{base}{}", route.prefix),
            Some(host) => {
                let port = base.rsplit(':').next().unwrap_or("80");
                format!("http://{host}:{port}{}", route.prefix)
            }
        }
    }

    /// Declare a static app (command line or manifest). Errors here stop the
    /// host from starting.
    pub async fn add_static(
        &self,
        name: &str,
        path: &Path,
        route: Route,
        settings: AppSettings,
    ) -> anyhow::Result<()> {
        validate_name(name).map_err(|e| anyhow::anyhow!(e.message))?;
        settings
            .validate(&self.config.defaults)
            .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("failed to read component {}", path.display()))?;
        let digest = sha256_hex(&bytes);
        let (pre, _) = self
            .obtain(digest.clone(), Some(bytes.clone().into()))
            .await
            .with_context(|| format!("cannot serve {}", path.display()))?;
        let version = VersionRecord {
            version: digest[..12].to_string(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            deployed_at: now_secs(),
            settings,
        };
        let deployment = self
            .deployment(name, &version, pre.clone())
            .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
        let mut inner = self.inner.lock().await;
        if inner.live.contains_key(name) {
            anyhow::bail!("app {name} is declared twice");
        }
        if let Some(other) = Self::route_taken(&inner, &route, name) {
            anyhow::bail!("app {name}: route {route} is already served by app {other}");
        }
        inner.compiled.insert(digest, pre);
        inner.live.insert(
            name.to_string(),
            Arc::new(LiveApp {
                name: name.into(),
                route: route.clone(),
                current: deployment,
                canary: None,
            }),
        );
        inner
            .statics
            .insert(name.to_string(), StaticApp { route, version });
        self.publish(&mut inner);
        Ok(())
    }

    /// Bring back every deployed app from the state directory. A record that
    /// cannot be read or served is reported and skipped.
    pub async fn restore(&self) -> anyhow::Result<Restored> {
        let mut summary = Restored::default();
        let records = self.compiler.state.load_records()?;
        let mut inner = self.inner.lock().await;
        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    tracing::error!(error = %err, "skipping an unreadable app record");
                    summary.failed += 1;
                    continue;
                }
            };
            match self.restore_one(&mut inner, &record).await {
                Ok(sources) => {
                    summary.apps += 1;
                    for source in sources {
                        match source {
                            CodeSource::Cache | CodeSource::Memory => summary.from_cache += 1,
                            CodeSource::Compiled => summary.compiled += 1,
                        }
                    }
                    inner.records.insert(record.name.clone(), record);
                }
                Err(err) => {
                    tracing::error!(app = %record.name, error = %err.message, "failed to restore app; skipping it");
                    summary.failed += 1;
                }
            }
        }
        self.publish(&mut inner);
        Ok(summary)
    }

    async fn restore_one(
        &self,
        inner: &mut Inner,
        record: &AppRecord,
    ) -> Result<Vec<CodeSource>, ApiError> {
        validate_name(&record.name)?;
        if inner.live.contains_key(&record.name) {
            return Err(ApiError::conflict(format!(
                "app {} is also declared statically",
                record.name
            )));
        }
        if let Some(other) = Self::route_taken(inner, &record.route, &record.name) {
            return Err(ApiError::conflict(format!(
                "route {} is already served by app {other}",
                record.route
            )));
        }
        let find = |v: &str| {
            record
                .versions
                .iter()
                .find(|r| r.version == v)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "record names version {v}, which it does not hold"
                    ))
                })
        };
        let current = find(&record.current)?;
        let (current, source) = self.deployment_for(inner, &record.name, current).await?;
        let mut sources = vec![source];
        let canary = match &record.canary {
            Some(c) => {
                let (deployment, source) = self
                    .deployment_for(inner, &record.name, find(&c.version)?)
                    .await?;
                sources.push(source);
                Some(Canary {
                    deployment,
                    weight: c.weight,
                    sticky: c.sticky,
                })
            }
            None => None,
        };
        tracing::info!(app = %record.name, version = %record.current, source = ?sources[0], "restored app");
        inner.live.insert(
            record.name.clone(),
            Arc::new(LiveApp {
                name: record.name.as_str().into(),
                route: record.route.clone(),
                current,
                canary,
            }),
        );
        Ok(sources)
    }

    pub async fn list(&self) -> Vec<AppView> {
        let inner = self.inner.lock().await;
        inner
            .live
            .keys()
            .filter_map(|name| self.view(&inner, name))
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<AppView, ApiError> {
        let inner = self.inner.lock().await;
        self.view(&inner, name)
            .ok_or_else(|| ApiError::not_found(format!("no app named {name}")))
    }

    fn deployed<'a>(inner: &'a mut Inner, name: &str) -> Result<&'a mut AppRecord, ApiError> {
        if inner.statics.contains_key(name) {
            return Err(ApiError::conflict(format!(
                "app {name} is declared on the command line or in the manifest; change it there"
            )));
        }
        inner
            .records
            .get_mut(name)
            .ok_or_else(|| ApiError::not_found(format!("no app named {name}")))
    }

    /// Deploy `wasm` as the new current version of app `name`.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        request: DeployRequest,
    ) -> Result<AppView, ApiError> {
        let result = self.try_deploy(name, wasm, request).await;
        metrics().deploy(if result.is_ok() { "ok" } else { "rejected" });
        result
    }

    async fn try_deploy(
        &self,
        name: &str,
        wasm: Vec<u8>,
        request: DeployRequest,
    ) -> Result<AppView, ApiError> {
        validate_name(name)?;
        let settings = request.settings;
        settings
            .validate(&self.config.defaults)
            .map_err(ApiError::bad_request)?;
        // Secrets must be readable now, before anything changes.
        settings.resolve_config().map_err(ApiError::bad_request)?;
        let host = request.host.as_deref();
        let requested_route = match &request.route {
            Some(prefix) => Some(Route::new(prefix, host).map_err(ApiError::bad_request)?),
            None => None,
        };

        let digest = sha256_hex(&wasm);
        let size = wasm.len() as u64;
        let wasm: Arc<[u8]> = wasm.into();
        let limit = self.config.compile_timeout;
        // Code already in memory (another app or version with the same
        // digest) is shared, not loaded again.
        let loaded = self.inner.lock().await.compiled.get(&digest).cloned();
        let obtain = async {
            match loaded {
                Some(pre) => {
                    metrics().code_load("memory");
                    Ok((pre, CodeSource::Memory))
                }
                None => self.obtain(digest.clone(), Some(wasm.clone())).await,
            }
        };
        let (pre, _) = match tokio::time::timeout(limit, obtain).await {
            Err(_) => {
                return Err(ApiError::unprocessable(format!(
                    "compiling the component took longer than the limit of {} ms",
                    limit.as_millis()
                )));
            }
            Ok(Err(err)) => return Err(ApiError::unprocessable(format!("{err:#}"))),
            Ok(Ok(code)) => code,
        };

        let mut inner = self.inner.lock().await;
        if inner.statics.contains_key(name) {
            return Err(ApiError::conflict(format!(
                "app {name} is declared on the command line or in the manifest; change it there"
            )));
        }
        let existing = inner.records.get(name).cloned();
        let route = match (requested_route, &existing) {
            (Some(route), _) => route,
            (None, Some(record)) if host.is_some() => {
                Route::new(&record.route.prefix, host).map_err(ApiError::bad_request)?
            }
            (None, Some(record)) => record.route.clone(),
            (None, None) => {
                return Err(ApiError::bad_request(format!(
                    "app {name} is new: its first deploy needs a route (e.g. /{name})"
                )));
            }
        };
        if let Some(other) = Self::route_taken(&inner, &route, name) {
            return Err(ApiError::conflict(format!(
                "route {route} is already served by app {other}"
            )));
        }

        let version = VersionRecord {
            version: digest[..12].to_string(),
            digest: digest.clone(),
            size,
            deployed_at: now_secs(),
            settings,
        };
        let deployment = self
            .deployment(name, &version, pre.clone())
            .map_err(ApiError::bad_request)?;

        let mut versions = existing.map(|r| r.versions).unwrap_or_default();
        versions.retain(|v| v.digest != digest);
        versions.insert(0, version.clone());
        versions.truncate(self.config.keep_versions.max(1));
        let record = AppRecord {
            name: name.to_string(),
            route: route.clone(),
            current: version.version.clone(),
            canary: None,
            versions,
        };

        let state = &self.compiler.state;
        state
            .save_component(&digest, &wasm)
            .and_then(|()| state.save_record(&record))
            .map_err(ApiError::internal)?;

        inner.compiled.insert(digest, pre);
        inner.records.insert(name.to_string(), record);
        inner.live.insert(
            name.to_string(),
            Arc::new(LiveApp {
                name: name.into(),
                route,
                current: deployment,
                canary: None,
            }),
        );
        self.publish(&mut inner);
        self.collect_garbage(&inner);
        tracing::info!(app = name, version = %version.version, "deployed");
        self.view(&inner, name)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("app vanished after deploy")))
    }

    /// Resolve a version id (or a unique prefix of one) within `record`.
    fn find_version<'a>(
        record: &'a AppRecord,
        wanted: &str,
    ) -> Result<&'a VersionRecord, ApiError> {
        let matches: Vec<&VersionRecord> = record
            .versions
            .iter()
            .filter(|v| !wanted.is_empty() && v.version.starts_with(wanted))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(ApiError::not_found(format!(
                "app {} has no version {wanted}; it has: {}",
                record.name,
                record
                    .versions
                    .iter()
                    .map(|v| v.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            _ => Err(ApiError::bad_request(format!(
                "version {wanted} is ambiguous; give more digits"
            ))),
        }
    }

    /// Apply `record` (already validated) to disk, then to what is served.
    async fn commit(
        &self,
        inner: &mut Inner,
        record: AppRecord,
        current: Arc<Deployment>,
        canary: Option<Canary>,
    ) -> Result<AppView, ApiError> {
        self.compiler
            .state
            .save_record(&record)
            .map_err(ApiError::internal)?;
        let name = record.name.clone();
        inner.live.insert(
            name.clone(),
            Arc::new(LiveApp {
                name: name.as_str().into(),
                route: record.route.clone(),
                current,
                canary,
            }),
        );
        inner.records.insert(name.clone(), record);
        self.publish(inner);
        self.view(inner, &name)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("app vanished")))
    }

    /// Make the previous version (or `to`) current again. Ends any canary.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> Result<AppView, ApiError> {
        let mut inner = self.inner.lock().await;
        let mut record = Self::deployed(&mut inner, name)?.clone();
        let target = match to {
            Some(wanted) => Self::find_version(&record, wanted)?.clone(),
            None => {
                let at = record
                    .versions
                    .iter()
                    .position(|v| v.version == record.current);
                match at.and_then(|i| record.versions.get(i + 1)) {
                    Some(previous) => previous.clone(),
                    None => {
                        return Err(ApiError::conflict(format!(
                            "app {name} has no version older than {} to roll back to",
                            record.current
                        )));
                    }
                }
            }
        };
        if target.version == record.current && record.canary.is_none() {
            return Err(ApiError::conflict(format!(
                "version {} is already current",
                target.version
            )));
        }
        let (current, _) = self.deployment_for(&mut inner, name, &target).await?;
        record.current = target.version.clone();
        record.canary = None;
        tracing::info!(app = name, version = %target.version, "rolled back");
        self.commit(&mut inner, record, current, None).await
    }

    /// Send `weight`% of requests to `version`.
    pub async fn set_canary(
        &self,
        name: &str,
        version: &str,
        weight: u8,
        sticky: bool,
    ) -> Result<AppView, ApiError> {
        if weight > 100 {
            return Err(ApiError::bad_request(format!(
                "weight must be 0 to 100, got {weight}"
            )));
        }
        let mut inner = self.inner.lock().await;
        let mut record = Self::deployed(&mut inner, name)?.clone();
        let target = Self::find_version(&record, version)?.clone();
        if target.version == record.current {
            return Err(ApiError::conflict(format!(
                "version {} is already current; a canary needs another version",
                target.version
            )));
        }
        let current_version = Self::find_version(&record, &record.current)?.clone();
        let (current, _) = self
            .deployment_for(&mut inner, name, &current_version)
            .await?;
        let (deployment, _) = self.deployment_for(&mut inner, name, &target).await?;
        record.canary = Some(CanaryRecord {
            version: target.version.clone(),
            weight,
            sticky,
        });
        tracing::info!(app = name, version = %target.version, weight, sticky, "canary set");
        let canary = Canary {
            deployment,
            weight,
            sticky,
        };
        self.commit(&mut inner, record, current, Some(canary)).await
    }

    /// Make the canary version current.
    pub async fn promote(&self, name: &str) -> Result<AppView, ApiError> {
        let mut inner = self.inner.lock().await;
        let mut record = Self::deployed(&mut inner, name)?.clone();
        let Some(canary) = record.canary.take() else {
            return Err(ApiError::conflict(format!(
                "app {name} has no canary to promote"
            )));
        };
        let target = Self::find_version(&record, &canary.version)?.clone();
        let (current, _) = self.deployment_for(&mut inner, name, &target).await?;
        record.current = target.version.clone();
        tracing::info!(app = name, version = %target.version, "canary promoted");
        self.commit(&mut inner, record, current, None).await
    }

    /// Stop the canary; all traffic goes to the current version.
    pub async fn abort_canary(&self, name: &str) -> Result<AppView, ApiError> {
        let mut inner = self.inner.lock().await;
        let mut record = Self::deployed(&mut inner, name)?.clone();
        if record.canary.take().is_none() {
            return Err(ApiError::conflict(format!(
                "app {name} has no canary to abort"
            )));
        }
        let current_version = Self::find_version(&record, &record.current)?.clone();
        let (current, _) = self
            .deployment_for(&mut inner, name, &current_version)
            .await?;
        tracing::info!(app = name, "canary aborted");
        self.commit(&mut inner, record, current, None).await
    }

    /// Stop serving app `name` and forget it.
    pub async fn remove(&self, name: &str) -> Result<(), ApiError> {
        let mut inner = self.inner.lock().await;
        Self::deployed(&mut inner, name)?;
        self.compiler
            .state
            .remove_record(name)
            .map_err(ApiError::internal)?;
        inner.records.remove(name);
        inner.live.remove(name);
        self.publish(&mut inner);
        self.collect_garbage(&inner);
        tracing::info!(app = name, "removed");
        Ok(())
    }
}

/// The digest behind `version` of app `name`.
fn digest_of(inner: &Inner, name: &str, version: &str) -> String {
    if let Some(s) = inner.statics.get(name) {
        return s.version.digest.clone();
    }
    inner
        .records
        .get(name)
        .and_then(|r| r.versions.iter().find(|v| v.version == version))
        .map(|v| v.digest.clone())
        .unwrap_or_default()
}
