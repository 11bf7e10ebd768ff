//! Container metrics from the daemon's stats endpoint: CPU time and usage, memory, network and disk IO, one `ExportMetricsServiceRequest` per collection.
//!
//! | Metric | Type | Unit | From |
//! |---|---|---|---|
//! | `container.cpu.time` | cumulative sum | `s` | `cpu_stats.cpu_usage.total_usage` |
//! | `container.cpu.usage` | gauge | `{cpu}` | CPU time over host CPU time between `precpu_stats` and `cpu_stats`, times the online CPUs (what `docker stats` shows, divided by 100) |
//! | `container.memory.usage` | gauge | `By` | `memory_stats.usage` minus the inactive page cache, as `docker stats` |
//! | `container.network.io` | cumulative sum | `By` | per interface and `network.io.direction` |
//! | `container.disk.io` | cumulative sum | `By` | `blkio_stats.io_service_bytes_recursive` per device and `disk.io.direction` (often empty with cgroup v2 or some storage drivers: then left out) |
//!
//! Stats are asked with `stream=false`, which makes the daemon sample twice about a second apart, so
//! `precpu_stats` is filled in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerStatsResponse;
use bollard::query_parameters::StatsOptions;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use super::container::Container;
use crate::buffer::{AppendOutcome, Signal};
use crate::sources::file::parse::parse_time;
use crate::sources::{Sink, agent_scope, kv};
use crate::telemetry::{Telemetry, now_unix_nanos};

/// Longest wait for one container's stats (the daemon takes about a second).
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// Containers whose stats are asked at the same time.
const STATS_CONCURRENCY: usize = 16;

/// What one stats answer says, in the units exported.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Values {
    /// When the daemon read the stats (unix nanos).
    pub time_unix_nano: u64,
    /// CPU time used since the container started, in seconds.
    pub cpu_time_seconds: Option<f64>,
    /// CPUs used on average between the two samples.
    pub cpu_cores: Option<f64>,
    /// Memory used without the inactive page cache, in bytes.
    pub memory_bytes: Option<u64>,
    /// (interface, received bytes, transmitted bytes), by interface name.
    pub network: Vec<(String, u64, u64)>,
    /// (`major:minor`, read bytes, written bytes), by device.
    pub disk: Vec<(String, u64, u64)>,
}

/// Computes the exported values from one stats answer; `now` stands in for a missing or zero read time.
pub fn values(stats: &ContainerStatsResponse, now: u64) -> Values {
    let time_unix_nano = stats
        .read
        .as_ref()
        .and_then(|t| parse_time(&t.to_string()))
        .unwrap_or(now);
    let cpu = stats.cpu_stats.as_ref();
    let total = cpu
        .and_then(|c| c.cpu_usage.as_ref())
        .and_then(|u| u.total_usage);
    Values {
        time_unix_nano,
        cpu_time_seconds: total.map(|ns| ns as f64 / 1e9),
        cpu_cores: cpu_cores(stats),
        memory_bytes: memory_bytes(stats),
        network: network(stats),
        disk: disk(stats),
    }
}

fn cpu_cores(stats: &ContainerStatsResponse) -> Option<f64> {
    let (now, before) = (stats.cpu_stats.as_ref()?, stats.precpu_stats.as_ref()?);
    let total_now = now.cpu_usage.as_ref()?.total_usage?;
    let total_before = before.cpu_usage.as_ref()?.total_usage?;
    let system_now = now.system_cpu_usage?;
    let system_before = before.system_cpu_usage.filter(|s| *s > 0)?;
    let cpu_delta = total_now.checked_sub(total_before)?;
    let system_delta = system_now.checked_sub(system_before).filter(|d| *d > 0)?;
    let online = now
        .online_cpus
        .filter(|n| *n > 0)
        .map(f64::from)
        .or_else(|| {
            let per_cpu = now.cpu_usage.as_ref()?.percpu_usage.as_ref()?.len();
            (per_cpu > 0).then_some(per_cpu as f64)
        })
        .unwrap_or(1.0);
    Some(cpu_delta as f64 / system_delta as f64 * online)
}

fn memory_bytes(stats: &ContainerStatsResponse) -> Option<u64> {
    let memory = stats.memory_stats.as_ref()?;
    let usage = memory.usage?;
    let stats = memory.stats.as_ref();
    // cgroup v1 reports the hierarchy's `total_inactive_file`, cgroup v2 only `inactive_file`.
    let inactive = stats
        .and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
        })
        .copied()
        .filter(|inactive| *inactive < usage)
        .unwrap_or(0);
    Some(usage - inactive)
}

fn network(stats: &ContainerStatsResponse) -> Vec<(String, u64, u64)> {
    let mut interfaces: Vec<(String, u64, u64)> = stats
        .networks
        .iter()
        .flatten()
        .map(|(name, n)| {
            (
                name.clone(),
                n.rx_bytes.unwrap_or(0),
                n.tx_bytes.unwrap_or(0),
            )
        })
        .collect();
    interfaces.sort();
    interfaces
}

fn disk(stats: &ContainerStatsResponse) -> Vec<(String, u64, u64)> {
    let mut devices: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let entries = stats
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref());
    for entry in entries.into_iter().flatten() {
        let (Some(op), Some(value)) = (entry.op.as_deref(), entry.value) else {
            continue;
        };
        let device = format!("{}:{}", entry.major.unwrap_or(0), entry.minor.unwrap_or(0));
        let slot = devices.entry(device).or_default();
        if op.eq_ignore_ascii_case("read") {
            slot.0 += value;
        } else if op.eq_ignore_ascii_case("write") {
            slot.1 += value;
        }
    }
    devices
        .into_iter()
        .map(|(device, (read, write))| (device, read, write))
        .collect()
}

fn point(time: u64, start: u64, value: f64, attributes: Vec<KeyValue>) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

fn gauge(name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

fn counter(name: &str, description: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// The metrics of one container; `started` is the start of its cumulative sums (its start time).
pub fn metrics(values: &Values, started: u64) -> Vec<Metric> {
    let t = values.time_unix_nano;
    let mut out = Vec::new();
    if let Some(seconds) = values.cpu_time_seconds {
        out.push(counter(
            "container.cpu.time",
            "CPU time consumed by the container",
            "s",
            vec![point(t, started, seconds, Vec::new())],
        ));
    }
    if let Some(cores) = values.cpu_cores {
        out.push(gauge(
            "container.cpu.usage",
            "CPUs used by the container, averaged over about a second",
            "{cpu}",
            vec![point(t, 0, cores, Vec::new())],
        ));
    }
    if let Some(bytes) = values.memory_bytes {
        out.push(gauge(
            "container.memory.usage",
            "Memory used by the container, without the inactive page cache",
            "By",
            vec![point(t, 0, bytes as f64, Vec::new())],
        ));
    }
    if !values.network.is_empty() {
        let points = values
            .network
            .iter()
            .flat_map(|(interface, rx, tx)| {
                [("receive", rx), ("transmit", tx)].map(|(direction, bytes)| {
                    point(
                        t,
                        started,
                        *bytes as f64,
                        vec![
                            kv("network.io.direction", direction),
                            kv("network.interface.name", interface),
                        ],
                    )
                })
            })
            .collect();
        out.push(counter(
            "container.network.io",
            "Bytes received and transmitted by the container",
            "By",
            points,
        ));
    }
    if !values.disk.is_empty() {
        let points = values
            .disk
            .iter()
            .flat_map(|(device, read, write)| {
                [("read", read), ("write", write)].map(|(direction, bytes)| {
                    point(
                        t,
                        started,
                        *bytes as f64,
                        vec![
                            kv("disk.io.direction", direction),
                            kv("system.device", device),
                        ],
                    )
                })
            })
            .collect();
        out.push(counter(
            "container.disk.io",
            "Bytes read from and written to block devices by the container",
            "By",
            points,
        ));
    }
    out
}

/// Data points in `metrics`.
pub fn count_points(metrics: &[Metric]) -> usize {
    metrics
        .iter()
        .map(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.len(),
            Some(metric::Data::Sum(s)) => s.data_points.len(),
            _ => 0,
        })
        .sum()
}

/// Asks the stats of every container ([`STATS_CONCURRENCY`] at a time) and appends one export request. A full buffer drops the sample
/// (counted as `buffer_full`): metrics do not wait.
pub async fn collect(
    docker: Docker,
    containers: Vec<Arc<Container>>,
    sink: Sink,
    telemetry: Arc<Telemetry>,
) {
    let mut waiting = containers.into_iter();
    let mut asks = JoinSet::new();
    let mut resource_metrics = Vec::new();
    let mut points = 0;
    loop {
        while asks.len() < STATS_CONCURRENCY {
            let Some(container) = waiting.next() else {
                break;
            };
            let docker = docker.clone();
            asks.spawn(async move {
                let options = StatsOptions {
                    stream: false,
                    one_shot: false,
                };
                let mut stream = docker.stats(&container.id, Some(options));
                let answer = tokio::time::timeout(STATS_TIMEOUT, stream.next()).await;
                (container, answer)
            });
        }
        let Some(joined) = asks.join_next().await else {
            break;
        };
        let Ok((container, answer)) = joined else {
            continue;
        };
        let stats = match answer {
            Ok(Some(Ok(stats))) => stats,
            Ok(Some(Err(error))) => {
                tracing::debug!(container = %container.name, error = %error, "container stats failed");
                continue;
            }
            Ok(None) | Err(_) => {
                tracing::debug!(container = %container.name, "no container stats");
                continue;
            }
        };
        let metrics = metrics(
            &values(&stats, now_unix_nanos()),
            container.started_unix_nanos,
        );
        if metrics.is_empty() {
            continue;
        }
        points += count_points(&metrics);
        resource_metrics.push(ResourceMetrics {
            resource: Some(Resource {
                attributes: container.resource.clone(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(agent_scope()),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    if points == 0 {
        return;
    }
    let payload = ExportMetricsServiceRequest { resource_metrics }.encode_to_vec();
    let records = u32::try_from(points).unwrap_or(u32::MAX);
    match sink.append(Signal::Metrics, payload, records).await {
        Ok(AppendOutcome::Appended(_)) => telemetry.produced.add("docker_metrics", points as u64),
        Ok(AppendOutcome::Full) => telemetry.dropped.add("buffer_full", points as u64),
        Ok(AppendOutcome::Failed(message)) => {
            tracing::error!(error = %message, "disk buffer append failed; container metrics dropped");
            telemetry.dropped.add("buffer_failed", points as u64);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Docker 20.10 (cgroup v1, fuse-overlayfs: no blkio entries) with
    /// `curl --unix-socket /var/run/docker.sock http://localhost/containers/ID/stats?stream=false`.
    const CGROUP1: &str = include_str!("testdata/stats-cgroup1.json");

    fn fixture() -> ContainerStatsResponse {
        serde_json::from_str(CGROUP1).unwrap()
    }

    #[test]
    fn values_from_a_captured_answer() {
        let v = values(&fixture(), 1);
        assert_eq!(
            v.time_unix_nano,
            parse_time("2026-11-25T04:01:36.670461858Z").unwrap()
        );
        // total_usage in ns.
        assert_eq!(v.cpu_time_seconds, Some(0.085_824_817));
        // (85824817 - 80593424) ns of CPU over (1543510000000 - 1541500000000) ns of host CPU, times 2 online CPUs.
        let cores = v.cpu_cores.unwrap();
        assert!(
            (cores - 5_231_393.0 / 2_010_000_000.0 * 2.0).abs() < 1e-12,
            "{cores}"
        );
        // usage 2449408 - total_inactive_file 270336.
        assert_eq!(v.memory_bytes, Some(2_179_072));
        assert_eq!(v.network, vec![("eth0".to_owned(), 1112, 0)]);
        assert_eq!(v.disk, vec![]);
    }

    #[test]
    fn cgroup2_memory_blkio_and_missing_samples() {
        let mut stats = fixture();
        let memory = stats.memory_stats.as_mut().unwrap();
        memory.stats = Some([("inactive_file".to_owned(), 449_408)].into());
        stats.blkio_stats = Some(
            serde_json::from_value(serde_json::json!({"io_service_bytes_recursive": [
                {"major": 8, "minor": 0, "op": "read", "value": 4096},
                {"major": 8, "minor": 0, "op": "write", "value": 512},
                {"major": 8, "minor": 16, "op": "Read", "value": 1},
                {"major": 8, "minor": 16, "op": "Total", "value": 1},
            ]}))
            .unwrap(),
        );
        // A one-shot answer has no previous sample.
        stats.precpu_stats = Some(Default::default());
        stats.read = None;
        let v = values(&stats, 42);
        assert_eq!(v.memory_bytes, Some(2_000_000));
        assert_eq!(
            v.disk,
            vec![("8:0".to_owned(), 4096, 512), ("8:16".to_owned(), 1, 0)]
        );
        assert_eq!(v.cpu_cores, None);
        assert_eq!(v.time_unix_nano, 42);
    }

    #[test]
    fn metrics_carry_semantic_names_types_and_attributes() {
        let v = values(&fixture(), 1);
        let metrics = metrics(&v, 7);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "container.cpu.time",
                "container.cpu.usage",
                "container.memory.usage",
                "container.network.io"
            ]
        );
        assert_eq!(count_points(&metrics), 5);
        let Some(metric::Data::Sum(network)) = &metrics[3].data else {
            panic!("network is a sum")
        };
        assert!(network.is_monotonic);
        assert_eq!(
            network.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let receive = &network.data_points[0];
        assert_eq!(receive.start_time_unix_nano, 7);
        assert_eq!(
            receive.attributes,
            vec![
                kv("network.io.direction", "receive"),
                kv("network.interface.name", "eth0")
            ]
        );
        assert_eq!(
            receive.value,
            Some(number_data_point::Value::AsDouble(1112.0))
        );
        assert!(matches!(metrics[2].data, Some(metric::Data::Gauge(_))));
    }
}
