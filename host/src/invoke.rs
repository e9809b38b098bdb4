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
//! logged and counted; the client sees a short JSON message.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::limits::{BodyVerdict, LimitedBody, Limits};
use crate::metrics::metrics;
use crate::outbound::OutboundPolicy;
use crate::response;
use crate::state::HostState;

/// What the host knows about one request beyond the request itself.
#[derive(Clone)]
pub struct RequestContext {
    pub id: Arc<str>,
    pub scheme: Scheme,
    /// Microseconds the guest ran, set when it returns (0 before).
    pub guest_micros: Arc<AtomicU64>,
}

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
    rate: Option<DefaultDirectRateLimiter>,
    client_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
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

fn quota(rps: u32) -> Option<Quota> {
    NonZeroU32::new(rps).map(Quota::per_second)
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
            rate: quota(limits.rate_limit_rps).map(RateLimiter::direct),
            client_rate: quota(limits.client_rate_limit_rps).map(RateLimiter::keyed),
            limits,
            env: env.into(),
            config: Arc::new(config.into_iter().collect()),
            outbound: Arc::new(outbound),
        }
    }

    /// Apply the app's rate limits: `Some` is the 429 to send.
    pub fn rate_limited(&self, client: Option<IpAddr>) -> Option<Response<HyperOutgoingBody>> {
        let clock = DefaultClock::default();
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check()
        {
            metrics().reject("rate_limited");
            let wait = not_until.wait_time_from(clock.now());
            return Some(too_many(
                &format!("app {} is over its rate limit", self.app),
                wait,
            ));
        }
        if let (Some(rate), Some(ip)) = (&self.client_rate, client)
            && let Err(not_until) = rate.check_key(&ip)
        {
            metrics().reject("rate_limited_client");
            let wait = not_until.wait_time_from(clock.now());
            return Some(too_many(
                "you are over this app's per-client rate limit",
                wait,
            ));
        }
        None
    }

    /// `host_permit` is the request's slot under the host-wide cap; the
    /// version's own cap is checked here. Never fails: every failure
    /// becomes a response.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        host_permit: OwnedSemaphorePermit,
        ctx: &RequestContext,
    ) -> Response<HyperOutgoingBody> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics().reject("app_busy");
            return busy("the app is at its concurrency limit; retry shortly");
        };
        let max_body = self.limits.max_body_bytes;
        if declared_length(&request).is_some_and(|len| len > max_body) {
            metrics().reject("body_too_large");
            return too_large(max_body);
        }
        let verdict = BodyVerdict::default();
        let timeout = self.limits.body_read_timeout;
        let request =
            request.map(|body| LimitedBody::new(body, max_body, timeout, verdict.clone()));

        let outcome = self.run(request, (host_permit, permit), ctx).await;
        // A guest that gave up because the body broke a limit gets that
        // limit's status, whatever it answered.
        if verdict.too_large() {
            return too_large(max_body);
        }
        if verdict.timed_out() {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body stalled for over {} ms",
                    timeout.as_millis()
                ),
            );
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
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let started = Instant::now();
        let deadline = started + self.limits.timeout;
        let mut store = Store::new(self.pre.engine(), HostState::new(self, &ctx.id));
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
            .new_incoming_request(ctx.scheme.clone(), request)
            .map_err(Failure::Setup)?;
        let outparam = http
            .http()
            .new_response_outparam(sender)
            .map_err(Failure::Setup)?;

        let pre = self.pre.clone();
        let (app, version) = (self.app.clone(), self.version.clone());
        let guest_micros = ctx.guest_micros.clone();
        let task = tokio::spawn(async move {
            let _permits = permits;
            let called = tokio::time::timeout_at(deadline.into(), async {
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics()
                    .instantiation
                    .observe(started.elapsed().as_secs_f64());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, incoming, outparam)
                    .await
            })
            .await;
            let ran = started.elapsed();
            guest_micros.store(ran.as_micros() as u64, Ordering::Relaxed);
            metrics().guest_time(&app, ran);
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
        let kind = match self {
            Failure::Timeout => {
                tracing::warn!(app, version, "guest exceeded its deadline");
                "timeout"
            }
            Failure::MemoryLimit(err) => {
                tracing::warn!(app, version, cause = ?err, "guest hit its memory limit");
                "memory_limit"
            }
            Failure::Trap(err) => {
                tracing::warn!(app, version, cause = ?err, "guest trapped");
                "trap"
            }
            Failure::NoResponse => {
                tracing::warn!(app, version, "guest returned without setting a response");
                "no_response"
            }
            Failure::ErrorCode(code) => {
                tracing::warn!(app, version, ?code, "guest answered with an error code");
                "error_code"
            }
            Failure::Setup(err) => {
                tracing::error!(app, version, cause = ?err, "failed to start the guest");
                "setup"
            }
        };
        metrics().guest_failure(app, kind);
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

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many(message: &str, wait: std::time::Duration) -> Response<HyperOutgoingBody> {
    let mut response = response::error(StatusCode::TOO_MANY_REQUESTS, message);
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}
