//! The server in process, without the built binary, components or model files: an app with no
//! routes and a model that failed to load (its file is missing), requests handed straight to
//! `Server::handle`. What the host answers itself is checked here; component traffic end to end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::*;
use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::RuntimeConfig;
use edgeinfer_engine::registry::GraphRegistry;
use edgeinfer_runtime::app::App;
use edgeinfer_runtime::compile::{CompileCache, engine_profile, host_target};

const TOKEN: &str = "a-test-token-0123456789";

/// A server over an empty app whose one model, `broken`, failed to load; KServe on (with a
/// token) or off.
fn server(kserve_on: bool) -> Public {
    server_with_key(kserve_on, None)
}

/// `server`, with an API key for the inference routes.
fn server_with_key(kserve_on: bool, api_key: Option<ApiKey>) -> Public {
    let dir = std::env::temp_dir().join(format!("edgeinfer-server-test-{}", std::process::id()));
    let manifest =
        Manifest::parse("spin_manifest_version = 2\n[application]\nname = \"empty\"\n", dir.clone())
            .expect("an app without components is a manifest");
    let config = RuntimeConfig::parse(
        "[model.broken]\npath = \"no/such/model.onnx\"\n[kserve]\nenabled = true\ntoken_env = \"T\"\nmodels = [\"broken\"]\n",
    )
    .expect("runtime config");
    let registry = Arc::new(GraphRegistry::load(&config.model, &dir));
    let engine = wasmtime::Engine::default();
    let cache = CompileCache::new(dir.join("cache"), engine_profile(false, host_target()));
    let app =
        App::load(Arc::new(manifest), &BTreeMap::new(), registry, &engine, cache, false, Default::default())
            .expect("app");
    let app = Arc::new(app);
    let kserve = kserve_on
        .then(|| Kserve::new(config.kserve.clone(), Some(TOKEN.to_string())).with_api_key(api_key.as_ref()));
    let router = routes(Arc::new(Shared {
        app: app.clone(),
        kserve: kserve.map(Arc::new),
        swagger_ui: None,
        api_key: api_key.is_some(),
        default_route: None,
    }));
    let server = Arc::new(Server { router, kserve_on, api_key, open_health_paths: vec!["/", "/ping"] });
    Public { observe: ObserveLayer::new(public_surface(false)), server }
}

/// The public listener's service as a connection gets it: `Server` behind `observe`.
struct Public {
    observe: ObserveLayer,
    server: Arc<Server>,
}

struct Answered {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

async fn call(server: &Public, method: Method, path: &str, headers: &[(&str, &str)]) -> Answered {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::new())).unwrap();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let service = server.observe.for_connection(peer, server.server.service());
    let response = service.oneshot(request).await.unwrap_or_else(|never| match never {});
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answered { status: parts.status, headers: parts.headers, body }
}

/// A JSON error of `status` and `error_type`, the type in its header too.
fn assert_error(answer: &Answered, status: u16, error_type: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    assert_eq!(answer.body["error_type"], error_type, "{}", answer.body);
    assert!(answer.body["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", answer.body);
    assert_eq!(answer.headers["x-error-type"], error_type);
}

#[tokio::test]
async fn host_routes_answer_and_everything_else_is_a_json_error() {
    let server = server(false);
    let health = call(&server, Method::GET, "/health", &[]).await;
    assert_eq!((health.status, health.body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let generated = health.headers["x-request-id"].to_str().unwrap();
    assert!(
        generated.split_once('-').is_some_and(|(boot, number)| !boot.is_empty() && !number.is_empty()),
        "a generated request id: {generated}"
    );
    let wrong_method = call(&server, Method::POST, "/health", &[("x-request-id", "client-1")]).await;
    assert_error(&wrong_method, 405, "MethodNotAllowed");
    assert_eq!(wrong_method.headers["allow"], "GET", "a 405 says which methods the route takes");
    assert_eq!(wrong_method.headers["x-request-id"], "client-1", "the client's request id echoed");
    let wrong_method = call(&server, Method::DELETE, "/ping", &[]).await;
    assert_error(&wrong_method, 405, "MethodNotAllowed");
    assert_eq!(wrong_method.headers["allow"], "GET, HEAD");
    let unrouted = call(&server, Method::GET, "/nothing/here", &[]).await;
    assert_error(&unrouted, 404, "NotFound");
    assert_eq!(unrouted.body["error"], "no route for /nothing/here");
    // Not ready while a model is unavailable, and the answer says which and why.
    let ready = call(&server, Method::GET, "/ready", &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["models"][0]["name"], "broken");
    assert!(ready.body["models"][0]["error"].as_str().unwrap().contains("does not exist"), "{}", ready.body);
    assert_error(&call(&server, Method::GET, "/docs", &[]).await, 503, "DocsUnavailable");
    let openapi = call(&server, Method::GET, "/openapi.json", &[]).await;
    assert!(openapi.body["openapi"].is_string(), "{}", openapi.body);
    assert!(openapi.body["paths"].get("/v2/models/{name}/infer").is_none(), "KServe off: not described");
    let huge = "x".repeat(70 << 10);
    assert_error(&call(&server, Method::GET, "/health", &[("x-big", &huge)]).await, 431, "HeadersTooLarge");
    // KServe off: /v2 is nobody's route.
    assert_error(&call(&server, Method::GET, "/v2/health/live", &[]).await, 404, "NotFound");
}

#[tokio::test]
async fn kserve_needs_its_token_and_serves_only_its_models() {
    let server = server(true);
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let refused = call(&server, Method::GET, "/v2/health/live", &[]).await;
    assert_error(&refused, 401, "Unauthorized");
    assert_eq!(refused.headers["www-authenticate"], "Bearer");
    let wrong = call(&server, Method::GET, "/v2/health/live", &[("authorization", "Bearer nope")]).await;
    assert_error(&wrong, 403, "Forbidden");
    assert!(wrong.headers.get("www-authenticate").is_none(), "a 403 asks for nothing");
    let malformed = call(&server, Method::GET, "/v2/health/live", &[("authorization", TOKEN)]).await;
    assert_error(&malformed, 401, "Unauthorized");
    assert_error(&call(&server, Method::GET, "/v2/no/such/route", &[]).await, 401, "Unauthorized");
    let live = call(&server, Method::GET, "/v2/health/live", &auth).await;
    assert_eq!((live.status, live.body["live"].as_bool()), (StatusCode::OK, Some(true)));
    let ready = call(&server, Method::GET, "/v2/health/ready", &auth).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "its model failed to load");
    assert_error(&call(&server, Method::GET, "/v2/models/broken", &auth).await, 503, "ModelUnavailable");
    assert_error(
        &call(&server, Method::POST, "/v2/models/broken/infer", &auth).await,
        503,
        "ModelUnavailable",
    );
    assert_error(&call(&server, Method::GET, "/v2/models/other", &auth).await, 404, "ModelNotFound");
    let wrong_method = call(&server, Method::GET, "/v2/models/broken/infer", &auth).await;
    assert_error(&wrong_method, 405, "MethodNotAllowed");
    assert_eq!(wrong_method.body["error"], "use POST");
    let unknown = call(&server, Method::GET, "/v2/no/such/route", &auth).await;
    assert_error(&unknown, 404, "NotFound");
    assert_eq!(unknown.body["error"], "no route for /v2/no/such/route");
    let about = call(&server, Method::GET, "/v2", &auth).await;
    assert_eq!(about.body["name"], "edgeinfer");
    // Trailing and doubled slashes are the same path, and need the token as well.
    assert_error(&call(&server, Method::GET, "/v2/", &[]).await, 401, "Unauthorized");
    assert_eq!(call(&server, Method::GET, "/v2/", &auth).await.body["name"], "edgeinfer");
    let live = call(&server, Method::GET, "/v2//health/live/?x=1", &auth).await;
    assert_eq!(live.body["live"], true);
    // A path parameter axum cannot decode is a JSON error like any other.
    assert_error(&call(&server, Method::GET, "/v2/models/%FF", &auth).await, 400, "BadRequest");
}

#[tokio::test]
async fn the_api_key_guards_every_inference_route_by_one_rule() {
    const KEY: &str = "an-api-key-0123456789";
    let key = ApiKey::new(KEY.to_string(), false).unwrap();
    let server = server_with_key(true, Some(key));
    let with_key = format!("Bearer {KEY}");
    let key_header = [("authorization", with_key.as_str())];
    // Component routes (and paths nobody serves) need the key: 401 without, 403 with another.
    let missing = call(&server, Method::POST, "/embed", &[]).await;
    assert_error(&missing, 401, "Unauthorized");
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert!(missing.body["error"].as_str().unwrap().contains("the API key is required"), "{}", missing.body);
    let wrong =
        call(&server, Method::POST, "/embed", &[("authorization", "Bearer not-the-key-000000")]).await;
    assert_error(&wrong, 403, "Forbidden");
    assert_error(&call(&server, Method::POST, "/embed", &key_header).await, 404, "NotFound");
    assert_error(&call(&server, Method::POST, "/v1/embeddings", &[]).await, 401, "Unauthorized");
    // Paths that only look like the host's need the key like any other.
    for tricky in ["/health/../embed", "//embed", "/HEALTH", "/health/", "/docs/../embed", "/v2/x"] {
        let refused = call(
            &server_with_key(false, Some(ApiKey::new(KEY.to_string(), false).unwrap())),
            Method::GET,
            tricky,
            &[],
        )
        .await;
        let expected = if tricky.starts_with("/docs/") { 503 } else { 401 };
        assert_eq!(refused.status.as_u16(), expected, "{tricky}: {}", refused.body);
    }
    // The host's own routes stay open for probes and scrapers, TEI's and SageMaker's health
    // routes too (`GET /`, `GET /ping`: this app does not route them); their default task does not.
    assert_eq!(call(&server, Method::GET, "/health", &[]).await.status, StatusCode::OK);
    for health in ["/", "/ping"] {
        let ready = call(&server, Method::GET, health, &[]).await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{health} is readiness: {}", ready.body);
        assert_eq!(ready.body["models"][0]["name"], "broken");
    }
    assert_error(&call(&server, Method::POST, "/", &[]).await, 401, "Unauthorized");
    assert_error(&call(&server, Method::POST, "/invocations", &[]).await, 401, "Unauthorized");
    assert_error(&call(&server, Method::POST, "/invocations", &key_header).await, 404, "NotFound");
    assert_eq!(call(&server, Method::GET, "/metrics", &[]).await.status, StatusCode::OK);
    // KServe takes the key besides its own token, by the same rule.
    let bearer = format!("Bearer {TOKEN}");
    let live = |headers: Vec<(&'static str, String)>| {
        let server = &server;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            call(server, Method::GET, "/v2/health/live", &headers).await
        }
    };
    assert_eq!(live(vec![("authorization", with_key.clone())]).await.status, StatusCode::OK);
    assert_eq!(live(vec![("authorization", bearer)]).await.status, StatusCode::OK);
    assert_error(&live(vec![]).await, 401, "Unauthorized");
    assert_error(&live(vec![("authorization", "Bearer neither-0000000000".into())]).await, 403, "Forbidden");
    // The OpenAPI document says which operations need the key, and what they then answer.
    let openapi = call(&server, Method::GET, "/openapi.json", &[]).await.body;
    assert_eq!(openapi["components"]["securitySchemes"]["apiKey"]["scheme"], "bearer");
    let infer = &openapi["paths"]["/v2/models/{model}/infer"]["post"];
    assert_eq!(infer["security"], serde_json::json!([{"apiKey": []}]));
    assert!(infer["responses"]["403"].is_object(), "{infer}");
    let health = &openapi["paths"]["/health"]["get"];
    assert!(health.get("security").is_none(), "the host's own routes stay open: {health}");
    // With the key over the host's routes too, those need it as well.
    let covering = server_with_key(false, Some(ApiKey::new(KEY.to_string(), true).unwrap()));
    assert_error(&call(&covering, Method::GET, "/metrics", &[]).await, 401, "Unauthorized");
    assert_eq!(call(&covering, Method::GET, "/health", &key_header).await.status, StatusCode::OK);
}
