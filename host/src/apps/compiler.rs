//! Code for a version: the precompiled cache in the state directory when it
//! is intact, else the component compiled (off the serving threads) and
//! written to the cache. Precompiled code is only ever this host's own.

use std::sync::Arc;

use wasmtime::component::Component;

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

/// Compiles components and keeps the precompiled cache. Cheap to clone, so
/// it can move onto a blocking thread.
#[derive(Clone)]
pub(crate) struct Compiler {
    pub(crate) engines: Arc<Engines>,
    pub(crate) state: Arc<StateDir>,
}

impl Compiler {
    /// Code for `digest`: from the cache when intact, else compiled from
    /// `wasm` (or the stored component) and cached.
    pub(crate) fn obtain(
        &self,
        digest: &str,
        wasm: Option<&[u8]>,
        world: World,
        (image_bytes, size): (u64, u64),
    ) -> anyhow::Result<(Pre, CodeSource)> {
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
        let runtime = self.engines.runtime(world, image_bytes)?;
        match self.state.load_precompiled(digest, &runtime.key) {
            Ok(Some(code)) => {
                // SAFETY: this host wrote the file itself (precompiled input
                // is never accepted from outside) and its checksum matched.
                match unsafe { Component::deserialize(&runtime.engine, &code) } {
                    Ok(component) => {
                        let pre = component::prepare(
                            &runtime.engine,
                            &runtime.linker,
                            &component,
                            world,
                        )?;
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
            (detected, self.engines.runtime(detected, image_bytes)?)
        };
        let started = std::time::Instant::now();
        let component = component::compile(&runtime.engine, wasm)?;
        metrics()
            .compile_duration
            .observe(started.elapsed().as_secs_f64());
        metrics().code_load("compiled");
        let pre = component::prepare(&runtime.engine, &runtime.linker, &component, world)?;
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
