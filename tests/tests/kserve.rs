//! The KServe v2 / Open Inference Protocol API of the host (`/v2`), on the default app's models:
//! metadata, JSON tensor inference compared with the Python reference, and every error case.

mod common;

use std::sync::OnceLock;

use common::{Host, assert_error, client, cosine, reference, repo_root};
use serde_json::{Value, json};

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::start(&repo_root().join("spin.toml"), &[]))
}

fn get(path: &str) -> (u16, Value) {
    let response = client().get(host().url(path)).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn infer(model: &str, body: &Value) -> (u16, Value) {
    let response = client().post(host().url(&format!("/v2/models/{model}/infer"))).json(body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// The three int64 inputs of a BERT model for one tokenized sentence.
fn bert_inputs(case: &Value) -> Value {
    let n = case["ids"].as_array().unwrap().len();
    json!([
        {"name": "input_ids", "shape": [1, n], "datatype": "INT64", "data": case["ids"]},
        {"name": "attention_mask", "shape": [1, n], "datatype": "INT64", "data": case["attention_mask"]},
        {"name": "token_type_ids", "shape": [1, n], "datatype": "INT64", "data": [case["type_ids"]]},
    ])
}

#[test]
fn health_and_metadata_describe_the_models() {
    assert_eq!(get("/v2/health/live"), (200, json!({"live": true})));
    assert_eq!(get("/v2/health/ready"), (200, json!({"ready": true})));
    assert_eq!(get("/v2/models/minilm/ready"), (200, json!({"name": "minilm", "ready": true})));
    let (status, meta) = get("/v2/models/minilm");
    assert_eq!(status, 200, "{meta}");
    assert_eq!(meta["name"], "minilm");
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    let inputs: Vec<(&str, &str)> = meta["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap(), i["datatype"].as_str().unwrap()))
        .collect();
    assert_eq!(inputs, [("input_ids", "INT64"), ("attention_mask", "INT64"), ("token_type_ids", "INT64")]);
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, -1]));
    assert_eq!(
        meta["outputs"],
        json!([{"name": "last_hidden_state", "datatype": "FP32", "shape": [-1, -1, 384]}])
    );
    let (_, intents) = get("/v2/models/intents");
    assert_eq!(intents["outputs"], json!([{"name": "logits", "datatype": "FP32", "shape": [-1, 157]}]));
}

#[test]
fn inference_matches_the_python_reference() {
    let tokens = reference("tokens.json");
    let embeddings = reference("embeddings.json");
    for (case, expected) in tokens.as_array().unwrap().iter().zip(embeddings.as_array().unwrap()).take(8) {
        if expected["needs_truncate"].as_bool() == Some(true) {
            continue;
        }
        let (status, body) = infer("minilm", &json!({"id": "req-1", "inputs": bert_inputs(case)}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model_name"], "minilm");
        assert_eq!(body["id"], "req-1");
        let output = &body["outputs"][0];
        assert_eq!(output["name"], "last_hidden_state");
        assert_eq!(output["datatype"], "FP32");
        let n = case["ids"].as_array().unwrap().len();
        assert_eq!(output["shape"], json!([1, n, 384]));
        let values: Vec<f32> = serde_json::from_value(output["data"].clone()).unwrap();
        assert_eq!(values.len(), n * 384);
        let mut mean = vec![0f32; 384];
        for token in values.chunks(384) {
            mean.iter_mut().zip(token).for_each(|(m, v)| *m += v / n as f32);
        }
        let reference: Vec<f32> = serde_json::from_value(expected["embedding"].clone()).unwrap();
        let similarity = cosine(&mean, &reference);
        assert!(similarity >= 0.999, "{}: cosine {similarity}", case["text"]);
    }
}

#[test]
fn requested_outputs_filter_the_answer() {
    let case = &reference("tokens.json")[0];
    let body = json!({"inputs": bert_inputs(case), "outputs": [{"name": "last_hidden_state"}]});
    let (status, answer) = infer("minilm", &body);
    assert_eq!((status, answer["outputs"].as_array().unwrap().len()), (200, 1));
    let body = json!({"inputs": bert_inputs(case), "outputs": [{"name": "pooled"}]});
    let (status, answer) = infer("minilm", &body);
    assert_error(status, &answer, 400, "Validation");
    assert!(answer["error"].as_str().unwrap().contains("no output \"pooled\""), "{answer}");
}

#[test]
fn bad_requests_are_400_and_unknown_models_404() {
    let case = &reference("tokens.json")[0];
    let good = bert_inputs(case);
    let with = |index: usize, key: &str, value: Value| {
        let mut inputs = good.clone();
        inputs[index][key] = value;
        json!({"inputs": inputs})
    };
    let n = case["ids"].as_array().unwrap().len();
    let cases = [
        (with(0, "datatype", json!("FP32")), "must be"),
        (with(0, "datatype", json!("BOOL")), "not supported"),
        (with(0, "shape", json!([n])), "shape"),
        (with(0, "shape", json!([1, n + 1])), "values"),
        (with(0, "data", json!([vec!["a"; n]])), "integer"),
        (json!({"inputs": [good[0], good[1]]}), "missing model input"),
        (json!({"inputs": good, "extra": 1}), "unknown field"),
        (json!({"input": good}), "inputs"),
        (json!([1, 2]), "invalid"),
    ];
    for (body, needle) in cases {
        let (status, answer) = infer("minilm", &body);
        assert_error(status, &answer, 400, "Validation");
        assert!(answer["error"].as_str().unwrap().contains(needle), "{needle}: {answer}");
    }
    let response = client().post(host().url("/v2/models/minilm/infer")).body("{not json").send().unwrap();
    assert_eq!(response.status().as_u16(), 400);

    for path in ["/v2/models/nope", "/v2/models/nope/ready"] {
        let (status, body) = get(path);
        assert_error(status, &body, 404, "ModelNotFound");
    }
    let (status, body) = infer("nope", &json!({"inputs": good}));
    assert_error(status, &body, 404, "ModelNotFound");
    let response = client().get(host().url("/v2/models/minilm/infer")).send().unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let (status, body) = get("/v2/unknown/route");
    assert_error(status, &body, 404, "NotFound");
}

#[test]
fn a_configured_token_is_required() {
    let dir = std::env::temp_dir().join(format!("edgeinfer-kserve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    config.push_str("\n[kserve]\ntoken_env = \"EDGEINFER_TEST_TOKEN\"\n");
    let path = dir.join("runtime.toml");
    std::fs::write(&path, config).unwrap();
    let host = Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", path.to_str().unwrap()],
        &[("EDGEINFER_TEST_TOKEN", "s3cret")],
    );
    let url = host.url("/v2/models/minilm");
    let response = client().get(&url).send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = client().get(&url).bearer_auth("wrong").send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client().get(&url).bearer_auth("s3cret").send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Component routes are not affected by the token.
    let response = client().post(host.url("/embed")).json(&json!({"inputs": "hi"})).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    std::fs::remove_dir_all(dir).unwrap();
}
