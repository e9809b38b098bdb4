//! Resource limits: the per-instance memory limiter that wasmtime consults on
//! every `memory.grow`/`table.grow`, the host-wide guest memory budget it
//! charges, and the request body guard that turns an over-long upload into
//! 413 and a stalled or trickled one into 408, without ever buffering the
//! body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use wasmtime::ResourceLimiter;

use crate::metrics::metrics;

/// The limits every request of an app runs under: the host's defaults,
/// overridden per app by its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget per request: guest CPU and waiting alike.
    pub timeout: Duration,
    /// Requests of this app served at once.
    pub max_concurrent: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// Average bytes per second a request body must keep up after
    /// [`Limits::body_min_rate_grace`] (0: no minimum), so a trickle cannot
    /// hold a slot for long.
    pub body_min_rate: u32,
    /// Time a body may take before the minimum rate applies.
    pub body_min_rate_grace: Duration,
    /// Requests per second per app (0: unlimited); the burst is one second's worth.
    pub rate_limit_rps: u32,
    /// Requests per second per client IP, per app (0: unlimited).
    pub client_rate_limit_rps: u32,
    /// Requests one instance may serve, one after another (1: a fresh
    /// instance per request). Only for apps that keep no state between
    /// requests: memory and globals carry over.
    pub instance_reuse: u32,
    /// Requests one instance of a WASI 0.3 component may serve at once,
    /// when instances are reused (see [`crate::runtime::shared`]).
    pub instance_concurrency: u32,
    /// Host-side resources (wasi:http fields, bodies, streams, pollables…)
    /// an instance may hold at once.
    pub max_resources: u32,
    /// Outbound HTTP calls one instance may have in flight.
    pub max_outbound: u32,
    /// Outbound HTTP calls all instances of one app may have in flight.
    pub max_outbound_app: u32,
}

impl Limits {
    /// Limits for tests and the in-process bench: 128 MiB, 30 s, 100 at
    /// once, 1 MiB bodies, a fresh instance per request.
    #[doc(hidden)]
    pub fn fixture() -> Limits {
        Limits {
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(30),
            max_concurrent: 100,
            max_body_bytes: 1 << 20,
            body_read_timeout: Duration::from_secs(10),
            body_min_rate: 1024,
            body_min_rate_grace: Duration::from_secs(5),
            rate_limit_rps: 0,
            client_rate_limit_rps: 0,
            instance_reuse: 1,
            instance_concurrency: 1,
            max_resources: 1024,
            max_outbound: 16,
            max_outbound_app: 256,
        }
    }
}

/// The most requests one instance may serve with instance reuse.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;
/// The most requests one instance may serve at once.
pub const MAX_INSTANCE_CONCURRENCY: u32 = 256;

/// What one table element is charged against the memory budget.
const TABLE_ELEMENT_BYTES: u64 = 16;

/// The host-wide budget for guest memory (`--memory-budget-mib`): every
/// instance reserves what the host may hold for it outside its memories
/// when it is made, and its linear memories and tables are charged as they
/// grow; all is released when the instance is dropped. So the sum of what
/// all instances hold can never exceed what the operator configured,
/// whatever `--max-concurrent` × `--memory-mib` would allow.
///
/// An app's own budget is a child of the host's: what its instances charge
/// counts against both, so one app cannot take the whole host's.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    used: AtomicU64,
    parent: Option<Arc<MemoryBudget>>,
}

impl MemoryBudget {
    pub fn new(limit_bytes: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: limit_bytes,
            used: AtomicU64::new(0),
            parent: None,
        })
    }

    /// A budget of at most `limit_bytes` whose charges also count against
    /// `parent`.
    pub fn child(parent: &Arc<MemoryBudget>, limit_bytes: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: limit_bytes.min(parent.limit),
            used: AtomicU64::new(0),
            parent: Some(parent.clone()),
        })
    }

    /// Bytes the operator allows in all.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn try_charge(&self, bytes: u64) -> bool {
        let charged = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !charged {
            return false;
        }
        if let Some(parent) = &self.parent
            && !parent.try_charge(bytes)
        {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(&self, bytes: u64) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
        if let Some(parent) = &self.parent {
            parent.release(bytes);
        }
    }
}

/// What stopped a guest's memory from growing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryRefusal {
    /// Its own cap (`--memory-mib` or the app's `memory_mib`).
    InstanceCap,
    /// The host-wide budget (`--memory-budget-mib`) is spent.
    HostBudget,
}

/// Caps an instance's linear memory and tables, charges them to the
/// host-wide [`MemoryBudget`], and remembers what stopped the guest so the
/// failure can be reported as such.
pub struct GuestLimiter {
    memory_bytes: usize,
    budget: Arc<MemoryBudget>,
    /// Bytes this instance has charged to the budget: its host-side
    /// reserve, then its memories and tables as they grow.
    charged: u64,
    /// Bytes of linear memory the instance holds: they only grow, so at
    /// its end this is its peak.
    memory_held: u64,
    pub refused: Option<MemoryRefusal>,
}

impl GuestLimiter {
    /// A limiter that has reserved `host_reserve` bytes (what the host may
    /// hold for the instance outside its memories) from the budget; `None`
    /// when the budget cannot take them.
    pub fn new(memory_bytes: u64, budget: Arc<MemoryBudget>, host_reserve: u64) -> Option<Self> {
        if !budget.try_charge(host_reserve) {
            return None;
        }
        Some(GuestLimiter {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            budget,
            charged: host_reserve,
            memory_held: 0,
            refused: None,
        })
    }

    /// The linear memory the instance has grown to (all its memories).
    pub fn memory_held(&self) -> u64 {
        self.memory_held
    }

    fn charge(&mut self, bytes: u64) -> bool {
        if self.budget.try_charge(bytes) {
            self.charged += bytes;
            true
        } else {
            false
        }
    }
}

impl Drop for GuestLimiter {
    fn drop(&mut self) {
        self.budget.release(self.charged);
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // wasmtime asks before it checks the memory's own maximum: a growth
        // that will fail anyway is refused here, before anything is charged.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        if desired > self.memory_bytes {
            self.refused = Some(MemoryRefusal::InstanceCap);
            wasmtime::bail!(
                "guest tried to grow its memory from {current} to {desired} bytes, over its limit of {} bytes",
                self.memory_bytes
            );
        }
        let growth = desired.saturating_sub(current) as u64;
        if !self.charge(growth) {
            self.refused = Some(MemoryRefusal::HostBudget);
            wasmtime::bail!(
                "guest tried to grow its memory by {growth} bytes, but the host's guest memory budget of {} bytes is spent",
                self.budget.limit()
            );
        }
        self.memory_held += growth;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // A pooled table's maximum is its slot (`--max-table-elements`), so
        // growth past the slot is refused here too, before any charge.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        let growth = desired.saturating_sub(current) as u64 * TABLE_ELEMENT_BYTES;
        if !self.charge(growth) {
            self.refused = Some(MemoryRefusal::HostBudget);
            wasmtime::bail!(
                "guest tried to grow a table, but the host's guest memory budget of {} bytes is spent",
                self.budget.limit()
            );
        }
        Ok(true)
    }
}

/// Why a request body stopped early, shared between the body and the host.
#[derive(Debug, Default, Clone)]
pub struct BodyVerdict(Arc<AtomicU8>);

impl BodyVerdict {
    const TOO_LARGE: u8 = 1;
    const STALLED: u8 = 2;
    const TOO_SLOW: u8 = 3;

    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    /// Nothing arrived for the read timeout.
    pub fn stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::STALLED
    }

    /// It kept arriving, but slower than the minimum rate.
    pub fn too_slow(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_SLOW
    }

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// A request body that fails once more than `limit` bytes have arrived
/// (`HttpRequestBodySize`), when the client sends nothing for
/// `read_timeout`, or when it falls below `min_rate` bytes per second on
/// average once `grace` is over (`ConnectionReadTimeout`), and records which
/// in its [`BodyVerdict`] so the host can answer 413 or 408. The rate rule
/// is what stops a client that sends a byte every few seconds from holding
/// a concurrency slot for the whole request timeout. Only time spent
/// waiting for the client counts: a guest that reads slowly does not make
/// its client too slow.
pub struct LimitedBody<B = Incoming> {
    inner: B,
    remaining: u64,
    limit: u64,
    read_timeout: Duration,
    min_rate: u32,
    grace: Duration,
    received: u64,
    /// Time spent waiting for the client, before the current wait.
    waited: Duration,
    /// When the current wait for the client began.
    waiting_since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    verdict: BodyVerdict,
    /// A limit was broken: every later poll fails the same way.
    broken: Option<fn() -> wasmtime_wasi_http::Error>,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limits: &Limits, verdict: BodyVerdict) -> Self {
        LimitedBody {
            inner,
            remaining: limits.max_body_bytes,
            limit: limits.max_body_bytes,
            read_timeout: limits.body_read_timeout,
            min_rate: limits.body_min_rate,
            grace: limits.body_min_rate_grace,
            received: 0,
            waited: Duration::ZERO,
            waiting_since: None,
            timer: None,
            verdict,
            broken: None,
        }
    }

    /// When the wait that began at `since` breaks a limit, and which: the
    /// pause (`read_timeout`), or the rate (after the grace, one more
    /// second of waiting for every `min_rate` bytes received).
    fn deadline(&self, since: Instant) -> (Instant, u8) {
        let stall = since.checked_add(self.read_timeout).unwrap_or(since);
        let rate = u64::from(self.min_rate);
        if rate == 0 {
            return (stall, BodyVerdict::STALLED);
        }
        let earned = Duration::from_millis(self.received.saturating_mul(1000) / rate);
        let allowed = self
            .grace
            .saturating_add(earned)
            .saturating_sub(self.waited);
        match since.checked_add(allowed) {
            Some(slow) if slow < stall => (slow, BodyVerdict::TOO_SLOW),
            _ => (stall, BodyVerdict::STALLED),
        }
    }

    /// Record that `verdict` stopped the body (once) and say so.
    fn fail(&mut self, verdict: u8) -> wasmtime_wasi_http::Error {
        self.verdict.set(verdict);
        metrics().reject(match verdict {
            BodyVerdict::TOO_LARGE => "body_too_large",
            BodyVerdict::TOO_SLOW => "body_too_slow",
            _ => "body_timeout",
        });
        let limit = self.limit;
        self.broken = Some(if verdict == BodyVerdict::TOO_LARGE {
            || wasmtime_wasi_http::Error::HttpRequestBodySize(None)
        } else {
            || wasmtime_wasi_http::Error::ConnectionReadTimeout
        });
        if verdict == BodyVerdict::TOO_LARGE {
            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
        } else {
            wasmtime_wasi_http::Error::ConnectionReadTimeout
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(error) = this.broken {
            return Poll::Ready(Some(Err(error())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(since) = this.waiting_since.take() {
                    this.waited += since.elapsed();
                }
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(this.fail(BodyVerdict::TOO_LARGE))));
                    }
                    this.remaining -= len;
                    this.received += len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let (at, verdict) = this.deadline(since);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at.into())));
                if timer.deadline() != at.into() {
                    timer.as_mut().reset(at.into());
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(this.fail(verdict)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_that_cannot_happen_charges_nothing() {
        let host = MemoryBudget::new(64 << 20);
        let mut limiter = GuestLimiter::new(32 << 20, host.clone(), 1 << 20).unwrap();
        assert_eq!(host.used(), 1 << 20);
        // A table grown past its maximum (its own, or the pool's slot).
        assert!(!limiter.table_growing(10, 1_000_000, Some(100)).unwrap());
        // A memory grown past its declared maximum.
        assert!(
            !limiter
                .memory_growing(1 << 16, 2 << 20, Some(1 << 20))
                .unwrap()
        );
        assert_eq!(host.used(), 1 << 20, "nothing was charged");
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert_eq!(host.used(), 5 << 20);
        drop(limiter);
        assert_eq!(host.used(), 0, "everything is released with the instance");
    }

    #[test]
    fn an_app_budget_counts_against_the_host_and_stops_at_its_own_limit() {
        let host = MemoryBudget::new(100);
        let a = MemoryBudget::child(&host, 75);
        let b = MemoryBudget::child(&host, 75);
        assert!(a.try_charge(70));
        assert!(!a.try_charge(10), "over a's own limit");
        assert!(b.try_charge(30));
        assert!(!b.try_charge(1), "the host is full");
        assert_eq!((host.used(), a.used(), b.used()), (100, 70, 30));
        a.release(70);
        assert!(b.try_charge(45));
        assert_eq!((host.used(), a.used(), b.used()), (75, 0, 75));
    }
}
