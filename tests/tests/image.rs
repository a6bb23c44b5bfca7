//! The container images: `scripts/image` builds them with buildah for amd64 and arm64 (from
//! `Containerfile`, on scratch, with the debug host binaries here to spare CI release builds) and
//! an index naming both; buildah pushes them to a local registry (Debian's docker-registry), where
//! skopeo reads each back; each entrypoint runs from its image's own root filesystem (`buildah
//! mount` + `chroot`; arm64 under qemu-user) as its non-root user: `/ready` answers 200 and
//! `/embed` the same vectors as the checkout. They carry the app's files and no others.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Host, OciRegistry, client, host_binary, post_json, repo_root, vectors};
use serde_json::{Value, json};

/// buildah with the storage driver scripts/image uses.
fn buildah(args: &[&str]) -> String {
    let output =
        Command::new("buildah").arg("--storage-driver").arg("vfs").args(args).output().expect("run buildah");
    assert!(
        output.status.success(),
        "buildah {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The files under `dir`, relative to it, sorted.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap_or_else(|e| panic!("{}: {e}", next.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// Starts the image's entrypoint from its root filesystem `root`, as its user, with its
/// environment only, listening on `port`; `arm64`: through `scripts/qemu-aarch64 --root`.
fn start_entrypoint(root: &str, env: &[(String, String)], port: u16, arm64: bool) -> Child {
    let mut command = match arm64 {
        true => {
            let mut qemu = Command::new(repo_root().join("scripts/qemu-aarch64"));
            qemu.args(["--root", root, "--user", "65532:65532"]);
            qemu
        }
        false => {
            let mut chroot = Command::new("chroot");
            chroot.args(["--userspec=65532:65532", root]);
            chroot
        }
    };
    command
        .args(["/usr/local/bin/edgeinfer", "up", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(env.iter().cloned())
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the image's entrypoint")
}

/// Waits for `/ready` of the entrypoint on `port` to answer 200, failing with its log if it exits.
fn wait_ready(child: &mut Child, port: u16) {
    let ready = format!("http://127.0.0.1:{port}/ready");
    let deadline = Instant::now() + Duration::from_secs(600);
    while client().get(&ready).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut said = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
            panic!("the image's entrypoint exited ({status}):\n{said}");
        }
        assert!(Instant::now() < deadline, "no 200 from {ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn the_image_is_built_for_two_cpus_pushed_and_serves_as_a_non_root_user() {
    let tag = format!("edgeinfer:test-{}", std::process::id());
    let started = Instant::now();
    let mut command = Command::new(repo_root().join("scripts/image"));
    command.args(["--tag", &tag]).env("EDGEINFER_IMAGE_BINARY", host_binary()).current_dir(repo_root());
    // The arm64 image's host: the debug build the aarch64 test runs, else the script builds it.
    if let Ok(arm64) = std::env::var("EDGEINFER_AARCH64_HOST") {
        command.env("EDGEINFER_IMAGE_BINARY_ARM64", arm64);
    }
    let output = command.output().expect("run scripts/image");
    assert!(output.status.success(), "scripts/image: {}", String::from_utf8_lossy(&output.stderr));
    let sizes = String::from_utf8_lossy(&output.stdout).trim().replace('\n', ", ");
    eprintln!("images {sizes} built in {:.0} s", started.elapsed().as_secs_f64());
    let image = format!("localhost/{tag}-amd64");
    let config: Value = serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).unwrap();
    let docker = &config["Docker"]["config"];
    assert_eq!(docker["User"], "65532:65532");
    assert_eq!(docker["StopSignal"], "SIGTERM");
    assert_eq!(docker["Healthcheck"]["Test"][2], "probe", "{docker}");
    assert_eq!(docker["Labels"]["org.opencontainers.image.version"], "0.1.0");
    let env: Vec<(String, String)> = docker["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();

    // The index names both images by platform.
    let index: Value =
        serde_json::from_str(&buildah(&["manifest", "inspect", &format!("localhost/{tag}")])).unwrap();
    let mut platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index}");

    // Pushed to a registry, index and images, which skopeo reads back.
    let registry = OciRegistry::start();
    let remote = format!("docker://{}/edgeinfer:test", registry.address);
    let pushed = Command::new("buildah")
        .args(["--storage-driver", "vfs", "manifest", "push", "--all", "--tls-verify=false"])
        .args([&format!("localhost/{tag}"), &remote])
        .output()
        .unwrap();
    assert!(pushed.status.success(), "manifest push: {}", String::from_utf8_lossy(&pushed.stderr));
    for arch in ["amd64", "arm64"] {
        let inspected = Command::new("skopeo")
            .args(["--override-arch", arch, "inspect", "--tls-verify=false", &remote])
            .output()
            .unwrap();
        assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
        let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
        assert_eq!(inspected["Architecture"], arch, "{inspected}");
        assert_eq!(inspected["Labels"]["org.opencontainers.image.title"], "edgeinfer");
    }

    // Its entrypoint, from its root filesystem, as its user, with its environment only.
    let container = buildah(&["from", "--name", &format!("edgeinfer-test-{}", std::process::id()), &image]);
    let root = buildah(&["mount", &container]);
    // The app's files: exactly what spin.toml and the runtime config name, nothing the tests or
    // other apps fetched into models/, nor what the intents model was exported from.
    let models: Vec<String> = files_under(&std::path::Path::new(&root).join("app/models"));
    let expected = [
        "all-minilm-l6-v2/1_Pooling/config.json",
        "all-minilm-l6-v2/config.json",
        "all-minilm-l6-v2/config_sentence_transformers.json",
        "all-minilm-l6-v2/model.onnx",
        "all-minilm-l6-v2/modules.json",
        "all-minilm-l6-v2/tokenizer.json",
        "intents/labels.json",
        "intents/model.onnx",
    ];
    assert_eq!(models, expected, "the image's models/");
    let components = files_under(&std::path::Path::new(&root).join("app/target/wasm32-wasip2/release"));
    let expected = ["classify.wasm", "embed.wasm", "nn_local.wasm", "openai.wasm", "tokenizer.wasm"];
    assert_eq!(components, expected, "the image's components");
    let port = free_port();
    let mut child = start_entrypoint(&root, &env, port, false);
    wait_ready(&mut child, port);
    let uid = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:") && l.contains("65532")), "{uid}");
    let checkout = Host::start(&repo_root().join("spin.toml"), &[]);
    let body = json!({"inputs": ["served from the image", "set a timer for ten minutes"]});
    let (status, from_image) = post_json(&format!("http://127.0.0.1:{port}/embed"), &body);
    assert_eq!(status, 200, "{from_image}");
    let from_checkout = vectors(&post_json(&checkout.url("/embed"), &body).1);
    assert_eq!(vectors(&from_image), from_checkout);
    let probe = Command::new("chroot")
        .args([
            "--userspec=65532:65532",
            &root,
            "/usr/local/bin/edgeinfer",
            "probe",
            &format!("http://127.0.0.1:{port}/health"),
        ])
        .status()
        .unwrap();
    assert!(probe.success(), "the HEALTHCHECK command");
    let _ = child.kill();
    let _ = child.wait();

    // The arm64 image's entrypoint, run by qemu-user placed in its root filesystem.
    let arm64 = format!("localhost/{tag}-arm64");
    let arm_container =
        buildah(&["from", "--name", &format!("edgeinfer-test-arm64-{}", std::process::id()), &arm64]);
    let arm_root = buildah(&["mount", &arm_container]);
    assert_eq!(
        files_under(&std::path::Path::new(&arm_root).join("app/models")),
        models,
        "the same app files"
    );
    let port = free_port();
    let arm_started = Instant::now();
    let mut arm_child = start_entrypoint(&arm_root, &env, port, true);
    wait_ready(&mut arm_child, port);
    eprintln!("the arm64 image is ready after {:.1} s under qemu", arm_started.elapsed().as_secs_f64());
    // One sentence (ONNX Runtime under qemu takes seconds for it).
    let (status, from_arm64) =
        post_json(&format!("http://127.0.0.1:{port}/embed"), &json!({"inputs": body["inputs"][0]}));
    assert_eq!(status, 200, "{from_arm64}");
    let cosine = common::cosine(&vectors(&from_arm64)[0], &from_checkout[0]);
    assert!(cosine > 0.9999, "arm64 and amd64 answer alike: cosine {cosine}");
    let _ = arm_child.kill();
    let _ = arm_child.wait();

    for (container, image) in [(&container, &image), (&arm_container, &arm64)] {
        buildah(&["umount", container]);
        buildah(&["rm", container]);
        buildah(&["rmi", image]);
    }
    buildah(&["manifest", "rm", &format!("localhost/{tag}")]);
    let _ = std::fs::remove_dir_all(repo_root().join("target/image"));
}
