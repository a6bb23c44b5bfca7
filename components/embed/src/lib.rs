//! `POST /embed` (TEI shape): validate JSON, tokenize through the composed tokenizer component,
//! run the model through wasi:nn, mean-pool over the attention mask and L2-normalise.
//!
//! Configuration comes from the component's `environment` in spin.toml (see README).

use std::cell::OnceCell;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use spin_sdk::http::body::IncomingBodyExt;
use spin_sdk::http::{FullBody, IntoResponse, Request, Response, StatusCode};
use spin_sdk::http_service;

wit_bindgen::generate!({
    world: "nn-handler",
    path: "../../wit",
    generate_all,
});

use edgeinfer::text::tokenize::{EncodeOptions, Tokenizer};
use wasi::nn::graph::{self, Graph};
use wasi::nn::inference::GraphExecutionContext;
use wasi::nn::tensor::{Tensor, TensorType};

mod config;
mod error;
mod pooling;

use config::Config;
use error::ApiError;

/// Everything built once per instance and reused by every request it serves.
struct Model {
    config: Config,
    tokenizer: Tokenizer,
    /// Kept alive for the execution context below.
    _graph: Graph,
    context: GraphExecutionContext,
}

thread_local! {
    static MODEL: OnceCell<Result<Model, ApiError>> = const { OnceCell::new() };
}

impl Model {
    fn load() -> Result<Model, ApiError> {
        let config = Config::from_env();
        let json = std::fs::read(&config.tokenizer_path).map_err(|e| {
            ApiError::internal(format!("cannot read tokenizer {}: {e}", config.tokenizer_path))
        })?;
        let tokenizer = Tokenizer::from_json(&json)
            .map_err(|e| ApiError::internal(format!("cannot parse tokenizer: {e:?}")))?;
        let graph = graph::load_by_name(&config.model).map_err(|e| {
            ApiError::backend(format!("wasi:nn load-by-name({}): {:?}: {}", config.model, e.code(), e.data()))
        })?;
        let context = graph
            .init_execution_context()
            .map_err(|e| ApiError::backend(format!("wasi:nn init-execution-context: {}", e.data())))?;
        Ok(Model { config, tokenizer, _graph: graph, context })
    }

    fn embed(&self, request: EmbedRequest) -> Result<Vec<Vec<f32>>, ApiError> {
        let texts = request.inputs.validate(self.config.max_batch_inputs)?;
        let max_tokens = self.config.max_input_tokens;
        let options = EncodeOptions {
            add_special_tokens: true,
            max_length: request.truncate.then_some(max_tokens),
            pad_to_longest: true,
        };
        let encodings = self
            .tokenizer
            .encode_batch(&texts, options)
            .map_err(|e| ApiError::validation(format!("tokenization failed: {e:?}")))?;
        for (i, e) in encodings.iter().enumerate() {
            if !request.truncate && e.length_before_truncation > max_tokens {
                return Err(ApiError::validation(format!(
                    "input {i} is {} tokens long, more than the limit of {max_tokens}; \
                     shorten it or send \"truncate\": true",
                    e.length_before_truncation
                )));
            }
        }
        let batch = encodings.len() as u32;
        let seq = encodings.first().map_or(0, |e| e.ids.len()) as u32;
        let dims = [batch, seq];
        let ids = int64_tensor(&dims, encodings.iter().flat_map(|e| e.ids.iter()));
        let mask = int64_tensor(&dims, encodings.iter().flat_map(|e| e.attention_mask.iter()));
        let types = int64_tensor(&dims, encodings.iter().flat_map(|e| e.type_ids.iter()));
        let inputs = vec![
            ("input_ids".to_string(), ids),
            ("attention_mask".to_string(), mask),
            ("token_type_ids".to_string(), types),
        ];
        let outputs = self
            .context
            .compute(inputs)
            .map_err(|e| ApiError::backend(format!("wasi:nn compute: {:?}: {}", e.code(), e.data())))?;
        let (_, hidden) = outputs
            .into_iter()
            .find(|(name, _)| *name == self.config.output)
            .ok_or_else(|| ApiError::backend(format!("model has no output {:?}", self.config.output)))?;
        if hidden.ty() != TensorType::Fp32 {
            return Err(ApiError::backend("model output is not FP32".into()));
        }
        let shape = hidden.dimensions();
        let [b, s, h] = shape[..] else {
            return Err(ApiError::backend(format!("expected a [batch, seq, hidden] output, got {shape:?}")));
        };
        if b != batch || s != seq {
            return Err(ApiError::backend(format!(
                "output shape {shape:?} does not match input [{batch}, {seq}]"
            )));
        }
        let hidden_states = pooling::f32_from_le_bytes(&hidden.data());
        let masks: Vec<&[u32]> = encodings.iter().map(|e| e.attention_mask.as_slice()).collect();
        Ok(pooling::mean_pool(&hidden_states, &masks, h as usize, request.normalize))
    }
}

fn int64_tensor<'a>(dims: &[u32], values: impl Iterator<Item = &'a u32>) -> Tensor {
    let data: Vec<u8> = values.flat_map(|&v| i64::from(v).to_le_bytes()).collect();
    Tensor::new(dims, TensorType::I64, &data)
}

/// TEI's `/embed` request body.
#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(default)]
    truncate: bool,
}

fn default_true() -> bool {
    true
}

/// One text or a batch of texts.
#[derive(Deserialize)]
#[serde(untagged)]
enum Inputs {
    One(String),
    Many(Vec<String>),
}

impl Inputs {
    fn validate(self, max_inputs: usize) -> Result<Vec<String>, ApiError> {
        let texts = match self {
            Inputs::One(text) => vec![text],
            Inputs::Many(texts) => texts,
        };
        if texts.is_empty() {
            return Err(ApiError::validation("`inputs` must not be empty".into()));
        }
        if texts.len() > max_inputs {
            return Err(ApiError::validation(format!(
                "{} inputs sent, at most {max_inputs} are allowed per request",
                texts.len()
            )));
        }
        for (i, text) in texts.iter().enumerate() {
            if text.trim().is_empty() {
                return Err(ApiError::validation(format!("input {i} is empty")));
            }
            // Tab, newline and carriage return are text; other control characters are not.
            if let Some(c) = text.chars().find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
                return Err(ApiError::validation(format!(
                    "input {i} contains the control character U+{:04X}",
                    c as u32
                )));
            }
        }
        Ok(texts)
    }
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    match serve(request).await {
        Ok(vectors) => json_response(StatusCode::OK, &vectors),
        Err(error) => error.into_response(),
    }
}

async fn serve(request: Request) -> Result<Vec<Vec<f32>>, ApiError> {
    if request.method() != spin_sdk::http::Method::POST {
        return Err(ApiError::method_not_allowed(request.method().as_str()));
    }
    error::require_json_content_type(request.headers())?;
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
    let embed_request: EmbedRequest =
        serde_json::from_value(value).map_err(|e| ApiError::validation(format!("invalid request: {e}")))?;
    MODEL.with(|cell| match cell.get_or_init(Model::load) {
        Ok(model) => model.embed(embed_request),
        Err(e) => Err(e.clone()),
    })
}

/// A JSON response with the given status.
fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<FullBody<Bytes>> {
    let body = serde_json::to_vec(value).expect("JSON values serialise");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(FullBody::new(Bytes::from(body)))
        .expect("static response parts are valid")
}
