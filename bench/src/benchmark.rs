//! One benchmark run, start to end: the settings under the benchmark's own
//! names, the leftovers of an earlier run removed, the data set generated,
//! then A, D, B (and B on the slower network) and C measured in that order
//! ([`crate::parts`]), the targets judged, the report written, and
//! everything the run created removed (unless `--keep`).

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use rebuilder::config::Settings;
use rebuilder::search::{Family, IndexTemplate, SearchClient};
use rebuilder_dev::datagen::DatasetSpec;

use crate::cli::{Args, Part};
use crate::corpus::Corpus;
use crate::network::LatencyNetwork;
use crate::parts::{a_ceiling, b_old_path, c_rebuilder, d_reindex, latency, OnTheNode};
use crate::report::{Dataset, NetworkFigures, Report};
use crate::{disturbance, indices, isolation, machine, round3};

/// Runs the benchmark `args` asks for; the exit code is 1 when a
/// measurement failed (a wrong count, nothing promoted).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
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
    let out = args.out_dir();
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
    write(&report, &out)?;
    if report.warnings.iter().any(|w| w.starts_with("FAILED")) {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the report's files into `out` and prints its summary.
fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    let written = report.write_files(out)?;
    print!("{}", written.summary);
    println!("\nWrote {} and latest.txt.", written.json.display());
    Ok(())
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
    let spec = DatasetSpec::new(args.seed, args.doctors());
    let (corpus, dataset) = generate(&spec);
    let mut report = Report::new(
        args.command_line(),
        args.smoke,
        machine::describe(search, version).await,
        dataset,
    );

    let node = OnTheNode {
        args,
        search,
        template,
        corpus: &corpus,
        prefix,
    };

    // A, the ceiling; its best full load is D's source.
    let mut source_index = None;
    if args.runs(Part::A) || args.runs(Part::D) {
        source_index = Some(a_ceiling::measure(&node, &mut report).await?);
    }

    // D, server-side _reindex of the same documents.
    if let (true, Some(source)) = (args.runs(Part::D), &source_index) {
        d_reindex::measure(&node, source, &mut report).await?;
    }
    if let Some(source) = &source_index {
        indices::delete(search, source).await?;
    }

    // B, the old path, time-boxed.
    if args.runs(Part::B) {
        report.b_old_path = Some(b_old_path::measure(&node).await?);
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
            figures.b_old_path =
                Some(latency::old_path_through(args, net, template, &corpus).await?);
        }
        report.network = Some(figures);
    }
    drop(corpus);

    // C, the rebuilder end to end.
    let measured = if args.runs(Part::C) {
        c_rebuilder::measure(args, settings, search, &spec, network.as_ref(), &mut report).await
    } else {
        Ok(())
    };
    if let Some(net) = network {
        net.remove().await;
    }
    measured?;
    disturbance::warn_of_foreign_cpu(&mut report);
    report.judge();
    Ok(report)
}

/// Generates the data set's documents, and says so.
fn generate(spec: &DatasetSpec) -> (Corpus, Dataset) {
    let t = Instant::now();
    let updated_at = chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string();
    let corpus = Corpus::generate(spec, &updated_at);
    let generate_secs = t.elapsed().as_secs_f64();
    println!(
        "Generated {} documents ({:.0} MB of NDJSON) in {:.1} s.",
        corpus.len(),
        corpus.ndjson_bytes() as f64 / 1_048_576.0,
        generate_secs
    );
    let dataset = Dataset {
        doctors: spec.doctors,
        seed: spec.seed,
        documents: corpus.len(),
        ndjson_bytes: corpus.ndjson_bytes(),
        generate_secs: round3(generate_secs),
        seed_mongo_secs: None,
        gmc_doctors: None,
        recommendations: None,
        tcs_messages: None,
    };
    (corpus, dataset)
}
