//! C, the rebuilder end to end: the binaries checked, the first run
//! ([`super::c_warmup`]) and the stages alone ([`super::stages_alone`])
//! done, then the measured `rebuilder run` ([`crate::full_run`]) with its
//! probe, CPU, phases and checks, and the reruns beside it (on the slower
//! network, over the queues).

use std::time::Duration;

use anyhow::bail;
use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use rebuilder_dev::datagen::DatasetSpec;

use super::{c_warmup, latency, stages_alone};
use crate::cli::Args;
use crate::full_run::{self, ProbeRun, RebuilderBin, RunMeasurement};
use crate::network::LatencyNetwork;
use crate::process::{self, CpuSnapshot, CpuUsage, MEASURED_RUN};
use crate::report::{ProbeFigures, RebuilderFigures, Report};
use crate::rerun::Rerun;
use crate::{disturbance, indices, isolation, probe, queues, round3};

/// Measures C into `report`, with the reruns `args` asks for.
pub async fn measure(
    args: &Args,
    settings: &Settings,
    search: &SearchClient,
    spec: &DatasetSpec,
    network: Option<&LatencyNetwork>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bin = binaries(args, settings).await?;
    let timeout = args.run_timeout();
    let probe_every = args.probe_every();
    let alias = settings.names.qualify("current_connections");
    let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;

    let first = c_warmup::run(args, &bin, settings, search, spec, &mongo, report).await?;
    let (warmup, simulator) = (first.measurement, first.simulator);

    // The stages alone, on the same data, just before C.
    stages_alone::measure(settings, &mongo, report).await?;
    println!(
        "C: measured run, probing {alias} every {} ms ...",
        args.probe_ms
    );
    let before = CpuSnapshot::take();
    let activity = indices::activity(search).await?;
    let measured = full_run::run_once(
        &bin,
        search,
        settings,
        "c-measured-run",
        Some(&alias),
        probe_every,
        timeout,
    )
    .await;
    let after = CpuSnapshot::take();
    disturbance::note_foreign(search, &settings.names.prefix, &activity, "C", report).await;
    simulator.stop().await;
    let (run, probe_run) = measured?;
    let cpu = cpu_of(&run, &before, &after);
    let run_report = match bin.status_json().await {
        Ok(v) => v,
        Err(e) => {
            report.warnings.push(format!("no run report: {e:#}"));
            serde_json::Value::Null
        }
    };
    let mut phases = full_run::phases_of(&run_report, run.started_utc);
    full_run::attribute_writes(&mut phases, &run.series, &run.cpu_series);
    report
        .warnings
        .extend(failures(&run, &warmup, spec.doctors as u64));
    if let Some(p) = probe_run {
        report.probe = Some(probe_figures(&alias, probe_every, p));
    }
    println!(
        "C: {} documents in {:.1} s = {:.0} docs/s, peak RSS {:.0} MB.",
        run.docs,
        run.wall_secs,
        run.docs as f64 / run.wall_secs.max(1e-9),
        run.usage.peak_rss_mb
    );
    let rerun = Rerun {
        bin: &bin,
        settings,
        search,
        spec,
        alias: &alias,
        probe_every,
        timeout,
        c: &run,
    };
    if let Some(net) = network {
        let through = latency::c_through(&rerun, net).await?;
        report.warnings.extend(through.failures.iter().cloned());
        if let Some(figures) = report.network.as_mut() {
            figures.c_rebuilder = Some(through);
        }
    }
    if args.queues {
        let over_queues = queues::measure(&rerun).await?;
        report.warnings.extend(over_queues.failures.iter().cloned());
        report.c_over_queues = Some(over_queues);
    }
    report.c_rebuilder = Some(RebuilderFigures {
        docs_per_sec: round3(run.docs as f64 / run.wall_secs.max(1e-9)),
        docs: run.docs,
        wall_secs: run.wall_secs,
        peak_rss_mb: run.usage.peak_rss_mb,
        cpu_secs: run.usage.cpu_secs,
        phases,
        warmup: Some(RunMeasurement {
            series: Vec::new(),
            cpu_series: Vec::new(),
            usage: Default::default(),
            ..warmup
        }),
        run,
        cpu: Some(cpu),
        run_report,
    });
    Ok(())
}

/// The `rebuilder` and `rebuilder-dev` binaries with the benchmark's names,
/// checked for what C needs.
async fn binaries(args: &Args, settings: &Settings) -> anyhow::Result<RebuilderBin> {
    let path = match &args.rebuilder {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("rebuilder"),
    };
    let mut env = isolation::child_env(settings);
    if let Some(config) = &args.config {
        // The children read the same file; the isolation variables win over it.
        env.push(("REBUILDER_CONFIG".into(), config.display().to_string()));
    }
    let dev_path = match &args.dev_tools {
        Some(p) => p.clone(),
        None => path.with_file_name("rebuilder-dev"),
    };
    if !dev_path.is_file() {
        bail!(
            "{} is missing: C needs the TCS simulator (cargo build -p rebuilder-dev)",
            dev_path.display()
        );
    }
    let bin = RebuilderBin {
        path: path.clone(),
        dev_path,
        env,
        log_dir: args.log_dir.clone(),
    };
    let commands = bin.subcommands().await?;
    let missing: Vec<&str> = ["run", "status"]
        .into_iter()
        .filter(|c| !commands.iter().any(|x| x == c))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks the subcommand(s) {} that C needs (skip C with --skip c)",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(bin)
}

/// The machine's CPU over the measured run, by role.
fn cpu_of(run: &RunMeasurement, before: &CpuSnapshot, after: &CpuSnapshot) -> CpuUsage {
    let mut cpu = CpuUsage::between(before, after, &[(MEASURED_RUN, run.usage.cpu_secs)]);
    if !run.cpu_series.is_empty() {
        // The per-second series also sees processes that came and went
        // during the run (compilers, test binaries); the child's own total
        // comes from its last sample.
        cpu.by_role = process::total_secs(&run.cpu_series)
            .into_iter()
            .filter(|(role, _)| role != MEASURED_RUN)
            .chain([(MEASURED_RUN.to_string(), run.usage.cpu_secs)])
            .collect();
        cpu.by_role.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    cpu
}

/// What went wrong with a measured run that exited 0: a count other than
/// the data set's, or the first run's generation still promoted.
fn failures(run: &RunMeasurement, warmup: &RunMeasurement, expected: u64) -> Vec<String> {
    let mut failures = Vec::new();
    if run.docs != expected {
        failures.push(format!(
            "FAILED: the promoted generation holds {} documents, the data set has {expected}",
            run.docs
        ));
    }
    if warmup.generation == run.generation {
        failures.push("FAILED: the measured run did not promote a new generation".to_string());
    }
    failures
}

/// The probe's summary, with its samples thinned for the JSON.
fn probe_figures(alias: &str, probe_every: Duration, mut p: ProbeRun) -> ProbeFigures {
    let summary = probe::summarize(alias, probe_every, &p.samples);
    probe::thin_indices(&mut p.samples);
    ProbeFigures {
        summary,
        expected_docs: p.expected_docs,
        samples: p.samples,
    }
}
