//! Request logs (JSON): one line per request with its id, route, component and version, status,
//! latency, a hash of the input (never the input itself unless the operator turns that on), the
//! tokens computed and the error type.

mod common;

use common::{ADMIN_TOKEN, Host, client, repo_root};
use serde_json::{Value, json};
use sha2::Digest;

fn json_logging_host(log_inputs: bool) -> Host {
    let mut env = vec![("EDGEINFER_LOG_FORMAT", "json")];
    if log_inputs {
        env.push(("EDGEINFER_LOG_INPUTS", "true"));
    }
    Host::start_with_env(&repo_root().join("spin.toml"), &[], &env)
}

/// POSTs `body` to `/embed` with the given request id; returns the status and the token header.
fn embed(host: &Host, request_id: &str, body: &[u8]) -> (u16, Option<String>) {
    let response = client()
        .post(host.url("/embed"))
        .header("content-type", "application/json")
        .header("x-request-id", request_id)
        .body(body.to_vec())
        .send()
        .unwrap();
    let tokens = response.headers().get("x-compute-tokens").map(|v| v.to_str().unwrap().to_string());
    (response.status().as_u16(), tokens)
}

/// The fields of the request log line of `request_id` (waits for the line to be written).
fn request_line(host: &Host, request_id: &str) -> Value {
    for _ in 0..100 {
        let found =
            host.log().iter().filter_map(|line| serde_json::from_str::<Value>(line).ok()).find(|line| {
                line["fields"]["message"] == "request" && line["fields"]["request_id"] == request_id
            });
        if let Some(line) = found {
            return line["fields"].clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("no request log line for {request_id}:\n{}", host.log().join("\n"));
}

#[test]
fn request_logs_carry_hash_tokens_and_error_type_but_not_the_text() {
    let host = json_logging_host(false);
    let secret = "my account number is 31415926";
    let body = serde_json::to_vec(&json!({"inputs": [secret, "hello world"]})).unwrap();
    let (status, tokens) = embed(&host, "log-test-ok", &body);
    assert_eq!(status, 200);
    let line = request_line(&host, "log-test-ok");
    assert_eq!(line["route"], "/embed");
    assert_eq!(line["component"], "embed");
    assert_eq!(line["status"], 200);
    assert!(line["us"].as_u64().unwrap() > 0);
    assert_eq!(line["version"].as_str().unwrap().len(), 12, "the component's version: {line}");
    let hash = hex::encode(&sha2::Sha256::digest(&body)[..8]);
    assert_eq!(line["input_hash"], hash.as_str(), "{line}");
    assert_eq!(line["input_bytes"], body.len());
    // [CLS] my account number is 314 ##15 ##92 ##6 [SEP] = 10, [CLS] hello world [SEP] = 4.
    assert_eq!(tokens.as_deref(), Some("14"), "the response reports the tokens computed");
    assert_eq!(line["tokens"], 14, "{line}");
    assert!(line.get("input").is_none() && line.get("error_type").is_none(), "{line}");

    let (status, _) = embed(&host, "log-test-bad", br#"{"inputs": ""}"#);
    assert_eq!(status, 422);
    let line = request_line(&host, "log-test-bad");
    assert_eq!(line["error_type"], "Validation", "{line}");
    assert_eq!(line["status"], 422);

    let everything = host.log().join("\n");
    assert!(!everything.contains("31415926"), "the input text must not be logged by default");
}

#[test]
fn the_operator_can_turn_on_input_logging() {
    let host = json_logging_host(true);
    let body = br#"{"inputs": "log me, please"}"#;
    assert_eq!(embed(&host, "log-test-input", body).0, 200);
    let line = request_line(&host, "log-test-input");
    assert_eq!(line["input"], std::str::from_utf8(body).unwrap(), "{line}");
}

#[test]
fn every_listener_logs_and_counts_its_requests_the_same_way() {
    let root = repo_root();
    let args = ["--admin-listen", "127.0.0.1:0"];
    let env = [("EDGEINFER_LOG_FORMAT", "json"), ("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)];
    let host = Host::start_with_env(&root.join("spin.toml"), &args, &env);
    let admin = host.admin.clone().expect("the admin listener");
    let answered = client()
        .get(format!("{admin}/admin/v1/app"))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-request-id", "log-test-admin")
        .send()
        .unwrap();
    assert_eq!(answered.status(), 200);
    assert_eq!(answered.headers()["x-request-id"], "log-test-admin", "the admin API echoes request ids");
    let line = request_line(&host, "log-test-admin");
    assert_eq!(line["listener"], "admin", "{line}");
    assert_eq!(
        (&line["route"], &line["component"], &line["status"]),
        (&json!("/admin/v1/app"), &json!("admin"), &json!(200)),
        "{line}"
    );
    let refused = client()
        .get(format!("{admin}/admin/v1/app"))
        .header("x-request-id", "log-test-admin-refused")
        .send()
        .unwrap();
    assert_eq!(refused.status(), 401);
    let line = request_line(&host, "log-test-admin-refused");
    assert_eq!(
        (&line["route"], &line["error_type"]),
        (&json!("unmatched"), &json!("Unauthorized")),
        "{line}"
    );

    assert_eq!(embed(&host, "log-test-public", br#"{"inputs": "hi"}"#).0, 200);
    assert_eq!(request_line(&host, "log-test-public")["listener"], "public");
    let metrics = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let counted = |route: &str, component: &str| {
        metrics.lines().any(|line| {
            line.starts_with("edgeinfer_requests_total{")
                && line.contains(&format!("route=\"{route}\""))
                && line.contains(&format!("component=\"{component}\""))
        })
    };
    assert!(counted("/admin/v1/app", "admin") && counted("/embed", "embed"), "{metrics}");
}
