//! The Open Inference Protocol as this provider speaks it: the host's own JSON codec
//! (`edgeinfer-tensor`) for tensors, and the server's error answers as typed failures (said as
//! wasi:nn or infer errors in lib.rs).

use edgeinfer_tensor::{ElementType, TensorData, kserve};
use serde_json::Value;

use crate::bindings::exports::wasi::nn::tensor::TensorType;
use crate::failure::{Failure, RemoteError};

/// The element type of a wasi:nn (and infer) tensor type.
pub fn element_type(ty: TensorType) -> ElementType {
    match ty {
        TensorType::Fp16 => ElementType::F16,
        TensorType::Fp32 => ElementType::F32,
        TensorType::Fp64 => ElementType::F64,
        TensorType::Bf16 => ElementType::BF16,
        TensorType::U8 => ElementType::U8,
        TensorType::I32 => ElementType::I32,
        TensorType::I64 => ElementType::I64,
    }
}

/// The wasi:nn (and infer) tensor type of an element type.
pub fn tensor_type(ty: ElementType) -> TensorType {
    match ty {
        ElementType::F16 => TensorType::Fp16,
        ElementType::F32 => TensorType::Fp32,
        ElementType::F64 => TensorType::Fp64,
        ElementType::BF16 => TensorType::Bf16,
        ElementType::U8 => TensorType::U8,
        ElementType::I32 => TensorType::I32,
        ElementType::I64 => TensorType::I64,
        ElementType::Bytes => unreachable!("infer_response refuses BYTES outputs"),
    }
}

/// The body of `POST /v2/models/{name}/infer`, asking for the `outputs` named (every output when
/// none is).
pub fn infer_request(inputs: &[(&str, &TensorData)], outputs: &[String]) -> Result<Vec<u8>, RemoteError> {
    kserve::encode_request(inputs, outputs).map_err(|e| RemoteError::new(Failure::InvalidArgument, e.0))
}

/// The `wanted` outputs of an inference answer (every output when none is named), as tensors.
pub fn infer_response(body: Vec<u8>, wanted: &[String]) -> Result<Vec<(String, TensorData)>, RemoteError> {
    let outputs = kserve::decode_response(&body.into(), None)
        .map_err(|m| RemoteError::new(Failure::Runtime, format!("unexpected answer from the server: {m}")))?;
    // A server may answer more than it was asked for.
    let outputs = edgeinfer_tensor::select_outputs(outputs, wanted)
        .map_err(|e| RemoteError::new(Failure::InvalidArgument, e.0))?;
    match outputs.iter().find(|(_, t)| t.ty == ElementType::Bytes) {
        Some((name, _)) => Err(RemoteError::new(
            Failure::InvalidArgument,
            format!("output {name:?} is BYTES (strings), which wasi:nn and infer tensors cannot carry"),
        )),
        None => Ok(outputs),
    }
}

/// Maps a non-2xx answer to a failure carrying the server's message.
pub fn check_status(status: u16, body: &[u8]) -> Result<(), RemoteError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let answer = serde_json::from_slice::<Value>(body).ok();
    let message = answer
        .as_ref()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    // A full queue on the server is its own failure, so that the handler answers 503 Overloaded
    // too; the server's other 503s are `unavailable`.
    let overloaded = answer.as_ref().is_some_and(|v| v["error_type"] == "Overloaded");
    let failure = match status {
        400 | 413 | 422 => Failure::InvalidArgument,
        401 | 403 => Failure::Security,
        404 => Failure::NotFound,
        408 | 504 => Failure::Timeout,
        503 if overloaded => Failure::Overloaded,
        503 => Failure::Unavailable,
        _ => Failure::Runtime,
    };
    Err(RemoteError::new(failure, format!("remote server answered {status}: {message}")))
}

/// Percent-escapes a model name for a URL path segment.
pub fn escape(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check_status;
    use crate::bindings::exports::edgeinfer::nn::infer;
    use crate::{Failure, RemoteError};

    #[test]
    fn server_answers_become_typed_failures() {
        assert!(check_status(200, b"{}").is_ok());
        let failure = |status, body: &[u8]| check_status(status, body).unwrap_err();
        let full = failure(503, br#"{"error": "queue full", "error_type": "Overloaded"}"#);
        assert_eq!(full.failure, Failure::Overloaded);
        assert_eq!(full.message, "remote server answered 503: queue full");
        let loading = failure(503, br#"{"error": "model loading", "error_type": "Unavailable"}"#);
        assert_eq!(loading.failure, Failure::Unavailable);
        assert_eq!(failure(404, b"{}").failure, Failure::NotFound);
        assert_eq!(failure(401, b"{}").failure, Failure::Security);
        assert_eq!(failure(422, b"{}").failure, Failure::InvalidArgument);
        assert_eq!(failure(504, b"{}").failure, Failure::Timeout);
        // Not JSON: the start of the body is the message.
        let proxy = failure(502, b"<html>bad gateway</html>");
        assert_eq!(
            (proxy.failure, proxy.message.as_str()),
            (Failure::Runtime, "remote server answered 502: <html>bad gateway</html>")
        );
    }

    #[test]
    fn infer_gets_a_case_per_failure_and_no_message_prefix() {
        let said = |failure| infer::Error::from(RemoteError::new(failure, "m"));
        assert!(matches!(said(Failure::Overloaded), infer::Error::Overloaded(m) if m == "m"));
        assert!(matches!(said(Failure::Unavailable), infer::Error::Unavailable(_)));
        assert!(matches!(said(Failure::NotFound), infer::Error::NotFound(_)));
        assert!(matches!(said(Failure::Security), infer::Error::Security(_)));
        assert!(matches!(said(Failure::InvalidArgument), infer::Error::InvalidArgument(_)));
        assert!(matches!(said(Failure::Timeout), infer::Error::Runtime(_)));
    }
}
