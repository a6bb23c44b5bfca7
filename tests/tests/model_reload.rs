//! Reloading a model through the admin API: under load nothing fails and the answers stay the
//! same; a corrupt file or a model with another interface is refused while the old graph serves;
//! a model that failed to load at start serves after a reload from a good file.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{
    ADMIN_TOKEN, Host, admin_host, assert_error, client, onnxruntime_section, post_json, repo_root,
};
use serde_json::{Value, json};

fn reload(host: &Host, model: &str, body: &Value) -> (u16, Value) {
    let url = format!("{}/admin/v1/models/{model}/reload", host.admin.as_ref().unwrap());
    let response = client().post(url).bearer_auth(ADMIN_TOKEN).json(body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// The model as `GET /admin/v1/app` lists it.
fn listed(host: &Host, model: &str) -> Value {
    let url = format!("{}/admin/v1/app", host.admin.as_ref().unwrap());
    let app: Value = client().get(url).bearer_auth(ADMIN_TOKEN).send().unwrap().json().unwrap();
    app["models"].as_array().unwrap().iter().find(|m| m["name"] == model).cloned().unwrap_or_default()
}

fn scratch_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeinfer-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_model_reload_under_load_drops_nothing() {
    let host = Arc::new(admin_host("spin.toml", None));
    let body = json!({"inputs": ["a model reload must not drop me", "nor me"]});
    let (status, expected) = post_json(&host.url("/embed"), &body);
    assert_eq!(status, 200, "{expected}");
    let before = listed(&host, "minilm");
    assert_eq!(before["ready"], true, "{before}");

    // The new version of the model: the same bytes from another file.
    let dir = scratch_dir("model-reload");
    let copy = dir.join("minilm-copy.onnx");
    std::fs::copy(repo_root().join("models/all-minilm-l6-v2/model.onnx"), &copy).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (host, stop, body, expected) = (host.clone(), stop.clone(), body.clone(), expected.clone());
            std::thread::spawn(move || {
                let (mut answered, mut failures) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match client().post(host.url("/embed")).json(&body).send() {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let answer: Value = response.json().unwrap_or(Value::Null);
                            if status != 200 || answer != expected {
                                failures.push(format!("{status}: {answer}"));
                            }
                            answered += 1;
                        }
                        Err(e) => failures.push(format!("no answer: {e}")),
                    }
                }
                (answered, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, reloaded) = reload(&host, "minilm", &json!({"path": copy}));
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["sha256"], before["sha256"], "the same model bytes");
    assert_eq!(reloaded["replaced"], before["sha256"]);
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (mut answered, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, f) = client.join().unwrap();
        answered += n;
        failures.extend(f);
    }
    eprintln!(
        "model reload under load: {answered} requests, {} failed, reload took {} ms",
        failures.len(),
        reloaded["load_ms"]
    );
    assert!(
        failures.is_empty(),
        "{} of {answered} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(answered > 50, "the load ran through the reload ({answered} requests)");
    let after = listed(&host, "minilm");
    assert_eq!(after["path"].as_str().unwrap(), copy.to_str().unwrap(), "{after}");
    assert_ne!(after["loaded_at"], before["loaded_at"]);

    // Refused reloads leave the serving graph alone.
    let corrupt = dir.join("corrupt.onnx");
    std::fs::write(&corrupt, b"not an ONNX model").unwrap();
    let (status, body) = reload(&host, "minilm", &json!({"path": corrupt}));
    assert_error(status, &body, 400, "InvalidModel");
    let (status, body) = reload(&host, "minilm", &json!({"path": copy, "sha256": "0".repeat(64)}));
    assert_error(status, &body, 400, "InvalidModel");
    assert!(body["error"].as_str().unwrap().contains("sha256"), "{body}");
    let intents = repo_root().join("models/intents/model.onnx");
    let (status, body) = reload(&host, "minilm", &json!({"path": intents}));
    assert_error(status, &body, 400, "IncompatibleModel");
    let (status, body) = reload(&host, "nonesuch", &json!({}));
    assert_error(status, &body, 404, "ModelNotFound");
    let (status, body) = reload(&host, "minilm", &json!({"file": "typo"}));
    assert_error(status, &body, 400, "Validation");
    assert_eq!(listed(&host, "minilm")["path"].as_str().unwrap(), copy.to_str().unwrap());
    let (status, answer) =
        post_json(&host.url("/embed"), &json!({"inputs": ["a model reload must not drop me", "nor me"]}));
    assert_eq!((status, &answer), (200, &expected), "the reloaded graph still serves");

    // With no body, the model reloads from where it is.
    let (status, body) = reload(&host, "minilm", &json!({}));
    assert_eq!(status, 200, "{body}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_model_that_failed_to_load_serves_after_a_reload() {
    let dir = scratch_dir("model-recover");
    let intents = repo_root().join("models/intents/model.onnx");
    let config = format!(
        "[model.minilm]\npath = \"{}\"\n\n[model.intents]\npath = \"{}\"\n\n{}",
        dir.join("not-there-yet.onnx").display(),
        intents.display(),
        onnxruntime_section()
    );
    let runtime = dir.join("runtime.toml");
    std::fs::write(&runtime, config).unwrap();
    let host = admin_host("spin.toml", Some(runtime.to_str().unwrap()));
    assert_eq!(client().get(host.url("/ready")).send().unwrap().status().as_u16(), 503);
    let (status, body) = post_json(&host.url("/embed"), &json!({"inputs": "hello"}));
    assert_error(status, &body, 503, "ModelUnavailable");

    let model = repo_root().join("models/all-minilm-l6-v2/model.onnx");
    let (status, body) = reload(&host, "minilm", &json!({"path": model}));
    assert_eq!(status, 200, "{body}");
    assert!(body["replaced"].is_null(), "nothing served before: {body}");
    assert_eq!(client().get(host.url("/ready")).send().unwrap().status().as_u16(), 200);
    let (status, body) = post_json(&host.url("/embed"), &json!({"inputs": "hello"}));
    assert_eq!(status, 200, "the component that failed to load the model loads it now: {body}");
    let metrics = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.lines().any(|l| l == "edgeinfer_model_ready{model=\"minilm\"} 1"), "{metrics}");
    let _ = std::fs::remove_dir_all(dir);
}
