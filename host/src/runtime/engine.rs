//! The wasmtime [`Engine`]s the host runs components on, and the one thread
//! that drives their epoch, so that a guest burning CPU can be interrupted
//! at its deadline without fuel counting on the hot path.
//!
//! There is one engine per kind of component ([`World`], [`SlotReset`]): WASI 0.2
//! components run on an engine with the component-model async machinery
//! turned off (`concurrency_support(false)`), so none of their host calls pay
//! for its bookkeeping; WASI 0.3 components need it and get an engine of
//! their own, built the first time one is deployed. Both share the pooling
//! allocator's shape ([`PoolShape`]), the flags that say what one component
//! may contain.
//!
//! Memory slots are reset between instances by scanning for dirtied pages
//! or by copying the whole image back ([`MemoryReset`]); by default each
//! component gets the one that suits its memory image (compiled guests:
//! scan; interpreters: copy), which is again an engine (a pool) of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::runtime::component::{self, World};
use crate::runtime::state::HostState;

/// Idle instances kept host-wide, across all apps. Each engine's pool has
/// this many slots on top of `--max-concurrent`, so idle instances never
/// starve a request of a slot.
pub const MAX_IDLE_INSTANCES: u32 = 256;

/// How often the epoch advances: the granularity of CPU deadlines, and how
/// often a busy guest yields its thread to other requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances, tables and memories a typical component holds: the pool's
/// totals are sized for `slots` of these (a Rust `wasm32-wasip2` component
/// has a handful of core instances, one memory and one table). A component
/// may hold up to [`PoolShape`]'s maxima; bigger ones use more of the totals.
const TYPICAL_CORE_INSTANCES: u32 = 8;
const TYPICAL_TABLES: u32 = 4;
const TYPICAL_MEMORIES: u32 = 2;

/// The same for tables (function references: small).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Decommits (of memory past [`EngineSpec::keep_resident_bytes`]) are batched so that
/// many slots share one TLB flush.
const DECOMMIT_BATCH: usize = 16;

/// What one component may contain, for the pooling allocator: components
/// from other toolchains are bigger than ours (componentize-py: 14 core
/// instances, a 12 MiB memory, 5,900 table elements; componentize-js: 7,800
/// table elements). A component past any of these is refused at deploy
/// with the value it needs and the flag to raise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    /// `--max-core-instances-per-component`
    pub core_instances: u32,
    /// `--max-memories-per-component`
    pub memories: u32,
    /// `--max-tables-per-component`
    pub tables: u32,
    /// `--max-table-elements`: the most elements one table may have or grow to.
    pub table_elements: usize,
    /// `--max-component-instance-kib`, in bytes: the host-side state of one
    /// component instance (its `VMComponentContext` and its core instances').
    pub component_instance_bytes: usize,
}

impl PoolShape {
    /// The defaults of the flags: room for what componentize-py,
    /// componentize-js and Rust (WASI 0.2 and 0.3) emit today, with headroom.
    pub const DEFAULT: PoolShape = PoolShape {
        core_instances: 32,
        memories: 2,
        tables: 8,
        table_elements: 20_000,
        component_instance_bytes: 2 << 20,
    };
}

/// Everything an engine is built from.
#[derive(Debug, Clone, Copy)]
pub struct EngineSpec {
    /// Instances that may run at once (`--max-concurrent`).
    pub max_concurrent: u32,
    /// The largest `memory_mib` an app may ask for, in bytes: each memory
    /// slot can grow this far (each instance's own, lower cap is its
    /// limiter's).
    pub max_memory_bytes: u64,
    pub shape: PoolShape,
    /// How a memory slot is reset between instances.
    pub reset: MemoryReset,
    /// `--memory-keep-resident-mib`, in bytes: how much of each linear
    /// memory slot stays resident when its instance is dropped (reset in
    /// place, see [`MemoryReset`]); past it pages are decommitted
    /// (`madvise`), and the next instance in the slot faults them in again:
    /// a copy-on-write fault from the memory image, which flushes the TLB
    /// of every core running the host.
    pub keep_resident_bytes: usize,
}

/// How the pooling allocator resets a linear memory slot for its next
/// instance (`--memory-reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryReset {
    /// `scan` for components whose memory image is under
    /// [`COPY_IMAGE_BYTES`], `copy` (keeping at least
    /// [`COPY_KEEP_RESIDENT_MIN`]) for those at or over it: interpreters
    /// such as componentize-py's CPython, whose heap is its image. Each
    /// mode is a pool of its own (a second engine, built on first use) when
    /// the address-space budget has room for it; otherwise large images
    /// are served from the `scan` pool.
    Auto,
    /// With `PAGEMAP_SCAN` (Linux 6.7+), copy back from the image only the
    /// pages the instance dirtied, up to the kept size; nothing is
    /// `madvise`d. The right choice for compiled guests (Rust, Go, C),
    /// which dirty a few contiguous pages. wasmtime tracks at most 32 dirty
    /// regions per reset, and past the last one it decommits: an
    /// interpreter (CPython, SpiderMonkey) dirties pages all over its heap,
    /// so most of its memory is faulted in again on every request. Without
    /// the ioctl nothing is kept (see `copy`).
    Scan,
    /// Copy the whole kept size (or the whole memory, if smaller) back from
    /// the image on every reset, touched or not: constant work per request
    /// (tens of µs per MiB), no faults.
    Copy,
}

/// How one engine's pool resets its memory slots: what [`MemoryReset`]
/// resolves to for one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotReset {
    Scan,
    Copy,
}

/// Under `--memory-reset auto`, components with at least this much memory
/// image are reset by copy: componentize-py's is 12 MiB, componentize-js's
/// and compiled guests' far less.
pub const COPY_IMAGE_BYTES: u64 = 4 << 20;
/// Under `--memory-reset auto`, what the copy pool keeps resident at least:
/// an interpreter's image and the heap it touches in a request.
pub const COPY_KEEP_RESIDENT_MIN: usize = 16 << 20;

impl MemoryReset {
    /// The reset for a component with `image_bytes` of memory image.
    pub fn for_image(self, image_bytes: u64) -> SlotReset {
        match self {
            MemoryReset::Auto if image_bytes >= COPY_IMAGE_BYTES => SlotReset::Copy,
            MemoryReset::Auto | MemoryReset::Scan => SlotReset::Scan,
            MemoryReset::Copy => SlotReset::Copy,
        }
    }
}

/// Guard pages wasmtime reserves after each linear memory slot (its default
/// `memory_guard_size` on 64-bit hosts).
const MEMORY_GUARD_BYTES: u64 = 32 << 20;
/// Address space the host lets its engines' memory pools reserve: both
/// engines (WASI 0.2 and 0.3) within three quarters of the 128 TiB a
/// process has on x86-64 and aarch64 Linux, the rest for everything else.
pub const ADDRESS_SPACE_BUDGET: u64 = 96 << 40;

/// Virtual address space one engine's memory pool reserves up front for
/// `max_concurrent` instances (plus the idle ones) whose memories may grow
/// to `max_memory_bytes`.
pub fn pool_reservation(max_concurrent: u32, max_memory_bytes: u64) -> u64 {
    u64::from(max_concurrent + MAX_IDLE_INSTANCES)
        * u64::from(TYPICAL_MEMORIES)
        * (max_memory_bytes + MEMORY_GUARD_BYTES)
}

/// Build an engine: pooling allocator sized for `max_concurrent` running
/// instances plus the idle ones kept for reuse, epoch interruption on, and
/// the component-model async machinery only for `world`s that need it.
pub fn build(spec: &EngineSpec, world: World, reset: SlotReset) -> Result<Engine> {
    let slots = spec.max_concurrent + MAX_IDLE_INSTANCES;
    let shape = &spec.shape;
    let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
    // Without the ioctl, `scan` would copy the kept size whether touched or
    // not (a Rust guest's stack sits there, mostly untouched): keep nothing.
    let (scan, keep_resident) = match reset {
        SlotReset::Scan if pagemap => (Enabled::Yes, spec.keep_resident_bytes),
        SlotReset::Scan => (Enabled::No, 0),
        SlotReset::Copy if spec.reset == MemoryReset::Auto => (
            Enabled::No,
            spec.keep_resident_bytes.max(COPY_KEEP_RESIDENT_MIN),
        ),
        SlotReset::Copy => (Enabled::No, spec.keep_resident_bytes),
    };
    tracing::debug!(
        pagemap_scan = pagemap,
        ?reset,
        keep_resident,
        ?world,
        "pooling allocator: memory reset mode"
    );
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * TYPICAL_CORE_INSTANCES.max(shape.core_instances))
        .total_memories(slots * TYPICAL_MEMORIES)
        .total_tables(slots * TYPICAL_TABLES)
        .total_stacks(slots)
        .max_core_instances_per_component(shape.core_instances)
        .max_memories_per_component(shape.memories)
        .max_tables_per_component(shape.tables)
        .max_component_instance_size(shape.component_instance_bytes)
        .max_memory_size(usize::try_from(spec.max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(shape.table_elements)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(scan)
        .decommit_batch_size(DECOMMIT_BATCH);

    let asynchronous = world == World::Http03;
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .concurrency_support(asynchronous)
        .wasm_component_model_async(asynchronous)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("failed to create the wasmtime engine")
}

/// One engine with what components compiled for it are linked and cached by.
pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// Part of every precompiled cache file's name (see
    /// [`component::engine_key`]).
    pub key: String,
}

impl Runtime {
    fn new(spec: &EngineSpec, world: World, reset: SlotReset) -> Result<Runtime> {
        let engine = build(spec, world, reset)?;
        let linker = component::linker(&engine, world)?;
        let key = component::engine_key(&engine);
        Ok(Runtime {
            engine,
            linker,
            key,
        })
    }
}

/// The host's engines, one per world and memory reset: the one for WASI 0.2
/// components with the default reset from the start, every other the first
/// time a component needs it (so a host that serves none reserves nothing
/// for it).
pub struct Engines {
    spec: EngineSpec,
    /// By [`Engines::index`].
    runtimes: [OnceLock<Runtime>; 4],
    /// Serialises building engines.
    building: std::sync::Mutex<()>,
}

impl Engines {
    pub fn new(spec: EngineSpec) -> Result<Arc<Engines>> {
        let engines = Engines {
            spec,
            runtimes: Default::default(),
            building: std::sync::Mutex::new(()),
        };
        let first = spec.reset.for_image(0);
        let runtime = Runtime::new(&spec, World::Http02, first)?;
        let _ = engines.runtimes[Engines::index(World::Http02, first)].set(runtime);
        Ok(Arc::new(engines))
    }

    fn index(world: World, reset: SlotReset) -> usize {
        let world = match world {
            World::Http02 => 0,
            World::Http03 => 2,
        };
        world
            + match reset {
                SlotReset::Scan => 0,
                SlotReset::Copy => 1,
            }
    }

    /// The runtime for components of `world` whose memory image is
    /// `image_bytes` (see [`component::memory_image_bytes`]).
    pub fn runtime(&self, world: World, image_bytes: u64) -> Result<&Runtime> {
        let mut reset = self.spec.reset.for_image(image_bytes);
        if let Some(runtime) = self.runtimes[Engines::index(world, reset)].get() {
            return Ok(runtime);
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        if reset == SlotReset::Copy && self.spec.reset == MemoryReset::Auto {
            // A pool of its own only within the address-space budget, and
            // leaving room for the scan pool of each world, which the host
            // checked at startup that it can always build.
            let built = self.runtimes.iter().filter(|r| r.get().is_some()).count();
            let scan_pools_to_come = [World::Http02, World::Http03]
                .into_iter()
                .filter(|w| {
                    self.runtimes[Engines::index(*w, SlotReset::Scan)]
                        .get()
                        .is_none()
                })
                .count();
            let after = (built + 1 + scan_pools_to_come) as u64;
            let reservation =
                pool_reservation(self.spec.max_concurrent, self.spec.max_memory_bytes);
            if after * reservation > ADDRESS_SPACE_BUDGET {
                tracing::warn!(
                    image_bytes,
                    "no address space for a copy-reset memory pool; serving this component from the scan pool"
                );
                reset = SlotReset::Scan;
            }
        }
        let slot = &self.runtimes[Engines::index(world, reset)];
        if let Some(runtime) = slot.get() {
            return Ok(runtime);
        }
        let runtime = Runtime::new(&self.spec, world, reset).with_context(|| {
            format!(
                "failed to create the engine for {world:?} components with {reset:?} memory reset"
            )
        })?;
        tracing::info!(?world, ?reset, "engine ready");
        Ok(slot.get_or_init(|| runtime))
    }

    fn increment_epochs(&self) {
        for runtime in self.runtimes.iter().filter_map(OnceLock::get) {
            runtime.engine.increment_epoch();
        }
    }
}

/// A background thread that advances the engines' epoch every
/// [`EPOCH_TICK`]. Stops when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engines: &Arc<Engines>) -> Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let engines: Weak<Engines> = Arc::downgrade(engines);
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engines.upgrade() {
                            Some(engines) => engines.increment_epochs(),
                            None => break,
                        }
                    }
                }
            })
            .context("failed to start the epoch ticker thread")?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_resets_large_images_by_copy_and_the_rest_by_scan() {
        let auto = MemoryReset::Auto;
        assert_eq!(auto.for_image(0), SlotReset::Scan);
        assert_eq!(auto.for_image(COPY_IMAGE_BYTES - 1), SlotReset::Scan);
        assert_eq!(auto.for_image(COPY_IMAGE_BYTES), SlotReset::Copy);
        for image in [0, COPY_IMAGE_BYTES, u64::MAX] {
            assert_eq!(MemoryReset::Scan.for_image(image), SlotReset::Scan);
            assert_eq!(MemoryReset::Copy.for_image(image), SlotReset::Copy);
        }
    }

    #[test]
    fn each_world_and_reset_has_its_own_engine_slot() {
        let mut seen = std::collections::HashSet::new();
        for world in [World::Http02, World::Http03] {
            for reset in [SlotReset::Scan, SlotReset::Copy] {
                let index = Engines::index(world, reset);
                assert!(index < 4 && seen.insert(index), "{world:?} {reset:?}");
            }
        }
    }
}
