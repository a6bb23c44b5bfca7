//! Calls to the hosts: their admin APIs and their `/metrics`, retried with bounded back-off when
//! a host cannot be reached or answers 5xx; a 4xx is the host's answer and is not retried.

use std::time::Duration;

use serde_json::Value;

/// How a call to a host failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Not reached (or 5xx) after every attempt: the host counts as unavailable.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The host answered and refused (4xx): the version or the request is at fault.
    #[error("refused: {0}")]
    Refused(String),
}

/// What a call sends.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Json(&'a Value),
}

/// The admin APIs and metrics of a fleet, with one token.
pub struct Hosts {
    pub client: reqwest::blocking::Client,
    pub token: String,
    /// Tries per call.
    pub attempts: u32,
    /// Pause before the second try; doubled for each further one.
    pub backoff: Duration,
}

impl Hosts {
    /// Calls to `fleet`'s hosts by its policy (timeout, tries), over `client`.
    pub fn of_fleet(fleet: &crate::fleet::Fleet, client: reqwest::blocking::Client) -> anyhow::Result<Hosts> {
        let (attempts, backoff) = (fleet.policy.attempts, Duration::from_millis(250));
        Ok(Hosts { client, token: fleet.token()?, attempts, backoff })
    }

    /// One quick try per call (a status view), so that a host that is down costs seconds.
    pub fn quick(fleet: &crate::fleet::Fleet, client: reqwest::blocking::Client) -> anyhow::Result<Hosts> {
        Ok(Hosts { client, token: fleet.token()?, attempts: 1, backoff: Duration::ZERO })
    }

    /// Runs `action` up to `attempts` times while `unreachable` says its error is worth another
    /// try, pausing `backoff`, then twice as long each time.
    pub fn with_backoff<T, E>(
        &self,
        unreachable: impl Fn(&E) -> bool,
        mut action: impl FnMut() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut pause = self.backoff;
        let mut tries = 1;
        loop {
            match action() {
                Err(e) if tries < self.attempts && unreachable(&e) => {
                    std::thread::sleep(pause);
                    pause *= 2;
                    tries += 1;
                }
                done => return done,
            }
        }
    }

    /// `METHOD url` with the admin token (and `headers`), tried up to `attempts` times while the
    /// host cannot be reached or answers 5xx: for reads, and writes that are safe to repeat.
    pub fn call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Body<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Value, CallError> {
        self.with_backoff(is_unreachable, || self.once(method.clone(), url, &body, headers))
    }

    /// One try of `METHOD url`: the JSON of a 2xx answer. A write whose answer was lost may have
    /// happened: the caller reads the host's state before trying again.
    pub fn once(
        &self,
        method: reqwest::Method,
        url: &str,
        body: &Body<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Value, CallError> {
        let mut request = self.client.request(method, url).bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request = match body {
            Body::Empty => request,
            Body::Bytes(bytes) => request.body(bytes.to_vec()),
            Body::Json(value) => request.json(value),
        };
        let response = request.send().map_err(|e| CallError::Unreachable(with_causes(&e)))?;
        let status = response.status();
        let text = response.text().unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| CallError::Refused(format!("{status}: not JSON: {e}")));
        }
        let answer: Value = serde_json::from_str(&text).unwrap_or_default();
        let why = format!(
            "{status} {}: {}",
            answer["error_type"].as_str().unwrap_or("?"),
            answer["error"].as_str().unwrap_or(&text)
        );
        if status.is_client_error() { Err(CallError::Refused(why)) } else { Err(CallError::Unreachable(why)) }
    }

    /// A host's `/metrics` text (open, unless the host guards its own routes with an API key).
    pub fn metrics(&self, base: &str) -> Result<String, CallError> {
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        self.with_backoff(is_unreachable, || match self.client.get(&url).send() {
            Ok(response) if response.status().is_success() => {
                response.text().map_err(|e| CallError::Unreachable(e.to_string()))
            }
            Ok(response) => Err(CallError::Unreachable(response.status().to_string())),
            Err(e) => Err(CallError::Unreachable(with_causes(&e))),
        })
    }

    /// `GET /admin/v1/app`'s entry of `component` on `admin`.
    pub fn component(&self, admin: &str, component: &str) -> Result<Value, CallError> {
        let app = self.call(reqwest::Method::GET, &format!("{admin}/admin/v1/app"), Body::Empty, &[])?;
        app["components"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["id"] == component).cloned())
            .ok_or_else(|| {
                CallError::Refused(format!("the host's app has no routed component {component:?}"))
            })
    }
}

/// Whether a call's failure is worth another try.
pub fn is_unreachable(error: &CallError) -> bool {
    matches!(error, CallError::Unreachable(_))
}

/// An error with the causes it wraps (a refused connection or a TLS failure hides under "error
/// sending request").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = cause.source();
    }
    text
}
