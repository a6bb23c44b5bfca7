//! Swap time: how long from the start of an admin upload to the first request answered by the
//! new version, while clients keep sending requests (none may fail). Each round uploads a version
//! never seen before (its compile is part of the time) and then re-deploys the previous round's
//! version (already in the compile cache: the warm case).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sha2::Digest;

#[derive(clap::Args)]
pub struct SwapArgs {
    /// The public endpoint to POST to.
    #[arg(long)]
    url: String,
    /// JSON body of the requests.
    #[arg(long)]
    body: String,
    /// Admin API base URL of the same host.
    #[arg(long)]
    admin: String,
    /// Admin token.
    #[arg(long, env = "EDGEINFER_ADMIN_TOKEN")]
    token: String,
    /// Component id to deploy.
    #[arg(long)]
    component: String,
    /// The component's .wasm (its own bytes, as built).
    #[arg(long)]
    wasm: std::path::PathBuf,
    /// Rounds (each: one cold, one warm swap).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Concurrent clients during the swaps.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Instead of uploads, deploy these app artifacts (one a round, never seen by the host) by
    /// pull: signed and carrying the component precompiled, they skip the host's compile.
    #[arg(long = "pull", value_name = "REFERENCE")]
    pull: Vec<String>,
}

/// One swap: upload start → the host's answer, and → the first request served by the version.
#[derive(Serialize)]
pub struct Swap {
    pub warm_cache: bool,
    pub deploy_ms: f64,
    pub first_answer_ms: f64,
}

#[derive(Serialize)]
pub struct SwapResult {
    pub component_bytes: usize,
    pub rounds: usize,
    pub concurrency: usize,
    pub requests: u64,
    pub failed: u64,
    pub swaps: Vec<Swap>,
    pub cold_median_ms: f64,
    pub warm_median_ms: f64,
    pub warm_max_ms: f64,
}

/// `bytes` plus a custom section naming `tag`: the same code, another version.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    use wasm_encoder::{ComponentSection, CustomSection};
    let mut out = bytes.to_vec();
    CustomSection { name: "edgeinfer-bench:swap".into(), data: tag.as_bytes().into() }
        .append_to_component(&mut out);
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub async fn run(args: SwapArgs) -> Result<SwapResult> {
    let original =
        std::fs::read(&args.wasm).with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    // Clients record, per answer, when it came and which version sent it.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let seen: Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, body) = (client.clone(), args.url.clone(), args.body.clone());
        let (stop, sent, failed, seen) = (stop.clone(), sent.clone(), failed.clone(), seen.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match response {
                    Ok(r) if r.status().is_success() => {
                        let version = r.headers().get("x-edgeinfer-version").and_then(|v| v.to_str().ok());
                        let version = version.unwrap_or_default().to_string();
                        let _ = r.bytes().await;
                        seen.lock().unwrap().push((Instant::now(), version));
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let nonce = std::process::id();
    let mut swaps = Vec::new();
    let mut previous: Option<Vec<u8>> = None;
    for reference in &args.pull {
        swaps.push(pull(&client, &args, reference, &seen).await?);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for round in 0..if args.pull.is_empty() { args.rounds } else { 0 } {
        let fresh = variant(&original, &format!("{nonce}-{round}"));
        let mut order = vec![(false, fresh.clone())];
        if let Some(previous) = previous.take() {
            order.push((true, previous));
        }
        for (warm_cache, bytes) in order {
            swaps.push(deploy(&client, &args, &bytes, warm_cache, &seen).await?);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        previous = Some(fresh);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    let cold: Vec<f64> = swaps.iter().filter(|s| !s.warm_cache).map(|s| s.first_answer_ms).collect();
    let warm: Vec<f64> = swaps.iter().filter(|s| s.warm_cache).map(|s| s.first_answer_ms).collect();
    Ok(SwapResult {
        component_bytes: original.len(),
        rounds: args.rounds,
        concurrency: args.concurrency,
        requests: sent.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        cold_median_ms: median(cold),
        warm_median_ms: median(warm.clone()),
        warm_max_ms: warm.iter().copied().fold(f64::NAN, f64::max),
        swaps,
    })
}

/// Uploads `bytes` and waits for the first answer from the version it becomes.
async fn deploy(
    client: &reqwest::Client,
    args: &SwapArgs,
    bytes: &[u8],
    warm_cache: bool,
    seen: &std::sync::Mutex<Vec<(Instant, String)>>,
) -> Result<Swap> {
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    let url =
        format!("{}/admin/v1/components/{}?sha256={sha}", args.admin.trim_end_matches('/'), args.component);
    let started = Instant::now();
    let response = client.put(url).bearer_auth(&args.token).body(bytes.to_vec()).send().await?;
    first_answer(response, started, warm_cache, seen).await
}

/// Deploys the component of the artifact `reference` by pull and waits for the first answer
/// from it.
async fn pull(
    client: &reqwest::Client,
    args: &SwapArgs,
    reference: &str,
    seen: &std::sync::Mutex<Vec<(Instant, String)>>,
) -> Result<Swap> {
    let url = format!("{}/admin/v1/components/{}/pull", args.admin.trim_end_matches('/'), args.component);
    let body = serde_json::json!({"reference": reference});
    let started = Instant::now();
    let response = client.post(url).bearer_auth(&args.token).json(&body).send().await?;
    first_answer(response, started, false, seen).await
}

/// The deploy's answer, then the first request answered by the version it installed.
async fn first_answer(
    response: reqwest::Response,
    started: Instant,
    warm_cache: bool,
    seen: &std::sync::Mutex<Vec<(Instant, String)>>,
) -> Result<Swap> {
    let status = response.status();
    let answer: serde_json::Value = response.json().await?;
    if !status.is_success() {
        bail!("deploy refused: {status} {answer}");
    }
    let deploy_ms = started.elapsed().as_secs_f64() * 1e3;
    let version: String =
        answer["version"].as_str().context("no version in the answer")?.chars().take(12).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let first =
            seen.lock().unwrap().iter().find(|(at, v)| *at >= started && *v == version).map(|(at, _)| *at);
        if let Some(at) = first {
            let first_answer_ms = at.duration_since(started).as_secs_f64() * 1e3;
            eprintln!(
                "swap ({}): deployed in {deploy_ms:.0} ms, first answer from it at {first_answer_ms:.0} ms",
                if warm_cache { "warm compile cache" } else { "new version" }
            );
            return Ok(Swap { warm_cache, deploy_ms, first_answer_ms });
        }
        if Instant::now() > deadline {
            bail!("no answer from version {version} within 30 s of its deploy");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
