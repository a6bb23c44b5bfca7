//! `GET /info`: TEI's description of the served model, from the component's settings and what
//! the host tells each instance (`EDGEINFER_HOST_INFO`: the model file's sha256, device, output
//! types, batching limits and the component's limits). Under a runtime that says nothing (e.g.
//! `spin up`), the host facts are absent and the limits it would state are 0.

use serde_json::{Value, json};
use text_handler::{ApiError, Settings, var};

/// How `/rerank` scores, said in `/info`.
fn reranker() -> String {
    match var("RERANK_MODEL", "").as_str() {
        "" => "cosine similarity of the embedding model's normalised mean-pooled vectors (no cross-encoder \
               is configured: RERANK_MODEL is unset, and none ships in a registry package)"
            .into(),
        model => format!("cross-encoder {model:?}: the sigmoid of its logit (raw_scores: the logit)"),
    }
}

pub fn info() -> Result<Value, ApiError> {
    let settings = Settings::from_env("minilm", "last_hidden_state");
    let host: Option<Value> =
        std::env::var("EDGEINFER_HOST_INFO").ok().and_then(|text| serde_json::from_str(&text).ok());
    let model = host.as_ref().map(|h| &h["models"][&settings.model]).filter(|m| m.is_object());
    let served_name = text_handler::model_names().into_iter().next().unwrap_or_default();
    let dtype = model
        .and_then(|m| m["outputs"][&settings.output].as_str())
        .map(|datatype| match datatype {
            "FP32" => "float32",
            "FP16" => "float16",
            "BF16" => "bfloat16",
            "FP64" => "float64",
            other => other,
        })
        .unwrap_or("float32");
    let batching = model.map(|m| m["batching"].clone());
    let component = host.as_ref().map(|h| h["component"].clone());
    let number = |value: Option<&Value>| value.and_then(Value::as_u64).unwrap_or(0);
    Ok(json!({
        "model_id": var("MODEL_ID", "sentence-transformers/all-MiniLM-L6-v2"),
        "model_sha": model.and_then(|m| m["sha256"].as_str()),
        "model_dtype": dtype,
        "served_model_name": served_name,
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_concurrent_requests": number(component.as_ref().map(|c| &c["max_concurrent_requests"])),
        "max_input_length": settings.max_input_tokens,
        "max_batch_tokens": number(batching.as_ref().map(|b| &b["max_batch_tokens"])),
        "max_batch_requests": batching.as_ref().and_then(|b| b["max_batch_size"].as_u64()),
        "max_client_batch_size": settings.max_batch_inputs,
        "auto_truncate": false,
        "tokenization_workers": 1,
        "version": host.as_ref().and_then(|h| h["version"].as_str()).unwrap_or(env!("CARGO_PKG_VERSION")),
        "sha": null,
        "docker_label": null,
        "edgeinfer": {
            "model": settings.model,
            "model_sha256": model.and_then(|m| m["sha256"].as_str()),
            "device": model.and_then(|m| m["device"].as_str()),
            "batching": batching,
            "component": component,
            "component_version": env!("CARGO_PKG_VERSION"),
            "reranker": reranker(),
            "routes": ["/embed", "/embed_all", "/similarity", "/rerank", "/tokenize", "/decode", "/info"],
        },
    }))
}
