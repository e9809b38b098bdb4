//! The apps this host serves, their versions, and every change to them.
//!
//! Two kinds of app: *static* ones declared on the command line or in the
//! manifest (read-only at run time), and *deployed* ones managed through the
//! admin API and persisted in the state directory. Every change takes the
//! same three steps, whatever it is (deploy, rollback, canary, promote,
//! abort, remove, a static app at start, a stored app restored at start):
//!
//! 1. under the lock, take the app's record and what serves it now, and
//!    plan the change (pure functions on [`AppRecord`] in
//!    [`crate::apps::plan`], validated);
//! 2. without the lock, make what the new record serves
//!    ([`crate::apps::provision`]: load or compile the code off the serving
//!    threads within `--compile-timeout-ms`, read secrets) and store an
//!    upload;
//! 3. [`Registry::commit`] the [`Change`]: under the lock again, check the
//!    app's record is still the one the change started from, that no static
//!    app owns the name and no other app the route (a conflict otherwise:
//!    409 through the admin API), write or remove the record crash-safely,
//!    and publish the routing table in one atomic swap.
//!
//! The admin API runs each change on a task of its own
//! ([`crate::admin::endpoints`]), so a client that hangs up cannot stop one
//! between writing its record and serving it.
//!
//! A rejected change leaves what is served and every record exactly as
//! they were (an upload stored before a 409 is collected later). Unused
//! components and compiled code are removed by a background collector
//! ([`crate::apps::gc`]), never on the request path, and never while any
//! record on disk (served, failed or unreadable) may still name them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Mutex, Notify};

use crate::apps::compiler::{CodeSource, Compiler, blocking};
use crate::apps::error::AppError;
use crate::apps::plan;
use crate::apps::provision::{Provisioner, Served, Serving};
use crate::apps::records::{AppRecord, FailedApp, StaticApp, VersionRecord, validate_name};
use crate::apps::replica::{ClusterSetup, Clustered, Followed};
use crate::apps::secrets::SecretPolicy;
use crate::apps::settings::{AppSettings, Ceilings};
use crate::apps::state_dir::{StateDir, sha256_hex};
use crate::apps::views::{AppView, DeployRequest};
use crate::kv::Usage;
use crate::kv::service::KvService;
use crate::metrics::metrics;
use crate::routing::{LiveApp, Route, Routes, RoutingTable};
use crate::runtime::component::{self, Pre, World};
use crate::runtime::engine::Engines;
use crate::runtime::instance::AppShare;
use crate::runtime::limits::{Limits, MemoryBudget};

/// The name of the implicit default guest; no deployed app may take it.
pub const DEFAULT_APP: &str = "default";

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
    /// The host's key-value store, and the operations a request may make.
    pub kv: KvService,
    pub kv_max_ops: u32,
    /// Cluster mode: the store the replicas share, and this replica.
    pub cluster: Option<ClusterSetup>,
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
    /// Cluster mode: the revision at which each app was removed here, so
    /// that a change from before it, applied late, does not bring it back.
    pub(crate) removed: HashMap<String, u64>,
}

impl Inner {
    /// The record on disk for app `name`, served or failed.
    fn stored(&self, name: &str) -> Option<&AppRecord> {
        self.records
            .get(name)
            .or_else(|| self.failed.get(name).map(|f| &f.record))
    }

    /// The app other than `except` that serves `route`, if any.
    fn route_owner(&self, route: &Route, except: &str) -> Option<&str> {
        self.live
            .values()
            .find(|app| &app.route == route && &*app.name != except)
            .map(|app| &*app.name)
    }

    /// Can a deployed app `name` take `route` (if given)? Static apps are
    /// changed where they are declared, and one route serves one app.
    fn admits(&self, name: &str, route: Option<&Route>) -> Result<(), AppError> {
        if self.statics.contains_key(name) {
            return Err(AppError::Conflict(format!(
                "app {name} is declared on the command line or in the manifest; change it there"
            )));
        }
        if let Some(route) = route
            && let Some(other) = self.route_owner(route, name)
        {
            return Err(AppError::Conflict(format!(
                "route {route} is already served by app {other}"
            )));
        }
        Ok(())
    }

    /// In cluster mode: can app `name` take `route` here? Only this
    /// replica's static apps are checked: the cluster store holds every
    /// deployed app's route, and checks it when the change commits (what
    /// this replica serves may lag behind it).
    fn admits_in_cluster(&self, name: &str, route: &Route) -> Result<(), AppError> {
        self.admits(name, None)?;
        if let Some(other) = self.route_owner(route, name)
            && self.statics.contains_key(other)
        {
            return Err(AppError::Conflict(format!(
                "route {route} is served by app {other}, declared on this replica's command line or manifest"
            )));
        }
        Ok(())
    }

    /// The record of deployed app `name`, as a change starts from it.
    fn deployed(&self, name: &str) -> Result<&AppRecord, AppError> {
        self.admits(name, None)?;
        if let Some(failed) = self.failed.get(name) {
            return Err(AppError::Conflict(format!(
                "app {name} is not being served ({}); deploy it again, or fix that and restart the host",
                failed.reason
            )));
        }
        self.records
            .get(name)
            .ok_or_else(|| AppError::NotFound(format!("no app named {name}")))
    }

    /// Cluster mode: is a change to `name` at `revision` older than what
    /// this replica has (the revision it serves, or removed it at)? An app
    /// only listed as failed here has nothing newer.
    pub(crate) fn superseded(&self, name: &str, revision: u64, saves: bool) -> bool {
        let served = self.records.get(name).and_then(|r| r.revision).unwrap_or(0);
        let removed = self.removed.get(name).copied().unwrap_or(0);
        served >= revision || (saves && served == 0 && removed >= revision)
    }

    /// What serves app `name` now, with the code in memory that `record`
    /// names: where making `record`'s versions starts from.
    pub(crate) fn serving(&self, name: &str, record: &AppRecord) -> Serving {
        Serving {
            live: self.live.get(name).cloned(),
            share: self.shares.get(name).cloned(),
            compiled: record
                .digests()
                .filter_map(|d| Some((d.to_string(), self.compiled.get(d)?.clone())))
                .collect(),
        }
    }
}

/// One change to one app, ready to commit: what it started from and what
/// the app becomes.
pub(crate) enum Change {
    /// Serve `record`, written to disk first (deploy, rollback, canary,
    /// promote, abort). `before` is the record the change was planned on.
    Save {
        before: Option<AppRecord>,
        record: AppRecord,
        served: Served,
    },
    /// Stop serving a deployed app and remove its record (a failed one
    /// too).
    Remove { before: AppRecord },
    /// Serve a record read from disk at start.
    Restore { record: AppRecord, served: Served },
    /// Keep a record read from disk at start that cannot be served, listed
    /// as failed with the reason.
    Fail { record: AppRecord, reason: String },
    /// Apply a change the cluster store committed at `revision`: serve
    /// the record (`None`: remove the app), unless this replica already
    /// has a newer revision. Its record is cached in the state directory.
    Follow {
        revision: u64,
        next: Option<(AppRecord, Served)>,
    },
    /// Serve a static app (never stored).
    Static {
        route: Route,
        version: VersionRecord,
        served: Served,
    },
}

impl Change {
    fn saves(&self) -> bool {
        matches!(
            self,
            Change::Save { .. } | Change::Remove { .. } | Change::Follow { .. }
        )
    }
}

pub struct Registry {
    pub(crate) provision: Provisioner,
    keep_versions: usize,
    pub(crate) public_base: String,
    routes: Arc<Routes>,
    /// Cluster mode: the store and what this replica knows of it.
    pub(crate) cluster: Option<Arc<Clustered>>,
    pub(crate) inner: Mutex<Inner>,
    /// Components being stored by deploys in progress, by digest (count):
    /// the collector keeps them.
    pub(crate) storing: std::sync::Mutex<HashMap<String, usize>>,
    /// Wakes the garbage collector ([`crate::apps::gc`]).
    pub(crate) collect: Arc<Notify>,
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

/// The version record of component `wasm` with `settings`: its digest and
/// what the host learns from its bytes.
fn version_of(wasm: &[u8], settings: AppSettings) -> Result<VersionRecord, AppError> {
    let digest = sha256_hex(wasm);
    let version = VersionRecord {
        version: digest[..12].to_string(),
        digest,
        size: wasm.len() as u64,
        deployed_at: now_secs(),
        settings,
        world: World::of(wasm),
        memory_image_bytes: component::memory_image_bytes(wasm),
    };
    version.check_world()?;
    Ok(version)
}

/// Keeps a digest in the registry's `storing` set while a deploy stores it.
pub(crate) struct Storing<'a> {
    set: &'a std::sync::Mutex<HashMap<String, usize>>,
    digest: String,
}

impl<'a> Storing<'a> {
    pub(crate) fn new(
        set: &'a std::sync::Mutex<HashMap<String, usize>>,
        digest: &str,
    ) -> Storing<'a> {
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

impl Registry {
    pub fn new(
        engines: Arc<Engines>,
        state: StateDir,
        routes: Arc<Routes>,
        config: RegistryConfig,
    ) -> Arc<Registry> {
        let known = state.store_id();
        Arc::new(Registry {
            cluster: config
                .cluster
                .map(|setup| Arc::new(Clustered::new(setup, known))),
            provision: Provisioner {
                compiler: Compiler::new(engines, state, config.compile_timeout),
                defaults: config.defaults,
                ceilings: config.ceilings,
                secrets: config.secrets,
                budget: config.budget,
                kv: config.kv,
                kv_max_ops: config.kv_max_ops,
            },
            keep_versions: config.keep_versions,
            public_base: config.public_base,
            routes,
            inner: Mutex::new(Inner::default()),
            storing: std::sync::Mutex::new(HashMap::new()),
            collect: Arc::new(Notify::new()),
            failed_now: std::sync::Mutex::new(Arc::new(Vec::new())),
        })
    }

    /// The state directory the registry stores records and components in.
    pub(crate) fn state(&self) -> &Arc<StateDir> {
        &self.provision.compiler.state
    }

    /// The one commit path: check that `change` still applies to app
    /// `name` (its record is what the change started from, no static app
    /// owns the name, no other app the route), write or remove its record,
    /// serve it and publish. The app as it is now, unless it is gone.
    ///
    /// In cluster mode a deploy, rollback, canary or removal is committed
    /// to the cluster store first ([`Registry::commit_to_cluster`]), and
    /// served here as the revision it became.
    pub(crate) async fn commit(
        &self,
        name: &str,
        change: Change,
    ) -> Result<Option<AppView>, AppError> {
        if self.cluster.is_none() || !matches!(change, Change::Save { .. } | Change::Remove { .. })
        {
            return self.commit_here(name, change).await;
        }
        if let Change::Save { record, .. } = &change {
            self.inner
                .lock()
                .await
                .admits_in_cluster(name, &record.route)?;
        }
        let (follow, committed) = self.commit_to_cluster(name, change).await?;
        match self.commit_here(name, follow).await {
            Ok(view) => {
                self.followed(name);
                Ok(view)
            }
            Err(err) => Ok(self.applied_later(name, committed, err)),
        }
    }

    /// Cluster mode: swap in every change of one snapshot of the store at
    /// once (each app's record written to the cache, one routing table
    /// published), so that routes moved between apps never clash on the
    /// way. A change older than what is served here is skipped; one that
    /// cannot be applied (a static app here holds its name or route, the
    /// disk failed) leaves that app as it was. Each change's result.
    pub(crate) async fn commit_follow(
        &self,
        batch: Vec<(String, u64, Followed)>,
    ) -> Vec<(String, u64, Result<(), AppError>)> {
        let mut inner = self.inner.lock().await;
        let mut results = Vec::new();
        let mut todo = Vec::new();
        for (name, revision, change) in batch {
            let saves = matches!(change, Followed::Save(..));
            if inner.superseded(&name, revision, saves) {
                results.push((name, revision, Ok(())));
            } else if saves && inner.statics.contains_key(&name) {
                let err = AppError::Conflict(format!(
                    "app {name} is declared on this replica's command line or manifest"
                ));
                results.push((name, revision, Err(err)));
            } else {
                todo.push((name, revision, change));
            }
        }
        // Every changed app leaves the table first; each comes back with
        // its new record, or as it was if that fails.
        let mut before: HashMap<String, Arc<LiveApp>> = HashMap::new();
        for (name, _, _) in &todo {
            // A static app of the same name stays served (only a failed
            // listing of the cluster's app goes).
            if !inner.statics.contains_key(name)
                && let Some(app) = inner.live.remove(name)
            {
                before.insert(name.clone(), app);
            }
        }
        todo.sort_by_key(|(_, revision, change)| (matches!(change, Followed::Save(..)), *revision));
        let state = self.state().clone();
        for (name, revision, change) in todo {
            let result = match change {
                Followed::Remove => {
                    let (state, owned) = (state.clone(), name.clone());
                    match blocking(move || Ok(state.remove_record(&owned)?)).await {
                        Ok(()) => {
                            inner.records.remove(&name);
                            inner.failed.remove(&name);
                            inner.removed.insert(name.clone(), revision);
                            before.remove(&name);
                            Ok(())
                        }
                        Err(err) => Err(err),
                    }
                }
                Followed::Save(saved) => {
                    let (record, served) = *saved;
                    match inner.route_owner(&record.route, &name) {
                        Some(other) => Err(AppError::Conflict(format!(
                            "route {} is served by app {other} on this replica",
                            record.route
                        ))),
                        None => {
                            let (state, saved) = (state.clone(), record.clone());
                            match blocking(move || Ok(state.save_record(&saved)?)).await {
                                Ok(()) => {
                                    before.remove(&name);
                                    Self::install(&mut inner, record, served);
                                    Ok(())
                                }
                                Err(err) => Err(err),
                            }
                        }
                    }
                }
            };
            results.push((name, revision, result));
        }
        // What could not be applied serves as before, if its route is
        // still free.
        for (name, app) in before {
            match inner.route_owner(&app.route, &name) {
                None => {
                    inner.live.insert(name, app);
                }
                Some(other) => {
                    let reason = format!(
                        "not served here until its change applies: its route {} went to app {other}",
                        app.route
                    );
                    tracing::error!(app = %name, "{reason}");
                    if let Some(record) = inner.records.remove(&name) {
                        inner.failed.insert(name, FailedApp { record, reason });
                    }
                }
            }
        }
        self.publish(&mut inner);
        drop(inner);
        self.collect.notify_one();
        results
    }

    /// Publish the routing table and the failed apps as they are.
    pub(crate) async fn publish_now(&self) {
        let mut inner = self.inner.lock().await;
        self.publish(&mut inner);
    }

    /// [`Registry::commit`] on this host alone.
    pub(crate) async fn commit_here(
        &self,
        name: &str,
        change: Change,
    ) -> Result<Option<AppView>, AppError> {
        let mut inner = self.inner.lock().await;
        let changed = || {
            AppError::Conflict(format!(
                "app {name} changed while this change was being prepared; retry it"
            ))
        };
        match &change {
            Change::Save { before, record, .. } => {
                if inner.stored(name) != before.as_ref() {
                    return Err(changed());
                }
                inner.admits(name, Some(&record.route))?;
            }
            Change::Remove { before } => {
                if inner.stored(name) != Some(before) {
                    return Err(changed());
                }
            }
            Change::Restore { record, .. } => {
                if inner.statics.contains_key(name) {
                    return Err(AppError::Conflict(format!(
                        "an app named {name} is also declared on the command line or in the manifest"
                    )));
                }
                if inner.stored(name).is_some() {
                    return Err(AppError::Conflict(format!(
                        "app {name} was deployed again while the host was starting"
                    )));
                }
                inner.admits(name, Some(&record.route))?;
            }
            Change::Follow { revision, next } => {
                if inner.superseded(name, *revision, next.is_some()) {
                    // A newer change is served here already.
                    return Ok(self.view(&inner, name));
                }
                if let Some((record, _)) = next {
                    inner.admits(name, Some(&record.route))?;
                }
            }
            Change::Fail { .. } => {}
            Change::Static { route, .. } => {
                if inner.live.contains_key(name) {
                    return Err(AppError::Invalid(format!("app {name} is declared twice")));
                }
                if let Some(other) = inner.route_owner(route, name) {
                    return Err(AppError::Invalid(format!(
                        "app {name}: route {route} is already served by app {other}"
                    )));
                }
            }
        }
        let state = self.state().clone();
        match &change {
            Change::Save { record, .. } => {
                let record = record.clone();
                blocking(move || Ok(state.save_record(&record)?)).await?;
            }
            Change::Remove { .. } | Change::Follow { next: None, .. } => {
                let owned = name.to_string();
                blocking(move || Ok(state.remove_record(&owned)?)).await?;
            }
            Change::Follow {
                next: Some((record, _)),
                ..
            } => {
                let record = record.clone();
                blocking(move || Ok(state.save_record(&record)?)).await?;
            }
            _ => {}
        }
        let saves = change.saves();
        // The restore publishes once, when every stored app is in.
        let restoring = matches!(change, Change::Restore { .. } | Change::Fail { .. });
        match change {
            Change::Save { record, served, .. }
            | Change::Restore { record, served }
            | Change::Follow {
                next: Some((record, served)),
                ..
            } => Self::install(&mut inner, record, served),
            Change::Remove { .. } | Change::Follow { next: None, .. } => {
                if let Change::Follow { revision, .. } = &change {
                    inner.removed.insert(name.to_string(), *revision);
                }
                inner.records.remove(name);
                inner.failed.remove(name);
                // A failed record may share its name with a static app:
                // that one stays served.
                if !inner.statics.contains_key(name) {
                    inner.live.remove(name);
                }
            }
            Change::Fail { record, reason } => {
                inner
                    .failed
                    .insert(name.to_string(), FailedApp { record, reason });
            }
            Change::Static {
                route,
                version,
                served,
            } => {
                inner.compiled.extend(served.code);
                inner.shares.insert(name.to_string(), served.share);
                inner.live.insert(
                    name.to_string(),
                    Arc::new(LiveApp {
                        name: name.into(),
                        route: route.clone(),
                        current: served.current,
                        canary: None,
                    }),
                );
                inner
                    .statics
                    .insert(name.to_string(), StaticApp { route, version });
            }
        }
        if !restoring {
            self.publish(&mut inner);
        }
        let view = self.view(&inner, name);
        drop(inner);
        if saves {
            self.collect.notify_one();
        }
        Ok(view)
    }

    /// Put `record` and what serves it into `inner` (not yet published).
    fn install(inner: &mut Inner, record: AppRecord, served: Served) {
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

    fn view(&self, inner: &Inner, name: &str) -> Option<AppView> {
        if let Some(app) = inner.statics.get(name) {
            return Some(AppView::of_static(name, app, &self.public_base));
        }
        match (inner.records.get(name), inner.failed.get(name)) {
            (Some(record), _) => Some(AppView::of_deployed(record, None, &self.public_base)),
            (None, Some(failed)) => Some(AppView::of_deployed(
                &failed.record,
                Some(failed.reason.clone()),
                &self.public_base,
            )),
            (None, None) => None,
        }
    }

    /// The view of app `name` after a change that keeps it.
    fn kept(name: &str, view: Option<AppView>) -> Result<AppView, AppError> {
        view.ok_or_else(|| AppError::Internal(format!("app {name} vanished during a change")))
    }

    /// Declare a static app (command line or manifest). Errors here stop the
    /// host from starting.
    pub async fn add_static(
        &self,
        name: &str,
        path: &Path,
        route: Route,
        settings: AppSettings,
    ) -> Result<(), AppError> {
        validate_name(name)?;
        self.provision
            .validate(&settings)
            .map_err(|e| e.context(format_args!("app {name}")))?;
        let cannot = |e: AppError| {
            e.context(format_args!(
                "cannot serve {} as app {name}",
                path.display()
            ))
        };
        let owned = path.to_path_buf();
        let bytes = Bytes::from(
            blocking(move || {
                std::fs::read(&owned).map_err(|e| {
                    AppError::Invalid(format!("failed to read component {}: {e}", owned.display()))
                })
            })
            .await?,
        );
        let version = version_of(&bytes, settings).map_err(cannot)?;
        // The collector may run by now (the implicit default app is added
        // after the restore): it keeps this code until the app is served.
        let _storing = Storing::new(&self.storing, &version.digest);
        let limits = self.provision.limits(&version.settings);
        let share = self.provision.share(None, &limits);
        let in_memory = self
            .inner
            .lock()
            .await
            .compiled
            .get(&version.digest)
            .cloned();
        let (current, pre, source) = self
            .provision
            .version(name, &version, (Some(bytes), in_memory), false, &share)
            .await
            .map_err(cannot)?;
        let served = Served {
            current,
            canary: None,
            code: vec![(version.digest.clone(), pre)],
            sources: vec![source],
            share,
        };
        self.commit(
            name,
            Change::Static {
                route,
                version,
                served,
            },
        )
        .await?;
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
    pub async fn restore(&self) -> Result<Restored, AppError> {
        let mut summary = Restored::default();
        let state = self.state().clone();
        let records = blocking(move || Ok(state.load_records()?)).await?;
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
            let name = record.name.clone();
            match self.restore_one(record).await {
                Ok(sources) => {
                    summary.apps += 1;
                    for source in sources {
                        match source {
                            CodeSource::Cache | CodeSource::Memory => summary.from_cache += 1,
                            CodeSource::Compiled => summary.compiled += 1,
                        }
                    }
                }
                Err((record, err)) => {
                    tracing::error!(app = %name, error = %err, "failed to restore app; it is not served until it is deployed again or the host restarts with the problem fixed");
                    // The reason is shown by `/readyz` (open to anyone) and
                    // the API: a host failure names files and OS errors,
                    // which only the log gets.
                    let reason = if err.is_host_failure() {
                        "its stored files could not be read or used; the host's log says which and why".to_string()
                    } else {
                        err.to_string()
                    };
                    summary.failed += 1;
                    self.commit(&name, Change::Fail { record, reason }).await?;
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

    /// Serve one stored record, or give it back with why it cannot be.
    async fn restore_one(
        &self,
        record: AppRecord,
    ) -> Result<Vec<CodeSource>, (AppRecord, AppError)> {
        if let Err(err) = validate_name(&record.name) {
            return Err((record, err));
        }
        let serving = Serving {
            live: None,
            ..self.inner.lock().await.serving(&record.name, &record)
        };
        let served = match self.provision.record(&record, serving, None).await {
            Ok(served) => served,
            Err(err) => return Err((record, err)),
        };
        let sources = served.sources.clone();
        let name = record.name.clone();
        let current = record.current.clone();
        let change = Change::Restore {
            record: record.clone(),
            served,
        };
        match self.commit(&name, change).await {
            Ok(_) => {
                tracing::info!(app = %name, version = %current, source = ?sources.first(), "restored app");
                Ok(sources)
            }
            Err(err) => Err((record, err)),
        }
    }

    /// Every app; in cluster mode with the revision each replica serves.
    pub async fn list(&self) -> Vec<AppView> {
        let mut views: Vec<AppView> = {
            let inner = self.inner.lock().await;
            let names: BTreeSet<&String> = inner.live.keys().chain(inner.failed.keys()).collect();
            names
                .into_iter()
                .filter_map(|name| self.view(&inner, name))
                .collect()
        };
        self.with_replicas(&mut views).await;
        views
    }

    /// App `name`; in cluster mode with the revision each replica serves.
    pub async fn get(&self, name: &str) -> Result<AppView, AppError> {
        let view = {
            let inner = self.inner.lock().await;
            self.view(&inner, name)
                .ok_or_else(|| AppError::NotFound(format!("no app named {name}")))?
        };
        let mut views = [view];
        self.with_replicas(&mut views).await;
        let [view] = views;
        Ok(view)
    }

    /// Deployed apps that failed to restore, with the reason: for
    /// `/readyz` and the `host_apps_failed` gauge.
    pub fn failed(&self) -> Arc<Vec<(String, String)>> {
        self.failed_now
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default()
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
        result
    }

    async fn try_deploy(
        &self,
        name: &str,
        wasm: Bytes,
        request: DeployRequest,
    ) -> Result<AppView, AppError> {
        validate_name(name)?;
        self.provision.validate(&request.settings)?;
        let host = request.host.as_deref();
        let requested_route = match &request.route {
            Some(prefix) => Some(Route::new(prefix, host)?),
            None => None,
        };
        // Hashing and parsing a large component takes milliseconds: off the
        // serving threads.
        let bytes = wasm.clone();
        let settings = request.settings;
        let version = blocking(move || version_of(&bytes, settings)).await?;
        let digest = version.digest.clone();
        let from_cluster = self.cluster_record(name).await?;
        let (before, after, serving, _storing) = {
            let inner = self.inner.lock().await;
            inner.admits(name, None)?;
            let before = match from_cluster {
                Some(record) => record,
                None => inner.stored(name).cloned(),
            };
            if name == DEFAULT_APP && before.is_none() {
                return Err(AppError::Invalid(format!(
                    "the app name `{DEFAULT_APP}` is reserved for the host's default guest; pick another name"
                )));
            }
            let route = match (requested_route, &before) {
                (Some(route), _) => route,
                (None, Some(record)) if host.is_some() => Route::new(&record.route.prefix, host)?,
                (None, Some(record)) => record.route.clone(),
                (None, None) => {
                    return Err(AppError::Invalid(format!(
                        "app {name} is new: its first deploy needs a route (e.g. /{name})"
                    )));
                }
            };
            if self.cluster.is_some() {
                inner.admits_in_cluster(name, &route)?;
            } else {
                inner.admits(name, Some(&route))?;
            }
            let after = plan::deploy(
                before.as_ref(),
                name,
                route,
                version.clone(),
                self.keep_versions,
            );
            // A deploy serves fresh versions, even of code served now.
            let serving = Serving {
                live: None,
                ..inner.serving(name, &after)
            };
            // From here until the record naming it is on disk (or the
            // deploy failed) the collector keeps the component. Registered
            // under the lock the collector deletes under, so it either sees
            // this digest or has finished deleting.
            let storing = Storing::new(&self.storing, &digest);
            (before, after, serving, storing)
        };
        let served = self
            .provision
            .record(&after, serving, Some((&digest, wasm.clone())))
            .await?;
        let state = self.state().clone();
        blocking(move || Ok(state.save_component(&digest, &wasm)?)).await?;
        let change = Change::Save {
            before,
            record: after,
            served,
        };
        let view = Self::kept(name, self.commit(name, change).await?)?;
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
        let from_cluster = self.cluster_record(name).await?;
        let (before, after, serving) = {
            let inner = self.inner.lock().await;
            let before = match from_cluster {
                Some(record) => {
                    inner.admits(name, None)?;
                    record.ok_or_else(|| AppError::NotFound(format!("no app named {name}")))?
                }
                None => inner.deployed(name)?.clone(),
            };
            let after = plan(&before)?;
            let serving = inner.serving(name, &after);
            (before, after, serving)
        };
        // In cluster mode this replica may not have fetched every version
        // of the store's record yet.
        let _fetched = self.fetch_for_change(&after).await?;
        let served = self.provision.record(&after, serving, None).await?;
        let change = Change::Save {
            before: Some(before),
            record: after,
            served,
        };
        let view = Self::kept(name, self.commit(name, change).await?)?;
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

    /// Stop serving app `name` and forget it (a failed one too), and
    /// delete its key-value data unless `keep_data`: what was deleted.
    /// An app whose versions declare stores is not removed while the
    /// key-value store cannot be reached (its data could not be deleted
    /// with it); for one that declares none, whatever an older version
    /// left is deleted if the store can be reached.
    pub async fn remove(&self, name: &str, keep_data: bool) -> Result<Removed, AppError> {
        let from_cluster = self.cluster_record(name).await?;
        let before = {
            let inner = self.inner.lock().await;
            if from_cluster.is_some() {
                inner.admits(name, None)?;
            }
            match from_cluster.unwrap_or_else(|| inner.stored(name).cloned()) {
                Some(record) => record,
                None => {
                    inner.admits(name, None)?;
                    return Err(AppError::NotFound(format!("no app named {name}")));
                }
            }
        };
        let declares = before
            .versions
            .iter()
            .any(|v| !v.settings.key_value.is_empty());
        if !keep_data && declares {
            self.kv().usage(name).await.map_err(|e| {
                AppError::from(e).context(format!(
                    "app {name} was not removed, because its key-value data cannot be deleted now \
                     (retry, or pass --keep-data to remove it and keep the data)"
                ))
            })?;
        }
        self.commit(name, Change::Remove { before }).await?;
        if keep_data {
            tracing::info!(app = name, "removed; its key-value data is kept");
            return Ok(Removed { data: None });
        }
        match self.kv().delete_app(name).await {
            Ok(usage) => {
                tracing::info!(
                    app = name,
                    keys = usage.keys,
                    bytes = usage.bytes,
                    "removed with its key-value data"
                );
                Ok(Removed { data: Some(usage) })
            }
            Err(err) if !declares => {
                tracing::warn!(app = name, error = %err, "removed; the key-value store could not be asked for data an older version may have left");
                Ok(Removed { data: None })
            }
            Err(err) => {
                tracing::error!(app = name, error = %err, "removed, but its key-value data could not be deleted");
                Err(AppError::Unavailable(format!(
                    "app {name} was removed, but deleting its key-value data failed: {err}"
                )))
            }
        }
    }

    /// The host's key-value store.
    pub(crate) fn kv(&self) -> &KvService {
        &self.provision.kv
    }
}

/// What removing an app deleted.
#[derive(Debug, Clone, Copy)]
pub struct Removed {
    /// The key-value data deleted with it (`None`: kept).
    pub data: Option<Usage>,
}

#[cfg(test)]
mod tests;
