//! Outbound HTTP from components, limited to the manifest's `allowed_outbound_hosts` (Spin's
//! syntax: `scheme://host[:port]`, `*` for any scheme, host label or port). Nothing listed means
//! no outbound HTTP at all.

use std::sync::Arc;

use anyhow::{Result, bail};
use http::Request;
use tracing::Instrument;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use crate::trace::Context as TraceContext;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// `None` = any scheme.
    scheme: Option<String>,
    /// Lowercase; a leading `*.` allows subdomains, `*` allows any host.
    host: String,
    /// `None` = the scheme's default port; `Some(None)` = any port.
    port: Option<Option<u16>>,
}

impl AllowedHost {
    /// Parses one `allowed_outbound_hosts` entry.
    pub fn parse(entry: &str) -> Result<AllowedHost> {
        let Some((scheme, rest)) = entry.split_once("://") else {
            bail!("allowed_outbound_hosts entry {entry:?} needs a scheme, e.g. https://example.com");
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') {
            bail!("allowed_outbound_hosts entry {entry:?} must be scheme://host[:port] with no path");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, "*")) => (host, Some(None)),
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host, Some(Some(port))),
                Err(_) => bail!("allowed_outbound_hosts entry {entry:?} has an invalid port"),
            },
            None => (rest, None),
        };
        let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
        Ok(AllowedHost { scheme, host: host.to_ascii_lowercase(), port })
    }

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = self.scheme.as_deref().is_none_or(|s| s == scheme);
        let host_ok = match self.host.strip_prefix("*.") {
            _ if self.host == "*" => true,
            Some(domain) => host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.')),
            None => self.host == host,
        };
        let port_ok = match self.port {
            Some(None) => true,
            Some(Some(p)) => p == port,
            None => Some(port) == default_port(scheme),
        };
        scheme_ok && host_ok && port_ok
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// wasi:http hooks of one component: the default client, behind the allow-list, carrying the
/// trace of the request it is made for.
pub struct OutboundPolicy {
    allowed: Arc<Vec<AllowedHost>>,
    sender_trace: SenderTrace,
}

/// The trace of the request an outbound call is made for, when the instance can tell (its only
/// running request).
pub type SenderTrace = Arc<dyn Fn() -> Option<TraceContext> + Send + Sync>;

impl OutboundPolicy {
    /// The hooks of an instance; `sender_trace` names the trace outbound calls join.
    pub fn new(allowed: Arc<Vec<AllowedHost>>, sender_trace: SenderTrace) -> OutboundPolicy {
        OutboundPolicy { allowed, sender_trace }
    }

    /// Whether a request to this URI may leave the host.
    pub fn permits(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else { return false };
        let Some(port) = uri.port_u16().or_else(|| default_port(&scheme)) else { return false };
        self.allowed.iter().any(|a| a.allows(&scheme, &host, port))
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>),
                    Error,
                >,
            > + Send,
    > {
        if !self.permits(request.uri()) {
            tracing::warn!(uri = %request.uri(), "outbound request denied: not in allowed_outbound_hosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        // An `outbound` span under the request it is made for, whose context travels with it
        // (W3C `traceparent`), unless the component sets its own. The hooks are not told which
        // guest task sends: the instance's only running request, when it has one.
        let mut request = request;
        let traced = tracing::span_enabled!(tracing::Level::INFO);
        let span = match traced.then(|| (self.sender_trace)()).flatten() {
            Some(parent) if !request.headers().contains_key("traceparent") => {
                let span = tracing::info_span!(
                    "outbound",
                    otel.kind = "client",
                    http.request.method = %request.method(),
                    url.full = %request.uri()
                );
                crate::trace::set_parent(&span, parent);
                if let Some(cx) = crate::trace::context_of(&span) {
                    crate::trace::inject(&cx, request.headers_mut());
                }
                span
            }
            _ => tracing::Span::none(),
        };
        // The library's default client does the actual sending.
        let default = wasmtime_wasi_http::default_hooks();
        let sent = Box::into_pin(default.send_request(request, options, fut));
        Box::new(sent.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        let allowed = Arc::new(entries.iter().map(|e| AllowedHost::parse(e).unwrap()).collect());
        OutboundPolicy::new(allowed, Arc::new(|| None))
    }

    fn permits(p: &OutboundPolicy, uri: &str) -> bool {
        p.permits(&uri.parse().unwrap())
    }

    #[test]
    fn nothing_listed_denies_everything() {
        assert!(!permits(&policy(&[]), "https://example.com/"));
    }

    #[test]
    fn spin_patterns() {
        let p = policy(&["https://api.example.com", "http://127.0.0.1:*", "*://*.internal:8080"]);
        assert!(permits(&p, "https://api.example.com/v1"));
        assert!(!permits(&p, "http://api.example.com/v1"), "scheme must match");
        assert!(!permits(&p, "https://api.example.com:8443/"), "default port only");
        assert!(!permits(&p, "https://evil.com/"));
        assert!(permits(&p, "http://127.0.0.1:3000/"));
        assert!(permits(&p, "http://gpu.internal:8080/"));
        assert!(permits(&p, "https://a.b.internal:8080/"));
        assert!(!permits(&p, "http://internal:8080/"), "*. needs a subdomain");
        assert!(!permits(&p, "http://gpu.internal:9090/"));
    }

    #[test]
    fn malformed_entries_are_errors() {
        for bad in ["example.com", "https://", "https://example.com/path", "https://example.com:port"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }
}
