//! The running app: its route table, and each routed component's versions in a
//! `rollout::ComponentSlot`, built from a manifest and the models already in the registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, bail};
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::compile::CompileCache;
use crate::component::{ComponentBuilder, LoadedComponent};
use crate::instance::InstanceState;
use crate::rollout::ComponentSlot;
use crate::routes::{Route, RoutePattern};
use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::ComponentLimits;
use edgeinfer_engine::registry::GraphRegistry;
use edgeinfer_llm::EmbeddingModels;

/// The running app.
pub struct App {
    pub name: String,
    /// Most specific first.
    pub routes: Vec<Route>,
    pub components: BTreeMap<String, Arc<ComponentSlot>>,
    pub registry: Arc<GraphRegistry>,
    /// Builds new versions of the components.
    pub builder: ComponentBuilder,
    /// Where what the admin API changes is kept across restarts (`up --state-dir`).
    pub state: Option<Arc<crate::state::StateDir>>,
}

impl App {
    /// What the host state saves and restores of this app.
    pub fn state_view(&self) -> crate::state::AppView<'_> {
        crate::state::AppView { name: &self.name, components: &self.components, builder: &self.builder }
    }

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
        embeddings: Arc<EmbeddingModels>,
    ) -> Result<App> {
        let mut linker = Linker::<InstanceState>::new(engine);
        // Handlers built for wasm32-wasip2 import WASI 0.2 (std) and 0.3 (http) side by side.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
        // Outgoing HTTP of WASI 0.2 components (e.g. the nn-remote wasi:nn provider).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        edgeinfer_wasi_nn::add_to_linker(&mut linker)?;
        // Spin's LLM interface, for apps written against spin_sdk::llm.
        edgeinfer_llm::add_to_linker(&mut linker)?;

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
            embeddings,
        };
        let mut components = BTreeMap::new();
        let routed = manifest.routed_components();
        // Side by side: composing a component and reading its compiled code take ~25 ms each.
        let built: Vec<Result<LoadedComponent>> = std::thread::scope(|scope| {
            let building: Vec<_> =
                routed.iter().map(|id| scope.spawn(|| builder.build_from_source(id))).collect();
            building.into_iter().map(|b| b.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        });
        for (id, loaded) in routed.iter().zip(built) {
            components.insert(id.to_string(), Arc::new(ComponentSlot::new(loaded?)));
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
        Ok(App {
            name: manifest.application.name.clone(),
            routes,
            components,
            registry,
            builder,
            state: None,
        })
    }

    /// The route serving `path`, if any.
    pub fn route_of(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(path))
    }
}
