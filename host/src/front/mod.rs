//! The public request path in front of the apps: request ids, header caps,
//! path normalisation, routing (through [`crate::routing`]), rate limits,
//! the host-wide concurrency cap and access logs; then the served version
//! takes the request.
//!
//! [`path`] reads where a request goes (host name and normalised path;
//! a path that cannot be normalised is refused with 400); [`access`] gives
//! it an id and writes its access-log line when the response ends.

pub mod access;
pub mod path;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::front::access::{AccessBody, AccessLog, InFlight, REQUEST_ID_HEADER, request_id};
use crate::front::path::{normalize_path, request_host, set_path};
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

impl Handler for Router {
    async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        Router::handle(self, request).await
    }
}
