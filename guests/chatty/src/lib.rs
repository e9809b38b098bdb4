//! Test guest: prints `?lines=N` numbered lines (default 3) to stdout and
//! as many to stderr, then answers `printed N lines`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let lines: u32 = guest_sdk::query_param(&request, "lines")
            .and_then(|v| v.parse().ok())
            .unwrap_or(3);
        for i in 0..lines {
            println!("chatty stdout line {i}");
            eprintln!("chatty stderr line {i}");
        }
        let body = format!("printed {lines} lines\n");
        guest_sdk::respond(out, 200, "text/plain", body.as_bytes());
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
