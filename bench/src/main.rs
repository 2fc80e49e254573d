//! `rebuilder-bench`: the throughput benchmark of issue 5, run by
//! `scripts/bench`. It generates the data set, measures A (raw `_bulk`
//! ceiling), D (`_reindex`), B (one upsert per document) and C (`rebuilder
//! run` end to end, probed) on the local stack under the benchmark's own
//! names, prints the figures and the targets, writes `latest.json`, and
//! removes everything it created. This file parses the command line and
//! turns the outcome into an exit code; [`rebuilder_bench::benchmark`] runs.

use std::process::ExitCode;

use clap::Parser;
use rebuilder_bench::cli::Args;
use rebuilder_bench::{benchmark, logging};

fn main() -> ExitCode {
    let args = Args::parse();
    logging::init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(benchmark::run(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}
