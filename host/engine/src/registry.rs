//! Which models exist: graphs named in the runtime config, loaded once at start and shared by
//! every component instance, each behind its batcher.
//!
//! A model that cannot load (file missing, corrupt, wrong checksum) does not stop the host: it is
//! recorded as unavailable with its error, `/ready` answers 503 and names it, and `load-by-name`
//! of it fails with that error while every other model serves.
//!
//! A model can be reloaded while the host serves (`reload`): the new graph loads beside the old
//! one and replaces it when ready; calls already queued finish on the old graph, whose batcher
//! stops once the last of them is answered. Graph handles held by components name the model, not
//! a graph, so an instance that keeps a handle across requests computes on the new graph too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{Result, bail};
use arc_swap::ArcSwap;

use crate::batching::{BatchPolicy, Batcher};
use crate::engines::onnx::{OnnxEngine, check_model_file};
use crate::engines::{Engine, TensorSpec};
use crate::sha256_file;
use edgeinfer_config::runtime_config::{Device, ModelConfig};

/// A loaded graph and facts about it for `/ready`.
pub struct LoadedGraph {
    pub name: String,
    pub device: Device,
    pub loaded_at: SystemTime,
    /// The model file's sha256: which version of the model this is.
    pub sha256: String,
    /// The model file it was loaded from.
    pub path: PathBuf,
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

/// What a model of the runtime config is now.
pub enum ModelState {
    Ready(Arc<LoadedGraph>),
    Failed(Arc<FailedModel>),
}

/// One model of the runtime config: its settings and its current state, swapped by reloads.
pub struct ModelSlot {
    pub name: String,
    config: Mutex<ModelConfig>,
    state: ArcSwap<ModelState>,
    /// Held while a reload loads, so that two reloads of one model do not race.
    reloading: tokio::sync::Mutex<()>,
}

impl ModelSlot {
    /// The graph serving now, unless the model failed to load.
    pub fn graph(&self) -> Option<Arc<LoadedGraph>> {
        match &**self.state.load() {
            ModelState::Ready(graph) => Some(graph.clone()),
            ModelState::Failed(_) => None,
        }
    }

    /// Why the model is unavailable, if it is.
    pub fn failure(&self) -> Option<Arc<FailedModel>> {
        match &**self.state.load() {
            ModelState::Ready(_) => None,
            ModelState::Failed(failed) => Some(failed.clone()),
        }
    }
}

/// Why a reload did not happen; the model serves as before.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no model named {0:?} in the runtime config")]
    UnknownModel(String),
    #[error("model {0:?} is already being reloaded")]
    InProgress(String),
    /// The new file does not load, or is not the file meant.
    #[error("{0}")]
    Invalid(String),
    /// The new graph's inputs or outputs differ from the serving graph's: the components that
    /// use it would break.
    #[error("{0}")]
    Incompatible(String),
}

/// What a reload asks for: another file, and the checksum it must have.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Relative to the app's directory, or absolute; default: the model's current path.
    pub path: Option<String>,
    pub sha256: Option<String>,
}

/// Makes the engines of a model from its file: ONNX Runtime sessions, or a fake in tests.
pub trait EngineLoader: Send + Sync {
    /// One engine for the model file at `path`; called once per worker.
    fn load(&self, path: &Path, config: &ModelConfig) -> Result<Arc<dyn Engine>>;
}

/// ONNX Runtime sessions (`init_runtime` must have succeeded).
pub struct OnnxLoader;

impl EngineLoader for OnnxLoader {
    fn load(&self, path: &Path, config: &ModelConfig) -> Result<Arc<dyn Engine>> {
        Ok(Arc::new(OnnxEngine::load(path, config)?))
    }
}

/// All models of the app, by name.
pub struct GraphRegistry {
    models: BTreeMap<String, Arc<ModelSlot>>,
    app_dir: PathBuf,
    loader: Arc<dyn EngineLoader>,
}

impl Default for GraphRegistry {
    fn default() -> GraphRegistry {
        GraphRegistry { models: BTreeMap::new(), app_dir: PathBuf::new(), loader: Arc::new(OnnxLoader) }
    }
}

impl GraphRegistry {
    /// Loads every model of the runtime config on ONNX Runtime; paths are relative to `app_dir`.
    /// A model that fails is logged and recorded, not fatal.
    pub fn load(models: &BTreeMap<String, ModelConfig>, app_dir: &Path) -> GraphRegistry {
        GraphRegistry::load_with(models, app_dir, Arc::new(OnnxLoader))
    }

    /// As `load`, with engines made by `loader` (now and at reloads).
    pub fn load_with(
        models: &BTreeMap<String, ModelConfig>,
        app_dir: &Path,
        loader: Arc<dyn EngineLoader>,
    ) -> GraphRegistry {
        let mut registry =
            GraphRegistry { models: BTreeMap::new(), app_dir: app_dir.to_path_buf(), loader: loader.clone() };
        // Side by side: a session's graph optimisation runs on one core, so two models load in
        // about the time of the slower (the default app starts ~0.2 s sooner on 2 cores).
        let loaded: Vec<Result<LoadedGraph>> = std::thread::scope(|scope| {
            let loading: Vec<_> = models
                .iter()
                .map(|(name, config)| scope.spawn(|| load_graph(name, config, app_dir, loader.as_ref())))
                .collect();
            loading.into_iter().map(|l| l.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        for ((name, config), loaded) in models.iter().zip(loaded) {
            let state = match loaded {
                Ok(graph) => ModelState::Ready(Arc::new(graph)),
                Err(e) => ModelState::Failed(Arc::new(failed(name, config, &e))),
            };
            let slot = ModelSlot {
                name: name.clone(),
                config: Mutex::new(config.clone()),
                state: ArcSwap::from_pointee(state),
                reloading: tokio::sync::Mutex::new(()),
            };
            registry.models.insert(name.clone(), Arc::new(slot));
        }
        registry
    }

    /// The model named `name` in the runtime config, loaded or not.
    pub fn slot(&self, name: &str) -> Option<&Arc<ModelSlot>> {
        self.models.get(name)
    }

    /// The graph serving `name` now.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedGraph>> {
        self.models.get(name)?.graph()
    }

    /// The graphs serving now.
    pub fn graphs(&self) -> Vec<Arc<LoadedGraph>> {
        self.models.values().filter_map(|slot| slot.graph()).collect()
    }

    /// Why `name` is unavailable, if it failed to load.
    pub fn failure(&self, name: &str) -> Option<Arc<FailedModel>> {
        self.models.get(name)?.failure()
    }

    /// The models that are unavailable.
    pub fn failures(&self) -> Vec<Arc<FailedModel>> {
        self.models.values().filter_map(|slot| slot.failure()).collect()
    }

    /// Loads `name` again (from `request.path` if given) beside the serving graph and switches
    /// to it when it is ready; returns the new graph and the one it replaced. Inference goes on
    /// meanwhile. A model that failed to load becomes available this way.
    pub async fn reload(
        &self,
        name: &str,
        request: ReloadRequest,
    ) -> Result<(Arc<LoadedGraph>, Option<Arc<LoadedGraph>>), ReloadError> {
        let slot = self.models.get(name).ok_or_else(|| ReloadError::UnknownModel(name.to_string()))?;
        let _guard = slot.reloading.try_lock().map_err(|_| ReloadError::InProgress(name.to_string()))?;
        let mut config = slot.config.lock().expect("model config lock").clone();
        if let Some(path) = request.path {
            config.path = path;
            config.sha256 = None;
        }
        if let Some(sha256) = request.sha256 {
            config.sha256 = Some(sha256);
        }
        let (app_dir, model, loader) = (self.app_dir.clone(), name.to_string(), self.loader.clone());
        let load_config = config.clone();
        let loaded =
            tokio::task::spawn_blocking(move || load_graph(&model, &load_config, &app_dir, loader.as_ref()))
                .await
                .map_err(|e| ReloadError::Invalid(format!("the load panicked: {e}")))?
                .map_err(|e| ReloadError::Invalid(format!("{e:#}")))?;
        let current = slot.graph();
        if let Some(current) = &current {
            let differences = interface_differences(current, &loaded);
            if !differences.is_empty() {
                return Err(ReloadError::Incompatible(format!(
                    "the new model's interface differs from the serving one: {}",
                    differences.join("; ")
                )));
            }
        }
        let loaded = Arc::new(loaded);
        slot.state.store(Arc::new(ModelState::Ready(loaded.clone())));
        *slot.config.lock().expect("model config lock") = config;
        Ok((loaded, current))
    }
}

/// How the inputs and outputs of `new` differ from those of `old` (names, types, shapes).
fn interface_differences(old: &LoadedGraph, new: &LoadedGraph) -> Vec<String> {
    let describe = |specs: &[TensorSpec]| -> BTreeMap<String, String> {
        specs.iter().map(|s| (s.name.clone(), format!("{:?} {:?}", s.ty, s.shape))).collect()
    };
    let mut differences = Vec::new();
    for (kind, a, b) in [("input", &old.inputs, &new.inputs), ("output", &old.outputs, &new.outputs)] {
        let (a, b) = (describe(a), describe(b));
        for (name, spec) in &a {
            match b.get(name) {
                None => differences.push(format!("{kind} {name} is gone")),
                Some(other) if other != spec => {
                    differences.push(format!("{kind} {name} was {spec}, is {other}"))
                }
                Some(_) => {}
            }
        }
        for name in b.keys().filter(|n| !a.contains_key(*n)) {
            differences.push(format!("{kind} {name} is new"));
        }
    }
    differences
}

/// Logs and records a model that failed to load.
fn failed(name: &str, config: &ModelConfig, e: &anyhow::Error) -> FailedModel {
    let error = format!("{e:#}");
    tracing::error!(model = %name, path = %config.path, "model unavailable: {error}");
    metrics::gauge!("edgeinfer_model_ready", "model" => name.to_string()).set(0.0);
    FailedModel { name: name.to_string(), error, failed_at: SystemTime::now() }
}

/// Checks and loads one model: its file, its checksum, one engine per worker, its batcher.
fn load_graph(
    name: &str,
    config: &ModelConfig,
    app_dir: &Path,
    loader: &dyn EngineLoader,
) -> Result<LoadedGraph> {
    let path = app_dir.join(&config.path);
    let started = Instant::now();
    let device = config.device()?;
    check_model_file(&path)?;
    let sha256 = sha256_file(&path)?;
    if let Some(expected) = &config.sha256
        && !sha256.eq_ignore_ascii_case(expected)
    {
        bail!("{} is corrupt: sha256 is {sha256}, expected {expected}", path.display());
    }
    let mut engines: Vec<Arc<dyn Engine>> = Vec::with_capacity(config.workers);
    for _ in 0..config.workers {
        engines.push(loader.load(&path, config)?);
    }
    let policy = BatchPolicy::from_config(config.batching.as_ref(), config.max_queue);
    metrics::gauge!("edgeinfer_model_load_seconds", "model" => name.to_string()).set(started.elapsed());
    metrics::gauge!("edgeinfer_model_ready", "model" => name.to_string()).set(1.0);
    tracing::info!(
        model = %name,
        %device,
        sha256 = %&sha256[..12],
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
        sha256,
        path,
        inputs: engines[0].inputs().to_vec(),
        outputs: engines[0].outputs().to_vec(),
        batcher: Batcher::spawn(name, engines, policy),
    })
}

#[cfg(test)]
mod tests;
