//! The load generator: closed loop (N clients, each sends its next request when the last one is
//! answered) or open loop (requests start on a fixed schedule, latency counted from the scheduled
//! time so a slow server cannot hide its queueing).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;

/// Arguments of `edgeinfer-bench load`.
#[derive(clap::Args)]
pub struct LoadArgs {
    /// Endpoint to POST to.
    #[arg(long)]
    url: String,
    /// JSON request body (POST); without it, GET.
    #[arg(long, conflicts_with = "bodies")]
    body: Option<String>,
    /// A file of JSON request bodies, one a line: each request POSTs the next, in turn (a mixed
    /// workload, in the file's order).
    #[arg(long)]
    bodies: Option<std::path::PathBuf>,
    #[command(flatten)]
    shape: Shape,
}

/// How a load runs, whatever it sends.
#[derive(clap::Args, Clone)]
pub struct Shape {
    /// Concurrent clients (closed loop).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Requests per second (open loop) instead of a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring (instances, caches and pools warm up).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Name of the system under test, copied into the result.
    #[arg(long, default_value = "")]
    label: String,
}

/// Latency percentiles in milliseconds.
#[derive(Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub mean: f64,
    pub max: f64,
}

/// One load run's outcome.
#[derive(Serialize)]
pub struct LoadResult {
    pub label: String,
    pub mode: &'static str,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_s: f64,
    pub latency_ms: Latency,
}

/// Counts of one client (or of the open loop's requests), merged at the end.
struct Tally {
    latencies: Histogram<u64>,
    errors: u64,
    /// Good answers that arrived within the measured window, whenever sent (the open loop's
    /// throughput: a server that queues without bound answers late, not more).
    answered_in_window: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latencies: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
            errors: 0,
            answered_in_window: 0,
        }
    }

    fn record(&mut self, started: Instant, ok: bool) {
        if ok {
            let micros = started.elapsed().as_micros().clamp(1, 600_000_000) as u64;
            self.latencies.record(micros).expect("latency within the histogram's bounds");
        } else {
            self.errors += 1;
        }
    }
}

/// Runs the load and summarises it.
pub async fn run(args: LoadArgs) -> Result<LoadResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.shape.concurrency.max(64))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let body = match &args.body {
        Some(body) => {
            let json: serde_json::Value = serde_json::from_str(body).context("--body is not JSON")?;
            Some(serde_json::to_vec(&json)?)
        }
        None => None,
    };
    let url = Arc::new(args.url);
    if let Some(path) = &args.bodies {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let bodies: Vec<Arc<Option<Vec<u8>>>> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Arc::new(Some(l.as_bytes().to_vec())))
            .collect();
        if bodies.is_empty() {
            bail!("{} has no bodies", path.display());
        }
        let (bodies, next) = (Arc::new(bodies), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
        let request = move || {
            let (client, url) = (client.clone(), url.clone());
            let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % bodies.len();
            let body = bodies[index].clone();
            async move { send(&client, &url, &body).await }
        };
        return drive(args.shape, request).await;
    }
    let body = Arc::new(body);
    let request = move || {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { send(&client, &url, &body).await }
    };
    drive(args.shape, request).await
}

/// Sends `request` under the load `shape` and summarises the answers; `request` resolves to
/// whether it got a good answer.
pub async fn drive<F, Fut>(args: Shape, request: F) -> Result<LoadResult>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    if args.concurrency == 0 || args.seconds <= 0.0 {
        bail!("--concurrency and --seconds must be positive");
    }
    // One request first: a server that does not answer well is not worth loading.
    if !request().await {
        bail!("the server did not answer the first request well");
    }
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let total = Arc::new(Mutex::new(Tally::new()));

    match args.rate {
        None => {
            let mut clients = Vec::new();
            for _ in 0..args.concurrency {
                let (request, total) = (request.clone(), total.clone());
                clients.push(tokio::spawn(async move {
                    let mut tally = Tally::new();
                    while Instant::now() < end {
                        let started = Instant::now();
                        let ok = request().await;
                        // Counted by when it was answered: counting only requests both sent
                        // and answered in the window would leave out about throughput x
                        // latency of them (a sixth of a 10 s window at 1.5 s latency).
                        let answered = Instant::now();
                        if (measure_from..=end).contains(&answered) {
                            tally.record(started, ok);
                        }
                    }
                    merge(&total, tally).await;
                }));
            }
            for c in clients {
                c.await?;
            }
        }
        Some(rate) => {
            if rate <= 0.0 {
                bail!("--rate must be positive");
            }
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut requests = Vec::new();
            let mut scheduled = start;
            while scheduled < end {
                tokio::time::sleep_until(scheduled.into()).await;
                let (request, total) = (request.clone(), total.clone());
                let at = scheduled;
                requests.push(tokio::spawn(async move {
                    let ok = request().await;
                    let answered = Instant::now();
                    let mut total = total.lock().await;
                    if at >= measure_from {
                        total.record(at, ok);
                    }
                    // Whenever it was sent: what the server answers within the window.
                    total.answered_in_window += u64::from(ok && (measure_from..=end).contains(&answered));
                }));
                scheduled += interval;
            }
            for r in requests {
                r.await?;
            }
        }
    }
    let tally = Arc::try_unwrap(total).ok().expect("all clients finished").into_inner();
    let h = &tally.latencies;
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(LoadResult {
        label: args.label,
        mode: if args.rate.is_some() { "open" } else { "closed" },
        concurrency: args.concurrency,
        rate: args.rate,
        seconds: args.seconds,
        requests: h.len(),
        errors: tally.errors,
        requests_per_s: match args.rate {
            None => h.len() as f64,
            Some(_) => tally.answered_in_window as f64,
        } / args.seconds,
        latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            mean: h.mean() / 1000.0,
            max: ms(h.max()),
        },
    })
}

async fn merge(total: &Mutex<Tally>, tally: Tally) {
    let mut total = total.lock().await;
    total.latencies.add(&tally.latencies).expect("same histogram bounds");
    total.errors += tally.errors;
}

/// POSTs the body (or GETs without one) and reads the whole answer; true for a 200.
pub(crate) async fn send(client: &reqwest::Client, url: &str, body: &Arc<Option<Vec<u8>>>) -> bool {
    let request = match body.as_ref() {
        Some(body) => client.post(url).header("content-type", "application/json").body(body.clone()),
        None => client.get(url),
    };
    let response = request.send().await;
    match response {
        Ok(r) => {
            let ok = r.status().as_u16() == 200;
            r.bytes().await.is_ok() && ok
        }
        Err(_) => false,
    }
}
