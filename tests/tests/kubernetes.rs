//! deploy/: the Kubernetes manifests (kustomize base with the cpu and gpu overlays, KEDA,
//! prometheus-adapter, KServe) and the SpinKube SpinApp, rendered by kustomize (kubectl's) and
//! validated: built-in kinds strictly against Kubernetes 1.32's schemas (`kubernetes-validate`,
//! PyPI), the SpinApp against spin-operator's spec (tests/schemas/spinapp.schema.json), the other
//! custom resources by the fields the host relies on. Then every probe path, port and metric name
//! they use is checked against a running host.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{admin_host, client, post_json, repo_root};
use serde_json::{Value, json};

/// The Kubernetes version the manifests are validated for.
const KUBERNETES: &str = "1.32.0";

/// `kubectl` on PATH (its kustomize renders the overlays).
fn kubectl() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
        .expect("kubectl is not on PATH: the overlays are rendered with `kubectl kustomize`")
}

/// `kubectl kustomize deploy/kubernetes/overlays/NAME`, written to `dir/NAME.yaml`.
fn render(overlay: &str, dir: &std::path::Path) -> PathBuf {
    let output = Command::new(kubectl())
        .arg("kustomize")
        .arg(repo_root().join("deploy/kubernetes/overlays").join(overlay))
        .output()
        .expect("run kubectl kustomize");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "kustomize {overlay}: {said}");
    assert!(!said.contains("Warning"), "kustomize {overlay} warns: {said}");
    let path = dir.join(format!("{overlay}.yaml"));
    std::fs::write(&path, &output.stdout).unwrap();
    path
}

/// Runs tests/clients/validate_deploy.py on `files`: (success, report or what it said).
fn validate(files: &[PathBuf]) -> Result<Value, String> {
    let output = Command::new(common::client_python())
        .arg(repo_root().join("tests/clients/validate_deploy.py"))
        .arg(KUBERNETES)
        .arg(repo_root().join("tests/schemas/spinapp.schema.json"))
        .args(files)
        .output()
        .expect("run validate_deploy.py");
    if output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn the_deploy_manifests_are_valid_and_match_what_the_host_serves() {
    let dir = std::env::temp_dir().join(format!("edgeinfer-kubernetes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let deploy = repo_root().join("deploy");
    let files = vec![
        render("cpu", &dir),
        render("gpu", &dir),
        render("tls", &dir),
        deploy.join("kubernetes/keda/scaledobject.yaml"),
        deploy.join("kubernetes/prometheus-adapter/rules.yaml"),
        deploy.join("kubernetes/kserve/clusterservingruntime.yaml"),
        deploy.join("spinkube/spinapp.yaml"),
    ];
    let report = validate(&files).unwrap_or_else(|e| panic!("the manifests are not valid:\n{e}"));
    eprintln!("validated: {}", report["documents"]);
    let kinds: Vec<&str> =
        report["documents"].as_array().unwrap().iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for kind in [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "ScaledObject",
        "ClusterServingRuntime",
        "SpinApp",
        "Secret",
        "Certificate",
        "prometheus-adapter rules",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let gpu = std::fs::read_to_string(&files[1]).unwrap();
    assert!(gpu.contains("nvidia.com/gpu: \"1\"") && gpu.contains("edgeinfer:0.1.0-cuda"), "{gpu}");

    // The validation catches a mistake: a misspelt probe is an unknown field.
    let typo = dir.join("typo.yaml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&files[0]).unwrap().replace("readinessProbe:", "readinesProbe:"),
    )
    .unwrap();
    let said = validate(&[typo]).unwrap_err();
    assert!(said.contains("readinesProbe") && said.contains("Deployment/edgeinfer"), "{said}");

    // With TLS on (the tls overlay), the probes speak HTTPS and the certificate files come from
    // the Secret cert-manager writes; without it, plain HTTP.
    let certificates: Vec<&str> =
        report["certificates"].as_array().unwrap().iter().map(|c| c["secret"].as_str().unwrap()).collect();
    let mut tls_containers = 0;
    for container in report["containers"].as_array().unwrap() {
        let files: Vec<&str> =
            container["tls_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
        let schemes = &container["probe_schemes"];
        if files.is_empty() {
            assert!(schemes.as_array().unwrap().iter().all(|s| s == "HTTP"), "{container}");
            continue;
        }
        tls_containers += 1;
        assert_eq!(schemes, &json!(["HTTPS", "HTTPS", "HTTPS"]), "{container}");
        assert_eq!(files.len(), 2, "certificate and key: {container}");
        // The admin clients' CA comes from a Secret of its own, not the serving issuer's.
        let client_ca = container["client_ca"].as_str().expect("admin mTLS on");
        let (directory, _) = client_ca.rsplit_once('/').unwrap();
        let secret = container["secret_mounts"][directory].as_str();
        assert!(secret.is_some_and(|s| !certificates.contains(&s)), "{client_ca}: {container}");
        for file in files {
            let (directory, _) = file.rsplit_once('/').unwrap();
            let secret = container["secret_mounts"][directory].as_str();
            assert!(
                secret.is_some_and(|s| certificates.contains(&s)),
                "{file} is not from a Certificate's Secret: {container}"
            );
        }
    }
    assert_eq!(tls_containers, 1, "the tls overlay's Deployment");

    // What they expect of the host, against a running one.
    let host = admin_host("spin.toml", None);
    let (status, _) = post_json(&host.url("/embed"), &json!({"inputs": "fill the batcher's gauges"}));
    assert_eq!(status, 200);
    for probe in report["probes"].as_array().unwrap() {
        let path = probe["path"].as_str().unwrap();
        let status = client().get(host.url(path)).send().unwrap().status().as_u16();
        assert_eq!(status, 200, "probe {probe}");
    }
    let metrics = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    for name in report["metrics"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(metrics.lines().any(|l| l.starts_with(name)), "{name} is not in /metrics");
    }
    for path in report["metrics_paths"].as_array().unwrap() {
        assert_eq!(path, "/metrics");
    }
    // Each container listens where it declares its ports.
    for container in report["containers"].as_array().unwrap() {
        let ports: Vec<u64> =
            container["ports"].as_array().unwrap().iter().map(|p| p.as_u64().unwrap()).collect();
        for listen in container["listen"].as_array().unwrap() {
            let port: u64 = listen.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                ports.contains(&port),
                "{}: {listen} is not one of its ports {ports:?}",
                container["name"]
            );
        }
    }
    // Every runtime config they name exists (in the image: the repo's runtime-config/; the gpu
    // overlay's from its ConfigMap) and is one the host accepts.
    let configs = report["runtime_configs"].as_array().unwrap();
    assert!(configs.len() >= 2, "{configs:?}");
    for config in configs {
        let config = config.as_str().unwrap();
        let file = match config.strip_prefix("/app/") {
            Some(relative) => repo_root().join(relative),
            None if config.ends_with("/gpu/runtime-config.toml") => {
                deploy.join("kubernetes/overlays/gpu/runtime-config.toml")
            }
            None => panic!("{config}: where does it come from?"),
        };
        assert!(file.is_file(), "{config} ({})", file.display());
        let (ok, _, said) = common::edgeinfer(
            &["fetch", "--runtime-config-file", file.to_str().unwrap()],
            &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
        );
        assert!(ok, "{config}: {said}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
