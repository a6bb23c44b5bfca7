//! TEI's API on the embedding model: `POST /embed`, `/embed_all` (per-token vectors),
//! `/similarity`, `/rerank`, `/tokenize`, `/decode` and `GET /info`, one route each in spin.toml,
//! all served by this component: validate JSON, tokenize through the composed tokenizer component,
//! run the model through edgeinfer:nn/infer, mean-pool over the attention mask and L2-normalise.
//!
//! `/embed` also speaks Spin's default remote LLM API, so that a Spin app run by Spin with
//! `[llm_compute] type = "remote_http"` gets its embeddings here: Spin posts `{model, input}` to
//! `{url}/embed` (whatever path `url` has) and reads `{embeddings, usage: {promptTokenCount}}`.
//! The two bodies cannot be confused: TEI's has `inputs`, Spin's `model` and `input`.
//!
//! Configuration comes from the component's `environment` in spin.toml (see docs/configuration.md).

use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;
use spin_sdk::http::{IntoResponse, Method, Request};
use spin_sdk::http_service;
use text_handler::{
    ApiError, Batch, ContentType, EmbedOptions, Embedder, ErrorKind, Inputs, Reused, Settings, TextModel,
    Timings, Truncation, TruncationDirection, json_body_ok_with_tokens, pooling,
};

mod info;

thread_local! {
    /// Built on the instance's first request, reused by every later one.
    static MODEL: Reused<Embedder> = const { Reused::new() };
    /// The cross-encoder, when `RERANK_MODEL` names one; built on the first `/rerank`.
    static RERANKER: Reused<TextModel> = const { Reused::new() };
}

/// The cross-encoder `/rerank` uses: `RERANK_MODEL` (a model of `ai_models` whose
/// `RERANK_OUTPUT`, default `logits`, is `[pairs, 1]`), with `RERANK_TOKENIZER_PATH` (default: the
/// embedding model's tokenizer), `RERANK_MAX_INPUT_TOKENS` (default `MAX_INPUT_TOKENS`) and
/// `RERANK_TOKEN_TYPES` (default true: whether it takes `token_type_ids`).
fn reranker() -> Result<Option<Rc<TextModel>>, ApiError> {
    let model = text_handler::var("RERANK_MODEL", "");
    if model.is_empty() {
        return Ok(None);
    }
    let embedding = Settings::from_env("minilm", "last_hidden_state");
    let settings = Settings {
        tokenizer_path: text_handler::var("RERANK_TOKENIZER_PATH", &embedding.tokenizer_path),
        model,
        output: text_handler::var("RERANK_OUTPUT", "logits"),
        max_input_tokens: text_handler::var("RERANK_MAX_INPUT_TOKENS", "")
            .parse()
            .unwrap_or(embedding.max_input_tokens),
        max_batch_inputs: embedding.max_batch_inputs,
        token_types: text_handler::flag(&text_handler::var("RERANK_TOKEN_TYPES", "true")),
    };
    RERANKER.with(|reranker| reranker.get_or_try_init(|| TextModel::load(settings))).map(Some)
}

fn served() -> Result<Rc<Embedder>, ApiError> {
    MODEL.with(|served| served.get_or_try_init(Embedder::load))
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

/// How TEI requests say what to do with over-long inputs.
#[derive(Deserialize, Default, Clone, Copy)]
struct TruncateFields {
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    truncation_direction: Direction,
}

impl TruncateFields {
    fn truncation(self) -> Truncation {
        let direction = match self.truncation_direction {
            Direction::Right => TruncationDirection::Right,
            Direction::Left => TruncationDirection::Left,
        };
        Truncation { enabled: self.truncate, direction }
    }
}

fn default_true() -> bool {
    true
}

/// `POST /embed`.
#[derive(Deserialize)]
struct EmbedRequest {
    inputs: Inputs,
    #[serde(default = "default_true")]
    normalize: bool,
    #[serde(flatten)]
    truncate: TruncateFields,
    /// Matryoshka: keep the first `dimensions` values of each vector.
    #[serde(default)]
    dimensions: Option<u32>,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// The body of Spin's remote `generate-embeddings` call.
#[derive(Deserialize)]
struct SpinEmbedRequest {
    model: String,
    input: Vec<String>,
}

/// `POST /embed_all`.
#[derive(Deserialize)]
struct EmbedAllRequest {
    inputs: Inputs,
    #[serde(flatten)]
    truncate: TruncateFields,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// `POST /similarity`.
#[derive(Deserialize)]
struct SimilarityRequest {
    inputs: SimilarityInputs,
    #[serde(default)]
    parameters: Option<SimilarityParameters>,
}

#[derive(Deserialize)]
struct SimilarityInputs {
    source_sentence: String,
    sentences: Vec<String>,
}

#[derive(Deserialize, Default)]
struct SimilarityParameters {
    #[serde(flatten)]
    truncate: TruncateFields,
    #[serde(default)]
    prompt_name: Option<String>,
}

/// `POST /rerank`.
#[derive(Deserialize)]
struct RerankRequest {
    query: String,
    texts: Vec<String>,
    /// The cross-encoder's logits instead of their sigmoid (cosine scores have no logit).
    #[serde(default)]
    raw_scores: bool,
    #[serde(default)]
    return_text: bool,
    #[serde(flatten)]
    truncate: TruncateFields,
}

/// `POST /tokenize`.
#[derive(Deserialize)]
struct TokenizeRequest {
    inputs: TextOrTexts,
    #[serde(default = "default_true")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrTexts {
    One(String),
    Many(Vec<String>),
}

/// `POST /decode`.
#[derive(Deserialize)]
struct DecodeRequest {
    ids: IdsOrIdLists,
    #[serde(default = "default_true")]
    skip_special_tokens: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IdsOrIdLists {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

/// One passage's place in `/rerank`'s answer.
#[derive(serde::Serialize)]
struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// One token as TEI's `/tokenize` answers it: the text it covers in the input (special tokens:
/// their spelling, and no offsets).
#[derive(serde::Serialize)]
struct SimpleToken {
    id: u32,
    text: String,
    special: bool,
    start: Option<u32>,
    stop: Option<u32>,
}

/// An answer, as JSON text, and the tokens it cost.
struct Answer {
    body: Vec<u8>,
    tokens: u64,
}

impl Answer {
    /// Serialised as it is: f32 values keep their shortest spelling (a `Value` would widen them).
    fn new(body: &impl serde::Serialize, tokens: u64) -> Answer {
        Answer { body: serde_json::to_vec(body).expect("answers serialise"), tokens }
    }
}

/// Spin's remote `generate-embeddings` answer.
#[derive(serde::Serialize)]
struct SpinEmbeddings {
    embeddings: Vec<Vec<f32>>,
    usage: SpinUsage,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SpinUsage {
    prompt_token_count: u64,
}

fn invalid(e: serde_json::Error) -> ApiError {
    ApiError::validation(format!("invalid request: {e}"))
}

fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(invalid)
}

/// `/embed`, TEI's body or Spin's (Spin's client sets no content-type: only its calls may omit it).
async fn embed(body: Value, content_type_declared: bool, timings: &mut Timings) -> Result<Answer, ApiError> {
    let spin_shaped =
        body.get("inputs").is_none() && body.get("model").is_some() && body.get("input").is_some();
    if spin_shaped {
        return spin_embed(parse(body)?, timings).await;
    }
    if !content_type_declared {
        return Err(ApiError::unsupported_media_type(""));
    }
    let request: EmbedRequest = parse(body)?;
    let served = served()?;
    let batch = request.inputs.validate(served.model.settings.max_batch_inputs)?;
    let batch = served.prompts.apply(request.prompt_name.as_deref(), batch)?;
    let options = EmbedOptions {
        truncation: request.truncate.truncation(),
        normalize: request.normalize,
        dimensions: request.dimensions,
    };
    let embedded = served.model.embed(&batch, options, timings).await?;
    Ok(Answer::new(&embedded.vectors, embedded.tokens))
}

/// Spin's remote `generate-embeddings`: normalised mean-pooled vectors, as Spin's own engine
/// computes them, for a model named in `MODEL_NAMES`.
async fn spin_embed(request: SpinEmbedRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let names = text_handler::model_names();
    if !names.contains(&request.model) {
        return Err(ApiError::not_found(format!(
            "no embedding model {:?}; this app serves {}",
            request.model,
            names.join(",")
        )));
    }
    let served = served()?;
    let options = EmbedOptions { truncation: Truncation::REFUSE, normalize: true, dimensions: None };
    // As the host's own generate-embeddings: any number of texts (computed in parts), blank ones too.
    let max_inputs = text_handler::var("MAX_INPUTS", "").parse().unwrap_or(2048);
    if request.input.len() > max_inputs {
        return Err(ApiError::validation(format!(
            "{} texts sent, at most {max_inputs} are allowed per request",
            request.input.len()
        )));
    }
    let batch = served.prompts.apply(None, Batch::Texts(request.input))?;
    let embedded = served.model.embed(&batch, options, timings).await?;
    let tokens = embedded.tokens;
    let body =
        SpinEmbeddings { embeddings: embedded.vectors, usage: SpinUsage { prompt_token_count: tokens } };
    Ok(Answer::new(&body, tokens))
}

async fn embed_all(request: EmbedAllRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let served = served()?;
    let batch = request.inputs.validate(served.model.settings.max_batch_inputs)?;
    let batch = served.prompts.apply(request.prompt_name.as_deref(), batch)?;
    let (vectors, tokens) = served.model.embed_all(&batch, request.truncate.truncation(), timings).await?;
    Ok(Answer::new(&vectors, tokens))
}

/// Cosine similarity of the source sentence with each sentence.
async fn similarity(request: SimilarityRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let served = served()?;
    let parameters = request.parameters.unwrap_or_default();
    let SimilarityInputs { source_sentence, sentences } = request.inputs;
    if sentences.is_empty() {
        return Err(ApiError::validation("`sentences` must not be empty".into()));
    }
    text_handler::check_text(&source_sentence, "`source_sentence`")?;
    let sentences = Inputs::Many(sentences).validate_texts(served.model.settings.max_batch_inputs)?;
    let texts: Vec<String> = std::iter::once(source_sentence).chain(sentences).collect();
    let batch = served.prompts.apply(parameters.prompt_name.as_deref(), Batch::Texts(texts))?;
    let options =
        EmbedOptions { truncation: parameters.truncate.truncation(), normalize: true, dimensions: None };
    let embedded = served.model.embed(&batch, options, timings).await?;
    let (source, others) = embedded.vectors.split_first().expect("the source sentence is embedded");
    let scores: Vec<f32> = others.iter().map(|v| pooling::cosine(source, v)).collect();
    Ok(Answer::new(&scores, embedded.tokens))
}

/// Ranks `texts` by relevance to `query`, best first: by the cross-encoder `RERANK_MODEL` names
/// (the sigmoid of its logit; the logit with `raw_scores`), else by the embedding model's cosine
/// similarity (the same either way: there is no logit).
async fn rerank(request: RerankRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let served = served()?;
    if request.texts.is_empty() {
        return Err(ApiError::validation("`texts` must not be empty".into()));
    }
    text_handler::check_text(&request.query, "the query")?;
    let max = served.model.settings.max_batch_inputs;
    let texts = Inputs::Many(request.texts).validate_texts(max)?;
    let truncation = request.truncate.truncation();
    let (scores, tokens) = match reranker()? {
        Some(cross) => {
            cross_encoder_scores(&cross, &request.query, &texts, truncation, request.raw_scores, timings)
                .await?
        }
        None => {
            let batch = Batch::Texts(std::iter::once(request.query).chain(texts.iter().cloned()).collect());
            let batch = served.prompts.apply(None, batch)?;
            let options = EmbedOptions { truncation, normalize: true, dimensions: None };
            let embedded = served.model.embed(&batch, options, timings).await?;
            let (query, passages) = embedded.vectors.split_first().expect("the query is embedded");
            (passages.iter().map(|p| pooling::cosine(query, p)).collect(), embedded.tokens)
        }
    };
    let mut ranks: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
    ranks.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let ranks: Vec<Rank> = ranks
        .into_iter()
        .map(|(index, score)| Rank { index, score, text: request.return_text.then(|| texts[index].clone()) })
        .collect();
    Ok(Answer::new(&ranks, tokens))
}

/// The cross-encoder's score of each (query, text) pair, and the tokens computed.
async fn cross_encoder_scores(
    cross: &TextModel,
    query: &str,
    texts: &[String],
    truncation: Truncation,
    raw_scores: bool,
    timings: &mut Timings,
) -> Result<(Vec<f32>, u64), ApiError> {
    let pairs: Vec<(String, String)> = texts.iter().map(|t| (query.to_string(), t.clone())).collect();
    let mut scores = Vec::with_capacity(pairs.len());
    let mut tokens = 0;
    for part in pairs.chunks(cross.settings.max_batch_inputs.max(1)) {
        let out = cross.infer_pairs(part, truncation, timings).await?;
        if out.shape[..] != [part.len() as u32, 1] {
            return Err(ApiError::backend(format!(
                "the reranker's {:?} output has shape {:?}; a cross-encoder gives one logit per pair",
                cross.settings.output, out.shape
            )));
        }
        tokens += out.tokens();
        scores.extend(
            out.values.iter().map(|&logit| if raw_scores { logit } else { 1.0 / (1.0 + (-logit).exp()) }),
        );
    }
    Ok((scores, tokens))
}

fn tokenize(request: TokenizeRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let served = served()?;
    let texts = match request.inputs {
        TextOrTexts::One(text) => vec![text],
        TextOrTexts::Many(texts) => texts,
    };
    let texts = Inputs::Many(texts).validate_texts(served.model.settings.max_batch_inputs)?;
    let texts = served.prompts.apply_to_texts(request.prompt_name.as_deref(), texts)?;
    let mut answers = Vec::with_capacity(texts.len());
    for text in &texts {
        let tokens = timings.tokenization(|| served.model.tokens(text, request.add_special_tokens))?;
        let simple: Vec<SimpleToken> = tokens
            .into_iter()
            .map(|t| {
                let (start, stop) = t.offsets;
                if t.special {
                    SimpleToken { id: t.id, text: t.text, special: true, start: None, stop: None }
                } else {
                    let piece = text.as_bytes().get(start as usize..stop as usize).unwrap_or_default();
                    let text = String::from_utf8_lossy(piece).into_owned();
                    SimpleToken { id: t.id, text, special: false, start: Some(start), stop: Some(stop) }
                }
            })
            .collect();
        answers.push(simple);
    }
    // Tokenizing computes nothing on the model: no tokens are reported.
    Ok(Answer::new(&answers, 0))
}

fn decode(request: DecodeRequest, timings: &mut Timings) -> Result<Answer, ApiError> {
    let served = served()?;
    let lists = match request.ids {
        IdsOrIdLists::One(ids) => vec![ids],
        IdsOrIdLists::Many(lists) => lists,
    };
    if lists.is_empty() || lists.len() > served.model.settings.max_batch_inputs {
        return Err(ApiError::validation(format!(
            "`ids` must hold between 1 and {} lists of ids",
            served.model.settings.max_batch_inputs
        )));
    }
    let texts = lists
        .iter()
        .map(|ids| timings.tokenization(|| served.model.decode(ids, request.skip_special_tokens)))
        .collect::<Result<Vec<String>, ApiError>>()?;
    Ok(Answer::new(&texts, 0))
}

/// The route this request is for: the last segment of its path. Any route other than TEI's named
/// ones is `/embed` (the component may be routed anywhere).
fn route(request: &Request) -> String {
    request.uri().path().trim_end_matches('/').rsplit('/').next().unwrap_or("").to_string()
}

async fn answer(request: Request, timings: &mut Timings) -> Result<Answer, ApiError> {
    let route = route(&request);
    if route == "info" {
        if request.method() != Method::GET {
            return Err(ApiError::method_not_allowed_here(request.method().as_str(), "GET"));
        }
        return Ok(Answer::new(&info::info()?, 0));
    }
    let declared = request.headers().contains_key("content-type");
    let body = text_handler::read_json_object(request, ContentType::JsonIfAbsent).await.map_err(|e| {
        // Without a content-type, only a JSON body of Spin's shape (on /embed) is taken.
        if declared || e.kind() != ErrorKind::Validation { e } else { ApiError::unsupported_media_type("") }
    })?;
    let tei_route = ["embed_all", "similarity", "rerank", "tokenize", "decode"].contains(&route.as_str());
    if !declared && tei_route {
        return Err(ApiError::unsupported_media_type(""));
    }
    match route.as_str() {
        "embed_all" => embed_all(parse(body)?, timings).await,
        "similarity" => similarity(parse(body)?, timings).await,
        "rerank" => rerank(parse(body)?, timings).await,
        "tokenize" => tokenize(parse(body)?, timings),
        "decode" => decode(parse(body)?, timings),
        // `/embed`, and any other route the manifest gives this component.
        _ => embed(body, declared, timings).await,
    }
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let mut timings = Timings::start();
    match answer(request, &mut timings).await {
        Ok(answer) => timings.add_headers(json_body_ok_with_tokens(answer.body, answer.tokens)),
        Err(error) => timings.add_headers(error.into_response()),
    }
}

/// This handler's part of the OpenAPI document, in a custom section the host reads (`/docs`).
#[used]
#[unsafe(link_section = "edgeinfer:openapi")]
static OPENAPI: [u8; include_bytes!("../openapi.json").len()] = *include_bytes!("../openapi.json");
