//! Gray release through the admin API: a canary gets its share of the traffic (within ±1% of the
//! weight over 10,000 requests), sticky canaries keep a client on one version, promote and abort
//! end the trial, a shadow canary sees a copy of the traffic while clients only get the stable
//! answer, and metrics carry the version.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    ADMIN_TOKEN as TOKEN, Host, admin_app, admin_host, built_wasm as wasm, client, get,
    wasm_variant as variant,
};
use serde_json::{Value, json};
use sha2::Digest;

fn faults_host() -> Host {
    admin_host("tests/apps/faults/spin.toml", Some("tests/apps/faults/runtime.toml"))
}

fn admin(host: &Host, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
    let url = format!("{}{path}", host.admin.as_ref().unwrap());
    let response = client().request(method, url).bearer_auth(TOKEN).body(body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

/// Deploys `bytes` as a canary of `id` with the extra query `options`; the canary's short version.
fn canary(host: &Host, id: &str, bytes: Vec<u8>, options: &str) -> String {
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let (status, body) = admin(
        host,
        reqwest::Method::PUT,
        &format!("/admin/v1/components/{id}?sha256={sha}&{options}"),
        bytes,
    );
    assert_eq!(status, 200, "{body}");
    body["canary"].as_str().unwrap()[..12].to_string()
}

/// The version that answered a GET.
fn version_of(host: &Host, path: &str, user: Option<&str>) -> String {
    let mut request = client().get(host.url(path));
    if let Some(user) = user {
        request = request.header("x-user", user);
    }
    let response = request.send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string()
}

/// Sends `n` GETs from 8 threads; answers per version.
fn spread(host: &Host, path: &str, n: usize) -> BTreeMap<String, usize> {
    let url = host.url(path);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = client();
                let mut seen = BTreeMap::new();
                for _ in (t..n).step_by(8) {
                    let response = client.get(&url).send().expect("no request lost");
                    assert_eq!(response.status().as_u16(), 200);
                    *seen
                        .entry(response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string())
                        .or_insert(0) += 1;
                }
                seen
            })
        })
        .collect();
    let mut total = BTreeMap::new();
    for thread in threads {
        for (version, count) in thread.join().unwrap() {
            *total.entry(version).or_insert(0) += count;
        }
    }
    total
}

#[test]
fn a_canary_gets_its_weight_then_is_promoted_or_aborted() {
    let host = faults_host();
    let stable = version_of(&host, "/steady/ok", None);
    let trial = canary(&host, "steady", variant(&wasm("faulty"), "canary-5"), "canary=5");
    let counts = spread(&host, "/steady/ok", 10_000);
    let share = counts.get(&trial).copied().unwrap_or(0) as f64 / 10_000.0;
    eprintln!("canary at 5%: {counts:?} ({:.2}%)", share * 100.0);
    assert_eq!(counts.values().sum::<usize>(), 10_000, "every request answered");
    assert!((share - 0.05).abs() <= 0.01, "the canary's share is within ±1% of 5%: {:.2}%", share * 100.0);
    assert_eq!(counts.get(&stable).copied().unwrap_or(0) + counts.get(&trial).copied().unwrap_or(0), 10_000);

    // Metrics by version: both versions' requests are counted apart.
    let (_, metrics) = get(&host, "/metrics");
    for version in [&stable, &trial] {
        let label = format!("version=\"{version}\"");
        assert!(
            metrics.lines().any(|l| l.starts_with("edgeinfer_requests_total{") && l.contains(&label)),
            "{metrics}"
        );
    }

    let (status, body) = admin(&host, reqwest::Method::POST, "/admin/v1/components/steady/promote", vec![]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        spread(&host, "/steady/ok", 200).keys().collect::<Vec<_>>(),
        vec![&trial],
        "promoted: all traffic"
    );
    let (status, body) = admin(&host, reqwest::Method::POST, "/admin/v1/components/steady/promote", vec![]);
    assert_eq!((status, body["error_type"].as_str()), (409, Some("NoCanary")));

    let other = canary(&host, "steady", variant(&wasm("faulty"), "canary-50"), "canary=50");
    assert_eq!(spread(&host, "/steady/ok", 200).get(&other), Some(&100), "an even split of 200 at 50%");
    let (status, body) = admin(&host, reqwest::Method::POST, "/admin/v1/components/steady/abort", vec![]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        spread(&host, "/steady/ok", 200).keys().collect::<Vec<_>>(),
        vec![&trial],
        "aborted: back to stable"
    );
}

#[test]
fn a_sticky_canary_keeps_each_client_on_one_version() {
    let host = faults_host();
    let trial = canary(&host, "steady", variant(&wasm("faulty"), "sticky"), "canary=20&sticky=header:x-user");
    let (mut users_on_trial, users) = (0, 500);
    for user in 0..users {
        let user = format!("user-{user}");
        let first = version_of(&host, "/steady/ok", Some(&user));
        for _ in 0..2 {
            assert_eq!(version_of(&host, "/steady/ok", Some(&user)), first, "{user} stays on one version");
        }
        users_on_trial += usize::from(first == trial);
    }
    let share = users_on_trial as f64 / users as f64;
    assert!((share - 0.20).abs() < 0.06, "about 20% of users on the canary: {:.1}%", share * 100.0);
    let (app, steady) = admin_app(&host, "steady");
    assert_eq!(steady["canary"]["sticky"], "header:x-user", "{app}");
    assert_eq!(steady["canary"]["percent"], 20.0);
}

/// The value of the metric line that starts with `prefix` and contains every one of `labels`.
fn metric(host: &Host, name: &str, labels: &[&str]) -> f64 {
    let (_, text) = get(host, "/metrics");
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_for_metric(host: &Host, name: &str, labels: &[&str], want: f64) -> f64 {
    for _ in 0..100 {
        let value = metric(host, name, labels);
        if value >= want {
            return value;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    metric(host, name, labels)
}

#[test]
fn a_shadow_canary_sees_the_traffic_but_never_answers() {
    let host = admin_host("spin.toml", None);
    let embed = |text: &str| {
        let response = client().post(host.url("/embed")).json(&json!({"inputs": text})).send().unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let version = response.headers()["x-edgeinfer-version"].to_str().unwrap().to_string();
        (version, response.json::<Value>().unwrap())
    };
    let (stable, _) = embed("warm up");

    // The same code under another version: every shadow answer is the same.
    let same = canary(&host, "embed", variant(&wasm("embed"), "shadow-same"), "canary=100&mode=shadow");
    for i in 0..10 {
        assert_eq!(embed(&format!("shadowed sentence {i}")).0, stable, "clients get the stable answer");
    }
    let labels = [r#"component="embed""#, &format!(r#"version="{same}""#), r#"outcome="same""#];
    assert_eq!(wait_for_metric(&host, "edgeinfer_shadow_requests_total", &labels, 10.0), 10.0);

    // A version that cannot do the job (the classifier has no embedding model): clients never see it.
    let broken = canary(&host, "embed", wasm("classify"), "canary=100&mode=shadow");
    for i in 0..10 {
        let (version, body) = embed(&format!("shadowed again {i}"));
        assert_eq!(version, stable);
        assert_eq!(body.as_array().unwrap()[0].as_array().unwrap().len(), 384);
    }
    let labels = [&format!(r#"version="{broken}""#), r#"outcome="mismatch""#];
    assert_eq!(wait_for_metric(&host, "edgeinfer_shadow_requests_total", &labels, 10.0), 10.0);
}

#[test]
fn a_shadowed_answer_too_big_or_too_slow_to_compare_reaches_the_client_whole() {
    let host = faults_host();
    let shadow =
        canary(&host, "steady", variant(&wasm("faulty"), "shadow-passthrough"), "canary=100&mode=shadow");
    let skipped = [r#"component="steady""#, &format!(r#"version="{shadow}""#), r#"outcome="skipped""#];

    // 20 MiB: over the 16 MiB the host copies for comparing.
    let response = client().get(host.url("/steady/big")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let body = response.bytes().unwrap();
    assert_eq!(body.len(), 20 << 20);
    assert!(body.iter().all(|&b| b == b'x'), "the answer arrived intact");
    assert_eq!(wait_for_metric(&host, "edgeinfer_shadow_requests_total", &skipped, 1.0), 1.0);

    // 35 s of streaming: longer than the host waits to compare, streamed to the client as it comes.
    let started = std::time::Instant::now();
    let response = client().get(host.url("/steady/trickle-35")).send().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers_after = started.elapsed();
    let text = response.text().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 35, "{text}");
    assert_eq!(lines[34], "second 34");
    assert!(
        headers_after < Duration::from_secs(5),
        "the head came at once, not after the body ({headers_after:?})"
    );
    assert!(started.elapsed() >= Duration::from_secs(34));
    assert_eq!(wait_for_metric(&host, "edgeinfer_shadow_requests_total", &skipped, 2.0), 2.0);
}
