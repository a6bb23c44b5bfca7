//! A component computes only on the models its `ai_models` names: the same embed component is
//! served twice from one host, once declaring the model and once not.

mod common;

use common::{Host, onnxruntime_section, post_json, repo_root};
use serde_json::json;

fn write_app() -> std::path::PathBuf {
    let root = repo_root();
    let root = root.display();
    let dir = std::env::temp_dir().join(format!("edgeinfer-ai-models-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let component = |name: &str, models: &str| {
        format!(
            r#"
[component.{name}]
source = "{root}/target/wasm32-wasip2/release/embed.wasm"
files = [{{ source = "{root}/models/all-minilm-l6-v2", destination = "/model" }}]
ai_models = [{models}]
environment = {{ MODEL = "minilm" }}
[component.{name}.dependencies]
"edgeinfer:text/tokenize@0.1.0" = {{ path = "{root}/target/wasm32-wasip2/release/tokenizer.wasm" }}
"#
        )
    };
    let manifest = format!(
        r#"spin_manifest_version = 2
[application]
name = "ai-models-test"
[[trigger.http]]
route = "/declared"
component = "declared"
[[trigger.http]]
route = "/undeclared"
component = "undeclared"
{}{}"#,
        component("declared", "\"minilm\""),
        component("undeclared", "")
    );
    std::fs::write(dir.join("spin.toml"), manifest).unwrap();
    let runtime_config = format!(
        "[model.minilm]\npath = \"{root}/models/all-minilm-l6-v2/model.onnx\"\nintra_threads = 1\n\n{}",
        onnxruntime_section()
    );
    std::fs::write(dir.join("runtime.toml"), runtime_config).unwrap();
    dir
}

#[test]
fn a_component_computes_only_on_its_ai_models() {
    let dir = write_app();
    let runtime = dir.join("runtime.toml");
    let host = Host::start(&dir.join("spin.toml"), &["--runtime-config-file", runtime.to_str().unwrap()]);

    let (status, body) = post_json(&host.url("/declared"), &json!({"inputs": "hello"}));
    assert_eq!(status, 200, "the declaring component gets the model: {body}");

    let (status, body) = post_json(&host.url("/undeclared"), &json!({"inputs": "hello"}));
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error_type"], "Backend", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("Security") && error.contains("ai_models"), "a security refusal: {error}");

    // The host is unaffected: the declaring route still answers.
    let (status, _) = post_json(&host.url("/declared"), &json!({"inputs": "still fine"}));
    assert_eq!(status, 200);
    drop(host);
    let _ = std::fs::remove_dir_all(dir);
}
