//! End-to-end tests: the real `host` binary, real sockets, real guests.
//!
//! Build everything first with `make test` (it builds the guests for
//! `wasm32-wasip2` and the host binary, then runs this suite).

mod harness;

mod isolation;
mod lifecycle;
mod limits;
mod routes;
mod startup;
