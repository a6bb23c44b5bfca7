//! `edgeinfer up --watch`: local development without restarts. The files each component's
//! `[component.X.build] watch` globs name are polled; when some change (and then stay unchanged
//! for one more poll, so that an editor's burst of writes is one change), the component's build
//! command runs and every routed component whose composed bytes changed is swapped in the running
//! host, as an admin deploy would: models stay loaded, requests in flight finish on the old
//! version. A failed build or a version that does not start is logged and the old version
//! keeps serving.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use globset::{Glob, GlobMatcher};

use crate::app::App;

/// How often the watched files are looked at.
const POLL: Duration = Duration::from_millis(500);

/// The watched files of one component: globs relative to its build's workdir.
struct Watched {
    component: String,
    root: PathBuf,
    globs: Vec<Pattern>,
}

/// One watch glob: where to look, how deep, and what matches.
struct Pattern {
    base: PathBuf,
    max_depth: usize,
    matcher: GlobMatcher,
}

/// Each watched file's modification time and size.
type Snapshot = BTreeMap<PathBuf, (SystemTime, u64)>;

impl Watched {
    fn snapshot(&self) -> Snapshot {
        let mut files = Snapshot::new();
        for pattern in &self.globs {
            let walk = walkdir::WalkDir::new(self.root.join(&pattern.base))
                .follow_links(true)
                .max_depth(pattern.max_depth);
            for entry in walk.into_iter().filter_map(Result::ok).filter(|e| e.file_type().is_file()) {
                let Ok(relative) = entry.path().strip_prefix(&self.root) else { continue };
                if !pattern.matcher.is_match(relative) {
                    continue;
                }
                if let Ok(meta) = entry.metadata() {
                    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.insert(relative.to_path_buf(), (modified, meta.len()));
                }
            }
        }
        files
    }
}

/// Where to start looking for a glob's files (the directories before its first wildcard) and
/// how deep (unbounded only under `**`), so that a pattern never walks the whole tree (target/).
fn walk_bounds(pattern: &str) -> (PathBuf, usize) {
    let parts: Vec<&str> = pattern.split('/').collect();
    let literal = parts.iter().take_while(|p| !p.contains(['*', '?', '[', '{'])).count();
    if literal == parts.len() {
        // No wildcard: the file itself.
        return (PathBuf::from(pattern), 0);
    }
    let base: PathBuf = parts[..literal].iter().collect();
    let depth = if pattern.contains("**") { usize::MAX } else { parts.len() - literal };
    (base, depth)
}

/// The components of the app with watch globs.
fn watched(app: &App) -> Result<Vec<Watched>> {
    let manifest = app.builder.manifest();
    let mut all = Vec::new();
    for (id, component) in &manifest.components {
        let Some(build) = &component.build else { continue };
        if build.watch.is_empty() {
            continue;
        }
        let root = build.workdir.as_deref().map_or_else(|| manifest.dir.clone(), |dir| manifest.resolve(dir));
        let globs = build
            .watch
            .iter()
            .map(|pattern| {
                let matcher = Glob::new(pattern)
                    .with_context(|| format!("component {id}: watch pattern {pattern:?}"))?
                    .compile_matcher();
                let (base, max_depth) = walk_bounds(pattern);
                Ok(Pattern { base, max_depth, matcher })
            })
            .collect::<Result<Vec<_>>>()?;
        all.push(Watched { component: id.clone(), root, globs });
    }
    Ok(all)
}

/// Checks the watch globs and starts the polling task; returns what it watches, for the log.
pub fn start(app: Arc<App>) -> Result<Vec<String>> {
    let watched = watched(&app)?;
    let names = watched.iter().map(|w| w.component.clone()).collect();
    // The baseline is taken here, before the host says it is watching, not when the task first
    // runs: on a busy machine that can be after a change, which would then never be seen.
    let seen = watched.iter().map(Watched::snapshot).collect();
    tokio::spawn(poll(app, watched, seen));
    Ok(names)
}

async fn poll(app: Arc<App>, watched: Vec<Watched>, mut seen: Vec<Snapshot>) {
    // A change waiting for its files to settle: the snapshot it was seen with.
    let mut pending: BTreeMap<usize, Snapshot> = BTreeMap::new();
    loop {
        tokio::time::sleep(POLL).await;
        let mut settled = Vec::new();
        for (i, component) in watched.iter().enumerate() {
            let now = component.snapshot();
            match pending.get(&i) {
                Some(previous) if *previous == now => {
                    pending.remove(&i);
                    seen[i] = now;
                    settled.push(component.component.clone());
                }
                Some(_) => {
                    pending.insert(i, now);
                }
                None if now != seen[i] => {
                    pending.insert(i, now);
                }
                None => {}
            }
        }
        if !settled.is_empty() {
            rebuild(&app, &settled).await;
        }
    }
}

/// Builds the changed components, then swaps every routed component whose version changed.
async fn rebuild(app: &Arc<App>, changed: &[String]) {
    let started = Instant::now();
    tracing::info!(components = ?changed, "watched files changed: rebuilding");
    for id in changed {
        let (builder_app, owned_id) = (app.clone(), id.clone());
        let built = tokio::task::spawn_blocking(move || {
            crate::builder::build_one(builder_app.builder.manifest(), &owned_id)
        })
        .await;
        match built {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return tracing::error!(component = %id, "build failed, nothing swapped: {e:#}"),
            Err(e) => return tracing::error!(component = %id, "build task failed: {e}"),
        }
    }
    // A changed dependency (the tokenizer) changes the composed bytes of the handlers using it,
    // so every routed component is checked, not only the rebuilt ones.
    for (id, slot) in &app.components {
        let manifest = app.builder.manifest();
        let main = match manifest.read_source(&manifest.components[id]) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(component = %id, "cannot read the new build: {e:#}");
                continue;
            }
        };
        match app.prepare(id, main).await {
            Ok(next) if next.version == slot.current().version => {}
            Ok(next) => {
                let version = next.version.clone();
                let replaced = slot.swap(Arc::new(next));
                metrics::counter!("edgeinfer_deployments_total", "component" => id.clone(), "outcome" => "watched").increment(1);
                tracing::info!(
                    component = %id,
                    version = %&version[..12],
                    replaced = %&replaced.version[..12],
                    since_change_ms = started.elapsed().as_millis() as u64,
                    "hot-swapped the new build"
                );
            }
            Err(e) => {
                metrics::counter!("edgeinfer_deployments_total", "component" => id.clone(), "outcome" => "refused").increment(1);
                tracing::error!(component = %id, "the new build does not start, the old version keeps serving: {e:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_start_at_the_first_wildcard_and_go_deep_only_under_double_stars() {
        assert_eq!(
            walk_bounds("components/embed/src/**/*.rs"),
            (PathBuf::from("components/embed/src"), usize::MAX)
        );
        assert_eq!(walk_bounds("wit/*.wit"), (PathBuf::from("wit"), 1));
        assert_eq!(
            walk_bounds("components/embed/Cargo.toml"),
            (PathBuf::from("components/embed/Cargo.toml"), 0)
        );
        assert_eq!(walk_bounds("a/{b,c}/d.rs"), (PathBuf::from("a"), 2));
        assert_eq!(walk_bounds("*.wasm"), (PathBuf::new(), 1));
    }

    #[test]
    fn a_snapshot_sees_matching_files_only() {
        let root = std::env::temp_dir().join(format!("edgeinfer-watch-unit-{}", std::process::id()));
        std::fs::create_dir_all(root.join("src/deep")).unwrap();
        for file in ["src/a.rs", "src/deep/b.rs", "src/c.txt", "top.rs"] {
            std::fs::write(root.join(file), file).unwrap();
        }
        let pattern = |glob: &str| {
            let (base, max_depth) = walk_bounds(glob);
            Pattern { base, max_depth, matcher: Glob::new(glob).unwrap().compile_matcher() }
        };
        let watched = Watched {
            component: "x".into(),
            root: root.clone(),
            globs: vec![pattern("src/**/*.rs"), pattern("top.rs")],
        };
        let files: Vec<PathBuf> = watched.snapshot().into_keys().collect();
        assert_eq!(files, ["src/a.rs", "src/deep/b.rs", "top.rs"].map(PathBuf::from));
        let shallow = Watched { component: "x".into(), root: root.clone(), globs: vec![pattern("src/*.rs")] };
        assert_eq!(shallow.snapshot().into_keys().collect::<Vec<_>>(), [PathBuf::from("src/a.rs")]);
        std::fs::remove_dir_all(root).unwrap();
    }
}
