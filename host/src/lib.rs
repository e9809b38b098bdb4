//! A host that serves HTTP by running WebAssembly components.
//!
//! By default every request runs in a fresh instance of a component that
//! exports `wasi:http/incoming-handler` (WASI 0.2) or `wasi:http/handler`
//! (WASI 0.3): nothing one request leaves in guest memory is visible to the
//! next (apps that declare themselves stateless may opt into instance
//! reuse).
//! The component is compiled once, pre-instantiated once, and each request
//! only pays for a `Store` and an instantiation out of a pooling allocator.
//!
//! # Layout
//!
//! The folders are the two paths through the host and the layers under
//! them; dependencies point one way, down this list (checked by a test:
//! `tests::structure_no_import_cycles`).
//!
//! - `main.rs`: the binary, a thin wrapper over [`cli::run`].
//! - [`cli`]: the command line as clap parses it, validated into a
//!   [`config::Config`] before anything binds, and the admin client
//!   commands (`host deploy`, `apps`, `rollback`, `canary`, `remove`).
//! - [`serve`]: the composition root of `host serve`: engines, state
//!   directory, apps, listeners, signals, drain.
//! - [`config`]: the validated configuration, plain data; each layer gets
//!   its own part of it from [`serve`].
//! - [`admin`]: the admin API: `probes` (health, readiness, metrics),
//!   `guard` (token, refusing web pages), `body` (uploads, JSON),
//!   `endpoints` (one registry call each), `reply` (JSON, and app errors
//!   mapped to statuses).
//! - [`front`]: the public request path: header caps, routing, rate limits,
//!   the host-wide cap (`front`), the host name and normalised path
//!   (`front::path`), request ids and access logs (`front::access`).
//! - [`apps`]: the deploy path, without HTTP types: records and the state
//!   directory, settings and secrets, the compiler and its cache, making
//!   what a record serves (`apps::provision`), the version/canary state
//!   machine (`apps::plan`), the registry and its one commit path, views,
//!   the garbage collector; one error type, `apps::error::AppError`; and
//!   cluster mode (`apps::follow`, `apps::replica`): changes committed to
//!   the cluster store first, and every replica following it.
//! - [`cluster`]: the cluster store (`--cluster-url`): what replicas share
//!   through one Redis (records by revision with compare-and-set,
//!   components by digest, routes, heartbeats), the subscription to its
//!   changes; records are JSON text to it.
//! - [`routing`]: routes, the live apps and their canaries, the routing
//!   table and its atomic swap: pure data and lookups.
//! - [`runtime`]: everything that touches wasmtime: engines, components,
//!   the served version and its admission, instances (fresh, reused,
//!   shared), stores, limits, guest output, outbound HTTP, and
//!   `wasi:keyvalue` (both versions) on the app's declared stores.
//! - [`kv`]: apps' key-value state (the storage behind `wasi:keyvalue`,
//!   which `runtime::keyvalue` serves to guests): per-app namespaces,
//!   limits and quotas, the embedded redb backend and the Redis one, and
//!   `kv::service`, the one door the guests, the admin API and the metrics
//!   use.
//! - [`redis_link`]: one shared connection to a Redis (multiplexed,
//!   timeouts, backoff, credentials never shown), for [`kv`] and
//!   [`cluster`].
//! - [`http`]: serving a listener (accept, TLS, hyper, idle and head
//!   deadlines, drain), knowing no apps; the host's own error responses.
//! - [`metrics`]: the Prometheus metrics.
//! - `fuzzing` (hidden): entry points for the fuzz targets in `fuzz/`.
//!
//! The public surface is what the binary, the benches and the tests use:
//! [`cli`] (flags, validation, client), [`config`], [`serve`] (`run` on
//! bound listeners) and [`runtime`] (engines, components, a served version
//! and its instances, for the in-process benchmark); every other module is
//! `pub(crate)`.
//!
//! # The two paths
//!
//! A request: `http::server::run` accepts it → `front::Router` (id,
//! header caps, path normalised, `routing::RoutingTable` lookup: app, then
//! version; the app's rate limits, then the host-wide cap) →
//! [`runtime::served::ServedVersion::handle`] (the app's own cap, body
//! limits) → a new instance of the version's
//! pre-instantiated component (or a warm one with instance reuse; WASI 0.3
//! in [`runtime::p3`], shared instances in [`runtime::shared`]) → the
//! guest's handler → a streamed response.
//!
//! A deploy: `admin` (token, origin, multipart body) →
//! `apps::registry::Registry::deploy`: validate the name and settings, plan
//! the next record (`apps::plan`) under the lock, make what it serves
//! outside the lock (`apps::provision`: code from `apps::compiler`, the
//! cache or a compile; secrets), store the component, then
//! `Registry::commit`: under the lock, check the record did not change
//! meanwhile and the route is free, write the record (`apps::state_dir`)
//! and publish the new table (`routing::Routes`) in one step. Rollback,
//! canary, promote, abort, remove, static apps and the restore at start
//! take the same commit path. In cluster mode the commit goes to the
//! cluster store first (compare-and-set on the app's revision), and every
//! other replica, woken by the store, makes and commits the same record
//! (`apps::follow`).

pub(crate) mod admin;
pub(crate) mod apps;
pub mod cli;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod front;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod http;
pub(crate) mod kv;
pub(crate) mod metrics;
pub(crate) mod redis_link;
pub(crate) mod routing;
pub mod runtime;
pub mod serve;

#[cfg(test)]
mod tests;
