//! Test guest: waits (a host timer, no CPU) for `?ms=N` milliseconds
//! (default 1000), then answers `slept N ms`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::clocks::monotonic_clock;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let ms: u64 = guest_sdk::query_param(&request, "ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        monotonic_clock::subscribe_duration(ms * 1_000_000).block();
        let body = format!("slept {ms} ms\n");
        guest_sdk::respond(out, 200, "text/plain", body.as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
