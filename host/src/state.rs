//! What lives in each instance's `Store`: the WASI, wasi:http and
//! wasi:config contexts, the resource table they share, the outbound HTTP
//! hooks, the guest's captured stdout/stderr, the memory limiter and the
//! current request's deadline. It is built from its deployment with the
//! instance and dropped with it: after one request, or after several when
//! the app opts into instance reuse ([`HostState::begin`] starts each one).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::invoke::Deployment;
use crate::limits::GuestLimiter;
use crate::outbound::OutboundHooks;
use crate::output::GuestOutput;

pub struct HostState {
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    pub table: ResourceTable,
    pub config: Arc<WasiConfigVariables>,
    pub hooks: OutboundHooks,
    pub limiter: GuestLimiter,
    pub output: GuestOutput,
    /// When the current request's time is up (read by the epoch callback).
    pub deadline: Instant,
}

impl HostState {
    pub fn new(deployment: &Deployment, request_id: &Arc<str>, deadline: Instant) -> Self {
        let output = GuestOutput::new(deployment.app.clone(), request_id.clone());
        let wasi = WasiCtx::builder()
            .envs(&deployment.env)
            .stdout(output.stdout())
            .stderr(output.stderr())
            .build();
        HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            config: deployment.config.clone(),
            hooks: OutboundHooks {
                app: deployment.app.clone(),
                policy: deployment.outbound.clone(),
            },
            limiter: GuestLimiter::new(deployment.limits.memory_bytes),
            output,
            deadline,
        }
    }

    /// Start another request on a reused instance.
    pub fn begin(&mut self, request_id: &Arc<str>, deadline: Instant) {
        self.output.begin(request_id.clone());
        self.limiter.memory_limit_hit = false;
        self.deadline = deadline;
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
