//! `/metrics` as Prometheus itself reads it: after traffic through every kind of route (a
//! component, a component's error, an unmatched path, the host's own routes, KServe), Prometheus's
//! linter (`promtool check metrics`, from Debian's `prometheus` package, which scripts/test
//! installs) finds nothing, so every family has its `# HELP` and follows the naming conventions.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{KSERVE_TOKEN, client, kserve_host, post_json};
use serde_json::json;

#[test]
fn metrics_lint_clean_with_promtool() {
    let host = kserve_host();
    assert_eq!(post_json(&host.url("/embed"), &json!({"inputs": "hello"})).0, 200);
    assert_eq!(post_json(&host.url("/predict"), &json!({"inputs": "set a timer"})).0, 200);
    assert_eq!(post_json(&host.url("/embed"), &json!({"inputs": 5})).0, 422);
    assert_eq!(post_json(&host.url("/nowhere"), &json!({})).0, 404);
    let infer = json!({"inputs": [
        {"name": "input_ids", "shape": [1, 3], "datatype": "INT64", "data": [101, 7592, 102]},
        {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
        {"name": "token_type_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 0, 0]}
    ]});
    let kserve = client()
        .post(host.url("/v2/models/minilm/infer"))
        .bearer_auth(KSERVE_TOKEN)
        .json(&infer)
        .send()
        .unwrap();
    assert_eq!(kserve.status(), 200, "{}", kserve.text().unwrap());
    let page = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    for family in ["edgeinfer_requests_total", "edgeinfer_batch_rows", "edgeinfer_model_ready"] {
        assert!(page.contains(&format!("# HELP {family} ")), "{family} has its help line:\n{page}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is not installed (scripts/test installs Debian's prometheus package)");
    promtool.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let findings =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}\n{page}"
    );
}
