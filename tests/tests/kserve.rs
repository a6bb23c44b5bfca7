//! The KServe v2 / Open Inference Protocol API of the host (`/v2`), on the default app's models:
//! closed unless the runtime config opens it (and then behind a token), metadata, JSON tensor
//! inference compared with the Python reference, every error case, and a burst past a model's
//! queue refused with `Retry-After` while memory stays bounded.

mod common;

use std::sync::OnceLock;

use common::{Host, KSERVE_TOKEN, Variant, assert_error, client, cosine, reference, repo_root};
use serde_json::{Value, json};

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(common::kserve_host)
}

fn get(path: &str) -> (u16, Value) {
    let response = client().get(host().url(path)).bearer_auth(KSERVE_TOKEN).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn infer(model: &str, body: &Value) -> (u16, Value) {
    let url = host().url(&format!("/v2/models/{model}/infer"));
    let response = client().post(url).bearer_auth(KSERVE_TOKEN).json(body).send().unwrap();
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
    let (status, server) = get("/v2");
    assert_eq!((status, server["name"].as_str()), (200, Some("edgeinfer")), "{server}");
    // Every path under /v2 needs the token, an unknown one too; requests are counted by pattern.
    let unknown = client().get(host().url("/v2/no/such/route")).send().unwrap();
    assert_eq!(unknown.status().as_u16(), 401);
    let metrics = client().get(host().url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with(r#"edgeinfer_requests_total{route="/v2/models/{name}/ready",component="host""#)),
        "{metrics}"
    );
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
    let url = host().url("/v2/models/minilm/infer");
    let response = client().post(&url).bearer_auth(KSERVE_TOKEN).body("{not json").send().unwrap();
    assert_eq!(response.status().as_u16(), 400);

    for path in ["/v2/models/nope", "/v2/models/nope/ready"] {
        let (status, body) = get(path);
        assert_error(status, &body, 404, "ModelNotFound");
    }
    let (status, body) = infer("nope", &json!({"inputs": good}));
    assert_error(status, &body, 404, "ModelNotFound");
    let response = client().get(&url).bearer_auth(KSERVE_TOKEN).send().unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let (status, body) = get("/v2/unknown/route");
    assert_error(status, &body, 404, "NotFound");
}

#[test]
fn the_api_is_closed_by_default_and_needs_its_token_when_opened() {
    // A default `edgeinfer up`: no /v2 at all, whatever is asked.
    let closed = Host::start(&repo_root().join("spin.toml"), &[]);
    let infer_body = json!({"inputs": bert_inputs(&reference("tokens.json")[0])});
    for path in ["/v2/models/minilm/infer", "/v2/models/intents/infer"] {
        let response = client().post(closed.url(path)).json(&infer_body).send().unwrap();
        let status = response.status().as_u16();
        assert_error(status, &response.json().unwrap(), 404, "NotFound");
    }
    assert_eq!(common::get(&closed, "/v2/health/ready").0, 404);

    // Opened with a token: without it 401, with another 403 (one rule: host/server/src/auth.rs);
    // with it, the API.
    let url = host().url("/v2/models/minilm");
    let response = client().get(&url).send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(401, &response.json().unwrap(), 401, "Unauthorized");
    let response = client().get(&url).bearer_auth("wrong-token-of-some-length").send().unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(response.headers().get("www-authenticate").is_none());
    let response = client().post(host().url("/v2/models/minilm/infer")).json(&infer_body).send().unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let response = client().get(&url).bearer_auth(KSERVE_TOKEN).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Component routes are not affected by the token.
    let response = client().post(host().url("/embed")).json(&json!({"inputs": "hi"})).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

#[test]
fn a_burst_past_max_queue_is_refused_with_retry_after_and_memory_stays_bounded() {
    // Public, for `minilm` only; the model queue (64) is the limit that counts, not admission.
    // Batches of 4 rows keep ONNX Runtime's own working memory small (32 rows of 256 tokens
    // take ~1.4 GB of arena), so that what is measured is what the queue holds.
    let config = Variant::new("runtime-config/local.toml", "kserve-burst", |text| {
        assert!(text.contains("[model.minilm]\n") && text.contains("max_batch_size = 32\n"));
        let text = text.replacen("[model.minilm]\n", "[model.minilm]\nmax_queue = 64\n", 1).replacen(
            "max_batch_size = 32\n",
            "max_batch_size = 4\n",
            1,
        );
        format!(
            "{text}\n[kserve]\nenabled = true\npublic = true\nmodels = [\"minilm\"]\nmax_concurrent_requests = 4096\n"
        )
    });
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.0.to_str().unwrap()]);
    // Listed models only: `intents` is loaded, but not for this API.
    let (status, body) = common::get(&host, "/v2/models/intents");
    assert_error(status, &serde_json::from_str(&body).unwrap(), 404, "ModelNotFound");

    // 2,000 clients at once, each with a 256-token sentence (its answer: 384 KiB of floats).
    let n = 256;
    let ids: Vec<i64> = (0..n).map(|i| 1000 + i).collect();
    let body = json!({"inputs": [
        {"name": "input_ids", "shape": [1, n], "datatype": "INT64", "data": ids},
        {"name": "attention_mask", "shape": [1, n], "datatype": "INT64", "data": vec![1; n as usize]},
        {"name": "token_type_ids", "shape": [1, n], "datatype": "INT64", "data": vec![0; n as usize]},
    ]})
    .to_string();
    let url = host.url("/v2/models/minilm/infer");
    let before = rss_mib(host.pid());
    let peak = std::sync::Arc::new(std::sync::Mutex::new(before));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let answers: Vec<(u16, Option<String>, Value)> = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(300)).build().unwrap();
        let pid = host.pid();
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    let rss = rss_mib(pid);
                    {
                        let mut peak = peak.lock().unwrap();
                        *peak = peak.max(rss);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            })
        };
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..2000 {
            let request = client.post(&url).header("content-type", "application/json").body(body.clone());
            requests.spawn(async move {
                let response = request.send().await.expect("every request is answered");
                let status = response.status().as_u16();
                let retry_after =
                    response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                let answer: Value = response.json().await.expect("a JSON answer");
                (status, retry_after, answer)
            });
        }
        let answers = requests.join_all().await;
        sampler.abort();
        answers
    });
    let served = answers.iter().filter(|(status, ..)| *status == 200).count();
    let refused = answers.iter().filter(|(status, ..)| *status == 503).count();
    for (status, retry_after, answer) in &answers {
        match status {
            200 => assert_eq!(answer["outputs"][0]["shape"], json!([1, n, 384])),
            503 => {
                assert_error(503, answer, 503, "Overloaded");
                assert!(answer["error"].as_str().unwrap().contains("max_queue"), "{answer}");
                assert_eq!(retry_after.as_deref(), Some("1"));
            }
            other => panic!("answered {other}: {answer}"),
        }
    }
    let peak = *peak.lock().unwrap();
    eprintln!(
        "2,000 concurrent requests, max_queue 64: {served} served, {refused} refused; RSS {before:.0} MiB before, peak {peak:.0} MiB"
    );
    assert_eq!(served + refused, 2000, "no request lost");
    assert!(served >= 64, "a full queue's worth is served ({served})");
    assert!(refused > 0, "past the queue, requests are refused");
    // Unbounded, 2,000 queued answers alone would be 750 MiB.
    assert!(peak - before < 300.0, "RSS grew from {before:.0} to {peak:.0} MiB");
    // The places come back: the model serves again.
    let response = client().post(&url).header("content-type", "application/json").body(body).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// ONNX models written field by field (protobuf wire format, ONNX's field numbers), to need no
/// ONNX tooling.
mod onnx_proto {
    /// TensorProto.DataType values.
    pub const FLOAT: u64 = 1;
    pub const FLOAT16: u64 = 10;
    pub const BFLOAT16: u64 = 16;
    pub const STRING: u64 = 8;

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn int(tag: u64, value: u64, out: &mut Vec<u8>) {
        varint(tag << 3, out);
        varint(value, out);
    }

    fn bytes(tag: u64, data: &[u8], out: &mut Vec<u8>) {
        varint((tag << 3) | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    /// A ValueInfoProto: tensor `name` of `elem_type` and shape `[n, columns]`.
    pub fn value(name: &str, elem_type: u64, columns: u64) -> Vec<u8> {
        let (mut rows, mut cols, mut shape, mut tensor, mut ty, mut value) = Default::default();
        bytes(2, b"n", &mut rows); // Dimension.dim_param
        int(1, columns, &mut cols); // Dimension.dim_value
        bytes(1, &rows, &mut shape); // TensorShapeProto.dim
        bytes(1, &cols, &mut shape);
        int(1, elem_type, &mut tensor); // TypeProto.Tensor.elem_type
        bytes(2, &shape, &mut tensor);
        bytes(1, &tensor, &mut ty); // TypeProto.tensor_type
        bytes(1, name.as_bytes(), &mut value); // ValueInfoProto.name
        bytes(2, &ty, &mut value);
        value
    }

    /// A NodeProto: `op` from `input` to `output`, with the INT attribute `to` when given (Cast).
    pub fn node(op: &str, input: &str, output: &str, to: Option<u64>) -> Vec<u8> {
        let mut node = Vec::new();
        bytes(1, input.as_bytes(), &mut node);
        bytes(2, output.as_bytes(), &mut node);
        bytes(4, op.as_bytes(), &mut node); // op_type
        if let Some(to) = to {
            let mut attribute = Vec::new();
            bytes(1, b"to", &mut attribute);
            int(3, to, &mut attribute); // AttributeProto.i
            int(20, 2, &mut attribute); // AttributeProto.type = INT
            bytes(5, &attribute, &mut node);
        }
        node
    }

    /// A ModelProto (IR 8, opset 17) of one graph.
    pub fn model(name: &str, nodes: &[Vec<u8>], inputs: &[Vec<u8>], outputs: &[Vec<u8>]) -> Vec<u8> {
        let (mut graph, mut opset, mut model) = (Vec::new(), Vec::new(), Vec::new());
        for node in nodes {
            bytes(1, node, &mut graph); // GraphProto.node
        }
        bytes(2, name.as_bytes(), &mut graph); // GraphProto.name
        for input in inputs {
            bytes(11, input, &mut graph);
        }
        for output in outputs {
            bytes(12, output, &mut graph);
        }
        int(2, 17, &mut opset); // OperatorSetIdProto.version
        int(1, 8, &mut model); // ModelProto.ir_version
        bytes(7, &graph, &mut model);
        bytes(8, &opset, &mut model);
        model
    }
}

/// A graph with no nodes whose output `x` is its input `x` (FP32 `[n, 3]`): ONNX Runtime hands
/// the input's own buffer back as the output.
fn passthrough_model() -> Vec<u8> {
    let x = onnx_proto::value("x", onnx_proto::FLOAT, 3);
    onnx_proto::model("passthrough", &[], std::slice::from_ref(&x), std::slice::from_ref(&x))
}

/// Half-precision tensors in and out: `h` (FP16 `[n, 4]`) and `b` (BF16 `[n, 4]`) cast to FP32
/// (`h32`, `b32`), and `h` passed on as FP16 (`h16`, an Identity node).
fn half_precision_model() -> Vec<u8> {
    use onnx_proto::{BFLOAT16, FLOAT, FLOAT16, node, value};
    let nodes = [
        node("Cast", "h", "h32", Some(FLOAT)),
        node("Cast", "b", "b32", Some(FLOAT)),
        node("Identity", "h", "h16", None),
    ];
    let inputs = [value("h", FLOAT16, 4), value("b", BFLOAT16, 4)];
    let outputs = [value("h32", FLOAT, 4), value("b32", FLOAT, 4), value("h16", FLOAT16, 4)];
    onnx_proto::model("half", &nodes, &inputs, &outputs)
}

/// A host serving `model` (ONNX bytes) as `name` over a public KServe API; the directory to
/// remove afterwards.
fn host_of_model(name: &str, model: &[u8]) -> (Host, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("edgeinfer-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model).unwrap();
    let config = dir.join("runtime.toml");
    let text = format!(
        "[model.{name}]\npath = {:?}\n[kserve]\nenabled = true\npublic = true\nmodels = [\"{name}\"]\n{}",
        path.to_str().unwrap(),
        common::onnxruntime_section()
    );
    std::fs::write(&config, text).unwrap();
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.to_str().unwrap()]);
    (host, dir)
}

/// Text in: `s` (STRING `[n, 3]`) parsed as numbers (`f`, FP32, a Cast node) and passed on
/// (`echo`, STRING, an Identity node).
fn text_model() -> Vec<u8> {
    use onnx_proto::{FLOAT, STRING, node, value};
    let nodes = [node("Cast", "s", "f", Some(FLOAT)), node("Identity", "s", "echo", None)];
    let outputs = [value("f", FLOAT, 3), value("echo", STRING, 3)];
    onnx_proto::model("text", &nodes, &[value("s", STRING, 3)], &outputs)
}

#[test]
fn bytes_tensors_carry_text_in_json_and_binary() {
    let (host, dir) = host_of_model("text", &text_model());
    let url = host.url("/v2/models/text/infer");
    let (_, metadata) = {
        let response = client().get(host.url("/v2/models/text")).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    assert_eq!(metadata["inputs"][0]["datatype"], "BYTES", "{metadata}");
    let strings = ["1.5", "-2", "1e3", "0.25", "7", "-0.5"];
    let numbers = [1.5f32, -2.0, 1000.0, 0.25, 7.0, -0.5];
    // JSON: strings in, strings and numbers out.
    let request = json!({"inputs": [{"name": "s", "shape": [2, 3], "datatype": "BYTES", "data": [strings[..3], strings[3..]]}]});
    let response = client().post(&url).json(&request).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value = response.json().unwrap();
    assert_eq!(answer["outputs"][0]["data"], json!(numbers), "{answer}");
    assert_eq!(answer["outputs"][1]["datatype"], "BYTES");
    assert_eq!(answer["outputs"][1]["data"], json!(strings), "{answer}");
    // Binary: the protocol's layout (4-byte length, then the bytes) both ways.
    let layout: Vec<u8> =
        strings.iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s.as_bytes()].concat()).collect();
    let header = json!({"inputs": [{"name": "s", "shape": [2, 3], "datatype": "BYTES", "parameters": {"binary_data_size": layout.len()}}],
                        "outputs": [{"name": "echo", "parameters": {"binary_data": true}}]});
    let (status, length, body) = post_binary(&url, None, &header, &layout, None);
    assert_eq!(status, 200);
    let length = length.expect("a binary answer says where its JSON ends");
    assert_eq!(&body[length..], layout.as_slice(), "BYTES out as they came in");
    // Text that is not a number is the model's error; bytes that are not UTF-8 are ours (400).
    let bad =
        json!({"inputs": [{"name": "s", "shape": [1, 3], "datatype": "BYTES", "data": ["1", "2", [0]]}]});
    let response = client().post(&url).json(&bad).send().unwrap();
    let answer: Value = response.json().unwrap();
    assert!(answer["error"].as_str().unwrap().contains("0 is not a string"), "{answer}");
    let not_utf8 =
        [&3u32.to_le_bytes()[..], &[0xff, 0xfe, 0x00], &1u32.to_le_bytes(), b"1", &1u32.to_le_bytes(), b"2"]
            .concat();
    let header = json!({"inputs": [{"name": "s", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": not_utf8.len()}}]});
    let (status, _, body) = post_binary(&url, None, &header, &not_utf8, None);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_error(status, &answer, 400, "Validation");
    assert!(answer["error"].as_str().unwrap().contains("BYTES element 0 is not UTF-8"), "{answer}");
    let nul = json!({"inputs": [{"name": "s", "shape": [1, 3], "datatype": "BYTES", "data": ["1", "2\u{0}", "3"]}]});
    let response = client().post(&url).json(&nul).send().unwrap();
    let status = response.status().as_u16();
    let answer: Value = response.json().unwrap();
    assert_error(status, &answer, 400, "Validation");
    assert!(answer["error"].as_str().unwrap().contains("BYTES element 1 holds a NUL byte"), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fp16_and_bf16_tensors_run_in_json_and_binary() {
    let (host, dir) = host_of_model("half", &half_precision_model());
    let url = host.url("/v2/models/half/infer");
    // Values both half formats hold exactly.
    let values = [0.5f32, -1.25, 3.0, 1024.0, -0.0078125, 7.5, 100.0, -2.0];
    let f16: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
    let header = json!({"inputs": [
        {"name": "h", "shape": [2, 4], "datatype": "FP16", "parameters": {"binary_data_size": 16}},
        {"name": "b", "shape": [2, 4], "datatype": "BF16", "parameters": {"binary_data_size": 16}},
    ], "parameters": {"binary_data_output": true}});
    let (status, length, body) = post_binary(&url, None, &header, &[f16.as_slice(), &bf16].concat(), None);
    assert_eq!(status, 200);
    let length = length.expect("a binary answer says where its JSON ends");
    let answer: Value = serde_json::from_slice(&body[..length]).unwrap();
    let names: Vec<&str> =
        answer["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h32", "b32", "h16"]);
    assert_eq!(answer["outputs"][2]["datatype"], "FP16");
    let expected_f32: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let binary = &body[length..];
    assert_eq!(&binary[..32], expected_f32.as_slice(), "FP16 cast to FP32");
    assert_eq!(&binary[32..64], expected_f32.as_slice(), "BF16 cast to FP32");
    assert_eq!(&binary[64..], f16.as_slice(), "FP16 out as it came in");
    // The same in JSON: half values written as numbers both ways.
    let json_request = json!({"inputs": [
        {"name": "h", "shape": [2, 4], "datatype": "FP16", "data": values},
        {"name": "b", "shape": [2, 4], "datatype": "BF16", "data": values},
    ]});
    let answer: Value = client().post(&url).json(&json_request).send().unwrap().json().unwrap();
    for output in answer["outputs"].as_array().unwrap() {
        let got: Vec<f32> = serde_json::from_value(output["data"].clone()).unwrap();
        assert_eq!(got, values, "{output}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_output_that_is_an_input_comes_back_intact() {
    let (host, dir) = host_of_model("passthrough", &passthrough_model());
    // Many at once, each with its own values: an answer read from memory freed with its request
    // (or reused by another) would show here.
    let url = host.url("/v2/models/passthrough/infer");
    let answers: Vec<_> = (0..48)
        .map(|i| {
            let url = url.clone();
            std::thread::spawn(move || {
                let data: Vec<f32> = (0..6 * 64).map(|j| (i * 1000 + j) as f32 + 0.5).collect();
                let body =
                    json!({"inputs": [{"name": "x", "shape": [128, 3], "datatype": "FP32", "data": data}]});
                let response = client().post(&url).json(&body).send().unwrap();
                (data, response.status().as_u16(), response.json::<Value>().unwrap())
            })
        })
        .collect();
    for answer in answers {
        let (sent, status, body) = answer.join().unwrap();
        assert_eq!(status, 200, "{body}");
        let got: Vec<f32> = body["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let first_wrong = got.iter().zip(&sent).position(|(a, b)| a != b);
        assert!(
            got.len() == sent.len() && first_wrong.is_none(),
            "the answer is not the request's own values: {} of {} values, first wrong at {first_wrong:?}",
            got.len(),
            sent.len()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// POSTs a body with binary tensors (`header` JSON, then `binary`) to the default host's `model`
/// with its token; see `post_binary`.
fn infer_binary(
    model: &str,
    header: &Value,
    binary: &[u8],
    length: Option<&str>,
) -> (u16, Option<usize>, Vec<u8>) {
    let url = host().url(&format!("/v2/models/{model}/infer"));
    post_binary(&url, Some(KSERVE_TOKEN), header, binary, length)
}

/// POSTs a body with binary tensors (`header` JSON, then `binary`; `length` overrides the
/// `Inference-Header-Content-Length` sent) and returns the status, the response's
/// `Inference-Header-Content-Length` and its body.
fn post_binary(
    url: &str,
    token: Option<&str>,
    header: &Value,
    binary: &[u8],
    length: Option<&str>,
) -> (u16, Option<usize>, Vec<u8>) {
    let header = header.to_string();
    let length = length.map_or_else(|| header.len().to_string(), str::to_string);
    let mut body = header.into_bytes();
    body.extend_from_slice(binary);
    let mut request = client()
        .post(url)
        .header("content-type", "application/octet-stream")
        .header("inference-header-content-length", length)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let answer_length = response
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, answer_length, response.bytes().unwrap().to_vec())
}

fn le_bytes(values: &Value) -> Vec<u8> {
    values.as_array().unwrap().iter().flat_map(|v| v.as_i64().unwrap().to_le_bytes()).collect()
}

#[test]
fn binary_tensors_give_the_json_answers_bit_for_bit() {
    for case in reference("tokens.json").as_array().unwrap().iter().take(4) {
        let n = case["ids"].as_array().unwrap().len();
        let (status, json_answer) = infer("minilm", &json!({"inputs": bert_inputs(case)}));
        assert_eq!(status, 200, "{json_answer}");
        let expected: Vec<u8> = json_answer["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|v| (v.as_f64().unwrap() as f32).to_le_bytes())
            .collect();
        // Two inputs binary, one in JSON; outputs binary by the request's default.
        let header = json!({
            "id": "b-1",
            "inputs": [
                {"name": "input_ids", "shape": [1, n], "datatype": "INT64", "parameters": {"binary_data_size": n * 8}},
                {"name": "attention_mask", "shape": [1, n], "datatype": "INT64", "data": case["attention_mask"]},
                {"name": "token_type_ids", "shape": [1, n], "datatype": "INT64", "parameters": {"binary_data_size": n * 8}},
            ],
            "parameters": {"binary_data_output": true},
        });
        let binary = [le_bytes(&case["ids"]), le_bytes(&case["type_ids"])].concat();
        let (status, length, body) = infer_binary("minilm", &header, &binary, None);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let length = length.expect("a binary answer says where its JSON ends");
        let answer: Value = serde_json::from_slice(&body[..length]).unwrap();
        assert_eq!(answer["id"], "b-1");
        let output = &answer["outputs"][0];
        assert_eq!(output["shape"], json!([1, n, 384]));
        assert_eq!(output["parameters"]["binary_data_size"], n * 384 * 4);
        assert!(output.get("data").is_none(), "{output}");
        assert_eq!(
            &body[length..],
            expected.as_slice(),
            "{}: binary output equals the JSON one",
            case["text"]
        );
        // The output's own flag asks for JSON back from a binary request.
        let mut json_back = header.clone();
        json_back["outputs"] = json!([{"name": "last_hidden_state", "parameters": {"binary_data": false}}]);
        let (status, length, body) = infer_binary("minilm", &json_back, &binary, None);
        assert_eq!((status, length), (200, None));
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(answer["outputs"][0]["data"], json_answer["outputs"][0]["data"]);
    }
    let (_, server) = get("/v2");
    assert_eq!(server["extensions"], json!(["binary_tensor_data"]));
}

#[test]
fn malformed_binary_bodies_are_400_with_the_reason() {
    let ids = le_bytes(&json!([101, 2023, 102]));
    let input = |size: usize, datatype: &str| {
        json!({"inputs": [
            {"name": "input_ids", "shape": [1, 3], "datatype": datatype, "parameters": {"binary_data_size": size}},
            {"name": "attention_mask", "shape": [1, 3], "datatype": "INT64", "data": [1, 1, 1]},
            {"name": "token_type_ids", "shape": [1, 3], "datatype": "INT64", "data": [0, 0, 0]},
        ]})
    };
    let cases: [(Value, Vec<u8>, Option<&str>, &str); 6] = [
        (input(24, "INT64"), ids.clone(), Some("100000"), "Inference-Header-Content-Length is 100000"),
        (input(24, "INT64"), ids.clone(), Some("lots"), "must be a byte count"),
        (input(48, "INT64"), ids.clone(), None, "past the end of the body"),
        (input(16, "INT64"), ids[..16].to_vec(), None, "needs 24 bytes, binary_data_size is 16"),
        (input(24, "INT64"), [ids.clone(), vec![0; 5]].concat(), None, "5 bytes of binary data follow"),
        (input(24, "BYTES8"), ids.clone(), None, "datatype \"BYTES8\" is not supported"),
    ];
    for (header, binary, length, expected) in cases {
        let (status, _, body) = infer_binary("minilm", &header, &binary, length);
        let answer: Value = serde_json::from_slice(&body).unwrap();
        assert_error(status, &answer, 400, "Validation");
        assert!(answer["error"].as_str().unwrap().contains(expected), "{expected}: {answer}");
    }
    // The host still serves after all of them.
    let case = &reference("tokens.json")[0];
    assert_eq!(infer("minilm", &json!({"inputs": bert_inputs(case)})).0, 200);
}

#[test]
fn compressed_bodies_are_decoded_and_bad_encodings_refused() {
    let url = host().url("/v2/models/minilm/infer");
    let case = &reference("tokens.json")[0];
    let body = json!({"inputs": bert_inputs(case)}).to_string();
    let (_, plain) = infer("minilm", &json!({"inputs": bert_inputs(case)}));
    let send = |encoding: &str, bytes: Vec<u8>| {
        let response = client()
            .post(&url)
            .bearer_auth(KSERVE_TOKEN)
            .header("content-encoding", encoding)
            .body(bytes)
            .send()
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    let data = body.as_bytes();
    let compress = |mut encoder: Box<dyn std::io::Write>| encoder.write_all(data).unwrap();
    let mut gzip = Vec::new();
    let mut zlib = Vec::new();
    {
        use flate2::{Compression, write::GzEncoder, write::ZlibEncoder};
        compress(Box::new(GzEncoder::new(&mut gzip, Compression::default())));
        compress(Box::new(ZlibEncoder::new(&mut zlib, Compression::default())));
    }
    for (encoding, bytes) in [("gzip", gzip), ("deflate", zlib)] {
        let (status, answer) = send(encoding, bytes);
        assert_eq!(status, 200, "{encoding}: {answer}");
        assert_eq!(answer["outputs"], plain["outputs"], "{encoding}");
    }
    // A small body that inflates past the API's 16 MiB limit.
    let mut bomb = Vec::new();
    {
        use flate2::{Compression, write::GzEncoder};
        let mut encoder = GzEncoder::new(&mut bomb, Compression::best());
        std::io::Write::write_all(&mut encoder, &vec![b' '; 17 << 20]).unwrap();
    }
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    let (status, answer) = send("gzip", bomb);
    assert_error(status, &answer, 413, "PayloadTooLarge");
    assert!(answer["error"].as_str().unwrap().contains("decoded body is over the limit"), "{answer}");
    let (status, answer) = send("br", data.to_vec());
    assert_error(status, &answer, 400, "Validation");
    assert!(
        answer["error"].as_str().unwrap().contains("Content-Encoding \"br\" is not supported"),
        "{answer}"
    );
    let (status, answer) = send("gzip", data.to_vec());
    assert_error(status, &answer, 400, "Validation");
    assert!(answer["error"].as_str().unwrap().contains("cannot decode the gzip body"), "{answer}");
}
