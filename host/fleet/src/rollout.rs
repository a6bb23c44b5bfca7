//! A version of one component going out to a fleet in the policy's steps: a canary on a few
//! hosts, judged against the stable version on those hosts from their own `/metrics` (what
//! changed during the step), then more hosts, then every host. A failed judgement, a refused
//! version or too many unreachable hosts aborts the canaries and rolls back every promoted host
//! on its own. Every action is idempotent (the host's state is read first) and the rollout's
//! state is written to a file after each, so a killed controller resumes (`--resume`) or undoes
//! (`--rollback`) what it started.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admin::{Body, CallError, Hosts, is_unreachable};
use crate::fleet::{Fleet, Step};
use crate::metrics::{VersionStats, by_version};

/// The request header carrying an upload's detached signature.
pub(crate) const SIGNATURE_HEADER: &str = "x-edgeinfer-signature";

/// What goes out.
pub enum Source {
    /// These bytes, uploaded to each host (with their detached signature).
    Upload { bytes: Vec<u8>, signature: Option<String> },
    /// A registry reference by digest each host pulls itself (`component`: its id in the artifact).
    Pull { reference: String, component: String },
}

impl Source {
    /// How the state file names it (a resumed rollout must send the same thing).
    fn describe(&self) -> String {
        match self {
            Source::Upload { bytes, .. } => {
                format!("upload sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes)))
            }
            Source::Pull { reference, component } => format!("pull {reference} ({component})"),
        }
    }
}

/// Where a rollout stands; written to the state file after every action.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutState {
    pub component: String,
    /// What is sent (`upload sha256:...` or `pull REF (ID)`).
    pub source: String,
    /// The step being run (0-based); the number of steps once it succeeded.
    pub step: usize,
    pub phase: Phase,
    /// By admin URL.
    pub hosts: BTreeMap<String, HostState>,
    /// The admin URLs in the fleet file's order, which the steps take hosts in.
    #[serde(default)]
    pub order: Vec<String>,
    pub judgements: Vec<Judgement>,
    /// Why it failed, when it did.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Running,
    Succeeded,
    /// Failed; undoing what it did (a controller stopped here goes on undoing on --resume).
    RollingBack,
    /// Failed; the canaries were aborted and promoted hosts rolled back.
    RolledBack,
    /// Failed, and some host could not be rolled back (named in the table).
    Failed,
}

/// One host in a rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostState {
    /// Its stable version before the rollout touched it.
    #[serde(default)]
    pub stable: Option<String>,
    /// The new version as this host composed it.
    #[serde(default)]
    pub version: Option<String>,
    pub outcome: Outcome,
    /// The last problem with it.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum Outcome {
    #[default]
    Untouched,
    Canary {
        percent: f64,
    },
    Promoted,
    /// Not reachable when it was its turn: skipped (counted against `max_unavailable`).
    Unavailable,
    Aborted,
    RolledBack,
}

/// What one step's judgement saw.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Judgement {
    pub step: usize,
    pub hosts: usize,
    pub seconds: f64,
    pub canary: Seen,
    pub stable: Seen,
    pub passed: bool,
    pub why: String,
}

/// One side of a judgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub requests: f64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

impl Seen {
    fn of(stats: &VersionStats) -> Seen {
        Seen {
            requests: stats.requests,
            error_rate: stats.error_rate(),
            p99_ms: stats.quantile(0.99).map(|s| s * 1e3),
        }
    }
}

/// A rollout of `component` to `fleet`.
pub struct Rollout<'a> {
    pub fleet: &'a Fleet,
    pub component: String,
    pub source: Source,
    pub hosts: Hosts,
    /// The state file.
    pub state_file: PathBuf,
    /// Progress bars (on a terminal).
    pub bars: MultiProgress,
}

impl Rollout<'_> {
    /// Starts the rollout, unless its state file holds one that has not ended cleanly.
    pub fn start(&self) -> Result<RolloutState> {
        refuse_unfinished(&self.state_file)?;
        self.run(None)
    }

    /// Goes on with the rollout in its state file.
    pub fn resume(&self) -> Result<RolloutState> {
        self.run(Some(load(&self.state_file)?))
    }

    /// Undoes the rollout in its state file (`roll_back`).
    pub fn roll_back_saved(&self) -> Result<RolloutState> {
        self.roll_back(load(&self.state_file)?)
    }

    /// Runs the rollout from the start, or from `resumed` (a state file of the same rollout).
    pub fn run(&self, resumed: Option<RolloutState>) -> Result<RolloutState> {
        let mut state = match resumed {
            Some(state) => {
                self.check_same(&state)?;
                match state.phase {
                    Phase::Running => {}
                    Phase::RollingBack => {
                        self.say("resuming the rollback".to_string());
                        return self.undo(state);
                    }
                    ended => bail!("the rollout in {} already ended ({ended:?})", self.state_file.display()),
                }
                self.say(format!("resuming at step {} of {}", state.step + 1, self.fleet.policy.steps.len()));
                state
            }
            None => RolloutState {
                component: self.component.clone(),
                source: self.source.describe(),
                step: 0,
                phase: Phase::Running,
                hosts: self.fleet.hosts.iter().map(|h| (key(&h.admin), HostState::default())).collect(),
                order: self.fleet.hosts.iter().map(|h| key(&h.admin)).collect(),
                judgements: Vec::new(),
                reason: None,
            },
        };
        save(&self.state_file, &state)?;
        let steps = &self.fleet.policy.steps;
        while state.step < steps.len() {
            let step = &steps[state.step];
            if let Err(reason) = self.run_step(&mut state, step) {
                state.reason = Some(format!("step {}: {reason}", state.step + 1));
                self.say(format!("FAILED at step {}: {reason}; rolling back", state.step + 1));
                state.phase = Phase::RollingBack;
                save(&self.state_file, &state)?;
                return self.undo(state);
            }
            state.step += 1;
            save(&self.state_file, &state)?;
        }
        state.phase = Phase::Succeeded;
        save(&self.state_file, &state)?;
        Ok(state)
    }

    /// Aborts the canaries and rolls back the promoted hosts of a rollout (from its state file).
    pub fn roll_back(&self, state: RolloutState) -> Result<RolloutState> {
        self.check_same(&state)?;
        let mut state = state;
        state.reason.get_or_insert_with(|| "rolled back on request".to_string());
        state.phase = Phase::RollingBack;
        save(&self.state_file, &state)?;
        self.undo(state)
    }

    fn check_same(&self, state: &RolloutState) -> Result<()> {
        let order: Vec<String> = self.fleet.hosts.iter().map(|h| key(&h.admin)).collect();
        if state.order != order {
            bail!(
                "the hosts of the fleet file changed since the rollout in {} started: --rollback it with the fleet file it ran with",
                self.state_file.display()
            );
        }
        if state.component != self.component || state.source != self.source.describe() {
            bail!(
                "{} is the rollout of {} ({}), not of {} ({})",
                self.state_file.display(),
                state.component,
                state.source,
                self.component,
                self.source.describe()
            );
        }
        Ok(())
    }

    fn say(&self, line: String) {
        let _ = self.bars.println(format!("edgeinfer: {line}"));
        if self.bars.is_hidden() {
            eprintln!("edgeinfer: {line}");
        }
    }

    /// One step: the version on its hosts (as a canary at its weight, or promoted), then judged.
    fn run_step(&self, state: &mut RolloutState, step: &Step) -> Result<(), StepFailed> {
        let fleet = &self.fleet.hosts;
        let count = step.hosts.of(fleet.len());
        let targets: Vec<String> = state.order.iter().take(count).cloned().collect();
        let known = known_versions(state);
        let what = if step.weight < 100.0 {
            format!("a {}% canary", step.weight)
        } else {
            "the stable version".into()
        };
        self.say(format!("step {}: {what} on {count} of {} hosts", state.step + 1, fleet.len()));
        let shared = Mutex::new(std::mem::take(state));
        let refused: Mutex<Option<StepFailed>> = Mutex::default();
        std::thread::scope(|scope| {
            for admin in &targets {
                let (shared, refused, known) = (&shared, &refused, &known);
                scope.spawn(move || {
                    let before = shared.lock().unwrap().hosts[admin].clone();
                    // A host found unreachable is skipped by the canary steps; the last step
                    // tries it again.
                    if before.outcome == Outcome::Unavailable && step.weight < 100.0 {
                        return;
                    }
                    let result = if step.weight < 100.0 {
                        self.retried(|| self.put_canary(admin, step.weight, before.clone(), known))
                    } else {
                        self.retried(|| self.promote(admin, before.clone(), known))
                    };
                    let mut state = shared.lock().unwrap();
                    match result {
                        Ok(host) => {
                            state.hosts.insert(admin.clone(), host);
                        }
                        Err((host, CallError::Refused(why))) => {
                            state.hosts.insert(admin.clone(), host);
                            refused
                                .lock()
                                .unwrap()
                                .get_or_insert(StepFailed::Refused { host: admin.clone(), why });
                        }
                        Err((mut host, CallError::Unreachable(why))) => {
                            host.outcome = Outcome::Unavailable;
                            host.error = Some(why);
                            state.hosts.insert(admin.clone(), host);
                        }
                    }
                    let _ = save(&self.state_file, &state);
                });
            }
        });
        *state = shared.into_inner().unwrap();
        if let Some(refused) = refused.into_inner().unwrap() {
            return Err(refused);
        }
        let unavailable: Vec<&String> = state
            .hosts
            .iter()
            .filter(|(_, h)| h.outcome == Outcome::Unavailable)
            .map(|(admin, _)| admin)
            .collect();
        if unavailable.len() > self.fleet.policy.max_unavailable {
            return Err(StepFailed::Unavailable {
                hosts: unavailable.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                count: unavailable.len(),
                max: self.fleet.policy.max_unavailable,
            });
        }
        for admin in unavailable {
            self.say(format!(
                "skipping {admin}: unreachable ({})",
                state.hosts[admin].error.as_deref().unwrap_or("?")
            ));
        }
        if step.weight < 100.0 {
            let judged: Vec<String> = targets
                .into_iter()
                .filter(|a| matches!(state.hosts[a].outcome, Outcome::Canary { .. }))
                .collect();
            let judgement = self.judge(state, step, &judged);
            let (passed, why) = (judgement.passed, judgement.why.clone());
            state.judgements.push(judgement);
            let _ = save(&self.state_file, state);
            if !passed {
                return Err(StepFailed::Judged(why));
            }
            self.say(format!("step {} passed: {why}", state.step + 1));
        }
        Ok(())
    }

    /// Sends the version to `admin` (upload or pull), with `query`; its answer.
    fn send(&self, admin: &str, query: &str) -> Result<Value, CallError> {
        let id = &self.component;
        match &self.source {
            Source::Upload { bytes, signature } => {
                let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
                let url = format!("{admin}/admin/v1/components/{id}?sha256={sha}{query}");
                let headers: Vec<(&str, &str)> =
                    signature.iter().map(|s| (SIGNATURE_HEADER, s.as_str())).collect();
                self.hosts.once(reqwest::Method::PUT, &url, &Body::Bytes(bytes), &headers)
            }
            Source::Pull { reference, component } => {
                let url = format!("{admin}/admin/v1/components/{id}/pull?{}", query.trim_start_matches('&'));
                let body = json!({"reference": reference, "component": component});
                self.hosts.once(reqwest::Method::POST, &url, &Body::Json(&body), &[])
            }
        }
    }

    /// Tries `action` up to the policy's attempts while the host cannot be reached, pausing
    /// longer each time; each try reads the host's state first, so a write whose answer was lost
    /// is not repeated.
    fn retried<T>(&self, action: impl Fn() -> Result<T, (T, CallError)>) -> Result<T, (T, CallError)> {
        self.hosts.with_backoff(|(_, e)| is_unreachable(e), action)
    }

    /// `component` on `admin` as it is now; the first look records the host's stable version
    /// from before the rollout.
    fn look(&self, admin: &str, host: &mut HostState, known: &BTreeSet<String>) -> Result<Value, CallError> {
        let now = self.hosts.component(admin, &self.component)?;
        host.stable.get_or_insert_with(|| Self::stable_before(&now, known));
        Ok(now)
    }

    /// The host's stable version before the rollout: the one serving, unless it already is a
    /// version of this rollout (a controller stopped after promoting it), then the one before.
    fn stable_before(now: &Value, known: &BTreeSet<String>) -> String {
        let serving = now["version"].as_str().unwrap_or_default();
        if known.contains(serving) {
            let previous = now["previous"].as_array().and_then(|p| p.last()).and_then(Value::as_str);
            return previous.unwrap_or(serving).to_string();
        }
        serving.to_string()
    }

    /// The version on trial at `percent` on `admin` (a no-op if it already is).
    fn put_canary(
        &self,
        admin: &str,
        percent: f64,
        mut host: HostState,
        known: &BTreeSet<String>,
    ) -> Result<HostState, (HostState, CallError)> {
        let now = self.look(admin, &mut host, known).map_err(|e| (host.clone(), e))?;
        let (serving, canary) = (now["version"].as_str(), now["canary"]["version"].as_str());
        let ours = |v: Option<&str>| is_ours(v, &host, known);
        if ours(canary) && now["canary"]["percent"] == percent {
            host.version = canary.map(str::to_string);
            host.outcome = Outcome::Canary { percent };
            return Ok(host);
        }
        if ours(serving) && serving != host.stable.as_deref() {
            host.version = serving.map(str::to_string);
            host.outcome = Outcome::Promoted;
            return Ok(host);
        }
        let answer = self.send(admin, &format!("&canary={percent}")).map_err(|e| (host.clone(), e))?;
        match answer["canary"].as_str() {
            Some(version) => host.version = Some(version.to_string()),
            // The host already serves it as its stable version.
            None => {
                host.version = answer["version"].as_str().map(str::to_string);
                host.outcome = Outcome::Promoted;
                return Ok(host);
            }
        }
        host.outcome = Outcome::Canary { percent };
        host.error = None;
        Ok(host)
    }

    /// The version as `admin`'s stable version: its canary promoted, or sent (a no-op if it
    /// already is).
    fn promote(
        &self,
        admin: &str,
        mut host: HostState,
        known: &BTreeSet<String>,
    ) -> Result<HostState, (HostState, CallError)> {
        let now = self.look(admin, &mut host, known).map_err(|e| (host.clone(), e))?;
        let (serving, canary) = (now["version"].as_str(), now["canary"]["version"].as_str());
        let ours = |v: Option<&str>| is_ours(v, &host, known);
        if ours(serving) {
            host.version = serving.map(str::to_string);
            host.outcome = Outcome::Promoted;
            host.error = None;
            return Ok(host);
        }
        let answer = if ours(canary) {
            let url = format!("{admin}/admin/v1/components/{}/promote", self.component);
            self.hosts.once(reqwest::Method::POST, &url, &Body::Empty, &[])
        } else {
            self.send(admin, "")
        }
        .map_err(|e| (host.clone(), e))?;
        host.version = answer["version"].as_str().map(str::to_string);
        host.outcome = Outcome::Promoted;
        host.error = None;
        Ok(host)
    }

    /// Judges a step's canaries against the stable versions on the same hosts, from the
    /// difference of their metrics between the start and the end of the bake.
    fn judge(&self, state: &RolloutState, step: &Step, hosts: &[String]) -> Judgement {
        let judge = &self.fleet.policy.judge;
        let metrics_of: BTreeMap<String, String> =
            self.fleet.hosts.iter().map(|h| (key(&h.admin), h.metrics.clone())).collect();
        let scrape = || -> BTreeMap<String, BTreeMap<String, VersionStats>> {
            hosts
                .iter()
                .filter_map(|admin| {
                    let text = self.hosts.metrics(&metrics_of[admin]).ok()?;
                    Some((admin.clone(), by_version(&text, &self.component).ok()?))
                })
                .collect()
        };
        let started = Instant::now();
        let before = scrape();
        let bar = self.bars.add(ProgressBar::new(step.bake.as_secs().max(1)));
        bar.set_style(
            ProgressStyle::with_template("  bake {bar:30} {pos:>4}/{len} s  {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        let longest = step.bake.mul_f64(judge.max_bake_factor.max(1.0));
        let (canary, stable) = loop {
            std::thread::sleep(Duration::from_millis(500).min(step.bake.max(Duration::from_millis(100))));
            let elapsed = started.elapsed();
            bar.set_position(elapsed.as_secs().min(step.bake.as_secs()));
            if elapsed < step.bake {
                continue;
            }
            let after = scrape();
            let (mut canary, mut stable) = (VersionStats::default(), VersionStats::default());
            for (admin, now) in &after {
                let host = &state.hosts[admin];
                // A host whose first scrape failed would count its whole history: left out.
                let Some(then) = before.get(admin) else { continue };
                let then = Some(then);
                let delta = |version: &Option<String>| -> Option<VersionStats> {
                    let short: String = version.as_deref()?.chars().take(12).collect();
                    let now = now.get(&short)?;
                    Some(match then.and_then(|t| t.get(&short)) {
                        Some(then) => now.since(then),
                        None => now.clone(),
                    })
                };
                if let Some(d) = delta(&host.version) {
                    canary.add(&d);
                }
                if let Some(d) = delta(&host.stable) {
                    stable.add(&d);
                }
            }
            bar.set_message(format!("canary {} answers", canary.requests));
            if canary.requests >= judge.min_requests as f64 || elapsed >= longest {
                break (canary, stable);
            }
        };
        bar.finish_and_clear();
        let (c, s) = (Seen::of(&canary), Seen::of(&stable));
        let mut failures = Vec::new();
        if canary.requests < judge.min_requests as f64 {
            failures.push(format!(
                "inconclusive: the canary answered {} requests in {:.0} s, fewer than min_requests = {}",
                canary.requests,
                started.elapsed().as_secs_f64(),
                judge.min_requests
            ));
        }
        if c.error_rate > s.error_rate + judge.max_error_rate_increase {
            failures.push(format!(
                "error rate {:.2}% against the stable version's {:.2}% (at most {:.2} points more)",
                c.error_rate * 100.0,
                s.error_rate * 100.0,
                judge.max_error_rate_increase * 100.0
            ));
        }
        if let (Some(cp), Some(sp)) = (c.p99_ms, s.p99_ms) {
            let slack = judge.p99_slack.as_secs_f64() * 1e3;
            if cp > sp * judge.max_p99_ratio && cp - sp > slack {
                failures.push(format!(
                    "p99 {cp:.1} ms against the stable version's {sp:.1} ms (at most {}x)",
                    judge.max_p99_ratio
                ));
            }
        }
        let summary = format!(
            "canary {} answers, {:.2}% errors, p99 {}; stable {} answers, {:.2}% errors, p99 {}",
            c.requests,
            c.error_rate * 100.0,
            c.p99_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
            s.requests,
            s.error_rate * 100.0,
            s.p99_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
        );
        Judgement {
            step: state.step + 1,
            hosts: hosts.len(),
            seconds: started.elapsed().as_secs_f64(),
            passed: failures.is_empty(),
            why: if failures.is_empty() { summary } else { format!("{} ({summary})", failures.join("; ")) },
            canary: c,
            stable: s,
        }
    }

    /// Aborts every canary of this version and rolls back every host it was promoted on; saved
    /// after each host.
    fn undo(&self, state: RolloutState) -> Result<RolloutState> {
        let known = known_versions(&state);
        let admins: Vec<String> = state.hosts.keys().cloned().collect();
        let shared = Mutex::new(state);
        let clean = Mutex::new(BTreeMap::new());
        std::thread::scope(|scope| {
            for admin in &admins {
                let (shared, clean, known) = (&shared, &clean, &known);
                scope.spawn(move || {
                    let host = shared.lock().unwrap().hosts[admin].clone();
                    let (undone, ok) = match self.retried(|| self.undo_host(admin, host.clone(), known)) {
                        Ok(undone) => (undone, true),
                        Err((mut undone, e)) => {
                            undone.error = Some(format!("cannot roll back: {e}"));
                            (undone, false)
                        }
                    };
                    clean.lock().unwrap().insert(admin.clone(), ok);
                    let mut state = shared.lock().unwrap();
                    state.hosts.insert(admin.clone(), undone);
                    let _ = save(&self.state_file, &state);
                });
            }
        });
        let mut state = shared.into_inner().unwrap();
        let clean = clean.into_inner().unwrap();
        // Hosts never contacted need nothing; every other one must have been checked clean.
        let stuck = state.hosts.iter().any(|(admin, h)| h.stable.is_some() && !clean[admin]);
        state.phase = if stuck { Phase::Failed } else { Phase::RolledBack };
        save(&self.state_file, &state)?;
        Ok(state)
    }

    /// Leaves no version of this rollout on `admin`: its canary aborted, or the stable version
    /// from before rolled back to. Reads the host first: done already is a no-op.
    fn undo_host(
        &self,
        admin: &str,
        mut host: HostState,
        known: &BTreeSet<String>,
    ) -> Result<HostState, (HostState, CallError)> {
        let Some(stable) = host.stable.clone() else { return Ok(host) };
        let now = self.hosts.component(admin, &self.component).map_err(|e| (host.clone(), e))?;
        let ours = |v: Option<&str>| v != Some(stable.as_str()) && is_ours(v, &host, known);
        let call = |verb: &str| {
            let url = format!("{admin}/admin/v1/components/{}/{verb}", self.component);
            self.hosts.once(reqwest::Method::POST, &url, &Body::Empty, &[])
        };
        if ours(now["canary"]["version"].as_str()) {
            call("abort").map_err(|e| (host.clone(), e))?;
            host.outcome = Outcome::Aborted;
        } else if ours(now["version"].as_str()) {
            // Back to the version from before (the one kept for rollback), only if it is that one.
            let previous = now["previous"].as_array().and_then(|p| p.last()).and_then(Value::as_str);
            if previous != Some(stable.as_str()) {
                return Err((
                    host,
                    CallError::Refused(format!("its version before this one is not {stable}: left as it is")),
                ));
            }
            call("rollback").map_err(|e| (host.clone(), e))?;
            host.outcome = Outcome::RolledBack;
        } else {
            host.outcome = match host.outcome {
                Outcome::Promoted => Outcome::RolledBack,
                Outcome::Canary { .. } => Outcome::Aborted,
                other => other,
            };
        }
        host.error = None;
        Ok(host)
    }
}

/// Whether `version` is this rollout's: the one this host answered with, or another host's.
fn is_ours(version: Option<&str>, host: &HostState, known: &BTreeSet<String>) -> bool {
    version.is_some_and(|v| host.version.as_deref() == Some(v) || known.contains(v))
}

/// The versions of this rollout the hosts have answered with.
fn known_versions(state: &RolloutState) -> BTreeSet<String> {
    state.hosts.values().filter_map(|h| h.version.clone()).collect()
}

/// A host's key in the state: its admin URL without a trailing slash.
fn key(admin: &str) -> String {
    admin.trim_end_matches('/').to_string()
}

/// Where a rollout of `component` keeps its state by default: `.rollout-COMPONENT.json` beside
/// the fleet file.
pub fn default_state_file(fleet_file: &Path, component: &str) -> PathBuf {
    fleet_file.parent().unwrap_or(Path::new(".")).join(format!(".rollout-{component}.json"))
}

/// Refuses to start a new rollout over one in `state_file` that has not ended cleanly.
fn refuse_unfinished(state_file: &Path) -> Result<()> {
    if let Ok(previous) = load(state_file)
        && !matches!(previous.phase, Phase::Succeeded | Phase::RolledBack)
    {
        bail!(
            "{} holds a rollout of {} that has not ended cleanly ({:?}): --resume it or --rollback it first",
            state_file.display(),
            previous.component,
            previous.phase
        );
    }
    Ok(())
}

impl RolloutState {
    /// The rollout's end as an exit status: success when it succeeded, or when it was undone on
    /// request (`undoing`); otherwise why not.
    pub fn outcome(&self, undoing: bool) -> Result<()> {
        let reason = self.reason.as_deref().unwrap_or("?");
        match self.phase {
            Phase::Succeeded => Ok(()),
            Phase::RolledBack if undoing => Ok(()),
            Phase::RolledBack => bail!("rolled back: {reason}"),
            Phase::Failed => {
                bail!(
                    "failed, and some hosts could not be rolled back (see the table; --rollback retries): {reason}"
                )
            }
            Phase::Running | Phase::RollingBack => unreachable!("a rollout returns when it ends"),
        }
    }
}

/// The report of an ended rollout: each step's judgement, then the table of hosts.
pub fn report(state: &RolloutState) -> String {
    let mut out = String::new();
    for judgement in &state.judgements {
        out += &format!(
            "step {} ({} hosts, {:.0} s): {} {}\n",
            judgement.step,
            judgement.hosts,
            judgement.seconds,
            if judgement.passed { "passed" } else { "FAILED" },
            judgement.why
        );
    }
    out + &table(state)
}

/// Reads a rollout's state file.
pub fn load(path: &Path) -> Result<RolloutState> {
    let text =
        std::fs::read(path).with_context(|| format!("cannot read the rollout state {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("the rollout state {} is damaged", path.display()))
}

/// Writes the state file whole (temporary file, synced, renamed): a kill leaves the old or the new.
fn save(path: &Path, state: &RolloutState) -> Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().with_context(|| format!("cannot write the rollout state {}", path.display()))
}

/// The final table: host, version, outcome.
pub fn table(state: &RolloutState) -> String {
    let width = state.hosts.keys().map(String::len).max().unwrap_or(4).max(4);
    let mut out = format!("{:width$}  {:12}  {:12}  outcome\n", "host", "stable", "new");
    for (admin, host) in &state.hosts {
        let short =
            |v: &Option<String>| v.as_deref().map_or("-".to_string(), |v| v.chars().take(12).collect());
        let outcome = match &host.outcome {
            Outcome::Untouched => "untouched".to_string(),
            Outcome::Canary { percent } => format!("canary at {percent}%"),
            Outcome::Promoted => "promoted".to_string(),
            Outcome::Unavailable => "unavailable (skipped)".to_string(),
            Outcome::Aborted => "canary aborted".to_string(),
            Outcome::RolledBack => "rolled back".to_string(),
        };
        let error = host.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
        out += &format!(
            "{admin:width$}  {:12}  {:12}  {outcome}{error}\n",
            short(&host.stable),
            short(&host.version)
        );
    }
    out
}
/// Why a step of a rollout failed (and the rollout rolls back).
#[derive(Debug, thiserror::Error)]
enum StepFailed {
    /// A host answered 4xx to the version: the version or the request is at fault.
    #[error("{host} refused the version: {why}")]
    Refused { host: String, why: String },
    /// More hosts could not be reached than the policy allows.
    #[error("{count} hosts unreachable ({hosts}), more than max_unavailable = {max}")]
    Unavailable { count: usize, hosts: String, max: usize },
    /// The canary's metrics were worse than the stable version's, or too few to judge.
    #[error("{0}")]
    Judged(String),
}
