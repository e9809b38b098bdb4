//! Reading admin request bodies: a deploy's multipart upload (within the
//! upload cap, abandoned when it stalls) and the small JSON bodies of the
//! other endpoints.

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;

use crate::admin::reply::ApiError;
use crate::apps::views::DeployRequest;

/// Largest JSON body accepted by the admin endpoints other than deploy.
const MAX_JSON_BODY: usize = 64 * 1024;
/// Longest pause in an upload before the deploy is abandoned (it holds one
/// of the deploy slots meanwhile).
const UPLOAD_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Read a deploy's multipart body: a `component` part (the .wasm) and an
/// optional `settings` part (JSON), within the upload cap.
pub(crate) async fn read_deploy(
    request: Request<Incoming>,
    max_upload_bytes: u64,
) -> Result<(Bytes, DeployRequest), ApiError> {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let stream = stall_guarded(request.into_body(), UPLOAD_STALL);
    parse_deploy(&content_type, length, stream, max_upload_bytes).await
}

/// A deploy's multipart body: a `component` part (the .wasm) and an
/// optional `settings` part (JSON), within the upload cap. Never buffers
/// more than the cap; the component is held once.
pub async fn parse_deploy<S>(
    content_type: &str,
    length: Option<u64>,
    stream: S,
    max_upload_bytes: u64,
) -> Result<(Bytes, DeployRequest), ApiError>
where
    S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
{
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, m.to_string());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than the limit of {max_upload_bytes} bytes"),
        )
    };
    let whole = max_upload_bytes.saturating_add(64 * 1024);
    if length.is_some_and(|len| len > whole) {
        return Err(too_large());
    }
    let boundary = multer::parse_boundary(content_type).map_err(|_| {
        bad("a deploy is multipart/form-data with a `component` part (the .wasm) and an optional `settings` part (JSON)")
    })?;
    let constraints = multer::Constraints::new().size_limit(
        multer::SizeLimit::new()
            .whole_stream(whole)
            .for_field("component", max_upload_bytes)
            .for_field("settings", MAX_JSON_BODY as u64),
    );
    let mut multipart = multer::Multipart::with_constraints(stream, boundary, constraints);
    let mut wasm = None;
    let mut settings = DeployRequest::default();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => return Err(multipart_error(err, too_large)),
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes: Bytes = field
            .bytes()
            .await
            .map_err(|err| multipart_error(err, too_large))?;
        match name.as_str() {
            "component" => wasm = Some(bytes),
            "settings" => {
                settings = serde_json::from_slice(&bytes).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("settings are not valid: {e}"),
                    )
                })?
            }
            other => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("unexpected part {other:?}; send `component` and `settings`"),
                ));
            }
        }
    }
    let wasm = wasm.ok_or_else(|| bad("the deploy has no `component` part"))?;
    if wasm.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the `component` part is empty: send the .wasm file",
        ));
    }
    Ok((wasm, settings))
}

/// A body's data as a stream that fails when nothing arrives for `stall`.
fn stall_guarded(
    body: Incoming,
    stall: std::time::Duration,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold(Some(body), move |body| async move {
        let mut body = body?;
        loop {
            match tokio::time::timeout(stall, body.frame()).await {
                Err(_) => {
                    let err = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the upload stalled for over {} s", stall.as_secs()),
                    );
                    return Some((Err(err), None));
                }
                Ok(None) => return None,
                Ok(Some(Err(err))) => return Some((Err(std::io::Error::other(err)), None)),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((Ok(data), Some(body)));
                    }
                }
            }
        }
    })
}

fn multipart_error(err: multer::Error, too_large: impl Fn() -> ApiError) -> ApiError {
    match err {
        multer::Error::StreamSizeExceeded { .. } | multer::Error::FieldSizeExceeded { .. } => {
            too_large()
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed multipart body: {other}"),
        ),
    }
}

/// Read a small JSON body; `None` for an empty body when `optional`.
pub(crate) async fn read_json<T: for<'de> Deserialize<'de>>(
    request: Request<Incoming>,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    let body = http_body_util::Limited::new(request.into_body(), MAX_JSON_BODY);
    let bytes = body
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the JSON body is over {MAX_JSON_BODY} bytes"),
            )
        })?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(None)
        } else {
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "this endpoint needs a JSON body",
            ))
        };
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
}

/// A raw body of at most `max` bytes (a key-value value); longer is 413.
pub(crate) async fn read_value(
    request: Request<Incoming>,
    max: usize,
) -> Result<Vec<u8>, ApiError> {
    let body = http_body_util::Limited::new(request.into_body(), max);
    body.collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the value is over the limit of {max} bytes (--kv-max-value-bytes)"),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the value could not be read: {err}"),
                )
            }
        })
}
