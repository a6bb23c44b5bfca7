//! spin.toml (Spin manifest v2): typed, validated once, then handed to the app loader.
//!
//! We read the subset of Spin's schema that an HTTP app of ours uses and reject what we cannot
//! honour, rather than silently ignoring it. Keys of our own live in runtime-config/, never here:
//! Spin refuses unknown keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A parsed spin.toml and the directory its relative paths start from.
#[derive(Debug)]
pub struct Manifest {
    /// Directory holding spin.toml.
    pub dir: PathBuf,
    pub application: Application,
    pub http_triggers: Vec<HttpTrigger>,
    pub components: BTreeMap<String, Component>,
}

#[derive(Debug, Deserialize)]
struct RawManifest {
    spin_manifest_version: u32,
    application: Application,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, Component>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<HttpTrigger>,
}

/// `[application]`.
#[derive(Debug, Deserialize)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// One `[[trigger.http]]`: a route served by a component.
#[derive(Debug, Deserialize)]
pub struct HttpTrigger {
    /// `/exact` or `/prefix/...` (Spin's wildcard).
    pub route: String,
    pub component: String,
}

/// `[component.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    /// Path of the component's .wasm, relative to spin.toml.
    pub source: String,
    /// Spin's free-text description (carried into a pushed artifact's lock).
    #[serde(default)]
    pub description: Option<String>,
    /// Read-only mounts into the component's filesystem.
    #[serde(default)]
    pub files: Vec<FileMount>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Outbound HTTP destinations the component may reach.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// wasi:nn graph names this component may `load-by-name`.
    #[serde(default)]
    pub ai_models: Vec<String>,
    #[serde(default)]
    pub build: Option<Build>,
    /// Imports satisfied by composing other components, keyed by interface
    /// (`ns:pkg/iface@ver`) or whole package (`ns:pkg@ver`).
    #[serde(default)]
    pub dependencies: BTreeMap<String, Dependency>,
    /// Spin gives dependencies a deny-all WASI configuration unless this is true. Composed
    /// dependencies here share the handler's WASI context (as if true); ours read nothing from it.
    #[serde(default)]
    pub dependencies_inherit_configuration: bool,
}

/// An entry of `files`: a path relative to spin.toml mounted at the same path, or an explicit
/// `{ source, destination }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FileMount {
    Same(String),
    Mapped { source: String, destination: String },
}

/// `[component.NAME.build]`.
#[derive(Debug, Deserialize)]
pub struct Build {
    /// One shell command, or several run in order (as Spin's `command = ["a", "b"]`).
    pub command: BuildCommands,
    /// Where the commands run, relative to spin.toml (default: spin.toml's directory).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Files whose change calls for a rebuild (globs relative to the workdir), for `up --watch`.
    #[serde(default)]
    pub watch: Vec<String>,
}

/// `command = "..."` or `command = ["...", "..."]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum BuildCommands {
    One(String),
    Many(Vec<String>),
}

impl BuildCommands {
    /// The commands, in the order they run.
    pub fn as_slice(&self) -> &[String] {
        match self {
            BuildCommands::One(command) => std::slice::from_ref(command),
            BuildCommands::Many(commands) => commands,
        }
    }
}

/// A component dependency; only local paths are supported (no registry here).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dependency {
    pub path: String,
    /// Which export of the dependency satisfies the import, when names differ.
    #[serde(default)]
    pub export: Option<String>,
}

impl Manifest {
    /// Reads and validates spin.toml.
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let dir = path
            .parent()
            .map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Manifest::parse(&text, dir).with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parses manifest text; `dir` anchors relative paths.
    pub fn parse(text: &str, dir: PathBuf) -> Result<Manifest> {
        let raw: RawManifest = toml::from_str(text)?;
        if raw.spin_manifest_version != 2 {
            bail!("spin_manifest_version must be 2, got {}", raw.spin_manifest_version);
        }
        let manifest = Manifest {
            dir,
            application: raw.application,
            http_triggers: raw.trigger.http,
            components: raw.component,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<()> {
        let mut routes = std::collections::HashSet::new();
        for trigger in &self.http_triggers {
            if !self.components.contains_key(&trigger.component) {
                bail!(
                    "route {} names component {:?}, which is not defined",
                    trigger.route,
                    trigger.component
                );
            }
            if !trigger.route.starts_with('/') {
                bail!("route {:?} must start with '/'", trigger.route);
            }
            if !routes.insert(trigger.route.as_str()) {
                bail!("route {} is declared twice", trigger.route);
            }
        }
        for (name, component) in &self.components {
            if let Some(workdir) = component.build.as_ref().and_then(|b| b.workdir.as_deref())
                && Path::new(workdir).has_root()
            {
                bail!("component {name}: build workdir {workdir:?} must be relative to spin.toml");
            }
            for mount in &component.files {
                if let FileMount::Same(pattern) = mount
                    && pattern.contains(['*', '?', '['])
                {
                    bail!(
                        "component {name}: glob file mounts ({pattern}) are not supported; mount a directory"
                    );
                }
            }
        }
        Ok(())
    }

    /// The ids of the components an HTTP route names (what a host serves), each once, sorted.
    pub fn routed_components(&self) -> BTreeSet<&str> {
        self.http_triggers.iter().map(|t| t.component.as_str()).collect()
    }

    /// Resolves a path relative to spin.toml.
    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    /// The bytes of a component's `source`.
    pub fn read_source(&self, component: &Component) -> Result<Vec<u8>> {
        let source = self.resolve(&component.source);
        std::fs::read(&source).with_context(|| {
            format!(
                "cannot read {} (build it with `edgeinfer build` or `edgeinfer up --build`)",
                source.display()
            )
        })
    }
}

impl FileMount {
    /// (host path relative to spin.toml, guest path).
    pub fn source_and_destination(&self) -> (&str, String) {
        match self {
            FileMount::Same(path) => (path, format!("/{}", path.trim_start_matches("./"))),
            FileMount::Mapped { source, destination } => (source, destination.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "demo"
[[trigger.http]]
route = "/embed"
component = "embed"
[component.embed]
source = "embed.wasm"
files = [{ source = "models/m", destination = "/model" }, "static"]
ai_models = ["minilm"]
environment = { MODEL = "minilm" }
[component.embed.dependencies]
"edgeinfer:text/tokenize@0.1.0" = { path = "tokenizer.wasm" }
"#;

    #[test]
    fn parses_the_subset_we_serve() {
        let m = Manifest::parse(APP, PathBuf::from("/app")).unwrap();
        let c = &m.components["embed"];
        assert_eq!(m.http_triggers[0].route, "/embed");
        assert_eq!(c.ai_models, ["minilm"]);
        assert_eq!(c.files[0].source_and_destination(), ("models/m", "/model".to_string()));
        assert_eq!(c.files[1].source_and_destination(), ("static", "/static".to_string()));
        assert_eq!(c.dependencies["edgeinfer:text/tokenize@0.1.0"].path, "tokenizer.wasm");
        assert_eq!(m.resolve("embed.wasm"), PathBuf::from("/app/embed.wasm"));
    }

    #[test]
    fn rejects_routes_to_missing_components() {
        let bad = APP.replace("component = \"embed\"", "component = \"nope\"");
        let err = Manifest::parse(&bad, PathBuf::from(".")).unwrap_err();
        assert!(format!("{err:#}").contains("\"nope\""), "{err:#}");
    }

    #[test]
    fn build_commands_are_one_string_or_a_list_and_workdirs_relative() {
        let one = format!("{APP}[component.embed.build]\ncommand = \"make\"\n");
        let m = Manifest::parse(&one, PathBuf::from(".")).unwrap();
        assert_eq!(m.components["embed"].build.as_ref().unwrap().command.as_slice(), ["make"]);
        let many = format!("{APP}[component.embed.build]\ncommand = [\"a\", \"b\"]\nworkdir = \"sub\"\n");
        let m = Manifest::parse(&many, PathBuf::from(".")).unwrap();
        assert_eq!(m.components["embed"].build.as_ref().unwrap().command.as_slice(), ["a", "b"]);
        let absolute = many.replace("\"sub\"", "\"/tmp\"");
        let err = Manifest::parse(&absolute, PathBuf::from(".")).unwrap_err();
        assert!(format!("{err:#}").contains("must be relative"), "{err:#}");
    }

    #[test]
    fn rejects_unknown_component_keys_and_versions() {
        let bad = APP.replace("ai_models", "ai_modelz");
        assert!(Manifest::parse(&bad, PathBuf::from(".")).is_err());
        let bad = APP.replace("spin_manifest_version = 2", "spin_manifest_version = 1");
        assert!(Manifest::parse(&bad, PathBuf::from(".")).is_err());
    }
}
