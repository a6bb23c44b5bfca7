//! What answered a request, as every surface's handlers (component routes, KServe, the host's
//! own) report it to the metrics and the request log.

use bytes::Bytes;

/// What answered a request (a response extension, set by the handler): its metric labels and the
/// facts of its body for the log.
#[derive(Clone)]
pub(crate) struct Served {
    /// The route pattern, as spin.toml or the host's router writes it.
    pub(crate) route: String,
    /// The component id; `host` for the host's own routes (KServe's included), `admin` for the
    /// admin API's.
    pub(crate) component: String,
    /// The component version that answered; `-` for the host's own routes.
    pub(crate) version: String,
    pub(crate) input: Option<Input>,
}

impl Served {
    pub(crate) fn host(route: &str) -> Served {
        Served { route: route.to_string(), component: "host".into(), version: "-".into(), input: None }
    }

    /// An admin API call, by its route's pattern (`unmatched` before routing).
    pub(crate) fn admin(route: &str) -> Served {
        Served { route: route.to_string(), component: "admin".into(), version: "-".into(), input: None }
    }

    pub(crate) fn unmatched() -> Served {
        Served { route: "unmatched".into(), component: "none".into(), version: "-".into(), input: None }
    }
}

/// A request body as the log sees it.
#[derive(Clone)]
pub(crate) struct Input {
    /// First 16 hex digits of its sha256: equal inputs can be correlated, the text is not logged.
    pub(crate) hash: String,
    pub(crate) bytes: Bytes,
}
