//! Code for a version: the precompiled cache in the state directory when it
//! is intact, else the component compiled (off the serving threads, at most
//! [`MAX_CONCURRENT_COMPILES`] at once, within `--compile-timeout-ms`) and
//! written to the cache. Precompiled code is only ever this host's own.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use wasmtime::component::Component;

use crate::apps::error::AppError;
use crate::apps::state_dir::StateDir;
use crate::metrics::metrics;
use crate::runtime::component::{self, Pre, World};
use crate::runtime::engine::{COPY_IMAGE_BYTES, Engines};

/// Where a version's compiled code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Already loaded in memory.
    Memory,
    /// Loaded from the precompiled cache in the state directory.
    Cache,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// Compiles at once (each uses every core). A compile past its time bound
/// is answered 422 but cannot be stopped: it keeps its slot until it ends,
/// so abandoned compiles cannot pile up.
pub(crate) const MAX_CONCURRENT_COMPILES: usize = 2;

/// Run blocking `work` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AppError::Internal(format!("a blocking task failed: {e}")))?
}

/// What the host knows of a component before compiling it: its world, and
/// its memory image and file sizes (which pick the engine).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CodeKind {
    pub(crate) world: World,
    pub(crate) image_bytes: u64,
    pub(crate) size: u64,
}

/// Compiles components and keeps the precompiled cache. Cheap to clone, so
/// it can move onto a blocking thread.
#[derive(Clone)]
pub(crate) struct Compiler {
    pub(crate) engines: Arc<Engines>,
    pub(crate) state: Arc<StateDir>,
    /// Slots for compiles, held until a compile really ends.
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl Compiler {
    pub(crate) fn new(engines: Arc<Engines>, state: StateDir, timeout: Duration) -> Compiler {
        Compiler {
            engines,
            state: Arc::new(state),
            slots: Arc::new(Semaphore::new(MAX_CONCURRENT_COMPILES)),
            timeout,
        }
    }

    /// Code for `digest` on a blocking thread, within the compile time bound
    /// unless `bounded` is false (static apps at startup: the operator's own
    /// files, and the host cannot start without them).
    pub(crate) async fn code(
        &self,
        digest: &str,
        wasm: Option<Bytes>,
        kind: CodeKind,
        bounded: bool,
    ) -> Result<(Pre, CodeSource), AppError> {
        let compiler = self.clone();
        let owned = digest.to_string();
        let limit = if bounded { self.timeout } else { Duration::MAX };
        let slots = self.slots.clone();
        let work = async move {
            let slot = slots
                .acquire_owned()
                .await
                .map_err(|_| AppError::Internal("the compiler is shut down".into()))?;
            blocking(move || {
                let _slot = slot;
                compiler.obtain(&owned, wasm.as_deref(), kind)
            })
            .await
        };
        tokio::time::timeout(limit, work).await.map_err(|_| {
            AppError::Unservable(format!(
                "compiling the component took longer than the limit of {} ms",
                limit.as_millis()
            ))
        })?
    }

    /// Code for `digest`: from the cache when intact, else compiled from
    /// `wasm` (or the stored component) and cached. Blocking.
    fn obtain(
        &self,
        digest: &str,
        wasm: Option<&[u8]>,
        CodeKind {
            world,
            image_bytes,
            size,
        }: CodeKind,
    ) -> Result<(Pre, CodeSource), AppError> {
        let unservable = |err: anyhow::Error| AppError::Unservable(format!("{err:#}"));
        // A record from before memory images were recorded says nothing of
        // a large one: the stored bytes do (only a large file can hold one).
        let image_bytes =
            if wasm.is_none() && image_bytes < COPY_IMAGE_BYTES && size >= COPY_IMAGE_BYTES {
                match self.state.read_component(digest) {
                    Ok(bytes) => component::memory_image_bytes(&bytes),
                    Err(_) => image_bytes,
                }
            } else {
                image_bytes
            };
        let runtime = self
            .engines
            .runtime(world, image_bytes)
            .map_err(|e| AppError::Internal(format!("{e:#}")))?;
        match self.state.load_precompiled(digest, &runtime.key) {
            Ok(Some(code)) => {
                // SAFETY: this host wrote the file itself (precompiled input
                // is never accepted from outside) and its checksum matched.
                match unsafe { Component::deserialize(&runtime.engine, &code) } {
                    Ok(component) => {
                        let pre =
                            component::prepare(&runtime.engine, &runtime.linker, &component, world)
                                .map_err(unservable)?;
                        metrics().code_load("cache");
                        return Ok((pre, CodeSource::Cache));
                    }
                    Err(err) => {
                        tracing::warn!(digest, error = %err, "cached code is unusable; recompiling")
                    }
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(digest, error = %err, "cache entry is corrupt; recompiling"),
        }
        let stored;
        let wasm = match wasm {
            Some(wasm) => wasm,
            None => {
                stored = self.state.read_component(digest)?;
                &stored
            }
        };
        // The bytes are the truth when a record says otherwise (edited on disk).
        let detected = World::of(wasm);
        let (world, runtime) = if detected == world {
            (world, runtime)
        } else {
            tracing::warn!(digest, recorded = ?world, ?detected, "the record names another world than the component's; serving it as the component's");
            let runtime = self
                .engines
                .runtime(detected, image_bytes)
                .map_err(|e| AppError::Internal(format!("{e:#}")))?;
            (detected, runtime)
        };
        let started = std::time::Instant::now();
        let component = component::compile(&runtime.engine, wasm).map_err(unservable)?;
        metrics()
            .compile_duration
            .observe(started.elapsed().as_secs_f64());
        metrics().code_load("compiled");
        let pre = component::prepare(&runtime.engine, &runtime.linker, &component, world)
            .map_err(unservable)?;
        match component.serialize() {
            Ok(code) => {
                if let Err(err) = self.state.save_precompiled(digest, &runtime.key, &code) {
                    tracing::warn!(digest, error = %err, "failed to cache compiled code");
                }
            }
            Err(err) => tracing::warn!(digest, error = %err, "failed to serialize compiled code"),
        }
        Ok((pre, CodeSource::Compiled))
    }
}
