//! Prometheus metrics: one recorder for the process, rendered at `/metrics`. Metrics are emitted
//! where their event happens (HTTP serving, batcher, registry, instances); names are listed in
//! docs/api.md (Metrics).

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
        .set_buckets_for_metric(Matcher::Full("edgeinfer_batch_real_tokens".into()), BATCH_TOKENS)?
        .install_recorder()?;
    let _ = HANDLE.set(handle);
    describe();
    Ok(())
}

/// Every family's `# HELP` line (Prometheus's linter, `promtool check metrics`, asks for one).
/// A family emitted without a line here is caught by the promtool test.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    // Serving (every listener).
    describe_counter!(
        "edgeinfer_requests_total",
        "Requests answered, by route, component, version and status."
    );
    describe_histogram!(
        "edgeinfer_request_duration_seconds",
        Unit::Seconds,
        "Time from a request's arrival to its response head, by route, component and version."
    );
    describe_counter!(
        "edgeinfer_errors_total",
        "Error answers (the host's and the components'), by route, component, version and error_type."
    );
    describe_counter!(
        "edgeinfer_tokens_total",
        "Tokens the components computed on (their x-compute-tokens)."
    );
    // Models, batcher and engines.
    describe_gauge!("edgeinfer_model_ready", "1 when the model is loaded, 0 when it failed to load.");
    describe_gauge!("edgeinfer_model_load_seconds", Unit::Seconds, "How long the model took to load.");
    describe_counter!("edgeinfer_model_reloads_total", "Admin model reloads, by outcome.");
    describe_histogram!(
        "edgeinfer_queue_seconds",
        Unit::Seconds,
        "Time a compute call waited in the batcher."
    );
    describe_histogram!("edgeinfer_compute_seconds", Unit::Seconds, "Engine run time per batch.");
    describe_histogram!("edgeinfer_batch_rows", "Rows per engine run.");
    describe_histogram!("edgeinfer_batch_tokens", "Padded tokens per engine run.");
    describe_histogram!(
        "edgeinfer_batch_real_tokens",
        "Tokens of the rows' own lengths per engine run (the rest of edgeinfer_batch_tokens is padding)."
    );
    describe_histogram!("edgeinfer_batch_requests", "Compute calls merged into one engine run.");
    describe_gauge!("edgeinfer_queue_depth", "Compute calls waiting when the last batch left.");
    describe_counter!("edgeinfer_requests_dropped_total", "Compute calls whose caller left before compute.");
    describe_counter!(
        "edgeinfer_requests_refused_total",
        "Compute calls refused because the model's queue (max_queue) was full."
    );
    describe_gauge!(
        "edgeinfer_gpu_memory_used_bytes",
        Unit::Bytes,
        "GPU memory in use (NVML), per CUDA device."
    );
    describe_gauge!(
        "edgeinfer_gpu_memory_total_bytes",
        Unit::Bytes,
        "GPU memory in all (NVML), per CUDA device."
    );
    // Components.
    describe_counter!("edgeinfer_instances_created_total", "Component instances created.");
    describe_gauge!("edgeinfer_live_instances", "Component instances alive.");
    describe_gauge!(
        "edgeinfer_instance_memory_bytes",
        Unit::Bytes,
        "Linear memory the component's live instances have grown to."
    );
    describe_counter!(
        "edgeinfer_instance_waits_total",
        "Times a request found every instance busy at max_instances and waited for one."
    );
    describe_gauge!("edgeinfer_admission_waiting", "Requests waiting for a slot of the component.");
    // Deployments and the admin API.
    describe_counter!(
        "edgeinfer_deployments_total",
        "Deploys, canaries, promotions and rollbacks, by outcome."
    );
    describe_counter!("edgeinfer_admin_actions_total", "Admin API calls, by action and outcome.");
    describe_counter!("edgeinfer_shadow_requests_total", "Shadow runs of a canary, by outcome.");
    describe_histogram!(
        "edgeinfer_shadow_max_abs_diff",
        "Largest absolute difference between the numbers of the stable and the shadow answer."
    );
    // TLS.
    describe_counter!("edgeinfer_tls_handshakes_total", "TLS handshakes, by listener and outcome.");
    describe_counter!("edgeinfer_tls_reloads_total", "Certificate reloads, by listener and outcome.");
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

/// Counts one answered request (HTTP or gRPC) in the request metrics. Per version, so that a
/// canary's latency and errors can be compared with the stable's.
pub(crate) fn count_request(
    route: &str,
    component: &str,
    version: &str,
    status: u16,
    error_type: Option<&str>,
    elapsed: std::time::Duration,
) {
    let labels = [
        ("route", route.to_string()),
        ("component", component.to_string()),
        ("version", version.to_string()),
    ];
    metrics::counter!("edgeinfer_requests_total", "route" => route.to_string(), "component" => component.to_string(), "version" => version.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("edgeinfer_request_duration_seconds", &labels).record(elapsed);
    if let Some(error_type) = error_type {
        metrics::counter!("edgeinfer_errors_total", "route" => route.to_string(), "component" => component.to_string(), "version" => version.to_string(), "error_type" => error_type.to_string())
            .increment(1);
    }
}
