//! `edgeinfer deploy`'s calls: a version of some components (uploaded, or pulled by each host from
//! a registry) or a promote, abort or rollback, sent to every host's admin API at once; a progress
//! bar per host and component, then a summary table. Unlike a rollout, nothing is judged or undone:
//! each host's outcome is reported.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use anyhow::{Context, Result, bail, ensure};
use edgeinfer_config::manifest::Manifest;
use edgeinfer_trust::SigningKey;

use crate::admin::with_causes;

/// What changes on every host.
pub enum Change {
    /// New versions: per component, what is sent; `query` carries the canary settings
    /// (`&canary=P&mode=M[&sticky=S]`) or nothing.
    Push { sends: Vec<(String, Send)>, query: String },
    /// `promote`, `abort` or `rollback` of these components.
    Act { verb: &'static str, components: Vec<String> },
}

/// What goes to a host for one component.
pub enum Send {
    /// Its bytes, with their detached signature.
    Upload { bytes: Vec<u8>, signature: Option<String> },
    /// The app artifact (by digest) the host pulls it from itself.
    Pull { reference: String },
}

impl Change {
    /// New versions `sends`, switched to, or with `canary` percent put on trial (`mode`: split
    /// or shadow; `sticky`: by `client` or `header:NAME`).
    pub fn push(sends: Vec<(String, Send)>, canary: Option<f64>, mode: &str, sticky: Option<&str>) -> Change {
        let mut query = String::new();
        if let Some(percent) = canary {
            query.push_str(&format!("&canary={percent}&mode={mode}"));
            if let Some(sticky) = sticky {
                query.push_str(&format!("&sticky={sticky}"));
            }
        }
        Change::Push { sends, query }
    }
}

/// The app a deploy sends from.
pub enum App {
    /// A spin.toml: components are uploaded from their `source`.
    Manifest(Manifest),
    /// An app artifact resolved once to `repository@digest` (so every host gets the same
    /// version), which each host pulls itself: its component ids and routed components.
    Artifact { pinned: String, components: Vec<String>, routed: Vec<String> },
}

impl App {
    /// The `named` components, else every routed one; each must be in the app.
    pub fn select(&self, named: &[String]) -> Result<Vec<String>> {
        let (ids, mut routed): (Vec<String>, Vec<String>) = match self {
            App::Manifest(manifest) => (
                manifest.components.keys().cloned().collect(),
                manifest.http_triggers.iter().map(|t| t.component.clone()).collect(),
            ),
            App::Artifact { components, routed, .. } => (components.clone(), routed.clone()),
        };
        if named.is_empty() {
            routed.dedup();
            return Ok(routed);
        }
        if let Some(missing) = named.iter().find(|id| !ids.contains(id)) {
            bail!("the app has no component {missing:?}");
        }
        Ok(named.to_vec())
    }

    /// What each host is sent for component `ids`: the pinned artifact, or each component's bytes
    /// (from `wasm`, which replaces the one component's source, else from the manifest), signed
    /// with `key` when given.
    pub fn sends(
        &self,
        ids: &[String],
        wasm: Option<&Path>,
        key: Option<&SigningKey>,
    ) -> Result<Vec<(String, Send)>> {
        let manifest = match self {
            App::Artifact { pinned, .. } => {
                ensure!(
                    wasm.is_none(),
                    "--wasm replaces a component's source of a spin.toml, not of an artifact"
                );
                let pull = |id: &String| (id.clone(), Send::Pull { reference: pinned.clone() });
                return Ok(ids.iter().map(pull).collect());
            }
            App::Manifest(manifest) => manifest,
        };
        ensure!(
            wasm.is_none() || ids.len() == 1,
            "--wasm replaces one component's source of a spin.toml: name exactly one component"
        );
        let mut sends = Vec::new();
        for id in ids {
            let bytes = match wasm {
                Some(path) => {
                    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
                }
                None => manifest.read_source(&manifest.components[id])?,
            };
            let signature = key.map(|key| key.sign(&bytes));
            sends.push((id.clone(), Send::Upload { bytes, signature }));
        }
        Ok(sends)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The host could not be reached (with the causes: refused, TLS, timeout).
    #[error("cannot reach the host: {0}")]
    Unreachable(String),
    /// The host answered with an error.
    #[error("{status} {error_type}: {error}")]
    Refused { status: reqwest::StatusCode, error_type: String, error: String },
    /// The host's answer is not the admin API's JSON.
    #[error("{status}: not a JSON answer: {why}")]
    NotJson { status: reqwest::StatusCode, why: String },
}

/// One host's outcome for one component: what it serves now, or why not.
pub struct Outcome {
    pub host: String,
    pub component: String,
    pub result: Result<String, DeployError>,
    pub seconds: f64,
}

/// Sends `change` to every host of `hosts` (admin API base URLs) at once, with `token`.
pub fn run(
    client: &reqwest::blocking::Client,
    hosts: &[String],
    token: &str,
    change: &Change,
) -> Vec<Outcome> {
    let bars = MultiProgress::new();
    std::thread::scope(|scope| {
        let tasks: Vec<_> = hosts
            .iter()
            .map(|host| {
                let bars = &bars;
                scope.spawn(move || {
                    let call = Call { client, bars, host: host.trim_end_matches('/'), token };
                    match change {
                        Change::Push { sends, query } => sends
                            .iter()
                            .map(|(id, send)| match send {
                                Send::Upload { bytes, signature } => {
                                    call.upload(id, bytes, signature.as_deref(), query)
                                }
                                Send::Pull { reference } => call.pull(id, reference, query),
                            })
                            .collect::<Vec<_>>(),
                        Change::Act { verb, components } => {
                            components.iter().map(|id| call.act(id, verb)).collect()
                        }
                    }
                })
            })
            .collect();
        tasks.into_iter().flat_map(|t| t.join().expect("a deploy thread panicked")).collect()
    })
}

/// One host's calls.
struct Call<'a> {
    client: &'a reqwest::blocking::Client,
    bars: &'a MultiProgress,
    host: &'a str,
    token: &'a str,
}

impl Call<'_> {
    /// Uploads one component: a bar for the bytes, then a spinner while the host composes,
    /// compiles and checks it.
    fn upload(&self, id: &str, bytes: &[u8], signature: Option<&str>, query: &str) -> Outcome {
        let started = Instant::now();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        let bar = self.bars.add(ProgressBar::new(bytes.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("{prefix:30} {bar:30} {bytes:>10}/{total_bytes:10} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{id} → {}", self.host));
        bar.set_message("uploading");
        let reader = Upload { data: bytes.to_vec(), at: 0, bar: bar.clone() };
        let url = format!("{}/admin/v1/components/{id}?sha256={sha}{query}", self.host);
        let mut request = self.client.put(url).bearer_auth(self.token);
        if let Some(signature) = signature {
            request = request.header(crate::rollout::SIGNATURE_HEADER, signature);
        }
        let response = request.body(reqwest::blocking::Body::sized(reader, bytes.len() as u64)).send();
        let result =
            answer(response).map_err(|e| self.diagnose().unwrap_or(e)).map(|body| serving(&body, ""));
        bar.finish_with_message(match &result {
            Ok(text) => text.clone(),
            Err(e) => format!("FAILED: {e}"),
        });
        self.outcome(id, result, started)
    }

    /// Asks the host to pull one component from the registry (by digest) and install it.
    fn pull(&self, id: &str, reference: &str, query: &str) -> Outcome {
        let started = Instant::now();
        let spinner =
            self.spinner(format!("{id} → {}: pulling, validating and compiling on the host", self.host));
        let url = format!("{}/admin/v1/components/{id}/pull?{}", self.host, query.trim_start_matches('&'));
        let body = json!({"reference": reference, "component": id});
        let response = self.client.post(url).bearer_auth(self.token).json(&body).send();
        let result = answer(response).map(|body| {
            let pulled = body["pulled_bytes"].as_f64().unwrap_or(0.0) / 1e6;
            serving(&body, &format!(" (pulled {pulled:.1} MB)"))
        });
        spinner.finish_and_clear();
        self.outcome(id, result, started)
    }

    /// Promote, abort or rollback of one component.
    fn act(&self, id: &str, verb: &str) -> Outcome {
        let started = Instant::now();
        let spinner = self.spinner(format!("{verb} {id} on {}", self.host));
        let url = format!("{}/admin/v1/components/{id}/{verb}", self.host);
        let response = self.client.post(url).bearer_auth(self.token).send();
        let result = answer(response).map(|body| format!("serving {}", short(&body["version"])));
        spinner.finish_and_clear();
        self.outcome(id, result, started)
    }

    fn spinner(&self, message: String) -> ProgressBar {
        let spinner = self.bars.add(ProgressBar::new_spinner());
        spinner.set_message(message);
        spinner.enable_steady_tick(Duration::from_millis(100));
        spinner
    }

    fn outcome(&self, id: &str, result: Result<String, DeployError>, started: Instant) -> Outcome {
        Outcome {
            host: self.host.to_string(),
            component: id.to_string(),
            result,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Why the host cannot be reached, told by a small call: a failed upload reports only that
    /// its body could not be sent, not the TLS or connection failure behind it.
    fn diagnose(&self) -> Option<DeployError> {
        let url = format!("{}/admin/v1/app", self.host);
        match self.client.get(url).bearer_auth(self.token).send() {
            Err(e) => Some(DeployError::Unreachable(with_causes(&e))),
            Ok(_) => None,
        }
    }
}

/// What a host serves after a deploy or pull answered `body`.
fn serving(body: &Value, pulled: &str) -> String {
    if body["canary"].is_string() {
        let percent = body["percent"].as_f64().unwrap_or(f64::NAN);
        format!("canary {} at {percent}%{pulled}", short(&body["canary"]))
    } else if body["unchanged"] == true {
        format!("unchanged {}{pulled}", short(&body["version"]))
    } else {
        format!("serving {} in {} ms{pulled}", short(&body["version"]), body["total_ms"])
    }
}

/// A version hash cut to the 12 hex digits people read.
fn short(version: &Value) -> String {
    version.as_str().unwrap_or("?").chars().take(12).collect()
}

/// The JSON of a 2xx, or the host's error.
fn answer(response: reqwest::Result<reqwest::blocking::Response>) -> Result<Value, DeployError> {
    let response = response.map_err(|e| DeployError::Unreachable(with_causes(&e)))?;
    let status = response.status();
    let body: Value = response.json().map_err(|e| DeployError::NotJson { status, why: e.to_string() })?;
    if status.is_success() {
        return Ok(body);
    }
    Err(DeployError::Refused {
        status,
        error_type: body["error_type"].as_str().unwrap_or("?").to_string(),
        error: body["error"].as_str().unwrap_or("").to_string(),
    })
}

/// Prints one line per host and component (seconds taken and outcome); fails, counting them, when
/// any failed.
pub fn print_summary(verb: &str, outcomes: &[Outcome]) -> Result<()> {
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
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    ensure!(failed == 0, "{failed} of {} {verb}es failed", outcomes.len());
    Ok(())
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
