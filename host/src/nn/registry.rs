//! Which models exist: graphs named in the runtime config, loaded once at start and shared by
//! every component instance, each behind its batcher. Must be built inside the tokio runtime.
//!
//! A model that cannot load (file missing, corrupt, wrong checksum) does not stop the host: it is
//! recorded as unavailable with its error, `/ready` answers 503 and names it, and `load-by-name`
//! of it fails with that error while every other model serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Result;

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

/// A model of the runtime config that failed to load.
pub struct FailedModel {
    pub name: String,
    /// Why, with its causes.
    pub error: String,
    pub failed_at: SystemTime,
}

/// All graphs of the app, by name.
#[derive(Default)]
pub struct GraphRegistry {
    graphs: BTreeMap<String, Arc<LoadedGraph>>,
    failed: BTreeMap<String, FailedModel>,
}

impl GraphRegistry {
    /// Loads every model of the runtime config; paths are relative to `app_dir`. A model that
    /// fails is logged and recorded, not fatal.
    pub fn load(models: &BTreeMap<String, ModelConfig>, app_dir: &Path) -> GraphRegistry {
        let mut registry = GraphRegistry::default();
        for (name, config) in models {
            match load_graph(name, config, app_dir) {
                Ok(graph) => {
                    metrics::gauge!("edgeinfer_model_ready", "model" => name.clone()).set(1.0);
                    registry.graphs.insert(name.clone(), Arc::new(graph));
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::error!(model = %name, path = %config.path, "model unavailable: {error}");
                    metrics::gauge!("edgeinfer_model_ready", "model" => name.clone()).set(0.0);
                    let failed = FailedModel { name: name.clone(), error, failed_at: SystemTime::now() };
                    registry.failed.insert(name.clone(), failed);
                }
            }
        }
        registry
    }

    pub fn get(&self, name: &str) -> Option<&Arc<LoadedGraph>> {
        self.graphs.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedGraph>> {
        self.graphs.values()
    }

    /// Why `name` is unavailable, if it failed to load.
    pub fn failure(&self, name: &str) -> Option<&FailedModel> {
        self.failed.get(name)
    }

    /// The models that failed to load.
    pub fn failures(&self) -> impl Iterator<Item = &FailedModel> {
        self.failed.values()
    }
}

/// Checks and loads one model: its file, its checksum, one engine per worker, its batcher.
fn load_graph(name: &str, config: &ModelConfig, app_dir: &Path) -> Result<LoadedGraph> {
    let path = app_dir.join(&config.path);
    let started = std::time::Instant::now();
    let device = config.device()?;
    check_model_file(&path)?;
    if let Some(sha256) = &config.sha256 {
        verify_sha256(&path, sha256)?;
    }
    let mut engines: Vec<Arc<dyn Engine>> = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        engines.push(Arc::new(OnnxEngine::load(&path, config)?));
    }
    let policy = BatchPolicy::from_config(config.batching.as_ref());
    metrics::gauge!("edgeinfer_model_load_seconds", "model" => name.to_string()).set(started.elapsed());
    tracing::info!(
        model = %name,
        %device,
        load_ms = started.elapsed().as_millis() as u64,
        workers = config.workers,
        max_batch_size = policy.max_batch_size,
        inputs = ?engines[0].inputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
        outputs = ?engines[0].outputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
        "model loaded"
    );
    Ok(LoadedGraph {
        name: name.to_string(),
        device,
        loaded_at: SystemTime::now(),
        inputs: engines[0].inputs().to_vec(),
        outputs: engines[0].outputs().to_vec(),
        batcher: Batcher::spawn(name, engines, policy),
    })
}
