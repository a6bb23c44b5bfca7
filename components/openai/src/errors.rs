//! Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which its clients
//! parse into typed exceptions; the status and the `x-error-type` header are the ones every
//! edgeinfer handler answers with.

use bytes::Bytes;
use serde::Serialize;
use spin_sdk::http::{FullBody, Response, StatusCode};
use text_handler::{ApiError, ErrorKind};

/// An error answered in OpenAI's shape.
pub struct OpenAiError {
    error: ApiError,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> OpenAiError {
        OpenAiError { error, param: None, code: None }
    }
}

impl OpenAiError {
    /// The request field at fault.
    pub fn param(mut self, param: &'static str) -> OpenAiError {
        self.param = Some(param);
        self
    }

    pub fn model_not_found(name: &str) -> OpenAiError {
        let error = ApiError::not_found(format!(
            "The model `{name}` does not exist; GET /v1/models lists the models served"
        ));
        OpenAiError { error, param: Some("model"), code: Some("model_not_found") }
    }

    pub fn invalid_api_key(message: &str) -> OpenAiError {
        OpenAiError {
            error: ApiError::unauthorized(message.into()),
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn into_response(self) -> Response<FullBody<Bytes>> {
        // OpenAI answers a request it cannot use with 400, where edgeinfer's own APIs say 422.
        let status = match self.error.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            status => status,
        };
        let kind = match status.as_u16() {
            401 => "authentication_error",
            404 if self.code == Some("model_not_found") => "invalid_request_error",
            404 => "not_found_error",
            503 if self.error.kind() == ErrorKind::Overloaded => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        let code = self.code.or((self.error.kind() == ErrorKind::Overloaded).then_some("overloaded"));
        let body = Body { error: Detail { message: self.error.message(), kind, param: self.param, code } };
        self.error.with_headers(text_handler::json_response(status, &body))
    }
}
