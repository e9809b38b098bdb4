//! Cluster mode (`--cluster-url`): the registry as one replica of many that
//! share their apps through the cluster store ([`crate::cluster`]).
//!
//! - *Changes.* An admin change is planned on the store's record of the
//!   app, made ready here as in standalone mode (compiled, secrets read;
//!   components this replica lacks fetched first), then committed to the
//!   store first ([`Registry::commit_to_cluster`]: compare-and-set on the
//!   app's revision; a new component is stored by digest beforehand) and
//!   only then served here.
//! - *Following.* Every replica wakes on the store's announcements and
//!   every [`SCAN`] anyway, reads the store's head (one round trip) and,
//!   when it moved, the whole snapshot: each app at a revision newer than
//!   what it serves is fetched (components by digest, checked against
//!   their digest) and compiled into this replica's own cache (never code
//!   from elsewhere); then every change of the snapshot is swapped in at
//!   once ([`Registry::commit_follow`]), so that routes moved between apps
//!   never clash on the way; apps gone from the store are removed. Until a
//!   new version is ready the old one serves; a version this replica
//!   cannot serve is reported and tried again later (1 s, doubling to a
//!   minute).
//! - *Start.* The store's records are written to the local cache
//!   (`STATE_DIR/cluster`, with components fetched), then restored from it
//!   as a standalone host restores its records, then one more catch-up:
//!   the replica is ready once every app is routable. If the store cannot
//!   be reached the replica serves what its cache holds and says so
//!   (`/readyz`, the log), and catches up when the store is back; one with
//!   nothing cached is not ready until then.
//! - *Outages.* While the store is down, serving goes on and changes
//!   answer 503; a metric and one log line each way. A store that comes
//!   back empty (a Redis that lost its data) is filled again with what the
//!   replicas serve, and one that lost only its latest writes gets back the
//!   newer records; a store with another id is not touched.
//! - *Visibility.* Each replica reports the revision of every app it
//!   serves in a heartbeat ([`crate::cluster::replicas`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::apps::compiler::blocking;
use crate::apps::error::AppError;
use crate::apps::provision::Served;
use crate::apps::records::{AppRecord, validate_name};
use crate::apps::registry::{Change, Registry, Restored, Storing};
use crate::apps::replica::{Clustered, Followed};
use crate::apps::state_dir::sha256_hex;
use crate::apps::views::{AppView, ReplicaView};
use crate::cluster::replicas::{self, Heartbeat, Live, Serving};
use crate::cluster::{ClusterError, Head, Planned, Snapshot, watch};
use crate::metrics::metrics;

/// How often a replica checks the store's head even when no announcement
/// came: the revision scan that makes up for a lost subscription.
pub const SCAN: Duration = Duration::from_secs(1);

/// How long a listing waits for the replicas' heartbeats.
const LISTING_TIMEOUT: Duration = Duration::from_secs(2);

/// Parse an app's entry in the store into its record, checked as if it
/// came from outside: its name, and every digest (64 hex digits, which
/// become file names here) and version id.
fn record_of(name: &str, revision: u64, json: &str) -> Result<AppRecord, AppError> {
    let corrupt = |why: String| {
        AppError::Internal(format!(
            "the cluster store's record of app {name} cannot be used: {why}"
        ))
    };
    let mut record: AppRecord = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
    validate_name(name)?;
    if record.name != name {
        return Err(corrupt(format!("it names app {}", record.name)));
    }
    for version in &record.versions {
        let hex = version.digest.len() == 64
            && version
                .digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex || version.version != version.digest[..12] {
            return Err(corrupt(format!(
                "version {:?} has no valid digest",
                version.version
            )));
        }
    }
    record.revision = Some(revision);
    Ok(record)
}

/// The record of an app as the store keeps it: without its revision (the
/// store keeps that beside it).
fn stored_json(record: &AppRecord) -> Result<String, AppError> {
    let record = AppRecord {
        revision: None,
        ..record.clone()
    };
    serde_json::to_string(&record)
        .map_err(|e| AppError::Internal(format!("an app record could not be encoded: {e}")))
}

impl Registry {
    fn clustered(&self) -> Option<&Arc<Clustered>> {
        self.cluster.as_ref()
    }

    /// A call to the store, noted: one that cannot reach it marks the store
    /// down, one that answers marks it up.
    async fn noted<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        let result = call.await;
        if let Some(cluster) = self.clustered() {
            match &result {
                Ok(_) => cluster.store_ok(),
                Err(err) => cluster.store_failed(err),
            }
        }
        result
    }

    /// In cluster mode, the store's record of app `name` (`Some(None)`: the
    /// store has no such app); `None` in standalone mode.
    pub(crate) async fn cluster_record(
        &self,
        name: &str,
    ) -> Result<Option<Option<AppRecord>>, AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(None);
        };
        let entry = self.noted(cluster.store.app(name)).await?;
        Ok(Some(
            entry
                .map(|e| record_of(name, e.revision, &e.record))
                .transpose()?,
        ))
    }

    /// In cluster mode, fetch what `record` serves that this replica does
    /// not have yet (it may lag behind the replica that made the change it
    /// starts from): the guards keep it from the collector until the change
    /// is committed.
    pub(crate) async fn fetch_for_change(
        &self,
        record: &AppRecord,
    ) -> Result<Vec<Storing<'_>>, AppError> {
        if self.clustered().is_none() {
            return Ok(Vec::new());
        }
        let guards = record
            .digests()
            .map(|d| Storing::new(&self.storing, d))
            .collect();
        self.fetch_components(record).await?;
        Ok(guards)
    }

    /// Commit a change made on this replica to the cluster store: the
    /// component first (by digest), then the record, compare-and-set on
    /// the revision it was planned on. What this replica then applies
    /// (the record at its new revision), and the record for the answer.
    pub(crate) async fn commit_to_cluster(
        &self,
        name: &str,
        change: Change,
    ) -> Result<(Change, Option<AppRecord>), AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok((change, None));
        };
        let id = match cluster.known() {
            Some(id) => id,
            None => {
                let state = self.state().clone();
                self.noted(cluster.ensure_id(&state)).await?
            }
        };
        let floor = cluster.synced.load(Ordering::SeqCst);
        let result = match change {
            Change::Save {
                before,
                mut record,
                served,
            } => {
                // The components the store does not have yet: the new
                // version's (the others came from the store's record).
                let known: Vec<&str> = before.iter().flat_map(AppRecord::digests).collect();
                for digest in record.digests().filter(|d| !known.contains(d)) {
                    let (state, owned) = (self.state().clone(), digest.to_string());
                    let bytes = blocking(move || Ok(state.read_component(&owned)?)).await?;
                    cluster.store.put_component(digest, &bytes).await?;
                }
                let old_route = before.as_ref().map(|b| b.route.to_string());
                let planned = Planned {
                    app: name,
                    expected: before.as_ref().and_then(|b| b.revision).unwrap_or(0),
                    old_route: old_route.as_deref(),
                    floor,
                };
                let json = stored_json(&record)?;
                let route = record.route.to_string();
                let revision = self
                    .noted(cluster.store.save(&id, &planned, &json, &route))
                    .await?;
                record.revision = Some(revision);
                (
                    Change::Follow {
                        revision,
                        next: Some((record.clone(), served)),
                    },
                    Some(record),
                )
            }
            Change::Remove { before } => {
                let route = before.route.to_string();
                let planned = Planned {
                    app: name,
                    expected: before.revision.unwrap_or(0),
                    old_route: Some(&route),
                    floor,
                };
                let revision = self.noted(cluster.store.remove(&id, &planned)).await?;
                (
                    Change::Follow {
                        revision,
                        next: None,
                    },
                    None,
                )
            }
            other => return Ok((other, None)),
        };
        cluster.wake.notify_one();
        // Components no record names any more go, in the background (kept
        // for a grace period after they were stored).
        let store = cluster.store.clone();
        tokio::spawn(async move {
            match store.collect().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    components = n,
                    "removed unused components from the cluster store"
                ),
                Err(err) => {
                    tracing::warn!(error = %err, "failed to collect unused components in the cluster store")
                }
            }
        });
        Ok(result)
    }

    /// A change committed to the store could not be applied here yet (a
    /// static app holds the route here, say): the follower tries again;
    /// the answer is the committed record.
    pub(crate) fn applied_later(
        &self,
        name: &str,
        record: Option<AppRecord>,
        err: AppError,
    ) -> Option<AppView> {
        let cluster = self.clustered()?;
        let revision = record.as_ref().and_then(|r| r.revision).unwrap_or(0);
        tracing::warn!(app = name, revision, error = %err, "committed to the cluster store but not yet served here; the follower retries");
        cluster.wake.notify_one();
        record.map(|r| AppView::of_deployed(&r, None, &self.public_base))
    }

    /// A change to `name` was committed here: nothing is owed any more.
    pub(crate) fn followed(&self, name: &str) {
        if let Some(cluster) = self.clustered() {
            cluster.caught_up(name);
            cluster.beat.notify_one();
        }
    }

    /// At start in cluster mode: bring the local cache up to the store's
    /// records (with their components), restore from the cache, and catch
    /// up with what changed meanwhile. If the store cannot be reached, the
    /// cache as it is serves.
    pub(crate) async fn restore_cluster(&self) -> Result<Restored, AppError> {
        let Some(cluster) = self.clustered() else {
            return self.restore().await;
        };
        let filled = match self.fill_cache().await {
            Ok(filled) => Some(filled),
            Err(err) => {
                tracing::warn!(store = %cluster.store.shown(), error = %err, "cannot load the apps from the cluster store at start");
                None
            }
        };
        let restored = self.restore().await?;
        match filled {
            Some((head, complete)) => {
                // With an app left out (its components could not be
                // fetched), the follower must look at every app again.
                let synced = if complete { head.seq } else { 0 };
                cluster.synced.store(synced, Ordering::SeqCst);
                metrics().cluster_revision.set(synced as i64);
                cluster.store_ok();
                tracing::info!(store = %cluster.store.shown(), revision = head.seq, apps = restored.apps, complete, "loaded the apps from the cluster store");
                // What changed while this replica was compiling.
                self.sync().await;
                cluster.loaded.store(true, Ordering::SeqCst);
            }
            None => {
                cluster.store_failed(&ClusterError::Unavailable(String::new()));
                let knew = cluster.known().is_some();
                let note = if knew {
                    format!(
                        "the cluster store was unreachable at start: serving the {} app(s) this replica last knew until it is back",
                        restored.apps
                    )
                } else {
                    "the cluster store was unreachable at start and this replica has never loaded the cluster's apps: not ready until it can".to_string()
                };
                tracing::warn!(store = %cluster.store.shown(), "{note}");
                cluster.set_note(Some(note));
                cluster.loaded.store(knew, Ordering::SeqCst);
            }
        }
        Ok(restored)
    }

    /// The readable records of the local cache.
    async fn cached_records(&self) -> Result<Vec<AppRecord>, AppError> {
        let state = self.state().clone();
        let records = blocking(move || Ok(state.load_records()?)).await?;
        Ok(records.into_iter().filter_map(Result::ok).collect())
    }

    /// Write the store's records to the local cache (and fetch their
    /// components), removing cached records the store no longer has (and
    /// unreadable ones: the cache is this replica's own). The store's head,
    /// and whether every app made it (one whose components could not be
    /// fetched keeps what the cache had).
    async fn fill_cache(&self) -> Result<(Head, bool), AppError> {
        let cluster = self.clustered().ok_or_else(|| {
            AppError::Internal("filling the cluster cache in standalone mode".into())
        })?;
        let head = self.noted(cluster.store.head()).await?;
        let known = cluster.known();
        // A store that lost its data (empty, or only given an id by a
        // replica that knew nothing): this replica's cache puts it back.
        let emptied = match &known {
            Some(known) => head.id.is_empty() || (head.id != *known && head.seq == 0),
            None => false,
        };
        if emptied {
            let records = self.cached_records().await?;
            self.seed(&records).await?;
        }
        let mut snapshot = self.noted(cluster.store.snapshot()).await?;
        if snapshot.head.id.is_empty() {
            // A new cluster.
            let state = self.state().clone();
            let id = self.noted(cluster.ensure_id(&state)).await?;
            snapshot = Snapshot {
                head: Head { id, seq: 0 },
                apps: Vec::new(),
            };
        }
        if known.as_ref().is_some_and(|k| *k != snapshot.head.id) {
            tracing::warn!(store = %cluster.store.shown(), "the cluster store is not the one this replica last synced with: adopting its apps");
        }
        cluster.remember(self.state(), &snapshot.head.id).await;
        let mut complete = true;
        let mut keep = Vec::new();
        for entry in &snapshot.apps {
            keep.push(entry.name.clone());
            let record = match record_of(&entry.name, entry.revision, &entry.record) {
                Ok(record) => record,
                Err(err) => {
                    tracing::error!(app = %entry.name, error = %err, "skipping an app the cluster store holds");
                    continue;
                }
            };
            if let Err(err) = self.fetch_components(&record).await {
                tracing::warn!(app = %entry.name, error = %err, "cannot fetch the app's components from the cluster store now; trying again once serving");
                complete = false;
                continue;
            }
            let state = self.state().clone();
            blocking(move || Ok(state.save_record(&record)?)).await?;
        }
        let state = self.state().clone();
        blocking(move || {
            for record in state.load_records()? {
                match record {
                    Ok(record) if keep.contains(&record.name) => {}
                    Ok(record) => state.remove_record(&record.name)?,
                    Err(err) => {
                        tracing::warn!(error = %err, "removing an unreadable record from the cluster cache");
                        if let crate::apps::error::StorageError::Corrupt { path, .. } = &err {
                            let _ = std::fs::remove_file(path);
                        }
                    }
                }
            }
            Ok(())
        })
        .await?;
        Ok((snapshot.head, complete))
    }

    /// Make sure every component `record` names is stored here, fetching
    /// it from the cluster store (and checking it against its digest).
    async fn fetch_components(&self, record: &AppRecord) -> Result<(), AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(());
        };
        for digest in record.digests() {
            if self.state().has_component(digest) {
                continue;
            }
            // Not `noted`: a slow transfer is not the store going down.
            let bytes = cluster.store.component(digest).await?.ok_or_else(|| {
                AppError::Invalid(format!(
                    "the cluster store holds no component {digest}, which app {} names",
                    record.name
                ))
            })?;
            let (owned, state) = (digest.to_string(), self.state().clone());
            blocking(move || {
                if sha256_hex(&bytes) != owned {
                    return Err(AppError::Invalid(format!(
                        "the cluster store's component {owned} does not match its digest"
                    )));
                }
                Ok(state.save_component(&owned, &bytes)?)
            })
            .await?;
        }
        Ok(())
    }

    /// What this replica serves, as the store keeps it (name, revision,
    /// record, route), with the components stored again: for a store that
    /// lost data. The highest revision among them and `seq`.
    async fn put_back(
        &self,
        cluster: &Clustered,
        records: &[AppRecord],
        mut seq: u64,
    ) -> Result<(Vec<(String, u64, String, String)>, u64), AppError> {
        let mut apps = Vec::new();
        for record in records {
            for digest in record.digests() {
                if cluster.store.has_component(digest).await? {
                    continue;
                }
                let (owned, state) = (digest.to_string(), self.state().clone());
                if let Ok(bytes) = blocking(move || Ok(state.read_component(&owned)?)).await {
                    cluster.store.put_component(digest, &bytes).await?;
                }
            }
            let revision = record.revision.unwrap_or(0);
            seq = seq.max(revision);
            apps.push((
                record.name.clone(),
                revision,
                stored_json(record)?,
                record.route.to_string(),
            ));
        }
        Ok((apps, seq))
    }

    /// Put back into an empty store the apps this replica serves, at the
    /// revisions it serves them, with their components.
    async fn seed(&self, records: &[AppRecord]) -> Result<(), AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(());
        };
        let Some(id) = cluster.known() else {
            return Ok(());
        };
        let synced = cluster.synced.load(Ordering::SeqCst);
        let (apps, seq) = self.put_back(cluster, records, synced).await?;
        let head = Head { id, seq };
        if self.noted(cluster.store.seed(&head, &apps)).await? {
            tracing::warn!(store = %cluster.store.shown(), apps = apps.len(), revision = seq, "the cluster store had lost its data: put back the apps this replica serves");
        }
        Ok(())
    }

    /// Bring a store that is behind this replica (its revision `head.seq`
    /// is below `synced`: it lost its latest writes) up to what this
    /// replica serves.
    async fn repair(&self, head: &Head, synced: u64) -> Result<(), AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(());
        };
        let records: Vec<AppRecord> = self.inner.lock().await.records.values().cloned().collect();
        let (apps, seq) = self.put_back(cluster, &records, synced).await?;
        let target = Head {
            id: head.id.clone(),
            seq,
        };
        let put = self.noted(cluster.store.repair(&target, &apps)).await?;
        tracing::warn!(store = %cluster.store.shown(), store_revision = head.seq, revision = seq, apps = put, "the cluster store was behind this replica (it lost its latest writes): put back the newer apps this replica serves");
        Ok(())
    }

    /// Start following the store: the subscription, the sync loop and the
    /// heartbeat. They stop when the registry is dropped.
    pub(crate) fn follow(self: &Arc<Self>) {
        let Some(cluster) = self.clustered() else {
            return;
        };
        let subscription = watch::spawn(
            cluster.store.clone(),
            cluster.wake.clone(),
            cluster.resubscribe.clone(),
        );
        let weak = Arc::downgrade(self);
        let wake = cluster.wake.clone();
        tokio::spawn(async move {
            loop {
                let _ = tokio::time::timeout(SCAN, wake.notified()).await;
                let Some(registry) = weak.upgrade() else {
                    subscription.abort();
                    return;
                };
                registry.sync().await;
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                registry.send_heartbeat().await;
                let Some(cluster) = registry.clustered().cloned() else {
                    return;
                };
                drop(registry);
                let _ = tokio::time::timeout(replicas::HEARTBEAT, cluster.beat.notified()).await;
            }
        });
    }

    /// Catch up with the store: apply every app at a newer revision, and
    /// remove the ones it no longer has.
    pub(crate) async fn sync(&self) {
        let Some(cluster) = self.clustered() else {
            return;
        };
        let _one = cluster.syncing.lock().await;
        let Ok(head) = self.noted(cluster.store.head()).await else {
            return;
        };
        let serves = self.serves_cluster_apps().await;
        let synced = cluster.synced.load(Ordering::SeqCst);
        match cluster.known() {
            // A new cluster: this replica gives the store its id.
            None if head.id.is_empty() => {
                let state = self.state().clone();
                match self.noted(cluster.ensure_id(&state)).await {
                    // Nothing to load: a new cluster.
                    Ok(_) => cluster.loaded.store(true, Ordering::SeqCst),
                    Err(err) => tracing::warn!(error = %err, "failed to set up the cluster store"),
                }
                return;
            }
            None => cluster.remember(self.state(), &head.id).await,
            // The store lost its data (it is empty, or only a replica that
            // knew nothing gave it an id): put back what this replica
            // serves, then follow it.
            Some(known) if head.id.is_empty() || (known != head.id && head.seq == 0 && serves) => {
                let records: Vec<AppRecord> =
                    self.inner.lock().await.records.values().cloned().collect();
                if let Err(err) = self.seed(&records).await {
                    tracing::warn!(error = %err, "failed to put the apps back into the emptied cluster store");
                }
                return;
            }
            // A replica with nothing to lose takes the store as it is.
            Some(known) if known != head.id && synced == 0 && !serves => {
                tracing::info!(store = %cluster.store.shown(), "adopting the cluster store's id");
                cluster.remember(self.state(), &head.id).await;
            }
            Some(known) if known != head.id => {
                let note = "the cluster store holds another cluster's data (its id changed): this replica serves what it has and takes no changes from it; restart the replica to adopt it".to_string();
                if cluster.note().as_deref() != Some(note.as_str()) {
                    tracing::error!(store = %cluster.store.shown(), "{note}");
                    cluster.set_note(Some(note));
                }
                return;
            }
            Some(_) => {}
        }
        if head.seq < synced {
            // The store lost its latest writes (a Redis restarted from an
            // older file): put back what this replica serves, then follow.
            if let Err(err) = self.repair(&head, synced).await {
                tracing::warn!(error = %err, "failed to bring the cluster store up to what this replica serves");
                return;
            }
        } else if head.seq == synced && !cluster.retry_due() {
            // Caught up (what it could not serve waits for its retry).
            cluster.loaded.store(true, Ordering::SeqCst);
            return;
        }
        let Ok(snapshot) = self.noted(cluster.store.snapshot()).await else {
            return;
        };
        if snapshot.head.id != head.id {
            return;
        }
        if self.apply(cluster, &snapshot).await {
            cluster.synced.store(snapshot.head.seq, Ordering::SeqCst);
            metrics().cluster_revision.set(snapshot.head.seq as i64);
        }
        // Loaded as far as it can be: what it cannot serve is listed as
        // failed and reported, as at start.
        cluster.loaded.store(true, Ordering::SeqCst);
        cluster.beat.notify_one();
    }

    /// Apply `snapshot`: make every changed app ready, then swap them all
    /// in at once. Whether the store need not be read again for it: false
    /// if the store failed on the way (what this replica cannot serve is
    /// listed, and tried again after its backoff: `Clustered::retry_due`).
    async fn apply(&self, cluster: &Clustered, snapshot: &Snapshot) -> bool {
        // Only what is served counts: an app listed as failed here is
        // tried again; a change from before an app's removal here is not.
        let (skip, statics, known): (Vec<bool>, Vec<bool>, Vec<String>) = {
            let inner = self.inner.lock().await;
            (
                snapshot
                    .apps
                    .iter()
                    .map(|e| inner.superseded(&e.name, e.revision, true))
                    .collect(),
                snapshot
                    .apps
                    .iter()
                    .map(|e| inner.statics.contains_key(&e.name))
                    .collect(),
                inner
                    .records
                    .keys()
                    .chain(inner.failed.keys())
                    .cloned()
                    .collect(),
            )
        };
        let mut complete = true;
        let mut batch = Vec::new();
        let mut guards = Vec::new();
        for (i, entry) in snapshot.apps.iter().enumerate() {
            if skip[i] || cluster.backing_off(&entry.name, entry.revision) {
                continue;
            }
            if statics[i] {
                // Nothing to fetch or compile: it cannot be served here.
                let err = AppError::Conflict(format!(
                    "app {} is declared on this replica's command line or manifest",
                    entry.name
                ));
                self.not_served(cluster, &entry.name, entry.revision, &entry.record, err)
                    .await;
                continue;
            }
            match self
                .prepare(&entry.name, entry.revision, &entry.record)
                .await
            {
                Ok((record, ready, kept)) => {
                    guards.extend(kept);
                    batch.push((
                        entry.name.clone(),
                        entry.revision,
                        Followed::Save(Box::new((record, ready))),
                    ));
                }
                Err(err) => {
                    complete &= !matches!(err, AppError::Unavailable(_));
                    self.not_served(cluster, &entry.name, entry.revision, &entry.record, err)
                        .await;
                }
            }
        }
        for name in known {
            if !snapshot.apps.iter().any(|e| e.name == name) {
                batch.push((name, snapshot.head.seq, Followed::Remove));
            }
        }
        if batch.is_empty() {
            return complete;
        }
        for (name, revision, result) in self.commit_follow(batch).await {
            match result {
                Ok(()) => {
                    metrics().cluster_applied("ok");
                    cluster.caught_up(&name);
                    tracing::info!(app = %name, revision, "applied a change from the cluster");
                }
                Err(err) => {
                    complete &= !matches!(err, AppError::Unavailable(_));
                    let json = snapshot
                        .apps
                        .iter()
                        .find(|e| e.name == name)
                        .map(|e| e.record.clone())
                        .unwrap_or_default();
                    self.not_served(cluster, &name, revision, &json, err).await;
                }
            }
        }
        drop(guards);
        complete
    }

    /// Make app `name` at `revision` ready to serve from its record in the
    /// store: its components fetched (kept from the collector by the
    /// guards until it is committed) and compiled.
    async fn prepare(
        &self,
        name: &str,
        revision: u64,
        json: &str,
    ) -> Result<(AppRecord, Served, Vec<Storing<'_>>), AppError> {
        let record = record_of(name, revision, json)?;
        let guards = self.fetch_for_change(&record).await?;
        let serving = self.inner.lock().await.serving(name, &record);
        let served = self.provision.record(&record, serving, None).await?;
        Ok((record, served, guards))
    }

    /// Revision `revision` of `name` cannot be served here now: reported,
    /// tried again after a backoff (a store that cannot be reached is not
    /// the version's fault, and is not logged per app). An app this
    /// replica does not serve at all is listed as failed here.
    async fn not_served(
        &self,
        cluster: &Clustered,
        name: &str,
        revision: u64,
        json: &str,
        err: AppError,
    ) {
        if matches!(err, AppError::Unavailable(_)) {
            metrics().cluster_applied("retry");
            return;
        }
        metrics().cluster_applied("failed");
        let reason = if err.is_host_failure() {
            "its files could not be read or used here; the replica's log says which and why"
                .to_string()
        } else {
            err.to_string()
        };
        if !cluster.backing_off(name, revision) {
            tracing::error!(app = name, revision, error = %err, "cannot serve this revision here yet; the previous one (if any) keeps serving, and it is tried again");
        }
        cluster.mark_behind(name, revision, reason.clone());
        let served = self.inner.lock().await.records.contains_key(name);
        if served {
            return;
        }
        if let Ok(record) = record_of(name, revision, json) {
            let _ = self
                .commit_here(name, Change::Fail { record, reason })
                .await;
            self.publish_now().await;
        }
    }

    /// Does this replica serve (or know of) any of the cluster's apps?
    async fn serves_cluster_apps(&self) -> bool {
        let inner = self.inner.lock().await;
        !inner.records.is_empty() || !inner.failed.is_empty()
    }

    /// Report this replica: what it serves, at which revision.
    async fn send_heartbeat(&self) {
        let Some(cluster) = self.clustered() else {
            return;
        };
        let apps: BTreeMap<String, Serving> = {
            let inner = self.inner.lock().await;
            let behind = cluster.failures();
            let mut apps: BTreeMap<String, Serving> = inner
                .records
                .values()
                .map(|r| {
                    (
                        r.name.clone(),
                        Serving {
                            revision: r.revision.unwrap_or(0),
                            failed: None,
                        },
                    )
                })
                .collect();
            for (name, failed) in behind {
                apps.entry(name)
                    .or_insert(Serving {
                        revision: 0,
                        failed: None,
                    })
                    .failed = Some(failed);
            }
            apps
        };
        let beat = Heartbeat {
            replica: cluster.replica.clone(),
            admin: cluster.admin.clone(),
            started_at: cluster.started_at,
            synced: cluster.synced.load(Ordering::SeqCst),
            apps,
        };
        if let Err(err) = cluster.store.beat(&beat).await {
            tracing::debug!(error = %err, "heartbeat not sent");
        }
    }

    /// Leave the replica list (at shutdown), so that waits stop counting
    /// this replica at once.
    pub async fn leave_cluster(&self) {
        if let Some(cluster) = self.clustered()
            && let Err(err) = cluster.store.leave(&cluster.replica).await
        {
            tracing::debug!(error = %err, "could not leave the replica list");
        }
    }

    /// The live replicas (cluster mode), or `None`.
    pub async fn replicas(&self) -> Option<Result<Vec<Live>, AppError>> {
        let cluster = self.clustered()?;
        let live = tokio::time::timeout(LISTING_TIMEOUT, cluster.store.live()).await;
        Some(match live {
            Ok(Ok(live)) => Ok(live),
            Ok(Err(err)) => Err(err.into()),
            Err(_) => Err(AppError::Unavailable(format!(
                "the cluster store at {} did not answer within {} s",
                cluster.store.shown(),
                LISTING_TIMEOUT.as_secs()
            ))),
        })
    }

    /// Each live replica's revision of each app in `views`.
    pub(crate) async fn with_replicas(&self, views: &mut [AppView]) {
        let Some(live) = self.replicas().await else {
            return;
        };
        let Ok(live) = live else {
            return;
        };
        for view in views.iter_mut().filter(|v| v.source == "deployed") {
            view.replicas = Some(
                live.iter()
                    .map(|replica| {
                        let serving = replica.beat.apps.get(&view.name);
                        ReplicaView {
                            replica: replica.beat.replica.clone(),
                            revision: serving.map_or(0, |s| s.revision),
                            failed: serving.and_then(|s| s.failed.clone()),
                        }
                    })
                    .collect(),
            );
        }
    }

    /// What `/readyz` says of the cluster store, if anything is wrong.
    pub fn cluster_note(&self) -> Option<String> {
        self.clustered()?.note()
    }

    /// Can this replica take traffic, as far as the cluster goes? Not
    /// until it has loaded the cluster's apps (from the store, or at least
    /// from the cache of an earlier run while the store is down): it would
    /// answer 404 for all of them.
    pub fn cluster_ready(&self) -> bool {
        self.clustered().is_none_or(|c| c.loaded())
    }

    /// This replica and the store, for `GET /v1/cluster`.
    pub fn cluster_identity(&self) -> Option<(String, String, u64)> {
        let cluster = self.clustered()?;
        Some((
            cluster.replica.clone(),
            cluster.store.shown().to_string(),
            cluster.synced.load(Ordering::SeqCst),
        ))
    }
}
