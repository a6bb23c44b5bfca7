//! `[host] memory_budget`: what a host of that much memory can afford, decided before anything
//! is loaded. Every figure below was measured on the default app (BENCHMARKS.md, "A memory
//! budget"); they are estimates, so the budget keeps a margin.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use crate::runtime_config::{BatchingConfig, RuntimeConfig};

const MIB: u64 = 1 << 20;
/// The host without models: its code, ONNX Runtime's library, the compiled components, the
/// async runtime and its buffers.
pub const HOST_BYTES: u64 = 96 * MIB;
/// Resident memory of a loaded model per byte of its ONNX file (initializers, and the prepacked
/// weights ONNX Runtime makes of them).
pub const MODEL_BYTES_PER_FILE_BYTE: f64 = 1.5;
/// One instance of a handler: its linear memory (the tokenizer's vocabulary, mostly) and
/// wasmtime's state.
pub const INSTANCE_BYTES: u64 = 12 * MIB;
/// Memory an engine run needs per padded token with ONNX Runtime's arena off, at the longest
/// sequences (attention grows with the square of their length): ~75 KiB measured for MiniLM at
/// 256 tokens, glibc's slack included.
pub const RUN_BYTES_PER_TOKEN: u64 = 64 << 10;
/// Left for what is not counted (request bodies, queues, allocator slack).
const MARGIN: f64 = 0.15;
/// The shares of what the models leave: engine runs, then instances.
const RUN_SHARE: f64 = 0.55;
const INSTANCE_SHARE: f64 = 0.30;

/// What a budget decided, for the start-up log.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPlan {
    pub budget: u64,
    /// The models' estimated resident memory, by name.
    pub models: BTreeMap<String, u64>,
    /// Most padded tokens in one engine run, by model.
    pub max_batch_tokens: BTreeMap<String, u64>,
    /// Most live instances, by component.
    pub max_instances: BTreeMap<String, usize>,
}

impl std::fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: Vec<String>| items.join(", ");
        write!(
            f,
            "memory budget {} MiB: host ~{} MiB, models ~{} MiB ({}); engine runs of at most {} padded tokens; at most {} instances; ONNX Runtime's arena and memory patterns off",
            self.budget / MIB,
            HOST_BYTES / MIB,
            self.models.values().sum::<u64>() / MIB,
            list(self.models.iter().map(|(m, b)| format!("{m} {} MiB", b / MIB)).collect()),
            list(self.max_batch_tokens.iter().map(|(m, t)| format!("{m} {t}")).collect()),
            list(self.max_instances.iter().map(|(c, n)| format!("{c} {n}")).collect()),
        )
    }
}

impl RuntimeConfig {
    /// Sizes this config for its `[host] memory_budget`, when it has one: for models on the CPU,
    /// ONNX Runtime's arena and memory patterns off (where not set) and `max_batch_tokens`
    /// lowered (a model without batching gets a limit too, its requests still running alone);
    /// each of `components`' `max_instances` (and `warm_instances`) lowered to fit, its
    /// `instance_concurrency` raised so that `max_concurrent_requests` fit the instances.
    /// Refuses a budget the host and models alone do not fit in. Model files are sized under
    /// `app_dir`, so this runs once they are in place (a missing one counts nothing).
    pub fn apply_memory_budget(
        &mut self,
        app_dir: &Path,
        components: &[String],
    ) -> Result<Option<MemoryPlan>> {
        let Some(budget) = self.host.memory_budget else { return Ok(None) };
        // Models on a GPU keep their weights and runs there: neither counted nor changed.
        let on_cpu = |model: &crate::runtime_config::ModelConfig| {
            matches!(model.device(), Ok(crate::runtime_config::Device::Cpu))
        };
        let mut models = BTreeMap::new();
        for (name, model) in self.model.iter().filter(|(_, m)| on_cpu(m)) {
            // Each worker is a session of its own, with its own copy of the weights.
            let size = std::fs::metadata(app_dir.join(&model.path)).map(|m| m.len()).unwrap_or(0);
            let resident = (size as f64 * MODEL_BYTES_PER_FILE_BYTE) as u64 * model.workers as u64;
            models.insert(name.clone(), resident);
        }
        let fixed = HOST_BYTES + models.values().sum::<u64>();
        let usable = (budget as f64 * (1.0 - MARGIN)) as u64;
        // At least two instances for each component (one leaves a core idle while requests wait
        // for its guest code; on 2 cores, 1 instance made p99 4x longer) and one full-length row
        // per engine session.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let floor = cores.clamp(1, 2);
        let sessions: u64 = self.model.values().filter(|m| on_cpu(m)).map(|m| m.workers as u64).sum();
        let least = (components.len() * floor) as u64 * INSTANCE_BYTES + sessions * 256 * RUN_BYTES_PER_TOKEN;
        if fixed + least > usable {
            bail!(
                "[host] memory_budget {} MiB is too small: the host (~{} MiB) and its models (~{} MiB: {}) need about {} MiB before serving anything, and a request needs ~{} MiB more; give at least {} MiB",
                budget / MIB,
                HOST_BYTES / MIB,
                models.values().sum::<u64>() / MIB,
                models.iter().map(|(m, b)| format!("{m} {} MiB", b / MIB)).collect::<Vec<_>>().join(", "),
                fixed / MIB,
                least / MIB,
                ((fixed + least) as f64 / (1.0 - MARGIN)) as u64 / MIB + 1,
            );
        }
        let left = usable - fixed;
        let mut plan =
            MemoryPlan { budget, models, max_batch_tokens: BTreeMap::new(), max_instances: BTreeMap::new() };
        // Every session may run at once.
        let per_session = (left as f64 * RUN_SHARE) as u64 / sessions.max(1);
        for (name, model) in self.model.iter_mut().filter(|(_, m)| on_cpu(m)) {
            model.cpu_arena.get_or_insert(false);
            model.memory_pattern.get_or_insert(false);
            let tokens = (per_session / RUN_BYTES_PER_TOKEN).max(256);
            let batching = model.batching.get_or_insert_with(|| BatchingConfig {
                max_batch_size: 1,
                max_batch_tokens: u64::MAX,
                max_queue_delay_us: 0,
                max_arrival_wait_us: 0,
                pad_values: BTreeMap::new(),
                max_padding_tokens: None,
            });
            batching.max_batch_tokens = batching.max_batch_tokens.min(tokens);
            plan.max_batch_tokens.insert(name.clone(), batching.max_batch_tokens);
        }
        let per_component = (left as f64 * INSTANCE_SHARE) as u64 / components.len().max(1) as u64;
        for id in components {
            let limits = self.component.entry(id.clone()).or_default();
            let fits = ((per_component / INSTANCE_BYTES) as usize).max(floor);
            let cap = limits.max_instances.unwrap_or_else(|| limits.default_max_instances(cores)).min(fits);
            limits.max_instances = Some(cap);
            limits.warm_instances = limits.warm_instances.min(cap);
            // Fewer instances each take more requests at once, so that every request admitted
            // has a place on one instead of queueing for an instance.
            if limits.fuel.is_none() {
                limits.instance_concurrency =
                    limits.instance_concurrency.max(limits.max_concurrent_requests.div_ceil(cap));
            }
            plan.max_instances.insert(id.clone(), cap);
        }
        Ok(Some(plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(model_bytes: &[(&str, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in model_bytes {
            let file = std::fs::File::create(dir.path().join(format!("{name}.onnx"))).unwrap();
            file.set_len(*bytes).unwrap();
        }
        dir
    }

    const TWO_MODELS: &str = "[model.small]\npath = \"small.onnx\"\n[model.small.batching]\nmax_batch_tokens = 8192\n[model.big]\npath = \"big.onnx\"\n";

    #[test]
    fn a_budget_lowers_batch_tokens_and_instances_and_turns_the_arena_off() {
        let dir = app(&[("small", 22 * MIB), ("big", 90 * MIB)]);
        let mut config =
            RuntimeConfig::parse(&format!("{TWO_MODELS}[host]\nmemory_budget = \"512MiB\"\n")).unwrap();
        let components = ["embed".to_string(), "classify".to_string(), "openai".to_string()];
        let plan = config.apply_memory_budget(dir.path(), &components).unwrap().unwrap();
        assert_eq!(plan.budget, 512 * MIB);
        assert_eq!(plan.models["big"], (90.0 * 1.5 * MIB as f64) as u64);
        // 512 * 0.85 - 96 - 168 = 171 MiB left; 55 % over two models at 64 KiB a token.
        let tokens = ((171.2 * MIB as f64 * 0.55) as u64 / 2) / RUN_BYTES_PER_TOKEN;
        assert!(plan.max_batch_tokens["small"].abs_diff(tokens) <= 2, "{plan}");
        let small = &config.model["small"];
        assert_eq!((small.cpu_arena, small.memory_pattern), (Some(false), Some(false)));
        assert_eq!(small.batching.as_ref().unwrap().max_batch_tokens, plan.max_batch_tokens["small"]);
        // A model without batching runs alone, under the token limit too.
        let big = config.model["big"].batching.as_ref().unwrap();
        assert_eq!((big.max_batch_size, big.max_batch_tokens), (1, plan.max_batch_tokens["big"]));
        for id in &components {
            let limits = &config.component[id];
            assert_eq!(limits.max_instances, Some(plan.max_instances[id]));
            assert!(limits.warm_instances <= plan.max_instances[id]);
            assert!(limits.instance_concurrency * plan.max_instances[id] >= limits.max_concurrent_requests);
        }
        assert!(plan.to_string().contains("memory budget 512 MiB"), "{plan}");
    }

    #[test]
    fn a_budget_the_models_do_not_fit_is_refused_naming_them() {
        let dir = app(&[("small", 22 * MIB), ("big", 90 * MIB)]);
        let mut config =
            RuntimeConfig::parse(&format!("{TWO_MODELS}[host]\nmemory_budget = \"256MiB\"\n")).unwrap();
        let error = config.apply_memory_budget(dir.path(), &["embed".into()]).unwrap_err().to_string();
        assert!(
            error.contains("memory_budget 256 MiB is too small") && error.contains("big 135 MiB"),
            "{error}"
        );
        // Without a budget nothing changes.
        let mut config = RuntimeConfig::parse(TWO_MODELS).unwrap();
        assert_eq!(config.apply_memory_budget(dir.path(), &["embed".into()]).unwrap(), None);
        assert_eq!(config.model["small"].cpu_arena, None);
        assert!(config.model["big"].batching.is_none());
    }

    #[test]
    fn sizes_are_read_in_the_usual_units() {
        use crate::runtime_config::parse_size;
        assert_eq!(parse_size("512MiB").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1.5GiB").unwrap(), 1536 * MIB);
        assert_eq!(parse_size("600MB").unwrap(), 600_000_000);
        assert_eq!(parse_size("1048576").unwrap(), MIB);
        assert!(parse_size("lots").is_err() && parse_size("5 parsecs").is_err());
        let config = RuntimeConfig::parse("[host]\nmemory_budget = 1073741824\n").unwrap();
        assert_eq!(config.host.memory_budget, Some(1 << 30));
        assert!(RuntimeConfig::parse("[host]\nmemory_budget = \"big\"\n").is_err());
    }
}
