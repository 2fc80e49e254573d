//! The command line of `rebuilder-bench`: its flags, and the defaults that
//! depend on `--smoke` (data set size, A's sweep, B's time box, C's timeout,
//! the output folder).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::ceiling::SweepPlan;

/// A path of the benchmark, as `--skip` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Part {
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
pub struct Args {
    /// Generated doctors (default 200000; 2000 with --smoke).
    #[arg(long)]
    pub doctors: Option<usize>,
    /// Seed of the data generator.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Small and quick: checks that every path still works, figures mean nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Batch sizes of A's sweep (documents per `_bulk`).
    #[arg(long, value_delimiter = ',')]
    pub batch_sizes: Option<Vec<usize>>,
    /// Requests in flight in A's sweep.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Option<Vec<usize>>,
    /// Documents per sweep point; the best point is rerun on all documents when fewer.
    #[arg(long, default_value_t = 200_000)]
    pub sweep_docs: usize,
    /// Time box of B, the old one-request-per-document path, in seconds.
    #[arg(long)]
    pub old_path_secs: Option<u64>,
    /// Interval of the probe on current_connections, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub probe_ms: u64,
    /// Paths to leave out (comma-separated: a,b,c,d).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<Part>,
    /// Folder for latest.json (default bench-results, or target/bench-smoke with --smoke).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder for the child processes' logs.
    #[arg(long, default_value = "target/bench-logs")]
    pub log_dir: PathBuf,
    /// The rebuilder binary (default: beside this one).
    #[arg(long)]
    pub rebuilder: Option<PathBuf>,
    /// The rebuilder-dev binary, whose TCS simulator C uses (default: beside rebuilder).
    #[arg(long)]
    pub dev_tools: Option<PathBuf>,
    /// Doctors of C's first, unmeasured run, which only creates the aliases
    /// (capped at --doctors).
    #[arg(long, default_value_t = 10_000)]
    pub warmup_doctors: usize,
    /// Longest a `rebuilder run` may take, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub run_timeout_secs: u64,
    /// Also run B and C through Toxiproxy proxies that add this latency
    /// (milliseconds) each way in front of every server, beside the
    /// loopback figures (Toxiproxy is started by `scripts/stack start`).
    #[arg(long, value_name = "MS")]
    pub latency_ms: Option<u64>,
    /// Also run C with every source over the queues (GMC from the
    /// recommendation service, connection data from the connection
    /// service, both simulated), beside C with MongoDB reads.
    #[arg(long)]
    pub queues: bool,
    /// Keep the benchmark's indices, database and queues afterwards.
    #[arg(long)]
    pub keep: bool,
    /// A TOML settings file (as `rebuilder --config`); the benchmark's names override it.
    #[arg(long, env = "REBUILDER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The command line to record in the report (scripts/bench passes its own).
    #[arg(long)]
    pub command: Option<String>,
}

impl Args {
    /// Doctors of the data set.
    pub fn doctors(&self) -> usize {
        self.doctors
            .unwrap_or(if self.smoke { 2_000 } else { 200_000 })
    }

    /// Whether `part` was not skipped.
    pub fn runs(&self, part: Part) -> bool {
        !self.skip.contains(&part)
    }

    /// The folder of `latest.json` and `latest.txt`.
    pub fn out_dir(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(if self.smoke {
                "target/bench-smoke"
            } else {
                "bench-results"
            })
        })
    }

    /// The command line the report records.
    pub fn command_line(&self) -> String {
        self.command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" "))
    }

    /// A's sweep: the given dimensions, or a small default one.
    pub fn sweep_plan(&self) -> SweepPlan {
        SweepPlan {
            batch_sizes: self.batch_sizes.clone().unwrap_or_else(|| {
                if self.smoke {
                    vec![500]
                } else {
                    vec![1000, 5000]
                }
            }),
            concurrencies: self.concurrency.clone().unwrap_or_else(|| {
                if self.smoke {
                    vec![2]
                } else {
                    vec![2, 4, 8]
                }
            }),
            sweep_docs: self.sweep_docs,
        }
    }

    /// B's time box, on loopback and on the slower network alike.
    pub fn old_path_time_box(&self) -> Duration {
        Duration::from_secs(
            self.old_path_secs
                .unwrap_or(if self.smoke { 2 } else { 20 }),
        )
    }

    /// The longest a `rebuilder run` of C may take (at most 5 minutes in a smoke).
    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(if self.smoke {
            self.run_timeout_secs.min(300)
        } else {
            self.run_timeout_secs
        })
    }

    /// The probe's interval.
    pub fn probe_every(&self) -> Duration {
        Duration::from_millis(self.probe_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("rebuilder-bench").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn a_smoke_is_small_and_a_full_run_takes_the_usual_defaults() {
        let smoke = parse(&["--smoke", "--run-timeout-secs", "900"]);
        assert_eq!(smoke.doctors(), 2_000);
        assert_eq!(smoke.sweep_plan().batch_sizes, [500]);
        assert_eq!(smoke.sweep_plan().concurrencies, [2]);
        assert_eq!(smoke.old_path_time_box(), Duration::from_secs(2));
        assert_eq!(smoke.run_timeout(), Duration::from_secs(300));
        assert_eq!(smoke.out_dir(), PathBuf::from("target/bench-smoke"));

        let full = parse(&["--skip", "a,d", "--old-path-secs", "5"]);
        assert_eq!(full.doctors(), 200_000);
        assert_eq!(full.sweep_plan().batch_sizes, [1000, 5000]);
        assert_eq!(full.sweep_plan().concurrencies, [2, 4, 8]);
        assert_eq!(full.old_path_time_box(), Duration::from_secs(5));
        assert_eq!(full.run_timeout(), Duration::from_secs(3600));
        assert_eq!(full.out_dir(), PathBuf::from("bench-results"));
        assert!(!full.runs(Part::A) && full.runs(Part::B) && full.runs(Part::C));
        assert!(!full.runs(Part::D));
    }
}
