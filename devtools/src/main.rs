//! `rebuilder-dev`: the development aids on the command line. `seed` fills
//! a local MongoDB-compatible server with generated GMC data (and writes
//! the expected documents); `tcs-simulator` plays TCS on a local RabbitMQ;
//! `recommendation-simulator` plays the recommendation service's side of
//! the GMC sync (`gmc.source = "queue"`); `connection-simulator` plays the
//! connection service's side of its two syncs (`connection.source =
//! "queue"`). All read the same settings as `rebuilder` (file and `REBUILDER_*`
//! variables) and refuse servers that are not on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rebuilder::config::Settings;
use rebuilder::sources::mongo_client;
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::guard::check_mongo_uri;
use rebuilder_dev::seed::{seed_mongo_with, write_expected};
use rebuilder_dev::simulator::{run_simulator, SimulatorOptions};

#[derive(Debug, Parser)]
#[command(
    name = "rebuilder-dev",
    version,
    about = "Development aids of rebuilder: generated GMC data and a TCS simulator, on local servers only"
)]
struct Cli {
    /// A TOML settings file (as for `rebuilder`); `REBUILDER_*` environment variables override it.
    #[arg(long, global = true, env = "REBUILDER_CONFIG")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replace doctorsForDB and recommendation of a local database with generated data.
    Seed(SeedArgs),
    /// Play TCS on a local RabbitMQ: answer each syncStart with the generated trainees.
    TcsSimulator(SimulatorArgs),
    /// Play the recommendation service on a local RabbitMQ: answer each
    /// gmcSyncStart with the generated GMC doctors as IndexSyncMessage batches.
    RecommendationSimulator(RecommendationSimulatorArgs),
    /// Play the connection service on a local RabbitMQ: answer each
    /// connectionLogSyncStart and hiddenDiscrepancySyncStart with the
    /// generated connection logs and hidden discrepancies.
    ConnectionSimulator(ConnectionSimulatorArgs),
    /// Make live changes (TCS updates, GMC doctor changes) on local servers,
    /// then check that they are in the live index, or how long each takes.
    LiveChanges(LiveChangesArgs),
}

#[derive(Debug, Args)]
struct LiveChangesArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// How many changes (alternately a TCS update and a GMC change).
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Milliseconds between two changes.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
    /// Wait for each change to reach the live index and print how long it took.
    #[arg(long)]
    measure: bool,
    /// Write the changes made here (JSON lines), for `--check`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Make no change: check that the changes in this file are in the live index.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// A word put into every value (so that runs differ).
    #[arg(long, default_value = "demo")]
    tag: String,
}

#[derive(Debug, Args, Clone)]
struct DatasetArgs {
    /// Number of generated doctors.
    #[arg(long, default_value_t = 50_000)]
    doctors: usize,
    /// Seed of the generator; the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A non-zero variant changes about 10% of the doctors (for a second run).
    #[arg(long, default_value_t = 0)]
    variant: u32,
}

impl DatasetArgs {
    fn spec(&self) -> DatasetSpec {
        DatasetSpec::new(self.seed, self.doctors).with_variant(self.variant)
    }
}

#[derive(Debug, Args)]
struct SeedArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Also write the expected merged documents here (NDJSON).
    #[arg(long)]
    expected: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SimulatorArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Serve one sync, then exit.
    #[arg(long)]
    once: bool,
    /// Publish only this many messages per sync and no syncEnd (a TCS that dies mid-sync).
    #[arg(long, value_name = "K")]
    stop_after: Option<u64>,
}

#[derive(Debug, Args)]
struct RecommendationSimulatorArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Serve one sync, then exit.
    #[arg(long)]
    once: bool,
    /// Doctors per IndexSyncMessage batch (today's ESSYNC_BATCH_SIZE).
    #[arg(long, default_value_t = rebuilder_dev::recommendation_simulator::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
}

#[derive(Debug, Args)]
struct ConnectionSimulatorArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Serve one sync of each, then exit.
    #[arg(long)]
    once: bool,
    /// Items per IndexSyncMessage batch (today's ESSYNC_*_BATCH_SIZE).
    #[arg(long, default_value_t = rebuilder_dev::connection_simulator::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rebuilder::telemetry::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("while loading settings")?;
    match cli.command {
        Command::Seed(args) => seed(&settings, &args).await,
        Command::TcsSimulator(args) => simulate(&settings, &args).await,
        Command::RecommendationSimulator(args) => simulate_recommendations(&settings, &args).await,
        Command::ConnectionSimulator(args) => simulate_connections(&settings, &args).await,
        Command::LiveChanges(args) => live_changes(&settings, &args).await,
    }
}

async fn live_changes(settings: &Settings, args: &LiveChangesArgs) -> anyhow::Result<()> {
    use rebuilder_dev::live_changes::{arrival, make_changes, missing_from_index, MadeChange};
    use std::time::Duration;
    if let Some(path) = &args.check {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("while reading {}", path.display()))?;
        let changes: Vec<MadeChange> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .context("while reading the changes")?;
        let missing = missing_from_index(settings, &changes).await?;
        let distinct: std::collections::BTreeSet<(&str, &str)> = changes
            .iter()
            .map(|c| (c.id.as_str(), c.field.as_str()))
            .collect();
        println!(
            "{} of {} changed fields show their latest live value in the live index{}",
            distinct.len() - missing.len(),
            distinct.len(),
            if missing.is_empty() {
                "."
            } else {
                "; missing:"
            }
        );
        for m in missing.iter().take(10) {
            println!("  {} {} should be {:?}", m.id, m.field, m.value);
        }
        anyhow::ensure!(
            missing.is_empty(),
            "{} live changes are missing",
            missing.len()
        );
        return Ok(());
    }
    let spec = args.dataset.spec();
    if args.measure {
        // One change at a time, each timed from the moment it was made.
        let mut seconds = Vec::new();
        for k in 0..args.count {
            let tag = format!("{}{k}", args.tag);
            let made = make_changes(settings, &spec, 1, Duration::ZERO, &tag, |_| {}).await?;
            let change = made.into_iter().next().expect("one change");
            match arrival(settings, &change, Duration::from_secs(60)).await? {
                Some(took) => seconds.push(took.as_secs_f64()),
                None => anyhow::bail!(
                    "{} {} never reached the live index",
                    change.id,
                    change.field
                ),
            }
        }
        seconds.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{} live changes (TCS and GMC alternately), each timed until it showed in the live index: p50 {:.2} s, max {:.2} s",
            seconds.len(),
            seconds[seconds.len() / 2],
            seconds[seconds.len() - 1]
        );
        return Ok(());
    }
    let mut out = match &args.out {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("while creating {}", path.display()))?,
        )),
        None => None,
    };
    let interval = Duration::from_millis(args.interval_ms);
    let made = make_changes(settings, &spec, args.count, interval, &args.tag, |c| {
        if let Some(out) = out.as_mut() {
            use std::io::Write;
            let _ = writeln!(out, "{}", serde_json::to_string(c).unwrap_or_default());
        }
    })
    .await?;
    if let Some(mut out) = out {
        use std::io::Write;
        out.flush()?;
    }
    println!("Made {} live changes.", made.len());
    Ok(())
}

async fn seed(settings: &Settings, args: &SeedArgs) -> anyhow::Result<()> {
    let spec = args.dataset.spec();
    // Refuse before connecting: a production host is never even contacted.
    check_mongo_uri(settings.mongodb.uri.expose())?;
    let client = mongo_client(&settings.mongodb).await?;
    let summary = seed_mongo_with(&client, &settings.mongodb, &settings.connection, &spec)
        .await
        .context("while seeding MongoDB")?;
    let generated = spec.doctors as u64;
    println!(
        "Seeded {}.{}: {} of the {} generated doctors (the other {} are TCS-only trainees, in TCS and not in GMC), {} recommendations; the TCS simulator will publish {} messages; a rebuild makes {} documents (seed {}, variant {}).",
        settings.mongodb.database,
        settings.mongodb.doctors_collection,
        summary.doctors,
        generated,
        generated.saturating_sub(summary.doctors),
        summary.recommendations,
        summary.tcs_messages,
        generated,
        spec.seed,
        spec.variant
    );
    println!(
        "Seeded the connection service's data in {}: {} connection logs ({}), {} hidden discrepancies ({}).",
        settings.connection.database(&settings.mongodb),
        summary.connection_logs,
        settings.connection.logs_collection,
        summary.hidden_discrepancies,
        settings.connection.hidden_collection,
    );
    if let Some(path) = &args.expected {
        let n = write_expected(path, &spec)?;
        println!("Wrote {n} expected documents to {}.", path.display());
    }
    Ok(())
}

async fn simulate(settings: &Settings, args: &SimulatorArgs) -> anyhow::Result<()> {
    let options = SimulatorOptions {
        once: args.once,
        stop_after: args.stop_after,
        ..SimulatorOptions::default()
    };
    let spec = args.dataset.spec();
    tokio::select! {
        served = run_simulator(&settings.rabbitmq, spec, options) => {
            let served = served.context("while simulating TCS")?;
            for s in &served {
                println!(
                    "Served a sync: {} messages{}.",
                    s.published,
                    if s.sync_end { " and syncEnd" } else { ", no syncEnd" }
                );
            }
        }
        _ = tokio::signal::ctrl_c() => println!("TCS simulator stopped."),
    }
    Ok(())
}

async fn simulate_recommendations(
    settings: &Settings,
    args: &RecommendationSimulatorArgs,
) -> anyhow::Result<()> {
    use rebuilder_dev::recommendation_simulator::{
        run_recommendation_simulator, RecommendationSimulatorOptions,
    };
    let options = RecommendationSimulatorOptions {
        once: args.once,
        batch_size: args.batch_size,
        ..RecommendationSimulatorOptions::default()
    };
    let spec = args.dataset.spec();
    tokio::select! {
        served = run_recommendation_simulator(&settings.rabbitmq, &settings.gmc, spec, options) => {
            let served = served.context("while simulating the recommendation service")?;
            for s in &served {
                println!("Served a GMC sync: {} doctors in {} batches and syncEnd.", s.doctors, s.batches);
            }
        }
        _ = tokio::signal::ctrl_c() => println!("Recommendation simulator stopped."),
    }
    Ok(())
}

async fn simulate_connections(
    settings: &Settings,
    args: &ConnectionSimulatorArgs,
) -> anyhow::Result<()> {
    use rebuilder_dev::connection_simulator::{
        run_connection_simulator, ConnectionSimulatorOptions,
    };
    let options = ConnectionSimulatorOptions {
        once: args.once,
        batch_size: args.batch_size,
        ..ConnectionSimulatorOptions::default()
    };
    let spec = args.dataset.spec();
    tokio::select! {
        served = run_connection_simulator(&settings.rabbitmq, &settings.connection, spec, options) => {
            let served = served.context("while simulating the connection service")?;
            for s in &served.logs {
                println!("Served a connection-log sync: {} logs in {} batches and syncEnd.", s.items, s.batches);
            }
            for s in &served.hidden {
                println!("Served a hidden-discrepancy sync: {} entries in {} batches and syncEnd.", s.items, s.batches);
            }
        }
        _ = tokio::signal::ctrl_c() => println!("Connection simulator stopped."),
    }
    Ok(())
}
