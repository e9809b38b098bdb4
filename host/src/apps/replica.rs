//! What a registry keeps in cluster mode, apart from the registry itself:
//! the store, this replica's name, the store's id and revision it has
//! caught up with, what it could not serve, whether the store answers, and
//! the signals between the follower's tasks ([`crate::apps::follow`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::apps::compiler::blocking;
use crate::apps::state_dir::StateDir;
use crate::cluster::replicas::Failed;
use crate::cluster::{ClusterError, ClusterStore};
use crate::metrics::metrics;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What cluster mode needs from the command line.
#[derive(Clone)]
pub struct ClusterSetup {
    pub store: Arc<ClusterStore>,
    /// This replica's id in heartbeats.
    pub replica: String,
    /// Its admin API, for the heartbeat.
    pub admin: String,
}

impl std::fmt::Debug for ClusterSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSetup")
            .field("store", &self.store.shown())
            .field("replica", &self.replica)
            .finish()
    }
}

/// A registry's cluster state.
pub(crate) struct Clustered {
    pub(crate) store: Arc<ClusterStore>,
    pub(crate) replica: String,
    pub(crate) admin: String,
    pub(crate) started_at: u64,
    /// The store id this replica synced with (kept in the local cache).
    pub(crate) known: Mutex<Option<String>>,
    /// The store's revision this replica has applied everything up to.
    pub(crate) synced: AtomicU64,
    /// Apps whose newest revision this replica could not serve.
    pub(crate) behind: Mutex<BTreeMap<String, Failed>>,
    /// Did the last call to the store succeed?
    pub(crate) up: AtomicBool,
    /// What `/readyz` says about the store, if anything is wrong.
    pub(crate) note: Mutex<Option<String>>,
    /// Wakes the follower (an announcement, a change made here).
    pub(crate) wake: Arc<Notify>,
    /// Wakes the heartbeat (something changed here).
    pub(crate) beat: Notify,
    /// Makes the subscription again (the store came back).
    pub(crate) resubscribe: Arc<Notify>,
    /// One sync at a time.
    pub(crate) syncing: tokio::sync::Mutex<()>,
}

impl Clustered {
    pub(crate) fn new(setup: ClusterSetup, known: Option<String>) -> Clustered {
        Clustered {
            store: setup.store,
            replica: setup.replica,
            admin: setup.admin,
            started_at: now_secs(),
            known: Mutex::new(known),
            synced: AtomicU64::new(0),
            behind: Mutex::new(BTreeMap::new()),
            up: AtomicBool::new(true),
            note: Mutex::new(None),
            wake: Arc::new(Notify::new()),
            beat: Notify::new(),
            resubscribe: Arc::new(Notify::new()),
            syncing: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn known(&self) -> Option<String> {
        self.known.lock().ok().and_then(|k| k.clone())
    }

    pub(crate) fn set_note(&self, note: Option<String>) {
        if let Ok(mut now) = self.note.lock() {
            *now = note;
        }
    }

    /// Has this replica ever loaded the cluster's apps (or found its store
    /// new)? A replica that never has serves nothing it should.
    pub(crate) fn ever_synced(&self) -> bool {
        self.known().is_some()
    }

    /// What `/readyz` should say about the store.
    pub(crate) fn note(&self) -> Option<String> {
        self.note.lock().ok().and_then(|n| n.clone())
    }

    /// The store answered (`true`) or not: log and count each change.
    pub(crate) fn store_answered(&self, up: bool, error: Option<&ClusterError>) {
        let was = self.up.swap(up, Ordering::SeqCst);
        metrics().cluster_store_up.set(i64::from(up));
        match (was, up) {
            (true, false) => {
                tracing::error!(store = %self.store.shown(), error = ?error.map(ToString::to_string), "the cluster store is unreachable: every replica keeps serving what it has; admin changes answer 503 until it is back");
                self.set_note(Some(format!(
                    "the cluster store at {} is unreachable: serving what this replica has; admin changes answer 503",
                    self.store.shown()
                )));
            }
            (false, true) => {
                tracing::info!(store = %self.store.shown(), "the cluster store is reachable again; catching up");
                self.set_note(None);
                self.resubscribe.notify_one();
            }
            _ => {}
        }
    }

    pub(crate) fn mark_behind(&self, app: &str, revision: u64, reason: String) {
        if let Ok(mut behind) = self.behind.lock() {
            behind.insert(app.to_string(), Failed { revision, reason });
        }
    }

    pub(crate) fn caught_up(&self, app: &str) {
        if let Ok(mut behind) = self.behind.lock() {
            behind.remove(app);
        }
    }

    pub(crate) fn failed_at(&self, app: &str) -> Option<Failed> {
        self.behind.lock().ok()?.get(app).cloned()
    }

    /// The store's id, adopting one (an empty store gets a new one, or the
    /// one this replica knew) when this replica knows none yet.
    pub(crate) async fn ensure_id(&self, state: &Arc<StateDir>) -> Result<String, ClusterError> {
        if let Some(id) = self.known() {
            return Ok(id);
        }
        let fresh = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let head = self.store.adopt(&fresh).await?;
        self.remember(state, &head.id).await;
        Ok(head.id)
    }

    pub(crate) async fn remember(&self, state: &Arc<StateDir>, id: &str) {
        if let Ok(mut known) = self.known.lock() {
            *known = Some(id.to_string());
        }
        let state = state.clone();
        let id = id.to_string();
        if let Err(err) = blocking(move || Ok(state.save_store_id(&id)?)).await {
            tracing::warn!(error = %err, "failed to keep the cluster store's id in the state directory");
        }
    }
}
