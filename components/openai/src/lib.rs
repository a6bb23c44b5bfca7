//! The OpenAI embeddings API (`POST /v1/embeddings`, `GET /v1/models`), so that the official
//! `openai` clients and what is built on them (LangChain, LlamaIndex, Spin's `open_ai` remote LLM
//! API) work unchanged. Mounted at `/v1/...`; the same model and tokenizer as `/embed`.
//!
//! Configuration comes from the component's `environment` in spin.toml (see docs/configuration.md):
//! `MODEL_NAMES` (the names `model` may take, comma-separated; /v1/models lists them all),
//! `API_KEY` (when set, requests must carry `Authorization: Bearer API_KEY`), `MAX_INPUTS`, and
//! the model settings every handler reads.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use spin_sdk::http::{FullBody, IntoResponse, Method, Request, Response, StatusCode};
use spin_sdk::http_service;
use text_handler::{ApiError, EmbedOptions, Embedder, Inputs, Reused, Timings, Truncation};

mod errors;

use errors::OpenAiError;

thread_local! {
    /// Built on the instance's first request, reused by every later one.
    static MODEL: Reused<Embedder> = const { Reused::new() };
}

/// OpenAI's limit on inputs per request; they are computed `MAX_BATCH_INPUTS` at a time.
const DEFAULT_MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings` body.
#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: Inputs,
    model: String,
    #[serde(default)]
    encoding_format: EncodingFormat,
    #[serde(default)]
    dimensions: Option<u32>,
    /// Accepted for compatibility; not used.
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian float32 values, base64-encoded.
    Base64,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

async fn embeddings(
    embedder: &Embedder,
    request: EmbeddingsRequest,
    timings: &mut Timings,
) -> Result<(EmbeddingsResponse, u64), OpenAiError> {
    if !text_handler::model_names().contains(&request.model) {
        return Err(OpenAiError::model_not_found(&request.model));
    }
    let max_inputs = text_handler::var("MAX_INPUTS", "").parse().unwrap_or(DEFAULT_MAX_INPUTS);
    let batch = request.input.validate(max_inputs).map_err(|e| OpenAiError::from(e).param("input"))?;
    // The model's default prompt, as TEI applies it on every route (OpenAI's has no prompt_name).
    let batch = embedder.prompts.apply(None, batch)?;
    let options =
        EmbedOptions { truncation: Truncation::REFUSE, normalize: true, dimensions: request.dimensions };
    let embedded = embedder.model.embed(&batch, options, timings).await.map_err(|e| {
        let param = e.field().unwrap_or("input");
        OpenAiError::from(e).param(param)
    })?;
    let tokens = embedded.tokens;
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: match request.encoding_format {
                EncodingFormat::Float => Embedding::Float(vector),
                EncodingFormat::Base64 => Embedding::Base64(base64_floats(&vector)),
            },
        })
        .collect();
    let usage = Usage { prompt_tokens: tokens, total_tokens: tokens };
    Ok((EmbeddingsResponse { object: "list", data, model: request.model, usage }, tokens))
}

/// OpenAI's `base64` encoding: the float32 values' little-endian bytes.
fn base64_floats(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn model_object(name: &str) -> serde_json::Value {
    json!({"id": name, "object": "model", "created": 0, "owned_by": "edgeinfer"})
}

/// `GET /v1/models` and `GET /v1/models/NAME`.
fn models(name: Option<&str>) -> Result<serde_json::Value, OpenAiError> {
    let names = text_handler::model_names();
    match name {
        None => {
            Ok(json!({"object": "list", "data": names.iter().map(|n| model_object(n)).collect::<Vec<_>>()}))
        }
        Some(name) if names.iter().any(|n| n == name) => Ok(model_object(name)),
        Some(name) => Err(OpenAiError::model_not_found(name)),
    }
}

/// Equal bytes, compared in time that does not depend on where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

/// The bearer token check, when `API_KEY` is set.
fn authorize(request: &Request) -> Result<(), OpenAiError> {
    let key = text_handler::var("API_KEY", "");
    let key = key.trim();
    if key.is_empty() {
        return Ok(());
    }
    let sent = request.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| {
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match sent {
        Some(token) if same_secret(token.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(OpenAiError::invalid_api_key("Incorrect API key provided.")),
        None => Err(OpenAiError::invalid_api_key(
            "You didn't provide an API key. Send it as `Authorization: Bearer KEY`.",
        )),
    }
}

async fn answer(
    request: Request,
    timings: &mut Timings,
) -> Result<Response<FullBody<bytes::Bytes>>, OpenAiError> {
    authorize(&request)?;
    let path = request.uri().path().trim_end_matches('/').to_string();
    let rest = path.split_once("/v1").map_or(path.as_str(), |(_, rest)| rest);
    match rest {
        "/embeddings" => {
            let request = text_handler::read_request::<EmbeddingsRequest>(request).await?;
            let embedder = MODEL.with(|model| model.get_or_try_init(Embedder::load))?;
            let (response, tokens) = embeddings(&embedder, request, timings).await?;
            Ok(text_handler::json_ok_with_tokens(&response, tokens))
        }
        _ if rest == "/models" || rest.starts_with("/models/") => {
            if request.method() != Method::GET {
                return Err(ApiError::method_not_allowed_here(request.method().as_str(), "GET").into());
            }
            let name = rest.strip_prefix("/models/");
            Ok(text_handler::json_response(StatusCode::OK, &models(name)?))
        }
        _ => Err(ApiError::not_found(format!(
            "no route {path}; this API serves POST /v1/embeddings and GET /v1/models"
        ))
        .into()),
    }
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let mut timings = Timings::start();
    match answer(request, &mut timings).await {
        Ok(response) => timings.add_headers(response),
        Err(error) => timings.add_headers(error.into_response()),
    }
}

/// This handler's part of the OpenAPI document, in a custom section the host reads (`/docs`).
#[used]
#[unsafe(link_section = "edgeinfer:openapi")]
static OPENAPI: [u8; include_bytes!("../openapi.json").len()] = *include_bytes!("../openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"sk-123", b"sk-123"));
        assert!(!same_secret(b"sk-123", b"sk-124"));
        assert!(!same_secret(b"sk-12", b"sk-123"));
    }

    #[test]
    fn base64_is_little_endian_float32() {
        // 1.0f32 = 0x3f800000, little-endian 00 00 80 3f.
        assert_eq!(base64_floats(&[1.0]), "AACAPw==");
        assert_eq!(base64_floats(&[]), "");
    }
}
