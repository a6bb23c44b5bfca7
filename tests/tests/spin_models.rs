//! A Spin app needs no runtime config of ours: the Spin SDK app of tests/apps/llm (embeddings
//! through `spin_sdk::llm` with Spin's `all-minilm-l6-v2`), copied into a directory of its own and
//! started there with `edgeinfer up` as a Spin user starts `spin up`, is served from the built-in
//! default (the default app's pinned model: the same vectors as its `/embed`), or from Spin's own
//! `.spin/ai-models/all-minilm-l6-v2/` folder when the app has one (its checkpoint exported to ONNX:
//! the float64 Python reference's vectors). A model nothing can serve stops the start, naming the
//! component and the model.

mod common;

use std::path::{Path, PathBuf};

use common::{Host, cosine, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};

/// A directory holding only the llm app's spin.toml (its component's source made absolute), with
/// `ai_models` as given; removed on drop.
struct SpinApp(PathBuf);

impl SpinApp {
    fn new(tag: &str, ai_models: &str) -> SpinApp {
        let dir = std::env::temp_dir().join(format!("edgeinfer-spin-app-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = std::fs::read_to_string(repo_root().join("tests/apps/llm/spin.toml")).unwrap();
        let wasm = repo_root().join("target/wasm32-wasip2/release/llm_embed.wasm");
        assert!(manifest.contains("source = \"../../../target/wasm32-wasip2/release/llm_embed.wasm\""));
        let manifest = manifest
            .replace("../../../target/wasm32-wasip2/release/llm_embed.wasm", wasm.to_str().unwrap())
            .replace("ai_models = [\"all-minilm-l6-v2\"]", &format!("ai_models = {ai_models}"));
        std::fs::write(dir.join("spin.toml"), manifest).unwrap();
        SpinApp(dir)
    }
}

impl Drop for SpinApp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn embeddings(host: &Host, texts: &[&str]) -> Vec<Vec<f32>> {
    let (status, body) =
        post_json(&host.url("/embeddings"), &json!({"model": "all-minilm-l6-v2", "texts": texts}));
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["embeddings"].clone()).unwrap()
}

const TEXTS: [&str; 3] = ["Hello world", "The cat sits outside", "東京は日本の首都です。"];

#[test]
fn a_spin_llm_app_runs_with_no_runtime_config_on_the_builtin_model() {
    let app = SpinApp::new("builtin", "[\"all-minilm-l6-v2\"]");
    let host = Host::start_in(&app.0, &[]);
    assert!(
        host.log().iter().any(|l| l.contains("serving Spin's all-minilm-l6-v2 from the built-in default")),
        "the log says where the model comes from"
    );
    let default_app = Host::start(&repo_root().join("spin.toml"), &[]);
    let (_, embed) = post_json(&default_app.url("/embed"), &json!({"inputs": TEXTS}));
    let mut worst = 1f32;
    for (a, b) in embeddings(&host, &TEXTS).iter().zip(&vectors(&embed)) {
        worst = worst.min(cosine(a, b));
    }
    eprintln!("built-in model vs the default app's /embed: min cosine {worst:.6}");
    assert!(worst > 0.99999, "the default app's model: cosine {worst}");
}

/// Spin's `.spin/ai-models/<name>/` layout: `tokenizer.json` and `model.safetensors` (no
/// config.json), here linked to the default app's checkpoint.
fn spin_model_folder(app: &Path) {
    let folder = app.join(".spin/ai-models/all-minilm-l6-v2");
    std::fs::create_dir_all(&folder).unwrap();
    for file in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(repo_root().join("models/all-minilm-l6-v2").join(file), folder.join(file))
            .unwrap();
    }
}

#[test]
fn a_spin_llm_app_with_spins_model_folder_is_served_from_it() {
    let app = SpinApp::new("folder", "[\"all-minilm-l6-v2\"]");
    spin_model_folder(&app.0);
    let host = Host::start_in(&app.0, &[]);
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("serving Spin's all-minilm-l6-v2 from") && l.contains(".spin/ai-models")),
        "the log says where the model comes from"
    );
    let reference = reference("intents.json");
    let cases: Vec<&Value> = reference["cases"].as_array().unwrap().iter().take(16).collect();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let mut worst = 0f32;
    for (ours, case) in embeddings(&host, &texts).iter().zip(&cases) {
        let expected: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
        worst = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    eprintln!("Spin's checkpoint exported, vs numpy float64: max |Δ| {worst:.2e}");
    assert!(worst < 1e-4, "the float checkpoint's vectors: max |Δ| {worst}");
    drop(host);

    // A second start reuses the export (it is newer than the checkpoint).
    let again = Host::start_in(&app.0, &[]);
    assert!(!again.log().iter().any(|l| l.contains("exporting")), "exported once");
    assert_eq!(embeddings(&again, &texts[..1]).len(), 1);
}

#[test]
fn a_model_nothing_can_serve_stops_the_start_naming_component_and_model() {
    let app = SpinApp::new("unknown", "[\"all-minilm-l6-v2\", \"llama2-chat\"]");
    let output = std::process::Command::new(common::host_binary())
        .args(["up", "--listen", "127.0.0.1:0"])
        .env_remove("API_KEY")
        .current_dir(&app.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("component llm-embed") && stderr.contains("\"llama2-chat\""), "{stderr}");
}
