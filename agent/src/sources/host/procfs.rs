//! Parsers for the `/proc` files the host metrics source reads: pure functions over text that skip what they do
//! not understand instead of failing, so that an odd kernel loses one metric, not the whole collection.

/// Time all CPUs spent in each mode since boot, in clock ticks, from the `cpu` line of `/proc/stat`.
///
/// `guest` and `guest_nice` are left out: the kernel already counts them in `user` and `nice`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    pub user: u64,
    pub nice: u64,
    pub system: u64,
    pub idle: u64,
    pub iowait: u64,
    pub irq: u64,
    pub softirq: u64,
    pub steal: u64,
}

impl CpuTimes {
    /// `(cpu.mode, ticks)` for every mode.
    pub fn modes(&self) -> [(&'static str, u64); 8] {
        [
            ("user", self.user),
            ("nice", self.nice),
            ("system", self.system),
            ("idle", self.idle),
            ("iowait", self.iowait),
            ("irq", self.irq),
            ("softirq", self.softirq),
            ("steal", self.steal),
        ]
    }

    /// Ticks in every mode together.
    pub fn total(&self) -> u64 {
        self.modes()
            .iter()
            .fold(0u64, |sum, (_, ticks)| sum.saturating_add(*ticks))
    }
}

/// What the host metrics use from `/proc/stat`; a field is `None` when its line is missing or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// The `cpu` line: every CPU together.
    pub cpu: Option<CpuTimes>,
    /// Number of `cpuN` lines (online logical CPUs).
    pub logical_cpus: Option<u64>,
    /// `btime`: boot time in seconds since the Unix epoch.
    pub boot_time_secs: Option<u64>,
    /// `processes`: forks since boot.
    pub processes_created: Option<u64>,
}

/// Parses `/proc/stat`.
pub fn parse_stat(text: &str) -> Stat {
    let mut stat = Stat::default();
    let mut logical_cpus = 0u64;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let mut single = || fields.next().and_then(|v| v.parse::<u64>().ok());
        match key {
            "cpu" => stat.cpu = parse_cpu_times(line),
            "btime" => stat.boot_time_secs = single(),
            "processes" => stat.processes_created = single(),
            _ if key.strip_prefix("cpu").is_some_and(is_number) => logical_cpus += 1,
            _ => {}
        }
    }
    stat.logical_cpus = (logical_cpus > 0).then_some(logical_cpus);
    stat
}

/// Whether `s` is a non-empty run of ASCII digits (a CPU number, a process id).
pub fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The mode times of one `cpu` line. The first four modes are required; the later ones are 0 on kernels that
/// do not report them.
fn parse_cpu_times(line: &str) -> Option<CpuTimes> {
    let mut values = [0u64; 8];
    let mut fields = line.split_whitespace().skip(1);
    for (i, value) in values.iter_mut().enumerate() {
        match fields.next() {
            Some(field) => *value = field.parse().ok()?,
            None if i >= 4 => break,
            None => return None,
        }
    }
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values;
    Some(CpuTimes {
        user,
        nice,
        system,
        idle,
        iowait,
        irq,
        softirq,
        steal,
    })
}

/// The share of CPU time spent in each mode between two readings, each in `[0, 1]` and summing to 1. `None`
/// when no tick passed between them. A mode whose counter went backwards (the kernel's `iowait` can) counts 0.
pub fn cpu_utilization(
    previous: &CpuTimes,
    current: &CpuTimes,
) -> Option<Vec<(&'static str, f64)>> {
    let deltas: Vec<(&'static str, u64)> = previous
        .modes()
        .iter()
        .zip(current.modes())
        .map(|((_, before), (mode, after))| (mode, after.saturating_sub(*before)))
        .collect();
    let total = deltas
        .iter()
        .fold(0u64, |sum, (_, d)| sum.saturating_add(*d));
    if total == 0 {
        return None;
    }
    Some(
        deltas
            .into_iter()
            .map(|(mode, d)| (mode, d as f64 / total as f64))
            .collect(),
    )
}

/// The three load averages of `/proc/loadavg`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Parses `/proc/loadavg` (`0.42 0.78 0.46 1/106 13894`); `None` unless all three averages are numbers ≥ 0.
pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut fields = text
        .split_whitespace()
        .map(|f| f.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0));
    Some(LoadAvg {
        one: fields.next()??,
        five: fields.next()??,
        fifteen: fields.next()??,
    })
}

/// What the host metrics use from `/proc/meminfo`, in bytes; a field is `None` when its line is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: Option<u64>,
    pub free: Option<u64>,
    pub buffers: Option<u64>,
    pub cached: Option<u64>,
    pub slab_reclaimable: Option<u64>,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

/// Parses `/proc/meminfo` (`MemTotal:       24684092 kB`).
pub fn parse_meminfo(text: &str) -> MemInfo {
    let mut info = MemInfo::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(value) = words.next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let bytes = match words.next() {
            None => value,
            Some("kB") => value.saturating_mul(1024),
            Some(_) => continue,
        };
        let slot = match key.trim() {
            "MemTotal" => &mut info.total,
            "MemFree" => &mut info.free,
            "Buffers" => &mut info.buffers,
            "Cached" => &mut info.cached,
            "SReclaimable" => &mut info.slab_reclaimable,
            "SwapTotal" => &mut info.swap_total,
            "SwapFree" => &mut info.swap_free,
            _ => continue,
        };
        *slot = Some(bytes);
    }
    info
}

impl MemInfo {
    /// `(system.memory.state, bytes)` for used, free, buffers and cached, which add up to `MemTotal`.
    ///
    /// `cached` is the page cache plus reclaimable slab, and `used` is what is left, as the OpenTelemetry
    /// Collector computes it: `MemTotal - MemFree - Buffers - Cached - SReclaimable`. Each state is capped at what
    /// the ones before it left, so odd numbers (as some container views of `/proc` give) never add up to more than
    /// the total. `None` without `MemTotal`, `MemFree`, `Buffers` and `Cached`.
    pub fn memory_states(&self) -> Option<[(&'static str, u64); 4]> {
        let total = self.total?;
        let free = self.free?.min(total);
        let buffers = self.buffers?.min(total - free);
        let cached = self
            .cached?
            .saturating_add(self.slab_reclaimable.unwrap_or(0))
            .min(total - free - buffers);
        let used = total - free - buffers - cached;
        Some([
            ("used", used),
            ("free", free),
            ("buffers", buffers),
            ("cached", cached),
        ])
    }

    /// `(system.paging.state, bytes)` for used and free swap. `None` without `SwapTotal` and `SwapFree`.
    pub fn swap_states(&self) -> Option<[(&'static str, u64); 2]> {
        let total = self.swap_total?;
        let free = self.swap_free?.min(total);
        Some([("used", total - free), ("free", free)])
    }
}

/// Bytes per sector in `/proc/diskstats`, whatever the device's own sector size.
pub const DISKSTATS_SECTOR_BYTES: u64 = 512;

/// One device's line of `/proc/diskstats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskStats {
    pub device: String,
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub written_bytes: u64,
}

/// Parses `/proc/diskstats`, leaving out loop and RAM disks and lines that are too short or not numbers.
pub fn parse_diskstats(text: &str) -> Vec<DiskStats> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let device = *fields.get(2)?;
            if device.starts_with("loop") || device.starts_with("ram") {
                return None;
            }
            let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
            Some(DiskStats {
                device: device.to_owned(),
                reads: number(3)?,
                read_bytes: number(5)?.saturating_mul(DISKSTATS_SECTOR_BYTES),
                writes: number(7)?,
                written_bytes: number(9)?.saturating_mul(DISKSTATS_SECTOR_BYTES),
            })
        })
        .collect()
}

/// One interface's counters from `/proc/net/dev`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDev {
    pub interface: String,
    pub receive_bytes: u64,
    pub receive_packets: u64,
    pub receive_errors: u64,
    pub receive_dropped: u64,
    pub transmit_bytes: u64,
    pub transmit_packets: u64,
    pub transmit_errors: u64,
    pub transmit_dropped: u64,
}

/// Parses `/proc/net/dev`, leaving out the loopback interface `lo`, the two header lines and short lines.
pub fn parse_net_dev(text: &str) -> Vec<NetDev> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let interface = name.trim();
            if interface.is_empty() || interface == "lo" {
                return None;
            }
            let values: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            if values.len() < 16 {
                return None;
            }
            Some(NetDev {
                interface: interface.to_owned(),
                receive_bytes: values[0],
                receive_packets: values[1],
                receive_errors: values[2],
                receive_dropped: values[3],
                transmit_bytes: values[8],
                transmit_packets: values[9],
                transmit_errors: values[10],
                transmit_dropped: values[11],
            })
        })
        .collect()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount source, e.g. `/dev/vda1` (the `system.device` attribute).
    pub device: String,
    /// Where it is mounted, with `\040`-style escapes decoded.
    pub mountpoint: String,
    /// The filesystem type, e.g. `ext4`.
    pub fs_type: String,
    /// The directory of the filesystem that is mounted: `/` unless it is a bind mount of a subdirectory.
    pub root: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Parses `/proc/self/mountinfo`:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
            let options = fields.get(5)?;
            Some(Mount {
                device: unescape(fields.get(separator + 2)?),
                mountpoint: unescape(fields.get(4)?),
                fs_type: fields.get(separator + 1)?.to_string(),
                root: unescape(fields.get(3)?),
                read_only: options.split(',').any(|o| o == "ro"),
            })
        })
        .collect()
}

/// Decodes the octal escapes (`\040` for a space) the kernel writes in mount paths.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match octal
            .map(|d| (d[0] - b'0') as u32 * 64 + (d[1] - b'0') as u32 * 8 + (d[2] - b'0') as u32)
        {
            Some(code) if code <= 0xff => {
                out.push(code as u8);
                i += 4;
            }
            _ => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Filesystem types that hold no disk space of their own: kernel interfaces, memory-backed and union mounts.
const PSEUDO_FILESYSTEMS: &[&str] = &[
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
];

/// The mounts whose usage is worth reporting: no pseudo filesystems (see [`PSEUDO_FILESYSTEMS`], and
/// `fuse.lxcfs`), no loop devices (snap images are always full), and one mount per device, preferring a mount of
/// the filesystem's root over a bind mount of a subdirectory, then the first listed.
pub fn real_filesystems(mounts: Vec<Mount>) -> Vec<Mount> {
    let mut candidates: Vec<Mount> = mounts
        .into_iter()
        .filter(|m| {
            !PSEUDO_FILESYSTEMS.contains(&m.fs_type.as_str())
                && m.fs_type != "fuse.lxcfs"
                && !m.device.starts_with("/dev/loop")
                && !m.mountpoint.is_empty()
        })
        .collect();
    // A stable sort keeps the kernel's order among mounts of the root and among bind mounts.
    candidates.sort_by_key(|m| m.root != "/");
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|m| seen.insert(m.device.clone()));
    candidates
}

/// Space of one filesystem, in bytes: `used + free + reserved` is its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used: u64,
    /// Available to unprivileged users.
    pub free: u64,
    /// Free, but kept for root.
    pub reserved: u64,
}

impl FsUsage {
    /// From `statvfs` counts: `blocks` in all, `blocks_free` free, `blocks_available` free for unprivileged
    /// users, each of `fragment_size` bytes. `None` for a filesystem of size 0 (a pseudo filesystem).
    pub fn from_statvfs(
        blocks: u64,
        blocks_free: u64,
        blocks_available: u64,
        fragment_size: u64,
    ) -> Option<FsUsage> {
        if blocks == 0 || fragment_size == 0 {
            return None;
        }
        let free_blocks = blocks_free.min(blocks);
        let available = blocks_available.min(free_blocks);
        let bytes = |n: u64| n.saturating_mul(fragment_size);
        Some(FsUsage {
            used: bytes(blocks - free_blocks),
            free: bytes(available),
            reserved: bytes(free_blocks - available),
        })
    }

    /// Used space as a share of what users can have (`used / (used + free)`, as `df` shows it).
    pub fn utilization(&self) -> Option<f64> {
        let usable = self.used.saturating_add(self.free);
        (usable > 0).then(|| self.used as f64 / usable as f64)
    }
}

/// The state letter of a `/proc/PID/stat` line: the first field after the command, which is in parentheses
/// and may itself hold spaces and parentheses.
pub fn parse_process_state(stat: &str) -> Option<char> {
    let (_, after_command) = stat.rsplit_once(')')?;
    after_command.split_whitespace().next()?.chars().next()
}

/// The `process.status` for a state letter of `/proc/PID/stat`.
pub fn process_status(state: char) -> &'static str {
    match state {
        'R' => "running",
        'S' => "sleeping",
        'D' => "blocked",
        'I' => "idle",
        'T' | 't' => "stopped",
        'Z' | 'X' | 'x' => "defunct",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/stat` of a two-CPU VM (the `intr` line shortened).
    const STAT: &str = "\
cpu  46048 0 6879 68922 472 0 50 22 0 0
cpu0 22387 0 2999 35736 53 0 7 7 0 0
cpu1 23661 0 3880 33186 418 0 42 15 0 0
intr 403643 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
ctxt 517461
btime 1795578520
processes 13894
procs_running 3
procs_blocked 0
softirq 160176 0 25043 5 5098 35586 0 195 37230 0 57019
";

    #[test]
    fn parses_stat() {
        let stat = parse_stat(STAT);
        assert_eq!(
            stat.cpu,
            Some(CpuTimes {
                user: 46048,
                nice: 0,
                system: 6879,
                idle: 68922,
                iowait: 472,
                irq: 0,
                softirq: 50,
                steal: 22,
            })
        );
        assert_eq!(stat.logical_cpus, Some(2));
        assert_eq!(stat.boot_time_secs, Some(1_795_578_520));
        assert_eq!(stat.processes_created, Some(13894));
    }

    #[test]
    fn odd_stat_lines_lose_only_their_metric() {
        let check = |text: &str, cpu: Option<u64>, cpus: Option<u64>, btime: Option<u64>| {
            let stat = parse_stat(text);
            assert_eq!(stat.cpu.map(|c| c.total()), cpu, "{text:?}");
            assert_eq!(stat.logical_cpus, cpus, "{text:?}");
            assert_eq!(stat.boot_time_secs, btime, "{text:?}");
        };
        check("", None, None, None);
        check("cpu  1 2 3\nbtime 5\n", None, None, Some(5));
        check("cpu  1 2 3 4\ncpu0 1 2 3 4\n", Some(10), Some(1), None);
        check("cpu  1 2 x 4 5\nbtime\n", None, None, None);
        check(
            "cpu 1 1 1 1 1 1 1 1 100 100\ncpux 1\ncpu12 1\n",
            Some(8),
            Some(1),
            None,
        );
        check("garbage\n\n   \nbtime -3\n", None, None, None);
    }

    #[test]
    fn cpu_delta_is_a_share_per_mode() {
        let before = parse_stat(STAT).cpu.unwrap();
        let after = CpuTimes {
            user: before.user + 30,
            system: before.system + 10,
            idle: before.idle + 150,
            iowait: before.iowait + 5,
            softirq: before.softirq + 3,
            steal: before.steal + 2,
            ..before
        };
        let shares = cpu_utilization(&before, &after).unwrap();
        assert_eq!(shares.len(), 8);
        let sum: f64 = shares.iter().map(|(_, v)| v).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{shares:?}");
        assert!(shares.iter().all(|(_, v)| (0.0..=1.0).contains(v)));
        let share = |mode: &str| shares.iter().find(|(m, _)| *m == mode).unwrap().1;
        assert!((share("user") - 0.15).abs() < 1e-9);
        assert!((share("idle") - 0.75).abs() < 1e-9);
        assert_eq!(share("nice"), 0.0);
        // No tick passed: nothing to say.
        assert_eq!(cpu_utilization(&after, &after), None);
        // A counter going backwards counts 0 and the rest still sum to 1.
        let backwards = CpuTimes {
            iowait: before.iowait - 100,
            idle: before.idle + 10,
            ..before
        };
        let shares = cpu_utilization(&before, &backwards).unwrap();
        assert_eq!(share_of(&shares, "iowait"), 0.0);
        assert_eq!(share_of(&shares, "idle"), 1.0);
    }

    fn share_of(shares: &[(&str, f64)], mode: &str) -> f64 {
        shares.iter().find(|(m, _)| *m == mode).unwrap().1
    }

    #[test]
    fn parses_loadavg() {
        let check = |text: &str, expected: Option<(f64, f64, f64)>| {
            let got = parse_loadavg(text).map(|l| (l.one, l.five, l.fifteen));
            assert_eq!(got, expected, "{text:?}");
        };
        check("0.42 0.78 0.46 1/106 13894\n", Some((0.42, 0.78, 0.46)));
        check("12.00 3.5 0\n", Some((12.0, 3.5, 0.0)));
        check("0.42 0.78\n", None);
        check("0.42 nan 0.46\n", None);
        check("0.42 -1 0.46\n", None);
        check("", None);
    }

    const MEMINFO: &str = "\
MemTotal:       24684092 kB
MemFree:        22215800 kB
MemAvailable:   24236952 kB
Buffers:            3784 kB
Cached:          2165408 kB
SwapCached:            0 kB
Active:           966772 kB
SwapTotal:       2097148 kB
SwapFree:        2000000 kB
Shmem:              8856 kB
KReclaimable:     153524 kB
Slab:             184576 kB
SReclaimable:     153524 kB
SUnreclaim:        31052 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn parses_meminfo() {
        let info = parse_meminfo(MEMINFO);
        let kib = |n: u64| Some(n * 1024);
        assert_eq!(info.total, kib(24_684_092));
        assert_eq!(info.free, kib(22_215_800));
        assert_eq!(info.buffers, kib(3784));
        assert_eq!(info.cached, kib(2_165_408));
        assert_eq!(info.slab_reclaimable, kib(153_524));
        let states = info.memory_states().unwrap();
        assert_eq!(
            states,
            [
                (
                    "used",
                    (24_684_092 - 22_215_800 - 3784 - 2_165_408 - 153_524) * 1024
                ),
                ("free", 22_215_800 * 1024),
                ("buffers", 3784 * 1024),
                ("cached", (2_165_408 + 153_524) * 1024),
            ]
        );
        assert_eq!(states.iter().map(|s| s.1).sum::<u64>(), info.total.unwrap());
        assert_eq!(
            info.swap_states(),
            Some([("used", 97_148 * 1024), ("free", 2_000_000 * 1024)])
        );
    }

    #[test]
    fn odd_meminfo_never_adds_up_to_more_than_the_total() {
        // Free and cache larger than the total (a badly virtualised /proc), no SReclaimable.
        let info =
            parse_meminfo("MemTotal: 100 kB\nMemFree: 60 kB\nBuffers: 10 kB\nCached: 50 kB\n");
        let states = info.memory_states().unwrap();
        assert_eq!(states.iter().map(|s| s.1).sum::<u64>(), 100 * 1024);
        assert_eq!(states[0], ("used", 0));
        assert_eq!(states[3], ("cached", 30 * 1024));
        // Missing lines: no states, not zeros.
        assert_eq!(parse_meminfo("MemTotal: 100 kB\n").memory_states(), None);
        assert_eq!(parse_meminfo("").swap_states(), None);
        // Unknown units and junk are skipped.
        let info = parse_meminfo("MemTotal: 100 MB\nMemFree: x kB\n:\nno colon\n");
        assert_eq!(info, MemInfo::default());
    }

    const DISKSTATS: &str = "\
   7       0 loop0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 5 0 5 0 0 0 0 0 0 0 0
 254       0 vda 34821 5777 3024498 17798 9088 33531 7764960 20554 0 7624 38770 1829 0 1238344 379 736 37
 254       1 vda1 34000 5000 3000000 17000 9000 33000 7700000 20000 0 7000 38000
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 253       1 short 1 2 3
";

    #[test]
    fn parses_diskstats() {
        let disks = parse_diskstats(DISKSTATS);
        let names: Vec<&str> = disks.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["vda", "vda1", "zram0"]);
        assert_eq!(
            disks[0],
            DiskStats {
                device: "vda".into(),
                reads: 34821,
                read_bytes: 3_024_498 * 512,
                writes: 9088,
                written_bytes: 7_764_960 * 512,
            }
        );
    }

    const NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    3193      29    0    0    0     0          0         0     3193      29    0    0    0     0       0          0
  eth0: 147558205    4332    1    2    0     0          0         0   247466    2560    3    4    0     0       0          0
docker0:       0       0    0    0    0     0          0         0        0       0    0    2    0     0       0          0
  bad0: 1 2 3
";

    #[test]
    fn parses_net_dev() {
        let devices = parse_net_dev(NET_DEV);
        let names: Vec<&str> = devices.iter().map(|d| d.interface.as_str()).collect();
        assert_eq!(names, ["eth0", "docker0"]);
        assert_eq!(
            devices[0],
            NetDev {
                interface: "eth0".into(),
                receive_bytes: 147_558_205,
                receive_packets: 4332,
                receive_errors: 1,
                receive_dropped: 2,
                transmit_bytes: 247_466,
                transmit_packets: 2560,
                transmit_errors: 3,
                transmit_dropped: 4,
            }
        );
        assert_eq!(devices[1].transmit_dropped, 2);
    }

    /// Mountinfo of a VM running Docker, plus a mount with a space in its path and a truncated line.
    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k,nr_inodes=3083623,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684092k
42 27 254:0 /var/lib/docker /var/lib/docker rw,relatime shared:1 - ext4 /dev/vda rw,discard
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:40 / /var/lib/docker/overlay2/abc/merged rw,relatime - overlay overlay rw,lowerdir=/x
51 27 7:1 / /snap/core/1 ro,nodev,relatime shared:5 - squashfs /dev/loop1 ro
52 27 8:17 / /mnt/my\\040disk ro,noatime shared:7 master:1 - xfs /dev/sdb1 rw
53 27 8:33 / /mnt/truncated rw -
";

    #[test]
    fn parses_mountinfo() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 11, "{mounts:#?}");
        assert_eq!(
            mounts[4],
            Mount {
                device: "/dev/vda".into(),
                mountpoint: "/var/lib/docker".into(),
                fs_type: "ext4".into(),
                root: "/var/lib/docker".into(),
                read_only: false,
            }
        );
        assert_eq!(
            mounts[10],
            Mount {
                device: "/dev/sdb1".into(),
                mountpoint: "/mnt/my disk".into(),
                fs_type: "xfs".into(),
                root: "/".into(),
                read_only: true,
            }
        );
    }

    #[test]
    fn keeps_one_real_filesystem_per_device() {
        let kept: Vec<(String, String)> = real_filesystems(parse_mountinfo(MOUNTINFO))
            .into_iter()
            .map(|m| (m.device, m.mountpoint))
            .collect();
        assert_eq!(
            kept,
            [
                ("/dev/vda".to_owned(), "/".to_owned()),
                ("/dev/sdb1".to_owned(), "/mnt/my disk".to_owned()),
            ]
        );
    }

    #[test]
    fn unescapes_mount_paths() {
        let check = |raw: &str, expected: &str| assert_eq!(unescape(raw), expected, "{raw:?}");
        check("/plain", "/plain");
        check("/a\\040b", "/a b");
        check("/tab\\011x\\134", "/tab\tx\\");
        check("/back\\134slash", "/back\\slash");
        check("/bad\\09x", "/bad\\09x");
        check("/end\\", "/end\\");
        check("/big\\777", "/big\\777");
    }

    #[test]
    fn filesystem_usage_from_statvfs() {
        let usage = FsUsage::from_statvfs(1000, 300, 250, 4096).unwrap();
        assert_eq!(
            usage,
            FsUsage {
                used: 700 * 4096,
                free: 250 * 4096,
                reserved: 50 * 4096,
            }
        );
        assert!((usage.utilization().unwrap() - 700.0 / 950.0).abs() < 1e-12);
        assert_eq!(FsUsage::from_statvfs(0, 0, 0, 4096), None);
        // Inconsistent counts are capped instead of underflowing.
        let odd = FsUsage::from_statvfs(10, 20, 30, 1).unwrap();
        assert_eq!(
            odd,
            FsUsage {
                used: 0,
                free: 10,
                reserved: 0,
            }
        );
    }

    #[test]
    fn reads_process_states() {
        let check = |stat: &str, expected: Option<char>| {
            assert_eq!(parse_process_state(stat), expected, "{stat:?}");
        };
        check("1 (systemd) S 0 1 1 0 -1 4194560", Some('S'));
        check("4242 (my (odd) proc) R 1 4242", Some('R'));
        check("77 (kworker/0:1-events) I 2 0 0", Some('I'));
        check("99 (a) b) Z 1", Some('Z'));
        check("99 (truncated", None);
        check("99 (nothing after)", None);
        check("", None);
        assert_eq!(process_status('R'), "running");
        assert_eq!(process_status('D'), "blocked");
        assert_eq!(process_status('Z'), "defunct");
        assert_eq!(process_status('?'), "unknown");
    }
}
