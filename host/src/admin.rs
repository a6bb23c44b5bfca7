//! The admin API, on its own listener (off unless `up --admin-listen`): what is deployed, a new
//! version of a component (upload → checksum → compose and precompile → trial instantiation →
//! atomic switch, while in-flight requests finish on the old version), and rollback. Every call
//! needs `Authorization: Bearer <token>`: 401 without one, 403 with a wrong one.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;

use crate::app::{App, ComponentSlot};
use crate::http::{constant_time_eq, error, json as json_response};

/// Largest component accepted (a composed handler with an inference engine inside is ~25 MB).
const MAX_UPLOAD_BYTES: usize = 256 << 20;

/// An upload must arrive within this.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(app: Arc<App>, token: String, listener: TcpListener) {
    let token = Arc::new(token);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                continue;
            }
        };
        let (app, token) = (app.clone(), token.clone());
        let service = hyper::service::service_fn(move |req| {
            let (app, token) = (app.clone(), token.clone());
            async move { Ok::<_, Infallible>(handle(app, &token, req, peer).await) }
        });
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("admin connection from {peer} ended: {e}");
            }
        });
    }
}

async fn handle(
    app: Arc<App>,
    token: &str,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Response<WasiBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = match authorize(&req, token) {
        Err(response) => *response,
        Ok(()) => route(app, req).await,
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), %peer, "admin");
    response
}

async fn route(app: Arc<App>, req: Request<Incoming>) -> Response<WasiBody> {
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (req.method(), parts.as_slice()) {
        (&Method::GET, ["admin", "v1", "app"]) => describe(&app),
        (&Method::PUT, ["admin", "v1", "components", id]) => {
            let id = id.to_string();
            deploy(app, &id, req).await
        }
        (&Method::POST, ["admin", "v1", "components", id, "rollback"]) => roll_back(&app, id),
        (_, ["admin", "v1", "app"]) => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET"),
        (_, ["admin", "v1", "components", _]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use PUT")
        }
        (_, ["admin", "v1", "components", _, "rollback"]) => {
            error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use POST")
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", &format!("no admin route {path}")),
    }
}

/// 401 without a bearer token, 403 with a wrong one.
fn authorize(req: &Request<Incoming>, token: &str) -> Result<(), Box<Response<WasiBody>>> {
    let given = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        None => {
            let mut response =
                error(StatusCode::UNAUTHORIZED, "Unauthorized", "an admin bearer token is required");
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
            Err(Box::new(response))
        }
        Some(given) if constant_time_eq(given, token) => Ok(()),
        Some(_) => Err(Box::new(error(StatusCode::FORBIDDEN, "Forbidden", "the admin token is not valid"))),
    }
}

/// `GET /admin/v1/app`: components (serving version, replaced versions kept, routes) and models.
fn describe(app: &App) -> Response<WasiBody> {
    let components: Vec<_> = app
        .components
        .values()
        .map(|slot| {
            let current = slot.current();
            let routes: Vec<String> = app
                .routes
                .iter()
                .filter(|r| Arc::ptr_eq(&r.component, slot))
                .map(|r| r.pattern.to_string())
                .collect();
            let previous: Vec<String> = slot.previous().iter().map(|p| p.version.clone()).collect();
            json!({"id": slot.id, "version": current.version, "routes": routes, "previous": previous})
        })
        .collect();
    let mut models: Vec<_> = app
        .registry
        .iter()
        .map(|g| json!({"name": g.name, "ready": true, "device": g.device.to_string()}))
        .collect();
    models.extend(app.registry.failures().map(|f| json!({"name": f.name, "ready": false, "error": f.error})));
    json_response(StatusCode::OK, &json!({"app": app.name, "components": components, "models": models}))
}

/// `PUT /admin/v1/components/ID?sha256=HEX` with the component's bytes as the body.
async fn deploy(app: Arc<App>, id: &str, req: Request<Incoming>) -> Response<WasiBody> {
    let Some(slot) = app.components.get(id).cloned() else {
        return unknown_component(id);
    };
    let Some(expected) = query_value(req.uri().query(), "sha256") else {
        return error(
            StatusCode::BAD_REQUEST,
            "Validation",
            "give the upload's sha256 as ?sha256=HEX, so that a damaged upload is refused",
        );
    };
    let started = Instant::now();
    let body = http_body_util::Limited::new(req.into_body(), MAX_UPLOAD_BYTES).collect();
    let bytes = match tokio::time::timeout(UPLOAD_TIMEOUT, body).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            let message = format!("components are at most {MAX_UPLOAD_BYTES} bytes");
            return error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", &message);
        }
        Ok(Err(e)) => {
            return error(StatusCode::BAD_REQUEST, "BadRequest", &format!("cannot read the upload: {e}"));
        }
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "Timeout", "the upload did not arrive in time"),
    };
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&expected) {
        let message = format!(
            "the upload's sha256 is {actual}, not {expected}: it was damaged or is not the file meant"
        );
        return error(StatusCode::BAD_REQUEST, "ChecksumMismatch", &message);
    }
    let received_ms = started.elapsed().as_millis() as u64;
    match build_and_check(&app, id, bytes).await {
        Ok(next) => {
            let validated_ms = started.elapsed().as_millis() as u64;
            let version = next.version.clone();
            if version == slot.current().version {
                return json_response(
                    StatusCode::OK,
                    &json!({"id": id, "version": version, "unchanged": true}),
                );
            }
            let replaced = slot.swap(next);
            let total_ms = started.elapsed().as_millis() as u64;
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "deployed").increment(1);
            tracing::info!(component = id, version = %&version[..12], replaced = %&replaced.version[..12], total_ms, "deployed");
            json_response(
                StatusCode::OK,
                &json!({
                    "id": id, "version": version, "replaced": replaced.version,
                    "received_ms": received_ms, "validated_ms": validated_ms, "total_ms": total_ms,
                }),
            )
        }
        Err(e) => {
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "refused").increment(1);
            tracing::warn!(component = id, "upload refused: {e:#}");
            let message = format!(
                "the upload is not a servable version of {id}; still serving {}: {e:#}",
                &slot.current().version[..12]
            );
            error(StatusCode::BAD_REQUEST, "InvalidComponent", &message)
        }
    }
}

/// Composes and compiles the upload (off the async runtime), then instantiates it once as a
/// request would: only a version that gets this far is ever switched to.
async fn build_and_check(
    app: &Arc<App>,
    id: &str,
    bytes: Bytes,
) -> anyhow::Result<crate::app::LoadedComponent> {
    let (builder_app, owned_id) = (app.clone(), id.to_string());
    let next =
        tokio::task::spawn_blocking(move || builder_app.builder.build(&owned_id, bytes.to_vec())).await??;
    let handler = next.handler.state();
    let mut store = handler.spec.new_store(&handler.engine)?;
    handler
        .pre
        .instantiate_async(&mut store)
        .await
        .map_err(|e| anyhow::anyhow!("it cannot be instantiated: {e:#}"))?;
    Ok(next)
}

/// `POST /admin/v1/components/ID/rollback`: the version before the current one serves again.
fn roll_back(app: &App, id: &str) -> Response<WasiBody> {
    let Some(slot) = app.components.get(id) else { return unknown_component(id) };
    match ComponentSlot::roll_back(slot) {
        Some((restored, replaced)) => {
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "rolled_back").increment(1);
            tracing::info!(component = id, version = %&restored.version[..12], replaced = %&replaced.version[..12], "rolled back");
            json_response(
                StatusCode::OK,
                &json!({"id": id, "version": restored.version, "replaced": replaced.version}),
            )
        }
        None => error(
            StatusCode::CONFLICT,
            "NoPreviousVersion",
            &format!("{id} has no earlier version to roll back to"),
        ),
    }
}

fn unknown_component(id: &str) -> Response<WasiBody> {
    error(StatusCode::NOT_FOUND, "ComponentNotFound", &format!("the app has no routed component {id:?}"))
}

/// The value of `name` in a URL query string (no percent-decoding: values here are hex).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_string)
}
