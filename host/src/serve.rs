//! The composition root of `host serve`: from a validated [`Config`] it
//! builds the engines and their epoch ticker, the state directory, the
//! apps ([`Registry`]) and the public front ([`Router`]), binds both
//! listeners, brings up the admin API first (so probes see "alive, not
//! ready" while apps load), loads every app, prints the startup lines and
//! serves until SIGINT/SIGTERM, then drains.
//!
//! Nothing below this module knows about the others' configuration: each
//! gets its own part of [`Config`] here.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::admin::Admin;
use crate::apps::manifest;
use crate::apps::registry::{DEFAULT_APP, Registry, RegistryConfig};
use crate::apps::replica::ClusterSetup;
use crate::apps::state_dir::{CLUSTER_SUBDIR, StateDir};
use crate::cluster::ClusterStore;
use crate::config::{Config, DefaultApp, KvBackend, KvConfig};
use crate::front::Router;
use crate::http::server::{self, ConnOptions, Health};
use crate::http::tls::CertStore;
use crate::kv::service::KvService;
use crate::routing::{Route, Routes};
use crate::runtime::engine::{EngineSpec, Engines, EpochTicker};
use crate::runtime::limits::MemoryBudget;

/// Connections the admin listener takes at once: operators and probes, so
/// the public listener's cap is not shared with it.
const MAX_ADMIN_CONNECTIONS: usize = 256;

/// SIGINT and SIGTERM, listened for from the moment they are installed.
pub struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?,
            interrupt: signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?,
        })
    }

    /// Resolves on the next SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

/// The two listeners of a host, already bound.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Bind both listeners from `config` and [`run`] until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<()> {
    let mut signals = Signals::install()?;
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| {
            format!(
                "failed to listen on {} for the admin API",
                config.admin_listen
            )
        })?;
    run(config, Listeners { public, admin }, async move {
        signals.recv().await
    })
    .await
}

/// Start the admin API on `listeners.admin` (health first), load every app,
/// print the startup lines and serve on `listeners.public` until `shutdown`
/// resolves; then drain: readiness goes false, after `--shutdown-delay-ms`
/// the listeners stop accepting, and in-flight requests get up to
/// `--drain-timeout-ms`. A shutdown during startup stops it: this returns
/// `Ok` without serving. Tests and embedders call it with listeners on port
/// 0 and a shutdown of their own.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (requested, shutdown_requested) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = requested.send(true);
    });
    let wait_requested = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|requested| *requested).await;
    };
    let engines = Engines::new(EngineSpec {
        max_concurrent: config.ceilings.max_concurrent,
        max_memory_bytes: config.ceilings.memory_mib << 20,
        shape: config.pool,
        keep_resident_bytes: config.keep_resident_bytes,
        reset: config.memory_reset,
    })?;
    let _ticker = EpochTicker::start(&engines)?;

    let tls = match &config.tls {
        Some((cert, key)) => {
            let store = CertStore::open(cert, key)?;
            store.watch();
            Some(store.acceptor()?)
        }
        None => None,
    };
    let Listeners {
        public,
        admin: admin_listener,
    } = listeners;
    let public_addr = public
        .local_addr()
        .context("failed to read the bound address")?;
    let admin_addr = admin_listener
        .local_addr()
        .context("failed to read the bound admin address")?;

    // A replica's state directory is a cache of the cluster store, kept
    // apart from a standalone host's own apps.
    let state = match &config.cluster {
        Some(_) => StateDir::open(&config.state_dir.join(CLUSTER_SUBDIR))?,
        None => StateDir::open(&config.state_dir)?,
    };
    let cluster = match &config.cluster {
        Some(cluster) => {
            let store =
                ClusterStore::open(&cluster.url).context("failed to open the cluster store")?;
            let replica = cluster.replica.clone().unwrap_or_else(|| {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                    .map(|h| h.trim().to_string())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "host".to_string());
                format!("{host}:{}", admin_addr.port())
            });
            tracing::info!(store = store.shown(), %replica, "cluster mode");
            Some(ClusterSetup {
                store: Arc::new(store),
                replica,
                admin: admin_addr.to_string(),
            })
        }
        None => None,
    };
    let kv = open_kv(&config.kv)?;
    let routes = Arc::new(Routes::default());
    let router = Arc::new(Router::new(config.front, routes.clone()));
    let shown = if public_addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), public_addr.port())
    } else {
        public_addr
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let budget = MemoryBudget::new(config.memory_budget_bytes);
    let registry = Registry::new(
        engines,
        state,
        routes.clone(),
        RegistryConfig {
            defaults: config.limits,
            ceilings: config.ceilings,
            secrets: config.secrets.clone(),
            budget: budget.clone(),
            keep_versions: config.keep_versions,
            compile_timeout: config.compile_timeout,
            public_base: format!("{scheme}://{shown}"),
            kv: kv.clone(),
            kv_max_ops: config.kv.max_ops,
            cluster,
        },
    );
    crate::apps::gc::start(&registry);

    // The admin API (and with it /healthz and /readyz) comes up first, so
    // probes see "alive, not ready" while apps load.
    let health = Arc::new(Health::default());
    let admin = Arc::new(Admin::new(
        registry.clone(),
        health.clone(),
        config.admin_token.clone(),
        config.max_upload_bytes,
        admin_addr,
        budget,
    ));
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_server = tokio::spawn(server::run(
        admin_listener,
        None,
        admin,
        until_stopped(stopped.clone()),
        conn_options(&config, false),
    ));

    let loaded = tokio::select! {
        loaded = load_apps(&config, &registry, &routes) => Some(loaded),
        () = wait_requested(shutdown_requested.clone()) => None,
    };
    match loaded {
        Some(loaded) => loaded?,
        None => {
            tracing::info!("shutdown requested during startup: stopping before serving");
            let _ = stop.send(true);
            let _ = admin_server.await;
            return Ok(());
        }
    }
    registry.follow();
    if config.admin_token.is_none() {
        tracing::warn!(%admin_addr, "the admin API has no token (set HOST_ADMIN_TOKEN): it is open to every local client on loopback");
    }
    health.set_ready(true);
    tracing::info!(%public_addr, %admin_addr, tls = tls.is_some(), apps = routes.table().len, "serving");
    // The startup lines tests and scripts read to learn the bound ports.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "Admin API on http://{admin_addr}/")
        .and_then(|()| writeln!(stdout, "Serving HTTP on {scheme}://{public_addr}/"))
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")?;

    let delay = config.shutdown_delay;
    let health_for_signal = health.clone();
    tokio::spawn(async move {
        wait_requested(shutdown_requested).await;
        health_for_signal.set_ready(false);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutdown requested: not ready; stopping listeners after the delay"
        );
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
    });
    let served = server::run(
        public,
        tls,
        router,
        until_stopped(stopped),
        conn_options(&config, true),
    )
    .await;
    let admin_served = admin_server.await.context("admin server task failed")?;
    registry.leave_cluster().await;
    served.and(admin_served)
}

/// Static apps first (command line, manifest), then the deployed ones, then
/// the default guest if `/` is still free and no deployed app took its name.
async fn load_apps(config: &Config, registry: &Registry, routes: &Routes) -> Result<()> {
    let root = || Route::new("/", None);
    if let DefaultApp::Explicit(component) = &config.default_app {
        registry
            .add_static(DEFAULT_APP, component, root()?, Default::default())
            .await?;
    }
    if let Some(path) = &config.manifest {
        for app in manifest::load(path)? {
            registry
                .add_static(&app.name, &app.component, app.route, app.settings)
                .await
                .with_context(|| format!("manifest {}", path.display()))?;
        }
    }
    let restored = registry.restore_cluster().await?;
    tracing::info!(
        apps = restored.apps,
        from_cache = restored.from_cache,
        compiled = restored.compiled,
        failed = restored.failed,
        state_dir = %config.state_dir.display(),
        "restored deployed apps"
    );
    if let DefaultApp::Implicit(component) = &config.default_app {
        match routes.table().lookup(None, "/") {
            Some(app) if app.route.prefix == "/" => {
                tracing::info!(app = %app.name, "not serving the default guest: `/` is taken");
            }
            _ if registry.has_app(DEFAULT_APP).await => {
                tracing::warn!(
                    "not serving the default guest: a deployed app is named `{DEFAULT_APP}` \
                     (a name now reserved; remove that app to get the default guest back)"
                );
            }
            _ => {
                registry
                    .add_static(DEFAULT_APP, component, root()?, Default::default())
                    .await?
            }
        }
    }
    if routes.table().len == 0 {
        tracing::warn!("no apps are configured yet: deploy one through the admin API");
    }
    Ok(())
}

/// How `config` says a listener treats its connections.
fn conn_options(config: &Config, public: bool) -> ConnOptions {
    let max_connections = if public {
        config.max_connections
    } else {
        config.max_connections.min(MAX_ADMIN_CONNECTIONS)
    };
    ConnOptions {
        drain: config.drain_timeout,
        max_connections,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_header_bytes: config.front.max_header_bytes,
        h2_max_streams: config.h2_max_streams,
        h2_max_pending_resets: config.h2_max_pending_resets,
        h2_max_local_error_resets: config.h2_max_local_error_resets,
        public,
    }
}

/// Open the apps' key-value store: the embedded file (created if missing)
/// or the Redis client (which connects on first use, so a Redis that is
/// down does not stop the start: KV calls fail until it returns).
fn open_kv(config: &KvConfig) -> Result<KvService> {
    let kv = match &config.backend {
        KvBackend::Embedded(path) => KvService::embedded(path, config.limits),
        KvBackend::Redis(url) => KvService::redis(url, config.limits),
    }
    .context("failed to open the key-value store")?;
    tracing::info!(
        backend = kv.kind(),
        store = kv.shown(),
        "key-value store open"
    );
    Ok(kv)
}
