//! Component dependencies, composed as Spin composes them: each import of the main component
//! named (or whose package is named) in `[component.X.dependencies]` is satisfied by the
//! same-named export of the dependency component; everything else stays an import.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

/// A dependency's bytes, keyed as in spin.toml.
pub struct DependencyBytes {
    pub key: String,
    pub name: String,
    pub bytes: Vec<u8>,
    /// Export to use when it is not named like the import.
    pub export: Option<String>,
}

/// Composes `main` with its dependencies; returns `main` unchanged when it has none.
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

    let mut instances = BTreeMap::new();
    for dependency in dependencies {
        let matched: Vec<&String> = imports.iter().filter(|i| import_matches(i, &dependency.key)).collect();
        if matched.is_empty() {
            bail!("dependency {:?} of {main_name} matches none of its imports", dependency.key);
        }
        let package =
            Package::from_bytes(&package_name(&dependency.name), None, dependency.bytes, graph.types_mut())
                .with_context(|| format!("dependency {:?} is not a valid component", dependency.key))?;
        let package_id = graph.register_package(package)?;
        let instance =
            *instances.entry(dependency.key.clone()).or_insert_with(|| graph.instantiate(package_id));
        for import in matched {
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
    use super::import_matches;

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
