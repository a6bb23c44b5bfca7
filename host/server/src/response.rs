//! The host's own answers: JSON bodies and errors in the body type components answer with, and
//! axum's view of them. Every surface (serving, KServe, admin, status) builds its answers here.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use wasmtime_wasi_http::WasiBody;

/// A response of the host's body type, as axum answers it.
pub struct Answer(pub Response<WasiBody>);

impl axum::response::IntoResponse for Answer {
    fn into_response(self) -> axum::response::Response {
        self.0.map(axum::body::Body::new)
    }
}

/// A complete in-memory body.
pub(crate) fn full_body(bytes: Bytes) -> WasiBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<WasiBody> {
    json_bytes(status, value.to_string())
}

/// A JSON response over text already written.
pub(crate) fn json_bytes(status: StatusCode, text: impl Into<Bytes>) -> Response<WasiBody> {
    let body = full_body(text.into());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .expect("static response parts are valid")
}
