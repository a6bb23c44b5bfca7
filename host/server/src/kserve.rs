//! The KServe v2 / Open Inference Protocol REST API over the models its config lists: health,
//! model metadata and `infer` with JSON tensors. Off unless the runtime config turns it on; a
//! bearer token unless it is public; admission control like a component's. Inference goes through
//! each model's batcher, like wasi:nn calls from components, so remote clients (e.g. the
//! `nn-remote` component) and local components share batches. Errors are `{"error",
//! "error_type"}` (the protocol's `error` plus our type).

use std::sync::Arc;

use axum::Router;
use axum::extract::{MatchedPath, OriginalUri, Path, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{get, post};
use http::{Response, StatusCode};
use serde_json::{Value, json};
use wasmtime_wasi_http::WasiBody;

use super::{Answer, HostError, Served, Shared, json as json_response, json_bytes, use_get, use_post};
use edgeinfer_config::runtime_config::KserveConfig;
use edgeinfer_engine::engines::{ElementType, EngineError, TensorData, TensorSpec};
use edgeinfer_engine::registry::LoadedGraph;
use edgeinfer_runtime::admission::Admission;
use edgeinfer_runtime::app::App;
use edgeinfer_tensor::kserve;

/// Path prefix of the protocol.
pub const PREFIX: &str = "/v2";

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

/// The API's routes under `/v2` (they exist only when it is enabled); every one, the 404 for
/// an unknown path included, needs the token unless the API is public.
pub(crate) fn routes(shared: Arc<Shared>) -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(server_metadata).fallback(use_get))
        .route("/health/live", get(live).fallback(use_get))
        .route("/health/ready", get(ready).fallback(use_get))
        .route("/models/{name}", get(model_metadata).fallback(use_get))
        .route("/models/{name}/ready", get(model_ready).fallback(use_get))
        .route("/models/{name}/infer", post(infer_route).fallback(use_post))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(shared, require_token))
}

/// A `/v2` path with empty segments (`/v2/`, `/v2//models/x`, `.../infer/`) as the same path
/// without them, which is how the protocol's clients mean it; `None` when there are none.
pub(crate) fn normalise(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path();
    if !(path.starts_with("/v2/") && (path.ends_with('/') || path.contains("//"))) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut normalised = format!("/{}", segments.join("/"));
    if let Some(query) = uri.query() {
        normalised = format!("{normalised}?{query}");
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(normalised.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

fn api(shared: &Shared) -> &Kserve {
    shared.kserve.as_ref().expect("the routes exist only when the API is enabled")
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    matched: Option<MatchedPath>,
    req: axum::extract::Request,
    next: Next,
) -> AxumResponse {
    if let Some(token) = &api(&shared).token
        && !authorized(req.headers(), token)
    {
        let mut refused =
            Answer(HostError::Unauthorized.answer("a valid bearer token is required")).into_response();
        let route = matched.as_ref().map_or("/v2/unmatched", MatchedPath::as_str);
        refused.extensions_mut().insert(Served::host(route));
        return refused;
    }
    next.run(req).await
}

async fn unknown_route(OriginalUri(uri): OriginalUri) -> AxumResponse {
    let mut response =
        Answer(HostError::NotFound.answer(format!("no route for {}", uri.path()))).into_response();
    response.extensions_mut().insert(Served::host("/v2/unmatched"));
    response
}

async fn server_metadata() -> Answer {
    let about = json!({"name": "edgeinfer", "version": env!("CARGO_PKG_VERSION"), "extensions": []});
    Answer(json_response(StatusCode::OK, &about))
}

async fn live() -> Answer {
    Answer(json_response(StatusCode::OK, &json!({"live": true})))
}

async fn ready(State(shared): State<Arc<Shared>>) -> Answer {
    let ready = api(&shared).config.models.iter().all(|name| shared.app.registry.get(name).is_some());
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Answer(json_response(status, &json!({"ready": ready})))
}

/// A model the API serves and that is loaded; else the answer why not.
fn model(shared: &Shared, name: &str) -> Result<Arc<LoadedGraph>, Box<Response<WasiBody>>> {
    let kserve = api(shared);
    match kserve.serves(name).then(|| shared.app.registry.get(name)).flatten() {
        Some(graph) => Ok(graph),
        None => Err(Box::new(unknown_model(&shared.app, kserve, name))),
    }
}

async fn model_metadata(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    Answer(
        model(&shared, &name).map_or_else(|e| *e, |graph| json_response(StatusCode::OK, &metadata(&graph))),
    )
}

async fn model_ready(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    Answer(model(&shared, &name).map_or_else(
        |e| *e,
        |graph| json_response(StatusCode::OK, &json!({"name": graph.name, "ready": true})),
    ))
}

async fn infer_route(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Answer {
    let graph = match model(&shared, &name) {
        Ok(graph) => graph,
        Err(answer) => return Answer(*answer),
    };
    let kserve = api(&shared);
    let Some(_slot) = kserve.admission.admit().await else {
        return Answer(
            HostError::Overloaded.answer("the KServe API is at its concurrency limit; retry shortly"),
        );
    };
    Answer(infer(graph, &kserve.config, req).await)
}

fn authorized(headers: &http::HeaderMap, token: &str) -> bool {
    super::bearer_token(headers).is_some_and(|given| super::constant_time_eq(given, token))
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
    req: axum::extract::Request,
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
