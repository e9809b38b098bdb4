//! What the front records of each request: its id (`x-request-id`, kept
//! when sane, else fresh), the in-flight gauge, and one access-log line
//! written when the response body ends or is dropped, with its bytes and
//! whether it completed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::metrics::metrics;
use crate::runtime::served::ServedVersion;

/// The request id header, read and echoed.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The incoming `x-request-id` if it is sane (1-128 visible ASCII
/// characters), else a fresh random one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    if let Some(id) = headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok())
        && (1..=128).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_graphic())
    {
        return id.to_string();
    }
    format!("{:032x}", fastrand::u128(..))
}

/// Counts a request in flight from arrival until its response body is done
/// (or the client goes away).
pub(crate) struct InFlight;

impl InFlight {
    pub(crate) fn enter() -> InFlight {
        metrics().in_flight.inc();
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics().in_flight.dec();
    }
}

/// One access-log line, written when the response body ends or is dropped.
pub(crate) struct AccessLog {
    pub(crate) id: Arc<str>,
    pub(crate) served: Option<Arc<ServedVersion>>,
    pub(crate) method: http::Method,
    pub(crate) path: String,
    pub(crate) status: u16,
    pub(crate) started: Instant,
    pub(crate) guest_micros: Arc<AtomicU64>,
    pub(crate) bytes: u64,
    pub(crate) completed: bool,
    pub(crate) _in_flight: InFlight,
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let (app, version) = match &self.served {
            Some(d) => {
                d.metrics.request(self.status, elapsed);
                (&*d.app, &*d.version)
            }
            None => ("-", "-"),
        };
        let guest_ms = self.guest_micros.load(Ordering::Relaxed) as f64 / 1000.0;
        tracing::info!(
            target: "access",
            request_id = %self.id,
            app,
            version,
            method = %self.method,
            path = %self.path,
            status = self.status,
            bytes = self.bytes,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            guest_ms,
            completed = self.completed,
            "request"
        );
    }
}

/// A response body that counts its bytes and carries the access log.
pub(crate) struct AccessBody {
    pub(crate) inner: HyperOutgoingBody,
    /// The body's declared length, if it has one: hyper stops polling once
    /// it has sent that many bytes, so reaching it means complete.
    pub(crate) expected: Option<u64>,
    pub(crate) log: AccessLog,
}

impl http_body::Body for AccessBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes += data.len() as u64;
                }
                if this.expected == Some(this.log.bytes) || this.inner.is_end_stream() {
                    this.log.completed = true;
                }
            }
            Poll::Ready(None) => this.log.completed = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
