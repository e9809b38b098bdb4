//! Example guest that keeps state in `wasi:keyvalue@0.2.0-draft2`. Deploy
//! it with the stores it opens declared: `--kv default --kv links`.
//!
//! - `GET /`: a visit counter (`increment` of `visits` in store `default`)
//!   and the `message` an operator may set (`host kv APP set message Hi`).
//! - `POST /links` with a URL as the body: a short link, `{"code": "1",
//!   "path": "/l/1"}` (the code is a counter in store `links`).
//!   `GET /l/CODE` redirects to it, `DELETE /l/CODE` removes it, and
//!   `GET /links` lists them all (`list-keys` a page at a time, then
//!   `get-many`).
//! - `/kv/STORE/KEY`: the store's operations over HTTP, which the tests
//!   drive: `GET` (`?exists` for `exists`), `PUT` (the body; `?fill=N` for
//!   N bytes of `x`), `DELETE`, `POST ?incr=N`, `POST ?append=TEXT` (a
//!   compare-and-swap loop; answers how many tries it took); and on
//!   `/kv/STORE`: `GET ?cursor=C` (one page of keys), `POST ?get-many=a,b`,
//!   `POST ?set-many` (body `k=v` lines), `POST ?delete-many=a,b`,
//!   `POST ?ops=N` (N `exists` calls). Names are percent-decoded.
//!
//! Paths are the app's own: served under a one-segment route (`/kv-app`),
//! it drops that first. The interface's errors answer 403 `access-denied`, 404
//! `no-such-store` and 422 `other: MESSAGE`; an absent key is 404 `absent`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::json::{Object, string};
use guest_sdk::wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use guest_sdk::wasi::keyvalue0_2_0_draft2::atomics::{self, Cas, CasError};
use guest_sdk::wasi::keyvalue0_2_0_draft2::batch;
use guest_sdk::wasi::keyvalue0_2_0_draft2::store::{self, Bucket, Error};
use guest_sdk::{path, percent_decode, query_param, read_body, respond};

/// Largest body this app reads (a link, a value, `set-many` lines).
const MAX_BODY: usize = 4 << 20;

struct App;

/// An answer: status, content type, body.
type Reply = (u16, &'static str, Vec<u8>);

fn text(status: u16, body: impl Into<String>) -> Reply {
    (status, "text/plain", body.into().into_bytes())
}

fn json(status: u16, body: String) -> Reply {
    (status, "application/json", body.into_bytes())
}

fn failed(err: Error) -> Reply {
    match err {
        Error::AccessDenied => text(403, "access-denied"),
        Error::NoSuchStore => text(404, "no-such-store"),
        Error::Other(message) => text(422, format!("other: {message}")),
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|k| !k.is_empty())
        .map(percent_decode)
        .collect()
}

fn visits() -> Result<Reply, Error> {
    let store = store::open("default")?;
    let count = atomics::increment(&store, "visits", 1)?;
    let mut body = format!("visit {count}\n");
    if let Some(message) = store.get("message")? {
        body.push_str(&String::from_utf8_lossy(&message));
        body.push('\n');
    }
    Ok(text(200, body))
}

/// Short codes: the link counter in base 36.
fn code(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

fn links(request: IncomingRequest, method: Method, path: &str) -> Result<Reply, Error> {
    let links = store::open("links")?;
    match (method, path) {
        (Method::Post, "/links") => {
            let Some(url) = read_body(request, MAX_BODY) else {
                return Ok(text(413, "the link is too long"));
            };
            let url = String::from_utf8_lossy(&url).trim().to_string();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Ok(text(400, "the body must be an http:// or https:// URL"));
            }
            let n = atomics::increment(&links, "next", 1)?;
            let code = code(n as u64);
            links.set(&format!("l:{code}"), url.as_bytes())?;
            let mut body = Object::new();
            body.field("code", &string(&code));
            body.field("path", &string(&format!("/l/{code}")));
            Ok(json(201, body.finish()))
        }
        (Method::Get, "/links") => {
            let mut all = Object::new();
            let mut cursor = None;
            loop {
                let page = links.list_keys(cursor.as_deref())?;
                let keys: Vec<String> = page
                    .keys
                    .into_iter()
                    .filter(|k| k.starts_with("l:"))
                    .collect();
                for (key, url) in batch::get_many(&links, &keys)?.into_iter().flatten() {
                    all.field(&key[2..], &string(&String::from_utf8_lossy(&url)));
                }
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            Ok(json(200, all.finish()))
        }
        (method, path) => {
            let key = format!("l:{}", &path["/l/".len()..]);
            match method {
                Method::Delete => {
                    links.delete(&key)?;
                    Ok(text(204, ""))
                }
                _ => Ok(match links.get(&key)? {
                    Some(url) => redirect(&url),
                    None => text(404, "no such link"),
                }),
            }
        }
    }
}

fn redirect(url: &[u8]) -> Reply {
    (302, "location", url.to_vec())
}

/// A compare-and-swap loop: append `suffix` to the value at `key`.
fn append(bucket: &Bucket, key: &str, suffix: &str) -> Result<Reply, Error> {
    let mut cas = Cas::new(bucket, key)?;
    for tries in 1..=10_000u32 {
        let mut value = cas.current()?.unwrap_or_default();
        value.extend_from_slice(suffix.as_bytes());
        match atomics::swap(cas, &value) {
            Ok(()) => return Ok(text(200, tries.to_string())),
            Err(CasError::CasFailed(fresh)) => cas = fresh,
            Err(CasError::StoreError(err)) => return Err(err),
        }
    }
    Ok(text(409, "gave up after 10000 tries"))
}

fn operations(request: IncomingRequest, method: Method, rest: &str) -> Result<Reply, Error> {
    let (store_name, key) = match rest.split_once('/') {
        Some((store, key)) => (percent_decode(store), Some(percent_decode(key))),
        None => (percent_decode(rest), None),
    };
    let bucket = store::open(&store_name)?;
    let param = |name: &str| query_param(&request, name);
    let Some(key) = key else {
        if let Some(keys) = param("get-many") {
            let mut out = Object::new();
            let keys = list(&keys);
            for (key, found) in keys.iter().zip(batch::get_many(&bucket, &keys)?) {
                let value = found.map_or("null".to_string(), |(_, v)| {
                    string(&String::from_utf8_lossy(&v))
                });
                out.field(key, &value);
            }
            return Ok(json(200, out.finish()));
        }
        if let Some(keys) = param("delete-many") {
            batch::delete_many(&bucket, &list(&keys))?;
            return Ok(text(204, ""));
        }
        if param("set-many").is_some() {
            let body = read_body(request, MAX_BODY).unwrap_or_default();
            let pairs: Vec<(String, Vec<u8>)> = String::from_utf8_lossy(&body)
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (percent_decode(k), v.as_bytes().to_vec()))
                .collect();
            batch::set_many(&bucket, &pairs)?;
            return Ok(text(204, ""));
        }
        if let Some(n) = param("ops") {
            let n: u32 = n.parse().unwrap_or(0);
            for _ in 0..n {
                bucket.exists("x")?;
            }
            return Ok(text(200, n.to_string()));
        }
        let page = bucket.list_keys(param("cursor").map(|c| percent_decode(&c)).as_deref())?;
        let keys: Vec<String> = page.keys.iter().map(|k| string(k)).collect();
        let mut out = Object::new();
        out.field("keys", &format!("[{}]", keys.join(",")));
        out.field("cursor", &page.cursor.map_or("null".into(), |c| string(&c)));
        return Ok(json(200, out.finish()));
    };
    if matches!(method, Method::Post) {
        if let Some(delta) = param("incr") {
            let delta: i64 = delta.parse().unwrap_or(1);
            return Ok(text(
                200,
                atomics::increment(&bucket, &key, delta)?.to_string(),
            ));
        }
        if let Some(suffix) = param("append") {
            return append(&bucket, &key, &percent_decode(&suffix));
        }
        return Ok(text(400, "POST needs ?incr=N or ?append=TEXT"));
    }
    match method {
        Method::Put => {
            let value = match param("fill") {
                Some(n) => vec![b'x'; n.parse().unwrap_or(0)],
                None => match read_body(request, MAX_BODY) {
                    Some(body) => body,
                    None => return Ok(text(413, "the value is too large for this app")),
                },
            };
            bucket.set(&key, &value)?;
            Ok(text(204, ""))
        }
        Method::Delete => {
            bucket.delete(&key)?;
            Ok(text(204, ""))
        }
        _ if param("exists").is_some() => Ok(text(200, bucket.exists(&key)?.to_string())),
        _ => Ok(match bucket.get(&key)? {
            Some(value) => (200, "application/octet-stream", value),
            None => text(404, "absent"),
        }),
    }
}

/// The app's own path: the request's, without the route it is deployed at
/// when that is one segment (`/kv-app/links` → `/links`).
fn own_path(full: String) -> String {
    let known =
        |p: &str| p == "/" || p == "/links" || p.starts_with("/l/") || p.starts_with("/kv/");
    if known(&full) {
        return full;
    }
    let rest = full[1..].find('/').map_or("/", |i| &full[i + 1..]);
    rest.to_string()
}

fn route(request: IncomingRequest) -> Result<Reply, Error> {
    let path = own_path(path(&request));
    let method = request.method();
    if path == "/" {
        return visits();
    }
    if path == "/links" || path.starts_with("/l/") {
        return links(request, method, &path);
    }
    if let Some(rest) = path.strip_prefix("/kv/") {
        return operations(request, method, rest);
    }
    Ok(text(404, "try /, /links or /kv/STORE/KEY"))
}

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let (status, kind, body) = route(request).unwrap_or_else(failed);
        if kind == "location" {
            let headers = Fields::new();
            let _ = headers.append("location", &body);
            let response = OutgoingResponse::new(headers);
            let _ = response.set_status_code(status);
            if let Ok(body) = response.body() {
                ResponseOutparam::set(out, Ok(response));
                let _ = OutgoingBody::finish(body, None);
            }
            return;
        }
        respond(out, status, kind, &body);
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
