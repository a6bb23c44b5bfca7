//! `edgeinfer deploy`: pushes components of a spin.toml app to the admin APIs of one or many
//! hosts at once (as a new version or as a canary), or promotes, aborts or rolls back there; a
//! progress bar per host and component, then a summary table. With `--from REGISTRY-REFERENCE`,
//! each host is sent the artifact's digest and pulls the component itself.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use edgeinfer_fleet::deploy::{self, App, Change};

use edgeinfer_config::manifest::Manifest;

/// What to do on every host.
#[derive(clap::Subcommand)]
pub enum DeployAction {
    /// Upload the components (default: every routed component) and switch to them, or put them
    /// on trial with --canary.
    Push {
        #[command(flatten)]
        target: Target,
        /// Send this share of the traffic (0-100) to the new version instead of switching.
        #[arg(long)]
        canary: Option<f64>,
        /// With --canary: `shadow` runs the new version on a copy of the traffic only.
        #[arg(long, default_value = "split")]
        mode: String,
        /// With --canary: keep clients on one version, by `client` address or `header:NAME`.
        #[arg(long)]
        sticky: Option<String>,
        /// Upload this file instead of the component's `source` (one component only).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Sign each upload with this PEM private key (a detached signature the host checks
        /// against its --trusted-key). By reference, the artifact's own signature counts.
        #[arg(long, env = "EDGEINFER_SIGN_KEY")]
        sign_key: Option<PathBuf>,
    },
    /// Make the canary the stable version.
    Promote {
        #[command(flatten)]
        target: Target,
    },
    /// Drop the canary.
    Abort {
        #[command(flatten)]
        target: Target,
    },
    /// Serve the previous version again.
    Rollback {
        #[command(flatten)]
        target: Target,
    },
    /// Roll a new version out to a fleet file's hosts in steps (canary on a few, then more, then
    /// all), judged by each host's metrics, rolled back on its own when worse.
    Rollout(Box<crate::fleet_cli::RolloutArgs>),
}

/// Where, what, and with which token.
#[derive(clap::Args)]
pub struct Target {
    /// The app's manifest, or an app artifact in a registry (`host[:port]/repo:tag`): then each
    /// host pulls the version by digest itself.
    #[arg(short = 'f', long = "from", default_value = "spin.toml")]
    manifest: PathBuf,
    /// How this command reaches the registry (with `--from REF`); the hosts use their own settings.
    #[command(flatten)]
    registry: crate::client::RegistryArgs,
    /// Admin API of a host (repeat for a fleet), e.g. https://10.0.0.7:3001. Plain http:// to
    /// a host that is not on loopback is refused unless --insecure is given.
    #[arg(long = "to", required = true)]
    hosts: Vec<String>,
    /// How this command trusts the hosts' HTTPS and proves itself to them (mTLS).
    #[command(flatten)]
    tls: crate::client::ClientTls,
    /// File holding the admin token (else $EDGEINFER_ADMIN_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Components (default: every routed component of the manifest).
    components: Vec<String>,
}

/// Resolves what to send (spin.toml or the artifact's lock, signed uploads or a pinned
/// reference), then sends it to every host (`edgeinfer_fleet::deploy`).
pub fn run(action: DeployAction) -> Result<()> {
    let (target, verb) = match &action {
        DeployAction::Rollout(_) => unreachable!("main runs rollouts with fleet_cli"),
        DeployAction::Push { target, .. } => (target, "push"),
        DeployAction::Promote { target } => (target, "promote"),
        DeployAction::Abort { target } => (target, "abort"),
        DeployAction::Rollback { target } => (target, "rollback"),
    };
    // The token and the component bytes must not cross a network in clear text unless asked.
    edgeinfer_fleet::client::refuse_plain_http(
        target.hosts.iter().map(String::as_str),
        target.registry.insecure,
    )?;
    let token = edgeinfer_server::admin::read_token(target.token_file.as_deref())?;
    let from = target.manifest.to_str().filter(|f| edgeinfer_registry::looks_like_reference(f));
    let app = match from {
        Some(reference) => artifact(reference, &target.registry)?,
        None => App::Manifest(Manifest::load(&target.manifest)?),
    };
    let components = app.select(&target.components).with_context(|| target.manifest.display().to_string())?;
    let change = match &action {
        DeployAction::Push { canary, mode, sticky, wasm, sign_key, .. } => {
            let sign_key = sign_key.as_deref().map(edgeinfer_trust::SigningKey::load).transpose()?;
            let sends = app.sends(&components, wasm.as_deref(), sign_key.as_ref())?;
            if let App::Artifact { pinned, .. } = &app {
                eprintln!("edgeinfer: each host pulls {pinned}");
            }
            Change::push(sends, *canary, mode, sticky.as_deref())
        }
        _ => Change::Act { verb, components },
    };
    let client = target.tls.client(Duration::from_secs(600))?;
    let outcomes = deploy::run(&client, &target.hosts, &token, &change);
    deploy::print_summary(verb, &outcomes)
}

/// The app artifact `reference` as its lock says, its tag resolved to a digest here once.
fn artifact(reference: &str, registry: &crate::client::RegistryArgs) -> Result<App> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let connection = registry.connection(Some(reference))?;
    let cache = edgeinfer_sources::cache_dir();
    let (digest, lock) = runtime.block_on(edgeinfer_registry::locked_app(reference, &connection, &cache))?;
    let parsed = edgeinfer_registry::parse_reference(reference)?;
    Ok(App::Artifact {
        pinned: format!("{}/{}@{digest}", parsed.registry(), parsed.repository()),
        components: lock.components.iter().map(|c| c.id.clone()).collect(),
        routed: lock.routed_components(),
    })
}
