//! The host's per-request cost in process, without sockets: one request
//! through `ServedVersion::handle`, response body read to the end, for a fresh
//! instance per request and for a reused instance (`instance_reuse`).
//!
//! Run by `make bench` (it builds the release guest first); by hand:
//! `cargo build --release --target wasm32-wasip2 -p guest && cargo bench -p host --bench per_request`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use host::runtime::instance::{AppShare, RequestContext};
use host::runtime::limits::{Limits, MemoryBudget};
use host::runtime::served::{Grants, Identity, ServedVersion};
use http_body_util::{BodyExt, Empty};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// The host binary's allocator, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const GUEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../target/wasm32-wasip2/release/guest.wasm"
);

fn served_version(limits: Limits) -> ServedVersion {
    let wasm = std::fs::read(GUEST)
        .unwrap_or_else(|e| panic!("{GUEST}: {e}; build it with `make build-guest` first"));
    let spec = host::runtime::engine::EngineSpec {
        max_concurrent: limits.max_concurrent,
        max_memory_bytes: limits.memory_bytes,
        shape: host::runtime::engine::PoolShape::DEFAULT,
        keep_resident_bytes: 4 << 20,
        reset: host::runtime::engine::MemoryReset::Scan,
    };
    let world = host::runtime::component::World::Http02;
    let engine = host::runtime::engine::build(&spec, world, host::runtime::engine::SlotReset::Scan)
        .expect("engine");
    let linker = host::runtime::component::linker(&engine, world).expect("linker");
    let component = host::runtime::component::compile(&engine, &wasm).expect("compile");
    let pre =
        host::runtime::component::prepare(&engine, &linker, &component, world).expect("prepare");
    ServedVersion::new(
        Identity {
            app: "bench".into(),
            version: "v1".into(),
            digest: "bench".into(),
            settings_key: 0,
        },
        pre,
        limits,
        Grants::none(&"bench".into()),
        AppShare::new(&limits, &MemoryBudget::new(64 << 30)),
    )
}

fn per_request(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let limits = Limits {
        max_concurrent: 16,
        ..Limits::fixture()
    };
    let permits = Arc::new(Semaphore::new(16));
    let mut group = c.benchmark_group("per_request");
    for (name, reuse) in [("fresh_instance", 1), ("reused_instance", 128)] {
        let served = runtime.block_on(async {
            served_version(Limits {
                instance_reuse: reuse,
                ..limits
            })
        });
        let ctx = RequestContext {
            id: "bench".into(),
            scheme: Scheme::Http,
            guest_micros: Arc::new(AtomicU64::new(0)),
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                runtime.block_on(async {
                    let request = http::Request::get("http://bench.local/")
                        .body(
                            Empty::<Bytes>::new()
                                .map_err(|never| -> hyper::Error { match never {} }),
                        )
                        .expect("request");
                    let permit = permits.clone().try_acquire_owned().expect("permit");
                    let response = served.handle(request, permit, &ctx).await;
                    assert_eq!(response.status(), 200);
                    let body = response.into_body().collect().await.expect("body");
                    assert_eq!(body.to_bytes().len(), 14);
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
