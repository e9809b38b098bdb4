//! The admin API, on its own listener (never the public port). JSON in and
//! out; `api/openapi.json` describes it.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/v1/apps` | list apps |
//! | GET | `/v1/apps/{name}` | one app |
//! | POST | `/v1/apps/{name}/versions` | deploy (multipart: `component`, `settings`) |
//! | POST | `/v1/apps/{name}/rollback` | roll back (`{"version": ...}` optional) |
//! | PUT | `/v1/apps/{name}/canary` | set a canary (`{"version","weight","sticky"}`) |
//! | POST | `/v1/apps/{name}/canary/promote` | make the canary current |
//! | DELETE | `/v1/apps/{name}/canary` | abort the canary |
//! | DELETE | `/v1/apps/{name}` | delete the app |
//! | GET | `/healthz` | liveness (no token needed) |
//! | GET | `/readyz` | readiness: apps loaded and not draining (no token needed) |
//! | GET | `/metrics` | Prometheus metrics (no token needed) |
//!
//! With a token configured every request needs `Authorization: Bearer
//! TOKEN`; a missing or wrong one is 401 and changes nothing.
//!
//! Web pages are kept out in every configuration, because a browser can
//! send a `multipart/form-data` POST to any address without a preflight and
//! a DNS-rebound name makes a page same-origin with us: a request carrying
//! `Origin` (or `Sec-Fetch-Site` other than `none`) is refused with 403, and
//! without a token the `Host` must name this listener (its own address or
//! `localhost` with its port). Only `/healthz`, `/readyz` and `/metrics`
//! answer anyone, read-only, for probes and scrapers.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::apps::error::AppError;
use crate::apps::registry::Registry;
use crate::apps::views::DeployRequest;
use crate::http::response;
use crate::http::server::{Handler, Health};
use crate::metrics::metrics;
use crate::runtime::limits::MemoryBudget;

/// Largest JSON body accepted by the admin endpoints other than deploy.
const MAX_JSON_BODY: usize = 64 * 1024;
/// Longest pause in an upload before the deploy is abandoned (it holds one
/// of the [`MAX_CONCURRENT_DEPLOYS`] slots meanwhile).
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);
/// Deploys read and compiled at once; more are refused (503) so that
/// uploads held in memory stay bounded by this × `--max-upload-bytes`.
pub const MAX_CONCURRENT_DEPLOYS: usize = 2;

pub struct Admin {
    registry: Arc<Registry>,
    health: Arc<Health>,
    token: Option<String>,
    max_upload_bytes: u64,
    /// The address the admin listener is bound to.
    local: SocketAddr,
    deploys: Semaphore,
    budget: Arc<MemoryBudget>,
}

/// An admin API error: a status and a message that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> ApiError {
        let status = match &err {
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unservable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    version: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    version: String,
    #[serde(deserialize_with = "percent")]
    weight: u8,
    #[serde(default)]
    sticky: bool,
}

/// A percentage as JSON Schema's `integer` allows it: `30` or `30.0`.
fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = f64::deserialize(d)?;
    if n.fract() == 0.0 && (0.0..=100.0).contains(&n) {
        Ok(n as u8)
    } else {
        Err(serde::de::Error::custom(format!(
            "weight must be a whole number from 0 to 100, got {n}"
        )))
    }
}

impl Admin {
    pub fn new(
        registry: Arc<Registry>,
        health: Arc<Health>,
        token: Option<String>,
        max_upload_bytes: u64,
        local: SocketAddr,
        budget: Arc<MemoryBudget>,
    ) -> Admin {
        Admin {
            registry,
            health,
            token,
            max_upload_bytes,
            local,
            deploys: Semaphore::new(MAX_CONCURRENT_DEPLOYS),
            budget,
        }
    }

    /// `/healthz`, `/readyz` and `/metrics`: open without a token, for
    /// probes and scrapers.
    ///
    /// Readiness: the listeners are up, every app that can be served is
    /// loaded and the host is not draining. A deployed app that failed to
    /// restore does not make the host unready (one bad record must not take
    /// a whole fleet out of its load balancer); it is named in the body and
    /// counted by `host_apps_failed`.
    async fn probe(&self, path: &str) -> Option<Response<HyperOutgoingBody>> {
        match path {
            "/healthz" => Some(text(StatusCode::OK, "ok\n".into(), "text/plain")),
            "/readyz" => {
                let (status, mut body) = if self.health.ready() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
                };
                for (app, reason) in self.registry.failed().iter() {
                    body.push_str(&format!("app {app} is not served: {reason}\n"));
                }
                Some(text(status, body, "text/plain"))
            }
            "/metrics" => {
                metrics().memory_budget_used.set(self.budget.used() as i64);
                Some(text(
                    StatusCode::OK,
                    metrics().encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ))
            }
            _ => None,
        }
    }

    /// Refuse what a web page could send: anything with an `Origin` (or a
    /// cross-site `Sec-Fetch-Site`), and, without a token, any `Host` that
    /// is not this listener (a DNS-rebound name).
    fn browser_refusal(&self, request: &Request<Incoming>) -> Option<String> {
        let headers = request.headers();
        if let Some(origin) = headers.get(header::ORIGIN) {
            return Some(format!(
                "admin requests from web pages are refused (this one carries Origin: {}); use the `host` CLI or curl",
                origin.to_str().unwrap_or("?")
            ));
        }
        if let Some(site) = headers.get("sec-fetch-site")
            && site.as_bytes() != b"none"
        {
            return Some(format!(
                "admin requests from web pages are refused (Sec-Fetch-Site: {}); use the `host` CLI or curl",
                site.to_str().unwrap_or("?")
            ));
        }
        if self.token.is_some() {
            return None;
        }
        let host = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let port = self.local.port();
        let ours = [
            self.local.to_string(),
            format!("localhost:{port}"),
            format!("localhost.:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        if ours.contains(&host) {
            return None;
        }
        Some(format!(
            "admin requests must be addressed to this listener ({} or localhost:{port}), not {host:?}: \
             without an admin token, other host names are refused to stop DNS rebinding; \
             set HOST_ADMIN_TOKEN to serve the admin API under other names",
            self.local
        ))
    }

    fn authorized(&self, request: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        presented.as_bytes().ct_eq(token.as_bytes()).into()
    }

    async fn route(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, ApiError> {
        let path = request.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = request.method().clone();
        let registry = &self.registry;
        let allow = |methods: &'static str| {
            let mut response = response::error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} is not supported on {path}; use {methods}"),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
            response
        };
        match (segments.as_slice(), &method) {
            (["v1", "apps"], &Method::GET) => {
                let apps = registry.list().await;
                Ok(json(StatusCode::OK, &serde_json::json!({ "apps": apps })))
            }
            (["v1", "apps", name], &Method::GET) => {
                Ok(json(StatusCode::OK, &registry.get(name).await?))
            }
            (["v1", "apps", name], &Method::DELETE) => {
                registry.remove(name).await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "deleted": name }),
                ))
            }
            (["v1", "apps", name, "versions"], &Method::POST) => {
                let name = name.to_string();
                let Ok(_deploying) = self.deploys.try_acquire() else {
                    let mut busy = response::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "{MAX_CONCURRENT_DEPLOYS} deploys are already in progress; retry shortly"
                        ),
                    );
                    busy.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Ok(busy);
                };
                let _counted = InProgress::enter();
                let (wasm, settings) = self.read_deploy(request).await?;
                let app = registry.deploy(&name, wasm, settings).await?;
                Ok(json(StatusCode::CREATED, &app))
            }
            (["v1", "apps", name, "rollback"], &Method::POST) => {
                let name = name.to_string();
                let body: Option<RollbackBody> = read_json(request, true).await?;
                let to = body.and_then(|b| b.version);
                Ok(json(
                    StatusCode::OK,
                    &registry.rollback(&name, to.as_deref()).await?,
                ))
            }
            (["v1", "apps", name, "canary"], &Method::PUT) => {
                let name = name.to_string();
                let body: CanaryBody = read_json(request, false).await?.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "body must be {\"version\": ..., \"weight\": 0-100}",
                    )
                })?;
                let app = registry
                    .set_canary(&name, &body.version, body.weight, body.sticky)
                    .await?;
                Ok(json(StatusCode::OK, &app))
            }
            (["v1", "apps", name, "canary"], &Method::DELETE) => {
                Ok(json(StatusCode::OK, &registry.abort_canary(name).await?))
            }
            (["v1", "apps", name, "canary", "promote"], &Method::POST) => {
                Ok(json(StatusCode::OK, &registry.promote(name).await?))
            }
            (["v1", "apps"], _) => Ok(allow("GET")),
            (["v1", "apps", _], _) => Ok(allow("GET, DELETE")),
            (["v1", "apps", _, "versions" | "rollback"], _) => Ok(allow("POST")),
            (["v1", "apps", _, "canary"], _) => Ok(allow("PUT, DELETE")),
            (["v1", "apps", _, "canary", "promote"], _) => Ok(allow("POST")),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint at {path}; see api/openapi.json"),
            )),
        }
    }

    /// Read a deploy's multipart body: a `component` part (the .wasm) and an
    /// optional `settings` part (JSON), within the upload cap.
    async fn read_deploy(
        &self,
        request: Request<Incoming>,
    ) -> Result<(Bytes, DeployRequest), ApiError> {
        let length = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let stream = stall_guarded(request.into_body(), UPLOAD_STALL);
        parse_deploy(&content_type, length, stream, self.max_upload_bytes).await
    }
}

/// A deploy's multipart body: a `component` part (the .wasm) and an
/// optional `settings` part (JSON), within the upload cap. Never buffers
/// more than the cap; the component is held once.
pub async fn parse_deploy<S>(
    content_type: &str,
    length: Option<u64>,
    stream: S,
    max_upload_bytes: u64,
) -> Result<(Bytes, DeployRequest), ApiError>
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than the limit of {max_upload_bytes} bytes"),
        )
    };
    let whole = max_upload_bytes.saturating_add(64 * 1024);
    if length.is_some_and(|len| len > whole) {
        return Err(too_large());
    }
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        bad("a deploy is multipart/form-data with a `component` part (the .wasm) and an optional `settings` part (JSON)")
    })?;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(whole)
            .for_field("component", max_upload_bytes)
            .for_field("settings", MAX_JSON_BODY as u64),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut wasm = None;
    let mut settings = DeployRequest::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return Err(multipart_error(err, too_large)),
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes: Bytes = field
            .bytes()
            .await
            .map_err(|err| multipart_error(err, too_large))?;
        match name.as_str() {
            "component" => wasm = Some(bytes),
            "settings" => {
                settings = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("settings are not valid: {e}"),
                    )
                })?
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unexpected part {other:?}; send `component` and `settings`"),
                ));
            }
        }
    }
    let wasm = wasm.ok_or_else(|| bad("the deploy has no `component` part"))?;
    if wasm.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the `component` part is empty: send the .wasm file",
        ));
    }
    Ok((wasm, settings))
}

/// Counts a deploy in `host_deploys_in_progress` while it lives.
struct InProgress;

impl InProgress {
    fn enter() -> InProgress {
        metrics().deploys_in_progress.inc();
        InProgress
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        metrics().deploys_in_progress.dec();
    }
}

/// A body's data as a stream that fails when nothing arrives for `stall`.
fn stall_guarded(
    body: Incoming,
    stall: std::time::Duration,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        loop {
            match tokio::time::timeout(stall, body.frame()).await {
                Err(_) => {
                    let err = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the upload stalled for over {} s", stall.as_secs()),
                    );
                    return Some((Err(err), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(err))) => return Some((Err(std::io::Error::other(err)), None)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                }
            }
        }
    })
}

fn multipart_error(err: multer::Error, too_large: impl Fn() -> ApiError) -> ApiError {
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large()
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart body: {other}"),
        ),
    }
}

/// Read a small JSON body; `None` for an empty body when `optional`.
async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_JSON_BODY);
    let bytes = body
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the JSON body is over {MAX_JSON_BODY} bytes"),
            )
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(None)
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "this endpoint needs a JSON body",
            ))
        };
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<HyperOutgoingBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(response::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(response::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        if (request.method() == Method::GET || request.method() == Method::HEAD)
            && let Some(response) = self.probe(request.uri().path()).await
        {
            return response;
        }
        if let Some(why) = self.browser_refusal(&request) {
            metrics().reject("admin_cross_site");
            tracing::warn!(method = %request.method(), path = %request.uri().path(), %why, "admin request refused");
            return response::error(StatusCode::FORBIDDEN, &why);
        }
        if !self.authorized(&request) {
            let mut denied = response::error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong admin token: send `Authorization: Bearer $HOST_ADMIN_TOKEN`",
            );
            denied
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return denied;
        }
        // Changes wait until every app on disk is loaded (a change in the
        // middle of the restore could not know what it replaces) and stop
        // once a drain begins.
        if request.method() != Method::GET && !self.health.ready() {
            let mut busy = response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the host is not ready for changes (it is still loading its apps, or shutting down); retry shortly",
            );
            busy.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return busy;
        }
        match self.route(request).await {
            Ok(response) => response,
            Err(err) => response::error(err.status, &err.message),
        }
    }
}
