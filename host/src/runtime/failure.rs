//! Every way a guest can fail, and the status each maps to: a trap or a
//! missing response is 500, the memory cap is 500, the host-wide memory
//! budget or a full pool is 503, the deadline is 504. The cause is logged
//! and counted; the client sees a short JSON message.

use http::{HeaderValue, Response, StatusCode, header};
use wasmtime::{PoolConcurrencyLimitError, Store, Trap};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::http::response;
use crate::metrics::metrics;
use crate::runtime::limits::MemoryRefusal;
use crate::runtime::state::HostState;

/// Why a request produced no response of the guest's own.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The guest ran past its deadline, on CPU or waiting.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit(wasmtime::Error),
    /// The guest's memory could not grow: the host-wide budget is spent.
    MemoryBudget(wasmtime::Error),
    /// The guest trapped (or a host call it made failed fatally).
    Trap(wasmtime::Error),
    /// The guest returned without calling `response-outparam::set`.
    NoResponse,
    /// The guest answered with an error code instead of a response.
    ErrorCode(String),
    /// The host could not set up the request (a bug or a malformed request).
    Setup(wasmtime::Error),
    /// Every pooled slot of some kind (core instances, memories, tables) is
    /// taken by running instances.
    PoolFull(wasmtime::Error),
}

impl Failure {
    /// Why a guest's call failed: its memory cap, the host's budget, its
    /// deadline (an epoch interrupt) or a trap.
    pub(crate) fn of(store: &Store<HostState>, err: wasmtime::Error) -> Failure {
        match store.data().limiter.refused {
            Some(MemoryRefusal::InstanceCap) => Failure::MemoryLimit(err),
            Some(MemoryRefusal::HostBudget) => Failure::MemoryBudget(err),
            None if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => Failure::Timeout,
            None if err.downcast_ref::<PoolConcurrencyLimitError>().is_some() => {
                Failure::PoolFull(err)
            }
            None => Failure::Trap(err),
        }
    }

    /// The same failure again, for another request of a shared instance
    /// (the cause as text).
    pub(crate) fn duplicate(&self) -> Failure {
        let again = |err: &wasmtime::Error| wasmtime::format_err!("{err:#}");
        match self {
            Failure::Timeout => Failure::Timeout,
            Failure::MemoryLimit(err) => Failure::MemoryLimit(again(err)),
            Failure::MemoryBudget(err) => Failure::MemoryBudget(again(err)),
            Failure::Trap(err) => Failure::Trap(again(err)),
            Failure::NoResponse => Failure::NoResponse,
            Failure::ErrorCode(code) => Failure::ErrorCode(code.clone()),
            Failure::Setup(err) => Failure::Setup(again(err)),
            Failure::PoolFull(err) => Failure::PoolFull(again(err)),
        }
    }

    pub(crate) fn log(&self, app: &str, version: &str) {
        let kind = match self {
            Failure::Timeout => {
                tracing::warn!(app, version, "guest exceeded its deadline");
                "timeout"
            }
            Failure::MemoryLimit(err) => {
                tracing::warn!(app, version, cause = ?err, "guest hit its memory limit");
                "memory_limit"
            }
            Failure::MemoryBudget(err) => {
                tracing::warn!(app, version, cause = ?err, "the host's guest memory budget is spent");
                metrics().reject("memory_budget");
                "memory_budget"
            }
            Failure::Trap(err) => {
                tracing::warn!(app, version, cause = ?err, "guest trapped");
                "trap"
            }
            Failure::NoResponse => {
                tracing::warn!(app, version, "guest returned without setting a response");
                "no_response"
            }
            Failure::ErrorCode(code) => {
                tracing::warn!(app, version, ?code, "guest answered with an error code");
                "error_code"
            }
            Failure::Setup(err) => {
                tracing::error!(app, version, cause = ?err, "failed to start the guest");
                "setup"
            }
            Failure::PoolFull(err) => {
                tracing::warn!(app, version, cause = %err, "no pooled instance slot is free");
                metrics().reject("pool_full");
                "pool_full"
            }
        };
        metrics().guest_failure(app, kind);
    }

    pub(crate) fn into_response(self) -> Response<HyperOutgoingBody> {
        let (status, message) = match self {
            Failure::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the app did not respond in time",
            ),
            Failure::MemoryLimit(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app exceeded its memory limit",
            ),
            Failure::MemoryBudget(_) => {
                return busy("the server is out of memory for apps; retry shortly");
            }
            Failure::PoolFull(_) => {
                return busy("the server is running as many instances as it can; retry shortly");
            }
            Failure::Trap(_) | Failure::ErrorCode(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app failed while handling the request",
            ),
            Failure::NoResponse => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the app returned without sending a response",
            ),
            Failure::Setup(_) => (
                StatusCode::BAD_REQUEST,
                "the request could not be passed to the app",
            ),
        };
        response::error(status, message)
    }
}

/// 503 with `Retry-After`: a concurrency cap is full.
pub fn busy(message: &str) -> Response<HyperOutgoingBody> {
    let mut busy = response::error(StatusCode::SERVICE_UNAVAILABLE, message);
    busy.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    busy
}
