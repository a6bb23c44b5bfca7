//! What every listener (public HTTP, admin, gRPC) does around each request, as one tower layer:
//! the request id (the client's `x-request-id` when it is safe to echo, else generated), the
//! `request` span (a child of the caller's `traceparent` when traces are exported), and once the
//! answer's head is ready, or the call is dropped unanswered (counted as 499 `Cancelled`), its
//! count and duration in the metrics and one `request` log line. What answered is told by the
//! `Served` response extension; each listener's `Surface` says how its calls are labelled until
//! then and how an answer's outcome is read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use tracing::Instrument;

use crate::error::{ERROR_TYPE_HEADER, HostError};
use crate::served::Served;

/// Header carrying the request id, from the client or generated, to the component and back.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Response header in which a component reports the tokens it computed on.
pub(crate) const TOKENS_HEADER: &str = "x-compute-tokens";

/// How one listener's calls are labelled and judged.
pub(crate) struct Surface {
    /// The listener's name in log lines (`public`, `admin`, `grpc`).
    pub(crate) listener: &'static str,
    /// What a call counts as when its answer does not say (no `Served`), or when it is dropped
    /// before its answer. Bounded labels only, never the raw path.
    pub(crate) provisional: Box<dyn Fn(&Uri) -> Served + Send + Sync>,
    /// An answer's status and error type, for the metrics and the log.
    pub(crate) outcome: fn(StatusCode, &HeaderMap) -> (u16, Option<String>),
    /// Whether log lines carry request bodies (off: only their hash and size).
    pub(crate) log_inputs: bool,
    /// The span's name once the route is known: `METHOD ROUTE` for HTTP (`http_span_name`),
    /// `package.Service/Method` for gRPC.
    pub(crate) span_name: fn(&http::Method, &str) -> String,
}

/// An HTTP request span's name: its method and route pattern.
pub(crate) fn http_span_name(method: &http::Method, route: &str) -> String {
    format!("{method} {route}")
}

/// An HTTP answer's outcome: its status, and for an error its `x-error-type` (the host's own
/// answers and `components/text-handler`'s state one; the body is never read back for it).
pub(crate) fn http_outcome(status: StatusCode, headers: &HeaderMap) -> (u16, Option<String>) {
    if status.as_u16() < 400 {
        return (status.as_u16(), None);
    }
    let stated = headers.get(ERROR_TYPE_HEADER).and_then(|v| v.to_str().ok());
    let error_type = stated.filter(|t| !t.is_empty() && t.len() <= 64).unwrap_or("Unspecified");
    (status.as_u16(), Some(error_type.to_string()))
}

/// A request's facts known on arrival, for the handlers (a request extension).
#[derive(Clone, Copy)]
pub(crate) struct Arrival {
    /// The process-wide request number (the generated id's second half).
    pub(crate) number: u64,
    /// The connection's peer; unspecified when the listener could not tell.
    pub(crate) peer: SocketAddr,
    pub(crate) started: Instant,
}

/// Numbers requests across every listener of the process. Generated ids are `BOOT-NUMBER` in
/// hex, where BOOT (the start time in seconds) tells ids of different runs apart.
struct RequestIds {
    next: AtomicU64,
    boot: u64,
}

static REQUEST_IDS: LazyLock<RequestIds> = LazyLock::new(|| RequestIds {
    next: AtomicU64::new(0),
    boot: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
});

impl RequestIds {
    /// The next request's number and id: the client's id when it is sane, else a generated one.
    fn assign(&self, headers: &HeaderMap) -> (u64, String) {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let id = client_request_id(headers).unwrap_or_else(|| format!("{:x}-{number:x}", self.boot));
        (number, id)
    }
}

/// A client's request id, if it is one we can log and echo safely.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID)?.to_str().ok()?;
    let sane = !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic());
    sane.then(|| value.to_string())
}

/// The layer: `Observe` around a listener's service.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    surface: Arc<Surface>,
}

impl ObserveLayer {
    pub(crate) fn new(surface: Surface) -> ObserveLayer {
        ObserveLayer { surface: Arc::new(surface) }
    }

    /// The service for one connection, whose peer the listener knows.
    pub(crate) fn for_connection<S>(&self, peer: SocketAddr, inner: S) -> Observe<S> {
        Observe { inner, surface: self.surface.clone(), peer: Some(peer) }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, surface: self.surface.clone(), peer: None }
    }
}

/// A listener's service, observed.
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    surface: Arc<Surface>,
    /// The connection's peer; `None` under a server that tells it per request (tonic).
    peer: Option<SocketAddr>,
}

impl<S, B, RB> tower::Service<Request<B>> for Observe<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let (number, request_id) = REQUEST_IDS.assign(req.headers());
        let id_header = HeaderValue::from_str(&request_id).expect("visible ASCII");
        req.headers_mut().insert(REQUEST_ID, id_header.clone());
        let peer = self.peer.or_else(|| {
            let info = req.extensions().get::<tonic::transport::server::TcpConnectInfo>()?;
            info.remote_addr()
        });
        let unknown_peer = SocketAddr::from(([0, 0, 0, 0], 0));
        req.extensions_mut().insert(Arrival { number, peer: peer.unwrap_or(unknown_peer), started });
        let span = tracing::info_span!(
            "request",
            otel.name = %req.method(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method(),
            url.path = req.uri().path(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            request_id,
            component = tracing::field::Empty,
            version = tracing::field::Empty,
            // What a listener's handlers know of the call (gRPC's method and model).
            rpc.system = tracing::field::Empty,
            rpc.method = tracing::field::Empty,
            model = tracing::field::Empty,
        );
        if !span.is_disabled() {
            edgeinfer_runtime::trace::set_parent(&span, edgeinfer_runtime::trace::extract(req.headers()));
        }
        let mut record = Record {
            served: (self.surface.provisional)(req.uri()),
            surface: self.surface.clone(),
            request_id,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            peer,
            started,
            span: span.clone(),
            outcome: None,
            tokens: None,
        };
        // The service polled ready is the one called; its clone waits for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut result = inner.call(req).instrument(span).await;
            match &mut result {
                Ok(response) => {
                    record.answered(response);
                    response.headers_mut().insert(REQUEST_ID, id_header);
                }
                Err(_) => record.failed(),
            }
            result
        })
    }
}

/// One call's metrics and log line, written when it is dropped: after its answer, or unanswered
/// (its deadline passed, or the client left) as 499 `Cancelled` (500 when its handler panicked).
struct Record {
    surface: Arc<Surface>,
    request_id: String,
    method: http::Method,
    path: String,
    peer: Option<SocketAddr>,
    started: Instant,
    span: tracing::Span,
    served: Served,
    outcome: Option<(u16, Option<String>)>,
    tokens: Option<u64>,
}

impl Record {
    /// The service failed instead of answering (tonic's transport errors).
    fn failed(&mut self) {
        self.outcome = Some((500, Some(HostError::Backend.error_type().to_string())));
    }

    /// Takes what answered off the response, and its outcome.
    fn answered<RB>(&mut self, response: &mut Response<RB>) {
        if let Some(served) = response.extensions_mut().remove::<Served>() {
            self.served = served;
        }
        self.outcome = Some((self.surface.outcome)(response.status(), response.headers()));
        self.tokens =
            response.headers().get(TOKENS_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // Unanswered: the client left or a deadline passed (499), or the handler panicked (500).
        let unanswered = match std::thread::panicking() {
            true => (500, Some(HostError::Backend.error_type().to_string())),
            false => (499, Some("Cancelled".to_string())),
        };
        let (status, error_type) = self.outcome.take().unwrap_or(unanswered);
        let Served { route, component, version, input } = &self.served;
        let took = self.started.elapsed();
        crate::telemetry::count_request(route, component, version, status, error_type.as_deref(), took);
        if let Some(tokens) = self.tokens {
            let labels =
                [("route", route.clone()), ("component", component.clone()), ("version", version.clone())];
            metrics::counter!("edgeinfer_tokens_total", &labels).increment(tokens);
        }
        let name = (self.surface.span_name)(&self.method, route);
        let trace_id = record_outcome(&self.span, name, route, component, version, status);
        let input_text =
            input.as_ref().filter(|_| self.surface.log_inputs).map(|i| String::from_utf8_lossy(&i.bytes));
        let _in_span = self.span.enter();
        tracing::info!(
            target: "edgeinfer::http",
            listener = self.surface.listener,
            request_id = self.request_id,
            trace_id,
            method = %self.method,
            path = self.path,
            route,
            component,
            version,
            status,
            us = took.as_micros() as u64,
            input_hash = input.as_ref().map(|i| i.hash.as_str()),
            input_bytes = input.as_ref().map(|i| i.bytes.len()),
            input = input_text.as_deref(),
            tokens = self.tokens,
            error_type,
            peer = self.peer.as_ref().map(SocketAddr::to_string),
            "request"
        );
    }
}

/// Writes what answered into the request's span; its trace id, when it is traced (the log line
/// carries it, so logs and traces meet by request id and by trace id).
fn record_outcome(
    span: &tracing::Span,
    name: String,
    route: &str,
    component: &str,
    version: &str,
    status: u16,
) -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    let cx = edgeinfer_runtime::trace::context_of(span)?;
    // Its name only now that the route is known (the span has started: renamed in place).
    cx.span().update_name(name);
    span.record("http.route", route);
    span.record("http.response.status_code", i64::from(status));
    span.record("component", component);
    span.record("version", version);
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    Some(cx.span().span_context().trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt};

    fn surface() -> Surface {
        Surface {
            listener: "test",
            provisional: Box::new(|_| Served::unmatched()),
            outcome: http_outcome,
            log_inputs: false,
            span_name: http_span_name,
        }
    }

    fn request(id: Option<&str>) -> Request<()> {
        let mut request = Request::builder().uri("/x");
        if let Some(id) = id {
            request = request.header(REQUEST_ID, id);
        }
        request.body(()).unwrap()
    }

    #[tokio::test]
    async fn every_request_gets_an_id_the_handler_and_the_client_both_see() {
        let layer = ObserveLayer::new(surface());
        let echo = tower::service_fn(|req: Request<()>| async move {
            let arrival = req.extensions().get::<Arrival>().expect("the arrival extension");
            let seen = req.headers()[REQUEST_ID].clone();
            let mut response = Response::new(arrival.number);
            response.headers_mut().insert("x-seen", seen);
            Ok::<_, Infallible>(response)
        });
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let first = layer.for_connection(peer, echo).oneshot(request(None)).await.unwrap();
        let generated = first.headers()[REQUEST_ID].to_str().unwrap().to_string();
        assert_eq!(first.headers()["x-seen"], generated.as_str(), "the handler sees the id it answers with");
        let (boot, number) = generated.split_once('-').expect("BOOT-NUMBER");
        assert_eq!(u64::from_str_radix(number, 16).unwrap(), *first.body());
        assert!(u64::from_str_radix(boot, 16).is_ok(), "{generated}");

        let echoed = layer.layer(echo).oneshot(request(Some("client-1"))).await.unwrap();
        assert_eq!(echoed.headers()[REQUEST_ID], "client-1", "the client's id echoed");
        assert!(*echoed.body() > *first.body(), "numbers increase across services");
        for unsafe_id in ["", "has space", &"x".repeat(129)] {
            let replaced = layer.layer(echo).oneshot(request(Some(unsafe_id))).await.unwrap();
            assert_ne!(replaced.headers()[REQUEST_ID], unsafe_id, "{unsafe_id:?} is not echoed");
        }
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_is_counted_as_cancelled() {
        crate::telemetry::init().unwrap();
        let mut surface = surface();
        surface.provisional = Box::new(|_| Served::host("/observe-test-cancelled"));
        let layer = ObserveLayer::new(surface);
        let never =
            tower::service_fn(|_: Request<()>| std::future::pending::<Result<Response<()>, Infallible>>());
        let call = layer.layer(never).oneshot(request(None));
        assert!(tokio::time::timeout(std::time::Duration::from_millis(10), call).await.is_err());
        let metrics = crate::telemetry::render();
        let cancelled = metrics.lines().find(|line| {
            line.starts_with("edgeinfer_requests_total")
                && line.contains("route=\"/observe-test-cancelled\"")
                && line.contains("status=\"499\"")
        });
        assert!(cancelled.is_some_and(|line| line.ends_with(" 1")), "{metrics}");
        assert!(metrics.contains("error_type=\"Cancelled\""), "{metrics}");
    }
}
