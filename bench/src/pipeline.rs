//! The native pipeline the Wasm path is measured against: the same tokenizer.json, the same ONNX
//! model and the same ONNX Runtime library, with mean pooling and L2 normalisation in Rust.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

/// Where the model and ONNX Runtime are (as `edgeinfer fetch` put them).
#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// ONNX model with inputs input_ids, attention_mask and, where it has them, token_type_ids.
    #[arg(long, default_value = "models/all-minilm-l6-v2/model.onnx")]
    pub model: PathBuf,
    /// Hugging Face tokenizer.json of the model.
    #[arg(long, default_value = "models/all-minilm-l6-v2/tokenizer.json")]
    pub tokenizer: PathBuf,
    /// libonnxruntime.so (`edgeinfer fetch` prints where it is).
    #[arg(long)]
    pub ort_library: PathBuf,
    /// ONNX Runtime intra-op threads (the default app uses 2).
    #[arg(long, default_value_t = 2)]
    pub intra_threads: usize,
    /// `cpu`, or `cuda:N` for ONNX Runtime's CUDA execution provider (the onnxruntime-gpu
    /// library; no silent CPU fallback, as in the host).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Loads ONNX Runtime and one session of the model.
pub fn session(args: &ModelArgs) -> Result<Session> {
    let environment: Environment = ort::init_from(&args.ort_library)
        .map_err(|e| anyhow!("cannot load {}: {e}", args.ort_library.display()))?
        .with_name("edgeinfer-bench")
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    let environment: &'static Environment = Box::leak(Box::new(environment));
    let mut builder = Session::builder(environment).map_err(|e| anyhow!("{e}"))?;
    if let Some(id) = args.device.strip_prefix("cuda:") {
        let id: i32 = id.parse().map_err(|_| anyhow!("--device {}: expected cpu or cuda:N", args.device))?;
        let cuda = ort::ep::CUDA::default().with_device_id(id).build().error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| anyhow!("CUDA execution provider failed to register on cuda:{id}: {e}"))?;
    } else if args.device != "cpu" {
        return Err(anyhow!("--device {}: expected cpu or cuda:N", args.device));
    }
    builder
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| anyhow!("{e}"))?
        .with_intra_threads(args.intra_threads)
        .map_err(|e| anyhow!("{e}"))?
        .commit_from_file(&args.model)
        .map_err(|e| anyhow!("cannot load {}: {e}", args.model.display()))
}

/// The tokenizer padding to the longest text of a batch (with the file's padding token: `[PAD]`
/// 0 for BERT, `<pad>` 1 for MPNet), truncating at `max_tokens`.
pub fn tokenizer(path: &Path, max_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let padding = tokenizer.get_padding().cloned().unwrap_or_default();
    tokenizer.with_padding(Some(PaddingParams {
        strategy: tokenizers::PaddingStrategy::BatchLongest,
        pad_to_multiple_of: None,
        ..padding
    }));
    tokenizer
        .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
        .map_err(|e| anyhow!("{e}"))?;
    Ok(tokenizer)
}

/// Pre-tokenized, padded model inputs of one batch.
pub struct Batch {
    pub rows: usize,
    pub width: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub type_ids: Vec<i64>,
}

/// Tokenizes `texts` into one padded batch.
pub fn encode(tokenizer: &Tokenizer, texts: &[String]) -> Result<Batch> {
    let encodings = tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| anyhow!("{e}"))?;
    let width = encodings.first().map_or(0, |e| e.len());
    let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
        encodings.iter().flat_map(|e| f(e).iter().map(|&v| v as i64)).collect()
    };
    Ok(Batch {
        rows: encodings.len(),
        width,
        ids: flat(&|e| e.get_ids()),
        mask: flat(&|e| e.get_attention_mask()),
        type_ids: flat(&|e| e.get_type_ids()),
    })
}

/// Runs the model on `batch`; returns its first output (last_hidden_state) flattened and its
/// hidden size. token_type_ids go in only where the model takes them (MPNet does not).
pub fn run(session: &mut Session, batch: &Batch) -> Result<(Vec<f32>, usize)> {
    let shape = vec![batch.rows as i64, batch.width as i64];
    let input = |v: &Vec<i64>| Tensor::from_array((shape.clone(), v.clone())).map_err(|e| anyhow!("{e}"));
    let token_types = session.inputs().iter().any(|i| i.name() == "token_type_ids");
    let mut inputs = ort::inputs![
        "input_ids" => input(&batch.ids)?,
        "attention_mask" => input(&batch.mask)?,
    ];
    if token_types {
        inputs.extend(ort::inputs!["token_type_ids" => input(&batch.type_ids)?]);
    }
    let outputs = session.run(inputs).map_err(|e| anyhow!("{e}"))?;
    let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(|e| anyhow!("{e}"))?;
    let hidden = *shape.last().context("output has no dimensions")? as usize;
    Ok((data.to_vec(), hidden))
}

/// Mean pooling over the attention mask, then optional L2 normalisation.
pub fn pool(hidden_states: &[f32], hidden: usize, batch: &Batch, normalize: bool) -> Vec<Vec<f32>> {
    (0..batch.rows)
        .map(|row| {
            let mut sum = vec![0f32; hidden];
            let mut count = 0f32;
            for t in 0..batch.width {
                if batch.mask[row * batch.width + t] == 0 {
                    continue;
                }
                count += 1.0;
                let at = (row * batch.width + t) * hidden;
                for (s, v) in sum.iter_mut().zip(&hidden_states[at..at + hidden]) {
                    *s += v;
                }
            }
            sum.iter_mut().for_each(|s| *s /= count.max(1.0));
            if normalize {
                let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                sum.iter_mut().for_each(|s| *s /= norm);
            }
            sum
        })
        .collect()
}
