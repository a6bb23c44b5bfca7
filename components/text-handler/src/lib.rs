//! Building blocks shared by the HTTP handler components (`embed`, `classify`, `openai`): the JSON
//! request and error contract, input validation, text → tokenizer component → the model
//! (`edgeinfer:nn/infer`) → output tensor, and sentence embeddings from it.
//!
//! Settings come from the component's `environment` in spin.toml (see docs/configuration.md).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::Value;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, Request, Response, StatusCode};

wit_bindgen::generate!({
    world: "nn-handler",
    path: "../../wit",
    generate_all,
});

use edgeinfer::nn::infer::{self, Tensor, TensorType};
use edgeinfer::text::tokenize::{EncodeOptions, Tokenizer};
pub use edgeinfer::text::tokenize::{Token, TruncationDirection};

mod error;
mod inputs;
pub mod pooling;
mod prompts;
mod response;
mod timings;

pub use error::{ApiError, ErrorKind};
pub use inputs::{Batch, Inputs, check_text};
pub use prompts::Prompts;
pub use response::json_response;
pub use timings::Timings;

/// Settings every handler reads from its environment; `defaults` are the handler's own.
pub struct Settings {
    /// Where the `files` mount puts tokenizer.json (`TOKENIZER_PATH`).
    pub tokenizer_path: String,
    /// The model's name, listed in the component's `ai_models` (`MODEL`).
    pub model: String,
    /// The model output the handler reads (`MODEL_OUTPUT`).
    pub output: String,
    /// Longest input accepted, in tokens, special tokens included (`MAX_INPUT_TOKENS`).
    pub max_input_tokens: u32,
    /// Most inputs accepted in one request (`MAX_BATCH_INPUTS`).
    pub max_batch_inputs: usize,
    /// Whether the model takes `token_type_ids` (`MODEL_TOKEN_TYPES`, default true): BERT-family
    /// models do, MPNet and RoBERTa-family models do not.
    pub token_types: bool,
}

impl Settings {
    /// Reads the environment, falling back to the given model and output names.
    pub fn from_env(default_model: &str, default_output: &str) -> Settings {
        Settings {
            tokenizer_path: var("TOKENIZER_PATH", "/model/tokenizer.json"),
            model: var("MODEL", default_model),
            output: var("MODEL_OUTPUT", default_output),
            max_input_tokens: var("MAX_INPUT_TOKENS", "256").parse().unwrap_or(256),
            max_batch_inputs: var("MAX_BATCH_INPUTS", "32").parse().unwrap_or(32),
            token_types: flag(&var("MODEL_TOKEN_TYPES", "true")),
        }
    }
}

/// An on/off setting: off when it says `false`, `0`, `no` or `off` (any case), on otherwise.
pub fn flag(value: &str) -> bool {
    !matches!(value.trim().to_ascii_lowercase().as_str(), "false" | "0" | "no" | "off")
}

/// The names the served model answers to (`MODEL_NAMES`, comma-separated; the first is its
/// served name).
pub fn model_names() -> Vec<String> {
    var("MODEL_NAMES", "all-minilm-l6-v2")
        .split(',')
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// An embedding handler's model (`MODEL`, output `last_hidden_state` by default) and the prompts
/// of its sentence-transformers configuration (`PROMPTS_PATH`), built once per instance.
pub struct Embedder {
    pub model: TextModel,
    pub prompts: Prompts,
}

impl Embedder {
    pub fn load() -> Result<Embedder, ApiError> {
        let model = TextModel::load(Settings::from_env("minilm", "last_hidden_state"))?;
        let prompts = Prompts::load(&var("PROMPTS_PATH", "/model/config_sentence_transformers.json"))?;
        Ok(Embedder { model, prompts })
    }
}

/// An environment variable, or its default.
pub fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The tokenizer, built once per instance, and the model it feeds.
pub struct TextModel {
    pub settings: Settings,
    tokenizer: Tokenizer,
}

/// One model output for a batch of texts.
pub struct Inference {
    /// The output's dimensions; the first is the batch.
    pub shape: Vec<u32>,
    /// Its FP32 values in row-major order.
    pub values: Vec<f32>,
    /// Each text's attention mask (1 for tokens, 0 for padding), all of the padded length.
    pub masks: Vec<Vec<u32>>,
}

impl TextModel {
    /// Reads and parses the tokenizer file. The model is the host's (or the provider's): a
    /// missing or unavailable one is reported by each request's computation.
    pub fn load(settings: Settings) -> Result<TextModel, ApiError> {
        let json = std::fs::read(&settings.tokenizer_path).map_err(|e| {
            ApiError::internal(format!("cannot read tokenizer {}: {e}", settings.tokenizer_path))
        })?;
        let tokenizer = Tokenizer::from_json(&json)
            .map_err(|e| ApiError::internal(format!("cannot parse tokenizer: {e:?}")))?;
        Ok(TextModel { settings, tokenizer })
    }

    /// Encodes `batch` (padded to the longest; cut at the token limit only when
    /// `truncation.enabled`, else an over-long input is a validation error), runs the model and
    /// returns its output.
    pub async fn infer(
        &self,
        batch: &Batch,
        truncation: Truncation,
        timings: &mut Timings,
    ) -> Result<Inference, ApiError> {
        let encodings = timings.tokenization(|| match batch {
            Batch::Texts(texts) => self.encode_texts(texts, truncation),
            Batch::Ids(ids) => self.encode_ids(ids, truncation),
        })?;
        timings.inference(self.run(encodings)).await
    }

    fn encode_texts(&self, texts: &[String], truncation: Truncation) -> Result<Vec<Encoded>, ApiError> {
        let encodings = self.tokenizer.encode_batch(texts, self.encode_options(truncation));
        self.checked(encodings, truncation)
    }

    /// Text pairs (a query and a passage) as one sequence each, for a cross-encoder.
    fn encode_pairs(
        &self,
        pairs: &[(String, String)],
        truncation: Truncation,
    ) -> Result<Vec<Encoded>, ApiError> {
        let encodings = self.tokenizer.encode_pairs(pairs, self.encode_options(truncation));
        self.checked(encodings, truncation)
    }

    fn encode_options(&self, truncation: Truncation) -> EncodeOptions {
        EncodeOptions {
            add_special_tokens: true,
            max_length: truncation.enabled.then_some(self.settings.max_input_tokens),
            truncation_direction: truncation.direction,
            pad_to_longest: true,
        }
    }

    /// The tokenizer's encodings, refused when one is over the limit and truncation is off.
    fn checked(
        &self,
        encodings: Result<Vec<edgeinfer::text::tokenize::Encoding>, edgeinfer::text::tokenize::Error>,
        truncation: Truncation,
    ) -> Result<Vec<Encoded>, ApiError> {
        let max_tokens = self.settings.max_input_tokens;
        let encodings = encodings.map_err(|e| ApiError::validation(format!("tokenization failed: {e:?}")))?;
        for (i, e) in encodings.iter().enumerate() {
            if !truncation.enabled && e.length_before_truncation > max_tokens {
                return Err(too_long(i, e.length_before_truncation, max_tokens));
            }
        }
        Ok(encodings
            .into_iter()
            .map(|e| Encoded { ids: e.ids, attention_mask: e.attention_mask, type_ids: e.type_ids })
            .collect())
    }

    /// Runs the model on text pairs (see `encode-pairs`): a cross-encoder's scores.
    pub async fn infer_pairs(
        &self,
        pairs: &[(String, String)],
        truncation: Truncation,
        timings: &mut Timings,
    ) -> Result<Inference, ApiError> {
        let encodings = timings.tokenization(|| self.encode_pairs(pairs, truncation))?;
        timings.inference(self.run(encodings)).await
    }

    /// Token ids as the client sent them (no special tokens added), checked against the
    /// vocabulary and the limit, cut and padded like texts.
    fn encode_ids(&self, batch: &[Vec<u32>], truncation: Truncation) -> Result<Vec<Encoded>, ApiError> {
        let max_tokens = self.settings.max_input_tokens as usize;
        let vocabulary = self.tokenizer.vocab_size();
        let mut encodings = Vec::with_capacity(batch.len());
        for (i, ids) in batch.iter().enumerate() {
            if let Some(id) = ids.iter().find(|&&id| id >= vocabulary) {
                return Err(ApiError::validation(format!(
                    "input {i} has token id {id}, outside the vocabulary of {vocabulary} tokens"
                )));
            }
            let ids = match ids.len() {
                n if n <= max_tokens => ids.clone(),
                n if !truncation.enabled => return Err(too_long(i, n as u32, max_tokens as u32)),
                n => match truncation.direction {
                    TruncationDirection::Right => ids[..max_tokens].to_vec(),
                    TruncationDirection::Left => ids[n - max_tokens..].to_vec(),
                },
            };
            let n = ids.len();
            encodings.push(Encoded { ids, attention_mask: vec![1; n], type_ids: vec![0; n] });
        }
        let longest = encodings.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let pad = self.tokenizer.pad_id();
        for e in &mut encodings {
            let missing = longest - e.ids.len();
            e.ids.extend(std::iter::repeat_n(pad, missing));
            e.attention_mask.extend(std::iter::repeat_n(0, missing));
            e.type_ids.extend(std::iter::repeat_n(0, missing));
        }
        Ok(encodings)
    }

    /// Runs the model on encoded, equally long sequences. The wait for the model (its batch
    /// queue included) leaves this instance free to serve other requests.
    async fn run(&self, encodings: Vec<Encoded>) -> Result<Inference, ApiError> {
        let batch = encodings.len() as u32;
        let seq = encodings.first().map_or(0, |e| e.ids.len()) as u32;
        let dims = [batch, seq];
        let ids = int64_tensor(&dims, encodings.iter().flat_map(|e| e.ids.iter()));
        let mask = int64_tensor(&dims, encodings.iter().flat_map(|e| e.attention_mask.iter()));
        let mut inputs = vec![("input_ids".to_string(), ids), ("attention_mask".to_string(), mask)];
        if self.settings.token_types {
            let types = int64_tensor(&dims, encodings.iter().flat_map(|e| e.type_ids.iter()));
            inputs.push(("token_type_ids".to_string(), types));
        }
        let model = &self.settings.model;
        let output = &self.settings.output;
        let outputs = infer::compute(model.clone(), inputs, vec![output.clone()]).await.map_err(|e| {
            let message = format!("computing on model {model:?}: {e:?}");
            match e {
                infer::Error::Overloaded(_) => ApiError::overloaded(message),
                infer::Error::Unavailable(_) => ApiError::unavailable(message),
                _ => ApiError::backend(message),
            }
        })?;
        let (_, tensor) = outputs
            .into_iter()
            .find(|(name, _)| name == output)
            .ok_or_else(|| ApiError::backend(format!("model has no output {output:?}")))?;
        if tensor.ty != TensorType::Fp32 {
            return Err(ApiError::backend(format!("model output {output:?} is not FP32")));
        }
        let shape = tensor.dimensions;
        if shape.first() != Some(&batch) {
            return Err(ApiError::backend(format!(
                "output shape {shape:?} does not match a batch of {batch}"
            )));
        }
        let values = f32_from_le_bytes(&tensor.data);
        if values.len() != shape.iter().map(|&d| d as usize).product::<usize>() {
            return Err(ApiError::backend(format!("output data does not match its shape {shape:?}")));
        }
        let masks = encodings.into_iter().map(|e| e.attention_mask).collect();
        Ok(Inference { shape, values, masks })
    }

    /// One text's tokens with their spelling (see the WIT `tokens`).
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>, ApiError> {
        self.tokenizer
            .tokens(text, add_special_tokens)
            .map_err(|e| ApiError::validation(format!("tokenization failed: {e:?}")))
    }

    /// Text back from token ids.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, ApiError> {
        use edgeinfer::text::tokenize::Error;
        self.tokenizer.decode(ids, skip_special_tokens).map_err(|e| match e {
            Error::InvalidOptions(message) => ApiError::validation(message),
            other => ApiError::validation(format!("decoding failed: {other:?}")),
        })
    }

    /// Sentence embeddings: the model's per-token output mean-pooled over each input's tokens,
    /// cut to `dimensions` (Matryoshka) and L2-normalised when `normalize`. Batches larger than
    /// `MAX_BATCH_INPUTS` are computed in parts of that size, in order.
    pub async fn embed(
        &self,
        batch: &Batch,
        options: EmbedOptions,
        timings: &mut Timings,
    ) -> Result<Embeddings, ApiError> {
        let mut all =
            Embeddings { vectors: Vec::with_capacity(batch.len()), tokens: 0, tokens_per_input: Vec::new() };
        for part in batch.parts(self.settings.max_batch_inputs.max(1)) {
            let out = self.infer(&part, options.truncation, timings).await?;
            let width = out.token_width()?;
            if let Some(dimensions) = options.dimensions
                && (dimensions == 0 || dimensions as usize > width)
            {
                return Err(ApiError::validation(format!(
                    "`dimensions` must be between 1 and the model's {width}, got {dimensions}"
                ))
                .on_field("dimensions"));
            }
            let masks: Vec<&[u32]> = out.masks.iter().map(Vec::as_slice).collect();
            let keep = options.dimensions.map_or(width, |d| d as usize);
            all.vectors.extend(pooling::mean_pool(&out.values, &masks, width, keep, options.normalize));
            all.tokens += out.tokens();
            all.tokens_per_input.extend(out.tokens_per_input());
        }
        Ok(all)
    }

    /// Every input's per-token output vectors (padding excluded, special tokens included), as
    /// TEI's `/embed_all` answers them; and the tokens computed.
    pub async fn embed_all(
        &self,
        batch: &Batch,
        truncation: Truncation,
        timings: &mut Timings,
    ) -> Result<(Vec<TokenVectors>, u64), ApiError> {
        let mut all = Vec::with_capacity(batch.len());
        let mut tokens = 0;
        for part in batch.parts(self.settings.max_batch_inputs.max(1)) {
            let out = self.infer(&part, truncation, timings).await?;
            let width = out.token_width()?;
            tokens += out.tokens();
            for (row, mask) in out.masks.iter().enumerate() {
                let seq = mask.len();
                let vectors = (0..seq)
                    .filter(|&t| mask[t] != 0)
                    .map(|t| out.values[(row * seq + t) * width..][..width].to_vec())
                    .collect();
                all.push(vectors);
            }
        }
        Ok((all, tokens))
    }
}

/// One input's per-token vectors.
pub type TokenVectors = Vec<Vec<f32>>;

/// The inputs' sentence vectors.
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens computed on, padding excluded.
    pub tokens: u64,
    pub tokens_per_input: Vec<u64>,
}

/// How `TextModel::embed` pools.
#[derive(Clone, Copy)]
pub struct EmbedOptions {
    pub truncation: Truncation,
    pub normalize: bool,
    /// Keep only the first `dimensions` values of each vector (before normalising).
    pub dimensions: Option<u32>,
}

/// What to do with inputs longer than the model's limit.
#[derive(Clone, Copy)]
pub struct Truncation {
    /// Cut them (else they are refused).
    pub enabled: bool,
    pub direction: TruncationDirection,
}

impl Truncation {
    /// Refuse over-long inputs.
    pub const REFUSE: Truncation = Truncation { enabled: false, direction: TruncationDirection::Right };

    /// Cut at the end when `enabled`.
    pub fn right(enabled: bool) -> Truncation {
        Truncation { enabled, direction: TruncationDirection::Right }
    }
}

/// One sequence ready for the model.
struct Encoded {
    ids: Vec<u32>,
    attention_mask: Vec<u32>,
    type_ids: Vec<u32>,
}

fn too_long(input: usize, tokens: u32, limit: u32) -> ApiError {
    ApiError::validation(format!(
        "input {input} is {tokens} tokens long, more than the limit of {limit}; \
         shorten it or send \"truncate\": true"
    ))
}

impl Inference {
    /// Tokens the model computed on, padding excluded.
    pub fn tokens(&self) -> u64 {
        self.tokens_per_input().iter().sum()
    }

    /// Each input's tokens, padding excluded.
    pub fn tokens_per_input(&self) -> Vec<u64> {
        self.masks.iter().map(|mask| mask.iter().map(|&m| u64::from(m)).sum()).collect()
    }

    /// The width of a `[batch, seq, width]` per-token output, checked against the masks.
    pub fn token_width(&self) -> Result<usize, ApiError> {
        let seq = self.masks.first().map_or(0, Vec::len) as u32;
        let [_, s, width] = self.shape[..] else {
            return Err(ApiError::backend(format!(
                "expected a [batch, seq, hidden] output, got {:?}",
                self.shape
            )));
        };
        if s != seq {
            return Err(ApiError::backend(format!(
                "output shape {:?} does not match {seq} tokens",
                self.shape
            )));
        }
        Ok(width as usize)
    }
}

/// Something an instance builds once and reuses across requests (a model, a classifier). Only
/// success is kept: after a failure (say, a file missing) the next request tries again. `init` is
/// synchronous, so concurrent requests of one instance never build it twice.
pub struct Reused<T>(RefCell<Option<Rc<T>>>);

impl<T> Reused<T> {
    pub const fn new() -> Reused<T> {
        Reused(RefCell::new(None))
    }

    /// The value, built by `init` if there is none yet.
    pub fn get_or_try_init(&self, init: impl FnOnce() -> Result<T, ApiError>) -> Result<Rc<T>, ApiError> {
        if let Some(value) = self.0.borrow().as_ref() {
            return Ok(value.clone());
        }
        let value = Rc::new(init()?);
        *self.0.borrow_mut() = Some(value.clone());
        Ok(value)
    }
}

impl<T> Default for Reused<T> {
    fn default() -> Reused<T> {
        Reused::new()
    }
}

fn int64_tensor<'a>(dims: &[u32], values: impl Iterator<Item = &'a u32>) -> Tensor {
    let data: Vec<u8> = values.flat_map(|&v| i64::from(v).to_le_bytes()).collect();
    Tensor { dimensions: dims.to_vec(), ty: TensorType::I64, data }
}

/// Little-endian f32 values (tensor data).
pub fn f32_from_le_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Checks method and content type, reads the body and parses it as a JSON object into `T`.
pub async fn read_request<T: DeserializeOwned>(request: Request) -> Result<T, ApiError> {
    let value = read_json_object(request, ContentType::Required).await?;
    serde_json::from_value(value).map_err(|e| ApiError::validation(format!("invalid request: {e}")))
}

/// Whether a request must say its body is JSON.
#[derive(Clone, Copy, PartialEq)]
pub enum ContentType {
    /// `content-type: application/json` (parameters allowed), else 415.
    Required,
    /// As `Required`, but a request with no content-type at all is read as JSON too (clients
    /// that never set one, like Spin's remote LLM client).
    JsonIfAbsent,
}

/// Checks method and content type, reads the body and parses it as a JSON object.
pub async fn read_json_object(request: Request, content_type: ContentType) -> Result<Value, ApiError> {
    if request.method() != spin_sdk::http::Method::POST {
        return Err(ApiError::method_not_allowed(request.method().as_str()));
    }
    let absent = !request.headers().contains_key("content-type");
    if !(absent && content_type == ContentType::JsonIfAbsent) {
        error::require_json_content_type(request.headers())?;
    }
    let body = request
        .into_body()
        .bytes()
        .await
        .map_err(|e| ApiError::validation(format!("cannot read body: {e:?}")))?;
    let value: Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::validation(format!("invalid JSON: {e}")))?;
    // serde would accept a positional array for a struct: the API takes objects only.
    if !value.is_object() {
        return Err(ApiError::validation("the request body must be a JSON object".into()));
    }
    Ok(value)
}

/// Response header with the number of tokens a request computed on (padding excluded); the
/// host logs it as the request's token count.
pub const TOKENS_HEADER: &str = "x-compute-tokens";

/// A 200 JSON response that reports the tokens computed.
pub fn json_ok_with_tokens(value: &impl serde::Serialize, tokens: u64) -> Response<FullBody<Bytes>> {
    let mut response = json_response(StatusCode::OK, value);
    response.headers_mut().insert(TOKENS_HEADER, tokens.into());
    response
}

/// A 200 response of JSON text already written, reporting the tokens computed.
pub fn json_body_ok_with_tokens(body: Vec<u8>, tokens: u64) -> Response<FullBody<Bytes>> {
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(FullBody::new(Bytes::from(body)))
        .expect("static response parts are valid");
    response.headers_mut().insert(TOKENS_HEADER, tokens.into());
    response
}

#[cfg(test)]
mod tests {
    use super::flag;

    #[test]
    fn flags_are_off_only_when_they_say_so() {
        for off in ["false", "False", "0", "no", "OFF", " false "] {
            assert!(!flag(off), "{off:?}");
        }
        for on in ["true", "1", "yes", ""] {
            assert!(flag(on), "{on:?}");
        }
    }
}
