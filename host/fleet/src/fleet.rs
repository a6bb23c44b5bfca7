//! The fleet file (TOML): the hosts, how to reach them, and the rollout policy.
//!
//! ```toml
//! token_file = "admin-token"              # relative to this file; else $EDGEINFER_ADMIN_TOKEN
//!
//! [[host]]
//! admin = "https://10.0.0.7:3001"         # its admin API
//! metrics = "https://10.0.0.7:3000"       # its public listener (/metrics, /ready)
//! labels = { site = "lyon" }
//!
//! [policy]
//! max_unavailable = 1                     # hosts that may be skipped (unreachable) before failing
//! call_timeout = "120s"                   # a slower answer is a failed try
//! [[policy.step]]
//! hosts = 1                               # a count, or "10%" of the fleet
//! weight = 5                              # canary share on those hosts; 100 promotes
//! bake = "60s"
//! [policy.judge]
//! min_requests = 100
//! max_error_rate_increase = 0.01          # 1 point above the stable version's
//! max_p99_ratio = 1.2
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A parsed, checked fleet file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// File with the admin token (relative to the fleet file); else `$EDGEINFER_ADMIN_TOKEN`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(rename = "host", default)]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub policy: Policy,
}

/// One edge host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Its admin API's base URL.
    pub admin: String,
    /// Its public listener's base URL (`/metrics`, `/ready`).
    pub metrics: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How a version goes out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Steps in order; the last must put the version on every host at weight 100.
    #[serde(rename = "step", default = "default_steps")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub judge: Judge,
    /// Hosts that may be unreachable (skipped, reported) before the rollout fails.
    #[serde(default)]
    pub max_unavailable: usize,
    /// Tries of each call to a host before it counts as unreachable.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// A call a host has not answered in this long has failed (an upload includes its compile).
    #[serde(with = "humantime_serde", default = "default_call_timeout")]
    pub call_timeout: Duration,
}

fn default_call_timeout() -> Duration {
    Duration::from_secs(120)
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            steps: default_steps(),
            judge: Judge::default(),
            max_unavailable: 0,
            attempts: default_attempts(),
            call_timeout: default_call_timeout(),
        }
    }
}

fn default_attempts() -> u32 {
    4
}

/// One host on a 5% canary, then 10% of the hosts at 20%, then every host.
fn default_steps() -> Vec<Step> {
    let step =
        |hosts: HostCount, weight: f64, bake: u64| Step { hosts, weight, bake: Duration::from_secs(bake) };
    vec![
        step(HostCount::Count(1), 5.0, 300),
        step(HostCount::Percent(10.0), 20.0, 600),
        step(HostCount::Percent(100.0), 100.0, 0),
    ]
}

/// One step of a rollout.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// How many hosts carry the new version in this step (counting those of earlier steps).
    pub hosts: HostCount,
    /// Its share of their traffic, 0 to 100; 100 makes it their stable version.
    pub weight: f64,
    /// How long the step runs before it is judged.
    #[serde(with = "humantime_serde", default)]
    pub bake: Duration,
}

/// A number of hosts, or a share of the fleet (rounded up, at least one).
#[derive(Debug, Clone, PartialEq)]
pub enum HostCount {
    Count(usize),
    Percent(f64),
}

impl<'de> Deserialize<'de> for HostCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<HostCount, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => Ok(HostCount::Count(n)),
            Raw::Text(text) => text
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .filter(|p| (0.0..=100.0).contains(p))
                .map(HostCount::Percent)
                .ok_or_else(|| serde::de::Error::custom(format!("hosts = {text:?}: give a count or \"P%\""))),
        }
    }
}

impl HostCount {
    /// How many of `fleet` hosts.
    pub fn of(&self, fleet: usize) -> usize {
        match self {
            HostCount::Count(n) => (*n).min(fleet),
            HostCount::Percent(p) => ((p / 100.0 * fleet as f64).ceil() as usize).clamp(1, fleet),
        }
    }
}

/// When a canary is worse than the stable version.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Judge {
    /// Requests the canary must have answered over a step before it is judged.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// Most its error rate (5xx answers / answers) may exceed the stable version's, as a fraction.
    #[serde(default = "default_error_increase")]
    pub max_error_rate_increase: f64,
    /// Most its p99 latency may be, as a multiple of the stable version's.
    #[serde(default = "default_p99_ratio")]
    pub max_p99_ratio: f64,
    /// p99 differences below this never fail a step (latency buckets are coarse).
    #[serde(with = "humantime_serde", default = "default_p99_slack")]
    pub p99_slack: Duration,
    /// A step waits up to this multiple of its bake time for `min_requests`; then it fails as
    /// inconclusive.
    #[serde(default = "default_max_bake_factor")]
    pub max_bake_factor: f64,
}

impl Default for Judge {
    fn default() -> Judge {
        Judge {
            min_requests: default_min_requests(),
            max_error_rate_increase: default_error_increase(),
            max_p99_ratio: default_p99_ratio(),
            p99_slack: default_p99_slack(),
            max_bake_factor: default_max_bake_factor(),
        }
    }
}

fn default_min_requests() -> u64 {
    100
}
fn default_error_increase() -> f64 {
    0.01
}
fn default_p99_ratio() -> f64 {
    1.2
}
fn default_p99_slack() -> Duration {
    Duration::from_millis(5)
}
fn default_max_bake_factor() -> f64 {
    3.0
}

impl Fleet {
    /// Reads and checks a fleet file.
    pub fn load(path: &Path) -> Result<Fleet> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the fleet file {}", path.display()))?;
        let mut fleet = Fleet::parse(&text).with_context(|| format!("the fleet file {}", path.display()))?;
        if let Some(file) = &fleet.token_file {
            fleet.token_file = Some(path.parent().unwrap_or(Path::new(".")).join(file));
        }
        Ok(fleet)
    }

    /// Parses and checks a fleet file's text.
    pub fn parse(text: &str) -> Result<Fleet> {
        let fleet: Fleet = toml::from_str(text)?;
        if fleet.hosts.is_empty() {
            bail!("it names no [[host]]");
        }
        let mut seen = std::collections::BTreeSet::new();
        for host in &fleet.hosts {
            for url in [&host.admin, &host.metrics] {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    bail!("{url:?} is not an http:// or https:// URL");
                }
            }
            if !seen.insert(host.admin.trim_end_matches('/')) {
                bail!("host {} is listed twice", host.admin);
            }
        }
        let steps = &fleet.policy.steps;
        let Some(last) = steps.last() else { bail!("[policy] has no step") };
        if last.weight != 100.0 || last.hosts.of(fleet.hosts.len()) != fleet.hosts.len() {
            bail!(
                "the last step must put the version on every host at weight 100 (hosts = \"100%\", weight = 100)"
            );
        }
        for (i, step) in steps.iter().enumerate() {
            if !(0.0..=100.0).contains(&step.weight) || step.weight == 0.0 {
                bail!("step {}: weight {} is not in (0, 100]", i + 1, step.weight);
            }
            if step.weight < 100.0 && step.bake.is_zero() {
                bail!("step {}: a canary step needs a bake time (bake = \"5m\")", i + 1);
            }
            if step.weight == 100.0 && i + 1 != steps.len() {
                bail!("step {}: weight 100 promotes; only the last step may", i + 1);
            }
            if step.hosts.of(fleet.hosts.len()) == 0 {
                bail!("step {}: no host", i + 1);
            }
        }
        if fleet.policy.attempts == 0 {
            bail!("[policy] attempts must be at least 1");
        }
        Ok(fleet)
    }

    /// The admin token: `token_file`'s contents, else `$EDGEINFER_ADMIN_TOKEN`.
    pub fn token(&self) -> Result<String> {
        match &self.token_file {
            Some(path) => Ok(std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?
                .trim()
                .to_string()),
            None => std::env::var("EDGEINFER_ADMIN_TOKEN")
                .context("no admin token: set token_file in the fleet file or $EDGEINFER_ADMIN_TOKEN"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_HOSTS: &str = r#"
        [[host]]
        admin = "http://127.0.0.1:3001"
        metrics = "http://127.0.0.1:3000"
        [[host]]
        admin = "http://127.0.0.1:3011"
        metrics = "http://127.0.0.1:3010"
        labels = { site = "b" }
    "#;

    #[test]
    fn a_fleet_file_reads_with_its_policy_and_defaults() {
        let text = format!(
            "{TWO_HOSTS}\n[policy]\nmax_unavailable = 1\n[[policy.step]]\nhosts = 1\nweight = 5\nbake = \"30s\"\n[[policy.step]]\nhosts = \"100%\"\nweight = 100\n[policy.judge]\nmin_requests = 20\n"
        );
        let fleet = Fleet::parse(&text).unwrap();
        assert_eq!(fleet.hosts.len(), 2);
        assert_eq!(fleet.hosts[1].labels["site"], "b");
        assert_eq!(fleet.policy.steps[0].bake, Duration::from_secs(30));
        assert_eq!(fleet.policy.steps[1].hosts, HostCount::Percent(100.0));
        assert_eq!(fleet.policy.judge.min_requests, 20);
        assert_eq!(fleet.policy.judge.max_p99_ratio, 1.2);
        let defaults = Fleet::parse(TWO_HOSTS).unwrap();
        assert_eq!(defaults.policy.steps.len(), 3);
    }

    #[test]
    fn shares_of_a_fleet_round_up_to_at_least_one_host() {
        assert_eq!(HostCount::Percent(10.0).of(20), 2);
        assert_eq!(HostCount::Percent(10.0).of(3), 1);
        assert_eq!(HostCount::Percent(100.0).of(7), 7);
        assert_eq!(HostCount::Count(5).of(3), 3);
    }

    #[test]
    fn bad_fleet_files_say_what_is_wrong() {
        let steps = |s: &str| format!("{TWO_HOSTS}\n{s}");
        for (text, says) in [
            ("".to_string(), "no [[host]]"),
            (steps("[[policy.step]]\nhosts = 1\nweight = 5\nbake = \"1s\""), "last step must put"),
            (
                steps(
                    "[[policy.step]]\nhosts = 1\nweight = 5\n[[policy.step]]\nhosts = \"100%\"\nweight = 100",
                ),
                "needs a bake time",
            ),
            (
                steps(
                    "[[policy.step]]\nhosts = \"100%\"\nweight = 100\n[[policy.step]]\nhosts = \"100%\"\nweight = 100",
                ),
                "only the last step",
            ),
            (steps("[[policy.step]]\nhosts = \"ten\"\nweight = 100"), "give a count"),
            (steps("[policy]\nsteps = 3"), "unknown field"),
            (TWO_HOSTS.replace("3011", "3001").replace("3010", "3000"), "listed twice"),
        ] {
            let error = format!("{:#}", Fleet::parse(&text).unwrap_err());
            assert!(error.contains(says), "{says}: {error}");
        }
    }
}
