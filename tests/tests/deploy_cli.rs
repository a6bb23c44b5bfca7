//! `edgeinfer deploy` against a fleet of two real hosts: a canary pushed to both, promoted on
//! both, rolled back on both; unchanged pushes are told apart; an unreachable host or a refused
//! call fails the command and is named in its summary while the other hosts go on.

mod common;

use std::process::{Command, Output};

use common::{
    ADMIN_TOKEN, Host, admin_app, admin_host, built_wasm, client, host_binary, repo_root, wasm_variant,
};
use serde_json::Value;
use sha2::Digest;

const FAULTS: &str = "tests/apps/faults/spin.toml";

fn faults_host() -> Host {
    admin_host(FAULTS, Some("tests/apps/faults/runtime.toml"))
}

/// Runs `edgeinfer deploy ARGS` from the repo root with the admin token in the environment.
fn deploy(args: &[&str]) -> Output {
    let output = Command::new(host_binary())
        .arg("deploy")
        .args(args)
        .env("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)
        .current_dir(repo_root())
        .output()
        .expect("run edgeinfer deploy");
    eprintln!("--- edgeinfer deploy {}", args.join(" "));
    eprintln!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The version that answers `/steady/ok` on `host`.
fn serving(host: &Host) -> String {
    let response = client().get(host.url("/steady/ok")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string()
}

/// The `steady` component as the host's admin API describes it.
fn described(host: &Host) -> Value {
    admin_app(host, "steady").1
}

/// The summary line for `host` (its admin URL) in the deploy's output.
fn summary_line<'a>(out: &'a str, host: &Host) -> &'a str {
    let admin = host.admin.as_deref().unwrap();
    out.lines()
        .find(|l| l.starts_with(admin))
        .unwrap_or_else(|| panic!("no summary line for {admin} in:\n{out}"))
}

#[test]
fn a_canary_goes_to_the_whole_fleet_then_is_promoted_and_rolled_back() {
    let hosts = [faults_host(), faults_host()];
    let original = serving(&hosts[0]);
    assert_eq!(serving(&hosts[1]), original);
    let fleet: Vec<&str> = hosts.iter().flat_map(|h| ["--to", h.admin.as_deref().unwrap()]).collect();

    // The manifest's own build is what both hosts run already.
    let mut args = vec!["push", "-f", FAULTS, "steady", "faulty"];
    args.extend(&fleet);
    let output = deploy(&args);
    assert!(output.status.success());
    let out = stdout(&output);
    assert_eq!(out.lines().filter(|l| l.contains(&format!("ok: unchanged {original}"))).count(), 4, "{out}");

    // A new build as a 50% canary on both hosts.
    let next = wasm_variant(&built_wasm("faulty"), "fleet-canary");
    let next_version = hex::encode(sha2::Sha256::digest(&next))[..12].to_string();
    let file = std::env::temp_dir().join(format!("edgeinfer-deploy-test-{}.wasm", std::process::id()));
    std::fs::write(&file, &next).unwrap();
    let mut args = vec!["push", "-f", FAULTS, "steady", "--wasm", file.to_str().unwrap(), "--canary", "50"];
    args.extend(&fleet);
    let output = deploy(&args);
    assert!(output.status.success());
    let out = stdout(&output);
    for host in &hosts {
        assert!(summary_line(&out, host).contains(&format!("ok: canary {next_version} at 50")), "{out}");
        let steady = described(host);
        assert_eq!(steady["canary"]["version"].as_str().unwrap()[..12], next_version, "{steady}");
        assert_eq!(steady["canary"]["percent"], 50.0);
        assert_eq!(steady["version"].as_str().unwrap()[..12], original, "stable is unchanged");
    }

    let mut args = vec!["promote", "-f", FAULTS, "steady"];
    args.extend(&fleet);
    assert!(deploy(&args).status.success());
    for host in &hosts {
        for _ in 0..20 {
            assert_eq!(serving(host), next_version, "after promote every request gets the new version");
        }
        assert!(described(host)["canary"].is_null());
    }

    let mut args = vec!["rollback", "-f", FAULTS, "steady"];
    args.extend(&fleet);
    let output = deploy(&args);
    assert!(output.status.success());
    for host in &hosts {
        assert!(summary_line(&stdout(&output), host).contains(&format!("ok: serving {original}")));
        assert_eq!(serving(host), original);
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_host_that_fails_is_named_and_the_others_go_on() {
    let host = faults_host();
    let admin = host.admin.as_deref().unwrap();
    // Port 1 on loopback: nothing listens there.
    let unreachable = "http://127.0.0.1:1";
    let next = wasm_variant(&built_wasm("faulty"), "one-host-down");
    let file = std::env::temp_dir().join(format!("edgeinfer-deploy-down-{}.wasm", std::process::id()));
    std::fs::write(&file, &next).unwrap();
    let output = deploy(&[
        "push",
        "-f",
        FAULTS,
        "steady",
        "--wasm",
        file.to_str().unwrap(),
        "--to",
        admin,
        "--to",
        unreachable,
    ]);
    assert!(!output.status.success(), "one failed host fails the deploy");
    let out = stdout(&output);
    let down = out.lines().find(|l| l.starts_with(unreachable)).unwrap_or_else(|| panic!("{out}"));
    assert!(down.contains("FAILED: cannot reach the host"), "{down}");
    let version = hex::encode(sha2::Sha256::digest(&next))[..12].to_string();
    assert!(summary_line(&out, &host).contains(&format!("ok: serving {version}")), "{out}");
    assert_eq!(serving(&host), version, "the reachable host was deployed to");
    assert!(String::from_utf8_lossy(&output.stderr).contains("1 of 2"), "the error counts the failures");

    // Refusals carry the host's error type: nothing to promote, a wrong token, an unknown component.
    let output = deploy(&["promote", "-f", FAULTS, "steady", "--to", admin]);
    assert!(!output.status.success());
    assert!(summary_line(&stdout(&output), &host).contains("409 Conflict NoCanary"), "{}", stdout(&output));
    let output = Command::new(host_binary())
        .args(["deploy", "rollback", "-f", FAULTS, "steady", "--to", admin])
        .env("EDGEINFER_ADMIN_TOKEN", "not-the-token-at-all-000")
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(summary_line(&stdout(&output), &host).contains("403 Forbidden"), "{}", stdout(&output));
    assert_eq!(serving(&host), version, "a refused rollback changed nothing");
    let output = deploy(&["push", "-f", FAULTS, "nonesuch", "--to", admin]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no component \"nonesuch\""));
    let _ = std::fs::remove_file(file);
}

/// A faults host with the admin API that pulls from plain-HTTP registries (`--insecure`).
fn faults_host_pulling() -> Host {
    let root = repo_root();
    let runtime = root.join("tests/apps/faults/runtime.toml");
    Host::start_with_env(
        &root.join(FAULTS),
        &["--admin-listen", "127.0.0.1:0", "--runtime-config-file", runtime.to_str().unwrap(), "--insecure"],
        &[("EDGEINFER_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
}

/// The faults app with `steady` built from other bytes, as a manifest beside the original (its
/// relative paths hold), removed on drop.
struct FaultsVariant {
    manifest: std::path::PathBuf,
    wasm: std::path::PathBuf,
}

impl FaultsVariant {
    fn new(bytes: &[u8], tag: &str) -> FaultsVariant {
        let dir = repo_root().join("tests/apps/faults");
        let wasm = std::env::temp_dir().join(format!("edgeinfer-{tag}-{}.wasm", std::process::id()));
        std::fs::write(&wasm, bytes).unwrap();
        let text = std::fs::read_to_string(dir.join("spin.toml")).unwrap();
        let steady = "[component.steady]\nsource = \"../../../target/wasm32-wasip2/release/faulty.wasm\"";
        assert!(text.contains(steady));
        let text =
            text.replace(steady, &format!("[component.steady]\nsource = {:?}", wasm.display().to_string()));
        let manifest = dir.join(format!(".test-{tag}-{}.toml", std::process::id()));
        std::fs::write(&manifest, text).unwrap();
        FaultsVariant { manifest, wasm }
    }
}

impl Drop for FaultsVariant {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.manifest);
        let _ = std::fs::remove_file(&self.wasm);
    }
}

#[test]
fn a_fleet_deploys_by_registry_reference_with_a_canary_and_a_rollback() {
    let registry = common::OciRegistry::start();
    let hosts = [faults_host_pulling(), faults_host_pulling()];
    let original = serving(&hosts[0]);
    let fleet: Vec<&str> = hosts.iter().flat_map(|h| ["--to", h.admin.as_deref().unwrap()]).collect();

    let next = wasm_variant(&built_wasm("faulty"), "by-reference");
    let next_version = hex::encode(sha2::Sha256::digest(&next))[..12].to_string();
    let variant = FaultsVariant::new(&next, "by-reference");
    let reference = format!("{}/faults:v2", registry.address);
    let (ok, pushed, said) = common::edgeinfer(
        &["registry", "push", "--insecure", "-f", variant.manifest.to_str().unwrap(), &reference],
        &[],
    );
    assert!(ok, "{said}");
    let digest = pushed.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).unwrap().to_string();

    // Each host is sent the digest (resolved once from the tag) and pulls `steady` itself.
    let mut args = vec!["push", "-f", &reference, "--insecure", "steady", "--canary", "50"];
    args.extend(&fleet);
    let output = deploy(&args);
    assert!(output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains(&format!("each host pulls {}/faults@{digest}", registry.address)), "{said}");
    let out = stdout(&output);
    for host in &hosts {
        assert!(summary_line(&out, host).contains(&format!("ok: canary {next_version} at 50%")), "{out}");
        let steady = described(host);
        assert_eq!(steady["canary"]["version"].as_str().unwrap()[..12], next_version, "{steady}");
        assert_eq!(steady["version"].as_str().unwrap()[..12], original, "stable is unchanged");
    }
    // What each host pulled itself: the component's layer, not the whole artifact.
    assert!(out.contains(&format!("(pulled {:.1} MB)", next.len() as f64 / 1e6)), "{out}");

    let mut args = vec!["promote", "-f", &reference, "--insecure", "steady"];
    args.extend(&fleet);
    assert!(deploy(&args).status.success());
    for host in &hosts {
        assert_eq!(serving(host), next_version);
    }
    let mut args = vec!["rollback", "-f", &reference, "--insecure", "steady"];
    args.extend(&fleet);
    assert!(deploy(&args).status.success());
    for host in &hosts {
        assert_eq!(serving(host), original);
    }

    // The admin call itself: a tag (not one exact version), a digest the registry lacks, and a
    // component the artifact lacks are refused with the reason, the old version serving.
    let admin = hosts[0].admin.as_deref().unwrap();
    let call = |body: Value| {
        let response = client()
            .post(format!("{admin}/admin/v1/components/steady/pull"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    let missing = format!("{}/faults@sha256:{}", registry.address, "0".repeat(64));
    // The caller's mistakes are 400 Validation, the registry's answers 502 Registry.
    for (body, status_and_type, says) in [
        (serde_json::json!({"reference": reference}), (400, "Validation"), "deploy by digest"),
        (serde_json::json!({"reference": missing}), (502, "Registry"), "cannot pull"),
        (
            serde_json::json!({"reference": format!("{}/faults@{digest}", registry.address), "component": "nope"}),
            (400, "Validation"),
            "has no component \"nope\"",
        ),
    ] {
        let (status, answer) = call(body.clone());
        assert_eq!((status, answer["error_type"].as_str().unwrap()), status_and_type, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(&format!("still serving {original}")), "{answer}");
    }
    let (status, answer) = call(serde_json::json!({"ref": "x"}));
    assert_eq!((status, answer["error_type"].as_str()), (400, Some("Validation")), "{answer}");
    assert_eq!(serving(&hosts[0]), original);
}

#[test]
fn a_rollout_by_registry_reference_sends_each_host_the_digest_not_the_bytes() {
    let registry = common::OciRegistry::start();
    let hosts = [faults_host_pulling(), faults_host_pulling(), faults_host_pulling()];
    let next = wasm_variant(&built_wasm("faulty"), "rollout-by-reference");
    let next_version = hex::encode(sha2::Sha256::digest(&next))[..12].to_string();
    let variant = FaultsVariant::new(&next, "rollout-by-reference");
    let tag = format!("{}/faults:rollout", registry.address);
    let (ok, pushed, said) = common::edgeinfer(
        &["registry", "push", "--insecure", "-f", variant.manifest.to_str().unwrap(), &tag],
        &[],
    );
    assert!(ok, "{said}");
    let digest = pushed.lines().find_map(|l| l.strip_prefix("Pushed with digest ")).unwrap().to_string();
    let reference = format!("{}/faults@{digest}", registry.address);
    // A fleet file of the three hosts: one at 50%, then all.
    let dir = std::env::temp_dir().join(format!("edgeinfer-rollout-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), ADMIN_TOKEN).unwrap();
    let mut fleet = String::from("token_file = \"token\"\n");
    for host in &hosts {
        fleet +=
            &format!("[[host]]\nadmin = \"{}\"\nmetrics = \"{}\"\n", host.admin.as_ref().unwrap(), host.base);
    }
    fleet += "[[policy.step]]\nhosts = 1\nweight = 50\nbake = \"1s\"\n[[policy.step]]\nhosts = \"100%\"\nweight = 100\n";
    fleet += "[policy.judge]\nmin_requests = 10\nmax_bake_factor = 20\n";
    std::fs::write(dir.join("fleet.toml"), fleet).unwrap();
    // Load, so that step 1 has answers to judge.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let urls: Vec<String> = hosts.iter().map(|h| h.url("/steady/ok")).collect();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (client, mut failed) = (client(), 0);
            for url in urls.iter().cycle() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                failed += usize::from(client.get(url).send().map_or(true, |r| r.status() != 200));
            }
            failed
        })
    };
    let output = Command::new(host_binary())
        .args([
            "deploy",
            "rollout",
            "--fleet",
            dir.join("fleet.toml").to_str().unwrap(),
            "steady",
            "--reference",
            &reference,
        ])
        .arg("--json")
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load.join().unwrap(), 0, "no request failed");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let state: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(state["phase"], "succeeded", "{state}");
    assert_eq!(state["source"], format!("pull {reference} (steady)"));
    for host in &hosts {
        assert_eq!(serving(host), next_version);
    }
    // What reaches each host from the controller: the reference, not the component.
    let body = serde_json::json!({"reference": reference, "component": "steady"}).to_string();
    eprintln!(
        "FIGURE per host: by reference the controller sends {} bytes (the host pulls the {}-byte layer from the registry itself); by upload it sends {} bytes",
        body.len(),
        next.len(),
        next.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
