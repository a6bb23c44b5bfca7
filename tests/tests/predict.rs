//! /predict end to end: the default app's intent classifier (all-MiniLM-L6-v2 exported by
//! `edgeinfer export` at first start, with rag-intent-classifier's logistic-regression head),
//! compared with numpy BERT + scikit-learn's own `predict_proba` (tests/reference/intents.json).

mod common;

use std::collections::HashMap;
use std::sync::OnceLock;

use common::{Host, assert_error, client, post_json, reference, repo_root};
use serde_json::{Value, json};

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::start(&repo_root().join("spin.toml"), &[]))
}

fn predict(body: Value) -> (u16, Value) {
    post_json(&host().url("/predict"), &body)
}

/// A prediction list as (label, score) pairs.
fn pairs(list: &Value) -> Vec<(String, f64)> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list of predictions, got {list}"))
        .iter()
        .map(|p| (p["label"].as_str().unwrap().to_string(), p["score"].as_f64().unwrap()))
        .collect()
}

fn labels() -> Vec<String> {
    serde_json::from_value(reference("intents.json")["labels"].clone()).unwrap()
}

#[test]
fn every_sentence_matches_scikit_learn_within_1e_4() {
    let reference = reference("intents.json");
    let labels = labels();
    for case in reference["cases"].as_array().unwrap() {
        let (status, body) = predict(json!({"inputs": case["text"]}));
        assert_eq!(status, 200, "{body}");
        let got = pairs(&body);
        assert_eq!(got.len(), labels.len(), "all labels come back without top_k");
        assert_eq!(got[0].0, case["label"], "top label of {}", case["text"]);
        assert!(got.windows(2).all(|w| w[0].1 >= w[1].1), "sorted by score: {body}");
        let by_label: HashMap<&str, f64> = got.iter().map(|(l, s)| (l.as_str(), *s)).collect();
        for (label, expected) in labels.iter().zip(case["scores"].as_array().unwrap()) {
            let (got, expected) = (by_label[label.as_str()], expected.as_f64().unwrap());
            assert!((got - expected).abs() < 1e-4, "{}: {label} {got} vs {expected}", case["text"]);
        }
    }
}

#[test]
fn obvious_sentences_get_the_obvious_intent() {
    let cases = [
        ("set a timer for ten minutes", "timer"),
        ("flip a coin", "flip_coin"),
        ("tell me a joke", "tell_joke"),
        ("what's the weather going to be like tomorrow in Boston", "weather"),
        ("how do you say thank you in japanese", "translate"),
        ("i want to book a flight to paris next friday", "book_flight"),
        ("roll a six sided die for me", "roll_dice"),
        ("hello there", "greeting"),
        ("i want to speak to a real person", "connect_to_human"),
        ("this is ridiculous, i want to escalate this to a manager", "escalate_issue"),
        ("my card got declined at the store", "card_declined"),
    ];
    for (text, want) in cases {
        let (status, body) = predict(json!({"inputs": text, "top_k": 1}));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body[0]["label"], want, "{text}: {body}");
    }
}

#[test]
fn list_input_equals_single_inputs() {
    let reference = reference("intents.json");
    let texts: Vec<&Value> =
        reference["cases"].as_array().unwrap().iter().map(|c| &c["text"]).take(20).collect();
    let (status, batch) = predict(json!({"inputs": texts, "top_k": 5}));
    assert_eq!(status, 200, "{batch}");
    let batch = batch.as_array().expect("a list of lists for a list of inputs");
    assert_eq!(batch.len(), texts.len());
    for (text, answer) in texts.iter().zip(batch) {
        let (_, single) = predict(json!({"inputs": text, "top_k": 5}));
        let (a, b) = (pairs(answer), pairs(&single));
        for ((la, sa), (lb, sb)) in a.iter().zip(&b) {
            assert_eq!(la, lb, "{text}");
            assert!((sa - sb).abs() < 1e-5, "{text}: {sa} vs {sb}");
        }
    }
}

#[test]
fn top_k_cuts_the_ranked_list() {
    let text = "what is my current bank balance";
    let (_, all) = predict(json!({"inputs": text}));
    let all = pairs(&all);
    for k in [1usize, 3, 10] {
        let (status, body) = predict(json!({"inputs": text, "top_k": k}));
        assert_eq!(status, 200, "{body}");
        // Labels exactly; scores up to float noise, since a request batched with longer ones runs padded.
        let cut = pairs(&body);
        assert_eq!(cut.len(), k, "top_k {k}");
        for ((la, sa), (lb, sb)) in cut.iter().zip(&all[..k]) {
            assert_eq!(la, lb, "top_k {k}");
            assert!((sa - sb).abs() < 1e-5, "top_k {k}: {sa} vs {sb}");
        }
    }
    let (status, body) = predict(json!({"inputs": text, "top_k": 100000}));
    assert_eq!(status, 200);
    assert_eq!(pairs(&body).len(), labels().len(), "a top_k above the label count gives all labels");
    let (status, body) = predict(json!({"inputs": text, "top_k": null}));
    assert_eq!((status, pairs(&body).len()), (200, labels().len()));
}

#[test]
fn raw_scores_are_the_logits_behind_the_probabilities() {
    let text = "please add eggs to my shopping list";
    let (_, probs) = predict(json!({"inputs": text}));
    let (status, raw) = predict(json!({"inputs": text, "raw_scores": true}));
    assert_eq!(status, 200, "{raw}");
    let (probs, raw) = (pairs(&probs), pairs(&raw));
    assert_eq!(probs.iter().map(|p| &p.0).collect::<Vec<_>>(), raw.iter().map(|p| &p.0).collect::<Vec<_>>());
    assert!(raw.iter().any(|(_, s)| *s < 0.0 || *s > 1.0), "raw scores are logits, not probabilities");
    let max = raw[0].1;
    let sum: f64 = raw.iter().map(|(_, s)| (s - max).exp()).sum();
    for ((_, p), (_, r)) in probs.iter().zip(&raw) {
        assert!((p - (r - max).exp() / sum).abs() < 1e-6, "softmax(raw) = probabilities");
    }
    let total: f64 = probs.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
}

#[test]
fn labels_file_matches_the_source_package() {
    let written: Vec<String> =
        serde_json::from_slice(&std::fs::read(repo_root().join("models/intents/labels.json")).unwrap())
            .unwrap();
    assert_eq!(written, labels());
    assert_eq!(written.len(), 157);
    assert!(written.iter().any(|l| l == "negative_sentiment"));
}

#[test]
fn over_long_input_needs_truncate() {
    let long = "set a timer for ten minutes please ".repeat(60);
    let (status, body) = predict(json!({"inputs": long}));
    assert_error(status, &body, 422, "Validation");
    assert!(body["error"].as_str().unwrap().contains("truncate"), "{body}");
    let (status, body) = predict(json!({"inputs": long, "truncate": true, "top_k": 1}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["label"], "timer");
}

#[test]
fn bad_requests_are_json_errors() {
    let too_many: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    let cases = [
        json!({}),
        json!({"inputs": ""}),
        json!({"inputs": "   "}),
        json!({"inputs": []}),
        json!({"inputs": too_many}),
        json!({"inputs": 42}),
        json!({"inputs": [["sentence", "pair"]]}),
        json!({"inputs": "bell \u{7} character"}),
        json!({"inputs": "x", "top_k": 0}),
        json!({"inputs": "x", "top_k": -1}),
        json!({"inputs": "x", "top_k": "3"}),
        json!({"inputs": "x", "raw_scores": "yes"}),
        json!(["inputs", "x"]),
    ];
    for case in cases {
        let (status, body) = predict(case.clone());
        assert_error(status, &body, 422, "Validation");
        eprintln!("{case} -> {body}");
    }
    let response = client().post(host().url("/predict")).body("{\"inputs\":\"x\"}").send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 415, "UnsupportedMediaType");
    let response = client().get(host().url("/predict")).send().unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 405, "MethodNotAllowed");
    let response = client()
        .post(host().url("/predict"))
        .header("content-type", "application/json")
        .body("{\"inputs\": \"x\"")
        .send()
        .unwrap();
    let status = response.status().as_u16();
    assert_error(status, &response.json().unwrap(), 422, "Validation");
}

#[test]
fn tabs_and_newlines_are_text() {
    let (status, body) = predict(json!({"inputs": "set a timer\tfor ten\r\nminutes", "top_k": 1}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body[0]["label"], "timer");
}
