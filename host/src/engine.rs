//! The one wasmtime [`Engine`] the host runs every component on, and the one
//! thread that drives its epoch, so that a guest burning CPU can be
//! interrupted at its deadline without fuel counting on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::invoke::MAX_IDLE_INSTANCES;
use crate::limits::MAX_TABLE_ELEMENTS;

/// How often the epoch advances: the granularity of CPU deadlines, and how
/// often a busy guest yields its thread to other requests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Core instances, tables and memories a typical component needs per instance
/// (a Rust `wasm32-wasip2` component has a handful of core modules).
const CORE_INSTANCES_PER_COMPONENT: u32 = 8;
const TABLES_PER_COMPONENT: u32 = 4;
const MEMORIES_PER_COMPONENT: u32 = 2;

/// Bytes of each linear memory slot kept resident when an instance is
/// dropped. With `PAGEMAP_SCAN` (Linux 6.7+) only the pages the instance
/// actually dirtied are copied back from the image; nothing is `madvise`d, so
/// the next instance in the slot takes no page faults and the host no TLB
/// shootdowns. Pages past this are decommitted as usual. Without the ioctl
/// wasmtime would `memset` the lowest bytes whether touched or not (a Rust
/// guest's stack sits there, mostly untouched), so then nothing is kept.
const MEMORY_KEEP_RESIDENT: usize = 4 << 20;
/// The same for tables (function references: small).
const TABLE_KEEP_RESIDENT: usize = 64 << 10;
/// Decommits (of memory past [`MEMORY_KEEP_RESIDENT`]) are batched so that
/// many slots share one TLB flush.
const DECOMMIT_BATCH: usize = 16;

/// Build the engine: pooling allocator sized for `max_concurrent` running
/// instances plus the idle ones kept for reuse, each memory slot able to
/// grow to `max_memory_bytes` (the largest `memory_mib` an app may ask
/// for; each instance's own, lower cap is its limiter's), epoch
/// interruption on.
pub fn build(max_concurrent: u32, max_memory_bytes: u64) -> Result<Engine> {
    let slots = max_concurrent + MAX_IDLE_INSTANCES;
    let pagemap = PoolingAllocationConfig::is_pagemap_scan_available();
    let keep_resident = if pagemap { MEMORY_KEEP_RESIDENT } else { 0 };
    tracing::debug!(
        pagemap_scan = pagemap,
        keep_resident,
        "pooling allocator: memory reset mode"
    );
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        .total_core_instances(slots * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(slots * MEMORIES_PER_COMPONENT)
        .total_tables(slots * TABLES_PER_COMPONENT)
        .total_stacks(slots)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(usize::try_from(max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT)
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH);

    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
        .map_err(anyhow::Error::from)
        .context("failed to create the wasmtime engine")
}

/// A background thread that advances the engine's epoch every
/// [`EPOCH_TICK`]. Stops when dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: &Engine) -> Result<EpochTicker> {
        let stop = Arc::new(AtomicBool::new(false));
        let engine = engine.weak();
        let thread = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(engine) => engine.increment_epoch(),
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
