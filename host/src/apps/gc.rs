//! The garbage collector of the state directory: components and compiled
//! code that no record names any more are removed in the background after
//! a change (never on the request path), and never while a record on disk
//! (served, failed or unreadable) or a deploy in progress may still name
//! them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::apps::compiler::blocking;
use crate::apps::records::AppRecord;
use crate::apps::registry::{Inner, Registry};

/// How long the garbage collector waits after a change before it runs, so a
/// burst of deploys costs one pass.
const GC_DELAY: Duration = Duration::from_millis(200);

impl Registry {
    /// One garbage-collection pass: delete stored components and cache
    /// entries that no record names. The directory listing happens without
    /// the lock; deletion re-checks under it.
    pub(crate) async fn collect_garbage(&self) {
        let live = |inner: &Inner, storing: &HashMap<String, usize>| -> Option<HashSet<String>> {
            if inner.unreadable > 0 || !inner.restored {
                return None;
            }
            Some(
                inner
                    .records
                    .values()
                    .chain(inner.failed.values().map(|f| &f.record))
                    .flat_map(AppRecord::digests)
                    .chain(inner.statics.values().map(|s| s.version.digest.as_str()))
                    .chain(storing.keys().map(String::as_str))
                    .map(str::to_string)
                    .collect(),
            )
        };
        let state = self.state().clone();
        let Ok(candidates) = blocking(move || Ok(state.stored_digests())).await else {
            return;
        };
        // Held until the files are gone: a deploy registers what it stores
        // under this lock, so it is either in `storing` now or comes after.
        let inner = self.inner.lock().await;
        let storing = self.storing.lock().map(|s| s.clone()).unwrap_or_default();
        let Some(live) = live(&inner, &storing) else {
            tracing::debug!("garbage collection skipped: an app record could not be read");
            return;
        };
        let doomed: Vec<String> = candidates
            .into_iter()
            .filter(|d| !live.contains(d))
            .collect();
        if doomed.is_empty() {
            return;
        }
        let state = self.state().clone();
        // Deleting under the lock: a deploy registers its digest in
        // `storing` before it stores it, so nothing it stores is removed.
        let removed = blocking(move || Ok(state.remove_digests(&doomed))).await;
        drop(inner);
        if let Ok(n) = removed {
            tracing::debug!(files = n, "removed unused components and compiled code");
        }
    }
}

/// Start `registry`'s collector: a task that runs a pass shortly after each
/// change, and ends with the registry.
pub(crate) fn start(registry: &Arc<Registry>) {
    collector(Arc::downgrade(registry), registry.collect.clone());
}

fn collector(registry: std::sync::Weak<Registry>, wake: Arc<Notify>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            wake.notified().await;
            tokio::time::sleep(GC_DELAY).await;
            let Some(registry) = registry.upgrade() else {
                return;
            };
            registry.collect_garbage().await;
        }
    });
}
