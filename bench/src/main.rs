//! `rebuilder-bench`: the throughput benchmark of issue 5, run by
//! `scripts/bench`. It generates the data set, measures A (raw `_bulk`
//! ceiling), D (`_reindex`), B (one upsert per document) and C (`rebuilder
//! run` end to end, probed) on the local stack under the benchmark's own
//! names, prints the figures and the targets, writes `latest.json`, and
//! removes everything it created.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use opensearch::http::Method;
use rebuilder::config::Settings;
use rebuilder::search::{Family, IndexTemplate, SearchClient};
use rebuilder_bench::ceiling::{self, SweepPlan};
use rebuilder_bench::corpus::Corpus;
use rebuilder_bench::full_run::{self, RebuilderBin, SimulatedService, Simulator};
use rebuilder_bench::indices::{self, IndexSettings};
use rebuilder_bench::network::LatencyNetwork;
use rebuilder_bench::process::{self, CpuSnapshot, CpuUsage, MEASURED_RUN};
use rebuilder_bench::report::NetworkFigures;
use rebuilder_bench::report::{
    Dataset, ForeignLoad, Machine, ProbeFigures, Ratios, RebuilderFigures, Report,
};
use rebuilder_bench::rerun::{Rerun, RerunFigures};
use rebuilder_bench::{isolation, probe, queues, reindex, round3, stages, upsert};
use rebuilder_dev::datagen::DatasetSpec;

/// Above this share of the machine spent on other work, a figure is flagged.
const FOREIGN_WARNING_SHARE: f64 = 0.10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Part {
    A,
    B,
    C,
    D,
}

#[derive(Debug, Parser)]
#[command(
    name = "rebuilder-bench",
    about = "Rebuild throughput against the raw _bulk ceiling and the old per-document path"
)]
struct Args {
    /// Generated doctors (default 200000; 2000 with --smoke).
    #[arg(long)]
    doctors: Option<usize>,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Small and quick: checks that every path still works, figures mean nothing.
    #[arg(long)]
    smoke: bool,
    /// Batch sizes of A's sweep (documents per `_bulk`).
    #[arg(long, value_delimiter = ',')]
    batch_sizes: Option<Vec<usize>>,
    /// Requests in flight in A's sweep.
    #[arg(long, value_delimiter = ',')]
    concurrency: Option<Vec<usize>>,
    /// Documents per sweep point; the best point is rerun on all documents when fewer.
    #[arg(long, default_value_t = 200_000)]
    sweep_docs: usize,
    /// Time box of B, the old one-request-per-document path, in seconds.
    #[arg(long)]
    old_path_secs: Option<u64>,
    /// Interval of the probe on current_connections, in milliseconds.
    #[arg(long, default_value_t = 50)]
    probe_ms: u64,
    /// Paths to leave out (comma-separated: a,b,c,d).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<Part>,
    /// Folder for latest.json (default bench-results, or target/bench-smoke with --smoke).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder for the child processes' logs.
    #[arg(long, default_value = "target/bench-logs")]
    log_dir: PathBuf,
    /// The rebuilder binary (default: beside this one).
    #[arg(long)]
    rebuilder: Option<PathBuf>,
    /// The rebuilder-dev binary, whose TCS simulator C uses (default: beside rebuilder).
    #[arg(long)]
    dev_tools: Option<PathBuf>,
    /// Doctors of C's first, unmeasured run, which only creates the aliases
    /// (capped at --doctors).
    #[arg(long, default_value_t = 10_000)]
    warmup_doctors: usize,
    /// Longest a `rebuilder run` may take, in seconds.
    #[arg(long, default_value_t = 3600)]
    run_timeout_secs: u64,
    /// Also run B and C through Toxiproxy proxies that add this latency
    /// (milliseconds) each way in front of every server, beside the
    /// loopback figures (Toxiproxy is started by `scripts/stack start`).
    #[arg(long, value_name = "MS")]
    latency_ms: Option<u64>,
    /// Also run C with every source over the queues (GMC from the
    /// recommendation service, connection data from the connection
    /// service, both simulated), beside C with MongoDB reads.
    #[arg(long)]
    queues: bool,
    /// Keep the benchmark's indices, database and queues afterwards.
    #[arg(long)]
    keep: bool,
    /// A TOML settings file (as `rebuilder --config`); the benchmark's names override it.
    #[arg(long, env = "REBUILDER_CONFIG")]
    config: Option<PathBuf>,
    /// The command line to record in the report (scripts/bench passes its own).
    #[arg(long)]
    command: Option<String>,
}

impl Args {
    fn doctors(&self) -> usize {
        self.doctors
            .unwrap_or(if self.smoke { 2_000 } else { 200_000 })
    }
    fn runs(&self, part: Part) -> bool {
        !self.skip.contains(&part)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Warnings only on stderr (the figures go to stdout); lapin's complaints
/// about connections this process closes on purpose are silenced.
/// `RUST_LOG` overrides.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin=off,pinky_swear=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(args.config.as_deref()).context("while loading settings")?;
    isolation::isolate(&mut settings, isolation::BenchNames::for_run(args.smoke));
    settings.validate()?;
    isolation::ensure_loopback(&settings)?;
    let search = SearchClient::new(&settings.opensearch)?;
    let version = search
        .version()
        .await
        .context("while reaching OpenSearch (start the servers with `scripts/stack start`)")?;
    let template = IndexTemplate::resolve(settings.templates_dir.as_deref(), Family::Master)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(if args.smoke {
            "target/bench-smoke"
        } else {
            "bench-results"
        })
    });
    std::fs::create_dir_all(&out).with_context(|| format!("while creating {}", out.display()))?;
    std::fs::create_dir_all(&args.log_dir)?;

    isolation::clean(&search, &settings)
        .await
        .context("while removing an earlier benchmark's leftovers")?;
    let result = measure(&args, &settings, &search, &template, &version).await;
    if args.keep {
        println!(
            "Kept the {}* indices, database {}, exchange {} and its queues (--keep).",
            settings.names.prefix, settings.mongodb.database, settings.rabbitmq.exchange
        );
    } else if let Err(e) = isolation::clean(&search, &settings).await {
        eprintln!("warning: cleanup failed: {e:#}");
    }
    let mut report = result?;
    if args.smoke {
        // At smoke size every figure is noise, and so is any disturbance.
        report.warnings.retain(|w| w.starts_with("FAILED"));
    }
    // Compact JSON (it carries thousands of samples); the summary goes
    // beside it as text for people.
    let path = out.join("latest.json");
    std::fs::write(&path, serde_json::to_vec(&report)?)
        .with_context(|| format!("while writing {}", path.display()))?;
    let summary = report.summary();
    std::fs::write(out.join("latest.txt"), summary.trim_start())?;
    print!("{summary}");
    println!("\nWrote {} and latest.txt.", path.display());
    if report.warnings.iter().any(|w| w.starts_with("FAILED")) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Every measurement, in order: data, A, D, B, C.
async fn measure(
    args: &Args,
    settings: &Settings,
    search: &SearchClient,
    template: &IndexTemplate,
    version: &str,
) -> anyhow::Result<Report> {
    let prefix = settings.names.prefix.as_str();
    let doctors = args.doctors();
    let spec = DatasetSpec::new(args.seed, doctors);
    let t = Instant::now();
    let updated_at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let corpus = Corpus::generate(&spec, &updated_at);
    let generate_secs = t.elapsed().as_secs_f64();
    println!(
        "Generated {} documents ({:.0} MB of NDJSON) in {:.1} s.",
        corpus.len(),
        corpus.ndjson_bytes() as f64 / 1_048_576.0,
        generate_secs
    );
    let mut report = Report {
        schema: 1,
        generated_at: chrono::Utc::now().to_rfc3339(),
        command: args
            .command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        smoke: args.smoke,
        machine: machine(search, version).await,
        dataset: Dataset {
            doctors,
            seed: args.seed,
            documents: corpus.len(),
            ndjson_bytes: corpus.ndjson_bytes(),
            generate_secs: round3(generate_secs),
            seed_mongo_secs: None,
            gmc_doctors: None,
            recommendations: None,
            tcs_messages: None,
        },
        a_ceiling: None,
        a_cpu: None,
        b_old_path: None,
        c_rebuilder: None,
        d_reindex: None,
        d_cpu: None,
        s_tcs: None,
        s_gmc: None,
        network: None,
        c_over_queues: None,
        bound: None,
        efficiency: None,
        probe: None,
        ratios: Ratios::default(),
        targets: Vec::new(),
        foreign_opensearch: Vec::new(),
        warnings: Vec::new(),
    };

    // A, the ceiling; its best full load is D's source.
    let mut source_index = None;
    if args.runs(Part::A) || args.runs(Part::D) {
        let plan = SweepPlan {
            batch_sizes: args.batch_sizes.clone().unwrap_or_else(|| {
                if args.smoke {
                    vec![500]
                } else {
                    vec![1000, 5000]
                }
            }),
            concurrencies: args.concurrency.clone().unwrap_or_else(|| {
                if args.smoke {
                    vec![2]
                } else {
                    vec![2, 4, 8]
                }
            }),
            sweep_docs: args.sweep_docs,
        };
        println!(
            "A: raw _bulk sweep over batch sizes {:?} x concurrency {:?} ({} docs per point, fresh index each):",
            plan.batch_sizes,
            plan.concurrencies,
            plan.sweep_docs.min(corpus.len())
        );
        let activity = indices::activity(search).await?;
        let outcome = ceiling::sweep(search, template, &corpus, &plan, prefix).await?;
        note_foreign(search, prefix, &activity, "A", &mut report).await;
        report.a_cpu = outcome.best.cpu.clone();
        source_index = Some(outcome.best.index.clone());
        if outcome.best.docs != corpus.len() as u64 {
            report.warnings.push(format!(
                "FAILED: A acknowledged {} documents of {}",
                outcome.best.docs,
                corpus.len()
            ));
        }
        if args.runs(Part::A) {
            report.a_ceiling = Some(outcome);
        }
    }

    // D, server-side _reindex of the same documents.
    if let (true, Some(source)) = (args.runs(Part::D), &source_index) {
        let dest = format!("{prefix}reindex-dest");
        indices::create(search, template, &dest, IndexSettings::Build).await?;
        let before = CpuSnapshot::take();
        let d = reindex::run(search, source, &dest, Duration::from_secs(3600)).await?;
        report.d_cpu = Some(CpuUsage::between(&before, &CpuSnapshot::take(), &[]));
        println!(
            "D: _reindex of {} documents: {:.0} docs/s ({:.1} s).",
            d.docs, d.docs_per_sec, d.took_secs
        );
        if d.docs != corpus.len() as u64 {
            report.warnings.push(format!(
                "FAILED: _reindex copied {} documents of {}",
                d.docs,
                corpus.len()
            ));
        }
        indices::delete(search, &dest).await?;
        report.d_reindex = Some(d);
    }
    if let Some(source) = &source_index {
        indices::delete(search, source).await?;
    }

    // B, the old path, time-boxed.
    if args.runs(Part::B) {
        let index = format!("{prefix}oldpath");
        let time_box =
            Duration::from_secs(
                args.old_path_secs
                    .unwrap_or(if args.smoke { 2 } else { 20 }),
            );
        indices::create(search, template, &index, IndexSettings::Serving).await?;
        println!(
            "B: one upsert per document, sequential, time-boxed to {} s ...",
            time_box.as_secs()
        );
        let b = upsert::run(search, &index, &corpus, time_box).await?;
        println!(
            "B: {} documents in {:.1} s = {:.1} docs/s; all {} would take {:.0} s (extrapolated).",
            b.sample_docs, b.sample_secs, b.docs_per_sec, b.all_docs, b.extrapolated_secs_for_all
        );
        indices::delete(search, &index).await?;
        report.b_old_path = Some(b);
    }

    // The same B and C on a slower network, through latency proxies.
    let network = match args.latency_ms {
        Some(ms) => Some(LatencyNetwork::create(settings, ms).await?),
        None => None,
    };
    if let Some(net) = &network {
        let mut figures = NetworkFigures {
            latency_ms: net.latency_ms,
            b_old_path: None,
            c_rebuilder: None,
        };
        if args.runs(Part::B) {
            figures.b_old_path = Some(old_path_through(args, net, template, &corpus).await?);
        }
        report.network = Some(figures);
    }
    drop(corpus);

    // C, the rebuilder end to end.
    let measured = if args.runs(Part::C) {
        measure_rebuilder(args, settings, search, &spec, network.as_ref(), &mut report).await
    } else {
        Ok(())
    };
    if let Some(net) = network {
        net.remove().await;
    }
    measured?;
    // A needs OpenSearch alone; C needs the whole stack. CPU anything else
    // used meanwhile was taken from the measurement.
    let busy = [
        (
            "A",
            report.a_cpu.as_ref(),
            report
                .a_cpu
                .as_ref()
                .map(|c| c.share_outside(&["opensearch", "bench"])),
        ),
        (
            "C",
            report.c_rebuilder.as_ref().and_then(|c| c.cpu.as_ref()),
            report
                .c_rebuilder
                .as_ref()
                .and_then(|c| c.cpu.as_ref())
                .map(CpuUsage::foreign_share),
        ),
    ];
    for (part, cpu, share) in busy {
        if let (Some(cpu), Some(share)) = (cpu, share) {
            if share > FOREIGN_WARNING_SHARE {
                report.warnings.push(format!(
                    "{part} was disturbed: {:.0}% of the machine went to work outside it ({}); \
                     rerun on a quiet machine",
                    share * 100.0,
                    cpu.line()
                ));
            }
        }
    }
    report.judge();
    Ok(report)
}

async fn measure_rebuilder(
    args: &Args,
    settings: &Settings,
    search: &SearchClient,
    spec: &DatasetSpec,
    network: Option<&LatencyNetwork>,
    report: &mut Report,
) -> anyhow::Result<()> {
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

    let timeout = Duration::from_secs(if args.smoke {
        args.run_timeout_secs.min(300)
    } else {
        args.run_timeout_secs
    });
    let probe_every = Duration::from_millis(args.probe_ms);
    let alias = settings.names.qualify("current_connections");
    let mongo = rebuilder::sources::mongo_client(&settings.mongodb).await?;

    // The first run only has to leave a live generation behind for the
    // measured run to swap away from; a small one does (the share gate
    // bounds the new count from below only), and saves a full rebuild.
    let warmup_spec = DatasetSpec::new(spec.seed, args.warmup_doctors.min(spec.doctors).max(1));
    if warmup_spec.doctors < spec.doctors {
        rebuilder_dev::seed::seed_mongo(&mongo, &settings.mongodb, &warmup_spec)
            .await
            .context("while seeding MongoDB for C's first run")?;
    } else {
        seed_full(&mongo, settings, spec, report).await?;
    }
    let mut simulator = Simulator::start(
        &bin,
        settings,
        SimulatedService::Tcs,
        warmup_spec.doctors,
        spec.seed,
        "simulator-warmup.log",
    )
    .await?;
    println!(
        "C: first run on {} doctors (creates the aliases; not measured) ...",
        warmup_spec.doctors
    );
    let warmup = full_run::run_once(
        &bin,
        search,
        settings,
        "c-warmup-run",
        None,
        probe_every,
        timeout,
    )
    .await;
    let warmup = match warmup {
        Ok((m, _)) => m,
        Err(e) => {
            simulator.stop().await;
            return Err(e);
        }
    };
    println!(
        "C: first run done in {:.1} s ({} docs in {}).",
        warmup.wall_secs,
        warmup.docs,
        warmup.generation.as_deref().unwrap_or("?")
    );
    let reseed = warmup_spec.doctors < spec.doctors;
    if reseed || !simulator.is_running() {
        simulator.stop().await;
        if reseed {
            seed_full(&mongo, settings, spec, report).await?;
        }
        simulator = Simulator::start(
            &bin,
            settings,
            SimulatedService::Tcs,
            spec.doctors,
            spec.seed,
            "simulator.log",
        )
        .await?;
    }

    // The stages alone, on the same data, just before C.
    {
        let s_gmc = stages::gmc_alone(settings, &mongo).await?;
        println!(
            "S_gmc: the aggregation and one full read of doctorsForDB: {} records in {:.1} s ({:.1} CPU s).",
            s_gmc.records,
            s_gmc.secs,
            s_gmc.cpu_secs()
        );
        report.s_gmc = Some(s_gmc);
        let s_tcs = stages::tcs_alone(settings).await?;
        println!(
            "S_tcs: the TCS sync alone, taken and acked: {} messages in {:.1} s ({:.1} CPU s).",
            s_tcs.records,
            s_tcs.secs,
            s_tcs.cpu_secs()
        );
        report.s_tcs = Some(s_tcs);
    }
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
    note_foreign(search, &settings.names.prefix, &activity, "C", report).await;
    simulator.stop().await;
    let (run, probe_run) = measured?;
    let mut cpu = CpuUsage::between(&before, &after, &[(MEASURED_RUN, run.usage.cpu_secs)]);
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
    let run_report = match bin.status_json().await {
        Ok(v) => v,
        Err(e) => {
            report.warnings.push(format!("no run report: {e:#}"));
            serde_json::Value::Null
        }
    };
    let mut phases = full_run::phases_of(&run_report, run.started_utc);
    full_run::attribute_writes(&mut phases, &run.series, &run.cpu_series);
    let expected = spec.doctors as u64;
    if run.docs != expected {
        report.warnings.push(format!(
            "FAILED: the promoted generation holds {} documents, the data set has {expected}",
            run.docs
        ));
    }
    if warmup.generation == run.generation {
        report
            .warnings
            .push("FAILED: the measured run did not promote a new generation".to_string());
    }
    if let Some(mut p) = probe_run {
        let summary = probe::summarize(&alias, probe_every, &p.samples);
        probe::thin_indices(&mut p.samples);
        report.probe = Some(ProbeFigures {
            summary,
            expected_docs: p.expected_docs,
            samples: p.samples,
        });
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
        let through = c_through(&rerun, net).await?;
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
        warmup: Some(full_run::RunMeasurement {
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

/// B through the latency proxy, time-boxed like B.
async fn old_path_through(
    args: &Args,
    net: &LatencyNetwork,
    template: &IndexTemplate,
    corpus: &Corpus,
) -> anyhow::Result<upsert::OldPathResult> {
    let search = SearchClient::new(&net.settings.opensearch)?;
    let index = format!("{}oldpath-latency", net.settings.names.prefix);
    let time_box =
        Duration::from_secs(
            args.old_path_secs
                .unwrap_or(if args.smoke { 2 } else { 20 }),
        );
    indices::create(&search, template, &index, IndexSettings::Serving).await?;
    println!(
        "B on the {} ms network: one upsert per document through the proxy, time-boxed to {} s ...",
        net.latency_ms,
        time_box.as_secs()
    );
    let b = upsert::run(&search, &index, corpus, time_box).await;
    indices::delete(&search, &index).await?;
    let b = b?;
    println!(
        "B on the {} ms network: {} documents in {:.1} s = {:.1} docs/s ({:.2} ms each).",
        net.latency_ms, b.sample_docs, b.sample_secs, b.docs_per_sec, b.mean_request_ms
    );
    Ok(b)
}

/// C again, every process (the rebuilder and the simulator) reaching every
/// server through the latency proxies; the probe reads directly, as the
/// readers' view is not what is measured here.
async fn c_through(rerun: &Rerun<'_>, net: &LatencyNetwork) -> anyhow::Result<RerunFigures> {
    println!(
        "C on the {} ms network: measured run through the proxies ...",
        net.latency_ms
    );
    let figures = rerun
        .measure(
            &rerun.bin_with(net.child_env()),
            &[SimulatedService::Tcs],
            "c-latency-run",
            &format!("the run on the {} ms network", net.latency_ms),
        )
        .await?;
    println!(
        "{}.",
        figures.line(
            &format!("C on the {} ms network", net.latency_ms),
            "loopback's time"
        )
    );
    Ok(figures)
}

/// Records what the node did for others since `before`, and warns when it
/// is more than noise.
async fn note_foreign(
    search: &SearchClient,
    prefix: &str,
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    during: &str,
    report: &mut Report,
) {
    let Ok(after) = indices::activity(search).await else {
        return;
    };
    let (docs_indexed, queries) = indices::foreign_activity(before, &after, prefix);
    if docs_indexed > 1000 || queries > 1000 {
        report.warnings.push(format!(
            "{during} shared the node: OpenSearch indexed {docs_indexed} documents and ran {queries} \
             queries for others meanwhile; rerun on a quiet stack"
        ));
    }
    report.foreign_opensearch.push(ForeignLoad {
        during: during.to_string(),
        docs_indexed,
        queries,
    });
}

/// Seeds the full data set for the measured run (timed, not measured).
async fn seed_full(
    mongo: &mongodb::Client,
    settings: &Settings,
    spec: &DatasetSpec,
    report: &mut Report,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let seeded = rebuilder_dev::seed::seed_mongo(mongo, &settings.mongodb, spec)
        .await
        .context("while seeding MongoDB for C")?;
    report.dataset.seed_mongo_secs = Some(round3(t.elapsed().as_secs_f64()));
    report.dataset.gmc_doctors = Some(seeded.doctors);
    report.dataset.recommendations = Some(seeded.recommendations);
    report.dataset.tcs_messages = Some(seeded.tcs_messages);
    println!(
        "C: seeded {} GMC doctors and {} recommendations in {:.1} s (not measured).",
        seeded.doctors,
        seeded.recommendations,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn machine(search: &SearchClient, version: &str) -> Machine {
    let heap = search
        .json(
            Method::Get,
            "/_nodes/stats/jvm",
            &[("filter_path", "nodes.*.jvm.mem.heap_max_in_bytes")],
            None,
        )
        .await
        .ok()
        .and_then(|v| {
            v["nodes"]
                .as_object()?
                .values()
                .next()?
                .pointer("/jvm/mem/heap_max_in_bytes")?
                .as_u64()
        })
        .unwrap_or(0);
    let memory_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let git = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_mb: memory_kb / 1024,
        opensearch_version: version.to_string(),
        opensearch_heap_mb: heap / 1_048_576,
        git_commit: git,
    }
}
