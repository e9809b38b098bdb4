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
//! | DELETE | `/v1/apps/{name}` | delete the app and its key-value data (`?keep_data=true` keeps it) |
//! | GET | `/v1/apps/{name}/kv` | list keys (`?store=`, `prefix=`, `cursor=`) and usage |
//! | GET, PUT, DELETE | `/v1/apps/{name}/kv/{key}` | read, write (raw body), delete a key (`?store=`) |
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
//!
//! A request goes [`probes`] (open) → [`guard`] (browsers, token) →
//! readiness → [`endpoints`] (reading bodies with [`body`], answering
//! with [`reply`]).

pub mod body;
pub mod endpoints;
pub mod guard;
pub mod probes;
pub mod reply;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub use crate::admin::body::parse_deploy;
use crate::admin::endpoints::{Endpoints, MAX_CONCURRENT_DEPLOYS};
use crate::admin::guard::Guard;
use crate::admin::probes::Probes;
use crate::apps::registry::Registry;
use crate::http::response;
use crate::http::server::{Handler, Health};
use crate::metrics::metrics;
use crate::runtime::limits::MemoryBudget;

/// The admin API's handler.
pub struct Admin {
    probes: Probes,
    guard: Guard,
    endpoints: Endpoints,
    health: Arc<Health>,
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
            probes: Probes {
                registry: registry.clone(),
                health: health.clone(),
                budget,
            },
            guard: Guard { token, local },
            endpoints: Endpoints {
                registry,
                max_upload_bytes,
                deploys: Arc::new(Semaphore::new(MAX_CONCURRENT_DEPLOYS)),
            },
            health,
        }
    }
}

impl Handler for Admin {
    async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        if (request.method() == Method::GET || request.method() == Method::HEAD)
            && let Some(response) = self.probes.answer(request.uri().path()).await
        {
            return response;
        }
        if let Some(why) = self.guard.browser_refusal(&request) {
            metrics().reject("admin_cross_site");
            tracing::warn!(method = %request.method(), path = %request.uri().path(), %why, "admin request refused");
            return response::error(StatusCode::FORBIDDEN, &why);
        }
        if !self.guard.authorized(&request) {
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
        match self.endpoints.answer(request).await {
            Ok(response) => response,
            Err(err) => response::error(err.status, &err.message),
        }
    }
}
