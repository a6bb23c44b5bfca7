//! Components compiled ahead of time (`edgeinfer build --precompile`): what says which engine can
//! load one. The description lives beside the compiled file (`ID.TARGET.toml` in
//! `SOURCE.precompiled/`) and travels as the annotations of its layer in an app artifact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The media type of a precompiled-component layer in an app artifact (Spin keeps it as data
/// and ignores it).
pub const MEDIA_TYPE: &str = "application/vnd.edgeinfer.precompiled-component.v1";

/// Layer annotations: the component id, the wasmtime version, the target triple, the engine
/// configuration's hash, and the sha256 of the composed component that was compiled.
pub const COMPONENT_ANNOTATION: &str = "dev.edgeinfer.component";
pub const WASMTIME_ANNOTATION: &str = "dev.edgeinfer.wasmtime.version";
pub const TARGET_ANNOTATION: &str = "dev.edgeinfer.wasmtime.target";
pub const ENGINE_ANNOTATION: &str = "dev.edgeinfer.wasmtime.engine";
pub const COMPOSED_ANNOTATION: &str = "dev.edgeinfer.component.composed-sha256";

/// What native code must have been compiled for to load into an engine. Compared before a
/// layer is fetched; wasmtime checks its own header again when the code is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineProfile {
    /// The wasmtime version, exactly.
    pub wasmtime: String,
    /// The target triple (`x86_64-unknown-linux-gnu`, `aarch64-unknown-linux-gnu`).
    pub target: String,
    /// The sha256 of the engine settings that change generated code (fuel, epochs, features).
    pub engine: String,
}

/// One precompiled component, as `build --precompile` describes it beside the compiled file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecompiledComponent {
    /// The component's id in spin.toml.
    pub component: String,
    /// Which engines can load it.
    pub profile: EngineProfile,
    /// The sha256 of the composed component that was compiled (the version the host serves).
    pub composed_sha256: String,
    /// The sha256 of the component's `source` and of each dependency's file (by spin.toml key)
    /// it was composed from: a push carries the compiled file only while these still match.
    pub source_sha256: String,
    #[serde(default)]
    pub dependencies_sha256: BTreeMap<String, String>,
}

impl PrecompiledComponent {
    /// The annotations of its layer.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (COMPONENT_ANNOTATION.to_string(), self.component.clone()),
            (WASMTIME_ANNOTATION.to_string(), self.profile.wasmtime.clone()),
            (TARGET_ANNOTATION.to_string(), self.profile.target.clone()),
            (ENGINE_ANNOTATION.to_string(), self.profile.engine.clone()),
            (COMPOSED_ANNOTATION.to_string(), self.composed_sha256.clone()),
        ])
    }
}

/// What a precompiled layer's annotations say: its component, profile and composed sha256;
/// `None` when one is missing or the sha256 is not 64 lowercase hex digits (it names a file).
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<(String, EngineProfile, String)> {
    let get = |key: &str| annotations.get(key).cloned();
    let profile = EngineProfile {
        wasmtime: get(WASMTIME_ANNOTATION)?,
        target: get(TARGET_ANNOTATION)?,
        engine: get(ENGINE_ANNOTATION)?,
    };
    let composed = get(COMPOSED_ANNOTATION).filter(|sha| is_sha256_hex(sha))?;
    Some((get(COMPONENT_ANNOTATION)?, profile, composed))
}

/// Whether `text` is a sha256 as the compile cache names it: 64 lowercase hex digits.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The folder beside a component's source that holds its precompiled files.
pub fn folder(source: &Path) -> PathBuf {
    let mut name = source.file_name().unwrap_or_default().to_os_string();
    name.push(".precompiled");
    source.with_file_name(name)
}

/// The compiled file and its description of component `id` for `target`, in `folder` (by
/// component: components may share a source and compose it with different dependencies).
pub fn files(folder: &Path, id: &str, target: &str) -> (PathBuf, PathBuf) {
    (folder.join(format!("{id}.{target}.cwasm")), folder.join(format!("{id}.{target}.toml")))
}

/// The precompiled files in `folder` (none when it does not exist): each compiled file with its
/// description.
pub fn list(folder: &Path) -> Result<Vec<(PathBuf, PrecompiledComponent)>> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let description: PrecompiledComponent = toml::from_str(&text)
            .with_context(|| format!("{} is not a precompiled component's description", path.display()))?;
        let compiled = path.with_extension("cwasm");
        if compiled.is_file() {
            found.push((compiled, description));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

/// Writes `description` as TOML to `path` (renamed into place).
pub fn write_description(path: &Path, description: &PrecompiledComponent) -> Result<()> {
    let partial = path.with_extension(format!("toml.{}.partial", std::process::id()));
    std::fs::write(&partial, toml::to_string(description)?)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_round_trip_through_annotations_and_toml() {
        let description = PrecompiledComponent {
            component: "embed".into(),
            profile: EngineProfile {
                wasmtime: "48.0.8".into(),
                target: "aarch64-unknown-linux-gnu".into(),
                engine: "ab".repeat(32),
            },
            composed_sha256: "cd".repeat(32),
            source_sha256: "ef".repeat(32),
            dependencies_sha256: BTreeMap::from([("edgeinfer:text/tokenize@0.1.0".into(), "01".repeat(32))]),
        };
        let (component, profile, composed) = from_annotations(&description.annotations()).unwrap();
        assert_eq!(
            (component.as_str(), &profile, composed.as_str()),
            ("embed", &description.profile, &*description.composed_sha256)
        );
        let text = toml::to_string(&description).unwrap();
        assert_eq!(toml::from_str::<PrecompiledComponent>(&text).unwrap(), description);
        let mut partial = description.annotations();
        partial.remove(ENGINE_ANNOTATION);
        assert_eq!(from_annotations(&partial), None);
        for bad in ["../../etc/passwd", "CD", &"CD".repeat(32), &format!("sha256:{}", "cd".repeat(32))] {
            let mut annotations = description.annotations();
            annotations.insert(COMPOSED_ANNOTATION.into(), bad.to_string());
            assert_eq!(from_annotations(&annotations), None, "{bad}");
        }
        assert_eq!(
            folder(Path::new("target/wasm32-wasip2/release/embed.wasm")),
            Path::new("target/wasm32-wasip2/release/embed.wasm.precompiled")
        );
    }
}
