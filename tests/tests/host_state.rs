//! Durable host state (`up --state-dir`): what the admin API deployed (stable versions, a canary
//! with its weight and mode, the rollback target, a model reload) survives a restart and a
//! `kill -9`; `kill -9` during 200 deploys never leaves a state that fails to load or mixes two
//! deploys; a damaged state stops the start with an error naming the file; without a state
//! directory a restart serves spin.toml's versions.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    ADMIN_TOKEN as TOKEN, Host, admin_app, built_wasm, client, edgeinfer, repo_root, wasm_variant as variant,
};
use serde_json::{Value, json};
use sha2::Digest;

const MANIFEST: &str = "tests/apps/faults/spin.toml";
const RUNTIME: &str = "tests/apps/faults/runtime.toml";

/// A fresh state directory for one test, removed at the end.
struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let dir = std::env::temp_dir().join(format!("edgeinfer-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The faults app with its admin API, keeping its state in `state` when given.
fn start(state: Option<&StateDir>) -> Host {
    let root = repo_root();
    let runtime = root.join(RUNTIME).display().to_string();
    let mut args = vec!["--admin-listen", "127.0.0.1:0", "--runtime-config-file", runtime.as_str()];
    if let Some(state) = state {
        args.extend(["--state-dir", state.path()]);
    }
    Host::start_with_env(&root.join(MANIFEST), &args, &[("EDGEINFER_ADMIN_TOKEN", TOKEN)])
}

/// Stops a host as systemd does (SIGTERM), or kills it (SIGKILL), and waits for it to exit.
fn stop(host: Host, signal: libc::c_int) {
    host.stop(signal, Duration::from_secs(60));
}

fn admin(host: &Host, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let url = format!("{}{path}", host.admin.as_ref().unwrap());
    let response = client().request(method, url).bearer_auth(TOKEN).body(body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// PUTs `bytes` as a version of `id` (with the extra query `options`); the answer.
fn deploy(host: &Host, id: &str, bytes: Vec<u8>, options: &str) -> Value {
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let path = format!("/admin/v1/components/{id}?sha256={sha}{options}");
    let (status, body) = admin(host, reqwest::Method::PUT, &path, bytes);
    assert_eq!(status, 200, "{body}");
    body
}

/// What `GET /admin/v1/app` says of component `id`: (version, previous versions, canary).
fn deployed(host: &Host, id: &str) -> (String, Vec<String>, Value) {
    let (_, component) = admin_app(host, id);
    let previous = component["previous"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string());
    (component["version"].as_str().unwrap().to_string(), previous.collect(), component["canary"].clone())
}

/// The version that answers a request to `path` (with `x-user: user`).
fn answering(host: &Host, path: &str, user: &str) -> String {
    let response = client().get(host.url(path)).header("x-user", user).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string()
}

/// The model as `GET /admin/v1/app` lists it.
fn model(host: &Host, name: &str) -> Value {
    let (app, _) = admin_app(host, "steady");
    app["models"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap_or_default()
}

#[test]
fn deployed_versions_canaries_and_rollback_targets_survive_a_restart_and_kill_9() {
    let state = StateDir::new("restart");
    let host = start(Some(&state));
    let (manifest_steady, _, _) = deployed(&host, "steady");
    let (manifest_faulty, _, _) = deployed(&host, "faulty");
    let faulty = built_wasm("faulty");
    let stable = deploy(&host, "steady", variant(&faulty, "state-stable"), "")["version"]
        .as_str()
        .unwrap()
        .to_string();
    let canary = deploy(&host, "steady", variant(&faulty, "state-canary"), "&canary=25&sticky=header:x-user")
        ["canary"]
        .as_str()
        .unwrap()
        .to_string();
    let other =
        deploy(&host, "faulty", variant(&faulty, "state-other"), "")["version"].as_str().unwrap().to_string();
    // A refused upload leaves nothing in the state directory.
    let garbage = b"not a component".to_vec();
    let sha = hex::encode(sha2::Sha256::digest(&garbage));
    let (status, body) =
        admin(&host, reqwest::Method::PUT, &format!("/admin/v1/components/steady?sha256={sha}"), garbage);
    assert_eq!((status, body["error_type"].as_str()), (400, Some("InvalidComponent")), "{body}");
    assert!(!state.0.join("components").join(format!("{sha}.wasm")).exists(), "a refused upload is not kept");
    // A model reload to another file (the same bytes).
    let copy = state.0.with_extension("model.onnx");
    std::fs::copy(repo_root().join("models/all-minilm-l6-v2/model.onnx"), &copy).unwrap();
    let (status, reloaded) = admin(
        &host,
        reqwest::Method::POST,
        "/admin/v1/models/minilm/reload",
        json!({"path": copy.display().to_string()}).to_string().into_bytes(),
    );
    assert_eq!(status, 200, "{reloaded}");
    // Which users the sticky canary takes, before the restart.
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let versions_of =
        |host: &Host| users.iter().map(|u| answering(host, "/steady/ok", u)).collect::<Vec<_>>();
    let before = versions_of(&host);
    // Answers name a version by its first 12 digits.
    let short = |version: &str| version[..12].to_string();
    assert!(before.contains(&short(&stable)) && before.contains(&short(&canary)), "both serve: {before:?}");

    let expect_deployed = |host: &Host| {
        let (version, previous, trial) = deployed(host, "steady");
        assert_eq!(version, stable);
        assert_eq!(previous, vec![manifest_steady.clone()], "the rollback target");
        assert_eq!(trial["version"], canary.as_str(), "{trial}");
        assert_eq!(trial["percent"], 25.0);
        assert_eq!(trial["mode"], "split");
        assert_eq!(trial["sticky"], "header:x-user");
        assert_eq!(deployed(host, "faulty").0, other);
        assert_eq!(versions_of(host), before, "every user gets the version they got before");
        let model = model(host, "minilm");
        assert_eq!(model["path"], copy.display().to_string(), "{model}");
        assert_eq!(model["ready"], true, "{model}");
    };
    expect_deployed(&host);

    // A restart as systemd's: the same versions, canary and rollback target.
    stop(host, libc::SIGTERM);
    let host = start(Some(&state));
    expect_deployed(&host);
    assert!(
        host.log().iter().any(|l| l.contains("restored steady: stable")),
        "the log says what it restored"
    );

    // A crash: the same again.
    stop(host, libc::SIGKILL);
    let host = start(Some(&state));
    expect_deployed(&host);

    // Rolled back after the restarts: spin.toml's version serves, the canary ended; that too
    // survives a kill.
    let (status, body) = admin(&host, reqwest::Method::POST, "/admin/v1/components/steady/rollback", vec![]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], manifest_steady.as_str());
    stop(host, libc::SIGKILL);
    let host = start(Some(&state));
    let (version, previous, trial) = deployed(&host, "steady");
    assert_eq!((version.as_str(), previous.len(), trial), (manifest_steady.as_str(), 0, Value::Null));
    assert_eq!(deployed(&host, "faulty").0, other);
    stop(host, libc::SIGKILL);

    // Without a state directory a host serves spin.toml's versions.
    let host = start(None);
    assert_eq!(deployed(&host, "faulty").0, manifest_faulty);
    drop(host);
    let _ = std::fs::remove_file(copy);
}

#[test]
fn kill_9_during_200_deploys_never_leaves_a_broken_or_mixed_state() {
    let state = StateDir::new("kill9");
    let faulty = built_wasm("faulty");
    let variants = [variant(&faulty, "kill9-a"), variant(&faulty, "kill9-b")];
    let mut versions: Vec<String> = Vec::new();
    let mut deploys = 0;
    // The host is killed after a different number of acknowledged deploys each round, and a
    // different time into the next one.
    for (round, (acknowledged, delay_ms)) in
        [(38, 0), (41, 3), (37, 11), (43, 23), (41, 1)].into_iter().enumerate()
    {
        let host = Arc::new(start(Some(&state)));
        let (serving, previous, _) = deployed(&host, "steady");
        if round > 0 {
            // What the last round left: the last acknowledged deploy or the one in flight when
            // it was killed, with the version before it as the rollback target.
            let other = versions.iter().find(|v| **v != serving).cloned().unwrap_or_default();
            assert!(
                versions.contains(&serving),
                "round {round}: serves {serving}, deployed only {versions:?}"
            );
            assert_eq!(previous.last(), Some(&other), "round {round}: the rollback target");
        }
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let deployer = {
            let (host, log, variants) = (host.clone(), log.clone(), variants.clone());
            let first = usize::from(serving == versions.first().cloned().unwrap_or_default());
            std::thread::spawn(move || {
                for i in first.. {
                    let bytes = variants[i % 2].clone();
                    let sha = hex::encode(sha2::Sha256::digest(&bytes));
                    let url =
                        format!("{}/admin/v1/components/steady?sha256={sha}", host.admin.as_ref().unwrap());
                    match client().put(url).bearer_auth(TOKEN).body(bytes).send() {
                        Ok(response) if response.status() == 200 => {
                            let body: Value = response.json().unwrap();
                            log.lock().unwrap().push(body["version"].as_str().unwrap().to_string());
                        }
                        Ok(response) => panic!("a deploy failed: {}", response.text().unwrap()),
                        Err(_) => return, // killed
                    }
                }
            })
        };
        while log.lock().unwrap().len() < acknowledged {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        host.signal(libc::SIGKILL);
        deployer.join().expect("every deploy before the kill answered 200");
        let acknowledged = log.lock().unwrap().clone();
        deploys += acknowledged.len();
        for version in acknowledged {
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
        assert_eq!(versions.len(), 2, "two variants alternate: {versions:?}");
    }
    assert!(deploys >= 200, "{deploys} deploys");
    // The last round's state loads too.
    let host = start(Some(&state));
    assert!(versions.contains(&deployed(&host, "steady").0));
    // Only the versions the state names are kept (the two variants), no temporary files.
    let kept: Vec<_> = std::fs::read_dir(state.0.join("components"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(kept.len() <= 2 && kept.iter().all(|f| f.ends_with(".wasm")), "{kept:?}");
}

#[test]
fn a_damaged_state_stops_the_start_with_an_error_naming_the_file() {
    let state = StateDir::new("damaged");
    let host = start(Some(&state));
    let faulty = built_wasm("faulty");
    deploy(&host, "steady", variant(&faulty, "damaged-state"), "");
    stop(host, libc::SIGTERM);
    let up = |state: &StateDir| {
        let manifest = repo_root().join(MANIFEST).display().to_string();
        let runtime = repo_root().join(RUNTIME).display().to_string();
        let args = [
            "up",
            "-f",
            &manifest,
            "--runtime-config-file",
            &runtime,
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            state.path(),
        ];
        edgeinfer(&args, &[])
    };
    // The bytes of the deployed version damaged: the start stops, naming them.
    let kept = std::fs::read_dir(state.0.join("components")).unwrap().next().unwrap().unwrap().path();
    let mut bytes = std::fs::read(&kept).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&kept, &bytes).unwrap();
    let (started, _, stderr) = up(&state);
    assert!(!started);
    assert!(stderr.contains(&format!("{} is damaged", kept.display())), "{stderr}");
    assert!(stderr.contains(&state.0.join("state.json").display().to_string()), "{stderr}");
    // Missing.
    std::fs::remove_file(&kept).unwrap();
    let (started, _, stderr) = up(&state);
    assert!(!started);
    assert!(stderr.contains(&format!("cannot read {}", kept.display())), "{stderr}");
    // The state file itself cut short.
    let file = state.0.join("state.json");
    let text = std::fs::read(&file).unwrap();
    std::fs::write(&file, &text[..text.len() / 2]).unwrap();
    let (started, _, stderr) = up(&state);
    assert!(!started);
    assert!(stderr.contains(&format!("the host state {} is damaged", file.display())), "{stderr}");
    // Another app's state.
    let other = String::from_utf8(text).unwrap().replacen("\"app\": \"faults\"", "\"app\": \"another\"", 1);
    std::fs::write(&file, other).unwrap();
    let (started, _, stderr) = up(&state);
    assert!(!started);
    assert!(stderr.contains("is app \"another\"'s; this is app \"faults\""), "{stderr}");
}
