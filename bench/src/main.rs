//! The native baseline of `make bench`: a plain hyper 1 server doing what
//! the default guest does, with no WebAssembly in the way. `GET /` answers
//! the same 14-byte greeting; `POST /echo` streams the body back.
//!
//! Usage: `native-hello [ADDR]` (default 127.0.0.1:0); prints
//! `Serving HTTP on http://ADDR/` like the host.

use std::convert::Infallible;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

async fn handle(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let response = match (request.method().as_str(), request.uri().path()) {
        ("POST", "/echo") => Response::new(request.into_body().boxed()),
        ("GET", "/") => Response::builder()
            .header("content-type", "text/plain")
            .body(
                Full::new(Bytes::from_static(b"Hello, world!\n"))
                    .map_err(|never| match never {})
                    .boxed(),
            )
            .unwrap_or_default(),
        _ => {
            let mut not_found = Response::new(
                Full::new(Bytes::from_static(b"not found\n"))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *not_found.status_mut() = hyper::StatusCode::NOT_FOUND;
            not_found
        }
    };
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("failed to listen on {addr}"))?;
    println!("Serving HTTP on http://{}/", listener.local_addr()?);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
