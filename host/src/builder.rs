//! `edgeinfer build`: runs each component's `[component.X.build]` command, as `spin build` does
//! (through the shell, in the manifest's directory or the component's `workdir`).

use anyhow::{Context, Result, bail};

use edgeinfer_config::manifest::Manifest;

/// Builds every component that declares a build command; stops at the first failure.
pub fn build_all(manifest: &Manifest) -> Result<()> {
    for id in manifest.components.keys() {
        build_one(manifest, id)?;
    }
    Ok(())
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
        let status = std::process::Command::new("sh")
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
