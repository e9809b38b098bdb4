//! What the admin API answers: JSON and text responses, and [`ApiError`],
//! a status with a message that says what to fix. Each [`AppError`] kind
//! maps to one status here; the host's own failures (disk, a bug) are
//! logged and answered without their details.

use http::{HeaderValue, Response, StatusCode, header};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::apps::error::AppError;
use crate::http::response;

/// An admin API error: a status and a message that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl From<AppError> for ApiError {
    fn from(err: AppError) -> ApiError {
        let status = match &err {
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unservable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Storage(_) | AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if err.is_host_failure() {
            // Paths and OS errors are for the operator's log, not the caller.
            tracing::error!(error = %err, "admin operation failed");
            return ApiError::new(
                status,
                "the host could not complete the operation; see its log",
            );
        }
        ApiError::new(status, err.to_string())
    }
}

pub(crate) fn json(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> Response<HyperOutgoingBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(response::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn text(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(response::full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Raw bytes (a key-value value), as `application/octet-stream`.
pub(crate) fn bytes(status: StatusCode, body: Vec<u8>) -> Response<HyperOutgoingBody> {
    let mut response = Response::new(response::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}
