//! End-to-end tests: the real `host` binary, real sockets, real guests.
//!
//! Build everything first with `make test` (it builds the guests for
//! `wasm32-wasip2` and the host binary, then runs this suite).

mod harness;

mod deploy;
mod faults;
mod front;
mod isolation;
mod kubernetes;
mod lifecycle;
mod limits;
mod persistence;
mod routes;
mod settings;
mod startup;
