//! A faulty component cannot take the host down: every fault is answered (500, or 504 for a
//! guest that never returns), the faulty route recovers on a fresh instance, and a steady
//! component next to it keeps answering throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Host, client, repo_root};
use serde_json::Value;

fn get(host: &Host, path: &str) -> (u16, String) {
    let response = client().get(host.url(path)).send().expect("the host answers");
    (response.status().as_u16(), response.text().unwrap())
}

fn assert_json_error(status: u16, body: &str, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{body}");
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body, got {body:?}: {e}"));
    assert_eq!(body["error_type"], want_type, "{body}");
}

#[test]
fn the_host_survives_every_fault() {
    let app = repo_root().join("tests/apps/faults");
    let runtime = app.join("runtime.toml");
    let host = Host::start(&app.join("spin.toml"), &["--runtime-config-file", runtime.to_str().unwrap()]);
    assert_eq!(get(&host, "/fault/ok").0, 200);

    for fault in ["trap", "panic", "membomb", "recursion"] {
        let (status, body) = get(&host, &format!("/fault/{fault}"));
        assert_json_error(status, &body, 500, "ComponentFault");
        assert_eq!(get(&host, "/fault/ok").0, 200, "the faulty route recovers after {fault}");
        assert_eq!(get(&host, "/steady/ok").0, 200, "the steady route is unaffected by {fault}");
    }

    // A guest that never returns: 504 at the deadline (1.5 s here), interrupted soon after.
    let started = Instant::now();
    let looping = std::thread::spawn({
        let url = host.url("/fault/loop");
        move || {
            let response = client().get(url).send().expect("the host answers");
            (response.status().as_u16(), response.text().unwrap())
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&host, "/steady/ok").0, 200, "steady while a guest spins");
    let (status, body) = looping.join().unwrap();
    assert_json_error(status, &body, 504, "Timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at the deadline, not later");
    assert_eq!(get(&host, "/fault/ok").0, 200, "the faulty route recovers after the loop");

    let (status, _) = get(&host, "/health");
    assert_eq!(status, 200);
}
