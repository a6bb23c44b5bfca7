//! The real Spin CLI runs our apps: `spin up` serves the default spin.toml (nn-local provides
//! the model inside wasm) and spin.remote.toml against an `edgeinfer up` host's KServe v2 API
//! (nn-remote); `spin build` runs the manifest's build commands as `edgeinfer build` does; a
//! manifest Spin refuses fails here with Spin's own message.
//!
//! Spin is found through `$SPIN`, else `spin` on PATH (`scripts/test` sets `SPIN` from the build in
//! ../shared/tools/spin). Without one, each test writes to the terminal that it did not run and
//! why, and fails instead when `EDGEINFER_REQUIRE_SPIN` is set (scripts/test sets it when it found
//! Spin, so CI cannot pass these tests silently).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once, mpsc};
use std::time::{Duration, Instant};

use common::{Host, Variant, cosine, kserve_host, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Writes a line straight to the terminal: the test harness captures `eprintln!` of passing
/// tests, and what Spin ran (or why nothing ran) must show in every run's output.
fn terminal(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The Spin CLI to test with, or None (said on the terminal) when there is none.
fn spin_cli(test: &str) -> Option<PathBuf> {
    let from_path = || {
        let paths = std::env::var_os("PATH")?;
        std::env::split_paths(&paths).map(|dir| dir.join("spin")).find(|p| p.is_file())
    };
    let Some(spin) = std::env::var_os("SPIN").map(PathBuf::from).or_else(from_path) else {
        assert!(
            std::env::var_os("EDGEINFER_REQUIRE_SPIN").is_none(),
            "EDGEINFER_REQUIRE_SPIN is set, but there is no Spin CLI ($SPIN unset, no `spin` on PATH)"
        );
        terminal(&format!(
            "{test}: DID NOT RUN: no Spin CLI ($SPIN unset, no `spin` on PATH; scripts/test sets SPIN \
             from ../shared/tools/spin when it exists)"
        ));
        return None;
    };
    assert!(spin.is_file(), "SPIN={} does not exist", spin.display());
    static VERSION: Once = Once::new();
    VERSION.call_once(|| {
        let output = Command::new(&spin).arg("--version").output().expect("run spin --version");
        let version = String::from_utf8_lossy(&output.stdout);
        terminal(&format!("Spin tests run {} ({})", version.trim(), spin.display()));
    });
    Some(spin)
}

/// A free loopback port (the listener is closed before Spin binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `spin up` process on loopback, killed (and its state directory removed) on drop.
struct SpinUp {
    child: Child,
    base: String,
    state_dir: PathBuf,
}

impl SpinUp {
    /// Runs `spin up -f MANIFEST` on a free port and waits until it serves. When Spin exits
    /// first, the error is everything it printed (its own error message).
    fn start(spin: &Path, manifest: &Path) -> Result<SpinUp, String> {
        SpinUp::start_with(spin, manifest, &[])
    }

    /// `start` with more arguments to `spin up` (e.g. `--runtime-config-file`).
    fn start_with(spin: &Path, manifest: &Path, extra: &[&str]) -> Result<SpinUp, String> {
        SpinUp::start_with_env(spin, manifest, extra, &[])
    }

    /// `start_with`, with extra environment variables (e.g. Spin's OpenTelemetry settings).
    fn start_with_env(
        spin: &Path,
        manifest: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<SpinUp, String> {
        let port = free_port();
        let state_dir = std::env::temp_dir().join(format!("edgeinfer-spin-{}-{port}", std::process::id()));
        let mut child = Command::new(spin)
            .arg("up")
            .arg("-f")
            .arg(manifest)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .arg("--state-dir")
            .arg(&state_dir)
            // Spin copies the mounted files (718 MB for the default app) to a temporary directory
            // it removes only on a clean exit: put it where drop removes it.
            .arg("--temp")
            .arg(state_dir.join("temp"))
            .envs(env.iter().copied())
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: `spin up` runs the trigger as a child process, which must
            // go down with it.
            .process_group(0)
            .spawn()
            .expect("start spin up");
        let output = Arc::new(Mutex::new(String::new()));
        let (serving, serving_rx) = mpsc::channel();
        let readers: Vec<_> = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .map(|stream| {
            let (output, serving) = (output.clone(), serving.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[spin] {line}");
                    if line.contains("Serving http://") {
                        let _ = serving.send(());
                    }
                    output.lock().unwrap().push_str(&format!("{line}\n"));
                }
            })
        })
        .collect();
        let mut app = SpinUp { child, base: format!("http://127.0.0.1:{port}"), state_dir };
        // Spin compiles the composed handlers (nn-local is 20 MB of Wasm) before it serves.
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if serving_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                return Ok(app);
            }
            if let Some(status) = app.child.try_wait().unwrap() {
                readers.into_iter().for_each(|reader| reader.join().unwrap());
                let output = output.lock().unwrap();
                return Err(format!("spin up exited ({status}) before serving; it said:\n{output}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "spin up did not serve within 600 s; it said:\n{}",
                    output.lock().unwrap()
                ));
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for SpinUp {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of a child we spawned as its leader.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Bodies the handlers must refuse with their JSON error contract, under any runtime.
fn bad_requests() -> Vec<(&'static str, String)> {
    vec![
        ("/embed", json!({"inputs": []}).to_string()),
        ("/embed", json!({"inputs": ""}).to_string()),
        ("/embed", json!({"input": "misspelt field"}).to_string()),
        ("/embed", "{not json".to_string()),
        ("/embed", json!({"inputs": "x ".repeat(400)}).to_string()),
        ("/predict", json!({"inputs": "a", "top_k": 0}).to_string()),
        ("/predict", json!({"inputs": ["a", "b"], "raw_scores": "yes"}).to_string()),
        ("/predict", json!({"inputs": [["a sentence", "its pair"]]}).to_string()),
    ]
}

/// (status, error_type) of a raw JSON POST.
fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let response = common::client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

#[test]
fn spin_up_serves_the_default_app_like_the_reference_and_edgeinfer_up() {
    let Some(spin) = spin_cli("spin_up_serves_the_default_app_like_the_reference_and_edgeinfer_up") else {
        return;
    };
    // The native host starts meanwhile: it answers the same inputs with ONNX Runtime.
    let native = std::thread::spawn(|| Host::start(&repo_root().join("spin.toml"), &[]));
    let started = Instant::now();
    let app = SpinUp::start(&spin, &repo_root().join("spin.toml"))
        .unwrap_or_else(|output| panic!("Spin refused the default spin.toml: {output}"));
    let (status, body) = post_json(&app.url("/embed"), &json!({"inputs": "the first answer"}));
    assert_eq!(status, 200, "{body}");
    terminal(&format!(
        "spin up spin.toml: first /embed answer {:.1} s after `spin up` started",
        started.elapsed().as_secs_f64()
    ));

    // /embed against the Python reference (onnxruntime + tokenizers).
    let cases = reference("embeddings.json");
    let mut worst = 1f32;
    for chunk in cases.as_array().unwrap().chunks(8) {
        let texts: Vec<&Value> = chunk.iter().map(|c| &c["text"]).collect();
        let truncate = chunk.iter().any(|c| c["needs_truncate"] == true);
        let (status, body) = post_json(&app.url("/embed"), &json!({"inputs": texts, "truncate": truncate}));
        assert_eq!(status, 200, "{body}");
        for (case, got) in chunk.iter().zip(vectors(&body)) {
            let want: Vec<f32> = serde_json::from_value(case["embedding"].clone()).unwrap();
            worst = worst.min(cosine(&got, &want));
        }
    }
    terminal(&format!(
        "spin up /embed vs the Python reference: min cosine {worst:.6} over {} sentences",
        cases.as_array().unwrap().len()
    ));
    assert!(worst >= 0.999, "/embed under Spin: min cosine {worst} against the Python reference");

    // /predict against the independent numpy + scikit-learn reference.
    let intents = reference("intents.json");
    let labels: Vec<&str> =
        intents["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let cases = intents["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let mut spin_predictions = Vec::new();
    for chunk in texts.chunks(16) {
        let (status, body) = post_json(&app.url("/predict"), &json!({"inputs": chunk}));
        assert_eq!(status, 200, "{body}");
        spin_predictions.extend(body.as_array().unwrap().iter().cloned());
    }
    let mut worst_score = 0f64;
    for (case, ranked) in cases.iter().zip(&spin_predictions) {
        assert_eq!(ranked[0]["label"], case["label"], "{}", case["text"]);
        for entry in ranked.as_array().unwrap() {
            let index = labels.iter().position(|l| *l == entry["label"]).expect("a known label");
            let want = case["scores"][index].as_f64().unwrap();
            worst_score = worst_score.max((entry["score"].as_f64().unwrap() - want).abs());
        }
    }
    terminal(&format!(
        "spin up /predict vs the reference: same top label on {}, max |Δscore| {worst_score:.2e}",
        cases.len()
    ));
    assert!(worst_score < 1e-4, "/predict under Spin: a score differs from the reference by {worst_score}");
    let (status, body) =
        post_json(&app.url("/predict"), &json!({"inputs": "set a timer for ten minutes", "top_k": 1}));
    assert_eq!((status, body[0]["label"].as_str()), (200, Some("timer")), "{body}");

    // Against `edgeinfer up` (ONNX Runtime) on the same inputs: the same answers within the
    // tolerance of tract (nn-local) against ONNX Runtime, the same errors.
    let native = native.join().unwrap();
    for chunk in texts.chunks(16) {
        let (_, ours) = post_json(&native.url("/embed"), &json!({"inputs": chunk}));
        let (_, spins) = post_json(&app.url("/embed"), &json!({"inputs": chunk}));
        assert_eq!((vectors(&ours).len(), vectors(&spins).len()), (chunk.len(), chunk.len()));
        for (a, b) in vectors(&ours).iter().zip(&vectors(&spins)) {
            assert!(
                cosine(a, b) >= 0.999,
                "/embed: edgeinfer up and spin up differ (cosine {})",
                cosine(a, b)
            );
        }
        let (_, ours) = post_json(&native.url("/predict"), &json!({"inputs": chunk, "top_k": 3}));
        let (_, spins) = post_json(&app.url("/predict"), &json!({"inputs": chunk, "top_k": 3}));
        for (a, b) in ours.as_array().unwrap().iter().zip(spins.as_array().unwrap()) {
            assert_eq!(a[0]["label"], b[0]["label"]);
            let (sa, sb) = (a[0]["score"].as_f64().unwrap(), b[0]["score"].as_f64().unwrap());
            assert!((sa - sb).abs() < 1e-4, "/predict: {sa} (edgeinfer up) vs {sb} (spin up)");
        }
    }
    // OpenAI's /v1/embeddings (the openai component) under Spin: the same vectors, same envelope.
    let request = json!({"model": "all-minilm-l6-v2", "input": &texts[..8], "dimensions": 128});
    let (status, ours) = post_json(&native.url("/v1/embeddings"), &request);
    let (spin_status, spins) = post_json(&app.url("/v1/embeddings"), &request);
    assert_eq!((status, spin_status), (200, 200), "{spins}");
    assert_eq!(ours["usage"], spins["usage"]);
    assert_eq!(ours["data"].as_array().unwrap().len(), 8);
    assert_eq!(spins["data"].as_array().unwrap().len(), 8);
    for (a, b) in ours["data"].as_array().unwrap().iter().zip(spins["data"].as_array().unwrap()) {
        let a: Vec<f32> = serde_json::from_value(a["embedding"].clone()).unwrap();
        let b: Vec<f32> = serde_json::from_value(b["embedding"].clone()).unwrap();
        assert_eq!((a.len(), b.len()), (128, 128));
        assert!(cosine(&a, &b) >= 0.999, "/v1/embeddings: edgeinfer up and spin up differ");
    }
    for (route, body) in bad_requests() {
        let (status, spins) = post_raw(&app.url(route), &body);
        let (native_status, ours) = post_raw(&native.url(route), &body);
        assert_eq!(status, 422, "{route} {body}: {spins}");
        assert!(spins["error"].as_str().is_some_and(|e| !e.is_empty()), "{route} {body}: {spins}");
        assert_eq!((status, &spins["error_type"]), (native_status, &ours["error_type"]), "{route} {body}");
        assert_eq!(spins["error"], ours["error"], "{route} {body}");
    }
}

#[test]
fn spin_up_serves_the_remote_app_against_edgeinfer_kserve() {
    let Some(spin) = spin_cli("spin_up_serves_the_remote_app_against_edgeinfer_kserve") else { return };
    let backend = kserve_host();
    let manifest = Variant::remote_pointing_at(backend.base.trim_start_matches("http://"));
    let app = SpinUp::start(&spin, &manifest.0)
        .unwrap_or_else(|output| panic!("Spin refused spin.remote.toml: {output}"));

    common::assert_answers_like_the_model_host(&app.base, &backend);
}

/// Spin (spin.remote.toml: its handlers call the model host through nn-remote) and the edgeinfer
/// model host export to one OTLP receiver: Spin's outbound call carries its trace context
/// (`traceparent`), so the model host's request span is the child of Spin's outbound span, in
/// Spin's trace.
#[test]
fn spin_and_edgeinfer_appear_in_one_trace_through_nn_remote() {
    let Some(spin) = spin_cli("spin_and_edgeinfer_appear_in_one_trace_through_nn_remote") else { return };
    let receiver = common::OtlpReceiver::start();
    let config = Variant::kserve_config();
    let backend = Host::start_with_env(
        &repo_root().join("spin.toml"),
        &["--runtime-config-file", config.0.to_str().unwrap(), "--otlp-endpoint", &receiver.grpc],
        &[("EDGEINFER_TEST_KSERVE_TOKEN", common::KSERVE_TOKEN)],
    );
    let manifest = Variant::remote_pointing_at(backend.base.trim_start_matches("http://"));
    let otel = [("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let app = SpinUp::start_with_env(&spin, &manifest.0, &[], &otel)
        .unwrap_or_else(|output| panic!("Spin refused spin.remote.toml: {output}"));
    let (status, body) = post_json(&format!("{}/embed", app.base), &json!({"inputs": "traced through Spin"}));
    assert_eq!(status, 200, "{body}");
    // The model host sends its spans as it stops; Spin sends its own every 200 ms meanwhile.
    let mut backend = backend;
    backend.signal(libc::SIGTERM);
    assert!(backend.wait_exit(Duration::from_secs(40)).is_some());
    let joined = |spans: &[Value]| {
        spans
            .iter()
            .find(|s| s["service"] == "edgeinfer" && s["name"] == "POST /v2/models/{name}/infer")
            .and_then(|served| {
                spans.iter().find(|s| {
                    s["service"] != "edgeinfer"
                        && s["span_id"] == served["parent_span_id"]
                        && s["trace_id"] == served["trace_id"]
                })
            })
            .is_some()
    };
    let spans = receiver.spans_when(Duration::from_secs(15), joined);
    drop(app);
    assert!(joined(&spans), "the model host's span continues Spin's trace: {spans:#?}");
}

/// Runs `PROGRAM build -f MANIFEST` with `$BUILD_TRACE` set; returns the lines the build
/// commands appended to it.
fn build_trace(program: &Path, manifest: &Path, tag: &str) -> Vec<String> {
    let trace = std::env::temp_dir().join(format!("edgeinfer-build-trace-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_file(&trace);
    let output = Command::new(program)
        .args(["build", "-f"])
        .arg(manifest)
        .env("BUILD_TRACE", &trace)
        .output()
        .expect("run the build");
    assert!(output.status.success(), "{tag} build failed: {}", String::from_utf8_lossy(&output.stderr));
    let lines = std::fs::read_to_string(&trace).unwrap_or_default().lines().map(String::from).collect();
    let _ = std::fs::remove_file(&trace);
    lines
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))))
}

#[test]
fn spin_build_runs_the_manifest_build_commands_as_edgeinfer_build_does() {
    let Some(spin) = spin_cli("spin_build_runs_the_manifest_build_commands_as_edgeinfer_build_does") else {
        return;
    };
    // Same commands, same order within a component, same working directories. (Spin does not
    // keep one order across components from run to run, so those are compared as sets.)
    let manifest = repo_root().join("tests/apps/build/spin.toml");
    let mut by_spin = build_trace(&spin, &manifest, "spin");
    let mut by_edgeinfer = build_trace(&common::host_binary(), &manifest, "edgeinfer");
    for trace in [&by_spin, &by_edgeinfer] {
        let position = |line: &str| trace.iter().position(|l| l == line);
        assert!(position("listed 1 in sub") < position("listed 2 sees marker"), "{trace:?}");
    }
    by_spin.sort();
    by_edgeinfer.sort();
    assert_eq!(by_spin, ["listed 1 in sub", "listed 2 sees marker", "single 1 in build"]);
    assert_eq!(by_edgeinfer, by_spin);

    // The default app: `spin build` runs the same cargo builds `edgeinfer build` ran before
    // the tests, so every component it writes is byte for byte what the other tests serve.
    let built = ["embed", "classify", "openai", "tokenizer", "nn_local"]
        .map(|name| repo_root().join(format!("target/wasm32-wasip2/release/{name}.wasm")));
    let before: Vec<String> = built.iter().map(|p| sha256_file(p)).collect();
    let output = Command::new(&spin)
        .args(["build", "-f"])
        .arg(repo_root().join("spin.toml"))
        .output()
        .expect("run spin build");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "spin build of spin.toml failed:\n{said}");
    for id in ["embed", "classify", "openai", "tokenizer", "nn-local"] {
        assert!(said.contains(&format!("Building component {id} with `rustup target add")), "{id}:\n{said}");
    }
    let after: Vec<String> = built.iter().map(|p| sha256_file(p)).collect();
    assert_eq!(before, after, "spin build wrote other components than edgeinfer build");
}

#[test]
fn manifests_spin_refuses_fail_with_spins_own_message() {
    let Some(spin) = spin_cli("manifests_spin_refuses_fail_with_spins_own_message") else { return };
    // A key of ours in spin.toml (ours belong in runtime-config/): Spin's manifest schema denies it.
    let unknown_key = Variant::new("spin.toml", "spin-unknown-key", |text| {
        text.replacen("ai_models = [\"minilm\"]", "ai_models = [\"minilm\"]\nmax_memory_bytes = 1", 1)
    });
    let Err(said) = SpinUp::start(&spin, &unknown_key.0) else { panic!("spin up accepted an unknown key") };
    assert!(said.contains("unknown field `max_memory_bytes`"), "{said}");

    // A model provider dependency that does not export the interface: Spin cannot compose it.
    let bad_dependency = Variant::new("spin.toml", "spin-bad-dependency", |text| {
        text.replacen(
            "\"edgeinfer:nn/infer@0.1.0\" = { path = \"target/wasm32-wasip2/release/nn_local.wasm\" }",
            "\"edgeinfer:nn/infer@0.1.0\" = { path = \"target/wasm32-wasip2/release/tokenizer.wasm\" }",
            1,
        )
    });
    let Err(said) = SpinUp::start(&spin, &bad_dependency.0) else {
        panic!("spin up composed a wrong dependency")
    };
    assert!(said.contains("edgeinfer:nn/infer"), "{said}");
}

/// The Spin SDK app of tests/apps/llm (embeddings through `spin_sdk::llm`), served by `edgeinfer
/// up` on the host's engines.
fn llm_app_on_edgeinfer() -> Host {
    let app = repo_root().join("tests/apps/llm");
    Host::start(
        &app.join("spin.toml"),
        &["--runtime-config-file", app.join("runtime.toml").to_str().unwrap()],
    )
}

/// POSTs `{"texts"}` to the llm app; its `{"embeddings", "prompt_token_count"}` or `{"error"}`.
fn generate_embeddings(base: &str, model: &str, texts: &[&str]) -> (u16, Value) {
    post_json(&format!("{base}/embeddings"), &json!({"model": model, "texts": texts}))
}

const LLM_TEXTS: [&str; 3] = ["Hello world", "The cat sits outside", "東京は日本の首都です。"];

#[test]
fn spin_sdk_llm_app_runs_on_edgeinfer_with_the_embed_answers() {
    // edgeinfer up serves a Spin app written against spin_sdk::llm, unchanged: the same vectors
    // as the default app's /embed (same model, same pooling), token counts without padding.
    let native = llm_app_on_edgeinfer();
    let default_app = Host::start(&repo_root().join("spin.toml"), &[]);
    let (status, body) = generate_embeddings(&native.base, "all-minilm-l6-v2", &LLM_TEXTS);
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
    assert_eq!(got.len(), LLM_TEXTS.len());
    let (_, embed) = post_json(&default_app.url("/embed"), &json!({"inputs": LLM_TEXTS}));
    for (a, b) in got.iter().zip(&vectors(&embed)) {
        assert!(cosine(a, b) > 0.99999, "spin_sdk::llm vs /embed: cosine {}", cosine(a, b));
    }
    let tokens = |text: &str| {
        let response =
            common::client().post(default_app.url("/embed")).json(&json!({"inputs": text})).send().unwrap();
        response.headers()["x-compute-tokens"].to_str().unwrap().parse::<u64>().unwrap()
    };
    let want: u64 = LLM_TEXTS.iter().map(|t| tokens(t)).sum();
    assert_eq!(body["prompt_token_count"], want, "{body}");

    // More texts than one model call takes are computed in parts, in order.
    let many: Vec<String> = (0..40).map(|i| format!("text number {i}")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let (status, body) = generate_embeddings(&native.base, "all-minilm-l6-v2", &many_refs);
    assert_eq!(status, 200, "{body}");
    let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
    assert_eq!(got.len(), 40);
    let (_, last) = post_json(&default_app.url("/embed"), &json!({"inputs": many[39]}));
    assert!(cosine(&got[39], &vectors(&last)[0]) > 0.99999);

    // Errors as Spin's interface has them: a model outside ai_models, text generation, a text
    // past the token limit.
    // Configured in the runtime config but not in the component's ai_models, and not configured.
    for model in ["other-minilm", "all-mpnet-base-v2"] {
        let (status, body) = generate_embeddings(&native.base, model, &["x"]);
        assert_eq!(
            (status, body["error"].as_str()),
            (500, Some("Error::ModelNotSupported")),
            "{model}: {body}"
        );
    }
    let (status, body) = post_json(&native.url("/infer"), &json!({"model": "llama2-chat", "prompt": "hi"}));
    assert_eq!(status, 500);
    assert!(body["error"].as_str().unwrap().contains("not supported by edgeinfer"), "{body}");
    let long = "word ".repeat(300);
    let (status, body) = generate_embeddings(&native.base, "all-minilm-l6-v2", &["fine", &long]);
    assert_eq!(status, 500);
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("Error::InvalidInput") && error.contains("text 1 is 302 tokens"), "{body}");
}

#[test]
fn spin_up_uses_edgeinfer_as_its_remote_llm_server() {
    let Some(spin) = spin_cli("spin_up_uses_edgeinfer_as_its_remote_llm_server") else { return };
    let server = Host::start(&repo_root().join("spin.toml"), &[]);
    let native = llm_app_on_edgeinfer();
    let (_, want) = generate_embeddings(&native.base, "all-minilm-l6-v2", &LLM_TEXTS);
    let want: Vec<Vec<f32>> = serde_json::from_value(want["embeddings"].clone()).unwrap();
    // Spin joins the endpoint's absolute path to `url`, replacing any path `url` has: a prefix
    // would be lost, so edgeinfer answers both APIs at the root (`/embed`, `/v1/embeddings`).
    for api_type in ["default", "open_ai"] {
        let config =
            std::env::temp_dir().join(format!("edgeinfer-spin-llm-{api_type}-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            format!(
                "[llm_compute]\ntype = \"remote_http\"\nurl = \"{}/ignored/prefix\"\nauth_token = \"t0ken\"\napi_type = \"{api_type}\"\n",
                server.base
            ),
        )
        .unwrap();
        let manifest = repo_root().join("tests/apps/llm/spin.toml");
        let app = SpinUp::start_with(&spin, &manifest, &["--runtime-config-file", config.to_str().unwrap()])
            .unwrap_or_else(|said| panic!("{said}"));
        let (status, body) = generate_embeddings(&app.base, "all-minilm-l6-v2", &LLM_TEXTS);
        assert_eq!(status, 200, "{api_type}: {body}");
        let got: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
        assert_eq!(got.len(), 3);
        for (a, b) in got.iter().zip(&want) {
            assert!(cosine(a, b) > 0.99999, "{api_type}: remote vs native cosine {}", cosine(a, b));
        }
        let tokens = body["prompt_token_count"].as_u64().unwrap();
        terminal(&format!("spin up with remote_http api_type={api_type}: 3 embeddings, {tokens} tokens"));
        assert!(tokens >= 3 * 3, "{api_type}: {body}");
        let _ = std::fs::remove_file(&config);
    }
    // What Spin's default client sends, byte for byte: no content-type, a lowercase bearer.
    let response = common::client()
        .post(server.url("/embed"))
        .header("authorization", "bearer t0ken")
        .body(r#"{"model":"all-minilm-l6-v2","input":["Hello world"]}"#)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    assert_eq!(body["usage"], json!({"promptTokenCount": 4}), "{body}");
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 1);
    let (status, body) = post_json(&server.url("/embed"), &json!({"model": "gpt-4", "input": ["x"]}));
    assert_eq!((status, body["error_type"].as_str()), (404, Some("NotFound")), "{body}");
}

/// The `/embed` and `/predict` answers of two runtimes on the same texts: within tract's tolerance
/// of ONNX Runtime (nn-local under one, native inference under the other), the same top labels.
fn assert_same_answers(a: &str, b: &str, what: &str) {
    let texts = json!(["A quick test of a registry app.", "set a timer for ten minutes", "héllo wörld"]);
    let (status_a, embed_a) = post_json(&format!("{a}/embed"), &json!({"inputs": texts}));
    let (status_b, embed_b) = post_json(&format!("{b}/embed"), &json!({"inputs": texts}));
    assert_eq!((status_a, status_b), (200, 200), "{what}: {embed_a} {embed_b}");
    assert_eq!((vectors(&embed_a).len(), vectors(&embed_b).len()), (3, 3));
    for (x, y) in vectors(&embed_a).iter().zip(&vectors(&embed_b)) {
        assert!(cosine(x, y) >= 0.9999, "{what}: /embed differs (cosine {})", cosine(x, y));
    }
    let (_, predict_a) = post_json(&format!("{a}/predict"), &json!({"inputs": texts, "top_k": 1}));
    let (_, predict_b) = post_json(&format!("{b}/predict"), &json!({"inputs": texts, "top_k": 1}));
    for (x, y) in predict_a.as_array().unwrap().iter().zip(predict_b.as_array().unwrap()) {
        assert_eq!(x[0]["label"], y[0]["label"], "{what}: /predict");
    }
    assert_eq!(predict_a[1][0]["label"], "timer");
}

#[test]
fn spin_up_runs_the_app_edgeinfer_pushed_to_a_registry() {
    let Some(spin) = spin_cli("spin_up_runs_the_app_edgeinfer_pushed_to_a_registry") else { return };
    let registry = common::OciRegistry::start();
    let reference = format!("{}/edgeinfer/app:v1", registry.address);
    // With the components precompiled for both targets: extra layers Spin must leave alone.
    // (Removed after the push: every later push of the checkout's app would carry them.)
    struct Precompiled;
    impl Drop for Precompiled {
        fn drop(&mut self) {
            for id in ["embed", "classify", "openai"] {
                let folder = repo_root().join(format!("target/wasm32-wasip2/release/{id}.wasm.precompiled"));
                let _ = std::fs::remove_dir_all(folder);
            }
        }
    }
    let precompiled = Precompiled;
    let (ok, _, said) = common::edgeinfer(&["build", "--precompile", "x86_64,aarch64"], &[]);
    assert!(ok, "{said}");
    let (ok, _, said) = common::edgeinfer(&["registry", "push", "--insecure", &reference], &[]);
    assert!(ok, "{said}");
    let manifest = registry.manifest("edgeinfer/app", "v1");
    let layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == "application/vnd.edgeinfer.precompiled-component.v1")
        .collect();
    assert_eq!(layers.len(), 6, "embed, classify and openai for two targets: {manifest}");
    drop(precompiled);
    let native = std::thread::spawn(|| Host::start(&repo_root().join("spin.toml"), &[]));
    // Spin pulls it, composes each handler's dependencies (nn-local, the tokenizer) and serves.
    let cache = std::env::temp_dir().join(format!("edgeinfer-spin-cache-{}", std::process::id()));
    let app = SpinUp::start_with(
        &spin,
        Path::new(&reference),
        &["--insecure", "--cache-dir", cache.to_str().unwrap()],
    )
    .unwrap_or_else(|output| panic!("spin up -f {reference} failed: {output}"));
    assert_same_answers(&app.base, &native.join().unwrap().base, "spin up -f REF vs edgeinfer up");
    drop(app);
    let _ = std::fs::remove_dir_all(&cache);
}

#[test]
fn edgeinfer_serves_the_app_spin_registry_push_wrote() {
    let Some(spin) = spin_cli("edgeinfer_serves_the_app_spin_registry_push_wrote") else { return };
    let registry = common::OciRegistry::start();
    let reference = format!("{}/edgeinfer/app:spin", registry.address);
    let output = Command::new(&spin)
        .args(["registry", "push", "--insecure", &reference])
        .current_dir(repo_root())
        .output()
        .expect("run spin registry push");
    assert!(output.status.success(), "spin registry push: {}", String::from_utf8_lossy(&output.stderr));
    // Spin's layout: handlers composed before the push (nn-local inside, no dependencies left),
    // the models as data layers.
    let manifest = registry.manifest("edgeinfer/app", "spin");
    let lock_layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.fermyon.spin.application.v1+config")
        .expect("the lock layer");
    let lock: Value =
        serde_json::from_slice(&registry.blob("edgeinfer/app", lock_layer["digest"].as_str().unwrap()))
            .unwrap();
    let embed = lock["components"].as_array().unwrap().iter().find(|c| c["id"] == "embed").unwrap();
    assert!(embed.get("dependencies").is_none(), "Spin composed the handler: {embed}");
    let native = std::thread::spawn(|| Host::start(&repo_root().join("spin.toml"), &[]));
    let cache = common::FreshCache::new("spin-pushed");
    let served = Host::start_with_env(Path::new(&reference), &["--insecure"], &[cache.env()]);
    assert_same_answers(
        &served.base,
        &native.join().unwrap().base,
        "edgeinfer up -f (Spin's artifact) vs edgeinfer up",
    );
}
