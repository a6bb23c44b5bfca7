//! TEI's API on the default app (the embed component's routes): every route with a TEI-shaped
//! request whose answer is checked against TEI's documented types (tests/clients/tei_routes.py,
//! `jsonschema`), and what each answer means: per-token vectors that pool to /embed's, similarity
//! and rerank scores equal to the Python reference's cosines (tests/reference/rerank.json), tokens
//! as Python `tokenizers` gives them, decode inverting tokenize, prompts, /info's facts; TEI's and
//! SageMaker's root routes (`POST /`, `POST /invocations`, `GET /`, `GET /ping`) as Hugging Face's
//! own `InferenceClient` calls them.

mod common;

use std::process::Command;
use std::sync::OnceLock;

use common::{
    Host, Variant, assert_error, client, client_python, cosine, post_json, reference, repo_root,
    run_client_script, vectors,
};
use serde_json::{Value, json};

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| Host::start(&repo_root().join("spin.toml"), &[]))
}

fn post(path: &str, body: Value) -> (u16, Value) {
    post_json(&host().url(path), &body)
}

#[test]
fn every_route_answers_teis_documented_types_with_its_timing_headers() {
    let types = repo_root().join("tests/clients/tei_types.json");
    let report = run_client_script("tei_routes.py", &[host().base.as_ref(), types.as_os_str()]);
    for route in
        ["/embed", "/embed_all", "/similarity", "/rerank", "/tokenize", "/decode", "/info", "/predict"]
    {
        assert!(report[route]["calls"].as_u64().unwrap() >= 1, "{route} not called: {report}");
    }
    assert_eq!(report["errors"].as_array().unwrap().len(), 6, "{report}");
}

#[test]
fn embed_all_gives_the_token_vectors_embed_pools() {
    let texts = ["What is Deep Learning?", "Hi"];
    let (status, all) = post("/embed_all", json!({"inputs": texts}));
    assert_eq!(status, 200, "{all}");
    let (_, tokens) = post("/tokenize", json!({"inputs": texts}));
    let (_, pooled) = post("/embed", json!({"inputs": texts}));
    for (i, text) in texts.iter().enumerate() {
        let per_token: Vec<Vec<f32>> = serde_json::from_value(all[i].clone()).unwrap();
        assert_eq!(per_token.len(), tokens[i].as_array().unwrap().len(), "one vector per token of {text}");
        assert!(per_token.iter().all(|v| v.len() == 384));
        let mean: Vec<f32> =
            (0..384).map(|d| per_token.iter().map(|v| v[d]).sum::<f32>() / per_token.len() as f32).collect();
        assert!(cosine(&mean, &vectors(&pooled)[i]) > 0.99999, "{text}: mean of /embed_all is /embed");
    }
}

#[test]
fn similarity_and_rerank_match_the_python_reference() {
    let sets = reference("rerank.json");
    for set in sets.as_array().unwrap() {
        let texts: Vec<&str> = set["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let want: Vec<f64> = serde_json::from_value(set["scores"].clone()).unwrap();
        let relevant = set["relevant"].as_u64().unwrap();

        let (status, ranks) =
            post("/rerank", json!({"query": set["query"], "texts": texts, "return_text": true}));
        assert_eq!(status, 200, "{ranks}");
        let ranks = ranks.as_array().unwrap();
        assert_eq!(ranks.len(), texts.len());
        assert_eq!(ranks[0]["index"], relevant, "the obviously relevant passage first for {}", set["query"]);
        for pair in ranks.windows(2) {
            assert!(pair[0]["score"].as_f64() >= pair[1]["score"].as_f64(), "best first: {ranks:?}");
        }
        for rank in ranks {
            let index = rank["index"].as_u64().unwrap() as usize;
            let score = rank["score"].as_f64().unwrap();
            assert!((score - want[index]).abs() < 1e-4, "rerank {score} vs reference {}", want[index]);
            assert_eq!(rank["text"], texts[index]);
        }

        let (status, scores) =
            post("/similarity", json!({"inputs": {"source_sentence": set["query"], "sentences": texts}}));
        assert_eq!(status, 200, "{scores}");
        let scores: Vec<f64> = serde_json::from_value(scores).unwrap();
        assert_eq!(scores.len(), want.len(), "one score per sentence");
        for (got, want) in scores.iter().zip(&want) {
            assert!((got - want).abs() < 1e-4, "similarity {got} vs reference {want}");
        }
    }
    // Without return_text, no text; top-level errors are TEI's.
    let (status, ranks) = post("/rerank", json!({"query": "q", "texts": ["a", "b"]}));
    assert_eq!(status, 200);
    assert!(ranks[0].get("text").is_none(), "{ranks}");
    let (status, body) = post("/rerank", json!({"query": "   ", "texts": ["a"]}));
    assert_error(status, &body, 422, "Validation");
    let too_many: Vec<String> = (0..33).map(|i| format!("passage {i}")).collect();
    let (status, body) = post("/rerank", json!({"query": "q", "texts": too_many}));
    assert_error(status, &body, 422, "Validation");
}

#[test]
fn tokenize_spells_the_input_as_python_tokenizers_does_and_decode_inverts_it() {
    let cases = reference("tokens.json");
    for case in cases.as_array().unwrap().iter().take(12) {
        let text = case["text"].as_str().unwrap();
        let (status, body) = post("/tokenize", json!({"inputs": text}));
        assert_eq!(status, 200, "{body}");
        let tokens = body[0].as_array().unwrap();
        let ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
        let want: Vec<u64> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(ids, want, "ids of {text}");
        let offsets: Vec<[u64; 2]> = serde_json::from_value(case["offsets"].clone()).unwrap();
        for (token, [start, stop]) in tokens.iter().zip(&offsets) {
            if token["special"] == true {
                assert_eq!((token["start"].clone(), token["stop"].clone()), (Value::Null, Value::Null));
                assert!(token["text"].as_str().unwrap().starts_with('['), "{token}");
            } else {
                assert_eq!((token["start"].as_u64(), token["stop"].as_u64()), (Some(*start), Some(*stop)));
                let piece = &text.as_bytes()[*start as usize..*stop as usize];
                assert_eq!(token["text"].as_str().unwrap().as_bytes(), piece, "the input's own bytes");
            }
        }
        // Decoding the ids gives the text back as the tokenizer normalises it (lowercase, spaced).
        let (status, decoded) = post("/decode", json!({"ids": want}));
        assert_eq!(status, 200, "{decoded}");
        let (_, again) = post("/tokenize", json!({"inputs": decoded[0], "add_special_tokens": true}));
        let again: Vec<u64> =
            again[0].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
        assert_eq!(again, ids, "decode then tokenize is the identity on {text}");
    }
    let (status, body) = post("/tokenize", json!({"inputs": "Hello world", "add_special_tokens": false}));
    assert_eq!(status, 200);
    let ids: Vec<u64> = body[0].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [7592, 2088]);
    let (status, body) =
        post("/decode", json!({"ids": [[101, 7592, 102], [2088]], "skip_special_tokens": false}));
    assert_eq!((status, body), (200, json!(["[CLS] hello [SEP]", "world"])));
    let (status, body) = post("/decode", json!({"ids": [101, 30522]}));
    assert_error(status, &body, 422, "Validation");
    assert!(body["error"].as_str().unwrap().contains("30522"), "{body}");
}

#[test]
fn info_states_the_model_its_sha256_and_limits() {
    let response = client().get(host().url("/info")).send().unwrap();
    assert_eq!(response.status(), 200);
    let info: Value = response.json().unwrap();
    assert_eq!(info["model_id"], "sentence-transformers/all-MiniLM-L6-v2");
    let ready: Value = client().get(host().url("/ready")).send().unwrap().json().unwrap();
    let minilm = ready["models"].as_array().unwrap().iter().find(|m| m["name"] == "minilm").unwrap().clone();
    assert_eq!(info["model_sha"], minilm["sha256"], "the served file's sha256, as /ready has it");
    assert_eq!(info["model_dtype"], "float32");
    assert_eq!(info["model_type"], json!({"embedding": {"pooling": "mean"}}));
    assert_eq!(
        (info["max_input_length"].as_u64(), info["max_client_batch_size"].as_u64()),
        (Some(256), Some(32))
    );
    assert_eq!(
        (info["max_batch_tokens"].as_u64(), info["max_batch_requests"].as_u64()),
        (Some(8192), Some(32))
    );
    assert_eq!(info["max_concurrent_requests"], 64, "the component's admission limit");
    assert!(info["edgeinfer"]["reranker"].as_str().unwrap().contains("cosine"), "{info}");
    let response = client().post(host().url("/info")).send().unwrap();
    assert_eq!(response.status(), 405);
}

#[test]
fn prompt_names_come_from_the_models_sentence_transformers_configuration() {
    // all-MiniLM-L6-v2 defines no prompts: a name is refused, saying so.
    let (status, body) = post("/embed", json!({"inputs": "a", "prompt_name": "query"}));
    assert_error(status, &body, 422, "Validation");
    assert!(body["error"].as_str().unwrap().contains("no prompts"), "{body}");

    // A configuration with prompts (mounted in place of the model's): named and default prompts
    // are put before the text (/embed and /tokenize checked here; every route shares the code).
    let dir = repo_root().join(format!("target/test-prompts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "passage"}"#,
    )
    .unwrap();
    let mount = dir.strip_prefix(repo_root()).unwrap().display().to_string();
    let manifest = Variant::new("spin.toml", "prompts", |text| {
        let files = r#"{ source = "models/all-minilm-l6-v2", destination = "/nn/minilm" },"#;
        assert_eq!(text.matches(files).count(), 2, "embed and openai mount the model for nn-local");
        let with_prompts = format!("{files}\n  {{ source = \"{mount}\", destination = \"/prompts\" }},");
        text.replacen(files, &with_prompts, 1).replacen(
            "MODEL_ID = ",
            "PROMPTS_PATH = \"/prompts/config_sentence_transformers.json\", MODEL_ID = ",
            1,
        )
    });
    let prompted = Host::start(&manifest.0, &[]);
    let embed = |body: Value| {
        let (status, body) = post_json(&prompted.url("/embed"), &body);
        assert_eq!(status, 200, "{body}");
        vectors(&body).remove(0)
    };
    let named = embed(json!({"inputs": "What is Rust?", "prompt_name": "query"}));
    let by_hand = {
        let (_, body) = post_json(&host().url("/embed"), &json!({"inputs": "query: What is Rust?"}));
        vectors(&body).remove(0)
    };
    assert!(cosine(&named, &by_hand) > 0.99999, "prompt_name puts the prompt first");
    let default = embed(json!({"inputs": "What is Rust?"}));
    let (_, passage) = post_json(&host().url("/embed"), &json!({"inputs": "passage: What is Rust?"}));
    assert!(cosine(&default, &vectors(&passage)[0]) > 0.99999, "the default prompt when none is named");
    let (_, tokens) = post_json(&prompted.url("/tokenize"), &json!({"inputs": "hi", "prompt_name": "query"}));
    let spelled: Vec<&str> =
        tokens[0].as_array().unwrap().iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(spelled, ["[CLS]", "query", ":", "hi", "[SEP]"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_cross_encoder_the_user_brings_reranks_like_the_python_reference() {
    // No cross-encoder ships in a registry package: make one as a user brings theirs (a
    // BertForSequenceClassification checkpoint with one label; tests/clients/cross_encoder.py),
    // export it with `edgeinfer export`, and point RERANK_MODEL at it.
    let dir = repo_root().join(format!("target/test-cross-encoder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (python, script) = (client_python(), repo_root().join("tests/clients/cross_encoder.py"));
    let run = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(&python).arg(&script).args(args).output().expect("run cross_encoder.py");
        assert!(output.status.success(), "cross_encoder.py: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    run(&["make".as_ref(), repo_root().join("models/all-minilm-l6-v2").as_os_str(), dir.as_os_str()]);
    for (output, extra) in
        [("cross.onnx", &[][..]), ("encoder.onnx", &["--head", "none", "--pooling", "none"][..])]
    {
        let status = Command::new(common::host_binary())
            .arg("export")
            .arg(&dir)
            .arg("-o")
            .arg(dir.join(output))
            .args(extra)
            .status()
            .expect("run edgeinfer export");
        assert!(status.success(), "edgeinfer export {output}");
    }
    let relative = dir.strip_prefix(repo_root()).unwrap().display().to_string();
    let config = Variant::new("runtime-config/local.toml", "cross-encoder-config", |text| {
        format!("[model.reranker]\npath = \"{relative}/cross.onnx\"\nintra_threads = 1\n\n{text}")
    });
    let manifest = Variant::new("spin.toml", "cross-encoder", |text| {
        let embed = "ai_models = [\"minilm\"]\n";
        assert!(text.contains(embed));
        text.replacen(embed, "ai_models = [\"minilm\", \"reranker\"]\n", 1).replacen(
            "MODEL_ID = ",
            "RERANK_MODEL = \"reranker\", MODEL_ID = ",
            1,
        )
    });
    let host = Host::start(&manifest.0, &["--runtime-config-file", config.0.to_str().unwrap()]);

    let sets = repo_root().join("tests/reference/rerank_sets.json");
    let encoder = dir.join("encoder.onnx");
    let reference =
        run(&["reference".as_ref(), encoder.as_os_str(), dir.as_os_str(), sets.as_os_str(), "256".as_ref()]);
    let sets: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&sets).unwrap()).unwrap();
    for (set, line) in sets.iter().zip(reference.lines()) {
        let want: Vec<Value> = serde_json::from_str(line).unwrap();
        for raw in [false, true] {
            let body = json!({"query": set["query"], "texts": set["texts"], "raw_scores": raw});
            let (status, ranks) = post_json(&host.url("/rerank"), &body);
            assert_eq!(status, 200, "{ranks}");
            let ranks = ranks.as_array().unwrap();
            assert_eq!(ranks.len(), want.len());
            for pair in ranks.windows(2) {
                assert!(pair[0]["score"].as_f64() >= pair[1]["score"].as_f64(), "best first: {ranks:?}");
            }
            for rank in ranks {
                let index = rank["index"].as_u64().unwrap() as usize;
                let key = if raw { "logit" } else { "score" };
                let (got, want) = (rank["score"].as_f64().unwrap(), want[index][key].as_f64().unwrap());
                assert!((got - want).abs() < 1e-4, "{key} of text {index}: {got} vs the reference's {want}");
            }
        }
    }
    let info: Value = client().get(host.url("/info")).send().unwrap().json().unwrap();
    assert!(
        info["edgeinfer"]["reranker"].as_str().unwrap().starts_with("cross-encoder \"reranker\""),
        "{info}"
    );
    drop(host);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs tests/clients/hf_inference_client.py against `base` (the root task: `embed` or `similarity`).
fn hf_inference_client(base: &str, root_task: &str) -> Value {
    let file = |name: &str| repo_root().join("tests/reference").join(name).into_os_string();
    let args = [
        std::ffi::OsString::from(base),
        file("embeddings.json"),
        file("rerank.json"),
        file("intents.json"),
        root_task.into(),
    ];
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_client_script("hf_inference_client.py", &args)
}

#[test]
fn huggingface_inference_client_works_at_the_root_url_as_with_tei() {
    let report = hf_inference_client(&host().base, "embed");
    assert_eq!(report["feature_extraction_cases"], 33, "{report}");
    assert!(report["feature_extraction_min_cosine"].as_f64().unwrap() >= 0.999, "{report}");
    assert_eq!(report["similarity_path"], "/similarity");
    assert_eq!(report["classification_cases"], 40, "{report}");
}

#[test]
fn sagemaker_routes_answer_as_tei_does() {
    let texts = json!({"inputs": ["What is Deep Learning?", "Hi"]});
    let (status, embedded) = post("/embed", texts.clone());
    assert_eq!(status, 200, "{embedded}");
    for path in ["/", "/invocations"] {
        let response = client().post(host().url(path)).json(&texts).send().unwrap();
        assert_eq!(response.status(), 200, "POST {path}");
        assert!(response.headers().contains_key("x-edgeinfer-version"), "a component answered {path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body, embedded, "POST {path} answers as /embed");
    }
    // Errors are the default route's own.
    let (status, body) = post("/invocations", json!({"inputs": 5}));
    assert_error(status, &body, 422, "Validation");
    for path in ["/", "/ping"] {
        let (status, body) = common::get(host(), path);
        assert_eq!(status, 200, "GET {path}: {body}");
        let ready: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(ready["status"], "ok", "GET {path} is readiness: {ready}");
    }
    for (method, path) in [("GET", "/invocations"), ("POST", "/ping"), ("DELETE", "/")] {
        let response = client().request(method.parse().unwrap(), host().url(path)).send().unwrap();
        let status = response.status().as_u16();
        assert_error(status, &response.json().unwrap(), 405, "MethodNotAllowed");
    }
    // Counted by the path the client used.
    let metrics = common::get(host(), "/metrics").1;
    assert!(
        metrics.lines().any(|l| l.starts_with("edgeinfer_requests_total{")
            && l.contains("route=\"/invocations\"")
            && l.contains("component=\"embed\"")),
        "{metrics}"
    );
}

/// `[http] default_route` picks the root task, as TEI's `TASK=sentence-similarity` does.
#[test]
fn the_root_task_is_configurable_per_app() {
    let config = Variant::new("runtime-config/local.toml", "similarity-root", |text| {
        format!("{text}\n[http]\ndefault_route = \"/similarity\"\n")
    });
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", config.0.to_str().unwrap()]);
    let report = hf_inference_client(&host.base, "similarity");
    assert_eq!(report["similarity_path"], "/", "{report}");
    assert!(report["similarity_max_diff"].as_f64().unwrap() < 1e-3, "{report}");

    let wrong = Variant::new("runtime-config/local.toml", "wrong-root", |text| {
        format!("{text}\n[http]\ndefault_route = \"/nowhere\"\n")
    });
    let (ok, _, stderr) = common::edgeinfer(
        &["up", "--listen", "127.0.0.1:0", "--runtime-config-file", wrong.0.to_str().unwrap()],
        &[],
    );
    assert!(!ok && stderr.contains("default_route") && stderr.contains("/nowhere"), "{stderr}");
}
