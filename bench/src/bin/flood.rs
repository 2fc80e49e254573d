//! `rebuilder-flood`: the nightly-flood benchmark of issue 23, run by
//! `scripts/bench --flood N`. Seeds N generated doctors under the flood's
//! own names, measures a full rebuild (C), then floods the live applier of
//! a `rebuilder serve` child twice (alone, and with a rebuild running
//! through it), prints the figures, writes `flood-<N>.json` and `.txt`,
//! and removes everything it created.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rebuilder::config::Settings;
use rebuilder::search::SearchClient;
use rebuilder_bench::full_run::RebuilderBin;
use rebuilder_bench::{flood, isolation, logging};
use rebuilder_dev::datagen::DatasetSpec;

#[derive(Debug, Parser)]
#[command(
    name = "rebuilder-flood",
    about = "The live applier under a whole-population change burst"
)]
struct Args {
    /// Generated doctors.
    #[arg(long, default_value_t = 200_000)]
    doctors: usize,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The rebuilder binary.
    #[arg(long)]
    rebuilder: PathBuf,
    /// The rebuilder-dev binary (the TCS simulator).
    #[arg(long)]
    dev_tools: PathBuf,
    /// Folder for `flood-<N>.json` and `.txt`.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Folder for the child processes' logs.
    #[arg(long, default_value = "target/bench-logs")]
    log_dir: PathBuf,
    /// Longest a `rebuilder run` may take, in seconds.
    #[arg(long, default_value_t = 3600)]
    run_timeout_secs: u64,
    /// The command line to record in the report.
    #[arg(long)]
    command: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut settings = Settings::load(None).context("while loading settings")?;
    isolation::isolate(&mut settings, isolation::FLOOD);
    settings.validate()?;
    isolation::ensure_loopback(&settings)?;
    let search = SearchClient::new(&settings.opensearch)?;
    search
        .version()
        .await
        .context("while reaching OpenSearch (start the servers with `scripts/stack start`)")?;
    std::fs::create_dir_all(&args.out)?;
    std::fs::create_dir_all(&args.log_dir)?;
    let bin = RebuilderBin {
        path: args.rebuilder.clone(),
        dev_path: args.dev_tools.clone(),
        env: isolation::child_env(&settings),
        log_dir: args.log_dir.clone(),
    };
    isolation::clean(&search, &settings).await?;
    let spec = DatasetSpec::new(args.seed, args.doctors);
    let command = args
        .command
        .clone()
        .unwrap_or_else(|| format!("scripts/bench --flood {}", args.doctors));
    let result = flood::measure(
        &bin,
        &settings,
        &search,
        &spec,
        Duration::from_secs(args.run_timeout_secs),
        command,
    )
    .await;
    if let Err(e) = isolation::clean(&search, &settings).await {
        eprintln!("warning: cleanup failed: {e:#}");
    }
    let report = result?;
    let summary = report.summary();
    print!("{summary}");
    let base = args.out.join(format!("flood-{}", args.doctors));
    std::fs::write(
        base.with_extension("json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    std::fs::write(base.with_extension("txt"), summary.trim_start())?;
    println!("Wrote {}.json and .txt.", base.display());
    Ok(())
}
