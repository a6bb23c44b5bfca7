//! Responses in JSON, the handlers' answers and their errors alike.

use bytes::Bytes;
use spin_sdk::http::{FullBody, Response, StatusCode};

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<FullBody<Bytes>> {
    let body = serde_json::to_vec(value).expect("JSON values serialise");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(FullBody::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
