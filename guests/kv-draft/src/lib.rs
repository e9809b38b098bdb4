//! Test guest built against `wasi:keyvalue@0.2.0-draft`, the version
//! wasmtime's `wasmtime-wasi-keyvalue` and wasmCloud ship (numeric list
//! cursors, unsigned increments), to show that such components link and
//! share the store with draft2 apps. It opens the store named by
//! `?store=` (the empty identifier, wasmtime's default, when absent):
//!
//! - `GET …/KEY`: the value (404 `absent`); `PUT …/KEY`: set the body;
//! - `POST …/KEY?incr=N`: increment, answers the count;
//! - `GET …/?cursor=N` (a path ending in `/`): one page of keys,
//!   `{"keys": [...], "cursor": N|null}`.
//!
//! The key is the path's last segment, so any route works.
//!
//! Errors answer 403 `access-denied`, 404 `no-such-store`, 422 `other: …`.

wit_bindgen::generate!({
    world: "handler-keyvalue-draft",
    path: "../../wit",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;
use wasi::keyvalue0_2_0_draft::atomics;
use wasi::keyvalue0_2_0_draft::store::{self, Error};

struct App;

fn query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    let full = request.path_with_query()?;
    let (_, query) = full.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(body) = request.consume() else {
        return out;
    };
    let Ok(stream) = body.stream() else {
        return out;
    };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        out.extend_from_slice(&chunk);
    }
    out
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        for chunk in body.chunks(4096) {
            if let Err(StreamError::Closed) = stream.blocking_write_and_flush(chunk) {
                break;
            }
        }
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

fn route(request: IncomingRequest) -> Result<(u16, Vec<u8>), Error> {
    let full = request.path_with_query().unwrap_or_default();
    let path = full.split('?').next().unwrap_or("/").to_string();
    let bucket = store::open(&query_param(&request, "store").unwrap_or_default())?;
    // The last segment: whatever route the app is served under.
    let key = path.rsplit('/').next().unwrap_or_default().to_string();
    if key.is_empty() {
        let cursor = query_param(&request, "cursor").and_then(|c| c.parse::<u64>().ok());
        let page = bucket.list_keys(cursor)?;
        let keys: Vec<String> = page.keys.iter().map(|k| format!("{k:?}")).collect();
        let cursor = page.cursor.map_or("null".to_string(), |c| c.to_string());
        let body = format!("{{\"keys\":[{}],\"cursor\":{cursor}}}", keys.join(","));
        return Ok((200, body.into_bytes()));
    }
    match request.method() {
        Method::Post => {
            let delta = query_param(&request, "incr")
                .and_then(|d| d.parse().ok())
                .unwrap_or(1);
            let count = atomics::increment(&bucket, &key, delta)?;
            Ok((200, count.to_string().into_bytes()))
        }
        Method::Put => {
            bucket.set(&key, &read_body(request))?;
            Ok((204, Vec::new()))
        }
        _ => Ok(match bucket.get(&key)? {
            Some(value) => (200, value),
            None => (404, b"absent".to_vec()),
        }),
    }
}

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (status, body) = route(request).unwrap_or_else(|err| match err {
            Error::AccessDenied => (403, b"access-denied".to_vec()),
            Error::NoSuchStore => (404, b"no-such-store".to_vec()),
            Error::Other(message) => (422, format!("other: {message}").into_bytes()),
        });
        respond(out, status, &body);
    }
}

export!(App);
