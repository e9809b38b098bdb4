//! A WASI 0.3 `wasi:http/service` app built with the `wasip3` crate, the way
//! a user moving to WASI 0.3 writes one: nothing host-specific.
//!   GET  /anything -> 200 text: the path, how many requests this instance
//!                     has taken and how many it was serving at once
//!   POST /echo     -> 200, the request body streamed back chunk by chunk
//!   GET  /raise    -> a panic (a trap: the host answers 500)
//!   GET  /spin     -> burns CPU forever (the deadline must stop it)
//!   GET  /sleep?ms=N -> waits N ms on wasi:clocks before answering
//!   GET  /memhog   -> grows memory until the cap traps it
//!   GET  /drip     -> answers, then streams a line every 100 ms forever

use std::sync::atomic::{AtomicU32, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(App);

struct App;

const CHUNK: usize = 64 * 1024;

/// Requests this instance has taken, and is serving now (an instance the
/// host shares between requests serves several at once).
static TAKEN: AtomicU32 = AtomicU32::new(0);
static SERVING: AtomicU32 = AtomicU32::new(0);

/// Counts a request as being served until dropped.
struct Serving;

impl Serving {
    /// Start serving: this request's number.
    fn start() -> (Serving, u32) {
        SERVING.fetch_add(1, Ordering::Relaxed);
        (Serving, TAKEN.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        SERVING.fetch_sub(1, Ordering::Relaxed);
    }
}

fn headers(content_type: &str) -> Fields {
    Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
        .expect("valid header")
}

/// A `text/plain` response without trailers, and the writer of its body.
fn text_response() -> (Response, wit_bindgen::StreamWriter<u8>) {
    let (body_out, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _sent) = Response::new(
        headers("text/plain; charset=utf-8"),
        Some(body_rx),
        trailers_rx,
    );
    (response, body_out)
}

impl wasip3::exports::http::handler::Guest for App {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let (serving, taken) = Serving::start();
        let path = request
            .get_path_with_query()
            .unwrap_or_else(|| "/".to_string());
        if path.starts_with("/raise") {
            panic!("this route panics on purpose");
        }
        if path.starts_with("/spin") {
            let mut x: u64 = 0;
            loop {
                x = core::hint::black_box(x.wrapping_add(1));
            }
        }
        if path.starts_with("/memhog") {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 1 << 20]);
                core::hint::black_box(&hog);
            }
        }
        if path.starts_with("/drip") {
            // Answers at once, then streams a line every 100 ms, forever.
            let (response, mut body_out) = text_response();
            wit_bindgen::spawn_local(async move {
                while body_out.write_all(b"tick\n".to_vec()).await.is_empty() {
                    wasip3::clocks::monotonic_clock::wait_for(100_000_000).await;
                }
            });
            return Ok(response);
        }
        if let Some(ms) = path.strip_prefix("/sleep?ms=") {
            let ms: u64 = ms.parse().unwrap_or(0);
            wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        }
        // How many this instance serves at the moment this one is answered.
        let at_once = SERVING.load(Ordering::Relaxed);
        drop(serving);
        if matches!(request.get_method(), Method::Post) && path.starts_with("/echo") {
            // `res` tells the host how consuming the request body ended.
            let (res_tx, res_rx) = wit_future::new(|| Ok(()));
            let (mut body_in, trailers_in) = Request::consume_body(request, res_rx);
            let (mut body_out, body_rx) = wit_stream::new();
            let (response, _sent) = Response::new(
                headers("application/octet-stream"),
                Some(body_rx),
                trailers_in,
            );
            wit_bindgen::spawn_local(async move {
                let mut buf = Vec::with_capacity(CHUNK);
                loop {
                    let (result, data) = body_in.read(buf).await;
                    match result {
                        StreamResult::Complete(_) => {}
                        StreamResult::Dropped | StreamResult::Cancelled => break,
                    }
                    if !body_out.write_all(data).await.is_empty() {
                        break; // the client went away
                    }
                    buf = Vec::with_capacity(CHUNK);
                }
                drop(body_out);
                let _ = res_tx.write(Ok(())).await;
            });
            return Ok(response);
        }
        let (response, mut body_out) = text_response();
        let text = format!(
            "hello from Rust (WASI 0.3) on {path} (request {taken} of this instance, {at_once} at once)\n"
        );
        wit_bindgen::spawn_local(async move {
            body_out.write_all(text.into_bytes()).await;
        });
        Ok(response)
    }
}
