//! `edgeinfer deploy rollout` and `edgeinfer fleet status`: the command lines of the fleet crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::MultiProgress;

use edgeinfer_config::manifest::Manifest;
use edgeinfer_fleet::admin::Hosts;
use edgeinfer_fleet::fleet::Fleet;
use edgeinfer_fleet::rollout::{self, Rollout, Source};

/// `edgeinfer deploy rollout`.
#[derive(clap::Args)]
pub struct RolloutArgs {
    /// The fleet file: hosts, token, rollout policy (steps, bake times, thresholds).
    #[arg(long)]
    fleet: PathBuf,
    /// The component to roll out.
    component: String,
    /// Upload this file (default: the component's `source` in --manifest).
    #[arg(long, conflicts_with = "reference")]
    wasm: Option<PathBuf>,
    /// Have each host pull this app artifact by digest (`host/repo@sha256:...`) instead.
    #[arg(long)]
    reference: Option<String>,
    /// The app's spin.toml, for the component's source.
    #[arg(short = 'f', long = "manifest", default_value = "spin.toml")]
    manifest: PathBuf,
    /// Sign the upload with this PEM private key (hosts with --trusted-key check it).
    #[arg(long, env = "EDGEINFER_SIGN_KEY")]
    sign_key: Option<PathBuf>,
    /// The rollout's state file, written after every action (default: `.rollout-COMPONENT.json`
    /// beside the fleet file).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Go on with the rollout in the state file (after the controller was stopped).
    #[arg(long, conflicts_with = "rollback")]
    resume: bool,
    /// Undo the rollout in the state file: abort its canaries, roll back its promoted hosts.
    #[arg(long)]
    rollback: bool,
    /// Print the outcome as JSON (for CI) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: crate::client::ClientTls,
}

/// `edgeinfer fleet ...`.
#[derive(clap::Subcommand)]
pub enum FleetAction {
    /// One table of every host: components, stable and canary versions, traffic share, health,
    /// request rate.
    Status {
        #[arg(long)]
        fleet: PathBuf,
        /// Seconds between the two scrapes the request rates come from.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: crate::client::ClientTls,
    },
}

/// Runs, resumes or undoes a rollout; fails (non-zero exit) unless it succeeded.
pub fn rollout(args: RolloutArgs) -> Result<()> {
    let fleet = Fleet::load(&args.fleet)?;
    edgeinfer_fleet::client::refuse_plain_http(fleet.hosts.iter().map(|h| h.admin.as_str()), false)?;
    let source = match &args.reference {
        Some(reference) => Source::Pull { reference: reference.clone(), component: args.component.clone() },
        None => {
            let bytes = match &args.wasm {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
                }
                None => {
                    let manifest = Manifest::load(&args.manifest)?;
                    let component = manifest.components.get(&args.component);
                    manifest.read_source(component.context(format!("no component {:?}", args.component))?)?
                }
            };
            let key = args.sign_key.as_deref().map(edgeinfer_trust::SigningKey::load).transpose()?;
            Source::Upload { signature: key.map(|key| key.sign(&bytes)), bytes }
        }
    };
    let rollout = Rollout {
        hosts: Hosts::of_fleet(&fleet, args.tls.client(fleet.policy.call_timeout)?)?,
        fleet: &fleet,
        component: args.component.clone(),
        source,
        state_file: args.state.unwrap_or_else(|| rollout::default_state_file(&args.fleet, &args.component)),
        bars: MultiProgress::new(),
    };
    let state = match (args.rollback, args.resume) {
        (true, _) => rollout.roll_back_saved()?,
        (false, true) => rollout.resume()?,
        (false, false) => rollout.start()?,
    };
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&state)?),
        false => print!("{}", rollout::report(&state)),
    }
    state.outcome(args.rollback)
}

/// `edgeinfer fleet status`.
pub fn fleet(action: FleetAction) -> Result<()> {
    match action {
        FleetAction::Status { fleet, interval, json, tls } => {
            let fleet = Fleet::load(&fleet)?;
            let hosts = Hosts::quick(&fleet, tls.client(Duration::from_secs(5))?)?;
            let rows = edgeinfer_fleet::status::status(&fleet, &hosts, Duration::from_secs_f64(interval));
            match json {
                true => println!("{}", serde_json::to_string_pretty(&rows)?),
                false => print!("{}", edgeinfer_fleet::status::table(&rows)),
            }
            Ok(())
        }
    }
}
