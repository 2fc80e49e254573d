//! The command line: global options and one subcommand per operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `rebuilder --version` prints after the name: the package version
/// and the commit the binary was built from (`build.rs`; `unknown` when
/// neither git nor `GIT_COMMIT` could say).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

/// The commit the binary was built from, as `build.rs` recorded it.
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");

#[derive(Debug, Parser)]
#[command(
    name = "rebuilder",
    version = VERSION,
    about = "Zero-downtime blue/green rebuilder for the revalidation search indices"
)]
pub struct Cli {
    /// A TOML settings file; `REBUILDER_*` environment variables override it.
    #[arg(long, global = true, env = "REBUILDER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Put this prefix before every index and alias name (isolates a test or demo).
    #[arg(long, global = true)]
    pub prefix: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rebuild both index families from TCS and GMC, validate, and move every alias at once.
    Run(RunArgs),
    /// Show the current run, or the last one: phases, counts, rejects, gates, outcome.
    Status(StatusArgs),
    /// Move every alias back to the previous generation of each family, in one request.
    Rollback(RollbackArgs),
    /// List the generations of both families: created, documents, size, aliases, run.
    Generations,
    /// Connect to OpenSearch, RabbitMQ and MongoDB and report what each holds.
    Smoke,
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Serve the HTTP API (trigger, status, runs, generations, rollback,
    /// metrics), the nightly schedule and the live applier, until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Apply live TCS updates and GMC changes to the live index (the live
    /// applier on its own), until SIGTERM or SIGINT.
    Live,
    /// Convert the legacy layout (concrete masterdoctorindex and
    /// recommendationindex) into generations with every alias.
    Adopt(AdoptArgs),
    /// The MongoDB indexes rebuilder relies on.
    #[command(subcommand)]
    Mongo(MongoCommand),
    /// Ask the `rebuilder serve` of this container (at `service.listen`)
    /// for `/healthz`; exit 0 when it answers 200 (the image's HEALTHCHECK
    /// and the ECS container health check; no shell or curl needed).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The path to ask for (`/readyz` also asks the three servers).
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Give up after this long.
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum MongoCommand {
    /// List the indexes rebuilder relies on that are missing, and create
    /// them with --yes (for deployments that own the database).
    EnsureIndexes(EnsureIndexesArgs),
}

#[derive(Debug, Args)]
pub struct EnsureIndexesArgs {
    /// Create them; without it, only what is missing is printed.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// Act; without it, only the plan is printed.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Listen here instead of `service.listen` (port 0 picks a free port).
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (secrets redacted) and the templates
    /// it uses; exit non-zero when it is invalid.
    Check,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Move the aliases to this generation (master or recommendation) and its
    /// pair instead of the previous one; naming a newer one rolls forward.
    #[arg(long, value_name = "GENERATION")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Build and validate the new generations, but move no alias.
    #[arg(long)]
    pub dry_run: bool,
    /// Promote even if the new generation is much smaller than the live one,
    /// a designated body lost many doctors, or the new generations are not
    /// green in time (replicas not allocated: overrides the
    /// share_of_previous, drift and green gates; recorded in the run).
    #[arg(long)]
    pub force: bool,
    /// What started this run (cli, schedule, http), recorded in the run history.
    #[arg(long, default_value = "cli")]
    pub trigger: crate::rebuild::record::Trigger,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the run record as JSON.
    #[arg(long)]
    pub json: bool,
}
