//! The Open Inference Protocol as this provider speaks it: the host's own JSON codec
//! (`edgeinfer-tensor`) for tensors, and the server's error answers as wasi:nn errors (turned into infer's in lib.rs).

use edgeinfer_tensor::{ElementType, TensorData, kserve};
use serde_json::Value;

use crate::Error;
use crate::exports::wasi::nn::errors::{self, ErrorCode};
use crate::exports::wasi::nn::tensor::TensorType;

/// The element type of a wasi:nn tensor type.
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

/// The wasi:nn tensor type of an element type.
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
pub fn infer_request(inputs: &[(&str, &TensorData)], outputs: &[String]) -> Result<Vec<u8>, errors::Error> {
    kserve::encode_request(inputs, outputs).map_err(|m| Error::new(ErrorCode::InvalidArgument, m))
}

/// The `wanted` outputs of an inference answer (every output when none is named), as tensors.
pub fn infer_response(body: Vec<u8>, wanted: &[String]) -> Result<Vec<(String, TensorData)>, errors::Error> {
    let outputs = kserve::decode_response(&body.into(), None).map_err(|m| {
        Error::new(ErrorCode::RuntimeError, format!("unexpected answer from the server: {m}"))
    })?;
    // A server may answer more than it was asked for.
    let outputs = edgeinfer_tensor::select_outputs(outputs, wanted)
        .map_err(|m| Error::new(ErrorCode::InvalidArgument, m))?;
    match outputs.iter().find(|(_, t)| t.ty == ElementType::Bytes) {
        Some((name, _)) => Err(Error::new(
            ErrorCode::InvalidArgument,
            format!("output {name:?} is BYTES (strings), which wasi:nn and infer tensors cannot carry"),
        )),
        None => Ok(outputs),
    }
}

/// Maps a non-2xx answer to a wasi:nn error carrying the server's message.
pub fn check_status(status: u16, body: &[u8]) -> Result<(), errors::Error> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let answer = serde_json::from_slice::<Value>(body).ok();
    let message = answer
        .as_ref()
        .and_then(|v| v["error"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    // A full queue on the server: said with the `overloaded:` prefix, which lib.rs turns into
    // infer's `overloaded`, so that the handler answers 503 Overloaded too.
    if status == 503 && answer.as_ref().is_some_and(|v| v["error_type"] == "Overloaded") {
        return Err(Error::new(
            ErrorCode::RuntimeError,
            format!("overloaded: remote server answered 503: {message}"),
        ));
    }
    let code = match status {
        400 | 413 | 422 => ErrorCode::InvalidArgument,
        401 | 403 => ErrorCode::Security,
        404 => ErrorCode::NotFound,
        408 | 504 => ErrorCode::Timeout,
        _ => ErrorCode::RuntimeError,
    };
    Err(Error::new(code, format!("remote server answered {status}: {message}")))
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
