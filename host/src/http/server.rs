//! Serving one listener: accept (TLS optional), serve each connection with
//! hyper (HTTP/1.1 with keep-alive, HTTP/2 by ALPN or h2c), hand every
//! request to a [`Handler`], and drain gracefully when told to stop. It
//! knows nothing of apps: the public listener's handler is the front's
//! router, the admin listener's the admin API.
//!
//! Connection-level protections live here: the connection cap; a deadline
//! from accept to the first complete request head, whatever the protocol
//! (TLS handshake, HTTP/2 preface and HTTP/1 head alike), so sockets that
//! send nothing cannot hold the cap; an idle timeout for connections with
//! no request in flight, HTTP/2 keep-alive pings; HTTP/2 stream and reset
//! limits; and hyper's own parse limits set above the front's (which answer
//! 431 with a message and a metric).
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! and embedders can start a server in-process on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::metrics::metrics;

/// Something that turns a request into a response, never failing.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<HyperOutgoingBody>> + Send;
}

/// Whether the host is alive and ready, for `/healthz` and `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// What the server knows about a request's connection, as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// HTTP/2 keep-alive: a PING after this long without frames...
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...and the connection is closed if it is not answered within this.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After an idle connection is asked to close, how long it may take before
/// it is dropped (if still idle).
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The shortest header line hyper accepts (`a:\n`, httparse takes bare LF):
/// hyper's header-count limit is set so that its read buffer fills first,
/// and every head that fits the buffer reaches the front, which answers 431
/// itself.
const MIN_HEADER_LINE: usize = 3;
/// ...up to this many headers: hyper allocates room for its limit (2 × 32
/// bytes per header) on every parse. At 2,048 that is two 64 KiB blocks;
/// at the 10,922 a 32 KiB buffer could hold it was two 350 KiB blocks, which
/// cost about 1 µs (5%) per request on the instance-reuse path. A head with
/// more headers than this gets hyper's bare 431 (`head_too_large`).
const MAX_HYPER_HEADERS: usize = 2_048;

/// How each listener treats connections.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub drain: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
    /// Count this listener's connections in the `open_connections` gauge.
    pub public: bool,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Serve connections from `listener` (TLS when `tls` is set) with `handler`
/// until `shutdown` resolves; then stop accepting and give open connections
/// up to `options.drain` to finish their in-flight requests.
pub async fn run<H: Handler>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    options: ConnOptions,
) -> Result<()> {
    let local = listener
        .local_addr()
        .context("failed to read the bound address")?;
    let builder = Arc::new(connection_builder(&options));
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let (drain, draining) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        // At the connection cap, stop accepting until one closes.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let accepted = Instant::now();
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let active = activity.clone();
        let handler = handler.clone();
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let service = service_fn(move |mut request: Request<Incoming>| {
            let handler = handler.clone();
            let guard = InFlight::enter(active.clone());
            request.extensions_mut().insert(info);
            async move {
                let response = handler.handle(with_host(request, local)).await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let builder = builder.clone();
        let tls = tls.clone();
        let first_head_by = accepted + options.header_read_timeout;
        let idle_timeout = options.idle_timeout;
        let public = options.public;
        let draining = draining.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let io: Box<dyn Io> = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout_at(first_head_by, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => Box::new(tls),
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => Box::new(stream),
            };
            if public {
                metrics().connections.inc();
            }
            let conn = builder.serve_connection(TokioIo::new(io), service);
            let watchdog = idle_watchdog(activity.clone(), first_head_by, idle_timeout);
            let close = |conn: Pin<&mut _>| auto::Connection::graceful_shutdown(conn);
            if let Err(err) = drive(conn, close, watchdog, activity, draining).await {
                if let Some(hyper) = err.downcast_ref::<hyper::Error>()
                    && hyper.is_parse_too_large()
                {
                    // hyper answered 431 itself: the head did not fit its buffer.
                    metrics().reject("head_too_large");
                }
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            if public {
                metrics().connections.dec();
            }
        });
    }

    drop(listener);
    let _ = drain.send(true);
    tracing::info!(%local, deadline_ms = options.drain.as_millis() as u64, "stopped accepting: draining in-flight requests");
    // Every connection holds a slot until it ends: all slots back means drained.
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    tokio::select! {
        _ = slots.acquire_many(all) => tracing::info!(%local, "drained"),
        () = tokio::time::sleep(options.drain) => tracing::warn!(%local, "drain deadline passed; exiting with requests still in flight"),
    }
    Ok(())
}

/// hyper's connection builder for `options`.
fn connection_builder(options: &ConnOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own parse limits sit above the front's (which answer 431 with
    // a message and a metric): its buffer holds twice the front's header
    // limit, and its header count can never be the limit that is hit first.
    let buffer = (options.max_header_bytes * 2).max(16 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(buffer)
        .max_headers((buffer / MIN_HEADER_LINE).min(MAX_HYPER_HEADERS));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(options.h2_max_streams)
        .max_pending_accept_reset_streams(options.h2_max_pending_resets)
        .max_local_error_reset_streams(options.h2_max_local_error_resets)
        .max_header_list_size(u32::try_from(options.max_header_bytes * 2).unwrap_or(u32::MAX));
    builder
}

/// Drive one connection until it ends: asked to close gracefully when it
/// has been idle too long (`watchdog`) or the listener drains, and dropped
/// if it is still idle [`CLOSE_GRACE`] after that.
async fn drive<C, E>(
    conn: C,
    close_gracefully: impl Fn(Pin<&mut C>),
    watchdog: impl Future<Output = ()>,
    activity: Arc<Activity>,
    mut draining: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::pin!(watchdog);
    let mut closing: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut watching = true;
    let mut drain_seen = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            () = &mut watchdog, if watching && closing.is_none() => {
                close_gracefully(conn.as_mut());
                closing = Some(Box::pin(tokio::time::sleep(CLOSE_GRACE)));
            }
            _ = draining.wait_for(|d| *d), if !drain_seen => {
                drain_seen = true;
                close_gracefully(conn.as_mut());
            }
            () = async { closing.as_mut().expect("guarded").as_mut().await }, if closing.is_some() => {
                if activity.in_flight() == 0 {
                    return Ok(());
                }
                // A request slipped in: let it finish on its own bounds.
                closing = None;
                watching = false;
            }
        }
    }
}

/// What a connection is doing, for its idle rules: requests in flight, and
/// when the last one ended. Updated with atomics on every request; read only
/// by the connection's watchdog when its timer fires, so requests never
/// wake another task.
struct Activity {
    /// When the connection was accepted: `idle_since` counts from here.
    base: std::time::Instant,
    in_flight: AtomicUsize,
    /// A request head has arrived at least once.
    seen: AtomicBool,
    /// Milliseconds after `base` when the last request in flight ended.
    idle_since: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            base: std::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
        })
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    fn idle_since(&self) -> Instant {
        let ms = self.idle_since.load(Ordering::Acquire);
        Instant::from_std(self.base) + Duration::from_millis(ms)
    }
}

/// Resolves when a connection has gone too long without a request in
/// flight: at `first_head_by` if no request head has arrived (a socket that
/// sends nothing, or half a preface), then once nothing has been in flight
/// for `idle`. It only looks when its timer fires.
fn idle_watchdog(
    activity: Arc<Activity>,
    first_head_by: Instant,
    idle: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        loop {
            let now = Instant::now();
            let wake = if !activity.seen.load(Ordering::Acquire) {
                if now >= first_head_by {
                    return;
                }
                // A request may come and go before the first-head deadline:
                // look again within an idle period.
                first_head_by.min(now + idle)
            } else if activity.in_flight() > 0 {
                now + idle
            } else {
                activity.idle_since() + idle
            };
            if wake <= now {
                return;
            }
            tokio::time::sleep_until(wake).await;
        }
    })
}

/// Counts one request in flight on its connection, from its complete head
/// until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.seen.store(true, Ordering::Release);
        InFlight(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let ms = activity.base.elapsed().as_millis() as u64;
            activity.idle_since.store(ms, Ordering::Release);
        }
    }
}

/// A response body that keeps its request counted as in flight.
struct TrackedBody {
    inner: HyperOutgoingBody,
    _guard: InFlight,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// wasi:http needs an authority; HTTP/1.0 clients may send none.
fn with_host(mut request: Request<Incoming>, local: SocketAddr) -> Request<Incoming> {
    if request.uri().authority().is_none()
        && !request.headers().contains_key(header::HOST)
        && let Ok(host) = HeaderValue::from_str(&local.to_string())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    request
}
