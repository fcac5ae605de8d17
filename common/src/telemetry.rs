//! OpenTelemetry traces, off unless configured: with
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, every `tracing` span (the gateway's `webhook`, the sync-service's
//! `grpc` and `apply_event` and `commit_batch`) is exported over OTLP/gRPC
//! with the standard `OTEL_*` settings (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_TIMEOUT`, …), and the W3C
//! `traceparent` crosses the gateway → sync-service hop in gRPC metadata
//! ([`inject`], [`extract`]), so one delivery is one trace. Off, both are
//! no-ops that cost a relaxed atomic load.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    task::{Context, Poll},
};

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::TracerProvider as _,
};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Instrument as _, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Whether traces are exported (set once, at start-up).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: for work that only traces need.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The settings that turn traces on, any of them.
const ENDPOINT_SETTINGS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Whether the environment asks for traces.
pub fn configured() -> bool {
    ENDPOINT_SETTINGS
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()))
}

/// The exporting side of traces: flushes what is buffered when shut down or
/// dropped (at the end of `main`).
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Starts exporting to the configured endpoint, under `service_name`
    /// unless `OTEL_SERVICE_NAME` names another; the layer to add to the
    /// `tracing` subscriber. Must run inside a Tokio runtime (the exporter's
    /// channel lives on it).
    pub fn start<S>(
        service_name: &'static str,
    ) -> Result<(Self, impl tracing_subscriber::Layer<S>), String>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let exporter = SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the exporter: {e}"))?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer(service_name);
        global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        Ok((Self { provider }, layer))
    }

    /// Exports what is still buffered; spans ended later are dropped.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: traces not all exported: {error}");
        }
    }
}

impl Drop for Traces {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        let _ = self.provider.shutdown();
    }
}

/// Writes the current span's trace context (`traceparent`, `tracestate`)
/// into outgoing gRPC `metadata`.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let context = tracing::Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// Makes `span` a child of the trace context a caller sent in `headers`
/// (its `traceparent`), if any.
pub fn extract(headers: &http::HeaderMap, span: &tracing::Span) {
    if !ENABLED.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return;
    }
    let parent =
        global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    // Fails only without an OpenTelemetry layer, which ENABLED rules out.
    let _ = span.set_parent(parent);
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A tower layer giving every gRPC call a `grpc` span (`rpc.method`: its
/// path), the child of the trace context its caller sent, if any: the span
/// the handlers' own spans nest under. Without traces, no span is made.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcSpanLayer;

impl<S> tower::Layer<S> for GrpcSpanLayer {
    type Service = GrpcSpan<S>;

    fn layer(&self, inner: S) -> GrpcSpan<S> {
        GrpcSpan { inner }
    }
}

/// The service [`GrpcSpanLayer`] wraps.
#[derive(Clone, Debug)]
pub struct GrpcSpan<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for GrpcSpan<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !ENABLED.load(Ordering::Relaxed) {
            return self.inner.call(request).instrument(tracing::Span::none());
        }
        let span = tracing::info_span!("grpc", rpc.method = request.uri().path());
        extract(request.headers(), &span);
        let call = span.in_scope(|| self.inner.call(request));
        call.instrument(span)
    }
}
