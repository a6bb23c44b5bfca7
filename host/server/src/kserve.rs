//! The KServe v2 / Open Inference Protocol REST API over the models its config lists: health,
//! model metadata and `infer` with JSON tensors and the binary tensor data extension. Off unless the runtime config turns it on; a
//! bearer token unless it is public; admission control like a component's. Inference goes through
//! each model's batcher, like wasi:nn calls from components, so remote clients (e.g. the
//! `nn-remote` component) and local components share batches. Errors are `{"error",
//! "error_type"}` (the protocol's `error` plus our type).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, OriginalUri, Path, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use wasmtime_wasi_http::WasiBody;

use crate::error::HostError;
use crate::error::{use_get, use_post};
use crate::response::{Answer, json as json_response, json_bytes};
use crate::served::Served;
use edgeinfer_config::runtime_config::KserveConfig;
use edgeinfer_engine::engines::{ElementType, EngineError, TensorData, TensorSpec};
use edgeinfer_engine::registry::LoadedGraph;
use edgeinfer_runtime::admission::Admission;
use edgeinfer_runtime::app::App;
use edgeinfer_tensor::kserve;

/// What the API's credential is called in its refusals.
pub(crate) const TOKEN_NAME: &str = "the KServe API's token";

/// Path prefix of the protocol.
pub const PREFIX: &str = "/v2";

/// The protocol extensions served (REST and gRPC metadata say so).
pub(crate) const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// The datatype model metadata gives a tensor of a type the engine does not carry (e.g. BOOL).
pub(crate) const UNSUPPORTED: &str = "UNSUPPORTED";

/// The models' platform, as model metadata names it.
pub(crate) const PLATFORM: &str = "onnxruntime_onnx";

/// The API as served.
pub struct Kserve {
    config: KserveConfig,
    /// The bearer tokens accepted: the API's own (`token_env`) and the host's API key; none only
    /// when the config says `public = true` and the host has no API key.
    tokens: Vec<String>,
    /// Inference requests at once and waiting, as for a component (REST and gRPC together).
    pub(crate) admission: Admission,
}

impl Kserve {
    /// The API of `config` (enabled and checked), with its token read from the environment.
    pub fn new(config: KserveConfig, token: Option<String>) -> Kserve {
        debug_assert!(config.public || token.is_some(), "checked with the runtime config");
        let admission = Admission::new(
            "kserve",
            config.max_concurrent_requests,
            config.max_queued_requests,
            Duration::from_millis(config.admission_wait_ms),
        );
        Kserve { config, tokens: token.into_iter().collect(), admission }
    }

    /// The API accepting the host's API key too: with a key, even a public API needs a token.
    pub fn with_api_key(mut self, key: Option<&crate::auth::ApiKey>) -> Kserve {
        self.tokens.extend(key.map(|k| k.key().to_string()));
        self
    }

    /// Whether the API serves model `name` at all.
    fn serves(&self, name: &str) -> bool {
        self.config.models.iter().any(|m| m == name)
    }

    /// Whether a request with `headers` may use the API (`auth`'s rule): it is open, or they
    /// carry one of its tokens.
    pub(crate) fn authorized(&self, headers: &http::HeaderMap) -> Result<(), crate::auth::Refusal> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        crate::auth::check(headers, self.tokens.iter().map(String::as_str))
    }

    /// The largest request body (or gRPC message) accepted.
    pub(crate) fn max_request_body_bytes(&self) -> u64 {
        self.config.max_request_body_bytes
    }

    /// Whether every model the API serves is loaded.
    pub(crate) fn ready(&self, app: &App) -> bool {
        self.config.models.iter().all(|name| app.registry.get(name).is_some())
    }
}

/// The API's routes under `/v2` (they exist only when it is enabled); every one, the 404 for
/// an unknown path included, needs the token unless the API is public.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(app: Arc<App>, kserve: Arc<Kserve>) -> Router<S> {
    let shared = Arc::new(KserveState { app, kserve });
    Router::new()
        .route("/", get(server_metadata).fallback(use_get))
        .route("/health/live", get(live).fallback(use_get))
        .route("/health/ready", get(ready).fallback(use_get))
        .route("/models/{name}", get(model_metadata).fallback(use_get))
        .route("/models/{name}/ready", get(model_ready).fallback(use_get))
        .route("/models/{name}/infer", post(infer_route).fallback(use_post))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(shared.clone(), require_token))
        .with_state(shared)
}

/// What the API's handlers are given.
struct KserveState {
    app: Arc<App>,
    kserve: Arc<Kserve>,
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

fn api(shared: &KserveState) -> &Kserve {
    &shared.kserve
}

async fn require_token(
    State(shared): State<Arc<KserveState>>,
    matched: Option<MatchedPath>,
    req: axum::extract::Request,
    next: Next,
) -> AxumResponse {
    if let Err(refusal) = api(&shared).authorized(req.headers()) {
        // As the API key's refusal: a small body is read off so HTTP/2 clients get the answer.
        crate::body::drain_refused(req, crate::body::REFUSED_DRAIN_BYTES, crate::body::REFUSED_DRAIN_TIMEOUT)
            .await;
        let mut refused = Answer(refusal.answer(TOKEN_NAME)).into_response();
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
    let about = json!({"name": "edgeinfer", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS});
    Answer(json_response(StatusCode::OK, &about))
}

async fn live() -> Answer {
    Answer(json_response(StatusCode::OK, &json!({"live": true})))
}

async fn ready(State(shared): State<Arc<KserveState>>) -> Answer {
    let ready = api(&shared).ready(&shared.app);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Answer(json_response(status, &json!({"ready": ready})))
}

/// A model the API serves and that is loaded; else the answer why not.
fn model(shared: &KserveState, name: &str) -> Result<Arc<LoadedGraph>, Box<Response<WasiBody>>> {
    served_model(&shared.app, api(shared), name).map_err(|(error, message)| Box::new(error.answer(message)))
}

/// A model `kserve` serves and that is loaded; else why not: 404 for a name it does not serve,
/// 503 for one of its models that failed to load.
pub(crate) fn served_model(
    app: &App,
    kserve: &Kserve,
    name: &str,
) -> Result<Arc<LoadedGraph>, (HostError, String)> {
    if let Some(graph) = kserve.serves(name).then(|| app.registry.get(name)).flatten() {
        return Ok(graph);
    }
    Err(match app.registry.failure(name).filter(|_| kserve.serves(name)) {
        Some(failed) => {
            (HostError::ModelUnavailable, format!("model {name:?} failed to load: {}", failed.error))
        }
        None => (HostError::ModelNotFound, format!("no model named {name:?}")),
    })
}

async fn model_metadata(State(shared): State<Arc<KserveState>>, Path(name): Path<String>) -> Answer {
    Answer(
        model(&shared, &name).map_or_else(|e| *e, |graph| json_response(StatusCode::OK, &metadata(&graph))),
    )
}

async fn model_ready(State(shared): State<Arc<KserveState>>, Path(name): Path<String>) -> Answer {
    Answer(model(&shared, &name).map_or_else(
        |e| *e,
        |graph| json_response(StatusCode::OK, &json!({"name": graph.name, "ready": true})),
    ))
}

async fn infer_route(
    State(shared): State<Arc<KserveState>>,
    Path(name): Path<String>,
    req: axum::extract::Request,
) -> Answer {
    let header_length = match header_length(req.headers()) {
        Ok(length) => length,
        Err(message) => return Answer(HostError::Validation.answer(message)),
    };
    let kserve = api(&shared);
    // The model and a slot first: an unknown name or a full line costs no upload.
    if let Err((error, message)) = served_model(&shared.app, kserve, &name) {
        return Answer(error.answer(message));
    }
    let Some(_slot) = kserve.admission.admit().await else {
        return Answer(HostError::Overloaded.answer(OVERLOADED));
    };
    let limit = kserve.config.max_request_body_bytes;
    let (head, body) = match crate::body::read(req, limit, crate::body::READ_TIMEOUT).await {
        Ok(read) => read,
        Err(refused) => return Answer(refused),
    };
    let body = match head.headers.get(http::header::CONTENT_ENCODING) {
        None => body,
        // Inflating takes a while: off the async workers.
        Some(_) => {
            match tokio::task::spawn_blocking(move || decode_content(&head.headers, body, limit)).await {
                Ok(Ok(body)) => body,
                Ok(Err((error, message))) => return Answer(error.answer(message)),
                Err(e) => return Answer(HostError::Backend.answer(format!("decoding the body failed: {e}"))),
            }
        }
    };
    let mut request = match kserve::decode_request(&body, header_length) {
        Ok(request) => request,
        Err(invalid) => return Answer(HostError::Validation.answer(invalid.0)),
    };
    // The body's JSON is no longer needed while the model runs (binary inputs keep their part).
    drop(body);
    let inputs = std::mem::take(&mut request.inputs);
    let requested: Option<Vec<&str>> =
        request.outputs.as_ref().map(|o| o.iter().map(|o| o.name.as_str()).collect());
    let (graph, outputs) = match infer(&shared.app, kserve, &name, inputs, requested.as_deref()).await {
        Ok(answer) => answer,
        Err((error, message)) => return Answer(error.answer(message)),
    };
    let outputs: Vec<(&str, &TensorData, bool)> =
        outputs.iter().map(|(name, tensor)| (name.as_str(), tensor, request.binary_output(name))).collect();
    let answer = kserve::encode_response(&graph.name, request.id.as_deref(), &outputs);
    Answer(match answer.header_length {
        None => json_bytes(StatusCode::OK, answer.body),
        Some(length) => Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(kserve::HEADER_LENGTH, length)
            .body(crate::response::full_body(answer.body.into()))
            .expect("static response parts are valid"),
    })
}

/// What a request refused by admission control is told.
pub(crate) const OVERLOADED: &str = "the KServe API is at its concurrency limit; retry shortly";

/// One inference as the API runs it, whatever the transport (REST or gRPC), once admitted (the
/// caller holds a slot of `Kserve::admission`, taken before the request's body was read): the
/// model check, the requested outputs' names, the model's batcher. `requested` names the outputs
/// answered (`None`: all); the answer keeps the model's output order.
pub(crate) async fn infer(
    app: &App,
    kserve: &Kserve,
    name: &str,
    inputs: Vec<(String, TensorData)>,
    requested: Option<&[&str]>,
) -> Result<(Arc<LoadedGraph>, Vec<(String, TensorData)>), (HostError, String)> {
    let graph = served_model(app, kserve, name)?;
    if let Some(unknown) =
        requested.into_iter().flatten().find(|&&n| !graph.outputs.iter().any(|s| s.name == n))
    {
        return Err((HostError::Validation, format!("the model has no output {unknown:?}")));
    }
    let outputs = match graph.batcher.compute(inputs).await {
        Ok(outputs) => outputs,
        Err(EngineError::InvalidArgument(message)) => return Err((HostError::Validation, message)),
        Err(EngineError::Overloaded(message)) => return Err((HostError::Overloaded, message)),
        Err(EngineError::Runtime(message)) => {
            return Err((HostError::Backend, format!("inference failed: {message}")));
        }
    };
    let wanted = |name: &str| requested.is_none_or(|names| names.contains(&name));
    let outputs: Vec<(String, TensorData)> = outputs.into_iter().filter(|(name, _)| wanted(name)).collect();
    Ok((graph, outputs))
}

fn metadata(graph: &LoadedGraph) -> Value {
    let specs = |specs: &[TensorSpec]| -> Vec<Value> {
        specs.iter().map(|s| json!({"name": s.name, "datatype": s.ty.map_or(UNSUPPORTED, ElementType::datatype), "shape": s.shape})).collect()
    };
    json!({
        "name": graph.name,
        "versions": [],
        "platform": PLATFORM,
        "inputs": specs(&graph.inputs),
        "outputs": specs(&graph.outputs),
    })
}

/// The body as sent before its `Content-Encoding` (gzip and deflate, as tritonclient's
/// `request_compression_algorithm` sends them), at most `limit` bytes decoded.
fn decode_content(headers: &http::HeaderMap, body: Bytes, limit: u64) -> Result<Bytes, (HostError, String)> {
    use std::io::Read;
    let encoding = headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let mut decoded = Vec::new();
    let read = match encoding.as_deref() {
        None | Some("identity") => return Ok(body),
        Some("gzip") => flate2::read::GzDecoder::new(&body[..]).take(limit + 1).read_to_end(&mut decoded),
        // HTTP's "deflate" is the zlib format.
        Some("deflate") => {
            flate2::read::ZlibDecoder::new(&body[..]).take(limit + 1).read_to_end(&mut decoded)
        }
        Some(other) => {
            return Err((
                HostError::Validation,
                format!("Content-Encoding {other:?} is not supported (gzip, deflate and identity are)"),
            ));
        }
    };
    match read {
        Err(e) => Err((
            HostError::Validation,
            format!("cannot decode the {} body: {e}", encoding.unwrap_or_default()),
        )),
        Ok(_) if decoded.len() as u64 > limit => {
            Err((HostError::PayloadTooLarge, format!("the decoded body is over the limit of {limit} bytes")))
        }
        Ok(_) => {
            // Binary inputs are views of the body while the model runs: no spare capacity kept.
            decoded.shrink_to_fit();
            Ok(Bytes::from(decoded))
        }
    }
}

/// The `Inference-Header-Content-Length` of a request with binary tensors; `None` for JSON.
fn header_length(headers: &http::HeaderMap) -> Result<Option<usize>, String> {
    let Some(value) = headers.get(kserve::HEADER_LENGTH) else {
        return Ok(None);
    };
    match value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(length) => Ok(Some(length)),
        None => Err(format!("Inference-Header-Content-Length must be a byte count, got {value:?}")),
    }
}
