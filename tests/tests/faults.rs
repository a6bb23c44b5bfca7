//! A faulty component cannot take the host down: every fault is answered (500, or 504 for a
//! guest that never returns), the faulty route recovers on a fresh instance, and a steady
//! component next to it keeps answering throughout. Bad tensors sent to wasi:nn are wasi:nn
//! errors for the caller alone; a fuel budget stops a runaway guest; a component that cannot be
//! instantiated fails its own requests only.

mod common;

use std::time::{Duration, Instant};

use common::{Host, client, get, onnxruntime_section, repo_root};
use serde_json::Value;

/// GETs `path` on another thread.
fn spawn_get(host: &Host, path: &str) -> std::thread::JoinHandle<(u16, String)> {
    let url = host.url(path);
    std::thread::spawn(move || {
        let response = client().get(url).send().expect("the host answers");
        (response.status().as_u16(), response.text().unwrap())
    })
}

fn assert_json_error(status: u16, body: &str, want_status: u16, want_type: &str) {
    assert_eq!(status, want_status, "{body}");
    let body: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON error body, got {body:?}: {e}"));
    assert_eq!(body["error_type"], want_type, "{body}");
}

fn start_faults_app() -> Host {
    let app = repo_root().join("tests/apps/faults");
    let runtime = app.join("runtime.toml");
    Host::start(&app.join("spin.toml"), &["--runtime-config-file", runtime.to_str().unwrap()])
}

#[test]
fn the_host_survives_every_fault() {
    let host = start_faults_app();
    assert_eq!(get(&host, "/fault/ok").0, 200);

    for fault in ["trap", "panic", "membomb", "recursion"] {
        let (status, body) = get(&host, &format!("/fault/{fault}"));
        assert_json_error(status, &body, 500, "ComponentFault");
        assert!(body.contains("wasm trap"), "the answer says how the guest failed: {body}");
        assert_eq!(get(&host, "/fault/ok").0, 200, "the faulty route recovers after {fault}");
        assert_eq!(get(&host, "/steady/ok").0, 200, "the steady route is unaffected by {fault}");
    }

    // A guest that never returns: 504 at the deadline (1.5 s here), interrupted soon after.
    let started = Instant::now();
    let looping = spawn_get(&host, "/fault/loop");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&host, "/steady/ok").0, 200, "steady while a guest spins");
    let (status, body) = looping.join().unwrap();
    assert_json_error(status, &body, 504, "Timeout");
    assert!(started.elapsed() < Duration::from_secs(10), "answered at the deadline, not later");
    assert_eq!(get(&host, "/fault/ok").0, 200, "the faulty route recovers after the loop");

    let (status, _) = get(&host, "/health");
    assert_eq!(status, 200);
}

#[test]
fn the_memory_cap_is_per_component() {
    let host = start_faults_app();
    // faulty may grow to 64 MiB (tests/apps/faults/runtime.toml), steady to the default 512 MiB.
    assert_eq!(get(&host, "/fault/alloc128"), (200, "refused".to_string()));
    assert_eq!(get(&host, "/steady/alloc128"), (200, "allocated".to_string()));
    assert_eq!(get(&host, "/fault/ok").0, 200, "a refused allocation is not a fault");
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut host = start_faults_app();
    let slow = spawn_get(&host, "/fault/slow");
    std::thread::sleep(Duration::from_millis(200));
    host.signal(libc::SIGTERM);
    let (status, body) = slow.join().unwrap();
    assert_eq!((status, body.as_str()), (200, "slow done"), "finished despite the SIGTERM");
    let exit = host.wait_exit(Duration::from_secs(15)).expect("the host exits after draining");
    assert!(exit.success(), "clean exit: {exit:?}");
    assert!(client().get(host.url("/fault/ok")).send().is_err(), "no longer accepting");
}

#[test]
fn over_the_concurrency_limit_is_503_with_retry_after() {
    let host = start_faults_app();
    // One running, one waiting: the limits of tests/apps/faults/runtime.toml.
    let running = spawn_get(&host, "/fault/slow");
    let waiting = spawn_get(&host, "/fault/slow");
    // Both admitted: one in the slot, the other waiting for it (as the host's gauge says; fixed
    // sleeps were too short on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&host, "/metrics").1.lines().all(|l| l != "edgeinfer_admission_waiting{component=\"faulty\"} 1")
    {
        assert!(Instant::now() < deadline, "the second request never waited for the slot");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The line is full: refused once no place freed within the app's 100 ms admission wait (each
    // slow request holds its slot for 800 ms), not at once (clients that resend at once would spin).
    let started = Instant::now();
    let response = client().get(host.url("/fault/slow")).send().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().unwrap();
    assert_eq!(body["error_type"], "Overloaded", "{body}");
    assert!(
        (Duration::from_millis(100)..Duration::from_millis(700)).contains(&elapsed),
        "refused after the admission wait: {elapsed:?}"
    );
    assert_eq!(running.join().unwrap().0, 200);
    assert_eq!(waiting.join().unwrap().0, 200, "the queued request ran when the slot freed");
    assert_eq!(get(&host, "/steady/ok").0, 200, "other components have their own limits");
}

#[test]
fn bad_tensors_are_wasi_nn_errors_for_the_caller_alone() {
    let host = start_faults_app();
    let (status, body) = get(&host, "/fault/nn-ok");
    assert_eq!((status, body.as_str()), (200, "ok: last_hidden_state [1, 4, 384]"));
    let cases = [
        ("nn-shape", "share"),
        ("nn-rank", "must have shape"),
        ("nn-type", "I64"),
        ("nn-data", "bytes"),
        ("nn-missing", "token_type_ids"),
        ("nn-extra", "pixel_values"),
    ];
    for (case, says) in cases {
        let (status, body) = get(&host, &format!("/fault/{case}"));
        assert_eq!(status, 200, "{case}: the guest got an error value, not a trap: {body}");
        assert!(body.starts_with("compute: ErrorCode::InvalidArgument: "), "{case}: {body}");
        assert!(body.contains(says), "{case}: the message names the problem ({says:?}): {body}");
    }

    // Bad calls racing good ones through one 20 ms batching window: the good ones all succeed.
    let calls: Vec<_> = (0..12)
        .map(|i| {
            (i % 3 == 0, spawn_get(&host, if i % 3 == 0 { "/steady/nn-shape" } else { "/steady/nn-ok" }))
        })
        .collect();
    for (bad, call) in calls {
        let (status, body) = call.join().unwrap();
        assert_eq!(status, 200);
        if bad {
            assert!(body.starts_with("compute: ErrorCode::InvalidArgument"), "{body}");
        } else {
            assert_eq!(body, "ok: last_hidden_state [1, 4, 384]", "a good call batched with bad ones");
        }
    }
}

#[test]
fn a_fuel_budget_stops_a_runaway_guest_before_its_deadline() {
    let host = start_faults_app();
    assert_eq!(get(&host, "/metered/ok"), (200, "ok".to_string()), "a small request fits the budget");
    let started = Instant::now();
    let (status, body) = get(&host, "/metered/loop");
    assert_json_error(status, &body, 500, "FuelExhausted");
    // The deadline of tests/apps/faults/runtime.toml is 5 s: fuel must end it long before.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped by fuel, not the deadline: {:?}",
        started.elapsed()
    );
    assert_eq!(get(&host, "/metered/ok").0, 200, "recovers on a fresh instance");
    assert_eq!(get(&host, "/steady/ok").0, 200);
}

#[test]
fn a_component_that_cannot_instantiate_fails_alone() {
    let host = start_faults_app();
    for _ in 0..3 {
        let (status, body) = get(&host, "/cramped/ok");
        assert_json_error(status, &body, 500, "InstantiationFailed");
        assert_eq!(get(&host, "/steady/ok").0, 200, "other components unaffected");
    }
    let (status, metrics) = get(&host, "/metrics");
    assert_eq!(status, 200);
    let counted = metrics.lines().any(|line| {
        line.starts_with(r#"edgeinfer_errors_total{route="/cramped/...",component="cramped","#)
            && line.ends_with(r#"error_type="InstantiationFailed"} 3"#)
    });
    assert!(counted, "errors are counted by route, component, version and type:\n{metrics}");
}

#[test]
fn the_faults_app_runs_the_default_onnx_runtime() {
    let faults = std::fs::read_to_string(repo_root().join("tests/apps/faults/runtime.toml")).unwrap();
    assert!(
        faults.ends_with(&onnxruntime_section()),
        "keep [onnxruntime] in step with runtime-config/local.toml"
    );
}
