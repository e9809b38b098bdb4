//! What lives in each instance's `Store`: the WASI, wasi:http,
//! wasi:config and wasi:keyvalue contexts, the resource table they share, the outbound HTTP
//! hooks, the guest's captured stdout/stderr, the memory limiter and the
//! current request's deadline. It is built from its version's settings with the
//! instance and dropped with it: after one request, or after several when
//! the app opts into instance reuse ([`HostState::begin`] starts each one).
//!
//! Everything the host holds on a guest's behalf outside its linear memory
//! is bounded here: resource-table entries (`--max-guest-resources`), the
//! size of each wasi:http `fields` ([`MAX_FIELDS_BYTES`]), random bytes per
//! call, and (in [`crate::runtime::outbound`]) buffered outgoing-body bytes and
//! outbound calls in flight. The most all that can hold is reserved from the
//! host-wide guest memory budget when the instance is made, so instances
//! cannot add up past it.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use tokio::sync::Semaphore;

use crate::runtime::keyvalue::{KvAccess, KvCtx, KvView};
use crate::runtime::limits::{GuestLimiter, Limits, MemoryBudget};
use crate::runtime::outbound::{OUTGOING_BODY_CHUNK_BYTES, OutboundHooks, OutboundPolicy};
use crate::runtime::output::GuestOutput;

/// Largest in-memory size of one wasi:http `fields` a guest builds (headers
/// or trailers): room for a copy of the request headers the front accepts
/// by default (16 KiB on the wire, 100 headers), with the map's overhead.
pub const MAX_FIELDS_BYTES: usize = 24 * 1024;
/// The most host memory one resource-table entry can hold: a full `fields`
/// (its size limit counts names and values, the heap holds about twice
/// that: 1024 fields of 20 KiB measured 36 MiB of RSS), or an outgoing
/// body's buffer (2 × [`OUTGOING_BODY_CHUNK_BYTES`]). Each instance reserves
/// `--max-guest-resources` × this from the guest memory budget before it
/// starts, so host-side state adds up within the budget.
pub const RESOURCE_CHARGE_BYTES: u64 = 2 * MAX_FIELDS_BYTES as u64;
const _: () = assert!(
    2 * OUTGOING_BODY_CHUNK_BYTES as u64 <= RESOURCE_CHARGE_BYTES,
    "an outgoing body's buffer must fit one resource's charge"
);
/// What one outbound call in flight may hold in the host (the client
/// connection's buffers), reserved per allowed call like the above.
pub const OUTBOUND_CALL_CHARGE_BYTES: u64 = 64 * 1024;
/// Largest `get-random-bytes` answer.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// What an instance under `limits` reserves from the guest memory budget
/// for the host-side state it may hold.
pub fn host_reserve(limits: &Limits) -> u64 {
    u64::from(limits.max_resources) * RESOURCE_CHARGE_BYTES
        + u64::from(limits.max_outbound) * OUTBOUND_CALL_CHARGE_BYTES
}

/// What a store is built from: its version's settings and its app's
/// shares (memory budget, outbound calls).
pub struct StoreInputs<'a> {
    pub app: &'a Arc<str>,
    pub limits: &'a Limits,
    pub budget: &'a Arc<MemoryBudget>,
    pub outbound_calls: &'a Arc<Semaphore>,
    pub env: &'a [(String, String)],
    pub config: &'a Arc<WasiConfigVariables>,
    pub outbound: &'a Arc<OutboundPolicy>,
    pub kv: &'a Arc<KvAccess>,
}

pub struct HostState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub config: Arc<WasiConfigVariables>,
    pub hooks: OutboundHooks,
    pub limiter: GuestLimiter,
    pub output: GuestOutput,
    pub kv: KvCtx,
    /// When the current request's time is up (read by the epoch callback).
    pub deadline: Instant,
}

impl HostState {
    /// `None` when the guest memory budget cannot take the instance's
    /// host-side reserve.
    pub fn new(inputs: StoreInputs<'_>, request_id: &Arc<str>, deadline: Instant) -> Option<Self> {
        let limits = inputs.limits;
        let reserve = host_reserve(limits) + inputs.kv.reserve();
        let limiter = GuestLimiter::new(limits.memory_bytes, inputs.budget.clone(), reserve)?;
        let output = GuestOutput::new(inputs.app.clone(), request_id.clone());
        let wasi = WasiCtx::builder()
            .envs(inputs.env)
            .stdout(output.stdout())
            .stderr(output.stderr())
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.max_resources as usize);
        Some(HostState {
            wasi,
            http,
            table,
            config: inputs.config.clone(),
            hooks: OutboundHooks::new(
                inputs.app.clone(),
                inputs.outbound.clone(),
                inputs.outbound_calls.clone(),
                limits.max_outbound,
            ),
            limiter,
            output,
            kv: KvCtx::new(inputs.kv.clone()),
            deadline,
        })
    }

    /// Start another request on a reused instance.
    pub fn begin(&mut self, request_id: &Arc<str>, deadline: Instant) {
        self.output.begin(request_id.clone());
        self.limiter.refused = None;
        self.kv.begin();
        self.deadline = deadline;
    }

    /// The `wasi:keyvalue` view (for the linker).
    pub fn kv(&mut self) -> KvView<'_> {
        KvView {
            ctx: &mut self.kv,
            table: &mut self.table,
            deadline: self.deadline,
        }
    }

    /// The `wasi:config/store` view (for the linker).
    pub fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::from(&*self.config)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
