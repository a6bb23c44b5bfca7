//! Prometheus metrics: one recorder for the process, rendered at `/metrics`. Metrics are emitted
//! where their event happens (HTTP serving, batcher, registry, instances); names are listed in
//! the README.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds buckets for latencies, 100 µs to 30 s.
const SECONDS: &[f64] =
    &[0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Rows per engine run.
const BATCH_ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Padded tokens per engine run.
const BATCH_TOKENS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 8192.0, 16384.0, 65536.0];

/// Installs the process-wide recorder (once; later calls reuse it).
pub fn init() -> anyhow::Result<()> {
    if HANDLE.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("edgeinfer_batch_rows".into()), BATCH_ROWS)?
        .set_buckets_for_metric(Matcher::Full("edgeinfer_batch_tokens".into()), BATCH_TOKENS)?
        .install_recorder()?;
    let _ = HANDLE.set(handle);
    Ok(())
}

/// The Prometheus text exposition of every metric so far.
pub fn render() -> String {
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}
