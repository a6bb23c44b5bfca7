//! Signed apps: a host started with `--trusted-key` runs only components a trusted key signed,
//! before compiling anything: admin uploads (detached signatures, `cosign sign-blob`'s format),
//! pulls by reference and `up -f REF` (cosign's signature beside the artifact). Unsigned,
//! signed by another key and tampered versions are refused with a JSON error naming the
//! component and digest while the old version answers every request. Signatures are checked by
//! an independent verifier too (tests/clients/verify_signature.py, Python's `cryptography`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{
    ADMIN_TOKEN, FreshCache, Host, OciRegistry, built_wasm, client, edgeinfer, repo_root, wasm_variant,
};
use serde_json::{Value, json};

const FAULTS: &str = "tests/apps/faults/spin.toml";

/// Two ECDSA P-256 key pairs made with the openssl CLI: `trusted` and `other` (once per process).
fn keys() -> PathBuf {
    static KEYS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEYS.get_or_init(make_keys).clone()
}

fn make_keys() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeinfer-signing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["trusted", "other"] {
        let script = format!(
            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {name}.pem && openssl pkey -in {name}.pem -pubout -out {name}.pub"
        );
        let output = Command::new("bash").args(["-c", &script]).current_dir(&dir).output().unwrap();
        assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    }
    dir
}

fn path(dir: &std::path::Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// Requests to `/steady/ok` from 2 clients until stopped: (answered, failed).
struct Load {
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    answered: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(host: &Host) -> Load {
        let (stop, failed, answered) =
            (Arc::default(), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads = (0..2)
            .map(|_| {
                let (stop, failed, answered): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
                    (Arc::clone(&stop), failed.clone(), answered.clone());
                let url = host.url("/steady/ok");
                std::thread::spawn(move || {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&url).send() {
                            Ok(r) if r.status() == 200 => answered.fetch_add(1, Ordering::Relaxed),
                            _ => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load { stop, failed, answered, threads }
    }

    fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// The version answering `/steady/ok`.
fn serving(host: &Host) -> String {
    let response = client().get(host.url("/steady/ok")).send().unwrap();
    response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// `PUT /admin/v1/components/steady` with `bytes` and, when given, a signature header.
fn upload(host: &Host, bytes: &[u8], signature: Option<&str>) -> (u16, Value) {
    let url = format!("{}/admin/v1/components/steady?sha256={}", host.admin.as_ref().unwrap(), sha256(bytes));
    let mut request = client().put(url).bearer_auth(ADMIN_TOKEN).body(bytes.to_vec());
    if let Some(signature) = signature {
        request = request.header("x-edgeinfer-signature", signature);
    }
    let response = request.send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn only_uploads_a_trusted_key_signed_install_and_the_old_version_keeps_serving() {
    let keys = keys();
    let host = Host::start_with_env(
        &repo_root().join(FAULTS),
        &["--admin-listen", "127.0.0.1:0", "--trusted-key", &path(&keys, "trusted.pub")],
        &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    let before = serving(&host);
    let load = Load::start(&host);
    let first = wasm_variant(&built_wasm("faulty"), "signed-first");
    let file = keys.join("first.wasm");
    std::fs::write(&file, &first).unwrap();
    let digest = sha256(&first);
    // Refused: no signature, another key's, a malformed one; each names the component and digest.
    let other = Command::new(common::host_binary())
        .args(["sign", "--key", &path(&keys, "other.pem"), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let by_other = std::fs::read_to_string(keys.join("first.wasm.sig")).unwrap();
    for (signature, says) in
        [(None, "no signature"), (Some(by_other.trim()), "does not verify"), (Some("%%%"), "not base64")]
    {
        let (status, body) = upload(&host, &first, signature);
        assert_eq!((status, body["error_type"].as_str()), (400, Some("SignatureRejected")), "{body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("component steady") && error.contains(&digest) && error.contains(says),
            "{error}"
        );
        assert_eq!(serving(&host), before, "the old version serves on");
    }
    // `edgeinfer sign` writes what the host and an independent verifier accept.
    let signed = Command::new(common::host_binary())
        .args(["sign", "--key", &path(&keys, "trusted.pem"), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let signature_file = keys.join("first.wasm.sig");
    let verified = common::run_client_script(
        "verify_signature.py",
        &[
            "blob".as_ref(),
            keys.join("trusted.pub").as_os_str(),
            file.as_os_str(),
            signature_file.as_os_str(),
        ],
    );
    assert_eq!(verified["verified"], true);
    let signature = std::fs::read_to_string(&signature_file).unwrap();
    let (status, body) = upload(&host, &first, Some(signature.trim()));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serving(&host), digest[..12]);
    // `deploy push --sign-key` signs what it uploads.
    let second = wasm_variant(&built_wasm("faulty"), "signed-second");
    std::fs::write(&file, &second).unwrap();
    let admin = host.admin.clone().unwrap();
    let deploy = |key: &str| {
        edgeinfer(
            &[
                "deploy",
                "push",
                "-f",
                FAULTS,
                "--to",
                &admin,
                "--wasm",
                file.to_str().unwrap(),
                "--sign-key",
                key,
                "steady",
            ],
            &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
        )
    };
    let (ok, stdout, _) = deploy(&path(&keys, "other.pem"));
    assert!(!ok && stdout.contains("SignatureRejected"), "{stdout}");
    let (ok, stdout, _) = deploy(&path(&keys, "trusted.pem"));
    assert!(ok, "{stdout}");
    assert_eq!(serving(&host), sha256(&second)[..12]);
    let (answered, failed) = load.finish();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the refused and accepted deploys",
        answered + failed
    );
    assert!(answered > 20, "{answered}");
    let log = host.log().join("\n");
    assert!(log.contains("Running only what these keys signed: trusted.pub"), "{log}");
}

/// `edgeinfer registry push` of the faults app (with `extra` flags): the digest it printed.
fn push(registry: &OciRegistry, tag: &str, extra: &[&str]) -> String {
    let reference = format!("{}/signing/faults:{tag}", registry.address);
    let mut args = vec!["registry", "push", "-f", FAULTS, "--insecure", &reference];
    args.extend(extra);
    let (ok, stdout, stderr) = edgeinfer(&args, &[]);
    assert!(ok, "{stderr}");
    stdout.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).expect("the digest").to_string()
}

#[test]
fn artifacts_are_checked_by_the_cosign_signature_beside_them_before_anything_is_compiled() {
    let keys = keys();
    let mut registry = OciRegistry::start();
    let repository = format!("{}/signing/faults", registry.address);
    // Two versions: one unsigned (no runtime config layer), one signed by the trusted key.
    let unsigned = push(&registry, "unsigned", &[]);
    // (A runtime config of limits alone: another layer, so another digest.)
    let runtime = keys.join("limits.toml");
    std::fs::write(&runtime, "[component.steady]\nrequest_timeout_ms = 60000\n").unwrap();
    let signed = push(
        &registry,
        "signed",
        &["--runtime-config-file", runtime.to_str().unwrap(), "--sign-key", &path(&keys, "trusted.pem")],
    );
    assert_ne!(unsigned, signed);
    // An independent verifier accepts the signature beside the signed one.
    let base = format!("http://{}", registry.address);
    let verified = common::run_client_script(
        "verify_signature.py",
        &[
            "registry".as_ref(),
            keys.join("trusted.pub").as_os_str(),
            base.as_ref(),
            "signing/faults".as_ref(),
            signed.as_ref(),
        ],
    );
    assert_eq!(verified["verified"], true, "{verified}");
    assert_eq!(verified["tag"], format!("{}.sig", signed.replace(':', "-")));

    // A host that trusts the key (its own registry cache, so every layer is fetched).
    let cache = FreshCache::new("signing");
    let host = Host::start_with_env(
        &repo_root().join(FAULTS),
        &["--admin-listen", "127.0.0.1:0", "--trusted-key", &path(&keys, "trusted.pub"), "--insecure"],
        &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN), cache.env()],
    );
    let before = serving(&host);
    let load = Load::start(&host);
    let pull = |digest: &str| {
        let url = format!("{}/admin/v1/components/steady/pull", host.admin.as_ref().unwrap());
        let body = json!({"reference": format!("{repository}@{digest}")});
        let response = client().post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    let (status, body) = pull(&unsigned);
    assert_eq!((status, body["error_type"].as_str()), (400, Some("SignatureRejected")), "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("is not signed")
            && body["error"].as_str().unwrap().contains(&unsigned)
    );
    // Signed, but by a key the host does not trust.
    let (ok, _, said) = edgeinfer(
        &["sign", "--key", &path(&keys, "other.pem"), "--insecure", &format!("{repository}@{unsigned}")],
        &[],
    );
    assert!(ok, "{said}");
    let (status, body) = pull(&unsigned);
    assert_eq!((status, body["error_type"].as_str()), (400, Some("SignatureRejected")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("does not verify"), "{body}");
    assert_eq!(serving(&host), before);
    // Tampered: one byte of the component's layer changed in the registry's storage.
    let manifest = registry.manifest("signing/faults", &signed);
    let component_layer = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mediaType"] == "application/vnd.wasm.content.layer.v1+wasm")
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .unwrap();
    let stored = registry.blob_file(&component_layer);
    let original = std::fs::read(&stored).unwrap();
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x55;
    std::fs::write(&stored, &tampered).unwrap();
    let (status, body) = pull(&signed);
    assert!(status >= 400 && status != 500, "{status} {body}");
    assert!(body["error"].as_str().unwrap().contains(&component_layer), "{body}");
    assert_eq!(serving(&host), before);
    std::fs::write(&stored, &original).unwrap();
    // The signed, intact version installs.
    let (status, body) = pull(&signed);
    assert_eq!(status, 200, "{body}");
    let (answered, failed) = load.finish();
    assert_eq!(failed, 0, "{failed} of {} requests failed during the refused pulls", answered + failed);

    // `up -f REF` the same: refused before anything is fetched or compiled, or served. (A third
    // version, which nobody signed.)
    std::fs::write(&runtime, "[component.steady]\nrequest_timeout_ms = 50000\n").unwrap();
    let never_signed = push(&registry, "never-signed", &["--runtime-config-file", runtime.to_str().unwrap()]);
    // (Under `timeout`: were the check missing, this host would serve instead of exiting.)
    let output = Command::new("timeout")
        .arg("120")
        .arg(common::host_binary())
        .args(["up", "-f", &format!("{repository}@{never_signed}"), "--insecure", "--listen", "127.0.0.1:0"])
        .args(["--trusted-key", &path(&keys, "trusted.pub")])
        .env(cache.env().0, cache.env().1)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let (ok, said) = (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(!ok && said.contains("is not signed") && said.contains(&never_signed), "{said}");
    let signed_host = Host::start_with_env(
        std::path::Path::new(&format!("{repository}@{signed}")),
        &["--insecure", "--trusted-key", &path(&keys, "trusted.pub")],
        &[cache.env()],
    );
    assert_eq!(client().get(signed_host.url("/steady/ok")).send().unwrap().status(), 200);
    assert!(signed_host.log().iter().any(|l| l.contains("signature verified")), "the check is logged");
    drop(signed_host);

    // Offline, a digest starts only if this cache verified it with a key trusted now.
    registry.stop();
    let offline = |key: &str| {
        Command::new("timeout")
            .arg("120")
            .arg(common::host_binary())
            .args(["up", "-f", &format!("{repository}@{signed}"), "--insecure", "--listen", "127.0.0.1:0"])
            .args(["--trusted-key", &path(&keys, key)])
            .env(cache.env().0, cache.env().1)
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    let refused = offline("other.pub");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("never verified here with a key trusted now"),
        "{said}"
    );
    let offline_host = Host::start_with_env(
        std::path::Path::new(&format!("{repository}@{signed}")),
        &["--insecure", "--trusted-key", &path(&keys, "trusted.pub")],
        &[cache.env()],
    );
    assert_eq!(client().get(offline_host.url("/steady/ok")).send().unwrap().status(), 200);
}

#[test]
fn a_host_with_trusted_keys_restores_signed_uploads_only() {
    let keys = keys();
    let state = std::env::temp_dir().join(format!("edgeinfer-signed-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let trusted = path(&keys, "trusted.pub");
    let start = |trusted_key: Option<&str>| {
        let mut args = vec!["--admin-listen", "127.0.0.1:0", "--state-dir", state.to_str().unwrap()];
        if let Some(key) = trusted_key {
            args.extend(["--trusted-key", key]);
        }
        Host::start_with_env(&repo_root().join(FAULTS), &args, &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)])
    };
    let stop = |host: Host| host.stop(libc::SIGTERM, Duration::from_secs(60));
    // A signed upload is restored: its signature is kept beside it and checked again.
    let host = start(Some(&trusted));
    let signed = wasm_variant(&built_wasm("faulty"), "signed-restored");
    let file = keys.join("restored.wasm");
    std::fs::write(&file, &signed).unwrap();
    let output = Command::new(common::host_binary())
        .args(["sign", "--key", &path(&keys, "trusted.pem"), file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let signature = std::fs::read_to_string(keys.join("restored.wasm.sig")).unwrap();
    let (status, body) = upload(&host, &signed, Some(signature.trim()));
    assert_eq!(status, 200, "{body}");
    stop(host);
    let host = start(Some(&trusted));
    assert_eq!(serving(&host), sha256(&signed)[..12], "the signed upload serves after a restart");
    stop(host);
    // An upload a host without keys took is not run by a host with keys after a restart.
    let host = start(None);
    let unsigned = wasm_variant(&built_wasm("faulty"), "unsigned-restored");
    let (status, body) = upload(&host, &unsigned, None);
    assert_eq!(status, 200, "{body}");
    stop(host);
    let manifest = repo_root().join(FAULTS).display().to_string();
    let args = [
        "up",
        "-f",
        &manifest,
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        state.to_str().unwrap(),
        "--trusted-key",
        &trusted,
    ];
    let (started, _, stderr) = edgeinfer(&args, &[]);
    assert!(!started);
    let kept = state.join("components").join(format!("{}.wasm", sha256(&unsigned)));
    assert!(stderr.contains(&kept.display().to_string()) && stderr.contains("no signature"), "{stderr}");
    let _ = std::fs::remove_dir_all(&state);
}
