//! `edgeinfer up`: a host assembled from its parts. Start-up (the app pulled or built, its models
//! provisioned and loaded, its components compiled, the saved state restored) runs on a blocking
//! thread; then the listeners (public, admin, gRPC) serve until SIGTERM or Ctrl-C, and all of them
//! stop accepting at once and drain. The binary parses the command line and loads credentials;
//! everything after that is here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

mod artifacts;

pub use artifacts::{Signed, fetch, pull, push, sign};

use edgeinfer_config::manifest::Manifest;
use edgeinfer_config::runtime_config::{self, RuntimeConfig};
use edgeinfer_engine::registry::GraphRegistry;
use edgeinfer_registry::PrecompiledLayer;
use edgeinfer_runtime::app::App;
use edgeinfer_runtime::compile::{self, CompileCache};
use edgeinfer_runtime::state::StateDir;
use edgeinfer_server::{self as http, admin, telemetry};
use edgeinfer_sources::{Sources, cache_dir, load_runtime_config};

/// What `edgeinfer up` serves, where, and with which credentials (loaded and checked already).
pub struct Options {
    /// The app's spin.toml, or an app artifact in a registry (`host[:port]/repo:tag|@sha256:...`).
    pub manifest: PathBuf,
    /// Models and how to run them; default: runtime-config/local.toml next to the manifest.
    pub runtime_config_file: Option<PathBuf>,
    /// The public listener's address and TLS (`None`: plain HTTP).
    pub listen: SocketAddr,
    pub tls: Option<http::tls::Tls>,
    /// The admin API's listener, when it is served.
    pub admin: Option<AdminOptions>,
    /// The KServe v2 gRPC listener's address and TLS, when it is served.
    pub grpc: Option<(SocketAddr, Option<http::tls::Tls>)>,
    /// Build the components first.
    pub build: bool,
    /// Rebuild and swap components whose build inputs change.
    pub watch: bool,
    /// Compose wasi:nn provider dependencies into handlers instead of serving wasi:nn natively.
    pub compose_nn_providers: bool,
    /// Put each request's body in its log line.
    pub log_inputs: bool,
    /// Keep what the admin API changes here, and serve it again after a restart.
    pub state_dir: Option<PathBuf>,
    /// The key every inference route needs, when there is one.
    pub api_key: Option<http::auth::ApiKey>,
    /// How this host reaches registries (`-f REF`, `oci://` models, pulls by reference), with the
    /// keys what it runs must be signed by.
    pub registry: edgeinfer_registry::Connection,
}

/// The admin API's listener: its address, bearer token and TLS.
pub struct AdminOptions {
    pub address: SocketAddr,
    pub token: String,
    pub tls: Option<http::tls::Tls>,
}

impl AdminOptions {
    /// The admin listener at `address`, its bearer token read from `token_file` (else
    /// `$EDGEINFER_ADMIN_TOKEN`): at least 16 characters.
    pub fn load(
        address: SocketAddr,
        token_file: Option<&Path>,
        tls: Option<http::tls::Tls>,
    ) -> Result<AdminOptions> {
        let token = admin::read_token(token_file)?;
        anyhow::ensure!(token.len() >= 16, "the admin token must be at least 16 characters");
        Ok(AdminOptions { address, token, tls })
    }
}

/// Serves the app of `options` until SIGTERM or Ctrl-C.
pub async fn up(options: Options) -> Result<()> {
    telemetry::init()?;
    // Model files and assets verified at an earlier start are not read again while unchanged.
    edgeinfer_engine::digest::remember_under(cache_dir().join("digests"));
    // Pulls fetch the components precompiled for this host's wasmtime and CPU (from signed
    // artifacts only).
    let mut registry = options.registry.clone();
    registry.precompiled_for = Some(compile::engine_profile(false, compile::host_target()));
    let sources = Sources::new(registry.clone());
    // Builds, pip, ONNX Runtime sessions and Cranelift compiles block for seconds: they run on a
    // blocking thread, so the async workers that will serve are never tied up by them.
    let (mut manifest_path, mut runtime_config_file) =
        (options.manifest.clone(), options.runtime_config_file.clone());
    let mut precompiled = Vec::new();
    let from = options.manifest.to_str().filter(|p| edgeinfer_registry::looks_like_reference(p));
    if let Some(reference) = from {
        anyhow::ensure!(
            !options.build && !options.watch,
            "--build and --watch need the app's sources; {reference} is a registry artifact"
        );
        let pulled = pull(reference, &registry).await?;
        manifest_path = pulled.manifest_path;
        runtime_config_file = runtime_config_file.or(pulled.runtime_config);
        precompiled = pulled.precompiled;
    }
    let trusted = options.registry.trusted.clone();
    let state = match &options.state_dir {
        Some(dir) => Some(Arc::new(StateDir::open(dir, trusted.clone())?)),
        None => None,
    };
    let (build, compose_nn_providers, provisioning) =
        (options.build, options.compose_nn_providers, sources.clone());
    let Started { manifest, config, app, swagger_ui, kserve, default_route, cache, _ticker } =
        tokio::task::spawn_blocking(move || {
            let manifest = manifest_path.as_path();
            let config = runtime_config_file.as_deref();
            start(&provisioning, manifest, config, build, compose_nn_providers, state, precompiled)
        })
        .await??;
    if options.watch {
        let watched = edgeinfer_runtime::watch::start(app.clone())?;
        eprintln!("Watching the build inputs of: {}", watched.join(", "));
    }
    // Every listener stops accepting at the same signal, and drains.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        }
    };
    let admin = match options.admin {
        Some(AdminOptions { address, token, tls: admin_tls }) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (admin API)"))?;
            if admin_tls.is_none() && !address.ip().is_loopback() {
                tracing::warn!(
                    "the admin API on {address} is plain HTTP: its token and uploads cross the network readable; give --tls-cert/--tls-key (and --admin-client-ca)"
                );
            }
            let listener = http::listener::Listener::new(listener, admin_tls, "admin");
            eprintln!("Admin API: {}://{}", listener.scheme(), listener.local_addr()?);
            // Deploys by reference pull with this host's registry settings into its cache; model
            // reloads by url fetch like a first start (verified, cached).
            let fetch =
                Arc::new(AdminSources { sources: sources.clone(), registry: registry.clone(), cache });
            let sources = admin::Sources { fetch: Some(fetch), trusted: trusted.clone() };
            Some(tokio::spawn(admin::serve(app.clone(), token, listener, sources, stopped())))
        }
        None => None,
    };
    let grpc_listener = match options.grpc {
        Some(_) if kserve.is_none() => {
            anyhow::bail!(
                "--grpc-listen serves the KServe v2 API: enable it in the runtime config ([kserve] enabled = true)"
            )
        }
        Some((address, grpc_tls)) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (gRPC)"))?;
            let tls = if grpc_tls.is_some() { " over TLS" } else { "" };
            eprintln!("KServe v2 gRPC API: {}{tls} (inference.GRPCInferenceService)", listener.local_addr()?);
            Some(http::listener::Listener::new(listener, grpc_tls, "grpc"))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let listener = http::listener::Listener::new(listener, options.tls, "public");
    let (address, scheme) = (listener.local_addr()?, listener.scheme());
    release_freed_heap();
    eprintln!("Serving {scheme}://{address}");
    eprintln!("Available Routes:");
    for trigger in &manifest.http_triggers {
        eprintln!("  {}: {scheme}://{address}{}", trigger.component, trigger.route);
    }
    if config.kserve.enabled {
        let guard = match (&options.api_key, config.kserve.public) {
            (None, true) => "public",
            (None, false) => "bearer token required",
            (Some(_), _) => "bearer token or API key required",
        };
        eprintln!(
            "KServe v2 API: {scheme}://{address}/v2/models/{{name}}/infer for {} ({guard})",
            config.kserve.models.join(", "),
        );
    }
    if options.api_key.is_some() {
        eprintln!("Inference routes need the API key (Authorization: Bearer ...)");
    }
    eprintln!("API docs: {scheme}://{address}/docs (OpenAPI: {scheme}://{address}/openapi.json)");
    let options = http::ServeOptions {
        kserve,
        grpc_listener,
        api_key: options.api_key,
        log_inputs: options.log_inputs,
        swagger_ui,
        default_route,
    };
    let shutdown = async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    };
    http::serve(app, options, listener, shutdown).await?;
    if let Some(admin) = admin
        && let Err(e) = admin.await
    {
        tracing::warn!("admin API task: {e}");
    }
    eprintln!("edgeinfer: stopped");
    Ok(())
}

/// What start-up made: the app, ready to serve.
struct Started {
    manifest: Arc<Manifest>,
    config: RuntimeConfig,
    app: Arc<App>,
    swagger_ui: Option<http::SwaggerUi>,
    /// The KServe API, when the runtime config turns it on.
    kserve: Option<http::Kserve>,
    /// The route `POST /` and `POST /invocations` answer as.
    default_route: Option<String>,
    /// Compiled components: pulls by reference put precompiled code here.
    cache: CompileCache,
    /// Advances the engine's epoch while the host serves.
    _ticker: compile::EpochTicker,
}

/// Loads the app of `manifest_path`: builds what it serves (with `build`), provisions and loads
/// its models, compiles its components, fetches Swagger UI's files. Blocking.
fn start(
    sources: &Sources,
    manifest_path: &Path,
    runtime_config_file: Option<&Path>,
    build: bool,
    compose_nn_providers: bool,
    state: Option<Arc<StateDir>>,
    precompiled: Vec<PrecompiledLayer>,
) -> Result<Started> {
    let manifest = Manifest::load(manifest_path)?;
    tracing::info!(
        app = %manifest.application.name,
        version = manifest.application.version.as_deref().unwrap_or("-"),
        "loading app"
    );
    if build {
        edgeinfer_runtime::builder::build_served(&manifest, compose_nn_providers)?;
    }
    let mut config = load_runtime_config(runtime_config_file, &manifest)?;
    http::check_routes(&manifest, config.kserve.enabled)?;
    let default_route = http::default_task::resolve(&manifest, config.http.default_route.as_deref())?;
    if let Some(route) = &default_route {
        tracing::info!("POST / and POST /invocations answer as {route}");
    }
    // Its token is checked before anything slow, so a missing one fails the start at once.
    let kserve = if config.kserve.enabled {
        let token = match &config.kserve.token_env {
            Some(var) => Some(std::env::var(var).ok().filter(|t| t.len() >= 16).with_context(|| {
                format!(
                    "[kserve] token_env names {var}, which is not set to a token of at least 16 characters"
                )
            })?),
            None => None,
        };
        Some(http::Kserve::new(config.kserve.clone(), token))
    } else {
        None
    };
    if !config.model.is_empty() {
        let library = sources.provision(&config, &manifest.dir)?.library;
        edgeinfer_engine::engines::onnx::init_runtime(&library)?;
        let version = config.onnxruntime.as_ref().map_or("(ORT_DYLIB_PATH)", |o| o.version.as_str());
        tracing::info!("ONNX Runtime {version} loaded from {}", library.display());
    }
    // Planned once the model files are in place (their sizes count), before any is loaded.
    let routed: Vec<String> = manifest.routed_components().into_iter().map(str::to_string).collect();
    if let Some(plan) = config.apply_memory_budget(&manifest.dir, &routed)? {
        tracing::info!("{plan}");
        return_freed_memory_promptly();
    }
    // A model a reload switched (and saved) loads from that file; the runtime config keeps
    // its own for what the host reports.
    let mut models = config.model.clone();
    if let Some(state) = &state {
        state.remove_temporary_files();
        for model in state.restore_models(&mut models)? {
            tracing::info!(state = %state.dir().display(), "restored model {model}");
        }
    }
    let registry = Arc::new(GraphRegistry::load(&models, &manifest.dir));
    let mut gpus: Vec<u32> = registry
        .graphs()
        .iter()
        .filter_map(|graph| match graph.device {
            runtime_config::Device::Cuda(index) => Some(index),
            runtime_config::Device::Cpu => None,
        })
        .collect();
    gpus.sort_unstable();
    gpus.dedup();
    telemetry::watch_gpu_memory(gpus);
    let (engine, profile) = compile::engine(config.component.values().any(|limits| limits.fuel.is_some()))?;
    let ticker = compile::EpochTicker::start(&engine);
    let cache = CompileCache::new(cache_dir().join("compiled"), profile);
    import_precompiled(&cache, &precompiled);
    let embeddings = Arc::new(edgeinfer_runtime::models::embedding_models(&config.llm, &manifest.dir)?);
    let manifest = Arc::new(manifest);
    let mut app = App::load(
        manifest.clone(),
        &config.component,
        registry,
        &engine,
        cache.clone(),
        compose_nn_providers,
        embeddings,
    )?;
    if let Some(state) = state {
        let restored = state.restore_components(&app.state_view())?;
        for component in &restored {
            tracing::info!(state = %state.dir().display(), "restored {component}");
        }
        if restored.is_empty() {
            tracing::info!(state = %state.dir().display(), "no deployed versions to restore: serving spin.toml's");
        }
        state.save(&app.state_view())?;
        app.state = Some(state);
    }
    let app = Arc::new(app);
    let swagger_ui =
        match edgeinfer_sources::ensure_swagger_ui().and_then(|files| http::SwaggerUi::load(&files)) {
            Ok(ui) => Some(ui),
            Err(e) => {
                tracing::warn!("/docs is unavailable: cannot fetch Swagger UI's files: {e:#}");
                None
            }
        };
    Ok(Started { manifest, config, app, swagger_ui, kserve, default_route, cache, _ticker: ticker })
}

/// Puts components precompiled for this host (from a verified artifact) in its compile cache;
/// those of another engine profile are left out, and said so.
fn import_precompiled(cache: &CompileCache, precompiled: &[PrecompiledLayer]) {
    use edgeinfer_runtime::compile::Imported;
    for layer in precompiled {
        let version = layer.composed_sha256.get(..12).unwrap_or_default();
        match cache.import(&layer.composed_sha256, &layer.profile, &layer.path) {
            Ok(Imported::Taken) => tracing::info!(
                component = %layer.component,
                version,
                target = %layer.profile.target,
                "precompiled component taken from the signed artifact"
            ),
            Ok(Imported::AlreadyCompiled) => {
                tracing::info!(component = %layer.component, version, "precompiled component already in the compile cache")
            }
            Ok(Imported::OtherEngine) => tracing::info!(
                component = %layer.component,
                "not using its precompiled code: compiled with other engine settings (fuel), it is compiled here"
            ),
            Err(e) => tracing::warn!(component = %layer.component, "cannot keep its precompiled code: {e:#}"),
        }
    }
}

/// The admin API's sources: components from this host's registries (verified, cached) and model
/// files fetched as on a first start.
struct AdminSources {
    sources: Sources,
    registry: edgeinfer_registry::Connection,
    cache: CompileCache,
}

impl admin::Fetch for AdminSources {
    fn component(
        &self,
        reference: String,
        component: String,
    ) -> futures::future::BoxFuture<'static, Result<Vec<u8>, admin::FetchError>> {
        let (registry, cache) = (self.registry.clone(), self.cache.clone());
        Box::pin(async move {
            use edgeinfer_registry::FetchError;
            match edgeinfer_registry::fetch_component(&reference, &component, &registry, &cache_dir()).await {
                Ok(fetched) => {
                    tracing::info!(%reference, component, layer = %fetched.layer_digest, "component pulled");
                    import_precompiled(&cache, &fetched.precompiled);
                    Ok(fetched.bytes)
                }
                Err(FetchError::Invalid(e)) => Err(admin::FetchError::Invalid(e.to_string())),
                Err(FetchError::Untrusted(e)) => Err(admin::FetchError::Untrusted(e.to_string())),
                Err(FetchError::Registry(e)) => Err(admin::FetchError::Registry(e)),
            }
        })
    }

    fn file(&self, url: String, sha256: String) -> futures::future::BoxFuture<'static, Result<PathBuf>> {
        let sources = self.sources.clone();
        Box::pin(async move { tokio::task::spawn_blocking(move || sources.fetch_url(&url, &sha256)).await? })
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// Under a memory budget, glibc hands freed memory back instead of keeping it for later: the heap
/// is trimmed past 1 MiB of free space, and two arenas serve every thread (each arena keeps its
/// own free memory). Without them, ONNX Runtime's runs with its arena off left 1 GiB resident
/// where 0.5 GiB was needed (BENCHMARKS.md, "A memory budget").
fn return_freed_memory_promptly() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes glibc's allocator; every value is within its documented range.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands the heap memory freed while loading back to the system (ONNX Runtime parses each model
/// file, then keeps only its tensors; glibc would keep the freed pages): 60 MiB less resident
/// memory for the default app right after a cold start (BENCHMARKS.md, Memory).
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
