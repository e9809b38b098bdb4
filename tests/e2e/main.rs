//! End-to-end tests: the real `host` binary, real sockets, real guests.
//!
//! Build everything first with `make test` (it builds the guests for
//! `wasm32-wasip2` and the host binary, then runs this suite).

mod h2raw;
mod harness;

mod avatar;
mod browsers;
mod cluster;
mod contract;
mod deploy;
mod edges;
mod faults;
mod foreign;
mod fresh_machine;
mod front;
mod hostile;
mod hostile_clients;
mod isolation;
mod keyvalue;
mod kubernetes;
mod lifecycle;
mod limits;
mod operators;
mod persistence;
mod routes;
mod secrets;
mod settings;
mod startup;
