//! Turns one reading of the machine into an OTLP `ExportMetricsServiceRequest`, with the metric names, units and
//! attributes of the OpenTelemetry semantic conventions (as the Collector's `hostmetrics` receiver emits them).

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::Snapshot;
use super::procfs::{CpuTimes, DiskStats, FsUsage, Mount, NetDev, cpu_utilization};
use crate::sources::{agent_scope, kv};

/// A data point's attributes and value.
type Point = (Vec<KeyValue>, number_data_point::Value);

/// Builds the request for `snapshot`; CPU utilization needs the CPU times of the previous collection. Returns the
/// request and its number of data points. A metric whose input is missing from the snapshot is left out.
pub fn build_request(
    snapshot: &Snapshot,
    previous_cpu: Option<&CpuTimes>,
    resource: &[KeyValue],
) -> (ExportMetricsServiceRequest, u32) {
    let mut out = Metrics {
        time: snapshot.time_unix_nanos,
        // Cumulative sums count since boot; 0 means "unknown" in OTLP.
        start: snapshot
            .stat
            .boot_time_secs
            .map_or(0, |secs| secs.saturating_mul(1_000_000_000)),
        metrics: Vec::new(),
        points: 0,
    };
    cpu(&mut out, snapshot, previous_cpu);
    memory(&mut out, snapshot);
    filesystems(&mut out, &snapshot.filesystems);
    disks(&mut out, snapshot);
    networks(&mut out, snapshot);
    processes(&mut out, snapshot);
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(agent_scope()),
                metrics: out.metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    (request, out.points)
}

fn cpu(out: &mut Metrics, snapshot: &Snapshot, previous: Option<&CpuTimes>) {
    let shares = previous
        .zip(snapshot.stat.cpu.as_ref())
        .and_then(|(before, now)| cpu_utilization(before, now))
        .unwrap_or_default();
    out.gauge(
        "system.cpu.utilization",
        "1",
        "Share of the time of all CPUs spent in each mode since the previous collection.",
        shares
            .into_iter()
            .map(|(mode, share)| (vec![kv("cpu.mode", mode)], double(share)))
            .collect(),
    );
    out.sum(
        "system.cpu.logical.count",
        "{cpu}",
        "Online logical CPUs.",
        false,
        snapshot
            .stat
            .logical_cpus
            .map(|n| (vec![], int(n)))
            .into_iter()
            .collect(),
    );
    if let Some(load) = snapshot.load {
        for (name, value) in [
            ("system.cpu.load_average.1m", load.one),
            ("system.cpu.load_average.5m", load.five),
            ("system.cpu.load_average.15m", load.fifteen),
        ] {
            out.gauge(
                name,
                "{thread}",
                "Average number of runnable and uninterruptible tasks.",
                vec![(vec![], double(value))],
            );
        }
    }
}

fn memory(out: &mut Metrics, snapshot: &Snapshot) {
    let memory = &snapshot.memory;
    if let (Some(total), Some(states)) = (memory.total, memory.memory_states()) {
        states_and_shares(
            out,
            ("system.memory.usage", "system.memory.utilization"),
            "system.memory.state",
            (
                "Memory in each state; the states add up to the total.",
                "Share of the total memory in each state.",
            ),
            total,
            &states,
        );
    }
    out.sum(
        "system.memory.limit",
        "By",
        "Total memory (MemTotal).",
        false,
        memory
            .total
            .map(|total| (vec![], int(total)))
            .into_iter()
            .collect(),
    );
    if let (Some(total), Some(states)) = (memory.swap_total, memory.swap_states()) {
        states_and_shares(
            out,
            ("system.paging.usage", "system.paging.utilization"),
            "system.paging.state",
            (
                "Swap space used and free.",
                "Share of the swap space used and free.",
            ),
            total,
            &states,
        );
    }
}

/// A usage sum in bytes per state and, when `total` is known, the share of each state as a gauge.
fn states_and_shares<S: AsRef<str>>(
    out: &mut Metrics,
    (usage, utilization): (&str, &str),
    attribute: &str,
    (usage_help, utilization_help): (&str, &str),
    total: u64,
    states: &[(S, u64)],
) {
    out.sum(
        usage,
        "By",
        usage_help,
        false,
        states
            .iter()
            .map(|(state, bytes)| (vec![kv(attribute, state.as_ref())], int(*bytes)))
            .collect(),
    );
    if total > 0 {
        out.gauge(
            utilization,
            "1",
            utilization_help,
            states
                .iter()
                .map(|(state, bytes)| {
                    let share = *bytes as f64 / total as f64;
                    (vec![kv(attribute, state.as_ref())], double(share))
                })
                .collect(),
        );
    }
}

fn filesystems(out: &mut Metrics, filesystems: &[(Mount, FsUsage)]) {
    let attributes = |mount: &Mount| {
        vec![
            kv("system.device", &mount.device),
            kv("system.filesystem.mountpoint", &mount.mountpoint),
            kv("system.filesystem.type", &mount.fs_type),
            kv(
                "system.filesystem.mode",
                if mount.read_only { "ro" } else { "rw" },
            ),
        ]
    };
    let mut usage = Vec::new();
    let mut utilization = Vec::new();
    for (mount, space) in filesystems {
        for (state, bytes) in [
            ("used", space.used),
            ("free", space.free),
            ("reserved", space.reserved),
        ] {
            let mut attributes = attributes(mount);
            attributes.push(kv("system.filesystem.state", state));
            usage.push((attributes, int(bytes)));
        }
        if let Some(share) = space.utilization() {
            utilization.push((attributes(mount), double(share)));
        }
    }
    out.sum(
        "system.filesystem.usage",
        "By",
        "Filesystem space used, free for users and reserved for root.",
        false,
        usage,
    );
    out.gauge(
        "system.filesystem.utilization",
        "1",
        "Used space as a share of the space users can have (used / (used + free)).",
        utilization,
    );
}

fn disks(out: &mut Metrics, snapshot: &Snapshot) {
    let per_direction = |read: fn(&DiskStats) -> u64, write: fn(&DiskStats) -> u64| {
        snapshot
            .disks
            .iter()
            .flat_map(|disk| {
                [("read", read(disk)), ("write", write(disk))].map(|(direction, value)| {
                    (
                        vec![
                            kv("system.device", &disk.device),
                            kv("disk.io.direction", direction),
                        ],
                        int(value),
                    )
                })
            })
            .collect()
    };
    out.sum(
        "system.disk.io",
        "By",
        "Bytes read from and written to each block device.",
        true,
        per_direction(|d| d.read_bytes, |d| d.written_bytes),
    );
    out.sum(
        "system.disk.operations",
        "{operation}",
        "Reads and writes completed by each block device.",
        true,
        per_direction(|d| d.reads, |d| d.writes),
    );
}

fn networks(out: &mut Metrics, snapshot: &Snapshot) {
    let per_direction = |receive: fn(&NetDev) -> u64, transmit: fn(&NetDev) -> u64| {
        snapshot
            .networks
            .iter()
            .flat_map(|dev| {
                [("receive", receive(dev)), ("transmit", transmit(dev))].map(
                    |(direction, value)| {
                        (
                            vec![
                                kv("network.interface.name", &dev.interface),
                                kv("network.io.direction", direction),
                            ],
                            int(value),
                        )
                    },
                )
            })
            .collect()
    };
    out.sum(
        "system.network.io",
        "By",
        "Bytes received and sent by each network interface.",
        true,
        per_direction(|d| d.receive_bytes, |d| d.transmit_bytes),
    );
    out.sum(
        "system.network.packets",
        "{packet}",
        "Packets received and sent by each network interface.",
        true,
        per_direction(|d| d.receive_packets, |d| d.transmit_packets),
    );
    out.sum(
        "system.network.errors",
        "{error}",
        "Receive and transmit errors of each network interface.",
        true,
        per_direction(|d| d.receive_errors, |d| d.transmit_errors),
    );
    out.sum(
        "system.network.dropped",
        "{packet}",
        "Packets dropped on receive and transmit by each network interface.",
        true,
        per_direction(|d| d.receive_dropped, |d| d.transmit_dropped),
    );
}

fn processes(out: &mut Metrics, snapshot: &Snapshot) {
    out.sum(
        "system.process.count",
        "{process}",
        "Processes in each state.",
        false,
        snapshot
            .processes
            .iter()
            .map(|(status, n)| (vec![kv("process.status", status)], int(*n)))
            .collect(),
    );
    out.sum(
        "system.process.created",
        "{process}",
        "Processes and threads created since boot.",
        true,
        snapshot
            .stat
            .processes_created
            .map(|n| (vec![], int(n)))
            .into_iter()
            .collect(),
    );
}

/// The metrics of one request being built.
struct Metrics {
    time: u64,
    start: u64,
    metrics: Vec<Metric>,
    points: u32,
}

impl Metrics {
    fn gauge(&mut self, name: &str, unit: &str, description: &str, points: Vec<Point>) {
        if points.is_empty() {
            return;
        }
        let data_points = self.data_points(points, 0);
        self.push(
            name,
            unit,
            description,
            metric::Data::Gauge(Gauge { data_points }),
        );
    }

    /// A cumulative sum: a counter when `monotonic`, an up-down counter otherwise.
    fn sum(
        &mut self,
        name: &str,
        unit: &str,
        description: &str,
        monotonic: bool,
        points: Vec<Point>,
    ) {
        if points.is_empty() {
            return;
        }
        let data_points = self.data_points(points, self.start);
        self.push(
            name,
            unit,
            description,
            metric::Data::Sum(Sum {
                data_points,
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: monotonic,
            }),
        );
    }

    fn data_points(&mut self, points: Vec<Point>, start: u64) -> Vec<NumberDataPoint> {
        self.points = self
            .points
            .saturating_add(u32::try_from(points.len()).unwrap_or(u32::MAX));
        points
            .into_iter()
            .map(|(attributes, value)| NumberDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: self.time,
                value: Some(value),
                ..Default::default()
            })
            .collect()
    }

    fn push(&mut self, name: &str, unit: &str, description: &str, data: metric::Data) {
        self.metrics.push(Metric {
            name: name.to_owned(),
            description: description.to_owned(),
            unit: unit.to_owned(),
            data: Some(data),
            ..Default::default()
        });
    }
}

fn int(value: u64) -> number_data_point::Value {
    number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX))
}

fn double(value: f64) -> number_data_point::Value {
    number_data_point::Value::AsDouble(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use opentelemetry_proto::tonic::common::v1::any_value;

    use super::*;
    use crate::sources::host::procfs::{
        parse_diskstats, parse_loadavg, parse_meminfo, parse_net_dev, parse_stat,
    };

    const BOOT_SECS: u64 = 1_700_000_000;
    const NOW: u64 = 1_800_000_000_000_000_000;

    fn snapshot() -> Snapshot {
        Snapshot {
            time_unix_nanos: NOW,
            stat: parse_stat(&format!(
                "cpu  100 0 50 800 10 0 5 0 0 0\ncpu0 50 0 25 400 5 0 2 0 0 0\ncpu1 50 0 25 400 5 0 3 0 0 0\n\
                 btime {BOOT_SECS}\nprocesses 42\n"
            )),
            load: parse_loadavg("0.5 0.25 0.125 1/100 5\n"),
            memory: parse_meminfo(
                "MemTotal: 1000 kB\nMemFree: 400 kB\nBuffers: 100 kB\nCached: 200 kB\nSReclaimable: 50 kB\n\
                 SwapTotal: 100 kB\nSwapFree: 75 kB\n",
            ),
            disks: parse_diskstats("   8 0 sda 10 0 20 0 5 0 40 0 0 0 0\n"),
            networks: parse_net_dev("  eth0: 1 2 3 4 0 0 0 0 5 6 7 8 0 0 0 0\n"),
            filesystems: vec![(
                Mount {
                    device: "/dev/sda1".into(),
                    mountpoint: "/".into(),
                    fs_type: "ext4".into(),
                    root: "/".into(),
                    read_only: false,
                },
                FsUsage::from_statvfs(100, 40, 30, 4096).unwrap(),
            )],
            processes: [("running", 2), ("sleeping", 10)].into_iter().collect(),
        }
    }

    fn metrics(request: &ExportMetricsServiceRequest) -> &[Metric] {
        &request.resource_metrics[0].scope_metrics[0].metrics
    }

    fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        metrics(request)
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in the request"))
    }

    fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
        match value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("not a string attribute: {other:?}"),
        }
    }

    /// The data points of `name` as (attributes, value), with the gauge or sum they belong to.
    fn points(
        request: &ExportMetricsServiceRequest,
        name: &str,
    ) -> Vec<(BTreeMap<String, String>, f64)> {
        let data_points = match &metric(request, name).data {
            Some(metric::Data::Gauge(g)) => &g.data_points,
            Some(metric::Data::Sum(s)) => &s.data_points,
            other => panic!("{name} is {other:?}"),
        };
        data_points
            .iter()
            .map(|p| {
                let attributes = p
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect();
                let value = match p.value {
                    Some(number_data_point::Value::AsInt(v)) => v as f64,
                    Some(number_data_point::Value::AsDouble(v)) => v,
                    None => panic!("{name} has a point without value"),
                };
                (attributes, value)
            })
            .collect()
    }

    fn value(
        request: &ExportMetricsServiceRequest,
        name: &str,
        attributes: &[(&str, &str)],
    ) -> f64 {
        let want: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        points(request, name)
            .into_iter()
            .filter(|(attrs, _)| want.iter().all(|(k, v)| attrs.get(k) == Some(v)))
            .map(|(_, v)| v)
            .next()
            .unwrap_or_else(|| panic!("no {name} point with {attributes:?}"))
    }

    #[test]
    fn builds_every_metric_with_its_attributes() {
        let snapshot = snapshot();
        let before = CpuTimes {
            user: 80,
            system: 40,
            idle: 730,
            ..snapshot.stat.cpu.unwrap()
        };
        let resource = [kv("host.name", "node-1"), kv("os.type", "linux")];
        let (request, count) = build_request(&snapshot, Some(&before), &resource);

        let resource_metrics = &request.resource_metrics[0];
        assert_eq!(
            resource_metrics.resource.as_ref().unwrap().attributes,
            resource
        );
        assert_eq!(resource_metrics.scope_metrics[0].scope, Some(agent_scope()));
        let names: Vec<&str> = metrics(&request).iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system.cpu.utilization",
                "system.cpu.logical.count",
                "system.cpu.load_average.1m",
                "system.cpu.load_average.5m",
                "system.cpu.load_average.15m",
                "system.memory.usage",
                "system.memory.utilization",
                "system.memory.limit",
                "system.paging.usage",
                "system.paging.utilization",
                "system.filesystem.usage",
                "system.filesystem.utilization",
                "system.disk.io",
                "system.disk.operations",
                "system.network.io",
                "system.network.packets",
                "system.network.errors",
                "system.network.dropped",
                "system.process.count",
                "system.process.created",
            ]
        );
        let all_points: usize = names.iter().map(|n| points(&request, n).len()).sum();
        assert_eq!(count as usize, all_points);

        // 100 ticks passed: user 20, system 10, idle 70.
        assert_eq!(
            value(&request, "system.cpu.utilization", &[("cpu.mode", "user")]),
            0.2
        );
        assert_eq!(
            value(&request, "system.cpu.utilization", &[("cpu.mode", "idle")]),
            0.7
        );
        assert_eq!(points(&request, "system.cpu.utilization").len(), 8);
        assert_eq!(value(&request, "system.cpu.logical.count", &[]), 2.0);
        assert_eq!(value(&request, "system.cpu.load_average.15m", &[]), 0.125);
        let kib = |n: f64| n * 1024.0;
        let memory = |state| {
            value(
                &request,
                "system.memory.usage",
                &[("system.memory.state", state)],
            )
        };
        assert_eq!(memory("used"), kib(250.0));
        assert_eq!(memory("free"), kib(400.0));
        assert_eq!(memory("buffers"), kib(100.0));
        assert_eq!(memory("cached"), kib(250.0));
        assert_eq!(
            value(
                &request,
                "system.memory.utilization",
                &[("system.memory.state", "free")]
            ),
            0.4
        );
        assert_eq!(value(&request, "system.memory.limit", &[]), kib(1000.0));
        assert_eq!(
            value(
                &request,
                "system.paging.usage",
                &[("system.paging.state", "used")]
            ),
            kib(25.0)
        );
        assert_eq!(
            value(
                &request,
                "system.paging.utilization",
                &[("system.paging.state", "used")]
            ),
            0.25
        );
        let fs = [
            ("system.device", "/dev/sda1"),
            ("system.filesystem.mountpoint", "/"),
            ("system.filesystem.type", "ext4"),
            ("system.filesystem.mode", "rw"),
        ];
        for (state, blocks) in [("used", 60.0), ("free", 30.0), ("reserved", 10.0)] {
            let mut attributes = fs.to_vec();
            attributes.push(("system.filesystem.state", state));
            assert_eq!(
                value(&request, "system.filesystem.usage", &attributes),
                blocks * 4096.0
            );
        }
        assert_eq!(
            value(&request, "system.filesystem.utilization", &fs),
            60.0 / 90.0
        );
        let disk = |name, direction| {
            value(
                &request,
                name,
                &[("system.device", "sda"), ("disk.io.direction", direction)],
            )
        };
        assert_eq!(disk("system.disk.io", "read"), 20.0 * 512.0);
        assert_eq!(disk("system.disk.io", "write"), 40.0 * 512.0);
        assert_eq!(disk("system.disk.operations", "read"), 10.0);
        assert_eq!(disk("system.disk.operations", "write"), 5.0);
        let net = |name, direction| {
            value(
                &request,
                name,
                &[
                    ("network.interface.name", "eth0"),
                    ("network.io.direction", direction),
                ],
            )
        };
        assert_eq!(net("system.network.io", "receive"), 1.0);
        assert_eq!(net("system.network.io", "transmit"), 5.0);
        assert_eq!(net("system.network.packets", "transmit"), 6.0);
        assert_eq!(net("system.network.errors", "receive"), 3.0);
        assert_eq!(net("system.network.dropped", "transmit"), 8.0);
        assert_eq!(
            value(
                &request,
                "system.process.count",
                &[("process.status", "running")]
            ),
            2.0
        );
        assert_eq!(value(&request, "system.process.created", &[]), 42.0);
    }

    #[test]
    fn sums_are_cumulative_since_boot_and_gauges_have_no_start() {
        let snapshot = snapshot();
        let (request, _) = build_request(&snapshot, snapshot.stat.cpu.as_ref(), &[]);
        let counters = [
            "system.disk.io",
            "system.disk.operations",
            "system.network.io",
            "system.network.packets",
            "system.network.errors",
            "system.network.dropped",
            "system.process.created",
        ];
        for m in metrics(&request) {
            match m.data.as_ref().unwrap() {
                metric::Data::Sum(sum) => {
                    assert_eq!(
                        sum.aggregation_temporality,
                        AggregationTemporality::Cumulative as i32
                    );
                    assert_eq!(
                        sum.is_monotonic,
                        counters.contains(&m.name.as_str()),
                        "{}",
                        m.name
                    );
                    for p in &sum.data_points {
                        assert_eq!(
                            p.start_time_unix_nano,
                            BOOT_SECS * 1_000_000_000,
                            "{}",
                            m.name
                        );
                        assert_eq!(p.time_unix_nano, NOW);
                    }
                }
                metric::Data::Gauge(gauge) => {
                    assert!(!counters.contains(&m.name.as_str()), "{}", m.name);
                    for p in &gauge.data_points {
                        assert_eq!(p.start_time_unix_nano, 0, "{}", m.name);
                        assert_eq!(p.time_unix_nano, NOW);
                    }
                }
                other => panic!("{} is {other:?}", m.name),
            }
            assert!(
                !m.unit.is_empty() && !m.description.is_empty(),
                "{}",
                m.name
            );
        }
        assert!(
            counters
                .iter()
                .all(|name| metrics(&request).iter().any(|m| m.name == *name))
        );
    }

    #[test]
    fn missing_inputs_leave_their_metrics_out() {
        // No previous reading: no CPU utilization, the rest is there.
        let (request, _) = build_request(&snapshot(), None, &[]);
        assert!(
            metrics(&request)
                .iter()
                .all(|m| m.name != "system.cpu.utilization")
        );
        assert!(
            metrics(&request)
                .iter()
                .any(|m| m.name == "system.memory.usage")
        );
        // Nothing could be read: an empty request, and no point to send.
        let (request, count) = build_request(&Snapshot::default(), None, &[]);
        assert_eq!(count, 0);
        assert!(metrics(&request).is_empty());
        // No swap configured: usage (zeros) but no utilization.
        let mut no_swap = snapshot();
        no_swap.memory = parse_meminfo("SwapTotal: 0 kB\nSwapFree: 0 kB\n");
        let (request, _) = build_request(&no_swap, None, &[]);
        assert_eq!(points(&request, "system.paging.usage").len(), 2);
        assert!(
            metrics(&request)
                .iter()
                .all(|m| m.name != "system.paging.utilization")
        );
        assert!(
            metrics(&request)
                .iter()
                .all(|m| m.name != "system.memory.usage")
        );
    }
}
