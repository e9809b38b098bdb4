//! Test guest: traps (wasm `unreachable`) before setting any response.
//! `GET /ok` answers 200 `ok`, so one host shows a failure and a success.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some((_request, _out)) = guest_sdk::ok_or(request, out) else {
            return;
        };
        core::arch::wasm32::unreachable()
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
