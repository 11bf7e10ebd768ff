//! The demo services' OpenTelemetry setup, as any service would do it: tracer, meter and logger providers with
//! OTLP/HTTP exporters configured from the standard environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`: the Gantry agent sets them for every instance), W3C trace
//! context in and out of HTTP headers.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_otlp::{LogExporter, MetricExporter, SpanExporter};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The three providers; [`Telemetry::shutdown`] flushes them.
pub struct Telemetry {
    /// Spans.
    pub tracer: SdkTracerProvider,
    /// Metrics.
    pub meter: SdkMeterProvider,
    /// Logs.
    pub logger: SdkLoggerProvider,
}

/// Builds the providers from the environment (must run inside the tokio runtime).
///
/// # Errors
/// An exporter cannot be built.
pub fn init() -> anyhow::Result<Telemetry> {
    let resource = Resource::builder().build();
    let spans = SpanExporter::builder().with_http().build()?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            spans, Tokio,
        )
        .build();
    let tracer = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.clone())
        .build();
    let metrics = MetricExporter::builder().with_http().build()?;
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            metrics, Tokio,
        )
        .with_interval(Duration::from_secs(10))
        .build();
    let meter = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource.clone())
        .build();
    let logs = LogExporter::builder().with_http().build()?;
    let log_processor =
        opentelemetry_sdk::logs::log_processor_with_async_runtime::BatchLogProcessor::builder(
            logs, Tokio,
        )
        .build();
    let logger = SdkLoggerProvider::builder()
        .with_log_processor(log_processor)
        .with_resource(resource)
        .build();
    Ok(Telemetry {
        tracer,
        meter,
        logger,
    })
}

impl Telemetry {
    /// Flushes and stops the providers.
    pub fn shutdown(&self) {
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
        let _ = self.logger.shutdown();
    }
}

/// Reads trace context from request headers.
pub struct HeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace context into outgoing request headers.
pub struct HeaderInjector<'a>(pub &'a mut reqwest::header::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(key.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C trace context propagator.
pub fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// Extracts the caller's context.
pub fn extract(headers: &axum::http::HeaderMap) -> opentelemetry::Context {
    propagator().extract(&HeaderExtractor(headers))
}

/// Injects `cx` into outgoing headers.
pub fn inject(cx: &opentelemetry::Context, headers: &mut reqwest::header::HeaderMap) {
    propagator().inject_context(cx, &mut HeaderInjector(headers));
}
