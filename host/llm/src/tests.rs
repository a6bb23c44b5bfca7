//! `generate-embeddings` and `infer` called as a component's imports would be, over a tiny word
//! tokenizer and fake models: no engine, no model files, no component.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use edgeinfer_wasi_nn::{ComputeFuture, Model, Tensors};
use llm::Host as _;

use super::*;

/// A BERT-shaped word tokenizer: `[CLS] words [SEP]`, unknown words `[UNK]`. Its file asks for
/// truncation to 4 tokens and padding to 16, which `EmbeddingModel::load` must drop.
const TOKENIZER: &str = r#"{
  "version": "1.0",
  "truncation": {"direction": "Right", "max_length": 4, "strategy": "LongestFirst", "stride": 0},
  "padding": {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
              "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"},
  "added_tokens": [
    {"id": 0, "content": "[PAD]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "[UNK]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 2, "content": "[CLS]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 3, "content": "[SEP]", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": {"type": "Lowercase"},
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
               {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
             {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
    "special_tokens": {
      "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
      "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
    }
  },
  "decoder": null,
  "model": {
    "type": "WordLevel",
    "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3,
              "one": 4, "two": 5, "three": 6, "four": 7, "five": 8},
    "unk_token": "[UNK]"
  }
}"#;

/// Longest text the test models take, special tokens included: `[CLS]` + 4 words + `[SEP]`.
const MAX_TOKENS: usize = 6;

/// The tokenizer above, loaded as the runtime config's loader does, for host model `model`.
fn embedding_model(model: &str) -> Arc<EmbeddingModel> {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "edgeinfer-llm-test-{}-{}.json",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, TOKENIZER).unwrap();
    let loaded = EmbeddingModel::load(model, &path, "last_hidden_state", MAX_TOKENS);
    std::fs::remove_file(&path).unwrap();
    Arc::new(loaded.unwrap())
}

/// One compute call a fake model got.
struct Call {
    model: &'static str,
    inputs: Tensors,
    caller: Caller,
}

/// Host models by name:
/// - `encoder`: per token `[id, 1.0]`, padding poisoned with huge values (so pooling over it
///   shows), after a decoy output of another name;
/// - `no-hidden`: only the decoy; `flat`: a 2-D output; `halves`: F16 output; `short`: one row
///   fewer than its inputs;
/// - `busy`: queue full; `picky`: refuses its inputs; `broken`: failed to load;
/// - anything else does not exist.
#[derive(Default)]
struct FakeModels {
    calls: Mutex<Vec<Call>>,
    lookups: AtomicUsize,
}

struct FakeModel {
    name: &'static str,
    models: Arc<FakeModels>,
}

fn i64s(tensor: &TensorData) -> Vec<i64> {
    tensor.bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn f32_tensor(shape: Vec<u32>, ty: ElementType, values: &[f32]) -> TensorData {
    TensorData::new(shape, ty, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
}

impl Model for FakeModel {
    fn compute(&self, inputs: Tensors, caller: Caller) -> ComputeFuture<'_> {
        Box::pin(async move {
            let input = |name: &str| inputs.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap();
            let ids = input("input_ids");
            let mask = i64s(&input("attention_mask"));
            let (rows, seq) = (ids.shape[0], ids.shape[1]);
            let ids = i64s(&ids);
            let hidden: Vec<f32> = ids
                .iter()
                .zip(&mask)
                .flat_map(|(&id, &m)| if m == 1 { [id as f32, 1.0] } else { [1e6, -1e6] })
                .collect();
            let decoy = vec![7.0; hidden.len()];
            let decoy = ("other".to_string(), f32_tensor(vec![rows, seq, 2], ElementType::F32, &decoy));
            let outputs = match self.name {
                "encoder" => Ok(vec![
                    decoy,
                    (
                        "last_hidden_state".to_string(),
                        f32_tensor(vec![rows, seq, 2], ElementType::F32, &hidden),
                    ),
                ]),
                "no-hidden" => Ok(vec![decoy]),
                "flat" => Ok(vec![(
                    "last_hidden_state".to_string(),
                    f32_tensor(vec![rows, seq * 2], ElementType::F32, &hidden),
                )]),
                "halves" => Ok(vec![(
                    "last_hidden_state".to_string(),
                    TensorData::new(vec![rows, seq, 2], ElementType::F16, vec![0u8; hidden.len() * 2]),
                )]),
                "short" => {
                    let width = seq as usize * 2;
                    Ok(vec![(
                        "last_hidden_state".to_string(),
                        f32_tensor(vec![rows - 1, seq, 2], ElementType::F32, &hidden[width..]),
                    )])
                }
                "busy" => Err(ModelError::Overloaded("queue full".into())),
                _ => Err(ModelError::InvalidArgument("input \"input_ids\" must be I32".into())),
            };
            self.models.calls.lock().unwrap().push(Call { model: self.name, inputs, caller });
            outputs
        })
    }
}

struct Provider(Arc<FakeModels>);

impl ModelProvider for Provider {
    fn model(&self, name: &str) -> Result<Arc<dyn Model>, ModelError> {
        self.0.lookups.fetch_add(1, Ordering::Relaxed);
        let name = match name {
            "encoder" => "encoder",
            "no-hidden" => "no-hidden",
            "flat" => "flat",
            "halves" => "halves",
            "short" => "short",
            "busy" => "busy",
            "picky" => "picky",
            "broken" => return Err(ModelError::Unavailable("model \"broken\" failed to load".into())),
            other => return Err(ModelError::NotFound(format!("no model named {other:?}"))),
        };
        Ok(Arc::new(FakeModel { name, models: self.0.clone() }))
    }
}

/// An instance's LLM state whose component may use `allowed`; each embedding name `e-HOST` is
/// computed by host model `HOST`.
struct Guest {
    ctx: LlmCtx,
    models: Arc<FakeModels>,
}

impl Guest {
    fn new(allowed: &[&str]) -> Guest {
        let hosts = ["encoder", "no-hidden", "flat", "halves", "short", "busy", "picky", "broken", "gone"];
        let embeddings: EmbeddingModels =
            hosts.iter().map(|host| (format!("e-{host}"), embedding_model(host))).collect();
        let models = Arc::new(FakeModels::default());
        let allowed = Arc::new(allowed.iter().map(|s| s.to_string()).collect());
        Guest { ctx: LlmCtx::new(Arc::new(Provider(models.clone())), Arc::new(embeddings), allowed), models }
    }

    async fn embed(&mut self, model: &str, texts: &[&str]) -> Result<EmbeddingsResult, Error> {
        let texts = texts.iter().map(|t| t.to_string()).collect();
        (&mut self.ctx).generate_embeddings(model.to_string(), texts).await
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Vec<Call>> {
        self.models.calls.lock().unwrap()
    }
}

/// Mean of `[id, 1.0]` over `ids`, L2-normalised: what the encoder's texts must pool to.
fn pooled(ids: &[i64]) -> Vec<f32> {
    let mean = ids.iter().sum::<i64>() as f32 / ids.len() as f32;
    let norm = (mean * mean + 1.0).sqrt();
    vec![mean / norm, 1.0 / norm]
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
}

fn runtime_error(error: Error) -> String {
    match error {
        Error::RuntimeError(message) => message,
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

fn invalid_input(error: Error) -> String {
    match error {
        Error::InvalidInput(message) => message,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[test]
fn infer_is_refused_with_a_runtime_error_naming_the_model() {
    let mut guest = Guest::new(&["llama2-chat"]);
    let answer = (&mut guest.ctx).infer("llama2-chat".into(), "Hello".into(), None).unwrap();
    let message = runtime_error(answer.unwrap_err());
    assert!(message.contains("\"llama2-chat\"") && message.contains("not supported"), "{message}");
    assert_eq!(guest.models.lookups.load(Ordering::Relaxed), 0, "no model is looked up for infer");
}

#[tokio::test]
async fn only_the_component_s_configured_ai_models_are_supported() {
    // Allowed but with no [llm.embeddings] entry; configured but not in ai_models.
    let mut guest = Guest::new(&["e-encoder", "unmapped"]);
    assert!(matches!(guest.embed("e-busy", &["one"]).await, Err(Error::ModelNotSupported)));
    assert!(matches!(guest.embed("unmapped", &["one"]).await, Err(Error::ModelNotSupported)));
    assert_eq!(guest.models.lookups.load(Ordering::Relaxed), 0, "refused before any model lookup");
    assert!(guest.embed("e-encoder", &["one"]).await.is_ok());
}

#[tokio::test]
async fn texts_are_tokenized_padded_to_the_longest_and_sent_as_i64_matrices() {
    let mut guest = Guest::new(&["e-encoder"]);
    guest.embed("e-encoder", &["One two", "three", "six"]).await.unwrap();
    let calls = guest.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].model, "encoder");
    assert_eq!(calls[0].caller, Caller::BlocksItsInstance, "the LLM interface is synchronous");
    let names: Vec<&str> = calls[0].inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["input_ids", "attention_mask", "token_type_ids"]);
    for (_, tensor) in &calls[0].inputs {
        assert_eq!((tensor.shape.as_slice(), tensor.ty), ([3, 4].as_slice(), ElementType::I64));
    }
    // Lowercased, [CLS] ... [SEP], unknown words [UNK], padding 0 and masked out.
    assert_eq!(i64s(&calls[0].inputs[0].1), [2, 4, 5, 3, 2, 6, 3, 0, 2, 1, 3, 0]);
    assert_eq!(i64s(&calls[0].inputs[1].1), [1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0]);
    assert_eq!(i64s(&calls[0].inputs[2].1), [0; 12]);
}

#[tokio::test]
async fn embeddings_are_mean_pooled_over_real_tokens_and_normalised_in_text_order() {
    let mut guest = Guest::new(&["e-encoder"]);
    let result = guest.embed("e-encoder", &["one two", "three", ""]).await.unwrap();
    assert_eq!(result.embeddings.len(), 3);
    // Padding (poisoned by the fake) would swamp the short rows if it were pooled.
    assert_close(&result.embeddings[0], &pooled(&[2, 4, 5, 3]));
    assert_close(&result.embeddings[1], &pooled(&[2, 6, 3]));
    assert_close(&result.embeddings[2], &pooled(&[2, 3]));
    for embedding in &result.embeddings {
        let norm: f32 = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "unit length: {embedding:?}");
    }
    assert_eq!(result.usage.prompt_token_count, 4 + 3 + 2, "special tokens count, padding does not");
}

#[tokio::test]
async fn no_texts_give_no_embeddings_and_no_model_call() {
    let mut guest = Guest::new(&["e-encoder"]);
    let result = guest.embed("e-encoder", &[]).await.unwrap();
    assert!(result.embeddings.is_empty());
    assert_eq!(result.usage.prompt_token_count, 0);
    assert_eq!(guest.calls().len(), 0);
}

#[tokio::test]
async fn long_lists_are_computed_in_parts_of_32_and_keep_their_order() {
    let texts = ["one", "two three", "four five four five", "five"];
    let all: Vec<&str> = (0..70).map(|i| texts[i % texts.len()]).collect();
    let mut guest = Guest::new(&["e-encoder"]);
    let result = guest.embed("e-encoder", &all).await.unwrap();
    let rows: Vec<u32> = guest.calls().iter().map(|c| c.inputs[0].1.shape[0]).collect();
    assert_eq!(rows, [32, 32, 6]);
    assert_eq!(result.embeddings.len(), 70);
    let alone = guest.embed("e-encoder", &texts).await.unwrap();
    for (i, embedding) in result.embeddings.iter().enumerate() {
        assert_close(embedding, &alone.embeddings[i % texts.len()]);
    }
    assert_eq!(result.usage.prompt_token_count, [3, 4, 6, 3].iter().cycle().take(70).sum::<u32>());
}

#[tokio::test]
async fn a_text_over_the_token_limit_is_invalid_input_naming_it_across_parts() {
    let mut guest = Guest::new(&["e-encoder"]);
    // [CLS] + 4 words + [SEP] is the limit: accepted, not truncated.
    let result = guest.embed("e-encoder", &["one two three four"]).await.unwrap();
    assert_eq!(result.usage.prompt_token_count, 6);
    let message = invalid_input(guest.embed("e-encoder", &["one two three four five"]).await.unwrap_err());
    assert_eq!(message, "text 0 is 7 tokens long, more than the model's limit of 6");
    // The index is the text's in the whole call, not in its part of 32.
    let mut texts = vec!["one"; 40];
    texts[35] = "one two three four five one";
    let message = invalid_input(guest.embed("e-encoder", &texts).await.unwrap_err());
    assert_eq!(message, "text 35 is 8 tokens long, more than the model's limit of 6");
}

#[tokio::test]
async fn model_failures_map_to_spin_errors() {
    let mut guest = Guest::new(&["e-busy", "e-picky", "e-broken", "e-gone"]);
    let message = runtime_error(guest.embed("e-busy", &["one"]).await.unwrap_err());
    assert_eq!(message, "overloaded: queue full", "handlers key 503 off this prefix");
    let message = invalid_input(guest.embed("e-picky", &["one"]).await.unwrap_err());
    assert_eq!(message, "input \"input_ids\" must be I32");
    let message = runtime_error(guest.embed("e-broken", &["one"]).await.unwrap_err());
    assert_eq!(message, "model \"broken\" failed to load");
    // Configured and allowed, but the host has no such model: a runtime error, not "unsupported".
    let message = runtime_error(guest.embed("e-gone", &["one"]).await.unwrap_err());
    assert_eq!(message, "no model named \"gone\"");
}

#[test]
fn each_model_error_has_its_spin_error() {
    let cases = [
        (ModelError::InvalidArgument("bad".into()), "InvalidInput(\"bad\")"),
        (ModelError::NotFound("nf".into()), "RuntimeError(\"nf\")"),
        (ModelError::Unavailable("down".into()), "RuntimeError(\"down\")"),
        (ModelError::Runtime("ort".into()), "RuntimeError(\"ort\")"),
        (ModelError::Overloaded("full".into()), "RuntimeError(\"overloaded: full\")"),
    ];
    for (error, want) in cases {
        let got = format!("{:?}", model_error(error.clone()));
        assert!(got.ends_with(want), "{error:?} became {got}, expected {want}");
    }
}

#[tokio::test]
async fn outputs_that_do_not_fit_the_texts_are_runtime_errors() {
    let mut guest = Guest::new(&["e-no-hidden", "e-flat", "e-halves", "e-short"]);
    let message = runtime_error(guest.embed("e-no-hidden", &["one"]).await.unwrap_err());
    assert_eq!(message, "model no-hidden has no output \"last_hidden_state\"");
    let message = runtime_error(guest.embed("e-flat", &["one", "two"]).await.unwrap_err());
    assert!(message.starts_with("expected a [batch, seq, hidden] output, got [2, 6]"), "{message}");
    let message = runtime_error(guest.embed("e-halves", &["one"]).await.unwrap_err());
    assert!(message.contains("F16") && message.contains("does not fit 1 texts of 3 tokens"), "{message}");
    let message = runtime_error(guest.embed("e-short", &["one", "two"]).await.unwrap_err());
    assert!(message.contains("[1, 3, 2] does not fit 2 texts of 3 tokens"), "{message}");
}

#[test]
fn a_row_without_tokens_pools_to_zeros_not_nan() {
    let batch = Batch { rows: 2, seq: 2, ids: vec![2, 3, 0, 0], mask: vec![1, 1, 0, 0], types: vec![0; 4] };
    let hidden = f32_tensor(vec![2, 2, 2], ElementType::F32, &[3.0, 4.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0]);
    let pooled = batch.pool(&hidden).unwrap();
    assert_close(&pooled[0], &[0.6, 0.8]);
    assert_eq!(pooled[1], [0.0, 0.0]);
    assert_eq!(batch.tokens(), 2);
}

#[test]
fn loading_drops_the_tokenizer_file_s_padding_and_truncation() {
    let model = embedding_model("encoder");
    assert_eq!((model.model.as_str(), model.output.as_str()), ("encoder", "last_hidden_state"));
    // The file truncates to 4 and pads to 16: neither may apply.
    let batch = encode(&model, &["one two three four".to_string()], 0).unwrap();
    assert_eq!((batch.rows, batch.seq), (1, 6));
    assert_eq!(batch.ids, [2, 4, 5, 6, 7, 3]);
}

#[test]
fn a_missing_tokenizer_file_is_an_error_naming_it() {
    let path = std::env::temp_dir().join("edgeinfer-llm-test-no-such-tokenizer.json");
    let error = EmbeddingModel::load("m", &path, "out", 8).err().expect("no such file");
    let message = format!("{error:#}");
    assert!(
        message.contains("cannot read tokenizer") && message.contains(&*path.to_string_lossy()),
        "{message}"
    );
}
