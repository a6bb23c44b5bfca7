//! Building a version of a component: its own bytes composed with its spin.toml dependencies,
//! compiled (cached), linked, and wrapped in a handler with its limits and admission control.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::handler::{
    ExpirationError, InstantiationError, ProxyHandler, ProxyPre, TrapOrPanicError,
};

use crate::admission::Admission;
use crate::compile::CompileCache;
use crate::compose::compose_component;
use crate::instance::{
    ComponentHandler, InstanceSpec, InstanceState, PoolFull, RequestTicket, ReusePolicy, WarmPool,
};
use crate::openapi::api_description;
use crate::outbound::AllowedHost;
use edgeinfer_config::manifest::{Component, Manifest};
use edgeinfer_config::runtime_config::ComponentLimits;
use edgeinfer_engine::registry::GraphRegistry;
use edgeinfer_llm::EmbeddingModels;

/// How long after its request timed out a guest still running is interrupted.
const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

/// A component ready to serve.
pub struct LoadedComponent {
    pub id: String,
    /// Hex sha256 of the composed component: its version as deployed.
    pub version: String,
    /// Hex sha256 of the component's own bytes (before composition): what was uploaded, pulled
    /// or built.
    pub source: String,
    pub loaded_at: SystemTime,
    pub limits: ComponentLimits,
    pub admission: Admission,
    pub handler: ProxyHandler<ComponentHandler>,
    /// The component's own part of the OpenAPI document (its `edgeinfer:openapi` custom
    /// section): paths relative to its route, and the schemas they use.
    pub openapi: Option<serde_json::Value>,
    /// The models of its `ai_models`, whose batchers are told of each request on its way.
    models: Vec<String>,
    registry: Arc<GraphRegistry>,
}

impl LoadedComponent {
    /// Runs the component on `request`. While the pool is at `max_instances` and every instance is
    /// busy, the request waits for one to take it instead of failing.
    pub async fn handle(
        &self,
        mut ticket: RequestTicket,
        mut request: wasmtime_wasi_http::handler::Request,
    ) -> Result<wasmtime_wasi_http::handler::Response, HandleError> {
        // Until it has answered, the request may still compute on the models it may use: a batch
        // forming on one of them may wait for it (`max_arrival_wait`).
        let _expected: Vec<_> =
            self.models.iter().filter_map(|m| self.registry.get(m)?.batcher.expect_caller()).collect();
        let mut pause = Duration::from_micros(250);
        loop {
            let error = match self.handler.handle(ticket, request).await {
                Ok(response) => return Ok(response),
                Err(error) => error,
            };
            let refused = match error.downcast::<InstantiationError<RequestTicket>>() {
                Ok(refused) => refused,
                Err(error) => return Err(HandleError::sort(error)),
            };
            if !refused.error.is::<PoolFull>() {
                return Err(HandleError::Instantiation(wasmtime::Error::new(refused)));
            }
            ticket = refused.request_data;
            request = refused.request.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
            // An instance turns available again as soon as its requests wait on I/O or the model.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(4));
        }
    }
}

/// Why a component did not answer a request: wasmtime's errors, sorted once here, where they are
/// known, for the server's answer.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The request ran past its deadline inside the guest (epoch interruption).
    #[error("{0}")]
    Expired(wasmtime::Error),
    /// No instance could be made for it.
    #[error("{0}")]
    Instantiation(wasmtime::Error),
    /// The guest trapped or panicked (the instance's retirement reports why: `RequestTicket`).
    #[error("{0}")]
    Trapped(wasmtime::Error),
    /// The guest returned an error instead of a response.
    #[error("{0}")]
    Failed(wasmtime::Error),
}

impl HandleError {
    fn sort(error: wasmtime::Error) -> HandleError {
        if error.is::<ExpirationError>() {
            HandleError::Expired(error)
        } else if error.is::<InstantiationError<RequestTicket>>() {
            HandleError::Instantiation(error)
        } else if error.is::<TrapOrPanicError>() {
            HandleError::Trapped(error)
        } else {
            HandleError::Failed(error)
        }
    }
}

/// The most live instances of a component (see `ComponentLimits::default_max_instances`).
fn max_instances(limits: &ComponentLimits) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    limits.max_instances.unwrap_or_else(|| limits.default_max_instances(cores))
}

/// What building a version of a component needs, kept so that versions can be built while the
/// app serves.
pub struct ComponentBuilder {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) limits: BTreeMap<String, ComponentLimits>,
    pub(crate) registry: Arc<GraphRegistry>,
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<InstanceState>,
    pub(crate) cache: CompileCache,
    pub(crate) compose_nn_providers: bool,
    /// Spin's LLM interface's embedding models.
    pub(crate) embeddings: Arc<EmbeddingModels>,
}

impl ComponentBuilder {
    /// Composes `main` (the component's own bytes) with its spin.toml dependencies, compiles it
    /// (cached), links it and checks that it exports the HTTP handler.
    pub fn build(&self, id: &str, main: Vec<u8>) -> Result<LoadedComponent> {
        let component =
            self.manifest.components.get(id).with_context(|| format!("spin.toml has no component {id:?}"))?;
        let limits = self.limits.get(id).copied().unwrap_or_default();
        load_component(self, id, component, main, limits).with_context(|| format!("component {id}"))
    }

    /// The app's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Builds the version spin.toml's `source` names.
    pub fn build_from_source(&self, id: &str) -> Result<LoadedComponent> {
        let component =
            self.manifest.components.get(id).with_context(|| format!("spin.toml has no component {id:?}"))?;
        self.build(id, self.manifest.read_source(component)?)
    }
}

fn load_component(
    builder: &ComponentBuilder,
    id: &str,
    component: &Component,
    main: Vec<u8>,
    limits: ComponentLimits,
) -> Result<LoadedComponent> {
    let ComponentBuilder {
        manifest, registry, engine, linker, cache, compose_nn_providers, embeddings, ..
    } = builder;
    let compose_nn_providers = *compose_nn_providers;
    let source = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&main));
    let composed = compose_component(manifest, id, component, main, compose_nn_providers)?;
    let version = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&composed));
    let openapi = api_description(&composed).unwrap_or_else(|e| {
        tracing::warn!(component = id, "ignoring its OpenAPI description: {e:#}");
        None
    });
    let (compiled, outcome) = cache.load(engine, id, &composed, &version)?;
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
    // A Spin app's model that nothing serves fails the start, not each of its requests. (A model
    // of wasi:nn may still come from a provider composed into the component, so only a warning.)
    let uses_spin_llm =
        compiled.component_type().imports(engine).any(|(name, _)| name.starts_with("fermyon:spin/llm"));
    for model in &component.ai_models {
        let known = registry.get(model).is_some() || registry.failure(model).is_some();
        if known || embeddings.contains_key(model) {
            continue;
        }
        if uses_spin_llm {
            bail!(
                "ai_models names {model:?}, which nothing here serves: the runtime config maps no \
                 [model.{model:?}] or [llm.embeddings.{model:?}], and it is not one of Spin's embedding \
                 models edgeinfer serves itself ({}; text generation is not served)",
                edgeinfer_config::spin_models::SPIN_EMBEDDING_MODELS.join(", ")
            );
        }
        tracing::warn!(component = id, model = %model, "ai_models names a model the runtime config does not load");
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
        models: Arc::new(crate::models::RegistryModels(registry.clone())),
        embeddings: embeddings.clone(),
        host_info: crate::instance::HostInfo {
            registry: registry.clone(),
            component_id: id.to_string(),
            limits,
        },
        allowed_outbound_hosts: Arc::new(allowed_outbound_hosts),
        max_memory_bytes: limits.max_memory_bytes as usize,
        interrupt_after: request_timeout + INTERRUPT_GRACE,
        fuel: limits.fuel,
    };
    let max_concurrent = limits.requests_per_instance();
    let handler = ProxyHandler::new(ComponentHandler {
        engine: engine.clone(),
        pre,
        spec: Arc::new(spec),
        policy: ReusePolicy {
            request_timeout,
            max_concurrent,
            surplus_idle: Duration::from_millis(limits.surplus_idle_ms),
            ..ReusePolicy::default()
        },
        instances_created: AtomicU64::new(0),
        pool: Arc::new(WarmPool::new(limits.warm_instances, max_instances(&limits))),
    });
    tracing::info!(component = id, version = %&version[..12], compile_cache = ?outcome, "component ready");
    let admission = Admission::new(
        id,
        limits.max_concurrent_requests,
        limits.max_queued_requests,
        Duration::from_millis(limits.admission_wait_ms),
    );
    Ok(LoadedComponent {
        id: id.to_string(),
        version,
        source,
        loaded_at: SystemTime::now(),
        limits,
        admission,
        handler,
        openapi,
        models: component.ai_models.clone(),
        registry: registry.clone(),
    })
}
