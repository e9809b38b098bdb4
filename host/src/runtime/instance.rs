//! Making and running instances of one served version: a `Store` per
//! instance (WASI context, resource table, memory limiter with its share of
//! the guest memory budget, the epoch deadline), the warm pool of instance
//! reuse, and the common end of every guest run ([`Settle`]). What differs
//! by world is the call: WASI 0.2 in [`crate::runtime::p2`], WASI 0.3 in
//! [`crate::runtime::p3`] and [`crate::runtime::shared`].
//!
//! The guest runs on the request's task until it answers; then it is
//! detached so it can keep streaming the response body, and if the client
//! goes away before that it is cancelled ([`Instances::finish`]). The
//! request's deadline is enforced twice: on guest CPU by the engine's
//! epoch (the guest traps), and on a guest that waits by a tokio timeout
//! (its instance is dropped).
//!
//! Apps that declare themselves stateless (`instance_reuse` > 1) skip the
//! instantiation: an instance that answered cleanly goes back to its
//! version's [`WarmPool`] and serves the next request, up to
//! `instance_reuse` requests. A trap, the deadline, the memory cap or
//! resources the guest left behind drop it instead.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use http::Response;
use tokio::sync::{Semaphore, oneshot};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::Proxy;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::metrics::{VersionMetrics, metrics};
use crate::runtime::component::Pre;
use crate::runtime::engine::MAX_IDLE_INSTANCES;
use crate::runtime::failure::Failure;
use crate::runtime::keyvalue::KvAccess;
use crate::runtime::limits::{Limits, MemoryBudget};
use crate::runtime::outbound::OutboundPolicy;
use crate::runtime::state::{HostState, StoreInputs};

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

/// How one served version makes and runs its instances: its
/// pre-instantiated component and everything each store is built from.
pub(crate) struct Instances {
    pub(crate) app: Arc<str>,
    pub(crate) version: Arc<str>,
    pub(crate) pre: Pre,
    pub(crate) limits: Limits,
    pub(crate) env: Arc<[(String, String)]>,
    pub(crate) config: Arc<WasiConfigVariables>,
    pub(crate) outbound: Arc<OutboundPolicy>,
    pub(crate) kv: Arc<KvAccess>,
    /// What all versions of the app share (concurrency, outbound calls,
    /// memory budget).
    pub(crate) share: Arc<AppShare>,
    /// Idle instances, when the app opted into instance reuse.
    pub(crate) warm: Option<Arc<WarmPool>>,
    pub(crate) metrics: Arc<VersionMetrics>,
}

/// An idle instance not reused within this long is dropped.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
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
pub(crate) struct Warm {
    store: Store<HostState>,
    instance: Instance,
    /// Requests it has served.
    served: u32,
    idle_since: Instant,
}

/// One version's idle instances, most recently used last.
pub(crate) struct WarmPool {
    idle: Mutex<Vec<Warm>>,
    /// Requests one instance may serve.
    max_served: u32,
    /// Idle instances kept for this version.
    max_idle: usize,
}

impl WarmPool {
    pub(crate) fn new(max_served: u32, max_idle: usize) -> Arc<WarmPool> {
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

impl Instances {
    /// A store for a new instance, its epoch callback reading the current
    /// request's deadline from the store (so a reused instance keeps it).
    /// `None` when the host-wide guest memory budget cannot take one more
    /// instance.
    pub(crate) fn new_store(
        &self,
        ctx: &RequestContext,
        deadline: Instant,
    ) -> Option<Store<HostState>> {
        let state = HostState::new(
            StoreInputs {
                app: &self.app,
                limits: &self.limits,
                budget: &self.share.budget,
                outbound_calls: &self.share.outbound_calls,
                env: &self.env,
                config: &self.config,
                outbound: &self.outbound,
                kv: &self.kv,
            },
            &ctx.id,
            deadline,
        )?;
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
    pub(crate) fn answered<E: std::fmt::Debug>(
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
        self.metrics
            .guest_memory(store.data().limiter.memory_held());
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
pub(crate) fn arm_epoch(store: &mut Store<HostState>) {
    store.set_epoch_deadline(1);
}

/// Start another request on a reused instance: its request id and deadline,
/// the epoch armed again.
pub(crate) fn begin(store: &mut Store<HostState>, ctx: &RequestContext, deadline: Instant) {
    store.data_mut().begin(&ctx.id, deadline);
    arm_epoch(store);
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
