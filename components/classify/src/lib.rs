//! `POST /predict` (TEI shape): text in, `[{"label", "score"}]` out, sorted by score. The model
//! gives one logit per class; names come from a JSON list of labels mounted with `files`
//! (`LABELS_PATH`), in logit order (`edgeinfer export` writes it as labels.json).

use serde::{Deserialize, Serialize};
use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;
use text_handler::{
    ApiError, Batch, Inputs, Reused, Settings, TextModel, Timings, Truncation, json_ok_with_tokens,
};

mod scores;

/// The model and its labels, built once per instance.
struct Classifier {
    model: TextModel,
    labels: Vec<String>,
}

thread_local! {
    static CLASSIFIER: Reused<Classifier> = const { Reused::new() };
}

impl Classifier {
    fn load() -> Result<Classifier, ApiError> {
        let path = text_handler::var("LABELS_PATH", "/classifier/labels.json");
        let text = std::fs::read(&path)
            .map_err(|e| ApiError::internal(format!("cannot read labels {path}: {e}")))?;
        let labels: Vec<String> = serde_json::from_slice(&text)
            .map_err(|e| ApiError::internal(format!("{path} is not a JSON list of labels: {e}")))?;
        if labels.is_empty() {
            return Err(ApiError::internal(format!("{path} lists no labels")));
        }
        let model = TextModel::load(Settings::from_env("intents", "logits"))?;
        Ok(Classifier { model, labels })
    }

    /// The predictions and the tokens computed.
    async fn predict(
        &self,
        request: PredictRequest,
        timings: &mut Timings,
    ) -> Result<(Predictions, u64), ApiError> {
        if request.top_k == Some(0) {
            return Err(ApiError::validation("`top_k` must be at least 1".into()));
        }
        let as_list = request.inputs.is_batch();
        let batch = Batch::Texts(request.inputs.validate_texts(self.model.settings.max_batch_inputs)?);
        let inputs = batch.len();
        let out = self.model.infer(&batch, Truncation::right(request.truncate), timings).await?;
        let classes = self.labels.len();
        if out.shape[..] != [inputs as u32, classes as u32] {
            return Err(ApiError::backend(format!(
                "expected logits of shape [{inputs}, {classes}] ({classes} labels), got {:?}",
                out.shape
            )));
        }
        let mut answers: Vec<Vec<Prediction>> = out
            .values
            .chunks_exact(classes)
            .map(|logits| {
                let scores = if request.raw_scores { logits.to_vec() } else { scores::softmax(logits) };
                scores::ranked(&scores, request.top_k.map(|k| k as usize))
                    .into_iter()
                    .map(|(i, score)| Prediction { label: self.labels[i].clone(), score })
                    .collect()
            })
            .collect();
        let predictions =
            if as_list { Predictions::Many(answers) } else { Predictions::One(answers.remove(0)) };
        Ok((predictions, out.tokens()))
    }
}

/// TEI's `/predict` request body (single texts; sentence pairs are not supported).
#[derive(Deserialize)]
struct PredictRequest {
    inputs: Inputs,
    /// Logits as they are instead of softmax probabilities.
    #[serde(default)]
    raw_scores: bool,
    /// Only the best `top_k` labels (all labels when absent).
    #[serde(default)]
    top_k: Option<u32>,
    /// Cut over-long inputs at the token limit instead of refusing them.
    #[serde(default)]
    truncate: bool,
}

#[derive(Serialize)]
struct Prediction {
    label: String,
    score: f32,
}

/// One list for a single text, a list of lists for a list of texts.
#[derive(Serialize)]
#[serde(untagged)]
enum Predictions {
    One(Vec<Prediction>),
    Many(Vec<Vec<Prediction>>),
}

#[http_service]
async fn handle(request: Request) -> impl IntoResponse {
    let mut timings = Timings::start();
    let result = match text_handler::read_request::<PredictRequest>(request).await {
        Ok(request) => match CLASSIFIER.with(|classifier| classifier.get_or_try_init(Classifier::load)) {
            Ok(classifier) => classifier.predict(request, &mut timings).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok((predictions, tokens)) => timings.add_headers(json_ok_with_tokens(&predictions, tokens)),
        Err(error) => timings.add_headers(error.into_response()),
    }
}

/// This handler's part of the OpenAPI document, in a custom section the host reads (`/docs`).
#[used]
#[unsafe(link_section = "edgeinfer:openapi")]
static OPENAPI: [u8; include_bytes!("../openapi.json").len()] = *include_bytes!("../openapi.json");
