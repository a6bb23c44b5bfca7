//! Instances by need: one instance serves many requests at once (a request waiting on its model,
//! through `edgeinfer:nn/infer`'s async `compute`, leaves the instance to the others), so
//! requests that wait together need no instance each. Once a burst is over, the surplus
//! instances are released after `surplus_idle_ms` while `warm_instances` stay ready; the next
//! request reuses a warm one. The instances' linear memory in `/metrics` follows them down.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Host, client, repo_root};
use serde_json::json;

/// One test at a time: instance counts depend on how busy the cores are.
static SERIAL: Mutex<()> = Mutex::new(());

/// The default app with a batching window of `window_ms` (concurrent requests surely wait
/// together), and the pool's settings spelled out: `instance_concurrency` requests per instance.
fn host(window_ms: u64, instance_concurrency: usize) -> Host {
    host_with(window_ms, instance_concurrency, "")
}

/// As `host`, with more `[component.embed]` settings.
fn host_with(window_ms: u64, instance_concurrency: usize, settings: &str) -> Host {
    let config = std::fs::read_to_string(repo_root().join("runtime-config/local.toml")).unwrap();
    assert!(
        config.contains("max_queue_delay_us = 0"),
        "the default config's batching changed: update this test"
    );
    let config = config
        .replace("max_queue_delay_us = 0", &format!("max_queue_delay_us = {}", window_ms * 1000))
        + &format!(
            "\n[component.embed]\nwarm_instances = 2\nsurplus_idle_ms = 2000\ninstance_concurrency = {instance_concurrency}\n{settings}\n"
        );
    let path = repo_root()
        .join(format!(".test-instances-{}-{window_ms}-{instance_concurrency}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let host =
        Host::start(&repo_root().join("spin.toml"), &["--runtime-config-file", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    host
}

/// (created, live, linear memory bytes) of the embed component.
fn instances(host: &Host) -> (f64, f64, f64) {
    let text = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains("component=\"embed\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    (
        value("edgeinfer_instances_created_total"),
        value("edgeinfer_live_instances"),
        value("edgeinfer_instance_memory_bytes"),
    )
}

fn embed(host: &Host, text: &str) {
    let response = client().post(host.url("/embed")).json(&json!({"inputs": text})).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// 16 clients asking 6 questions each, at once.
fn burst(host: &Host) {
    std::thread::scope(|scope| {
        for client_number in 0..16 {
            scope.spawn(move || {
                for round in 0..6 {
                    embed(host, &format!("client {client_number} asks question {round} of the burst"));
                }
            });
        }
    });
}

/// Sends 8 requests 25 ms apart into a 1 s batching window, so that all wait for the same
/// batch and each arrives after its predecessors' guest code is done; returns the instances
/// created for them and each one's latency.
fn eight_waiting_together(host: &Host) -> (f64, Vec<Duration>) {
    embed(host, "warm up");
    embed(host, "warm up again");
    let (created_before, _, _) = instances(host);
    let latencies = std::thread::scope(|scope| {
        let mut requests = Vec::new();
        for number in 0..8 {
            std::thread::sleep(Duration::from_millis(25));
            requests.push(scope.spawn(move || {
                let started = Instant::now();
                embed(host, &format!("request {number}, waiting with the others"));
                started.elapsed()
            }));
        }
        requests.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
    });
    let (created, _, _) = instances(host);
    (created - created_before, latencies)
}

#[test]
fn requests_waiting_on_the_model_share_an_instance() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (shared, latencies) = eight_waiting_together(&host(1000, 16));
    // One batch: every request waited for the window (not one batch after another).
    let longest = latencies.iter().max().unwrap();
    assert!(latencies.iter().all(|l| *l >= Duration::from_millis(700)), "{latencies:?}");
    assert!(*longest < Duration::from_millis(1800), "one batch, not several: {latencies:?}");

    // The control: one request per instance, as wasi:nn's synchronous compute allowed.
    let (one_each, _) = eight_waiting_together(&host(1000, 1));
    eprintln!(
        "8 requests waiting together: {shared} instances created for them; {one_each} at one request per instance"
    );
    assert!(
        one_each >= 6.0,
        "with instance_concurrency = 1 each waiting request needs an instance: {one_each}"
    );
    assert!(shared <= 2.0, "{shared} instances created for 8 requests waiting on the model");
}

#[test]
fn a_burst_s_surplus_instances_are_released_and_warm_ones_stay() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two requests per instance: 16 clients surely need several.
    let host = host(50, 2);
    embed(&host, "warm up");
    burst(&host);
    let (created, live, memory) = instances(&host);
    assert!(
        created >= 4.0 && live >= 3.0,
        "a burst of 16 clients needs several instances: {created} created, {live} live"
    );
    let per_instance = memory / live;
    eprintln!(
        "after the burst: {created} created, {live} live, {:.1} MiB of linear memory",
        memory / (1 << 20) as f64
    );
    assert!(per_instance >= (1 << 20) as f64, "{memory} bytes for {live} instances");

    // Idle for longer than surplus_idle_ms: down to the warm ones, their memory with them.
    let started = Instant::now();
    let (live, memory) = loop {
        let (_, live, memory) = instances(&host);
        if live <= 2.0 || started.elapsed() > Duration::from_secs(15) {
            break (live, memory);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(live, 2.0, "warm_instances = 2 stay ready after {:?}", started.elapsed());
    eprintln!("{:?} later: {live} live, {:.1} MiB", started.elapsed(), memory / (1 << 20) as f64);
    assert!(
        memory <= 2.0 * per_instance * 1.5,
        "{memory} bytes for 2 instances ({per_instance} each before)"
    );

    // They serve the next requests: no instance is created for them.
    let (created_before, _, _) = instances(&host);
    embed(&host, "after the burst");
    embed(&host, "and once more");
    let (created_after, live_after, _) = instances(&host);
    assert_eq!(created_after, created_before, "a warm instance answered");
    assert_eq!(live_after, 2.0);
}

#[test]
fn at_max_instances_requests_wait_for_a_busy_instance() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Two requests per instance and at most three instances: 16 clients need more, and wait.
    let host = host_with(50, 2, "max_instances = 3");
    embed(&host, "warm up");
    burst(&host);
    let (created, live, _) = instances(&host);
    let text = client().get(host.url("/metrics")).send().unwrap().text().unwrap();
    let waits: f64 = text
        .lines()
        .filter(|l| l.starts_with("edgeinfer_instance_waits_total{") && l.contains("component=\"embed\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    eprintln!("16 clients, max_instances 3: {created} created, {live} live, {waits} waits for an instance");
    // `burst` asserts every answer is 200: no request was lost or refused while waiting.
    assert!(created <= 3.0 && live <= 3.0, "{created} created, {live} live");
    assert!(waits >= 1.0, "the burst needed more than 3 instances: some requests waited ({waits})");
}
