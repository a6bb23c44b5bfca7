//! The KServe v2 / Open Inference Protocol REST API over the models its config lists: health,
//! model metadata and `infer` with JSON tensors. Off unless the runtime config turns it on; a
//! bearer token unless it is public; admission control like a component's. Inference goes through
//! each model's batcher, like wasi:nn calls from components, so remote clients (e.g. the
//! `nn-remote` component) and local components share batches. Errors are `{"error",
//! "error_type"}` (the protocol's `error` plus our type).

use std::sync::Arc;

use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};
use wasmtime_wasi_http::WasiBody;

use super::{HostError, json as json_response, json_bytes};
use edgeinfer_config::runtime_config::KserveConfig;
use edgeinfer_engine::engines::{ElementType, EngineError, TensorData, TensorSpec};
use edgeinfer_engine::registry::LoadedGraph;
use edgeinfer_runtime::admission::Admission;
use edgeinfer_runtime::app::App;
use edgeinfer_tensor::kserve;

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

fn metadata(graph: &LoadedGraph) -> Value {
    let specs = |specs: &[TensorSpec]| -> Vec<Value> {
        specs.iter().map(|s| json!({"name": s.name, "datatype": s.ty.map_or("BYTES", ElementType::datatype), "shape": s.shape})).collect()
    };
    json!({
        "name": graph.name,
        "versions": [],
        "platform": "onnxruntime_onnx",
        "inputs": specs(&graph.inputs),
        "outputs": specs(&graph.outputs),
    })
}

async fn infer(
    graph: Arc<LoadedGraph>,
    config: &KserveConfig,
    req: http::Request<Incoming>,
) -> Response<WasiBody> {
    let body = match crate::body::read(req, config.max_request_body_bytes, crate::body::READ_TIMEOUT).await {
        Ok((_, body)) => body,
        Err(refused) => return refused,
    };
    let request = match kserve::decode_request(&body) {
        Ok(request) => request,
        Err(message) => return HostError::Validation.answer(message),
    };
    // The body's text is no longer needed while the model runs.
    drop(body);
    if let Some(names) = &request.outputs
        && let Some(unknown) = names.iter().find(|n| !graph.outputs.iter().any(|s| &s.name == *n))
    {
        return HostError::Validation.answer(format!("the model has no output {unknown:?}"));
    }
    let tensors = request.inputs;
    let outputs = match graph.batcher.compute(tensors).await {
        Ok(outputs) => outputs,
        Err(EngineError::InvalidArgument(message)) => return HostError::Validation.answer(message),
        Err(EngineError::Overloaded(message)) => return HostError::Overloaded.answer(message),
        Err(EngineError::Runtime(message)) => {
            return HostError::Backend.answer(format!("inference failed: {message}"));
        }
    };
    let outputs: Vec<(&str, &TensorData)> = outputs
        .iter()
        .filter(|(name, _)| request.outputs.as_ref().is_none_or(|names| names.contains(name)))
        .map(|(name, tensor)| (name.as_str(), tensor))
        .collect();
    let answer = kserve::encode_response(&graph.name, request.id.as_deref(), &outputs);
    json_bytes(StatusCode::OK, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_counted_by_pattern() {
        assert_eq!(route_of("/v2/models/minilm/infer"), "/v2/models/{name}/infer");
        assert_eq!(route_of("/v2/health/ready"), "/v2/health/ready");
        assert_eq!(route_of("/v2/other/thing"), "/v2/unmatched");
    }
}
