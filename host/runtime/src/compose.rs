//! Component dependencies, composed as Spin composes them: each import of the main component
//! named (or whose package is named) in `[component.X.dependencies]` is satisfied by the
//! same-named export of the dependency component; everything else stays an import, except an
//! interface imported only for its value types (see [`compose`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use wac_graph::types::{ItemKind, Package, Type};
use wac_graph::{CompositionGraph, EncodeOptions, PackageId};

use edgeinfer_config::manifest::{Component, Manifest};

/// A dependency's bytes, keyed as in spin.toml.
pub struct DependencyBytes {
    pub key: String,
    pub name: String,
    pub bytes: Vec<u8>,
    /// Export to use when it is not named like the import.
    pub export: Option<String>,
}

/// Whether a dependency key plugs a model provider, which the host provides natively:
/// `edgeinfer:nn` or `wasi:nn`, the whole package or one of its interfaces.
pub fn is_nn_provider(key: &str) -> bool {
    ["edgeinfer:nn", "wasi:nn"].iter().any(|package| {
        key == *package || key.starts_with(&format!("{package}@")) || key.starts_with(&format!("{package}/"))
    })
}

/// Composes `main`, a version of component `id` of `manifest`, with its
/// `[component.id.dependencies]`. Model providers are left out (the import stays, for a host
/// that implements it) unless `compose_nn_providers`.
pub fn compose_component(
    manifest: &Manifest,
    id: &str,
    component: &Component,
    main: Vec<u8>,
    compose_nn_providers: bool,
) -> Result<Vec<u8>> {
    let mut dependencies = Vec::new();
    for (key, dependency) in &component.dependencies {
        if is_nn_provider(key) && !compose_nn_providers {
            tracing::info!(
                component = id,
                dependency = %key,
                "models are provided natively: not composing the provider (--compose-nn-providers composes it)"
            );
            continue;
        }
        let path = manifest.resolve(&dependency.path);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read dependency {key} at {}", path.display()))?;
        dependencies.push(DependencyBytes {
            key: key.clone(),
            name: format!("{id}-dep-{}", dependencies.len()),
            bytes,
            export: dependency.export.clone(),
        });
    }
    compose(id, main, dependencies)
}

/// The `wasmtime serve` command line that runs a standalone composition of `component` (written
/// to `wasm`) with its files and environment from spin.toml: `-S cli=y` because handlers built
/// for wasm32-wasip2 import WASI 0.2 filesystem and environment beside WASI 0.3 HTTP.
pub fn wasmtime_serve_command(
    manifest: &Manifest,
    component: &Component,
    wasm: &Path,
) -> Result<Vec<String>> {
    let mut command: Vec<String> =
        ["wasmtime", "serve", "-S", "cli=y", "--addr", "127.0.0.1:8080"].map(String::from).to_vec();
    for mount in &component.files {
        let (source, destination) = mount.source_and_destination();
        let host = manifest.resolve(source);
        let host = host
            .canonicalize()
            .with_context(|| format!("files: {} does not exist (run `edgeinfer fetch`)", host.display()))?;
        command.push("--dir".into());
        command.push(format!("{}::{destination}", host.display()));
    }
    for (name, value) in &component.environment {
        command.push("--env".into());
        command.push(format!("{name}={value}"));
    }
    command.push(wasm.display().to_string());
    Ok(command)
}

/// Quotes a word for a POSIX shell when it needs it.
pub fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// The names of the imports of a component.
pub fn imports_of(bytes: &[u8]) -> Result<Vec<String>> {
    let mut graph = CompositionGraph::new();
    let package = Package::from_bytes("inspected:component", None, bytes.to_vec(), graph.types_mut())
        .context("not a valid component")?;
    Ok(graph.types()[package.ty()].imports.keys().cloned().collect())
}

/// A standalone composition written to a file (`edgeinfer compose`).
pub struct Written {
    /// Its size in bytes.
    pub bytes: usize,
    /// What it still imports.
    pub imports: Vec<String>,
    /// The stock `wasmtime serve` command that runs it; none while it imports the model
    /// interfaces (only `edgeinfer up` has them).
    pub serve_command: Option<String>,
}

/// Composes component `id` of `manifest` with its dependencies (and, unless `keep_nn_imports`,
/// a provider of the model interfaces) into `output`.
pub fn write_composition(
    manifest: &Manifest,
    id: &str,
    output: &Path,
    keep_nn_imports: bool,
) -> Result<Written> {
    let Some(component) = manifest.components.get(id) else {
        let known: Vec<&String> = manifest.components.keys().collect();
        bail!("spin.toml has no component {id:?} (it has {known:?})");
    };
    let main = manifest.read_source(component)?;
    let composed = compose_component(manifest, id, component, main, !keep_nn_imports)?;
    std::fs::write(output, &composed).with_context(|| format!("cannot write {}", output.display()))?;
    let serve_command = match keep_nn_imports {
        true => None,
        false => {
            let command = wasmtime_serve_command(manifest, component, &std::path::absolute(output)?)?;
            Some(command.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "))
        }
    };
    Ok(Written { bytes: composed.len(), imports: imports_of(&composed)?, serve_command })
}

/// Composes `main` with its dependencies; returns `main` unchanged when it has none.
///
/// An interface `main` imports only for value types that a plugged interface uses (e.g.
/// `wasi:nn/tensor`, whose `tensor-type` `edgeinfer:nn/infer` uses) is taken from a dependency
/// that exports it too, where Spin leaves it imported: it needs no implementation either way,
/// but a standalone composition then imports nothing of the provider's.
pub fn compose(main_name: &str, main: Vec<u8>, dependencies: Vec<DependencyBytes>) -> Result<Vec<u8>> {
    if dependencies.is_empty() {
        return Ok(main);
    }
    let mut graph = CompositionGraph::new();
    let main_package = Package::from_bytes(&package_name(main_name), None, main, graph.types_mut())
        .with_context(|| format!("component {main_name} is not a valid component"))?;
    let main_id = graph.register_package(main_package)?;
    let main_instance = graph.instantiate(main_id);
    let imports: Vec<String> = graph.types()[graph[main_id].ty()].imports.keys().cloned().collect();
    // Those no key names; each is taken from the first dependency that exports it.
    let mut types_only = types_only_imports(&graph, main_id);
    types_only.retain(|import| !dependencies.iter().any(|d| import_matches(import, &d.key)));

    let mut instances = BTreeMap::new();
    for dependency in dependencies {
        let mut matched: Vec<String> =
            imports.iter().filter(|i| import_matches(i, &dependency.key)).cloned().collect();
        if matched.is_empty() {
            bail!("dependency {:?} of {main_name} matches none of its imports", dependency.key);
        }
        let package =
            Package::from_bytes(&package_name(&dependency.name), None, dependency.bytes, graph.types_mut())
                .with_context(|| format!("dependency {:?} is not a valid component", dependency.key))?;
        let package_id = graph.register_package(package)?;
        if dependency.export.is_none() {
            let exports = &graph.types()[graph[package_id].ty()].exports;
            let plugged: Vec<String> =
                types_only.iter().filter(|i| exports.contains_key(*i)).cloned().collect();
            types_only.retain(|import| !plugged.contains(import));
            matched.extend(plugged);
        }
        let instance =
            *instances.entry(dependency.key.clone()).or_insert_with(|| graph.instantiate(package_id));
        for import in &matched {
            let export_name = dependency.export.clone().unwrap_or_else(|| import.clone());
            let export = graph
                .alias_instance_export(instance, &export_name)
                .with_context(|| format!("dependency {:?} does not export {export_name}", dependency.key))?;
            graph
                .set_instantiation_argument(main_instance, import, export)
                .with_context(|| format!("cannot plug {export_name} into {main_name}"))?;
        }
    }
    let exports: Vec<String> = graph.types()[graph[main_id].ty()].exports.keys().cloned().collect();
    for name in exports {
        let export = graph.alias_instance_export(main_instance, &name)?;
        graph.export(export, &name)?;
    }
    graph
        .encode(EncodeOptions::default())
        .with_context(|| format!("cannot encode the composition of {main_name}"))
}

/// The imports of package `id` that are interfaces of value types only (no functions, no
/// resources): a component imports one only because an interface it imports uses its types.
fn types_only_imports(graph: &CompositionGraph, id: PackageId) -> BTreeSet<String> {
    let types = graph.types();
    types[graph[id].ty()]
        .imports
        .iter()
        .filter(|(_, kind)| match kind {
            ItemKind::Instance(interface) => {
                types[*interface].exports.values().all(|item| matches!(item, ItemKind::Type(Type::Value(_))))
            }
            _ => false,
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `ns:pkg/iface@1.2.3` matches key `ns:pkg/iface@1.2.3` and package key `ns:pkg@1.2.3`
/// (the version may be left out of the key).
fn import_matches(import: &str, key: &str) -> bool {
    let (import_path, import_version) = split_version(import);
    let (key_path, key_version) = split_version(key);
    if key_version.is_some() && key_version != import_version {
        return false;
    }
    match key_path.split_once('/') {
        Some(_) => import_path == key_path,
        None => import_path.split_once('/').is_some_and(|(package, _)| package == key_path),
    }
}

fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((path, version)) => (path, Some(version)),
        None => (name, None),
    }
}

/// wac package names are `ns:name`.
fn package_name(component: &str) -> String {
    let clean: String = component
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("app:{}", clean.trim_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::{import_matches, is_nn_provider};

    #[test]
    fn model_providers_are_infer_and_wasi_nn() {
        assert!(is_nn_provider("edgeinfer:nn/infer@0.1.0"));
        assert!(is_nn_provider("edgeinfer:nn/infer"));
        assert!(is_nn_provider("wasi:nn@0.2.0-rc-2024-10-28"));
        assert!(is_nn_provider("wasi:nn/inference@0.2.0-rc-2024-10-28"));
        assert!(!is_nn_provider("edgeinfer:text/tokenize@0.1.0"));
    }

    #[test]
    fn keys_match_interfaces_or_whole_packages() {
        let import = "edgeinfer:text/tokenize@0.1.0";
        assert!(import_matches(import, "edgeinfer:text/tokenize@0.1.0"));
        assert!(import_matches(import, "edgeinfer:text/tokenize"));
        assert!(import_matches(import, "edgeinfer:text@0.1.0"));
        assert!(import_matches("wasi:nn/graph@0.2.0-rc-2024-10-28", "wasi:nn@0.2.0-rc-2024-10-28"));
        assert!(!import_matches(import, "edgeinfer:text/tokenize@0.2.0"));
        assert!(!import_matches(import, "edgeinfer:other"));
        assert!(!import_matches(import, "edgeinfer:text/detokenize"));
    }
}
