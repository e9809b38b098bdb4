//! A host that serves HTTP by running WebAssembly components.
//!
//! Every request runs in a fresh instance of a component that exports
//! `wasi:http/incoming-handler`: nothing one request leaves in guest memory is
//! visible to the next. The component is compiled once, pre-instantiated once
//! ([`ProxyPre`](wasmtime_wasi_http::p2::bindings::ProxyPre)), and each request
//! only pays for a `Store` and an instantiation out of a pooling allocator.
//!
//! # Layout
//!
//! - [`cli`]: the command line as clap parses it, before any validation.
//! - [`config`]: the validated configuration the server runs with.
//! - [`engine`]: the one wasmtime `Engine` (pooling allocator, epoch
//!   interruption) and the single epoch ticker thread.
//! - [`component`]: loading a `.wasm`, checking it is a component this host
//!   can serve, and pre-instantiating it.
//! - [`state`]: what lives in each request's `Store`.
//! - [`limits`]: per-instance memory limits and the request body cap.
//! - [`invoke`]: one request through one fresh instance, with timeouts, and
//!   the mapping of guest failures to HTTP statuses.
//! - [`server`]: the accept loop, connection handling and graceful drain.
//! - [`response`]: the error responses the host itself produces.
//!
//! A request flows `server` → `invoke::App::handle` → a fresh instance of the
//! component's `ProxyPre` → the guest's `handle` → a streamed response.

pub mod cli;
pub mod component;
pub mod config;
pub mod engine;
pub mod invoke;
pub mod limits;
pub mod response;
pub mod server;
pub mod state;
