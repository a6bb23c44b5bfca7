//! `[host] memory_budget`: a budget the models cannot fit in stops the start with a message
//! naming them; a budget they fit in is planned (logged), and a request larger than the budget's
//! engine runs is computed in parts with the answers it gets alone.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Host, client, repo_root};
use serde_json::{Value, json};

/// The default app's runtime config with `[host] memory_budget = BUDGET`.
fn budget_config(budget: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeinfer-memory-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    let path = dir.join(format!("budget-{budget}.toml"));
    std::fs::write(&path, format!("{local}\n[host]\nmemory_budget = \"{budget}\"\n")).unwrap();
    path
}

#[test]
fn a_budget_the_models_do_not_fit_in_stops_the_start_naming_them() {
    let config = budget_config("160MiB");
    let output = Command::new("timeout")
        .arg("120")
        .arg(common::host_binary())
        .args(["up", "--listen", "127.0.0.1:0", "--runtime-config-file", config.to_str().unwrap()])
        .current_dir(repo_root())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{said}");
    assert!(said.contains("memory_budget 160 MiB is too small"), "{said}");
    assert!(said.contains("minilm") && said.contains("intents") && said.contains("give at least"), "{said}");
}

/// Ten passages of about 300 words: over 256 tokens each, truncated to 256.
fn passages() -> Vec<String> {
    let words = "the warehouse report describes deliveries returns scanners forklifts and winter roads ";
    (0..10).map(|i| format!("passage {i}: {}", words.repeat(30))).collect()
}

fn embed(host: &Host, inputs: Value) -> Vec<Vec<f64>> {
    let response =
        client().post(host.url("/embed")).json(&json!({"inputs": inputs, "truncate": true})).send().unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_value(response.json().unwrap()).unwrap()
}

#[test]
fn under_a_budget_a_large_request_runs_in_parts_with_the_answers_it_gets_alone() {
    let config = budget_config("512MiB");
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.to_str().unwrap()]);
    let log = host.log().join("\n");
    let plan = log.lines().find(|l| l.contains("memory budget 512 MiB")).unwrap_or_else(|| panic!("{log}"));
    assert!(plan.contains("ONNX Runtime's arena and memory patterns off"), "{plan}");
    // The plan's token limit for minilm is below 10 rows of 256 tokens, so this request is cut.
    let tokens: u64 = plan
        .split("at most ")
        .nth(1)
        .and_then(|rest| rest.split("minilm ").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no token limit for minilm in {plan}"));
    assert!(tokens < 10 * 256, "{plan}");
    let texts = passages();
    let metrics = || client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let minilm = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix) && l.contains("model=\"minilm\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = metrics();
    let together = embed(&host, json!(texts));
    let after = metrics();
    // Engine runs of at most the plan's rows of 256 tokens: the 10 rows took several.
    let runs = minilm(&after, "edgeinfer_batch_rows_count{") - minilm(&before, "edgeinfer_batch_rows_count{");
    let rows = minilm(&after, "edgeinfer_batch_rows_sum{") - minilm(&before, "edgeinfer_batch_rows_sum{");
    let per_run = (tokens / 256).max(1) as f64;
    assert_eq!((runs, rows), ((10.0 / per_run).ceil(), 10.0), "{plan}");
    assert_eq!(together.len(), texts.len());
    for (text, vector) in texts.iter().zip(&together) {
        let alone = embed(&host, json!(text));
        let largest = vector.iter().zip(&alone[0]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(largest < 1e-4, "{text}: differs by {largest} computed in parts");
    }
}
