//! `device = "cuda:N"`: the CUDA execution provider or nothing. Without a GPU (CI, this machine)
//! the CPU build of ONNX Runtime cannot register it, and the host must refuse to start rather than
//! silently run the model on the CPU. The GPU path itself is exercised on a GPU machine with the
//! onnxruntime-gpu library by an ignored test (run with `--ignored` there; reported as ignored,
//! with the reason, everywhere else).

mod common;

use std::process::Command;

use common::{host_binary, repo_root};

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
            "[model.minilm]\npath = \"{}/models/all-minilm-l6-v2/model.onnx\"\ndevice = \"{device}\"\n\n[onnxruntime]{onnxruntime}",
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
    if std::env::var_os("ORT_DYLIB_PATH").is_some() {
        eprintln!("skipped: ORT_DYLIB_PATH points at a custom ONNX Runtime that may carry CUDA");
        return;
    }
    let dir = write_app("cuda:0");
    let output = Command::new(host_binary())
        .args(["up", "--listen", "127.0.0.1:0", "-f"])
        .arg(dir.join("spin.toml"))
        .arg("--runtime-config-file")
        .arg(dir.join("runtime.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must not start on a CPU fallback:\n{stderr}");
    assert!(!stderr.contains("Serving"), "{stderr}");
    assert!(stderr.contains("CUDA execution provider failed to register on cuda:0"), "{stderr}");
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
}
