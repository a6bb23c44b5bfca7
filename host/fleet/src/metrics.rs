//! What a host's `/metrics` says of each version of a component: answers, server errors and the
//! latency histogram (`edgeinfer_requests_total`, `edgeinfer_request_duration_seconds`, labelled
//! by the 12 hex digits of the version). Judgements use the difference of two scrapes, so a
//! step is judged on what happened during it, not since the host started.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use prometheus_parse::{Scrape, Value};

const REQUESTS: &str = "edgeinfer_requests_total";
const DURATION: &str = "edgeinfer_request_duration_seconds";

/// One version's counts, from one scrape (or a difference, or a sum over hosts).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VersionStats {
    /// Answers.
    pub requests: f64,
    /// Answers with a 5xx status.
    pub errors: f64,
    /// Cumulative latency buckets: (upper bound in seconds, answers at or under it).
    pub buckets: Vec<(f64, f64)>,
}

impl VersionStats {
    /// What happened between `before` and `self` (counters only grow; a restarted host's smaller
    /// counters count from zero).
    pub fn since(&self, before: &VersionStats) -> VersionStats {
        let restarted = self.requests < before.requests;
        let minus = |now: f64, then: f64| if restarted { now } else { (now - then).max(0.0) };
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, count)| {
                let then = before.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
                (le, minus(count, then))
            })
            .collect();
        VersionStats {
            requests: minus(self.requests, before.requests),
            errors: minus(self.errors, before.errors),
            buckets,
        }
    }

    /// Adds another host's counts.
    pub fn add(&mut self, other: &VersionStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        for &(le, count) in &other.buckets {
            match self.buckets.iter_mut().find(|(b, _)| *b == le) {
                Some((_, mine)) => *mine += count,
                None => self.buckets.push((le, count)),
            }
        }
        self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Share of answers that were server errors.
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0.0 { 0.0 } else { self.errors / self.requests }
    }

    /// The `q` quantile of latency in seconds, interpolated within its bucket as Prometheus's
    /// `histogram_quantile` does; `None` without answers.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(previous.0);
                }
                let within = count - previous.1;
                let fraction = if within > 0.0 { (rank - previous.1) / within } else { 1.0 };
                return Some(previous.0 + (le - previous.0) * fraction);
            }
            previous = (le, count);
        }
        Some(previous.0)
    }
}

/// Per version (12 hex digits) of `component`, from a `/metrics` text.
pub fn by_version(text: &str, component: &str) -> Result<BTreeMap<String, VersionStats>> {
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).context("not Prometheus text")?;
    let mut versions: BTreeMap<String, VersionStats> = BTreeMap::new();
    for sample in scrape.samples {
        if sample.labels.get("component") != Some(component) {
            continue;
        }
        let Some(version) = sample.labels.get("version") else { continue };
        let stats = versions.entry(version.to_string()).or_default();
        match (sample.metric.as_str(), &sample.value) {
            (REQUESTS, Value::Counter(n) | Value::Untyped(n)) => {
                stats.requests += n;
                if sample.labels.get("status").is_some_and(|s| s.starts_with('5')) {
                    stats.errors += n;
                }
            }
            (DURATION, Value::Histogram(buckets)) => {
                // One histogram per route: summed.
                let mut one = VersionStats {
                    buckets: buckets.iter().map(|b| (b.less_than, b.count)).collect(),
                    ..VersionStats::default()
                };
                one.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let requests = std::mem::take(&mut stats.requests);
                let errors = std::mem::take(&mut stats.errors);
                stats.add(&one);
                stats.requests = requests;
                stats.errors = errors;
            }
            _ => {}
        }
    }
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# TYPE edgeinfer_requests_total counter
edgeinfer_requests_total{route="/a",component="c",version="aaaaaaaaaaaa",status="200"} 90
edgeinfer_requests_total{route="/a",component="c",version="aaaaaaaaaaaa",status="500"} 10
edgeinfer_requests_total{route="/a",component="c",version="bbbbbbbbbbbb",status="200"} 5
edgeinfer_requests_total{route="/a",component="other",version="aaaaaaaaaaaa",status="200"} 1000
# TYPE edgeinfer_request_duration_seconds histogram
edgeinfer_request_duration_seconds_bucket{route="/a",component="c",version="aaaaaaaaaaaa",le="0.01"} 50
edgeinfer_request_duration_seconds_bucket{route="/a",component="c",version="aaaaaaaaaaaa",le="0.1"} 99
edgeinfer_request_duration_seconds_bucket{route="/a",component="c",version="aaaaaaaaaaaa",le="+Inf"} 100
edgeinfer_request_duration_seconds_sum{route="/a",component="c",version="aaaaaaaaaaaa"} 2
edgeinfer_request_duration_seconds_count{route="/a",component="c",version="aaaaaaaaaaaa"} 100
"#;

    #[test]
    fn a_scrape_gives_each_versions_answers_errors_and_latency() {
        let versions = by_version(SCRAPE, "c").unwrap();
        let a = &versions["aaaaaaaaaaaa"];
        assert_eq!((a.requests, a.errors), (100.0, 10.0));
        assert_eq!(a.error_rate(), 0.1);
        assert_eq!(a.buckets, vec![(0.01, 50.0), (0.1, 99.0), (f64::INFINITY, 100.0)]);
        // The 50th answer is the last at or under 10 ms; the 99th, at 100 ms.
        assert!((a.quantile(0.5).unwrap() - 0.01).abs() < 1e-9);
        assert!((a.quantile(0.99).unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(versions["bbbbbbbbbbbb"].requests, 5.0);
        assert!(!versions.contains_key("other"));
    }

    #[test]
    fn differences_count_what_happened_between_two_scrapes() {
        let before = VersionStats {
            requests: 100.0,
            errors: 10.0,
            buckets: vec![(0.01, 50.0), (f64::INFINITY, 100.0)],
        };
        let after = VersionStats {
            requests: 150.0,
            errors: 11.0,
            buckets: vec![(0.01, 60.0), (f64::INFINITY, 150.0)],
        };
        let during = after.since(&before);
        assert_eq!((during.requests, during.errors), (50.0, 1.0));
        assert_eq!(during.buckets, vec![(0.01, 10.0), (f64::INFINITY, 50.0)]);
        // A host that restarted counts from zero.
        let restarted = VersionStats { requests: 7.0, errors: 0.0, buckets: vec![(f64::INFINITY, 7.0)] };
        assert_eq!(restarted.since(&before).requests, 7.0);
        let mut sum = during.clone();
        sum.add(&during);
        assert_eq!(sum.requests, 100.0);
        assert_eq!(sum.buckets, vec![(0.01, 20.0), (f64::INFINITY, 100.0)]);
    }
}
