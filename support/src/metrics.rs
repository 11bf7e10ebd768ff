//! Gantry's own metrics in the OpenMetrics text format (a superset of the Prometheus text format that Prometheus
//! scrapes natively), written by `prometheus-client`: counters get their `_total` suffix, label values are escaped
//! (`\\`, `\"`, `\n`, OpenMetrics 1.0 "Escaping"), and the exposition ends with `# EOF`.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of an exposition for a scraper that asks for OpenMetrics (Prometheus does).
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` for any other client: the Prometheus text format 0.0.4, which reads the same body (the
/// `# EOF` and `# UNIT` lines are comments there).
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` to answer a scrape with, from its `Accept` header: OpenMetrics when the client lists it,
/// else the Prometheus text format.
pub fn content_type(accept: Option<&str>) -> &'static str {
    match accept {
        Some(accept) if accept.contains("application/openmetrics-text") => OPENMETRICS,
        _ => PROMETHEUS_TEXT,
    }
}

/// Upper bounds, in seconds, of every latency histogram: 0.5 ms to 5 s.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with [`LATENCY_BUCKETS`] (observe seconds).
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The whole exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Writes one counter read at scrape time (for a `prometheus_client::collector::Collector`); `name` without its
/// `_total` suffix, which the encoder adds.
///
/// # Errors
/// The writer failed (never for a `String`).
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// Writes one gauge read at scrape time.
///
/// # Errors
/// The writer failed (never for a `String`).
pub fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> std::fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// Writes a counter family read at scrape time: one sample per label set.
///
/// # Errors
/// The writer failed (never for a `String`).
pub fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    #[test]
    fn the_content_type_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(content_type(Some(prometheus)), OPENMETRICS);
        assert_eq!(content_type(Some("*/*")), PROMETHEUS_TEXT);
        assert_eq!(content_type(None), PROMETHEUS_TEXT);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut registry = Registry::default();
        let family = Family::<Vec<(String, String)>, Counter>::default();
        registry.register("gantry_test", "A test counter", family.clone());
        family
            .get_or_create(&vec![("service".into(), "a\"b\\c\nd".into())])
            .inc();
        let text = encode(&registry);
        assert!(
            text.contains(r#"gantry_test_total{service="a\"b\\c\nd"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
