//! Apps on their way to and from registries, as the command line moves them: pushed with the
//! assets their runtime config names, pulled into the cache, signed where they lie.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::{self, RuntimeConfig};
use edgeinfer_registry::Connection;
use edgeinfer_sources::{Sources, cache_dir};
use edgeinfer_trust::SigningKey;

/// Pushes the app of `manifest_path` to `reference`, signed with `sign_key` when given. Its
/// runtime config (`runtime_config`, else the one beside the manifest) travels with it, and what
/// that config names is fetched first where it is missing.
pub async fn push(
    manifest_path: &Path,
    runtime_config: Option<PathBuf>,
    reference: &str,
    connection: &Connection,
    sign_key: Option<&SigningKey>,
) -> Result<edgeinfer_registry::Pushed> {
    let manifest = Manifest::load(manifest_path)?;
    let runtime_config =
        runtime_config.or_else(|| Some(runtime_config::default_path(&manifest.dir)).filter(|p| p.is_file()));
    if let Some(path) = &runtime_config {
        let (config, dir, sources) =
            (RuntimeConfig::load(path)?, manifest.dir.clone(), Sources::new(connection.clone()));
        tokio::task::spawn_blocking(move || sources.provision_assets(&config, &dir)).await??;
    }
    edgeinfer_registry::push(manifest_path, runtime_config.as_deref(), reference, connection, sign_key).await
}

/// Fetches and verifies what the app of `manifest_path` and its runtime config need (models,
/// ONNX Runtime) into the cache, its routes checked first; returns the ONNX Runtime library and
/// the files the app serves from.
pub fn fetch(
    manifest_path: &Path,
    runtime_config: Option<&Path>,
    connection: Connection,
) -> Result<edgeinfer_sources::Provisioned> {
    let manifest = Manifest::load(manifest_path)?;
    let config = edgeinfer_sources::load_runtime_config(runtime_config, &manifest)?;
    edgeinfer_server::check_routes(&manifest, config.kserve.enabled)?;
    Sources::new(connection).provision(&config, &manifest.dir)
}

/// Pulls an app artifact into the cache (verified, laid out) and says what it fetched.
pub async fn pull(reference: &str, connection: &Connection) -> Result<edgeinfer_registry::Pulled> {
    let pulled = edgeinfer_registry::pull(reference, connection, &cache_dir()).await?;
    eprintln!(
        "edgeinfer: pulled {reference} ({}){}: {} layers, {} fetched ({:.1} MB) in {:.1} s",
        pulled.digest,
        if pulled.offline { " from the cache, the registry being unreachable" } else { "" },
        pulled.layers,
        pulled.layers_fetched,
        pulled.bytes_fetched as f64 / 1e6,
        pulled.seconds
    );
    Ok(pulled)
}

/// What `sign` signed.
pub enum Signed {
    /// A file, its detached signature written beside it.
    File { signature_file: PathBuf },
    /// An artifact in a registry (by its digest), its signature pushed beside it.
    Artifact { digest: String, signature: String },
}

impl std::fmt::Display for Signed {
    /// Where the signature went.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signed::File { signature_file } => write!(f, "-> {}", signature_file.display()),
            Signed::Artifact { digest, signature } => write!(f, "({digest}); signature {signature}"),
        }
    }
}

/// Signs `target`: a file (anything that is not a registry reference) gets a detached signature
/// in `TARGET.sig`; an artifact gets a signature artifact in its repository.
pub async fn sign(
    target: &str,
    key: &SigningKey,
    registry: impl FnOnce() -> Result<Connection>,
) -> Result<Signed> {
    if Path::new(target).is_file() || !edgeinfer_registry::looks_like_reference(target) {
        let bytes = std::fs::read(target).with_context(|| format!("cannot read {target}"))?;
        let signature_file = PathBuf::from(format!("{target}.sig"));
        std::fs::write(&signature_file, format!("{}\n", key.sign(&bytes)))
            .with_context(|| format!("cannot write {}", signature_file.display()))?;
        return Ok(Signed::File { signature_file });
    }
    let (digest, signature) = edgeinfer_registry::sign(target, &registry()?, key).await?;
    Ok(Signed::Artifact { digest, signature })
}
