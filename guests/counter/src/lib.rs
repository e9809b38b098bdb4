//! Test guest: increments a static counter and answers with its value. In a
//! fresh instance per request the answer is always `1`; anything else means
//! guest state leaked from one request to the next (or, for an app that opted
//! into instance reuse, that the instance was reused, as it should be).
//!
//! A path ending in `/trap` counts, then traps: the instance must not
//! serve again.

use std::sync::atomic::{AtomicU64, Ordering};

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

static COUNTER: AtomicU64 = AtomicU64::new(0);

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
        if guest_sdk::path(&request).ends_with("/trap") {
            core::arch::wasm32::unreachable()
        }
        drop(request);
        guest_sdk::respond(out, 200, "text/plain", n.to_string().as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
