//! `edgeinfer deploy`: pushes components of a spin.toml app to the admin APIs of one or many
//! hosts at once (as a new version or as a canary), or promotes, aborts or rolls back there; a
//! progress bar per host and component, then a summary table. With `--from REGISTRY-REFERENCE`,
//! each host is sent the artifact's digest and pulls the component itself.

use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use edgeinfer_config::manifest::Manifest;
use edgeinfer_runtime::compose::read_source;

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
    registry: crate::RegistryArgs,
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

/// One host's outcome for one component.
struct Outcome {
    host: String,
    component: String,
    result: Result<String, String>,
    seconds: f64,
}

pub fn run(action: DeployAction) -> Result<()> {
    let (target, verb) = match &action {
        DeployAction::Rollout(_) => unreachable!("main runs rollouts with fleet_cli"),
        DeployAction::Push { target, .. } => (target, "push"),
        DeployAction::Promote { target } => (target, "promote"),
        DeployAction::Abort { target } => (target, "abort"),
        DeployAction::Rollback { target } => (target, "rollback"),
    };
    // The token and the component bytes must not cross a network in clear text unless asked.
    for host in &target.hosts {
        if crate::client::plain_http_off_machine(host)? && !target.registry.insecure {
            bail!(
                "refusing plain http:// to {host}: the admin token and the components would cross the network readable and rewritable; use https:// (with --ca-file for a private CA) or pass --insecure"
            );
        }
    }
    let token = edgeinfer_server::admin::read_token(target.token_file.as_deref())?;
    let from = target.manifest.to_str().filter(|f| edgeinfer_registry::looks_like_reference(f));
    // The app's components and their routes: from spin.toml, or from the artifact's lock (the
    // tag resolved once here, so that every host gets the same digest).
    let (manifest, pinned, components_in, routed) = match from {
        Some(reference) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (digest, lock) = runtime.block_on(edgeinfer_registry::locked_app(
                reference,
                &target.registry.connection(Some(reference))?,
                &edgeinfer_sources::cache_dir(),
            ))?;
            let parsed = edgeinfer_registry::parse_reference(reference)?;
            let repository = format!("{}/{}", parsed.registry(), parsed.repository());
            let routed: Vec<String> = lock
                .triggers
                .iter()
                .filter_map(|t| t.trigger_config.get("component").and_then(Value::as_str).map(str::to_string))
                .collect();
            let ids: Vec<String> = lock.components.iter().map(|c| c.id.clone()).collect();
            (None, Some(format!("{repository}@{digest}")), ids, routed)
        }
        None => {
            let manifest = Manifest::load(&target.manifest)?;
            let ids = manifest.components.keys().cloned().collect();
            let routed = manifest.http_triggers.iter().map(|t| t.component.clone()).collect();
            (Some(manifest), None, ids, routed)
        }
    };
    let components: Vec<String> = if target.components.is_empty() {
        let mut routed = routed;
        routed.dedup();
        routed
    } else {
        target.components.clone()
    };
    for id in &components {
        if !components_in.contains(id) {
            bail!("{} has no component {id:?}", target.manifest.display());
        }
    }
    // What to send: (component, what, query) per component.
    let mut uploads = Vec::new();
    if let DeployAction::Push { canary, mode, sticky, wasm, sign_key, .. } = &action {
        let sign_key = sign_key.as_deref().map(edgeinfer_trust::SigningKey::load).transpose()?;
        if wasm.is_some() && (components.len() != 1 || pinned.is_some()) {
            bail!("--wasm replaces one component's source of a spin.toml: name exactly one component");
        }
        let mut query = String::new();
        if let Some(percent) = canary {
            query.push_str(&format!("&canary={percent}&mode={mode}"));
            if let Some(sticky) = sticky {
                query.push_str(&format!("&sticky={sticky}"));
            }
        }
        for id in &components {
            let send = match (&pinned, &manifest, wasm) {
                (Some(reference), _, _) => {
                    Send::Pull(serde_json::json!({"reference": reference, "component": id}))
                }
                (None, _, Some(path)) => {
                    let bytes =
                        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                    let signature = sign_key.as_ref().map(|key| key.sign(&bytes));
                    Send::Upload(bytes, signature)
                }
                (None, Some(manifest), None) => {
                    let bytes = read_source(manifest, &manifest.components[id])?;
                    let signature = sign_key.as_ref().map(|key| key.sign(&bytes));
                    Send::Upload(bytes, signature)
                }
                (None, None, None) => unreachable!("a spin.toml when not from a registry"),
            };
            uploads.push((id.clone(), send, query.clone()));
        }
        if let Some(reference) = &pinned {
            eprintln!("edgeinfer: each host pulls {reference}");
        }
    }

    let bars = MultiProgress::new();
    let client = target.tls.client(Duration::from_secs(600))?;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        let tasks: Vec<_> = target
            .hosts
            .iter()
            .map(|host| {
                let (client, bars, token, uploads, components) =
                    (&client, &bars, &token, &uploads, &components);
                scope.spawn(move || {
                    let base = host.trim_end_matches('/');
                    if verb == "push" {
                        uploads
                            .iter()
                            .map(|(id, send, query)| match send {
                                Send::Upload(bytes, signature) => {
                                    push(client, bars, base, token, id, (bytes, signature.as_deref()), query)
                                }
                                Send::Pull(body) => pull(client, bars, base, token, id, body, query),
                            })
                            .collect::<Vec<_>>()
                    } else {
                        components.iter().map(|id| act(client, bars, base, token, id, verb)).collect()
                    }
                })
            })
            .collect();
        tasks.into_iter().flat_map(|t| t.join().expect("a deploy thread panicked")).collect()
    });
    print_summary(verb, &outcomes);
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        bail!("{failed} of {} {verb}es failed", outcomes.len());
    }
    Ok(())
}

/// Uploads one component to one host: a bar for the bytes, then a spinner while the host
/// composes, compiles and checks it.
fn push(
    client: &reqwest::blocking::Client,
    bars: &MultiProgress,
    host: &str,
    token: &str,
    id: &str,
    (bytes, signature): (&[u8], Option<&str>),
    query: &str,
) -> Outcome {
    let started = Instant::now();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let bar = bars.add(ProgressBar::new(bytes.len() as u64));
    bar.set_style(
        ProgressStyle::with_template("{prefix:30} {bar:30} {bytes:>10}/{total_bytes:10} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{id} → {host}"));
    bar.set_message("uploading");
    let reader = Upload { data: bytes.to_vec(), at: 0, bar: bar.clone() };
    let url = format!("{host}/admin/v1/components/{id}?sha256={sha}{query}");
    let mut request = client.put(url).bearer_auth(token);
    if let Some(signature) = signature {
        request = request.header(edgeinfer_server::admin::SIGNATURE_HEADER, signature);
    }
    let response = request.body(reqwest::blocking::Body::sized(reader, bytes.len() as u64)).send();
    let result = answer(response).map_err(|e| diagnose(client, host, token).unwrap_or(e)).map(|body| {
        if body["canary"].is_string() {
            format!("canary {} at {}%", short(&body["canary"]), body["percent"].as_f64().unwrap_or(f64::NAN))
        } else if body["unchanged"] == true {
            format!("unchanged {}", short(&body["version"]))
        } else {
            format!("serving {} in {} ms", short(&body["version"]), body["total_ms"])
        }
    });
    bar.finish_with_message(match &result {
        Ok(text) => text.clone(),
        Err(e) => format!("FAILED: {e}"),
    });
    Outcome {
        host: host.to_string(),
        component: id.to_string(),
        result,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Asks one host to pull one component from the registry (by digest) and install it.
fn pull(
    client: &reqwest::blocking::Client,
    bars: &MultiProgress,
    host: &str,
    token: &str,
    id: &str,
    body: &Value,
    query: &str,
) -> Outcome {
    let started = Instant::now();
    let spinner = bars.add(ProgressBar::new_spinner());
    spinner.set_message(format!("{id} → {host}: pulling, validating and compiling on the host"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let url = format!("{host}/admin/v1/components/{id}/pull?{}", query.trim_start_matches('&'));
    let response = client.post(url).bearer_auth(token).json(body).send();
    let result = answer(response).map(|body| {
        let pulled = format!("pulled {:.1} MB", body["pulled_bytes"].as_f64().unwrap_or(0.0) / 1e6);
        if body["canary"].is_string() {
            format!(
                "canary {} at {}% ({pulled})",
                short(&body["canary"]),
                body["percent"].as_f64().unwrap_or(f64::NAN)
            )
        } else if body["unchanged"] == true {
            format!("unchanged {} ({pulled})", short(&body["version"]))
        } else {
            format!("serving {} in {} ms ({pulled})", short(&body["version"]), body["total_ms"])
        }
    });
    spinner.finish_and_clear();
    Outcome {
        host: host.to_string(),
        component: id.to_string(),
        result,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// What goes to a host for one component: its bytes (and their signature), or the reference it
/// pulls.
enum Send {
    Upload(Vec<u8>, Option<String>),
    Pull(Value),
}

/// Promote, abort or rollback of one component on one host.
fn act(
    client: &reqwest::blocking::Client,
    bars: &MultiProgress,
    host: &str,
    token: &str,
    id: &str,
    verb: &str,
) -> Outcome {
    let started = Instant::now();
    let spinner = bars.add(ProgressBar::new_spinner());
    spinner.set_message(format!("{verb} {id} on {host}"));
    spinner.enable_steady_tick(Duration::from_millis(100));
    let response = client.post(format!("{host}/admin/v1/components/{id}/{verb}")).bearer_auth(token).send();
    let result = answer(response).map(|body| format!("serving {}", short(&body["version"])));
    spinner.finish_and_clear();
    Outcome {
        host: host.to_string(),
        component: id.to_string(),
        result,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Why a host cannot be reached, told by a small call: a failed upload reports only that its
/// body could not be sent, not the TLS or connection failure behind it.
fn diagnose(client: &reqwest::blocking::Client, host: &str, token: &str) -> Option<String> {
    match client.get(format!("{host}/admin/v1/app")).bearer_auth(token).send() {
        Err(e) => Some(format!("cannot reach the host: {}", crate::client::with_causes(&e))),
        Ok(_) => None,
    }
}

/// A version hash cut to the 12 hex digits people read.
fn short(version: &Value) -> String {
    version.as_str().unwrap_or("?").chars().take(12).collect()
}

/// The JSON of a 200, or the host's error.
fn answer(response: reqwest::Result<reqwest::blocking::Response>) -> Result<Value, String> {
    let response =
        response.map_err(|e| format!("cannot reach the host: {}", crate::client::with_causes(&e)))?;
    let status = response.status();
    let body: Value = response.json().map_err(|e| format!("{status}: not a JSON answer: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "{status} {}: {}",
            body["error_type"].as_str().unwrap_or("?"),
            body["error"].as_str().unwrap_or("")
        ))
    }
}

fn print_summary(verb: &str, outcomes: &[Outcome]) {
    let width =
        |f: &dyn Fn(&Outcome) -> usize, title: usize| outcomes.iter().map(f).max().unwrap_or(0).max(title);
    let host_w = width(&|o| o.host.len(), 4);
    let component_w = width(&|o| o.component.len(), 9);
    println!("{:host_w$}  {:component_w$}  {:>7}  {verb}", "host", "component", "seconds");
    for o in outcomes {
        let result = match &o.result {
            Ok(text) => format!("ok: {text}"),
            Err(e) => format!("FAILED: {e}"),
        };
        println!("{:host_w$}  {:component_w$}  {:>7.2}  {result}", o.host, o.component, o.seconds);
    }
}

/// The upload's bytes, advancing its progress bar as they are read.
struct Upload {
    data: Vec<u8>,
    at: usize,
    bar: ProgressBar,
}

impl Read for Upload {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at).min(64 << 10);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        self.bar.set_position(self.at as u64);
        if self.at == self.data.len() {
            self.bar.set_message("validating and compiling on the host");
            self.bar.enable_steady_tick(Duration::from_millis(100));
        }
        Ok(n)
    }
}
