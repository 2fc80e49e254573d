//! `rebuilder run`: one full rebuild (see `rebuild::run`), then its report.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::cli::RunArgs;
use crate::config::Settings;
use crate::rebuild::run::{run_rebuild, RunOptions};

pub async fn run(settings: &Settings, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        dry_run: args.dry_run,
        force: args.force,
        trigger: args.trigger,
        bars: std::io::stderr().is_terminal(),
        run_id: None,
    };
    let report = run_rebuild(settings, options).await?;
    print!("{}", super::status::render(&report.record));
    if let Some(bulk) = &report.bulk {
        println!(
            "  bulk: {} requests, {} MB, {} retried items, {} throttled answers, {:.0} docs/s",
            bulk.requests,
            bulk.bytes / (1024 * 1024),
            bulk.retried_items,
            bulk.throttled_responses,
            bulk.docs_per_sec()
        );
    }
    Ok(ExitCode::SUCCESS)
}
