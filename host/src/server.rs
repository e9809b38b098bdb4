//! The HTTP front: bind, accept, serve each connection with hyper (HTTP/1.1
//! and h2c), hand every request to the app, and drain gracefully on
//! SIGINT/SIGTERM.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! and embedders can start a server in-process on port 0.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http::{HeaderValue, Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::io::Write;
use tokio::net::TcpListener;

use crate::component;
use crate::config::Config;
use crate::engine::{self, EpochTicker};
use crate::invoke::App;

/// Load the component, bind, print the startup line and serve until
/// SIGINT/SIGTERM, then drain.
pub async fn serve(config: Config) -> Result<()> {
    let engine = engine::build(&config.limits)?;
    let _ticker = EpochTicker::start(&engine)?;
    let linker = component::linker(&engine)?;
    let pre = component::load_file(&engine, &linker, &config.component)?;
    let app = Arc::new(App::new(pre, config.limits));

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("failed to read the bound address")?;
    tracing::info!(component = %config.component.display(), %addr, "serving");
    // The startup line tests and scripts read to learn the bound port.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "Serving HTTP on http://{addr}/").context("failed to write to stdout")?;
    stdout.flush().context("failed to write to stdout")?;

    run(listener, app, shutdown_signal(), config.drain_timeout).await
}

/// Serve connections from `listener` until `shutdown` resolves; then stop
/// accepting and give open connections up to `drain` to finish their
/// in-flight requests.
pub async fn run(
    listener: TcpListener,
    app: Arc<App>,
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
        let app = app.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(with_host(request, local)).await) }
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
    tracing::info!(
        deadline_ms = drain.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("drained; exiting"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain deadline passed; exiting with requests still in flight"),
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
