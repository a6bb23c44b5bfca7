//! `/openapi.json` describes every route (the host's, KServe's, and each component's own part,
//! mounted at its route), every `$ref` resolves, the documented examples work against the live
//! API, and `/docs` serves Swagger UI from this host with the registry package's exact files.

mod common;

use common::{client, kserve_host, post_json};
use serde_json::Value;
use sha2::Digest;

/// Every `$ref` in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => out.push(target),
                    _ => refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
        _ => {}
    }
}

#[test]
fn openapi_describes_every_route_and_its_examples_work() {
    let host = kserve_host();
    let doc: Value = client().get(host.url("/openapi.json")).send().unwrap().json().unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/embed",
        "/embed_all",
        "/similarity",
        "/rerank",
        "/tokenize",
        "/decode",
        "/info",
        "/predict",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/ready",
        "/metrics",
        "/v2/models/{model}/infer",
        "/ping",
        "/invocations",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is described");
    }
    // TEI's root routes: readiness, and the default task as /embed describes it.
    assert_eq!(doc["paths"]["/"]["get"]["responses"], doc["paths"]["/ready"]["get"]["responses"]);
    assert_eq!(
        doc["paths"]["/invocations"]["post"]["requestBody"],
        doc["paths"]["/embed"]["post"]["requestBody"]
    );
    assert_eq!(doc["paths"]["/"]["post"]["operationId"], "embedRoot");
    let mut targets = Vec::new();
    refs(&doc, &mut targets);
    assert!(targets.len() > 10);
    for target in targets {
        let pointer = target.strip_prefix('#').expect("local references only");
        assert!(doc.pointer(pointer).is_some(), "{target} resolves");
    }

    // The description travels inside the component: it names the version /ready reports.
    let ready: Value = client().get(host.url("/ready")).send().unwrap().json().unwrap();
    let embed_version = ready["components"].as_array().unwrap().iter().find(|c| c["id"] == "embed").unwrap()
        ["version"]
        .clone();
    assert_eq!(doc["paths"]["/embed"]["post"]["x-edgeinfer-component"]["version"], embed_version);

    // The examples are real requests.
    let example = |path: &str| {
        doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"].clone()
    };
    let (status, body) = post_json(&host.url("/embed"), &example("/embed"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), example("/embed")["inputs"].as_array().unwrap().len());
    let (status, body) = post_json(&host.url("/predict"), &example("/predict"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), example("/predict")["top_k"].as_u64().unwrap() as usize);
    assert_eq!(body[0]["label"], "timer");
    for path in ["/embed_all", "/similarity", "/rerank", "/tokenize", "/decode"] {
        let (status, body) = post_json(&host.url(path), &example(path));
        assert_eq!(status, 200, "{path}: {body}");
        let component = &doc["paths"][path]["post"]["x-edgeinfer-component"]["id"];
        assert_eq!(component, "embed", "{path} is the embed component's");
    }
    let (status, body) = post_json(&host.url("/v1/embeddings"), &example("/v1/embeddings"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["data"].as_array().unwrap().len(),
        example("/v1/embeddings")["input"].as_array().unwrap().len()
    );
    // A component's own security scheme comes with its paths.
    assert_eq!(doc["components"]["securitySchemes"]["openaiApiKey"]["scheme"], "bearer");

    // Swagger UI, served here from the pinned registry package's files.
    let page = client().get(host.url("/docs")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().unwrap();
    assert!(page.contains("/docs/swagger-ui-bundle.js") && page.contains("/openapi.json"), "{page}");
    for (file, sha256, content_type) in [
        (
            "swagger-ui-bundle.js",
            "050bc415ee7048dcd881682678f720264e7da5e373f7461d7c58c755305255f7",
            "text/javascript",
        ),
        ("swagger-ui.css", "1ac324f7dcd27e4b9386b4bd6421271ec147e922a22c05ba24b11515e9aa6321", "text/css"),
    ] {
        let response = client().get(host.url(&format!("/docs/{file}"))).send().unwrap();
        assert_eq!(response.status().as_u16(), 200, "{file}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(content_type));
        assert_eq!(hex::encode(sha2::Sha256::digest(response.bytes().unwrap())), sha256, "{file}");
    }
    let missing = client().get(host.url("/docs/nothing.js")).send().unwrap();
    assert_eq!(missing.status().as_u16(), 404);
}

/// Runs schemathesis (from the client venv, scripts/python-clients) against the host's
/// own OpenAPI document, with every check but `positive_data_acceptance`: documented statuses,
/// content types, response schemas and headers, `Allow` on 405, schema-violating requests
/// refused, no server errors. (Positive data acceptance is left out: some schema-valid inputs are
/// refused for reasons a schema cannot state, such as a prompt name the model's configuration
/// lacks, or control characters in a text.)
fn schemathesis(host: &common::Host, bearer: &str) {
    let workdir =
        std::env::temp_dir().join(format!("edgeinfer-schemathesis-{}-{bearer}", std::process::id()));
    std::fs::create_dir_all(&workdir).unwrap();
    // As a module: the venv's scripts name the folder it was installed in (scripts/python-clients).
    let output = std::process::Command::new(common::client_python())
        .args(["-m", "schemathesis.cli", "run", &host.url("/openapi.json"), "--checks", "all"])
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "25", "--generation-deterministic"])
        .args(["--header", &format!("Authorization: Bearer {bearer}")])
        .env("NO_COLOR", "1")
        .current_dir(&workdir)
        .output()
        .expect("run schemathesis");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let _ = std::fs::remove_dir_all(&workdir);
    assert!(output.status.success(), "schemathesis found problems:\n{said}");
    let summary = said.lines().rev().find(|l| l.contains("generated")).unwrap_or_default();
    eprintln!("schemathesis: {summary}");
    assert!(summary.contains("passed") && !summary.contains("fail"), "{said}");
}

#[test]
fn schemathesis_finds_nothing_undocumented() {
    schemathesis(&kserve_host(), common::KSERVE_TOKEN);
}

#[test]
fn schemathesis_finds_nothing_undocumented_behind_the_api_key() {
    const KEY: &str = "a-docs-test-api-key-0123456789";
    let config = common::Variant::kserve_config();
    let host = common::Host::start_with_env(
        &common::repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap(), "--api-key", KEY],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", common::KSERVE_TOKEN)],
    );
    schemathesis(&host, KEY);
}
