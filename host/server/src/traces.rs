//! OpenTelemetry traces, off unless an OTLP endpoint is given (`up --otlp-endpoint`, TEI's flag).
//! The host's spans are ordinary `tracing` spans of the `edgeinfer*` crates: a request
//! (`request`, its parent the caller's W3C `traceparent`), the component that answers it
//! (`component`, `admission`, and `tokenize` as the component measured it), each model call
//! (`compute`, `queue`), and on the model's side the `batch` an engine run serves (linked both
//! ways to every request in it) and the `onnxruntime.run` inside it. This module exports them over
//! OTLP (gRPC, or HTTP/protobuf) with a sampler; when tracing is off no layer wants the spans and
//! they cost next to nothing. The logs never show them (the log layer filters spans out).

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention), as TEI exports.
    Grpc,
    /// OTLP over HTTP with protobuf bodies (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

/// An OTLP protocol other than `grpc` and `http/protobuf`.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP protocol is grpc or http/protobuf, not {0:?}")]
pub struct UnknownProtocol(String);

impl std::str::FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(text: &str) -> Result<Protocol, UnknownProtocol> {
        match text {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(UnknownProtocol(other.to_string())),
        }
    }
}

/// Logs to stderr (`RUST_LOG`, `EDGEINFER_LOG_FORMAT=json`), and with `traces`, spans to an OTLP
/// collector; the returned handle sends the last spans when dropped.
pub fn init_logging(traces: Option<&TraceExport>) -> Result<Option<Traces>> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("edgeinfer=info,warn"));
    // Log lines are events only: the spans are the traces' (and the request line names its ids).
    // The level filter goes outside: its level is the layer's hint, which keeps every callsite
    // below it (Cranelift's `log::trace!` among them) disabled at no cost.
    let events_only = tracing_subscriber::filter::filter_fn(|meta| !meta.is_span());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if std::env::var("EDGEINFER_LOG_FORMAT").as_deref() == Ok("json") {
        logs.json().with_filter(events_only).with_filter(filter).boxed()
    } else {
        logs.with_filter(events_only).with_filter(filter).boxed()
    };
    let (spans, handle) = match traces {
        Some(export) => {
            let (layer, handle) = layer(export)?;
            (Some(layer), Some(handle))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(spans).init();
    if let Some(export) = traces {
        tracing::info!(endpoint = %export.endpoint, protocol = ?export.protocol, "exporting traces over OTLP");
    }
    Ok(handle)
}

/// Where and how to export traces.
#[derive(Debug, Clone)]
pub struct TraceExport {
    /// The collector: `http://host:4317` (gRPC) or `http://host:4318` (HTTP; `/v1/traces` is
    /// added when the URL has no path).
    pub endpoint: String,
    pub protocol: Protocol,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Share of new traces sampled (0 to 1); a request that arrives with a sampled or unsampled
    /// `traceparent` follows its caller's decision.
    pub sample_ratio: f64,
}

/// The exporter; dropping it sends the spans still buffered.
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("edgeinfer: could not send the last traces: {e}");
        }
    }
}

/// The tracer the `tokenize` spans are written with (they carry the component's own times).
static TRACER: std::sync::OnceLock<opentelemetry_sdk::trace::Tracer> = std::sync::OnceLock::new();

/// The `tracing` layer that exports the host's spans as `export` says, and the handle that
/// flushes it. Call within a tokio runtime (the gRPC exporter's connection lives there).
pub fn layer<S>(export: &TraceExport) -> Result<(impl Layer<S> + use<S>, Traces)>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if !(0.0..=1.0).contains(&export.sample_ratio) {
        bail!("the trace sample ratio must be between 0 and 1, got {}", export.sample_ratio);
    }
    let exporter = match export.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(&export.endpoint)
            .with_timeout(Duration::from_secs(10))
            .build(),
        Protocol::HttpProtobuf => {
            let url: http::Uri = export.endpoint.parse().context("--otlp-endpoint is not a URL")?;
            let endpoint = match url.path() {
                "" | "/" => format!("{}/v1/traces", export.endpoint.trim_end_matches('/')),
                _ => export.endpoint.clone(),
            };
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(10))
                .build()
        }
    }
    .with_context(|| format!("cannot export traces to {}", export.endpoint))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(export.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(export.sample_ratio))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("edgeinfer");
    let _ = TRACER.set(tracer.clone());
    // Only the host's own spans: no events (the logs have them) and no dependency's spans.
    // Its level hint keeps every finer callsite disabled at no cost (without one, the process's
    // most verbose level would be TRACE).
    let only_ours = tracing_subscriber::filter::filter_fn(|meta| {
        meta.is_span() && meta.target().starts_with("edgeinfer") && *meta.level() <= tracing::Level::INFO
    })
    .with_max_level_hint(tracing::level_filters::LevelFilter::INFO);
    // Spans carry what they say and no more: no source location, thread or target attributes,
    // no busy/idle times, and no OpenTelemetry context switched in and out at every poll (parents
    // come from the `tracing` spans and `set_parent`). Each of these costs every span.
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_context_activation(false)
        .with_filter(only_ours);
    Ok((layer, Traces { provider }))
}

/// Adds a `tokenize` span under `component` (a `component` span) from the component's own
/// measure: started `offset` after `handled` (when the host handed the request to it), lasting
/// `took`. Tokenization runs inside the sandbox, where the host has no span of its own.
pub fn record_tokenization(component: &tracing::Span, handled: SystemTime, offset: Duration, took: Duration) {
    let Some(tracer) = TRACER.get() else { return };
    if component.is_disabled() {
        return;
    }
    let parent = component.context();
    let start = handled + offset;
    let mut span = tracer
        .span_builder("tokenize")
        .with_start_time(start)
        .with_attributes([KeyValue::new("edgeinfer.measured_by", "component")])
        .start_with_context(tracer, &parent);
    span.end_with_timestamp(start + took);
}
