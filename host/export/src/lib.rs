//! `edgeinfer export`: a Hugging Face BERT-family or MPNet checkpoint (config.json +
//! model.safetensors) to ONNX (opset 17, standard operators), with no PyTorch. Optionally adds sentence pooling and a
//! classification head: the checkpoint's own (`BertForSequenceClassification`) or a scikit-learn
//! linear classifier saved with joblib over the pooled sentence embedding.

mod bert;
pub mod joblib;
mod mpnet;
mod proto;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use prost::Message;

pub use edgeinfer_config::runtime_config::Pooling;
use proto::{AttributeProto as Attr, Dim, FLOAT, GraphBuilder, INT64, value_info};

/// What is put on top of the encoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// The checkpoint's classifier when it has one (`classifier.weight`), else none.
    Auto,
    None,
    /// A fitted scikit-learn linear classifier (joblib) over the pooled embedding.
    Sklearn(PathBuf),
}

impl std::str::FromStr for Head {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Head::Auto,
            "none" => Head::None,
            path => Head::Sklearn(PathBuf::from(path)),
        })
    }
}

/// What to export and where.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// A directory with config.json and model.safetensors.
    pub model_dir: PathBuf,
    /// The .onnx file to write; labels.json goes next to it when there is a head.
    pub output: PathBuf,
    pub pooling: Pooling,
    /// L2-normalise the pooled vector (`None`: as the sentence-transformers files say).
    pub normalize: Option<bool>,
    pub head: Head,
    /// Maps the classifier's classes to display names (a joblib dict, or JSON object).
    pub label_map: Option<PathBuf>,
}

/// What an export produced.
#[derive(Debug)]
pub struct ExportReport {
    pub output: PathBuf,
    pub labels: Option<PathBuf>,
    pub outputs: Vec<String>,
    pub parameters: usize,
    pub bytes: usize,
    pub seconds: f64,
}

impl std::fmt::Display for ExportReport {
    /// What was written, in a line (two with labels).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "wrote {} ({:.1} MB, {:.1} M parameters, outputs {}) in {:.2} s",
            self.output.display(),
            self.bytes as f64 / 1e6,
            self.parameters as f64 / 1e6,
            self.outputs.join(", "),
            self.seconds
        )?;
        match &self.labels {
            Some(labels) => write!(f, "\nwrote {}", labels.display()),
            None => Ok(()),
        }
    }
}

/// Writes the ONNX model (and labels.json for a classifier) described by `options`.
pub fn export(options: &ExportOptions) -> Result<ExportReport> {
    let started = Instant::now();
    let config = bert::BertConfig::read(&options.model_dir.join("config.json"))?;
    let weights = bert::Weights::read(&options.model_dir.join("model.safetensors"))?;
    let (pooling, st_normalize) = resolve_pooling(&options.model_dir, options.pooling)?;
    let normalize = options.normalize.unwrap_or(st_normalize);

    let mut g = GraphBuilder::default();
    // MPNet has no token types: its graph takes input_ids and attention_mask only (handlers are
    // told with MODEL_TOKEN_TYPES = "false").
    let (hidden_states, input_names) = if config.model_type == "mpnet" {
        (mpnet::encoder(&mut g, &config, &weights)?, &["input_ids", "attention_mask"][..])
    } else {
        (bert::encoder(&mut g, &config, &weights)?, &["input_ids", "attention_mask", "token_type_ids"][..])
    };
    let hidden = config.hidden_size;
    let batch_seq = [Dim::Named("batch"), Dim::Named("sequence")];
    let inputs = input_names.iter().map(|name| value_info(name, INT64, &batch_seq)).collect();
    let mut metadata = vec![
        ("edgeinfer.pooling".to_string(), format!("{pooling:?}").to_lowercase()),
        ("edgeinfer.normalize".to_string(), normalize.to_string()),
    ];

    let head_kind = match &options.head {
        // MPNet's own classification head (dense, tanh, out_proj) is not BERT's: not exported, and
        // not silently left out either.
        Head::Auto if config.model_type == "mpnet" && weights.has("classifier.out_proj.weight", true) => {
            bail!(
                "the checkpoint has an MPNet classification head, which the exporter does not \
                 support: export the encoder with --head none (or put a scikit-learn head on it)"
            )
        }
        Head::Auto if config.model_type == "mpnet" => HeadKind::None,
        Head::Auto if weights.has("classifier.weight", true) => HeadKind::Checkpoint,
        Head::Auto | Head::None => HeadKind::None,
        Head::Sklearn(path) => HeadKind::Sklearn(path.clone()),
    };
    let mut outputs = Vec::new();
    let mut labels = None;
    match head_kind {
        HeadKind::None => {
            g.name_output(&hidden_states, "last_hidden_state");
            outputs.push(value_info(
                "last_hidden_state",
                FLOAT,
                &[batch_seq[0], batch_seq[1], Dim::Fixed(hidden as i64)],
            ));
            if pooling != Pooling::None {
                let pooled = pool(&mut g, &hidden_states, pooling, normalize);
                g.name_output(&pooled, "sentence_embedding");
                outputs.push(value_info(
                    "sentence_embedding",
                    FLOAT,
                    &[batch_seq[0], Dim::Fixed(hidden as i64)],
                ));
            }
        }
        HeadKind::Checkpoint => {
            // BertForSequenceClassification: tanh(dense(first token)) then the classifier.
            let index = g.int64_scalar("const.first_token", 0);
            let first = g.op("Gather", "first_token", &[&hidden_states, &index], vec![Attr::int("axis", 1)]);
            let pooled = bert::linear(
                &mut g,
                &first,
                "pooler.dense",
                weights.get("pooler.dense.weight", false)?,
                weights.get("pooler.dense.bias", false)?.1,
            )?;
            let pooled = g.op("Tanh", "pooler", &[&pooled], vec![]);
            let classifier = weights.get("classifier.weight", true)?;
            let classes = classifier.0[0];
            let logits = bert::linear(
                &mut g,
                &pooled,
                "classifier",
                classifier,
                weights.get("classifier.bias", true)?.1,
            )?;
            g.name_output(&logits, "logits");
            outputs.push(value_info("logits", FLOAT, &[batch_seq[0], Dim::Fixed(classes as i64)]));
            let names: Vec<String> = (0..classes)
                .map(|i| config.id2label.get(&i.to_string()).cloned().unwrap_or_else(|| format!("LABEL_{i}")))
                .collect();
            labels = Some(apply_label_map(names, options.label_map.as_deref())?);
            metadata.push(("edgeinfer.head".into(), "checkpoint classifier".into()));
        }
        HeadKind::Sklearn(path) => {
            ensure!(
                pooling != Pooling::None,
                "a scikit-learn head needs a pooled sentence vector: set --pooling"
            );
            let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let head = joblib::LinearClassifier::from_joblib(&bytes)
                .with_context(|| format!("cannot read the classifier in {}", path.display()))?;
            ensure!(
                head.features == hidden,
                "the classifier takes {} features, the encoder gives {hidden}",
                head.features
            );
            let pooled = pool(&mut g, &hidden_states, pooling, normalize);
            let classes = head.classes.len();
            let coef: Vec<f32> = head.coef.iter().map(|&v| v as f32).collect();
            let intercept: Vec<f32> = head.intercept.iter().map(|&v| v as f32).collect();
            let logits =
                bert::linear(&mut g, &pooled, "classifier", (vec![classes, hidden], coef), intercept)?;
            g.name_output(&logits, "logits");
            outputs.push(value_info("logits", FLOAT, &[batch_seq[0], Dim::Fixed(classes as i64)]));
            labels = Some(apply_label_map(head.classes.clone(), options.label_map.as_deref())?);
            metadata.push(("edgeinfer.head".into(), format!("scikit-learn {}", head.estimator)));
        }
    }

    let output_names: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
    let model = g.finish("edgeinfer_export", inputs, outputs, metadata);
    let parameters = model
        .graph
        .as_ref()
        .map(|graph| graph.initializer.iter().map(|t| t.dims.iter().product::<i64>().max(1) as usize).sum())
        .unwrap_or(0);
    let bytes = model.encode_to_vec();
    if let Some(parent) = options.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_atomically(&options.output, &bytes)?;
    let labels_path = match labels {
        Some(names) => {
            let path = options.output.with_file_name("labels.json");
            write_atomically(&path, &serde_json::to_vec_pretty(&names)?)?;
            Some(path)
        }
        None => None,
    };
    Ok(ExportReport {
        output: options.output.clone(),
        labels: labels_path,
        outputs: output_names,
        parameters,
        bytes: bytes.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

enum HeadKind {
    None,
    Checkpoint,
    Sklearn(PathBuf),
}

/// The pooling to use and whether sentence-transformers normalises, from `modules.json` and
/// `1_Pooling/config.json` when asked for `auto`.
fn resolve_pooling(model_dir: &Path, requested: Pooling) -> Result<(Pooling, bool)> {
    let modules = std::fs::read_to_string(model_dir.join("modules.json")).ok();
    let normalize = modules.as_deref().is_some_and(|m| m.contains("sentence_transformers.models.Normalize"));
    if requested != Pooling::Auto {
        return Ok((requested, normalize));
    }
    let Ok(text) = std::fs::read_to_string(model_dir.join("1_Pooling/config.json")) else {
        return Ok((Pooling::None, false));
    };
    let config: serde_json::Value = serde_json::from_str(&text).context("1_Pooling/config.json")?;
    let flag = |key: &str| config.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
    let pooling = if flag("pooling_mode_mean_tokens") {
        Pooling::Mean
    } else if flag("pooling_mode_cls_token") {
        Pooling::Cls
    } else {
        bail!(
            "1_Pooling/config.json asks for a pooling mode the exporter does not support (mean and cls are)"
        );
    };
    Ok((pooling, normalize))
}

/// Mean over the tokens the mask keeps, or the first token; then optionally L2-normalised, the way
/// sentence-transformers does it (norm clamped at 1e-12).
fn pool(g: &mut GraphBuilder, hidden_states: &str, pooling: Pooling, normalize: bool) -> String {
    let pooled = match pooling {
        Pooling::Cls => {
            let index = g.int64_scalar("const.first_token", 0);
            g.op("Gather", "cls", &[hidden_states, &index], vec![Attr::int("axis", 1)])
        }
        _ => {
            let mask = g.op("Cast", "pool_mask", &["attention_mask"], vec![Attr::int("to", FLOAT as i64)]);
            let axis2 = g.int64s("const.axis_2", &[2]);
            let mask = g.op("Unsqueeze", "pool_mask", &[&mask, &axis2], vec![]);
            let masked = g.op("Mul", "pool_masked", &[hidden_states, &mask], vec![]);
            let axis1 = g.int64s("const.axis_1", &[1]);
            let sum = g.op("ReduceSum", "pool_sum", &[&masked, &axis1], vec![Attr::int("keepdims", 0)]);
            let count = g.op("ReduceSum", "pool_count", &[&mask, &axis1], vec![Attr::int("keepdims", 0)]);
            let floor = g.scalar("const.count_floor", 1e-9);
            let count = g.op("Max", "pool_count", &[&count, &floor], vec![]);
            g.op("Div", "mean_pool", &[&sum, &count], vec![])
        }
    };
    if !normalize {
        return pooled;
    }
    let norm = g.op("ReduceL2", "norm", &[&pooled], vec![Attr::ints("axes", &[1]), Attr::int("keepdims", 1)]);
    let floor = g.scalar("const.norm_floor", 1e-12);
    let norm = g.op("Max", "norm", &[&norm, &floor], vec![]);
    g.op("Div", "normalized", &[&pooled, &norm], vec![])
}

/// Class names through the label map, when one is given.
fn apply_label_map(classes: Vec<String>, label_map: Option<&Path>) -> Result<Vec<String>> {
    let Some(path) = label_map else { return Ok(classes) };
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let map: std::collections::HashMap<String, String> = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON object of strings", path.display()))?
    } else {
        joblib::label_map(&bytes).with_context(|| format!("cannot read the label map {}", path.display()))?
    };
    // Entries go class → name. Some maps also hold name → class for classes that already are
    // names; those keep their name (as the source package resolves them).
    let is_number = |s: &str| !s.is_empty() && s.trim_start_matches('-').chars().all(|c| c.is_ascii_digit());
    let name_of = |class: &str| -> Option<String> {
        match map.get(class) {
            Some(name) if !is_number(name) => Some(name.clone()),
            Some(_) => Some(class.to_string()),
            None => map.iter().find(|(_, v)| *v == class).map(|(k, _)| k.clone()),
        }
    };
    classes
        .into_iter()
        .map(|class| {
            name_of(&class).with_context(|| format!("the label map has no name for class {class:?}"))
        })
        .collect()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&partial, bytes).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}
