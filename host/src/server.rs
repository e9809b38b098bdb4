//! The HTTP fronts: bind, accept, serve each connection with hyper (HTTP/1.1
//! and h2c), hand every request to a [`Handler`], and drain gracefully on
//! SIGINT/SIGTERM. The public listener's handler is the [`Router`]; the
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

use anyhow::{Context, Result};
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::admin::Admin;
use crate::config::{Config, DefaultApp};
use crate::engine::{self, EpochTicker};
use crate::persist::StateDir;
use crate::registry::{Registry, RegistryConfig};
use crate::router::{Route, Router};
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

/// Load every app, bind both listeners, print the startup lines and serve
/// until SIGINT/SIGTERM, then drain.
pub async fn serve(config: Config) -> Result<()> {
    let engine = engine::build(&config.limits)?;
    let _ticker = EpochTicker::start(&engine)?;
    let linker = component::linker(&engine)?;

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
    let router = Arc::new(Router::new(
        config.limits.max_concurrent,
        config.version_headers,
    ));
    let shown = if public_addr.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), public_addr.port())
    } else {
        public_addr
    };
    let registry = Arc::new(Registry::new(
        engine,
        linker,
        state,
        router.clone(),
        RegistryConfig {
            defaults: config.limits,
            keep_versions: config.keep_versions,
            compile_timeout: config.compile_timeout,
            public_base: format!("http://{shown}"),
        },
    ));

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
    tracing::info!(
        apps = restored.apps,
        from_cache = restored.from_cache,
        compiled = restored.compiled,
        failed = restored.failed,
        state_dir = %config.state_dir.display(),
        "restored deployed apps"
    );
    if router.table().len == 0 {
        tracing::warn!("no apps are configured yet: deploy one through the admin API");
    }
    if config.admin_token.is_none() {
        tracing::warn!(%admin_addr, "the admin API has no token (set HOST_ADMIN_TOKEN): it is open to every local client on loopback");
    }
    let admin = Arc::new(Admin::new(
        registry,
        config.admin_token.clone(),
        config.max_upload_bytes,
    ));

    tracing::info!(%public_addr, %admin_addr, apps = router.table().len, "serving");
    // The startup lines tests and scripts read to learn the bound ports.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "Admin API on http://{admin_addr}/")
        .and_then(|()| writeln!(stdout, "Serving HTTP on http://{public_addr}/"))
        .and_then(|()| stdout.flush())
        .context("failed to write to stdout")?;

    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let drain = config.drain_timeout;
    let (a, b) = tokio::join!(
        run(public, router, until_stopped(stopped.clone()), drain),
        run(admin_listener, admin, until_stopped(stopped), drain),
    );
    a.and(b)
}

/// Serve connections from `listener` with `handler` until `shutdown`
/// resolves; then stop accepting and give open connections up to `drain`
/// to finish their in-flight requests.
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Result<()> {
    let local = listener
        .local_addr()
        .context("failed to read the bound address")?;
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);

    loop {
        let (stream, _peer) = tokio::select! {
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
        let service = service_fn(move |request: Request<Incoming>| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler.handle(with_host(request, local)).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!(%local, deadline_ms = drain.as_millis() as u64, "shutting down: draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(%local, "drained"),
        () = tokio::time::sleep(drain) => tracing::warn!(%local, "drain deadline passed; exiting with requests still in flight"),
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
