//! The default app, served at `/` by `cargo run -p host`:
//!
//! - `GET /`: a short greeting;
//! - `POST /echo`: the request body streamed back chunk by chunk as it
//!   arrives, never held whole;
//! - `GET /headers`: the request's method, path, authority and headers as
//!   JSON;
//! - anything else: 404.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::json::{Object, string};
use guest_sdk::wasi::http::types::{Fields, IncomingRequest, Method, ResponseOutparam};
use guest_sdk::wasi::io::streams::StreamError;
use guest_sdk::{path, respond, send, write_all};

struct App;

const GREETING: &[u8] = b"Hello, world!\n";
const ECHO_CHUNK: u64 = 64 * 1024;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = request.method();
        match (path(&request).as_str(), &method) {
            ("/", Method::Get | Method::Head) => respond(out, 200, "text/plain", GREETING),
            ("/echo", Method::Post | Method::Put) => echo(request, out),
            ("/headers", Method::Get) => headers(&request, &method, out),
            ("/" | "/echo" | "/headers", _) => respond(
                out,
                405,
                "text/plain",
                b"method not allowed: use GET / , POST /echo or GET /headers\n",
            ),
            _ => respond(out, 404, "text/plain", b"not found\n"),
        }
    }
}

/// Stream the request body back as it arrives.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let headers = Fields::new();
    let content_type = request
        .headers()
        .get("content-type")
        .into_iter()
        .next()
        .unwrap_or_else(|| b"application/octet-stream".to_vec());
    let _ = headers.append("content-type", &content_type);
    if let Some(length) = request.headers().get("content-length").into_iter().next() {
        let _ = headers.append("content-length", &length);
    }
    let Ok(body) = request.consume() else {
        return respond(out, 400, "text/plain", b"request body already consumed\n");
    };
    let Ok(input) = body.stream() else {
        return respond(out, 400, "text/plain", b"request body unavailable\n");
    };
    send(out, 200, headers, |output| {
        loop {
            match input.blocking_read(ECHO_CHUNK) {
                Ok(chunk) => write_all(output, &chunk)?,
                Err(StreamError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
}

/// The request line and headers as a JSON object.
fn headers(request: &IncomingRequest, method: &Method, out: ResponseOutparam) {
    let mut headers = Object::new();
    for (name, value) in request.headers().entries() {
        headers.field(&name, &string(&String::from_utf8_lossy(&value)));
    }
    let mut body = Object::new();
    body.field("method", &string(&method_name(method)))
        .field(
            "path",
            &string(&request.path_with_query().unwrap_or_default()),
        )
        .field(
            "authority",
            &string(&request.authority().unwrap_or_default()),
        )
        .field("headers", &headers.finish());
    respond(
        out,
        200,
        "application/json",
        (body.finish() + "\n").as_bytes(),
    );
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
