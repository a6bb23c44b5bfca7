//! Apps through a real OCI registry (Debian's `docker-registry`, the CNCF Distribution registry,
//! started on loopback): `edgeinfer registry push` writes the default app in Spin's layout,
//! `edgeinfer up -f REF` pulls it on an empty cache and serves the same answers as the checkout;
//! unknown tags, tampered layers, a registry that is down and a registry with accounts fail
//! clearly and leave nothing that looks valid in the cache. (Spin's own `registry push` and
//! `up -f` against these artifacts: tests/tests/spin.rs.)

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use base64::Engine;
use common::{FreshCache, Host, OciRegistry, edgeinfer, post_json, repo_root, vectors};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const REPOSITORY: &str = "edgeinfer/app";

/// Media types as Spin's `crates/oci/src/client.rs` names them (SPIN_APPLICATION_MEDIA_TYPE,
/// WASM_LAYER_MEDIA_TYPE, DATA_MEDIATYPE), and the OCI image config's.
const SPIN_APPLICATION: &str = "application/vnd.fermyon.spin.application.v1+config";
const WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
const DATA_LAYER: &str = "application/vnd.wasm.content.layer.v1+data";
const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Ours: the runtime config and the files it names.
const HOST_CONFIG: &str = "application/vnd.edgeinfer.host-config.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `edgeinfer registry push --insecure REGISTRY/edgeinfer/app:TAG`; the digest it printed.
fn push(registry: &OciRegistry, tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let reference = format!("{}/{REPOSITORY}:{tag}", registry.address);
    let mut args = vec!["registry", "push", "--insecure", &reference];
    args.extend(extra);
    let (ok, stdout, stderr) = edgeinfer(&args, env);
    if !ok {
        return Err(stderr);
    }
    Ok(stdout.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).expect("the digest").to_string())
}

/// `edgeinfer registry pull --insecure REFERENCE` with `env`: Ok(digest) or Err(what it said).
fn pull(reference: &str, env: &[(&str, &str)]) -> Result<(String, String), String> {
    let (ok, stdout, stderr) = edgeinfer(&["registry", "pull", "--insecure", reference], env);
    if ok { Ok((stdout.lines().next().unwrap().to_string(), stderr)) } else { Err(stderr) }
}

/// Every file under `dir` whose name looks like a cache entry still being written.
fn partial_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_symlink() {
            continue;
        }
        if path.is_dir() {
            found.extend(partial_files(&path));
        } else if path.to_string_lossy().contains(".partial") {
            found.push(path.display().to_string());
        }
    }
    found
}

#[test]
fn the_default_app_pushed_then_pulled_on_an_empty_cache_serves_like_the_checkout() {
    let registry = OciRegistry::start();
    let checkout = std::thread::spawn(|| Host::start(&repo_root().join("spin.toml"), &[]));
    let digest = push(&registry, "v1", &[], &[]).unwrap_or_else(|e| panic!("push failed: {e}"));

    // The artifact as Spin lays one out: an OCI image config labelled with the lock's digest, the
    // lock, Wasm layers and data layers, each referenced by digest from the lock.
    let manifest = registry.manifest(REPOSITORY, "v1");
    assert_eq!(registry.manifest(REPOSITORY, &digest), manifest, "the tag names the pushed digest");
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], OCI_IMAGE_CONFIG);
    assert_eq!(manifest["annotations"]["org.opencontainers.image.title"], "edgeinfer-default");
    let layers = manifest["layers"].as_array().unwrap();
    let by_type = |media_type: &str| -> Vec<&Value> {
        layers.iter().filter(|l| l["mediaType"] == media_type).collect()
    };
    for layer in layers {
        let media_type = layer["mediaType"].as_str().unwrap();
        assert!([SPIN_APPLICATION, WASM_LAYER, DATA_LAYER, HOST_CONFIG].contains(&media_type), "{layer}");
    }
    let (locks, hosts) = (by_type(SPIN_APPLICATION), by_type(HOST_CONFIG));
    assert_eq!((locks.len(), hosts.len()), (1, 1), "one lock, one host config: {manifest}");
    let lock_digest = locks[0]["digest"].as_str().unwrap();
    let config: Value =
        serde_json::from_slice(&registry.blob(REPOSITORY, manifest["config"]["digest"].as_str().unwrap()))
            .unwrap();
    assert_eq!((config["architecture"].as_str(), config["os"].as_str()), (Some("wasm"), Some("Wasip1")));
    assert_eq!(config["config"]["Labels"]["com.fermyon.spin.lockedAppDigest"], lock_digest);
    let wasm: HashSet<&str> = by_type(WASM_LAYER).iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let data: HashSet<&str> = by_type(DATA_LAYER).iter().map(|l| l["digest"].as_str().unwrap()).collect();
    // Handlers, the tokenizer and nn-local, uncomposed: each dependency is its own layer.
    assert_eq!(wasm.len(), 5, "{manifest}");
    let lock: Value = serde_json::from_slice(&registry.blob(REPOSITORY, lock_digest)).unwrap();
    assert_eq!(lock["spin_lock_version"], 0);
    assert_eq!(lock["metadata"]["name"], "edgeinfer-default");
    let triggers = lock["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 9);
    assert!(triggers.iter().all(|t| t["trigger_type"] == "http"));
    assert!(
        triggers.iter().any(|t| t["trigger_config"] == json!({"component": "classify", "route": "/predict"}))
    );
    let components: BTreeMap<&str, &Value> =
        lock["components"].as_array().unwrap().iter().map(|c| (c["id"].as_str().unwrap(), c)).collect();
    assert_eq!(
        components.keys().copied().collect::<Vec<_>>(),
        ["classify", "embed", "nn-local", "openai", "tokenizer"]
    );
    for component in components.values() {
        assert_eq!(component["source"]["content_type"], "application/wasm");
        assert!(wasm.contains(component["source"]["digest"].as_str().unwrap()), "{component}");
        for file in component["files"].as_array().into_iter().flatten() {
            let digest = file["digest"].as_str().unwrap();
            assert!(!file["path"].as_str().unwrap().starts_with('/'), "{file}");
            match file["inline"].as_str() {
                Some(_) => assert!(!data.contains(digest), "inline content has no layer: {file}"),
                None => assert!(data.contains(digest), "{file}"),
            }
        }
    }
    let embed = components["embed"];
    assert_eq!(embed["metadata"]["ai_models"], json!(["minilm"]));
    assert_eq!(embed["env"]["TOKENIZER_PATH"], "/model/tokenizer.json");
    let tokenizer = std::fs::read(repo_root().join("models/all-minilm-l6-v2/tokenizer.json")).unwrap();
    assert!(
        embed["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["path"] == "model/tokenizer.json" && f["digest"] == sha256(&tokenizer)),
        "{embed}"
    );
    let dependency = &embed["dependencies"]["edgeinfer:nn/infer@0.1.0"];
    assert_eq!(dependency["source"]["digest"], components["nn-local"]["source"]["digest"]);
    assert_eq!(dependency["inherit"], "All");

    // `up -f REF` on an empty cache: pulled, verified, served; the same answers as the checkout.
    let cache = FreshCache::new("pull");
    let reference = format!("{}/{REPOSITORY}:v1", registry.address);
    let pulled = Host::start_with_env(Path::new(&reference), &["--insecure"], &[cache.env()]);
    let said = pulled.log().join("\n");
    assert!(said.contains(&format!("pulled {reference} ({digest})")) && said.contains("fetched ("), "{said}");
    let checkout = checkout.join().unwrap();
    let texts = json!(["A quick test of a pulled app.", "set a timer for ten minutes", "héllo wörld"]);
    for (path, body) in [
        ("/embed", json!({"inputs": texts})),
        ("/predict", json!({"inputs": texts, "top_k": 3})),
        ("/v1/embeddings", json!({"input": texts, "model": "all-minilm-l6-v2"})),
        ("/rerank", json!({"query": "timer", "texts": texts})),
    ] {
        let (status, from_registry) = post_json(&pulled.url(path), &body);
        assert_eq!(status, 200, "{path}: {from_registry}");
        let (_, from_checkout) = post_json(&checkout.url(path), &body);
        if path == "/embed" {
            assert_eq!(vectors(&from_registry), vectors(&from_checkout), "{path}");
        } else {
            assert_eq!(from_registry, from_checkout, "{path}");
        }
    }
    drop(pulled);

    // By digest, from the same cache: nothing fetched again.
    let (pulled_digest, said) = pull(&format!("{}/{REPOSITORY}@{digest}", registry.address), &[cache.env()])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled_digest, digest);
    assert!(said.contains(&format!("{} layers, 0 fetched", layers.len())), "{said}");
    // A second push sends no layer again.
    let (ok, _, said) = edgeinfer(&["registry", "push", "--insecure", &reference], &[]);
    assert!(ok && said.contains(&format!("({} already there), 0.0 MB sent", layers.len())), "{said}");
}

#[test]
fn unknown_tags_tampered_layers_and_a_registry_down_fail_clearly_and_leave_nothing_behind() {
    let mut registry = OciRegistry::start();
    push(&registry, "v1", &[], &[]).unwrap_or_else(|e| panic!("push failed: {e}"));
    let base = format!("{}/{REPOSITORY}", registry.address);
    let good = FreshCache::new("good");
    pull(&format!("{base}:v1"), &[good.env()]).unwrap_or_else(|e| panic!("{e}"));

    let cache = FreshCache::new("bad");
    let said = pull(&format!("{base}:no-such-tag"), &[cache.env()]).unwrap_err();
    assert!(said.contains("no-such-tag") && said.to_lowercase().contains("manifest unknown"), "{said}");
    let missing = format!("sha256:{}", "0".repeat(64));
    let said = pull(&format!("{base}@{missing}"), &[cache.env()]).unwrap_err();
    assert!(said.contains(&missing), "{said}");

    // One byte of the tokenizer's layer changed in the registry's storage: the pull names the
    // layer, the expected and the actual digest, and caches neither the layer nor the app.
    let tokenizer = std::fs::read(repo_root().join("models/all-minilm-l6-v2/tokenizer.json")).unwrap();
    let digest = sha256(&tokenizer);
    let stored = registry.blob_file(&digest);
    let mut tampered = std::fs::read(&stored).unwrap();
    tampered[100] ^= 0x20;
    std::fs::write(&stored, &tampered).unwrap();
    let said = pull(&format!("{base}:v1"), &[cache.env()]).unwrap_err();
    assert!(said.contains(&digest) && said.contains(&sha256(&tampered)), "{said}");
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(!cache.0.join("oci/blobs/sha256").join(hex).exists(), "a tampered layer was cached");
    assert_eq!(partial_files(&cache.0), Vec::<String>::new());
    assert!(std::fs::read_dir(cache.0.join("oci/apps")).map(|d| d.count() == 0).unwrap_or(true));

    // The registry down: a cache that never pulled the tag says so; one that did serves it.
    registry.stop();
    let said = pull(&format!("{base}:v1"), &[cache.env()]).unwrap_err();
    assert!(said.contains("cannot reach the registry") && said.contains("nothing cached"), "{said}");
    let (digest, said) = pull(&format!("{base}:v1"), &[good.env()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(said.contains("from the cache, the registry being unreachable"), "{said}");
    // By digest too; and a digest never pulled completely is not served.
    let (_, said) = pull(&format!("{base}@{digest}"), &[good.env()]).unwrap_or_else(|e| panic!("{e}"));
    assert!(said.contains("from the cache, the registry being unreachable"), "{said}");
    let said = pull(&format!("{base}@{digest}"), &[cache.env()]).unwrap_err();
    assert!(said.contains("nothing cached"), "{said}");
}

#[test]
fn a_registry_with_accounts_takes_credentials_from_flags_or_the_docker_config() {
    let registry = OciRegistry::start_with_users(&[("alice", "wonderland-0123")]);
    let said = push(&registry, "v1", &[], &[]).unwrap_err();
    assert!(
        said.contains("cannot authenticate")
            || said.contains("401")
            || said.to_lowercase().contains("unauthorized"),
        "{said}"
    );
    let said = push(&registry, "v1", &["--registry-username", "alice", "--registry-password", "wrong"], &[])
        .unwrap_err();
    assert!(said.contains("401") || said.to_lowercase().contains("unauthorized"), "{said}");
    let digest = push(
        &registry,
        "v1",
        &["--registry-username", "alice", "--registry-password", "wonderland-0123"],
        &[],
    )
    .unwrap_or_else(|e| panic!("push with credentials: {e}"));

    let cache = FreshCache::new("auth");
    let reference = format!("{}/{REPOSITORY}:v1", registry.address);
    let said = pull(&reference, &[cache.env()]).unwrap_err();
    assert!(said.contains("Not authorized"), "{said}");
    assert!(!cache.0.join("oci/apps").exists());
    // `docker login`'s file: { "auths": { "host:port": { "auth": base64("user:password") } } }.
    let docker = cache.0.join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:wonderland-0123");
    std::fs::write(
        docker.join("config.json"),
        json!({"auths": {registry.address.clone(): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let (pulled, _) = pull(&reference, &[cache.env(), ("DOCKER_CONFIG", docker.to_str().unwrap())])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled, digest);
}

#[test]
fn a_layer_of_an_artifact_is_a_model_source() {
    let registry = OciRegistry::start();
    push(&registry, "v1", &[], &[]).unwrap_or_else(|e| panic!("push failed: {e}"));
    let reference = format!("oci://{}/{REPOSITORY}:v1", registry.address);
    let model = std::fs::read(repo_root().join("models/all-minilm-l6-v2/model.onnx")).unwrap();
    let tokenizer = std::fs::read(repo_root().join("models/all-minilm-l6-v2/tokenizer.json")).unwrap();
    let hex_of = |bytes: &[u8]| sha256(bytes).trim_start_matches("sha256:").to_string();
    let cache = FreshCache::without_files("oci-source");
    let dir = cache.0.join("app");
    std::fs::create_dir_all(dir.join("runtime-config")).unwrap();
    std::fs::write(
        dir.join("spin.toml"),
        "spin_manifest_version = 2\n[application]\nname = \"oci-source\"\n",
    )
    .unwrap();
    let write_config = |model_sum: &str| {
        let config = format!(
            "[model.minilm]\npath = \"models/minilm.onnx\"\nurl = \"{reference}\"\nsha256 = \"{model_sum}\"\n\n\
             [[asset]]\npath = \"models/tokenizer.json\"\nurl = \"{reference}\"\nsha256 = \"{}\"\n",
            hex_of(&tokenizer)
        );
        std::fs::write(dir.join("runtime-config/local.toml"), config).unwrap();
    };
    let fetch = || {
        edgeinfer(
            &["fetch", "-f", dir.join("spin.toml").to_str().unwrap(), "--insecure"],
            &[cache.env(), ("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
        )
    };
    write_config(&hex_of(&model));
    let (ok, _, said) = fetch();
    assert!(ok, "{said}");
    assert_eq!(std::fs::read(dir.join("models/minilm.onnx")).unwrap(), model);
    assert_eq!(std::fs::read(dir.join("models/tokenizer.json")).unwrap(), tokenizer);

    let wrong = "1".repeat(64);
    write_config(&wrong);
    std::fs::remove_file(dir.join("models/minilm.onnx")).unwrap();
    let (ok, _, said) = fetch();
    assert!(
        !ok && said.contains(&format!("has no layer sha256:{wrong}")) && said.contains(&reference),
        "{said}"
    );
    assert!(!dir.join("models/minilm.onnx").exists());
}

#[test]
fn a_full_disk_or_an_unwritable_cache_fails_the_pull_and_leaves_nothing_half_written() {
    let registry = OciRegistry::start();
    push(&registry, "v1", &[], &[]).unwrap_or_else(|e| panic!("push failed: {e}"));
    let reference = format!("{}/{REPOSITORY}:v1", registry.address);

    // A disk that fills up: files may not grow past 2 MiB (`ulimit -f`; SIGXFSZ ignored, so a
    // write fails with EFBIG as it would with ENOSPC).
    let cache = FreshCache::new("full-disk");
    let output = std::process::Command::new("bash")
        .args(["-c", "ulimit -f 2048; trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(common::host_binary())
        .args(["registry", "pull", "--insecure", &reference])
        .env(cache.env().0, cache.env().1)
        .output()
        .expect("run edgeinfer under ulimit");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && said.contains("File too large"), "{said}");
    assert_eq!(partial_files(&cache.0), Vec::<String>::new(), "nothing half-written");
    assert!(std::fs::read_dir(cache.0.join("oci/apps")).map(|d| d.count() == 0).unwrap_or(true));
    for blob in std::fs::read_dir(cache.0.join("oci/blobs/sha256")).unwrap().flatten() {
        let bytes = std::fs::read(blob.path()).unwrap();
        assert_eq!(
            sha256(&bytes).trim_start_matches("sha256:"),
            blob.file_name().to_str().unwrap(),
            "only verified blobs"
        );
    }

    // A cache directory that cannot be created (a file stands in its way).
    let blocked = FreshCache::new("blocked");
    std::fs::write(blocked.0.join("oci"), "not a directory").unwrap();
    let said = pull(&reference, &[blocked.env()]).unwrap_err();
    assert!(said.contains("cannot create") && said.contains("oci"), "{said}");
}

#[test]
fn an_https_registry_is_trusted_through_a_ca_file_and_plain_http_needs_insecure() {
    let registry = OciRegistry::start_tls();
    let reference = format!("{}/{REPOSITORY}:v1", registry.address);
    let certificate = registry.certificate();
    let cache = FreshCache::new("tls");
    // With the CA file: push and pull over HTTPS.
    let (ok, pushed, said) = edgeinfer(
        &[
            "registry",
            "push",
            "--registry-ca-file",
            certificate.to_str().unwrap(),
            "-f",
            "tests/apps/faults/spin.toml",
            &reference,
        ],
        &[],
    );
    assert!(ok, "{said}");
    let digest = pushed.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).unwrap().to_string();
    let (ok, pulled, said) = edgeinfer(
        &["registry", "pull", "--registry-ca-file", certificate.to_str().unwrap(), &reference],
        &[cache.env()],
    );
    assert!(ok && pulled.starts_with(&digest), "{said}");
    // Without it, the same pull is refused: the certificate's issuer is unknown.
    let other = FreshCache::new("tls-untrusted");
    let (ok, _, said) = edgeinfer(&["registry", "pull", &reference], &[other.env()]);
    assert!(!ok && said.contains("certificate") && said.contains("UnknownIssuer"), "{said}");

    // An HTTP registry is reached only with --insecure.
    let plain = OciRegistry::start();
    let (ok, _, said) = edgeinfer(
        &[
            "registry",
            "push",
            "-f",
            "tests/apps/faults/spin.toml",
            &format!("{}/{REPOSITORY}:v1", plain.address),
        ],
        &[],
    );
    assert!(
        !ok && said.contains(&format!("https://{}", plain.address)),
        "HTTPS unless told otherwise: {said}"
    );
}
