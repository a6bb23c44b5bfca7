//! Spin's well-known AI models, for Spin apps that bring no runtime config of ours: a component
//! whose `ai_models` names `all-minilm-l6-v2` (and calls `spin_sdk::llm::generate_embeddings`)
//! is served as under `spin up`, from Spin's own `.spin/ai-models/<name>/` folder when the app has
//! one (its checkpoint exported to ONNX), else from the built-in default: the default app's
//! pinned, verified, cached model. A runtime config that maps the name itself always wins.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::runtime_config::{Asset, EmbeddingModelConfig, ExportStep, ModelConfig, Pooling, RuntimeConfig};

/// The embedding models Spin knows by name (Spin's `EmbeddingModel::AllMiniLmL6V2`).
pub const SPIN_EMBEDDING_MODELS: [&str; 1] = ["all-minilm-l6-v2"];

/// The default app's runtime config, built into the binary: its model is the built-in default.
const DEFAULT_APP_CONFIG: &str = include_str!("../../../runtime-config/local.toml");

/// `config.json` of all-MiniLM-L6-v2 (what Spin's local engine assumes for the checkpoint in its
/// folder, which carries none): used when the folder has no `config.json` of its own.
pub const ALL_MINILM_L6_V2_CONFIG: &str = r#"{"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "type_vocab_size": 2, "vocab_size": 30522, "pad_token_id": 0, "position_embedding_type": "absolute"}"#;

/// Where a Spin model that the runtime config does not map comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpinModelSource {
    /// Spin's folder `.spin/ai-models/<name>/` of the app (`tokenizer.json`, `model.safetensors`).
    SpinFolder(PathBuf),
    /// The default app's pinned model, fetched into the cache.
    BuiltIn,
}

/// Spin's folder for model `name` of the app in `app_dir`.
pub fn spin_folder(app_dir: &Path, name: &str) -> PathBuf {
    app_dir.join(".spin").join("ai-models").join(name)
}

/// Where Spin's model `name` would come from for the app in `app_dir`, if edgeinfer can serve it
/// at all (none for a model Spin does not know, or one only Spin's text generation runs).
pub fn source_of(app_dir: &Path, name: &str) -> Option<SpinModelSource> {
    if !SPIN_EMBEDDING_MODELS.contains(&name) {
        return None;
    }
    let folder = spin_folder(app_dir, name);
    Some(if folder.join("model.safetensors").is_file() && folder.join("tokenizer.json").is_file() {
        SpinModelSource::SpinFolder(folder)
    } else {
        SpinModelSource::BuiltIn
    })
}

impl RuntimeConfig {
    /// Whether `name` is a model this config provides (to wasi:nn or to Spin's LLM interface).
    pub fn provides(&self, name: &str) -> bool {
        self.model.contains_key(name) || self.llm.embeddings.contains_key(name)
    }

    /// Serves Spin's embedding model `name` from the default app's pinned model and tokenizer,
    /// placed under `dir` (their paths in the default app, below it).
    pub fn add_builtin_embedding_model(&mut self, name: &str, dir: &Path) -> Result<()> {
        let builtin = Builtin::of(name)?;
        let place = |path: &str| dir.join(path).to_string_lossy().into_owned();
        let files = [builtin.model.path.as_str(), builtin.embedding.tokenizer.as_str()];
        for asset in builtin.config.asset.iter().filter(|asset| files.contains(&asset.path.as_str())) {
            self.asset.push(Asset { path: place(&asset.path), ..asset.clone() });
        }
        let (model, tokenizer) = (place(&builtin.model.path), place(&builtin.embedding.tokenizer));
        self.add_embedding_model(name, builtin, model, tokenizer);
        Ok(())
    }

    /// Serves Spin's embedding model `name` from a BERT checkpoint (`checkpoint`: a folder with
    /// `config.json` and `model.safetensors`) exported to ONNX at `output`, with `tokenizer`;
    /// otherwise run as the built-in model is.
    pub fn add_exported_embedding_model(
        &mut self,
        name: &str,
        checkpoint: &Path,
        tokenizer: &Path,
        output: &Path,
    ) -> Result<()> {
        let builtin = Builtin::of(name)?;
        let output = output.to_string_lossy().into_owned();
        self.export.push(ExportStep {
            output: output.clone(),
            model_dir: checkpoint.to_string_lossy().into_owned(),
            pooling: Pooling::None,
            normalize: None,
            head: "none".into(),
            label_map: None,
            sha256: None,
        });
        self.add_embedding_model(name, builtin, output, tokenizer.to_string_lossy().into_owned());
        Ok(())
    }

    /// `[model.NAME]` and `[llm.embeddings.NAME]` as the built-in model's, on these files; the
    /// default app's ONNX Runtime unless this config names one.
    fn add_embedding_model(&mut self, name: &str, builtin: Builtin, model_path: String, tokenizer: String) {
        self.model.insert(name.to_string(), ModelConfig { path: model_path, ..builtin.model });
        let embedding = EmbeddingModelConfig { model: name.to_string(), tokenizer, ..builtin.embedding };
        self.llm.embeddings.insert(name.to_string(), embedding);
        if self.onnxruntime.is_none() {
            self.onnxruntime = builtin.config.onnxruntime;
        }
    }
}

/// The default app's entries for a Spin model.
struct Builtin {
    config: RuntimeConfig,
    model: ModelConfig,
    embedding: EmbeddingModelConfig,
}

impl Builtin {
    fn of(name: &str) -> Result<Builtin> {
        let config = RuntimeConfig::parse(DEFAULT_APP_CONFIG).expect("the built-in runtime config is valid");
        let embedding =
            config.llm.embeddings.get(name).with_context(|| format!("no built-in model {name:?}"))?.clone();
        let model = config.model[&embedding.model].clone();
        Ok(Builtin { config, model, embedding })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_model_is_the_default_apps_pinned_one_under_the_cache() {
        let default = RuntimeConfig::parse(DEFAULT_APP_CONFIG).unwrap();
        let mut config = RuntimeConfig::default();
        assert!(!config.provides("all-minilm-l6-v2"));
        config.add_builtin_embedding_model("all-minilm-l6-v2", Path::new("/cache/builtin")).unwrap();
        assert!(config.provides("all-minilm-l6-v2"));
        let model = &config.model["all-minilm-l6-v2"];
        assert_eq!(model.path, "/cache/builtin/models/all-minilm-l6-v2/model.onnx");
        let embedding = &config.llm.embeddings["all-minilm-l6-v2"];
        assert_eq!(embedding.tokenizer, "/cache/builtin/models/all-minilm-l6-v2/tokenizer.json");
        // Both files pinned by the default app's sums, and nothing else fetched.
        let pinned: Vec<(&str, &str)> =
            config.asset.iter().map(|a| (a.path.as_str(), a.sha256.as_str())).collect();
        assert_eq!(pinned.len(), 2, "{pinned:?}");
        for (path, sha256) in pinned {
            let relative = path.strip_prefix("/cache/builtin/").unwrap();
            assert!(default.asset.iter().any(|a| a.path == relative && a.sha256 == sha256), "{path}");
        }
        assert_eq!(config.onnxruntime.unwrap().sha256, default.onnxruntime.unwrap().sha256);
    }

    #[test]
    fn only_spins_embedding_models_have_a_source() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-spin-models-{}", std::process::id()));
        assert_eq!(source_of(&dir, "llama2-chat"), None);
        assert_eq!(source_of(&dir, "minilm"), None);
        assert_eq!(source_of(&dir, "all-minilm-l6-v2"), Some(SpinModelSource::BuiltIn));
        let folder = spin_folder(&dir, "all-minilm-l6-v2");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("tokenizer.json"), "{}").unwrap();
        assert_eq!(source_of(&dir, "all-minilm-l6-v2"), Some(SpinModelSource::BuiltIn), "no checkpoint yet");
        std::fs::write(folder.join("model.safetensors"), "").unwrap();
        assert_eq!(source_of(&dir, "all-minilm-l6-v2"), Some(SpinModelSource::SpinFolder(folder)));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
