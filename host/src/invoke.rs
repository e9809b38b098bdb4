//! One request through one fresh instance of a deployed version.
//!
//! Per request the host builds a `Store` (WASI context, resource table,
//! memory limiter), instantiates the pre-instantiated component out of the
//! pooling allocator and calls its `wasi:http/incoming-handler`. The guest
//! runs in its own task so it can keep streaming the response body after it
//! has sent the head. The request's deadline is enforced twice: on guest CPU
//! by the engine's epoch (the guest traps), and on a guest that waits by a
//! tokio timeout (its instance is dropped).
//!
//! Every way a guest can fail maps to a status here: a trap or a missing
//! response is 500, the memory cap is 500, the deadline is 504. The cause is
//! logged; the client sees a short JSON message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::limits::{LimitedBody, Limits};
use crate::outbound::OutboundPolicy;
use crate::response;
use crate::state::HostState;

/// One servable version of an app: its pre-instantiated component and
/// everything each of its requests' stores is built from.
pub struct Deployment {
    pub app: Arc<str>,
    pub version: Arc<str>,
    pre: ProxyPre<HostState>,
    pub limits: Limits,
    pub env: Arc<[(String, String)]>,
    pub config: Arc<WasiConfigVariables>,
    pub outbound: Arc<OutboundPolicy>,
    /// This version's own concurrency cap.
    permits: Arc<Semaphore>,
}

/// Why a request produced no response of the guest's own.
#[derive(Debug)]
enum Failure {
    /// The guest ran past its deadline, on CPU or waiting.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit(wasmtime::Error),
    /// The guest trapped (or a host call it made failed fatally).
    Trap(wasmtime::Error),
    /// The guest returned without calling `response-outparam::set`.
    NoResponse,
    /// The guest answered with an error code instead of a response.
    ErrorCode(ErrorCode),
    /// The host could not set up the request (a bug or a malformed request).
    Setup(wasmtime::Error),
}

impl Deployment {
    pub fn new(
        app: Arc<str>,
        version: Arc<str>,
        pre: ProxyPre<HostState>,
        limits: Limits,
        env: Vec<(String, String)>,
        config: Vec<(String, String)>,
        outbound: OutboundPolicy,
    ) -> Deployment {
        Deployment {
            app,
            version,
            pre,
            permits: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            limits,
            env: env.into(),
            config: Arc::new(config.into_iter().collect()),
            outbound: Arc::new(outbound),
        }
    }

    /// The pre-instantiated component (shared by versions with the same code).
    pub fn pre(&self) -> &ProxyPre<HostState> {
        &self.pre
    }

    /// Serve one request. Never fails: every failure becomes a response.
    /// `host_permit` is the request's slot under the host-wide cap; the
    /// version's own cap is checked here.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        host_permit: OwnedSemaphorePermit,
    ) -> Response<HyperOutgoingBody> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return busy("the app is at its concurrency limit; retry shortly");
        };
        let max_body = self.limits.max_body_bytes;
        if declared_length(&request).is_some_and(|len| len > max_body) {
            return too_large(max_body);
        }
        let body_too_large = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| LimitedBody::new(body, max_body, body_too_large.clone()));

        let outcome = self.run(request, (host_permit, permit)).await;
        // A guest that gave up because the body crossed the cap gets 413,
        // whatever it answered.
        if body_too_large.load(Ordering::Relaxed) {
            return too_large(max_body);
        }
        match outcome {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
        }
    }

    async fn run(
        &self,
        request: Request<LimitedBody>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let deadline = Instant::now() + self.limits.timeout;
        let mut store = Store::new(self.pre.engine(), HostState::new(self));
        store.limiter(|state| &mut state.limiter);
        // Past each epoch tick a busy guest yields to other tasks; past the
        // deadline it traps with `Trap::Interrupt`.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let (sender, receiver) = oneshot::channel();
        let http = store.data_mut();
        let incoming = http
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(Failure::Setup)?;
        let outparam = http
            .http()
            .new_response_outparam(sender)
            .map_err(Failure::Setup)?;

        let pre = self.pre.clone();
        let (app, version) = (self.app.clone(), self.version.clone());
        let task = tokio::spawn(async move {
            let _permits = permits;
            let called = tokio::time::timeout_at(deadline.into(), async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            })
            .await;
            let result = match called {
                Ok(Ok(())) => Ok(()),
                Err(_elapsed) => Err(Failure::Timeout),
                Ok(Err(err)) if store.data().limiter.memory_limit_hit => {
                    Err(Failure::MemoryLimit(err))
                }
                Ok(Err(err)) if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                    Err(Failure::Timeout)
                }
                Ok(Err(err)) => Err(Failure::Trap(err)),
            };
            if let Err(failure) = &result {
                failure.log(&app, &version);
            }
            result
        });

        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => {
                let failure = Failure::ErrorCode(code);
                failure.log(&self.app, &self.version);
                Err(failure)
            }
            // The sender went away with the store: the guest is done and
            // never answered. Its task says why.
            Err(_) => match task.await {
                Ok(Ok(())) => {
                    Failure::NoResponse.log(&self.app, &self.version);
                    Err(Failure::NoResponse)
                }
                Ok(Err(failure)) => Err(failure),
                Err(join) => {
                    let failure =
                        Failure::Setup(wasmtime::format_err!("guest task failed: {join}"));
                    failure.log(&self.app, &self.version);
                    Err(failure)
                }
            },
        }
    }
}

impl Failure {
    fn log(&self, app: &str, version: &str) {
        match self {
            Failure::Timeout => tracing::warn!(app, version, "guest exceeded its deadline"),
            Failure::MemoryLimit(err) => {
                tracing::warn!(app, version, cause = ?err, "guest hit its memory limit")
            }
            Failure::Trap(err) => tracing::warn!(app, version, cause = ?err, "guest trapped"),
            Failure::NoResponse => {
                tracing::warn!(app, version, "guest returned without setting a response")
            }
            Failure::ErrorCode(code) => {
                tracing::warn!(app, version, ?code, "guest answered with an error code")
            }
            Failure::Setup(err) => {
                tracing::error!(app, version, cause = ?err, "failed to start the guest")
            }
        }
    }

    fn into_response(self) -> Response<HyperOutgoingBody> {
        let (status, message) = match self {
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the app did not respond in time",
            ),
            Failure::MemoryLimit(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app exceeded its memory limit",
            ),
            Failure::Trap(_) | Failure::ErrorCode(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app failed while handling the request",
            ),
            Failure::NoResponse => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app returned without sending a response",
            ),
            Failure::Setup(_) => (
                StatusCode::BAD_REQUEST,
                "the request could not be passed to the app",
            ),
        };
        response::error(status, message)
    }
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large(limit: u64) -> Response<HyperOutgoingBody> {
    response::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than the limit of {limit} bytes"),
    )
}

/// 503 with `Retry-After`: a concurrency cap is full.
pub fn busy(message: &str) -> Response<HyperOutgoingBody> {
    let mut busy = response::error(StatusCode::SERVICE_UNAVAILABLE, message);
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    busy
}
