//! `rebuilder rollback [--to GENERATION]`: moves every alias back to the
//! previous served generation of each family (or to the named one and its
//! pair) in one `_aliases` request, and prints what moved.

use std::process::ExitCode;

use anyhow::Context;

use crate::cli::RollbackArgs;
use crate::config::Settings;
use crate::rebuild::engine::{Engine, PromoteError, PromotionReport};

use super::Refused;

pub async fn run(settings: &Settings, args: &RollbackArgs) -> anyhow::Result<ExitCode> {
    let engine = Engine::new(settings)
        .await
        .context("while connecting to OpenSearch")?;
    match engine.rollback(args.to.as_deref()).await {
        Ok(report) => {
            print_report(&report);
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ PromoteError::Search(_)) => Err(e).context("while rolling back"),
        Err(e) => Err(Refused(e.to_string())).context("rollback refused"),
    }
}

pub fn print_report(report: &PromotionReport) {
    let from = |f: &Option<String>| f.clone().unwrap_or_else(|| "(none)".into());
    println!(
        "Rolled back in one request ({} ms):\n  master:         {} -> {}\n  recommendation: {} -> {}",
        report.took_ms,
        from(&report.master.from),
        report.master.to,
        from(&report.recommendation.from),
        report.recommendation.to
    );
    for m in &report.aliases {
        println!("  alias {:<28} -> {}", m.alias, m.to);
    }
}
