//! Test guest: a hostile app that tries to exhaust the HOST's memory, file
//! descriptors and tasks without touching its own linear memory (which the
//! host already caps). Every wasi:http resource a guest creates lives in the
//! host: the guest holds only a 32-bit handle, so a few bytes of guest memory
//! can pin kilobytes or megabytes of host memory. Each mode below floods one
//! such resource, to prove the host bounds it. The `forget`s are deliberate:
//! the handles are never dropped, so nothing is freed before the instance
//! ends.
//!
//! - `/table?n=N` (default 2,000,000): creates N empty `fields` resources.
//!   Bounds: resource-table entries per instance (a trap when full).
//! - `/fields?n=N&kb=K` (defaults 1,000,000 and 56): creates N `fields` and
//!   appends K headers of 1 KiB to each. wasmtime-wasi-http traps (rather
//!   than returning an error) when a `fields` outgrows the host's size limit,
//!   so `kb` must stay under it to flood; `n=1&kb=1024` shows that limit.
//!   Bounds: bytes per `fields`, times the resource-table cap.
//! - `/bodies?n=N` (default 100,000): creates N outgoing requests and writes
//!   to each body as much as `check-write` permits, without flushing or
//!   sending. Bounds: bytes the host buffers per outgoing body.
//! - `/fanout?n=N&url=URL&settle_ms=S&hold_ms=H` (defaults 50,000, -, 200,
//!   0): starts N outbound GETs to URL and never awaits them. After `S` ms
//!   it looks (without blocking) at which calls have settled, then holds the
//!   rest open for `H` ms before answering. Bounds: outbound calls in flight
//!   per instance and per app (each one is a task, a socket and a buffer).
//! - anything else: 200 `hostile guest`.
//!
//! The mode is the last path segment, so `/app/table` works as `/table`
//! under any route prefix.
//!
//! A flood that survives answers 200 with JSON counts, so a test can see how
//! far it got; a trap is the host's 500.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::json::{Object, string};
use guest_sdk::wasi::clocks::monotonic_clock;
use guest_sdk::wasi::http::outgoing_handler;
use guest_sdk::wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingRequest, ResponseOutparam, Scheme,
};
use guest_sdk::{path, query_param, respond};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let num = |name: &str, default: u64| {
            query_param(&request, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        // The last path segment picks the mode, so any route prefix works.
        let path = path(&request);
        let report = match path.rsplit('/').next().unwrap_or_default() {
            "table" => table(num("n", 2_000_000)),
            "fields" => fields(num("n", 1_000_000), num("kb", 56)),
            "bodies" => bodies(num("n", 100_000)),
            "fanout" => match query_param(&request, "url") {
                Some(url) => fanout(
                    num("n", 50_000),
                    &url,
                    num("settle_ms", 200),
                    num("hold_ms", 0),
                ),
                None => return respond(out, 400, "text/plain", b"pass ?url=...\n"),
            },
            _ => return respond(out, 200, "text/plain", b"hostile guest\n"),
        };
        respond(out, 200, "application/json", report.finish().as_bytes());
    }
}

/// N `fields` resources, never dropped.
fn table(n: u64) -> Object {
    for _ in 0..n {
        std::mem::forget(Fields::new());
    }
    let mut report = Object::new();
    report.field("fields", &n.to_string());
    report
}

/// N `fields` of up to `kb` 1 KiB headers each, never dropped.
fn fields(n: u64, kb: u64) -> Object {
    let value = [b'a'; 1024];
    let (mut headers, mut errors, mut first_error) = (0u64, 0u64, None);
    for _ in 0..n {
        let fields = Fields::new();
        for i in 0..kb {
            match fields.append(&format!("x-h{i}"), &value) {
                Ok(()) => headers += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert_with(|| format!("{e:?}"));
                    break;
                }
            }
        }
        std::mem::forget(fields);
    }
    let mut report = Object::new();
    report
        .field("fields", &n.to_string())
        .field("kib", &headers.to_string())
        .field("errors", &errors.to_string())
        .field("first_error", &string(&first_error.unwrap_or_default()));
    report
}

/// N outgoing requests whose bodies are filled until `check-write` says 0.
fn bodies(n: u64) -> Object {
    let zeros = vec![0u8; 1 << 20];
    let (mut bytes, mut max_per_body, mut first_error) = (0u64, 0u64, None);
    for _ in 0..n {
        let request = OutgoingRequest::new(Fields::new());
        let body = request.body().expect("a new request's body");
        let stream = body.write().expect("a new body's stream");
        let mut written = 0u64;
        loop {
            let permit = match stream.check_write() {
                Ok(0) => break,
                Ok(permit) => usize::try_from(permit).unwrap_or(usize::MAX),
                Err(e) => {
                    first_error.get_or_insert_with(|| format!("{e:?}"));
                    break;
                }
            };
            let chunk = &zeros[..permit.min(zeros.len())];
            if let Err(e) = stream.write(chunk) {
                first_error.get_or_insert_with(|| format!("{e:?}"));
                break;
            }
            written += chunk.len() as u64;
        }
        bytes += written;
        max_per_body = max_per_body.max(written);
        std::mem::forget(stream);
        std::mem::forget(body);
        std::mem::forget(request);
    }
    let mut report = Object::new();
    report
        .field("bodies", &n.to_string())
        .field("bytes", &bytes.to_string())
        .field("max_per_body", &max_per_body.to_string())
        .field("first_error", &string(&first_error.unwrap_or_default()));
    report
}

/// N outbound GETs to `url`, started and never awaited.
///
/// `ok`/`err` count what `outgoing-handler.handle` returned; of the calls it
/// accepted, after `settle_ms` `responses` got a response head, `failed`
/// ended in an error code and `pending` are still in flight.
fn fanout(n: u64, url: &str, settle_ms: u64, hold_ms: u64) -> Object {
    let (mut ok, mut err, mut first_error) = (0u64, 0u64, None);
    let mut calls = Vec::new();
    for _ in 0..n {
        match get_request(url).and_then(|request| outgoing_handler::handle(request, None)) {
            Ok(call) => {
                ok += 1;
                calls.push(call);
            }
            Err(e) => {
                err += 1;
                first_error.get_or_insert_with(|| format!("{e:?}"));
            }
        }
    }
    // Give the host's tasks time to run, then look without waiting: a
    // call refused by a cap settles at once, one to a silent upstream never.
    sleep_ms(settle_ms);
    let (mut responses, mut failed, mut first_failure) = (0u64, 0u64, None);
    for (i, call) in calls.iter().enumerate() {
        // The host answers `ready` by polling a tokio task handle once, which
        // spends tokio's cooperative budget (128 polls per turn of the
        // request's task); past it every call looks pending. Yielding now
        // and then refills the budget, so "not ready" means not settled.
        if i % 64 == 63 {
            sleep_ms(1);
        }
        if !call.subscribe().ready() {
            continue;
        }
        match call.get() {
            Some(Ok(Ok(response))) => {
                responses += 1;
                std::mem::forget(response);
            }
            Some(Ok(Err(e))) => {
                failed += 1;
                first_failure.get_or_insert_with(|| format!("{e:?}"));
            }
            _ => {}
        }
    }
    sleep_ms(hold_ms);
    std::mem::forget(calls);
    let mut report = Object::new();
    report
        .field("ok", &ok.to_string())
        .field("err", &err.to_string())
        .field("first_error", &string(&first_error.unwrap_or_default()))
        .field("responses", &responses.to_string())
        .field("failed", &failed.to_string())
        .field("pending", &(ok - responses - failed).to_string())
        .field("first_failure", &string(&first_failure.unwrap_or_default()));
    report
}

/// A GET for `http[s]://authority/path`.
fn get_request(url: &str) -> Result<OutgoingRequest, ErrorCode> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("https", rest)) => (Scheme::Https, rest),
        Some(("http", rest)) => (Scheme::Http, rest),
        _ => return Err(ErrorCode::HttpRequestUriInvalid),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let invalid = |()| ErrorCode::HttpRequestUriInvalid;
    request.set_scheme(Some(&scheme)).map_err(invalid)?;
    request.set_authority(Some(authority)).map_err(invalid)?;
    let path = if path.is_empty() { "/" } else { path };
    request.set_path_with_query(Some(path)).map_err(invalid)?;
    Ok(request)
}

fn sleep_ms(ms: u64) {
    if ms > 0 {
        monotonic_clock::subscribe_duration(ms * 1_000_000).block();
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
