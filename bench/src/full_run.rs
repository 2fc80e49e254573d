//! C, the rebuilder end to end: `rebuilder run` as a child process of the
//! built binary, with `rebuilder-dev tcs-simulator` answering its `syncStart`
//! and the GMC data seeded in MongoDB (the recommendation and connection
//! services can be simulated too: [`SimulatedService`]). While the measured
//! run lives, the benchmark samples the child's memory and CPU, the
//! documents written to the new generation (indexing totals, every 0.5 s)
//! and the reader's probe; afterwards `rebuilder status --json` gives the
//! phase durations.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::process::{mean_load, sample_child, sample_cpu, ChildUsage, RoleLoad, MEASURED_RUN};
use super::{indices, probe, round3, sample_until, Point};
use rebuilder::config::Settings;
use rebuilder::search::SearchClient;

/// How to start the `rebuilder` binary with the benchmark's names.
#[derive(Clone, Debug)]
pub struct RebuilderBin {
    pub path: PathBuf,
    /// The `rebuilder-dev` binary (the simulated services).
    pub dev_path: PathBuf,
    /// `REBUILDER_*` variables that isolate the child (see `isolation`).
    pub env: Vec<(String, String)>,
    /// Where each child's output goes.
    pub log_dir: PathBuf,
}

impl RebuilderBin {
    fn command(&self, args: &[&str], log_name: &str) -> anyhow::Result<(Command, PathBuf)> {
        self.command_of(&self.path, args, log_name)
    }

    fn command_of(
        &self,
        program: &Path,
        args: &[&str],
        log_name: &str,
    ) -> anyhow::Result<(Command, PathBuf)> {
        let log = self.log_dir.join(log_name);
        let out = std::fs::File::create(&log)
            .with_context(|| format!("while creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        Ok((cmd, log))
    }

    /// Starts `rebuilder ARGS` as a child, its output in `log_name`.
    pub fn spawn(&self, args: &[&str], log_name: &str) -> anyhow::Result<Child> {
        let (mut cmd, _) = self.command(args, log_name)?;
        cmd.spawn()
            .with_context(|| format!("while starting rebuilder {}", args.join(" ")))
    }

    /// The subcommands the binary lists in `--help`.
    pub async fn subcommands(&self) -> anyhow::Result<Vec<String>> {
        let out = Command::new(&self.path)
            .arg("--help")
            .output()
            .await
            .with_context(|| format!("while running {} --help", self.path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// `rebuilder status --json`.
    pub async fn status_json(&self) -> anyhow::Result<Value> {
        let out = Command::new(&self.path)
            .args(["status", "--json"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .await
            .context("while running rebuilder status --json")?;
        if !out.status.success() {
            bail!(
                "rebuilder status --json failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("rebuilder status --json printed no JSON")
    }
}

/// A service that `rebuilder-dev` plays for a run: TCS, or the
/// recommendation or connection service of the queue sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimulatedService {
    Tcs,
    Recommendation,
    Connection,
}

impl SimulatedService {
    pub const ALL: [SimulatedService; 3] = [Self::Tcs, Self::Recommendation, Self::Connection];

    /// The `rebuilder-dev` subcommand that plays it.
    pub fn subcommand(self) -> &'static str {
        match self {
            SimulatedService::Tcs => "tcs-simulator",
            SimulatedService::Recommendation => "recommendation-simulator",
            SimulatedService::Connection => "connection-simulator",
        }
    }

    /// The start queues it consumes: a run's sync requests go there.
    pub fn start_queues(self, settings: &Settings) -> Vec<&str> {
        match self {
            SimulatedService::Tcs => vec![settings.rabbitmq.sync_start_queue.as_str()],
            SimulatedService::Recommendation => vec![settings.gmc.sync_start_queue.as_str()],
            SimulatedService::Connection => vec![
                settings.connection.log_sync_start_queue.as_str(),
                settings.connection.hidden_sync_start_queue.as_str(),
            ],
        }
    }
}

/// A simulated service, running as a child until stopped.
pub struct Simulator {
    child: Child,
    pub log: PathBuf,
}

impl Simulator {
    /// Starts `rebuilder-dev <service's subcommand>` and waits until it
    /// consumes each of its start queues, so that no sync request can go
    /// unanswered.
    pub async fn start(
        bin: &RebuilderBin,
        settings: &Settings,
        service: SimulatedService,
        doctors: usize,
        seed: u64,
        log_name: &str,
    ) -> anyhow::Result<Self> {
        let (doctors, seed) = (doctors.to_string(), seed.to_string());
        let name = service.subcommand();
        let (mut cmd, log) = bin.command_of(
            &bin.dev_path,
            &[name, "--doctors", &doctors, "--seed", &seed],
            log_name,
        )?;
        let child = cmd
            .spawn()
            .with_context(|| format!("while starting rebuilder-dev {name}"))?;
        let mut simulator = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        for queue in service.start_queues(settings) {
            loop {
                if let Some(status) = simulator.child.try_wait()? {
                    bail!(
                        "rebuilder-dev {name} exited ({status}) before listening; its output:\n{}",
                        tail(&simulator.log, 20)
                    );
                }
                if consumers(settings, queue).await.unwrap_or(0) > 0 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "rebuilder-dev {name} did not consume {queue} within 60 s; its output:\n{}",
                        tail(&simulator.log, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(simulator)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it still runs (a simulator may serve one sync and exit).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Consumers of a queue (0 when it does not exist yet).
async fn consumers(settings: &Settings, queue: &str) -> anyhow::Result<u32> {
    let connection = rebuilder::sources::rabbit_connection(&settings.rabbitmq).await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await;
    let n = declared.map_or(0, |q| q.consumer_count());
    let _ = connection.close(200, "bench: consumer check".into()).await;
    Ok(n)
}

/// One `rebuilder run`, with what was sampled while it ran.
#[derive(Clone, Debug, Serialize)]
pub struct RunMeasurement {
    pub label: String,
    pub exit_code: Option<i32>,
    /// From spawning the child to its exit.
    pub wall_secs: f64,
    /// The generation the master aliases point to afterwards.
    pub generation: Option<String>,
    /// Documents the promoted master generation holds.
    pub docs: u64,
    pub usage: ChildUsage,
    /// Documents written to the new master generation (index operations),
    /// every 0.5 s since the child started.
    pub series: Vec<Point>,
    /// Cores used by each part of the stack, every second.
    pub cpu_series: Vec<(f64, RoleLoad)>,
    pub log: PathBuf,
    #[serde(skip)]
    pub started_utc: chrono::DateTime<chrono::Utc>,
}

/// What the probe saw during a measured run.
pub struct ProbeRun {
    pub samples: Vec<probe::ProbeSample>,
    pub expected_docs: bool,
}

/// Runs `rebuilder run` once. With `probe_alias`, queries it every
/// `probe_every` while the child lives.
pub async fn run_once(
    bin: &RebuilderBin,
    search: &SearchClient,
    settings: &Settings,
    label: &str,
    probe_alias: Option<&str>,
    probe_every: Duration,
    timeout: Duration,
) -> anyhow::Result<(RunMeasurement, Option<ProbeRun>)> {
    let family = settings.names.master_family();
    let pattern = format!("{family}-*");
    let before: Vec<String> = indices::list(search, &pattern).await?;
    let expected_docs = match probe_alias {
        Some(alias) => {
            !indices::alias_targets(search, alias).await?.is_empty()
                && indices::count(search, alias).await.unwrap_or(0) > 0
        }
        None => false,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (mut cmd, log) = bin.command(&["run"], &format!("{label}.log"))?;
    let origin = Instant::now();
    let started_utc = chrono::Utc::now();
    let probe_task = probe_alias.map(|alias| {
        tokio::spawn(probe::run(
            search.clone(),
            alias.to_string(),
            probe_every,
            origin,
            expected_docs,
            stop_rx.clone(),
        ))
    });
    let mut child = cmd.spawn().context("while starting rebuilder run")?;
    let pid = child.id().context("rebuilder run exited at once")?;
    let usage_task = tokio::spawn(sample_child(
        pid,
        origin,
        Duration::from_millis(100),
        stop_rx.clone(),
    ));
    let cpu_task = tokio::spawn(sample_cpu(
        origin,
        Duration::from_secs(1),
        vec![(pid, MEASURED_RUN)],
        stop_rx.clone(),
    ));
    let series_task = {
        let search = search.clone();
        tokio::spawn(sample_until(
            origin,
            Duration::from_millis(500),
            stop_rx,
            move || {
                let (search, pattern, before) = (search.clone(), pattern.clone(), before.clone());
                async move {
                    let totals = indices::index_totals(&search, &pattern).await.ok()?;
                    let new: u64 = totals
                        .iter()
                        .filter(|(name, _)| !before.contains(name))
                        .map(|(_, n)| *n)
                        .sum();
                    Some(new as f64)
                }
            },
        ))
    };
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let wall = origin.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let status = match waited {
        Ok(status) => status.context("while waiting for rebuilder run")?,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            bail!(
                "rebuilder run ({label}) did not finish within {} s; its output:\n{}",
                timeout.as_secs(),
                tail(&log, 30)
            );
        }
    };
    let usage = usage_task.await.unwrap_or_default();
    let series = series_task.await.unwrap_or_default();
    let cpu_series = cpu_task.await.unwrap_or_default();
    let samples = match probe_task {
        Some(task) => Some(task.await.unwrap_or_default()),
        None => None,
    };
    if !status.success() {
        bail!(
            "rebuilder run ({label}) failed ({status}); its output:\n{}",
            tail(&log, 30)
        );
    }
    let generation = indices::alias_targets(search, &family)
        .await?
        .into_iter()
        .next();
    let docs = indices::count(search, &family).await.unwrap_or(0);
    Ok((
        RunMeasurement {
            label: label.to_string(),
            exit_code: status.code(),
            wall_secs: round3(wall),
            generation,
            docs,
            usage,
            series,
            cpu_series,
            log,
            started_utc,
        },
        samples.map(|samples| ProbeRun {
            samples,
            expected_docs,
        }),
    ))
}

/// One phase of the measured run, placed on the run's clock.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseTime {
    pub phase: String,
    /// Seconds after the child started (None when the report lacks a start).
    pub start_secs: Option<f64>,
    pub secs: f64,
    /// Documents written to the new master generation during the phase
    /// (from the sampled indexing totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docs_written: Option<u64>,
    /// Mean cores each part of the stack used during the phase.
    #[serde(skip_serializing_if = "RoleLoad::is_empty")]
    pub cpu_cores: RoleLoad,
}

/// Fills each phase's `docs_written` from a series of (seconds, documents)
/// and its `cpu_cores` from a CPU series.
pub fn attribute_writes(phases: &mut [PhaseTime], series: &[Point], cpu: &[(f64, RoleLoad)]) {
    for p in phases {
        if let Some(start) = p.start_secs {
            let written = value_at(series, start + p.secs) - value_at(series, start);
            p.docs_written = Some(written.max(0.0).round() as u64);
            p.cpu_cores = mean_load(cpu, start, start + p.secs);
        }
    }
}

/// A series' value at `t`, interpolated linearly (clamped at both ends).
pub fn value_at(series: &[Point], t: f64) -> f64 {
    match series.iter().position(|(x, _)| *x >= t) {
        None => series.last().map_or(0.0, |p| p.1),
        Some(0) => series[0].1,
        Some(i) => {
            let ((x0, y0), (x1, y1)) = (series[i - 1], series[i]);
            if x1 > x0 {
                y0 + (y1 - y0) * (t - x0) / (x1 - x0)
            } else {
                y1
            }
        }
    }
}

/// Reads the phases of a run report (`rebuilder status --json`): the first
/// `phases` array of `{phase, startedAt, durationMs}` found in it.
pub fn phases_of(report: &Value, child_started: chrono::DateTime<chrono::Utc>) -> Vec<PhaseTime> {
    let Some(phases) = find_key(report, "phases").and_then(Value::as_array) else {
        return Vec::new();
    };
    phases
        .iter()
        .filter_map(|p| {
            let phase = p["phase"]
                .as_str()
                .or_else(|| p["name"].as_str())?
                .to_string();
            let secs = p["durationMs"]
                .as_f64()
                .or_else(|| p["duration_ms"].as_f64())
                .map(|ms| ms / 1000.0)?;
            let start_secs = p["startedAt"]
                .as_str()
                .or_else(|| p["started_at"].as_str())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| {
                    (t.with_timezone(&chrono::Utc) - child_started).num_milliseconds() as f64
                        / 1000.0
                });
            Some(PhaseTime {
                phase,
                start_secs,
                secs: round3(secs),
                docs_written: None,
                cpu_cores: RoleLoad::new(),
            })
        })
        .collect()
}

/// The first value under `key` in a JSON tree (depth first).
pub fn find_key<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(map) => map
            .get(key)
            .or_else(|| map.values().find_map(|child| find_key(child, key))),
        Value::Array(items) => items.iter().find_map(|child| find_key(child, key)),
        _ => None,
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn phases_are_read_from_the_run_report_and_placed_on_the_child_clock() {
        let report = json!({"run": {"id": "r1", "phases": [
            {"phase": "outcomes", "startedAt": "2026-01-01T00:00:01.500Z", "durationMs": 2500},
            {"phase": "tcs_merge", "startedAt": "2026-01-01T00:00:04.000Z", "durationMs": 10000},
            {"phase": "promote", "startedAt": "2026-01-01T00:00:14.000Z"}
        ]}});
        let started = "2026-01-01T00:00:00Z".parse().unwrap();
        let phases = phases_of(&report, started);
        assert_eq!(
            phases,
            [
                PhaseTime {
                    phase: "outcomes".into(),
                    start_secs: Some(1.5),
                    secs: 2.5,
                    docs_written: None,
                    cpu_cores: RoleLoad::new()
                },
                PhaseTime {
                    phase: "tcs_merge".into(),
                    start_secs: Some(4.0),
                    secs: 10.0,
                    docs_written: None,
                    cpu_cores: RoleLoad::new()
                }
            ]
        );
        assert!(phases_of(&json!({"nothing": 1}), started).is_empty());
    }

    #[test]
    fn writes_are_attributed_to_phases_by_interpolating_the_series() {
        let series = [
            (0.0, 0.0),
            (2.0, 0.0),
            (4.0, 1000.0),
            (10.0, 4000.0),
            (12.0, 4000.0),
        ];
        assert_eq!(value_at(&series, 3.0), 500.0);
        assert_eq!(value_at(&series, 99.0), 4000.0);
        let mut phases = vec![PhaseTime {
            phase: "tcs_merge".into(),
            start_secs: Some(3.0),
            secs: 5.0,
            docs_written: None,
            cpu_cores: RoleLoad::new(),
        }];
        attribute_writes(&mut phases, &series, &[]);
        assert_eq!(phases[0].docs_written, Some(2500));
    }
}
