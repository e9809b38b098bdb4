//! Bench guest: answers like the hello guest, after running one of its
//! thousands of generated functions (`?f=N` picks which), so all of them
//! are reachable and stay in the component. Used to measure deploy and
//! restart time for a large component.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated.rs"));
}

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let f: usize = guest_sdk::query_param(&request, "f")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let table = &generated::TABLE;
        let value = table[f % table.len()](f as u64);
        let body = format!("Hello, world! {value:x}\n");
        guest_sdk::respond(out, 200, "text/plain", body.as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
