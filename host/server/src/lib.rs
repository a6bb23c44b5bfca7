//! HTTP serving. Connections are hyper's; every listener's requests pass one tower layer
//! (`observe`: request id, span, metrics, the request log), then the public listener's head
//! checks and its router (axum): the host's routes (`/health`, `/ready`, `/metrics`, `/openapi.json`, `/docs`),
//! KServe v2 under `/v2` when enabled, and everything else routed by spin.toml to a component's
//! `ProxyHandler` (canary pick, shadow copy, limits). Whatever answered labels the response
//! (`Served`), by which `observe` counts and logs every request once. Host-side failures are JSON
//! errors of one type (`HostError`). The admin API has its own listener (`admin`); `telemetry`
//! is the process's metrics recorder. Every listener, plain or TLS (`tls`), runs the same accept
//! loop (`listener`); every credential is checked by one rule (`auth`).

pub mod admin;
pub mod auth;
mod body;
pub mod default_task;
mod docs;
pub mod error;
mod grpc;
mod kserve;
pub mod listener;
mod observe;
mod response;
mod served;
mod shadow;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod traces;

pub use docs::SwaggerUi;
pub use error::HostError;
use error::json_rejection;
pub use kserve::Kserve;
pub use response::Answer;
use response::{full_body, json};

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, MatchedPath, Path, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper_util::service::TowerToHyperService;
use tower::ServiceExt;
use tracing::Instrument;
use wasmtime_wasi_http::WasiBody;

use edgeinfer_runtime::app::App;
use edgeinfer_runtime::component::{HandleError, LoadedComponent};
use edgeinfer_runtime::instance::{RequestTicket, TrapCause};

use auth::ApiKey;
use error::use_get;
use listener::{Http1Options, Listener};
use observe::ObserveLayer;
use served::{Input, Served};

/// What the handlers share.
struct Shared {
    app: Arc<App>,
    /// The KServe v2 API, when enabled.
    kserve: Option<Arc<Kserve>>,
    /// Swagger UI's files for `/docs`, if they could be fetched.
    swagger_ui: Option<SwaggerUi>,
    /// Whether the inference routes need the API key (the OpenAPI document says so).
    api_key: bool,
    /// The route `POST /` and `POST /invocations` answer as (`default_task`).
    default_route: Option<String>,
}

/// The public listener's service, behind `observe`: head checks, the API key, then the router.
struct Server {
    router: Router,
    /// Whether `/v2` is KServe's (its paths are normalised before routing).
    kserve_on: bool,
    /// The key inference routes need, when one is set.
    api_key: Option<ApiKey>,
    /// `GET /` and `GET /ping` where the app does not route them: health, open without the key.
    open_health_paths: Vec<&'static str>,
}

/// Request headers larger than this are refused with 431; more than 100 headers are refused by
/// hyper (431, no body). hyper's read buffer is capped at the same size as a backstop.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// A client must send its whole request head within this (slow-header attacks).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a request on a trapped instance waits for the cause at most: the instance reports it
/// as it retires, right after the request learns of the trap; this only bounds a host bug.
const TRAP_CAUSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a drain waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the host serves besides the app's routes.
pub struct ServeOptions {
    /// The KServe v2 API, when enabled.
    pub kserve: Option<Kserve>,
    /// Where to serve the KServe API over gRPC too (it must be enabled).
    pub grpc_listener: Option<Listener>,
    /// The key every inference route needs (`up --api-key`); KServe accepts it besides its own
    /// token.
    pub api_key: Option<ApiKey>,
    /// Put request bodies in the request log lines.
    pub log_inputs: bool,
    /// Swagger UI's files for `/docs`.
    pub swagger_ui: Option<SwaggerUi>,
    /// The route that answers `POST /` and `POST /invocations` (`default_task::resolve`).
    pub default_route: Option<String>,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new connections, idle
/// keep-alive connections closed, in-flight requests finished (up to 30 s). HTTP/1.1, and HTTP/2
/// where a TLS client asks for it.
pub async fn serve(
    app: Arc<App>,
    options: ServeOptions,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let ServeOptions { kserve, grpc_listener, api_key, log_inputs, swagger_ui, default_route } = options;
    // KServe takes the host's API key besides its own token.
    let kserve = kserve.map(|kserve| Arc::new(kserve.with_api_key(api_key.as_ref())));
    let kserve_on = kserve.is_some();
    let (stop_grpc, grpc_stopping) = tokio::sync::oneshot::channel::<()>();
    let grpc = match (grpc_listener, &kserve) {
        (Some(listener), Some(kserve)) => {
            Some(tokio::spawn(grpc::serve(app.clone(), kserve.clone(), listener, async {
                let _ = grpc_stopping.await;
            })))
        }
        (Some(_), None) => anyhow::bail!("the gRPC listener serves the KServe API, which is not enabled"),
        (None, _) => None,
    };
    let open_health_paths = ["/", "/ping"].into_iter().filter(|path| app.route_of(path).is_none()).collect();
    let observe = ObserveLayer::new(public_surface(log_inputs));
    let router =
        routes(Arc::new(Shared { app, kserve, swagger_ui, api_key: api_key.is_some(), default_route }));
    let server = Arc::new(Server { router, kserve_on, api_key, open_health_paths });
    let http1 =
        Http1Options { header_read_timeout: HEADER_READ_TIMEOUT, max_buf_size: Some(MAX_HEADER_BYTES) };
    // The gRPC listener starts its drain with this one's, and both end by one deadline.
    let stopped_at = Arc::new(std::sync::OnceLock::new());
    let shutdown = {
        let stopped_at = stopped_at.clone();
        async move {
            shutdown.await;
            let _ = stopped_at.set(tokio::time::Instant::now());
            let _ = stop_grpc.send(());
        }
    };
    listener::run(listener, shutdown, DRAIN_TIMEOUT, move |connection, watcher| {
        let service = observe.for_connection(connection.peer, server.service());
        listener::serve_http(connection, watcher, http1, TowerToHyperService::new(service))
    })
    .await;
    if let Some(grpc) = grpc {
        let deadline = stopped_at.get().copied().unwrap_or_else(tokio::time::Instant::now) + DRAIN_TIMEOUT;
        match tokio::time::timeout_at(deadline, grpc).await {
            Ok(Ok(Err(e))) => tracing::warn!("gRPC server: {e:#}"),
            Ok(Err(e)) => tracing::warn!("gRPC server task: {e}"),
            Err(_) => tracing::warn!("gRPC drain timed out after {} s", DRAIN_TIMEOUT.as_secs()),
            Ok(Ok(Ok(()))) => {}
        }
    }
    Ok(())
}

/// How the public listener's calls are labelled: by what answered (`Served`); a call refused or
/// dropped before routing is `unmatched`.
fn public_surface(log_inputs: bool) -> observe::Surface {
    observe::Surface {
        listener: "public",
        provisional: Box::new(|_| Served::unmatched()),
        outcome: observe::http_outcome,
        log_inputs,
        span_name: observe::http_span_name,
    }
}

impl Server {
    /// The server as a tower service (what `observe` wraps).
    fn service<B>(
        self: &Arc<Self>,
    ) -> impl tower::Service<Request<B>, Response = AxumResponse, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static
    + use<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let server = self.clone();
        tower::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        })
    }

    /// Answers one request (already numbered and in its span: `observe`): the head's size, the
    /// API key, then the router. A host answer that is not JSON yet (axum's rejections) is made so.
    async fn handle<B>(&self, mut req: Request<B>) -> AxumResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let head_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if head_bytes > MAX_HEADER_BYTES {
            let message = format!("request headers are over the limit of {MAX_HEADER_BYTES} bytes");
            return Answer(HostError::HeadersTooLarge.answer(message)).into_response();
        }
        if let Some(refusal) = self.refused_without_key(&req) {
            // Read off a small body first: an HTTP/2 client still sending it when the answer
            // comes would see its stream reset instead of the 401/403.
            body::drain_refused(req, body::REFUSED_DRAIN_BYTES, body::REFUSED_DRAIN_TIMEOUT).await;
            return Answer(refusal.answer("the API key")).into_response();
        }
        if self.kserve_on
            && let Some(normalised) = kserve::normalise(req.uri())
        {
            *req.uri_mut() = normalised;
        }
        let routed = self.router.clone().oneshot(req.map(axum::body::Body::new)).await;
        let response = routed.unwrap_or_else(|never| match never {});
        let by_host = response
            .extensions()
            .get::<Served>()
            .is_none_or(|s| s.component == "host" || s.component == "none");
        if by_host { json_rejection(response).await } else { response }
    }
}

impl Server {
    /// Why a request that needs the API key is refused, if it is: every route but the host's own
    /// (unless the key covers them) and KServe's (which accepts the key besides its own token).
    fn refused_without_key<B>(&self, req: &Request<B>) -> Option<auth::Refusal> {
        let key = self.api_key.as_ref()?;
        let path = req.uri().path();
        let open_health = req.method() == http::Method::GET && self.open_health_paths.contains(&path);
        let exempt = ((is_host_path(path) || open_health) && !key.host_routes)
            || (self.kserve_on && is_kserve_path(path));
        if exempt {
            return None;
        }
        auth::check(req.headers(), [key.key()]).err()
    }
}

/// The host's routes (and KServe's, when on) on axum; everything else goes to the app's routes.
fn routes(shared: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/health", get(health).fallback(use_get))
        .route("/ready", get(ready).fallback(use_get))
        .route("/metrics", get(metrics_page).fallback(use_get))
        .route("/openapi.json", get(openapi).fallback(use_get))
        .route("/docs", get(docs_page).fallback(use_get))
        .route("/docs/", get(docs_page).fallback(use_get))
        .route("/docs/{*file}", get(docs_asset).fallback(use_get));
    if let Some(kserve) = &shared.kserve {
        router = router.nest(kserve::PREFIX, kserve::routes(shared.app.clone(), kserve.clone()));
    }
    router.route_layer(middleware::from_fn(label_host_route)).fallback(to_app).with_state(shared)
}

/// Labels an answer of a host route by the route's pattern (e.g. `/v2/models/{name}/infer`).
async fn label_host_route(matched: MatchedPath, req: axum::extract::Request, next: Next) -> AxumResponse {
    let route = matched.as_str().to_string();
    let mut response = next.run(req).await;
    if response.extensions().get::<Served>().is_none() {
        response.extensions_mut().insert(Served::host(&route));
    }
    response
}

async fn health() -> Answer {
    Answer(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

async fn ready(State(shared): State<Arc<Shared>>) -> Answer {
    Answer(status::ready(&shared.app))
}

async fn metrics_page() -> Answer {
    Answer(metrics_text())
}

async fn openapi(State(shared): State<Arc<Shared>>) -> Answer {
    Answer(docs::openapi(
        &shared.app,
        shared.kserve.is_some(),
        shared.api_key,
        shared.default_route.as_deref(),
    ))
}

async fn docs_page(State(shared): State<Arc<Shared>>) -> Answer {
    Answer(docs::page(shared.swagger_ui.as_ref()))
}

async fn docs_asset(State(shared): State<Arc<Shared>>, Path(file): Path<String>) -> Answer {
    Answer(docs::asset(shared.swagger_ui.as_ref(), &file))
}

/// Everything the host does not answer itself: the app's routes by spin.toml, each request served
/// by the component version picked when it starts (whatever is deployed meanwhile).
async fn to_app(
    State(shared): State<Arc<Shared>>,
    Extension(context): Extension<observe::Arrival>,
    mut req: axum::extract::Request,
) -> AxumResponse {
    let path = req.uri().path().to_string();
    let route = match shared.app.route_of(&path) {
        Some(route) => route,
        None => match default_task::answer(req.method(), req.uri(), shared.default_route.as_deref()) {
            Some(default_task::Answer::Route(uri)) => {
                *req.uri_mut() = uri;
                shared.app.route_of(req.uri().path()).expect("the default route is a route of the app")
            }
            Some(default_task::Answer::Ready) => {
                let mut response = Answer(status::ready(&shared.app)).into_response();
                response.extensions_mut().insert(Served::host(&path));
                return response;
            }
            Some(default_task::Answer::WrongMethod(allowed)) => {
                let mut response = Answer(error::method_not_allowed(allowed)).into_response();
                response.extensions_mut().insert(Served::host(&path));
                return response;
            }
            Some(default_task::Answer::NoDefaultTask) => {
                let message = format!(
                    "no default task for POST {path}: spin.toml routes none of /embed, /predict, /rerank; \
                     set [http] default_route in the runtime config"
                );
                let mut response = Answer(HostError::NotFound.answer(message)).into_response();
                response.extensions_mut().insert(Served::host(&path));
                return response;
            }
            None => {
                let mut response =
                    Answer(HostError::NotFound.answer(format!("no route for {path}"))).into_response();
                response.extensions_mut().insert(Served::unmatched());
                return response;
            }
        },
    };
    let pick = route.component.pick(req.headers(), context.peer.ip());
    let shadow = pick.shadow.map(|version| (version, shadow::copy_head(&req)));
    let component = pick.serving;
    let mut input = None;
    let mut queued = std::time::Duration::ZERO;
    let mut response = to_component(req, &component, context.number, &mut input, &mut queued).await;
    add_timing_headers(response.headers_mut(), queued, context.started.elapsed());
    if let (Some((version, head)), Some(input)) = (shadow, &input) {
        response =
            shadow::mirror(response, version, head, input.bytes.clone(), context.number, context.started);
    }
    let version = component.version[..12].to_string();
    let header = http::HeaderValue::from_str(&version).expect("hex digits");
    response.headers_mut().insert(VERSION_HEADER, header);
    let mut response = Answer(response).into_response();
    // Labelled by the path the client used when that was a default-task path (`/invocations`).
    let route_label = if route.pattern.matches(&path) { route.pattern.to_string() } else { path };
    let served = Served { route: route_label, component: route.component.id.clone(), version, input };
    response.extensions_mut().insert(served);
    response
}

/// TEI's timing headers the host knows, in whole milliseconds: `x-queue-time` (waiting for the
/// component's admission), `x-total-time` and `x-compute-time` (the whole request up to its
/// response head). The component adds `x-tokenization-time` and `x-inference-time`.
fn add_timing_headers(
    headers: &mut http::HeaderMap,
    queued: std::time::Duration,
    total: std::time::Duration,
) {
    let millis = |d: std::time::Duration| http::HeaderValue::from(d.as_millis() as u64);
    headers.insert("x-queue-time", millis(queued));
    headers.insert("x-total-time", millis(total));
    headers.insert("x-compute-time", millis(total));
}

/// Runs the component on `req`; `input` gets the request body's facts for the log, `queued` the
/// time it waited for admission.
async fn to_component(
    req: axum::extract::Request,
    component: &LoadedComponent,
    request_id: u64,
    input: &mut Option<Input>,
    queued: &mut std::time::Duration,
) -> Response<WasiBody> {
    let limit = component.limits.max_request_body_bytes;
    let (mut parts, body) = match body::read(req, limit, body::READ_TIMEOUT).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let hash = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(&body)[..8]);
    *input = Some(Input { hash, bytes: body.clone() });
    // Traced: the component's span, whose context the component gets (`traceparent`) and its
    // host calls go under.
    let span =
        tracing::info_span!("component", component = %component.id, version = &component.version[..12]);
    let trace = edgeinfer_runtime::trace::context_of(&span);
    if let Some(cx) = &trace {
        edgeinfer_runtime::trace::inject(cx, &mut parts.headers);
    }
    let req = Request::from_parts(parts, full_body(body));
    // The host's own clock: a guest spinning in a loop starves the store's event loop, so the
    // handler's timeout may not fire; the epoch interrupt then stops the guest.
    let deadline = std::time::Duration::from_millis(component.limits.request_timeout_ms);
    let (ticket, trap_cause) = RequestTicket::new(request_id, trace);
    let waiting = std::time::Instant::now();
    let handled = async {
        let _slot = component.admission.admit().instrument(tracing::info_span!("admission")).await?;
        *queued = waiting.elapsed();
        let handed_at = std::time::SystemTime::now();
        let mut response = component.handle(ticket, req).await;
        if let Ok(response) = &mut response {
            record_tokenization(&span, handed_at, response.headers_mut());
        }
        Some(response)
    }
    .instrument(span.clone());
    let Ok(result) = tokio::time::timeout(deadline, handled).await else {
        if queued.is_zero() {
            // The deadline passed while waiting for admission.
            *queued = waiting.elapsed();
        }
        tracing::warn!(component = %component.id, request_id, "request timed out");
        return HostError::Deadline.answer(format!(
            "component {} did not answer within {} ms",
            component.id,
            deadline.as_millis()
        ));
    };
    let Some(result) = result else {
        return HostError::Overloaded
            .answer(format!("component {} is at its concurrency limit; retry shortly", component.id));
    };
    match result {
        Ok(response) => response,
        Err(e) => {
            let name = &component.id;
            let (error, message) = match &e {
                HandleError::Expired(_) => {
                    (HostError::Deadline, format!("component {name} did not answer in time"))
                }
                HandleError::Instantiation(_) => {
                    (HostError::InstantiationFailed, format!("component {name}: {e}"))
                }
                // The instance's retirement reports why it trapped.
                HandleError::Trapped(_) => {
                    match tokio::time::timeout(TRAP_CAUSE_WAIT, trap_cause).await.ok().and_then(Result::ok) {
                        Some(TrapCause::OutOfFuel) => (
                            HostError::FuelExhausted,
                            format!(
                                "component {name} used up its fuel budget of {}",
                                component.limits.fuel.unwrap_or(0)
                            ),
                        ),
                        Some(TrapCause::Trap(trap)) => {
                            (HostError::ComponentFault, format!("component {name} failed to answer: {trap}"))
                        }
                        None => (HostError::ComponentFault, format!("component {name}: {e}")),
                    }
                }
                // Errors the guest returned instead of a response.
                HandleError::Failed(_) => {
                    (HostError::ComponentFault, format!("component {name} failed to answer: {e}"))
                }
            };
            let error_type = error.error_type();
            tracing::warn!(component = %component.id, request_id, error_type, "component failed: {e:?}");
            error.answer(message)
        }
    }
}

/// Takes the component's `x-edgeinfer-tokenization` (`OFFSET,DURATION` in µs, its own measure of
/// when it tokenized: `components/text-handler`) off its response into a `tokenize` span.
fn record_tokenization(
    component: &tracing::Span,
    handed_at: std::time::SystemTime,
    headers: &mut http::HeaderMap,
) {
    let Some(value) = headers.remove(TOKENIZATION_HEADER) else { return };
    let parsed = value.to_str().ok().and_then(|v| v.split_once(',')).and_then(|(offset, took)| {
        Some((offset.trim().parse::<u64>().ok()?, took.trim().parse::<u64>().ok()?))
    });
    if let Some((offset, took)) = parsed {
        let micros = std::time::Duration::from_micros;
        traces::record_tokenization(component, handed_at, micros(offset), micros(took));
    }
}

/// Response header in which a component says when it tokenized (taken off by the host).
const TOKENIZATION_HEADER: &str = "x-edgeinfer-tokenization";

/// Paths the host answers itself, whatever the manifest routes.
fn is_host_path(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics" | "/openapi.json" | "/docs")
        || path.starts_with("/docs/")
}

/// Paths of the KServe API, answered by the host when it is enabled.
fn is_kserve_path(path: &str) -> bool {
    path == kserve::PREFIX || path.starts_with("/v2/")
}

/// Refuses manifest routes that the host's own routes would hide (`/metrics`, `/docs/...`, and
/// `/v2/...` with KServe on): such a component would never be reached. A catch-all (`/...`) is
/// fine: the host answers its own paths, the component all others.
pub fn check_routes(
    manifest: &edgeinfer_config::manifest::Manifest,
    kserve_enabled: bool,
) -> anyhow::Result<()> {
    for trigger in &manifest.http_triggers {
        let base = match edgeinfer_runtime::routes::RoutePattern::parse(&trigger.route) {
            edgeinfer_runtime::routes::RoutePattern::Exact(p)
            | edgeinfer_runtime::routes::RoutePattern::Prefix(p) => p,
        };
        let base = if base.is_empty() { "/" } else { base.as_str() };
        if is_host_path(base) || (kserve_enabled && is_kserve_path(base)) {
            anyhow::bail!(
                "route {} of component {} is served by the host itself ({base}); choose another route",
                trigger.route,
                trigger.component
            );
        }
    }
    Ok(())
}

/// Response header naming the component version that answered (12 hex digits of its sha256).
const VERSION_HEADER: &str = "x-edgeinfer-version";

/// Prometheus text exposition.
fn metrics_text() -> Response<WasiBody> {
    let body = full_body(Bytes::from(crate::telemetry::render()));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4")
        .body(body)
        .expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest_with_route(route: &str) -> edgeinfer_config::manifest::Manifest {
        let text = format!(
            "spin_manifest_version = 2\n[application]\nname = \"a\"\n[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n"
        );
        edgeinfer_config::manifest::Manifest::parse(&text, ".".into()).unwrap()
    }

    #[test]
    fn routes_the_host_would_hide_are_refused() {
        for hidden in [
            "/metrics",
            "/health",
            "/ready/",
            "/docs",
            "/docs/...",
            "/docs/x",
            "/openapi.json",
            "/metrics/...",
        ] {
            let err = check_routes(&manifest_with_route(hidden), false).unwrap_err();
            assert!(err.to_string().contains("served by the host itself"), "{hidden}: {err}");
        }
        for kserve in ["/v2", "/v2/...", "/v2/models/x/infer"] {
            assert!(check_routes(&manifest_with_route(kserve), true).is_err(), "{kserve}");
            assert!(check_routes(&manifest_with_route(kserve), false).is_ok(), "{kserve} without KServe");
        }
        for fine in ["/...", "/", "/embed", "/api/...", "/metricsx", "/v20"] {
            assert!(check_routes(&manifest_with_route(fine), true).is_ok(), "{fine}");
        }
    }
}

#[cfg(test)]
mod server_tests;
