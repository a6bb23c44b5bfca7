//! `/ready`: which models and components are loaded, since when, where.

use std::time::SystemTime;

use http::{Response, StatusCode};
use serde_json::json;
use wasmtime_wasi_http::WasiBody;

use crate::app::App;

/// RFC 3339 UTC timestamp.
fn timestamp(at: SystemTime) -> String {
    time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn ready(app: &App) -> Response<WasiBody> {
    let models: Vec<_> = app
        .registry
        .iter()
        .map(|g| json!({"name": g.name, "loaded_at": timestamp(g.loaded_at), "device": g.device.to_string()}))
        .collect();
    let components: Vec<_> = app
        .components
        .values()
        .map(|c| json!({"id": c.id, "version": c.version, "loaded_at": timestamp(c.loaded_at)}))
        .collect();
    super::json(
        StatusCode::OK,
        &json!({"status": "ok", "app": app.name, "models": models, "components": components}),
    )
}
