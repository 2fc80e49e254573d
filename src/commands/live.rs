//! `rebuilder live`: the live applier on its own (for deployments that run
//! it apart from the service), until SIGTERM or SIGINT.

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::Settings;
use crate::live::run_applier;

pub async fn run(settings: Settings) -> anyhow::Result<ExitCode> {
    let stop = super::cancel_on_signals();
    run_applier(Arc::new(settings), stop).await?;
    Ok(ExitCode::SUCCESS)
}
