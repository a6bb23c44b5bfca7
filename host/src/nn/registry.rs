//! Which models exist: graphs named in the runtime config, loaded once at start and shared by
//! every component instance.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::engines::Engine;
use crate::engines::onnx::{OnnxEngine, check_model_file};
use crate::provision::verify_sha256;
use crate::runtime_config::{Device, ModelConfig};

/// A loaded graph and facts about it for `/ready`.
pub struct LoadedGraph {
    pub name: String,
    pub device: Device,
    pub loaded_at: SystemTime,
    pub engine: Arc<dyn Engine>,
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
            let engine = OnnxEngine::load(&path, config).with_context(|| format!("model {name}"))?;
            tracing::info!(
                model = %name,
                device = %config.device()?,
                load_ms = started.elapsed().as_millis() as u64,
                inputs = ?engine.inputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
                outputs = ?engine.outputs().iter().map(|s| &s.name).collect::<Vec<_>>(),
                "model loaded"
            );
            graphs.insert(
                name.clone(),
                Arc::new(LoadedGraph {
                    name: name.clone(),
                    device: config.device()?,
                    loaded_at: SystemTime::now(),
                    engine: Arc::new(engine),
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
