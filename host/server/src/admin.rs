//! The admin API, on its own listener (off unless `up --admin-listen`): what is deployed, a new
//! version of a component (upload → checksum → compose and precompile → trial instantiation →
//! atomic switch, while in-flight requests finish on the old version, or a canary on a share of
//! the traffic), promote, abort, and rollback; a model reloaded from its file (or another) and
//! switched to when loaded, while inference goes on. Every call needs `Authorization: Bearer <token>`
//! (`auth`'s rule: 401 without one, 403 with a wrong one); with `--admin-client-ca`, a client
//! certificate chained to that CA as well, checked in the TLS handshake. Every action is audited:
//! one `audit` log line (who, what, digest, outcome) and a count in
//! `edgeinfer_admin_actions_total`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::{get, post, put};
use futures::future::BoxFuture;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::json;
use tower::ServiceExt;
use wasmtime_wasi_http::WasiBody;

use crate::error::HostError;
use crate::listener::{Http1Options, Listener};
use crate::observe::{ObserveLayer, Surface};
use crate::response::{Answer, json as json_response};
use crate::served::Served;
use edgeinfer_engine::registry::{ReloadError, ReloadRequest};
use edgeinfer_runtime::app::App;
use edgeinfer_runtime::rollout::{Canary, CanaryMode, Stickiness};
use edgeinfer_runtime::state::SourceOrigin;
use hyper_util::service::TowerToHyperService;

/// Largest component accepted (a composed handler with an inference engine inside is ~25 MB).
const MAX_UPLOAD_BYTES: u64 = 256 << 20;

/// An upload must arrive within this.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// A refused call's body is read off up to this size and time, no more (see `handle`).
const REFUSED_DRAIN_BYTES: u64 = 8 << 20;
const REFUSED_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin token: the contents of `file` (trimmed) if given, else `$EDGEINFER_ADMIN_TOKEN`.
pub fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    use anyhow::Context;
    match file {
        Some(path) => Ok(std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?
            .trim()
            .to_string()),
        None => std::env::var("EDGEINFER_ADMIN_TOKEN").context(
            "no admin token: give --admin-token-file FILE (or --token-file) or set $EDGEINFER_ADMIN_TOKEN",
        ),
    }
}

/// What the admin API fetches from elsewhere: components from registries, model files by URL. The
/// host binary gives its registry client and downloader; the server knows no OCI, S3 or HTTP client.
pub trait Fetch: Send + Sync {
    /// Component `component`'s Wasm from the app artifact `reference` (which names a digest), its
    /// bytes verified.
    fn component(
        &self,
        reference: String,
        component: String,
    ) -> BoxFuture<'static, Result<Vec<u8>, FetchError>>;
    /// The file at `url` (`https://`, `s3://`, `oci://`) of the pinned `sha256`, in the cache and
    /// verified: its path.
    fn file(&self, url: String, sha256: String) -> BoxFuture<'static, anyhow::Result<std::path::PathBuf>>;
}

/// Why a component could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The request names what cannot be served (a tag, a missing component): 400.
    #[error("{0}")]
    Invalid(String),
    /// No trusted key signed the artifact: 400 `SignatureRejected`.
    #[error("{0}")]
    Untrusted(String),
    /// The registry refused or could not be reached: 502.
    #[error("{0:#}")]
    Registry(anyhow::Error),
}

/// What the admin API may fetch from elsewhere and what it trusts; each call that needs a missing
/// source is refused.
#[derive(Clone, Default)]
pub struct Sources {
    /// Components by registry reference (`POST /admin/v1/components/ID/pull`) and model files by
    /// URL (`POST /admin/v1/models/NAME/reload` with `url`).
    pub fetch: Option<Arc<dyn Fetch>>,
    /// The keys an uploaded component's detached signature (`x-edgeinfer-signature`) must verify
    /// with; pulls by reference are checked by the fetcher. `None`: nothing checked.
    pub trusted: Option<Arc<edgeinfer_trust::TrustedKeys>>,
}

/// The request header carrying an upload's detached signature: base64 of the DER ECDSA P-256
/// signature over the component's bytes, as `cosign sign-blob` and `edgeinfer sign` write it.
pub const SIGNATURE_HEADER: &str = "x-edgeinfer-signature";

/// How long a drain of the admin listener waits for calls in flight (an upload being installed).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves the admin API on `listener` until `shutdown` resolves, then lets calls in flight finish.
pub async fn serve(
    app: Arc<App>,
    token: String,
    listener: Listener,
    sources: Sources,
    shutdown: impl Future<Output = ()>,
) {
    let (router, token): (Router, Arc<str>) = (router(app, sources), token.into());
    let http1 = Http1Options { header_read_timeout: Duration::from_secs(10), max_buf_size: None };
    let observe = ObserveLayer::new(Surface {
        listener: "admin",
        provisional: Box::new(|_| Served::admin("unmatched")),
        outcome: crate::observe::http_outcome,
        log_inputs: false,
        span_name: crate::observe::http_span_name,
    });
    crate::listener::run(listener, shutdown, DRAIN_TIMEOUT, move |connection, watcher| {
        let (router, token) = (router.clone(), token.clone());
        let who = Caller {
            peer: connection.peer,
            certificate: connection.client_certificate().map(|c| subject(&c)),
        };
        let who_peer = who.peer;
        let who = Arc::new(who);
        let service = tower::service_fn(move |req| {
            let (router, token, who) = (router.clone(), token.clone(), who.clone());
            async move { Ok::<_, Infallible>(handle(router, &token, req, &who).await) }
        });
        let service = TowerToHyperService::new(observe.for_connection(who_peer, service));
        crate::listener::serve_http(connection, watcher, http1, service)
    })
    .await;
}

/// Who is calling: the connection's peer and, over mTLS, its certificate's subject.
struct Caller {
    peer: std::net::SocketAddr,
    certificate: Option<String>,
}

/// A client certificate's subject (`CN=..., O=...`), or its sha256 when it cannot be read.
fn subject(certificate: &rustls::pki_types::CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(certificate) {
        Ok((_, parsed)) => parsed.subject().to_string(),
        Err(_) => format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(certificate))),
    }
}

/// Every call is authorized first (whatever its path) and routed; calls that change something
/// are audited (`observe` logs and counts every call). Generic over the body so that tests can call it without a connection.
async fn handle<B>(router: Router, token: &str, req: Request<B>, who: &Caller) -> AxumResponse
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let sent_sha256 = query_value(req.uri().query(), "sha256");
    let authorized = crate::auth::check(req.headers(), [token]);
    let response = match authorized {
        Err(refusal) => {
            // A small upload sent without the token is still arriving: read it off (briefly) so
            // that the client gets the 401/403 instead of a broken pipe; the connection closes
            // after the answer either way.
            crate::body::drain_refused(req, REFUSED_DRAIN_BYTES, REFUSED_DRAIN_TIMEOUT).await;
            let mut response = Answer(refusal.answer("the admin token")).into_response();
            response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            response
        }
        Ok(()) => {
            let routed = router.oneshot(req.map(axum::body::Body::new)).await;
            crate::error::json_rejection(routed.unwrap_or_else(|never| match never {})).await
        }
    };
    if method == http::Method::GET {
        return response;
    }
    audit(response, &path, authorized.is_ok(), sent_sha256, who).await
}

/// The action a call's path names, for the audit (`push`, `pull`, `promote`, `model-reload`...).
fn action_of(path: &str) -> (&'static str, Option<&str>) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["admin", "v1", "components", id] => ("push", Some(id)),
        ["admin", "v1", "components", id, "pull"] => ("pull", Some(id)),
        ["admin", "v1", "components", id, "rollback"] => ("rollback", Some(id)),
        ["admin", "v1", "components", id, "promote"] => ("promote", Some(id)),
        ["admin", "v1", "components", id, "abort"] => ("abort", Some(id)),
        ["admin", "v1", "models", name, "reload"] => ("model-reload", Some(name)),
        _ => ("unknown", None),
    }
}

/// Admin answers are small JSON; an audit reads at most this much of one.
const AUDITED_BODY_BYTES: usize = 64 << 10;

/// One `audit` log line and one count per action: who (certificate subject, or the token when
/// there is no certificate), what, on which component or model, the digest involved (what the
/// host now serves, else what was sent) and the outcome.
async fn audit(
    response: AxumResponse,
    path: &str,
    authorized: bool,
    sent_sha256: Option<String>,
    who: &Caller,
) -> AxumResponse {
    let (parts, body) = response.into_parts();
    // Only a small body of known length is read for the digest; any other passes untouched.
    let small = http_body::Body::size_hint(&body).exact().is_some_and(|n| n <= AUDITED_BODY_BYTES as u64);
    let (body, answer) = if small {
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let answer = serde_json::from_slice(&bytes).unwrap_or_default();
                (axum::body::Body::from(bytes), answer)
            }
            Err(_) => (axum::body::Body::empty(), serde_json::Value::Null),
        }
    } else {
        (body, serde_json::Value::Null)
    };
    let digest = ["version", "sha256"]
        .iter()
        .find_map(|field| answer[*field].as_str().map(str::to_string))
        .or(sent_sha256);
    let (action, target) = action_of(path);
    let status = parts.status.as_u16();
    let outcome = match (authorized, status) {
        (false, _) => "refused",
        (true, 200..=299) => "ok",
        (true, _) => "failed",
    };
    let caller = match (&who.certificate, authorized) {
        (Some(subject), _) => subject.clone(),
        (None, true) => "admin-token".to_string(),
        (None, false) => "unauthenticated".to_string(),
    };
    tracing::info!(
        target: "edgeinfer::audit",
        who = caller,
        peer = %who.peer,
        action,
        on = target.unwrap_or("-"),
        digest = digest.as_deref().unwrap_or("-"),
        status,
        outcome,
        error_type = answer["error_type"].as_str(),
        "audit"
    );
    metrics::counter!("edgeinfer_admin_actions_total", "action" => action, "outcome" => outcome).increment(1);
    AxumResponse::from_parts(parts, body)
}

/// The admin routes; a known path with another method is 405, an unknown path 404 (JSON both).
fn router(app: Arc<App>, sources: Sources) -> Router {
    let (fetcher, file_fetcher, trusted) = (sources.fetch.clone(), sources.fetch, sources.trusted);
    // The component fetcher checks artifact signatures whenever the host has trusted keys.
    let pulls_verified = trusted.is_some();
    let refuse =
        |allowed: &'static str| move || async move { Answer(crate::error::method_not_allowed(allowed)) };
    Router::new()
        .route("/admin/v1/app", get(describe).fallback(refuse("GET")))
        .route(
            "/admin/v1/components/{id}",
            put(move |state, path, req| deploy(state, path, trusted.clone(), req)).fallback(refuse("PUT")),
        )
        .route(
            "/admin/v1/components/{id}/pull",
            post(move |state, path, req| pull(state, path, fetcher.clone(), pulls_verified, req))
                .fallback(refuse("POST")),
        )
        .route("/admin/v1/components/{id}/rollback", post(roll_back).fallback(refuse("POST")))
        .route("/admin/v1/components/{id}/promote", post(promote).fallback(refuse("POST")))
        .route("/admin/v1/components/{id}/abort", post(abort).fallback(refuse("POST")))
        .route(
            "/admin/v1/models/{name}/reload",
            post(move |state, path, req| reload_model(state, path, file_fetcher.clone(), req))
                .fallback(refuse("POST")),
        )
        .fallback(|uri: Uri| async move {
            Answer(HostError::NotFound.answer(format!("no admin route {}", uri.path())))
        })
        // Around the method routers' fallbacks too (a 405 is its route's), not the 404 fallback.
        .layer(axum::middleware::from_fn(label_route))
        .with_state(app)
}

/// Labels an admin answer by its route's pattern (e.g. `/admin/v1/components/{id}/pull`); an
/// unknown path stays `unmatched`.
async fn label_route(
    matched: Option<axum::extract::MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> AxumResponse {
    let route = matched.map(|matched| Served::admin(matched.as_str()));
    let mut response = next.run(req).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// `GET /admin/v1/app`: components (serving version, replaced versions kept, routes) and models.
async fn describe(State(app): State<Arc<App>>) -> Answer {
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
            let canary = slot.canary().map(|c| {
                json!({
                    "version": c.version.version, "percent": c.percent,
                    "mode": match c.mode { CanaryMode::Split => "split", CanaryMode::Shadow => "shadow" },
                    "sticky": match &c.sticky {
                        Stickiness::None => "none".to_string(),
                        Stickiness::Client => "client".to_string(),
                        Stickiness::Header(name) => format!("header:{name}"),
                    },
                })
            });
            json!({"id": slot.id, "version": current.version, "routes": routes, "previous": previous, "canary": canary})
        })
        .collect();
    let mut models: Vec<_> = app.registry.graphs().iter().map(|g| crate::status::describe(g)).collect();
    models.extend(
        app.registry.failures().iter().map(|f| json!({"name": f.name, "ready": false, "error": f.error})),
    );
    Answer(json_response(
        StatusCode::OK,
        &json!({"app": app.name, "components": components, "models": models}),
    ))
}

/// `PUT /admin/v1/components/ID?sha256=HEX` with the component's bytes as the body.
async fn deploy(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    trusted: Option<Arc<edgeinfer_trust::TrustedKeys>>,
    req: axum::extract::Request,
) -> Answer {
    Answer(deploy_version(app, &id, trusted.as_deref(), req).await)
}

async fn deploy_version(
    app: Arc<App>,
    id: &str,
    trusted: Option<&edgeinfer_trust::TrustedKeys>,
    req: axum::extract::Request,
) -> Response<WasiBody> {
    let Some(slot) = app.components.get(id).cloned() else {
        return unknown_component(id);
    };
    let canary = match canary_request(req.uri().query()) {
        Ok(canary) => canary,
        Err(message) => return HostError::Validation.answer(&message),
    };
    let Some(expected) = query_value(req.uri().query(), "sha256") else {
        return HostError::Validation
            .answer("give the upload's sha256 as ?sha256=HEX, so that a damaged upload is refused");
    };
    let signature = req.headers().get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let started = Instant::now();
    let bytes = match crate::body::read(req, MAX_UPLOAD_BYTES, UPLOAD_TIMEOUT).await {
        Ok((_, bytes)) => bytes,
        Err(refused) => return refused,
    };
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if !actual.eq_ignore_ascii_case(&expected) {
        let message = format!(
            "the upload's sha256 is {actual}, not {expected}: it was damaged or is not the file meant"
        );
        return HostError::ChecksumMismatch.answer(&message);
    }
    // Before anything is compiled: a host with trusted keys runs only what they signed.
    if let Some(trusted) = trusted {
        match trusted.verify(&bytes, signature.as_deref()) {
            Ok(key) => tracing::info!(component = id, sha256 = %actual, key, "upload signature verified"),
            Err(e) => {
                return HostError::SignatureRejected.answer(format!(
                    "component {id}, upload sha256:{actual}: {e}; the old version still serves"
                ));
            }
        }
    }
    let received_ms = started.elapsed().as_millis() as u64;
    let origin = SourceOrigin { signature, reference: None, verified: false };
    install(&app, &slot, id, bytes.to_vec(), origin, canary, started, received_ms, json!({})).await
}

/// `POST /admin/v1/components/ID/pull` with `{"reference": "host/repo@sha256:...", "component":
/// "ID in the artifact" (default: ID)}`: the host fetches the component's Wasm from the registry
/// itself (verified by digest) and installs it as an upload, canary query included.
async fn pull(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    fetcher: Option<Arc<dyn Fetch>>,
    verified: bool,
    req: axum::extract::Request,
) -> Answer {
    Answer(pull_version(app, &id, fetcher, verified, req).await)
}

async fn pull_version(
    app: Arc<App>,
    id: &str,
    fetcher: Option<Arc<dyn Fetch>>,
    verified: bool,
    req: axum::extract::Request,
) -> Response<WasiBody> {
    let Some(slot) = app.components.get(id).cloned() else {
        return unknown_component(id);
    };
    let canary = match canary_request(req.uri().query()) {
        Ok(canary) => canary,
        Err(message) => return HostError::Validation.answer(&message),
    };
    let started = Instant::now();
    let body = match crate::body::read(req, 64 << 10, crate::body::READ_TIMEOUT).await {
        Ok((_, bytes)) => bytes,
        Err(refused) => return refused,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PullRequest {
        reference: String,
        #[serde(default)]
        component: Option<String>,
    }
    let request: PullRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return HostError::Validation.answer(format!(
                "expected {{\"reference\": \"host/repo@sha256:...\", \"component\"?}}: {e}"
            ));
        }
    };
    let Some(fetcher) = fetcher else {
        return HostError::NotFound.answer("this host pulls no components from registries");
    };
    let component = request.component.unwrap_or_else(|| id.to_string());
    let bytes = match fetcher.component(request.reference.clone(), component.clone()).await {
        Ok(bytes) => bytes,
        Err(e) => {
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "refused").increment(1);
            let (error, reason) = match e {
                FetchError::Invalid(reason) => (HostError::Validation, reason),
                FetchError::Untrusted(reason) => (HostError::SignatureRejected, reason),
                FetchError::Registry(e) => (HostError::Registry, format!("{e:#}")),
            };
            tracing::warn!(component = id, reference = %request.reference, "pull refused: {reason}");
            let message = format!(
                "cannot pull {component} from {}; still serving {}: {reason}",
                request.reference,
                &slot.current().version[..12]
            );
            return error.answer(&message);
        }
    };
    let received_ms = started.elapsed().as_millis() as u64;
    let pulled = json!({"reference": request.reference, "pulled_bytes": bytes.len()});
    let origin = SourceOrigin { signature: None, reference: Some(request.reference), verified };
    install(&app, &slot, id, bytes, origin, canary, started, received_ms, pulled).await
}

/// Installs new bytes of component `id` (an upload or a pull): kept in the state directory,
/// composed, compiled and instantiated on trial, then switched to, or set as a canary, and the
/// state saved. `extra` joins the answer.
#[allow(clippy::too_many_arguments)]
async fn install(
    app: &Arc<App>,
    slot: &Arc<edgeinfer_runtime::rollout::ComponentSlot>,
    id: &str,
    bytes: Vec<u8>,
    origin: SourceOrigin,
    canary: Option<(f64, CanaryMode, Stickiness)>,
    started: Instant,
    received_ms: u64,
    extra: serde_json::Value,
) -> Response<WasiBody> {
    let with = |mut answer: serde_json::Value| {
        if let (Some(answer), Some(extra)) = (answer.as_object_mut(), extra.as_object()) {
            answer.extend(extra.clone());
        }
        answer
    };
    // The bytes are on disk before any state names them.
    let (bytes, kept_sha256) = match &app.state {
        Some(state) => {
            let state = state.clone();
            let kept = tokio::task::spawn_blocking(move || {
                state.keep_source(&bytes, origin).map(|sha| (bytes, Some(sha)))
            })
            .await;
            match kept {
                Ok(Ok(kept)) => kept,
                Ok(Err(e)) => return cannot_keep(id, &e),
                Err(e) => return cannot_keep(id, &anyhow::anyhow!("{e}")),
            }
        }
        None => (bytes, None),
    };
    match app.prepare(id, bytes).await {
        Ok(next) => {
            let validated_ms = started.elapsed().as_millis() as u64;
            let version = next.version.clone();
            let _change = hold_changes(app).await;
            if version == slot.current().version {
                // Saved too: the call that set it may have answered StateNotSaved.
                if let Err(refused) = persist(app, id).await {
                    return refused;
                }
                return json_response(
                    StatusCode::OK,
                    &with(json!({"id": id, "version": version, "unchanged": true})),
                );
            }
            if let Some((percent, mode, sticky)) = canary {
                slot.set_canary(Canary::new(Arc::new(next), percent, mode, sticky));
                if let Err(refused) = persist(app, id).await {
                    return refused;
                }
                metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "canary").increment(1);
                tracing::info!(component = id, version = %&version[..12], percent, ?mode, "canary set");
                return json_response(
                    StatusCode::OK,
                    &with(json!({
                        "id": id, "canary": version, "percent": percent, "stable": slot.current().version,
                        "received_ms": received_ms, "validated_ms": validated_ms,
                    })),
                );
            }
            let replaced = slot.swap(Arc::new(next));
            if let Err(refused) = persist(app, id).await {
                return refused;
            }
            let total_ms = started.elapsed().as_millis() as u64;
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "deployed").increment(1);
            tracing::info!(component = id, version = %&version[..12], replaced = %&replaced.version[..12], total_ms, "deployed");
            json_response(
                StatusCode::OK,
                &with(json!({
                    "id": id, "version": version, "replaced": replaced.version,
                    "received_ms": received_ms, "validated_ms": validated_ms, "total_ms": total_ms,
                })),
            )
        }
        Err(e) => {
            if let (Some(state), Some(sha256)) = (&app.state, &kept_sha256) {
                state.discard_source(sha256);
            }
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "refused").increment(1);
            tracing::warn!(component = id, "upload refused: {e:#}");
            let message = format!(
                "the upload is not a servable version of {id}; still serving {}: {e:#}",
                &slot.current().version[..12]
            );
            HostError::InvalidComponent.answer(&message)
        }
    }
}

/// `POST /admin/v1/components/ID/rollback`: the version before the current one serves again.
async fn roll_back(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = id.as_str();
    let Some(slot) = app.components.get(id) else { return Answer(unknown_component(id)) };
    let _change = hold_changes(&app).await;
    Answer(match slot.roll_back() {
        Some((restored, replaced)) => {
            if let Err(refused) = persist(&app, id).await {
                return Answer(refused);
            }
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "rolled_back").increment(1);
            tracing::info!(component = id, version = %&restored.version[..12], replaced = %&replaced.version[..12], "rolled back");
            json_response(
                StatusCode::OK,
                &json!({"id": id, "version": restored.version, "replaced": replaced.version}),
            )
        }
        None => HostError::NoPreviousVersion.answer(format!("{id} has no earlier version to roll back to")),
    })
}

/// `POST /admin/v1/components/ID/promote`: the canary becomes the stable version.
async fn promote(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = id.as_str();
    let Some(slot) = app.components.get(id) else { return Answer(unknown_component(id)) };
    let _change = hold_changes(&app).await;
    Answer(match slot.promote() {
        Some((promoted, replaced)) => {
            if let Err(refused) = persist(&app, id).await {
                return Answer(refused);
            }
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "promoted").increment(1);
            tracing::info!(component = id, version = %&promoted.version[..12], "canary promoted");
            json_response(
                StatusCode::OK,
                &json!({"id": id, "version": promoted.version, "replaced": replaced.version}),
            )
        }
        None => no_canary(id),
    })
}

/// `POST /admin/v1/models/NAME/reload`, with an optional JSON body `{"path", "sha256"}` or
/// `{"url", "sha256"}`: loads the model (fetched first, for a url) beside the serving graph and
/// switches when it is ready.
async fn reload_model(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    fetcher: Option<Arc<dyn Fetch>>,
    req: axum::extract::Request,
) -> Answer {
    Answer(reload(app, &name, fetcher, req).await)
}

/// The reload call's body.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    path: Option<String>,
    url: Option<String>,
    sha256: Option<String>,
}

async fn reload(
    app: Arc<App>,
    name: &str,
    fetcher: Option<Arc<dyn Fetch>>,
    req: axum::extract::Request,
) -> Response<WasiBody> {
    let body = match crate::body::read(req, 64 << 10, crate::body::READ_TIMEOUT).await {
        Ok((_, bytes)) => bytes,
        Err(refused) => return refused,
    };
    let body: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                let message = format!("the body is not {{\"path\" or \"url\", \"sha256\"}}: {e}");
                return HostError::Validation.answer(&message);
            }
        }
    };
    let started = Instant::now();
    let request = match (body.path, body.url, body.sha256) {
        (Some(_), Some(_), _) => return HostError::Validation.answer("give path or url, not both"),
        (_, Some(_), None) => {
            return HostError::Validation
                .answer("a url needs its sha256: what is fetched is checked against it");
        }
        (None, Some(url), Some(sha256)) => {
            let sha256 = sha256.to_ascii_lowercase();
            if let Err(e) = edgeinfer_config::runtime_config::check_sha256(&sha256) {
                return HostError::Validation.answer(format!("{e:#}"));
            }
            if !edgeinfer_config::runtime_config::is_asset_url(&url) {
                return HostError::Validation.answer("url must be https://, http://, s3:// or oci://");
            }
            if app.registry.slot(name).is_none() {
                return HostError::ModelNotFound.answer(format!("no model {name:?} here"));
            }
            let Some(fetcher) = fetcher else {
                return HostError::NotFound.answer("this host fetches no model files by url");
            };
            // A presigned URL's query carries credentials: never logged or answered.
            let shown = url.split('?').next().unwrap_or_default().to_string();
            tracing::info!(model = name, url = %shown, "fetching the model to reload");
            match fetcher.file(url.clone(), sha256.clone()).await {
                Ok(path) => ReloadRequest { path: Some(path.display().to_string()), sha256: Some(sha256) },
                Err(e) => {
                    metrics::counter!("edgeinfer_model_reloads_total", "model" => name.to_string(), "outcome" => "refused").increment(1);
                    let reason = format!("{e:#}").replace(url.as_str(), &shown);
                    return HostError::InvalidModel
                        .answer(format!("cannot fetch {shown}: {reason}; the model serves as before"));
                }
            }
        }
        (path, None, sha256) => ReloadRequest { path, sha256 },
    };
    tracing::info!(model = name, path = ?request.path, "reloading model");
    match app.registry.reload(name, request).await {
        Ok((loaded, replaced)) => {
            let _change = hold_changes(&app).await;
            if let Some(state) = &app.state {
                state.model_reloaded(name, &loaded.path, &loaded.sha256, &app.builder.manifest().dir);
            }
            if let Err(refused) = persist(&app, name).await {
                return refused;
            }
            let load_ms = started.elapsed().as_millis() as u64;
            metrics::counter!("edgeinfer_model_reloads_total", "model" => name.to_string(), "outcome" => "reloaded").increment(1);
            tracing::info!(model = name, sha256 = %&loaded.sha256[..12], load_ms, "model reloaded");
            json_response(
                StatusCode::OK,
                &json!({
                    "name": name, "sha256": loaded.sha256, "path": loaded.path,
                    "replaced": replaced.map(|r| r.sha256.clone()), "load_ms": load_ms,
                }),
            )
        }
        Err(e) => {
            let error = match &e {
                ReloadError::UnknownModel(_) => HostError::ModelNotFound,
                ReloadError::InProgress(_) => HostError::ReloadInProgress,
                ReloadError::Invalid(_) => HostError::InvalidModel,
                ReloadError::Incompatible(_) => HostError::IncompatibleModel,
            };
            let refused = matches!(error, HostError::InvalidModel | HostError::IncompatibleModel);
            if refused {
                metrics::counter!("edgeinfer_model_reloads_total", "model" => name.to_string(), "outcome" => "refused").increment(1);
                tracing::warn!(model = name, "model reload refused: {e}");
            }
            let message = if refused { format!("{e}; the model serves as before") } else { e.to_string() };
            error.answer(message)
        }
    }
}

/// `POST /admin/v1/components/ID/abort`: the canary is dropped; the stable version takes all
/// traffic again.
async fn abort(State(app): State<Arc<App>>, Path(id): Path<String>) -> Answer {
    let id = id.as_str();
    let Some(slot) = app.components.get(id) else { return Answer(unknown_component(id)) };
    let _change = hold_changes(&app).await;
    Answer(match slot.abort_canary() {
        Some(canary) => {
            if let Err(refused) = persist(&app, id).await {
                return Answer(refused);
            }
            metrics::counter!("edgeinfer_deployments_total", "component" => id.to_string(), "outcome" => "aborted").increment(1);
            tracing::info!(component = id, version = %&canary.version.version[..12], "canary aborted");
            json_response(
                StatusCode::OK,
                &json!({"id": id, "version": slot.current().version, "aborted": canary.version.version}),
            )
        }
        None => no_canary(id),
    })
}

/// With a state directory: waits for other admin changes to be saved, and holds them off until
/// dropped (a change and its save are one step for every other call).
async fn hold_changes(app: &Arc<App>) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    match &app.state {
        Some(state) => Some(state.change().await),
        None => None,
    }
}

/// Saves what the app serves now to its state directory, if it has one, before the call answers.
async fn persist(app: &Arc<App>, changed: &str) -> Result<(), Response<WasiBody>> {
    let Some(state) = app.state.clone() else { return Ok(()) };
    let serving = app.clone();
    match tokio::task::spawn_blocking(move || state.save(&serving.state_view())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(not_saved(changed, &e)),
        Err(e) => Err(not_saved(changed, &anyhow::anyhow!("{e}"))),
    }
}

/// 500 `StateNotSaved` for a change that serves but is not saved, logged.
fn not_saved(changed: &str, e: &anyhow::Error) -> Response<WasiBody> {
    tracing::error!(on = changed, "the host state cannot be saved: {e:#}");
    HostError::StateNotSaved.answer(format!(
        "the change to {changed} serves, but the state directory could not record it, so a restart would undo it: {e:#}"
    ))
}

/// 500 `StateNotSaved` for an upload that could not be kept, so was not installed, logged.
fn cannot_keep(id: &str, e: &anyhow::Error) -> Response<WasiBody> {
    tracing::error!(component = id, "the state directory cannot keep an upload: {e:#}");
    HostError::StateNotSaved.answer(format!(
        "the new version of {id} cannot be kept in the state directory, so it was not installed: {e:#}"
    ))
}

fn no_canary(id: &str) -> Response<WasiBody> {
    HostError::NoCanary.answer(format!("{id} has no canary"))
}

/// A canary deploy's parameters: `canary=PERCENT` (0 to 100), `mode=split|shadow`,
/// `sticky=client|header:NAME`; None when `canary` is absent.
fn canary_request(query: Option<&str>) -> Result<Option<(f64, CanaryMode, Stickiness)>, String> {
    let Some(percent) = query_value(query, "canary") else { return Ok(None) };
    let percent: f64 = percent.parse().map_err(|_| format!("canary={percent} is not a percentage"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("canary={percent} is not between 0 and 100"));
    }
    let mode = match query_value(query, "mode").as_deref() {
        None | Some("split") => CanaryMode::Split,
        Some("shadow") => CanaryMode::Shadow,
        Some(other) => return Err(format!("mode={other}: use split or shadow")),
    };
    let sticky = match query_value(query, "sticky").as_deref() {
        None | Some("none") => Stickiness::None,
        Some("client") => Stickiness::Client,
        Some(other) => match other.strip_prefix("header:").map(http::HeaderName::try_from) {
            Some(Ok(name)) => Stickiness::Header(name),
            _ => return Err(format!("sticky={other}: use client or header:NAME")),
        },
    };
    Ok(Some((percent, mode, sticky)))
}

fn unknown_component(id: &str) -> Response<WasiBody> {
    HostError::ComponentNotFound.answer(format!("the app has no routed component {id:?}"))
}

/// The value of `name` in a URL query string (no percent-decoding: values here are hex).
fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).map(str::to_string)
}

#[cfg(test)]
#[path = "admin_tests.rs"]
mod tests;
