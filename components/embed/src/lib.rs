//! `POST /embed` (TEI shape): validate JSON, tokenize through the composed tokenizer component,
//! run the model through wasi:nn, mean-pool over the attention mask and L2-normalise.
//!
//! Configuration comes from the component's `environment` in spin.toml (see README).

use serde::Deserialize;
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use text_handler::{ApiError, Inputs, Reused, Settings, TextModel, json_ok_with_tokens};

mod pooling;

thread_local! {
    /// Built on the instance's first request, reused by every later one.
    static MODEL: Reused<TextModel> = const { Reused::new() };
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

/// The embeddings and the tokens computed.
fn embed(model: &TextModel, request: EmbedRequest) -> Result<(Vec<Vec<f32>>, u64), ApiError> {
    let texts = request.inputs.validate(model.settings.max_batch_inputs)?;
    let out = model.infer(&texts, request.truncate)?;
    let seq = out.masks.first().map_or(0, Vec::len) as u32;
    let [_, s, width] = out.shape[..] else {
        return Err(ApiError::backend(format!(
            "expected a [batch, seq, hidden] output, got {:?}",
            out.shape
        )));
    };
    if s != seq {
        return Err(ApiError::backend(format!("output shape {:?} does not match {seq} tokens", out.shape)));
    }
    let masks: Vec<&[u32]> = out.masks.iter().map(Vec::as_slice).collect();
    Ok((pooling::mean_pool(&out.values, &masks, width as usize, request.normalize), out.tokens()))
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let result = match text_handler::read_request::<EmbedRequest>(request).await {
        Ok(request) => MODEL
            .with(|model| {
                model.get_or_try_init(|| TextModel::load(Settings::from_env("minilm", "last_hidden_state")))
            })
            .and_then(|model| embed(&model, request)),
        Err(e) => Err(e),
    };
    match result {
        Ok((vectors, tokens)) => json_ok_with_tokens(&vectors, tokens),
        Err(error) => error.into_response(),
    }
}

/// This handler's part of the OpenAPI document, in a custom section the host reads (`/docs`).
#[used]
#[unsafe(link_section = "edgeinfer:openapi")]
static OPENAPI: [u8; include_bytes!("../openapi.json").len()] = *include_bytes!("../openapi.json");
