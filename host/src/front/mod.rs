//! The public request path in front of the apps: request ids, header caps,
//! path normalisation, routing (through [`crate::routing`]), rate limits,
//! the host-wide concurrency cap and access logs; then the served version
//! takes the request.
//!
//! Paths are normalised before routing, the way a proxy in front would
//! (RFC 3986 §6, like nginx and Envoy's `normalize_path` +
//! `merge_slashes`): percent-encoded unreserved characters are decoded,
//! `.` and `..` segments are resolved and repeated slashes merged; a
//! percent-encoded `/` or `\`, or a broken `%` escape, is refused with 400.
//! The app sees the normalised path, so what it serves is what was routed
//! to it. Host names are matched without a trailing dot.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::response;
use crate::http::server::{ConnInfo, Handler};
use crate::metrics::metrics;
use crate::routing::Routes;
use crate::runtime::failure::busy;
use crate::runtime::instance::RequestContext;
use crate::runtime::served::ServedVersion;

/// Limits and switches of the public front.
#[derive(Debug, Clone, Copy)]
pub struct FrontConfig {
    pub max_concurrent: u32,
    pub version_headers: bool,
    pub max_header_bytes: usize,
    pub max_headers: usize,
}

/// The public front: give each request an id, check its headers, route it
/// to an app and a version, apply rate limits and the host-wide
/// concurrency cap, and log one access line when its response ends.
pub struct Router {
    routes: Arc<Routes>,
    permits: Arc<Semaphore>,
    config: FrontConfig,
}

pub const APP_HEADER: &str = "x-app-name";
pub const VERSION_HEADER: &str = "x-app-version";
pub const REQUEST_ID_HEADER: &str = "x-request-id";

impl Router {
    /// A front that routes by what is published to `routes`.
    pub fn new(config: FrontConfig, routes: Arc<Routes>) -> Router {
        Router {
            routes,
            permits: Arc::new(Semaphore::new(config.max_concurrent as usize)),
            config,
        }
    }

    pub async fn handle(&self, mut request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let started = Instant::now();
        let in_flight = InFlight::enter();
        let conn = request.extensions().get::<ConnInfo>().copied();
        let id: Arc<str> = request_id(request.headers()).into();
        let id_value = HeaderValue::from_str(&id).ok();
        if let Some(v) = &id_value {
            request.headers_mut().insert(REQUEST_ID_HEADER, v.clone());
        }
        let ctx = RequestContext {
            id: id.clone(),
            scheme: if conn.is_some_and(|c| c.tls) {
                Scheme::Https
            } else {
                Scheme::Http
            },
            guest_micros: Arc::new(AtomicU64::new(0)),
        };
        let method = request.method().clone();
        // The path is only copied when the access log is on.
        let path = if tracing::enabled!(target: "access", tracing::Level::INFO) {
            request.uri().path().to_string()
        } else {
            String::new()
        };

        let (mut response, served) = self.dispatch(request, conn, &ctx).await;
        let headers = response.headers_mut();
        if let Some(v) = id_value {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        if let Some(d) = &served
            && self.config.version_headers
            && let Some((app, version)) = &d.header_values
        {
            headers.insert(APP_HEADER, app.clone());
            headers.insert(VERSION_HEADER, version.clone());
        }
        let status = response.status().as_u16();
        // HEAD, 1xx, 204 and 304 responses carry no body: hyper never polls it.
        let bodiless = method == http::Method::HEAD || matches!(status, 100..=199 | 204 | 304);
        let expected = if bodiless {
            Some(0)
        } else {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .or_else(|| http_body::Body::size_hint(response.body()).exact())
        };
        let log = AccessLog {
            id,
            served,
            method,
            path,
            status,
            started,
            guest_micros: ctx.guest_micros,
            bytes: 0,
            completed: expected == Some(0),
            _in_flight: in_flight,
        };
        response.map(|body| {
            AccessBody {
                inner: body,
                expected,
                log,
            }
            .boxed_unsync()
        })
    }

    async fn dispatch(
        &self,
        request: Request<Incoming>,
        conn: Option<ConnInfo>,
        ctx: &RequestContext,
    ) -> (Response<HyperOutgoingBody>, Option<Arc<ServedVersion>>) {
        let headers = request.headers();
        if headers.len() > self.config.max_headers {
            metrics().reject("too_many_headers");
            let message = format!(
                "the request has more than {} headers",
                self.config.max_headers
            );
            return (
                response::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message),
                None,
            );
        }
        let header_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum();
        if header_bytes > self.config.max_header_bytes {
            metrics().reject("headers_too_large");
            let message = format!(
                "the request headers are larger than {} bytes",
                self.config.max_header_bytes
            );
            return (
                response::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &message),
                None,
            );
        }
        let mut request = request;
        match normalize_path(request.uri().path()) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(path)) => {
                if let Err(message) = set_path(&mut request, &path) {
                    metrics().reject("bad_path");
                    return (response::error(StatusCode::BAD_REQUEST, &message), None);
                }
            }
            Err(message) => {
                metrics().reject("bad_path");
                return (response::error(StatusCode::BAD_REQUEST, &message), None);
            }
        }
        let served = {
            let table = self.routes.table();
            let host = request_host(&request);
            match table.lookup(host.as_deref(), request.uri().path()) {
                Some(app) => app.pick(request.headers()).clone(),
                None => {
                    metrics().reject("no_route");
                    let message = format!("no app is routed at {}", request.uri().path());
                    return (response::error(StatusCode::NOT_FOUND, &message), None);
                }
            }
        };
        if let Some(limited) = served.rate_limited(conn.map(|c| c.peer.ip())) {
            return (limited, Some(served));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            metrics().reject("host_busy");
            let busy = busy("the server is at its concurrency limit; retry shortly");
            return (busy, Some(served));
        };
        let response = served.handle(request, permit, ctx).await;
        (response, Some(served))
    }
}

/// The incoming `x-request-id` if it is sane (1-128 visible ASCII
/// characters), else a fresh random one.
fn request_id(headers: &HeaderMap) -> String {
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
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
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
struct AccessLog {
    id: Arc<str>,
    served: Option<Arc<ServedVersion>>,
    method: http::Method,
    path: String,
    status: u16,
    started: Instant,
    guest_micros: Arc<AtomicU64>,
    bytes: u64,
    completed: bool,
    _in_flight: InFlight,
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
struct AccessBody {
    inner: HyperOutgoingBody,
    /// The body's declared length, if it has one: hyper stops polling once
    /// it has sent that many bytes, so reaching it means complete.
    expected: Option<u64>,
    log: AccessLog,
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

/// The request's host name, lowercased, without a port or a trailing dot.
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().host() {
        Some(h) => h.to_string(),
        None => {
            let value = request.headers().get(header::HOST)?.to_str().ok()?;
            match value.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
                _ => value.to_string(),
            }
        }
    };
    let mut host = raw.to_ascii_lowercase();
    if host.ends_with('.') {
        host.pop();
    }
    Some(host)
}

/// Is `b` an RFC 3986 unreserved character (safe to decode from `%XX`)?
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalise a request path for routing (see the module header). Borrowed
/// when nothing changes, which is the common case and costs one scan.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, String> {
    let bytes = path.as_bytes();
    let plain = !bytes.contains(&b'%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..");
    if plain {
        return Ok(Cow::Borrowed(path));
    }
    // Decode unreserved escapes, upper-case the others, refuse escaped
    // separators and broken escapes.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            decoded.push(bytes[i]);
            i += 1;
            continue;
        }
        // Two hex digits, nothing else (`from_str_radix` alone would take `+1`).
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("the path {path:?} has a broken %-escape"))?;
        if hex == b'/' || hex == b'\\' {
            return Err(format!(
                "the path {path:?} has an encoded `/` or `\\`, which is ambiguous: send it unencoded"
            ));
        }
        if unreserved(hex) {
            decoded.push(hex);
        } else {
            decoded.extend_from_slice(format!("%{hex:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII was replaced, by ASCII: still UTF-8.
    let decoded =
        String::from_utf8(decoded).map_err(|_| format!("the path {path:?} is not valid UTF-8"))?;
    // Remove dot segments and empty segments.
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || (trailing && !segments.is_empty()) {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Replace the request's path, keeping its query.
fn set_path<B>(request: &mut Request<B>, path: &str) -> Result<(), String> {
    let mut parts = request.uri().clone().into_parts();
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| format!("the normalised path {path:?} is not a valid URI path"))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|e| format!("cannot rewrite the path: {e}"))?;
    Ok(())
}

impl Handler for Router {
    async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        Router::handle(self, request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised_like_a_proxy_would() {
        let n = |p| normalize_path(p).map(|c| c.into_owned());
        assert!(matches!(normalize_path("/a/b?x"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/private/../public/x").unwrap(), "/public/x");
        assert_eq!(n("//app").unwrap(), "/app");
        assert_eq!(n("/a//b///c").unwrap(), "/a/b/c");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(n("/../../etc").unwrap(), "/etc");
        assert_eq!(n("/a/..").unwrap(), "/");
        assert_eq!(n("/%70rivate").unwrap(), "/private");
        assert_eq!(n("/a/%2e%2e/b").unwrap(), "/b");
        assert_eq!(n("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert!(n("/a%2Fb").is_err());
        assert!(n("/a%5cb").is_err());
        assert!(n("/a%zz").is_err());
        assert!(n("/a%2").is_err());
        assert!(n("/a%+1").is_err());
    }

    #[test]
    fn host_names_match_without_a_trailing_dot() {
        let request = Request::get("http://x.example.com./a").body(()).unwrap();
        assert_eq!(request_host(&request).as_deref(), Some("x.example.com"));
        let request = Request::get("/a")
            .header("host", "X.Example.COM.:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&request).as_deref(), Some("x.example.com"));
    }
}
