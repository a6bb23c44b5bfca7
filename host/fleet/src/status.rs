//! `edgeinfer fleet status`: every host's components (stable and canary versions, traffic
//! share), health and request rate, read from the hosts concurrently.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::admin::{Body, Hosts};
use crate::fleet::Fleet;
use crate::metrics::by_version;

/// One row: a component on a host (or the host alone when it cannot be read).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub host: String,
    pub labels: String,
    /// `ready`, `not ready` or why the host cannot be reached.
    pub health: String,
    pub component: Option<String>,
    pub stable: Option<String>,
    pub canary: Option<String>,
    /// The canary's share (or its shadow share), in percent.
    pub canary_percent: Option<f64>,
    /// Answers per second of this component over the sampling interval.
    pub requests_per_second: Option<f64>,
}

/// Reads every host of `fleet` at once; request rates from two scrapes `interval` apart.
pub fn status(fleet: &Fleet, hosts: &Hosts, interval: Duration) -> Vec<Row> {
    std::thread::scope(|scope| {
        let tasks: Vec<_> = fleet
            .hosts
            .iter()
            .map(|host| {
                scope.spawn(move || {
                    let labels =
                        host.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                    let admin = host.admin.trim_end_matches('/');
                    let base = host.metrics.trim_end_matches('/');
                    let ready = hosts.client.get(format!("{base}/ready")).send();
                    let health = match &ready {
                        Ok(r) if r.status().is_success() => "ready".to_string(),
                        Ok(r) => format!("not ready ({})", r.status().as_u16()),
                        Err(_) => "unreachable".to_string(),
                    };
                    let app =
                        hosts.call(reqwest::Method::GET, &format!("{admin}/admin/v1/app"), Body::Empty, &[]);
                    let first = (Instant::now(), hosts.metrics(base).ok());
                    std::thread::sleep(interval);
                    let second = (Instant::now(), hosts.metrics(base).ok());
                    let components = match app {
                        Ok(app) => app["components"].as_array().cloned().unwrap_or_default(),
                        Err(e) => {
                            let health = if health == "ready" { format!("admin API {e}") } else { health };
                            return vec![Row {
                                host: admin.to_string(),
                                labels,
                                health,
                                component: None,
                                stable: None,
                                canary: None,
                                canary_percent: None,
                                requests_per_second: None,
                            }];
                        }
                    };
                    components
                        .iter()
                        .map(|c: &Value| {
                            let id = c["id"].as_str().unwrap_or_default();
                            let rate = match (&first.1, &second.1) {
                                (Some(a), Some(b)) => {
                                    let total = |text: &str| -> f64 {
                                        by_version(text, id)
                                            .map(|v| v.values().map(|s| s.requests).sum())
                                            .unwrap_or(0.0)
                                    };
                                    let seconds = second.0.duration_since(first.0).as_secs_f64().max(1e-3);
                                    Some(((total(b) - total(a)) / seconds).max(0.0))
                                }
                                _ => None,
                            };
                            Row {
                                host: admin.to_string(),
                                labels: labels.clone(),
                                health: health.clone(),
                                component: Some(id.to_string()),
                                stable: c["version"].as_str().map(|v| v.chars().take(12).collect()),
                                canary: c["canary"]["version"].as_str().map(|v| v.chars().take(12).collect()),
                                canary_percent: c["canary"]["percent"].as_f64(),
                                requests_per_second: rate,
                            }
                        })
                        .collect()
                })
            })
            .collect();
        tasks.into_iter().flat_map(|t| t.join().expect("a status thread panicked")).collect()
    })
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    let host_w = rows.iter().map(|r| r.host.len()).max().unwrap_or(4).max(4);
    let labels_w = rows.iter().map(|r| r.labels.len()).max().unwrap_or(6).max(6);
    let component_w =
        rows.iter().map(|r| r.component.as_deref().map_or(1, str::len)).max().unwrap_or(9).max(9);
    let mut out = format!(
        "{:host_w$}  {:labels_w$}  {:12}  {:component_w$}  {:12}  {:20}  {:>8}\n",
        "host", "labels", "health", "component", "stable", "canary", "req/s"
    );
    for r in rows {
        let canary = match (&r.canary, r.canary_percent) {
            (Some(v), Some(p)) => format!("{v} at {p}%"),
            _ => "-".to_string(),
        };
        out += &format!(
            "{:host_w$}  {:labels_w$}  {:12}  {:component_w$}  {:12}  {:20}  {:>8}\n",
            r.host,
            r.labels,
            r.health,
            r.component.as_deref().unwrap_or("-"),
            r.stable.as_deref().unwrap_or("-"),
            canary,
            r.requests_per_second.map_or("-".to_string(), |r| format!("{r:.1}")),
        );
    }
    out
}
