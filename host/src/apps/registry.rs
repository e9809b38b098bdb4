//! The apps this host serves, their versions, and every change to them.
//!
//! Two kinds of app: *static* ones declared on the command line or in the
//! manifest (read-only at run time), and *deployed* ones managed through the
//! admin API and persisted in the state directory. Every change of a
//! deployed app's versions (deploy, rollback, canary, promote, abort) takes
//! the same path ([`Registry::commit`]); removing an app, and loading
//! static and stored apps at start, have paths of their own:
//!
//! 1. under the lock, plan the app's new record from its current one (pure
//!    functions on [`AppRecord`], validated);
//! 2. without the lock, make what the new record serves: load or compile
//!    the code (off the serving threads, within `--compile-timeout-ms`),
//!    read secrets, store the upload;
//! 3. under the lock again, check the record did not change meanwhile (else
//!    409), write it to disk crash-safely and publish the routing table in
//!    one atomic swap.
//!
//! A rejected change leaves what is served and every record exactly as
//! they were (an upload stored before a 409 is collected later). Unused components and compiled code are removed by a
//! background collector, never on the request path, and never while any
//! record on disk (served, failed or unreadable) may still name them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Mutex, Notify};

use crate::apps::compiler::{CodeSource, Compiler};
use crate::apps::error::AppError;
use crate::apps::plan;
use crate::apps::records::{AppRecord, VersionRecord, validate_name, version_settings_key};
use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::{AppSettings, Ceilings};
use crate::apps::state_dir::{StateDir, sha256_hex};
use crate::apps::views::{AppView, DeployRequest, VersionView};
use crate::metrics::metrics;
use crate::routing::{Canary, LiveApp, Route, Routes, RoutingTable};
use crate::runtime::component::{self, Pre, World};
use crate::runtime::engine::Engines;
use crate::runtime::instance::AppShare;
use crate::runtime::limits::{Limits, MemoryBudget};
use crate::runtime::outbound::OutboundPolicy;
use crate::runtime::served::{Identity, ServedVersion};

/// The name of the implicit default guest; no deployed app may take it.
pub const DEFAULT_APP: &str = "default";
/// Longest the host waits for an app's secrets to be read.
const SECRET_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Compiles at once (each uses every core). A compile past its time bound
/// is answered 422 but cannot be stopped: it keeps its slot until it ends,
/// so abandoned compiles cannot pile up.
const MAX_CONCURRENT_COMPILES: usize = 2;

/// Settings of the registry that come from the command line.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Each app's limits unless its settings override them.
    pub defaults: Limits,
    pub ceilings: Ceilings,
    pub secrets: SecretPolicy,
    pub budget: Arc<MemoryBudget>,
    pub keep_versions: usize,
    pub compile_timeout: Duration,
    /// `http://ADDR` of the public listener, for the URLs shown to users.
    pub public_base: String,
}

pub(crate) struct StaticApp {
    pub(crate) route: Route,
    pub(crate) version: VersionRecord,
}

/// A deployed app on disk that is not being served.
pub(crate) struct FailedApp {
    pub(crate) record: AppRecord,
    pub(crate) reason: String,
}

/// What serves one app: its current version and its canary, if any.
struct Served {
    current: Arc<ServedVersion>,
    canary: Option<Canary>,
    /// Code to keep in memory, by digest.
    code: Vec<(String, Pre)>,
    sources: Vec<CodeSource>,
    share: Arc<AppShare>,
}

#[derive(Default)]
pub(crate) struct Inner {
    /// Deployed apps being served, as persisted.
    pub(crate) records: BTreeMap<String, AppRecord>,
    pub(crate) statics: BTreeMap<String, StaticApp>,
    /// Deployed apps whose record is on disk but which failed to restore.
    pub(crate) failed: BTreeMap<String, FailedApp>,
    /// Record files that could not be parsed: what they name is unknown,
    /// so the collector deletes no component while there are any.
    pub(crate) unreadable: usize,
    /// Every app as served now.
    pub(crate) live: BTreeMap<String, Arc<LiveApp>>,
    /// Pre-instantiated code by digest, for the versions being served.
    pub(crate) compiled: HashMap<String, Pre>,
    /// What each app's served versions share.
    pub(crate) shares: HashMap<String, Arc<AppShare>>,
    /// Every record on disk has been restored (or marked failed): until
    /// then the collector does not run, as it cannot know what they name.
    pub(crate) restored: bool,
}

pub struct Registry {
    pub(crate) compiler: Compiler,
    config: RegistryConfig,
    routes: Arc<Routes>,
    pub(crate) inner: Mutex<Inner>,
    /// Components being stored by deploys in progress, by digest (count):
    /// the collector keeps them.
    pub(crate) storing: std::sync::Mutex<HashMap<String, usize>>,
    /// Wakes the garbage collector ([`crate::apps::gc`]).
    pub(crate) collect: Arc<Notify>,
    /// Slots for compiles, held until a compile really ends.
    compiles: Arc<tokio::sync::Semaphore>,
    /// Failed apps and why, for `/readyz` without taking the lock.
    failed_now: std::sync::Mutex<Arc<Vec<(String, String)>>>,
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

/// Keeps a digest in the registry's `storing` set while a deploy stores it.
struct Storing<'a> {
    set: &'a std::sync::Mutex<HashMap<String, usize>>,
    digest: String,
}

impl<'a> Storing<'a> {
    fn new(set: &'a std::sync::Mutex<HashMap<String, usize>>, digest: &str) -> Storing<'a> {
        if let Ok(mut set) = set.lock() {
            *set.entry(digest.to_string()).or_default() += 1;
        }
        Storing {
            set,
            digest: digest.to_string(),
        }
    }
}

impl Drop for Storing<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock()
            && let Some(count) = set.get_mut(&self.digest)
        {
            *count -= 1;
            if *count == 0 {
                set.remove(&self.digest);
            }
        }
    }
}

/// Run blocking `work` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| anyhow::anyhow!("a blocking task failed: {e}"))?
}

impl Registry {
    pub fn new(
        engines: Arc<Engines>,
        state: StateDir,
        routes: Arc<Routes>,
        config: RegistryConfig,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            compiler: Compiler {
                engines,
                state: Arc::new(state),
            },
            config,
            routes,
            inner: Mutex::new(Inner::default()),
            storing: std::sync::Mutex::new(HashMap::new()),
            collect: Arc::new(Notify::new()),
            compiles: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_COMPILES)),
            failed_now: std::sync::Mutex::new(Arc::new(Vec::new())),
        })
    }

    /// Obtain code for `digest` on a blocking thread, within the compile
    /// time bound unless `bounded` is false (static apps at startup: the
    /// operator's own files, and the host cannot start without them).
    async fn obtain(
        &self,
        digest: &str,
        wasm: Option<Bytes>,
        (world, image): (World, (u64, u64)),
        bounded: bool,
    ) -> Result<(Pre, CodeSource), AppError> {
        if let Some(pre) = self.inner.lock().await.compiled.get(digest).cloned() {
            metrics().code_load("memory");
            return Ok((pre, CodeSource::Memory));
        }
        let compiler = self.compiler.clone();
        let owned = digest.to_string();
        let limit = if bounded {
            self.config.compile_timeout
        } else {
            Duration::MAX
        };
        let compiles = self.compiles.clone();
        let work = async move {
            let slot = compiles
                .acquire_owned()
                .await
                .map_err(|_| anyhow::anyhow!("the compiler is shut down"))?;
            blocking(move || {
                let _slot = slot;
                compiler.obtain(&owned, wasm.as_deref(), world, image)
            })
            .await
        };
        match tokio::time::timeout(limit, work).await {
            Err(_) => Err(AppError::Unservable(format!(
                "compiling the component took longer than the limit of {} ms",
                limit.as_millis()
            ))),
            Ok(Err(err)) => Err(AppError::Unservable(format!("{err:#}"))),
            Ok(Ok(code)) => Ok(code),
        }
    }

    /// Read `settings`' secrets off the serving threads, within a bound.
    async fn resolve_config(
        &self,
        settings: &AppSettings,
    ) -> Result<Vec<(String, String)>, AppError> {
        let settings = settings.clone();
        let policy = self.config.secrets.clone();
        let work = blocking(move || settings.resolve_config(&policy).map_err(anyhow::Error::msg));
        match tokio::time::timeout(SECRET_READ_TIMEOUT, work).await {
            Err(_) => Err(AppError::Invalid(format!(
                "reading the app's secrets took over {} s",
                SECRET_READ_TIMEOUT.as_secs()
            ))),
            Ok(result) => result.map_err(|e| AppError::Invalid(e.to_string())),
        }
    }

    /// A servable version: its code (from `wasm`, memory, the cache or the
    /// stored component) and everything its requests need.
    async fn serve_version(
        &self,
        name: &str,
        version: &VersionRecord,
        wasm: Option<Bytes>,
        bounded: bool,
        share: &Arc<AppShare>,
    ) -> Result<(Arc<ServedVersion>, Pre, CodeSource), AppError> {
        let settings = &version.settings;
        // Again at every use, not only at deploy: the host's ceilings and
        // secret rules may have changed since (a restart with other flags,
        // a smaller pod), and a setting that cannot be applied is refused,
        // never silently capped.
        settings
            .validate(&self.config.ceilings, &self.config.secrets)
            .map_err(|e| AppError::Invalid(format!("version {}: {e}", version.version)))?;
        let (pre, source) = self
            .obtain(
                &version.digest,
                wasm,
                (version.world, (version.memory_image_bytes, version.size)),
                bounded,
            )
            .await?;
        let config = self
            .resolve_config(settings)
            .await
            .map_err(|e| AppError::Invalid(format!("version {}: {e}", version.version)))?;
        let outbound =
            OutboundPolicy::parse(&settings.allow_outbound).map_err(AppError::Invalid)?;
        let served = Arc::new(ServedVersion::new(
            Identity {
                app: name.into(),
                version: version.version.as_str().into(),
                digest: version.digest.as_str().into(),
                settings_key: version_settings_key(version),
            },
            pre.clone(),
            settings.limits(&self.config.defaults),
            settings
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            config,
            outbound,
            share.clone(),
        ));
        Ok((served, pre, source))
    }

    /// The share of app `name` for versions with `limits`: the one its
    /// served versions use, unless the caps changed.
    async fn share_for(&self, name: &str, limits: &Limits) -> Arc<AppShare> {
        let inner = self.inner.lock().await;
        match inner.shares.get(name) {
            Some(share) if share.caps == (limits.max_concurrent, limits.max_outbound_app) => {
                share.clone()
            }
            _ => AppShare::new(limits, &self.config.budget),
        }
    }

    /// Everything `record` serves. Versions already served by `live` are
    /// reused as they are (their warm instances and limiters too); the rest
    /// are loaded or compiled now. Runs without the lock.
    async fn serve_record(
        &self,
        record: &AppRecord,
        live: Option<&LiveApp>,
        upload: Option<(&str, Bytes)>,
    ) -> Result<Served, AppError> {
        let mut code = Vec::new();
        let mut sources = Vec::new();
        // Every version the record serves shares the current one's caps.
        let current_limits = record
            .version(&record.current)?
            .settings
            .limits(&self.config.defaults);
        let share = self.share_for(&record.name, &current_limits).await;
        let mut make = async |id: &str| -> Result<Arc<ServedVersion>, AppError> {
            let served_now = live.and_then(|app| {
                std::iter::once(&app.current)
                    .chain(app.canary.as_ref().map(|c| &c.version))
                    .find(|d| &*d.version == id)
            });
            let version = record.version(id)?;
            if let Some(served) = served_now
                && served.settings_key == version_settings_key(version)
                && Arc::ptr_eq(served.share(), &share)
            {
                return Ok(served.clone());
            }
            let wasm = upload
                .as_ref()
                .filter(|(digest, _)| *digest == version.digest)
                .map(|(_, wasm)| wasm.clone());
            let (served, pre, source) = self
                .serve_version(&record.name, version, wasm, true, &share)
                .await?;
            code.push((version.digest.clone(), pre));
            sources.push(source);
            Ok(served)
        };
        let current = make(&record.current).await?;
        let canary = match &record.canary {
            Some(c) => Some(Canary {
                version: make(&c.version).await?,
                weight: c.weight,
                sticky: c.sticky,
            }),
            None => None,
        };
        Ok(Served {
            current,
            canary,
            code,
            sources,
            share,
        })
    }

    /// Publish the live apps to the front, and drop code no longer served.
    fn publish(&self, inner: &mut Inner) {
        self.routes
            .publish(RoutingTable::new(inner.live.values().cloned()));
        let used: HashSet<&str> = inner
            .live
            .values()
            .flat_map(|app| {
                std::iter::once(&app.current)
                    .chain(app.canary.as_ref().map(|c| &c.version))
                    .map(|d| d.digest.as_ref())
            })
            .collect();
        let keep: HashSet<String> = used.into_iter().map(str::to_string).collect();
        inner.compiled.retain(|digest, _| keep.contains(digest));
        let live = &inner.live;
        inner.shares.retain(|name, _| live.contains_key(name));
        metrics().apps_failed.set(inner.failed.len() as i64);
        let failed = inner
            .failed
            .values()
            .map(|f| (f.record.name.clone(), f.reason.clone()))
            .collect();
        if let Ok(mut now) = self.failed_now.lock() {
            *now = Arc::new(failed);
        }
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
                versions: vec![VersionView::new(s.version.clone(), true)],
                failed: None,
            });
        }
        let (r, failed) = match (inner.records.get(name), inner.failed.get(name)) {
            (Some(r), _) => (r, None),
            (None, Some(f)) => (&f.record, Some(f.reason.clone())),
            (None, None) => return None,
        };
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
                .map(|v| VersionView::new(v.clone(), v.version == r.current))
                .collect(),
            failed,
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
        validate_name(name)?;
        settings
            .validate(&self.config.ceilings, &self.config.secrets)
            .map_err(|e| anyhow::anyhow!("app {name}: {e}"))?;
        let owned = path.to_path_buf();
        let bytes = Bytes::from(
            blocking(move || {
                std::fs::read(&owned).map_err(|e| {
                    anyhow::anyhow!("failed to read component {}: {e}", owned.display())
                })
            })
            .await?,
        );
        let digest = sha256_hex(&bytes);
        let version = VersionRecord {
            version: digest[..12].to_string(),
            digest: digest.clone(),
            size: bytes.len() as u64,
            deployed_at: now_secs(),
            settings,
            world: World::of(&bytes),
            memory_image_bytes: component::memory_image_bytes(&bytes),
        };
        version
            .check_world()
            .map_err(|e| anyhow::anyhow!("cannot serve {} as app {name}: {e}", path.display()))?;
        let share = AppShare::new(
            &version.settings.limits(&self.config.defaults),
            &self.config.budget,
        );
        let (served, pre, _) = self
            .serve_version(name, &version, Some(bytes), false, &share)
            .await
            .map_err(|e| anyhow::anyhow!("cannot serve {} as app {name}: {e}", path.display()))?;
        let mut inner = self.inner.lock().await;
        if inner.live.contains_key(name) {
            anyhow::bail!("app {name} is declared twice");
        }
        if let Some(other) = Self::route_taken(&inner, &route, name) {
            anyhow::bail!("app {name}: route {route} is already served by app {other}");
        }
        inner.compiled.insert(digest, pre);
        inner.shares.insert(name.to_string(), share);
        inner.live.insert(
            name.to_string(),
            Arc::new(LiveApp {
                name: name.into(),
                route: route.clone(),
                current: served,
                canary: None,
            }),
        );
        inner
            .statics
            .insert(name.to_string(), StaticApp { route, version });
        self.publish(&mut inner);
        Ok(())
    }

    /// Is an app of this name declared or deployed (served or not)?
    pub async fn has_app(&self, name: &str) -> bool {
        let inner = self.inner.lock().await;
        inner.live.contains_key(name) || inner.failed.contains_key(name)
    }

    /// Bring back every deployed app from the state directory. A record that
    /// cannot be read or served is reported, kept on disk, listed as failed
    /// and skipped.
    pub async fn restore(&self) -> anyhow::Result<Restored> {
        let mut summary = Restored::default();
        let state = self.compiler.state.clone();
        let records = blocking(move || state.load_records()).await?;
        for record in records {
            let record = match record {
                Ok(record) => record,
                Err(err) => {
                    tracing::error!(error = %err, "skipping an unreadable app record; no stored component is deleted while it exists");
                    self.inner.lock().await.unreadable += 1;
                    summary.failed += 1;
                    continue;
                }
            };
            match self.restore_one(&record).await {
                Ok(sources) => {
                    summary.apps += 1;
                    for source in sources {
                        match source {
                            CodeSource::Cache | CodeSource::Memory => summary.from_cache += 1,
                            CodeSource::Compiled => summary.compiled += 1,
                        }
                    }
                }
                Err(err) => {
                    let reason = err.to_string();
                    tracing::error!(app = %record.name, error = %reason, "failed to restore app; it is not served until it is deployed again or the host restarts with the problem fixed");
                    summary.failed += 1;
                    let name = record.name.clone();
                    self.inner
                        .lock()
                        .await
                        .failed
                        .insert(name, FailedApp { record, reason });
                }
            }
        }
        let mut inner = self.inner.lock().await;
        inner.restored = true;
        self.publish(&mut inner);
        drop(inner);
        self.collect.notify_one();
        Ok(summary)
    }

    async fn restore_one(&self, record: &AppRecord) -> Result<Vec<CodeSource>, AppError> {
        validate_name(&record.name)?;
        let served = self.serve_record(record, None, None).await?;
        let mut inner = self.inner.lock().await;
        if inner.statics.contains_key(&record.name) {
            return Err(AppError::Conflict(format!(
                "an app named {} is also declared on the command line or in the manifest",
                record.name
            )));
        }
        if inner.live.contains_key(&record.name) {
            return Err(AppError::Conflict(format!(
                "app {} was deployed again while the host was starting",
                record.name
            )));
        }
        if let Some(other) = Self::route_taken(&inner, &record.route, &record.name) {
            return Err(AppError::Conflict(format!(
                "route {} is already served by app {other}",
                record.route
            )));
        }
        tracing::info!(app = %record.name, version = %record.current, source = ?served.sources.first(), "restored app");
        let sources = served.sources.clone();
        self.install(&mut inner, record.clone(), served);
        Ok(sources)
    }

    /// Put `record` and what serves it into `inner` (not yet published).
    fn install(&self, inner: &mut Inner, record: AppRecord, served: Served) {
        let name = record.name.clone();
        inner.compiled.extend(served.code);
        inner.shares.insert(name.clone(), served.share);
        inner.live.insert(
            name.clone(),
            Arc::new(LiveApp {
                name: name.as_str().into(),
                route: record.route.clone(),
                current: served.current,
                canary: served.canary,
            }),
        );
        inner.failed.remove(&name);
        inner.records.insert(name, record);
    }

    pub async fn list(&self) -> Vec<AppView> {
        let inner = self.inner.lock().await;
        let names: std::collections::BTreeSet<&String> =
            inner.live.keys().chain(inner.failed.keys()).collect();
        names
            .into_iter()
            .filter_map(|name| self.view(&inner, name))
            .collect()
    }

    pub async fn get(&self, name: &str) -> Result<AppView, AppError> {
        let inner = self.inner.lock().await;
        self.view(&inner, name)
            .ok_or_else(|| AppError::NotFound(format!("no app named {name}")))
    }

    /// Deployed apps that failed to restore, with the reason: for
    /// `/readyz` and the `host_apps_failed` gauge.
    pub fn failed(&self) -> Arc<Vec<(String, String)>> {
        self.failed_now
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
    }

    /// The record of deployed app `name`, as a change starts from it.
    fn deployed<'a>(inner: &'a Inner, name: &str) -> Result<&'a AppRecord, AppError> {
        if inner.statics.contains_key(name) {
            return Err(AppError::Conflict(format!(
                "app {name} is declared on the command line or in the manifest; change it there"
            )));
        }
        if let Some(failed) = inner.failed.get(name) {
            return Err(AppError::Conflict(format!(
                "app {name} is not being served ({}); deploy it again, or fix that and restart the host",
                failed.reason
            )));
        }
        inner
            .records
            .get(name)
            .ok_or_else(|| AppError::NotFound(format!("no app named {name}")))
    }

    /// The one commit path: check that app `name`'s record is still
    /// `before` (no other change slipped in while `after` was prepared),
    /// write `after` to disk, serve it, publish.
    async fn commit(
        &self,
        before: Option<&AppRecord>,
        after: AppRecord,
        served: Served,
    ) -> Result<AppView, AppError> {
        let mut inner = self.inner.lock().await;
        let name = after.name.clone();
        let now = inner
            .records
            .get(&name)
            .or_else(|| inner.failed.get(&name).map(|f| &f.record));
        if now != before {
            return Err(AppError::Conflict(format!(
                "app {name} changed while this change was being prepared; retry it"
            )));
        }
        if inner.statics.contains_key(&name) {
            return Err(AppError::Conflict(format!(
                "app {name} is declared on the command line or in the manifest; change it there"
            )));
        }
        if let Some(other) = Self::route_taken(&inner, &after.route, &name) {
            return Err(AppError::Conflict(format!(
                "route {} is already served by app {other}",
                after.route
            )));
        }
        let state = self.compiler.state.clone();
        let record = after.clone();
        blocking(move || state.save_record(&record))
            .await
            .map_err(AppError::internal)?;
        self.install(&mut inner, after, served);
        self.publish(&mut inner);
        self.view(&inner, &name)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("app {name} vanished")))
    }

    /// Deploy `wasm` as the new current version of app `name`.
    pub async fn deploy(
        &self,
        name: &str,
        wasm: Bytes,
        request: DeployRequest,
    ) -> Result<AppView, AppError> {
        let result = self.try_deploy(name, wasm, request).await;
        metrics().deploy(if result.is_ok() { "ok" } else { "rejected" });
        if result.is_ok() {
            self.collect.notify_one();
        }
        result
    }

    async fn try_deploy(
        &self,
        name: &str,
        wasm: Bytes,
        request: DeployRequest,
    ) -> Result<AppView, AppError> {
        validate_name(name)?;
        let settings = request.settings;
        settings
            .validate(&self.config.ceilings, &self.config.secrets)
            .map_err(AppError::Invalid)?;
        let host = request.host.as_deref();
        let requested_route = match &request.route {
            Some(prefix) => Some(Route::new(prefix, host).map_err(AppError::Invalid)?),
            None => None,
        };
        let digest = sha256_hex(&wasm);
        let (existing, _storing) = {
            let inner = self.inner.lock().await;
            if inner.statics.contains_key(name) {
                return Err(AppError::Conflict(format!(
                    "app {name} is declared on the command line or in the manifest; change it there"
                )));
            }
            let existing = inner
                .records
                .get(name)
                .or_else(|| inner.failed.get(name).map(|f| &f.record))
                .cloned();
            // From here until the record naming it is on disk (or the
            // deploy failed) the collector keeps the component. Registered
            // under the lock the collector deletes under, so it either sees
            // this digest or has finished deleting.
            (existing, Storing::new(&self.storing, &digest))
        };
        if name == DEFAULT_APP && existing.is_none() {
            return Err(AppError::Invalid(format!(
                "the app name `{DEFAULT_APP}` is reserved for the host's default guest; pick another name"
            )));
        }
        let route = match (requested_route, &existing) {
            (Some(route), _) => route,
            (None, Some(record)) if host.is_some() => {
                Route::new(&record.route.prefix, host).map_err(AppError::Invalid)?
            }
            (None, Some(record)) => record.route.clone(),
            (None, None) => {
                return Err(AppError::Invalid(format!(
                    "app {name} is new: its first deploy needs a route (e.g. /{name})"
                )));
            }
        };
        if let Some(other) = Self::route_taken(&*self.inner.lock().await, &route, name) {
            return Err(AppError::Conflict(format!(
                "route {route} is already served by app {other}"
            )));
        }

        let version = VersionRecord {
            version: digest[..12].to_string(),
            digest: digest.clone(),
            size: wasm.len() as u64,
            deployed_at: now_secs(),
            settings,
            world: World::of(&wasm),
            memory_image_bytes: component::memory_image_bytes(&wasm),
        };
        version.check_world().map_err(AppError::Invalid)?;
        let after = plan::deploy(
            existing.as_ref(),
            name,
            route,
            version.clone(),
            self.config.keep_versions,
        );
        let served = self
            .serve_record(&after, None, Some((&digest, wasm.clone())))
            .await?;
        let state = self.compiler.state.clone();
        blocking(move || state.save_component(&digest, &wasm))
            .await
            .map_err(AppError::internal)?;
        let view = self.commit(existing.as_ref(), after, served).await?;
        tracing::info!(app = name, version = %version.version, "deployed");
        Ok(view)
    }

    /// Apply `plan` to deployed app `name` through the commit path.
    async fn change(
        &self,
        name: &str,
        what: &str,
        plan: impl FnOnce(&AppRecord) -> Result<AppRecord, AppError>,
    ) -> Result<AppView, AppError> {
        let (before, live) = {
            let inner = self.inner.lock().await;
            let record = Self::deployed(&inner, name)?.clone();
            (record, inner.live.get(name).cloned())
        };
        let after = plan(&before)?;
        let served = self.serve_record(&after, live.as_deref(), None).await?;
        let view = self.commit(Some(&before), after, served).await?;
        tracing::info!(app = name, version = %view.current_version, canary = ?view.canary, "{what}");
        Ok(view)
    }

    /// Make the previous version (or `to`) current again. Ends any canary.
    pub async fn rollback(&self, name: &str, to: Option<&str>) -> Result<AppView, AppError> {
        self.change(name, "rolled back", |r| plan::rollback(r, to))
            .await
    }

    /// Send `weight`% of requests to `version`.
    pub async fn set_canary(
        &self,
        name: &str,
        version: &str,
        weight: u8,
        sticky: bool,
    ) -> Result<AppView, AppError> {
        self.change(name, "canary set", |r| {
            plan::canary(r, version, weight, sticky)
        })
        .await
    }

    /// Make the canary version current.
    pub async fn promote(&self, name: &str) -> Result<AppView, AppError> {
        self.change(name, "canary promoted", plan::promote).await
    }

    /// Stop the canary; all traffic goes to the current version.
    pub async fn abort_canary(&self, name: &str) -> Result<AppView, AppError> {
        self.change(name, "canary aborted", plan::abort).await
    }

    /// Stop serving app `name` and forget it (a failed one too).
    pub async fn remove(&self, name: &str) -> Result<(), AppError> {
        let mut inner = self.inner.lock().await;
        if !inner.failed.contains_key(name) {
            Self::deployed(&inner, name)?;
        }
        let state = self.compiler.state.clone();
        let owned = name.to_string();
        blocking(move || state.remove_record(&owned))
            .await
            .map_err(AppError::internal)?;
        inner.records.remove(name);
        inner.failed.remove(name);
        // A failed record may share its name with a static app: that one
        // stays served.
        if !inner.statics.contains_key(name) {
            inner.live.remove(name);
        }
        self.publish(&mut inner);
        drop(inner);
        self.collect.notify_one();
        tracing::info!(app = name, "removed");
        Ok(())
    }
}
