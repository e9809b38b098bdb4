//! The one door to the key-value store: the host opens its backend once
//! ([`KvService::embedded`] or [`KvService::redis`]) and every caller (the
//! guests' `wasi:keyvalue`, the admin API, the metrics) calls its typed
//! operations, which stop waiting at the caller's deadline and count each
//! operation in the metrics by app, operation and result.
//!
//! Where an operation runs depends on the backend, so that none blocks an
//! async thread for long and none pays for a thread hop it does not need:
//! on the embedded store a single-key read runs where it is called (a
//! snapshot read from cached pages, microseconds), a read of many keys (a
//! page of keys, a batch) on the blocking pool, and a write is queued to
//! its writer thread and awaited (group commit); on Redis every call is sent on
//! one shared async connection, pipelined with the others.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::kv::embedded::Embedded;
use crate::kv::redis::Redis;
use crate::kv::{Bucket, KeyPage, KvError, KvLimits, Usage};
use crate::metrics::metrics;

type Result<T, E = KvError> = std::result::Result<T, E>;

#[derive(Clone)]
enum Store {
    Embedded(Arc<Embedded>),
    Redis(Arc<Redis>),
}

/// The host's key-value store, shared by every app (each in its own
/// namespace). Cheap to clone.
#[derive(Clone)]
pub struct KvService {
    store: Store,
    /// Where it is, without credentials.
    shown: Arc<str>,
}

impl std::fmt::Debug for KvService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvService")
            .field("kind", &self.kind())
            .field("shown", &self.shown)
            .finish()
    }
}

impl KvService {
    /// The embedded store in the file `path` (created if missing).
    pub fn embedded(path: &Path, limits: KvLimits) -> Result<KvService> {
        Ok(KvService {
            store: Store::Embedded(Arc::new(Embedded::open(path, limits)?)),
            shown: path.display().to_string().into(),
        })
    }

    /// The Redis at `url`; nothing connects until the first operation, so
    /// a Redis that is down does not stop the host from starting.
    pub fn redis(url: &str, limits: KvLimits) -> Result<KvService> {
        let redis = Redis::open(url, limits)?;
        let shown = redis.shown().into();
        Ok(KvService {
            store: Store::Redis(Arc::new(redis)),
            shown,
        })
    }

    pub fn limits(&self) -> &KvLimits {
        match &self.store {
            Store::Embedded(kv) => kv.limits(),
            Store::Redis(kv) => kv.limits(),
        }
    }

    /// `embedded` or `redis`.
    pub fn kind(&self) -> &'static str {
        match &self.store {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    /// Where the store is (a file, or a Redis URL without credentials).
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Run `work` as operation `op` of `app`: no later than `deadline`,
    /// timed and counted.
    async fn timed<T>(
        &self,
        app: &str,
        op: &'static str,
        deadline: Option<Instant>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let started = Instant::now();
        let out = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), work)
                .await
                .unwrap_or_else(|_| {
                    Err(KvError::Timeout(format!(
                        "the request's deadline passed during key-value {op}"
                    )))
                }),
            None => work.await,
        };
        metrics().kv_time(self.kind(), op, started.elapsed());
        let result = match &out {
            Ok(_) => "ok",
            Err(err) => err.kind(),
        };
        metrics().kv_operation(app, op, result);
        out
    }

    pub async fn get(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
    ) -> Result<Option<Vec<u8>>> {
        self.timed(&bucket.app, op, deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.get(&bucket, &key),
                Store::Redis(kv) => kv.get(&bucket, &key).await,
            }
        })
        .await
    }

    pub async fn exists(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
    ) -> Result<bool> {
        self.timed(&bucket.app, "exists", deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.exists(&bucket, &key),
                Store::Redis(kv) => kv.exists(&bucket, &key).await,
            }
        })
        .await
    }

    pub async fn list_keys(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        bucket: Bucket,
        prefix: String,
        cursor: Option<String>,
    ) -> Result<KeyPage> {
        let app = bucket.app.clone();
        self.timed(&app, op, deadline, async {
            match &self.store {
                Store::Embedded(kv) => {
                    blocking(kv, move |kv| {
                        kv.list_keys(&bucket, &prefix, cursor.as_deref())
                    })
                    .await
                }
                Store::Redis(kv) => kv.list_keys(&bucket, &prefix, cursor.as_deref()).await,
            }
        })
        .await
    }

    pub async fn get_many(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let app = bucket.app.clone();
        self.timed(&app, "get_many", deadline, async {
            match &self.store {
                Store::Embedded(kv) => blocking(kv, move |kv| kv.get_many(&bucket, &keys)).await,
                Store::Redis(kv) => kv.get_many(&bucket, &keys).await,
            }
        })
        .await
    }

    pub async fn set(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
        value: Vec<u8>,
    ) -> Result<()> {
        self.timed(&bucket.app, op, deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.set_pending(&bucket, &key, &value)?.done().await,
                Store::Redis(kv) => kv.set(&bucket, &key, &value).await,
            }
        })
        .await
    }

    pub async fn delete(
        &self,
        op: &'static str,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
    ) -> Result<()> {
        self.timed(&bucket.app, op, deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.delete_pending(&bucket, &key)?.done().await,
                Store::Redis(kv) => kv.delete(&bucket, &key).await,
            }
        })
        .await
    }

    pub async fn increment(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
        delta: i64,
    ) -> Result<i64> {
        self.timed(&bucket.app, "increment", deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.increment_pending(&bucket, &key, delta)?.done().await,
                Store::Redis(kv) => kv.increment(&bucket, &key, delta).await,
            }
        })
        .await
    }

    /// Set `key` to `value` if it still holds `expected`.
    pub async fn swap(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool> {
        let expected = expected.as_deref();
        self.timed(&bucket.app, "swap", deadline, async {
            match &self.store {
                Store::Embedded(kv) => {
                    kv.swap_pending(&bucket, &key, expected, &value)?
                        .done()
                        .await
                }
                Store::Redis(kv) => kv.swap(&bucket, &key, expected, &value).await,
            }
        })
        .await
    }

    pub async fn set_many(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        self.timed(&bucket.app, "set_many", deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.set_many_pending(&bucket, &pairs)?.done().await,
                Store::Redis(kv) => kv.set_many(&bucket, &pairs).await,
            }
        })
        .await
    }

    pub async fn delete_many(
        &self,
        deadline: Option<Instant>,
        bucket: Bucket,
        keys: Vec<String>,
    ) -> Result<()> {
        self.timed(&bucket.app, "delete_many", deadline, async {
            match &self.store {
                Store::Embedded(kv) => kv.delete_many_pending(&bucket, &keys)?.done().await,
                Store::Redis(kv) => kv.delete_many(&bucket, &keys).await,
            }
        })
        .await
    }

    /// What `app` holds, also set in the `kv_keys`/`kv_bytes` gauges.
    pub async fn usage(&self, app: &str) -> Result<Usage> {
        let usage = self
            .timed(app, "admin_usage", None, async {
                match &self.store {
                    Store::Embedded(kv) => kv.usage(app),
                    Store::Redis(kv) => kv.usage(app).await,
                }
            })
            .await?;
        metrics().kv_usage(app, usage.keys, usage.bytes);
        Ok(usage)
    }

    /// Delete everything `app` holds (when the app is removed); what it
    /// held.
    pub async fn delete_app(&self, app: &str) -> Result<Usage> {
        let usage = self
            .timed(app, "admin_delete_app", None, async {
                match &self.store {
                    Store::Embedded(kv) => kv.delete_app_pending(app)?.done().await,
                    Store::Redis(kv) => kv.delete_app(app).await,
                }
            })
            .await?;
        metrics().kv_forget(app);
        Ok(usage)
    }
}

/// Run a read that may touch many pages (a page of keys, a batch of up to
/// 4 MiB) on the blocking pool, so that a cold cache reading the disk does
/// not hold an async thread.
async fn blocking<T: Send + 'static>(
    kv: &Arc<Embedded>,
    read: impl FnOnce(&Embedded) -> Result<T> + Send + 'static,
) -> Result<T> {
    let kv = kv.clone();
    tokio::task::spawn_blocking(move || read(&kv))
        .await
        .unwrap_or_else(|_| {
            Err(KvError::Backend(
                "a key-value read stopped before it finished".into(),
            ))
        })
}
