//! The BERT family (BERT, MiniLM) as an ONNX graph built from a Hugging Face checkpoint: the
//! encoder of `modeling_bert` written with standard opset-17 operators only. The checkpoint
//! reading and the layers MPNet shares with it (linear, LayerNorm, GELU) live here too.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use super::proto::{AttributeProto as Attr, GraphBuilder};

/// The fields of a Hugging Face `config.json` the encoder needs.
#[derive(Debug, Deserialize)]
pub struct BertConfig {
    pub model_type: String,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_position_type")]
    pub position_embedding_type: String,
    /// Class names of a sequence-classification checkpoint, by index.
    #[serde(default)]
    pub id2label: BTreeMap<String, String>,
    /// MPNet: the padding token, from which position ids are counted.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: i64,
    /// MPNet: how many relative-position buckets its attention bias has.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
}

fn default_pad_token_id() -> i64 {
    1
}
fn default_buckets() -> usize {
    32
}

fn default_eps() -> f32 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_position_type() -> String {
    "absolute".into()
}

impl BertConfig {
    /// Reads and checks `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let config: BertConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a model config", path.display()))?;
        ensure!(
            matches!(config.model_type.as_str(), "bert" | "mpnet"),
            "model_type {:?} is not supported (the exporter handles the BERT family: bert, MiniLM; \
             and mpnet)",
            config.model_type
        );
        ensure!(
            config.model_type != "bert" || config.position_embedding_type == "absolute",
            "only absolute position embeddings are supported"
        );
        ensure!(
            config.num_attention_heads > 0 && config.hidden_size.is_multiple_of(config.num_attention_heads),
            "hidden_size {} is not a multiple of num_attention_heads {}",
            config.hidden_size,
            config.num_attention_heads
        );
        ensure!(
            matches!(config.hidden_act.as_str(), "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"),
            "hidden_act {:?} is not supported",
            config.hidden_act
        );
        Ok(config)
    }
}

/// The checkpoint's tensors as f32, with names relative to the encoder (no `bert.` prefix).
pub struct Weights {
    tensors: safetensors::SafeTensors<'static>,
    prefix: String,
}

impl Weights {
    /// Opens `model.safetensors` (kept in memory for the export).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        // The export is a short-lived tool run: leaking the buffer keeps the borrow simple.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        let tensors = safetensors::SafeTensors::deserialize(bytes)
            .with_context(|| format!("{} is not a safetensors file", path.display()))?;
        let prefix = ["", "bert.", "mpnet.", "model."]
            .into_iter()
            .find(|p| tensors.tensor(&format!("{p}embeddings.word_embeddings.weight")).is_ok())
            .context("no embeddings.word_embeddings.weight: not a BERT or MPNet checkpoint")?
            .to_string();
        Ok(Self { tensors, prefix })
    }

    /// Whether the checkpoint carries a tensor (name without the encoder prefix unless `raw`).
    pub fn has(&self, name: &str, raw: bool) -> bool {
        let full = if raw { name.to_string() } else { format!("{}{name}", self.prefix) };
        self.tensors.tensor(&full).is_ok()
    }

    /// A tensor's shape and values; `raw` names are looked up as they are (heads sit outside the
    /// encoder prefix).
    pub fn get(&self, name: &str, raw: bool) -> Result<(Vec<usize>, Vec<f32>)> {
        let full = if raw { name.to_string() } else { format!("{}{name}", self.prefix) };
        let view =
            self.tensors.tensor(&full).with_context(|| format!("the checkpoint has no tensor {full}"))?;
        let data = view.data();
        let values = match view.dtype() {
            safetensors::Dtype::F32 => {
                data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            }
            safetensors::Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            safetensors::Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                .collect(),
            other => bail!("{full} has dtype {other:?}; F32, F16 and BF16 are supported"),
        };
        Ok((view.shape().to_vec(), values))
    }

    /// A LayerNorm's scale and shift, under either naming checkpoints use.
    fn layer_norm(&self, base: &str) -> Result<(Vec<f32>, Vec<f32>)> {
        let (scale, shift) =
            if self.has(&format!("{base}.weight"), false) { ("weight", "bias") } else { ("gamma", "beta") };
        Ok((self.get(&format!("{base}.{scale}"), false)?.1, self.get(&format!("{base}.{shift}"), false)?.1))
    }
}

/// A `torch.nn.Linear` stored as `x · Wᵀ + b`: transposed once here so the graph uses MatMul.
pub fn linear(
    g: &mut GraphBuilder,
    x: &str,
    name: &str,
    weight: (Vec<usize>, Vec<f32>),
    bias: Vec<f32>,
) -> Result<String> {
    let (shape, w) = weight;
    let [out, inp] = shape[..] else { bail!("{name}: weight is not 2-D") };
    ensure!(bias.len() == out, "{name}: bias has {} values for {out} outputs", bias.len());
    let mut transposed = vec![0f32; w.len()];
    for o in 0..out {
        for i in 0..inp {
            transposed[i * out + o] = w[o * inp + i];
        }
    }
    let w = g.weight(&format!("{name}.weight_t"), &[inp, out], &transposed);
    let b = g.weight(&format!("{name}.bias"), &[out], &bias);
    let product = g.op("MatMul", name, &[x, &w], vec![]);
    Ok(g.op("Add", name, &[&product, &b], vec![]))
}

pub(crate) fn checkpoint_linear(
    g: &mut GraphBuilder,
    weights: &Weights,
    x: &str,
    name: &str,
) -> Result<String> {
    let w = weights.get(&format!("{name}.weight"), false)?;
    let b = weights.get(&format!("{name}.bias"), false)?.1;
    linear(g, x, name, w, b)
}

pub(crate) fn layer_norm(
    g: &mut GraphBuilder,
    weights: &Weights,
    x: &str,
    name: &str,
    eps: f32,
) -> Result<String> {
    let (scale, shift) = weights.layer_norm(name)?;
    let scale = g.weight(&format!("{name}.scale"), &[scale.len()], &scale);
    let shift = g.weight(&format!("{name}.shift"), &[shift.len()], &shift);
    Ok(g.op(
        "LayerNormalization",
        name,
        &[x, &scale, &shift],
        vec![Attr::int("axis", -1), Attr::float("epsilon", eps)],
    ))
}

/// The activation between the two feed-forward layers.
pub(crate) fn activation(g: &mut GraphBuilder, x: &str, kind: &str) -> String {
    match kind {
        "relu" => g.op("Relu", "relu", &[x], vec![]),
        "gelu" => {
            // Exact GELU: x · ½ · (1 + erf(x / √2)); Gelu itself is opset 20.
            let sqrt2 = g.scalar("const.sqrt2", std::f32::consts::SQRT_2);
            let one = g.scalar("const.one", 1.0);
            let half = g.scalar("const.half", 0.5);
            let scaled = g.op("Div", "gelu", &[x, &sqrt2], vec![]);
            let erf = g.op("Erf", "gelu", &[&scaled], vec![]);
            let shifted = g.op("Add", "gelu", &[&erf, &one], vec![]);
            let gated = g.op("Mul", "gelu", &[x, &shifted], vec![]);
            g.op("Mul", "gelu", &[&gated, &half], vec![])
        }
        _ => {
            // Tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³))).
            let c = g.scalar("const.gelu_c", (2.0f32 / std::f32::consts::PI).sqrt());
            let k = g.scalar("const.gelu_k", 0.044715);
            let one = g.scalar("const.one", 1.0);
            let half = g.scalar("const.half", 0.5);
            let square = g.op("Mul", "gelu", &[x, x], vec![]);
            let cube = g.op("Mul", "gelu", &[&square, x], vec![]);
            let term = g.op("Mul", "gelu", &[&cube, &k], vec![]);
            let inner = g.op("Add", "gelu", &[x, &term], vec![]);
            let inner = g.op("Mul", "gelu", &[&inner, &c], vec![]);
            let tanh = g.op("Tanh", "gelu", &[&inner], vec![]);
            let shifted = g.op("Add", "gelu", &[&tanh, &one], vec![]);
            let gated = g.op("Mul", "gelu", &[x, &shifted], vec![]);
            g.op("Mul", "gelu", &[&gated, &half], vec![])
        }
    }
}

/// Builds the encoder over the graph inputs `input_ids`, `attention_mask`, `token_type_ids`
/// (int64 [batch, seq]) and returns the name of its [batch, seq, hidden] output.
pub fn encoder(g: &mut GraphBuilder, config: &BertConfig, weights: &Weights) -> Result<String> {
    let hidden = config.hidden_size;

    // Embeddings: word + token type + position, then LayerNorm.
    let (shape, word) = weights.get("embeddings.word_embeddings.weight", false)?;
    ensure!(shape.len() == 2 && shape[1] == hidden, "word embeddings are {shape:?}, hidden size is {hidden}");
    let word = g.weight("embeddings.word", &shape, &word);
    let (shape, position) = weights.get("embeddings.position_embeddings.weight", false)?;
    let position = g.weight("embeddings.position", &shape, &position);
    let (shape, token_type) = weights.get("embeddings.token_type_embeddings.weight", false)?;
    let token_type = g.weight("embeddings.token_type", &shape, &token_type);

    let words = g.op("Gather", "word_embeddings", &[&word, "input_ids"], vec![Attr::int("axis", 0)]);
    let types =
        g.op("Gather", "token_type_embeddings", &[&token_type, "token_type_ids"], vec![Attr::int("axis", 0)]);
    // Positions 0..seq: the first `seq` rows of the table, broadcast over the batch.
    let seq_len = g.op("Shape", "seq_len", &["input_ids"], vec![Attr::int("start", 1), Attr::int("end", 2)]);
    let zero = g.int64s("const.zero_1d", &[0]);
    let positions = g.op("Slice", "position_embeddings", &[&position, &zero, &seq_len, &zero], vec![]);
    let sum = g.op("Add", "embeddings", &[&words, &types], vec![]);
    let sum = g.op("Add", "embeddings", &[&sum, &positions], vec![]);
    let mut x = layer_norm(g, weights, &sum, "embeddings.LayerNorm", config.layer_norm_eps)?;

    let bias = attention_mask_bias(g);
    for layer in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{layer}");
        let names = LayerNames {
            query: format!("{p}.attention.self.query"),
            key: format!("{p}.attention.self.key"),
            value: format!("{p}.attention.self.value"),
            attention_output: format!("{p}.attention.output.dense"),
            attention_norm: format!("{p}.attention.output.LayerNorm"),
            intermediate: format!("{p}.intermediate.dense"),
            output: format!("{p}.output.dense"),
            output_norm: format!("{p}.output.LayerNorm"),
        };
        x = transformer_layer(g, config, weights, &x, &[&bias], &names)?;
    }
    Ok(x)
}

/// The additive attention bias of the padding mask: 0 where `attention_mask` is 1, the lowest
/// float where it is 0, as [batch, 1, 1, seq].
pub(crate) fn attention_mask_bias(g: &mut GraphBuilder) -> String {
    let mask =
        g.op("Cast", "mask_f32", &["attention_mask"], vec![Attr::int("to", super::proto::FLOAT as i64)]);
    let axes12 = g.int64s("const.axes_1_2", &[1, 2]);
    let mask4 = g.op("Unsqueeze", "mask_4d", &[&mask, &axes12], vec![]);
    let one = g.scalar("const.one", 1.0);
    let lowest = g.scalar("const.lowest", f32::MIN);
    let inverted = g.op("Sub", "mask_inverted", &[&one, &mask4], vec![]);
    g.op("Mul", "attention_bias", &[&inverted, &lowest], vec![])
}

/// Where one encoder layer's weights are in the checkpoint (BERT and MPNet name them apart).
pub(crate) struct LayerNames {
    pub query: String,
    pub key: String,
    pub value: String,
    pub attention_output: String,
    pub attention_norm: String,
    pub intermediate: String,
    pub output: String,
    pub output_norm: String,
}

/// One post-LayerNorm encoder layer: self-attention with the additive `biases` (each
/// [batch or 1, heads or 1, seq or 1, seq], added in order), then the feed-forward block, each
/// with its residual.
pub(crate) fn transformer_layer(
    g: &mut GraphBuilder,
    config: &BertConfig,
    weights: &Weights,
    x: &str,
    biases: &[&str],
    names: &LayerNames,
) -> Result<String> {
    let hidden = config.hidden_size;
    let heads = config.num_attention_heads;
    let head_dim = hidden / heads;
    let split_heads = g.int64s("const.split_heads", &[0, 0, heads as i64, head_dim as i64]);
    let merge_heads = g.int64s("const.merge_heads", &[0, 0, hidden as i64]);
    let scale = g.scalar("const.attention_scale", (head_dim as f32).sqrt());

    let q = checkpoint_linear(g, weights, x, &names.query)?;
    let k = checkpoint_linear(g, weights, x, &names.key)?;
    let v = checkpoint_linear(g, weights, x, &names.value)?;
    let q = g.op("Reshape", "q", &[&q, &split_heads], vec![]);
    let q = g.op("Transpose", "q", &[&q], vec![Attr::ints("perm", &[0, 2, 1, 3])]);
    let k = g.op("Reshape", "k", &[&k, &split_heads], vec![]);
    let k = g.op("Transpose", "k", &[&k], vec![Attr::ints("perm", &[0, 2, 3, 1])]);
    let v = g.op("Reshape", "v", &[&v, &split_heads], vec![]);
    let v = g.op("Transpose", "v", &[&v], vec![Attr::ints("perm", &[0, 2, 1, 3])]);
    let scores = g.op("MatMul", "scores", &[&q, &k], vec![]);
    let scores = g.op("Div", "scores", &[&scores, &scale], vec![]);
    let mut scores = scores;
    for bias in biases {
        scores = g.op("Add", "scores", &[&scores, bias], vec![]);
    }
    let probs = g.op("Softmax", "attention", &[&scores], vec![Attr::int("axis", -1)]);
    let context = g.op("MatMul", "context", &[&probs, &v], vec![]);
    let context = g.op("Transpose", "context", &[&context], vec![Attr::ints("perm", &[0, 2, 1, 3])]);
    let context = g.op("Reshape", "context", &[&context, &merge_heads], vec![]);
    let attended = checkpoint_linear(g, weights, &context, &names.attention_output)?;
    let residual = g.op("Add", "residual", &[&attended, x], vec![]);
    let x = layer_norm(g, weights, &residual, &names.attention_norm, config.layer_norm_eps)?;

    let up = checkpoint_linear(g, weights, &x, &names.intermediate)?;
    let up = activation(g, &up, &config.hidden_act);
    let down = checkpoint_linear(g, weights, &up, &names.output)?;
    let residual = g.op("Add", "residual", &[&down, &x], vec![]);
    layer_norm(g, weights, &residual, &names.output_norm, config.layer_norm_eps)
}
