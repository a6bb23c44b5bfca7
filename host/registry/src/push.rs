//! `edgeinfer registry push`: a spin.toml app (built components, mounted files) and its runtime
//! config as an OCI artifact in Spin's layout.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use edgeinfer_config::manifest::{Component, Manifest};
use edgeinfer_config::precompiled::{self, PrecompiledComponent};
use edgeinfer_config::runtime_config::RuntimeConfig;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::{Reference, RegistryOperation};
use serde_json::{Map, Value, json};

use crate::locked::{
    ContentPath, ContentRef, LockedApp, LockedComponent, LockedDependency, LockedSource, LockedTrigger,
};
use crate::{
    Connection, DATA_MEDIA_TYPE, HOST_CONFIG_MEDIA_TYPE, LOCKED_APP_DIGEST_LABEL,
    SPIN_APPLICATION_MEDIA_TYPE, WASM_LAYER_MEDIA_TYPE, digest_of, digest_of_file,
};

/// Content of this size or less travels inline in the lock, without a layer (as Spin does: some
/// registries refuse very small blobs).
const INLINE_MAX_BYTES: u64 = 128;

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    /// The manifest's digest: `REPOSITORY@DIGEST` names exactly this version.
    pub digest: String,
    /// Layers in the manifest.
    pub layers: usize,
    /// Layers the registry already had (not sent again).
    pub layers_present: usize,
    /// Bytes of all layers.
    pub bytes_total: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// The digest of the signature pushed beside it (`push` with a key).
    pub signature: Option<String>,
}

impl std::fmt::Display for Pushed {
    /// Layers and bytes sent, and the signature when there is one.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} layers ({} already there), {:.1} MB sent of {:.1} MB",
            self.layers,
            self.layers_present,
            self.bytes_sent as f64 / 1e6,
            self.bytes_total as f64 / 1e6
        )?;
        match &self.signature {
            Some(signature) => {
                let tag = crate::signature::signature_tag(&self.digest);
                write!(f, "; signed, the signature is {signature}, tagged {tag}")
            }
            None => Ok(()),
        }
    }
}

/// One layer to push: where its bytes are.
struct Layer {
    digest: String,
    media_type: &'static str,
    size: u64,
    content: LayerContent,
    annotations: Option<BTreeMap<String, String>>,
}

enum LayerContent {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The layers of an artifact, one per distinct digest, in the order first seen.
#[derive(Default)]
struct Layers {
    list: Vec<Layer>,
    seen: HashMap<String, usize>,
}

impl Layers {
    /// Adds a file as a layer (once per digest) and returns how the lock refers to it.
    fn file(&mut self, path: &Path, media_type: &'static str) -> Result<ContentRef> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        let digest = digest_of_file(path)?;
        if media_type == DATA_MEDIA_TYPE && size <= INLINE_MAX_BYTES {
            let bytes = std::fs::read(path)?;
            return Ok(ContentRef {
                inline: Some(crate::locked::encode_inline(&bytes)),
                ..ContentRef::digest(digest)
            });
        }
        self.add(Layer {
            digest: digest.clone(),
            media_type,
            size,
            content: LayerContent::File(path.into()),
            annotations: None,
        });
        Ok(ContentRef::digest(digest))
    }

    /// Adds a precompiled component (outside the lock: only hosts look for it).
    fn precompiled(&mut self, path: &Path, description: &PrecompiledComponent) -> Result<()> {
        let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
        let digest = digest_of_file(path)?;
        // One layer per component and target, even where two components compile to the same
        // bytes: hosts look a component's code up by its annotations.
        let key = format!("{digest} {} {}", description.component, description.profile.target);
        if !self.seen.contains_key(&key) {
            self.seen.insert(key, self.list.len());
            let content = LayerContent::File(path.into());
            let annotations = Some(description.annotations());
            self.list.push(Layer { digest, media_type: precompiled::MEDIA_TYPE, size, content, annotations });
        }
        Ok(())
    }

    fn bytes(&mut self, bytes: Vec<u8>, media_type: &'static str) -> String {
        let digest = digest_of(&bytes);
        let size = bytes.len() as u64;
        let content = LayerContent::Bytes(bytes);
        self.add(Layer { digest: digest.clone(), media_type, size, content, annotations: None });
        digest
    }

    fn add(&mut self, layer: Layer) {
        if !self.seen.contains_key(&layer.digest) {
            self.seen.insert(layer.digest.clone(), self.list.len());
            self.list.push(layer);
        }
    }
}

/// Pushes the app of `manifest_path` (components as built, files as mounted) with the runtime
/// config at `runtime_config` (if any) to `reference`.
pub async fn push(
    manifest_path: &Path,
    runtime_config: Option<&Path>,
    reference: &str,
    connection: &Connection,
    sign_key: Option<&edgeinfer_trust::SigningKey>,
) -> Result<Pushed> {
    let reference = crate::parse_reference(reference)?;
    let manifest = Manifest::load(manifest_path)?;
    let mut layers = Layers::default();
    let locked = lock(&manifest, &mut layers)?;
    if let Some(path) = runtime_config {
        let config = host_config(path, &manifest.dir, &mut layers)?;
        layers.bytes(serde_json::to_vec(&config)?, HOST_CONFIG_MEDIA_TYPE);
    }
    let locked_json = serde_json::to_vec(&locked)?;
    let locked_digest = layers.bytes(locked_json, SPIN_APPLICATION_MEDIA_TYPE);
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "Wasip1",
        "config": {"Labels": {LOCKED_APP_DIGEST_LABEL: locked_digest}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))?;
    let mut pushed = upload(&reference, connection, &manifest, layers, config).await?;
    if let Some(key) = sign_key {
        let client = connection.client(&reference)?;
        pushed.signature =
            Some(crate::signature::push_signature(&client, &reference, &pushed.digest, key).await?);
    }
    Ok(pushed)
}

/// Signs the artifact `reference` names (its digest resolved once) and pushes the signature
/// beside it, as `cosign sign --key` does: for apps pushed by Spin or another tool. The
/// artifact's digest and the signature manifest's.
pub async fn sign(
    reference: &str,
    connection: &Connection,
    key: &edgeinfer_trust::SigningKey,
) -> Result<(String, String)> {
    let reference = crate::parse_reference(reference)?;
    let client = connection.client(&reference)?;
    let auth = connection.auth(&reference)?;
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .with_context(|| format!("cannot authenticate to {} for pushing", reference.registry()))?;
    // The digest of the manifest's bytes as fetched, not the registry's word for it: what is
    // signed must be what was seen.
    let (manifest, _) = client
        .pull_manifest_raw(
            &reference,
            &auth,
            &[OCI_IMAGE_MEDIA_TYPE, oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE],
        )
        .await
        .with_context(|| format!("cannot fetch the manifest of {reference}"))?;
    let digest = digest_of(&manifest);
    if let Some(named) = reference.digest()
        && named != digest
    {
        anyhow::bail!("{reference}: the registry sent a manifest whose digest is {digest}");
    }
    let signature = crate::signature::push_signature(&client, &reference, &digest, key).await?;
    Ok((digest, signature))
}

/// The locked app of `manifest`, adding each Wasm binary and file to `layers`.
fn lock(manifest: &Manifest, layers: &mut Layers) -> Result<LockedApp> {
    let mut metadata = Map::new();
    let application = &manifest.application;
    metadata.insert("name".into(), json!(application.name));
    if let Some(version) = &application.version {
        metadata.insert("version".into(), json!(version));
    }
    if let Some(description) = &application.description {
        metadata.insert("description".into(), json!(description));
    }
    metadata.insert("trigger".into(), json!({"type": "http"}));
    let triggers = manifest
        .http_triggers
        .iter()
        .enumerate()
        .map(|(index, trigger)| LockedTrigger {
            id: format!("http-trigger{index}"),
            trigger_type: "http".into(),
            trigger_config: json!({"component": trigger.component, "route": trigger.route}),
            trigger_dependencies: Map::new(),
        })
        .collect();
    let components = manifest
        .components
        .iter()
        .map(|(id, component)| {
            lock_component(manifest, id, component, layers).with_context(|| format!("component {id}"))
        })
        .collect::<Result<_>>()?;
    Ok(LockedApp {
        spin_lock_version: 0,
        must_understand: Vec::new(),
        metadata,
        host_requirements: Map::new(),
        variables: Map::new(),
        triggers,
        components,
    })
}

fn lock_component(
    manifest: &Manifest,
    id: &str,
    component: &Component,
    layers: &mut Layers,
) -> Result<LockedComponent> {
    let wasm = |path: &str, layers: &mut Layers| -> Result<LockedSource> {
        let file = manifest.resolve(path);
        anyhow::ensure!(
            file.is_file(),
            "{} does not exist: build the app first (edgeinfer build)",
            file.display()
        );
        Ok(LockedSource {
            content_type: "application/wasm".into(),
            content: layers.file(&file, WASM_LAYER_MEDIA_TYPE)?,
        })
    };
    let source = wasm(&component.source, layers)?;
    let mut dependencies = BTreeMap::new();
    for (name, dependency) in &component.dependencies {
        dependencies.insert(
            name.clone(),
            LockedDependency {
                source: wasm(&dependency.path, layers)?,
                export: dependency.export.clone(),
                inherit: component.dependencies_inherit_configuration.then(|| json!("All")),
            },
        );
    }
    let dependency_digests: BTreeMap<String, String> = dependencies
        .iter()
        .filter_map(|(name, d)| Some((name.clone(), d.source.content.digest.clone()?)))
        .collect();
    add_precompiled(manifest, id, component, &source.content, &dependency_digests, layers)?;
    let mut files = Vec::new();
    for mount in &component.files {
        let (source, destination) = mount.source_and_destination();
        let host = manifest.resolve(source);
        let guest = destination.trim_matches('/');
        if host.is_file() {
            files
                .push(ContentPath { content: layers.file(&host, DATA_MEDIA_TYPE)?, path: guest.to_string() });
            continue;
        }
        anyhow::ensure!(host.is_dir(), "file mount {} does not exist", host.display());
        let mut entries: Vec<_> = walkdir::WalkDir::new(&host)
            .follow_links(true)
            .into_iter()
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", host.display()))?;
        entries.sort_by(|a, b| a.path().cmp(b.path()));
        for entry in entries.iter().filter(|e| e.file_type().is_file()) {
            let relative = entry.path().strip_prefix(&host)?;
            let relative: Vec<_> = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect();
            let path =
                if guest.is_empty() { relative.join("/") } else { format!("{guest}/{}", relative.join("/")) };
            files.push(ContentPath { content: layers.file(entry.path(), DATA_MEDIA_TYPE)?, path });
        }
    }
    let mut metadata = Map::new();
    if let Some(description) = &component.description {
        metadata.insert("description".into(), json!(description));
    }
    for (key, values) in
        [("allowed_outbound_hosts", &component.allowed_outbound_hosts), ("ai_models", &component.ai_models)]
    {
        if !values.is_empty() {
            metadata.insert(key.into(), json!(values));
        }
    }
    Ok(LockedComponent {
        id: id.to_string(),
        metadata,
        source,
        env: component.environment.clone(),
        files,
        config: BTreeMap::new(),
        dependencies,
        trigger_dependencies: Map::new(),
        host_requirements: Map::new(),
    })
}

/// Adds the files `build --precompile` wrote for component `id` that were compiled from its
/// current source and dependencies (`source`, `dependencies`: their digests); says which stale
/// ones it leaves out.
fn add_precompiled(
    manifest: &Manifest,
    id: &str,
    component: &Component,
    source: &ContentRef,
    dependencies: &BTreeMap<String, String>,
    layers: &mut Layers,
) -> Result<()> {
    let folder = precompiled::folder(&manifest.resolve(&component.source));
    // Components sharing a source share the folder: each takes its own files.
    let own = precompiled::list(&folder)?.into_iter().filter(|(_, d)| d.component == id);
    for (compiled, description) in own {
        let digest = |sha256: &str| format!("sha256:{sha256}");
        let same_dependencies = description.dependencies_sha256.len() == dependencies.len()
            && description
                .dependencies_sha256
                .iter()
                .all(|(key, sha)| dependencies.get(key) == Some(&digest(sha)));
        if source.digest.as_deref() != Some(digest(&description.source_sha256).as_str()) || !same_dependencies
        {
            eprintln!(
                "edgeinfer: leaving out {}: it was compiled from another build of component {id} (edgeinfer build --precompile again)",
                compiled.display()
            );
            continue;
        }
        layers.precompiled(&compiled, &description)?;
    }
    Ok(())
}

/// Our layer: the runtime config's text and, by app-relative path, the digest of every file of the
/// app it names that exists (`RuntimeConfig::app_files`), each also a layer.
fn host_config(path: &Path, app_dir: &Path, layers: &mut Layers) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read runtime config {}", path.display()))?;
    let config =
        RuntimeConfig::parse(&text).with_context(|| format!("invalid runtime config {}", path.display()))?;
    let mut files = BTreeMap::new();
    for edgeinfer_config::runtime_config::AppFile { path: relative, required } in config.app_files() {
        crate::safe_relative(&relative).with_context(|| format!("runtime config {}", path.display()))?;
        let file = app_dir.join(&relative);
        if !file.is_file() {
            if required {
                bail!(
                    "{} (named by {}) does not exist: run `edgeinfer fetch` first",
                    file.display(),
                    path.display()
                );
            }
            continue;
        }
        let content = layers.file(&file, DATA_MEDIA_TYPE)?;
        files.insert(relative, json!({"digest": content.digest, "inline": content.inline}));
    }
    Ok(json!({"runtime_config": text, "files": files}))
}

/// Sends the layers the registry lacks, the config and the manifest.
async fn upload(
    reference: &Reference,
    connection: &Connection,
    manifest: &Manifest,
    layers: Layers,
    config: Vec<u8>,
) -> Result<Pushed> {
    let client = connection.client(reference)?;
    let auth = connection.auth(reference)?;
    client
        .auth(reference, &auth, RegistryOperation::Push)
        .await
        .with_context(|| format!("cannot authenticate to {} for pushing", reference.registry()))?;
    let mut pushed = Pushed {
        digest: String::new(),
        layers: 0,
        layers_present: 0,
        bytes_total: 0,
        bytes_sent: 0,
        signature: None,
    };
    let mut descriptors = Vec::new();
    for layer in &layers.list {
        pushed.layers += 1;
        pushed.bytes_total += layer.size;
        descriptors.push(OciDescriptor {
            media_type: layer.media_type.to_string(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            annotations: layer.annotations.clone(),
            ..OciDescriptor::default()
        });
        if client.blob_exists(reference, &layer.digest).await.context("cannot reach the registry")? {
            pushed.layers_present += 1;
            continue;
        }
        let bytes = match &layer.content {
            LayerContent::File(path) => {
                tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?
            }
            LayerContent::Bytes(bytes) => bytes.clone(),
        };
        client
            .push_blob(reference, bytes, &layer.digest)
            .await
            .with_context(|| format!("cannot push layer {}", layer.digest))?;
        pushed.bytes_sent += layer.size;
    }
    let config_digest = digest_of(&config);
    let config_size = config.len() as i64;
    client.push_blob(reference, config, &config_digest).await.context("cannot push the image config")?;
    let mut annotations = BTreeMap::new();
    let application = &manifest.application;
    annotations.insert("org.opencontainers.image.title".to_string(), application.name.clone());
    if let Some(version) = &application.version {
        annotations.insert("org.opencontainers.image.version".to_string(), version.clone());
    }
    if let Some(description) = &application.description {
        annotations.insert("org.opencontainers.image.description".to_string(), description.clone());
    }
    if let Ok(now) = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339) {
        annotations.insert("org.opencontainers.image.created".to_string(), now);
    }
    let image = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest,
            size: config_size,
            ..OciDescriptor::default()
        },
        layers: descriptors,
        subject: None,
        artifact_type: None,
        annotations: Some(annotations),
    };
    // Sent as these exact bytes, so that their digest is the version's.
    let body = serde_json::to_vec(&image)?;
    pushed.digest = digest_of(&body);
    client
        .push_manifest_raw(reference, body, http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE))
        .await
        .with_context(|| format!("cannot push the manifest of {reference}"))?;
    Ok(pushed)
}
