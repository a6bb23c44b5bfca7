//! A model that cannot load does not take the host down: it starts, `/health` is live, `/ready`
//! is 503 and says which model failed and why, requests that need the model get 503
//! `ModelUnavailable`, and everything else serves.

mod common;

use common::{Host, assert_error, client, get, onnxruntime_section, post_json, repo_root};
use serde_json::{Value, json};

/// The default app with a runtime config in which `minilm` is corrupt, `intents` is fine, and
/// two spare models are missing and of the wrong checksum.
fn broken_models_config() -> std::path::PathBuf {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!("edgeinfer-model-failures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.onnx");
    std::fs::write(&corrupt, b"these bytes are not an ONNX model, though the file name says so").unwrap();
    let intents = root.join("models/intents/model.onnx");
    let config = format!(
        r#"[model.minilm]
path = "{corrupt}"

[model.intents]
path = "{intents}"
intra_threads = 1

[model.missing]
path = "{missing}"

[model.tampered]
path = "{intents}"
sha256 = "{zeros}"

{kserve}public = true

{ort}"#,
        kserve = common::KSERVE_SECTION,
        corrupt = corrupt.display(),
        intents = intents.display(),
        missing = dir.join("missing.onnx").display(),
        zeros = "0".repeat(64),
        ort = onnxruntime_section()
    );
    let path = dir.join("runtime.toml");
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn a_broken_model_makes_the_host_not_ready_and_its_routes_unavailable() {
    let config = broken_models_config();
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.to_str().unwrap()]);

    assert_eq!(get(&host, "/health").0, 200, "live");
    let response = client().get(host.url("/ready")).send().unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let ready: Value = response.json().unwrap();
    assert_eq!(ready["status"], "not ready", "{ready}");
    let model = |name: &str| {
        ready["models"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap_or_default()
    };
    assert_eq!(model("intents")["ready"], true, "{ready}");
    for (name, says) in [("minilm", "corrupt.onnx"), ("missing", "missing.onnx"), ("tampered", "sha256")] {
        let entry = model(name);
        assert_eq!(entry["ready"], false, "{name}: {ready}");
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{name}: the error says what is wrong ({says:?}): {error}");
    }

    // The route that needs the broken model: 503, naming it; the other route serves.
    let (status, body) = post_json(&host.url("/embed"), &json!({"inputs": "hello"}));
    assert_error(status, &body, 503, "ModelUnavailable");
    assert!(body["error"].as_str().unwrap().contains("minilm"), "{body}");
    let (status, body) = post_json(&host.url("/predict"), &json!({"inputs": "set a timer for ten minutes"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["label"], "timer");

    // The KServe view agrees.
    assert_eq!(get(&host, "/v2/health/ready").0, 503);
    let (status, body) = get(&host, "/v2/models/minilm/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("ModelUnavailable"), "{body}");
    assert_eq!(get(&host, "/v2/models/intents/ready").0, 200);
    assert_eq!(get(&host, "/v2/models/nonexistent/ready").0, 404);

    let (_, metrics) = get(&host, "/metrics");
    assert!(metrics.contains(r#"edgeinfer_model_ready{model="minilm"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"edgeinfer_model_ready{model="intents"} 1"#), "{metrics}");
    drop(host);
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}
