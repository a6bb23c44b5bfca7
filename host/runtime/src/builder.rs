//! `edgeinfer build`: runs each component's `[component.X.build]` command, as `spin build` does
//! (through the shell, in the manifest's directory or the component's `workdir`). `up --build`
//! builds only what it will serve.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail};

use edgeinfer_config::manifest::Manifest;

/// Builds every component that declares a build command; stops at the first failure.
pub fn build_all(manifest: &Manifest) -> Result<()> {
    for id in manifest.components.keys() {
        build_one(manifest, id)?;
    }
    Ok(())
}

/// Builds the components `edgeinfer up` will load: the routed ones and the dependencies composed
/// into them (a wasi:nn provider only with `compose_nn_providers`), not the others.
pub fn build_served(manifest: &Manifest, compose_nn_providers: bool) -> Result<()> {
    let served = served_components(manifest, compose_nn_providers);
    for id in manifest.components.keys() {
        if served.contains(id) {
            build_one(manifest, id)?;
        } else if manifest.components[id].build.is_some() {
            eprintln!("edgeinfer: not building component {id}: this host does not serve it");
        }
    }
    Ok(())
}

/// Ids of the routed components and of the components whose `source` is a dependency composed
/// into one of them.
fn served_components(manifest: &Manifest, compose_nn_providers: bool) -> BTreeSet<String> {
    let routed = manifest.routed_components();
    let mut paths = BTreeSet::new();
    for id in &routed {
        let component = &manifest.components[*id];
        paths.insert(manifest.resolve(&component.source));
        for (key, dependency) in &component.dependencies {
            if compose_nn_providers || !crate::compose::is_nn_provider(key) {
                paths.insert(manifest.resolve(&dependency.path));
            }
        }
    }
    manifest
        .components
        .iter()
        .filter(|(id, c)| routed.contains(id.as_str()) || paths.contains(&manifest.resolve(&c.source)))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Runs component `id`'s build commands in order, if it has any; stops at the first that fails.
pub fn build_one(manifest: &Manifest, id: &str) -> Result<()> {
    let Some(build) = manifest.components.get(id).and_then(|c| c.build.as_ref()) else { return Ok(()) };
    let workdir = match &build.workdir {
        Some(dir) => manifest.resolve(dir),
        None => manifest.dir.clone(),
    };
    for command in build.command.as_slice() {
        eprintln!("edgeinfer: building component {id}: {command}");
        let status =
            std::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(&workdir)
                .status()
                .with_context(|| format!("cannot run the build command of {id} in {}", workdir.display()))?;
        if !status.success() {
            bail!("build of component {id} failed ({status}): {command}");
        }
    }
    Ok(())
}

/// A component compiled ahead of time by [`precompile`].
pub struct Precompiled {
    pub component: String,
    pub target: String,
    /// The compiled file (its description is beside it, `.toml`).
    pub path: std::path::PathBuf,
    pub bytes: u64,
    pub seconds: f64,
}

/// Compiles each routed component of `manifest`, composed as `edgeinfer up` composes it, for
/// each of `targets` (triples) with the engine settings of a host with `metered` guests, into
/// `SOURCE.precompiled/ID.TARGET.cwasm` with its description beside it: `registry push` carries
/// them as layers, and hosts that trust the artifact's signature load them instead of compiling.
pub fn precompile(
    manifest: &Manifest,
    targets: &[String],
    metered: bool,
    compose_nn_providers: bool,
) -> Result<Vec<Precompiled>> {
    use edgeinfer_config::precompiled::{self, PrecompiledComponent};
    use sha2::{Digest, Sha256};
    let sha256 = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let routed = manifest.routed_components();
    let mut done = Vec::new();
    for id in routed {
        let component = &manifest.components[id];
        let main = manifest.read_source(component)?;
        let source_sha256 = sha256(&main);
        let mut dependencies_sha256 = std::collections::BTreeMap::new();
        for (key, dependency) in &component.dependencies {
            let path = manifest.resolve(&dependency.path);
            if let Ok(bytes) = std::fs::read(&path) {
                dependencies_sha256.insert(key.clone(), sha256(&bytes));
            }
        }
        let composed = crate::compose::compose_component(manifest, id, component, main, compose_nn_providers)
            .with_context(|| format!("component {id}"))?;
        let composed_sha256 = sha256(&composed);
        let folder = precompiled::folder(&manifest.resolve(&component.source));
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        for target in targets {
            let started = std::time::Instant::now();
            let compiled = crate::compile::precompile(&composed, metered, target)
                .with_context(|| format!("cannot precompile component {id} for {target}"))?;
            let (path, description_path) = precompiled::files(&folder, id, target);
            // Renamed into place: a push reading the folder meanwhile sees whole files.
            let partial = path.with_extension(format!("cwasm.{}.partial", std::process::id()));
            std::fs::write(&partial, &compiled)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, &path)?;
            let description = PrecompiledComponent {
                component: id.to_string(),
                profile: crate::compile::engine_profile(metered, target),
                composed_sha256: composed_sha256.clone(),
                source_sha256: source_sha256.clone(),
                dependencies_sha256: dependencies_sha256.clone(),
            };
            precompiled::write_description(&description_path, &description)?;
            done.push(Precompiled {
                component: id.to_string(),
                target: target.clone(),
                path,
                bytes: compiled.len() as u64,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_builds_what_it_serves_and_a_wasi_nn_provider_only_when_composed() {
        let text = r#"
spin_manifest_version = 2
[application]
name = "a"
[[trigger.http]]
route = "/embed"
component = "embed"
[component.embed]
source = "out/embed.wasm"
[component.embed.dependencies]
"edgeinfer:text/tokenize@0.1.0" = { path = "out/tokenizer.wasm" }
"edgeinfer:nn/infer@0.1.0" = { path = "out/nn_local.wasm" }
[component.tokenizer]
source = "out/tokenizer.wasm"
[component.nn-local]
source = "out/nn_local.wasm"
[component.unrelated]
source = "out/other.wasm"
"#;
        let manifest = Manifest::parse(text, ".".into()).unwrap();
        assert_eq!(served_components(&manifest, false), BTreeSet::from(["embed".into(), "tokenizer".into()]));
        assert_eq!(
            served_components(&manifest, true),
            BTreeSet::from(["embed".into(), "nn-local".into(), "tokenizer".into()])
        );
    }
}
