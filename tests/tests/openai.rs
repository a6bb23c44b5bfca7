//! OpenAI's embeddings API (`/v1/embeddings`, `/v1/models`, the `openai` component of the default
//! app): the official `openai` Python client (from PyPI, installed by scripts/python-clients)
//! drives it in tests/clients/openai_embeddings.py and checks parity with the Python reference;
//! these tests start the host, run it, and check the raw wire shapes the client does not show.

mod common;

use common::{Host, Variant, client, post_json, repo_root, run_client_script};
use serde_json::{Value, json};

const API_KEY: &str = "sk-edgeinfer-test-0123456789";

/// Runs the client script against `host`; its report.
fn run_openai_client(host: &Host, api_key: &str) -> Value {
    let root = repo_root();
    let (embeddings, tokens) =
        (root.join("tests/reference/embeddings.json"), root.join("tests/reference/tokens.json"));
    let base = host.url("/v1");
    let args = [base.as_ref(), api_key.as_ref(), embeddings.as_os_str(), tokens.as_os_str()];
    run_client_script("openai_embeddings.py", &args)
}

#[test]
fn the_openai_client_gets_reference_embeddings_in_float_and_base64() {
    let host = Host::start(&repo_root().join("spin.toml"), &[]);
    let report = run_openai_client(&host, "");
    assert!(report["float_cases"].as_u64().unwrap() >= 30, "{report}");
    assert!(report["float_min_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert_eq!(report["base64_values"], 384, "{report}");
    assert_eq!(
        report["errors"],
        json!({"unknown_model": 404, "empty_input": 400, "too_many_dimensions": 400})
    );

    // What the client hides: the exact envelope, and that /embed agrees with /v1/embeddings.
    let (status, body) = post_json(
        &host.url("/v1/embeddings"),
        &json!({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": "hello world", "user": "u-1"}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "sentence-transformers/all-MiniLM-L6-v2", "the name asked for is echoed");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(body["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
    let (status, tei) = post_json(&host.url("/embed"), &json!({"inputs": "hello world"}));
    assert_eq!(status, 200);
    assert_eq!(tei[0], body["data"][0]["embedding"], "/embed and /v1/embeddings give the same vector");

    // Unknown model, OpenAI's error shape (the client reads `error.code`, `error.param`).
    let (status, body) = post_json(&host.url("/v1/embeddings"), &json!({"model": "ada", "input": "x"}));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "model");
    assert!(body["error"]["message"].as_str().unwrap().contains("`ada`"), "{body}");

    // A bad body is a 400 naming what is wrong; an unknown /v1 path a 404; GET on embeddings 405.
    let (status, body) =
        post_json(&host.url("/v1/embeddings"), &json!({"model": "all-minilm-l6-v2", "input": ["a", 1]}));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("item 1"), "{body}");
    let response = client().get(host.url("/v1/chat/completions")).send().unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-error-type"], "NotFound");
    let response = client().get(host.url("/v1/embeddings")).send().unwrap();
    assert_eq!(response.status(), 405);

    // More inputs than one model batch are computed in parts, in order.
    let texts: Vec<String> = (0..70).map(|i| format!("sentence number {i}")).collect();
    let (status, body) =
        post_json(&host.url("/v1/embeddings"), &json!({"model": "all-minilm-l6-v2", "input": texts}));
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 70);
    let (_, single) = post_json(&host.url("/embed"), &json!({"inputs": texts[69]}));
    let last: Vec<f32> = serde_json::from_value(data[69]["embedding"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(single[0].clone()).unwrap();
    assert!(common::cosine(&last, &want) > 0.9999, "the 70th vector is the 70th text's");
}

#[test]
fn an_api_key_guards_the_v1_routes_only() {
    let manifest = Variant::new("spin.toml", "openai-key", |text| {
        assert_eq!(text.matches("API_KEY = \"\"").count(), 1, "spin.toml has one empty API_KEY");
        text.replace("API_KEY = \"\"", &format!("API_KEY = \"{API_KEY}\""))
    });
    let host = Host::start(&manifest.0, &[]);
    let report = run_openai_client(&host, API_KEY);
    assert_eq!(report["errors"]["wrong_api_key"], 401, "{report}");

    // No Authorization header at all: 401 in OpenAI's shape; any case of "Bearer" is accepted.
    let response = client()
        .post(host.url("/v1/embeddings"))
        .json(&json!({"model": "all-minilm-l6-v2", "input": "x"}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    let response = client()
        .get(host.url("/v1/models"))
        .header("authorization", format!("bearer {API_KEY}"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    // TEI's /embed is not behind the key.
    let (status, _) = post_json(&host.url("/embed"), &json!({"inputs": "x"}));
    assert_eq!(status, 200);
}
