//! The one door to the key-value store: the host opens its backend once
//! ([`KvService::embedded`] or [`KvService::redis`]) and every caller (the
//! guests' `wasi:keyvalue`, the admin API, the metrics) goes through
//! [`KvService::run`], which runs the blocking backend call on the blocking
//! pool, stops waiting at the caller's deadline and counts the operation in
//! the metrics by app, operation and result.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::kv::embedded::Embedded;
use crate::kv::redis::Redis;
use crate::kv::{Backend, KvError, KvLimits, Usage};
use crate::metrics::metrics;

/// The host's key-value store, shared by every app (each in its own
/// namespace). Cheap to clone.
#[derive(Clone)]
pub struct KvService {
    backend: Arc<dyn Backend>,
    /// `embedded` or `redis`, for metrics and logs.
    kind: &'static str,
    /// Where it is, without credentials.
    shown: Arc<str>,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("kind", &self.kind)
            .field("shown", &self.shown)
            .finish()
    }
}

impl KvService {
    /// The embedded store in the file `path` (created if missing).
    pub fn embedded(path: &Path, limits: KvLimits) -> Result<KvService, KvError> {
        Ok(KvService {
            backend: Arc::new(Embedded::open(path, limits)?),
            kind: "embedded",
            shown: path.display().to_string().into(),
        })
    }

    /// The Redis at `url`; nothing connects until the first operation, so
    /// a Redis that is down does not stop the host from starting.
    pub fn redis(url: &str, limits: KvLimits) -> Result<KvService, KvError> {
        let redis = Redis::open(url, limits)?;
        let shown = redis.shown().into();
        Ok(KvService {
            backend: Arc::new(redis),
            kind: "redis",
            shown,
        })
    }

    pub fn limits(&self) -> &KvLimits {
        self.backend.limits()
    }

    /// `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Where the store is (a file, or a Redis URL without credentials).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Run `call` on the backend for `app` off the async threads, waiting
    /// no later than `deadline`; counted as operation `op`.
    pub async fn run<T: Send + 'static>(
        &self,
        app: &str,
        op: &'static str,
        deadline: Option<Instant>,
        call: impl FnOnce(&dyn Backend) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let backend = self.backend.clone();
        let kind = self.kind;
        let work = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let out = call(&*backend);
            metrics().kv_time(kind, op, started.elapsed());
            out
        });
        // `None`: the deadline passed first.
        let joined = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), work).await.ok(),
            None => Some(work.await),
        };
        let out = match joined {
            Some(Ok(out)) => out,
            Some(Err(_)) => Err(KvError::Backend(format!(
                "the key-value {op} stopped before it finished"
            ))),
            None => Err(KvError::Timeout(format!(
                "the request's deadline passed during key-value {op}"
            ))),
        };
        let result = match &out {
            Ok(_) => "ok",
            Err(err) => err.kind(),
        };
        metrics().kv_operation(app, op, result);
        out
    }

    /// What `app` holds, also set in the `kv_keys`/`kv_bytes` gauges.
    pub async fn usage(&self, app: &str) -> Result<Usage, KvError> {
        let name = app.to_string();
        let usage = self
            .run(app, "admin_usage", None, move |kv| kv.usage(&name))
            .await?;
        metrics().kv_usage(app, usage.keys, usage.bytes);
        Ok(usage)
    }

    /// Delete everything `app` holds (when the app is removed); what it
    /// held.
    pub async fn delete_app(&self, app: &str) -> Result<Usage, KvError> {
        let name = app.to_string();
        let usage = self
            .run(app, "admin_delete_app", None, move |kv| {
                kv.delete_app(&name)
            })
            .await?;
        metrics().kv_forget(app);
        Ok(usage)
    }
}
