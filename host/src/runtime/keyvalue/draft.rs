//! `wasi:keyvalue@0.2.0-draft` (what wasmtime's `wasmtime-wasi-keyvalue`
//! and wasmCloud ship): `store` with numeric cursors, `atomics` with an
//! unsigned `increment` and no CAS, and `batch`, on the same store as
//! [`super::draft2`]. The WIT is `wit/deps/keyvalue-draft`.

use wasmtime::component::{HasData, Linker, Resource};

use crate::runtime::keyvalue::{GuestKvError, KvBucket, KvView};
use crate::runtime::state::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::runtime::keyvalue::KvBucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::runtime::keyvalue::GuestKvError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

type Result<T, E = GuestKvError> = std::result::Result<T, E>;

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

    /// Numeric cursors stand for the string cursors of the store, kept by
    /// the instance.
    async fn list_keys(
        &mut self,
        bucket: Resource<KvBucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse> {
        let cursor = self.string_cursor(cursor)?;
        let page = KvView::list_keys(self, &bucket, cursor).await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: self.number_cursor(page.cursor)?,
        })
    }

    async fn drop(&mut self, bucket: Resource<KvBucket>) -> wasmtime::Result<()> {
        self.close(bucket)
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        delta: u64,
    ) -> Result<u64> {
        let delta = i64::try_from(delta).map_err(|_| {
            GuestKvError::Other(format!(
                "an increment of {delta} is over the largest, {}",
                i64::MAX
            ))
        })?;
        let count = KvView::increment(self, &bucket, key.clone(), delta).await?;
        u64::try_from(count).map_err(|_| {
            GuestKvError::Other(format!(
                "the counter at {key} is {count}, below 0, which this interface's unsigned counters cannot show"
            ))
        })
    }
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
