//! The HTTP fronts: bind, accept (TLS optional), serve each connection with
//! hyper (HTTP/1.1 with keep-alive, HTTP/2 by ALPN or h2c), hand every
//! request to a [`Handler`], and drain gracefully on SIGINT/SIGTERM.
//! Connection-level protections live here: the connection cap, the header
//! read timeout against slowloris, and HTTP/2 stream and reset limits. The public listener's handler is the [`Router`]; the
//! admin listener's is the [`Admin`] API.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! and embedders can start a server in-process on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::admin::Admin;
use crate::config::{Config, DefaultApp};
use crate::engine::{self, EpochTicker};
use crate::metrics::metrics;
use crate::persist::StateDir;
use crate::registry::{Registry, RegistryConfig};
use crate::router::{ConnInfo, Route, Router};
use crate::tls::CertStore;
use crate::{component, manifest};

/// Something that turns a request into a response, never failing.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Response<HyperOutgoingBody>> + Send;
}

impl Handler for Router {
    async fn handle(&self, request: Request<Incoming>) -> Response<HyperOutgoingBody> {
        Router::handle(self, request).await
    }
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

    fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// How each listener treats connections.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub drain: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_streams: u32,
    pub h2_max_pending_resets: usize,
    pub h2_max_local_error_resets: usize,
    /// Count this listener's connections in the `open_connections` gauge.
    pub public: bool,
}

impl ConnOptions {
    fn from_config(config: &Config, public: bool) -> ConnOptions {
        ConnOptions {
            drain: config.drain_timeout,
            max_connections: config.max_connections,
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.front.max_header_bytes,
            max_headers: config.front.max_headers,
            h2_max_streams: config.h2_max_streams,
            h2_max_pending_resets: config.h2_max_pending_resets,
            h2_max_local_error_resets: config.h2_max_local_error_resets,
            public,
        }
    }
}

/// Bind both listeners, start the admin API (health first), load every
/// app, print the startup lines and serve until SIGINT/SIGTERM; then drain:
/// readiness goes false, after `--shutdown-delay-ms` the listeners stop
/// accepting, and in-flight requests get up to `--drain-timeout-ms`.
pub async fn serve(config: Config) -> Result<()> {
    let engine = engine::build(&config.limits)?;
    let _ticker = EpochTicker::start(&engine)?;
    let linker = component::linker(&engine)?;

    let tls = match &config.tls {
        Some((cert, key)) => {
            let store = CertStore::open(cert, key)?;
            store.watch();
            Some(store.acceptor()?)
        }
        None => None,
    };
    let public = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let public_addr = public
        .local_addr()
        .context("failed to read the bound address")?;
    let admin_listener = TcpListener::bind(config.admin_listen)
        .await
        .with_context(|| {
            format!(
                "failed to listen on {} for the admin API",
                config.admin_listen
            )
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .context("failed to read the bound admin address")?;

    let state = StateDir::open(&config.state_dir)?;
    let router = Arc::new(Router::new(config.front));
    let shown = if public_addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), public_addr.port())
    } else {
        public_addr
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let registry = Arc::new(Registry::new(
        engine,
        linker,
        state,
        router.clone(),
        RegistryConfig {
            defaults: config.limits,
            keep_versions: config.keep_versions,
            compile_timeout: config.compile_timeout,
            public_base: format!("{scheme}://{shown}"),
        },
    ));

    // The admin API (and with it /healthz and /readyz) comes up first, so
    // probes see "alive, not ready" while apps load.
    let health = Arc::new(Health::default());
    let admin = Arc::new(Admin::new(
        registry.clone(),
        health.clone(),
        config.admin_token.clone(),
        config.max_upload_bytes,
    ));
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_server = tokio::spawn(run(
        admin_listener,
        None,
        admin,
        until_stopped(stopped.clone()),
        ConnOptions::from_config(&config, false),
    ));

    load_apps(&config, &registry, &router).await?;
    if config.admin_token.is_none() {
        tracing::warn!(%admin_addr, "the admin API has no token (set HOST_ADMIN_TOKEN): it is open to every local client on loopback");
    }
    health.set_ready(true);
    tracing::info!(%public_addr, %admin_addr, tls = tls.is_some(), apps = router.table().len, "serving");
    // The startup lines tests and scripts read to learn the bound ports.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "Admin API on http://{admin_addr}/")
        .and_then(|()| writeln!(stdout, "Serving HTTP on {scheme}://{public_addr}/"))
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")?;

    let delay = config.shutdown_delay;
    let health_for_signal = health.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        health_for_signal.set_ready(false);
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "shutdown requested: not ready; stopping listeners after the delay"
        );
        tokio::time::sleep(delay).await;
        let _ = stop.send(true);
    });
    let served = run(
        public,
        tls,
        router,
        until_stopped(stopped),
        ConnOptions::from_config(&config, true),
    )
    .await;
    let admin_served = admin_server.await.context("admin server task failed")?;
    served.and(admin_served)
}

/// Static apps first (command line, manifest), then the deployed ones, then
/// the default guest if `/` is still free.
async fn load_apps(config: &Config, registry: &Registry, router: &Router) -> Result<()> {
    let root = || Route::new("/", None).map_err(anyhow::Error::msg);
    if let DefaultApp::Explicit(component) = &config.default_app {
        registry
            .add_static("default", component, root()?, Default::default())
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
    let restored = registry.restore().await?;
    tracing::info!(
        apps = restored.apps,
        from_cache = restored.from_cache,
        compiled = restored.compiled,
        failed = restored.failed,
        state_dir = %config.state_dir.display(),
        "restored deployed apps"
    );
    if let DefaultApp::Implicit(component) = &config.default_app {
        match router.table().lookup(None, "/") {
            Some(app) if app.route.prefix == "/" => {
                tracing::info!(app = %app.name, "not serving the default guest: `/` is taken");
            }
            _ => {
                registry
                    .add_static("default", component, root()?, Default::default())
                    .await?
            }
        }
    }
    if router.table().len == 0 {
        tracing::warn!("no apps are configured yet: deploy one through the admin API");
    }
    Ok(())
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(options.header_read_timeout)
        // hyper's own parse limits sit above ours (which answer 431 with a
        // metric), as a backstop against pathological requests.
        .max_buf_size((options.max_header_bytes * 2).max(16 * 1024))
        .max_headers(options.max_headers * 2);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(options.h2_max_streams)
        .max_pending_accept_reset_streams(options.h2_max_pending_resets)
        .max_local_error_reset_streams(options.h2_max_local_error_resets)
        .max_header_list_size(u32::try_from(options.max_header_bytes * 2).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(options.max_connections));
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
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let info = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let service = service_fn(move |mut request: Request<Incoming>| {
            let handler = handler.clone();
            request.extensions_mut().insert(info);
            async move { Ok::<_, Infallible>(handler.handle(with_host(request, local)).await) }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = options.header_read_timeout;
        let public = options.public;
        tokio::spawn(async move {
            let _slot = slot;
            let io: Box<dyn Io> = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
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
            if let Err(err) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            if public {
                metrics().connections.dec();
            }
        });
    }

    drop(listener);
    tracing::info!(%local, deadline_ms = options.drain.as_millis() as u64, "stopped accepting: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(%local, "drained"),
        () = tokio::time::sleep(options.drain) => tracing::warn!(%local, "drain deadline passed; exiting with requests still in flight"),
    }
    Ok(())
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

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "failed to listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
