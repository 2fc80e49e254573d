//! `rebuilder run`: one full rebuild (see `rebuild::run`), then its report.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::cli::RunArgs;
use crate::config::Settings;
use crate::rebuild::{run_rebuild, RunOptions};

pub async fn run(settings: &Settings, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let options = RunOptions {
        dry_run: args.dry_run,
        force: args.force,
        trigger: args.trigger,
        bars: std::io::stderr().is_terminal(),
        run_id: None,
        // Ctrl-C (or SIGTERM) stops the run at its next safe point, as in the service.
        cancel: super::cancel_on_signals(),
    };
    let record = run_rebuild(settings, options).await?;
    print!("{}", super::status::render(&record));
    Ok(ExitCode::SUCCESS)
}
