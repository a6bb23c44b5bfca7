//! The app's route table in Spin's syntax: exact paths and `prefix/...`, most specific first.

use std::sync::Arc;

use crate::rollout::ComponentSlot;

/// A route of `[[trigger.http]]`.
pub struct Route {
    pub pattern: RoutePattern,
    pub component: Arc<ComponentSlot>,
}

/// Spin route syntax: exact path, or `prefix/...` for everything under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePattern {
    Exact(String),
    Prefix(String),
}

impl std::fmt::Display for RoutePattern {
    /// As written in spin.toml.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutePattern::Exact(p) if p.is_empty() => write!(f, "/"),
            RoutePattern::Exact(p) => write!(f, "{p}"),
            RoutePattern::Prefix(p) => write!(f, "{p}/..."),
        }
    }
}

impl RoutePattern {
    pub fn parse(route: &str) -> RoutePattern {
        match route.strip_suffix("/...") {
            Some(prefix) => RoutePattern::Prefix(prefix.to_string()),
            None => RoutePattern::Exact(route.trim_end_matches('/').to_string()),
        }
    }

    /// Whether `path` is served by this route; longer routes are tried first by the caller.
    pub fn matches(&self, path: &str) -> bool {
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        match self {
            RoutePattern::Exact(p) => path == p || (p.is_empty() && path == "/"),
            RoutePattern::Prefix(p) => path == p || path.starts_with(&format!("{p}/")) || p.is_empty(),
        }
    }

    /// Sort key: exact before prefix, longer before shorter.
    pub(crate) fn specificity(&self) -> (bool, usize) {
        match self {
            RoutePattern::Exact(p) => (true, p.len()),
            RoutePattern::Prefix(p) => (false, p.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RoutePattern;

    #[test]
    fn spin_route_patterns() {
        let exact = RoutePattern::parse("/embed");
        assert!(exact.matches("/embed") && exact.matches("/embed/"));
        assert!(!exact.matches("/embedx") && !exact.matches("/embed/x"));
        let prefix = RoutePattern::parse("/api/...");
        assert!(prefix.matches("/api") && prefix.matches("/api/x/y"));
        assert!(!prefix.matches("/apix"));
        let all = RoutePattern::parse("/...");
        assert!(all.matches("/") && all.matches("/anything"));
    }
}
