//! One request through one instance of a deployed version.
//!
//! Per request the host builds a `Store` (WASI context, resource table,
//! memory limiter with its share of the guest memory budget), instantiates
//! the pre-instantiated component out of the pooling allocator and calls
//! its `wasi:http/incoming-handler`. The guest runs on the request's task
//! until it answers; then it is detached so it can keep streaming the
//! response body, and if the client goes away before that it is cancelled.
//! The request's deadline is enforced twice: on guest CPU by the engine's
//! epoch (the guest traps), and on a guest that waits by a tokio timeout
//! (its instance is dropped).
//!
//! Apps that declare themselves stateless (`instance_reuse` > 1) skip the
//! instantiation: an instance that answered cleanly goes back to its
//! version's [`WarmPool`] and serves the next request, up to
//! `instance_reuse` requests. A trap, the deadline, the memory cap or
//! resources the guest left behind drop it instead.
//!
//! Every way a guest can fail maps to a status here: a trap or a missing
//! response is 500, the memory cap is 500, the host-wide memory budget is
//! 503, the deadline is 504. The cause is logged and counted; the client
//! sees a short JSON message.

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use wasmtime::{PoolConcurrencyLimitError, Store, Trap, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use crate::component::Pre;
use crate::concurrent::SharedPool;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::limits::{BodyVerdict, LimitedBody, Limits, MemoryBudget, MemoryRefusal};
use crate::metrics::{VersionMetrics, metrics};
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

/// What all served versions of one app share, so that a canary or a
/// redeploy does not double what one app may take from the host: its
/// concurrency cap (`max_concurrent`), its outbound calls in flight
/// (`--max-outbound-per-app`) and its part of the guest memory budget
/// (three quarters of the host's, so one app's clients cannot spend it all).
pub struct AppShare {
    pub permits: Arc<Semaphore>,
    pub outbound_calls: Arc<Semaphore>,
    pub budget: Arc<MemoryBudget>,
    /// The limits it was made for: a version with other caps gets a new share.
    pub caps: (u32, u32),
}

impl AppShare {
    pub fn new(limits: &Limits, host_budget: &Arc<MemoryBudget>) -> Arc<AppShare> {
        Arc::new(AppShare {
            permits: Arc::new(Semaphore::new(limits.max_concurrent as usize)),
            outbound_calls: Arc::new(Semaphore::new(limits.max_outbound_app as usize)),
            budget: MemoryBudget::child(host_budget, host_budget.limit() / 4 * 3),
            caps: (limits.max_concurrent, limits.max_outbound_app),
        })
    }
}

/// Which version of which app a [`Deployment`] serves, and what it was
/// built from.
pub struct Identity {
    pub app: Arc<str>,
    pub version: Arc<str>,
    /// SHA-256 of the component.
    pub digest: Arc<str>,
    /// A hash of the version's settings: a deployment is only reused for
    /// the very same code and settings.
    pub settings_key: u64,
}

/// One servable version of an app: its pre-instantiated component and
/// everything each of its requests' stores is built from.
pub struct Deployment {
    pub app: Arc<str>,
    pub version: Arc<str>,
    pub digest: Arc<str>,
    pub settings_key: u64,
    pre: Pre,
    pub limits: Limits,
    pub env: Arc<[(String, String)]>,
    pub config: Arc<WasiConfigVariables>,
    pub outbound: Arc<OutboundPolicy>,
    /// What all versions of the app share (concurrency, outbound calls,
    /// memory budget).
    pub share: Arc<AppShare>,
    rate: Option<DefaultDirectRateLimiter>,
    client_rate: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
    /// Idle instances, when the app opted into instance reuse.
    warm: Option<Arc<WarmPool>>,
    /// Instances serving several requests at once (WASI 0.3 apps with
    /// `instance_concurrency` > 1 and instance reuse).
    pub(crate) shared: Option<Arc<SharedPool>>,
    pub metrics: Arc<VersionMetrics>,
    /// The app name and version as response header values.
    pub header_values: Option<(HeaderValue, HeaderValue)>,
}

/// Idle instances kept host-wide, across all apps. The engine's pool has
/// this many slots on top of `--max-concurrent`, so idle instances never
/// starve a request of a slot.
pub const MAX_IDLE_INSTANCES: u32 = 256;
/// An idle instance not reused within this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the per-client rate limiter forgets clients it has not seen.
const CLIENT_RATE_PRUNE: Duration = Duration::from_secs(30);
/// Most bytes a guest may pass to the host in one call (strings, lists):
/// the largest legitimate one is a write of one outgoing-body chunk.
const HOSTCALL_FUEL: usize = 4 << 20;
/// Guest-defined resource handles (`resource.new`) an instance may hold.
const MAX_COMPONENT_HANDLES: usize = 10_000;
/// Idle instances across all apps (bounded by [`MAX_IDLE_INSTANCES`]).
static IDLE: AtomicUsize = AtomicUsize::new(0);

/// An instantiated guest, by world.
pub(crate) enum Instance {
    P2(Proxy),
    P3(wasmtime_wasi_http::p3::bindings::Service),
}

/// An instance that answered cleanly and may answer again.
struct Warm {
    store: Store<HostState>,
    instance: Instance,
    /// Requests it has served.
    served: u32,
    idle_since: Instant,
}

/// One version's idle instances, most recently used last.
struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    /// Requests one instance may serve.
    max_served: u32,
    /// Idle instances kept for this version.
    max_idle: usize,
}

impl WarmPool {
    fn new(max_served: u32, max_idle: usize) -> Arc<WarmPool> {
        let pool = Arc::new(WarmPool {
            idle: Mutex::new(Vec::new()),
            max_served,
            max_idle,
        });
        // One sweeper per pool drops instances idle past the timeout; it
        // ends with the pool (when the version is gone).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            runtime.spawn(sweep(weak));
        }
        pool
    }

    fn take(&self) -> Option<Warm> {
        let warm = self.idle.lock().ok()?.pop()?;
        IDLE.fetch_sub(1, Ordering::Relaxed);
        Some(warm)
    }

    /// Keep `warm` for the next request, unless this version or the host
    /// already keeps enough idle instances (then it is dropped).
    fn put(&self, warm: Warm) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.max_idle {
            return;
        }
        let reserved = IDLE.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_IDLE_INSTANCES as usize).then_some(n + 1)
        });
        if reserved.is_ok() {
            idle.push(warm);
        }
    }

    /// Drop instances idle for longer than [`IDLE_TIMEOUT`] (outside the lock).
    fn expire(&self, now: Instant) {
        let expired: Vec<Warm> = {
            let Ok(mut idle) = self.idle.lock() else {
                return;
            };
            let fresh = idle.partition_point(|w| now.duration_since(w.idle_since) >= IDLE_TIMEOUT);
            idle.drain(..fresh).collect()
        };
        IDLE.fetch_sub(expired.len(), Ordering::Relaxed);
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        if let Ok(idle) = self.idle.get_mut() {
            IDLE.fetch_sub(idle.len(), Ordering::Relaxed);
        }
    }
}

async fn sweep(pool: Weak<WarmPool>) {
    let mut tick = tokio::time::interval(IDLE_TIMEOUT / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.expire(Instant::now()),
            None => return,
        }
    }
}

/// Why a request produced no response of the guest's own.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The guest ran past its deadline, on CPU or waiting.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit(wasmtime::Error),
    /// The guest's memory could not grow: the host-wide budget is spent.
    MemoryBudget(wasmtime::Error),
    /// The guest trapped (or a host call it made failed fatally).
    Trap(wasmtime::Error),
    /// The guest returned without calling `response-outparam::set`.
    NoResponse,
    /// The guest answered with an error code instead of a response.
    ErrorCode(String),
    /// The host could not set up the request (a bug or a malformed request).
    Setup(wasmtime::Error),
    /// Every pooled slot of some kind (core instances, memories, tables) is
    /// taken by running instances.
    PoolFull(wasmtime::Error),
}

fn quota(rps: u32) -> Option<Quota> {
    NonZeroU32::new(rps).map(Quota::per_second)
}

impl Deployment {
    pub fn new(
        identity: Identity,
        pre: Pre,
        limits: Limits,
        env: Vec<(String, String)>,
        config: Vec<(String, String)>,
        outbound: OutboundPolicy,
        share: Arc<AppShare>,
    ) -> Deployment {
        let Identity {
            app,
            version,
            digest,
            settings_key,
        } = identity;
        let metrics = Arc::new(metrics().for_version(&app, &version));
        let header_values = HeaderValue::from_str(&app)
            .ok()
            .zip(HeaderValue::from_str(&version).ok());
        let client_rate =
            quota(limits.client_rate_limit_rps).map(|q| Arc::new(RateLimiter::keyed(q)));
        if let Some(limiter) = &client_rate {
            prune_clients(Arc::downgrade(limiter), CLIENT_RATE_PRUNE);
        }
        let shared = (limits.instance_reuse > 1
            && limits.instance_concurrency > 1
            && matches!(pre, Pre::P3(_)))
        .then(|| SharedPool::new(limits.instance_concurrency, limits.instance_reuse));
        Deployment {
            app,
            version,
            digest,
            settings_key,
            pre,
            metrics,
            header_values,
            share,
            rate: quota(limits.rate_limit_rps).map(RateLimiter::direct),
            client_rate,
            shared,
            warm: (limits.instance_reuse > 1).then(|| {
                WarmPool::new(
                    limits.instance_reuse,
                    (limits.max_concurrent as usize).min(MAX_IDLE_INSTANCES as usize),
                )
            }),
            limits,
            env: env.into(),
            config: Arc::new(config.into_iter().collect()),
            outbound: Arc::new(outbound),
        }
    }

    /// Apply the app's rate limits: `Some` is the 429 to send.
    pub fn rate_limited(&self, client: Option<IpAddr>) -> Option<Response<HyperOutgoingBody>> {
        // The clock is only read on the rejecting path: building one
        // calibrates a TSC clock, which is far too slow for every request.
        if let Some(rate) = &self.rate
            && let Err(not_until) = rate.check()
        {
            metrics().reject("rate_limited");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Some(too_many(
                &format!("app {} is over its rate limit", self.app),
                wait,
            ));
        }
        if let (Some(rate), Some(ip)) = (&self.client_rate, client.map(client_key))
            && let Err(not_until) = rate.check_key(&ip)
        {
            metrics().reject("rate_limited_client");
            let wait = not_until.wait_time_from(DefaultClock::default().now());
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
    pub async fn handle<B>(
        &self,
        request: Request<B>,
        host_permit: OwnedSemaphorePermit,
        ctx: &RequestContext,
    ) -> Response<HyperOutgoingBody>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Ok(permit) = self.share.permits.clone().try_acquire_owned() else {
            metrics().reject("app_busy");
            return busy("the app is at its concurrency limit; retry shortly");
        };
        let max_body = self.limits.max_body_bytes;
        if declared_length(&request).is_some_and(|len| len > max_body) {
            metrics().reject("body_too_large");
            return too_large(max_body);
        }
        let verdict = BodyVerdict::default();
        let request = request.map(|body| LimitedBody::new(body, &self.limits, verdict.clone()));

        let outcome = self.run(request, (host_permit, permit), ctx).await;
        // A guest that gave up because the body broke a limit gets that
        // limit's status, whatever it answered.
        if verdict.too_large() {
            return too_large(max_body);
        }
        if verdict.stalled() {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body stalled for over {} ms",
                    self.limits.body_read_timeout.as_millis()
                ),
            );
        }
        if verdict.too_slow() {
            return response::error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body arrived slower than {} bytes per second",
                    self.limits.body_min_rate
                ),
            );
        }
        match outcome {
            Ok(response) => response,
            Err(failure) => failure.into_response(),
        }
    }

    /// A store for a new instance, its epoch callback reading the current
    /// request's deadline from the store (so a reused instance keeps it).
    /// `None` when the host-wide guest memory budget cannot take one more
    /// instance.
    pub(crate) fn new_store(
        &self,
        ctx: &RequestContext,
        deadline: Instant,
    ) -> Option<Store<HostState>> {
        let state = HostState::new(self, &ctx.id, deadline)?;
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_max_component_handles(MAX_COMPONENT_HANDLES);
        store.epoch_deadline_callback(|store| {
            Ok(if Instant::now() >= store.data().deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Some(store)
    }

    /// The app's world decides how its guest is called: WASI 0.2 here,
    /// WASI 0.3 in [`crate::service`].
    async fn run<B>(
        &self,
        request: Request<LimitedBody<B>>,
        permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
        ctx: &RequestContext,
    ) -> Result<Response<HyperOutgoingBody>, Failure>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match &self.pre {
            Pre::P2(pre) => self.run_p2(pre.clone(), request, permits, ctx).await,
            Pre::P3(pre) => self.run_p3(pre.clone(), request, permits, ctx).await,
        }
    }

    async fn run_p2<B>(
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

    /// What a guest run needs once its call returns (see [`Settle::ran`]).
    pub(crate) fn settle(&self, ctx: &RequestContext, started: Instant, served: u32) -> Settle {
        Settle {
            warm_pool: self.warm.clone(),
            app: self.app.clone(),
            version: self.version.clone(),
            metrics: self.metrics.clone(),
            guest_micros: ctx.guest_micros.clone(),
            started,
            served,
        }
    }

    /// When the request starts, and its deadline.
    pub(crate) fn clock(&self) -> (Instant, Instant) {
        let started = Instant::now();
        // The timeout is validated (at most an hour), so this cannot overflow.
        (
            started,
            started.checked_add(self.limits.timeout).unwrap_or(started),
        )
    }

    /// A warm instance (its store begun for this request) when the app
    /// reuses instances and one is idle, else a store for a new one; with
    /// the requests the instance has served. `pick` takes the instance of
    /// this version's world (its pool only holds those).
    pub(crate) fn warm_or_store<T>(
        &self,
        ctx: &RequestContext,
        deadline: Instant,
        pick: impl FnOnce(Instance) -> Option<T>,
    ) -> Result<(Store<HostState>, Option<T>, u32), Failure> {
        if let Some(Warm {
            mut store,
            instance,
            served,
            ..
        }) = self.warm.as_ref().and_then(|pool| pool.take())
            && let Some(instance) = pick(instance)
        {
            begin(&mut store, ctx, deadline);
            return Ok((store, Some(instance), served));
        }
        Ok((self.store_for_request(ctx, deadline)?, None, 0))
    }

    /// A store for a new instance with its deadline armed; the host-wide
    /// memory budget refusing one more instance is the failure.
    pub(crate) fn store_for_request(
        &self,
        ctx: &RequestContext,
        deadline: Instant,
    ) -> Result<Store<HostState>, Failure> {
        let Some(mut store) = self.new_store(ctx, deadline) else {
            let failure = Failure::MemoryBudget(wasmtime::format_err!(
                "the guest memory budget cannot take another instance"
            ));
            failure.log(&self.app, &self.version);
            return Err(failure);
        };
        arm_epoch(&mut store);
        Ok(store)
    }

    /// Run `guest` until it answers on `receiver`, then detach it.
    ///
    /// The guest runs on this task until it answers: most finish within
    /// the first poll and then no task is spawned. One that answered and is
    /// still streaming its body is detached to finish on its own. If the
    /// client goes away first (this future is dropped: a reset stream, a
    /// closed connection) the guest is cancelled, so requests nobody waits
    /// for cannot pile up work and hold slots. A guest that drops its
    /// answer without sending it closes the receiver: that branch is then
    /// disabled and we wait for the guest to say why.
    pub(crate) async fn finish<E: std::fmt::Debug>(
        &self,
        guest: GuestFuture,
        mut receiver: oneshot::Receiver<Result<Response<HyperOutgoingBody>, E>>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        let mut guest = GuestRun {
            future: Some(guest),
            app: self.app.clone(),
        };
        let result = tokio::select! {
            biased;
            result = guest.future() => result,
            Ok(answer) = &mut receiver => {
                guest.detach();
                return self.answered(answer);
            }
        };
        match receiver.try_recv() {
            Ok(answer) => self.answered(answer),
            Err(_) => {
                // The guest is done and never answered.
                result?;
                Failure::NoResponse.log(&self.app, &self.version);
                Err(Failure::NoResponse)
            }
        }
    }

    fn answered<E: std::fmt::Debug>(
        &self,
        answer: Result<Response<HyperOutgoingBody>, E>,
    ) -> Result<Response<HyperOutgoingBody>, Failure> {
        answer.map_err(|code| {
            let failure = Failure::ErrorCode(format!("{code:?}"));
            failure.log(&self.app, &self.version);
            failure
        })
    }
}

/// The warm instance if there is one, else a new one (its instantiation
/// time recorded).
pub(crate) async fn warm_or_new<T>(
    warm: Option<T>,
    instantiate: impl Future<Output = wasmtime::Result<T>>,
    started: Instant,
) -> wasmtime::Result<T> {
    match warm {
        Some(instance) => Ok(instance),
        None => {
            let instance = instantiate.await?;
            metrics()
                .instantiation
                .observe(started.elapsed().as_secs_f64());
            Ok(instance)
        }
    }
}

/// The end of a guest's run, whatever its world: its time is recorded, and
/// the instance goes back to the version's warm pool (instance reuse) if it
/// finished cleanly, has served fewer than its limit and holds nothing of
/// the request: no host resource, and no stream or future (a WASI 0.3
/// guest could keep its response body's writer in a global and write into
/// an earlier client's response later). A failure is logged and counted.
pub(crate) struct Settle {
    warm_pool: Option<Arc<WarmPool>>,
    app: Arc<str>,
    version: Arc<str>,
    metrics: Arc<VersionMetrics>,
    guest_micros: Arc<AtomicU64>,
    started: Instant,
    served: u32,
}

impl Settle {
    pub(crate) fn ran(
        self,
        mut store: Store<HostState>,
        called: Result<wasmtime::Result<Instance>, tokio::time::error::Elapsed>,
    ) -> Result<(), Failure> {
        let ran = self.started.elapsed();
        self.guest_micros
            .store(ran.as_micros() as u64, Ordering::Relaxed);
        self.metrics.guest_time(ran);
        let result = match called {
            Ok(Ok(instance)) => {
                if let Some(pool) = self.warm_pool
                    && self.served + 1 < pool.max_served
                    && store.data().table.is_empty()
                    && store
                        .concurrent_resource_table()
                        .is_none_or(|table| table.is_empty())
                {
                    pool.put(Warm {
                        store,
                        instance,
                        served: self.served + 1,
                        idle_since: Instant::now(),
                    });
                }
                Ok(())
            }
            Err(_elapsed) => Err(Failure::Timeout),
            Ok(Err(err)) => Err(Failure::of(&store, err)),
        };
        if let Err(failure) = &result {
            failure.log(&self.app, &self.version);
        }
        result
    }
}

/// Past each epoch tick a busy guest yields to other tasks; past the
/// deadline it traps with `Trap::Interrupt`.
fn arm_epoch(store: &mut Store<HostState>) {
    store.set_epoch_deadline(1);
}

/// Start another request on a reused instance: its request id and deadline,
/// the epoch armed again.
fn begin(store: &mut Store<HostState>, ctx: &RequestContext, deadline: Instant) {
    store.data_mut().begin(&ctx.id, deadline);
    arm_epoch(store);
}

/// Forget, `every` so often, the clients of a per-client rate limiter whose
/// state is back to full, so its memory follows the clients seen recently,
/// not every client ever seen. Ends with the limiter.
fn prune_clients(limiter: Weak<DefaultKeyedRateLimiter<IpAddr>>, every: Duration) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    });
}

/// A guest's run: the instance, its call and its clean-up.
pub(crate) type GuestFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// A guest run polled in place, on the request's task. Once the guest has
/// answered it is detached to stream the rest of its response on its own
/// (to its end or its deadline); dropped before it answered (the client
/// went away), it is cancelled: its instance is dropped at once.
struct GuestRun {
    future: Option<GuestFuture>,
    app: Arc<str>,
}

impl GuestRun {
    async fn future(&mut self) -> Result<(), Failure> {
        match &mut self.future {
            Some(future) => {
                let result = future.await;
                self.future = None;
                result
            }
            None => Ok(()),
        }
    }

    fn detach(&mut self) {
        if let Some(future) = self.future.take() {
            tokio::spawn(future);
        }
    }
}

impl Drop for GuestRun {
    fn drop(&mut self) {
        if self.future.take().is_some() {
            tracing::debug!(app = %self.app, "the client went away before the app answered: guest cancelled");
            metrics().guest_failure(&self.app, "cancelled");
        }
    }
}

impl Failure {
    /// Why a guest's call failed: its memory cap, the host's budget, its
    /// deadline (an epoch interrupt) or a trap.
    pub(crate) fn of(store: &Store<HostState>, err: wasmtime::Error) -> Failure {
        match store.data().limiter.refused {
            Some(MemoryRefusal::InstanceCap) => Failure::MemoryLimit(err),
            Some(MemoryRefusal::HostBudget) => Failure::MemoryBudget(err),
            None if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => Failure::Timeout,
            None if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                Failure::PoolFull(err)
            }
            None => Failure::Trap(err),
        }
    }

    /// The same failure again, for another request of a shared instance
    /// (the cause as text).
    pub(crate) fn duplicate(&self) -> Failure {
        let again = |err: &wasmtime::Error| wasmtime::format_err!("{err:#}");
        match self {
            Failure::Timeout => Failure::Timeout,
            Failure::MemoryLimit(err) => Failure::MemoryLimit(again(err)),
            Failure::MemoryBudget(err) => Failure::MemoryBudget(again(err)),
            Failure::Trap(err) => Failure::Trap(again(err)),
            Failure::NoResponse => Failure::NoResponse,
            Failure::ErrorCode(code) => Failure::ErrorCode(code.clone()),
            Failure::Setup(err) => Failure::Setup(again(err)),
            Failure::PoolFull(err) => Failure::PoolFull(again(err)),
        }
    }

    pub(crate) fn log(&self, app: &str, version: &str) {
        let kind = match self {
            Failure::Timeout => {
                tracing::warn!(app, version, "guest exceeded its deadline");
                "timeout"
            }
            Failure::MemoryLimit(err) => {
                tracing::warn!(app, version, cause = ?err, "guest hit its memory limit");
                "memory_limit"
            }
            Failure::MemoryBudget(err) => {
                tracing::warn!(app, version, cause = ?err, "the host's guest memory budget is spent");
                metrics().reject("memory_budget");
                "memory_budget"
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
            Failure::PoolFull(err) => {
                tracing::warn!(app, version, cause = %err, "no pooled instance slot is free");
                metrics().reject("pool_full");
                "pool_full"
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
            Failure::MemoryBudget(_) => {
                return busy("the server is out of memory for apps; retry shortly");
            }
            Failure::PoolFull(_) => {
                return busy("the server is running as many instances as it can; retry shortly");
            }
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

/// What the per-client rate limit is keyed by: the IPv4 address, or the /64
/// of an IPv6 one (a client typically holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_per_client_rate_limiter_forgets_clients_it_no_longer_sees() {
        let Some(quota) = quota(1000) else {
            unreachable!("1000 rps is a quota")
        };
        let limiter = Arc::new(RateLimiter::keyed(quota));
        for i in 0..500u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert!(limiter.check_key(&ip).is_ok());
        }
        assert_eq!(limiter.len(), 500);
        prune_clients(Arc::downgrade(&limiter), Duration::from_millis(20));
        // A token refills in 1 ms: after a few prune rounds nobody is left.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !limiter.is_empty() {
            assert!(Instant::now() < deadline, "{} clients kept", limiter.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A client seen again is tracked again.
        assert!(limiter.check_key(&IpAddr::from([10, 0, 0, 1])).is_ok());
        assert_eq!(limiter.len(), 1);
    }
}
