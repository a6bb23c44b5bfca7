//! The host built for ARM64 (`scripts/aarch64-host`, `$EDGEINFER_AARCH64_HOST`), run here by
//! `scripts/qemu-aarch64` (Debian's qemu-user-static, the cross toolchain's libraries, an ARM64
//! /proc/cpuinfo): it fetches the aarch64 build of ONNX Runtime named by the runtime config, answers `/ready`, `/embed` equal
//! to the Python reference, `/predict` equal to scikit-learn's, and swaps in a new version of a
//! component under load without a failed request. In CI the test must run; elsewhere it says
//! that it did not.

mod common;

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use common::{ADMIN_TOKEN, Host, built_wasm, client, cosine, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};
use sha2::Digest;

/// The aarch64 host binary, or `None` (the test says it did not run) outside CI.
fn aarch64_host() -> Option<String> {
    match std::env::var("EDGEINFER_AARCH64_HOST") {
        Ok(path) if !path.is_empty() => {
            assert!(std::path::Path::new(&path).is_file(), "EDGEINFER_AARCH64_HOST={path} is not a file");
            Some(path)
        }
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "CI runs the aarch64 host: set EDGEINFER_AARCH64_HOST (scripts/test does, from scripts/aarch64-host)"
            )
        }
        _ => {
            eprintln!(
                "DID NOT RUN: no EDGEINFER_AARCH64_HOST (scripts/aarch64-host builds it; scripts/test sets it)"
            );
            None
        }
    }
}

/// The default app's runtime config with deadlines for emulation: ONNX Runtime under qemu-user
/// takes ~2.5 s for a sentence that takes milliseconds natively, past the 10 s default whenever a
/// compile runs beside it.
fn runtime_config_for_emulation() -> std::path::PathBuf {
    let mut config = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    for component in ["embed", "classify"] {
        config.push_str(&format!("\n[component.{component}]\nrequest_timeout_ms = 120000\n"));
    }
    let path = std::env::temp_dir().join(format!("edgeinfer-aarch64-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    path
}

#[test]
fn the_arm64_host_serves_the_default_app_under_qemu() {
    let Some(binary) = aarch64_host() else { return };
    let started = Instant::now();
    let qemu = repo_root().join("scripts/qemu-aarch64");
    let launcher = [qemu.as_os_str(), OsStr::new(&binary)];
    let config = runtime_config_for_emulation();
    let host = Arc::new(Host::start_by(
        &launcher,
        &repo_root().join("spin.toml"),
        &["--admin-listen", "127.0.0.1:0", "--runtime-config-file", config.to_str().unwrap()],
        &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
    ));
    eprintln!("aarch64 host serving after {:.1} s under qemu", started.elapsed().as_secs_f64());
    let log = host.log().join("\n");
    // The aarch64 build named by [onnxruntime.arch.aarch64], fetched into the cache by its sum.
    let aarch64_library = "8aa3b76b28c778a2b1dd660d34161adb1d508c9ccd04ff9dc80e26eca5df8467";
    assert!(
        log.lines().any(|l| l.contains("ONNX Runtime 1.31.1 loaded") && l.contains(aarch64_library)),
        "the runtime config's aarch64 build is loaded:\n{log}"
    );
    let ready = client().get(host.url("/ready")).send().unwrap();
    assert_eq!(ready.status(), 200, "{}", ready.text().unwrap());

    // /embed: the Python reference's vectors (one sentence a request: emulation is slow).
    let cases = reference("embeddings.json");
    for case in cases.as_array().unwrap().iter().filter(|c| c["needs_truncate"] != true).take(2) {
        let (status, body) = post_json(&host.url("/embed"), &json!({ "inputs": case["text"] }));
        assert_eq!(status, 200, "{body}");
        let (got, want) =
            (&vectors(&body)[0], serde_json::from_value::<Vec<f32>>(case["embedding"].clone()).unwrap());
        assert!(cosine(got, &want) >= 0.999, "cosine {} for {}", cosine(got, &want), case["text"]);
    }

    // /predict: scikit-learn's probabilities.
    let intents = reference("intents.json");
    let labels: Vec<String> = serde_json::from_value(intents["labels"].clone()).unwrap();
    let case = &intents["cases"][0];
    let (status, body) = post_json(&host.url("/predict"), &json!({"inputs": case["text"]}));
    assert_eq!(status, 200, "{body}");
    let top = &body[0];
    assert_eq!(top["label"], case["label"], "{body}");
    let index = labels.iter().position(|l| top["label"] == l.as_str()).unwrap();
    let expected = case["scores"][index].as_f64().unwrap();
    assert!((top["score"].as_f64().unwrap() - expected).abs() < 1e-4, "{body} vs {expected}");

    // A new version of embed, deployed while requests run: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (host, stop) = (host.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = post_json(&host.url("/embed"), &json!({"inputs": "swapped on arm64"}));
                statuses.push(status);
            }
            statuses
        })
    };
    let next = common::wasm_variant(&built_wasm("embed"), &format!("aarch64-{}", std::process::id()));
    let sha = hex::encode(sha2::Sha256::digest(&next));
    let url = format!("{}/admin/v1/components/embed?sha256={sha}", host.admin.as_ref().unwrap());
    let swap_started = Instant::now();
    let deployed = client().put(url).bearer_auth(ADMIN_TOKEN).body(next).send().unwrap();
    let swap_took = swap_started.elapsed();
    let deployed_status = deployed.status().as_u16();
    let deployed: Value = deployed.json().unwrap();
    stop.store(true, Ordering::Relaxed);
    let statuses = load.join().unwrap();
    assert_eq!(deployed_status, 200, "{deployed}");
    eprintln!(
        "aarch64 under qemu: a new embed version served {:.1} s after the deploy call, {} requests meanwhile",
        swap_took.as_secs_f64(),
        statuses.len()
    );
    assert!(statuses.iter().all(|s| *s == 200), "every request during the swap answered: {statuses:?}");
    let _ = std::fs::remove_file(&config);
    let response = client().post(host.url("/embed")).json(&json!({"inputs": "after"})).send().unwrap();
    let version = &deployed["version"].as_str().expect("the version deployed")[..12];
    assert_eq!(response.headers()["x-edgeinfer-version"], version, "the new version serves");
}
