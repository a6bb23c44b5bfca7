//! Which models exist: graphs named in the runtime config, loaded once at start and shared by
//! every component instance, each behind its batcher. Must be built inside the tokio runtime.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::batching::{BatchPolicy, Batcher};
use crate::engines::onnx::{OnnxEngine, check_model_file};
use crate::engines::{Engine, TensorSpec};
use crate::provision::verify_sha256;
use crate::runtime_config::{Device, ModelConfig};

/// A loaded graph and facts about it for `/ready`.
pub struct LoadedGraph {
    pub name: String,
    pub device: Device,
    pub loaded_at: SystemTime,
    /// The model's declared inputs and outputs.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Every inference of this model goes through its batcher.
    pub batcher: Batcher,
}

/// All graphs of the app, by name.
#[derive(Default)]
pub struct GraphRegistry {
    graphs: BTreeMap<String, Arc<LoadedGraph>>,
}

impl GraphRegistry {
    /// Loads every model of the runtime config; paths are relative to `app_dir`.
    pub fn load(models: &BTreeMap<String, ModelConfig>, app_dir: &Path) -> Result<GraphRegistry> {
        let mut graphs = BTreeMap::new();
        for (name, config) in models {
            let path = app_dir.join(&config.path);
            let started = std::time::Instant::now();
            check_model_file(&path).with_context(|| format!("model {name}"))?;
            if let Some(sha256) = &config.sha256 {
                verify_sha256(&path, sha256).with_context(|| format!("model {name}"))?;
            }
            let mut engines: Vec<Arc<dyn Engine>> = Vec::with_capacity(config.workers);
            for _ in 0..config.workers {
                engines.push(Arc::new(
                    OnnxEngine::load(&path, config).with_context(|| format!("model {name}"))?,
                ));
            }
            let policy = BatchPolicy::from_config(config.batching.as_ref());
            metrics::gauge!("edgeinfer_model_load_seconds", "model" => name.clone()).set(started.elapsed());
            tracing::info!(
                model = %name,
                device = %config.device()?,
                load_ms = started.elapsed().as_millis() as u64,
                workers = config.workers,
                max_batch_size = policy.max_batch_size,
                inputs = ?engines[0].inputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
                outputs = ?engines[0].outputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
                "model loaded"
            );
            graphs.insert(
                name.clone(),
                Arc::new(LoadedGraph {
                    name: name.clone(),
                    device: config.device()?,
                    loaded_at: SystemTime::now(),
                    inputs: engines[0].inputs().to_vec(),
                    outputs: engines[0].outputs().to_vec(),
                    batcher: Batcher::spawn(name, engines, policy),
                }),
            );
        }
        Ok(GraphRegistry { graphs })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<LoadedGraph>> {
        self.graphs.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedGraph>> {
        self.graphs.values()
    }
}
