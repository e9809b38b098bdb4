//! One request through an instance of a WASI 0.2 component (the
//! `wasi:http/proxy` world): the request and its response outparam go into
//! the store's table, and the guest's `incoming-handler.handle` runs until
//! it sets the response; its body streams from there.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::runtime::failure::Failure;
use crate::runtime::instance::{GuestFuture, Instance, Instances, RequestContext, warm_or_new};
use crate::runtime::limits::LimitedBody;
use crate::runtime::state::HostState;

impl Instances {
    pub(crate) async fn run_p2<B>(
        &self,
        pre: ProxyPre<HostState>,
        request: Request<LimitedBody<B>>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (started, deadline) = self.clock();
        let (mut store, proxy, served) =
            self.warm_or_store(ctx, deadline, |instance| match instance {
                Instance::P2(proxy) => Some(proxy),
                Instance::P3(_) => None,
            })?;

        let (sender, receiver) = oneshot::channel();
        let http = store.data_mut();
        let incoming = http
            .http()
            .new_incoming_request(ctx.scheme.clone(), request)
            .map_err(Failure::Setup)?;
        let outparam = http
            .http()
            .new_response_outparam(sender)
            .map_err(Failure::Setup)?;

        let settle = self.settle(ctx, started, served);
        let guest: GuestFuture = Box::pin(async move {
            let _permits = permits;
            let called = tokio::time::timeout_at(deadline.into(), async {
                let proxy = warm_or_new(proxy, pre.instantiate_async(&mut store), started).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
                    .map(|()| Instance::P2(proxy))
            })
            .await;
            settle.ran(store, called)
        });
        self.finish(guest, receiver).await
    }
}
