//! Test guest: allocates and touches memory in 1 MiB blocks without bound,
//! until the host's memory limit stops it. `GET /ok` answers 200 `ok`.
//! `GET /hold?mib=N&ms=M` touches N MiB, then holds it for M milliseconds (a
//! host timer, no CPU) before answering `held N MiB`: an instance that keeps
//! memory charged to the host's budget for a while.

use guest_sdk::exports::wasi::http::incoming_handler::Guest;
use guest_sdk::wasi::clocks::monotonic_clock;
use guest_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct App;

impl Guest for App {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if guest_sdk::path(&request) == "/hold" {
            let param = |name: &str, default: u64| {
                guest_sdk::query_param(&request, name)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(default)
            };
            let (mib, ms) = (param("mib", 1), param("ms", 1000));
            let blocks: Vec<Vec<u8>> = (0..mib).map(|_| vec![0xA5; 1 << 20]).collect();
            std::hint::black_box(&blocks);
            monotonic_clock::subscribe_duration(ms * 1_000_000).block();
            let body = format!("held {} MiB\n", blocks.len());
            return guest_sdk::respond(out, 200, "text/plain", body.as_bytes());
        }
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
