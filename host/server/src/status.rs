//! `/ready`: which models and components are loaded, since when, where; 503 while a model is
//! unavailable.

use std::time::SystemTime;

use http::{Response, StatusCode};
use serde_json::json;
use wasmtime_wasi_http::WasiBody;

use edgeinfer_engine::registry::LoadedGraph;
use edgeinfer_runtime::app::App;

/// RFC 3339 UTC timestamp.
pub fn timestamp(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// A loaded graph as `/ready` (without `path`) and the admin API list it.
pub fn describe(graph: &LoadedGraph) -> serde_json::Value {
    json!({
        "name": graph.name, "ready": true, "device": graph.device.to_string(), "sha256": graph.sha256,
        "path": graph.path, "loaded_at": timestamp(graph.loaded_at),
    })
}

pub fn ready(app: &App) -> Response<WasiBody> {
    // The public endpoint does not tell where files are; the admin API does.
    let without_path = |mut described: serde_json::Value| {
        described.as_object_mut().map(|o| o.remove("path"));
        described
    };
    let mut models: Vec<_> = app.registry.graphs().iter().map(|g| without_path(describe(g))).collect();
    let failed: Vec<_> = app.registry.failures();
    models.extend(failed.iter().map(
        |f| json!({"name": f.name, "ready": false, "failed_at": timestamp(f.failed_at), "error": f.error}),
    ));
    let components: Vec<_> = app
        .components
        .values()
        .map(|slot| {
            let c = slot.current();
            let previous: Vec<_> = slot.previous().iter().map(|p| p.version.clone()).collect();
            json!({"id": c.id, "version": c.version, "loaded_at": timestamp(c.loaded_at), "previous": previous})
        })
        .collect();
    // Not ready while any model is unavailable: an orchestrator keeps traffic away and the
    // operator sees which model and why.
    let (status, word) = if failed.is_empty() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    crate::response::json(
        status,
        &json!({"status": word, "app": app.name, "models": models, "components": components}),
    )
}
