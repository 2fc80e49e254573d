//! What the machine spends: the resident memory and CPU time of a child
//! process (sampled from `/proc/<pid>/status` and `/proc/<pid>/stat` while it
//! runs, since both vanish when it exits), and CPU time per server between
//! two snapshots of `/proc`, which shows where a measurement's time went on
//! this shared two-core machine.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::full_run::SimulatedService;
use super::{round3, Point};

/// Linux reports CPU time in clock ticks of 1/100 s (`USER_HZ`) on every
/// architecture this runs on.
const TICKS_PER_SEC: f64 = 100.0;

/// What the sampler saw of one child process.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ChildUsage {
    /// Peak resident set (`VmHWM`), in MiB.
    pub peak_rss_mb: f64,
    /// User plus system CPU time at the last sample, in seconds.
    pub cpu_secs: f64,
    /// Resident set (`VmRSS`, MiB) over time.
    pub rss_series: Vec<Point>,
}

/// Samples `pid` every `every` until `stop` or until the process is gone.
pub async fn sample_child(
    pid: u32,
    origin: Instant,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> ChildUsage {
    let mut usage = ChildUsage::default();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        let Some(status) = read_status(pid) else {
            break;
        };
        usage.peak_rss_mb = usage.peak_rss_mb.max(status.hwm_kb as f64 / 1024.0);
        // The peak comes from VmHWM at every sample; the series for the
        // chart keeps one point per half second.
        let t = round3(origin.elapsed().as_secs_f64());
        if usage
            .rss_series
            .last()
            .is_none_or(|(last, _)| t - last >= 0.5)
        {
            usage
                .rss_series
                .push((t, round3(status.rss_kb as f64 / 1024.0)));
        }
        if let Some(ticks) = read_cpu_ticks(pid) {
            usage.cpu_secs = round3(ticks as f64 / TICKS_PER_SEC);
        }
        if *stop.borrow() {
            break;
        }
    }
    usage.peak_rss_mb = round3(usage.peak_rss_mb);
    usage
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemStatus {
    pub hwm_kb: u64,
    pub rss_kb: u64,
}

/// `VmHWM` and `VmRSS` of a live process (a zombie has neither).
pub fn read_status(pid: u32) -> Option<MemStatus> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status(text: &str) -> Option<MemStatus> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
    };
    Some(MemStatus {
        hwm_kb: field("VmHWM:")?,
        rss_kb: field("VmRSS:")?,
    })
}

/// User plus system CPU ticks of a process.
pub fn read_cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields
    // after the last ')'. utime and stime are fields 14 and 15 of the line,
    // so the 12th and 13th after the name.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU ticks of the whole machine and of every process, at one moment.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot {
    at: Option<Instant>,
    busy_ticks: u64,
    total_ticks: u64,
    /// pid to (role, ticks).
    processes: BTreeMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        Self::take_labelled(&[])
    }

    /// A snapshot where the processes in `own` get the given role whatever
    /// their command line (the benchmark's own children).
    pub fn take_labelled(own: &[(u32, &str)]) -> Self {
        let (busy_ticks, total_ticks) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine_ticks(&s))
            .unwrap_or((0, 0));
        let mut processes = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let Some(ticks) = read_cpu_ticks(pid) else {
                    continue;
                };
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                    .unwrap_or_default();
                let role = own
                    .iter()
                    .find(|(p, _)| *p == pid)
                    .map_or_else(|| role_of(&cmdline), |(_, r)| *r);
                processes.insert(pid, (role.to_string(), ticks));
            }
        }
        Self {
            at: Some(Instant::now()),
            busy_ticks,
            total_ticks,
            processes,
        }
    }
}

/// Busy and total ticks from the aggregate `cpu` line of `/proc/stat`.
fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Which part of the stack a command line belongs to.
pub fn role_of(cmdline: &str) -> &'static str {
    if cmdline.contains("opensearch-429") {
        "opensearch-429 (idle node)"
    } else if cmdline.contains("org.opensearch.bootstrap") {
        "opensearch"
    } else if cmdline.contains("rabbit") || cmdline.contains("beam.smp") {
        "rabbitmq"
    } else if cmdline.contains("secantus") {
        "mongo (SecantusDB)"
    } else if cmdline.contains("toxiproxy") {
        TOXIPROXY
    } else if let Some(simulator) = SimulatedService::ALL
        .into_iter()
        .map(SimulatedService::subcommand)
        .find(|s| cmdline.contains(s))
    {
        simulator
    } else if cmdline.contains("rebuilder-bench") {
        "bench (loader, probe, samplers)"
    } else if cmdline.contains("rustc") || cmdline.contains("cargo") {
        FOREIGN_BUILDS
    } else if cmdline.contains("rebuilder") {
        FOREIGN_REBUILDER
    } else {
        FOREIGN_OTHER
    }
}

/// Roles of work that is not the benchmark's: it competes for the cores and
/// makes the figures of that measurement doubtful.
const FOREIGN_BUILDS: &str = "other: cargo/rustc";
const FOREIGN_REBUILDER: &str = "other: rebuilder processes (tests)";
const FOREIGN_OTHER: &str = "other";
/// The latency proxy of `--latency-ms` (part of the network, not of a server).
pub const TOXIPROXY: &str = "toxiproxy (latency proxy)";
/// The measured `rebuilder run` child (added from its own samples).
pub const MEASURED_RUN: &str = "rebuilder run (measured)";

/// Cores used per role over one sampling interval.
pub type RoleLoad = BTreeMap<String, f64>;

/// Samples CPU use per role every `every` until `stop`: each point is the
/// interval's end (seconds since `origin`) and the cores each role used.
pub async fn sample_cpu(
    origin: Instant,
    every: Duration,
    own: Vec<(u32, &'static str)>,
    mut stop: watch::Receiver<bool>,
) -> Vec<(f64, RoleLoad)> {
    let mut points = Vec::new();
    let mut previous = CpuSnapshot::take_labelled(&own);
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => {}
        }
        let current = CpuSnapshot::take_labelled(&own);
        let usage = CpuUsage::between(&previous, &current, &[]);
        if usage.wall_secs > 0.0 {
            let load: RoleLoad = usage
                .by_role
                .into_iter()
                .map(|(role, secs)| (role, round3(secs / usage.wall_secs)))
                .filter(|(_, cores)| *cores >= 0.005)
                .collect();
            points.push((round3(origin.elapsed().as_secs_f64()), load));
        }
        previous = current;
        if *stop.borrow() {
            break;
        }
    }
    points
}

/// Mean cores per role over `[start, end]` of a CPU series (each point
/// covers the interval that ends at its time).
pub fn mean_load(series: &[(f64, RoleLoad)], start: f64, end: f64) -> RoleLoad {
    let mut sums: RoleLoad = BTreeMap::new();
    let mut covered: f64 = 0.0;
    let mut previous_t: f64 = 0.0;
    for (t, load) in series {
        let (a, b) = (previous_t.max(start), t.min(end));
        previous_t = *t;
        if b <= a {
            continue;
        }
        covered += b - a;
        for (role, cores) in load {
            *sums.entry(role.clone()).or_default() += cores * (b - a);
        }
    }
    sums.into_iter()
        .map(|(role, s)| (role, round3(if covered > 0.0 { s / covered } else { 0.0 })))
        .filter(|(_, cores)| *cores >= 0.01)
        .collect()
}

/// CPU seconds per role over a whole CPU series (each point covers the
/// interval since the previous one, the first since 0). Unlike two
/// snapshots around a measurement, this counts processes that started and
/// ended within it (compilers, test binaries), if they lived a second.
pub fn total_secs(series: &[(f64, RoleLoad)]) -> Vec<(String, f64)> {
    let mut sums: RoleLoad = BTreeMap::new();
    let mut previous_t: f64 = 0.0;
    for (t, load) in series {
        let dt = t - previous_t;
        previous_t = *t;
        for (role, cores) in load {
            *sums.entry(role.clone()).or_default() += cores * dt;
        }
    }
    let mut out: Vec<(String, f64)> = sums.into_iter().map(|(r, s)| (r, round3(s))).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Where CPU went between two snapshots.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuUsage {
    pub wall_secs: f64,
    /// Busy share of the whole machine (1.0 = every core busy all the time).
    pub machine_busy: f64,
    pub cores: usize,
    /// CPU seconds per role, most first.
    pub by_role: Vec<(String, f64)>,
}

impl CpuUsage {
    /// `extra`: CPU seconds of processes that exited in between (children
    /// sampled by [`sample_child`]), added under their role.
    pub fn between(before: &CpuSnapshot, after: &CpuSnapshot, extra: &[(&str, f64)]) -> Self {
        let wall = match (before.at, after.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let mut by_role: BTreeMap<String, f64> = BTreeMap::new();
        for (pid, (role, ticks)) in &after.processes {
            let start = before
                .processes
                .get(pid)
                .filter(|(r, _)| r == role)
                .map_or(0, |(_, t)| *t);
            let secs = ticks.saturating_sub(start) as f64 / TICKS_PER_SEC;
            if secs > 0.0 {
                *by_role.entry(role.clone()).or_default() += secs;
            }
        }
        for (role, secs) in extra {
            *by_role.entry((*role).to_string()).or_default() += secs;
        }
        let mut by_role: Vec<(String, f64)> =
            by_role.into_iter().map(|(r, s)| (r, round3(s))).collect();
        by_role.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total = after.total_ticks.saturating_sub(before.total_ticks);
        let busy = after.busy_ticks.saturating_sub(before.busy_ticks);
        Self {
            wall_secs: round3(wall),
            machine_busy: round3(if total == 0 {
                0.0
            } else {
                busy as f64 / total as f64
            }),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            by_role,
        }
    }

    /// Share of the machine's capacity that went to work outside the
    /// benchmark (builds, tests, anything unknown).
    pub fn foreign_share(&self) -> f64 {
        let capacity = self.wall_secs * self.cores as f64;
        let foreign: f64 = self
            .by_role
            .iter()
            .filter(|(r, _)| r.starts_with(FOREIGN_OTHER))
            .map(|(_, s)| s)
            .sum();
        if capacity > 0.0 {
            foreign / capacity
        } else {
            0.0
        }
    }

    /// Share of the machine's capacity used by roles other than `expected`
    /// (for a measurement that needs only some servers: A uses OpenSearch
    /// alone, so MongoDB or RabbitMQ busy meanwhile is someone else's work).
    pub fn share_outside(&self, expected: &[&str]) -> f64 {
        let capacity = self.wall_secs * self.cores as f64;
        let outside: f64 = self
            .by_role
            .iter()
            .filter(|(r, _)| !expected.iter().any(|e| r.starts_with(e)))
            .map(|(_, s)| s)
            .sum();
        if capacity > 0.0 {
            outside / capacity
        } else {
            0.0
        }
    }

    /// One line: `machine 93% busy; opensearch 70.1 s, rebuilder 12.0 s, ...`.
    pub fn line(&self) -> String {
        let roles: Vec<String> = self
            .by_role
            .iter()
            .filter(|(_, s)| *s >= 0.05)
            .map(|(r, s)| format!("{r} {s:.1} s"))
            .collect();
        format!(
            "machine {:.0}% busy over {:.1} s on {} cores; CPU: {}",
            self.machine_busy * 100.0,
            self.wall_secs,
            self.cores,
            roles.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_the_peak_and_current_resident_set() {
        let text = "Name:\trebuilder\nVmPeak:\t 900 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(
            parse_status(text),
            Some(MemStatus {
                hwm_kb: 204_800,
                rss_kb: 102_400
            })
        );
        assert_eq!(parse_status("Name:\tzombie\n"), None);
    }

    #[test]
    fn stat_ticks_survive_a_command_name_with_spaces() {
        let stat = "42 (tokio rt (x)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
    }

    #[test]
    fn machine_ticks_count_iowait_as_idle() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine_ticks(stat), Some((150, 1000)));
    }

    #[test]
    fn the_mean_load_of_a_window_weights_each_interval_by_its_overlap() {
        let load = |os: f64, mongo: f64| -> RoleLoad {
            [("opensearch".to_string(), os), ("mongo".to_string(), mongo)]
                .into_iter()
                .collect()
        };
        let series = vec![
            (1.0, load(1.0, 0.0)),
            (2.0, load(0.0, 1.0)),
            (3.0, load(0.5, 0.5)),
        ];
        let mean = mean_load(&series, 0.5, 2.0);
        assert!((mean["opensearch"] - 1.0 / 3.0).abs() < 1e-3, "{mean:?}");
        assert!((mean["mongo"] - 2.0 / 3.0).abs() < 1e-3);
        assert!(mean_load(&series, 5.0, 6.0).is_empty());
    }

    #[test]
    fn total_seconds_weight_each_point_by_its_interval() {
        let load = |r: &str, c: f64| -> RoleLoad { [(r.to_string(), c)].into_iter().collect() };
        let series = vec![(1.0, load("opensearch", 1.0)), (3.0, load("rustc", 0.5))];
        assert_eq!(
            total_secs(&series),
            [("opensearch".to_string(), 1.0), ("rustc".to_string(), 1.0)]
        );
    }

    #[test]
    fn foreign_work_is_a_share_of_the_machine_capacity() {
        let usage = CpuUsage {
            wall_secs: 10.0,
            machine_busy: 1.0,
            cores: 2,
            by_role: vec![
                ("opensearch".into(), 12.0),
                (FOREIGN_BUILDS.into(), 4.0),
                (FOREIGN_OTHER.into(), 1.0),
            ],
        };
        assert!((usage.foreign_share() - 0.25).abs() < 1e-9);
        assert!((usage.share_outside(&["opensearch"]) - 0.25).abs() < 1e-9);
        assert!((usage.share_outside(&["other"]) - 0.6).abs() < 1e-9);
    }

    #[test]
    fn roles_are_read_from_command_lines() {
        assert_eq!(
            role_of("/usr/bin/java -Xms2g org.opensearch.bootstrap.OpenSearch"),
            "opensearch"
        );
        assert_eq!(
            role_of("/x/target/debug/deps/engine-0a1b2c /x/rebuilder"),
            FOREIGN_REBUILDER
        );
        assert_eq!(
            role_of("/root/.rustup/toolchains/x/bin/rustc --crate-name"),
            FOREIGN_BUILDS
        );
        assert_eq!(
            role_of("/x/target/release/rebuilder tcs-simulator --doctors 5"),
            "tcs-simulator"
        );
        assert_eq!(
            role_of("/x/target/debug/rebuilder-dev connection-simulator --doctors 5"),
            "connection-simulator"
        );
        assert_eq!(
            role_of("python -m secantus --port 27017"),
            "mongo (SecantusDB)"
        );
    }
}
