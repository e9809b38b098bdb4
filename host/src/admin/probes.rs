//! The open endpoints: `/healthz`, `/readyz` and `/metrics`, answered to
//! anyone without a token, read-only, for probes and scrapers.

use std::sync::Arc;
use std::time::Duration;

use http::{Response, StatusCode};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::admin::reply::text;
use crate::apps::registry::Registry;
use crate::http::server::Health;
use crate::metrics::metrics;
use crate::runtime::limits::MemoryBudget;

/// Longest a scrape waits to refresh the apps' key-value usage.
const USAGE_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// What the open endpoints read.
pub(crate) struct Probes {
    pub(crate) registry: Arc<Registry>,
    pub(crate) health: Arc<Health>,
    pub(crate) budget: Arc<MemoryBudget>,
}

impl Probes {
    /// `/healthz`, `/readyz` and `/metrics`: open without a token, for
    /// probes and scrapers.
    ///
    /// Readiness: the listeners are up, every app that can be served is
    /// loaded and the host is not draining. A deployed app that failed to
    /// restore does not make the host unready (one bad record must not take
    /// a whole fleet out of its load balancer); it is named in the body and
    /// counted by `host_apps_failed`.
    pub(crate) async fn answer(&self, path: &str) -> Option<Response<HyperOutgoingBody>> {
        match path {
            "/healthz" => Some(text(StatusCode::OK, "ok\n".into(), "text/plain")),
            "/readyz" => {
                let (status, mut body) = if self.health.ready() && self.registry.cluster_ready() {
                    (StatusCode::OK, "ready\n".to_string())
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_string())
                };
                if let Some(note) = self.registry.cluster_note() {
                    body.push_str(&note);
                    body.push('\n');
                }
                for (app, reason) in self.registry.failed().iter() {
                    body.push_str(&format!("app {app} is not served: {reason}\n"));
                }
                Some(text(status, body, "text/plain"))
            }
            "/metrics" => {
                metrics().memory_budget_used.set(self.budget.used() as i64);
                // A slow key-value store must not hold the scrape: the
                // gauges keep their last values.
                let _ = tokio::time::timeout(USAGE_READ_TIMEOUT, self.registry.kv_refresh_usage())
                    .await;
                Some(text(
                    StatusCode::OK,
                    metrics().encode(),
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ))
            }
            _ => None,
        }
    }
}
