//! What a registry keeps in cluster mode, apart from the registry itself:
//! the store, this replica's name, the store's id and revision it has
//! caught up with, what it could not serve, whether the store answers, and
//! the signals between the follower's tasks ([`crate::apps::follow`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use crate::apps::compiler::blocking;
use crate::apps::provision::Served;
use crate::apps::records::AppRecord;
use crate::apps::state_dir::StateDir;
use crate::cluster::replicas::Failed;
use crate::cluster::{ClusterError, ClusterStore};
use crate::metrics::metrics;

/// The longest wait before a replica tries again a revision it could not
/// serve.
const RETRY_MAX: Duration = Duration::from_secs(60);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One app's change from the store, ready to swap in: its record and what
/// serves it, or its removal.
pub(crate) enum Followed {
    Save(Box<(AppRecord, Served)>),
    Remove,
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
    /// Apps whose newest revision this replica could not serve (yet), and
    /// when it tries again: after 1 s, doubling to [`RETRY_MAX`].
    pub(crate) behind: Mutex<BTreeMap<String, (Failed, Instant, Duration)>>,
    /// Has this replica loaded the cluster's apps (at start from the store,
    /// or from a cache of an earlier run while the store was down)? Until
    /// then it is not ready.
    pub(crate) loaded: AtomicBool,
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
            loaded: AtomicBool::new(false),
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

    /// Has this replica loaded the cluster's apps? One that never has
    /// serves nothing it should.
    pub(crate) fn loaded(&self) -> bool {
        self.loaded.load(Ordering::SeqCst)
    }

    /// What `/readyz` should say about the store.
    pub(crate) fn note(&self) -> Option<String> {
        self.note.lock().ok().and_then(|n| n.clone())
    }

    /// A call to the store failed: if it could not be reached, the store
    /// is down (logged and counted once, until it answers again).
    pub(crate) fn store_failed(&self, error: &ClusterError) {
        if !matches!(error, ClusterError::Unavailable(_)) {
            return;
        }
        metrics().cluster_store_up.set(0);
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::error!(store = %self.store.shown(), %error, "the cluster store is unreachable: every replica keeps serving what it has; admin changes answer 503 until it is back");
            // `/readyz` is open to anyone: the store's address is for the
            // log only.
            self.set_note(Some(
                "the cluster store is unreachable: serving what this replica has; admin changes answer 503"
                    .to_string(),
            ));
        }
    }

    /// A call to the store succeeded: if it was down, it is back.
    pub(crate) fn store_ok(&self) {
        metrics().cluster_store_up.set(1);
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!(store = %self.store.shown(), "the cluster store is reachable again; catching up");
            self.set_note(None);
            self.resubscribe.notify_one();
        }
    }

    /// Revision `revision` of `app` could not be served here: say why,
    /// and try again later (sooner for a newer revision).
    pub(crate) fn mark_behind(&self, app: &str, revision: u64, reason: String) {
        if let Ok(mut behind) = self.behind.lock() {
            let wait = match behind.get(app) {
                Some((failed, _, wait)) if failed.revision == revision => {
                    (*wait * 2).min(RETRY_MAX)
                }
                _ => Duration::from_secs(1),
            };
            behind.insert(
                app.to_string(),
                (Failed { revision, reason }, Instant::now() + wait, wait),
            );
        }
    }

    /// `app` is served at its latest revision here (or gone).
    pub(crate) fn caught_up(&self, app: &str) {
        if let Ok(mut behind) = self.behind.lock() {
            behind.remove(app);
        }
    }

    /// Is it too early to try `revision` of `app` again?
    pub(crate) fn backing_off(&self, app: &str, revision: u64) -> bool {
        self.behind.lock().is_ok_and(|behind| {
            behind
                .get(app)
                .is_some_and(|(f, at, _)| f.revision == revision && Instant::now() < *at)
        })
    }

    /// Is a revision this replica could not serve due to be tried again?
    pub(crate) fn retry_due(&self) -> bool {
        let now = Instant::now();
        self.behind
            .lock()
            .is_ok_and(|behind| behind.values().any(|(_, at, _)| *at <= now))
    }

    /// What this replica could not serve, by app.
    pub(crate) fn failures(&self) -> BTreeMap<String, Failed> {
        self.behind
            .lock()
            .map(|b| {
                b.iter()
                    .map(|(k, (f, _, _))| (k.clone(), f.clone()))
                    .collect()
            })
            .unwrap_or_default()
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
