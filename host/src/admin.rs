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

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::metrics::metrics;
use crate::registry::{ApiError, DeployRequest, Registry};
use crate::response;
use crate::server::{Handler, Health};

/// Largest JSON body accepted by the admin endpoints other than deploy.
const MAX_JSON_BODY: usize = 64 * 1024;

pub struct Admin {
    registry: Arc<Registry>,
    health: Arc<Health>,
    token: Option<String>,
    max_upload_bytes: u64,
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
    weight: u8,
    #[serde(default)]
    sticky: bool,
}

impl Admin {
    pub fn new(
        registry: Arc<Registry>,
        health: Arc<Health>,
        token: Option<String>,
        max_upload_bytes: u64,
    ) -> Admin {
        Admin {
            registry,
            health,
            token,
            max_upload_bytes,
        }
    }

    /// `/healthz`, `/readyz` and `/metrics`: open without a token, for
    /// probes and scrapers.
    fn probe(&self, path: &str) -> Option<Response<HyperOutgoingBody>> {
        match path {
            "/healthz" => Some(text(StatusCode::OK, "ok\n".into(), "text/plain")),
            "/readyz" if self.health.ready() => {
                Some(text(StatusCode::OK, "ready\n".into(), "text/plain"))
            }
            "/readyz" => Some(text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready\n".into(),
                "text/plain",
            )),
            "/metrics" => Some(text(
                StatusCode::OK,
                metrics().encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )),
            _ => None,
        }
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
            (
                ["v1", "apps"]
                | ["v1", "apps", _]
                | ["v1", "apps", _, "versions" | "rollback" | "canary"]
                | ["v1", "apps", _, "canary", "promote"],
                _,
            ) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not supported on {path}"),
            )),
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
    ) -> Result<(Vec<u8>, DeployRequest), ApiError> {
        let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the upload is larger than the limit of {} bytes",
                    self.max_upload_bytes
                ),
            )
        };
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|len| len > self.max_upload_bytes + 64 * 1024)
        {
            return Err(too_large());
        }
        let content_type = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let boundary = multer::parse_boundary(content_type).map_err(|_| {
            bad("a deploy is multipart/form-data with a `component` part (the .wasm) and an optional `settings` part (JSON)")
        })?;
        let constraints = multer::Constraints::new().size_limit(
            multer::SizeLimit::new()
                .whole_stream(self.max_upload_bytes + 64 * 1024)
                .for_field("component", self.max_upload_bytes)
                .for_field("settings", MAX_JSON_BODY as u64),
        );
        let stream = request.into_body().into_data_stream();
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
                "component" => wasm = Some(bytes.to_vec()),
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
        Ok((wasm, settings))
    }
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
        if request.method() == Method::GET
            && let Some(response) = self.probe(request.uri().path())
        {
            return response;
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
        match self.route(request).await {
            Ok(response) => response,
            Err(err) => response::error(err.status, &err.message),
        }
    }
}
