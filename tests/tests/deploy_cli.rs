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
