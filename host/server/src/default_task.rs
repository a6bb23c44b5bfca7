//! TEI's and SageMaker's routes at the root, for the clients that call a server by its base URL
//! alone (`huggingface_hub.InferenceClient("http://host:3000")`, SageMaker's container contract):
//! `POST /` and `POST /invocations` answer as the app's default route (`[http] default_route`),
//! `GET /` and `GET /ping` as `/ready`. They apply only where spin.toml routes no component at
//! those paths: an app's own routes always win.

use anyhow::{Result, bail};
use http::{Method, Uri};

use edgeinfer_config::manifest::Manifest;
use edgeinfer_runtime::routes::RoutePattern;

/// What TEI serves at the root when its model is an embedder, a classifier or a reranker, in
/// that order of preference for an app that routes several.
const TEI_TASKS: [&str; 3] = ["/embed", "/predict", "/rerank"];

/// Paths answered here when the app does not route them.
pub(crate) const PATHS: [&str; 3] = ["/", "/invocations", "/ping"];

/// The route `POST /` answers as: `configured` (which must be an exact route of the manifest), or
/// the first of TEI's tasks the manifest routes exactly; none when neither applies.
pub fn resolve(manifest: &Manifest, configured: Option<&str>) -> Result<Option<String>> {
    let exact_routes: Vec<String> = manifest
        .http_triggers
        .iter()
        .filter_map(|t| match RoutePattern::parse(&t.route) {
            RoutePattern::Exact(path) if !path.is_empty() => Some(path),
            _ => None,
        })
        .collect();
    match configured {
        Some(route) => {
            let route = route.trim_end_matches('/');
            if PATHS.contains(&route) || route.is_empty() {
                bail!(
                    "[http] default_route = {route:?} would answer itself; name a route such as \"/embed\""
                );
            }
            if !exact_routes.iter().any(|r| r == route) {
                bail!(
                    "[http] default_route = {route:?} is not a route of spin.toml (its exact routes: {})",
                    exact_routes.join(", ")
                );
            }
            Ok(Some(route.to_string()))
        }
        None => {
            Ok(TEI_TASKS.iter().find(|task| exact_routes.iter().any(|r| r == *task)).map(|t| t.to_string()))
        }
    }
}

/// What an unrouted request at one of `PATHS` gets.
pub(crate) enum Answer {
    /// Readiness, as `/ready` answers it.
    Ready,
    /// The default route's component, the request's path rewritten to it.
    Route(Uri),
    /// `POST` where the app has no default task.
    NoDefaultTask,
    /// A method the path does not take; these it does.
    WrongMethod(&'static str),
}

/// How a request at `path` (not routed by the app) is answered, if it is one of `PATHS`.
pub(crate) fn answer(method: &Method, uri: &Uri, default_route: Option<&str>) -> Option<Answer> {
    let path = uri.path();
    if !PATHS.contains(&path) {
        return None;
    }
    let inference = path != "/ping";
    let health = path != "/invocations";
    Some(match (method, default_route) {
        (&Method::GET | &Method::HEAD, _) if health => Answer::Ready,
        (&Method::POST, Some(route)) if inference => {
            let mut target = route.to_string();
            if let Some(query) = uri.query() {
                target = format!("{target}?{query}");
            }
            Answer::Route(target.parse().expect("a route of spin.toml with the request's own query is a URI"))
        }
        (&Method::POST, None) if inference => Answer::NoDefaultTask,
        _ => Answer::WrongMethod(match path {
            "/" => "GET, HEAD, POST",
            "/ping" => "GET, HEAD",
            _ => "POST",
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(routes: &[&str]) -> Manifest {
        let mut text = "spin_manifest_version = 2\n[application]\nname = \"a\"\n".to_string();
        for route in routes {
            text.push_str(&format!("[[trigger.http]]\nroute = \"{route}\"\ncomponent = \"c\"\n"));
        }
        text.push_str("[component.c]\nsource = \"c.wasm\"\n");
        Manifest::parse(&text, ".".into()).unwrap()
    }

    #[test]
    fn the_default_route_is_configured_or_teis_first_task() {
        let app = manifest(&["/rerank", "/predict", "/embed", "/similarity", "/api/..."]);
        assert_eq!(resolve(&app, None).unwrap().as_deref(), Some("/embed"));
        assert_eq!(resolve(&manifest(&["/rerank", "/predict"]), None).unwrap().as_deref(), Some("/predict"));
        assert_eq!(resolve(&manifest(&["/api/...", "/other"]), None).unwrap(), None);
        assert_eq!(resolve(&app, Some("/similarity")).unwrap().as_deref(), Some("/similarity"));
        for wrong in ["/nowhere", "/api", "/api/x", "/", "/invocations"] {
            let err = resolve(&app, Some(wrong)).unwrap_err().to_string();
            assert!(err.contains("default_route"), "{wrong}: {err}");
        }
    }

    #[test]
    fn root_paths_answer_by_method() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert!(matches!(answer(&Method::GET, &uri("/"), None), Some(Answer::Ready)));
        assert!(matches!(answer(&Method::GET, &uri("/ping"), Some("/embed")), Some(Answer::Ready)));
        match answer(&Method::POST, &uri("/invocations?x=1"), Some("/embed")) {
            Some(Answer::Route(to)) => assert_eq!(to, "/embed?x=1"),
            _ => panic!("POST /invocations goes to the default route"),
        }
        assert!(matches!(answer(&Method::POST, &uri("/"), None), Some(Answer::NoDefaultTask)));
        for (method, path) in [(Method::POST, "/ping"), (Method::GET, "/invocations"), (Method::PUT, "/")] {
            assert!(
                matches!(answer(&method, &uri(path), Some("/embed")), Some(Answer::WrongMethod(_))),
                "{method} {path}"
            );
        }
        assert!(answer(&Method::POST, &uri("/embed"), Some("/embed")).is_none());
    }
}
