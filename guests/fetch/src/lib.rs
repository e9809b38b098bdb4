//! Example guest: fetches an upstream URL with `wasi:http/outgoing-handler`
//! and relays its status, content type and body (streamed).
//!
//! The URL is `?url=...` or else the `upstream_url` config value. A failed
//! call (for example one the host's outbound policy denies) answers 502 with
//! `{"error": "<wasi:http error-code>"}`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::json::{Object, string};
use guest_sdk::wasi::config::store;
use guest_sdk::wasi::http::outgoing_handler;
use guest_sdk::wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, OutgoingRequest, ResponseOutparam, Scheme,
};
use guest_sdk::wasi::io::streams::StreamError;
use guest_sdk::{query_param, respond, send, write_all};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let url = query_param(&request, "url")
            .map(|u| guest_sdk::percent_decode(&u))
            .or_else(|| store::get("upstream_url").ok().flatten());
        let Some(url) = url else {
            return respond(
                out,
                400,
                "text/plain",
                b"pass ?url=... or set the upstream_url config value\n",
            );
        };
        match fetch(&url) {
            Ok(upstream) => relay(upstream, out),
            Err(code) => {
                let mut body = Object::new();
                body.field("error", &string(&format!("{code:?}")));
                respond(out, 502, "application/json", body.finish().as_bytes());
            }
        }
    }
}

fn fetch(url: &str) -> Result<IncomingResponse, ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => return Err(ErrorCode::HttpRequestUriInvalid),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |()| ErrorCode::HttpRequestUriInvalid;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    request.set_path_with_query(Some(path)).map_err(invalid)?;
    let pending = outgoing_handler::handle(request, None)?;
    pending.subscribe().block();
    match pending.get() {
        Some(Ok(result)) => result,
        _ => Err(ErrorCode::InternalError(Some(
            "response future failed".into(),
        ))),
    }
}

fn relay(upstream: IncomingResponse, out: ResponseOutparam) {
    let headers = Fields::new();
    if let Some(ct) = upstream.headers().get("content-type").into_iter().next() {
        let _ = headers.append("content-type", &ct);
    }
    let status = upstream.status();
    let Ok(body) = upstream.consume() else {
        return respond(out, 502, "text/plain", b"upstream body unavailable\n");
    };
    let Ok(input) = body.stream() else {
        return respond(out, 502, "text/plain", b"upstream body unavailable\n");
    };
    send(out, status, headers, |output| {
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => write_all(output, &chunk)?,
                Err(StreamError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
}

guest_sdk::export!(App with_types_in guest_sdk);
