//! Dynamic batching end to end: concurrent requests of mixed lengths, merged into shared ONNX
//! Runtime runs, get the answers they get alone (padding removed, rows split back in order).

mod common;

use common::{Host, client, post_json, reference, repo_root, vectors};
use serde_json::{Value, json};

/// The default runtime config with a 20 ms batching window, so concurrent requests surely merge.
fn batching_host() -> Host {
    let config = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    assert!(
        config.contains("max_queue_delay_us = 0"),
        "the default config's batching changed: update this test"
    );
    let config = config.replace("max_queue_delay_us = 0", "max_queue_delay_us = 20000");
    let path = repo_root().join(format!(".test-batching-{}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    host
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.contains("model=\"minilm\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn concurrent_requests_get_exactly_the_answers_they_get_alone() {
    let host = batching_host();
    let url = host.url("/embed");
    let cases = reference("embeddings.json");
    let texts: Vec<String> = cases
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["needs_truncate"] != true)
        .map(|c| c["text"].as_str().unwrap().to_string())
        .take(16)
        .collect();
    let lengths: std::collections::BTreeSet<usize> = texts.iter().map(|t| t.len()).collect();
    assert!(lengths.len() > 8, "mixed lengths exercise padding");

    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| {
            let (status, body) = post_json(&url, &json!({"inputs": t}));
            assert_eq!(status, 200, "{body}");
            vectors(&body).remove(0)
        })
        .collect();
    let metrics = || client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let before = metrics();

    let rounds = 4;
    let together: Vec<Vec<(u16, Value)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let url = &url;
                scope.spawn(move || (0..rounds).map(|_| post_json(url, &json!({"inputs": t}))).collect())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut worst = 0f32;
    for ((text, single), answers) in texts.iter().zip(&alone).zip(&together) {
        for (status, body) in answers {
            assert_eq!(*status, 200, "{text}: {body}");
            let got = vectors(body).remove(0);
            assert_eq!(got.len(), single.len());
            let diff = got.iter().zip(single).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff);
            assert!(diff <= 1e-5, "{text}: max |Δ| {diff} between its batched and its lone answer");
        }
    }
    eprintln!("batched vs alone: max |Δ| {worst:e} over {} requests", texts.len() * rounds);

    // The requests were merged: fewer engine runs than requests.
    let after = metrics();
    let runs = metric(&after, "edgeinfer_batch_rows_count{") - metric(&before, "edgeinfer_batch_rows_count{");
    let rows = metric(&after, "edgeinfer_batch_rows_sum{") - metric(&before, "edgeinfer_batch_rows_sum{");
    assert_eq!(rows as usize, texts.len() * rounds, "every request reached the engine once");
    assert!(runs < rows, "{rows} rows in {runs} runs: concurrent requests were not batched");
    eprintln!("{rows} requests ran in {runs} batches");
}

/// The faults app with its batching window replaced by `max_arrival_wait_us = wait_us`, and one
/// instance of `steady`, so that its requests share it (a blocking wasi:nn call then blocks the
/// others).
fn faults_host_with_arrival_wait(wait_us: u64) -> Host {
    let app = repo_root().join("tests/apps/faults");
    let config = std::fs::read_to_string(app.join("runtime.toml")).unwrap();
    let (window, steady) = ("max_queue_delay_us = 20000", "[component.steady]\nrequest_timeout_ms = 60000");
    assert!(
        config.contains(window) && config.contains(steady),
        "the faults app's runtime config changed: update this test"
    );
    let config = config
        .replace(window, &format!("max_queue_delay_us = 0\nmax_arrival_wait_us = {wait_us}"))
        .replace(steady, &format!("{steady}\nmax_instances = 1"));
    // Tests run side by side: each host its own file. Paths in it start at spin.toml's directory.
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = repo_root().join(format!(".test-arrivals-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let host = Host::start(&app.join("spin.toml"), &["--runtime-config-file", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    host
}

/// `/steady/nn-late` (in flight, computing 300 ms later) and, 100 ms after it, `/steady/infer-ok`
/// (both async edgeinfer:nn/infer calls): the engine runs and rows they took, and how long
/// infer-ok took.
fn late_and_prompt(host: &Host) -> (f64, f64, std::time::Duration) {
    let get = |path: &str| {
        let response = client().get(host.url(path)).send().expect("the host answers");
        (response.status().as_u16(), response.text().unwrap())
    };
    for _ in 0..2 {
        let (status, body) = get("/steady/infer-ok");
        assert!(status == 200 && body.starts_with("ok"), "{status} {body}");
    }
    let metrics = || client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let before = metrics();
    let took = std::thread::scope(|scope| {
        let late = scope.spawn(|| get("/steady/nn-late"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        let (status, body) = get("/steady/infer-ok");
        let took = started.elapsed();
        assert!(status == 200 && body.starts_with("ok"), "{status} {body}");
        let (status, body) = late.join().unwrap();
        assert!(status == 200 && body.starts_with("ok"), "{status} {body}");
        took
    });
    let after = metrics();
    let delta = |name: &str| metric(&after, name) - metric(&before, name);
    (delta("edgeinfer_batch_rows_count{"), delta("edgeinfer_batch_rows_sum{"), took)
}

/// A request in flight in a component that may use the model is known to be on its way: with
/// `max_arrival_wait_us`, a batch that forms meanwhile waits for it, and leaves when it arrives.
#[test]
fn a_batch_waits_for_requests_on_their_way_through_a_component() {
    let host = faults_host_with_arrival_wait(2_000_000);
    let (runs, rows, took) = late_and_prompt(&host);
    assert_eq!((runs, rows), (1.0, 2.0), "the prompt request waited for the late one");
    assert!(took >= std::time::Duration::from_millis(150), "it waited: {took:?}");
    assert!(took < std::time::Duration::from_millis(1500), "and left when the late one arrived: {took:?}");
    drop(host);

    // Off (the default): the prompt request runs at once, alone.
    let host = faults_host_with_arrival_wait(0);
    let (runs, rows, _) = late_and_prompt(&host);
    assert_eq!((runs, rows), (2.0, 2.0));
}

/// A synchronous wasi:nn call blocks its instance, so requests on their way through it could not
/// arrive: a batch holding one does not wait for arrivals, even with the window on. (Sharing the
/// one instance, nn-late cannot go on while nn-ok blocks it: were the rule missing, nn-ok would
/// wait out the 2 s window.)
#[test]
fn a_blocking_wasi_nn_call_does_not_wait_for_arrivals() {
    let host = faults_host_with_arrival_wait(2_000_000);
    let get = |path: &str| client().get(host.url(path)).send().expect("the host answers").text().unwrap();
    assert!(get("/steady/nn-ok").starts_with("ok"));
    std::thread::scope(|scope| {
        let late = scope.spawn(|| get("/steady/nn-late"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert!(get("/steady/nn-ok").starts_with("ok"));
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_millis(1000), "the wasi:nn call did not wait: {took:?}");
        assert!(late.join().unwrap().starts_with("ok"));
    });
}
