//! `edgeinfer`: the native host daemon. Serves the WASI HTTP components of a Spin manifest
//! (spin.toml) with wasmtime, and implements wasi:nn on ONNX Runtime for them.

mod client;
mod deploy;
mod fleet_cli;

use client::RegistryArgs;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use edgeinfer_export as export;

use edgeinfer_config::manifest::Manifest;
use edgeinfer_runtime::compose;
use edgeinfer_server as http;

#[derive(Parser)]
#[command(
    name = "edgeinfer",
    version,
    about = "Serve WASI HTTP components with native wasi:nn on ONNX Runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the app described by a Spin manifest.
    Up(Box<UpArgs>),
    /// Run each component's build command from the manifest.
    Build(BuildArgs),
    /// Fetch and verify what the runtime config needs (models, ONNX Runtime) into the cache; print
    /// the files the app serves from.
    Fetch(FetchArgs),
    /// Write one component composed with its dependencies, wasi:nn provider included, as a
    /// standalone component for other runtimes (prints the `wasmtime serve` command to run it).
    Compose(ComposeArgs),
    /// Push components to the admin APIs of hosts (a fleet at once), as new versions or canaries;
    /// promote, abort, roll back.
    #[command(subcommand)]
    Deploy(deploy::DeployAction),
    /// The hosts of a fleet file: their components, versions, health and request rates.
    #[command(subcommand)]
    Fleet(fleet_cli::FleetAction),
    /// Export a Hugging Face BERT-family or MPNet checkpoint (safetensors) to ONNX, without PyTorch.
    Export(ExportArgs),
    /// Push the app to an OCI registry in Spin's format (`spin up -f REF` runs it too), or pull
    /// one (ours or `spin registry push`'s) into the cache. `up -f REF` pulls and serves.
    #[command(subcommand)]
    Registry(RegistryAction),
    /// Sign components (detached signatures, as `cosign sign-blob`: FILE.sig beside each) or
    /// registry artifacts (the signature pushed beside them, as `cosign sign --key`), for hosts
    /// started with --trusted-key.
    Sign {
        /// PEM private key, ECDSA P-256 (PKCS#8 or SEC1).
        #[arg(long, env = "EDGEINFER_SIGN_KEY")]
        key: PathBuf,
        /// How to reach the registry of a reference.
        #[command(flatten)]
        registry: RegistryArgs,
        /// Files (`.wasm`) or registry references (`host[:port]/repository:tag|@sha256:...`).
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Exit 0 if URL answers 200 within the timeout, else 1: a container HEALTHCHECK for images
    /// with no curl.
    Probe {
        #[arg(default_value = "http://127.0.0.1:3000/health")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
        /// How to trust an https:// URL (and a client certificate, when it asks for one).
        #[command(flatten)]
        tls: client::ClientTls,
    },
}

#[derive(Subcommand)]
enum RegistryAction {
    /// Push the app: built components, their dependencies and files as layers, the runtime
    /// config and the models it names as one more layer (fetched first where missing).
    Push {
        #[command(flatten)]
        manifest: ManifestArg,
        /// Default: runtime-config/local.toml next to the manifest, if there is one.
        #[arg(long, env = "EDGEINFER_RUNTIME_CONFIG")]
        runtime_config_file: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Where to push: `host[:port]/repository:tag`.
        reference: String,
        /// Sign the pushed artifact with this PEM private key (cosign's format, beside it), for
        /// hosts started with --trusted-key.
        #[arg(long, env = "EDGEINFER_SIGN_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Pull an app by tag or digest, verify every layer, and lay it out under the cache; prints
    /// the digest and the laid-out spin.toml.
    Pull {
        #[command(flatten)]
        registry: RegistryArgs,
        /// `host[:port]/repository:tag` or `host[:port]/repository@sha256:...`.
        reference: String,
    },
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Directory with config.json and model.safetensors (and, for sentence-transformers models,
    /// modules.json and 1_Pooling/config.json).
    model_dir: PathBuf,
    /// The ONNX file to write (labels.json is written next to it for a classifier).
    #[arg(short, long)]
    output: PathBuf,
    /// Sentence pooling added after the encoder: `auto` (as the sentence-transformers files say),
    /// `none`, `mean` or `cls`.
    #[arg(long, default_value = "auto")]
    pooling: export::Pooling,
    /// L2-normalise the pooled vector (default: as the sentence-transformers files say).
    #[arg(long)]
    normalize: Option<bool>,
    /// Classification head: `auto` (the checkpoint's classifier if it has one), `none`, or a
    /// scikit-learn linear classifier saved with joblib, applied to the pooled vector.
    #[arg(long, default_value = "auto")]
    head: export::Head,
    /// Class → label name map (joblib dict or JSON object) for the head's classes.
    #[arg(long)]
    label_map: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ComposeArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// The component of the manifest to compose (e.g. `embed`).
    component: String,
    /// The composed component to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Leave the model interfaces (`edgeinfer:nn`, wasi:nn) imported, for a runtime that
    /// implements them (edgeinfer), instead of composing the manifest's model provider.
    #[arg(long, alias = "keep-wasi-nn")]
    keep_nn_imports: bool,
}

#[derive(clap::Args)]
struct FetchArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// How `oci://` sources reach their registry.
    #[command(flatten)]
    registry: RegistryArgs,
    /// Models and how to run them; default: runtime-config/local.toml next to the manifest.
    #[arg(long, env = "EDGEINFER_RUNTIME_CONFIG")]
    runtime_config_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BuildArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// Also compile each routed component, composed as `up` composes it, for hosts of these
    /// targets (x86_64, aarch64, or triples; comma-separated or repeated): `registry push` carries
    /// them, and hosts that verify the artifact's signature load them instead of compiling.
    #[arg(long, value_delimiter = ',', value_name = "TARGET")]
    precompile: Vec<String>,
    /// The runtime config whose fuel limits the precompiled code must count; default:
    /// runtime-config/local.toml next to the manifest.
    #[arg(long, env = "EDGEINFER_RUNTIME_CONFIG")]
    runtime_config_file: Option<PathBuf>,
    /// Precompile with wasi:nn providers composed in (for hosts started with the same flag).
    #[arg(long)]
    compose_nn_providers: bool,
}

#[derive(clap::Args)]
struct ManifestArg {
    /// The app's Spin manifest (for `up`, also a registry reference: `host[:port]/repo:tag`).
    #[arg(short = 'f', long = "from", default_value = "spin.toml", env = "EDGEINFER_MANIFEST")]
    manifest: PathBuf,
}

#[derive(clap::Args)]
struct UpArgs {
    #[command(flatten)]
    manifest: ManifestArg,
    /// Models and how to run them; default: runtime-config/local.toml next to the manifest.
    #[arg(long, env = "EDGEINFER_RUNTIME_CONFIG")]
    runtime_config_file: Option<PathBuf>,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:3000", env = "EDGEINFER_LISTEN")]
    listen: SocketAddr,
    /// Build the components first.
    #[arg(long)]
    build: bool,
    /// Rebuild components when their `[component.X.build] watch` files change, and swap the new
    /// builds in without a restart (models stay loaded).
    #[arg(long)]
    watch: bool,
    /// Compose wasi:nn provider dependencies (e.g. nn-remote) into handlers instead of serving
    /// wasi:nn natively (by default such dependencies are skipped).
    #[arg(long)]
    compose_nn_providers: bool,
    /// Put each request's body in its log line (off by default: only its hash and size).
    #[arg(long, env = "EDGEINFER_LOG_INPUTS")]
    log_inputs: bool,
    #[command(flatten)]
    traces: TraceArgs,
    /// Serve the admin API (deploy, rollback) on this address; off by default.
    #[arg(long, env = "EDGEINFER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Keep what the admin API changes (deployed versions, canaries, rollback targets, model
    /// reloads) in this directory, and serve it again after a restart; without it a restart
    /// serves spin.toml's versions.
    #[arg(long, env = "EDGEINFER_STATE_DIR", conflicts_with = "watch")]
    state_dir: Option<PathBuf>,
    /// Serve the KServe v2 API over gRPC (`inference.GRPCInferenceService`) on this address too;
    /// the runtime config must enable the API (`[kserve]`). Off by default.
    #[arg(long, env = "EDGEINFER_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token (else $EDGEINFER_ADMIN_TOKEN).
    #[arg(long, env = "EDGEINFER_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Run only components and apps signed by this PEM public key (ECDSA P-256; repeat for
    /// several, e.g. cosign.pub): admin uploads carry a detached signature, pulls by reference
    /// and `-f REF` are checked against the signature beside the artifact, before anything is
    /// compiled.
    #[arg(long = "trusted-key", env = "EDGEINFER_TRUSTED_KEYS", value_delimiter = ',')]
    trusted_keys: Vec<PathBuf>,
    /// The key every inference route needs as `Authorization: Bearer KEY` (TEI's flag and
    /// variable): component routes, /v1/..., KServe REST and gRPC. At least 16 characters.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// File holding the API key (trimmed), instead of --api-key: a systemd credential, a mounted
    /// Secret.
    #[arg(long, env = "EDGEINFER_API_KEY_FILE", conflicts_with = "api_key")]
    api_key_file: Option<PathBuf>,
    /// The API key guards the host's own routes too (/health, /ready, /metrics, /docs,
    /// /openapi.json), which otherwise stay open for probes and scrapers.
    #[arg(long, env = "EDGEINFER_API_KEY_HOST_ROUTES")]
    api_key_host_routes: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// TLS of the listeners (rustls: TLS 1.2 and 1.3; files re-read when they change).
#[derive(clap::Args)]
struct TlsArgs {
    /// PEM certificate chain to serve HTTPS with (Spin's flag), HTTP/2 and HTTP/1.1 by ALPN;
    /// also the admin and gRPC listeners' unless they have their own.
    #[arg(long, env = "EDGEINFER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "EDGEINFER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The admin listener's own certificate chain (default: --tls-cert).
    #[arg(long, env = "EDGEINFER_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    #[arg(long, env = "EDGEINFER_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Admin clients must present a certificate chained to this PEM CA (mTLS), checked in the
    /// handshake; the bearer token is still required.
    #[arg(long, env = "EDGEINFER_ADMIN_CLIENT_CA")]
    admin_client_ca: Option<PathBuf>,
    /// The gRPC listener's own certificate chain (default: --tls-cert).
    #[arg(long, env = "EDGEINFER_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    grpc_tls_cert: Option<PathBuf>,
    #[arg(long, env = "EDGEINFER_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    grpc_tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The files each listener serves with.
    fn certs(&self) -> http::tls::ListenerCerts {
        let pair = |cert: &Option<PathBuf>, key: &Option<PathBuf>| cert.clone().zip(key.clone());
        http::tls::ListenerCerts {
            public: pair(&self.tls_cert, &self.tls_key),
            admin: pair(&self.admin_tls_cert, &self.admin_tls_key),
            admin_client_ca: self.admin_client_ca.clone(),
            grpc: pair(&self.grpc_tls_cert, &self.grpc_tls_key),
        }
    }
}

/// OpenTelemetry traces (TEI's flag names and variables).
#[derive(clap::Args)]
struct TraceArgs {
    /// Export traces over OTLP to this collector, e.g. `http://127.0.0.1:4317` (off by default).
    #[arg(long, env = "OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (then `/v1/traces` is added to an endpoint without a path).
    #[arg(long, env = "OTLP_PROTOCOL", default_value = "grpc")]
    otlp_protocol: http::traces::Protocol,
    /// The `service.name` of the spans.
    #[arg(long, env = "OTLP_SERVICE_NAME", default_value = "edgeinfer")]
    otlp_service_name: String,
    /// Share of new traces recorded, 0 to 1 (requests with a `traceparent` follow their caller's
    /// choice).
    #[arg(long, env = "OTLP_SAMPLE_RATIO", default_value_t = 1.0)]
    otlp_sample_ratio: f64,
}

impl TraceArgs {
    fn export(&self) -> Option<http::traces::TraceExport> {
        Some(http::traces::TraceExport {
            endpoint: self.otlp_endpoint.clone()?,
            protocol: self.otlp_protocol,
            service_name: self.otlp_service_name.clone(),
            sample_ratio: self.otlp_sample_ratio,
        })
    }
}

fn main() -> Result<()> {
    // Two TLS providers are compiled into rustls in this tree (ring and aws-lc-rs): clients that
    // take the process default (reqwest for downloads) get aws-lc-rs, like the listeners.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    if let Command::Up(args) = cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        // The gRPC exporter's connection lives on this runtime.
        let traces = {
            let _in_runtime = runtime.enter();
            http::traces::init_logging(args.traces.export().as_ref())?
        };
        let served = runtime.block_on(up(*args));
        // The last spans are sent before the runtime goes.
        drop(traces);
        return served;
    }
    http::traces::init_logging(None)?;
    match cli.command {
        Command::Up(_) => unreachable!("served above"),
        Command::Build(args) => build_command(&args),
        Command::Fetch(args) => {
            let (manifest, config) = (&args.manifest.manifest, args.runtime_config_file.as_deref());
            let provisioned = edgeinfer_daemon::fetch(manifest, config, args.registry.connection(None)?)?;
            // The app's files on stdout, one per line (scripts/image copies exactly these).
            provisioned.files.iter().for_each(|file| println!("{}", file.display()));
            eprintln!("edgeinfer: everything is in place (ONNX Runtime: {})", provisioned.library.display());
            Ok(())
        }
        Command::Compose(args) => compose_command(&args),
        Command::Deploy(deploy::DeployAction::Rollout(args)) => fleet_cli::rollout(*args),
        Command::Deploy(action) => deploy::run(action),
        Command::Export(args) => {
            let report = export::export(&export::ExportOptions {
                model_dir: args.model_dir,
                output: args.output,
                pooling: args.pooling,
                normalize: args.normalize,
                head: args.head,
                label_map: args.label_map,
            })?;
            report.to_string().lines().for_each(|line| eprintln!("edgeinfer: {line}"));
            Ok(())
        }
        Command::Fleet(action) => fleet_cli::fleet(action),
        Command::Probe { url, timeout, tls } => {
            let client = tls.client(std::time::Duration::from_secs(timeout))?;
            if let Err(e) = edgeinfer_fleet::client::probe(&client, &url) {
                eprintln!("edgeinfer probe: {url} {e}");
                std::process::exit(1)
            }
            Ok(())
        }
        Command::Sign { key, registry, targets } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(sign(&key, &registry, &targets)),
        Command::Registry(action) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(registry(action))
        }
    }
}

async fn registry(action: RegistryAction) -> Result<()> {
    match action {
        RegistryAction::Push { manifest, runtime_config_file, registry, reference, sign_key } => {
            let sign_key = sign_key.as_deref().map(edgeinfer_trust::SigningKey::load).transpose()?;
            let connection = registry.connection(Some(&reference))?;
            let pushed = edgeinfer_daemon::push(
                &manifest.manifest,
                runtime_config_file,
                &reference,
                &connection,
                sign_key.as_ref(),
            )
            .await?;
            eprintln!("edgeinfer: pushed {reference}: {pushed}");
            println!("Pushed with digest {}", pushed.digest);
            Ok(())
        }
        RegistryAction::Pull { registry, reference } => {
            let pulled = edgeinfer_daemon::pull(&reference, &registry.connection(Some(&reference))?).await?;
            println!("{}", pulled.digest);
            println!("{}", pulled.manifest_path.display());
            Ok(())
        }
    }
}

/// `edgeinfer up`: checks the credentials and certificates, before anything slow, so that a bad one
/// fails at once, then serves (`edgeinfer_daemon`).
async fn up(args: UpArgs) -> Result<()> {
    let api_key = http::auth::ApiKey::from_options(
        args.api_key.clone(),
        args.api_key_file.as_deref(),
        args.api_key_host_routes,
    )?;
    let certs = args.tls.certs();
    let public_tls = certs.public()?;
    let admin_tls = args.admin_listen.map(|_| certs.admin()).transpose()?.flatten();
    let grpc_tls = args.grpc_listen.map(|_| certs.grpc()).transpose()?.flatten();
    // With -f REF, the registry flags are for REF's registry alone.
    let from = args.manifest.manifest.to_str().filter(|p| edgeinfer_registry::looks_like_reference(p));
    let mut connection = args.registry.connection(from)?;
    if !args.trusted_keys.is_empty() {
        let keys = edgeinfer_trust::TrustedKeys::load(&args.trusted_keys)?;
        eprintln!("Running only what these keys signed: {}", keys.names());
        connection.trusted = Some(Arc::new(keys));
    }
    let admin = args
        .admin_listen
        .map(|address| {
            edgeinfer_daemon::AdminOptions::load(address, args.admin_token_file.as_deref(), admin_tls)
        })
        .transpose()?;
    edgeinfer_daemon::up(edgeinfer_daemon::Options {
        manifest: args.manifest.manifest,
        runtime_config_file: args.runtime_config_file,
        listen: args.listen,
        tls: public_tls,
        admin,
        grpc: args.grpc_listen.map(|address| (address, grpc_tls)),
        build: args.build,
        watch: args.watch,
        compose_nn_providers: args.compose_nn_providers,
        log_inputs: args.log_inputs,
        state_dir: args.state_dir,
        api_key,
        registry: connection,
    })
    .await
}

/// `edgeinfer sign`: a detached signature beside each file, a signature beside each artifact.
async fn sign(key: &Path, registry: &RegistryArgs, targets: &[String]) -> Result<()> {
    let key = edgeinfer_trust::SigningKey::load(key)?;
    for target in targets {
        let signed = edgeinfer_daemon::sign(target, &key, || registry.connection(Some(target))).await?;
        eprintln!("edgeinfer: signed {target} {signed}");
    }
    Ok(())
}

/// `edgeinfer compose`: a standalone component, and how to serve it.
/// `edgeinfer build [--precompile TARGET...]`.
fn build_command(args: &BuildArgs) -> Result<()> {
    let manifest = Manifest::load(&args.manifest.manifest)?;
    edgeinfer_runtime::builder::build_all(&manifest)?;
    if args.precompile.is_empty() {
        return Ok(());
    }
    let targets = args
        .precompile
        .iter()
        .map(|name| {
            edgeinfer_runtime::compile::PRECOMPILE_TARGETS
                .iter()
                .find(|(short, triple)| name == short || name == triple)
                .map(|(_, triple)| triple.to_string())
                .with_context(|| format!("--precompile {name}: the targets are x86_64 and aarch64"))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = edgeinfer_sources::load_runtime_config(args.runtime_config_file.as_deref(), &manifest)?;
    let metered = config.component.values().any(|limits| limits.fuel.is_some());
    for done in
        edgeinfer_runtime::builder::precompile(&manifest, &targets, metered, args.compose_nn_providers)?
    {
        eprintln!(
            "edgeinfer: precompiled {} for {} in {:.1} s ({:.1} MB): {}",
            done.component,
            done.target,
            done.seconds,
            done.bytes as f64 / 1e6,
            done.path.display()
        );
    }
    Ok(())
}

fn compose_command(args: &ComposeArgs) -> Result<()> {
    let manifest = Manifest::load(&args.manifest.manifest)?;
    let written = compose::write_composition(&manifest, &args.component, &args.output, args.keep_nn_imports)?;
    eprintln!(
        "edgeinfer: wrote {} ({:.1} MB); it imports {}",
        args.output.display(),
        written.bytes as f64 / 1e6,
        written.imports.join(", ")
    );
    match written.serve_command {
        Some(command) => {
            eprintln!("edgeinfer: run it with");
            println!("{command}");
        }
        // Stock `wasmtime serve` has no edgeinfer:nn: only `edgeinfer up` can run this one.
        None => eprintln!(
            "edgeinfer: it imports the model interfaces: serve it with `edgeinfer up`, not `wasmtime serve`"
        ),
    }
    Ok(())
}
