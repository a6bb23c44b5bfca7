//! The nn-local model provider (tract inside wasm): the default spin.toml served with
//! `--compose-nn-providers` and no native models, compared with the native host (ONNX Runtime) on
//! the same sentences.

mod common;

use common::{Host, cosine, post_json, reference, repo_root, vectors};
use serde_json::json;

#[test]
fn nn_local_matches_onnx_runtime() {
    let native = Host::start(&repo_root().join("spin.toml"), &[]);
    let wasm = Host::start(
        &repo_root().join("spin.toml"),
        &["--compose-nn-providers", "--runtime-config-file", "runtime-config/wasm-nn.toml"],
    );
    let reference = reference("intents.json");
    let texts: Vec<&str> =
        reference["cases"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
    let mut worst = 1f32;
    for chunk in texts.chunks(16) {
        let (status, ours) = post_json(&wasm.url("/embed"), &json!({"inputs": chunk}));
        assert_eq!(status, 200, "{ours}");
        let (_, theirs) = post_json(&native.url("/embed"), &json!({"inputs": chunk}));
        for (a, b) in vectors(&ours).iter().zip(&vectors(&theirs)) {
            worst = worst.min(cosine(a, b));
        }
        let (status, ours) = post_json(&wasm.url("/predict"), &json!({"inputs": chunk, "top_k": 1}));
        assert_eq!(status, 200, "{ours}");
        let (_, theirs) = post_json(&native.url("/predict"), &json!({"inputs": chunk, "top_k": 1}));
        for (text, (a, b)) in
            chunk.iter().zip(ours.as_array().unwrap().iter().zip(theirs.as_array().unwrap()))
        {
            assert_eq!(a[0]["label"], b[0]["label"], "{text}");
            let (sa, sb) = (a[0]["score"].as_f64().unwrap(), b[0]["score"].as_f64().unwrap());
            assert!((sa - sb).abs() < 1e-4, "{text}: {sa} vs {sb}");
        }
    }
    eprintln!("nn-local vs ONNX Runtime: min cosine {worst:.6} over {} sentences", texts.len());
    assert!(worst >= 0.999, "embeddings from nn-local: min cosine {worst}");
    // Errors of the handler contract are unchanged.
    let (status, body) = post_json(&wasm.url("/embed"), &json!({"inputs": []}));
    assert_eq!((status, body["error_type"].as_str()), (422, Some("Validation")));
}
