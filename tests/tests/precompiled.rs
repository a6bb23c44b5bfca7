//! Precompiled components: `edgeinfer build --precompile x86_64,aarch64` compiles each routed
//! component for both targets, `registry push` carries them as annotated layers beside Spin's,
//! and a host that verifies the artifact's signature loads the one made for it instead of
//! compiling, at start (`up -f REF`) and on a deploy by reference, with no request failing. A
//! host without trusted keys never fetches them; code that does not fit the host is compiled
//! again, never run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{ADMIN_TOKEN, FreshCache, Host, OciRegistry, built_wasm, client, edgeinfer, wasm_variant};
use serde_json::{Value, json};

const MEDIA_TYPE: &str = "application/vnd.edgeinfer.precompiled-component.v1";
const COMPILED: &str = "component compiled and cached";
const TAKEN: &str = "precompiled component taken from the signed artifact";

/// An app of one component (`steady`, the faults app's handler) whose bytes no compile cache has
/// seen, in its own folder, with a P-256 key pair to sign it.
struct App {
    dir: PathBuf,
}

impl App {
    fn new(tag: &str) -> App {
        let dir = std::env::temp_dir().join(format!("edgeinfer-precompiled-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("spin.toml"),
            "spin_manifest_version = 2\n[application]\nname = \"precompiled\"\n[[trigger.http]]\nroute = \"/steady/...\"\ncomponent = \"steady\"\n[component.steady]\nsource = \"steady.wasm\"\n",
        )
        .unwrap();
        let script = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem && openssl pkey -in key.pem -pubout -out key.pub";
        let output = Command::new("bash").args(["-c", script]).current_dir(&dir).output().unwrap();
        assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
        App { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// Writes a never-seen version of the component and precompiles it for both targets.
    fn new_version(&self, tag: &str) {
        let unique = format!("{tag}-{}-{:?}", std::process::id(), std::time::SystemTime::now());
        std::fs::write(self.dir.join("steady.wasm"), wasm_variant(&built_wasm("faulty"), &unique)).unwrap();
        let (ok, _, said) =
            edgeinfer(&["build", "-f", &self.path("spin.toml"), "--precompile", "x86_64,aarch64"], &[]);
        assert!(ok, "{said}");
        assert!(said.contains("precompiled steady for x86_64-unknown-linux-gnu"), "{said}");
        assert!(said.contains("precompiled steady for aarch64-unknown-linux-gnu"), "{said}");
    }

    /// Pushes the app to `reference` (signed unless `signed` is false); its digest.
    fn push(&self, reference: &str, signed: bool) -> String {
        let manifest = self.path("spin.toml");
        let mut args = vec!["registry", "push", "-f", &manifest, "--insecure", reference];
        let key = self.path("key.pem");
        if signed {
            args.extend(["--sign-key", &key]);
        }
        let (ok, stdout, said) = edgeinfer(&args, &[]);
        assert!(ok, "{said}");
        stdout.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).expect("the digest").to_string()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cache of its own that shares nothing compiled: every component is compiled or imported.
fn cache(tag: &str) -> FreshCache {
    FreshCache::sharing(tag, &["blobs", "wheels", "tools"])
}

fn count(host: &Host, needle: &str) -> usize {
    host.log().iter().filter(|line| line.contains(needle)).count()
}

/// The precompiled layers of a pushed manifest: (target annotation, digest).
fn precompiled_layers(manifest: &Value) -> Vec<(String, String)> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["mediaType"] == MEDIA_TYPE)
        .map(|l| {
            let annotations = &l["annotations"];
            assert_eq!(annotations["dev.edgeinfer.component"], "steady", "{l}");
            assert_eq!(annotations["dev.edgeinfer.wasmtime.version"], "48.0.8", "{l}");
            assert_eq!(annotations["dev.edgeinfer.wasmtime.engine"].as_str().unwrap().len(), 64, "{l}");
            assert_eq!(
                annotations["dev.edgeinfer.component.composed-sha256"].as_str().unwrap().len(),
                64,
                "{l}"
            );
            let target = annotations["dev.edgeinfer.wasmtime.target"].as_str().unwrap().to_string();
            (target, l["digest"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn signed_artifacts_carry_precompiled_components_that_hosts_load_instead_of_compiling() {
    let app = App::new("signed");
    let registry = OciRegistry::start();
    let repository = format!("{}/precompiled/steady", registry.address);
    app.new_version("first");
    let first = app.push(&format!("{repository}:first"), true);
    let manifest = registry.manifest("precompiled/steady", &first);
    let mut layers = precompiled_layers(&manifest);
    layers.sort();
    let targets: Vec<&str> = layers.iter().map(|(target, _)| target.as_str()).collect();
    assert_eq!(targets, ["aarch64-unknown-linux-gnu", "x86_64-unknown-linux-gnu"], "{manifest}");
    // Spin's layers are as before: the lock names the component's Wasm layer.
    assert!(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["mediaType"] == "application/vnd.wasm.content.layer.v1+wasm")
    );

    // A host that verifies the signature starts without compiling.
    let trusted_cache = cache("precompiled-trusted");
    let reference = format!("{repository}@{first}");
    let trusted = ["--insecure", "--trusted-key", &app.path("key.pub")];
    let admin = ["--admin-listen", "127.0.0.1:0"];
    let host = Host::start_with_env(
        Path::new(&reference),
        &[&trusted[..], &admin[..]].concat(),
        &[trusted_cache.env(), ("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
    );
    assert_eq!(client().get(host.url("/steady/ok")).send().unwrap().status(), 200);
    assert_eq!((count(&host, TAKEN), count(&host, COMPILED)), (1, 0), "{:#?}", host.log());
    assert_eq!(count(&host, "compiled component loaded from cache"), 1);
    // Only the layer for this host's CPU was fetched.
    let blobs = trusted_cache.0.join("oci/blobs/sha256");
    let fetched = |digest: &str| blobs.join(digest.trim_start_matches("sha256:")).is_file();
    let ours = if cfg!(target_arch = "aarch64") { "aarch64" } else { "x86_64" };
    for (target, digest) in &layers {
        assert_eq!(fetched(digest), target.starts_with(ours), "{target}");
    }

    // A new version deployed by reference, under load: served from its precompiled code.
    app.new_version("second");
    let second = app.push(&format!("{repository}:second"), true);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, failed, url) = (stop.clone(), failed.clone(), host.url("/steady/ok"));
            std::thread::spawn(move || {
                let client = client();
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send() {
                        Ok(r) if r.status() == 200 => answered += 1,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                answered
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let url = format!("{}/admin/v1/components/steady/pull", host.admin.as_ref().unwrap());
    let body = json!({"reference": format!("{repository}@{second}")});
    let response = client().post(url).bearer_auth(ADMIN_TOKEN).json(&body).send().unwrap();
    let (status, answer) = (response.status().as_u16(), response.json::<Value>().unwrap());
    assert_eq!(status, 200, "{answer}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answered: usize = load.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed during the deploy ({answered} answered)");
    eprintln!("deploy by reference of a precompiled version: {answer}");
    assert_eq!((count(&host, TAKEN), count(&host, COMPILED)), (2, 0), "{:#?}", host.log());
    let version = client().get(host.url("/steady/ok")).send().unwrap().headers()["x-edgeinfer-version"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(answer["version"].as_str().unwrap().starts_with(&version), "{version} {answer}");
    drop(host);

    // Without trusted keys no native code is fetched: the host compiles.
    let untrusted_cache = cache("precompiled-untrusted");
    let host = Host::start_with_env(Path::new(&reference), &["--insecure"], &[untrusted_cache.env()]);
    assert_eq!(client().get(host.url("/steady/ok")).send().unwrap().status(), 200);
    assert_eq!((count(&host, TAKEN), count(&host, COMPILED)), (0, 1), "{:#?}", host.log());
    let blobs = untrusted_cache.0.join("oci/blobs/sha256");
    for (target, digest) in &layers {
        assert!(!blobs.join(digest.trim_start_matches("sha256:")).exists(), "{target} fetched");
    }
    drop(host);

    // Signed code that is not what it says (the aarch64 build labelled as this host's): wasmtime
    // refuses to load it and the host compiles the component instead.
    app.new_version("mislabelled");
    let folder = app.dir.join("steady.wasm.precompiled");
    let (other, native) = if ours == "x86_64" {
        ("steady.aarch64-unknown-linux-gnu", "steady.x86_64-unknown-linux-gnu")
    } else {
        ("steady.x86_64-unknown-linux-gnu", "steady.aarch64-unknown-linux-gnu")
    };
    std::fs::copy(folder.join(format!("{other}.cwasm")), folder.join(format!("{native}.cwasm"))).unwrap();
    std::fs::remove_file(folder.join(format!("{other}.toml"))).unwrap();
    let mislabelled = app.push(&format!("{repository}:mislabelled"), true);
    let host = Host::start_with_env(
        Path::new(&format!("{repository}@{mislabelled}")),
        &trusted,
        &[cache("precompiled-mislabelled").env()],
    );
    assert_eq!(client().get(host.url("/steady/ok")).send().unwrap().status(), 200);
    assert_eq!((count(&host, TAKEN), count(&host, COMPILED)), (1, 1), "{:#?}", host.log());
    assert_eq!(count(&host, "ignoring unusable cache entry"), 1, "{:#?}", host.log());
}

#[test]
fn a_push_leaves_out_precompiled_code_of_another_build() {
    let app = App::new("stale");
    let registry = OciRegistry::start();
    app.new_version("built");
    // The component changes after it was precompiled.
    std::fs::write(app.dir.join("steady.wasm"), wasm_variant(&built_wasm("faulty"), "rebuilt")).unwrap();
    let reference = format!("{}/precompiled/stale:v1", registry.address);
    let manifest = app.path("spin.toml");
    let (ok, stdout, said) = edgeinfer(&["registry", "push", "-f", &manifest, "--insecure", &reference], &[]);
    assert!(ok, "{said}");
    assert_eq!(said.matches("leaving out").count(), 2, "{said}");
    let digest = stdout.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).unwrap();
    assert!(precompiled_layers(&registry.manifest("precompiled/stale", digest)).is_empty());
    // A target nobody builds for is refused by name.
    let (ok, _, said) = edgeinfer(&["build", "-f", &manifest, "--precompile", "riscv64"], &[]);
    assert!(!ok && said.contains("--precompile riscv64: the targets are x86_64 and aarch64"), "{said}");
}
