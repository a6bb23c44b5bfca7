//! deploy/systemd/edgeinfer.service: systemd's own checker accepts it, its sandbox rates as
//! systemd's "OK" exposure, and the host runs from the environment alone as the unit starts it
//! (no flags, no wrapper script), with the admin token from a credential file, and drains on
//! SIGTERM (the unit's KillSignal) with exit status 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, host_binary, post_json, repo_root, vectors};
use serde_json::json;

/// The unit, with ExecStart pointing at the binary under test (verify checks that it exists).
fn unit_under_test() -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo_root().join("deploy/systemd/edgeinfer.service")).unwrap();
    let exec = "ExecStart=/usr/local/bin/edgeinfer up";
    assert_eq!(text.matches(exec).count(), 1, "the unit starts `edgeinfer up` with no flags");
    let dir = std::env::temp_dir().join(format!("edgeinfer-systemd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("edgeinfer.service");
    std::fs::write(&path, text.replace(exec, &format!("ExecStart={} up", host_binary().display()))).unwrap();
    path
}

#[test]
fn systemd_analyze_verifies_the_unit_and_rates_its_sandbox_ok() {
    let unit = unit_under_test();
    let output =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    let output = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("run systemd-analyze security");
    let said = String::from_utf8_lossy(&output.stdout);
    let line =
        said.lines().find(|l| l.contains("Overall exposure level")).expect("an overall exposure level");
    let level: f64 =
        line.split("level for").nth(1).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    eprintln!("systemd-analyze security: {}", line.trim());
    assert!(level <= 2.0, "exposure {level} (systemd calls up to 2.9 OK; ours was 1.4): {said}");
}

#[test]
fn the_tls_drop_in_is_verified_and_names_only_real_variables() {
    let unit = unit_under_test();
    let drop_ins = unit.with_extension("service.d");
    std::fs::create_dir_all(&drop_ins).unwrap();
    let text = std::fs::read_to_string(repo_root().join("deploy/systemd/tls.conf")).unwrap();
    std::fs::write(drop_ins.join("tls.conf"), &text).unwrap();
    let output =
        Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("run systemd-analyze");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    std::fs::remove_dir_all(&drop_ins).unwrap();
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify with tls.conf:\n{said}"
    );
    // Every variable it sets is one `edgeinfer up` reads.
    let help = Command::new(host_binary()).args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let variables: Vec<&str> =
        text.lines().filter_map(|l| l.strip_prefix("Environment=")?.split('=').next()).collect();
    assert!(variables.len() >= 5, "{variables:?}");
    for variable in variables {
        assert!(help.contains(&format!("[env: {variable}")), "{variable} is not a flag's variable:\n{help}");
    }
}

#[test]
fn the_host_runs_from_the_environment_alone_and_drains_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("edgeinfer-credentials-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token = "credential-token-0123456789";
    std::fs::write(dir.join("admin-token"), format!("{token}\n")).unwrap();
    let mut child = Command::new(host_binary())
        .arg("up")
        .current_dir(std::env::temp_dir())
        .env("EDGEINFER_MANIFEST", repo_root().join("spin.toml"))
        .env("EDGEINFER_LISTEN", format!("127.0.0.1:{port}"))
        .env("EDGEINFER_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("EDGEINFER_ADMIN_TOKEN_FILE", dir.join("admin-token"))
        .env_remove("EDGEINFER_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start edgeinfer up");
    let stderr = child.stderr.take().unwrap();
    let log =
        std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while client().get(format!("{base}/ready")).send().map_or(true, |r| r.status() != 200) {
        assert!(started.elapsed() < Duration::from_secs(120), "the host did not become ready");
        assert!(child.try_wait().unwrap().is_none(), "the host exited before serving");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) =
        post_json(&format!("{base}/embed"), &json!({"inputs": "configured by the environment"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(vectors(&body)[0].len(), 384);
    // The admin API takes the credential's token (its trailing newline is not part of it).
    let apps =
        client().get(format!("http://127.0.0.1:{admin}/admin/v1/app")).bearer_auth(token).send().unwrap();
    assert_eq!(apps.status(), 200);
    let wrong =
        client().get(format!("http://127.0.0.1:{admin}/admin/v1/app")).bearer_auth("nope").send().unwrap();
    assert_eq!(wrong.status(), 403, "another token is refused");

    // SIGTERM (the unit's KillSignal): a drain, then exit 0, well within TimeoutStopSec=40.
    let stopping = Instant::now();
    // SAFETY: kill(2) on a child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(stopping.elapsed() < Duration::from_secs(40), "no exit within the unit's TimeoutStopSec");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    let log = log.join().unwrap();
    assert!(log.iter().any(|l| l.contains("draining")), "the host drained: {log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
