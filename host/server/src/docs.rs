//! The API, described: `/openapi.json` (OpenAPI 3.1) covers the host's own routes, the KServe v2
//! API when it is on, and every routed component's own description (its `edgeinfer:openapi`
//! custom section) mounted at the component's route; `/docs` is Swagger UI on that document, its
//! files from a registry package, served by this host (nothing is loaded from elsewhere).

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};
use wasmtime_wasi_http::WasiBody;

use crate::error::HostError;
use crate::response::{full_body, json as json_response};
use edgeinfer_runtime::app::App;
use edgeinfer_runtime::routes::RoutePattern;

/// Swagger UI's files, in memory.
pub struct SwaggerUi {
    files: Vec<(&'static str, Bytes)>,
}

impl SwaggerUi {
    /// Reads the files `provision::ensure_swagger_ui` fetched.
    pub fn load(files: &[(&'static str, PathBuf)]) -> Result<SwaggerUi> {
        let files = files
            .iter()
            .map(|(name, path)| {
                let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                Ok((*name, Bytes::from(bytes)))
            })
            .collect::<Result<_>>()?;
        Ok(SwaggerUi { files })
    }
}

/// `GET /docs`: the Swagger UI page, or 503 when its files could not be fetched.
pub fn page(ui: Option<&SwaggerUi>) -> Response<WasiBody> {
    if ui.is_none() {
        return unavailable();
    }
    let html = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>edgeinfer API</title>
  <link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
  </script>
</body>
</html>
"##;
    file_response("text/html; charset=utf-8", Bytes::from_static(html.as_bytes()))
}

/// `GET /docs/NAME`: one of Swagger UI's files.
pub fn asset(ui: Option<&SwaggerUi>, name: &str) -> Response<WasiBody> {
    let Some(ui) = ui else { return unavailable() };
    match ui.files.iter().find(|(file, _)| *file == name) {
        Some((_, bytes)) => {
            let content_type = match name.rsplit('.').next() {
                Some("js") => "text/javascript; charset=utf-8",
                Some("css") => "text/css; charset=utf-8",
                _ => "text/plain; charset=utf-8",
            };
            file_response(content_type, bytes.clone())
        }
        None => HostError::NotFound.answer(format!("no file /docs/{name}")),
    }
}

fn unavailable() -> Response<WasiBody> {
    HostError::DocsUnavailable.answer(
        "Swagger UI's files could not be fetched at start (see the host log); /openapi.json is served",
    )
}

fn file_response(content_type: &str, bytes: Bytes) -> Response<WasiBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .header("cache-control", "public, max-age=3600")
        .body(full_body(bytes))
        .expect("static response parts are valid")
}

/// `GET /openapi.json`.
pub fn openapi(app: &App, kserve: bool, api_key: bool, default_route: Option<&str>) -> Response<WasiBody> {
    json_response(StatusCode::OK, &document(app, kserve, api_key, default_route))
}

/// The whole document; with `api_key`, every component and KServe operation requires the
/// host's API key (a bearer token) and may answer its 401 and 403.
pub fn document(app: &App, kserve: bool, api_key: bool, default_route: Option<&str>) -> Value {
    let mut doc = host_document(&app.name);
    if kserve {
        let kserve = kserve_document();
        merge_into(&mut doc, &kserve, "paths");
        merge_schemas(&mut doc, kserve["components"]["schemas"].as_object().cloned().unwrap_or_default());
    }
    let mut described = BTreeSet::new();
    for route in &app.routes {
        let component = route.component.current();
        let Some(fragment) = &component.openapi else { continue };
        if !described.insert((route.pattern.to_string(), component.id.clone())) {
            continue;
        }
        let renamed = merge_schemas(
            &mut doc,
            fragment["components"]["schemas"].as_object().cloned().unwrap_or_default(),
        );
        if let Some(schemes) = fragment["components"]["securitySchemes"].as_object() {
            let ours = doc["components"]
                .as_object_mut()
                .expect("the host document has components")
                .entry("securitySchemes")
                .or_insert_with(|| json!({}));
            for (name, scheme) in schemes {
                ours[name.as_str()] = scheme.clone();
            }
        }
        let paths = fragment["paths"].as_object().cloned().unwrap_or_default();
        for (full, mut item) in mounted_paths(&route.pattern, paths) {
            rename_refs(&mut item, &renamed);
            for operation in item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut()) {
                annotate_operation(operation, &component.id, &component.version);
            }
            doc["paths"][full] = item;
        }
    }
    describe_default_task(&mut doc, app, default_route);
    add_header_limit(&mut doc);
    if api_key {
        require_api_key(&mut doc);
    }
    doc
}

/// TEI's and SageMaker's root paths (`default_task`), where the app does not route them: `GET /`
/// and `GET /ping` as `/ready`, `POST /` and `POST /invocations` as the default route's `POST`.
fn describe_default_task(doc: &mut Value, app: &App, default_route: Option<&str>) {
    let ready = doc["paths"]["/ready"]["get"].clone();
    let task = default_route.and_then(|route| doc["paths"][route].get("post").cloned());
    for path in super::default_task::PATHS {
        if app.route_of(path).is_some() {
            continue;
        }
        let mut item = Map::new();
        if path != "/invocations" {
            let mut get = ready.clone();
            get["summary"] = json!("Readiness, as /ready (TEI's and SageMaker's health route)");
            item.insert("get".into(), get);
        }
        if let (Some(task), true) = (&task, path != "/ping") {
            let mut post = task.clone();
            let route = default_route.unwrap_or_default();
            post["summary"] = json!(format!("The default task: answers as POST {route}"));
            if let Some(id) = post.get("operationId").and_then(Value::as_str) {
                let suffix = if path == "/" { "Root" } else { "Invocations" };
                post["operationId"] = json!(format!("{id}{suffix}"));
            }
            item.insert("post".into(), post);
        }
        if !item.is_empty() {
            doc["paths"][path] = Value::Object(item);
        }
    }
}

/// Marks every operation but the host's own (`host` tag) as needing the API key.
fn require_api_key(doc: &mut Value) {
    doc["components"]["securitySchemes"]["apiKey"] = json!({
        "type": "http", "scheme": "bearer",
        "description": "The host's API key (`up --api-key`), on every inference route",
    });
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        let Some(operation) = operation.as_object_mut() else { continue };
        if operation.get("tags").is_some_and(|tags| tags == &json!(["host"])) {
            continue;
        }
        operation.insert("security".into(), json!([{"apiKey": []}]));
        let responses = operation.entry("responses").or_insert_with(|| json!({}));
        for error in [HostError::Unauthorized, HostError::Forbidden] {
            also_host_error(responses, error);
        }
    }
}

/// Documents `error` among an operation's `responses`: by reference to the host's response, or,
/// where the component documents that status with a body of its own (OpenAI's 401), as either
/// body: the host refuses before the component runs, in the host's shape.
fn also_host_error(responses: &mut Value, error: HostError) {
    let status = error.status();
    let host_schema = json!({"$ref": "#/components/schemas/Error"});
    let own =
        responses.get_mut(status.as_str()).and_then(|r| r.pointer_mut("/content/application~1json/schema"));
    match own {
        Some(schema) if *schema != host_schema => {
            let theirs = schema.take();
            *schema = json!({"oneOf": [theirs, host_schema]});
        }
        _ => add_error_responses(responses, &[error]),
    }
}

/// A fragment's paths as served at `route`. Paths are relative to the route: `/` is the route
/// itself, and under a prefix route `/x` is `PREFIX/x`. A component routed at several exact paths
/// describes each by its full path: at an exact route only `/` or the route's own path applies.
fn mounted_paths(route: &RoutePattern, paths: Map<String, Value>) -> Vec<(String, Value)> {
    match route {
        RoutePattern::Exact(exact) => {
            let own = if exact.is_empty() { "/" } else { exact.as_str() };
            let item = paths.get(own).or_else(|| paths.get("/")).or_else(|| paths.get(""));
            item.map(|item| (own.to_string(), item.clone())).into_iter().collect()
        }
        RoutePattern::Prefix(prefix) => paths
            .into_iter()
            .map(|(path, item)| {
                let full = match path.as_str() {
                    "/" | "" if prefix.is_empty() => "/".to_string(),
                    "/" | "" => prefix.clone(),
                    rest => format!("{prefix}{rest}"),
                };
                (full, item)
            })
            .collect(),
    }
}

/// Marks an operation as served by `component` and adds the errors the host itself may answer.
fn annotate_operation(operation: &mut Value, component: &str, version: &str) {
    let Some(operation) = operation.as_object_mut() else { return };
    operation.entry("tags").or_insert_with(|| json!([component]));
    operation.insert("x-edgeinfer-component".into(), json!({"id": component, "version": version}));
    let responses = operation.entry("responses").or_insert_with(|| json!({}));
    let host_errors = [
        HostError::BodyTimeout,
        HostError::PayloadTooLarge,
        HostError::Overloaded,
        HostError::Deadline,
        HostError::ComponentFault,
    ];
    add_error_responses(responses, &host_errors);
}

/// Adds `errors` to an operation's `responses` (by reference to the host's), where the status is
/// not documented yet.
fn add_error_responses(responses: &mut Value, errors: &[HostError]) {
    let Some(responses) = responses.as_object_mut() else { return };
    for error in errors {
        responses
            .entry(error.status().as_str())
            .or_insert_with(|| json!({"$ref": format!("#/components/responses/{error:?}")}));
    }
}

/// Every operation may be refused for headers over the limit, before anything routes it.
fn add_header_limit(doc: &mut Value) {
    let Some(paths) = doc["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        let responses =
            operation.as_object_mut().map(|op| op.entry("responses").or_insert_with(|| json!({})));
        if let Some(responses) = responses {
            add_error_responses(responses, &[HostError::HeadersTooLarge]);
        }
    }
}

/// Adds `schemas` to the document's; a name already taken by a different schema gets the
/// suffix `_2`, `_3`... Returns the renames made.
fn merge_schemas(doc: &mut Value, schemas: Map<String, Value>) -> Vec<(String, String)> {
    let existing = doc["components"]["schemas"].as_object_mut().expect("the host document has schemas");
    let mut renamed = Vec::new();
    for (name, schema) in &schemas {
        match existing.get(name) {
            None => {}
            Some(same) if same == schema => continue,
            Some(_) => {
                let free = (2..)
                    .map(|n| format!("{name}_{n}"))
                    .find(|n| !existing.contains_key(n))
                    .expect("unbounded");
                renamed.push((name.clone(), free));
            }
        }
    }
    for (name, mut schema) in schemas {
        rename_refs(&mut schema, &renamed);
        let name = renamed.iter().find(|(from, _)| *from == name).map_or(name, |(_, to)| to.clone());
        existing.entry(name).or_insert(schema);
    }
    renamed
}

/// Rewrites `$ref`s to renamed schemas.
fn rename_refs(value: &mut Value, renamed: &[(String, String)]) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(target) = child
                    && let Some((_, to)) =
                        renamed.iter().find(|(from, _)| *target == format!("#/components/schemas/{from}"))
                {
                    *target = format!("#/components/schemas/{to}");
                } else {
                    rename_refs(child, renamed);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rename_refs(item, renamed)),
        _ => {}
    }
}

fn merge_into(doc: &mut Value, other: &Value, key: &str) {
    if let (Some(into), Some(from)) = (doc[key].as_object_mut(), other[key].as_object()) {
        into.extend(from.clone());
    }
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// One response per error the host answers itself, named as `HostError` names it.
fn host_error_responses() -> Value {
    let responses: Map<String, Value> = HostError::ALL
        .iter()
        .map(|e| {
            let description = format!("{} (`{}`, {})", e.meaning(), e.error_type(), e.status().as_u16());
            (format!("{e:?}"), error_response(&description))
        })
        .collect();
    Value::Object(responses)
}

/// The host's own routes and the shared vocabulary (the error shape and the host's errors).
fn host_document(app: &str) -> Value {
    let text = |description: &str| json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("edgeinfer: {app}"),
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every answer carries `x-request-id`. Every error is JSON `{error, error_type}`.",
        },
        "paths": {
            "/health": {"get": {
                "tags": ["host"], "summary": "Liveness: the host is up",
                "responses": {"200": {"description": "Up", "content": {"application/json": {"example": {"status": "ok"}}}}},
            }},
            "/ready": {"get": {
                "tags": ["host"], "summary": "Readiness: every model loaded; models and component versions",
                "responses": {
                    "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}},
                    "503": {"description": "A model is unavailable (named, with its error)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Ready"}}}},
                },
            }},
            "/metrics": {"get": {"tags": ["host"], "summary": "Prometheus metrics", "responses": {"200": text("Prometheus text exposition")}}},
            "/openapi.json": {"get": {"tags": ["host"], "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/docs": {"get": {"tags": ["host"], "summary": "Swagger UI", "responses": {"200": {"description": "HTML"}, "503": error_response("Swagger UI's files are not available")}}},
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error", "error_type"],
                    "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
                },
                "Ready": {
                    "type": "object",
                    "properties": {
                        "status": {"enum": ["ok", "not ready"]},
                        "app": {"type": "string"},
                        "models": {"type": "array", "items": {"type": "object", "properties": {
                            "name": {"type": "string"}, "ready": {"type": "boolean"}, "device": {"type": "string"},
                            "loaded_at": {"type": "string", "format": "date-time"}, "error": {"type": "string"},
                        }}},
                        "components": {"type": "array", "items": {"type": "object", "properties": {
                            "id": {"type": "string"}, "version": {"type": "string"}, "loaded_at": {"type": "string", "format": "date-time"},
                        }}},
                    },
                },
            },
            "responses": host_error_responses(),
        },
    })
}

/// The KServe v2 REST API (JSON tensors and the binary tensor data extension).
fn kserve_document() -> Value {
    let model = json!([{"name": "model", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let get = |summary: &str| json!({"tags": ["kserve"], "summary": summary, "responses": {"200": {"description": "OK"}}});
    json!({
        "paths": {
            "/v2": {"get": get("Server metadata")},
            "/v2/health/live": {"get": get("Server liveness")},
            "/v2/health/ready": {"get": get("Server readiness (503 while a model is unavailable)")},
            "/v2/models/{model}": {"get": {"tags": ["kserve"], "summary": "Model metadata: inputs and outputs", "parameters": model,
                "responses": {"200": {"description": "Metadata"}, "404": error_response("No such model"), "503": error_response("The model failed to load")}}},
            "/v2/models/{model}/ready": {"get": {"tags": ["kserve"], "summary": "Model readiness", "parameters": model,
                "responses": {"200": {"description": "Ready"}, "404": error_response("No such model"), "503": error_response("The model failed to load")}}},
            "/v2/models/{model}/infer": {"post": {
                "tags": ["kserve"], "summary": "Inference on JSON or binary tensors, through the model's batcher",
                "description": "Binary tensor data extension: the body is the JSON request followed by the binary inputs' bytes \
                    (little-endian, row-major, in input order, each `parameters.binary_data_size` long), and the \
                    `Inference-Header-Content-Length` header gives the JSON's length. Outputs asked for with \
                    `binary_data` (or the request's `binary_data_output`) come back the same way: \
                    `application/octet-stream`, the JSON's length in `Inference-Header-Content-Length`.",
                "parameters": [model[0], {"name": "Inference-Header-Content-Length", "in": "header", "required": false,
                    "description": "Length of the JSON request when binary tensors follow it", "schema": {"type": "integer", "minimum": 0}}],
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                        "description": "InferRequest JSON, then the binary inputs' bytes"}},
                }},
                "responses": {
                    "200": {"description": "Outputs",
                        "headers": {"Inference-Header-Content-Length": {"description": "Length of the JSON when binary outputs follow it",
                            "schema": {"type": "integer"}}},
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/InferResponse"}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                "description": "InferResponse JSON, then the binary outputs' bytes"}},
                        }},
                    "400": error_response("Wrong names, types, shapes or data (`Validation`)"),
                    "401": error_response("No bearer token, or a malformed `Authorization` header"),
                    "403": error_response("The bearer token is neither the API's token nor the host's API key"),
                    "404": error_response("No such model"),
                    "413": error_response("The body is over [kserve] max_request_body_bytes"),
                },
            }},
        },
        "components": {"schemas": {
            "Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"enum": ["FP32", "FP64", "INT64", "INT32", "UINT8", "FP16", "BF16", "BYTES"]},
                "data": {"type": "array", "description": "Row-major values (strings for BYTES), flat or nested (absent for a binary tensor)"},
                "parameters": {"type": "object", "properties": {
                    "binary_data_size": {"type": "integer", "minimum": 0, "description": "Bytes of this tensor in the binary section"},
                }},
            }},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object", "properties": {
                    "binary_data_output": {"type": "boolean", "description": "Outputs come back binary unless they say otherwise"},
                }},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                }}},
            }},
            "InferResponse": {"type": "object", "properties": {
                "model_name": {"type": "string"},
                "id": {"type": "string"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
            }},
        }},
    })
}
