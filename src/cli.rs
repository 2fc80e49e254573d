//! The command line: global options and one subcommand per operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "rebuilder",
    version,
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
    /// Connect to OpenSearch, RabbitMQ and MongoDB and report what each holds.
    Smoke,
    /// Fill MongoDB with generated GMC data and write the expected documents.
    Seed(SeedArgs),
}

#[derive(Debug, Args, Clone)]
pub struct DatasetArgs {
    /// Number of generated doctors.
    #[arg(long, default_value_t = 50_000)]
    pub doctors: usize,
    /// Seed of the generator; the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A non-zero variant changes about 10% of the doctors (for a second run).
    #[arg(long, default_value_t = 0)]
    pub variant: u32,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    #[command(flatten)]
    pub dataset: DatasetArgs,
    /// Also write the expected merged documents here (NDJSON).
    #[arg(long)]
    pub expected: Option<PathBuf>,
}

impl DatasetArgs {
    pub fn spec(&self) -> crate::dev::datagen::DatasetSpec {
        crate::dev::datagen::DatasetSpec::new(self.seed, self.doctors).with_variant(self.variant)
    }
}
