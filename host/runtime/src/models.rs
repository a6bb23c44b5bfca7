//! The models of wasi:nn and edgeinfer:nn are the registry's: a guest's graph is a model slot, whose serving graph is
//! looked up at each compute (so a reloaded model serves handles taken before the reload), and
//! every compute goes through the model's batcher.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use edgeinfer_config::runtime_config::LlmConfig;
use edgeinfer_llm::{EmbeddingModel, EmbeddingModels};

use edgeinfer_engine::batching;
use edgeinfer_engine::engines::EngineError;
use edgeinfer_engine::registry::{GraphRegistry, ModelSlot};
use edgeinfer_wasi_nn::{Caller, ComputeFuture, Model, ModelError, ModelProvider, Tensors};

/// The registry as the model provider of wasi:nn and edgeinfer:nn.
pub struct RegistryModels(pub Arc<GraphRegistry>);

impl ModelProvider for RegistryModels {
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, ModelError> {
        if let Some(failed) = self.0.failure(name) {
            let message = format!("model {name:?} is unavailable: it failed to load: {}", failed.error);
            return Err(ModelError::Unavailable(message));
        }
        match self.0.slot(name) {
            Some(slot) => Ok(Arc::new(SlotModel(slot.clone()))),
            None => Err(ModelError::NotFound(format!("no model named {name:?} is loaded"))),
        }
    }
}

struct SlotModel(Arc<ModelSlot>);

impl Model for SlotModel {
    fn compute(&self, inputs: Tensors, caller: Caller) -> ComputeFuture<'_> {
        Box::pin(async move {
            let Some(graph) = self.0.graph() else {
                return Err(ModelError::Unavailable(format!("model {:?} is unavailable", self.0.name)));
            };
            let caller = match caller {
                Caller::Waits => batching::Caller::Waits,
                Caller::BlocksItsInstance => batching::Caller::BlocksItsInstance,
            };
            graph.batcher.compute_for(inputs, caller).await.map_err(|e| match e {
                EngineError::InvalidArgument(m) => ModelError::InvalidArgument(m),
                EngineError::Runtime(m) => ModelError::Runtime(m),
                EngineError::Overloaded(m) => ModelError::Overloaded(m),
            })
        })
    }
}

/// The embedding models of Spin's LLM interface (`[llm.embeddings]`), their tokenizers read;
/// paths start at `app_dir`.
pub fn embedding_models(config: &LlmConfig, app_dir: &Path) -> Result<EmbeddingModels> {
    config
        .embeddings
        .iter()
        .map(|(name, entry)| {
            let tokenizer = app_dir.join(&entry.tokenizer);
            let model = EmbeddingModel::load(&entry.model, &tokenizer, &entry.output, entry.max_input_tokens)
                .with_context(|| format!("[llm.embeddings.{name:?}]"))?;
            Ok((name.clone(), Arc::new(model)))
        })
        .collect()
}
