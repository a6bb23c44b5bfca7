//! API errors: one JSON shape, `{"error", "error_type"}`, with the HTTP status that fits.

use bytes::Bytes;
use serde::Serialize;
use spin_sdk::http::{FullBody, HeaderMap, Response, StatusCode};

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// The methods the route takes, for a 405's `Allow` header.
    allow: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
struct ErrorBody {
    error: String,
    error_type: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, error: String) -> ApiError {
        ApiError { status, body: ErrorBody { error, error_type }, allow: None }
    }

    /// The request is well-formed HTTP but its content is not acceptable (422).
    pub fn validation(error: String) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Validation", error)
    }

    /// The model (edgeinfer:nn/infer) refused or failed (500).
    pub fn backend(error: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Backend", error)
    }

    /// The model is not available right now, e.g. it failed to load (503).
    pub fn unavailable(error: String) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ModelUnavailable", error)
    }

    /// The model's queue is full: retry shortly (503 with `Retry-After`).
    pub fn overloaded(error: String) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Overloaded", error)
    }

    /// The component itself is misconfigured (500).
    pub fn internal(error: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", error)
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::method_not_allowed_here(method, "POST")
    }

    /// The route takes another method (405); `Allow` lists the one it takes.
    pub fn method_not_allowed_here(method: &str, allowed: &str) -> ApiError {
        let mut error = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("method {method} is not allowed; use {allowed}"),
        );
        error.allow = Some(allowed.to_string());
        error
    }

    /// The body is not declared as JSON (415).
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("content-type must be application/json, got {content_type:?}"),
        )
    }

    /// No such path or named thing (404).
    pub fn not_found(error: String) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", error)
    }

    /// Missing or wrong credentials (401).
    pub fn unauthorized(error: String) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", error)
    }

    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error_type` answered (`Validation`, `Backend`...).
    pub fn error_type(&self) -> &'static str {
        self.body.error_type
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.body.error
    }

    pub fn into_response(self) -> Response<FullBody<Bytes>> {
        let response = crate::json_response(self.status, &self.body);
        self.with_headers(response)
    }

    /// Adds the headers every error answer carries (`x-error-type`, `retry-after` when
    /// overloaded) to a response in whatever body shape an API needs.
    pub fn with_headers(&self, mut response: Response<FullBody<Bytes>>) -> Response<FullBody<Bytes>> {
        let error_type = spin_sdk::http::HeaderValue::from_static(self.body.error_type);
        response.headers_mut().insert(ERROR_TYPE_HEADER, error_type);
        if self.body.error_type == "Overloaded" {
            response.headers_mut().insert("retry-after", spin_sdk::http::HeaderValue::from_static("1"));
        }
        if let Some(allow) = self.allow.as_deref().and_then(|a| spin_sdk::http::HeaderValue::from_str(a).ok())
        {
            response.headers_mut().insert("allow", allow);
        }
        response
    }
}

/// Response header with an error answer's `error_type`: the host counts errors by it without
/// reading the body.
pub const ERROR_TYPE_HEADER: &str = "x-error-type";

/// Requests must declare a JSON body (`application/json`, parameters allowed).
pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type(content_type))
    }
}
