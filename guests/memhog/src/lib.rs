//! Test guest: allocates and touches memory in 1 MiB blocks without bound,
//! until the host's memory limit stops it. `GET /ok` answers 200 `ok`.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some((_request, out)) = guest_sdk::ok_or(request, out) else {
            return;
        };
        let mut blocks: Vec<Vec<u8>> = Vec::new();
        loop {
            blocks.push(vec![0xA5; 1 << 20]);
            if blocks.len() == usize::MAX {
                break;
            }
            std::hint::black_box(&blocks);
        }
        guest_sdk::respond(out, 200, "text/plain", b"unreachable\n");
    }
}

guest_sdk::export!(App with_types_in guest_sdk);
