//! Test guest: returns normally without ever setting a response.
//! `GET /ok` answers 200 `ok`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some((_request, out)) = guest_sdk::ok_or(request, out) else {
            return;
        };
        drop(out);
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
