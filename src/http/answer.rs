//! The bridge's answers: small JSON bodies with honest status codes.
//!
//! A 2xx always means the event was taken (or deliberately ignored: ping, drop rule,
//! duplicate), never "we failed but said OK". Errors carry a stable `error` code for
//! machines and a `message` for people; a 401 says nothing that helps a forger. Every answer
//! has a body (`parse_errors` tells hyper's own bodiless answers apart by that).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

pub type Answer = Response<Full<Bytes>>;

/// A JSON answer with `status` and `body`.
pub(super) fn json(status: StatusCode, body: impl Serialize) -> Answer {
    let mut bytes = Vec::with_capacity(128);
    serde_json::to_writer(&mut bytes, &body).unwrap_or_default();
    bytes.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An error answer: `{"error": code, "message": message}`.
pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    json(status, json!({"error": code, "message": message}))
}

/// 503 with `Retry-After`, for a full spool or queue.
pub(super) fn busy(message: &str, retry_after_secs: u32) -> Answer {
    let retry_after = std::time::Duration::from_secs(retry_after_secs.into());
    unavailable("busy", message, retry_after)
}

/// 503 with `Retry-After` in whole seconds (at least one), for a refusal coded `code`.
pub(super) fn unavailable(code: &str, message: &str, retry_after: std::time::Duration) -> Answer {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, code, message);
    let secs = retry_after.as_millis().div_ceil(1000).max(1) as u64;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Marks an answer as the last on its connection (the request body was not read whole).
pub(super) fn closing(mut r: Answer) -> Answer {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// 405 with the `Allow` header.
pub(super) fn method_not_allowed(allow: &'static str) -> Answer {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("use {allow}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

pub(super) fn not_found() -> Answer {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no webhook source is configured at this path",
    )
}
