//! What lives in each request's `Store`: the WASI, wasi:http and
//! wasi:config contexts, the resource table they share, the outbound HTTP
//! hooks, the guest's captured stdout/stderr and the memory limiter. A new one is built per request from its
//! deployment and dropped with the instance.

use std::sync::Arc;

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
}

impl HostState {
    pub fn new(deployment: &Deployment, request_id: &Arc<str>) -> Self {
        let output = GuestOutput::new(deployment.app.clone(), request_id.clone());
        let wasi = WasiCtx::builder()
            .envs(&deployment.env)
            .stdout(output.stream("stdout"))
            .stderr(output.stream("stderr"))
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
