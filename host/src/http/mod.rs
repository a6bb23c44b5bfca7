//! HTTP serving: accept connections, answer host routes (`/health`, `/ready`), route everything
//! else by spin.toml to a component's `ProxyHandler`, and map host-side failures to JSON errors.

mod kserve;
mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::handler::{ExpirationError, InstantiationError};

use crate::app::{App, LoadedComponent};
use crate::runtime_config::KserveConfig;

/// Shared by all connections.
struct Server {
    app: Arc<App>,
    /// The KServe v2 API, when enabled, and its bearer token if one is required.
    kserve: Option<(KserveConfig, Option<String>)>,
    next_request_id: AtomicU64,
    /// Distinguishes generated request ids across restarts.
    boot: u64,
}

/// Header carrying the request id, from the client or generated, to the component and back.
const REQUEST_ID: &str = "x-request-id";

/// A client's request id, if it is one we can log and echo safely.
fn client_request_id(req: &Request<Incoming>) -> Option<String> {
    let value = req.headers().get(REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| value.to_string())
}

/// Request headers larger than this are refused with 431; more than 100 headers are refused by
/// hyper (431, no body). hyper's read buffer is capped at the same size as a backstop.
const MAX_HEADER_BYTES: usize = 64 << 10;

/// A client must send its whole request head within this (slow-header attacks).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a drain waits for in-flight requests before giving up on them.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` resolves, then drains: no new connections, idle
/// keep-alive connections closed, in-flight requests finished (up to 30 s).
pub async fn serve(
    app: Arc<App>,
    kserve: Option<(KserveConfig, Option<String>)>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let boot = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let server = Arc::new(Server { app, kserve, next_request_id: AtomicU64::new(0), boot });
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
        });
        let connection = http1::Builder::new()
            .keep_alive(true)
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .serve_connection(TokioIo::new(stream), service);
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection from {peer} ended: {e}");
            }
        });
    }
    drop(listener);
    tracing::info!(open_connections = connections.count(), "shutting down: draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.shutdown()).await.is_err() {
        tracing::warn!("drain timed out after {} s; closing what is left", DRAIN_TIMEOUT.as_secs());
    }
    Ok(())
}

impl Server {
    async fn handle(&self, mut req: Request<Incoming>, peer: SocketAddr) -> Response<WasiBody> {
        let started = std::time::Instant::now();
        let number = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let request_id = client_request_id(&req).unwrap_or_else(|| format!("{:x}-{number:x}", self.boot));
        let request_id_header = http::HeaderValue::from_str(&request_id).expect("visible ASCII");
        req.headers_mut().insert(REQUEST_ID, request_id_header.clone());
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let kserve_route = self.kserve.is_some() && (path == kserve::PREFIX || path.starts_with("/v2/"));
        let host_route = matches!(path.as_str(), "/health" | "/ready" | "/metrics");
        let matched = if host_route || kserve_route { None } else { self.app.route_of(&path) };
        let (route, component) = match matched {
            _ if kserve_route => (kserve::route_of(&path).to_string(), "host".to_string()),
            _ if host_route => (path.clone(), "host".to_string()),
            Some(route) => (route.pattern.to_string(), route.component.id.clone()),
            None => ("unmatched".to_string(), "none".to_string()),
        };
        let head_bytes: usize = req.headers().iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        let mut response = match (req.method(), path.as_str()) {
            _ if head_bytes > MAX_HEADER_BYTES => error(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HeadersTooLarge",
                &format!("request headers are over the limit of {MAX_HEADER_BYTES} bytes"),
            ),
            _ if kserve_route => {
                let (config, token) = self.kserve.as_ref().expect("kserve_route implies kserve");
                kserve::handle(&self.app, config, token.as_deref(), req).await
            }
            (&Method::GET, "/health") => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
            (&Method::GET, "/ready") => status::ready(&self.app),
            (&Method::GET, "/metrics") => metrics_text(),
            _ if host_route => error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET"),
            _ => match matched {
                Some(route) => self.to_component(req, &route.component, number).await,
                None => error(StatusCode::NOT_FOUND, "NotFound", &format!("no route for {path}")),
            },
        };
        let status = response.status().as_u16().to_string();
        metrics::counter!("edgeinfer_requests_total", "route" => route.clone(), "component" => component.clone(), "status" => status)
            .increment(1);
        metrics::histogram!("edgeinfer_request_duration_seconds", "route" => route.clone(), "component" => component.clone())
            .record(started.elapsed());
        let version = matched.map_or("-", |r| &r.component.version[..12]);
        tracing::info!(
            request_id,
            %method,
            %path,
            route,
            component,
            version,
            status = response.status().as_u16(),
            us = started.elapsed().as_micros() as u64,
            %peer,
            "request"
        );
        response.headers_mut().insert(REQUEST_ID, request_id_header);
        response
    }

    async fn to_component(
        &self,
        req: Request<Incoming>,
        component: &LoadedComponent,
        request_id: u64,
    ) -> Response<WasiBody> {
        let req = match limit_body(req, component.limits.max_request_body_bytes).await {
            Ok(req) => req,
            Err(response) => return response,
        };
        // The host's own clock: a guest spinning in a loop starves the store's event loop, so the
        // handler's timeout may not fire; the epoch interrupt then stops the guest.
        let deadline = std::time::Duration::from_millis(component.limits.request_timeout_ms);
        let handled = async {
            let _slot = component.admission.admit().await?;
            Some(component.handler.handle(request_id, req).await)
        };
        let Ok(result) = tokio::time::timeout(deadline, handled).await else {
            tracing::warn!(component = %component.id, request_id, "request timed out");
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                &format!("component {} did not answer within {} ms", component.id, deadline.as_millis()),
            );
        };
        let Some(result) = result else {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Overloaded",
                &format!("component {} is at its concurrency limit; retry shortly", component.id),
            );
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            return response;
        };
        match result {
            Ok(response) => response,
            Err(e) => {
                let (status, error_type) = if e.is::<ExpirationError>() {
                    (StatusCode::GATEWAY_TIMEOUT, "Timeout")
                } else if e.is::<InstantiationError<u64>>() {
                    (StatusCode::INTERNAL_SERVER_ERROR, "InstantiationFailed")
                } else {
                    // Traps, panics and errors the guest returned instead of a response.
                    (StatusCode::INTERNAL_SERVER_ERROR, "ComponentFault")
                };
                tracing::warn!(component = %component.id, request_id, "component failed: {e:?}");
                error(status, error_type, &format!("component {} failed to answer: {e}", component.id))
            }
        }
    }
}

/// Applies the component's body limit: a declared length over it is refused (after draining what
/// the client sends, bounded); a body of unknown length (chunked) is read up to the limit and
/// handed on whole.
async fn limit_body(req: Request<Incoming>, limit: u64) -> Result<Request<WasiBody>, Response<WasiBody>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            &format!("request body is over the limit of {limit} bytes"),
        )
    };
    let declared =
        req.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => {
            // Read (and drop) what the client is sending, bounded, so it can read the 413.
            let _ = read_limited(req.into_body(), limit).await;
            Err(too_large())
        }
        // hyper holds a body to its declared length.
        Some(_) => Ok(req.map(|body| body.map_err(|e| e.into()).boxed_unsync())),
        None => {
            let (parts, body) = req.into_parts();
            match read_limited(body, limit).await {
                Ok(BodyRead::Fits(bytes)) => Ok(Request::from_parts(parts, full_body(bytes))),
                Ok(BodyRead::TooLarge) => Err(too_large()),
                Ok(BodyRead::TimedOut) => Err(error(
                    StatusCode::REQUEST_TIMEOUT,
                    "Timeout",
                    "the request body did not arrive in time",
                )),
                Err(e) => Err(error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("cannot read the request body: {e}"),
                )),
            }
        }
    }
}

/// How reading a body of unknown length ended.
enum BodyRead {
    Fits(Bytes),
    TooLarge,
    TimedOut,
}

/// Reads a body of unknown length up to `limit`, within 10 s. Past the limit the rest is read and
/// discarded (at most 8 x the limit), so that a client still sending gets the 413 instead of a
/// reset connection.
async fn read_limited(mut body: Incoming, limit: u64) -> Result<BodyRead, hyper::Error> {
    let mut kept = bytes::BytesMut::new();
    let mut total: u64 = 0;
    let discard_cap = limit.saturating_mul(8);
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                total += data.len() as u64;
                if total <= limit {
                    kept.extend_from_slice(data);
                } else if total > discard_cap {
                    break;
                }
            }
        }
        Ok::<_, hyper::Error>(())
    };
    let finished = tokio::time::timeout(std::time::Duration::from_secs(10), read).await;
    Ok(match finished {
        Ok(result) => {
            result?;
            if total <= limit { BodyRead::Fits(kept.freeze()) } else { BodyRead::TooLarge }
        }
        Err(_) if total > limit => BodyRead::TooLarge,
        Err(_) => BodyRead::TimedOut,
    })
}

/// A complete in-memory body.
fn full_body(bytes: Bytes) -> WasiBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<WasiBody> {
    let body = full_body(Bytes::from(value.to_string()));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body)
        .expect("static response parts are valid")
}

/// Prometheus text exposition.
fn metrics_text() -> Response<WasiBody> {
    let body = full_body(Bytes::from(crate::telemetry::render()));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain; version=0.0.4")
        .body(body)
        .expect("static response parts are valid")
}

/// The API's error shape: `{"error", "error_type"}`; host-side errors are counted by type.
pub(crate) fn error(status: StatusCode, error_type: &str, message: &str) -> Response<WasiBody> {
    metrics::counter!("edgeinfer_host_errors_total", "error_type" => error_type.to_string()).increment(1);
    json(status, &serde_json::json!({"error": message, "error_type": error_type}))
}
