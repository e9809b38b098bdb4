//! `wasi:keyvalue` for guests: both versions apps are built against,
//! [`draft2`] (`wasi:keyvalue@0.2.0-draft2`, Spin's) and [`draft`]
//! (`@0.2.0-draft`, wasmtime's and wasmCloud's), served by the same
//! operations here on the host's [`KvService`].
//!
//! What a guest may do is decided here, per instance ([`KvCtx`]):
//!
//! - it opens only the stores its version's settings declare
//!   (`key_value`); an undeclared one is `access-denied`, a name no app
//!   could declare is `no-such-store`. The empty identifier (wasmtime's
//!   default store) is the store `default`. Whatever it opens, it reaches
//!   only its own app's namespace ([`Bucket`]).
//! - each request may make `--kv-max-ops-per-request` operations (a batch
//!   counts one per key);
//! - each call waits no later than the request's deadline;
//! - CAS handles keep the value they read, at most [`KV_HELD_BYTES`] per
//!   instance, reserved from the guest memory budget with the instance.
//!
//! Every failure reaches the guest as the interface's `error`: limits and
//! backend failures as `other(...)` with a message that says which.

/// What both versions' bindings share, expanded in [`draft`] and
/// [`draft2`] on their own generated `store`, `atomics` and `batch`
/// modules: the linker entry, `store` (`open`, errors), the bucket's
/// methods but `list-keys` (given, as its cursors differ), and `batch`.
macro_rules! shared_host_impls {
    ($($list_keys:tt)*) => {
        struct Kv;

        impl HasData for Kv {
            type Data<'a> = KvView<'a>;
        }

        /// Add the three interfaces to `linker`.
        pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
            store::add_to_linker::<_, Kv>(linker, HostState::kv)?;
            atomics::add_to_linker::<_, Kv>(linker, HostState::kv)?;
            batch::add_to_linker::<_, Kv>(linker, HostState::kv)?;
            Ok(())
        }

        impl store::Host for KvView<'_> {
            async fn open(&mut self, identifier: String) -> Result<Resource<KvBucket>> {
                KvView::open(self, &identifier)
            }

            fn convert_error(&mut self, err: GuestKvError) -> wasmtime::Result<store::Error> {
                Ok(match err {
                    GuestKvError::NoSuchStore => store::Error::NoSuchStore,
                    GuestKvError::AccessDenied => store::Error::AccessDenied,
                    GuestKvError::Other(message) => store::Error::Other(message),
                })
            }
        }

        impl store::HostBucket for KvView<'_> {
            async fn get(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<Option<Vec<u8>>> {
                KvView::get(self, &bucket, key).await
            }

            async fn set(&mut self, bucket: Resource<KvBucket>, key: String, value: Vec<u8>) -> Result<()> {
                KvView::set(self, &bucket, key, value).await
            }

            async fn delete(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<()> {
                KvView::delete(self, &bucket, key).await
            }

            async fn exists(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<bool> {
                KvView::exists(self, &bucket, key).await
            }

            async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
                self.close(bucket)
            }

            $($list_keys)*
        }

        impl batch::Host for KvView<'_> {
            async fn get_many(
                &mut self,
                bucket: Resource<KvBucket>,
                keys: Vec<String>,
            ) -> Result<Vec<Option<(String, Vec<u8>)>>> {
                KvView::get_many(self, &bucket, keys).await
            }

            async fn set_many(
                &mut self,
                bucket: Resource<KvBucket>,
                key_values: Vec<(String, Vec<u8>)>,
            ) -> Result<()> {
                KvView::set_many(self, &bucket, key_values).await
            }

            async fn delete_many(&mut self, bucket: Resource<KvBucket>, keys: Vec<String>) -> Result<()> {
                KvView::delete_many(self, &bucket, keys).await
            }
        }
    };
}

pub mod draft;
pub mod draft2;

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Resource, ResourceTable, ResourceTableError};

use crate::kv::service::KvService;
use crate::kv::{Bucket, KeyPage, KvError, validate_store_name};
use crate::metrics::metrics;

/// Bytes of values all CAS handles of one instance may hold at once: the
/// largest value `--kv-max-value-bytes` allows.
pub const KV_HELD_BYTES: u64 = 2 << 20;

/// Numeric list cursors (`@0.2.0-draft`) one instance keeps: a page of
/// 1000 keys each, so enough to list 1000 × 1000 keys in one request.
const MAX_CURSORS: usize = 1000;

/// The store every identifier-less `open("")` means.
pub const DEFAULT_STORE: &str = "default";

/// What one version's instances may reach in the key-value store.
pub struct KvAccess {
    app: Arc<str>,
    /// The host's store; `None` when the version declares no stores.
    service: Option<KvService>,
    /// The stores its settings declare.
    stores: Vec<String>,
    /// Operations one request may make.
    max_ops: u32,
}

impl KvAccess {
    /// No key-value access (apps that declare no store; tests, benches).
    pub fn none(app: &Arc<str>) -> KvAccess {
        KvAccess {
            app: app.clone(),
            service: None,
            stores: Vec::new(),
            max_ops: 0,
        }
    }

    /// Access to `stores` of `app` in `service`, `max_ops` per request.
    pub(crate) fn new(
        app: &Arc<str>,
        service: KvService,
        stores: Vec<String>,
        max_ops: u32,
    ) -> KvAccess {
        KvAccess {
            app: app.clone(),
            service: (!stores.is_empty()).then_some(service),
            stores,
            max_ops,
        }
    }

    /// What an instance reserves from the guest memory budget for the
    /// values its CAS handles hold.
    pub fn reserve(&self) -> u64 {
        if self.service.is_some() {
            KV_HELD_BYTES
        } else {
            0
        }
    }
}

/// The per-instance key-value state.
pub struct KvCtx {
    access: Arc<KvAccess>,
    /// Operations the current request has made.
    ops: u32,
    /// Bytes the instance's CAS handles hold.
    held: u64,
    /// `wasi:keyvalue@0.2.0-draft`'s numeric cursors: cursor `n` resumes
    /// after `cursors[n - 1]`.
    cursors: Vec<String>,
    /// An undeclared store was opened and logged: once per instance.
    warned: bool,
}

impl KvCtx {
    pub fn new(access: Arc<KvAccess>) -> KvCtx {
        KvCtx {
            access,
            ops: 0,
            held: 0,
            cursors: Vec::new(),
            warned: false,
        }
    }

    /// A new request on this instance, after the last one ended: its own
    /// operation budget; the last one's cursors are forgotten.
    pub fn begin(&mut self) {
        self.ops = 0;
        self.cursors.clear();
    }

    /// Another request joins those running on a shared instance: the
    /// instance's budget grows by one request's worth.
    pub fn another_request(&mut self) {
        self.ops = self.ops.saturating_sub(self.access.max_ops);
    }
}

/// An open store: the app's namespace for it.
pub struct KvBucket {
    bucket: Bucket,
}

/// A compare-and-swap in progress (`wasi:keyvalue@0.2.0-draft2`): the key
/// and the value it held when read.
pub struct KvCas {
    bucket: Bucket,
    key: String,
    current: Option<Vec<u8>>,
}

/// `wasi:keyvalue/store.error`, for both versions.
#[derive(Debug, thiserror::Error)]
pub enum GuestKvError {
    #[error("no such store")]
    NoSuchStore,
    #[error("access denied")]
    AccessDenied,
    #[error("{0}")]
    Other(String),
}

impl From<KvError> for GuestKvError {
    fn from(err: KvError) -> Self {
        GuestKvError::Other(err.to_string())
    }
}

impl From<ResourceTableError> for GuestKvError {
    fn from(err: ResourceTableError) -> Self {
        GuestKvError::Other(match err {
            ResourceTableError::Full => {
                "the instance holds too many resources (--max-guest-resources)".to_string()
            }
            other => other.to_string(),
        })
    }
}

type KvResult<T> = Result<T, GuestKvError>;

/// The key-value view of an instance's state, for the linker.
pub struct KvView<'a> {
    pub ctx: &'a mut KvCtx,
    pub table: &'a mut ResourceTable,
    pub deadline: Instant,
}

impl KvView<'_> {
    fn count(&mut self, op: &'static str, n: usize) -> KvResult<()> {
        let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        let max = self.ctx.access.max_ops;
        if self.ctx.ops.saturating_add(n) > max {
            metrics().kv_operation(&self.ctx.access.app, op, "limit");
            return Err(GuestKvError::Other(format!(
                "this request has made its {max} key-value operations, the limit per request (--kv-max-ops-per-request)"
            )));
        }
        self.ctx.ops += n;
        Ok(())
    }

    /// The store, for operation `op` of this request (counting `n`
    /// operations), and the request's deadline.
    fn store(&mut self, op: &'static str, n: usize) -> KvResult<(KvService, Option<Instant>)> {
        self.count(op, n)?;
        match &self.ctx.access.service {
            Some(service) => Ok((service.clone(), Some(self.deadline))),
            None => Err(GuestKvError::AccessDenied),
        }
    }

    fn bucket(&self, bucket: &Resource<KvBucket>) -> KvResult<Bucket> {
        Ok(self.table.get(bucket)?.bucket.clone())
    }

    pub fn open(&mut self, identifier: &str) -> KvResult<Resource<KvBucket>> {
        self.count("open", 1)?;
        let access = &self.ctx.access;
        let store = if identifier.is_empty() {
            DEFAULT_STORE
        } else {
            identifier
        };
        let result = if validate_store_name(store).is_err() {
            Err(GuestKvError::NoSuchStore)
        } else if access.service.is_none() || !access.stores.iter().any(|s| s == store) {
            if !std::mem::replace(&mut self.ctx.warned, true) {
                tracing::warn!(
                    app = %access.app,
                    store,
                    "the app opened a key-value store its settings do not declare (key_value); access denied"
                );
            }
            Err(GuestKvError::AccessDenied)
        } else {
            Ok(Bucket::new(&access.app, store))
        };
        let word = match &result {
            Ok(_) => "ok",
            Err(GuestKvError::NoSuchStore) => "invalid",
            Err(_) => "denied",
        };
        metrics().kv_operation(&access.app, "open", word);
        let bucket = result?;
        Ok(self.table.push(KvBucket { bucket })?)
    }

    pub fn close(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }

    pub async fn get(
        &mut self,
        bucket: &Resource<KvBucket>,
        key: String,
    ) -> KvResult<Option<Vec<u8>>> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("get", 1)?;
        Ok(kv.get("get", deadline, bucket, key).await?)
    }

    pub async fn set(
        &mut self,
        bucket: &Resource<KvBucket>,
        key: String,
        value: Vec<u8>,
    ) -> KvResult<()> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("set", 1)?;
        Ok(kv.set("set", deadline, bucket, key, value).await?)
    }

    pub async fn delete(&mut self, bucket: &Resource<KvBucket>, key: String) -> KvResult<()> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("delete", 1)?;
        Ok(kv.delete("delete", deadline, bucket, key).await?)
    }

    pub async fn exists(&mut self, bucket: &Resource<KvBucket>, key: String) -> KvResult<bool> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("exists", 1)?;
        Ok(kv.exists(deadline, bucket, key).await?)
    }

    pub async fn list_keys(
        &mut self,
        bucket: &Resource<KvBucket>,
        cursor: Option<String>,
    ) -> KvResult<KeyPage> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("list_keys", 1)?;
        Ok(kv
            .list_keys("list_keys", deadline, bucket, String::new(), cursor)
            .await?)
    }

    /// A numeric cursor (`@0.2.0-draft`) for the string one `cursor`: the
    /// same number for the same cursor; at most [`MAX_CURSORS`] kept.
    fn number_cursor(&mut self, cursor: Option<String>) -> KvResult<Option<u64>> {
        let Some(cursor) = cursor else {
            return Ok(None);
        };
        let cursors = &mut self.ctx.cursors;
        let index = match cursors.iter().position(|c| *c == cursor) {
            Some(index) => index,
            None if cursors.len() < MAX_CURSORS => {
                cursors.push(cursor);
                cursors.len() - 1
            }
            None => {
                return Err(GuestKvError::Other(format!(
                    "this request has {MAX_CURSORS} list-keys cursors open, the most an instance keeps"
                )));
            }
        };
        Ok(Some(index as u64 + 1))
    }

    /// The string cursor numeric cursor `n` stands for.
    fn string_cursor(&self, n: Option<u64>) -> KvResult<Option<String>> {
        let Some(n) = n else { return Ok(None) };
        usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| self.ctx.cursors.get(i))
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                GuestKvError::Other(format!(
                    "cursor {n} was not returned by list-keys in this instance"
                ))
            })
    }

    pub async fn increment(
        &mut self,
        bucket: &Resource<KvBucket>,
        key: String,
        delta: i64,
    ) -> KvResult<i64> {
        let bucket = self.bucket(bucket)?;
        let (kv, deadline) = self.store("increment", 1)?;
        Ok(kv.increment(deadline, bucket, key, delta).await?)
    }

    pub async fn get_many(
        &mut self,
        bucket: &Resource<KvBucket>,
        keys: Vec<String>,
    ) -> KvResult<Vec<Option<(String, Vec<u8>)>>> {
        let bucket = self.bucket(bucket)?;
        let n = keys.len();
        let (kv, deadline) = self.store("get_many", n)?;
        let values = kv.get_many(deadline, bucket, keys.clone()).await?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|v| (key, v)))
            .collect())
    }

    pub async fn set_many(
        &mut self,
        bucket: &Resource<KvBucket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> KvResult<()> {
        let bucket = self.bucket(bucket)?;
        let n = pairs.len();
        let (kv, deadline) = self.store("set_many", n)?;
        Ok(kv.set_many(deadline, bucket, pairs).await?)
    }

    pub async fn delete_many(
        &mut self,
        bucket: &Resource<KvBucket>,
        keys: Vec<String>,
    ) -> KvResult<()> {
        let bucket = self.bucket(bucket)?;
        let n = keys.len();
        let (kv, deadline) = self.store("delete_many", n)?;
        Ok(kv.delete_many(deadline, bucket, keys).await?)
    }

    /// Start a compare-and-swap on `key`: read what it holds now.
    pub async fn cas_new(
        &mut self,
        bucket: &Resource<KvBucket>,
        key: String,
    ) -> KvResult<Resource<KvCas>> {
        let bucket = self.bucket(bucket)?;
        self.read_cas(bucket, key).await
    }

    async fn read_cas(&mut self, bucket: Bucket, key: String) -> KvResult<Resource<KvCas>> {
        let (kv, deadline) = self.store("cas", 1)?;
        let current = kv.get("cas", deadline, bucket.clone(), key.clone()).await?;
        let size = current.as_ref().map_or(0, |v| v.len() as u64);
        if self.ctx.held + size > KV_HELD_BYTES {
            return Err(GuestKvError::Other(format!(
                "the instance's open CAS handles would hold {} bytes, over the {KV_HELD_BYTES} an instance may hold; drop or swap some first",
                self.ctx.held + size
            )));
        }
        self.ctx.held += size;
        let cas = KvCas {
            bucket,
            key,
            current,
        };
        self.table.push(cas).map_err(|e| {
            self.ctx.held -= size;
            e.into()
        })
    }

    pub fn cas_current(&mut self, cas: &Resource<KvCas>) -> KvResult<Option<Vec<u8>>> {
        Ok(self.table.get(cas)?.current.clone())
    }

    fn take_cas(&mut self, cas: Resource<KvCas>) -> KvResult<KvCas> {
        let cas = self.table.delete(cas)?;
        self.ctx.held -= cas.current.as_ref().map_or(0, |v| v.len() as u64);
        Ok(cas)
    }

    pub fn cas_drop(&mut self, cas: Resource<KvCas>) -> wasmtime::Result<()> {
        self.take_cas(cas)
            .map_err(|e| wasmtime::format_err!("{e}"))?;
        Ok(())
    }

    /// Swap in `value` if `key` still holds what the CAS read. `Ok(Err(cas))`:
    /// it did not, and `cas` is a new handle with what it holds now.
    pub async fn swap(
        &mut self,
        cas: Resource<KvCas>,
        value: Vec<u8>,
    ) -> KvResult<Result<(), Resource<KvCas>>> {
        let KvCas {
            bucket,
            key,
            current,
        } = self.take_cas(cas)?;
        let (kv, deadline) = self.store("swap", 1)?;
        let swapped = kv
            .swap(deadline, bucket.clone(), key.clone(), current, value)
            .await?;
        if swapped {
            return Ok(Ok(()));
        }
        Ok(Err(self.read_cas(bucket, key).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvLimits;

    /// An instance's key-value context allowing `max_ops` per request, on
    /// an embedded store in a scratch directory (removed by the caller).
    fn context(max_ops: u32) -> (KvCtx, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("host-kv-ctx-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let service = KvService::embedded(&dir.join("kv.redb"), KvLimits::DEFAULT).unwrap();
        let app: Arc<str> = "a".into();
        let access = KvAccess::new(&app, service, vec!["default".into()], max_ops);
        (KvCtx::new(Arc::new(access)), dir)
    }

    fn view<'a>(ctx: &'a mut KvCtx, table: &'a mut ResourceTable) -> KvView<'a> {
        KvView {
            ctx,
            table,
            deadline: Instant::now(),
        }
    }

    /// The operation budget is per request: a fresh one for each request
    /// on a reused instance, one more request's worth for each request a
    /// shared instance takes; past it, an `other` error naming the flag.
    #[test]
    fn each_request_gets_its_operation_budget() {
        let (mut ctx, dir) = context(2);
        let mut table = ResourceTable::new();
        let mut kv = view(&mut ctx, &mut table);
        assert!(kv.count("get", 1).is_ok());
        assert!(kv.count("get", 1).is_ok());
        let Err(GuestKvError::Other(message)) = kv.count("get", 1) else {
            panic!("a third operation passed a budget of 2");
        };
        assert!(message.contains("--kv-max-ops-per-request"), "{message}");
        // A batch counts one per key.
        ctx.begin();
        let mut kv = view(&mut ctx, &mut table);
        assert!(kv.count("get_many", 3).is_err());
        assert!(kv.count("get_many", 2).is_ok());
        ctx.another_request();
        let mut kv = view(&mut ctx, &mut table);
        assert!(kv.count("get", 2).is_ok());
        assert!(kv.count("get", 1).is_err());
        drop(ctx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn numeric_cursors_are_reused_and_bounded() {
        let (mut ctx, dir) = context(10);
        let mut table = ResourceTable::new();
        let mut kv = view(&mut ctx, &mut table);
        let first = kv.number_cursor(Some("k1".into())).unwrap();
        assert_eq!(kv.number_cursor(Some("k1".into())).unwrap(), first);
        assert_eq!(kv.string_cursor(first).unwrap().as_deref(), Some("k1"));
        assert!(kv.string_cursor(Some(99)).is_err());
        for i in 0..MAX_CURSORS - 1 {
            kv.number_cursor(Some(format!("c{i}"))).unwrap();
        }
        assert!(kv.number_cursor(Some("one more".into())).is_err());
        ctx.begin();
        assert!(ctx.cursors.is_empty());
        drop(ctx);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
