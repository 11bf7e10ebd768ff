//! Host metrics from `/proc` and `statvfs`: CPU per mode, load, memory, swap, filesystem usage, disk and network
//! IO, processes.
//!
//! Every `interval` (the first time at start) the source reads the machine on a blocking thread ([`Snapshot::read`]),
//! builds one `ExportMetricsServiceRequest` ([`request::build_request`]) and appends it to the disk buffer. Parsing is
//! pure functions over the text of the files ([`procfs`]); whatever is missing or odd costs its metric only.
//!
//! **CPU utilization needs two readings**: the first collection only takes the baseline, so
//! `system.cpu.utilization` appears from the second collection on and covers the time since the previous one.
//!
//! **A full buffer drops the sample** (metrics are periodic: the next one says the same thing, fresher). Drops are
//! counted as `buffer_full`, and the warning is logged once per full episode, not once per interval.

pub mod procfs;
pub mod request;

use gantry_support::CancellationToken;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::time::MissedTickBehavior;

use crate::buffer::{AppendOutcome, Signal};
use crate::sources::Sink;
use crate::telemetry::{Telemetry, now_unix_nanos};
use procfs::{
    CpuTimes, DiskStats, FsUsage, LoadAvg, MemInfo, Mount, NetDev, Stat, is_number,
    parse_diskstats, parse_loadavg, parse_meminfo, parse_mountinfo, parse_net_dev,
    parse_process_state, parse_stat, process_status, real_filesystems,
};

/// The source name in the agent's `produced` counter.
const SOURCE: &str = "host_metrics";

/// Collects every `interval` until `stop` turns true, appending one `ExportMetricsServiceRequest` per collection.
pub async fn run(
    sink: Sink,
    resource: Vec<KeyValue>,
    interval: Duration,
    telemetry: Arc<Telemetry>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut previous_cpu: Option<CpuTimes> = None;
    // Inside a "buffer full" episode: warned already.
    let mut buffer_full = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let reading = tokio::task::spawn_blocking(|| Snapshot::read(Path::new("/proc")));
        // A hung `statvfs` (a dead network mount) must not hold up the shutdown.
        let snapshot = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            joined = reading => match joined {
                Ok(snapshot) => snapshot,
                Err(error) => {
                    tracing::error!(error = %error, "reading host metrics failed");
                    continue;
                }
            },
        };
        let (request, points) = request::build_request(&snapshot, previous_cpu.as_ref(), &resource);
        if let Some(cpu) = snapshot.stat.cpu {
            previous_cpu = Some(cpu);
        }
        if points == 0 {
            continue;
        }
        let outcome = sink
            .append(Signal::Metrics, request.encode_to_vec(), points)
            .await;
        match outcome {
            Ok(AppendOutcome::Appended(_)) => {
                telemetry.produced.add(SOURCE, points.into());
                if buffer_full {
                    tracing::info!("the disk buffer has room again: host metrics are kept again");
                    buffer_full = false;
                }
            }
            Ok(AppendOutcome::Full) => {
                telemetry.dropped.add("buffer_full", points.into());
                if !buffer_full {
                    tracing::warn!(
                        points,
                        "the disk buffer is full: host metrics samples are dropped until the shipper makes room"
                    );
                    buffer_full = true;
                }
            }
            Ok(AppendOutcome::Failed(message)) => {
                telemetry.dropped.add("buffer_failed", points.into());
                tracing::error!(error = %message, points, "the disk buffer failed: host metrics sample dropped");
            }
            Err(_stopped) => {
                tracing::debug!("the buffer writer stopped: host metrics source ends");
                return;
            }
        }
    }
    tracing::debug!("host metrics source stopped");
}

/// Everything one collection read from the machine. What could not be read is `None` or empty.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// When the reading was taken.
    pub time_unix_nanos: u64,
    /// `/proc/stat`.
    pub stat: Stat,
    /// `/proc/loadavg`.
    pub load: Option<LoadAvg>,
    /// `/proc/meminfo`.
    pub memory: MemInfo,
    /// `/proc/diskstats`, without loop and RAM disks.
    pub disks: Vec<DiskStats>,
    /// `/proc/net/dev`, without `lo`.
    pub networks: Vec<NetDev>,
    /// Real filesystems of `/proc/self/mountinfo` and their `statvfs`.
    pub filesystems: Vec<(Mount, FsUsage)>,
    /// Processes per `process.status`; empty when `/proc` could not be listed.
    pub processes: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    /// Reads the files under `proc` (the machine's `/proc`) and `statvfs` of each real filesystem. Blocking.
    pub fn read(proc: &Path) -> Snapshot {
        let text = |name: &str| std::fs::read_to_string(proc.join(name)).unwrap_or_default();
        let filesystems = real_filesystems(parse_mountinfo(&text("self/mountinfo")))
            .into_iter()
            .filter_map(|mount| {
                let usage = statvfs(&mount.mountpoint)?;
                Some((mount, usage))
            })
            .collect();
        Snapshot {
            time_unix_nanos: now_unix_nanos(),
            stat: parse_stat(&text("stat")),
            load: parse_loadavg(&text("loadavg")),
            memory: parse_meminfo(&text("meminfo")),
            disks: parse_diskstats(&text("diskstats")),
            networks: parse_net_dev(&text("net/dev")),
            filesystems,
            processes: count_processes(proc),
        }
    }
}

/// Counts the processes under `proc` per `process.status`. The usual states are always present (0 when none is
/// in them), so that their series have no gaps; `unknown` only when some process is in a state not known here.
fn count_processes(proc: &Path) -> BTreeMap<&'static str, u64> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return BTreeMap::new();
    };
    let mut counts: BTreeMap<&'static str, u64> = [
        "running", "sleeping", "blocked", "idle", "stopped", "defunct",
    ]
    .into_iter()
    .map(|status| (status, 0))
    .collect();
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(is_number) {
            continue;
        }
        // A process may exit between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(state) = parse_process_state(&stat) {
            *counts.entry(process_status(state)).or_default() += 1;
        }
    }
    counts
}

/// Space of the filesystem mounted at `mountpoint`; `None` if `statvfs` fails or reports a size of 0.
fn statvfs(mountpoint: &str) -> Option<FsUsage> {
    let path = std::ffi::CString::new(mountpoint).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stats` points to memory the size of
    // a `statvfs`, which the call fills in full when it returns 0 (and only then is it read).
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    FsUsage::from_statvfs(
        stats.f_blocks as u64,
        stats.f_bfree as u64,
        stats.f_bavail as u64,
        stats.f_frsize as u64,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
    use tokio::sync::mpsc;

    use super::*;
    use crate::buffer::{AppendRequest, BufferRecord};
    use crate::sources::kv;

    /// Every metric the source emits on a machine with swap configured, a disk and a network interface.
    const ALL_METRICS: [&str; 19] = [
        "system.cpu.utilization",
        "system.cpu.logical.count",
        "system.cpu.load_average.1m",
        "system.cpu.load_average.5m",
        "system.cpu.load_average.15m",
        "system.memory.usage",
        "system.memory.utilization",
        "system.memory.limit",
        "system.paging.usage",
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
    ];

    fn names(request: &ExportMetricsServiceRequest) -> BTreeSet<&str> {
        request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| m.name.as_str())
            .collect()
    }

    fn values(request: &ExportMetricsServiceRequest, name: &str) -> Vec<f64> {
        let metric = request.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name}"));
        let points = match &metric.data {
            Some(metric::Data::Gauge(g)) => &g.data_points,
            Some(metric::Data::Sum(s)) => &s.data_points,
            other => panic!("{name} is {other:?}"),
        };
        points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                Some(number_data_point::Value::AsDouble(v)) => v,
                None => panic!("{name}: point without value"),
            })
            .collect()
    }

    /// Reads this machine until its CPU counters moved, so that the second reading has a utilization.
    fn two_readings() -> (Snapshot, Snapshot) {
        let first = Snapshot::read(Path::new("/proc"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let second = Snapshot::read(Path::new("/proc"));
            if second.stat.cpu.map(|c| c.total()) != first.stat.cpu.map(|c| c.total()) {
                return (first, second);
            }
            assert!(
                Instant::now() < deadline,
                "the CPU counters of /proc/stat never moved"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn collecting_twice_on_this_machine_gives_every_metric() {
        let (first, second) = two_readings();
        let (request, count) =
            request::build_request(&second, first.stat.cpu.as_ref(), &[kv("host.name", "here")]);
        let found = names(&request);
        let proc_text =
            |name: &str| std::fs::read_to_string(Path::new("/proc").join(name)).unwrap();
        // Containers may show no real filesystem (an overlay root) or no block device: only then may those
        // metrics be missing.
        let has_filesystem =
            !real_filesystems(parse_mountinfo(&proc_text("self/mountinfo"))).is_empty();
        let has_disk = !parse_diskstats(&proc_text("diskstats")).is_empty();
        for name in ALL_METRICS {
            let optional = (name.starts_with("system.filesystem.") && !has_filesystem)
                || (name.starts_with("system.disk.") && !has_disk);
            assert!(
                found.contains(name) || optional,
                "{name} missing from {found:?}"
            );
        }
        assert!(count as usize >= found.len());

        let shares = values(&request, "system.cpu.utilization");
        assert_eq!(shares.len(), 8);
        assert!(shares.iter().all(|v| (0.0..=1.0).contains(v)), "{shares:?}");
        assert!(
            (shares.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{shares:?}"
        );
        let mem_total = parse_meminfo(&proc_text("meminfo")).total.unwrap() as f64;
        let usage: f64 = values(&request, "system.memory.usage").iter().sum();
        assert!(
            usage > 0.0 && usage <= mem_total,
            "usage {usage} > MemTotal {mem_total}"
        );
        assert!(
            values(&request, "system.memory.utilization")
                .iter()
                .all(|v| (0.0..=1.0).contains(v))
        );
        assert!(values(&request, "system.cpu.load_average.1m")[0] >= 0.0);
        assert!(values(&request, "system.cpu.logical.count")[0] >= 1.0);
        assert!(values(&request, "system.process.count").iter().sum::<f64>() >= 1.0);
    }

    /// A stand-in for the buffer writer that answers with `outcomes` in turn and keeps the records.
    fn fake_writer(
        outcomes: Vec<AppendOutcome>,
    ) -> (Sink, tokio::task::JoinHandle<Vec<BufferRecord>>) {
        let (appends, mut requests) = mpsc::channel::<AppendRequest>(1);
        let writer = tokio::spawn(async move {
            let mut records = Vec::new();
            for outcome in outcomes {
                let Some(request) = requests.recv().await else {
                    break;
                };
                records.push(request.record);
                let _ = request.reply.send(outcome);
            }
            records
        });
        (Sink::new(appends), writer)
    }

    #[tokio::test]
    async fn appends_each_collection_and_counts_what_the_buffer_refused() {
        let telemetry = Arc::new(Telemetry::new(&[]));
        let (sink, writer) = fake_writer(vec![
            AppendOutcome::Full,
            AppendOutcome::Full,
            AppendOutcome::Appended(1),
            AppendOutcome::Failed("disk gone".into()),
            AppendOutcome::Appended(2),
        ]);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let source = tokio::spawn(run(
            sink,
            vec![kv("host.name", "here")],
            Duration::from_millis(20),
            telemetry.clone(),
            stopped,
        ));
        let records = tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("five collections")
            .unwrap();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), source)
            .await
            .expect("the source stops when told")
            .unwrap();

        assert_eq!(records.len(), 5);
        let mut with_cpu = 0;
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.signal, Signal::Metrics);
            let request = ExportMetricsServiceRequest::decode(record.payload.as_slice()).unwrap();
            let points: usize = request.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(|m| match &m.data {
                    Some(metric::Data::Gauge(g)) => g.data_points.len(),
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(record.records as usize, points);
            let has_cpu = names(&request).contains("system.cpu.utilization");
            assert!(
                !(i == 0 && has_cpu),
                "the first collection is only the CPU baseline"
            );
            with_cpu += usize::from(has_cpu);
        }
        assert!(
            with_cpu > 0,
            "no collection after the first had CPU utilization"
        );
        let points = |i: usize| u64::from(records[i].records);
        let dropped = telemetry.dropped.snapshot();
        assert_eq!(dropped.get("buffer_full"), Some(&(points(0) + points(1))));
        assert_eq!(dropped.get("buffer_failed"), Some(&points(3)));
        assert_eq!(
            telemetry.produced.snapshot().get(SOURCE),
            Some(&(points(2) + points(4)))
        );
    }

    #[tokio::test]
    async fn ends_when_the_writer_stops_or_when_told() {
        let telemetry = Arc::new(Telemetry::new(&[]));
        // The writer answers once, then goes away: the source ends by itself.
        let (sink, writer) = fake_writer(vec![AppendOutcome::Appended(1)]);
        let stopped = CancellationToken::new();
        let source = tokio::spawn(run(
            sink,
            Vec::new(),
            Duration::from_millis(20),
            telemetry.clone(),
            stopped,
        ));
        assert_eq!(writer.await.unwrap().len(), 1);
        tokio::time::timeout(Duration::from_secs(30), source)
            .await
            .expect("the source ends once the writer is gone")
            .unwrap();

        // Told to stop before its first tick: it returns without collecting.
        let (sink, writer) = fake_writer(vec![AppendOutcome::Appended(1)]);
        let stopped = CancellationToken::new();
        stopped.cancel();
        tokio::time::timeout(
            Duration::from_secs(10),
            run(
                sink,
                Vec::new(),
                Duration::from_secs(3600),
                telemetry,
                stopped,
            ),
        )
        .await
        .expect("the source stops at once");
        assert!(writer.await.unwrap().is_empty());
    }
}
