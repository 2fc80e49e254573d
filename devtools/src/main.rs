//! `rebuilder-dev`: the development aids on the command line. `seed` fills
//! a local MongoDB-compatible server with generated GMC data (and writes
//! the expected documents); `tcs-simulator` plays TCS on a local RabbitMQ.
//! Both read the same settings as `rebuilder` (file and `REBUILDER_*`
//! variables) and refuse servers that are not on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rebuilder::config::Settings;
use rebuilder::sources::mongo_client;
use rebuilder_dev::datagen::DatasetSpec;
use rebuilder_dev::guard::check_mongo_uri;
use rebuilder_dev::seed::{seed_mongo, write_expected};
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
    }
}

async fn seed(settings: &Settings, args: &SeedArgs) -> anyhow::Result<()> {
    let spec = args.dataset.spec();
    // Refuse before connecting: a production host is never even contacted.
    check_mongo_uri(settings.mongodb.uri.expose())?;
    let client = mongo_client(&settings.mongodb).await?;
    let summary = seed_mongo(&client, &settings.mongodb, &spec)
        .await
        .context("while seeding MongoDB")?;
    println!(
        "Seeded {}.{}: {} doctors, {} recommendations; the TCS simulator will publish {} messages (seed {}, variant {}).",
        settings.mongodb.database,
        settings.mongodb.doctors_collection,
        summary.doctors,
        summary.recommendations,
        summary.tcs_messages,
        spec.seed,
        spec.variant
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
