//! W3C trace context (`traceparent`, `tracestate`) of the requests the host serves: read from a
//! request's headers, written into the request a component gets and into its outbound HTTP, and
//! kept per running request of an instance (`RunningRequests`) so that host calls, which may come
//! from any of the requests an instance serves at once, open their spans under the right one.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use opentelemetry::Context;

/// The trace a request's headers say it belongs to (an empty context when they say none).
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes `cx` into `headers` (replacing a `traceparent` already there).
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

/// `span`'s trace context, when the span is traced (tracing on, and the span sampled or not:
/// an unsampled context still travels, so the next hop drops it too).
pub fn context_of(span: &tracing::Span) -> Option<Context> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

/// Makes `span` a child of `parent` (a remote caller's context, or a request's).
pub fn set_parent(span: &tracing::Span, parent: Context) {
    // Fails only for a span that has already started its OpenTelemetry counterpart elsewhere.
    let _ = span.set_parent(parent);
}
