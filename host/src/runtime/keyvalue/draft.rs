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

shared_host_impls! {
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
