//! `edgeinfer deploy rollout` and `edgeinfer fleet status`: the command lines of the fleet crate.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::MultiProgress;

use edgeinfer_config::manifest::Manifest;
use edgeinfer_fleet::admin::Hosts;
use edgeinfer_fleet::fleet::Fleet;
use edgeinfer_fleet::rollout::{self, Phase, Rollout, Source};

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

fn hosts(fleet: &Fleet, tls: &crate::client::ClientTls) -> Result<Hosts> {
    Ok(Hosts {
        client: tls.client(fleet.policy.call_timeout)?,
        token: fleet.token()?,
        attempts: fleet.policy.attempts,
        backoff: Duration::from_millis(250),
    })
}

/// For `fleet status`: one quick try per call, so that a host that is down costs seconds.
fn quick_hosts(fleet: &Fleet, tls: &crate::client::ClientTls) -> Result<Hosts> {
    Ok(Hosts {
        client: tls.client(Duration::from_secs(5))?,
        token: fleet.token()?,
        attempts: 1,
        backoff: Duration::ZERO,
    })
}

/// Runs, resumes or undoes a rollout; fails (non-zero exit) unless it succeeded.
pub fn rollout(args: RolloutArgs) -> Result<()> {
    let fleet = Fleet::load(&args.fleet)?;
    for host in &fleet.hosts {
        if crate::client::plain_http_off_machine(&host.admin)? {
            bail!(
                "refusing plain http:// to {}: the admin token and the component would cross the network readable",
                host.admin
            );
        }
    }
    let source = match (&args.reference, &args.wasm) {
        (Some(reference), _) => {
            Source::Pull { reference: reference.clone(), component: args.component.clone() }
        }
        (None, wasm) => {
            let bytes = match wasm {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
                }
                None => {
                    let manifest = Manifest::load(&args.manifest)?;
                    let component = manifest.components.get(&args.component).with_context(|| {
                        format!("{} has no component {:?}", args.manifest.display(), args.component)
                    })?;
                    edgeinfer_runtime::compose::read_source(&manifest, component)?
                }
            };
            let signature = match &args.sign_key {
                Some(key) => Some(edgeinfer_trust::SigningKey::load(key)?.sign(&bytes)),
                None => None,
            };
            Source::Upload { bytes, signature }
        }
    };
    let state_file = args.state.clone().unwrap_or_else(|| {
        args.fleet
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(format!(".rollout-{}.json", args.component))
    });
    let rollout = Rollout {
        hosts: hosts(&fleet, &args.tls)?,
        fleet: &fleet,
        component: args.component.clone(),
        source,
        state_file: state_file.clone(),
        bars: MultiProgress::new(),
    };
    let state = if args.rollback {
        rollout.roll_back(rollout::load(&state_file)?)?
    } else if args.resume {
        rollout.run(Some(rollout::load(&state_file)?))?
    } else {
        if let Ok(previous) = rollout::load(&state_file)
            && !matches!(previous.phase, Phase::Succeeded | Phase::RolledBack)
        {
            bail!(
                "{} holds a rollout of {} that has not ended cleanly ({:?}): --resume it or --rollback it first",
                state_file.display(),
                previous.component,
                previous.phase
            );
        }
        rollout.run(None)?
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        for judgement in &state.judgements {
            println!(
                "step {} ({} hosts, {:.0} s): {} {}",
                judgement.step,
                judgement.hosts,
                judgement.seconds,
                if judgement.passed { "passed" } else { "FAILED" },
                judgement.why
            );
        }
        print!("{}", rollout::table(&state));
    }
    match state.phase {
        Phase::Succeeded => Ok(()),
        Phase::RolledBack if args.rollback => Ok(()),
        Phase::RolledBack => bail!("rolled back: {}", state.reason.as_deref().unwrap_or("?")),
        Phase::Failed => bail!(
            "failed, and some hosts could not be rolled back (see the table; --rollback retries): {}",
            state.reason.as_deref().unwrap_or("?")
        ),
        Phase::Running | Phase::RollingBack => unreachable!("a rollout returns when it ends"),
    }
}

pub fn fleet(action: FleetAction) -> Result<()> {
    match action {
        FleetAction::Status { fleet, interval, json, tls } => {
            let fleet = Fleet::load(&fleet)?;
            let hosts = quick_hosts(&fleet, &tls)?;
            let rows = edgeinfer_fleet::status::status(&fleet, &hosts, Duration::from_secs_f64(interval));
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", edgeinfer_fleet::status::table(&rows));
            }
            Ok(())
        }
    }
}
