//! The container image: `scripts/image` builds it with buildah (from `Containerfile`, on scratch,
//! with the debug host binary here to spare CI a release build), skopeo pushes it to a local
//! registry (Debian's docker-registry), and its entrypoint runs from the image's own root
//! filesystem (`buildah mount` + `chroot`) as its non-root user: `/ready` answers 200 and
//! `/embed` the same vectors as the checkout.

mod common;

use std::process::{Command, Stdio};
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

#[test]
fn the_image_is_built_pushed_and_serves_as_a_non_root_user() {
    let tag = format!("edgeinfer:test-{}", std::process::id());
    let started = Instant::now();
    let output = Command::new(repo_root().join("scripts/image"))
        .args(["--tag", &tag])
        .env("EDGEINFER_IMAGE_BINARY", host_binary())
        .current_dir(repo_root())
        .output()
        .expect("run scripts/image");
    assert!(output.status.success(), "scripts/image: {}", String::from_utf8_lossy(&output.stderr));
    let size = String::from_utf8_lossy(&output.stdout).trim().to_string();
    eprintln!("image {size} built in {:.0} s", started.elapsed().as_secs_f64());
    let image = format!("localhost/{tag}");
    let config: Value = serde_json::from_str(&buildah(&["inspect", "--type", "image", &image])).unwrap();
    let docker = &config["Docker"]["config"];
    assert_eq!(docker["User"], "65532:65532");
    assert_eq!(docker["StopSignal"], "SIGTERM");
    assert_eq!(docker["Healthcheck"]["Test"][2], "probe", "{docker}");
    assert_eq!(docker["Labels"]["org.opencontainers.image.version"], "0.1.0");

    // Pushed to a registry with skopeo, which reads it back.
    let registry = OciRegistry::start();
    let remote = format!("docker://{}/edgeinfer:test", registry.address);
    let storage =
        format!("containers-storage:[vfs@/var/lib/containers/storage+/run/containers/storage]{image}");
    let copied =
        Command::new("skopeo").args(["copy", "--dest-tls-verify=false", &storage, &remote]).output().unwrap();
    assert!(copied.status.success(), "skopeo copy: {}", String::from_utf8_lossy(&copied.stderr));
    let inspected = Command::new("skopeo").args(["inspect", "--tls-verify=false", &remote]).output().unwrap();
    assert!(inspected.status.success(), "{}", String::from_utf8_lossy(&inspected.stderr));
    let inspected: Value = serde_json::from_slice(&inspected.stdout).unwrap();
    assert_eq!(inspected["Labels"]["org.opencontainers.image.title"], "edgeinfer");

    // Its entrypoint, from its root filesystem, as its user, with its environment only.
    let container = buildah(&["from", "--name", &format!("edgeinfer-test-{}", std::process::id()), &image]);
    let root = buildah(&["mount", &container]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env: Vec<(String, String)> = docker["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str()?.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let mut child = Command::new("chroot")
        .args([
            "--userspec=65532:65532",
            &root,
            "/usr/local/bin/edgeinfer",
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_clear()
        .envs(env)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the image's entrypoint");
    let ready = format!("http://127.0.0.1:{port}/ready");
    let deadline = Instant::now() + Duration::from_secs(300);
    while client().get(&ready).send().map(|r| r.status().as_u16()).ok() != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut said = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut said).unwrap();
            panic!("the image's entrypoint exited ({status}):\n{said}");
        }
        assert!(Instant::now() < deadline, "no 200 from {ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let uid = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    assert!(uid.lines().any(|l| l.starts_with("Uid:") && l.contains("65532")), "{uid}");
    let checkout = Host::start(&repo_root().join("spin.toml"), &[]);
    let body = json!({"inputs": ["served from the image", "set a timer for ten minutes"]});
    let (status, from_image) = post_json(&format!("http://127.0.0.1:{port}/embed"), &body);
    assert_eq!(status, 200, "{from_image}");
    assert_eq!(vectors(&from_image), vectors(&post_json(&checkout.url("/embed"), &body).1));
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
    buildah(&["umount", &container]);
    buildah(&["rm", &container]);
    buildah(&["rmi", &image]);
    let _ = std::fs::remove_dir_all(repo_root().join("target/image"));
}
