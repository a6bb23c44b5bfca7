//! JSON tensors of the Open Inference Protocol, to and from wasi:nn tensors.

use serde_json::{Value, json};

use crate::exports::wasi::nn::errors::{self, ErrorCode};
use crate::exports::wasi::nn::tensor::TensorType;
use crate::{Error, Tensor};

/// The protocol's name of a tensor type, for the types it and JSON can carry exactly.
fn datatype(ty: TensorType) -> Result<&'static str, errors::Error> {
    Ok(match ty {
        TensorType::Fp32 => "FP32",
        TensorType::Fp64 => "FP64",
        TensorType::I64 => "INT64",
        TensorType::I32 => "INT32",
        TensorType::U8 => "UINT8",
        TensorType::Fp16 | TensorType::Bf16 => {
            return Err(Error::new(
                ErrorCode::UnsupportedOperation,
                "FP16 and BF16 tensors are not supported",
            ));
        }
    })
}

fn tensor_type(datatype: &str) -> Result<TensorType, errors::Error> {
    Ok(match datatype {
        "FP32" => TensorType::Fp32,
        "FP64" => TensorType::Fp64,
        "INT64" => TensorType::I64,
        "INT32" => TensorType::I32,
        "UINT8" => TensorType::U8,
        other => return Err(Error::new(ErrorCode::UnsupportedOperation, format!("output datatype {other}"))),
    })
}

/// Element size in bytes.
fn width(ty: TensorType) -> usize {
    match ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    }
}

/// The body of `POST /v2/models/{name}/infer`.
pub fn infer_request(inputs: &[(String, &Tensor)]) -> Result<Vec<u8>, errors::Error> {
    let mut tensors = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        let datatype = datatype(tensor.ty)?;
        let w = width(tensor.ty);
        let elements: usize = tensor.dimensions.iter().map(|&d| d as usize).product();
        if tensor.data.len() != elements * w {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("tensor {name:?} has {} bytes for shape {:?}", tensor.data.len(), tensor.dimensions),
            ));
        }
        let chunks = tensor.data.chunks_exact(w);
        let data: Vec<Value> = match tensor.ty {
            TensorType::Fp32 => chunks.map(|c| json!(f32::from_le_bytes(c.try_into().unwrap()))).collect(),
            TensorType::Fp64 => chunks.map(|c| json!(f64::from_le_bytes(c.try_into().unwrap()))).collect(),
            TensorType::I64 => chunks.map(|c| json!(i64::from_le_bytes(c.try_into().unwrap()))).collect(),
            TensorType::I32 => chunks.map(|c| json!(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
            _ => chunks.map(|c| json!(c[0])).collect(),
        };
        tensors.push(json!({"name": name, "shape": tensor.dimensions, "datatype": datatype, "data": data}));
    }
    Ok(serde_json::to_vec(&json!({"inputs": tensors})).expect("JSON values serialise"))
}

/// The outputs of an inference answer, as tensors.
pub fn infer_response(body: &[u8]) -> Result<Vec<(String, Tensor)>, errors::Error> {
    let bad =
        |m: String| Error::new(ErrorCode::RuntimeError, format!("unexpected answer from the server: {m}"));
    let answer: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    let outputs = answer["outputs"].as_array().ok_or_else(|| bad("no outputs".into()))?;
    let mut tensors = Vec::with_capacity(outputs.len());
    for output in outputs {
        let name = output["name"].as_str().ok_or_else(|| bad("an output has no name".into()))?;
        let ty = tensor_type(output["datatype"].as_str().unwrap_or(""))?;
        let dimensions: Vec<u32> =
            serde_json::from_value(output["shape"].clone()).map_err(|e| bad(e.to_string()))?;
        let values =
            output["data"].as_array().ok_or_else(|| bad(format!("output {name} has no flat data")))?;
        let elements: usize = dimensions.iter().map(|&d| d as usize).product();
        if values.len() != elements {
            return Err(bad(format!("output {name} has {} values for shape {dimensions:?}", values.len())));
        }
        let mut data = Vec::with_capacity(elements * width(ty));
        for v in values {
            let ok = match ty {
                TensorType::Fp32 => v.as_f64().map(|x| data.extend((x as f32).to_le_bytes())),
                TensorType::Fp64 => v.as_f64().map(|x| data.extend(x.to_le_bytes())),
                TensorType::I64 => v.as_i64().map(|x| data.extend(x.to_le_bytes())),
                TensorType::I32 => v.as_i64().map(|x| data.extend((x as i32).to_le_bytes())),
                _ => v.as_u64().map(|x| data.push(x as u8)),
            };
            ok.ok_or_else(|| bad(format!("output {name} holds {v}")))?;
        }
        tensors.push((name.to_string(), Tensor { dimensions, ty, data }));
    }
    Ok(tensors)
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
    // A full queue on the server: said as the host's own wasi:nn says it, so that the handler
    // answers 503 Overloaded too.
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
