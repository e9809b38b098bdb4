//! Prometheus metrics, served as text at `/metrics` on the admin listener.
//!
//! One process-wide set (see [`metrics()`]); every family is listed in the
//! README's "Operating" section. Labels are low-cardinality: app names and
//! versions, status classes, fixed reason and result words.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry as MetricRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub version: String,
    /// `2xx`, `3xx`, `4xx`, `5xx`.
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub app: String,
    /// `trap`, `timeout`, `memory_limit`, `memory_budget`, `no_response`,
    /// `error_code`, `cancelled` (the client left before the app answered).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// What was refused: `body_too_large` (413), `rate_limited` (429),
    /// `rate_limited_client` (429), `headers_too_large` (431),
    /// `too_many_headers` (431), `host_busy` (503), `app_busy` (503),
    /// `memory_budget` (503), `body_timeout` (408), `body_too_slow` (408),
    /// `no_route` (404), `bad_path` (400).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub app: String,
    /// `allowed`, `denied`, `error`, `limited` (too many in flight).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    pub app: String,
    /// `open`, `get`, `set`, `delete`, `exists`, `list_keys`, `increment`,
    /// `cas`, `swap`, `get_many`, `set_many`, `delete_many`, and `admin_*`
    /// for the admin API's calls.
    pub op: &'static str,
    /// `ok`, `denied` (undeclared store), `limit` (a key, value, quota or
    /// per-request limit), `invalid`, `error` (the backend failed),
    /// `timeout` (the request's deadline passed).
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvOpLabels {
    /// `embedded` or `redis`.
    pub backend: &'static str,
    pub op: &'static str,
}

pub struct Metrics {
    registry: MetricRegistry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<AppLabel, Histogram>,
    pub guest_duration: Family<AppLabel, Histogram>,
    /// The linear memory each instance had grown to when it finished.
    pub guest_memory_peak: Family<AppLabel, Histogram>,
    pub instantiation: Histogram,
    pub in_flight: Gauge,
    pub guest_failures: Family<FailureLabels, Counter>,
    pub rejections: Family<ReasonLabel, Counter>,
    pub deploys: Family<ResultLabel, Counter>,
    pub compile_duration: Histogram,
    /// Loading code: `memory`, `cache` (hits) or `compiled` (misses).
    pub code_loads: Family<ResultLabel, Counter>,
    pub outbound: Family<OutboundLabels, Counter>,
    pub connections: Gauge,
    /// Deployed apps on disk that failed to restore and are not served.
    pub apps_failed: Gauge,
    /// Guest memory charged to the `--memory-budget-mib` budget, in bytes.
    pub memory_budget_used: Gauge,
    /// Deploys being uploaded or compiled now.
    pub deploys_in_progress: Gauge,
    /// Key-value operations by app, operation and result.
    pub kv_operations: Family<KvLabels, Counter>,
    /// Time a key-value operation took in the backend, by backend and op.
    pub kv_duration: Family<KvOpLabels, Histogram>,
    /// Keys and bytes each app holds (read from the store at each scrape).
    pub kv_keys: Family<AppLabel, Gauge>,
    pub kv_bytes: Family<AppLabel, Gauge>,
    /// Cluster mode: 1 while the cluster store answers, 0 while it does not.
    pub cluster_store_up: Gauge,
    /// Cluster mode: the store's revision this replica has caught up with.
    pub cluster_revision: Gauge,
    /// Cluster mode: changes made on other replicas applied here, by result
    /// (`ok`, `failed`, `retry`).
    pub cluster_applied: Family<ResultLabel, Counter>,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

fn memory_histogram() -> Histogram {
    // 64 KiB (one page) .. 16 GiB.
    Histogram::new(exponential_buckets(65_536.0, 2.0, 19))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = MetricRegistry::with_prefix("host");
        let m = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            guest_duration: Family::new_with_constructor(latency_histogram),
            guest_memory_peak: Family::new_with_constructor(memory_histogram),
            instantiation: latency_histogram(),
            in_flight: Gauge::default(),
            guest_failures: Family::default(),
            rejections: Family::default(),
            deploys: Family::default(),
            compile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            code_loads: Family::default(),
            outbound: Family::default(),
            connections: Gauge::default(),
            apps_failed: Gauge::default(),
            memory_budget_used: Gauge::default(),
            deploys_in_progress: Gauge::default(),
            kv_operations: Family::default(),
            kv_duration: Family::new_with_constructor(latency_histogram),
            kv_keys: Family::default(),
            kv_bytes: Family::default(),
            cluster_store_up: Gauge::default(),
            cluster_revision: Gauge::default(),
            cluster_applied: Family::default(),
            registry: MetricRegistry::default(),
        };
        registry.register(
            "requests",
            "Requests answered by an app, by app, version and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Total time from request to the end of the response body",
            m.request_duration.clone(),
        );
        registry.register(
            "guest_duration_seconds",
            "Time spent running the guest, per request",
            m.guest_duration.clone(),
        );
        registry.register(
            "guest_memory_peak_bytes",
            "Linear memory an instance had grown to when its request finished (its peak; per-request instances)",
            m.guest_memory_peak.clone(),
        );
        registry.register(
            "instantiation_duration_seconds",
            "Time to instantiate a component for a request",
            m.instantiation.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served now (until their response body ends)",
            m.in_flight.clone(),
        );
        registry.register(
            "guest_failures",
            "Guest failures by app and kind",
            m.guest_failures.clone(),
        );
        registry.register(
            "rejections",
            "Requests refused by the host, by reason",
            m.rejections.clone(),
        );
        registry.register(
            "deploys",
            "Deploys by result (ok, rejected)",
            m.deploys.clone(),
        );
        registry.register(
            "compile_duration_seconds",
            "Time to compile a component",
            m.compile_duration.clone(),
        );
        registry.register(
            "code_loads",
            "Code loaded for a version: memory, cache (hit) or compiled (miss)",
            m.code_loads.clone(),
        );
        registry.register(
            "outbound_requests",
            "Outbound HTTP calls by app and result",
            m.outbound.clone(),
        );
        registry.register(
            "open_connections",
            "Open client connections on the public listener",
            m.connections.clone(),
        );
        registry.register(
            "apps_failed",
            "Deployed apps that failed to restore at start and are not served",
            m.apps_failed.clone(),
        );
        registry.register(
            "deploys_in_progress",
            "Deploys being uploaded or compiled now",
            m.deploys_in_progress.clone(),
        );
        registry.register(
            "guest_memory_bytes",
            "Guest memory (linear memories and tables) held by all instances, charged to --memory-budget-mib",
            m.memory_budget_used.clone(),
        );
        registry.register(
            "kv_operations",
            "Key-value operations by app, operation and result",
            m.kv_operations.clone(),
        );
        registry.register(
            "kv_duration_seconds",
            "Time a key-value operation took in its backend, by backend and operation",
            m.kv_duration.clone(),
        );
        registry.register(
            "kv_keys",
            "Keys each app holds in the key-value store (read at each scrape)",
            m.kv_keys.clone(),
        );
        registry.register(
            "kv_bytes",
            "Bytes of keys and values each app holds in the key-value store (read at each scrape)",
            m.kv_bytes.clone(),
        );
        registry.register(
            "cluster_store_up",
            "Cluster mode: 1 while the cluster store answers, 0 while it does not",
            m.cluster_store_up.clone(),
        );
        registry.register(
            "cluster_revision",
            "Cluster mode: the cluster store's revision this replica has caught up with",
            m.cluster_revision.clone(),
        );
        registry.register(
            "cluster_changes_applied",
            "Cluster mode: changes from the cluster store applied here, by result (ok, failed, retry)",
            m.cluster_applied.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn reject(&self, reason: &str) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn guest_failure(&self, app: &str, kind: &str) {
        self.guest_failures
            .get_or_create(&FailureLabels {
                app: app.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub fn outbound(&self, app: &str, result: &str) {
        self.outbound
            .get_or_create(&OutboundLabels {
                app: app.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    pub fn code_load(&self, result: &str) {
        self.code_loads
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// One key-value operation of `app` and how it ended.
    pub fn kv_operation(&self, app: &str, op: &'static str, result: &'static str) {
        self.kv_operations
            .get_or_create(&KvLabels {
                app: app.to_string(),
                op,
                result,
            })
            .inc();
    }

    /// How long one key-value operation took in `backend`.
    pub fn kv_time(&self, backend: &'static str, op: &'static str, time: Duration) {
        self.kv_duration
            .get_or_create(&KvOpLabels { backend, op })
            .observe(time.as_secs_f64());
    }

    /// What `app` holds in the key-value store now.
    pub fn kv_usage(&self, app: &str, keys: u64, bytes: u64) {
        let label = AppLabel {
            app: app.to_string(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.kv_keys.get_or_create(&label).set(gauge(keys));
        self.kv_bytes.get_or_create(&label).set(gauge(bytes));
    }

    /// `app` is gone: drop its key-value usage series.
    pub fn kv_forget(&self, app: &str) {
        let label = AppLabel {
            app: app.to_string(),
        };
        self.kv_keys.remove(&label);
        self.kv_bytes.remove(&label);
    }

    pub fn cluster_applied(&self, result: &str) {
        self.cluster_applied
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    pub fn deploy(&self, result: &str) {
        self.deploys
            .get_or_create(&ResultLabel {
                result: result.to_string(),
            })
            .inc();
    }

    /// The per-request series of one app version, resolved once.
    pub fn for_version(&self, app: &str, version: &str) -> VersionMetrics {
        let label = AppLabel {
            app: app.to_string(),
        };
        VersionMetrics {
            app: app.to_string(),
            version: version.to_string(),
            requests: Default::default(),
            request_duration: self.request_duration.get_or_create(&label).clone(),
            guest_duration: self.guest_duration.get_or_create(&label).clone(),
            guest_memory_peak: self.guest_memory_peak.get_or_create(&label).clone(),
        }
    }
}

/// One version's request counters and histograms, looked up in their
/// families once (at deploy) instead of on every request: a family lookup
/// allocates its label strings and takes a lock. Clones share the series.
pub struct VersionMetrics {
    app: String,
    version: String,
    /// `requests` by status class (`1xx` .. `9xx`), created on first use.
    requests: [OnceLock<Counter>; 9],
    request_duration: Histogram,
    guest_duration: Histogram,
    guest_memory_peak: Histogram,
}

impl VersionMetrics {
    pub fn request(&self, status: u16, total: Duration) {
        let class = usize::from(status / 100).clamp(1, 9);
        self.requests[class - 1]
            .get_or_init(|| {
                metrics()
                    .requests
                    .get_or_create(&RequestLabels {
                        app: self.app.clone(),
                        version: self.version.clone(),
                        status: format!("{class}xx"),
                    })
                    .clone()
            })
            .inc();
        self.request_duration.observe(total.as_secs_f64());
    }

    pub fn guest_time(&self, time: Duration) {
        self.guest_duration.observe(time.as_secs_f64());
    }

    /// The linear memory an instance had grown to when it finished.
    pub fn guest_memory(&self, bytes: u64) {
        self.guest_memory_peak.observe(bytes as f64);
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}
