//! Every error the host answers itself, in one table: status, `error_type` and meaning. The JSON
//! body `{"error", "error_type"}`, the headers some carry (`Retry-After`, `WWW-Authenticate`) and
//! the OpenAPI error responses (`/openapi.json`) are all made from it. Errors a component answers
//! are the component's own.

use axum::response::{IntoResponse, Response as AxumResponse};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use wasmtime_wasi_http::WasiBody;

use crate::response::Answer;

/// An error answered by the host (component routes, KServe, the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    Validation,
    BadRequest,
    ChecksumMismatch,
    InvalidComponent,
    InvalidModel,
    IncompatibleModel,
    SignatureRejected,
    Unauthorized,
    Forbidden,
    NotFound,
    ModelNotFound,
    ComponentNotFound,
    MethodNotAllowed,
    BodyTimeout,
    NoCanary,
    NoPreviousVersion,
    ReloadInProgress,
    PayloadTooLarge,
    HeadersTooLarge,
    ComponentFault,
    InstantiationFailed,
    FuelExhausted,
    Backend,
    Overloaded,
    ModelUnavailable,
    DocsUnavailable,
    Deadline,
    Registry,
    StateNotSaved,
}

impl HostError {
    /// Every error, for the OpenAPI document.
    pub const ALL: [HostError; 29] = [
        HostError::Validation,
        HostError::BadRequest,
        HostError::ChecksumMismatch,
        HostError::InvalidComponent,
        HostError::InvalidModel,
        HostError::IncompatibleModel,
        HostError::SignatureRejected,
        HostError::Unauthorized,
        HostError::Forbidden,
        HostError::NotFound,
        HostError::ModelNotFound,
        HostError::ComponentNotFound,
        HostError::MethodNotAllowed,
        HostError::BodyTimeout,
        HostError::NoCanary,
        HostError::NoPreviousVersion,
        HostError::ReloadInProgress,
        HostError::PayloadTooLarge,
        HostError::HeadersTooLarge,
        HostError::ComponentFault,
        HostError::InstantiationFailed,
        HostError::FuelExhausted,
        HostError::Backend,
        HostError::Overloaded,
        HostError::ModelUnavailable,
        HostError::DocsUnavailable,
        HostError::Deadline,
        HostError::Registry,
        HostError::StateNotSaved,
    ];

    /// (status, `error_type`, meaning).
    fn entry(self) -> (StatusCode, &'static str, &'static str) {
        use HostError::*;
        match self {
            Validation => (StatusCode::BAD_REQUEST, "Validation", "The request is not valid"),
            BadRequest => (StatusCode::BAD_REQUEST, "BadRequest", "The request body could not be read"),
            ChecksumMismatch => {
                (StatusCode::BAD_REQUEST, "ChecksumMismatch", "The upload's sha256 is not the one given")
            }
            InvalidComponent => (
                StatusCode::BAD_REQUEST,
                "InvalidComponent",
                "The component cannot serve (the old version still does)",
            ),
            InvalidModel => (
                StatusCode::BAD_REQUEST,
                "InvalidModel",
                "The model is missing or corrupt (the old one still serves)",
            ),
            IncompatibleModel => (
                StatusCode::BAD_REQUEST,
                "IncompatibleModel",
                "The model's inputs or outputs differ (the old one still serves)",
            ),
            SignatureRejected => (
                StatusCode::BAD_REQUEST,
                "SignatureRejected",
                "No key this host trusts signed the component (the old version still serves)",
            ),
            Unauthorized => (StatusCode::UNAUTHORIZED, "Unauthorized", "A bearer token is required"),
            Forbidden => (StatusCode::FORBIDDEN, "Forbidden", "The token is not valid"),
            NotFound => (StatusCode::NOT_FOUND, "NotFound", "No route for this path"),
            ModelNotFound => (StatusCode::NOT_FOUND, "ModelNotFound", "No such model here"),
            ComponentNotFound => (StatusCode::NOT_FOUND, "ComponentNotFound", "No such routed component"),
            MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "Not a method of this route")
            }
            BodyTimeout => {
                (StatusCode::REQUEST_TIMEOUT, "Timeout", "The request body did not arrive within 10 s")
            }
            NoCanary => (StatusCode::CONFLICT, "NoCanary", "The component has no canary"),
            NoPreviousVersion => {
                (StatusCode::CONFLICT, "NoPreviousVersion", "No earlier version to roll back to")
            }
            ReloadInProgress => (StatusCode::CONFLICT, "ReloadInProgress", "The model is being reloaded"),
            PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "The body is over the limit")
            }
            HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HeadersTooLarge",
                "The request headers are over 64 KiB",
            ),
            ComponentFault => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "ComponentFault",
                "The component trapped or failed to answer",
            ),
            InstantiationFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InstantiationFailed",
                "The component could not be instantiated",
            ),
            FuelExhausted => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "FuelExhausted",
                "The request used up the component's fuel budget",
            ),
            Backend => (StatusCode::INTERNAL_SERVER_ERROR, "Backend", "Inference failed"),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Overloaded",
                "At the concurrency or queue limit; retry after `Retry-After` seconds",
            ),
            ModelUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "ModelUnavailable", "The model failed to load")
            }
            DocsUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "DocsUnavailable", "Swagger UI's files are not available")
            }
            Deadline => (StatusCode::GATEWAY_TIMEOUT, "Timeout", "No answer within the deadline"),
            Registry => (
                StatusCode::BAD_GATEWAY,
                "Registry",
                "The registry could not be reached or refused the pull (the old version still serves)",
            ),
            StateNotSaved => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "StateNotSaved",
                "The state directory could not record the change (the message says whether it serves)",
            ),
        }
    }

    pub fn status(self) -> StatusCode {
        self.entry().0
    }

    /// The `error_type` of the JSON body.
    pub fn error_type(self) -> &'static str {
        self.entry().1
    }

    /// What it means, for the API description.
    pub fn meaning(self) -> &'static str {
        self.entry().2
    }

    /// The answer: `{"error": message, "error_type"}` with this error's status and headers.
    pub fn answer(self, message: impl AsRef<str>) -> Response<WasiBody> {
        let body = serde_json::json!({"error": message.as_ref(), "error_type": self.error_type()});
        let mut response = Response::builder()
            .status(self.status())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(crate::response::full_body(Bytes::from(body.to_string())))
            .expect("static response parts are valid");
        let headers = response.headers_mut();
        match self {
            HostError::Overloaded => {
                headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            }
            HostError::Unauthorized => {
                headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        headers.insert(ERROR_TYPE_HEADER, http::HeaderValue::from_static(self.error_type()));
        response
    }
}

/// 405 for a route that takes only the methods `allowed` (`GET`, `GET, POST`...), which the
/// `Allow` header lists (RFC 9110 asks for it).
pub fn method_not_allowed(allowed: &'static str) -> Response<WasiBody> {
    let mut response = HostError::MethodNotAllowed.answer(format!("use {allowed}"));
    response.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static(allowed));
    response
}

/// Response header with an error answer's `error_type`, the host's or a component's
/// (`components/text-handler` sets it): errors are counted and logged by it, bodies never read.
pub const ERROR_TYPE_HEADER: &str = "x-error-type";

/// The host's own 400s all JSON: an extractor's rejection (e.g. a path parameter that is not
/// UTF-8 once decoded) becomes a `BadRequest` error with the rejection's text.
pub(crate) async fn json_rejection(response: AxumResponse) -> AxumResponse {
    if response.status() != StatusCode::BAD_REQUEST || response.headers().contains_key(ERROR_TYPE_HEADER) {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 4096).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => "the request is malformed".to_string(),
    };
    let mut answer = Answer(HostError::BadRequest.answer(text)).into_response();
    // What answered (`Served`) stays with the answer.
    *answer.extensions_mut() = parts.extensions;
    answer
}

/// The answer of a route to any method but GET.
pub(crate) async fn use_get() -> Answer {
    Answer(method_not_allowed("GET"))
}

/// The answer of a route to any method but POST.
pub(crate) async fn use_post() -> Answer {
    Answer(method_not_allowed("POST"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_own_name_and_an_error_status() {
        let names: std::collections::BTreeSet<String> =
            HostError::ALL.iter().map(|e| format!("{e:?}")).collect();
        assert_eq!(names.len(), HostError::ALL.len(), "ALL lists each error once");
        for error in HostError::ALL {
            assert!(error.status().is_client_error() || error.status().is_server_error(), "{error:?}");
            assert!(!error.meaning().is_empty());
        }
        let overloaded = HostError::Overloaded.answer("busy");
        assert_eq!(overloaded.headers()["retry-after"], "1");
        assert_eq!(HostError::Deadline.error_type(), "Timeout");
    }
}
