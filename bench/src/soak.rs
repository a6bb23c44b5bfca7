//! Soak: a long closed-loop run against one server while its resident memory is sampled, to show
//! whether serving leaks. Memory is read from /proc, so the server must run on this machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Endpoint to POST to.
    #[arg(long)]
    url: String,
    /// Process id of the server.
    #[arg(long)]
    pid: u32,
    /// JSON request bodies, sent in turn (repeat the flag).
    #[arg(long = "body", required = true)]
    bodies: Vec<String>,
    /// Requests measured.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Requests sent before measuring (instances, pools and caches reach their working size).
    #[arg(long, default_value_t = 2_000)]
    warmup_requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Resident memory is sampled each time this many more requests have completed.
    #[arg(long, default_value_t = 1_000)]
    sample_every: u64,
}

/// Resident memory after a number of measured requests.
#[derive(Serialize)]
pub struct Sample {
    pub requests: u64,
    pub rss_kib: u64,
}

#[derive(Serialize)]
pub struct SoakResult {
    pub requests: u64,
    pub warmup_requests: u64,
    pub concurrency: usize,
    pub errors: u64,
    pub seconds: f64,
    /// The first sample is taken when the warm-up ends.
    pub samples: Vec<Sample>,
    /// Last sample minus first, in MiB.
    pub drift_mib: f64,
    /// Highest sample minus lowest, in MiB.
    pub spread_mib: f64,
}

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

pub async fn run(args: SoakArgs) -> Result<SoakResult> {
    if args.concurrency == 0 || args.sample_every == 0 || args.requests == 0 {
        bail!("--concurrency, --requests and --sample-every must be positive");
    }
    let client = reqwest::Client::builder().tcp_nodelay(true).timeout(Duration::from_secs(60)).build()?;
    let bodies: Vec<Arc<Option<Vec<u8>>>> = args
        .bodies
        .iter()
        .map(|b| {
            let json: serde_json::Value = serde_json::from_str(b).context("--body is not JSON")?;
            Ok(Arc::new(Some(serde_json::to_vec(&json)?)))
        })
        .collect::<Result<_>>()?;
    let total = args.warmup_requests + args.requests;
    let issued = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..args.concurrency {
        let (client, url, bodies) = (client.clone(), args.url.clone(), bodies.clone());
        let (issued, completed, errors) = (issued.clone(), completed.clone(), errors.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let ok = crate::load::send(&client, &url, &bodies[n as usize % bodies.len()]).await;
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                completed.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Sample at the end of the warm-up and after every `sample_every` measured requests.
    let mut samples = Vec::new();
    let mut next = args.warmup_requests;
    let mut started = None;
    while next <= total {
        let done = completed.load(Ordering::Relaxed);
        if done >= next {
            let measured = next - args.warmup_requests;
            if measured == 0 {
                started = Some(Instant::now());
            }
            let sample = Sample { requests: measured, rss_kib: rss_kib(args.pid)? };
            eprintln!("soak: {:>6} requests, RSS {:.1} MiB", sample.requests, sample.rss_kib as f64 / 1024.0);
            samples.push(sample);
            next += args.sample_every;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for client in clients {
        client.await?;
    }
    let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let first = samples.first().map_or(0, |s| s.rss_kib);
    let last = samples.last().map_or(0, |s| s.rss_kib);
    let high = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let low = samples.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    Ok(SoakResult {
        requests: args.requests,
        warmup_requests: args.warmup_requests,
        concurrency: args.concurrency,
        errors: errors.load(Ordering::Relaxed),
        seconds,
        samples,
        drift_mib: mib(last) - mib(first),
        spread_mib: mib(high) - mib(low),
    })
}
