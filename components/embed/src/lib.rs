//! `POST /embed` (TEI shape): validate JSON, tokenize through the composed tokenizer component,
//! run the model through wasi:nn, mean-pool over the attention mask and L2-normalise.
//!
//! The same route also speaks Spin's default remote LLM API, so that a Spin app run by Spin with
//! `[llm_compute] type = "remote_http"` gets its embeddings here: Spin posts `{model, input}` to
//! `{url}/embed` (whatever path `url` has) and reads `{embeddings, usage: {promptTokenCount}}`.
//! The two bodies cannot be confused: TEI's has `inputs`, Spin's `model` and `input`.
//!
//! Configuration comes from the component's `environment` in spin.toml (see README).

use serde::Deserialize;
use serde_json::{Value, json};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use text_handler::{
    ApiError, ContentType, EmbedOptions, Embeddings, Inputs, Reused, Settings, TextModel, Truncation,
    TruncationDirection, json_ok_with_tokens,
};

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
    #[serde(default)]
    truncation_direction: Direction,
    /// Matryoshka: keep the first `dimensions` values of each vector.
    #[serde(default)]
    dimensions: Option<u32>,
}

/// TEI's spelling of a truncation direction.
#[derive(Deserialize, Default, Clone, Copy)]
enum Direction {
    #[default]
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

fn default_true() -> bool {
    true
}

impl EmbedRequest {
    fn options(&self) -> EmbedOptions {
        let direction = match self.truncation_direction {
            Direction::Right => TruncationDirection::Right,
            Direction::Left => TruncationDirection::Left,
        };
        EmbedOptions {
            truncation: Truncation { enabled: self.truncate, direction },
            normalize: self.normalize,
            dimensions: self.dimensions,
        }
    }
}

/// The body of Spin's remote `generate-embeddings` call.
#[derive(Deserialize)]
struct SpinEmbedRequest {
    model: String,
    input: Vec<String>,
}

/// The embeddings and the tokens computed.
fn embed(model: &TextModel, request: EmbedRequest) -> Result<Embeddings, ApiError> {
    let options = request.options();
    let batch = request.inputs.validate(model.settings.max_batch_inputs)?;
    model.embed(&batch, options)
}

/// Spin's remote `generate-embeddings`: normalised mean-pooled vectors, as Spin's own engine
/// computes them, for a model named in `MODEL_NAMES`.
fn spin_embed(model: &TextModel, request: SpinEmbedRequest) -> Result<(Value, u64), ApiError> {
    let names = text_handler::var("MODEL_NAMES", "all-minilm-l6-v2");
    if !names.split(',').any(|name| name.trim() == request.model) {
        return Err(ApiError::not_found(format!(
            "no embedding model {:?}; this app serves {names}",
            request.model
        )));
    }
    let options = EmbedOptions { truncation: Truncation::REFUSE, normalize: true, dimensions: None };
    let batch = Inputs::Many(request.input).validate(model.settings.max_batch_inputs)?;
    let embedded = model.embed(&batch, options)?;
    let body = json!({"embeddings": embedded.vectors, "usage": {"promptTokenCount": embedded.tokens}});
    Ok((body, embedded.tokens))
}

/// Which API a body speaks.
enum Call {
    Tei(EmbedRequest),
    Spin(SpinEmbedRequest),
}

/// Parses a body by its shape. Spin's client sets no content-type: only its calls may omit it.
fn parse(body: Value, content_type_declared: bool) -> Result<Call, ApiError> {
    let invalid = |e: serde_json::Error| ApiError::validation(format!("invalid request: {e}"));
    let spin_shaped =
        body.get("inputs").is_none() && body.get("model").is_some() && body.get("input").is_some();
    if spin_shaped {
        serde_json::from_value(body).map(Call::Spin).map_err(invalid)
    } else if !content_type_declared {
        Err(ApiError::unsupported_media_type(""))
    } else {
        serde_json::from_value(body).map(Call::Tei).map_err(invalid)
    }
}

fn model() -> Result<std::rc::Rc<TextModel>, ApiError> {
    MODEL.with(|model| {
        model.get_or_try_init(|| TextModel::load(Settings::from_env("minilm", "last_hidden_state")))
    })
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let declared = request.headers().contains_key("content-type");
    let body = text_handler::read_json_object(request, ContentType::JsonIfAbsent).await.map_err(|e| {
        // Without a content-type, only a JSON body of Spin's shape is taken.
        if declared || e.error_type() != "Validation" { e } else { ApiError::unsupported_media_type("") }
    });
    let call = body.and_then(|body| parse(body, declared));
    let answer = call.and_then(|call| {
        let model = model()?;
        match call {
            Call::Tei(request) => embed(&model, request)
                .map(|embeddings| json_ok_with_tokens(&embeddings.vectors, embeddings.tokens)),
            Call::Spin(request) => {
                spin_embed(&model, request).map(|(body, tokens)| json_ok_with_tokens(&body, tokens))
            }
        }
    });
    match answer {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// This handler's part of the OpenAPI document, in a custom section the host reads (`/docs`).
#[used]
#[unsafe(link_section = "edgeinfer:openapi")]
static OPENAPI: [u8; include_bytes!("../openapi.json").len()] = *include_bytes!("../openapi.json");
