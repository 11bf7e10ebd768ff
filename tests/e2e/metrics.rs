//! The plane's own `/metrics`, scraped and read by the reference parsers of `prometheus_client`: label values made
//! of what senders wrote (service names with quotes, backslashes, newlines, markup) come out escaped and read back
//! unchanged.

use anyhow::{Result, ensure};

use crate::harness::api::{Port, content_type};
use crate::harness::otlp::{log_record, logs_request, now_nanos};
use crate::harness::process::fresh_plane;
use crate::harness::sdk::{parse_metrics, python_or_skip};

/// Service names no exposition writer may pass through unescaped.
const HOSTILE: [&str; 5] = [
    "pay\"ments",
    "back\\slash\\",
    "two\nlines",
    "<script>alert(1)</script>",
    "ünïcødé } {le=\"x\"}",
];

#[tokio::test]
async fn metrics_with_hostile_service_names_parse() -> Result<()> {
    let Some(python) = python_or_skip("metrics_with_hostile_service_names_parse")? else {
        return Ok(());
    };
    let (_tmp, plane, ingest, viewer) = fresh_plane().await?;
    for service in HOSTILE {
        plane
            .send_logs(
                Port::OtlpHttp,
                &ingest,
                &logs_request(service, vec![log_record("hostile", now_nanos(), vec![])]),
            )
            .await?;
    }
    for (accept, format) in [
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
        ("text/plain", "text"),
    ] {
        let response = plane
            .client
            .get(plane.url(Port::Http, "/metrics"))
            .bearer_auth(&viewer)
            .header("accept", accept)
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "/metrics -> {}",
            response.status()
        );
        let ct = content_type(&response);
        let expected = if format == "openmetrics" {
            "application/openmetrics-text"
        } else {
            "text/plain"
        };
        ensure!(
            ct.starts_with(expected),
            "Accept {accept:?} answered {ct:?}"
        );
        let samples = parse_metrics(&python, format, &response.text().await?).await?;
        for service in HOSTILE {
            let found = samples.iter().any(|s| {
                s.name == "gantry_ingest_records_total"
                    && s.labels.get("service").map(String::as_str) == Some(service)
                    && s.labels.get("signal").map(String::as_str) == Some("logs")
                    && s.value == 1.0
            });
            ensure!(
                found,
                "{format}: no gantry_ingest_records_total sample for service {service:?}"
            );
        }
        ensure!(
            samples
                .iter()
                .any(|s| s.name == "gantry_ingest_batches_total" && s.value >= 5.0),
            "{format}: the batch counter is missing"
        );
    }
    Ok(())
}
