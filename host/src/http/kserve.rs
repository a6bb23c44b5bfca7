//! The KServe v2 / Open Inference Protocol REST API over the models its config lists: health,
//! model metadata and `infer` with JSON tensors. Off unless the runtime config turns it on; a
//! bearer token unless it is public; admission control like a component's. Inference goes through
//! each model's batcher, like wasi:nn calls from components, so remote clients (e.g. the
//! `nn-remote` component) and local components share batches. Errors are `{"error",
//! "error_type"}` (the protocol's `error` plus our type).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use wasmtime_wasi_http::WasiBody;

use super::{BodyRead, HostError, json as json_response, read_limited};
use crate::admission::Admission;
use crate::app::App;
use edgeinfer_config::runtime_config::KserveConfig;
use edgeinfer_engine::engines::{ElementType, EngineError, TensorData, TensorSpec};
use edgeinfer_engine::registry::LoadedGraph;

/// Path prefix of the protocol.
pub const PREFIX: &str = "/v2";

/// The route pattern a path is counted under in metrics and logs.
pub fn route_of(path: &str) -> &'static str {
    let rest: Vec<&str> = path.trim_start_matches(PREFIX).split('/').filter(|s| !s.is_empty()).collect();
    match rest[..] {
        [] => "/v2",
        ["health", "live"] => "/v2/health/live",
        ["health", "ready"] => "/v2/health/ready",
        ["models", _] => "/v2/models/{name}",
        ["models", _, "ready"] => "/v2/models/{name}/ready",
        ["models", _, "infer"] => "/v2/models/{name}/infer",
        _ => "/v2/unmatched",
    }
}

/// The API as served.
pub struct Kserve {
    config: KserveConfig,
    /// The bearer token clients must send; `None` only when the config says `public = true`.
    token: Option<String>,
    /// Inference requests at once and waiting, as for a component.
    admission: Admission,
}

impl Kserve {
    /// The API of `config` (enabled and checked), with its token read from the environment.
    pub fn new(config: KserveConfig, token: Option<String>) -> Kserve {
        debug_assert!(config.public || token.is_some(), "checked with the runtime config");
        let admission = Admission::new("kserve", config.max_concurrent_requests, config.max_queued_requests);
        Kserve { config, token, admission }
    }

    /// Whether the API serves model `name` at all.
    fn serves(&self, name: &str) -> bool {
        self.config.models.iter().any(|m| m == name)
    }
}

/// Answers one request under `/v2`.
pub async fn handle(app: &App, kserve: &Kserve, req: http::Request<Incoming>) -> Response<WasiBody> {
    if let Some(token) = &kserve.token
        && !authorized(&req, token)
    {
        return HostError::Unauthorized.answer("a valid bearer token is required");
    }
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches(PREFIX).split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let model = |name: &str| kserve.serves(name).then(|| app.registry.get(name)).flatten();
    match (&method, &parts[..]) {
        (&Method::GET, []) => json_response(
            StatusCode::OK,
            &json!({"name": "edgeinfer", "version": env!("CARGO_PKG_VERSION"), "extensions": []}),
        ),
        (&Method::GET, ["health", "live"]) => json_response(StatusCode::OK, &json!({"live": true})),
        (&Method::GET, ["health", "ready"]) => {
            let ready = kserve.config.models.iter().all(|name| app.registry.get(name).is_some());
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            json_response(status, &json!({"ready": ready}))
        }
        (&Method::GET, ["models", name]) => match model(name) {
            Some(graph) => json_response(StatusCode::OK, &metadata(&graph)),
            None => unknown_model(app, kserve, name),
        },
        (&Method::GET, ["models", name, "ready"]) => match model(name) {
            Some(graph) => json_response(StatusCode::OK, &json!({"name": graph.name, "ready": true})),
            None => unknown_model(app, kserve, name),
        },
        (&Method::POST, ["models", name, "infer"]) => match model(name) {
            Some(graph) => {
                let Some(_slot) = kserve.admission.admit().await else {
                    return HostError::Overloaded
                        .answer("the KServe API is at its concurrency limit; retry shortly");
                };
                infer(graph, &kserve.config, req).await
            }
            None => unknown_model(app, kserve, name),
        },
        (_, ["health", "live" | "ready"] | ["models", _] | ["models", _, "ready"] | []) => {
            HostError::MethodNotAllowed.answer("use GET")
        }
        (_, ["models", _, "infer"]) => HostError::MethodNotAllowed.answer("use POST"),
        _ => HostError::NotFound.answer(format!("no route for {path}")),
    }
}

fn authorized(req: &http::Request<Incoming>, token: &str) -> bool {
    let Some(given) = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = given.strip_prefix("Bearer ") else { return false };
    super::constant_time_eq(given, token)
}

/// 404 for a name the API does not serve; 503 for one of its models that failed to load.
fn unknown_model(app: &App, kserve: &Kserve, name: &str) -> Response<WasiBody> {
    match app.registry.failure(name).filter(|_| kserve.serves(name)) {
        Some(failed) => {
            HostError::ModelUnavailable.answer(format!("model {name:?} failed to load: {}", failed.error))
        }
        None => HostError::ModelNotFound.answer(format!("no model named {name:?}")),
    }
}

/// The protocol's datatype names.
fn datatype(ty: Option<ElementType>) -> &'static str {
    match ty {
        Some(ElementType::F16) => "FP16",
        Some(ElementType::BF16) => "BF16",
        Some(ElementType::F32) => "FP32",
        Some(ElementType::F64) => "FP64",
        Some(ElementType::U8) => "UINT8",
        Some(ElementType::I32) => "INT32",
        Some(ElementType::I64) => "INT64",
        None => "BYTES",
    }
}

fn element_type(name: &str) -> Option<ElementType> {
    Some(match name {
        "FP32" => ElementType::F32,
        "FP64" => ElementType::F64,
        "INT64" => ElementType::I64,
        "INT32" => ElementType::I32,
        "UINT8" => ElementType::U8,
        _ => return None,
    })
}

fn metadata(graph: &LoadedGraph) -> Value {
    let specs = |specs: &[TensorSpec]| -> Vec<Value> {
        specs.iter().map(|s| json!({"name": s.name, "datatype": datatype(s.ty), "shape": s.shape})).collect()
    };
    json!({
        "name": graph.name,
        "versions": [],
        "platform": "onnxruntime_onnx",
        "inputs": specs(&graph.inputs),
        "outputs": specs(&graph.outputs),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InferRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)] // Accepted as the protocol allows; none are acted on.
    parameters: Option<serde_json::Map<String, Value>>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputTensor {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<serde_json::Map<String, Value>>,
    data: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    parameters: Option<serde_json::Map<String, Value>>,
}

async fn infer(
    graph: Arc<LoadedGraph>,
    config: &KserveConfig,
    req: http::Request<Incoming>,
) -> Response<WasiBody> {
    let limit = config.max_request_body_bytes;
    let body: Bytes = match read_limited(req.into_body(), limit).await {
        Ok(BodyRead::Fits(bytes)) => bytes,
        Ok(BodyRead::TooLarge) => {
            return HostError::PayloadTooLarge
                .answer(format!("request body is over the limit of {limit} bytes"));
        }
        Ok(BodyRead::TimedOut) => {
            return HostError::BodyTimeout.answer("the request body did not arrive in time");
        }
        Err(e) => return HostError::Validation.answer(format!("cannot read the request body: {e}")),
    };
    let request: InferRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return HostError::Validation.answer(format!("invalid inference request: {e}")),
    };
    let mut tensors = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        match decode_input(&input) {
            Ok(tensor) => tensors.push((input.name, tensor)),
            Err(message) => return HostError::Validation.answer(message),
        }
    }
    let requested: Option<Vec<String>> = request.outputs.map(|o| o.into_iter().map(|o| o.name).collect());
    if let Some(names) = &requested
        && let Some(unknown) = names.iter().find(|n| !graph.outputs.iter().any(|s| &s.name == *n))
    {
        return HostError::Validation.answer(format!("the model has no output {unknown:?}"));
    }
    let outputs = match graph.batcher.compute(tensors).await {
        Ok(outputs) => outputs,
        Err(EngineError::InvalidArgument(message)) => return HostError::Validation.answer(message),
        Err(EngineError::Overloaded(message)) => return HostError::Overloaded.answer(message),
        Err(EngineError::Runtime(message)) => {
            return HostError::Backend.answer(format!("inference failed: {message}"));
        }
    };
    let outputs: Vec<Value> = outputs
        .into_iter()
        .filter(|(name, _)| requested.as_ref().is_none_or(|names| names.contains(name)))
        .map(|(name, tensor)| {
            json!({"name": name, "datatype": datatype(Some(tensor.ty)), "shape": tensor.shape, "data": encode_data(&tensor)})
        })
        .collect();
    let mut answer = json!({"model_name": graph.name, "outputs": outputs});
    if let Some(id) = request.id {
        answer["id"] = Value::String(id);
    }
    json_response(StatusCode::OK, &answer)
}

/// Turns a JSON tensor (flat or nested `data`, row-major) into little-endian bytes.
fn decode_input(input: &InputTensor) -> Result<TensorData, String> {
    let name = &input.name;
    let ty = element_type(&input.datatype).ok_or_else(|| {
        format!(
            "input {name:?}: datatype {:?} is not supported (FP32, FP64, INT64, INT32, UINT8 are)",
            input.datatype
        )
    })?;
    let shape: Vec<u32> = input
        .shape
        .iter()
        .map(|&d| u32::try_from(d).map_err(|_| format!("input {name:?}: dimension {d} is too large")))
        .collect::<Result<_, _>>()?;
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d as usize));
    let mut values = Vec::new();
    flatten(&input.data, &mut values, 0).map_err(|e| format!("input {name:?}: {e}"))?;
    let expected = expected.ok_or_else(|| format!("input {name:?}: shape {:?} is too large", input.shape))?;
    if expected != values.len() {
        return Err(format!(
            "input {name:?}: shape {:?} needs {expected} values, data has {}",
            input.shape,
            values.len()
        ));
    }
    let mut bytes = Vec::with_capacity(values.len() * ty.size());
    for value in &values {
        match ty {
            ElementType::F32 => bytes.extend((number(value, name)? as f32).to_le_bytes()),
            ElementType::F64 => bytes.extend(number(value, name)?.to_le_bytes()),
            ElementType::I64 => bytes.extend(integer(value, name, i64::MIN, i64::MAX)?.to_le_bytes()),
            ElementType::I32 => {
                bytes.extend((integer(value, name, i32::MIN as i64, i32::MAX as i64)? as i32).to_le_bytes())
            }
            ElementType::U8 => bytes.push(integer(value, name, 0, 255)? as u8),
            ElementType::F16 | ElementType::BF16 => unreachable!("not accepted by element_type"),
        }
    }
    Ok(TensorData { shape, ty, bytes })
}

fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), String> {
    match value {
        Value::Array(items) if depth < 16 => items.iter().try_for_each(|v| flatten(v, out, depth + 1)),
        Value::Array(_) => Err("data is nested too deeply".into()),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn number(value: &Value, name: &str) -> Result<f64, String> {
    value.as_f64().ok_or_else(|| format!("input {name:?}: {value} is not a number"))
}

fn integer(value: &Value, name: &str, min: i64, max: i64) -> Result<i64, String> {
    value
        .as_i64()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| format!("input {name:?}: {value} is not an integer in [{min}, {max}]"))
}

/// Tensor bytes as a flat JSON array.
fn encode_data(tensor: &TensorData) -> Value {
    let chunks = tensor.bytes.chunks_exact(tensor.ty.size());
    let values: Vec<Value> = match tensor.ty {
        ElementType::F32 => chunks.map(|c| json!(f32::from_le_bytes(c.try_into().unwrap()))).collect(),
        ElementType::F64 => chunks.map(|c| json!(f64::from_le_bytes(c.try_into().unwrap()))).collect(),
        ElementType::I64 => chunks.map(|c| json!(i64::from_le_bytes(c.try_into().unwrap()))).collect(),
        ElementType::I32 => chunks.map(|c| json!(i32::from_le_bytes(c.try_into().unwrap()))).collect(),
        ElementType::U8 => chunks.map(|c| json!(c[0])).collect(),
        ElementType::F16 => chunks.map(|c| json!(half::f16::from_le_bytes([c[0], c[1]]).to_f32())).collect(),
        ElementType::BF16 => {
            chunks.map(|c| json!(half::bf16::from_le_bytes([c[0], c[1]]).to_f32())).collect()
        }
    };
    Value::Array(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<u64>, data: Value) -> InputTensor {
        InputTensor { name: "x".into(), shape, datatype: datatype.into(), parameters: None, data }
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat = decode_input(&input("INT64", vec![2, 2], json!([1, 2, 3, -4]))).unwrap();
        let nested = decode_input(&input("INT64", vec![2, 2], json!([[1, 2], [3, -4]]))).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.bytes[24..], (-4i64).to_le_bytes());
    }

    #[test]
    fn bad_tensors_say_what_is_wrong() {
        let e = decode_input(&input("INT64", vec![2, 2], json!([1, 2, 3]))).unwrap_err();
        assert!(e.contains("needs 4 values, data has 3"), "{e}");
        let e = decode_input(&input("INT64", vec![1], json!([1.5]))).unwrap_err();
        assert!(e.contains("not an integer"), "{e}");
        let e = decode_input(&input("UINT8", vec![1], json!([256]))).unwrap_err();
        assert!(e.contains("[0, 255]"), "{e}");
        let e = decode_input(&input("BOOL", vec![1], json!([true]))).unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = decode_input(&input("FP32", vec![1], json!(["a"]))).unwrap_err();
        assert!(e.contains("not a number"), "{e}");
    }

    #[test]
    fn routes_are_counted_by_pattern() {
        assert_eq!(route_of("/v2/models/minilm/infer"), "/v2/models/{name}/infer");
        assert_eq!(route_of("/v2/health/ready"), "/v2/health/ready");
        assert_eq!(route_of("/v2/other/thing"), "/v2/unmatched");
    }
}
