//! What the admin API changed, kept in the host's state directory so that a restart (a reboot,
//! `Restart=on-failure`, a crash) serves what was deployed, not spin.toml's versions again.
//!
//! The directory holds `state.json` (per component: stable, canary, versions kept for rollback;
//! per model: the file a reload switched to) and the bytes of every deployed component version,
//! by the sha256 of what was uploaded or pulled (`components/SHA256.wasm`, with the upload's
//! detached signature beside it as `SHA256.sig`). Every file is written whole to a temporary
//! name, synced, then renamed over the old one, so `kill -9` at any moment leaves the old state
//! or the new one. A version's bytes are written before the state that names them.
//!
//! On start the host builds spin.toml's versions as always, then restores the state: each
//! version's bytes are checked against their digest (and, on a host with trusted keys, an
//! upload's signature against those keys) and composed again, and the result must be the version
//! recorded. A component whose spin.toml version changed since the state was written serves the
//! new spin.toml version (the app was redeployed) and its saved state is dropped, logged. A state
//! file that cannot be read, or that names missing or damaged bytes, stops the start with an
//! error naming the file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::component::ComponentBuilder;
use crate::component::LoadedComponent;
use crate::rollout::ComponentSlot;
use crate::rollout::{Canary, CanaryMode, Stickiness};
use edgeinfer_config::runtime_config::ModelConfig;
use edgeinfer_engine::sha256_file;
use edgeinfer_trust::TrustedKeys;

/// The state file's format; a file of another format is refused, not guessed at.
const FORMAT: u32 = 1;

/// The file, inside the state directory.
const STATE_FILE: &str = "state.json";

/// Component bytes, inside the state directory.
const COMPONENTS_DIR: &str = "components";

/// What of the running app its state is about: its name, its components, and how to build a
/// kept version of one (`App::state_view`).
pub struct AppView<'a> {
    pub name: &'a str,
    pub components: &'a BTreeMap<String, Arc<ComponentSlot>>,
    pub builder: &'a ComponentBuilder,
}

/// The state directory of a running host.
pub struct StateDir {
    dir: PathBuf,
    trusted: Option<Arc<TrustedKeys>>,
    inner: Mutex<Inner>,
    /// Held by each admin change from the change to its save, so that a save never sees a
    /// component half-changed by another call.
    changes: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct Inner {
    /// Where each kept component source came from (by its sha256).
    sources: BTreeMap<String, SourceOrigin>,
    /// Sources written since the last save that no saved state names yet: never collected.
    fresh: BTreeSet<String>,
    /// Sources the last saved state names.
    named: BTreeSet<String>,
    /// Models switched by a reload, by name.
    models: BTreeMap<String, SavedModel>,
    /// The runtime config's own file of each model, as this process started with it.
    configured: BTreeMap<String, ConfiguredModel>,
}

/// How a kept component source arrived.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceOrigin {
    /// The upload's detached signature (base64 DER), when it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// The registry reference it was pulled from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A pull whose artifact signature the host's trusted keys verified.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verified: bool,
}

impl SourceOrigin {
    fn is_empty(&self) -> bool {
        self.signature.is_none() && self.reference.is_none() && !self.verified
    }
}

/// `state.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    format: u32,
    /// The app's name (spin.toml's `[application] name`).
    app: String,
    /// Seconds since the Unix epoch.
    saved_at: u64,
    components: BTreeMap<String, SavedComponent>,
    #[serde(default)]
    models: BTreeMap<String, SavedModel>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedComponent {
    /// The version spin.toml's own source built to when this was saved.
    manifest_version: String,
    stable: SavedVersion,
    /// Versions kept for rollback, oldest first.
    #[serde(default)]
    previous: Vec<SavedVersion>,
    #[serde(default)]
    canary: Option<SavedCanary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedVersion {
    /// The composed component's sha256: the version as answered (`x-edgeinfer-version`).
    version: String,
    /// The sha256 of the bytes uploaded or pulled (`components/SOURCE.wasm`); absent for
    /// spin.toml's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    /// How the bytes arrived (an upload's signature, a pull's reference).
    #[serde(default, skip_serializing_if = "SourceOrigin::is_empty")]
    origin: SourceOrigin,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedCanary {
    version: SavedVersion,
    percent: f64,
    /// `split` or `shadow`.
    mode: String,
    /// `none`, `client` or `header:NAME`.
    sticky: String,
}

/// A model a reload switched to another file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct SavedModel {
    /// The file serving (absolute).
    path: String,
    sha256: String,
    /// The runtime config's file when the reload happened: a runtime config naming another file
    /// since then wins.
    configured: ConfiguredModel,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ConfiguredModel {
    path: String,
    #[serde(default)]
    sha256: Option<String>,
}

/// What a start restored, for its log line.
#[derive(Debug, Default)]
pub struct Restored {
    /// `component: stable VERSION (canary VERSION at P%)`, one per component restored.
    pub components: Vec<String>,
    /// `model: FILE`, one per model restored.
    pub models: Vec<String>,
}

impl StateDir {
    /// Opens (creating) the state directory; `trusted`: the keys uploads must have been signed
    /// with to be restored.
    pub fn open(dir: &Path, trusted: Option<Arc<TrustedKeys>>) -> Result<StateDir> {
        let components = dir.join(COMPONENTS_DIR);
        std::fs::create_dir_all(&components)
            .with_context(|| format!("cannot create the state directory {}", components.display()))?;
        let probe = dir.join(".writable");
        std::fs::write(&probe, b"")
            .with_context(|| format!("the state directory {} is not writable", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(StateDir { dir: dir.to_path_buf(), trusted, inner: Mutex::default(), changes: Arc::default() })
    }

    /// Waits for the other admin changes to be saved; hold it from a change to its save.
    pub async fn change(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.changes.clone().lock_owned().await
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn source_file(&self, sha256: &str, extension: &str) -> PathBuf {
        self.dir.join(COMPONENTS_DIR).join(format!("{sha256}.{extension}"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("state lock")
    }

    /// Reads `state.json`; `None` when there is none yet.
    fn read(&self) -> Result<Option<SavedState>> {
        let path = self.state_file();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read the host state {}", path.display()));
            }
        };
        let state: SavedState = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "the host state {} is damaged (remove it to serve spin.toml's versions again)",
                path.display()
            )
        })?;
        if state.format != FORMAT {
            bail!(
                "the host state {} has format {}, this host reads format {FORMAT}",
                path.display(),
                state.format
            );
        }
        Ok(Some(state))
    }

    /// Applies the saved model reloads to the runtime config's models before they are loaded:
    /// a model a reload switched serves that file again, unless the runtime config names another
    /// file since. Remembers the runtime config's own files for later saves.
    pub fn restore_models(&self, models: &mut BTreeMap<String, ModelConfig>) -> Result<Vec<String>> {
        let configured: BTreeMap<String, ConfiguredModel> = models
            .iter()
            .map(|(name, m)| {
                (name.clone(), ConfiguredModel { path: m.path.clone(), sha256: m.sha256.clone() })
            })
            .collect();
        let mut restored = Vec::new();
        let mut kept = BTreeMap::new();
        if let Some(state) = self.read()? {
            for (name, saved) in state.models {
                match (models.get_mut(&name), configured.get(&name)) {
                    (Some(model), Some(now)) if *now == saved.configured => {
                        let file = Path::new(&saved.path);
                        let actual = sha256_file(file).with_context(|| {
                            format!(
                                "the host state {} serves model {name} from {}, which cannot be read",
                                self.state_file().display(),
                                file.display()
                            )
                        })?;
                        if actual != saved.sha256 {
                            bail!(
                                "the host state {} serves model {name} from {}, whose sha256 is now {actual}, not {}",
                                self.state_file().display(),
                                file.display(),
                                saved.sha256
                            );
                        }
                        model.path = saved.path.clone();
                        model.sha256 = Some(saved.sha256.clone());
                        restored.push(format!("{name}: {} ({})", saved.path, &saved.sha256[..12]));
                        kept.insert(name, saved);
                    }
                    (Some(_), _) => tracing::warn!(
                        model = %name,
                        "the runtime config names another file for this model than when it was reloaded: serving the runtime config's"
                    ),
                    (None, _) => {
                        tracing::warn!(model = %name, "the saved state names a model the runtime config no longer has")
                    }
                }
            }
        }
        let mut inner = self.lock();
        inner.configured = configured;
        inner.models = kept;
        Ok(restored)
    }

    /// Restores the saved component versions into `app`, whose slots serve spin.toml's versions.
    /// Blocking (composes and compiles, from the compile cache when it has them).
    pub fn restore_components(&self, app: &AppView<'_>) -> Result<Vec<String>> {
        let Some(state) = self.read()? else { return Ok(Vec::new()) };
        let file = self.state_file();
        if state.app != app.name {
            bail!(
                "the host state {} is app {:?}'s; this is app {:?} (give this app a state directory of its own)",
                file.display(),
                state.app,
                app.name
            );
        }
        let mut restored = Vec::new();
        for (id, saved) in &state.components {
            let Some(slot) = app.components.get(id) else {
                tracing::warn!(component = %id, "the saved state names a component spin.toml no longer routes: dropped");
                continue;
            };
            let manifest = slot.manifest_version().clone();
            if manifest.version != saved.manifest_version {
                tracing::warn!(
                    component = %id,
                    saved = %&saved.manifest_version[..12.min(saved.manifest_version.len())],
                    now = %&manifest.version[..12],
                    "spin.toml's version changed since the state was saved: serving spin.toml's, its saved versions dropped"
                );
                continue;
            }
            let build = |saved: &SavedVersion| -> Result<Arc<LoadedComponent>> {
                self.build_version(app, id, saved, &manifest).with_context(|| {
                    format!("the host state {} names {id} {}", file.display(), saved.version)
                })
            };
            let previous = saved.previous.iter().map(build).collect::<Result<Vec<_>>>()?;
            let stable = build(&saved.stable)?;
            let canary = match &saved.canary {
                Some(canary) => {
                    let version = build(&canary.version)?;
                    let (mode, sticky) = parse_canary(canary).with_context(|| {
                        format!("the host state {} has a bad canary of {id}", file.display())
                    })?;
                    Some(Canary::new(version, canary.percent, mode, sticky))
                }
                None => None,
            };
            let mut line = format!("{id}: stable {}", &stable.version[..12]);
            if let Some(canary) = &canary {
                line += &format!(" (canary {} at {}%)", &canary.version.version[..12], canary.percent);
            }
            if !previous.is_empty() {
                line += &format!(", {} kept for rollback", previous.len());
            }
            slot.restore(stable, previous, canary);
            restored.push(line);
        }
        Ok(restored)
    }

    /// One saved version: spin.toml's own when it is that one, else built from its kept bytes.
    fn build_version(
        &self,
        app: &AppView<'_>,
        id: &str,
        saved: &SavedVersion,
        manifest: &Arc<LoadedComponent>,
    ) -> Result<Arc<LoadedComponent>> {
        if saved.version == manifest.version {
            return Ok(manifest.clone());
        }
        let Some(source) = &saved.source else {
            bail!("no bytes for this version (it is not spin.toml's version {})", &manifest.version[..12]);
        };
        let path = self.source_file(source, "wasm");
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        if actual != *source {
            bail!("{} is damaged: its sha256 is {actual}", path.display());
        }
        if let Some(trusted) = &self.trusted {
            match (&saved.origin.reference, &saved.origin.signature) {
                // A pull's artifact signature was checked when it was pulled, if the host had
                // keys then; the bytes are those, by digest.
                (Some(reference), _) => {
                    if !saved.origin.verified {
                        bail!(
                            "{}: pulled from {reference} by a host without trusted keys, so no signature was checked (this host runs only what its trusted keys signed)",
                            path.display()
                        );
                    }
                }
                (None, signature) => {
                    if let Err(e) = trusted.verify(&bytes, signature.as_deref()) {
                        bail!("{}: {e} (this host runs only what its trusted keys signed)", path.display());
                    }
                }
            }
        }
        let loaded = app.builder.build(id, bytes)?;
        if loaded.version != saved.version {
            bail!(
                "{} composes to version {}, not the {} recorded (a dependency in spin.toml changed?)",
                path.display(),
                loaded.version,
                saved.version
            );
        }
        self.lock().sources.insert(source.clone(), saved.origin.clone());
        Ok(Arc::new(loaded))
    }

    /// Keeps the bytes of a version about to be installed (before the state naming them is
    /// saved); returns their sha256.
    pub fn keep_source(&self, bytes: &[u8], origin: SourceOrigin) -> Result<String> {
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        let path = self.source_file(&sha256, "wasm");
        let mut inner = self.lock();
        if sha256_file(&path).ok().as_deref() != Some(sha256.as_str()) {
            write_atomically(&path, bytes)?;
        }
        let signature = self.source_file(&sha256, "sig");
        match &origin.signature {
            Some(text) => write_atomically(&signature, text.as_bytes())?,
            None => {
                let _ = std::fs::remove_file(&signature);
            }
        }
        inner.fresh.insert(sha256.clone());
        inner.sources.insert(sha256.clone(), origin);
        Ok(sha256)
    }

    /// Forgets kept bytes that will not be installed (a refused upload), unless a state names them.
    pub fn discard_source(&self, sha256: &str) {
        let mut inner = self.lock();
        inner.fresh.remove(sha256);
        if !inner.named.contains(sha256) {
            inner.sources.remove(sha256);
            for extension in ["wasm", "sig"] {
                let _ = std::fs::remove_file(self.source_file(sha256, extension));
            }
        }
    }

    /// Records that model `name` now serves `path` (sha256 `sha256`); saved with the next save.
    pub fn model_reloaded(&self, name: &str, path: &Path, sha256: &str, app_dir: &Path) {
        let mut inner = self.lock();
        let Some(configured) = inner.configured.get(name).cloned() else { return };
        let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let path = absolute(path);
        // Reloaded from the runtime config's own file (in place): a restart loads that file as
        // the runtime config says, whatever it holds then; nothing to record.
        if path == absolute(&app_dir.join(&configured.path)) {
            inner.models.remove(name);
        } else {
            let path = path.display().to_string();
            inner
                .models
                .insert(name.to_string(), SavedModel { path, sha256: sha256.to_string(), configured });
        }
    }

    /// Writes what `app` serves now to `state.json` (atomically, synced), then removes the kept
    /// bytes no version names any more. Blocking.
    pub fn save(&self, app: &AppView<'_>) -> Result<()> {
        let mut inner = self.lock();
        let mut components = BTreeMap::new();
        let mut named = BTreeSet::new();
        for (id, slot) in app.components {
            let manifest_version = slot.manifest_version().version.clone();
            let mut saved_version = |loaded: &LoadedComponent| {
                let source = (loaded.version != manifest_version).then(|| loaded.source.clone());
                if let Some(source) = &source {
                    named.insert(source.clone());
                }
                SavedVersion {
                    version: loaded.version.clone(),
                    origin: source.as_ref().and_then(|s| inner.sources.get(s).cloned()).unwrap_or_default(),
                    source,
                }
            };
            let previous = slot.previous().iter().map(|v| saved_version(v)).collect();
            let stable = saved_version(&slot.current());
            let canary = slot.canary().map(|canary| SavedCanary {
                version: saved_version(&canary.version),
                percent: canary.percent,
                mode: match canary.mode {
                    CanaryMode::Split => "split".to_string(),
                    CanaryMode::Shadow => "shadow".to_string(),
                },
                sticky: match &canary.sticky {
                    Stickiness::None => "none".to_string(),
                    Stickiness::Client => "client".to_string(),
                    Stickiness::Header(name) => format!("header:{name}"),
                },
            });
            components.insert(id.clone(), SavedComponent { manifest_version, stable, previous, canary });
        }
        let state = SavedState {
            format: FORMAT,
            app: app.name.to_string(),
            saved_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            components,
            models: inner.models.clone(),
        };
        let json = serde_json::to_vec_pretty(&state)?;
        write_atomically(&self.state_file(), &json)?;
        inner.fresh.retain(|source| !named.contains(source));
        let keep: BTreeSet<String> = named.iter().chain(inner.fresh.iter()).cloned().collect();
        self.collect(&keep);
        inner.sources.retain(|source, _| keep.contains(source));
        inner.named = named;
        Ok(())
    }

    /// Removes kept bytes that are not in `keep` (nor a temporary file being written).
    fn collect(&self, keep: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(self.dir.join(COMPONENTS_DIR)) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some((sha256, _)) = name.split_once('.') else { continue };
            if sha256.len() == 64 && !name.contains(".tmp") && !keep.contains(sha256) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Removes the temporary files of a run killed while writing (at start, before any write).
    pub fn remove_temporary_files(&self) {
        for dir in [self.dir.clone(), self.dir.join(COMPONENTS_DIR)] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".tmp") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

fn parse_canary(canary: &SavedCanary) -> Result<(CanaryMode, Stickiness)> {
    let mode = match canary.mode.as_str() {
        "split" => CanaryMode::Split,
        "shadow" => CanaryMode::Shadow,
        other => bail!("mode {other:?}"),
    };
    let sticky = match canary.sticky.as_str() {
        "none" => Stickiness::None,
        "client" => Stickiness::Client,
        other => match other.strip_prefix("header:").map(http::HeaderName::try_from) {
            Some(Ok(name)) => Stickiness::Header(name),
            _ => bail!("sticky {other:?}"),
        },
    };
    if !(0.0..=100.0).contains(&canary.percent) {
        bail!("percent {}", canary.percent);
    }
    Ok((mode, sticky))
}

/// Writes `bytes` to `path` so that `path` holds either its old contents or all of the new ones,
/// whatever happens meanwhile: a temporary file beside it, synced, renamed over it, and the
/// directory synced so that the rename itself survives a power cut.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("a state file has a directory")?;
    let name = path.file_name().context("a state file has a name")?.to_string_lossy();
    let temporary = dir.join(format!("{name}.tmp{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new contents").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new contents");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_damaged_or_foreign_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path(), None).unwrap();
        assert!(state.read().unwrap().is_none(), "no file yet: no state");
        std::fs::write(dir.path().join(STATE_FILE), b"{\"format\": 1, \"app\": ").unwrap();
        let error = format!("{:#}", state.read().unwrap_err());
        assert!(error.contains("state.json is damaged"), "{error}");
        std::fs::write(
            dir.path().join(STATE_FILE),
            br#"{"format": 9, "app": "a", "saved_at": 0, "components": {}}"#,
        )
        .unwrap();
        let error = format!("{:#}", state.read().unwrap_err());
        assert!(error.contains("has format 9"), "{error}");
    }

    #[test]
    fn a_saved_state_reads_back_as_written() {
        let version = |v: &str, origin: SourceOrigin| SavedVersion {
            version: v.repeat(64),
            source: Some(v.repeat(64)),
            origin,
        };
        let signed = SourceOrigin { signature: Some("MEUCIQ==".into()), reference: None, verified: false };
        let pulled = SourceOrigin {
            signature: None,
            reference: Some("registry.test/app@sha256:00".into()),
            verified: true,
        };
        let state = SavedState {
            format: FORMAT,
            app: "app".into(),
            saved_at: 1,
            components: BTreeMap::from([(
                "embed".to_string(),
                SavedComponent {
                    manifest_version: "a".repeat(64),
                    stable: version("b", signed.clone()),
                    previous: vec![version("c", SourceOrigin::default())],
                    canary: Some(SavedCanary {
                        version: version("d", pulled.clone()),
                        percent: 12.5,
                        mode: "shadow".into(),
                        sticky: "header:x-user".into(),
                    }),
                },
            )]),
            models: BTreeMap::from([(
                "minilm".to_string(),
                SavedModel {
                    path: "/models/new.onnx".into(),
                    sha256: "e".repeat(64),
                    configured: ConfiguredModel { path: "model.onnx".into(), sha256: None },
                },
            )]),
        };
        let dir = tempfile::tempdir().unwrap();
        write_atomically(&dir.path().join(STATE_FILE), &serde_json::to_vec_pretty(&state).unwrap()).unwrap();
        let read = StateDir::open(dir.path(), None).unwrap().read().unwrap().expect("a state");
        assert_eq!(format!("{read:?}"), format!("{state:?}"));
    }

    #[test]
    fn saved_canaries_parse_back() {
        let canary = |mode: &str, sticky: &str| SavedCanary {
            version: SavedVersion { version: "v".into(), source: None, origin: SourceOrigin::default() },
            percent: 5.0,
            mode: mode.into(),
            sticky: sticky.into(),
        };
        let (mode, sticky) = parse_canary(&canary("shadow", "header:x-user")).unwrap();
        assert_eq!(mode, CanaryMode::Shadow);
        assert_eq!(sticky, Stickiness::Header(http::HeaderName::from_static("x-user")));
        assert!(parse_canary(&canary("split", "cookie")).is_err());
        assert!(parse_canary(&canary("blue", "none")).is_err());
    }
}
