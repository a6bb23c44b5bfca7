//! Prometheus metrics: one recorder for the process, rendered at `/metrics`. Metrics are emitted
//! where their event happens (HTTP serving, batcher, registry, instances); names are listed in
//! the README.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// GPU memory sampling, when models run on CUDA devices.
static GPU_MEMORY: OnceLock<GpuMemory> = OnceLock::new();

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

/// The Prometheus text exposition of every metric so far (GPU memory read now).
pub fn render() -> String {
    if let Some(gpu) = GPU_MEMORY.get() {
        gpu.sample();
    }
    HANDLE.get().map(PrometheusHandle::render).unwrap_or_default()
}

/// Reports `edgeinfer_gpu_memory_used_bytes` / `_total_bytes` of these CUDA devices at each
/// scrape, read from NVML (the driver's library, loaded at run time: hosts without an NVIDIA
/// driver never load it). Device numbers are CUDA ordinals; NVML numbers devices by PCI bus, which
/// is the same order when `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
pub fn watch_gpu_memory(devices: Vec<u32>) {
    if devices.is_empty() || GPU_MEMORY.get().is_some() {
        return;
    }
    match nvml_wrapper::Nvml::init() {
        Ok(nvml) => {
            let gpu = GpuMemory { nvml, devices };
            gpu.sample();
            let _ = GPU_MEMORY.set(gpu);
        }
        Err(e) => tracing::warn!("no GPU memory metrics: cannot load NVML: {e}"),
    }
}

struct GpuMemory {
    nvml: nvml_wrapper::Nvml,
    devices: Vec<u32>,
}

impl GpuMemory {
    fn sample(&self) {
        for &index in &self.devices {
            let device = format!("cuda:{index}");
            match self.nvml.device_by_index(index).and_then(|d| d.memory_info()) {
                Ok(memory) => {
                    metrics::gauge!("edgeinfer_gpu_memory_used_bytes", "device" => device.clone())
                        .set(memory.used as f64);
                    metrics::gauge!("edgeinfer_gpu_memory_total_bytes", "device" => device)
                        .set(memory.total as f64);
                }
                Err(e) => tracing::debug!(%device, "cannot read GPU memory: {e}"),
            }
        }
    }
}
