//! /embed end to end: the default app (repo spin.toml + runtime-config/local.toml) on the real
//! host, compared with references computed by Python onnxruntime + tokenizers.

mod common;

use std::sync::OnceLock;

use common::{Host, assert_error, client, cosine, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::start(&repo_root().join("spin.toml"), &[]))
}

fn embed(body: Value) -> (u16, Value) {
    post_json(&host().url("/embed"), &body)
}

#[test]
fn single_input_matches_python_reference() {
    let cases = reference("embeddings.json");
    let first = &cases[0];
    let (status, body) = embed(json!({"inputs": first["text"]}));
    assert_eq!(status, 200, "{body}");
    let got = vectors(&body);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 384);
    let want: Vec<f32> = serde_json::from_value(first["embedding"].clone()).unwrap();
    assert!(cosine(&got[0], &want) >= 0.999, "cosine {}", cosine(&got[0], &want));
    let norm: f32 = got[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalised by default, norm {norm}");
}

#[test]
fn every_reference_sentence_matches_in_batches() {
    let cases = reference("embeddings.json");
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 30);
    // Mixed lengths in one batch exercise padding; over-long texts need truncate.
    for chunk in cases.chunks(8) {
        let texts: Vec<&Value> = chunk.iter().map(|c| &c["text"]).collect();
        let truncate = chunk.iter().any(|c| c["needs_truncate"] == true);
        let (status, body) = embed(json!({"inputs": texts, "truncate": truncate}));
        assert_eq!(status, 200, "{body}");
        let got = vectors(&body);
        assert_eq!(got.len(), chunk.len());
        for (case, vector) in chunk.iter().zip(&got) {
            let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
            let c = cosine(vector, &want);
            assert!(c >= 0.999, "cosine {c} for {:?}", case["text"]);
        }
    }
}

#[test]
fn tabs_newlines_and_carriage_returns_are_text() {
    let (status, body) = embed(json!({"inputs": "tabs\tand\nnew\r\nlines"}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn batch_answers_equal_single_answers() {
    let texts = ["short", "a somewhat longer sentence with more tokens in it", "東京は日本の首都です。"];
    let (status, body) = embed(json!({"inputs": texts}));
    assert_eq!(status, 200, "{body}");
    let batch = vectors(&body);
    for (text, from_batch) in texts.iter().zip(&batch) {
        let (status, body) = embed(json!({"inputs": text}));
        assert_eq!(status, 200);
        let single = &vectors(&body)[0];
        assert!(cosine(single, from_batch) > 0.9999, "{text}");
    }
}

#[test]
fn normalize_false_keeps_the_raw_mean() {
    let (_, normalized) = embed(json!({"inputs": "raw mean please"}));
    let (status, raw) = embed(json!({"inputs": "raw mean please", "normalize": false}));
    assert_eq!(status, 200);
    let (normalized, raw) = (&vectors(&normalized)[0], &vectors(&raw)[0]);
    let norm: f32 = raw.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "unnormalised norm should not be 1, got {norm}");
    assert!(cosine(normalized, raw) > 0.9999);
}

#[test]
fn over_long_input_needs_truncate() {
    let cases = reference("embeddings.json");
    let long = cases.as_array().unwrap().iter().find(|c| c["needs_truncate"] == true).unwrap();
    let (status, body) = embed(json!({"inputs": long["text"]}));
    assert_error(status, &body, 422, "Validation");
    assert!(body["error"].as_str().unwrap().contains("truncate"), "{body}");
    let (status, body) = embed(json!({"inputs": long["text"], "truncate": true}));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn validation_errors_are_422_json() {
    let too_many: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    let cases = [
        json!({}),
        json!({"inputs": 5}),
        json!({"inputs": [1.5, 2]}),
        json!({"inputs": [-1]}),
        json!({"inputs": [99999]}),
        json!({"inputs": [[101, 102], []]}),
        json!({"inputs": ["text", [101, 102]]}),
        json!({"inputs": "ok", "dimensions": 0}),
        json!({"inputs": "ok", "dimensions": 385}),
        json!({"inputs": "ok", "truncation_direction": "Middle"}),
        json!({"inputs": "ok", "normalize": "yes"}),
        json!({"inputs": "ok", "truncate": 1}),
        json!({"inputs": []}),
        json!({"inputs": ""}),
        json!({"inputs": ["fine", "   "]}),
        json!({"inputs": too_many}),
        json!({"inputs": "null byte \u{0000} inside"}),
        json!({"inputs": ["fine", "bell \u{0007}"]}),
        json!({"inputs": "delete \u{007f}"}),
        json!(["inputs"]),
    ];
    for case in cases {
        let (status, body) = embed(case.clone());
        assert_error(status, &body, 422, "Validation");
    }
}

#[test]
fn malformed_json_is_422() {
    for raw in ["{", "{\"inputs\": \"unterminated}", "not json", ""] {
        let (status, body) = post_body(raw.to_string(), false);
        assert_error(status, &body, 422, "Validation");
    }
}

#[test]
fn wrong_content_type_is_415_and_wrong_method_405() {
    let response = client().post(host().url("/embed")).body("{\"inputs\":\"x\"}").send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 415, "UnsupportedMediaType");
    let response = client().get(host().url("/embed")).send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 405, "MethodNotAllowed");
}

#[test]
fn unknown_route_is_404_json() {
    let response = client().post(host().url("/nope")).send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 404, "NotFound");
}

#[test]
fn health_and_ready_describe_the_app() {
    let health: Value = client().get(host().url("/health")).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "ok");
    let ready: Value = client().get(host().url("/ready")).send().unwrap().json().unwrap();
    assert_eq!(ready["status"], "ok");
    let models = ready["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["intents", "minilm"], "{ready}");
    for model in models {
        assert_eq!(model["device"], "cpu");
        assert!(model["loaded_at"].as_str().unwrap().ends_with('Z'), "{ready}");
    }
    let components = ready["components"].as_array().unwrap();
    let ids: Vec<&str> = components.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["classify", "embed", "openai"], "{ready}");
    for component in components {
        let version = component["version"].as_str().unwrap();
        assert_eq!(version.len(), 64, "sha256 of the composed component: {version}");
        assert!(component["loaded_at"].as_str().is_some());
    }
}

#[test]
fn concurrent_requests_all_get_their_own_answer() {
    let texts: Vec<String> = (0..24).map(|i| format!("concurrent request number {i}")).collect();
    let singles: Vec<Vec<f32>> = std::thread::scope(|scope| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| scope.spawn(move || vectors(&embed(json!({"inputs": t})).1).remove(0)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (_, body) = embed(json!({"inputs": texts}));
    for (single, batched) in singles.iter().zip(vectors(&body)) {
        assert!(cosine(single, &batched) > 0.9999);
    }
}

/// POSTs a JSON body to /embed, with its length declared or chunked (no length).
fn post_body(body: String, chunked: bool) -> (u16, Value) {
    let body = if chunked {
        reqwest::blocking::Body::new(std::io::Cursor::new(body.into_bytes()))
    } else {
        reqwest::blocking::Body::from(body)
    };
    let response = client()
        .post(host().url("/embed"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn bodies_over_the_limit_are_413_before_the_component_runs() {
    let big = format!("{{\"inputs\": \"{}\"}}", "a ".repeat(1 << 20));
    let (status, body) = post_body(big.clone(), false);
    assert_error(status, &body, 413, "PayloadTooLarge");
    let (status, body) = post_body(big, true);
    assert_error(status, &body, 413, "PayloadTooLarge");
    // Under the limit, chunked: the component answers (the text is far over the token limit).
    let (status, body) = post_body(format!("{{\"inputs\": \"{}\"}}", "a ".repeat(400_000)), true);
    assert_error(status, &body, 422, "Validation");
}

#[test]
fn metrics_cover_requests_batches_models_and_instances() {
    for _ in 0..3 {
        assert_eq!(embed(json!({"inputs": ["metrics please", "and another"]})).0, 200);
    }
    assert_eq!(embed(json!({"inputs": []})).0, 422);
    let response = client().get(host().url("/metrics")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().unwrap();
    let value = |prefix: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && labels.iter().all(|label| l.contains(label)))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let ok = ["route=\"/embed\"", "component=\"embed\"", "status=\"200\""];
    assert!(value("edgeinfer_requests_total{", &ok) >= 3.0, "{text}");
    assert!(value("edgeinfer_requests_total{", &["route=\"/embed\"", "status=\"422\""]) >= 1.0, "{text}");
    assert!(value("edgeinfer_request_duration_seconds_count{", &["route=\"/embed\""]) >= 4.0, "{text}");
    let model = ["model=\"minilm\""];
    assert!(value("edgeinfer_batch_rows_count{", &model) >= 3.0, "{text}");
    assert!(value("edgeinfer_batch_rows_sum{", &model) >= 6.0, "two rows per request: {text}");
    assert!(value("edgeinfer_compute_seconds_count{", &model) >= 3.0, "{text}");
    assert!(value("edgeinfer_queue_seconds_count{", &model) >= 3.0, "{text}");
    assert!(value("edgeinfer_model_load_seconds{", &model) > 0.0, "{text}");
    assert!(value("edgeinfer_instances_created_total{", &["component=\"embed\""]) >= 1.0, "{text}");
    let live = value("edgeinfer_live_instances{", &["component=\"embed\""]);
    assert!(live >= 1.0, "{text}");
    // Linear memory of the live instances: at least a tokenizer's worth each (its vocabulary
    // alone is over a mebibyte), at most the 512 MiB cap each.
    let memory = value("edgeinfer_instance_memory_bytes{", &["component=\"embed\""]);
    assert!(
        memory >= live * (1 << 20) as f64 && memory <= live * (512 << 20) as f64,
        "{memory} for {live}: {text}"
    );
}

#[test]
fn oversized_request_heads_are_431() {
    let huge = "x".repeat(100 << 10);
    let response = client().post(host().url("/embed")).header("x-padding", huge).send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 431, "HeadersTooLarge");
    let mut request = client().post(host().url("/embed"));
    for i in 0..150 {
        request = request.header(format!("x-h{i}"), "v");
    }
    assert_eq!(request.send().unwrap().status().as_u16(), 431);
    assert_eq!(embed(json!({"inputs": "still serving"})).0, 200);
}

#[test]
fn a_request_head_that_never_finishes_is_cut_off() {
    use std::io::{Read, Write};
    let address = host().base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"POST /embed HTTP/1.1\r\nhost: slow\r\ncontent-type: application/json\r\n").unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(8) && waited < std::time::Duration::from_secs(20),
        "closed after {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[test]
fn every_answer_carries_a_request_id() {
    let first = client().post(host().url("/embed")).json(&json!({"inputs": "id please"})).send().unwrap();
    let second = client().post(host().url("/embed")).json(&json!({"inputs": []})).send().unwrap();
    let (a, b) = (first.headers()["x-request-id"].clone(), second.headers()["x-request-id"].clone());
    assert!(!a.is_empty() && a != b, "generated and distinct: {a:?} {b:?}");
    let echoed =
        client().post(host().url("/nope")).header("x-request-id", "client-chosen-42").send().unwrap();
    assert_eq!(echoed.status().as_u16(), 404);
    assert_eq!(echoed.headers()["x-request-id"], "client-chosen-42", "a client's id is kept");
}

#[test]
fn token_ids_embed_like_their_text() {
    let cases = reference("tokens.json");
    let cases = &cases.as_array().unwrap()[..3];
    let texts: Vec<&Value> = cases.iter().map(|c| &c["text"]).collect();
    let ids: Vec<&Value> = cases.iter().map(|c| &c["ids"]).collect();
    let (status, by_text) = embed(json!({"inputs": texts}));
    assert_eq!(status, 200, "{by_text}");
    let (status, by_ids) = embed(json!({"inputs": ids}));
    assert_eq!(status, 200, "{by_ids}");
    for (a, b) in vectors(&by_text).iter().zip(&vectors(&by_ids)) {
        assert!(cosine(a, b) > 0.9999, "cosine {}", cosine(a, b));
    }
    // One list of ids is one input, answered as a list of one vector.
    let (status, one) = embed(json!({"inputs": cases[0]["ids"]}));
    assert_eq!(status, 200);
    assert_eq!(vectors(&one).len(), 1);
    assert!(cosine(&vectors(&one)[0], &vectors(&by_text)[0]) > 0.9999);
}

#[test]
fn dimensions_keep_a_renormalised_prefix() {
    let (status, full) = embed(json!({"inputs": "matryoshka dolls nest", "normalize": false}));
    assert_eq!(status, 200);
    let full = &vectors(&full)[0];
    for n in [16usize, 128, 384] {
        let (status, cut) = embed(json!({"inputs": "matryoshka dolls nest", "dimensions": n}));
        assert_eq!(status, 200, "{cut}");
        let cut = &vectors(&cut)[0];
        assert_eq!(cut.len(), n);
        let norm: f32 = full[..n].iter().map(|v| v * v).sum::<f32>().sqrt();
        for (got, raw) in cut.iter().zip(&full[..n]) {
            assert!((got - raw / norm).abs() < 1e-6, "dimensions={n}: {got} vs {}", raw / norm);
        }
    }
    let (status, raw_cut) =
        embed(json!({"inputs": "matryoshka dolls nest", "dimensions": 8, "normalize": false}));
    assert_eq!(status, 200);
    assert_eq!(vectors(&raw_cut)[0], full[..8], "without normalize, the raw prefix");
}

#[test]
fn truncation_direction_chooses_the_end_that_is_kept() {
    let filler = "tokens that pad the text well past the limit ".repeat(40);
    let texts = [format!("cats purr softly. {filler}"), format!("stock markets fell sharply. {filler}")];
    let answer = |direction: &str| {
        let (status, body) =
            embed(json!({"inputs": texts, "truncate": true, "truncation_direction": direction}));
        assert_eq!(status, 200, "{body}");
        vectors(&body)
    };
    // Cut from the left, only the shared end is left: the two texts embed the same.
    let left = answer("Left");
    assert!(cosine(&left[0], &left[1]) > 0.9999, "left: {}", cosine(&left[0], &left[1]));
    // Cut from the right (the default), their different beginnings remain.
    let right = answer("Right");
    assert!(cosine(&right[0], &right[1]) < 0.99, "right: {}", cosine(&right[0], &right[1]));
    let (_, default) = embed(json!({"inputs": texts, "truncate": true}));
    assert_eq!(vectors(&default), right);
}
