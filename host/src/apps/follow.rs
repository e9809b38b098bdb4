//! Cluster mode (`--cluster-url`): the registry as one replica of many that
//! share their apps through the cluster store ([`crate::cluster`]).
//!
//! - *Changes.* An admin change is planned on the store's record of the
//!   app, made ready here as in standalone mode (compiled, secrets read),
//!   then committed to the store first ([`Registry::commit_to_cluster`]:
//!   compare-and-set on the app's revision; the component is stored by
//!   digest beforehand) and only then served here.
//! - *Following.* Every replica wakes on the store's announcements and
//!   every [`SCAN`] anyway, reads the store's head (one round trip) and,
//!   when it moved, the whole snapshot: each app at a revision newer than
//!   what it serves is fetched (components by digest, checked against
//!   their digest), compiled into this replica's own cache (never code
//!   from elsewhere) and swapped in through the one commit path; apps gone
//!   from the store are removed. Until a new version is ready the old one
//!   serves; a version this replica cannot serve is reported, not retried
//!   until the next change or restart.
//! - *Start.* The store's records are written to the local cache
//!   (`STATE_DIR/cluster-apps`, with components fetched), then restored
//!   from it as a standalone host restores its records: the replica is
//!   ready once every app is routable. If the store cannot be reached the
//!   replica serves what its cache holds and says so (`/readyz`, the log),
//!   and catches up when the store is back.
//! - *Outages.* While the store is down, serving goes on and changes
//!   answer 503; a metric and one log line each way. A store that comes
//!   back empty (a Redis that lost its data) is filled again with what the
//!   replicas serve; a store with another id is not touched.
//! - *Visibility.* Each replica reports the revision of every app it
//!   serves in a heartbeat ([`crate::cluster::replicas`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::apps::compiler::blocking;
use crate::apps::error::AppError;
use crate::apps::records::{AppRecord, validate_name};
use crate::apps::registry::{Change, Registry, Restored, Storing};
use crate::apps::replica::Clustered;
use crate::apps::state_dir::sha256_hex;
use crate::apps::views::{AppView, ReplicaView};
use crate::cluster::replicas::{self, Heartbeat, Live, Serving};
use crate::cluster::{ClusterError, Head, Planned, Snapshot, watch};
use crate::metrics::metrics;

/// How often a replica checks the store's head even when no announcement
/// came: the revision scan that makes up for a lost subscription.
pub const SCAN: Duration = Duration::from_secs(1);

/// Longest the start waits for the store before serving its cache.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a listing waits for the replicas' heartbeats.
const LISTING_TIMEOUT: Duration = Duration::from_secs(2);

/// Parse an app's entry in the store into its record.
fn record_of(name: &str, revision: u64, json: &str) -> Result<AppRecord, AppError> {
    let mut record: AppRecord = serde_json::from_str(json).map_err(|e| {
        AppError::Invalid(format!(
            "the cluster store's record of app {name} cannot be read: {e}"
        ))
    })?;
    validate_name(name)?;
    if record.name != name {
        return Err(AppError::Invalid(format!(
            "the cluster store's record of app {name} names app {}",
            record.name
        )));
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

    /// In cluster mode, the store's record of app `name` (`Some(None)`: the
    /// store has no such app); `None` in standalone mode.
    pub(crate) async fn cluster_record(
        &self,
        name: &str,
    ) -> Result<Option<Option<AppRecord>>, AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(None);
        };
        let entry = cluster.store.app(name).await.inspect_err(|e| {
            cluster.store_answered(false, Some(e));
        })?;
        Ok(Some(
            entry
                .map(|e| record_of(name, e.revision, &e.record))
                .transpose()?,
        ))
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
        let result = async {
            let id = cluster.ensure_id(self.state()).await?;
            match change {
                Change::Save {
                    before,
                    mut record,
                    served,
                } => {
                    // The components the store does not have yet: the new
                    // version's (the others came from the store's record).
                    let state = self.state().clone();
                    let known: Vec<&str> = before.iter().flat_map(AppRecord::digests).collect();
                    for digest in record.digests().filter(|d| !known.contains(d)) {
                        let stored = state.clone();
                        let owned = digest.to_string();
                        let bytes = blocking(move || Ok(stored.read_component(&owned)?)).await?;
                        cluster.store.put_component(digest, &bytes).await?;
                    }
                    let old_route = before.as_ref().map(|b| b.route.to_string());
                    let planned = Planned {
                        app: name,
                        expected: before.as_ref().and_then(|b| b.revision).unwrap_or(0),
                        old_route: old_route.as_deref(),
                    };
                    let revision = cluster
                        .store
                        .save(
                            &id,
                            &planned,
                            &stored_json(&record)?,
                            &record.route.to_string(),
                        )
                        .await?;
                    record.revision = Some(revision);
                    Ok::<_, AppError>((
                        Change::Follow {
                            revision,
                            next: Some((record.clone(), served)),
                        },
                        Some(record),
                    ))
                }
                Change::Remove { before } => {
                    let route = before.route.to_string();
                    let planned = Planned {
                        app: name,
                        expected: before.revision.unwrap_or(0),
                        old_route: Some(&route),
                    };
                    let revision = cluster.store.remove(&id, &planned).await?;
                    Ok((
                        Change::Follow {
                            revision,
                            next: None,
                        },
                        None,
                    ))
                }
                other => Ok((other, None)),
            }
        }
        .await;
        match &result {
            Err(AppError::Unavailable(message)) => {
                cluster.store_answered(false, Some(&ClusterError::Unavailable(message.clone())));
            }
            Ok(_) => {
                cluster.store_answered(true, None);
                cluster.wake.notify_one();
                // Components no record names any more go, in the
                // background (kept for a grace period after upload).
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
            }
            Err(_) => {}
        }
        result
    }

    /// A change committed to the store could not be applied here (another
    /// change is being applied, a static app holds the route here): the
    /// follower tries again; the answer is the committed record.
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

    /// At start in cluster mode: bring the local cache up to the store's
    /// records (with their components), then restore from the cache. If
    /// the store cannot be reached, the cache as it is serves.
    pub(crate) async fn restore_cluster(&self) -> Result<Restored, AppError> {
        let Some(cluster) = self.clustered() else {
            return self.restore().await;
        };
        let cached = match tokio::time::timeout(START_TIMEOUT, self.fill_cache()).await {
            Ok(Ok(head)) => Some(head),
            Ok(Err(err)) => {
                tracing::warn!(store = %cluster.store.shown(), error = %err, "cannot load the apps from the cluster store at start");
                None
            }
            Err(_) => {
                tracing::warn!(store = %cluster.store.shown(), "the cluster store did not answer within {} s at start", START_TIMEOUT.as_secs());
                None
            }
        };
        let restored = self.restore().await?;
        match cached {
            Some(head) => {
                cluster.synced.store(head.seq, Ordering::SeqCst);
                metrics().cluster_revision.set(head.seq as i64);
                metrics().cluster_store_up.set(1);
                tracing::info!(store = %cluster.store.shown(), revision = head.seq, apps = restored.apps, "loaded the apps from the cluster store");
            }
            None => {
                cluster.up.store(false, Ordering::SeqCst);
                metrics().cluster_store_up.set(0);
                let note = if cluster.ever_synced() {
                    format!(
                        "the cluster store at {} was unreachable at start: serving the {} app(s) this replica last knew until it is back",
                        cluster.store.shown(),
                        restored.apps
                    )
                } else {
                    format!(
                        "the cluster store at {} was unreachable at start and this replica has never loaded the cluster's apps: not ready until it can",
                        cluster.store.shown()
                    )
                };
                tracing::warn!("{note}");
                cluster.set_note(Some(note));
            }
        }
        Ok(restored)
    }

    /// Write the store's records to the local cache (and fetch their
    /// components), removing cached records the store no longer has.
    async fn fill_cache(&self) -> Result<Head, AppError> {
        let cluster = self.clustered().ok_or_else(|| {
            AppError::Internal("filling the cluster cache in standalone mode".into())
        })?;
        let head = cluster.store.head().await?;
        if let Some(known) = cluster.known()
            && !head.id.is_empty()
            && head.id != known
        {
            tracing::warn!(store = %cluster.store.shown(), "the cluster store is not the one this replica last synced with: adopting its apps");
        }
        if head.id.is_empty() {
            // An empty store: this replica's cache (if any) seeds it.
            if cluster.known().is_some() {
                let state = self.state().clone();
                let records = blocking(move || Ok(state.load_records()?)).await?;
                let records: Vec<AppRecord> = records.into_iter().filter_map(Result::ok).collect();
                self.seed(&records).await?;
                return cluster.store.head().await.map_err(AppError::from);
            }
            let id = cluster.ensure_id(self.state()).await?;
            return Ok(Head { id, seq: 0 });
        }
        let snapshot = cluster.store.snapshot().await?;
        cluster.remember(self.state(), &snapshot.head.id).await;
        let state = self.state().clone();
        let mut keep = Vec::new();
        for entry in &snapshot.apps {
            let record = match record_of(&entry.name, entry.revision, &entry.record) {
                Ok(record) => record,
                Err(err) => {
                    tracing::error!(app = %entry.name, error = %err, "skipping an app the cluster store holds");
                    continue;
                }
            };
            if let Err(err) = self.fetch_components(&record).await {
                tracing::error!(app = %entry.name, error = %err, "cannot fetch the app's components from the cluster store");
            }
            keep.push(record.name.clone());
            let state = state.clone();
            blocking(move || Ok(state.save_record(&record)?)).await?;
        }
        let state = self.state().clone();
        blocking(move || {
            for record in state.load_records()? {
                let name = match record {
                    Ok(record) => record.name,
                    Err(_) => continue,
                };
                if !keep.contains(&name) {
                    state.remove_record(&name)?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(snapshot.head)
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
        if cluster.store.seed(&head, &apps).await? {
            tracing::warn!(store = %cluster.store.shown(), apps = apps.len(), revision = seq, "the cluster store had lost its data: put back the apps this replica serves");
        }
        Ok(())
    }

    /// Bring a store that is behind this replica (its revision `head.seq`
    /// is below `synced`: it lost its latest writes) up to what this
    /// replica serves.
    async fn repair(
        &self,
        head: &Head,
        synced: u64,
        records: &[AppRecord],
    ) -> Result<(), AppError> {
        let Some(cluster) = self.clustered() else {
            return Ok(());
        };
        let (apps, seq) = self.put_back(cluster, records, synced).await?;
        let target = Head {
            id: head.id.clone(),
            seq,
        };
        let put = cluster.store.repair(&target, &apps).await?;
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
        let head = match cluster.store.head().await {
            Ok(head) => head,
            Err(err) => {
                cluster.store_answered(false, Some(&err));
                return;
            }
        };
        cluster.store_answered(true, None);
        match cluster.known() {
            // A new cluster: this replica gives the store its id.
            None if head.id.is_empty() => {
                if let Err(err) = cluster.ensure_id(self.state()).await {
                    tracing::warn!(error = %err, "failed to set up the cluster store");
                }
                return;
            }
            _ if head.id.is_empty() => {
                let records: Vec<AppRecord> =
                    self.inner.lock().await.records.values().cloned().collect();
                if let Err(err) = self.seed(&records).await {
                    tracing::warn!(error = %err, "failed to put the apps back into the emptied cluster store");
                }
                return;
            }
            // A store emptied and given an id by a replica that knew
            // nothing: this one puts back what it serves.
            Some(known)
                if known != head.id && head.seq == 0 && self.serves_cluster_apps().await =>
            {
                let records: Vec<AppRecord> =
                    self.inner.lock().await.records.values().cloned().collect();
                if let Err(err) = self.seed(&records).await {
                    tracing::warn!(error = %err, "failed to put the apps back into the emptied cluster store");
                }
                return;
            }
            // A replica with nothing to lose takes the store as it is.
            Some(known)
                if known != head.id
                    && cluster.synced.load(Ordering::SeqCst) == 0
                    && !self.serves_cluster_apps().await =>
            {
                tracing::info!(store = %cluster.store.shown(), "adopting the cluster store's id");
                cluster.remember(self.state(), &head.id).await;
            }
            Some(known) if known != head.id => {
                let note = format!(
                    "the cluster store at {} holds another cluster's data (its id changed): this replica serves what it has and takes no changes from it; restart the replica to adopt it",
                    cluster.store.shown()
                );
                if cluster.note().as_deref() != Some(note.as_str()) {
                    tracing::error!("{note}");
                    cluster.set_note(Some(note));
                }
                return;
            }
            Some(_) => {}
            None => cluster.remember(self.state(), &head.id).await,
        }
        let synced = cluster.synced.load(Ordering::SeqCst);
        if head.seq < synced {
            // The store lost its latest writes (a Redis restarted from an
            // older snapshot): put back what this replica serves.
            let records: Vec<AppRecord> =
                self.inner.lock().await.records.values().cloned().collect();
            if let Err(err) = self.repair(&head, synced, &records).await {
                tracing::warn!(error = %err, "failed to bring the cluster store up to what this replica serves");
            }
            return;
        }
        if head.seq == synced {
            return;
        }
        let snapshot = match cluster.store.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(err) => {
                cluster.store_answered(false, Some(&err));
                return;
            }
        };
        if snapshot.head.id != head.id {
            return;
        }
        if self.apply(cluster, &snapshot).await {
            cluster.synced.store(snapshot.head.seq, Ordering::SeqCst);
            metrics().cluster_revision.set(snapshot.head.seq as i64);
        }
        cluster.beat.notify_one();
    }

    /// Apply `snapshot`; whether all of it is applied (or failed for
    /// good), so that the next scan need not look again.
    async fn apply(&self, cluster: &Clustered, snapshot: &Snapshot) -> bool {
        let local: HashMap<String, u64> = {
            let inner = self.inner.lock().await;
            inner
                .records
                .values()
                .chain(inner.failed.values().map(|f| &f.record))
                .map(|r| (r.name.clone(), r.revision.unwrap_or(0)))
                .collect()
        };
        let mut complete = true;
        for entry in &snapshot.apps {
            if local.get(&entry.name).copied().unwrap_or(0) >= entry.revision {
                continue;
            }
            if cluster
                .failed_at(&entry.name)
                .is_some_and(|f| f.revision == entry.revision)
            {
                continue;
            }
            match self
                .follow_one(&entry.name, entry.revision, &entry.record)
                .await
            {
                Ok(()) => {
                    metrics().cluster_applied("ok");
                    cluster.caught_up(&entry.name);
                }
                Err(err @ AppError::Unavailable(_)) => {
                    metrics().cluster_applied("retry");
                    tracing::warn!(app = %entry.name, revision = entry.revision, error = %err, "cannot apply a cluster change yet; retrying");
                    complete = false;
                }
                Err(err) => {
                    metrics().cluster_applied("failed");
                    tracing::error!(app = %entry.name, revision = entry.revision, error = %err, "cannot serve this revision here; the previous one (if any) keeps serving");
                    cluster.mark_behind(&entry.name, entry.revision, err.to_string());
                    self.fail_if_unserved(&entry.name, entry.revision, &entry.record, &err)
                        .await;
                }
            }
        }
        for (name, revision) in local {
            if revision == 0 || revision >= snapshot.head.seq {
                continue;
            }
            if snapshot.apps.iter().any(|e| e.name == name) {
                continue;
            }
            let change = Change::Follow {
                revision: snapshot.head.seq,
                next: None,
            };
            match self.commit(&name, change).await {
                Ok(_) => {
                    metrics().cluster_applied("ok");
                    cluster.caught_up(&name);
                    tracing::info!(app = %name, "removed (by another replica)");
                }
                Err(err) => {
                    tracing::error!(app = %name, error = %err, "failed to remove an app the cluster store no longer has");
                    complete = false;
                }
            }
        }
        complete
    }

    /// Serve app `name` at `revision` from its record in the store.
    async fn follow_one(&self, name: &str, revision: u64, json: &str) -> Result<(), AppError> {
        let record = record_of(name, revision, json)?;
        // The collector keeps what is fetched until the record naming it
        // is committed.
        let _storing: Vec<Storing> = record
            .digests()
            .map(|d| Storing::new(&self.storing, d))
            .collect();
        self.fetch_components(&record).await?;
        let serving = self.inner.lock().await.serving(name, &record);
        let served = self.provision.record(&record, serving, None).await?;
        let current = record.current.clone();
        self.commit(
            name,
            Change::Follow {
                revision,
                next: Some((record, served)),
            },
        )
        .await?;
        tracing::info!(app = name, version = %current, revision, "applied a change from the cluster");
        Ok(())
    }

    /// An app this replica does not serve at all, and cannot serve at
    /// `revision`: listed as failed here.
    async fn fail_if_unserved(&self, name: &str, revision: u64, json: &str, err: &AppError) {
        let served = self.inner.lock().await.records.contains_key(name);
        if served {
            return;
        }
        let Ok(record) = record_of(name, revision, json) else {
            return;
        };
        let reason = if err.is_host_failure() {
            "its files could not be read or used here; the replica's log says which and why"
                .to_string()
        } else {
            err.to_string()
        };
        let _ = self.commit(name, Change::Fail { record, reason }).await;
        self.publish_now().await;
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
            let behind = cluster.behind.lock().map(|b| b.clone()).unwrap_or_default();
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

    /// Can this replica take traffic, as far as the cluster goes? Not if
    /// it has never loaded the cluster's apps (it started with an empty
    /// cache while the store was down): it would answer 404 for all of
    /// them. It becomes ready once it has.
    pub fn cluster_ready(&self) -> bool {
        self.clustered().is_none_or(|c| c.ever_synced())
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
