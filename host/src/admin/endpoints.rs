//! The admin endpoints under `/v1/apps` (the apps, and their key-value
//! data under `/v1/apps/{name}/kv`): each a call on the
//! [`Registry`], its result as JSON, its error as a status ([`ApiError`]).
//! Deploys are limited to [`MAX_CONCURRENT_DEPLOYS`] at once.
//!
//! A change runs on a task of its own, to completion: a client that hangs
//! up once its request is read cannot stop it half-way (with its record
//! written but not served, or a component it stores unprotected from the
//! collector); it only misses the answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Deserializer};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::admin::body::{read_deploy, read_json, read_value};
use crate::admin::reply::{ApiError, bytes, json};
use crate::apps::error::AppError;
use crate::apps::registry::Registry;
use crate::http::response;
use crate::kv::validate_store_name;
use crate::metrics::metrics;
use crate::runtime::keyvalue::DEFAULT_STORE;

/// Deploys read and compiled at once; more are refused (503) so that
/// uploads held in memory stay bounded by this × `--max-upload-bytes`.
pub const MAX_CONCURRENT_DEPLOYS: usize = 2;

/// The `/v1/apps` endpoints.
pub(crate) struct Endpoints {
    pub(crate) registry: Arc<Registry>,
    pub(crate) max_upload_bytes: u64,
    pub(crate) deploys: Arc<Semaphore>,
}

/// Run a change on a task of its own and wait for it: dropping the caller
/// does not cancel it.
async fn to_completion<T: Send + 'static>(
    change: impl Future<Output = Result<T, AppError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(change).await {
        Ok(result) => Ok(result?),
        Err(err) => Err(AppError::Internal(format!("an admin change failed: {err}")).into()),
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

/// The store a key-value request names (`?store=`, `default` when absent).
fn kv_store(query: &HashMap<String, String>) -> Result<String, ApiError> {
    let store = query.get("store").map_or(DEFAULT_STORE, String::as_str);
    validate_store_name(store)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    Ok(store.to_string())
}

/// The key of `/v1/apps/{name}/kv/{key}`: the rest of the path,
/// percent-decoded (so a key may hold `/` and any UTF-8).
fn kv_key(raw_path: &str) -> Result<String, ApiError> {
    let raw = raw_path.splitn(6, '/').nth(5).unwrap_or_default();
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "the key must be percent-encoded UTF-8",
            )
        })?;
    if key.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the key is empty"));
    }
    Ok(key.into_owned())
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

impl Endpoints {
    pub(crate) async fn answer(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<HyperOutgoingBody>, ApiError> {
        let path = request.uri().path().trim_end_matches('/').to_string();
        let query: HashMap<String, String> =
            form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        let method = request.method().clone();
        let registry = self.registry.clone();
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
            (["v1", "cluster"], &Method::GET) => {
                let Some((replica, store, revision)) = registry.cluster_identity() else {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        "this host is not in cluster mode (start it with --cluster-url)",
                    ));
                };
                let replicas = match registry.replicas().await {
                    Some(Ok(live)) => serde_json::to_value(live).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                };
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "replica": replica,
                        "store": store,
                        "revision": revision,
                        "store_problem": registry.cluster_note(),
                        "replicas": replicas,
                    }),
                ))
            }
            (["v1", "cluster"], _) => Ok(allow("GET")),
            (["v1", "apps"], &Method::GET) => {
                let apps = registry.list().await;
                Ok(json(StatusCode::OK, &serde_json::json!({ "apps": apps })))
            }
            (["v1", "apps", name], &Method::GET) => {
                Ok(json(StatusCode::OK, &registry.get(name).await?))
            }
            (["v1", "apps", name], &Method::DELETE) => {
                let owned = name.to_string();
                let keep_data = match query.get("keep_data").map(String::as_str) {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(other) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("keep_data must be true or false, got {other:?}"),
                        ));
                    }
                };
                let removed =
                    to_completion(async move { registry.remove(&owned, keep_data).await }).await?;
                let data = match removed.data {
                    Some(usage) => serde_json::json!({
                        "deleted": true, "keys": usage.keys, "bytes": usage.bytes,
                    }),
                    None => serde_json::json!({ "deleted": false }),
                };
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "deleted": name, "kv_data": data }),
                ))
            }
            (["v1", "apps", name, "kv"], &Method::GET) => {
                let store = kv_store(&query)?;
                let prefix = query.get("prefix").cloned().unwrap_or_default();
                let cursor = query.get("cursor").cloned();
                let page = registry
                    .kv_list(name, &store, prefix.clone(), cursor)
                    .await?;
                let usage = registry.kv_usage(name).await?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "app": name,
                        "store": store,
                        "prefix": prefix,
                        "keys": page.keys,
                        "cursor": page.cursor,
                        "usage": { "keys": usage.keys, "bytes": usage.bytes },
                    }),
                ))
            }
            (["v1", "apps", name, "kv", _, ..], method)
                if matches!(*method, Method::GET | Method::PUT | Method::DELETE) =>
            {
                let store = kv_store(&query)?;
                // The path as sent: a key may end in `/`.
                let key = kv_key(request.uri().path())?;
                let (name, method) = (name.to_string(), method.clone());
                match method {
                    Method::GET => {
                        let value = registry.kv_get(&name, &store, key).await?;
                        Ok(bytes(StatusCode::OK, value))
                    }
                    Method::PUT => {
                        let max = registry.kv().limits().max_value_bytes;
                        let value = read_value(request, max).await?;
                        let size = value.len();
                        let shown = key.clone();
                        to_completion(
                            async move { registry.kv_set(&name, &store, key, value).await },
                        )
                        .await?;
                        Ok(json(
                            StatusCode::OK,
                            &serde_json::json!({ "key": shown, "bytes": size }),
                        ))
                    }
                    _ => {
                        let shown = key.clone();
                        to_completion(async move { registry.kv_delete(&name, &store, key).await })
                            .await?;
                        Ok(json(
                            StatusCode::OK,
                            &serde_json::json!({ "deleted": shown }),
                        ))
                    }
                }
            }
            (["v1", "apps", name, "versions"], &Method::POST) => {
                let name = name.to_string();
                let Ok(deploying) = self.deploys.clone().try_acquire_owned() else {
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
                let counted = InProgress::enter();
                let (wasm, settings) = read_deploy(request, self.max_upload_bytes).await?;
                let app = to_completion(async move {
                    let _held = (deploying, counted);
                    registry.deploy(&name, wasm, settings).await
                })
                .await?;
                Ok(json(StatusCode::CREATED, &app))
            }
            (["v1", "apps", name, "rollback"], &Method::POST) => {
                let name = name.to_string();
                let body: Option<RollbackBody> = read_json(request, true).await?;
                let to = body.and_then(|b| b.version);
                let app =
                    to_completion(async move { registry.rollback(&name, to.as_deref()).await })
                        .await?;
                Ok(json(StatusCode::OK, &app))
            }
            (["v1", "apps", name, "canary"], &Method::PUT) => {
                let name = name.to_string();
                let body: CanaryBody = read_json(request, false).await?.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "body must be {\"version\": ..., \"weight\": 0-100}",
                    )
                })?;
                let app = to_completion(async move {
                    registry
                        .set_canary(&name, &body.version, body.weight, body.sticky)
                        .await
                })
                .await?;
                Ok(json(StatusCode::OK, &app))
            }
            (["v1", "apps", name, "canary"], &Method::DELETE) => {
                let name = name.to_string();
                let app = to_completion(async move { registry.abort_canary(&name).await }).await?;
                Ok(json(StatusCode::OK, &app))
            }
            (["v1", "apps", name, "canary", "promote"], &Method::POST) => {
                let name = name.to_string();
                let app = to_completion(async move { registry.promote(&name).await }).await?;
                Ok(json(StatusCode::OK, &app))
            }
            (["v1", "apps"], _) => Ok(allow("GET")),
            (["v1", "apps", _], _) => Ok(allow("GET, DELETE")),
            (["v1", "apps", _, "versions" | "rollback"], _) => Ok(allow("POST")),
            (["v1", "apps", _, "canary"], _) => Ok(allow("PUT, DELETE")),
            (["v1", "apps", _, "canary", "promote"], _) => Ok(allow("POST")),
            (["v1", "apps", _, "kv"], _) => Ok(allow("GET")),
            (["v1", "apps", _, "kv", _, ..], _) => Ok(allow("GET, PUT, DELETE")),
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no admin endpoint at {path}; see api/openapi.json"),
            )),
        }
    }
}
