//! Resource limits: the per-instance memory limiter that wasmtime consults on
//! every `memory.grow`/`table.grow`, and the request body guard that turns an
//! over-long upload into 413 and a trickled one into 408, without ever
//! buffering the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use wasmtime::ResourceLimiter;

use crate::metrics::metrics;

/// The limits every request runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap per instance, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget per request: guest CPU and waiting alike.
    pub timeout: Duration,
    /// Requests served at once.
    pub max_concurrent: u32,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Longest wait for the next piece of a request body.
    pub body_read_timeout: Duration,
    /// Requests per second per app (0: unlimited); the burst is one second's worth.
    pub rate_limit_rps: u32,
    /// Requests per second per client IP, per app (0: unlimited).
    pub client_rate_limit_rps: u32,
    /// Requests one instance may serve, one after another (1: a fresh
    /// instance per request). Only for apps that keep no state between
    /// requests: memory and globals carry over.
    pub instance_reuse: u32,
}

/// The most requests one instance may serve with instance reuse.
pub const MAX_INSTANCE_REUSE: u32 = 100_000;

/// Table growth cap per instance (elements); generous for real guests.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Caps an instance's linear memory and tables, and remembers whether the
/// cap was what stopped the guest so the failure can be reported as such.
pub struct GuestLimiter {
    memory_bytes: usize,
    pub memory_limit_hit: bool,
}

impl GuestLimiter {
    pub fn new(memory_bytes: u64) -> Self {
        GuestLimiter {
            memory_bytes: usize::try_from(memory_bytes).unwrap_or(usize::MAX),
            memory_limit_hit: false,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.memory_limit_hit = true;
            wasmtime::bail!(
                "guest tried to grow its memory from {current} to {desired} bytes, over its limit of {} bytes",
                self.memory_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Why a request body stopped early, shared between the body and the host.
#[derive(Debug, Default, Clone)]
pub struct BodyVerdict(Arc<AtomicU8>);

impl BodyVerdict {
    const TOO_LARGE: u8 = 1;
    const TIMED_OUT: u8 = 2;

    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    pub fn timed_out(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TIMED_OUT
    }

    fn set(&self, v: u8) {
        self.0.store(v, Ordering::Relaxed);
    }
}

/// A request body that fails once more than `limit` bytes have arrived
/// (`HttpRequestBodySize`), or when the client sends nothing for
/// `read_timeout` (`ConnectionReadTimeout`), and records which in its
/// [`BodyVerdict`] so the host can answer 413 or 408.
pub struct LimitedBody<B = Incoming> {
    inner: B,
    remaining: u64,
    limit: u64,
    read_timeout: Duration,
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    verdict: BodyVerdict,
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, read_timeout: Duration, verdict: BodyVerdict) -> Self {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            read_timeout,
            idle: None,
            verdict,
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle = None;
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.verdict.set(BodyVerdict::TOO_LARGE);
                        metrics().reject("body_too_large");
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.limit)),
                        )));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.read_timeout;
                let idle = this
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match idle.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.verdict.set(BodyVerdict::TIMED_OUT);
                        metrics().reject("body_timeout");
                        Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
                    }
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
