//! Test guest: burns CPU forever without ever responding. Only the host's
//! epoch deadline can stop it. `GET /ok` answers 200 `ok`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some((_request, _out)) = guest_sdk::ok_or(request, out) else {
            return;
        };
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
