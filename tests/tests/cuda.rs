//! `device = "cuda:N"`: the CUDA execution provider or nothing. Without a GPU (CI, this machine)
//! the CPU build of ONNX Runtime cannot register it: the model must be unavailable (the host not
//! ready, naming the cause) rather than silently run on the CPU. The GPU path itself is exercised on a GPU machine with the
//! onnxruntime-gpu library by an ignored test (run with `--ignored` there; reported as ignored,
//! with the reason, everywhere else).

mod common;

use std::process::Command;

use common::repo_root;

fn write_app(device: &str) -> std::path::PathBuf {
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!(
        "edgeinfer-cuda-{}-{}",
        device.replace(':', "-"),
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let local = std::fs::read_to_string(root.join("runtime-config/local.toml")).unwrap();
    let onnxruntime = local.split("[onnxruntime]").nth(1).unwrap();
    std::fs::write(
        dir.join("runtime.toml"),
        format!(
            "[model.minilm]\npath = \"{}/models/all-minilm-l6-v2/model.onnx\"\ndevice = \"{device}\"\n\n[kserve]\nenabled = true\npublic = true\nmodels = [\"minilm\"]\n\n[onnxruntime]{onnxruntime}",
            root.display()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("spin.toml"), "spin_manifest_version = 2\n[application]\nname = \"cuda-test\"\n")
        .unwrap();
    dir
}

#[test]
fn cuda_device_without_cuda_provider_is_an_error_not_a_cpu_fallback() {
    let dir = write_app("cuda:0");
    // The pinned CPU library, whatever ORT_DYLIB_PATH names here (an empty value is unset).
    let host = common::Host::start_with_env(
        &dir.join("spin.toml"),
        &["--runtime-config-file", dir.join("runtime.toml").to_str().unwrap()],
        &[("ORT_DYLIB_PATH", "")],
    );
    let response = common::client().get(host.url("/ready")).send().unwrap();
    assert_eq!(response.status().as_u16(), 503, "not ready without the CUDA provider");
    let ready: serde_json::Value = response.json().unwrap();
    let error = ready["models"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("CUDA execution provider failed to register on cuda:0"), "{ready}");
    // No CPU fallback: the model does not run at all.
    let infer = serde_json::json!({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [101, 102]},
        {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 1]},
        {"name": "token_type_ids", "shape": [1, 2], "datatype": "INT64", "data": [0, 0]}]});
    let (status, body) = common::post_json(&host.url("/v2/models/minilm/infer"), &infer);
    common::assert_error(status, &body, 503, "ModelUnavailable");
    drop(host);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU: EDGEINFER_TEST_ORT_GPU=<onnxruntime-gpu libonnxruntime.so> cargo test -- --ignored"]
fn cuda_inference_on_a_gpu() {
    let gpu = Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success());
    assert!(gpu, "nvidia-smi finds no GPU");
    let library = std::env::var_os("EDGEINFER_TEST_ORT_GPU")
        .expect("EDGEINFER_TEST_ORT_GPU must name the libonnxruntime.so of the onnxruntime-gpu wheel");
    let dir = write_app("cuda:0");
    let host = common::Host::start_with_env(
        &dir.join("spin.toml"),
        &["--runtime-config-file", dir.join("runtime.toml").to_str().unwrap()],
        &[("ORT_DYLIB_PATH", library.to_str().unwrap())],
    );
    let ready: serde_json::Value = common::client().get(host.url("/ready")).send().unwrap().json().unwrap();
    assert_eq!(ready["models"][0]["device"], "cuda:0", "{ready}");
    let metrics = common::client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains(r#"edgeinfer_gpu_memory_used_bytes{device="cuda:0"}"#), "{metrics}");
}
