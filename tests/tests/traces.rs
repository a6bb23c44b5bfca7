//! OpenTelemetry traces, received by a real OTLP receiver (tests/clients/otlp_receiver.py,
//! decoding with the OpenTelemetry project's own protobuf definitions): the span tree of a
//! request (request → component → admission, tokenize, compute → queue), the batch an engine run
//! serves linked both ways to every request in it with the ONNX Runtime run inside, the caller's
//! `traceparent` honoured, request and trace ids in the log line, sampling by ratio and by the
//! caller's choice, and one trace across two hosts through nn-remote's outbound call.

mod common;

use std::time::Duration;

use common::{Host, KSERVE_TOKEN, OtlpReceiver, Variant, client, repo_root};
use serde_json::{Value, json};

/// The default app with the embedding model's batches held open 100 ms for batch-mates (so that a
/// concurrent pair rides one engine run), exporting to `endpoint`.
fn traced_host(endpoint: &str, extra: &[&str]) -> (Host, Variant) {
    let config = Variant::new("runtime-config/local.toml", "traces", |text| {
        assert!(text.contains("max_queue_delay_us = 0"));
        text.replace("max_queue_delay_us = 0", "max_queue_delay_us = 100000")
    });
    let mut args = vec!["--runtime-config-file", config.0.to_str().unwrap(), "--otlp-endpoint", endpoint];
    args.extend_from_slice(extra);
    (Host::start(&repo_root().join("spin.toml"), &args), config)
}

/// Stops `host` as an operator would (SIGTERM), which sends its last spans.
fn stop(host: Host) {
    host.stop(libc::SIGTERM, Duration::from_secs(40));
}

fn embed(host: &Host, traceparent: Option<&str>) -> reqwest::blocking::Response {
    let mut request = client().post(host.url("/embed")).json(&json!({"inputs": "What is Deep Learning?"}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status(), 200);
    response
}

fn traceparent(trace: &str, parent: &str, sampled: bool) -> String {
    format!("00-{trace}-{parent}-{}", if sampled { "01" } else { "00" })
}

/// The one span of `trace` named `name`.
fn span<'a>(spans: &'a [Value], trace: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = spans.iter().filter(|s| s["trace_id"] == trace && s["name"] == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in trace {trace}: {spans:#?}");
    found[0]
}

fn by_id<'a>(spans: &'a [Value], id: &Value) -> &'a Value {
    spans.iter().find(|s| &s["span_id"] == id).unwrap_or_else(|| panic!("no span {id}"))
}

fn links(span: &Value) -> Vec<&Value> {
    span["links"].as_array().unwrap().iter().map(|l| &l["span_id"]).collect()
}

const ALONE: &str = "0af7651916cd43dd8448eb211c80319c";
const PAIR: [&str; 2] = ["1bf7651916cd43dd8448eb211c80319c", "2cf7651916cd43dd8448eb211c80319c"];
const CALLER: &str = "b7ad6b7169203331";

#[test]
fn a_request_and_a_batched_pair_have_their_span_trees() {
    let receiver = OtlpReceiver::start();
    let (host, _config) = traced_host(&receiver.grpc, &[]);
    let alone = embed(&host, Some(&traceparent(ALONE, CALLER, true)));
    let request_id = alone.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!alone.headers().contains_key("x-edgeinfer-tokenization"), "the host keeps it to itself");
    std::thread::scope(|scope| {
        for trace in PAIR {
            let host = &host;
            scope.spawn(move || embed(host, Some(&traceparent(trace, CALLER, true))));
        }
    });
    let log = host.log();
    stop(host);
    let spans = receiver.spans_when(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["name"] == "POST /embed").count() >= 3
    });

    // The request, a child of the caller's span, named by its route, with the log's request id.
    let request = span(&spans, ALONE, "POST /embed");
    assert_eq!(request["parent_span_id"], CALLER);
    assert_eq!(request["kind"], 2, "a server span");
    assert_eq!(request["service"], "edgeinfer");
    assert_eq!(request["attributes"]["request_id"], request_id);
    assert_eq!(request["attributes"]["http.route"], "/embed");
    assert_eq!(request["attributes"]["http.response.status_code"], 200);
    let logged = log.iter().find(|l| l.contains(&request_id)).expect("the request's log line");
    assert!(logged.contains(ALONE), "the log line names the trace: {logged}");

    // The component that answered it, and what it did: admission, tokenization (as it measured
    // it), its model call, and that call's wait in the model's queue.
    let component = span(&spans, ALONE, "component");
    assert_eq!(component["parent_span_id"], request["span_id"]);
    assert_eq!(component["attributes"]["component"], "embed");
    for child in ["admission", "tokenize", "compute"] {
        assert_eq!(span(&spans, ALONE, child)["parent_span_id"], component["span_id"], "{child}");
    }
    let tokenize = span(&spans, ALONE, "tokenize");
    let slack = 2_000_000; // 2 ms: the component's clock against the host's
    assert!(tokenize["start_ns"].as_u64().unwrap() + slack >= component["start_ns"].as_u64().unwrap());
    assert!(tokenize["end_ns"].as_u64().unwrap() <= component["end_ns"].as_u64().unwrap() + slack);
    let compute = span(&spans, ALONE, "compute");
    assert_eq!(compute["attributes"]["model"], "minilm");
    assert_eq!(span(&spans, ALONE, "queue")["parent_span_id"], compute["span_id"]);

    // The engine run it rode in: a batch of its own trace, linked both ways, ONNX Runtime inside.
    let batch = by_id(&spans, links(compute)[0]);
    assert_eq!(batch["name"], "batch");
    assert_eq!(batch["parent_span_id"], "", "a batch is a root: it serves many requests");
    assert_eq!(links(batch), [&compute["span_id"]]);
    assert_eq!(batch["attributes"]["requests"], 1);
    let run =
        spans.iter().find(|s| s["name"] == "onnxruntime.run" && s["parent_span_id"] == batch["span_id"]);
    assert!(run.is_some(), "the engine run inside the batch");

    // The pair: one batch, linked to both requests' compute spans, and each of them to it.
    let computes: Vec<&Value> = PAIR.iter().map(|trace| span(&spans, trace, "compute")).collect();
    let batch = by_id(&spans, links(computes[0])[0]);
    assert_eq!(links(computes[1]), links(computes[0]), "both rode the same batch");
    assert_eq!(batch["attributes"]["requests"], 2);
    let mut linked = links(batch);
    linked.sort_by_key(|id| id.as_str().unwrap().to_string());
    let mut want: Vec<&Value> = computes.iter().map(|c| &c["span_id"]).collect();
    want.sort_by_key(|id| id.as_str().unwrap().to_string());
    assert_eq!(linked, want);
}

#[test]
fn sampling_follows_the_ratio_and_the_callers_choice() {
    let receiver = OtlpReceiver::start();
    // None of the new traces, over OTLP/HTTP.
    let (host, _config) =
        traced_host(&receiver.http, &["--otlp-protocol", "http/protobuf", "--otlp-sample-ratio", "0"]);
    let unsampled = "3df7651916cd43dd8448eb211c80319c";
    let sampled = "4ef7651916cd43dd8448eb211c80319c";
    embed(&host, None);
    embed(&host, Some(&traceparent(unsampled, CALLER, false)));
    embed(&host, Some(&traceparent(sampled, CALLER, true)));
    stop(host);
    let spans = receiver.spans_when(Duration::from_secs(10), |spans| {
        spans.iter().any(|s| s["trace_id"] == sampled && s["name"] == "POST /embed")
    });
    assert!(spans.iter().all(|s| s["via"] == "http"), "over OTLP/HTTP");
    let requests: Vec<&Value> = spans.iter().filter(|s| s["name"] == "POST /embed").collect();
    assert_eq!(requests.len(), 1, "only the caller's sampled trace: {requests:#?}");
    assert_eq!(requests[0]["trace_id"], sampled);
    assert!(spans.iter().all(|s| s["trace_id"] != unsampled), "the caller's choice not to sample holds");
}

/// A front host running spin.remote.toml's handlers (nn-remote composed in, `--compose-nn-providers`)
/// and the model host it calls: the front's outbound call carries its trace, so the model host's
/// request span is the child of the front's `outbound` span, in the front request's trace.
#[test]
fn one_trace_across_two_hosts_through_nn_remote() {
    let receiver = OtlpReceiver::start();
    let config = Variant::kserve_config();
    let backend = Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap(), "--otlp-endpoint", &receiver.grpc],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", KSERVE_TOKEN)],
    );
    let remote = Variant::remote_pointing_at(backend.base.trim_start_matches("http://"));
    let front = Host::start(
        &remote.0,
        &[
            "--compose-nn-providers",
            "--otlp-endpoint",
            &receiver.http,
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-service-name",
            "front",
        ],
    );
    let trace = "5af7651916cd43dd8448eb211c80319c";
    embed(&front, Some(&traceparent(trace, CALLER, true)));
    stop(front);
    stop(backend);
    let spans = receiver.spans_when(Duration::from_secs(10), |spans| {
        spans.iter().filter(|s| s["trace_id"] == trace).count() >= 5
    });
    let request = span(&spans, trace, "POST /embed");
    assert_eq!(request["service"], "front");
    let outbound = span(&spans, trace, "outbound");
    assert_eq!(outbound["kind"], 3, "a client span");
    assert!(outbound["attributes"]["url.full"].as_str().unwrap().ends_with("/v2/models/minilm/infer"));
    let served = span(&spans, trace, "POST /v2/models/{name}/infer");
    assert_eq!(served["service"], "edgeinfer");
    assert_eq!(served["parent_span_id"], outbound["span_id"], "the model host continues the front's trace");
    assert_eq!(by_id(&spans, &outbound["parent_span_id"])["name"], "component");
}

/// KServe's gRPC `ModelInfer`, called by NVIDIA's `tritonclient.grpc` with a `traceparent` in its
/// metadata: a server span in the caller's trace, with the model's queue under it.
#[test]
fn grpc_inference_continues_the_callers_trace() {
    let receiver = OtlpReceiver::start();
    let config = Variant::kserve_config();
    let host = Host::start_with_env(
        &repo_root().join("spin.toml"),
        &[
            "--runtime-config-file",
            config.0.to_str().unwrap(),
            "--grpc-listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            &receiver.grpc,
        ],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", KSERVE_TOKEN)],
    );
    let grpc = host.grpc_address();
    let trace = "6af7651916cd43dd8448eb211c80319c";
    let client = r#"
import sys
import numpy as np
import tritonclient.grpc as grpcclient
address, token, traceparent = sys.argv[1:4]
inputs = []
for name, values in (("input_ids", [101, 7592, 102]), ("attention_mask", [1, 1, 1]), ("token_type_ids", [0, 0, 0])):
    tensor = grpcclient.InferInput(name, [1, 3], "INT64")
    tensor.set_data_from_numpy(np.array([values], dtype=np.int64))
    inputs.append(tensor)
headers = {"authorization": f"Bearer {token}", "traceparent": traceparent}
result = grpcclient.InferenceServerClient(address).infer("minilm", inputs, headers=headers)
assert result.as_numpy("last_hidden_state").shape == (1, 3, 384)
"#;
    let output = std::process::Command::new(common::client_python())
        .args(["-c", client, &grpc, KSERVE_TOKEN, &traceparent(trace, CALLER, true)])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    stop(host);
    let spans =
        receiver.spans_when(Duration::from_secs(10), |spans| spans.iter().any(|s| s["trace_id"] == trace));
    let served = span(&spans, trace, "inference.GRPCInferenceService/ModelInfer");
    assert_eq!(served["parent_span_id"], CALLER);
    assert_eq!(served["kind"], 2);
    assert_eq!(served["attributes"]["model"], "minilm");
    assert_eq!(span(&spans, trace, "queue")["parent_span_id"], served["span_id"]);
}
