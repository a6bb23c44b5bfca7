//! `POST /embed` (TEI shape): validate JSON, tokenize through the composed tokenizer component,
//! run the model through wasi:nn, mean-pool over the attention mask and L2-normalise.
//!
//! Configuration comes from the component's `environment` in spin.toml (see README).

use std::cell::OnceCell;

use serde::Deserialize;
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use text_handler::{ApiError, Inputs, Settings, TextModel, json_response};

mod pooling;

thread_local! {
    /// Built on the instance's first request, reused by every later one.
    static MODEL: OnceCell<Result<TextModel, ApiError>> = const { OnceCell::new() };
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

fn embed(model: &TextModel, request: EmbedRequest) -> Result<Vec<Vec<f32>>, ApiError> {
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
    Ok(pooling::mean_pool(&out.values, &masks, width as usize, request.normalize))
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let result = match text_handler::read_request::<EmbedRequest>(request).await {
        Ok(request) => MODEL.with(|cell| {
            match cell.get_or_init(|| TextModel::load(Settings::from_env("minilm", "last_hidden_state"))) {
                Ok(model) => embed(model, request),
                Err(e) => Err(e.clone()),
            }
        }),
        Err(e) => Err(e),
    };
    match result {
        Ok(vectors) => json_response(StatusCode::OK, &vectors),
        Err(error) => error.into_response(),
    }
}
