//! A host that serves HTTP by running WebAssembly components.
//!
//! Every request runs in a fresh instance of a component that exports
//! `wasi:http/incoming-handler` (WASI 0.2) or `wasi:http/handler` (WASI 0.3):
//! nothing one request leaves in guest memory is visible to the next. The component is compiled once, pre-instantiated once
//! ([`ProxyPre`](wasmtime_wasi_http::p2::bindings::ProxyPre)), and each request
//! only pays for a `Store` and an instantiation out of a pooling allocator.
//!
//! # Layout
//!
//! - [`cli`]: the command line as clap parses it, before any validation.
//! - [`config`]: the validated configuration `host serve` runs with.
//! - [`client`]: `host deploy`, `apps`, `rollback`, `canary`, `remove`.
//! - [`engine`]: the wasmtime `Engine`s (one per world: WASI 0.2 without the
//!   component-model async machinery, WASI 0.3 with it; and per memory reset,
//!   scan or copy, by the component's memory image; built on first use),
//!   the pooling allocator's shape, and the single epoch ticker thread.
//! - [`component`]: checking a `.wasm` is a component this host can serve,
//!   which world it serves, compiling it and pre-instantiating it.
//! - [`registry`]: the apps, their versions, and every change to them
//!   through one commit path; the background garbage collector.
//! - [`persist`]: the state directory (components, records, compiled code).
//! - [`manifest`]: the TOML apps manifest.
//! - [`settings`]: per-app env, config, secrets, outbound policy, limits.
//! - [`secrets`]: which secret sources the operator allows, read safely.
//! - [`outbound`]: the outbound HTTP allow-list and its enforcement.
//! - [`router`]: which app and version answer a request.
//! - [`admin`]: the admin API on its own listener (refusing web pages), with
//!   health and metrics.
//! - [`metrics`]: the Prometheus metrics.
//! - [`output`]: guest stdout/stderr, captured into the log with a budget.
//! - [`tls`]: TLS termination and certificate reloads.
//! - [`state`]: what lives in each request's `Store`.
//! - [`limits`]: per-instance memory limits, the host-wide guest memory
//!   budget, and the request body guard (cap, stalls, minimum rate).
//! - [`invoke`]: one request through one instance (fresh, or warm with
//!   instance reuse), with timeouts, and the mapping of guest failures to
//!   HTTP statuses.
//! - [`service`]: the same for a WASI 0.3 component: the call inside the
//!   store's concurrent event loop.
//! - [`concurrent`]: WASI 0.3 instances serving several requests at once
//!   (`instance_concurrency`), each a worker task with its event loop.
//! - [`server`]: the listeners, connection handling (first-head deadline,
//!   idle timeout) and graceful drain.
//! - [`response`]: the error responses the host itself produces.
//! - `fuzzing` (hidden): entry points for the fuzz targets in `fuzz/`.
//!
//! A request flows `server` → `router::Router::handle` (path normalised,
//! app, then version) → `invoke::Deployment::handle` → an instance of the
//! version's `ProxyPre` (or, for WASI 0.3, `service` and its `ServicePre`)
//! → the guest's `handle` → a streamed response.

pub mod admin;
pub mod cli;
pub mod client;
pub mod component;
pub mod concurrent;
pub mod config;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod invoke;
pub mod limits;
pub mod manifest;
pub mod metrics;
pub mod outbound;
pub mod output;
pub mod persist;
pub mod registry;
pub mod response;
pub mod router;
pub mod secrets;
pub mod server;
pub mod service;
pub mod settings;
pub mod state;
pub mod tls;
