//! Test guest: recurses without bound until the call stack is exhausted.
//! `GET /ok` answers 200 `ok`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

#[inline(never)]
#[allow(unconditional_recursion)] // the point of this guest
fn depth(n: u64) -> u64 {
    // Not a tail call: the addition after the call keeps every frame alive.
    std::hint::black_box(depth(std::hint::black_box(n + 1))) + 1
}

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some((_request, out)) = guest_sdk::ok_or(request, out) else {
            return;
        };
        let d = depth(0);
        guest_sdk::respond(out, 200, "text/plain", d.to_string().as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
