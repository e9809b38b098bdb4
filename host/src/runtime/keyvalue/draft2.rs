//! `wasi:keyvalue@0.2.0-draft2` (the WebAssembly/wasi-keyvalue WIT, Spin's):
//! `store`, `atomics` (`increment`, `cas` and `swap`) and `batch`, each a
//! thin call into [`KvView`]. The WIT is `wit/deps/keyvalue-draft2`.

use wasmtime::component::{HasData, Linker, Resource};

use crate::runtime::keyvalue::{GuestKvError, KvBucket, KvCas, KvView};
use crate::runtime::state::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::runtime::keyvalue::KvBucket,
            "wasi:keyvalue/atomics.cas": crate::runtime::keyvalue::KvCas,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::runtime::keyvalue::GuestKvError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

type Result<T, E = GuestKvError> = std::result::Result<T, E>;

shared_host_impls! {
    async fn list_keys(
        &mut self,
        bucket: Resource<KvBucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse> {
        let page = KvView::list_keys(self, &bucket, cursor).await?;
        Ok(store::KeyResponse {
            keys: page.keys,
            cursor: page.cursor,
        })
    }
}

impl atomics::Host for KvView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<KvBucket>,
        key: String,
        delta: i64,
    ) -> Result<i64> {
        KvView::increment(self, &bucket, key, delta).await
    }

    async fn swap(
        &mut self,
        cas: Resource<KvCas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<std::result::Result<(), atomics::CasError>> {
        Ok(match KvView::swap(self, cas, value).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(fresh)) => Err(atomics::CasError::CasFailed(fresh)),
            Err(err) => Err(atomics::CasError::StoreError(store::Host::convert_error(
                self, err,
            )?)),
        })
    }
}

impl atomics::HostCas for KvView<'_> {
    async fn new(&mut self, bucket: Resource<KvBucket>, key: String) -> Result<Resource<KvCas>> {
        self.cas_new(&bucket, key).await
    }

    async fn current(&mut self, cas: Resource<KvCas>) -> Result<Option<Vec<u8>>> {
        self.cas_current(&cas)
    }

    async fn drop(&mut self, cas: Resource<KvCas>) -> wasmtime::Result<()> {
        self.cas_drop(cas)
    }
}
