//! `edgeinfer registry pull` / `up -f REF`: an app artifact (ours or `spin registry push`'s) by
//! tag or digest into a verified, content-addressed cache, laid out as an app directory.
//!
//! Cache layout under `<cache>/oci/`: `blobs/sha256/<hex>` (each written to a `.partial` file,
//! verified against its digest by the client, then renamed: nothing unverified has a final name),
//! `apps/<manifest hex>/` (spin.toml, `wasm/`, `files/<component>/`, the runtime config and the
//! files it names; built in a temporary directory and renamed when complete), and, for starting
//! with the registry down, `manifests/<hex>.json` (each completely pulled manifest) and
//! `refs/<registry>/<repository>/@tags/<tag>` (the digest a tag named then).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use edgeinfer_config::precompiled::{self, EngineProfile};
use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::locked::{ContentRef, LockedApp, LockedComponent};
use crate::{
    ARCHIVE_MEDIA_TYPE, Connection, HOST_CONFIG_MEDIA_TYPE, SPIN_APPLICATION_MEDIA_TYPE, digest_hex,
    digest_of, safe_relative,
};

/// Layers fetched at once.
const PARALLEL_FETCHES: usize = 4;

/// What a pull did and where the app is.
#[derive(Debug)]
pub struct Pulled {
    /// The manifest's digest.
    pub digest: String,
    /// The app's spin.toml, laid out under the cache.
    pub manifest_path: PathBuf,
    /// The app's runtime config (from our layer), when the artifact has one.
    pub runtime_config: Option<PathBuf>,
    /// Layers in the manifest, and how many were fetched (the others were cached).
    pub layers: usize,
    pub layers_fetched: usize,
    /// Bytes fetched from the registry.
    pub bytes_fetched: u64,
    /// Whether the registry was unreachable and a cached resolution of the tag served instead.
    pub offline: bool,
    pub seconds: f64,
    /// The precompiled components for `Connection::precompiled_for`, fetched and verified (from
    /// a signed artifact only).
    pub precompiled: Vec<PrecompiledLayer>,
}

/// A component precompiled for this host's wasmtime version and target, fetched into the cache
/// from an artifact whose signature was verified.
#[derive(Debug, Clone)]
pub struct PrecompiledLayer {
    /// The component's id in the artifact.
    pub component: String,
    /// The engine it was compiled for.
    pub profile: EngineProfile,
    /// The sha256 of the composed component it is the compiled form of.
    pub composed_sha256: String,
    /// The verified layer in the cache.
    pub path: PathBuf,
}

/// The precompiled layers of `manifest` for `connection`'s engine (its wasmtime version and
/// target), with what their annotations say; none unless the artifact's signature is checked.
fn precompiled_layers(
    manifest: &OciImageManifest,
    connection: &Connection,
) -> Vec<(OciDescriptor, String, EngineProfile, String)> {
    let (Some(wanted), Some(_)) = (&connection.precompiled_for, &connection.trusted) else {
        return Vec::new();
    };
    manifest
        .layers
        .iter()
        .filter(|l| l.media_type == precompiled::MEDIA_TYPE)
        .filter_map(|layer| {
            let (component, profile, composed) = precompiled::from_annotations(layer.annotations.as_ref()?)?;
            (profile.wasmtime == wanted.wasmtime && profile.target == wanted.target)
                .then(|| (layer.clone(), component, profile, composed))
        })
        .collect()
}

/// Pulls `reference` into `cache_root/oci` and lays out its app.
pub async fn pull(reference: &str, connection: &Connection, cache_root: &Path) -> Result<Pulled> {
    let started = Instant::now();
    let reference = crate::parse_reference(reference)?;
    let cache = Cache { root: cache_root.join("oci") };
    let client = connection.client(&reference)?;
    let auth = connection.auth(&reference)?;
    let (manifest, digest, offline) = match client.pull_image_manifest(&reference, &auth).await {
        Ok((manifest, digest)) => (manifest, digest, false),
        Err(e) if is_unreachable(&e) => match cache.recall(&reference) {
            Some((manifest, digest)) => {
                tracing::warn!(
                    "registry {} unreachable ({e}); serving {digest}, cached for {reference}",
                    reference.registry()
                );
                (manifest, digest, true)
            }
            None => {
                return Err(e)
                    .with_context(|| format!("cannot reach the registry for {reference} (nothing cached)"));
            }
        },
        Err(e) => return Err(e).with_context(|| format!("cannot pull {reference}")),
    };
    if let Some(trusted) = &connection.trusted {
        // Before a layer is fetched. Offline, only a digest this cache verified before with a
        // key still trusted (the marker holds that key's fingerprint).
        let marker = cache.root.join("verified").join(digest_hex(&digest)?);
        if offline {
            let verified_by = std::fs::read_to_string(&marker).unwrap_or_default();
            if !trusted.trusts(verified_by.trim()) {
                return Err(crate::Untrusted(format!(
                    "the registry is unreachable and the signature of {digest} was never verified here with a key trusted now ({})",
                    trusted.names()
                ))
                .into());
            }
        } else {
            let key = crate::signature::verify(&client, &auth, &reference, &digest, trusted).await?;
            tracing::info!(%reference, %digest, key, "signature verified");
            let fingerprint = trusted.fingerprint(&key).unwrap_or_default();
            write_atomically(&marker, fingerprint.as_bytes())?;
        }
    }
    let locked_layer = lock_descriptor(&manifest, &reference)?;
    if let Some(archive) = manifest.layers.iter().find(|l| l.media_type == ARCHIVE_MEDIA_TYPE) {
        bail!(
            "{reference}: layer {} is a file archive ({ARCHIVE_MEDIA_TYPE}), which edgeinfer does not unpack",
            archive.digest
        );
    }
    // Native code compiled for other hosts, or from an artifact whose signature is not checked,
    // is not fetched.
    let precompiled = precompiled_layers(&manifest, connection);
    let mut wanted: Vec<OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| {
            l.media_type != precompiled::MEDIA_TYPE || precompiled.iter().any(|(p, ..)| p.digest == l.digest)
        })
        .cloned()
        .collect();
    if !wanted.iter().any(|l| l.digest == locked_layer.digest) {
        wanted.push(locked_layer.clone());
    }
    let mut missing: Vec<OciDescriptor> = wanted
        .iter()
        .filter(|l| cache.blob(&l.digest).map(|p| !p.is_file()).unwrap_or(true))
        .cloned()
        .collect();
    missing.sort_by(|a, b| a.digest.cmp(&b.digest));
    missing.dedup_by(|a, b| a.digest == b.digest);
    // Precompiled code only saves a compile: offline, what is not cached is done without.
    let mut precompiled = precompiled;
    if offline {
        let precompiled_digests: Vec<String> = precompiled.iter().map(|(l, ..)| l.digest.clone()).collect();
        missing.retain(|l| !precompiled_digests.contains(&l.digest));
        precompiled.retain(|(l, ..)| cache.blob(&l.digest).is_ok_and(|p| p.is_file()));
    }
    if offline && !missing.is_empty() {
        bail!(
            "registry {} unreachable and {} layers of {digest} are not cached",
            reference.registry(),
            missing.len()
        );
    }
    let bytes_fetched: u64 = missing.iter().map(|l| l.size.max(0) as u64).sum();
    futures::stream::iter(missing.iter())
        .map(|layer| cache.fetch(&client, &reference, layer))
        .buffer_unordered(PARALLEL_FETCHES)
        .try_collect::<Vec<()>>()
        .await?;
    let locked_bytes = std::fs::read(cache.blob(&locked_layer.digest)?)?;
    let locked: LockedApp = serde_json::from_slice(&locked_bytes)
        .with_context(|| format!("{reference}: the locked app is not valid"))?;
    let host_config = match manifest.layers.iter().find(|l| l.media_type == HOST_CONFIG_MEDIA_TYPE) {
        Some(layer) => Some(
            serde_json::from_slice::<Value>(&std::fs::read(cache.blob(&layer.digest)?)?)
                .with_context(|| format!("{reference}: layer {} is not JSON", layer.digest))?,
        ),
        None => None,
    };
    let app_dir = cache.root.join("apps").join(digest_hex(&digest)?);
    if !app_dir.join("spin.toml").is_file() {
        lay_out(&cache, &locked, host_config.as_ref(), &app_dir)
            .with_context(|| format!("cannot lay out {reference}"))?;
    }
    if !offline {
        // Only a complete pull is remembered for starting with the registry down.
        if let Err(e) = cache.remember(&reference, &digest, &manifest) {
            tracing::warn!("cannot remember {reference} for starting offline: {e:#}");
        }
    }
    let runtime_config = app_dir.join("runtime-config/local.toml");
    let precompiled = precompiled
        .into_iter()
        .map(|(layer, component, profile, composed_sha256)| {
            Ok(PrecompiledLayer { component, profile, composed_sha256, path: cache.blob(&layer.digest)? })
        })
        .collect::<Result<_>>()?;
    Ok(Pulled {
        digest,
        manifest_path: app_dir.join("spin.toml"),
        runtime_config: runtime_config.is_file().then_some(runtime_config),
        layers: manifest.layers.len(),
        layers_fetched: missing.len(),
        bytes_fetched,
        offline,
        seconds: started.elapsed().as_secs_f64(),
        precompiled,
    })
}

/// The locked app's layer (or, in artifacts of older Spin versions, the config).
fn lock_descriptor(manifest: &OciImageManifest, reference: &Reference) -> Result<OciDescriptor> {
    Ok(manifest
        .layers
        .iter()
        .find(|l| l.media_type == SPIN_APPLICATION_MEDIA_TYPE)
        .or((manifest.config.media_type == SPIN_APPLICATION_MEDIA_TYPE).then_some(&manifest.config))
        .with_context(|| {
            format!("{reference} is not a Spin app: no layer of media type {SPIN_APPLICATION_MEDIA_TYPE}")
        })?
        .clone())
}

/// One component's Wasm from an app artifact named by digest.
#[derive(Debug)]
pub struct FetchedComponent {
    /// The layer's digest (verified).
    pub layer_digest: String,
    pub bytes: Vec<u8>,
    /// The component precompiled for `Connection::precompiled_for`, when the artifact is signed
    /// and carries one.
    pub precompiled: Vec<PrecompiledLayer>,
}

/// Fetches component `id`'s Wasm (its `source`, as the lock names it) from the artifact
/// `reference`, which must name a digest: what a fleet deploys must be one exact version. Only
/// the lock and that layer are fetched (into the cache, verified).
pub async fn fetch_component(
    reference: &str,
    id: &str,
    connection: &Connection,
    cache_root: &Path,
) -> Result<FetchedComponent, crate::FetchError> {
    let reference = crate::parse_reference(reference)?;
    if reference.digest().is_none() {
        return Err(crate::InvalidRequest(format!(
            "{reference} names a tag; deploy by digest (host/repository@sha256:...), so every host gets the same version"
        ))
        .into());
    }
    let cache = Cache { root: cache_root.join("oci") };
    let client = connection.client(&reference)?;
    let auth = connection.auth(&reference)?;
    if let (Some(trusted), Some(digest)) = (&connection.trusted, reference.digest()) {
        let key = crate::signature::verify(&client, &auth, &reference, digest, trusted).await?;
        tracing::info!(%reference, key, "signature verified");
    }
    let (manifest, _, locked) = cache.lock(&client, &auth, &reference).await?;
    let Some(component) = locked.components.iter().find(|c| c.id == id) else {
        let ids: Vec<&str> = locked.components.iter().map(|c| c.id.as_str()).collect();
        let message = format!("{reference} has no component {id:?} (it has {})", ids.join(", "));
        return Err(crate::InvalidRequest(message).into());
    };
    let layer_digest =
        component.source.content.digest.clone().context("the component's source has no digest")?;
    let layer = manifest
        .layers
        .iter()
        .find(|l| l.digest == layer_digest)
        .with_context(|| format!("{reference}: component {id}'s source {layer_digest} is not a layer"))?;
    cache.ensure(&client, &reference, layer).await?;
    let path = cache.blob(&layer_digest)?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut precompiled = Vec::new();
    for (layer, component, profile, composed_sha256) in precompiled_layers(&manifest, connection) {
        if component == id {
            cache.ensure(&client, &reference, &layer).await?;
            let path = cache.blob(&layer.digest)?;
            precompiled.push(PrecompiledLayer { component, profile, composed_sha256, path });
        }
    }
    Ok(FetchedComponent { layer_digest, bytes, precompiled })
}

/// The layer of digest `digest` of the artifact `reference` (any artifact: a model pushed with
/// `oras push`, an app whose files are layers), fetched into the cache and verified; its path.
pub async fn fetch_layer(
    reference: &str,
    digest: &str,
    connection: &Connection,
    cache_root: &Path,
) -> Result<PathBuf> {
    let reference = crate::parse_reference(reference)?;
    let cache = Cache { root: cache_root.join("oci") };
    let cached = cache.blob(digest)?;
    if cached.is_file() {
        return Ok(cached);
    }
    let client = connection.client(&reference)?;
    let auth = connection.auth(&reference)?;
    let (manifest, _) = client
        .pull_image_manifest(&reference, &auth)
        .await
        .with_context(|| format!("cannot pull {reference}"))?;
    let layer = manifest.layers.iter().find(|l| l.digest == digest).with_context(|| {
        let layers: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
        format!("{reference} has no layer {digest} (its layers: {})", layers.join(", "))
    })?;
    cache.ensure(&client, &reference, layer).await?;
    Ok(cached)
}

/// The locked app of `reference` and the digest it resolved to (only the lock is fetched).
pub async fn locked_app(
    reference: &str,
    connection: &Connection,
    cache_root: &Path,
) -> Result<(String, LockedApp)> {
    let reference = crate::parse_reference(reference)?;
    let cache = Cache { root: cache_root.join("oci") };
    let client = connection.client(&reference)?;
    let (_, digest, locked) = cache.lock(&client, &connection.auth(&reference)?, &reference).await?;
    Ok((digest, locked))
}

/// Whether the registry could not be reached at all (as opposed to answering an error): the
/// client's HTTP error says the connection was refused, the name did not resolve, or no answer
/// came in time.
fn is_unreachable(error: &oci_client::errors::OciDistributionError) -> bool {
    use std::error::Error;
    if let oci_client::errors::OciDistributionError::RequestError(http) = error
        && (http.is_connect() || http.is_timeout())
    {
        return true;
    }
    let mut source: Option<&dyn Error> = Some(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Writes `bytes` to `path` through a file of a unique name, renamed into place.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a cache file has a parent"))?;
    let partial = Partial(path.with_file_name(format!(".partial-{}", unique_suffix())));
    std::fs::write(&partial.0, bytes).with_context(|| format!("cannot write {}", partial.0.display()))?;
    std::fs::rename(&partial.0, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `<pid>-<n>`: a name no other fetch, in this process or another, uses at the same time.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// A file being written, removed unless renamed into place: also when its fetch fails or is
/// dropped because another layer's failed.
struct Partial(PathBuf);

impl Drop for Partial {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The cache of blobs, laid-out apps and tag resolutions.
struct Cache {
    root: PathBuf,
}

impl Cache {
    fn blob(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    /// The manifest of `reference` (checked against its digest, if it names one), the digest, and
    /// its locked app (fetched into the cache unless there).
    async fn lock(
        &self,
        client: &oci_client::Client,
        auth: &oci_client::secrets::RegistryAuth,
        reference: &Reference,
    ) -> Result<(OciImageManifest, String, LockedApp)> {
        let (manifest, digest) = client
            .pull_image_manifest(reference, auth)
            .await
            .with_context(|| format!("cannot pull {reference}"))?;
        let lock_layer = lock_descriptor(&manifest, reference)?;
        self.ensure(client, reference, &lock_layer).await?;
        let locked = serde_json::from_slice(&std::fs::read(self.blob(&lock_layer.digest)?)?)
            .with_context(|| format!("{reference}: the locked app is not valid"))?;
        Ok((manifest, digest, locked))
    }

    /// Where the digest a tag last resolved to is kept: `refs/<registry>/<repository>/@tags/<tag>`
    /// (`@` cannot appear in a repository name, so no repository's files collide with it).
    fn tag_path(&self, reference: &Reference) -> Option<PathBuf> {
        let tag = reference.tag()?;
        let registry = reference.registry().replace(':', "_");
        Some(self.root.join("refs").join(registry).join(reference.repository()).join("@tags").join(tag))
    }

    fn manifest_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.root.join("manifests").join(format!("{}.json", digest_hex(digest)?)))
    }

    /// Keeps a completely pulled manifest by digest and, for a tag alone, what the tag named.
    fn remember(&self, reference: &Reference, digest: &str, manifest: &OciImageManifest) -> Result<()> {
        write_atomically(&self.manifest_path(digest)?, &serde_json::to_vec(manifest)?)?;
        if let (Some(path), None) = (self.tag_path(reference), reference.digest()) {
            write_atomically(&path, digest.as_bytes())?;
        }
        Ok(())
    }

    /// The manifest a reference named at its last complete pull: its digest's, or its tag's.
    fn recall(&self, reference: &Reference) -> Option<(OciImageManifest, String)> {
        let digest = match reference.digest() {
            Some(digest) => digest.to_string(),
            None => std::fs::read_to_string(self.tag_path(reference)?).ok()?.trim().to_string(),
        };
        let manifest =
            serde_json::from_slice(&std::fs::read(self.manifest_path(&digest).ok()?).ok()?).ok()?;
        Some((manifest, digest))
    }

    /// Fetches a layer unless it is cached.
    async fn ensure(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<()> {
        if self.blob(&layer.digest)?.is_file() { Ok(()) } else { self.fetch(client, reference, layer).await }
    }

    /// Fetches one layer; the client checks its digest as it streams, and only a verified file is
    /// renamed into place.
    async fn fetch(
        &self,
        client: &oci_client::Client,
        reference: &Reference,
        layer: &OciDescriptor,
    ) -> Result<()> {
        let target = self.blob(&layer.digest)?;
        let dir = target.parent().expect("blobs/sha256 has a parent");
        tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;
        let partial =
            Partial(dir.join(format!("{}.partial-{}", digest_hex(&layer.digest)?, unique_suffix())));
        let file = tokio::fs::File::create(&partial.0)
            .await
            .with_context(|| format!("cannot write {}", partial.0.display()))?;
        let mut writer = crate::bounded::Bounded {
            inner: tokio::io::BufWriter::new(file),
            left: layer.size.max(0) as u64,
        };
        client
            .pull_blob(reference, layer, &mut writer)
            .await
            .with_context(|| format!("layer {} of {reference}", layer.digest))?;
        writer.inner.flush().await?;
        writer.inner.into_inner().sync_all().await?;
        // Verified: read-only from now on (app directories hard-link it).
        tokio::fs::set_permissions(&partial.0, std::os::unix::fs::PermissionsExt::from_mode(0o444)).await?;
        tokio::fs::rename(&partial.0, &target)
            .await
            .with_context(|| format!("cannot write {}", target.display()))
    }
}

/// Writes the app directory: spin.toml from the lock, each component's Wasm and files, and our
/// runtime config with the files it names. Built beside `app_dir` and renamed when complete.
fn lay_out(cache: &Cache, locked: &LockedApp, host_config: Option<&Value>, app_dir: &Path) -> Result<()> {
    check_supported(locked)?;
    let parent = app_dir.parent().expect("apps/<hex> has a parent");
    std::fs::create_dir_all(parent)?;
    let building = parent.join(format!(
        "{}.partial-{}",
        app_dir.file_name().expect("named").to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&building);
    let result = (|| {
        let mut components = toml::Table::new();
        for component in &locked.components {
            components.insert(
                component.id.clone(),
                toml::Value::Table(lay_out_component(cache, component, &building)?),
            );
        }
        if let Some(config) = host_config {
            lay_out_host_config(cache, config, &building)?;
        }
        let manifest = manifest_toml(locked, components)?;
        std::fs::write(building.join("spin.toml"), manifest)?;
        std::fs::rename(&building, app_dir).or_else(|e| {
            // Another pull laid it out meanwhile.
            if app_dir.join("spin.toml").is_file() { Ok(()) } else { Err(e) }
        })?;
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_dir_all(&building);
    result
}

/// Refuses what would change the app's behaviour and that this host does not implement.
fn check_supported(locked: &LockedApp) -> Result<()> {
    if !locked.must_understand.is_empty() || !locked.host_requirements.is_empty() {
        bail!(
            "the app requires host features edgeinfer does not have: {:?} {:?}",
            locked.must_understand,
            locked.host_requirements.keys().collect::<Vec<_>>()
        );
    }
    if !locked.variables.is_empty() {
        bail!(
            "the app declares variables ({}), which edgeinfer does not support",
            locked.variables.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    for trigger in &locked.triggers {
        if trigger.trigger_type != "http" {
            bail!(
                "trigger {} is of type {:?}; edgeinfer serves HTTP triggers only",
                trigger.id,
                trigger.trigger_type
            );
        }
        if !trigger.trigger_dependencies.is_empty() {
            bail!(
                "trigger {} has trigger dependencies (middleware), which edgeinfer does not support",
                trigger.id
            );
        }
    }
    for component in &locked.components {
        if !component.config.is_empty()
            || !component.host_requirements.is_empty()
            || !component.trigger_dependencies.is_empty()
        {
            bail!(
                "component {} uses variables, host requirements or trigger dependencies, which edgeinfer does not support",
                component.id
            );
        }
    }
    Ok(())
}

/// `[component.ID]` for a component whose Wasm and files are placed under `dir`.
fn lay_out_component(cache: &Cache, component: &LockedComponent, dir: &Path) -> Result<toml::Table> {
    let id = &component.id;
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "component id {id:?} is not a plain name"
    );
    let mut table = toml::Table::new();
    table.insert(
        "source".into(),
        wasm(cache, &component.source.content, dir).with_context(|| format!("component {id}"))?.into(),
    );
    if !component.files.is_empty() {
        let root = dir.join("files").join(id);
        for file in &component.files {
            let target = root.join(safe_relative(&file.path).with_context(|| format!("component {id}"))?);
            place(cache, &file.content, &target)
                .with_context(|| format!("component {id}: file {}", file.path))?;
        }
        let mut mount = toml::Table::new();
        mount.insert("source".into(), format!("files/{id}").into());
        mount.insert("destination".into(), "/".into());
        table.insert("files".into(), toml::Value::Array(vec![mount.into()]));
    }
    if !component.env.is_empty() {
        let env: toml::Table =
            component.env.iter().map(|(k, v)| (k.clone(), toml::Value::from(v.as_str()))).collect();
        table.insert("environment".into(), env.into());
    }
    for key in ["allowed_outbound_hosts", "ai_models"] {
        let values = component.metadata_strings(key);
        if !values.is_empty() {
            table.insert(key.into(), toml::Value::Array(values.into_iter().map(toml::Value::from).collect()));
        }
    }
    if !component.dependencies.is_empty() {
        let mut dependencies = toml::Table::new();
        let mut inherits = Vec::new();
        for (name, dependency) in &component.dependencies {
            let mut entry = toml::Table::new();
            entry.insert(
                "path".into(),
                wasm(cache, &dependency.source.content, dir)
                    .with_context(|| format!("component {id}: dependency {name}"))?
                    .into(),
            );
            if let Some(export) = &dependency.export {
                entry.insert("export".into(), export.clone().into());
            }
            let inherits_all = inherits_all(&dependency.inherit)
                .with_context(|| format!("component {id}: dependency {name}"))?;
            inherits.push(inherits_all);
            dependencies.insert(name.clone(), entry.into());
        }
        // Our manifest has one switch per component (Spin's dependencies_inherit_configuration).
        inherits.dedup();
        let [inherit] = inherits[..] else {
            bail!(
                "component {id}: its dependencies inherit the configuration differently, which edgeinfer cannot honour"
            );
        };
        table.insert("dependencies".into(), dependencies.into());
        table.insert("dependencies_inherit_configuration".into(), inherit.into());
    }
    Ok(table)
}

/// A dependency's `inherit` as our one switch: `"All"` is true, none (absent, `{"Some": []}`) is
/// false; some keys only is refused (edgeinfer cannot hand over part of the configuration).
fn inherits_all(inherit: &Option<Value>) -> Result<bool> {
    match inherit {
        None => Ok(false),
        Some(Value::String(all)) if all == "All" => Ok(true),
        Some(some) => match some.get("Some").and_then(Value::as_array) {
            Some(keys) if keys.is_empty() => Ok(false),
            _ => bail!("it inherits part of the configuration ({some}), which edgeinfer does not support"),
        },
    }
}

/// Places a Wasm binary at `wasm/<hex>.wasm` under `dir`; answers that relative path.
fn wasm(cache: &Cache, content: &ContentRef, dir: &Path) -> Result<String> {
    let digest = content.digest.as_deref().context("a Wasm source without a digest")?;
    let relative = format!("wasm/{}.wasm", digest_hex(digest)?);
    let target = dir.join(&relative);
    if !target.is_file() {
        place(cache, content, &target)?;
    }
    Ok(relative)
}

/// Puts `content` at `target`: a hard link to the cached blob (a copy where links fail), or the
/// inline bytes, checked against the digest when one is given.
fn place(cache: &Cache, content: &ContentRef, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target.parent().expect("a file has a parent"))?;
    // A path laid out twice (overlapping mounts): replace it, never write through it, since it
    // may be a hard link to a cached blob.
    if target.symlink_metadata().is_ok() {
        std::fs::remove_file(target).with_context(|| format!("cannot replace {}", target.display()))?;
    }
    if let Some(inline) = &content.inline {
        let bytes = crate::locked::decode_inline(inline).context("inline content is not base64")?;
        if let Some(digest) = &content.digest {
            let actual = digest_of(&bytes);
            anyhow::ensure!(&actual == digest, "inline content has digest {actual}, the lock says {digest}");
        }
        std::fs::write(target, bytes)?;
        return Ok(());
    }
    let digest = content.digest.as_deref().context("content with neither bytes nor a digest")?;
    let blob = cache.blob(digest)?;
    anyhow::ensure!(blob.is_file(), "{digest} is not a layer of the artifact");
    crate::files::place(&blob, target)
}

/// Our layer: the runtime config at `runtime-config/local.toml` and the files it names at their
/// app-relative paths.
fn lay_out_host_config(cache: &Cache, config: &Value, dir: &Path) -> Result<()> {
    let text = config
        .get("runtime_config")
        .and_then(Value::as_str)
        .context("the host config has no runtime_config")?;
    let path = dir.join("runtime-config/local.toml");
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, text)?;
    if let Some(files) = config.get("files").and_then(Value::as_object) {
        for (relative, content) in files {
            let first = relative.split('/').next().unwrap_or_default();
            anyhow::ensure!(
                !matches!(first, "spin.toml" | "wasm" | "files" | "runtime-config"),
                "the host config names {relative}, inside what the layout writes itself"
            );
            let content: ContentRef = serde_json::from_value(content.clone())
                .with_context(|| format!("the host config's entry for {relative}"))?;
            place(cache, &content, &dir.join(safe_relative(relative)?))
                .with_context(|| format!("runtime config file {relative}"))?;
        }
    }
    Ok(())
}

/// spin.toml for the laid-out app.
fn manifest_toml(locked: &LockedApp, components: toml::Table) -> Result<String> {
    let text = |key: &str| locked.metadata.get(key).and_then(Value::as_str).map(str::to_string);
    let mut application = toml::Table::new();
    application.insert("name".into(), text("name").unwrap_or_else(|| "app".into()).into());
    for key in ["version", "description"] {
        if let Some(value) = text(key) {
            application.insert(key.into(), value.into());
        }
    }
    let mut http = Vec::new();
    for trigger in &locked.triggers {
        let config = &trigger.trigger_config;
        let (Some(route), Some(component)) =
            (config.get("route").and_then(Value::as_str), config.get("component").and_then(Value::as_str))
        else {
            bail!(
                "trigger {} has no route or component (it may use an inline component or private route)",
                trigger.id
            );
        };
        let mut entry = toml::Table::new();
        entry.insert("route".into(), route.into());
        entry.insert("component".into(), component.into());
        http.push(toml::Value::Table(entry));
    }
    let mut trigger = toml::Table::new();
    trigger.insert("http".into(), toml::Value::Array(http));
    let mut root = toml::Table::new();
    root.insert("spin_manifest_version".into(), 2.into());
    root.insert("application".into(), application.into());
    root.insert("trigger".into(), trigger.into());
    root.insert("component".into(), components.into());
    Ok(format!(
        "# Laid out by `edgeinfer` from a registry artifact (once per digest).\n{}",
        toml::to_string(&root)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_inherit_values_map_to_one_switch_or_are_refused() {
        assert!(!inherits_all(&None).unwrap());
        assert!(inherits_all(&Some(serde_json::json!("All"))).unwrap());
        assert!(!inherits_all(&Some(serde_json::json!({"Some": []}))).unwrap());
        assert!(inherits_all(&Some(serde_json::json!({"Some": ["x"]}))).is_err());
        assert!(inherits_all(&Some(serde_json::json!("Some"))).is_err());
    }

    #[test]
    fn a_path_laid_out_twice_never_writes_through_into_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache { root: dir.path().join("oci") };
        let bytes = b"a cached layer of more than 128 bytes".repeat(8);
        let digest = digest_of(&bytes);
        let blob = cache.blob(&digest).unwrap();
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, &bytes).unwrap();
        let target = dir.path().join("app/files/x/model/file");
        place(&cache, &ContentRef::digest(digest.clone()), &target).unwrap();
        // The same path again, now with inline content: the link is replaced, the blob untouched.
        let inline =
            ContentRef { inline: Some(crate::locked::encode_inline(b"small")), ..ContentRef::default() };
        place(&cache, &inline, &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"small");
        assert_eq!(std::fs::read(&blob).unwrap(), bytes);
        place(&cache, &ContentRef::digest(digest), &target).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), bytes);
    }
}
