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
