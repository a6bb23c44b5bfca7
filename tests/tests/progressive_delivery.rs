//! deploy/kubernetes/argo-rollouts and flagger: the Argo Rollouts `Rollout` and `AnalysisTemplate`
//! and the Flagger `Canary` and `MetricTemplate`s validate against those projects' CRD schemas
//! (tests/schemas, pruned from their own CRD files), and every query they judge a canary by runs
//! in a real Prometheus (Debian's `prometheus`) scraping a real host, with the labels Kubernetes
//! would give its series, and yields the number its condition compares.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Host, client, repo_root};
use serde_json::Value;

/// The pod and template hash the scrape gives the host's series (as the ServiceMonitor would).
const POD: &str = "edgeinfer-7c9d8f5b4-x2x9q";
const HASH: &str = "7c9d8f5b4";

struct Prometheus {
    child: Child,
    url: String,
    _dir: PathBufGuard,
}

struct PathBufGuard(std::path::PathBuf);

impl Drop for PathBufGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Prometheus scraping `target` (host:port) every second, its series labelled as a pod's.
    fn start(target: &str) -> Prometheus {
        let binary = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("prometheus"))
            .find(|p| p.is_file())
            .expect("no prometheus on PATH (scripts/test installs Debian's prometheus)");
        let dir = std::env::temp_dir().join(format!("edgeinfer-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: edgeinfer\n    static_configs:\n      - targets: [\"{target}\"]\n        labels:\n          namespace: default\n          pod: {POD}\n          rollouts_pod_template_hash: \"{HASH}\"\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: PathBufGuard(dir) }
    }

    /// An instant query's result vector.
    fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let response = client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", query)])
            .send()
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

/// Runs tests/clients/validate_progressive.py on the manifests: its report.
fn validate() -> Value {
    let dir = repo_root().join("deploy/kubernetes");
    let mut files: Vec<_> = ["argo-rollouts", "flagger"]
        .iter()
        .flat_map(|d| std::fs::read_dir(dir.join(d)).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let output = Command::new(common::client_python())
        .arg(repo_root().join("tests/clients/validate_progressive.py"))
        .arg(repo_root().join("tests/schemas"))
        .args(&files)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap()
}

#[test]
fn argo_rollouts_and_flagger_judge_canaries_by_the_hosts_own_metrics() {
    let report = validate();
    let documents: Vec<&str> =
        report["documents"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    for kind in ["Rollout/", "AnalysisTemplate/", "Canary/", "MetricTemplate/"] {
        assert!(documents.iter().any(|d| d.starts_with(kind)), "{kind} in {documents:?}");
    }

    // A host answering 200s and 500s, scraped by Prometheus.
    let dir = std::env::temp_dir().join(format!("edgeinfer-progressive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = dir.join("no-models.toml");
    std::fs::write(&runtime, "# no models: /steady/ok and /fault/trap only\n").unwrap();
    let host = Host::start_with_env(
        &repo_root().join("tests/apps/faults/spin.toml"),
        &["--runtime-config-file", runtime.to_str().unwrap()],
        &[],
    );
    let prometheus = Prometheus::start(host.base.trim_start_matches("http://"));
    let (mut ok, mut failed) = (0, 0);
    let send = |ok: &mut usize, failed: &mut usize| {
        for i in 0..20 {
            let path = if i % 10 == 9 { "/fault/trap" } else { "/steady/ok" };
            match client().get(host.url(path)).send().unwrap().status().as_u16() {
                200 => *ok += 1,
                _ => *failed += 1,
            }
        }
    };
    // Until Prometheus holds a few scrapes of both statuses.
    let started = Instant::now();
    loop {
        send(&mut ok, &mut failed);
        let samples = prometheus
            .query(&format!("count_over_time(edgeinfer_requests_total{{pod=\"{POD}\",status=~\"5..\"}}[1m])"))
            .unwrap_or_default();
        if samples.first().and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok()).is_some_and(|n| n >= 4.0)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "Prometheus never scraped the host");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(ok > 0 && failed > 0);

    // Every query, with the values Argo Rollouts and Flagger put in: one finite number.
    let mut results = std::collections::BTreeMap::new();
    for query in report["queries"].as_array().unwrap() {
        let source = query["source"].as_str().unwrap();
        let text = query["query"]
            .as_str()
            .unwrap()
            .replace("{{args.canary-hash}}", HASH)
            .replace("{{args.stable-hash}}", HASH)
            .replace("{{ namespace }}", "default")
            .replace("{{ target }}", "edgeinfer")
            .replace("{{ interval }}", "1m");
        let result = prometheus.query(&text).unwrap_or_else(|e| panic!("{source}: {e}\n{text}"));
        assert_eq!(result.len(), 1, "{source}: one value: {result:?}\n{text}");
        let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
        assert!(value.is_finite(), "{source}: {value}");
        eprintln!("{source} = {value} (condition: {})", query["condition"]);
        results.insert(source.to_string(), value);
    }
    // The same revision on both sides: no increase, a ratio of 1, so both conditions hold.
    assert_eq!(results["AnalysisTemplate/edgeinfer-canary/error-rate-increase"], 0.0);
    assert!((results["AnalysisTemplate/edgeinfer-canary/p99-ratio"] - 1.0).abs() < 1e-9);
    // One answer in ten was a 500: Flagger's share is about 10 (rates over a minute of scrapes).
    let share = results["Canary/edgeinfer/error-rate"];
    assert!((5.0..=15.0).contains(&share), "error share {share}% for 10% of 500s");
    let p99 = results["Canary/edgeinfer/p99-latency"];
    assert!(p99 > 0.0 && p99 < 2_000.0, "p99 {p99} ms");
    let _ = std::fs::remove_dir_all(&dir);
}
