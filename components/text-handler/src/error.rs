//! API errors: one JSON shape, `{"error", "error_type"}`, with the HTTP status that fits.

use bytes::Bytes;
use serde::Serialize;
use spin_sdk::http::{FullBody, HeaderMap, Response, StatusCode};

/// An error answered to the client.
#[derive(Clone, Debug)]
pub struct ApiError {
    kind: ErrorKind,
    body: ErrorBody,
    /// The methods the route takes, for a 405's `Allow` header.
    allow: Option<String>,
    /// The request field at fault, when one is (OpenAI's `param`).
    field: Option<&'static str>,
}

/// What went wrong, as callers tell errors apart: each kind has its status and `error_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Validation,
    Backend,
    ModelUnavailable,
    Overloaded,
    Internal,
    MethodNotAllowed,
    UnsupportedMediaType,
    NotFound,
    Unauthorized,
}

impl ErrorKind {
    /// The HTTP status answered.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Validation => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Backend | ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::ModelUnavailable | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `error_type` answered.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::Validation => "Validation",
            ErrorKind::Backend => "Backend",
            ErrorKind::ModelUnavailable => "ModelUnavailable",
            ErrorKind::Overloaded => "Overloaded",
            ErrorKind::Internal => "Internal",
            ErrorKind::MethodNotAllowed => "MethodNotAllowed",
            ErrorKind::UnsupportedMediaType => "UnsupportedMediaType",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Unauthorized => "Unauthorized",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
struct ErrorBody {
    error: String,
    error_type: &'static str,
}

impl ApiError {
    fn new(kind: ErrorKind, error: String) -> ApiError {
        ApiError { kind, body: ErrorBody { error, error_type: kind.error_type() }, allow: None, field: None }
    }

    /// The same error, naming the request field at fault.
    pub fn on_field(mut self, field: &'static str) -> ApiError {
        self.field = Some(field);
        self
    }

    /// The request is well-formed HTTP but its content is not acceptable (422).
    pub fn validation(error: String) -> ApiError {
        ApiError::new(ErrorKind::Validation, error)
    }

    /// The model (edgeinfer:nn/infer) refused or failed (500).
    pub fn backend(error: String) -> ApiError {
        ApiError::new(ErrorKind::Backend, error)
    }

    /// The model is not available right now, e.g. it failed to load (503).
    pub fn unavailable(error: String) -> ApiError {
        ApiError::new(ErrorKind::ModelUnavailable, error)
    }

    /// The model's queue is full: retry shortly (503 with `Retry-After`).
    pub fn overloaded(error: String) -> ApiError {
        ApiError::new(ErrorKind::Overloaded, error)
    }

    /// The component itself is misconfigured (500).
    pub fn internal(error: String) -> ApiError {
        ApiError::new(ErrorKind::Internal, error)
    }

    pub fn method_not_allowed(method: &str) -> ApiError {
        ApiError::method_not_allowed_here(method, "POST")
    }

    /// The route takes another method (405); `Allow` lists the one it takes.
    pub fn method_not_allowed_here(method: &str, allowed: &str) -> ApiError {
        let mut error = ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("method {method} is not allowed; use {allowed}"),
        );
        error.allow = Some(allowed.to_string());
        error
    }

    /// The body is not declared as JSON (415).
    pub fn unsupported_media_type(content_type: &str) -> ApiError {
        ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!("content-type must be application/json, got {content_type:?}"),
        )
    }

    /// No such path or named thing (404).
    pub fn not_found(error: String) -> ApiError {
        ApiError::new(ErrorKind::NotFound, error)
    }

    /// Missing or wrong credentials (401).
    pub fn unauthorized(error: String) -> ApiError {
        ApiError::new(ErrorKind::Unauthorized, error)
    }

    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The request field at fault, when the error names one.
    pub fn field(&self) -> Option<&'static str> {
        self.field
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
        let response = crate::response::json_response(self.kind.status(), &self.body);
        self.with_headers(response)
    }

    /// Adds the headers every error answer carries (`x-error-type`, `retry-after` when
    /// overloaded) to a response in whatever body shape an API needs.
    pub fn with_headers(&self, mut response: Response<FullBody<Bytes>>) -> Response<FullBody<Bytes>> {
        let error_type = spin_sdk::http::HeaderValue::from_static(self.body.error_type);
        response.headers_mut().insert(ERROR_TYPE_HEADER, error_type);
        if self.kind == ErrorKind::Overloaded {
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
