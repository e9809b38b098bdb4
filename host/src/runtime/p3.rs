//! One request through an instance of a WASI 0.3 component (the
//! `wasi:http/service` world, exporting `wasi:http/handler@0.3`).
//!
//! Admission, limits, the store and the failure mapping are those of WASI
//! 0.2 ([`crate::runtime::instance`]); what differs is the call. A 0.3 guest runs
//! inside its store's concurrent event loop (`Store::run_concurrent`): the
//! host hands it the request as a `wasi:http/types.request`, gets a response
//! back, and then keeps the loop turning while the guest streams the body
//! (from tasks it spawned), until the guest has no task left. The deadline
//! holds as for 0.2: on CPU through the epoch, on waiting through a tokio
//! timeout; a client that goes away before the answer cancels the guest.
//! Apps that opt into instance reuse get it here too, one request after
//! another per instance (like 0.2), or several at once with
//! `instance_concurrency` ([`crate::runtime::shared`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use wasmtime::component::Accessor;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use crate::runtime::failure::Failure;
use crate::runtime::instance::{GuestFuture, Instance, Instances, RequestContext, warm_or_new};
use crate::runtime::limits::LimitedBody;
use crate::runtime::state::HostState;

type Answer = Result<Response<HyperOutgoingBody>, ErrorCode>;

impl Instances {
    pub(crate) async fn run_p3<B>(
        &self,
        pre: ServicePre<HostState>,
        request: Request<LimitedBody<B>>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (started, deadline) = self.clock();
        let (mut store, service, served) =
            self.warm_or_store(ctx, deadline, |instance| match instance {
                Instance::P3(service) => Some(service),
                Instance::P2(_) => None,
            })?;
        let request = absolute(request, &ctx.scheme).map_err(Failure::Setup)?;
        let (sender, receiver) = oneshot::channel::<Answer>();

        let settle = self.settle(ctx, started, served);
        let guest: GuestFuture = Box::pin(async move {
            let _permits = permits;
            let called = tokio::time::timeout_at(deadline.into(), async {
                let service =
                    warm_or_new(service, pre.instantiate_async(&mut store), started).await?;
                store
                    .run_concurrent(async |access| {
                        serve(access, &service, request, sender, deadline).await
                    })
                    .await?
                    .map(|()| Instance::P3(service))
            })
            .await;
            settle.ran(store, called)
        });
        self.finish(guest, receiver).await
    }
}

/// Inside the event loop: call the handler, send its answer, then keep the
/// loop turning until the guest has nothing left to do (its body streamed).
async fn serve<B>(
    access: &Accessor<HostState>,
    service: &Service,
    request: Request<B>,
    answer: oneshot::Sender<Answer>,
    deadline: Instant,
) -> wasmtime::Result<()>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    // The hooks only filter forbidden headers here, which the host's own
    // hooks (outbound calls) leave as they are.
    let (request, request_io) =
        wasmtime_wasi_http::p3::Request::from_http(wasmtime_wasi_http::default_hooks(), request);
    match service.handle(access, request).await? {
        Ok(response) => {
            let response = access.with(|mut store| response.into_http(&mut store, request_io))?;
            let _ = answer.send(Ok(
                response.map(|body| DeadlineBody::new(body, deadline).boxed_unsync())
            ));
        }
        Err(code) => {
            let _ = answer.send(Err(code));
        }
    }
    std::future::poll_fn(|cx| access.poll_no_interesting_tasks(cx)).await;
    Ok(())
}

/// WASI 0.3 takes the request's scheme and authority from its URI: an
/// HTTP/1 request has only a path there, so they are added from the
/// connection and the `Host` header.
pub(crate) fn absolute<B>(
    mut request: Request<B>,
    scheme: &Scheme,
) -> wasmtime::Result<Request<B>> {
    let uri = request.uri();
    if uri.scheme().is_some() && uri.authority().is_some() {
        return Ok(request);
    }
    let authority = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let scheme = match scheme {
        Scheme::Https => "https",
        _ => "http",
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = http::Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|err| wasmtime::format_err!("the request's URI cannot be made absolute: {err}"))?;
    Ok(request)
}

/// A WASI 0.3 response body that ends at the request's deadline. A 0.3
/// guest can answer with a body that is not its own (an outbound
/// response's, passed through) and that the host streams without the
/// guest: the instance's deadline would not stop it, this does. Cut off at
/// the deadline, the response is incomplete, as a 0.2 guest's would be.
pub(crate) struct DeadlineBody {
    inner: HyperOutgoingBody,
    deadline: Instant,
    /// Armed the first time the body has nothing to give.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The request's permits, when they last as long as its body (a shared
    /// instance's requests, see [`crate::runtime::shared`]).
    held: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

impl DeadlineBody {
    pub(crate) fn new(inner: HyperOutgoingBody, deadline: Instant) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline,
            timer: None,
            held: None,
        }
    }

    /// Keep `permits` until the body ends or is dropped.
    pub(crate) fn holding(
        mut self,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> DeadlineBody {
        self.held = Some(permits);
        self
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseIncomplete)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
