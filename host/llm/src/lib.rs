//! Spin's LLM interface (`fermyon:spin/llm@2.0.0`) for wasmtime components, so that a Spin app
//! calling `spin_sdk::llm::generate_embeddings` runs on this host unchanged, on ONNX Runtime and
//! the model's batcher instead of Spin's own engine.
//!
//! An embedding model is a name the app uses (`all-minilm-l6-v2`), mapped in the runtime config
//! to one of the host's models plus its tokenizer. A call tokenizes natively with the same
//! `tokenizers` the tokenizer component wraps, computes through the [`ModelProvider`] (the
//! registry's batchers, so the rows merge with wasi:nn and KServe traffic), mean-pools over the
//! attention mask and L2-normalises, as sentence-transformers and Spin's engine do. Like Spin, a
//! component may use only the models its `ai_models` lists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use edgeinfer_tensor::{ElementType, TensorData};
use edgeinfer_wasi_nn::{Caller, ModelError, ModelProvider, RequestTraces, TracedCall};
use tracing::Instrument;
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit/deps/spin-llm",
        world: "llm-host",
        imports: {
            "fermyon:spin/llm.generate-embeddings": async,
            default: trappable,
        },
    });
}

use bindings::fermyon::spin::llm::{self, EmbeddingsResult, EmbeddingsUsage, Error};

/// Inputs computed in one model call; a longer list is computed in parts.
const ROWS_PER_CALL: usize = 32;

/// One embedding model as apps name it.
pub struct EmbeddingModel {
    /// The host model (a `[model.NAME]` of the runtime config) that computes it.
    pub model: String,
    /// The model's per-token output that is pooled (`[batch, seq, hidden]`).
    pub output: String,
    /// Longest text accepted, in tokens, special tokens included.
    pub max_input_tokens: usize,
    tokenizer: tokenizers::Tokenizer,
}

impl EmbeddingModel {
    /// Reads `tokenizer` (a Hugging Face `tokenizer.json`) and drops any padding or truncation
    /// it configures: texts are padded here, and over-long texts refused.
    pub fn load(
        model: &str,
        tokenizer: &Path,
        output: &str,
        max_input_tokens: usize,
    ) -> Result<EmbeddingModel> {
        let mut parsed = tokenizers::Tokenizer::from_file(tokenizer)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot read tokenizer {}", tokenizer.display()))?;
        parsed.with_padding(None);
        parsed.with_truncation(None).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(EmbeddingModel {
            model: model.to_string(),
            output: output.to_string(),
            max_input_tokens,
            tokenizer: parsed,
        })
    }
}

/// The embedding models by the names apps use.
pub type EmbeddingModels = BTreeMap<String, Arc<EmbeddingModel>>;

/// Per-instance state: the host's models, the embedding names, and which this component may use.
pub struct LlmCtx {
    models: Arc<dyn ModelProvider>,
    embeddings: Arc<EmbeddingModels>,
    allowed_models: Arc<BTreeSet<String>>,
    /// The traces of the requests the instance runs, when it has them.
    traces: Option<Arc<dyn RequestTraces>>,
}

impl LlmCtx {
    /// State for an instance of a component whose `ai_models` are `allowed_models`.
    pub fn new(
        models: Arc<dyn ModelProvider>,
        embeddings: Arc<EmbeddingModels>,
        allowed_models: Arc<BTreeSet<String>>,
    ) -> LlmCtx {
        LlmCtx { models, embeddings, allowed_models, traces: None }
    }

    /// The same, with tokenization and compute traced under their requests.
    pub fn with_traces(self, traces: Arc<dyn RequestTraces>) -> LlmCtx {
        LlmCtx { traces: Some(traces), ..self }
    }

    /// A span for `call`: the binding is synchronous and does not say which guest task called,
    /// so it goes under the instance's only running request, when it has one.
    fn span(&self, call: TracedCall, model: &str) -> tracing::Span {
        match &self.traces {
            Some(traces) if tracing::span_enabled!(tracing::Level::INFO) => traces.span(None, call, model),
            _ => tracing::Span::none(),
        }
    }
}

/// Store data that carries LLM state.
pub trait LlmStoreView: Send {
    fn llm(&mut self) -> &mut LlmCtx;
}

struct SpinLlm;

impl HasData for SpinLlm {
    type Data<'a> = &'a mut LlmCtx;
}

/// Adds `fermyon:spin/llm@2.0.0` to the linker.
pub fn add_to_linker<T: LlmStoreView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    llm::add_to_linker::<T, SpinLlm>(linker, T::llm)
}

impl llm::Host for &mut LlmCtx {
    fn infer(
        &mut self,
        model: String,
        _prompt: String,
        _params: Option<llm::InferencingParams>,
    ) -> wasmtime::Result<Result<llm::InferencingResult, Error>> {
        Ok(Err(Error::RuntimeError(format!(
            "text generation (infer, model {model:?}) is not supported by edgeinfer; it serves \
             generate-embeddings only"
        ))))
    }

    async fn generate_embeddings(
        &mut self,
        model: String,
        text: Vec<String>,
    ) -> Result<EmbeddingsResult, Error> {
        if !self.allowed_models.contains(&model) {
            tracing::debug!(%model, "generate-embeddings: model not in the component's ai_models");
            return Err(Error::ModelNotSupported);
        }
        let Some(embedding) = self.embeddings.get(&model).cloned() else {
            tracing::debug!(%model, "generate-embeddings: no [llm.embeddings] entry");
            return Err(Error::ModelNotSupported);
        };
        let compute = self.models.model(&embedding.model).map_err(model_error)?;
        let mut result = EmbeddingsResult {
            embeddings: Vec::with_capacity(text.len()),
            usage: EmbeddingsUsage { prompt_token_count: 0 },
        };
        for (part, texts) in text.chunks(ROWS_PER_CALL).enumerate() {
            let batch = self
                .span(TracedCall::Tokenize, &model)
                .in_scope(|| encode(&embedding, texts, part * ROWS_PER_CALL))?;
            // Spin's LLM interface is synchronous: the calling instance waits with it.
            let outputs = compute
                .compute(batch.inputs(), Caller::BlocksItsInstance)
                .instrument(self.span(TracedCall::Compute, &model))
                .await
                .map_err(model_error)?;
            let (_, hidden) =
                outputs.into_iter().find(|(name, _)| *name == embedding.output).ok_or_else(|| {
                    Error::RuntimeError(format!(
                        "model {} has no output {:?}",
                        embedding.model, embedding.output
                    ))
                })?;
            result.embeddings.extend(batch.pool(&hidden)?);
            result.usage.prompt_token_count += batch.tokens();
        }
        Ok(result)
    }
}

fn model_error(error: ModelError) -> Error {
    match error {
        ModelError::InvalidArgument(m) => Error::InvalidInput(m),
        ModelError::NotFound(m) | ModelError::Unavailable(m) | ModelError::Runtime(m) => {
            Error::RuntimeError(m)
        }
        ModelError::Overloaded(m) => Error::RuntimeError(format!("overloaded: {m}")),
    }
}

/// Texts encoded for one model call, padded to the longest.
struct Batch {
    rows: usize,
    seq: usize,
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// Tokenizes `texts` (the `first`-th and following of the call, for error messages).
fn encode(model: &EmbeddingModel, texts: &[String], first: usize) -> Result<Batch, Error> {
    let mut encodings = Vec::with_capacity(texts.len());
    for (i, text) in texts.iter().enumerate() {
        let encoding = model
            .tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| Error::InvalidInput(format!("text {}: tokenization failed: {e}", first + i)))?;
        if encoding.len() > model.max_input_tokens {
            return Err(Error::InvalidInput(format!(
                "text {} is {} tokens long, more than the model's limit of {}",
                first + i,
                encoding.len(),
                model.max_input_tokens
            )));
        }
        encodings.push(encoding);
    }
    let seq = encodings.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut batch = Batch { rows: texts.len(), seq, ids: Vec::new(), mask: Vec::new(), types: Vec::new() };
    for e in &encodings {
        let pad = seq - e.len();
        batch.ids.extend(e.get_ids().iter().map(|&id| i64::from(id)).chain(std::iter::repeat_n(0, pad)));
        batch
            .mask
            .extend(e.get_attention_mask().iter().map(|&m| i64::from(m)).chain(std::iter::repeat_n(0, pad)));
        batch.types.extend(e.get_type_ids().iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(0, pad)));
    }
    Ok(batch)
}

impl Batch {
    fn inputs(&self) -> Vec<(String, TensorData)> {
        let shape = vec![self.rows as u32, self.seq as u32];
        let tensor = |values: &[i64]| {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            TensorData::new(shape.clone(), ElementType::I64, bytes)
        };
        vec![
            ("input_ids".to_string(), tensor(&self.ids)),
            ("attention_mask".to_string(), tensor(&self.mask)),
            ("token_type_ids".to_string(), tensor(&self.types)),
        ]
    }

    /// Tokens in the texts, padding excluded.
    fn tokens(&self) -> u32 {
        self.mask.iter().filter(|&&m| m != 0).count() as u32
    }

    /// Each row's hidden states averaged over its tokens, then L2-normalised.
    fn pool(&self, hidden: &TensorData) -> Result<Vec<Vec<f32>>, Error> {
        let [rows, seq, width] = hidden.shape[..] else {
            return Err(Error::RuntimeError(format!(
                "expected a [batch, seq, hidden] output, got {:?}",
                hidden.shape
            )));
        };
        if hidden.ty != ElementType::F32 || (rows as usize, seq as usize) != (self.rows, self.seq) {
            return Err(Error::RuntimeError(format!(
                "output {:?} {:?} does not fit {} texts of {} tokens",
                hidden.ty, hidden.shape, self.rows, self.seq
            )));
        }
        let width = width as usize;
        let values: Vec<f32> =
            hidden.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        Ok((0..self.rows)
            .map(|row| {
                let mut sum = vec![0f32; width];
                let mut count = 0f32;
                for t in (0..self.seq).filter(|&t| self.mask[row * self.seq + t] != 0) {
                    let token = &values[(row * self.seq + t) * width..][..width];
                    sum.iter_mut().zip(token).for_each(|(s, v)| *s += v);
                    count += 1.0;
                }
                sum.iter_mut().for_each(|s| *s /= count.max(1.0));
                let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|s| *s /= norm);
                sum
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
