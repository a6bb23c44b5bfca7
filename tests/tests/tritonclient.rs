//! NVIDIA's `tritonclient` (from PyPI, installed by scripts/python-clients) against the host's
//! KServe v2 API, REST and gRPC: what its users run unchanged. tests/clients/tritonclient_*.py do
//! the client side and check answers against ONNX Runtime's Python API; these tests start the
//! host, run them, and check the figures they report and that the host merged concurrent requests.

mod common;

use common::{Host, KSERVE_TOKEN, Variant, client, repo_root, run_client_script};
use serde_json::Value;

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains("model=\"minilm\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Runs `script` with `args`, then the token, the model and the token reference; its report.
fn run_client(script: &str, args: &[String]) -> Value {
    let root = repo_root();
    let (model, tokens) =
        (root.join("models/all-minilm-l6-v2/model.onnx"), root.join("tests/reference/tokens.json"));
    let mut all: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    all.extend([KSERVE_TOKEN.as_ref(), model.as_os_str(), tokens.as_os_str()]);
    run_client_script(script, &all)
}

/// Rows the engine ran for minilm, and in how many runs.
fn rows_and_runs(host: &Host) -> (f64, f64) {
    let metrics = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    (metric(&metrics, "edgeinfer_batch_rows_sum{"), metric(&metrics, "edgeinfer_batch_rows_count{"))
}

#[test]
fn tritonclient_grpc_gets_the_rest_answers_and_32_clients_share_batches() {
    let config = Variant::kserve_config();
    let host = Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap(), "--grpc-listen", "127.0.0.1:0"],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", KSERVE_TOKEN)],
    );
    let grpc = host.grpc_address();
    let http = host.base.trim_start_matches("http://").to_string();
    let report = run_client("tritonclient_grpc.py", &[grpc, http]);
    assert_eq!(report["cases"], 6, "{report}");
    assert!(report["max_abs_diff_vs_onnxruntime"].as_f64().unwrap() < 1e-4, "{report}");
    assert_eq!(report["concurrent_clients"], 32, "{report}");
    assert_eq!(report["errors"]["no token"]["code"], "UNAUTHENTICATED", "{report}");
    assert_eq!(report["errors"]["unknown model"]["error_type"], "ModelNotFound", "{report}");

    // 6 cases over gRPC and REST, 3 compression cases, 32 clients, one after the malformed ones.
    let (rows, runs) = rows_and_runs(&host);
    assert_eq!(rows, 6.0 * 2.0 + 3.0 + 32.0 + 1.0);
    assert!(runs < rows, "{rows} rows in {runs} runs: the concurrent clients were not batched");
    eprintln!("{rows} requests ran in {runs} engine runs");
    // gRPC calls are counted like HTTP requests, by method.
    let metrics = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let infer_ok = metrics.lines().any(|l| {
        l.starts_with("edgeinfer_requests_total{")
            && l.contains("route=\"/inference.GRPCInferenceService/ModelInfer\"")
            && l.contains("status=\"200\"")
    });
    assert!(infer_ok, "{metrics}");
}

#[test]
fn tritonclient_http_gets_the_onnxruntime_answers_with_binary_data_on_and_off() {
    let host = common::kserve_host();
    let report = run_client("tritonclient_http.py", &[host.base.trim_start_matches("http://").to_string()]);
    assert_eq!(report["cases"], 6, "{report}");
    assert!(report["max_abs_diff_vs_onnxruntime"].as_f64().unwrap() < 1e-4, "{report}");
    assert_eq!(report["concurrent"], 32, "{report}");
    assert!(report["errors"]["unknown model"].as_str().unwrap().contains("no model named"), "{report}");

    // 6 cases x 3 calls, 3 compression cases, the burst of 32: all reached the engine once.
    // (Whether the burst shares runs depends on how fast the client's greenlets send: the gRPC
    // test, whose 32 clients are released together, checks merging.)
    let (rows, runs) = rows_and_runs(&host);
    assert_eq!(rows, 6.0 * 3.0 + 3.0 + 32.0);
    eprintln!("{rows} requests ran in {runs} engine runs");
}
