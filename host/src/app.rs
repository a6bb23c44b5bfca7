//! Turns a manifest + runtime config into a running app: models loaded into the registry, each
//! component composed with its dependencies, compiled (cached), linked and ready to instantiate.
//! Each routed component's versions live in a `rollout::ComponentSlot`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::handler::{ProxyHandler, ProxyPre};

use crate::admission::Admission;
use crate::compile::CompileCache;
use crate::compose::{compose_component, read_source};
use crate::instance::{ComponentHandler, InstanceSpec, InstanceState, ReusePolicy};
use crate::outbound::AllowedHost;
use crate::rollout::ComponentSlot;
use edgeinfer_config::manifest::{Component, Manifest};
use edgeinfer_config::runtime_config::ComponentLimits;
use edgeinfer_engine::registry::GraphRegistry;

/// How long after its request timed out a guest still running is interrupted.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// A component ready to serve.
pub struct LoadedComponent {
    pub id: String,
    /// Hex sha256 of the composed component: its version as deployed.
    pub version: String,
    pub loaded_at: SystemTime,
    pub limits: ComponentLimits,
    pub admission: Admission,
    pub handler: ProxyHandler<ComponentHandler>,
    /// The component's own part of the OpenAPI document (its `edgeinfer:openapi` custom
    /// section): paths relative to its route, and the schemas they use.
    pub openapi: Option<serde_json::Value>,
}

/// A route of `[[trigger.http]]`.
pub struct Route {
    pub pattern: RoutePattern,
    pub component: Arc<ComponentSlot>,
}

/// Spin route syntax: exact path, or `prefix/...` for everything under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    Exact(String),
    Prefix(String),
}

impl std::fmt::Display for RoutePattern {
    /// As written in spin.toml.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Exact(p) if p.is_empty() => write!(f, "/"),
            RoutePattern::Exact(p) => write!(f, "{p}"),
            RoutePattern::Prefix(p) => write!(f, "{p}/..."),
        }
    }
}

impl RoutePattern {
    pub fn parse(route: &str) -> RoutePattern {
        match route.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Prefix(prefix.to_string()),
            None => RoutePattern::Exact(route.trim_end_matches('/').to_string()),
        }
    }

    /// Whether `path` is served by this route; longer routes are tried first by the caller.
    pub fn matches(&self, path: &str) -> bool {
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        match self {
            RoutePattern::Exact(p) => path == p || (p.is_empty() && path == "/"),
            RoutePattern::Prefix(p) => path == p || path.starts_with(&format!("{p}/")) || p.is_empty(),
        }
    }

    fn specificity(&self) -> (bool, usize) {
        match self {
            RoutePattern::Exact(p) => (true, p.len()),
            RoutePattern::Prefix(p) => (false, p.len()),
        }
    }
}

/// The running app.
pub struct App {
    pub name: String,
    /// Most specific first.
    pub routes: Vec<Route>,
    pub components: BTreeMap<String, Arc<ComponentSlot>>,
    pub registry: Arc<GraphRegistry>,
    /// Builds new versions of the components.
    pub builder: ComponentBuilder,
}

/// What building a version of a component needs, kept so that versions can be built while the
/// app serves.
pub struct ComponentBuilder {
    manifest: Arc<Manifest>,
    limits: BTreeMap<String, ComponentLimits>,
    registry: Arc<GraphRegistry>,
    engine: Engine,
    linker: Linker<InstanceState>,
    cache: CompileCache,
    compose_nn_providers: bool,
}

impl ComponentBuilder {
    /// Composes `main` (the component's own bytes) with its spin.toml dependencies, compiles it
    /// (cached), links it and checks that it exports the HTTP handler.
    pub fn build(&self, id: &str, main: Vec<u8>) -> Result<LoadedComponent> {
        let component =
            self.manifest.components.get(id).with_context(|| format!("spin.toml has no component {id:?}"))?;
        let limits = self.limits.get(id).copied().unwrap_or_default();
        load_component(
            &self.manifest,
            id,
            component,
            main,
            limits,
            &self.registry,
            &self.engine,
            &self.linker,
            &self.cache,
            self.compose_nn_providers,
        )
        .with_context(|| format!("component {id}"))
    }

    /// The app's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Builds the version spin.toml's `source` names.
    pub fn build_from_source(&self, id: &str) -> Result<LoadedComponent> {
        let component =
            self.manifest.components.get(id).with_context(|| format!("spin.toml has no component {id:?}"))?;
        self.build(id, read_source(&self.manifest, component)?)
    }
}

impl App {
    /// A new version of routed component `id` from its own bytes: composed, compiled (cached),
    /// linked, and instantiated once so that a version that cannot start never serves.
    pub async fn prepare(self: &Arc<Self>, id: &str, main: Vec<u8>) -> Result<LoadedComponent> {
        let (app, owned_id) = (self.clone(), id.to_string());
        let next = tokio::task::spawn_blocking(move || app.builder.build(&owned_id, main)).await??;
        let handler = next.handler.state();
        let mut store = handler.spec.new_store(&handler.engine)?;
        handler
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| anyhow::anyhow!("it cannot be instantiated: {e:#}"))?;
        Ok(next)
    }

    /// Builds every routed component of `manifest`.
    pub fn load(
        manifest: Arc<Manifest>,
        limits: &BTreeMap<String, ComponentLimits>,
        registry: Arc<GraphRegistry>,
        engine: &Engine,
        cache: CompileCache,
        compose_nn_providers: bool,
    ) -> Result<App> {
        let mut linker = Linker::<InstanceState>::new(engine);
        // Handlers built for wasm32-wasip2 import WASI 0.2 (std) and 0.3 (http) side by side.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        // Outgoing HTTP of WASI 0.2 components (e.g. the nn-remote wasi:nn provider).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        edgeinfer_wasi_nn::add_to_linker(&mut linker)?;

        if let Some(unknown) = limits.keys().find(|id| !manifest.components.contains_key(*id)) {
            bail!(
                "the runtime config sets limits for component {unknown:?}, which spin.toml does not define"
            );
        }
        let builder = ComponentBuilder {
            manifest: manifest.clone(),
            limits: limits.clone(),
            registry: registry.clone(),
            engine: engine.clone(),
            linker,
            cache,
            compose_nn_providers,
        };
        let mut components = BTreeMap::new();
        let routed: BTreeSet<&str> = manifest.http_triggers.iter().map(|t| t.component.as_str()).collect();
        for id in routed {
            let loaded = builder.build_from_source(id)?;
            components.insert(id.to_string(), Arc::new(ComponentSlot::new(loaded)));
        }
        let mut routes: Vec<Route> = manifest
            .http_triggers
            .iter()
            .map(|t| Route {
                pattern: RoutePattern::parse(&t.route),
                component: components[&t.component].clone(),
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.pattern.specificity()));
        Ok(App { name: manifest.application.name.clone(), routes, components, registry, builder })
    }

    /// The route serving `path`, if any.
    pub fn route_of(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(path))
    }
}

#[allow(clippy::too_many_arguments)] // One call site; the arguments are the app's shared parts.
fn load_component(
    manifest: &Manifest,
    id: &str,
    component: &Component,
    main: Vec<u8>,
    limits: ComponentLimits,
    registry: &Arc<GraphRegistry>,
    engine: &Engine,
    linker: &Linker<InstanceState>,
    cache: &CompileCache,
    compose_nn_providers: bool,
) -> Result<LoadedComponent> {
    let composed = compose_component(manifest, id, component, main, compose_nn_providers)?;
    let version = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&composed));
    let openapi = api_description(&composed).unwrap_or_else(|e| {
        tracing::warn!(component = id, "ignoring its OpenAPI description: {e:#}");
        None
    });
    let (compiled, outcome) = cache.load(engine, id, &composed)?;
    let pre = linker
        .instantiate_pre(&compiled)
        .map_err(anyhow::Error::from)
        .context("the component imports something this host does not provide")?;
    let pre = match wasmtime_wasi_http::p3::bindings::ServicePre::new(pre) {
        Ok(pre) => ProxyPre::P3(pre),
        Err(e) => bail!("the component does not export wasi:http/handler@0.3.0: {e}"),
    };
    let mut mounts = Vec::new();
    for mount in &component.files {
        let (source, destination) = mount.source_and_destination();
        let host = manifest.resolve(source);
        if !host.is_dir() {
            bail!("files: {} is not a directory (only directory mounts are supported)", host.display());
        }
        mounts.push((host, destination));
    }
    for model in &component.ai_models {
        if registry.get(model).is_none() && registry.failure(model).is_none() {
            tracing::warn!(component = id, model = %model, "ai_models names a model the runtime config does not load");
        }
    }
    let allowed_outbound_hosts = component
        .allowed_outbound_hosts
        .iter()
        .map(|entry| AllowedHost::parse(entry))
        .collect::<Result<Vec<_>>>()?;
    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let spec = InstanceSpec {
        component_id: id.to_string(),
        environment: component.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        mounts,
        allowed_models: Arc::new(component.ai_models.iter().cloned().collect()),
        models: Arc::new(crate::nn::RegistryModels(registry.clone())),
        allowed_outbound_hosts: Arc::new(allowed_outbound_hosts),
        max_memory_bytes: limits.max_memory_bytes as usize,
        interrupt_after: request_timeout + INTERRUPT_GRACE,
        fuel: limits.fuel,
    };
    // A fuel budget is per request: an instance then serves one request at a time, so that no
    // request spends another's fuel (or refills a runaway one).
    let max_concurrent = if limits.fuel.is_some() { 1 } else { ReusePolicy::default().max_concurrent };
    let handler = ProxyHandler::new(ComponentHandler {
        engine: engine.clone(),
        pre,
        spec: Arc::new(spec),
        policy: ReusePolicy { request_timeout, max_concurrent, ..ReusePolicy::default() },
        instances_created: AtomicU64::new(0),
    });
    tracing::info!(component = id, version = %&version[..12], compile_cache = ?outcome, "component ready");
    let admission = Admission::new(id, limits.max_concurrent_requests, limits.max_queued_requests);
    Ok(LoadedComponent {
        id: id.to_string(),
        version,
        loaded_at: SystemTime::now(),
        limits,
        admission,
        handler,
        openapi,
    })
}

/// Name of the custom section in which a component describes its HTTP API.
const OPENAPI_SECTION: &str = "edgeinfer:openapi";

/// The JSON of the first `edgeinfer:openapi` custom section anywhere in `bytes` (nested modules
/// and components included), if there is one.
fn api_description(bytes: &[u8]) -> Result<Option<serde_json::Value>> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        if let wasmparser::Payload::CustomSection(section) = payload?
            && section.name() == OPENAPI_SECTION
        {
            let value = serde_json::from_slice(section.data()).context("the section is not JSON")?;
            return Ok(Some(value));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::RoutePattern;

    #[test]
    fn spin_route_patterns() {
        let exact = RoutePattern::parse("/embed");
        assert!(exact.matches("/embed") && exact.matches("/embed/"));
        assert!(!exact.matches("/embedx") && !exact.matches("/embed/x"));
        let prefix = RoutePattern::parse("/api/...");
        assert!(prefix.matches("/api") && prefix.matches("/api/x/y"));
        assert!(!prefix.matches("/apix"));
        let all = RoutePattern::parse("/...");
        assert!(all.matches("/") && all.matches("/anything"));
    }
}
